//! `knownFollowers`: the followers of a user whom the viewer follows. Every page and every `totalCount`
//! of a request goes through the known-followers DataLoaders: one statement for all the pages, one for
//! all the counts, however many users ask, each page with its own owner, cursor and size.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use serde_json::{Value, json};

use crate::support::{Options, TestApp};

/// An app whose loaders gather keys for 50 ms, far longer than an unoptimised build needs to resolve a
/// level of 100 nodes (the service's 1 ms default is tuned for release builds), so that the batches
/// this file counts form whatever the machine's load. No pipeline: edges go in directly.
async fn batching_app() -> TestApp {
    TestApp::with_options(Options {
        pipeline: false,
        loader_delay: std::time::Duration::from_millis(50),
        ..Options::default()
    })
    .await
}

/// Inserts edges `follower → followee`, each at its own time, in one statement.
async fn insert_edges(app: &TestApp, edges: &[(i64, i64, DateTime<Utc>)]) {
    let mut conn = follow_service::db::connect(&app.app.db)
        .await
        .expect("connection");
    let followers: Vec<i64> = edges.iter().map(|e| e.0).collect();
    let followees: Vec<i64> = edges.iter().map(|e| e.1).collect();
    let times: Vec<DateTime<Utc>> = edges.iter().map(|e| e.2).collect();
    follow_service::db::follows::insert_edges_bulk(&mut conn, &followers, &followees, &times)
        .await
        .expect("edges");
}

/// The known followers of `owner` for `viewer`, newest first, computed the plain way (a semi-join
/// written independently of the service's statement).
async fn expected(app: &TestApp, viewer: i64, owner: i64) -> Vec<i64> {
    app.sql(&format!(
        "SELECT f.follower_id FROM follows f \
         WHERE f.followee_id = {owner} \
           AND EXISTS (SELECT 1 FROM follows v WHERE v.follower_id = {viewer} AND v.followee_id = f.follower_id) \
         ORDER BY f.created_at DESC, f.follower_id DESC"
    ))
    .await
    .iter()
    .map(|row| row.get(0))
    .collect()
}

