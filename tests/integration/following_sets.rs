//! Status from following sets (issue 11): one cached entry per follower answers every status of that
//! follower; writes change it in place on every instance; loads racing writes never store an old set;
//! users past the set limit keep pair lookups; L1 stays within its byte budget; warm-up fills the
//! caches before `/readyz` says ready, within its bound.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use serde_json::{Value, json};

use crate::support::{Options, TestApp, eventually, redis_get, run_on, send};

/// `isFollowing(a, b)` asked anonymously (not read-your-writes: the L1 sets answer it).
async fn is_following(app: &follow_service::app::App, a: i64, b: i64) -> Value {
    crate::cache::is_following(app, None, a, b).await
}

/// What viewer 1 sees of user 2 on `app`: `viewerIsFollowing`, and `relationships`' `following`.
async fn viewer_sees(app: &follow_service::app::App) -> (Value, Value) {
    let response = run_on(
        app,
        Some(1),
        r#"{ user(id: "2") { viewerIsFollowing }
             relationships(userId: "1", otherIds: ["2", "3"]) { otherId following } }"#,
        json!({}),
    )
    .await;
    assert!(response.get("errors").is_none(), "{response:#}");
    (
        response["data"]["user"]["viewerIsFollowing"].clone(),
        response["data"]["relationships"][0]["following"].clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_flips_status_viewer_is_following_and_relationships_on_the_other_instance() {
    let a = TestApp::spawn().await;
    a.create_users(1..=3).await;
    let b = a.second_instance().await;
    // B holds user 1's set in L1.
    assert_eq!(is_following(&b.app, 1, 2).await, false);
    assert_eq!(viewer_sees(&b.app).await, (json!(false), json!(false)));
    assert!(b.app.caches.peek_following(1).is_some());

    a.follow(1, 2).await;
    // The viewer itself: at once, on the other instance too (its recent changes are read from L2).
    assert_eq!(viewer_sees(&b.app).await, (json!(true), json!(true)));
    // Anyone else: as soon as the announcement arrives, from B's L1 set changed in place.
    assert!(
        eventually(Duration::from_secs(1), || async {
            is_following(&b.app, 1, 2).await == true
        })
        .await
    );
    assert!(
        b.app
            .caches
            .peek_status((1, 2), None)
            .is_some_and(|follows| follows),
        "B's L1 set holds the new member"
    );

    a.unfollow(1, 2).await;
    assert_eq!(viewer_sees(&b.app).await, (json!(false), json!(false)));
    assert!(
        eventually(Duration::from_secs(1), || async {
            is_following(&b.app, 1, 2).await == false
        })
        .await
    );
    assert_eq!(is_following(&b.app, 1, 3).await, false);
}

/// A set load that read PostgreSQL before a write committed finishes after the write changed the
/// caches: it must not store its older set, in L1 or in L2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_that_started_before_a_write_does_not_overwrite_it() {
    let a = TestApp::without_pipeline().await;
    a.create_users(1..=3).await;
    let caches = a.app.caches.clone();
    let (loading, loaded) = (
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(tokio::sync::Notify::new()),
    );
    // The slow load answers "1 follows nobody", as PostgreSQL had it before the follow.
    let slow = {
        let (caches, loading, loaded) = (caches.clone(), loading.clone(), loaded.clone());
        tokio::spawn(async move {
            caches
                .statuses(
                    &[(1, 2)],
                    None,
                    |users: Vec<i64>| {
                        let (loading, loaded) = (loading.clone(), loaded.clone());
                        async move {
                            loading.notify_one();
                            loaded.notified().await;
                            Ok::<_, ()>(users.into_iter().map(|u| (u, Vec::new())).collect())
                        }
                    },
                    |_| async { Ok::<_, ()>(HashSet::new()) },
                )
                .await
        })
    };
    loading.notified().await;
    // Meanwhile the follow commits and its write path records it.
    a.follow(1, 2).await;
    loaded.notify_one();
    let stale = slow.await.expect("joined").expect("answered");
    assert_eq!(
        stale.get(&(1, 2)),
        Some(&false),
        "the old load saw the old edge"
    );

    // Neither level kept the old set: the next reads see the follow.
    assert_ne!(caches.peek_status((1, 2), None), Some(false), "L1");
    let members = crate::support::redis_members(&format!("{}:c1:fs:{{1}}", a.prefix)).await;
    assert_ne!(members, Some(vec!["0".to_owned()]), "L2");
    assert_eq!(is_following(&a.app, 1, 2).await, true);
    assert_eq!(
        run_on(
            &a.app,
            Some(1),
            r#"{ user(id: "2") { viewerIsFollowing } }"#,
            json!({})
        )
        .await["data"]["user"]["viewerIsFollowing"],
        true
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_past_the_set_limit_gets_right_answers_by_pairs() {
    let a = TestApp::with_options(Options {
        env: vec![("FOLLOW_CACHE_SET_LIMIT", "2".to_owned())],
        ..Options::default()
    })
    .await;
    a.create_users(1..=6).await;
    for user in 2..=4 {
        a.follow(1, user).await;
    }
    for _ in 0..2 {
        for (b, expected) in [(2, true), (3, true), (4, true), (5, false), (6, false)] {
            assert_eq!(is_following(&a.app, 1, b).await, expected, "1 → {b}");
        }
    }
    assert!(
        matches!(
            a.app.caches.peek_following(1),
            Some(follow_service::cache::sets::Following::Large)
        ),
        "user 1 is cached as over the limit"
    );
    a.follow(1, 5).await;
    a.unfollow(1, 2).await;
    for (b, expected) in [(2, false), (3, true), (5, true), (6, false)] {
        assert_eq!(is_following(&a.app, 1, b).await, expected, "after, 1 → {b}");
    }
    // Its pairs are cached one by one in L2, versioned by the write.
    let stored = redis_get(&format!("{}:c1:st:{{1}}:5", a.prefix))
        .await
        .unwrap_or_default();
    assert!(
        stored.ends_with(":1") && !stored.starts_with("0:"),
        "{stored}"
    );
    // A user under the limit beside it is answered from its set (once a load is not fenced off by a
    // change arriving meanwhile: the consumer's or the write's own announcement).
    a.follow(6, 1).await;
    assert_eq!(is_following(&a.app, 6, 1).await, true);
    assert!(
        eventually(Duration::from_secs(2), || async {
            is_following(&a.app, 6, 1).await == true
                && matches!(
                    a.app.caches.peek_following(6),
                    Some(follow_service::cache::sets::Following::Members(_))
                )
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_evicts_within_its_byte_budget_and_answers_stay_right() {
    let budget: u64 = 40_000;
    let a = TestApp::with_options(Options {
        pipeline: false,
        env: vec![("FOLLOW_L1_MAX_BYTES", budget.to_string())],
        ..Options::default()
    })
    .await;
    a.create_users(1..=400).await;
    // Each of users 1..=300 follows the 20 users after it: sets of 20, far more than the budget holds.
    a.sql(
        "INSERT INTO follows (follower_id, followee_id) \
         SELECT f, f + k FROM generate_series(1, 300) f, generate_series(1, 20) k",
    )
    .await;
    for follower in 1..=300 {
        let (followed, not_followed) = (follower + 7, follower + 21);
        assert_eq!(is_following(&a.app, follower, followed).await, true);
        assert_eq!(is_following(&a.app, follower, not_followed).await, false);
    }
    let bytes: HashMap<&str, u64> = a.app.caches.l1_bytes().into_iter().collect();
    let sets_share = budget / 100 * 40;
    assert!(
        bytes["sets"] > 0 && bytes["sets"] <= sets_share,
        "sets hold {} bytes of their {sets_share}",
        bytes["sets"]
    );
    let total: u64 = bytes.values().sum();
    assert!(total <= budget, "L1 holds {total} bytes of {budget}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_up_fills_hot_users_and_active_viewers_before_ready() {
    let a = TestApp::spawn().await;
    a.create_users(1..=10).await;
    for follower in 2..=6 {
        a.follow(follower, 1).await;
    }
    a.follow(7, 2).await;
    a.drained().await;
    // Viewers 7 and 8 were active on some instance (and so were the followers above).
    for viewer in [7, 8] {
        a.app.caches.note_active(viewer);
    }
    a.app.caches.flush_active().await;

    let b = a
        .instance(Options {
            pipeline: false,
            env: vec![
                ("FOLLOW_WARMUP_USERS", "2".to_owned()),
                ("FOLLOW_WARMUP_PAGES", "2".to_owned()),
                ("FOLLOW_WARMUP_VIEWERS", "10".to_owned()),
            ],
            ..Options::default()
        })
        .await;
    assert!(b.app.caches.peek_counts(1).is_none(), "cold before warm-up");
    let warm_up = b.app.spawn_warm_up();
    let readyz = || async {
        let request = axum::http::Request::get("/readyz")
            .body(axum::body::Body::empty())
            .expect("request");
        send(&b.app, request).await
    };
    let (status, _, body) = readyz().await;
    let body: Value = serde_json::from_slice(&body).expect("json");
    if status != axum::http::StatusCode::OK {
        assert_eq!(body["warmup"], "running", "{body}");
    }
    tokio::time::timeout(Duration::from_secs(10), warm_up)
        .await
        .expect("within the bound")
        .expect("joined");
    let (status, _, body) = readyz().await;
    assert_eq!(
        status,
        axum::http::StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&body)
    );

    // The most followed users (1, then 2): counts, following sets, first page of followers, from L1.
    assert!(b.app.caches.peek_following(2).is_some());
    let counts = b
        .app
        .caches
        .peek_counts(1)
        .expect("hot user's counts in L1");
    assert_eq!(counts.follower_count, 5);
    assert!(b.app.caches.peek_counts(2).is_some());
    assert!(
        b.app
            .caches
            .peek_first_page(follow_service::db::follows::ListKind::Followers, 1, 21)
            .is_some_and(|page| page.len() == 5),
        "hot user's first page in L1"
    );
    // The recently active viewers' following sets.
    assert!(b.app.caches.peek_status((7, 2), None) == Some(true));
    assert!(b.app.caches.peek_following(8).is_some());
    assert!(
        b.app
            .warm_up
            .loaded
            .sets
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_start_does_not_hold_readiness_past_the_warm_up_bound() {
    let a = TestApp::without_pipeline().await;
    a.create_users(1..=2).await;
    // An address where nothing listens.
    let app = a.sibling(Options {
        pipeline: false,
        redis_url: "redis://127.0.0.1:9".to_owned(),
        env: vec![("FOLLOW_WARMUP_TIMEOUT_S", "1".to_owned())],
        ..Options::default()
    });
    let started = std::time::Instant::now();
    let warm_up = app.spawn_warm_up();
    assert!(app.warm_up.running());
    tokio::time::timeout(Duration::from_secs(5), warm_up)
        .await
        .expect("the warm-up gives up at its bound")
        .expect("joined");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(!app.warm_up.running());
    let request = axum::http::Request::get("/readyz")
        .body(axum::body::Body::empty())
        .expect("request");
    let (_, _, body) = send(&app, request).await;
    let body: Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(body["warmup"], "done", "{body}");
    assert_eq!(body["redis"], "unavailable", "{body}");
}
