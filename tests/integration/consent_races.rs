//! Races of issue 15, through HTTP: a block against follows in flight, an approval against a cancel or a
//! repeated follow, and a private account turned public with many requests pending or arriving. Each
//! ends checked in PostgreSQL (no edge across a block, no request beside an edge, none left on a public
//! account) and by the counters (exact once the outbox is drained).

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use serde_json::{Value, json};

use crate::{
    consent::{act, counts, data, edge, mutation_text, request, set_private, settled},
    support::{TestApp, eventually, post},
};

/// `viewer` runs `mutation(userId: user)` on `app` through HTTP (200 expected); returns the whole body,
/// errors included. Owned arguments, for spawned tasks.
async fn call(app: follow_service::app::App, token: String, mutation: &str, user: i64) -> Value {
    let (status, _, body) = post(
        &app,
        Some(&token),
        &mutation_text(mutation),
        json!({ "u": user.to_string() }),
    )
    .await;
    assert_eq!(status, axum::http::StatusCode::OK, "{mutation}: {body:#}");
    body
}

/// Spawns `viewer`'s `mutation(userId: user)` on a runtime worker.
fn spawn_call(
    app: &TestApp,
    viewer: i64,
    mutation: &'static str,
    user: i64,
) -> tokio::task::JoinHandle<Value> {
    let (handle, token) = (app.app.clone(), app.token(viewer, false));
    tokio::spawn(async move { call(handle, token, mutation, user).await })
}

/// Spawns `viewer`'s followMany of `users`.
fn spawn_follow_many(app: &TestApp, viewer: i64, users: &[i64]) -> tokio::task::JoinHandle<Value> {
    let (handle, token) = (app.app.clone(), app.token(viewer, false));
    let ids: Vec<String> = users.iter().map(ToString::to_string).collect();
    tokio::spawn(async move {
        post(
            &handle,
            Some(&token),
            "mutation($ids: [ID!]!) { followMany(userIds: $ids) { following requested changed } }",
            json!({ "ids": ids }),
        )
        .await
        .2
    })
}