fn ids(nodes: &Value) -> Vec<i64> {
    nodes
        .as_array()
        .expect("a list of nodes")
        .iter()
        .map(|n| {
            n["id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("an id")
        })
        .collect()
}

/// One page asked in a multi-owner request.
struct Asked {
    alias: String,
    owner: i64,
    size: usize,
    after: Option<String>,
}

fn document(asked: &[&Asked]) -> String {
    let fields: Vec<String> = asked
        .iter()
        .map(|a| {
            let after = a
                .after
                .as_ref()
                .map(|c| format!(", after: \"{c}\""))
                .unwrap_or_default();
            format!(
                "{}: user(id: \"{}\") {{ knownFollowers(first: {}{after}) \
                 {{ totalCount nodes {{ id }} pageInfo {{ hasNextPage endCursor }} }} }}",
                a.alias, a.owner, a.size
            )
        })
        .collect();
    format!("{{ {} }}", fields.join(" "))
}

/// Viewer 1 follows 2..=30. Owners 40..=47 (and the viewer himself) have followers among 2..=39, at
/// times chosen so that several edges of one owner share a timestamp (the follower id breaks the tie).
async fn graph_with_ties(app: &TestApp) -> Vec<i64> {
    app.create_users(1..=50).await;
    let base = Utc::now() - Duration::hours(1);
    let mut edges = Vec::new();
    for followee in 2..=30 {
        edges.push((1, followee, base));
    }
    let owners: Vec<i64> = (40..=47).chain([1]).collect();
    for &owner in &owners {
        for follower in 2..=39 {
            if (follower * 7 + owner) % 3 == 0 {
                continue;
            }
            // Three followers share each second.
            let at = base + Duration::seconds((follower + owner) / 3);
            edges.push((follower, owner, at));
        }
    }
    // The viewer follows owners 40 and 41 too: asking about someone he follows changes nothing.
    edges.push((1, 40, base));
    edges.push((1, 41, base));
    insert_edges(app, &edges).await;
    owners
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_owners_walked_together_each_with_its_own_cursor_match_plain_sql() {
    let app = batching_app().await;
    let owners = graph_with_ties(&app).await;
    let mut want = HashMap::new();
    for &owner in &owners {
        want.insert(owner, expected(&app, 1, owner).await);
    }
    assert!(
        want.values().all(|w| w.len() > 4),
        "each owner needs several pages: {want:?}"
    );

    // Each owner is walked with its own page size; owner 40 is asked twice per request (another size,
    // so another key), and all pages of a step go in one request, with cursors that differ per owner.
    let mut walks: Vec<(Asked, Vec<i64>, bool)> = owners
        .iter()
        .map(|&owner| Asked {
            alias: format!("o{owner}"),
            owner,
            size: 1 + (owner as usize % 4),
            after: None,
        })
        .chain([Asked {
            alias: "again40".to_owned(),
            owner: 40,
            size: 5,
            after: None,
        }])
        .map(|asked| (asked, Vec::new(), false))
        .collect();
    for _step in 0..40 {
        let open: Vec<&Asked> = walks
            .iter()
            .filter(|(_, _, done)| !done)
            .map(|(a, _, _)| a)
            .collect();
        if open.is_empty() {
            break;
        }
        let query = document(&open);
        let before = app.app.queries.get();
        let data = app.data(Some(1), &query, json!({})).await;
        let spent = app.app.queries.get() - before;
        // The owners' records (until cached), all the pages in one statement, all the counts in another;
        // a fresh pooled connection may prepare. One statement per page and count would be 2 per owner.
        assert!(
            spent <= 6,
            "{spent} statements for {asked} pages",
            asked = open.len()
        );
        for (asked, seen, done) in walks.iter_mut().filter(|(_, _, done)| !done) {
            let connection = &data[&asked.alias]["knownFollowers"];
            let full = &want[&asked.owner];
            assert_eq!(
                connection["totalCount"],
                json!(full.len()),
                "{}",
                asked.alias
            );
            let page = ids(&connection["nodes"]);
            let start = seen.len();
            let end = (start + asked.size).min(full.len());
            assert_eq!(
                page,
                full[start..end],
                "{} after {:?}",
                asked.alias,
                asked.after
            );
            seen.extend(page);
            let more = connection["pageInfo"]["hasNextPage"] == true;
            assert_eq!(more, end < full.len(), "{}", asked.alias);
            asked.after = connection["pageInfo"]["endCursor"]
                .as_str()
                .map(str::to_owned);
            *done = !more;
        }
    }
    for (asked, seen, done) in &walks {
        assert!(done, "{} never finished", asked.alias);
        assert_eq!(seen, &want[&asked.owner], "{}", asked.alias);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_viewer_or_with_no_one_in_common_the_page_is_empty() {
    let app = batching_app().await;
    graph_with_ties(&app).await;
    let query = r#"{ a: user(id: "40") { knownFollowers(first: 3) { totalCount nodes { id } pageInfo { hasNextPage endCursor } } }
                     b: user(id: "41") { knownFollowers { totalCount nodes { id } } } }"#;
    let empty = json!({ "totalCount": 0, "nodes": [], "pageInfo": { "hasNextPage": false, "endCursor": null } });
    let anonymous = app.data(None, query, json!({})).await;
    assert_eq!(anonymous["a"]["knownFollowers"], empty);
    assert_eq!(
        anonymous["b"]["knownFollowers"],
        json!({ "totalCount": 0, "nodes": [] })
    );
    // User 50 follows no one: nobody is known to him.
    let stranger = app.data(Some(50), query, json!({})).await;
    assert_eq!(stranger["a"]["knownFollowers"], empty);

    // Without `first`, the default page of 20.
    let viewer = app.data(Some(1), query, json!({})).await;
    let want = expected(&app, 1, 41).await;
    assert_eq!(
        ids(&viewer["b"]["knownFollowers"]["nodes"]),
        want[..want.len().min(20)]
    );
    assert_eq!(
        viewer["b"]["knownFollowers"]["totalCount"],
        json!(want.len())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_asking_about_himself_sees_the_followers_he_follows_back() {
    let app = batching_app().await;
    graph_with_ties(&app).await;
    let want = expected(&app, 1, 1).await;
    assert!(!want.is_empty());
    let data = app
        .data(
            Some(1),
            r#"{ viewer { knownFollowers(first: 100) { totalCount nodes { id } } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(ids(&data["viewer"]["knownFollowers"]["nodes"]), want);
    assert_eq!(
        data["viewer"]["knownFollowers"]["totalCount"],
        json!(want.len())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cursors_and_page_sizes_are_bad_user_input() {
    let app = batching_app().await;
    graph_with_ties(&app).await;
    for viewer in [Some(1), None] {
        for (query, says) in [
            (
                r#"{ user(id: "40") { knownFollowers(after: "not-a-cursor") { totalCount } } }"#,
                "cursor",
            ),
            (
                r#"{ user(id: "40") { knownFollowers(first: 0) { totalCount } } }"#,
                "between 1 and 100",
            ),
            (
                r#"{ user(id: "40") { knownFollowers(first: 101) { nodes { id } } } }"#,
                "between 1 and 100",
            ),
        ] {
            let (code, message) = app.error(viewer, query, json!({})).await;
            assert_eq!(code, "BAD_USER_INPUT", "{query} as {viewer:?}: {message}");
            assert!(message.contains(says), "{message}");
        }
    }
}

/// User 1 has followers 2..=101 (the parents). The viewer 130 follows 102..=115; parent p is followed
/// by `p % 9` of 102..=119, so its known followers number 0 to 8 and some fill more than a page of 5.
async fn hundred_parents(app: &TestApp) {
    app.create_users(1..=130).await;
    let now = Utc::now();
    let mut edges = Vec::new();
    for p in 2..=101 {
        edges.push((p, 1, now - Duration::seconds(p)));
        for j in 0..(p % 9) {
            let follower = 102 + (p + j) % 18;
            edges.push((follower, p, now - Duration::milliseconds(p * 10 + j)));
        }
    }
    for followee in 102..=115 {
        edges.push((130, followee, now));
    }
    insert_edges(app, &edges).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_parents_asking_known_followers_cost_a_handful_of_statements() {
    let app = batching_app().await;
    hundred_parents(&app).await;
    let query = r#"{ user(id: "1") { followers(first: 100) { nodes { id knownFollowers(first: 5) { totalCount nodes { id } } } } } }"#;
    let before = app.app.queries.get();
    let data = app.data(Some(130), query, json!({})).await;
    let spent = app.app.queries.get() - before;

    let nodes = data["user"]["followers"]["nodes"]
        .as_array()
        .expect("nodes");
    assert_eq!(nodes.len(), 100);
    for node in nodes {
        let owner: i64 = node["id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("id");
        let want = expected(&app, 130, owner).await;
        assert_eq!(
            node["knownFollowers"]["totalCount"],
            json!(want.len()),
            "{owner}"
        );
        assert_eq!(
            ids(&node["knownFollowers"]["nodes"]),
            want[..want.len().min(5)],
            "{owner}"
        );
    }
    assert!(
        nodes
            .iter()
            .any(|n| n["knownFollowers"]["totalCount"].as_i64() > Some(5)),
        "some parent has more than a page"
    );
    // The user, the list page, its users, the known-followers pages (one statement), their counts (one
    // GROUP BY) and the known followers' users: 6 statements; a busy machine may split a batch, and a
    // fresh pooled connection may prepare. One statement per parent and field would be over 200.
    assert!(
        spent <= 12,
        "{spent} statements for 100 parents asking knownFollowers"
    );
}
