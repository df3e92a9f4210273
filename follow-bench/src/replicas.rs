//! `--read-your-writes N`: a viewer's own writes read back at once, N times over the connections, each
//! connection one writer of its own. A check follows a Zipf-chosen user (its payload asks the status),
//! then at once asks its status (`isFollowing`), the writer's following list (first page, newest
//! first) and `followingCount`, then unfollows and asks the status again. A stale answer is one that
//! does not show the write. The status is promised at once; the list's first page and the count are
//! eventually consistent by design (the consumer applies the event), so their figures are for comparing
//! a run with a replica against one without.

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context;
use rand::{SeedableRng, rngs::StdRng};
use serde::Serialize;
use serde_json::{Value, json};

use crate::{
    load,
    scenarios::{Request, Shared},
};

/// What the checks found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReadYourWrites {
    /// Follows that changed an edge (each one check).
    pub checks: u64,
    /// Follows of a user already followed (no check: nothing to read back).
    pub skipped: u64,
    /// Payloads whose `following` was not true.
    pub stale_payloads: u64,
    /// `isFollowing` right after the follow (or the unfollow) not showing it.
    pub stale_statuses: u64,
    /// The writer's following list's first entry not the user just followed.
    pub stale_lists: u64,
    /// `followingCount` right after the follow not one more than before it.
    pub stale_counts: u64,
    /// Requests that failed.
    pub errors: u64,
}

/// Runs `total` checks over `connections` connections (each its own writer).
pub async fn run(
    addr: SocketAddr,
    shared: Arc<Shared>,
    total: usize,
    connections: usize,
    seed: u64,
) -> anyhow::Result<ReadYourWrites> {
    let connections = connections.clamp(1, shared.writer_tokens.len().max(1));
    let mut tasks = Vec::new();
    for c in 0..connections {
        let shared = shared.clone();
        let n = total / connections + usize::from(c < total % connections);
        tasks.push(tokio::spawn(async move {
            let (writer, token) = shared.writer_tokens[c].clone();
            let mut conn = load::connect(addr).await?;
            let mut rng = StdRng::seed_from_u64(seed ^ (c as u64 + 1));
            let mut found = ReadYourWrites::default();
            for _ in 0..n {
                let target = shared.zipf.sample(&mut rng) as i64;
                check(&mut conn, addr, &token, writer, target, &mut found).await?;
            }
            anyhow::Ok(found)
        }));
    }
    let mut all = ReadYourWrites::default();
    for task in tasks {
        let found = task.await.context("a check task panicked")??;
        all.checks += found.checks;
        all.skipped += found.skipped;
        all.stale_payloads += found.stale_payloads;
        all.stale_statuses += found.stale_statuses;
        all.stale_lists += found.stale_lists;
        all.stale_counts += found.stale_counts;
        all.errors += found.errors;
    }
    Ok(all)
}

/// One check: follow, read back, unfollow, read back.
async fn check(
    conn: &mut load::Connection,
    addr: SocketAddr,
    token: &Arc<str>,
    writer: i64,
    target: i64,
    found: &mut ReadYourWrites,
) -> anyhow::Result<()> {
    let before = ask(
        conn,
        addr,
        token,
        "{ viewer { followingCount } }",
        json!({}),
    )
    .await?;
    let Some(count_before) = before["data"]["viewer"]["followingCount"].as_i64() else {
        found.errors += 1;
        return Ok(());
    };
    let id = target.to_string();
    let followed = ask(
        conn,
        addr,
        token,
        "mutation($id: ID!) { follow(userId: $id) { changed following } }",
        json!({ "id": id }),
    )
    .await?;
    let payload = &followed["data"]["follow"];
    if payload.is_null() {
        found.errors += 1;
        return Ok(());
    }
    if payload["changed"] != true {
        found.skipped += 1;
        return Ok(());
    }
    found.checks += 1;
    if payload["following"] != true {
        found.stale_payloads += 1;
    }
    let read = ask(
        conn,
        addr,
        token,
        "query($me: ID!, $id: ID!) { isFollowing(followerId: $me, followeeId: $id) viewer { followingCount following(first: 1) { nodes { id } } } }",
        json!({ "me": writer.to_string(), "id": id }),
    )
    .await?;
    let data = &read["data"];
    if data.is_null() {
        found.errors += 1;
    } else {
        if data["isFollowing"] != true {
            found.stale_statuses += 1;
        }
        if data["viewer"]["following"]["nodes"][0]["id"] != json!(id) {
            found.stale_lists += 1;
        }
        if data["viewer"]["followingCount"].as_i64() != Some(count_before + 1) {
            found.stale_counts += 1;
        }
    }
    let unfollowed = ask(
        conn,
        addr,
        token,
        "mutation($id: ID!) { unfollow(userId: $id) { changed } }",
        json!({ "id": id }),
    )
    .await?;
    if unfollowed["data"]["unfollow"]["changed"] != true {
        found.errors += 1;
    }
    let status = ask(
        conn,
        addr,
        token,
        "query($me: ID!, $id: ID!) { isFollowing(followerId: $me, followeeId: $id) }",
        json!({ "me": writer.to_string(), "id": id }),
    )
    .await?;
    if status["data"]["isFollowing"] != false {
        found.stale_statuses += 1;
    }
    Ok(())
}

/// One GraphQL request as the writer; its JSON answer.
async fn ask(
    conn: &mut load::Connection,
    addr: SocketAddr,
    token: &Arc<str>,
    query: &str,
    variables: Value,
) -> anyhow::Result<Value> {
    let request = Request {
        body: json!({ "query": query, "variables": variables })
            .to_string()
            .into(),
        token: Some(token.clone()),
    };
    let (_, body) = load::send(conn, addr, &request).await?;
    Ok(serde_json::from_slice(&body).unwrap_or(Value::Null))
}

impl ReadYourWrites {
    /// The report's lines (Markdown).
    pub fn markdown(&self) -> String {
        format!(
            "\nRead-your-writes ({} checks, {} follows skipped as already made, {} errors): stale payloads {}, stale statuses {} (after the follow and after the unfollow), stale first pages of the writer's following list {}, stale `followingCount` {}.\n",
            self.checks,
            self.skipped,
            self.errors,
            self.stale_payloads,
            self.stale_statuses,
            self.stale_lists,
            self.stale_counts
        )
    }
}
