//! The two-level cache across instances: read-your-writes, invalidation, negative caching, Redis
//! outages, stampedes.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{
    Options, RedisProxy, TestApp, eventually, redis_forget, redis_members, run_on,
};

const STATUS: &str = r#"query($a: ID!, $b: ID!) { isFollowing(followerId: $a, followeeId: $b) }"#;
const OWN: &str = r#"query($b: ID!) { user(id: $b) { viewerIsFollowing } }"#;

/// `isFollowing(a, b)` on `app`, asked by `viewer` (or anonymously).
pub(crate) async fn is_following(
    app: &follow_service::app::App,
    viewer: Option<i64>,
    a: i64,
    b: i64,
) -> Value {
    let response = run_on(
        app,
        viewer,
        STATUS,
        json!({ "a": a.to_string(), "b": b.to_string() }),
    )
    .await;
    assert!(response.get("errors").is_none(), "{response:#}");
    response["data"]["isFollowing"].clone()
}

async fn own_status(app: &follow_service::app::App, viewer: i64, b: i64) -> Value {
    let response = run_on(app, Some(viewer), OWN, json!({ "b": b.to_string() })).await;
    assert!(response.get("errors").is_none(), "{response:#}");
    response["data"]["user"]["viewerIsFollowing"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_on_one_instance_is_seen_on_the_other() {
    let a = TestApp::spawn().await;
    a.create_users(1..=3).await;
    let b = a.second_instance().await;
    // B has the old answers cached, in L1 and L2.
    for _ in 0..2 {
        assert_eq!(is_following(&b.app, None, 1, 2).await, false);
        assert_eq!(own_status(&b.app, 1, 2).await, false);
    }

    a.follow(1, 2).await;
    // The viewer's own status: at once, on every instance.
    assert_eq!(own_status(&b.app, 1, 2).await, true);
    // Anyone's read: as soon as the announcement arrives.
    assert!(
        eventually(Duration::from_secs(1), || async {
            is_following(&b.app, None, 1, 2).await == true
        })
        .await
    );

    a.unfollow(1, 2).await;
    assert_eq!(own_status(&b.app, 1, 2).await, false);
    assert!(
        eventually(Duration::from_secs(1), || async {
            is_following(&b.app, None, 1, 2).await == false
        })
        .await
    );
    assert_eq!(is_following(&a.app, None, 1, 2).await, false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_and_list_pages_refresh_on_every_instance_after_the_consumer_runs() {
    let a = TestApp::spawn().await;
    a.create_users(1..=4).await;
    a.follow(3, 2).await;
    a.drained().await;
    let b = a.second_instance().await;
    let query = r#"{ user(id: "2") { followerCount followers(first: 10) { nodes { id } } } }"#;
    for app in [&a.app, &b.app] {
        // Warm both levels on both instances.
        for _ in 0..2 {
            let data = run_on(app, None, query, json!({})).await;
            assert_eq!(
                data["data"]["user"],
                json!({ "followerCount": 1, "followers": { "nodes": [{ "id": "3" }] } })
            );
        }
    }

    a.follow(1, 2).await;
    a.follow(4, 2).await;
    a.drained().await;
    let expected = json!({ "followerCount": 3, "followers": { "nodes": [{ "id": "4" }, { "id": "1" }, { "id": "3" }] } });
    for app in [&a.app, &b.app] {
        let fresh = eventually(Duration::from_secs(2), || async {
            run_on(app, None, query, json!({})).await["data"]["user"] == expected
        })
        .await;
        assert!(fresh, "{:#}", run_on(app, None, query, json!({})).await);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_following_set_answers_negatives_and_a_follow_changes_it_in_place_everywhere() {
    let a = TestApp::spawn().await;
    a.create_users(1..=3).await;
    let b = a.second_instance().await;
    assert_eq!(is_following(&a.app, None, 1, 2).await, false);
    let key = format!("{}:c1:fs:{{1}}", a.prefix);
    let cached = eventually(Duration::from_secs(1), || async {
        redis_members(&key).await == Some(vec!["0".to_owned()])
    })
    .await;
    assert!(
        cached,
        "user 1's (empty) following set is cached in L2: {:?}",
        redis_members(&key).await
    );
    // One cached entry answers every question about user 1, on both instances.
    assert_eq!(is_following(&b.app, None, 1, 2).await, false);
    assert_eq!(is_following(&b.app, None, 1, 3).await, false);
    assert!(a.app.caches.peek_following(1).is_some(), "in A's L1");

    a.follow(1, 2).await;
    assert_eq!(
        redis_members(&key).await,
        Some(vec!["0".to_owned(), "2".to_owned()]),
        "the follow added the member in place"
    );
    assert_eq!(is_following(&a.app, None, 1, 2).await, true);
    assert!(
        eventually(Duration::from_secs(1), || async {
            is_following(&b.app, None, 1, 2).await == true
        })
        .await
    );
    assert_eq!(is_following(&b.app, None, 1, 3).await, false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_away_degrades_to_postgres_and_no_stale_value_comes_back() {
    // No consumer anywhere: only the instance's own repair can fix what the outage left in L2.
    let a = TestApp::without_pipeline().await;
    a.create_users(1..=3).await;
    let proxy = RedisProxy::start().await;
    let c = a.instance_behind(&proxy).await;
    assert!(
        c.app.caches.l1_active(),
        "the instance behind the proxy uses L1"
    );
    // Cached before the outage: 1 does not follow 2 (user 1's following set is empty).
    assert_eq!(is_following(&c.app, None, 1, 2).await, false);
    let key = format!("{}:c1:fs:{{1}}", a.prefix);
    let empty = Some(vec!["0".to_owned()]);
    assert!(
        eventually(Duration::from_secs(1), || async {
            redis_members(&key).await.is_some()
        })
        .await
    );

    proxy.cut();
    // Reads answer from PostgreSQL, writes succeed, and read-your-writes holds.
    let follow = run_on(
        &c.app,
        Some(1),
        r#"mutation { follow(userId: "2") { changed } }"#,
        json!({}),
    )
    .await;
    assert_eq!(follow["data"]["follow"]["changed"], true, "{follow:#}");
    for _ in 0..10 {
        assert_eq!(is_following(&c.app, None, 1, 2).await, true);
        assert_eq!(own_status(&c.app, 1, 2).await, true);
        assert_eq!(is_following(&c.app, None, 2, 3).await, false);
    }
    assert!(
        eventually(Duration::from_secs(5), || async {
            !c.app.caches.l1_active()
        })
        .await,
        "L1 suspended while unsubscribed"
    );
    assert_eq!(
        redis_members(&key).await,
        empty,
        "L2 still holds the pre-outage set"
    );

    proxy.restore();
    // Once Redis answers again (the breaker probes after its cool-down), the stale entry is gone first.
    let repaired = eventually(Duration::from_secs(5), || async {
        is_following(&c.app, None, 1, 2).await == true && redis_members(&key).await != empty
    })
    .await;
    assert!(
        repaired,
        "L2 after recovery: {:?}",
        redis_members(&key).await
    );
    assert!(
        eventually(Duration::from_secs(5), || async {
            c.app.caches.l1_active()
        })
        .await,
        "L1 back in use"
    );
    for _ in 0..5 {
        assert_eq!(is_following(&c.app, None, 1, 2).await, true);
    }
    assert!(
        eventually(Duration::from_secs(2), || async {
            redis_members(&key).await == Some(vec!["0".to_owned(), "2".to_owned()])
        })
        .await,
        "caches are filled again: {:?}",
        redis_members(&key).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_of_a_cold_key_query_postgres_once() {
    let a = TestApp::without_pipeline().await;
    a.create_users(1..=2).await;
    let before = a.app.queries.get();
    let reads = (0..50).map(|_| {
        run_on(
            &a.app,
            None,
            r#"{ user(id: "2") { handle followerCount } }"#,
            json!({}),
        )
    });
    let responses = futures::future::join_all(reads).await;
    assert!(
        responses
            .iter()
            .all(|r| r["data"]["user"]["handle"] == "u2")
    );
    let spent = a.app.queries.get() - before;
    // One query for the user, one for the counts; without coalescing it would be 100.
    assert!(
        spent <= 6,
        "{spent} statements for 50 concurrent reads of one cold user"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_caching_off_every_read_goes_to_postgres() {
    let a = TestApp::with_options(Options {
        cache: false,
        pipeline: false,
        ..Options::default()
    })
    .await;
    a.create_users(1..=2).await;
    a.follow(1, 2).await;
    assert_eq!(is_following(&a.app, None, 1, 2).await, true);
    let before = a.app.queries.get();
    for _ in 0..3 {
        assert_eq!(is_following(&a.app, None, 1, 2).await, true);
    }
    assert_eq!(a.app.queries.get() - before, 3, "one query per read");
    assert_eq!(
        redis_members(&format!("{}:c1:fs:{{1}}", a.prefix)).await,
        None,
        "nothing cached"
    );
}

/// Found by the fuzz (`fuzz::documents_from_the_schema`): `upsertUser` left the user caches as they
/// were, so a user looked up before it existed stayed "no such user" after its creation (a follow of it
/// then failed with INTERNAL_SERVER_ERROR reading the payload's `user`), and a renamed handle stayed old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upserted_user_is_read_back_at_once_even_after_a_miss_was_cached() {
    let a = TestApp::spawn().await;
    a.create_users(1..=2).await;
    let b = a.second_instance().await;
    let query = r#"{ user(id: "30") { handle } renamed: user(id: "2") { handle } }"#;
    // Both instances have the miss (and user 2's old handle) in L1 and L2.
    for app in [&a.app, &b.app] {
        for _ in 0..2 {
            let data = run_on(app, None, query, json!({})).await;
            assert_eq!(
                data["data"],
                json!({ "user": null, "renamed": { "handle": "u2" } })
            );
        }
    }

    let admin = Some(follow_service::auth::Viewer {
        user_id: 1,
        is_admin: true,
    });
    let upsert = "mutation($i: UpsertUserInput!) { upsertUser(input: $i) { id } }";
    for (id, handle) in [("30", "newcomer"), ("2", "renamed_2")] {
        let upserted = crate::support::run_as(
            &a.app,
            admin,
            upsert,
            json!({ "i": { "id": id, "handle": handle } }),
        )
        .await;
        assert!(upserted.get("errors").is_none(), "{upserted:#}");
    }

    let expected =
        json!({ "user": { "handle": "newcomer" }, "renamed": { "handle": "renamed_2" } });
    // The instance that wrote: at once.
    assert_eq!(
        run_on(&a.app, None, query, json!({})).await["data"],
        expected
    );
    let followed = a
        .data(
            Some(1),
            r#"mutation { follow(userId: "30") { changed user { handle } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        followed,
        json!({ "follow": { "changed": true, "user": { "handle": "newcomer" } } })
    );
    // The other: as soon as the announcement arrives.
    let fresh = eventually(Duration::from_secs(2), || async {
        run_on(&b.app, None, query, json!({})).await["data"] == expected
    })
    .await;
    assert!(fresh, "{:#}", run_on(&b.app, None, query, json!({})).await);
}

/// A cached "no such user" can be stale (a user created while an instance missed the announcement, or
/// written by another path): an edge's end is never "no such user", so a list or a payload holding it
/// reads the record again instead of failing with INTERNAL_SERVER_ERROR, and repairs the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_cached_absence_never_breaks_a_list_or_a_payload() {
    let app = TestApp::spawn().await;
    app.create_users(1..=2).await;
    let user = r#"{ user(id: "40") { handle } }"#;
    assert_eq!(
        app.data(None, user, json!({})).await,
        json!({ "user": null })
    );
    // Created behind the cache's back: L1 and L2 still say "no such user".
    app.create_users([40]).await;

    let followed = app
        .run(
            Some(1),
            r#"mutation { follow(userId: "40") { changed user { handle } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        followed,
        json!({ "data": { "follow": { "changed": true, "user": { "handle": "u40" } } } })
    );
    let list = app
        .run(
            Some(2),
            r#"{ user(id: "1") { following(first: 3) { nodes { id handle } } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        list,
        json!({ "data": { "user": { "following": { "nodes": [{ "id": "40", "handle": "u40" }] } } } })
    );
    // The stale entry was replaced on the way.
    assert_eq!(
        app.data(None, user, json!({})).await,
        json!({ "user": { "handle": "u40" } })
    );
}

/// List versions never repeat: after Redis lost its data, a bump must not hand out a version whose page
/// another instance still holds in L1 (that old page would come back as the list's current one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_loses_its_data_no_old_list_page_comes_back() {
    let a = TestApp::spawn().await;
    a.create_users(1..=4).await;
    let b = a.second_instance().await;
    let list = r#"{ user(id: "1") { following(first: 10) { nodes { id } } } }"#;
    let ids = |data: Value| -> Vec<String> {
        data["data"]["user"]["following"]["nodes"]
            .as_array()
            .map(|nodes| {
                nodes
                    .iter()
                    .filter_map(|n| n["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    a.follow(1, 2).await;
    a.drained().await;
    // B holds the page [2] in L1, under the list's current version.
    assert!(
        eventually(Duration::from_secs(3), || async {
            ids(run_on(&b.app, None, list, json!({})).await) == ["2"]
        })
        .await
    );

    redis_forget(&a.prefix).await;
    a.follow(1, 3).await;
    a.drained().await;
    let current = eventually(Duration::from_secs(3), || async {
        ids(run_on(&b.app, None, list, json!({})).await) == ["3", "2"]
    })
    .await;
    assert!(
        current,
        "instance B still answers {:?}",
        ids(run_on(&b.app, None, list, json!({})).await)
    );
}
