//! The event pipeline: counts converge exactly, redelivery changes nothing, lost entries are republished.

use std::time::Duration;

use follow_service::{
    db,
    events::consumer::{self, ConsumerSettings},
    redis_pool::redis,
};
use serde_json::json;

use crate::support::{Options, TestApp};

/// Entries read for the group by `consumer` (up to `count`), which then never acknowledges them: a
/// consumer that died, or stalls, holding them pending.
async fn read_unacknowledged(
    app: &TestApp,
    conn: &mut follow_service::redis_pool::Dedicated,
    consumer: &str,
    count: usize,
) {
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(app.app.stream.first().group)
        .arg(consumer)
        .arg("COUNT")
        .arg(count)
        .arg("STREAMS")
        .arg(&app.app.stream.first().stream)
        .arg(">")
        .query_async(conn)
        .await
        .expect("XREADGROUP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_converge_exactly_after_a_burst_of_random_follows_and_unfollows() {
    let app = TestApp::spawn().await;
    app.create_users(1..=50).await;
    // Ten clients, 100 operations each, over 50 users: many pairs are followed and unfollowed repeatedly.
    app.random_burst(10, 100, 50).await;
    app.drained().await;
    app.assert_counts_exact().await;
    let mut conn = db::connect(&app.app.db).await.expect("connection");
    assert!(
        db::stats::find_drift(&mut conn)
            .await
            .expect("drift")
            .is_empty()
    );

    // And the API reports the same numbers.
    let data = app
        .data(
            None,
            r#"{ users(ids: ["1", "2", "3"]) { id followerCount followingCount } }"#,
            json!({}),
        )
        .await;
    for user in data["users"].as_array().expect("users") {
        let id: i64 = user["id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("id");
        let followers = app
            .count(&format!(
                "SELECT count(*) FROM follows WHERE followee_id = {id}"
            ))
            .await;
        let following = app
            .count(&format!(
                "SELECT count(*) FROM follows WHERE follower_id = {id}"
            ))
            .await;
        assert_eq!(
            (
                user["followerCount"].as_i64(),
                user["followingCount"].as_i64()
            ),
            (Some(followers), Some(following))
        );
    }
}

fn settings(app: &TestApp, batch_size: usize) -> ConsumerSettings {
    app.consumer_settings(batch_size, "test-consumer")
}

async fn connection(app: &TestApp) -> follow_service::redis_pool::Dedicated {
    let mut conn = app.redis().await;
    consumer::ensure_group(&mut conn, app.app.stream.first())
        .await
        .expect("group");
    conn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_or_duplicated_entry_changes_the_counts_once() {
    let app = TestApp::without_pipeline().await;
    app.create_users(1..=2).await;
    let mut conn = connection(&app).await;
    app.follow(1, 2).await;

    // The same entry appended a second time (as a relay racing the writer would).
    let entries = stream_entries(&app, &mut conn).await;
    assert_eq!(entries.ids.len(), 1);
    let mut xadd = redis::cmd("XADD");
    xadd.arg(&app.app.stream.first().stream).arg("*");
    for field in entries.ids[0].map.keys() {
        xadd.arg(field)
            .arg(entries.ids[0].get::<String>(field).expect("text field"));
    }
    let _: String = xadd.query_async(&mut conn).await.expect("XADD duplicate");

    // One entry per batch, so the duplicate arrives in a batch of its own.
    let settings = settings(&app, 1);
    assert_eq!(
        consumer::consume_once(&app.app.db, &mut conn, &settings)
            .await
            .expect("first"),
        1
    );
    assert_eq!(
        consumer::consume_once(&app.app.db, &mut conn, &settings)
            .await
            .expect("duplicate"),
        0
    );
    // And the same outbox id applied again directly (a redelivery after a crash before XACK).
    let outbox_id: i64 = entries.ids[0]
        .get::<String>("id")
        .and_then(|s| s.parse().ok())
        .expect("outbox id");
    let outbox_id = follow_service::domain::EventId(outbox_id);
    let again = consumer::apply_with_retry(&app.app.db, &[outbox_id, outbox_id])
        .await
        .expect("apply");
    assert!(again.events.is_empty());

    app.assert_counts_exact().await;
    let data = app
        .data(None, r#"{ user(id: "2") { followerCount } }"#, json!({}))
        .await;
    assert_eq!(data["user"]["followerCount"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_committed_but_never_published_is_relayed_and_applied() {
    let app = TestApp::spawn().await;
    app.create_users(1..=3).await;
    // What a process that died between commit and XADD leaves behind: the edge and its outbox row only.
    app.sql(
        "WITH edge AS (INSERT INTO follows (follower_id, followee_id) VALUES (3, 1) RETURNING follower_id, followee_id, created_at) \
         INSERT INTO outbox (kind, follower_id, followee_id, occurred_at) SELECT 'follow', follower_id, followee_id, created_at FROM edge",
    )
    .await;
    app.drained().await;
    app.assert_counts_exact().await;
    let data = app
        .data(None, r#"{ user(id: "1") { followerCount } }"#, json!({}))
        .await;
    assert_eq!(data["user"]["followerCount"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_succeed_while_redis_is_unreachable_and_counts_catch_up_later() {
    let app = TestApp::without_pipeline().await;
    app.create_users(1..=3).await;
    // An instance whose Redis is gone (nothing listens on port 1).
    let cut_off = app.sibling(Options {
        redis_url: "redis://127.0.0.1:1".to_owned(),
        ..Options::default()
    });
    for (a, b) in [(1, 2), (3, 2), (1, 3)] {
        let response = crate::support::run_on(
            &cut_off,
            Some(a),
            "mutation($u: ID!) { follow(userId: $u) { changed } }",
            json!({ "u": b.to_string() }),
        )
        .await;
        assert_eq!(response["data"]["follow"]["changed"], true, "{response:#}");
    }
    let status = crate::support::run_on(
        &cut_off,
        None,
        r#"{ isFollowing(followerId: "3", followeeId: "2") }"#,
        json!({}),
    )
    .await;
    assert_eq!(status["data"]["isFollowing"], true);
    assert_eq!(
        app.count("SELECT count(*) FROM outbox").await,
        3,
        "the events wait in the outbox"
    );

    // Redis is back (a healthy instance runs the pipeline): the relay publishes, the consumer applies.
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let tasks = app.app.spawn_pipeline(stopped);
    app.drained().await;
    app.assert_counts_exact().await;
    for task in tasks {
        task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_finds_and_repairs_a_corrupted_count() {
    let app = TestApp::spawn().await;
    app.create_users(1..=3).await;
    app.follow(1, 2).await;
    app.follow(3, 2).await;
    app.drained().await;
    app.sql("UPDATE user_stats SET follower_count = 40 WHERE user_id = 2")
        .await;

    let mut conn = db::connect(&app.app.db).await.expect("connection");
    let drift = db::stats::find_drift(&mut conn).await.expect("drift");
    assert_eq!(drift.len(), 1);
    assert_eq!(
        (
            drift[0].user_id,
            drift[0].stored_followers,
            drift[0].expected_followers
        ),
        (2, 40, 2)
    );
    assert_eq!(db::stats::fix_drift(&mut conn).await.expect("fix").len(), 1);
    assert!(
        db::stats::find_drift(&mut conn)
            .await
            .expect("drift")
            .is_empty()
    );
    app.assert_counts_exact().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repairs_run_at_once_repair_a_count_once() {
    let app = TestApp::spawn().await;
    app.create_users(1..=3).await;
    app.follow(1, 2).await;
    app.follow(3, 2).await;
    app.drained().await;
    // An operator's `reconcile --fix` beside scheduled ones: each adds the difference it found, so
    // without the lock between them a count would be repaired twice (2 + 38 + 38).
    for round in 0..5 {
        app.sql("UPDATE user_stats SET follower_count = 40 WHERE user_id = 2")
            .await;
        let repairs: Vec<_> = (0..4)
            .map(|_| {
                let db = app.app.db.clone();
                let caches = app.app.caches.clone();
                tokio::spawn(async move {
                    follow_service::reconcile::reconcile(&db, &caches, true).await
                })
            })
            .collect();
        let mut repaired = 0;
        for repair in repairs {
            repaired += repair.await.expect("joined").expect("repaired").len();
        }
        assert_eq!(
            repaired, 1,
            "round {round}: one repair finds the drift, the others none"
        );
        app.assert_counts_exact().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_repair_skips_while_another_holds_the_lock_and_one_by_hand_waits_for_it() {
    use db::stats::{WhenLocked, fix_drift_locked};
    let app = TestApp::spawn().await;
    app.create_users(1..=2).await;
    app.follow(1, 2).await;
    app.drained().await;
    app.sql("UPDATE user_stats SET follower_count = 7 WHERE user_id = 2")
        .await;
    // Another repair, as PostgreSQL sees it: a transaction holding the reconcile lock.
    let other = app
        .in_open_transaction(&format!(
            "SELECT pg_advisory_xact_lock({})",
            db::stats::RECONCILE_LOCK
        ))
        .await;

    let mut conn = db::connect(&app.app.db).await.expect("connection");
    assert_eq!(
        fix_drift_locked(&mut conn, WhenLocked::Skip)
            .await
            .expect("skipped"),
        None,
        "a scheduled repair skips its turn"
    );
    let (db, caches) = (app.app.db.clone(), app.app.caches.clone());
    let by_hand =
        tokio::spawn(async move { follow_service::reconcile::reconcile(&db, &caches, true).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !by_hand.is_finished(),
        "a repair by hand waits for the lock"
    );
    assert_eq!(
        app.count("SELECT follower_count FROM user_stats WHERE user_id = 2")
            .await,
        7
    );
    // The other repair's transaction ends: its lock with it.
    other.batch_execute("COMMIT").await.expect("commit");
    let repaired = by_hand.await.expect("joined").expect("repaired");
    assert_eq!(repaired.len(), 1);
    app.assert_counts_exact().await;
    assert_eq!(
        fix_drift_locked(&mut conn, WhenLocked::Skip)
            .await
            .expect("ran"),
        Some(Vec::new()),
        "with the lock free, a scheduled repair runs (and finds nothing left)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_counts_pending_events_as_not_drift() {
    let app = TestApp::without_pipeline().await;
    app.create_users(1..=2).await;
    app.follow(1, 2).await;
    // The event is committed but not applied: user_stats says 0, the edge says 1, the outbox says +1.
    let mut conn = db::connect(&app.app.db).await.expect("connection");
    assert!(
        db::stats::find_drift(&mut conn)
            .await
            .expect("drift")
            .is_empty()
    );
    assert!(
        db::stats::fix_drift(&mut conn)
            .await
            .expect("fix")
            .is_empty()
    );
    let outbox_id = follow_service::domain::EventId(app.count("SELECT id FROM outbox").await);
    consumer::apply_with_retry(&app.app.db, &[outbox_id])
        .await
        .expect("apply");
    app.assert_counts_exact().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_held_by_a_dead_consumer_are_taken_over() {
    // The relay stays out of it (it would republish the rows after a minute).
    let options = Options {
        pipeline: false,
        relay_after: Duration::from_secs(60),
        ..Options::default()
    };
    let app = TestApp::with_options(options).await;
    app.create_users(1..=4).await;
    let mut conn = connection(&app).await;
    for (a, b) in [(1, 2), (3, 2), (4, 2)] {
        app.follow(a, b).await;
    }
    // A consumer reads the entries and dies before applying them.
    read_unacknowledged(&app, &mut conn, "doomed", 10).await;
    let survivor = app.consumer_settings(10, "survivor");
    assert_eq!(
        consumer::consume_once(&app.app.db, &mut conn, &survivor)
            .await
            .expect("consume"),
        0,
        "nothing new to read"
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    let reclaimed =
        follow_service::events::recovery::reclaim_once(&app.app.db, &mut conn, &survivor)
            .await
            .expect("reclaim");
    assert_eq!(
        (reclaimed.claimed, reclaimed.applied, reclaimed.dead),
        (3, 3, 0)
    );
    app.assert_counts_exact().await;
    assert_eq!(app.count("SELECT count(*) FROM outbox").await, 0);
    let pending: redis::Value = redis::cmd("XPENDING")
        .arg(&app.app.stream.first().stream)
        .arg(app.app.stream.first().group)
        .query_async(&mut conn)
        .await
        .expect("XPENDING");
    assert!(
        matches!(&pending, redis::Value::Array(items) if items.first() == Some(&redis::Value::Int(0))),
        "{pending:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_entry_goes_to_the_dead_letters_after_the_delivery_limit() {
    let app = TestApp::without_pipeline().await;
    app.create_users(1..=2).await;
    let mut conn = connection(&app).await;
    let poison: String = redis::cmd("XADD")
        .arg(&app.app.stream.first().stream)
        .arg("*")
        .arg("garbage")
        .arg("yes")
        .query_async(&mut conn)
        .await
        .expect("XADD poison");
    app.follow(1, 2).await;
    let settings = settings(&app, 10);
    assert_eq!(
        consumer::consume_once(&app.app.db, &mut conn, &settings)
            .await
            .expect("consume"),
        1,
        "the good entry is applied at once"
    );
    let mut dead = 0;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(120)).await;
        dead += follow_service::events::recovery::reclaim_once(&app.app.db, &mut conn, &settings)
            .await
            .expect("reclaim")
            .dead;
    }
    assert_eq!(dead, 1);
    let letters: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(&app.app.stream.first().dead_letters)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .expect("XRANGE");
    assert_eq!(letters.ids.len(), 1);
    assert_eq!(
        letters.ids[0].get::<String>("original_id").as_deref(),
        Some(poison.as_str())
    );
    assert_eq!(
        letters.ids[0].get::<String>("deliveries").as_deref(),
        Some("3")
    );
    assert_eq!(
        letters.ids[0].get::<String>("field:garbage").as_deref(),
        Some("yes")
    );
    app.assert_counts_exact().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_stream_mid_flight_loses_no_event() {
    let app = TestApp::spawn().await;
    app.create_users(1..=20).await;
    // Writes go on while the stream (and its group) vanish, as in a Redis flush or failover.
    let writes = async {
        for a in 1..=20 {
            for b in [1, 2, 3] {
                if a != b {
                    app.follow(a, b).await;
                }
            }
        }
    };
    let flush = async {
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(30)).await;
            let mut conn = connection(&app).await;
            let _: i64 = redis::cmd("DEL")
                .arg(&app.app.stream.first().stream)
                .query_async(&mut conn)
                .await
                .expect("DEL stream");
        }
    };
    futures::future::join(writes, flush).await;
    app.drained().await;
    app.assert_counts_exact().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trimming_keeps_every_entry_not_yet_applied() {
    let app = TestApp::without_pipeline().await;
    app.create_users(1..=30).await;
    let mut conn = connection(&app).await;
    for a in 2..=30 {
        app.follow(a, 1).await;
    }
    // Apply the first ten only; the other nineteen are still waiting.
    let settings = settings(&app, 10);
    consumer::consume_once(&app.app.db, &mut conn, &settings)
        .await
        .expect("consume");
    follow_service::events::recovery::trim_once(&mut conn, app.app.stream.first())
        .await
        .expect("trim");
    let length: i64 = redis::cmd("XLEN")
        .arg(&app.app.stream.first().stream)
        .query_async(&mut conn)
        .await
        .expect("XLEN");
    assert!(
        length >= 19,
        "an unapplied entry was trimmed: {length} left"
    );
    for _ in 0..3 {
        consumer::consume_once(&app.app.db, &mut conn, &settings)
            .await
            .expect("consume");
    }
    app.assert_counts_exact().await;
    assert_eq!(app.count("SELECT count(*) FROM outbox").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_reconcile_repairs_drift_while_serving() {
    let app = TestApp::spawn().await;
    app.create_users(1..=3).await;
    app.follow(1, 2).await;
    app.drained().await;
    app.sql("UPDATE user_stats SET follower_count = 99 WHERE user_id = 2")
        .await;
    let caches = app.app.caches.clone();
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(follow_service::reconcile::run_every(
        app.app.db.clone(),
        caches,
        Duration::from_millis(100),
        stopped,
    ));
    let repaired = crate::support::eventually(Duration::from_secs(5), || async {
        app.count("SELECT follower_count FROM user_stats WHERE user_id = 2")
            .await
            == 1
    })
    .await;
    task.abort();
    assert!(repaired);
    app.assert_counts_exact().await;
    let data = app
        .data(None, r#"{ user(id: "2") { followerCount } }"#, json!({}))
        .await;
    assert_eq!(data["user"]["followerCount"], 1);
}

/// Every entry of the app's stream, oldest first.
async fn stream_entries(
    app: &TestApp,
    conn: &mut follow_service::redis_pool::Dedicated,
) -> redis::streams::StreamRangeReply {
    redis::cmd("XRANGE")
        .arg(&app.app.stream.first().stream)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .expect("XRANGE")
}

/// The outbox ids the stream's entries carry, in stream order.
async fn outbox_ids_in_stream(
    app: &TestApp,
    conn: &mut follow_service::redis_pool::Dedicated,
) -> Vec<i64> {
    stream_entries(app, conn)
        .await
        .ids
        .iter()
        .filter_map(|e| e.get::<String>("id").and_then(|s| s.parse().ok()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_consumer_does_not_make_the_relay_grow_the_stream_but_a_lost_entry_is_republished()
 {
    // The consumer lags far beyond the relay delay: some entries delivered and never acknowledged,
    // the others not delivered at all. One undelivered entry is lost from the stream.
    let relay_after = Duration::from_millis(100);
    let app = TestApp::with_options(Options {
        pipeline: false,
        relay_after,
        ..Options::default()
    })
    .await;
    app.create_users(1..=6).await;
    let mut conn = connection(&app).await;
    for a in 2..=6 {
        app.follow(a, 1).await;
    }
    let written = outbox_ids_in_stream(&app, &mut conn).await;
    assert_eq!(written.len(), 5);
    read_unacknowledged(&app, &mut conn, "stalled", 2).await;
    let entries = stream_entries(&app, &mut conn).await;
    let _: i64 = redis::cmd("XDEL")
        .arg(&app.app.stream.first().stream)
        .arg(&entries.ids[3].id)
        .query_async(&mut conn)
        .await
        .expect("XDEL");
    let lost = written[3];

    // Several relay intervals, each past the relay delay.
    for _ in 0..5 {
        tokio::time::sleep(relay_after + Duration::from_millis(50)).await;
        app.relay_pass_after(relay_after).await;
    }
    let mut in_stream = outbox_ids_in_stream(&app, &mut conn).await;
    assert_eq!(
        in_stream.len(),
        5,
        "one entry per unapplied row, the lost one republished once: {in_stream:?}"
    );
    assert_eq!(in_stream.last(), Some(&lost), "the lost entry comes back");
    in_stream.sort_unstable();
    assert_eq!(in_stream, written);

    // Every event is applied exactly once: the undelivered ones by a consumer, the stalled ones by
    // the consumer that takes them over.
    let survivor = app.consumer_settings(10, "survivor");
    consumer::consume_once(&app.app.db, &mut conn, &survivor)
        .await
        .expect("consume");
    tokio::time::sleep(Duration::from_millis(150)).await;
    follow_service::events::recovery::reclaim_once(&app.app.db, &mut conn, &survivor)
        .await
        .expect("reclaim");
    assert_eq!(app.count("SELECT count(*) FROM outbox").await, 0);
    app.assert_counts_exact().await;
    assert_eq!(
        published_fields(&app, &mut conn).await,
        0,
        "acknowledging forgets"
    );
}

/// Fields of the published index (outbox id → stream entry).
async fn published_fields(app: &TestApp, conn: &mut follow_service::redis_pool::Dedicated) -> i64 {
    redis::cmd("HLEN")
        .arg(&app.app.stream.first().published)
        .query_async(conn)
        .await
        .expect("HLEN")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_forgets_published_entries_no_longer_in_flight_and_keeps_the_others() {
    let app = TestApp::without_pipeline().await;
    app.create_users(1..=3).await;
    let mut conn = connection(&app).await;
    app.follow(1, 3).await;
    app.follow(2, 3).await;
    assert_eq!(published_fields(&app, &mut conn).await, 2);
    // A consumer that acknowledges without forgetting (an older version, or one that died in between).
    let read: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(app.app.stream.first().group)
        .arg("old")
        .arg("COUNT")
        .arg(1)
        .arg("STREAMS")
        .arg(&app.app.stream.first().stream)
        .arg(">")
        .query_async(&mut conn)
        .await
        .expect("XREADGROUP");
    let entry = &read.keys[0].ids[0];
    let _: i64 = redis::cmd("XACK")
        .arg(&app.app.stream.first().stream)
        .arg(app.app.stream.first().group)
        .arg(&entry.id)
        .query_async(&mut conn)
        .await
        .expect("XACK");
    let (cursor, swept) = follow_service::events::producer::sweep_published(
        &mut conn,
        app.app.stream.first(),
        0,
        100,
    )
    .await
    .expect("sweep");
    assert_eq!((cursor, swept), (0, 1));
    let left: Vec<String> = redis::cmd("HKEYS")
        .arg(&app.app.stream.first().published)
        .query_async(&mut conn)
        .await
        .expect("HKEYS");
    let acknowledged: String = entry.get("id").expect("outbox id");
    assert_eq!(left.len(), 1);
    assert_ne!(left[0], acknowledged, "the undelivered entry's field stays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_gets_an_event_once_even_when_it_is_delivered_again_much_later() {
    let app = TestApp::without_pipeline().await;
    app.create_users(1..=3).await;
    let served = crate::support::serve(&app.app).await;
    let mut subscriber =
        crate::support::ws::WsClient::connect(served.address, Some(&app.token(2, false))).await;
    subscriber
        .subscribe(
            "events",
            "subscription { followEvents { kind follower { id } } }",
        )
        .await;
    assert!(
        crate::support::eventually(Duration::from_secs(5), || async {
            app.app.events.subscriber_count() == 1
        })
        .await
    );
    let follower_of = |message: serde_json::Value| {
        assert_eq!(message["type"], "next", "{message}");
        message["payload"]["data"]["followEvents"]["follower"]["id"].clone()
    };
    app.follow(1, 2).await;
    assert_eq!(follower_of(subscriber.next().await), "1");

    // Much later (thousands of other users' events on), the same entry is appended again, as a relay
    // does when the counters lag or the entry was lost. Then a new event.
    let mut conn = connection(&app).await;
    let original: redis::streams::StreamRangeReply = stream_entries(&app, &mut conn).await;
    let mut others = redis::pipe();
    for n in 0..10_000i64 {
        others
            .cmd("XADD")
            .arg(&app.app.stream.first().stream)
            .arg("*")
            .arg("id")
            .arg(1_000_000 + n)
            .arg("kind")
            .arg("follow")
            .arg("follower")
            .arg(1_000 + n)
            .arg("followee")
            .arg(500_000 + n)
            .arg("at")
            .arg("2026-11-25T10:00:00.000000Z")
            .ignore();
    }
    let () = others.query_async(&mut conn).await.expect("XADD others");
    let mut again = redis::cmd("XADD");
    again.arg(&app.app.stream.first().stream).arg("*");
    for (field, value) in &original.ids[0].map {
        let value: String = redis::from_redis_value_ref(value).expect("text field");
        again.arg(field).arg(value);
    }
    let _: String = again.query_async(&mut conn).await.expect("XADD again");
    app.follow(3, 2).await;

    assert_eq!(
        follower_of(subscriber.next().await),
        "3",
        "the repeated event was delivered a second time"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutation_s_exact_counts_read_a_large_backlog_by_index_not_by_scan() {
    let app = TestApp::without_pipeline().await;
    // 100,000 unapplied events over 20,000 users: the outbox while the consumers are far behind.
    app.sql(
        "INSERT INTO outbox (kind, follower_id, followee_id) \
         SELECT CASE WHEN i % 5 = 0 THEN 'unfollow' ELSE 'follow' END, \
                1 + (i * 7919) % 20000, 1 + (i * 104729) % 20000 \
         FROM generate_series(1::bigint, 100000) AS i",
    )
    .await;
    app.sql("ANALYZE outbox").await;
    let users = [5i64, 77];

    let plan: Vec<String> = app
        .sql(&format!(
            "EXPLAIN {}",
            db::stats::COUNTS_NOW_SQL.replace("$1", "ARRAY[5, 77]")
        ))
        .await
        .iter()
        .map(|row| row.get(0))
        .collect();
    let plan = plan.join("\n");
    assert!(!plan.contains("Seq Scan on outbox"), "{plan}");
    assert!(plan.contains("outbox_followee_idx"), "{plan}");
    assert!(plan.contains("outbox_follower_idx"), "{plan}");

    // And the counts are the backlog's deltas (no stored counts yet).
    let mut conn = db::connect(&app.app.db).await.expect("connection");
    let mut counts = db::stats::counts_now(&mut conn, &users)
        .await
        .expect("counts now");
    counts.sort_by_key(|c| c.user_id);
    for (user, counts) in users.iter().zip(&counts) {
        let delta = |side: &str| {
            format!(
                "SELECT COALESCE(sum(CASE kind WHEN 'follow' THEN 1 ELSE -1 END), 0)::bigint \
                 FROM outbox WHERE {side} = {user}"
            )
        };
        assert_eq!(
            (
                counts.user_id.get(),
                counts.follower_count,
                counts.following_count
            ),
            (
                *user,
                app.count(&delta("followee_id")).await,
                app.count(&delta("follower_id")).await
            )
        );
    }
}

/// The names of the counters group's consumers.
async fn consumer_names(
    app: &TestApp,
    conn: &mut follow_service::redis_pool::Dedicated,
) -> Vec<String> {
    let reply: redis::streams::StreamInfoConsumersReply = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(&app.app.stream.first().stream)
        .arg(app.app.stream.first().group)
        .query_async(conn)
        .await
        .expect("XINFO CONSUMERS");
    reply.consumers.into_iter().map(|c| c.name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_long_idle_with_nothing_pending_leave_the_group_and_holders_stay() {
    let app = TestApp::without_pipeline().await;
    app.create_users(1..=2).await;
    let mut conn = connection(&app).await;
    app.follow(1, 2).await;
    // A process that stopped long ago (nothing pending), and one that died holding an entry.
    let _: () = redis::cmd("XGROUP")
        .arg("CREATECONSUMER")
        .arg(&app.app.stream.first().stream)
        .arg(app.app.stream.first().group)
        .arg("gone-long-ago")
        .query_async(&mut conn)
        .await
        .expect("CREATECONSUMER");
    read_unacknowledged(&app, &mut conn, "died-holding", 10).await;
    tokio::time::sleep(Duration::from_millis(50)).await;

    let forgotten = follow_service::events::recovery::forget_idle_consumers(
        &mut conn,
        app.app.stream.first(),
        Duration::from_millis(20),
    )
    .await
    .expect("forget");
    assert_eq!(forgotten, 1);
    assert_eq!(consumer_names(&app, &mut conn).await, ["died-holding"]);
    // Not idle long enough: nobody goes.
    let forgotten = follow_service::events::recovery::forget_idle_consumers(
        &mut conn,
        app.app.stream.first(),
        Duration::from_secs(3600),
    )
    .await
    .expect("forget");
    assert_eq!(forgotten, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_gauges_give_the_backlog_and_the_age_of_its_oldest_event() {
    let app = TestApp::without_pipeline().await;
    app.create_users(1..=3).await;
    let mut conn = db::connect(&app.app.db).await.expect("connection");
    let empty = db::outbox::stats(&mut conn).await.expect("stats");
    assert_eq!((empty.backlog, empty.oldest_age_seconds), (0, 0.0));
    app.follow(1, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.follow(1, 3).await;
    let stats = db::outbox::stats(&mut conn).await.expect("stats");
    assert_eq!(stats.backlog, 2);
    // The first event's age, not the second's.
    assert!((0.3..30.0).contains(&stats.oldest_age_seconds), "{stats:?}");
}
