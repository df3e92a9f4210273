//! Bad input: each refusal has a stable code and a message naming the problem, and writes nothing.

use serde_json::json;

use crate::support::TestApp;

/// A cursor in this API's format at `micros` after the Unix epoch.
fn cursor_at(micros: i64) -> String {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    URL_SAFE_NO_PAD.encode(format!("v1:{micros}:2"))
}

fn ids(n: usize) -> Vec<String> {
    (2..2 + n as i64).map(|id| id.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_writes_write_nothing() {
    let app = TestApp::spawn().await;
    app.create_users(1..=3).await;
    let cases = [
        (
            r#"mutation { follow(userId: "1") { changed } }"#,
            json!({}),
            "BAD_USER_INPUT",
            "themself",
        ),
        (
            r#"mutation { follow(userId: "999") { changed } }"#,
            json!({}),
            "NOT_FOUND",
            "999",
        ),
        (
            r#"mutation { follow(userId: "abc") { changed } }"#,
            json!({}),
            "BAD_USER_INPUT",
            "userId",
        ),
        (
            r#"mutation { followMany(userIds: ["2", "999", "3"]) { changed } }"#,
            json!({}),
            "NOT_FOUND",
            "999",
        ),
        (
            r#"mutation { followMany(userIds: ["2", "1"]) { changed } }"#,
            json!({}),
            "BAD_USER_INPUT",
            "themself",
        ),
        (
            "mutation($ids: [ID!]!) { followMany(userIds: $ids) { changed } }",
            json!({ "ids": ids(101) }),
            "BAD_USER_INPUT",
            "100",
        ),
        (
            "mutation($ids: [ID!]!) { unfollowMany(userIds: $ids) { changed } }",
            json!({ "ids": ids(101) }),
            "BAD_USER_INPUT",
            "100",
        ),
        (
            r#"mutation { unfollowMany(userIds: ["2", "999"]) { changed } }"#,
            json!({}),
            "NOT_FOUND",
            "999",
        ),
        (
            r#"mutation { unfollow(userId: "999") { changed } }"#,
            json!({}),
            "NOT_FOUND",
            "999",
        ),
    ];
    for (query, variables, code, needle) in cases {
        let (got, message) = app.error(Some(1), query, variables).await;
        assert_eq!(got, code, "{query}: {message}");
        assert!(
            message.contains(needle),
            "{query}: {message:?} should mention {needle:?}"
        );
    }
    assert_eq!(app.count("SELECT count(*) FROM follows").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM outbox").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_reads_name_the_limit() {
    let app = TestApp::spawn().await;
    app.create_users(1..=2).await;
    let cases = [
        (
            r#"{ user(id: "1") { followers(first: 0) { totalCount } } }"#,
            json!({}),
            "between 1 and 100",
        ),
        (
            r#"{ user(id: "1") { following(first: 101) { totalCount } } }"#,
            json!({}),
            "between 1 and 100",
        ),
        (
            r#"{ user(id: "1") { knownFollowers(first: -1) { totalCount } } }"#,
            json!({}),
            "between 1 and 100",
        ),
        (
            r#"{ user(id: "1") { followers(after: "not-a-cursor") { totalCount } } }"#,
            json!({}),
            "cursor",
        ),
        // Cursors of instants no follow can have, which PostgreSQL cannot hold (found by the fuzz:
        // they were INTERNAL_SERVER_ERROR): "v1:-2108668032000000001:0", and years -200000 and 200000.
        (
            r#"{ user(id: "1") { followers(after: "djE6LTIxMDg2NjgwMzIwMDAwMDAwMTow") { totalCount } } }"#,
            json!({}),
            "cursor",
        ),
        (
            "query($c: String) { user(id: \"1\") { knownFollowers(after: $c) { totalCount } } }",
            json!({ "c": cursor_at(-6_373_000_000_000_000_000) }),
            "cursor",
        ),
        (
            "query($c: String) { user(id: \"1\") { following(after: $c) { totalCount } } }",
            json!({ "c": cursor_at(6_250_000_000_000_000_000) }),
            "cursor",
        ),
        (r#"{ user(id: "-4") { id } }"#, json!({}), "not a user id"),
        (
            "query($ids: [ID!]!) { users(ids: $ids) { id } }",
            json!({ "ids": ids(101) }),
            "100",
        ),
        (
            "query($ids: [ID!]!) { relationships(userId: \"1\", otherIds: $ids) { following } }",
            json!({ "ids": ids(101) }),
            "100",
        ),
    ];
    for (query, variables, needle) in cases {
        let (code, message) = app.error(Some(1), query, variables).await;
        assert_eq!(code, "BAD_USER_INPUT", "{query}: {message}");
        assert!(
            message.contains(needle),
            "{query}: {message:?} should mention {needle:?}"
        );
    }
    // null means the default page size.
    let data = app
        .data(
            None,
            r#"{ user(id: "1") { followers(first: null) { totalCount } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(data["user"]["followers"]["totalCount"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn depth_and_complexity_limits_refuse_before_any_resolver() {
    let app = TestApp::spawn().await;
    app.create_users(1..=2).await;
    let mut deep = String::from(r#"{ user(id: "1") { "#);
    for _ in 0..8 {
        deep.push_str("followers(first: 1) { nodes { ");
    }
    deep.push_str("id");
    deep.push_str(&" } }".repeat(8));
    deep.push_str(" } }");
    let response = app.run(None, &deep, json!({})).await;
    let message = response["errors"][0]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("nested too deep") && message.contains("depth limit is 16"),
        "{response:#}"
    );
    assert!(
        response.get("data").is_none_or(|d| d.is_null()),
        "no resolver ran: {response:#}"
    );

    let wide = r#"{ user(id: "1") { followers(first: 100) { nodes { followers(first: 100) { nodes { followers(first: 100) { nodes { id } } } } } } } }"#;
    let response = app.run(None, wide, json!({})).await;
    let message = response["errors"][0]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("too complex") && message.contains("complexity limit of 20000"),
        "{response:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_service_unavailable_quickly() {
    let app = TestApp::spawn().await;
    // Nothing listens on port 1: every connection attempt is refused.
    let options = crate::support::Options {
        database_url: Some("postgres://postgres@127.0.0.1:1/follow".to_owned()),
        ..Default::default()
    };
    let cut_off = app.sibling(options);
    let started = std::time::Instant::now();
    let response =
        crate::support::run_on(&cut_off, Some(1), r#"{ user(id: "1") { id } }"#, json!({})).await;
    assert_eq!(
        response["errors"][0]["extensions"]["code"], "SERVICE_UNAVAILABLE",
        "{response:#}"
    );
    let message = response["errors"][0]["message"].as_str().unwrap_or("");
    assert!(
        !message.contains("127.0.0.1"),
        "no connection details leak: {message}"
    );
    let write = crate::support::run_on(
        &cut_off,
        Some(1),
        r#"mutation { follow(userId: "2") { changed } }"#,
        json!({}),
    )
    .await;
    assert_eq!(
        write["errors"][0]["extensions"]["code"], "SERVICE_UNAVAILABLE",
        "{write:#}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "answered in {:?}",
        started.elapsed()
    );
}
