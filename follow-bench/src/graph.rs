//! Seeds the benchmark's social graph: Zipf follower counts, loaded with COPY, counters consistent.
//!
//! Users 1..=N are the graph; user r is followed in proportion to 1/r^s. Users N+1..=N+W are "writers":
//! they follow nobody in the seed, so the write scenarios (follow then unfollow by a writer) leave the
//! graph as it was, and a rerun with the same parameters reuses the database without reseeding.

use std::{collections::HashSet, fmt::Write as _, time::Instant};

use anyhow::Context;
use bytes::Bytes;
use chrono::{Duration, Utc};
use follow_service::seed::ZipfSampler;
use futures::SinkExt;
use rand::{Rng, SeedableRng, rngs::StdRng};

/// The graph to build.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct GraphPlan {
    pub users: i64,
    pub edges: i64,
    pub writers: i64,
    pub exponent: f64,
    pub rng_seed: u64,
}

impl GraphPlan {
    /// The database comment that marks a database seeded with this plan.
    fn marker(&self) -> String {
        format!(
            "follow-bench graph v1: users={} edges={} writers={} exponent={} seed={}",
            self.users, self.edges, self.writers, self.exponent, self.rng_seed
        )
    }
}

/// What the seeding did and what the graph looks like.
#[derive(Clone, Debug, serde::Serialize)]
pub struct GraphReport {
    pub reused: bool,
    pub seconds: f64,
    pub edges: i64,
    /// Follower counts of the five most followed users.
    pub top_follower_counts: Vec<i64>,
}

async fn connect(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to {}", follow_service::db::redact(url)))?;
    tokio::spawn(connection);
    Ok(client)
}

/// Makes sure `database_url` holds the plan's graph, building it if needed.
pub async fn ensure_graph(database_url: &str, plan: GraphPlan) -> anyhow::Result<GraphReport> {
    let started = Instant::now();
    follow_service::db::ensure_database(database_url).await?;
    follow_service::db::run_migrations(database_url).await?;
    let client = connect(database_url).await?;
    let marker: Option<String> = client
        .query_one("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = current_database()", &[])
        .await?
        .get(0);
    let reused = marker.as_deref() == Some(plan.marker().as_str());
    if reused {
        // A previous run may have been stopped mid-write: put the writers' edges back to none, and
        // what `consent_mix` makes (blocks and requests, all a writer's; private accounts) too.
        client
            .batch_execute(&format!(
                "DELETE FROM follows WHERE follower_id > {users} OR followee_id > {users}; \
                 DELETE FROM blocks; DELETE FROM follow_requests; \
                 UPDATE users SET is_private = false WHERE is_private",
                users = plan.users
            ))
            .await?;
    } else {
        build(&client, plan).await?;
        let name: String = client
            .query_one("SELECT current_database()", &[])
            .await?
            .get(0);
        client
            .batch_execute(&format!(
                "COMMENT ON DATABASE \"{name}\" IS '{}'",
                plan.marker()
            ))
            .await?;
    }
    // Counters consistent with the edges whatever happened before (the service is not running yet).
    client.batch_execute("TRUNCATE outbox").await?;
    client
        .batch_execute(
            "INSERT INTO user_stats (user_id, follower_count, following_count) \
             SELECT u.id, COALESCE(fr.n, 0), COALESCE(fg.n, 0) FROM users u \
             LEFT JOIN (SELECT followee_id AS id, count(*) AS n FROM follows GROUP BY followee_id) fr ON fr.id = u.id \
             LEFT JOIN (SELECT follower_id AS id, count(*) AS n FROM follows GROUP BY follower_id) fg ON fg.id = u.id \
             ON CONFLICT (user_id) DO UPDATE SET follower_count = EXCLUDED.follower_count, \
                 following_count = EXCLUDED.following_count",
        )
        .await?;
    let edges: i64 = client
        .query_one("SELECT count(*) FROM follows", &[])
        .await?
        .get(0);
    let top = client
        .query(
            "SELECT follower_count FROM user_stats ORDER BY follower_count DESC LIMIT 5",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get::<_, i64>(0))
        .collect();
    Ok(GraphReport {
        reused,
        seconds: started.elapsed().as_secs_f64(),
        edges,
        top_follower_counts: top,
    })
}

