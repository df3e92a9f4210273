//! The read surface: users, statuses, relationships, counts, and the viewer-relative fields.

use serde_json::{Value, json};

use crate::support::TestApp;

/// 1 → 2, 1 → 3, 2 → 1, 3 → 2, 4 → 2: user 2 has followers 1, 3, 4; user 1 follows 2 and 3.
async fn small_graph() -> TestApp {
    let app = TestApp::spawn().await;
    app.create_users(1..=5).await;
    for (a, b) in [(1, 2), (1, 3), (2, 1), (3, 2), (4, 2)] {
        app.follow(a, b).await;
    }
    app.drained().await;
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_user_and_users_resolve_records_in_the_order_asked() {
    let app = small_graph().await;
    let data = app
        .data(
            Some(1),
            r#"{ viewer { id handle displayName followerCount followingCount }
                 user(id: "3") { id handle }
                 nobody: user(id: "999") { id }
                 users(ids: ["4", "999", "1", "4"]) { id } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        data,
        json!({
            "viewer": { "id": "1", "handle": "u1", "displayName": "User 1", "followerCount": 1, "followingCount": 2 },
            "user": { "id": "3", "handle": "u3" },
            "nobody": null,
            "users": [{ "id": "4" }, null, { "id": "1" }, { "id": "4" }],
        })
    );
    let anonymous = app.data(None, "{ viewer { id } }", json!({})).await;
    assert_eq!(anonymous["viewer"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn is_following_and_relationships_answer_every_pair() {
    let app = small_graph().await;
    let data = app
        .data(
            None,
            r#"{ yes: isFollowing(followerId: "1", followeeId: "2")
                 no: isFollowing(followerId: "2", followeeId: "3")
                 self: isFollowing(followerId: "2", followeeId: "2")
                 unknown: isFollowing(followerId: "1", followeeId: "999")
                 relationships(userId: "2", otherIds: ["1", "3", "5", "2", "999"]) { userId otherId following followedBy } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        (
            data["yes"].clone(),
            data["no"].clone(),
            data["self"].clone(),
            data["unknown"].clone()
        ),
        (json!(true), json!(false), json!(false), json!(false))
    );
    assert_eq!(
        data["relationships"],
        json!([
            { "userId": "2", "otherId": "1", "following": true, "followedBy": true },
            { "userId": "2", "otherId": "3", "following": false, "followedBy": true },
            { "userId": "2", "otherId": "5", "following": false, "followedBy": false },
            { "userId": "2", "otherId": "2", "following": false, "followedBy": false },
            { "userId": "2", "otherId": "999", "following": false, "followedBy": false },
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_relative_fields_follow_the_token() {
    let app = small_graph().await;
    let query = r#"{ a: user(id: "2") { viewerIsFollowing followsViewer } b: user(id: "3") { viewerIsFollowing followsViewer } }"#;
    let as_one = app.data(Some(1), query, json!({})).await;
    assert_eq!(
        as_one,
        json!({ "a": { "viewerIsFollowing": true, "followsViewer": true }, "b": { "viewerIsFollowing": true, "followsViewer": false } })
    );
    let anonymous = app.data(None, query, json!({})).await;
    assert_eq!(
        anonymous,
        json!({ "a": { "viewerIsFollowing": false, "followsViewer": false }, "b": { "viewerIsFollowing": false, "followsViewer": false } })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_are_newest_first_with_counts_and_edges() {
    let app = small_graph().await;
    let data = app
        .data(
            Some(1),
            r#"{ user(id: "2") {
                   followers(first: 2) { totalCount pageInfo { hasNextPage hasPreviousPage startCursor endCursor }
                                         edges { cursor followedAt node { id } } nodes { id } }
                   following { totalCount nodes { id } }
                 } }"#,
            json!({}),
        )
        .await;
    let followers = &data["user"]["followers"];
    // Followed in the order 1, 3, 4: newest first is 4, 3.
    assert_eq!(followers["nodes"], json!([{ "id": "4" }, { "id": "3" }]));
    assert_eq!(followers["totalCount"], 3);
    assert_eq!(followers["pageInfo"]["hasNextPage"], true);
    assert_eq!(followers["pageInfo"]["hasPreviousPage"], false);
    assert_eq!(
        followers["pageInfo"]["endCursor"],
        followers["edges"][1]["cursor"]
    );
    assert_eq!(
        followers["pageInfo"]["startCursor"],
        followers["edges"][0]["cursor"]
    );
    let at = followers["edges"][0]["followedAt"]
        .as_str()
        .expect("a DateTime string");
    assert!(
        at.ends_with('Z') && at.len() == "2026-11-25T10:00:00.123456Z".len(),
        "RFC 3339 UTC with microseconds: {at}"
    );
    assert_eq!(
        data["user"]["following"],
        json!({ "totalCount": 1, "nodes": [{ "id": "1" }] })
    );

    let rest = app
        .data(
            None,
            r#"query($after: String) { user(id: "2") { followers(first: 2, after: $after) { nodes { id } pageInfo { hasNextPage endCursor } } } }"#,
            json!({ "after": followers["pageInfo"]["endCursor"] }),
        )
        .await;
    assert_eq!(rest["user"]["followers"]["nodes"], json!([{ "id": "1" }]));
    assert_eq!(rest["user"]["followers"]["pageInfo"]["hasNextPage"], false);

    let empty = app.data(None, r#"{ user(id: "5") { followers { totalCount edges { cursor } pageInfo { hasNextPage startCursor endCursor } } } }"#, json!({})).await;
    assert_eq!(
        empty["user"]["followers"],
        json!({ "totalCount": 0, "edges": [], "pageInfo": { "hasNextPage": false, "startCursor": null, "endCursor": null } })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn known_followers_are_the_followers_the_viewer_follows() {
    let app = small_graph().await;
    // Viewer 4 follows 2 only; add 4 → 1 and 4 → 3, so of 2's followers (1, 3, 4) viewer 4 follows 1 and 3.
    app.follow(4, 1).await;
    app.follow(4, 3).await;
    let query = r#"{ user(id: "2") { knownFollowers(first: 1) { totalCount nodes { id } pageInfo { hasNextPage } } } }"#;
    let data = app.data(Some(4), query, json!({})).await;
    assert_eq!(
        data["user"]["knownFollowers"],
        json!({ "totalCount": 2, "nodes": [{ "id": "3" }], "pageInfo": { "hasNextPage": true } })
    );
    let anonymous = app.data(None, query, json!({})).await;
    assert_eq!(
        anonymous["user"]["knownFollowers"],
        json!({ "totalCount": 0, "nodes": [], "pageInfo": { "hasNextPage": false } })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_lists_resolve_every_users_fields() {
    let app = small_graph().await;
    let data = app
        .data(
            Some(1),
            r#"{ user(id: "2") { followers { nodes { id followerCount followingCount viewerIsFollowing followsViewer
                                                     following(first: 5) { nodes { id } } } } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        data["user"]["followers"]["nodes"],
        json!([
            { "id": "4", "followerCount": 0, "followingCount": 1, "viewerIsFollowing": false, "followsViewer": false, "following": { "nodes": [{ "id": "2" }] } },
            { "id": "3", "followerCount": 1, "followingCount": 1, "viewerIsFollowing": true, "followsViewer": false, "following": { "nodes": [{ "id": "2" }] } },
            { "id": "1", "followerCount": 1, "followingCount": 2, "viewerIsFollowing": false, "followsViewer": false, "following": { "nodes": [{ "id": "3" }, { "id": "2" }] } },
        ])
    );
}

// The count must depend on batching alone, not on this machine's speed: no pipeline (the relay's polling
// would add statements), and a batching window far longer than an unoptimised build needs to resolve a
// level of 100 nodes (the service's default of 1 ms is tuned for release builds by the benchmark).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_100_users_costs_a_handful_of_queries() {
    let options = crate::support::Options {
        pipeline: false,
        loader_delay: std::time::Duration::from_millis(50),
        ..Default::default()
    };
    let app = crate::support::TestApp::with_options(options).await;
    app.create_users(1..=101).await;
    {
        let mut conn = follow_service::db::connect(&app.app.db)
            .await
            .expect("connection");
        let followers: Vec<i64> = (2..=101).collect();
        let followees = vec![1; 100];
        let times: Vec<_> = (0..100)
            .map(|i| chrono::Utc::now() - chrono::Duration::seconds(i))
            .collect();
        follow_service::db::follows::insert_edges_bulk(&mut conn, &followers, &followees, &times)
            .await
            .expect("edges");
    }
    let query = r#"{ user(id: "1") { followers(first: 100) { totalCount nodes { id handle followerCount followingCount
                      viewerIsFollowing followsViewer following(first: 3) { nodes { id } } } } } }"#;
    let before = app.app.queries.get();
    let data = app.data(Some(50), query, json!({})).await;
    let spent = app.app.queries.get() - before;
    assert_eq!(
        data["user"]["followers"]["nodes"].as_array().map(Vec::len),
        Some(100)
    );
    // Batched: user, list page, users, counts, statuses, nested list pages, their users = 8 statements
    // (a very busy machine may split a batch in two). Resolved one by one it would be over 500.
    assert!(spent <= 24, "{spent} statements for one page of 100 users");
}

/// The response's fields come in the document's order (the GraphQL spec; normalized client caches and
/// snapshot tests rely on it), also when a field waits on the cache or the database and another does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_come_back_in_the_order_asked_on_a_cold_cache() {
    let app = small_graph().await;
    let query = r#"query($no: Boolean!) {
        user(id: "2") { followerCount handle viewerIsFollowing @skip(if: $no) id }
        isFollowing(followerId: "1", followeeId: "2")
        ...Counts
        again: user(id: "2") { id }
    }
    fragment Counts on Query { other: user(id: "3") { followingCount id } }"#;
    let keys = |value: &Value| -> Vec<String> {
        value
            .as_object()
            .map(|object| object.keys().cloned().collect())
            .unwrap_or_default()
    };
    // Cold, then warm: the same order both times.
    for _ in 0..2 {
        let data = app.data(Some(1), query, json!({ "no": false })).await;
        assert_eq!(keys(&data), ["user", "isFollowing", "other", "again"]);
        assert_eq!(
            keys(&data["user"]),
            ["followerCount", "handle", "viewerIsFollowing", "id"]
        );
        assert_eq!(keys(&data["other"]), ["followingCount", "id"]);
    }
}
