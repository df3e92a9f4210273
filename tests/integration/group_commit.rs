//! Group commit: concurrent writes share one statement and one transaction, each request keeps its own
//! answer, and one bad item never fails the others.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Options, TestApp, eventually};

/// An app whose writes go one batch at a time, so that a batch held up gathers the writes behind it.
async fn one_slot_app() -> TestApp {
    TestApp::with_options(Options {
        env: vec![("FOLLOW_WRITE_CONCURRENCY", "1".to_owned())],
        ..Options::default()
    })
    .await
}

/// Runs `follow` as `viewer`, returning the whole response (data or errors).
async fn follow(app: &TestApp, viewer: i64, user: i64) -> Value {
    app.run(
        Some(viewer),
        "mutation($u: ID!) { follow(userId: $u) { changed following } }",
        json!({ "u": user.to_string() }),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_queued_behind_a_busy_batch_commit_together_each_with_its_own_answer() {
    let app = one_slot_app().await;
    app.create_users(1..=50).await;

    // Hold user 50's row: the first follow's batch waits in its foreign-key check, keeping the one slot.
    let blocker = app.hold_user_row(50).await;
    let app = std::sync::Arc::new(app);
    let first = tokio::spawn({
        let app = app.clone();
        async move { follow(&app, 1, 50).await }
    });
    assert!(
        eventually(Duration::from_secs(10), || async {
            app.count("SELECT count(*) FROM pg_locks WHERE NOT granted")
                .await
                > 0
        })
        .await,
        "the first batch never waited for the lock"
    );

    // Behind it: thirty follows of distinct pairs, one of a user that does not exist, and one pair
    // asked twice at once.
    let mut queued = Vec::new();
    for viewer in 2..=31 {
        let app = app.clone();
        queued.push(tokio::spawn(async move {
            follow(&app, viewer, viewer + 1).await
        }));
    }
    let unknown = tokio::spawn({
        let app = app.clone();
        async move { follow(&app, 32, 9_999).await }
    });
    let twice: Vec<_> = (0..2)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(async move { follow(&app, 40, 41).await })
        })
        .collect();
    // In process, a request reaches the queue in well under this.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    blocker.batch_execute("COMMIT").await.expect("unlock");

    assert_eq!(
        first.await.expect("task")["data"]["follow"],
        json!({ "changed": true, "following": true })
    );
    for task in queued {
        assert_eq!(
            task.await.expect("task")["data"]["follow"],
            json!({ "changed": true, "following": true })
        );
    }
    let unknown = unknown.await.expect("task");
    assert_eq!(
        unknown["errors"][0]["extensions"]["code"], "NOT_FOUND",
        "{unknown}"
    );
    assert!(
        unknown["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("9999")),
        "{unknown}"
    );
    let mut changed = Vec::new();
    for task in twice {
        let answer = task.await.expect("task");
        assert_eq!(answer["data"]["follow"]["following"], true, "{answer}");
        changed.push(answer["data"]["follow"]["changed"] == true);
    }
    changed.sort();
    assert_eq!(
        changed,
        vec![false, true],
        "a pair asked twice at once changes once"
    );

    // The thirty queued follows went in one transaction (the pair asked twice may add another).
    let transactions = app
        .count("SELECT count(DISTINCT xmin::text) FROM follows WHERE follower_id BETWEEN 2 AND 31")
        .await;
    assert_eq!(
        transactions, 1,
        "the queued writes were not written together"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM follows").await,
        32,
        "every good follow, once"
    );
    app.drained().await;
    app.assert_counts_exact().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_churn_on_shared_pairs_ends_with_statuses_and_counts_that_agree() {
    let app = std::sync::Arc::new(
        TestApp::with_options(Options {
            env: vec![("FOLLOW_WRITE_CONCURRENCY", "4".to_owned())],
            ..Options::default()
        })
        .await,
    );
    app.create_users(1..=12).await;
    // Each viewer has two writers toggling the same targets at once: batches in flight together delete
    // and insert the same edges in any order (a deadlock between them is retried, never an error).
    let mut tasks = Vec::new();
    for viewer in 1..=6_i64 {
        for writer in 0..2_i64 {
            let app = app.clone();
            tasks.push(tokio::spawn(async move {
                for round in 0..20_i64 {
                    let target = 7 + (round + writer + viewer) % 6;
                    let mutation = if (round + writer) % 2 == 0 {
                        "follow"
                    } else {
                        "unfollow"
                    };
                    let query =
                        format!("mutation($u: ID!) {{ {mutation}(userId: $u) {{ changed }} }}");
                    let answer = app
                        .run(Some(viewer), &query, json!({ "u": target.to_string() }))
                        .await;
                    assert!(answer.get("errors").is_none(), "{answer}");
                }
            }));
        }
    }
    for task in tasks {
        task.await.expect("writer");
    }
    app.drained().await;
    app.assert_counts_exact().await;
    for viewer in 1..=6_i64 {
        for target in 7..=12_i64 {
            let edge = app
                .count(&format!(
                    "SELECT count(*) FROM follows WHERE follower_id = {viewer} AND followee_id = {target}"
                ))
                .await;
            let status = app
                .data(
                    Some(viewer),
                    "query($a: ID!, $b: ID!) { isFollowing(followerId: $a, followeeId: $b) }",
                    json!({ "a": viewer.to_string(), "b": target.to_string() }),
                )
                .await;
            assert_eq!(
                status["isFollowing"],
                edge == 1,
                "{viewer} → {target}: the status the caches answer vs the edge"
            );
        }
    }
}
