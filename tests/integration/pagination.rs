//! Cursor walks: every edge exactly once, newest first, even while new follows arrive.

use std::collections::HashSet;

use serde_json::json;

use crate::support::TestApp;

/// Inserts `count` followers of user 1 (users 2..) with one outbox row each, as the API would.
async fn many_followers(app: &TestApp, count: i64) -> Vec<i64> {
    let followers: Vec<i64> = (2..2 + count).collect();
    app.create_users([1]).await;
    app.create_users(followers.iter().copied()).await;
    for chunk in followers.chunks(50) {
        futures::future::join_all(chunk.iter().map(|&f| app.follow(f, 1))).await;
    }
    followers
}

/// Walks user 1's followers in pages of `size`, calling `between` after each page.
async fn walk(app: &TestApp, size: i64, mut between: impl AsyncFnMut(usize)) -> Vec<(i64, String)> {
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    for page in 0.. {
        let data = app
            .data(
                None,
                "query($first: Int, $after: String) { user(id: \"1\") { followers(first: $first, after: $after) { \
                     edges { followedAt node { id } } pageInfo { hasNextPage endCursor } } } }",
                json!({ "first": size, "after": after }),
            )
            .await;
        let connection = &data["user"]["followers"];
        for edge in connection["edges"].as_array().expect("edges") {
            let id: i64 = edge["node"]["id"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("id");
            seen.push((id, edge["followedAt"].as_str().unwrap_or("").to_owned()));
        }
        assert!(connection["edges"].as_array().map_or(0, Vec::len) as i64 <= size);
        if connection["pageInfo"]["hasNextPage"] != true {
            break;
        }
        after = connection["pageInfo"]["endCursor"]
            .as_str()
            .map(str::to_owned);
        between(page).await;
    }
    seen
}

fn assert_newest_first(seen: &[(i64, String)]) {
    for pair in seen.windows(2) {
        assert!(
            pair[0].1 >= pair[1].1,
            "not newest first: {:?} before {:?}",
            pair[0],
            pair[1]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walking_250_followers_by_20_returns_each_once_newest_first() {
    let app = TestApp::spawn().await;
    let followers = many_followers(&app, 250).await;
    let seen = walk(&app, 20, async |_| {}).await;
    assert_eq!(seen.len(), 250);
    let unique: HashSet<i64> = seen.iter().map(|(id, _)| *id).collect();
    assert_eq!(unique, followers.iter().copied().collect::<HashSet<_>>());
    assert_newest_first(&seen);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_walk_during_new_follows_never_repeats_or_skips_an_old_edge() {
    let app = TestApp::spawn().await;
    let followers = many_followers(&app, 250).await;
    let newcomers: Vec<i64> = (1_000..1_000 + 13 * 5).collect();
    app.create_users(newcomers.iter().copied()).await;
    let mut next = newcomers.iter().copied();
    let seen = walk(&app, 20, async |_page| {
        // Five new followers arrive between every two pages.
        for newcomer in next.by_ref().take(5) {
            app.follow(newcomer, 1).await;
        }
    })
    .await;
    let ids: Vec<i64> = seen.iter().map(|(id, _)| *id).collect();
    let unique: HashSet<i64> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "an edge was returned twice");
    for old in &followers {
        assert!(
            unique.contains(old),
            "follower {old} existed for the whole walk but was skipped"
        );
    }
    assert_newest_first(&seen);
}