async fn build(client: &tokio_postgres::Client, plan: GraphPlan) -> anyhow::Result<()> {
    tracing::info!(
        users = plan.users,
        edges = plan.edges,
        "seeding the benchmark graph"
    );
    client
        // Every table that refers to users goes with it (PostgreSQL refuses otherwise).
        .batch_execute("TRUNCATE blocks, follow_requests, follows, outbox, user_stats, users")
        .await?;
    // The generated rows are consistent by construction: skip the per-row foreign-key triggers.
    client
        .batch_execute("SET session_replication_role = replica")
        .await?;

    let mut text = String::with_capacity(64 * 1024 * 1024);
    for id in 1..=plan.users + plan.writers {
        let _ = writeln!(text, "{id}\tuser{id}");
    }
    copy(client, "COPY users (id, handle) FROM STDIN", text).await?;

    let mut rng = StdRng::seed_from_u64(plan.rng_seed);
    let zipf = ZipfSampler::new(plan.users as usize, plan.exponent);
    let mean = (plan.edges as f64 / plan.users as f64).max(1.0);
    let now = Utc::now();
    let mut text = String::with_capacity(64 * 1024 * 1024);
    let mut rows = 0;
    let mut chosen = HashSet::new();
    for follower in 1..=plan.users {
        // Out-degrees vary too: uniform from 1 to about twice the mean.
        let wanted = (rng.random_range(1..=(2.0 * mean) as i64 - 1).max(1) as usize)
            .min(plan.users as usize - 1);
        chosen.clear();
        let mut attempts = 0;
        while chosen.len() < wanted && attempts < wanted * 20 {
            attempts += 1;
            let followee = zipf.sample(&mut rng) as i64;
            if followee != follower && chosen.insert(followee) {
                let at = now
                    - Duration::microseconds(rng.random_range(0..365 * 24 * 3600 * 1_000_000i64));
                let _ = writeln!(
                    text,
                    "{follower}\t{followee}\t{}",
                    at.format("%Y-%m-%d %H:%M:%S%.6f+00")
                );
                rows += 1;
            }
        }
        if text.len() > 48 * 1024 * 1024 {
            copy(
                client,
                "COPY follows (follower_id, followee_id, created_at) FROM STDIN",
                std::mem::take(&mut text),
            )
            .await?;
        }
    }
    copy(
        client,
        "COPY follows (follower_id, followee_id, created_at) FROM STDIN",
        text,
    )
    .await?;
    client
        .batch_execute("SET session_replication_role = origin")
        .await?;
    client
        .batch_execute("ANALYZE users; ANALYZE follows")
        .await?;
    tracing::info!(rows, "benchmark graph loaded");
    Ok(())
}

async fn copy(
    client: &tokio_postgres::Client,
    statement: &str,
    text: String,
) -> anyhow::Result<()> {
    let sink = client.copy_in::<_, Bytes>(statement).await?;
    futures::pin_mut!(sink);
    sink.send(Bytes::from(text)).await?;
    sink.finish().await?;
    Ok(())
}

/// A cursor about halfway down the follower lists of the most followed users (for the deep-page scenario).
pub async fn deep_cursors(database_url: &str, owners: i64) -> anyhow::Result<Vec<(i64, String)>> {
    let client = connect(database_url).await?;
    let mut cursors = Vec::new();
    for owner in 1..=owners {
        let row = client
            .query_opt(
                "SELECT created_at, follower_id FROM follows WHERE followee_id = $1 \
                 ORDER BY created_at DESC, follower_id DESC \
                 OFFSET (SELECT count(*) / 2 FROM follows WHERE followee_id = $1) LIMIT 1",
                &[&owner],
            )
            .await?;
        if let Some(row) = row {
            let at: std::time::SystemTime = row.get(0);
            let at = chrono::DateTime::<Utc>::from(at);
            let user_id: i64 = row.get(1);
            cursors.push((
                owner,
                follow_service::graphql::cursor::encode(follow_service::db::follows::Keyset {
                    at,
                    user_id,
                }),
            ));
        }
    }
    Ok(cursors)
}

/// Committed events not applied yet.
pub async fn outbox_backlog(client: &tokio_postgres::Client) -> anyhow::Result<i64> {
    Ok(client
        .query_one("SELECT count(*) FROM outbox", &[])
        .await?
        .get(0))
}

/// Users whose stored counts differ from their edges (the pipeline must be drained first).
pub async fn count_mismatches(client: &tokio_postgres::Client) -> anyhow::Result<i64> {
    Ok(client
        .query_one(
            "SELECT count(*) FROM users u \
             LEFT JOIN user_stats s ON s.user_id = u.id \
             LEFT JOIN (SELECT followee_id AS id, count(*) AS n FROM follows GROUP BY followee_id) fr ON fr.id = u.id \
             LEFT JOIN (SELECT follower_id AS id, count(*) AS n FROM follows GROUP BY follower_id) fg ON fg.id = u.id \
             WHERE COALESCE(s.follower_count, 0) <> COALESCE(fr.n, 0) \
                OR COALESCE(s.following_count, 0) <> COALESCE(fg.n, 0)",
            &[],
        )
        .await?
        .get(0))
}

/// A connection for the benchmark's own checks.
pub async fn client(database_url: &str) -> anyhow::Result<tokio_postgres::Client> {
    connect(database_url).await
}