/// Follows `target` as each of `followers` through HTTP, `concurrency` at a time on the runtime's
/// workers; calls `done` after each. Returns each payload (errors fail the test).
async fn follow_all(
    app: &TestApp,
    followers: Vec<i64>,
    target: i64,
    concurrency: usize,
    done: Arc<AtomicUsize>,
) -> Vec<Value> {
    futures::stream::iter(followers)
        .map(|follower| {
            let task = spawn_call(app, follower, "follow", target);
            let done = done.clone();
            async move {
                let body = task.await.expect("task");
                done.fetch_add(1, Ordering::SeqCst);
                assert!(body.get("errors").is_none(), "{body:#}");
                body["data"]["follow"].clone()
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

/// Sessions of the test's database waiting for a lock.
async fn lock_waiters(app: &TestApp) -> i64 {
    app.count(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE datname = current_database() AND wait_event_type = 'Lock'",
    )
    .await
}

/// Waits until `n` sessions of the test's database wait for a lock.
async fn until_waiting(app: &TestApp, n: i64, what: &str) {
    assert!(
        eventually(Duration::from_secs(5), || async {
            lock_waiters(app).await >= n
        })
        .await,
        "{what} never waited for its lock"
    );
}

/// Waits until `n` sessions wait for a lock, or `task` has answered without waiting (as it may
/// when the service orders it differently).
async fn until_waiting_or_done<T>(app: &TestApp, n: i64, task: &tokio::task::JoinHandle<T>) {
    assert!(
        eventually(Duration::from_secs(5), || async {
            task.is_finished() || lock_waiters(app).await >= n
        })
        .await,
        "the request neither answered nor waited for a lock"
    );
}

/// The payload of a mutation's body, or its error's code and message.
fn outcome(body: &Value, mutation: &str) -> Result<Value, (String, String)> {
    match body.get("errors") {
        None => Ok(body["data"][mutation].clone()),
        Some(errors) => Err((
            errors[0]["extensions"]["code"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
            errors[0]["message"].as_str().unwrap_or("").to_owned(),
        )),
    }
}

/// Edges and requests that coexist with a block between the same two users, either way.
async fn across_blocks(app: &TestApp) -> (i64, i64) {
    let edges = app
        .count(
            "SELECT count(*) FROM follows f JOIN blocks b \
             ON (f.follower_id, f.followee_id) IN ((b.blocker_id, b.blocked_id), (b.blocked_id, b.blocker_id))",
        )
        .await;
    let requests = app
        .count(
            "SELECT count(*) FROM follow_requests q JOIN blocks b \
             ON (q.requester_id, q.target_id) IN ((b.blocker_id, b.blocked_id), (b.blocked_id, b.blocker_id))",
        )
        .await;
    (edges, requests)
}

// ---------------------------------------------------------------------------------------------------
// A block against follows in flight.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_racing_a_block_never_leave_an_edge_or_a_request_across_it() {
    let app = TestApp::spawn().await;
    const ROUNDS: i64 = 30;
    app.create_users(1..=ROUNDS * 10 + 3).await;
    // Every third round's `a` is private, with `b`'s request pending.
    for round in (0..ROUNDS).filter(|r| r % 3 == 2) {
        let (a, b) = (round * 10 + 1, round * 10 + 2);
        set_private(&app, a, Some(true)).await;
        assert_eq!(act(&app, b, "follow", a).await["requested"], true);
    }
    let mut refused = 0;
    for round in 0..ROUNDS {
        let (a, b, c) = (round * 10 + 1, round * 10 + 2, round * 10 + 3);
        // Who blocks whom, and what races it.
        let (blocker, blocked) = if round % 2 == 0 { (a, b) } else { (b, a) };
        let mut follows = vec![
            spawn_call(&app, a, "follow", b),
            spawn_call(&app, b, "follow", a),
        ];
        let many = spawn_follow_many(&app, b, &[c, a]);
        let approval = (round % 3 == 2).then(|| spawn_call(&app, a, "approveFollowRequest", b));
        let block = spawn_call(&app, blocker, "block", blocked);
        follows.push(spawn_call(&app, blocked, "follow", blocker));

        let block = block.await.expect("task");
        assert_eq!(
            outcome(&block, "block"),
            Ok(json!({ "blocking": true, "changed": true })),
            "round {round}"
        );
        for follow in follows {
            match outcome(&follow.await.expect("task"), "follow") {
                // Before the block: a follow, or a request to a private account.
                Ok(payload) => assert!(
                    payload["following"] == true || payload["requested"] == true,
                    "round {round}: {payload}"
                ),
                Err((code, message)) => {
                    assert_eq!(
                        (code.as_str(), message.as_str()),
                        ("FORBIDDEN", "you cannot follow this user"),
                        "round {round}"
                    );
                    refused += 1;
                }
            }
        }
        match outcome(&many.await.expect("task"), "followMany") {
            Ok(_) => {}
            Err((code, message)) => assert_eq!(
                (code.as_str(), message),
                ("FORBIDDEN", format!("you cannot follow user {a}")),
                "round {round}"
            ),
        }
        if let Some(approval) = approval {
            let body = approval.await.expect("task");
            assert!(body.get("errors").is_none(), "round {round}: {body:#}");
        }
    }
    eprintln!("{refused} follows refused by a block committed before them");
    assert_eq!(app.count("SELECT count(*) FROM blocks").await, ROUNDS);
    assert_eq!(
        across_blocks(&app).await,
        (0, 0),
        "(edges, requests) standing across a block"
    );
    app.drained().await;
    app.assert_counts_exact().await;
    // What the API says of each pair, in one query.
    let pairs: String = (0..ROUNDS)
        .map(|round| {
            let (a, b) = (round * 10 + 1, round * 10 + 2);
            format!(r#"r{round}: relationships(userId: "{a}", otherIds: ["{b}"]) {{ following followedBy }} "#)
        })
        .collect();
    let seen = data(&app, None, &format!("{{ {pairs} }}"), json!({})).await;
    for round in 0..ROUNDS {
        assert_eq!(
            seen[format!("r{round}")],
            json!([{ "following": false, "followedBy": false }]),
            "round {round}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_in_flight_commits_first_and_the_block_behind_it_removes_its_edge() {
    let app = TestApp::spawn().await;
    app.create_users(1..=2).await;
    let held = app.hold_user_row(2).await;
    // The follow's gate holds 1 and waits for 2; the block waits for the follow's hold on 1.
    let follow = spawn_call(&app, 1, "follow", 2);
    until_waiting(&app, 1, "the follow").await;
    let block = spawn_call(&app, 2, "block", 1);
    until_waiting(&app, 2, "the block").await;
    held.batch_execute("COMMIT").await.expect("unlock");

    assert_eq!(
        outcome(&follow.await.expect("task"), "follow"),
        Ok(json!({ "following": true, "requested": false, "changed": true })),
        "the follow in flight went through"
    );
    assert_eq!(
        outcome(&block.await.expect("task"), "block"),
        Ok(json!({ "blocking": true, "changed": true }))
    );
    assert!(!edge(&app, 1, 2).await, "the block removed the edge");
    assert_eq!(across_blocks(&app).await, (0, 0));
    settled(&app, &[(1, 0, 0), (2, 0, 0)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_queued_behind_a_block_sees_it_and_is_refused() {
    let app = TestApp::spawn().await;
    app.create_users(1..=2).await;
    let held = app.hold_user_row(1).await;
    // The block waits for 1 first; the follow's gate queues behind it.
    let block = spawn_call(&app, 2, "block", 1);
    until_waiting(&app, 1, "the block").await;
    let follow = spawn_call(&app, 1, "follow", 2);
    until_waiting(&app, 2, "the follow").await;
    held.batch_execute("COMMIT").await.expect("unlock");

    assert_eq!(
        outcome(&block.await.expect("task"), "block"),
        Ok(json!({ "blocking": true, "changed": true }))
    );
    assert_eq!(
        outcome(&follow.await.expect("task"), "follow"),
        Err((
            "FORBIDDEN".to_owned(),
            "you cannot follow this user".to_owned()
        ))
    );
    assert!(!edge(&app, 1, 2).await);
    app.drained().await;
    app.assert_counts_exact().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_many_refused_by_a_block_made_meanwhile_writes_nothing() {
    let app = TestApp::spawn().await;
    app.create_users(1..=4).await;
    set_private(&app, 4, Some(true)).await;
    let held = app.hold_user_row(1).await;
    // 3's block of 1 waits for 1's row; 1's followMany of [2, 3, 4] (4 is private) passes its checks
    // (no block yet) and its write queues behind the block.
    let block = spawn_call(&app, 3, "block", 1);
    until_waiting(&app, 1, "the block").await;
    let many = spawn_follow_many(&app, 1, &[2, 3, 4]);
    until_waiting_or_done(&app, 2, &many).await;
    held.batch_execute("COMMIT").await.expect("unlock");

    assert_eq!(
        outcome(&block.await.expect("task"), "block"),
        Ok(json!({ "blocking": true, "changed": true }))
    );
    assert_eq!(
        outcome(&many.await.expect("task"), "followMany"),
        Err((
            "FORBIDDEN".to_owned(),
            "you cannot follow user 3".to_owned()
        ))
    );
    assert!(!edge(&app, 1, 3).await);
    // followMany is checked whole before anything is written: a refused call follows nobody.
    assert!(
        !edge(&app, 1, 2).await,
        "followMany answered FORBIDDEN, yet 1 now follows 2"
    );
    assert!(
        !request(&app, 1, 4).await,
        "followMany answered FORBIDDEN, yet 1 now asks to follow 4"
    );
    app.drained().await;
    app.assert_counts_exact().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_follow_many_holds_back_none_of_the_other_calls_of_its_batch() {
    let app = TestApp::with_options(crate::support::Options {
        env: vec![("FOLLOW_WRITE_CONCURRENCY", "1".to_owned())],
        ..crate::support::Options::default()
    })
    .await;
    app.create_users(1..=50).await;
    // The one write slot is busy with a follow waiting for user 50's row; behind it queue 1's
    // followMany (checked before 3's block, so it reaches the write) and other users' follows.
    let held = app.hold_user_row(50).await;
    let first = spawn_call(&app, 49, "follow", 50);
    until_waiting(&app, 1, "the first follow").await;
    let many = spawn_follow_many(&app, 1, &[2, 3]);
    let others: Vec<_> = (10..20)
        .map(|u| spawn_call(&app, u, "follow", u + 10))
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        act(&app, 3, "block", 1).await,
        json!({ "blocking": true, "changed": true })
    );
    held.batch_execute("COMMIT").await.expect("unlock");

    assert_eq!(
        outcome(&first.await.expect("task"), "follow").map(|p| p["changed"].clone()),
        Ok(json!(true))
    );
    assert_eq!(
        outcome(&many.await.expect("task"), "followMany"),
        Err((
            "FORBIDDEN".to_owned(),
            "you cannot follow user 3".to_owned()
        ))
    );
    assert!(!edge(&app, 1, 2).await && !edge(&app, 1, 3).await);
    for (task, user) in others.into_iter().zip(10..20) {
        assert_eq!(
            outcome(&task.await.expect("task"), "follow"),
            Ok(json!({ "following": true, "requested": false, "changed": true })),
            "{user}'s follow"
        );
        assert!(edge(&app, user, user + 10).await);
    }
    app.drained().await;
    app.assert_counts_exact().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_privacy_flip_racing_blocks_leaves_no_edge_across_them_and_no_request() {
    let app = TestApp::spawn().await;
    const REQUESTERS: std::ops::RangeInclusive<i64> = 2..=21;
    // (owner, requesters blocking it, the requester it blocks), all at once with its turn to public.
    // Owner 1001's id is above its requesters': a requester's block locks the requester's row, then the
    // owner's, the opposite order of the flip (the owner's row, then the rows of the requesters it
    // approves), so they may deadlock, and one runs again. Owner 1's id is below.
    let cases: [(i64, &[i64], i64); 2] = [(1_001, &[2], 5), (1, &[9, 16, 20], 12)];
    app.create_users(REQUESTERS).await;
    app.create_users([1, 1_001]).await;
    for (owner, _, _) in cases {
        set_private(&app, owner, Some(true)).await;
        app.sql(&format!(
            "INSERT INTO follow_requests (requester_id, target_id) \
             SELECT g, {owner} FROM generate_series({}::bigint, {}::bigint) AS g",
            REQUESTERS.start(),
            REQUESTERS.end()
        ))
        .await;
    }
    for (owner, blocking_it, blocked) in cases {
        let mut blocks: Vec<_> = blocking_it
            .iter()
            .map(|&r| spawn_call(&app, r, "block", owner))
            .collect();
        let flip = {
            let (handle, admin) = (app.app.clone(), app.token(owner, true));
            tokio::spawn(async move {
                post(
                    &handle,
                    Some(&admin),
                    "mutation($id: ID!, $h: String!) { upsertUser(input: { id: $id, handle: $h, isPrivate: false }) { isPrivate } }",
                    json!({ "id": owner.to_string(), "h": format!("u{owner}") }),
                )
                .await
                .2
            })
        };
        blocks.push(spawn_call(&app, owner, "block", blocked));
        assert_eq!(
            flip.await.expect("task"),
            json!({ "data": { "upsertUser": { "isPrivate": false } } }),
            "owner {owner}"
        );
        for block in blocks {
            assert_eq!(
                outcome(&block.await.expect("task"), "block"),
                Ok(json!({ "blocking": true, "changed": true })),
                "owner {owner}"
            );
        }
        assert_eq!(
            across_blocks(&app).await,
            (0, 0),
            "owner {owner}: (edges, requests) across a block"
        );
        assert_eq!(
            app.count(&format!(
                "SELECT count(*) FROM follow_requests WHERE target_id = {owner}"
            ))
            .await,
            0,
            "owner {owner}: a request is left on a public account"
        );
        // The requesters on neither side of a block follow the owner now.
        assert_eq!(
            app.count(&format!(
                "SELECT count(*) FROM follows WHERE followee_id = {owner}"
            ))
            .await,
            REQUESTERS.count() as i64 - blocking_it.len() as i64 - 1,
            "owner {owner}"
        );
    }
    app.drained().await;
    app.assert_counts_exact().await;
}

// ---------------------------------------------------------------------------------------------------
// An approval against the requester's cancel, or its repeated follow.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_racing_cancels_end_as_the_cancel_answered() {
    let app = TestApp::spawn().await;
    const ROUNDS: i64 = 30;
    app.create_users(1..=ROUNDS + 1).await;
    set_private(&app, 1, Some(true)).await;
    let requesters: Vec<i64> = (2..=ROUNDS + 1).collect();
    for &requester in &requesters {
        assert_eq!(act(&app, requester, "follow", 1).await["requested"], true);
    }
    let mut approved_first = 0;
    for &requester in &requesters {
        let approve = spawn_call(&app, 1, "approveFollowRequest", requester);
        let cancel = spawn_call(&app, requester, "unfollow", 1);
        let approved = outcome(&approve.await.expect("task"), "approveFollowRequest")
            .expect("the approval answers");
        let cancelled =
            outcome(&cancel.await.expect("task"), "unfollow").expect("the cancel answers");
        let (followed, pending) = (
            edge(&app, requester, 1).await,
            request(&app, requester, 1).await,
        );
        assert!(
            !pending,
            "requester {requester}: a request outlived both its approval and its cancel"
        );
        // Whichever went first, the cancel changed something (the request, or the edge the approval
        // made of it) and answered that the requester does not follow: once both have answered, that
        // is the truth.
        assert_eq!(
            cancelled,
            json!({ "following": false, "requested": false, "changed": true }),
            "requester {requester} (approval {approved})"
        );
        assert!(
            !followed,
            "requester {requester}: the cancel answered {cancelled}, yet an edge stands (approval {approved})"
        );
        if approved["changed"] == true {
            approved_first += 1;
        }
    }
    eprintln!("{approved_first} of {ROUNDS} approvals went before the cancel");
    assert_eq!(
        data(
            &app,
            Some(1),
            "{ followRequests { totalCount } }",
            json!({})
        )
        .await["followRequests"]["totalCount"],
        0
    );
    app.drained().await;
    app.assert_counts_exact().await;
    assert_eq!(counts(&app, 1).await["followerCount"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_racing_a_repeated_follow_leaves_no_request_beside_the_edge() {
    let app = TestApp::spawn().await;
    app.create_users(1..=2).await;
    set_private(&app, 1, Some(true)).await;
    assert_eq!(act(&app, 2, "follow", 1).await["requested"], true);

    // Slow the approval down between its delete of the request and its commit: another session has
    // the same edge inserted, uncommitted, so the approval's insert waits for it.
    let slow = app
        .in_open_transaction("INSERT INTO follows (follower_id, followee_id) VALUES (2, 1)")
        .await;
    let approve = spawn_call(&app, 1, "approveFollowRequest", 2);
    until_waiting(&app, 1, "the approval").await;
    // Meanwhile the requester taps follow again (a second device, a retry).
    let again = spawn_call(&app, 2, "follow", 1);
    until_waiting_or_done(&app, 2, &again).await;
    slow.batch_execute("ROLLBACK").await.expect("release");

    assert_eq!(
        outcome(&approve.await.expect("task"), "approveFollowRequest"),
        Ok(json!({ "followedBy": true, "changed": true }))
    );
    let again = outcome(&again.await.expect("task"), "follow");
    let (followed, pending) = (edge(&app, 2, 1).await, request(&app, 2, 1).await);
    assert!(followed, "the approval made the edge");
    assert!(
        !pending,
        "2 follows 1 and still has a request pending to 1 (the repeated follow answered {again:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_racing_repeated_follows_leave_no_request_beside_the_edge() {
    let app = TestApp::spawn().await;
    const ROUNDS: i64 = 30;
    app.create_users(1..=ROUNDS + 1).await;
    set_private(&app, 1, Some(true)).await;
    let mut both = Vec::new();
    for requester in 2..=ROUNDS + 1 {
        assert_eq!(act(&app, requester, "follow", 1).await["requested"], true);
        // The owner approves while the requester taps follow again.
        let approve = spawn_call(&app, 1, "approveFollowRequest", requester);
        let again = spawn_call(&app, requester, "follow", 1);
        let approved = outcome(&approve.await.expect("task"), "approveFollowRequest")
            .expect("the approval answers");
        let again = outcome(&again.await.expect("task"), "follow").expect("the follow answers");
        assert_eq!(approved, json!({ "followedBy": true, "changed": true }));
        assert!(edge(&app, requester, 1).await, "requester {requester}");
        if request(&app, requester, 1).await {
            both.push((requester, again));
        }
    }
    assert!(
        both.is_empty(),
        "{} of {ROUNDS} requesters follow 1 and still have a request pending to it: {both:?}",
        both.len()
    );
    app.drained().await;
    app.assert_counts_exact().await;
    assert_eq!(counts(&app, 1).await["followerCount"], ROUNDS);
}

// ---------------------------------------------------------------------------------------------------
// A private account turned public.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_account_with_1000_pending_requests_turned_public_has_1000_followers() {
    let app = TestApp::spawn().await;
    const N: i64 = 1_000;
    app.create_users(1..=N + 1).await;
    set_private(&app, 1, Some(true)).await;
    // The first 950 requests through SQL (for speed), the last 50 through HTTP.
    const THROUGH_HTTP: i64 = 50;
    app.sql(&format!(
        "INSERT INTO follow_requests (requester_id, target_id) \
         SELECT g, 1 FROM generate_series(2::bigint, {}::bigint) AS g",
        N + 1 - THROUGH_HTTP
    ))
    .await;
    let started = Instant::now();
    let answers = follow_all(
        &app,
        (N + 2 - THROUGH_HTTP..=N + 1).collect(),
        1,
        16,
        Arc::new(AtomicUsize::new(0)),
    )
    .await;
    eprintln!(
        "{THROUGH_HTTP} follow requests over HTTP in {:?}",
        started.elapsed()
    );
    assert!(
        answers
            .iter()
            .all(|a| *a == json!({ "following": false, "requested": true, "changed": true })),
        "every follow was a request: {answers:?}"
    );
    let owner = "{ followRequests { totalCount } viewer { followerCount } }";
    assert_eq!(
        data(&app, Some(1), owner, json!({})).await,
        json!({ "followRequests": { "totalCount": N }, "viewer": { "followerCount": 0 } })
    );
    app.drained().await;
    assert_eq!(counts(&app, 1).await["followerCount"], 0, "cached as 0");

    let started = Instant::now();
    assert_eq!(set_private(&app, 1, Some(false)).await, false);
    eprintln!("turned public in {:?}", started.elapsed());
    assert_eq!(app.count("SELECT count(*) FROM follow_requests").await, 0);
    assert_eq!(
        app.count("SELECT count(*) FROM follows WHERE followee_id = 1")
            .await,
        N
    );
    app.drained().await;
    app.assert_counts_exact().await;
    assert_eq!(
        data(&app, Some(1), owner, json!({})).await,
        json!({ "followRequests": { "totalCount": 0 }, "viewer": { "followerCount": N } })
    );
    let public = data(
        &app,
        None,
        r#"{ user(id: "1") { followerCount followers(first: 100) { totalCount nodes { id } } } }"#,
        json!({}),
    )
    .await;
    assert_eq!(public["user"]["followerCount"], N);
    assert_eq!(public["user"]["followers"]["totalCount"], N);
    assert_eq!(
        public["user"]["followers"]["nodes"]
            .as_array()
            .map(Vec::len),
        Some(100)
    );
    let requester = data(
        &app,
        Some(N + 1),
        r#"{ user(id: "1") { viewerIsFollowing viewerHasRequested } }"#,
        json!({}),
    )
    .await;
    assert_eq!(
        requester["user"],
        json!({ "viewerIsFollowing": true, "viewerHasRequested": false })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_arriving_while_an_account_turns_public_all_end_as_edges() {
    let app = TestApp::spawn().await;
    const PENDING: i64 = 300;
    const ARRIVING: i64 = 150;
    const ROUNDS: i64 = 2;
    let per_round = 1 + PENDING + ARRIVING;
    app.create_users(1..=ROUNDS * per_round).await;
    for round in 0..ROUNDS {
        let owner = round * per_round + 1;
        let pending = owner + 1..=owner + PENDING;
        let arriving: Vec<i64> = (owner + PENDING + 1..=owner + PENDING + ARRIVING).collect();
        set_private(&app, owner, Some(true)).await;
        // Most pending requests through SQL (speed), a few through HTTP.
        let through_http: Vec<i64> = pending.clone().rev().take(10).collect();
        app.sql(&format!(
            "INSERT INTO follow_requests (requester_id, target_id) \
             SELECT g, {owner} FROM generate_series({}::bigint, {}::bigint) AS g",
            pending.start(),
            pending.end() - 10
        ))
        .await;
        let asked = follow_all(&app, through_http, owner, 10, Arc::new(AtomicUsize::new(0))).await;
        assert!(asked.iter().all(|a| a["requested"] == true));

        // New follows stream in; the account turns public once a third of them have answered.
        let done = Arc::new(AtomicUsize::new(0));
        let stream = follow_all(&app, arriving.clone(), owner, 8, done.clone());
        let flip = async {
            assert!(
                eventually(Duration::from_secs(10), || async {
                    done.load(Ordering::SeqCst) >= (ARRIVING / 3) as usize
                })
                .await
            );
            set_private(&app, owner, Some(false)).await
        };
        let (answers, public) = tokio::join!(stream, flip);
        assert_eq!(public, false);
        let requested = answers.iter().filter(|a| a["requested"] == true).count();
        let followed = answers.iter().filter(|a| a["following"] == true).count();
        eprintln!("round {round}: {requested} arrived as requests, {followed} as follows");
        assert_eq!(requested + followed, ARRIVING as usize, "{answers:?}");
        assert!(
            requested >= (ARRIVING / 3) as usize,
            "those before the flip asked"
        );

        assert_eq!(
            app.count(&format!(
                "SELECT count(*) FROM follow_requests WHERE target_id = {owner}"
            ))
            .await,
            0,
            "round {round}: a request is left pending on a public account"
        );
        assert_eq!(
            app.count(&format!(
                "SELECT count(*) FROM follows WHERE followee_id = {owner}"
            ))
            .await,
            PENDING + ARRIVING,
            "round {round}: every request and follow is an edge"
        );
        app.drained().await;
        app.assert_counts_exact().await;
        assert_eq!(
            counts(&app, owner).await["followerCount"],
            PENDING + ARRIVING
        );
    }
}
