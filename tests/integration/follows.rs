//! The write path: follow, unfollow, their batches, idempotency and counts.

use serde_json::json;

use crate::support::TestApp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_then_unfollow_moves_status_and_counts() {
    let app = TestApp::spawn().await;
    app.create_users(1..=2).await;

    let data = app
        .data(
            Some(1),
            r#"mutation { follow(userId: "2") { changed following viewer { id } user { id handle } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        data["follow"],
        json!({ "changed": true, "following": true, "viewer": { "id": "1" }, "user": { "id": "2", "handle": "u2" } })
    );
    // Read-your-writes: the status is visible as soon as the mutation returned.
    let status = app
        .data(
            None,
            r#"{ isFollowing(followerId: "1", followeeId: "2") }"#,
            json!({}),
        )
        .await;
    assert_eq!(status["isFollowing"], true);

    app.drained().await;
    let counts = app
        .data(None, r#"{ a: user(id: "1") { followingCount followerCount } b: user(id: "2") { followerCount followingCount } }"#, json!({}))
        .await;
    assert_eq!(
        counts,
        json!({ "a": { "followingCount": 1, "followerCount": 0 }, "b": { "followerCount": 1, "followingCount": 0 } })
    );

    assert_eq!(
        app.unfollow(1, 2).await,
        json!({ "changed": true, "following": false })
    );
    assert_eq!(
        app.unfollow(1, 2).await,
        json!({ "changed": false, "following": false })
    );
    let status = app
        .data(
            None,
            r#"{ isFollowing(followerId: "1", followeeId: "2") }"#,
            json!({}),
        )
        .await;
    assert_eq!(status["isFollowing"], false);
    app.drained().await;
    app.assert_counts_exact().await;
    let counts = app
        .data(None, r#"{ user(id: "2") { followerCount } }"#, json!({}))
        .await;
    assert_eq!(counts["user"]["followerCount"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_twice_changes_nothing_the_second_time() {
    let app = TestApp::spawn().await;
    app.create_users(1..=2).await;
    assert_eq!(
        app.follow(1, 2).await,
        json!({ "changed": true, "following": true })
    );
    assert_eq!(
        app.follow(1, 2).await,
        json!({ "changed": false, "following": true })
    );
    app.drained().await;
    assert_eq!(app.count("SELECT count(*) FROM follows").await, 1);
    let counts = app
        .data(None, r#"{ user(id: "2") { followerCount } }"#, json!({}))
        .await;
    assert_eq!(counts["user"]["followerCount"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_follows_of_one_pair_make_one_edge_and_count_one() {
    let app = TestApp::spawn().await;
    app.create_users(1..=2).await;
    let calls = (0..50).map(|_| app.follow(1, 2));
    let outcomes = futures::future::join_all(calls).await;
    let changed = outcomes.iter().filter(|o| o["changed"] == true).count();
    assert_eq!(
        changed, 1,
        "exactly one call changes the edge: {outcomes:?}"
    );
    assert!(outcomes.iter().all(|o| o["following"] == true));
    app.drained().await;
    assert_eq!(app.count("SELECT count(*) FROM follows").await, 1);
    let counts = app
        .data(
            None,
            r#"{ a: user(id: "1") { followingCount } b: user(id: "2") { followerCount } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        counts,
        json!({ "a": { "followingCount": 1 }, "b": { "followerCount": 1 } })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_many_applies_each_id_once_and_keeps_the_order_asked() {
    let app = TestApp::spawn().await;
    app.create_users(1..=5).await;
    app.follow(1, 3).await;
    let data = app
        .data(
            Some(1),
            r#"mutation { followMany(userIds: ["4", "3", "2", "4"]) { changed following user { id } } }"#,
            json!({}),
        )
        .await;
    let got: Vec<(String, bool)> = data["followMany"]
        .as_array()
        .expect("list")
        .iter()
        .map(|p| {
            (
                p["user"]["id"].as_str().unwrap_or("").to_owned(),
                p["changed"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    // A repeated id is applied once, as if the calls ran in order: the first copy changed it, the
    // second found it done.
    assert_eq!(
        got,
        vec![
            ("4".into(), true),
            ("3".into(), false),
            ("2".into(), true),
            ("4".into(), false)
        ]
    );
    assert_eq!(
        app.count("SELECT count(*) FROM follows WHERE follower_id = 1")
            .await,
        3
    );

    let data = app
        .data(Some(1), r#"mutation { unfollowMany(userIds: ["2", "5", "1", "2"]) { changed following user { id } } }"#, json!({}))
        .await;
    let changed: Vec<bool> = data["unfollowMany"]
        .as_array()
        .expect("list")
        .iter()
        .map(|p| p["changed"] == true)
        .collect();
    assert_eq!(
        changed,
        vec![true, false, false, false],
        "unfollowing oneself, a non-followed user, or the same user again changes nothing"
    );
    app.drained().await;
    app.assert_counts_exact().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_without_a_record_cannot_follow() {
    let app = TestApp::spawn().await;
    app.create_users([2]).await;
    let (code, message) = app
        .error(
            Some(77),
            r#"mutation { follow(userId: "2") { changed } }"#,
            json!({}),
        )
        .await;
    assert_eq!(code, "NOT_FOUND", "{message}");
    assert!(message.contains("77"), "{message}");
    let (code, _) = app
        .error(
            Some(77),
            r#"mutation { unfollow(userId: "2") { changed } }"#,
            json!({}),
        )
        .await;
    assert_eq!(code, "NOT_FOUND");
    let viewer = app.data(Some(77), "{ viewer { id } }", json!({})).await;
    assert_eq!(
        viewer["viewer"],
        serde_json::Value::Null,
        "a valid token without a record has no viewer"
    );
    assert_eq!(app.count("SELECT count(*) FROM outbox").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_user_creates_updates_and_guards_handles() {
    let app = TestApp::spawn().await;
    let admin = Some(follow_service::auth::Viewer {
        user_id: 1,
        is_admin: true,
    });
    let upsert = "mutation($i: UpsertUserInput!) { upsertUser(input: $i) { id handle displayName followerCount } }";
    let created = crate::support::run_as(
        &app.app,
        admin,
        upsert,
        json!({ "i": { "id": "10", "handle": "Ada_L", "displayName": "Ada" } }),
    )
    .await;
    assert_eq!(
        created["data"]["upsertUser"],
        json!({ "id": "10", "handle": "Ada_L", "displayName": "Ada", "followerCount": 0 })
    );
    let updated = crate::support::run_as(
        &app.app,
        admin,
        upsert,
        json!({ "i": { "id": "10", "handle": "ada_l", "displayName": null } }),
    )
    .await;
    assert_eq!(
        updated["data"]["upsertUser"]["displayName"],
        serde_json::Value::Null
    );
    assert_eq!(updated["data"]["upsertUser"]["handle"], "ada_l");

    let by_handle = app.data(None, r#"{ userByHandle(handle: "ADA_L") { id } missing: userByHandle(handle: "nobody") { id } }"#, json!({})).await;
    assert_eq!(
        by_handle,
        json!({ "userByHandle": { "id": "10" }, "missing": null })
    );

    let taken = crate::support::run_as(
        &app.app,
        admin,
        upsert,
        json!({ "i": { "id": "11", "handle": "ADA_l" } }),
    )
    .await;
    assert_eq!(
        taken["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
        "{taken:#}"
    );
    for bad in [
        "",
        "has space",
        "x234567890123456789012345678901",
        "dash-ed",
    ] {
        let refused = crate::support::run_as(
            &app.app,
            admin,
            upsert,
            json!({ "i": { "id": "12", "handle": bad } }),
        )
        .await;
        assert_eq!(
            refused["errors"][0]["extensions"]["code"], "BAD_USER_INPUT",
            "handle {bad:?}: {refused:#}"
        );
    }
    assert_eq!(app.count("SELECT count(*) FROM users").await, 1);
}

#[tokio::test]
async fn a_mutations_payload_counts_include_its_own_write() {
    // No consumer runs: the stored counts never move, so only the outbox can account for the writes.
    let app = TestApp::without_pipeline().await;
    app.create_users(1..=4).await;
    app.follow(3, 2).await; // another viewer's pending follow of user 2
    let follow = r#"mutation($u: ID!) { follow(userId: $u) {
        changed user { followerCount followers(first: 1) { totalCount } } viewer { followingCount } } }"#;
    let data = app.data(Some(1), follow, json!({ "u": "2" })).await;
    assert_eq!(
        data["follow"],
        json!({ "changed": true,
                "user": { "followerCount": 2, "followers": { "totalCount": 2 } },
                "viewer": { "followingCount": 1 } })
    );

    // followMany and unfollow: each payload counts every write made before it in the request.
    let many = r#"mutation { followMany(userIds: ["3", "4"]) { user { id followerCount } viewer { followingCount } } }"#;
    let data = app.data(Some(1), many, json!({})).await;
    assert_eq!(
        data["followMany"][1]["user"],
        json!({ "id": "4", "followerCount": 1 })
    );
    assert_eq!(data["followMany"][1]["viewer"]["followingCount"], 3);
    let unfollow = r#"mutation { unfollow(userId: "2") { changed user { followerCount } viewer { followingCount } } }"#;
    let data = app.data(Some(1), unfollow, json!({})).await;
    assert_eq!(
        data["unfollow"],
        json!({ "changed": true, "user": { "followerCount": 1 }, "viewer": { "followingCount": 2 } })
    );
    // A read in another request still goes through the caches and the stored counts (eventually
    // consistent, as the contract says): here the consumer never ran, so they are still zero.
    let stored = app
        .data(None, r#"{ user(id: "2") { followerCount } }"#, json!({}))
        .await;
    assert_eq!(stored["user"]["followerCount"], 0);
}
