//! Partitioned event streams (`FOLLOW_STREAM_PARTITIONS`): events land in their followee's partition,
//! every event is applied once, subscribers see each of their events once, the relay republishes into
//! the right partition, and changing P (grown, shrunk, or with a partition left unread) loses nothing.

use std::{collections::HashMap, time::Duration};

use follow_service::{
    db,
    domain::{EventKind, UserId},
    events::{StreamNames, codec, fanout::Delivery, partition_of, stream_stats},
    redis_pool::{Dedicated, redis},
};
use futures::StreamExt;
use serde_json::json;

use crate::support::{Options, TestApp, run_on};

/// Options of an instance with `written` partitions, readers covering `read` (None: the default, P).
fn partitioned(written: usize, read: Option<usize>, pipeline: bool) -> Options {
    // A Redis budget no loaded test machine runs out of: these tests check where appends land, and an
    // append that timed out would be left to the relay (some tests make it too slow to help).
    let mut env = vec![
        ("FOLLOW_STREAM_PARTITIONS", written.to_string()),
        ("FOLLOW_REDIS_TIMEOUT_MS", "2000".to_owned()),
    ];
    if let Some(read) = read {
        env.push(("FOLLOW_STREAM_PARTITIONS_READ", read.to_string()));
    }
    Options {
        pipeline,
        env,
        ..Options::default()
    }
}

/// The events in one partition's stream, in stream order.
async fn partition_events(
    conn: &mut Dedicated,
    names: &StreamNames,
) -> Vec<follow_service::domain::FollowEvent> {
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(&names.stream)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .expect("XRANGE");
    entries
        .ids
        .iter()
        .map(|entry| codec::decode(&entry.map).expect("a decodable entry"))
        .collect()
}

/// Waits (up to 5 s) until every entry of these partitions was delivered to the group and acknowledged
/// (the XACK follows the apply's commit, so an empty outbox may come a moment before).
async fn all_acknowledged(app: &follow_service::app::App, partitions: &[StreamNames]) {
    for names in partitions {
        let done = crate::support::eventually(Duration::from_secs(5), || async {
            let stats = stream_stats(&app.redis, names).await.expect("stats");
            (stats.lag, stats.pending) == (0, 0)
        })
        .await;
        assert!(done, "partition {} not all acknowledged", names.partition);
    }
}

/// XLEN of each partition's stream.
async fn lengths(conn: &mut Dedicated, partitions: &[StreamNames]) -> Vec<u64> {
    let mut pipe = redis::pipe();
    for names in partitions {
        pipe.cmd("XLEN").arg(&names.stream);
    }
    pipe.query_async(conn).await.expect("XLEN")
}

/// The first of `users` whose events go to `partition` of `partitions`.
fn user_in(users: std::ops::RangeInclusive<i64>, partition: usize, partitions: usize) -> i64 {
    users
        .into_iter()
        .find(|&u| partition_of(UserId(u), partitions) == partition)
        .expect("some user of the range is in the partition")
}

/// `viewer` follows or unfollows `user` through `app` (another instance than the test's own).
async fn edge_on(app: &follow_service::app::App, mutation: &str, viewer: i64, user: i64) {
    let query = format!("mutation($u: ID!) {{ {mutation}(userId: $u) {{ changed }} }}");
    let response = run_on(app, Some(viewer), &query, json!({ "u": user.to_string() })).await;
    assert!(response.get("errors").is_none(), "{response:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_lands_in_its_followee_s_partition_and_is_applied_once() {
    let app = TestApp::with_options(partitioned(4, None, false)).await;
    app.create_users(1..=40).await;
    // Followees 1..=20 (all four partitions among them), each followed twice, some unfollowed again.
    for follower in 21..=40 {
        app.follow(follower, follower - 20).await;
        app.follow(follower, (follower - 20) % 20 + 1).await;
    }
    for follower in (21..=40).step_by(3) {
        app.unfollow(follower, follower - 20).await;
    }
    let mut conn = app.redis().await;
    let streams = app.app.stream.clone();
    assert_eq!(streams.read().len(), 4);
    let mut seen = 0;
    for names in streams.read() {
        let events = partition_events(&mut conn, names).await;
        assert!(
            !events.is_empty(),
            "partition {} got no event",
            names.partition
        );
        for event in &events {
            assert_eq!(
                partition_of(event.followee, 4),
                names.partition,
                "{event:?} in partition {}",
                names.partition
            );
        }
        seen += events.len();
    }
    assert_eq!(seen as i64, app.count("SELECT count(*) FROM outbox").await);
    assert_eq!(seen, 47, "40 follows and 7 unfollows");

    // A pipeline over the same database and prefix applies them all, each once.
    let worker = app.instance(partitioned(4, None, true)).await;
    app.drained().await;
    app.assert_counts_exact().await;
    all_acknowledged(&worker.app, streams.read()).await;

    // The stream gauges carry one series per partition.
    let metrics = follow_service::telemetry::metrics::install();
    follow_service::app::gauges::sample_once(&worker.app).await;
    let text = metrics.render();
    for series in [
        "follow_stream_length{partition=\"3\"}",
        "follow_stream_lag{partition=\"3\"}",
    ] {
        assert!(text.contains(series), "/metrics lacks {series}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_converge_exactly_with_fewer_consumers_than_partitions_and_more() {
    // Two instances at P = 4: one with two consumers (four readers, two applying at once), one with six.
    let mut few = partitioned(4, None, true);
    few.env.push(("FOLLOW_CONSUMERS", "2".to_owned()));
    let app = TestApp::with_options(few).await;
    let mut many = partitioned(4, None, true);
    many.env.push(("FOLLOW_CONSUMERS", "6".to_owned()));
    let _other = app.instance(many).await;
    app.create_users(1..=40).await;
    app.random_burst(8, 60, 40).await;
    app.drained().await;
    app.assert_counts_exact().await;
    let mut conn = db::connect(&app.app.db).await.expect("connection");
    let drift = db::stats::find_drift(&mut conn).await.expect("drift");
    assert!(drift.is_empty(), "{drift:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_sees_each_of_its_events_once_from_every_partition() {
    let app = TestApp::with_options(partitioned(4, None, false)).await;
    app.create_users(1..=60).await;
    let viewer = 1;
    // Private users, two per partition, whose approvals of the viewer's requests (events of the
    // approver's partition, told to the viewer) come from all four partitions.
    let approvers: Vec<i64> = (0..4)
        .flat_map(|p| {
            (2..=40)
                .filter(move |&u| partition_of(UserId(u), 4) == p)
                .take(2)
        })
        .collect();
    for &approver in &approvers {
        crate::consent::set_private(&app, approver, Some(true)).await;
    }

    // The fan-out tails every partition before the viewer subscribes: a probe in each gets through.
    for p in 0..4 {
        let target = user_in(41..=60, p, 4);
        let mut probe = app.app.events.subscribe(UserId(target));
        let mut arrived = false;
        for _ in 0..50 {
            app.follow(viewer, target).await;
            if let Ok(Some(_)) =
                tokio::time::timeout(Duration::from_millis(100), probe.next()).await
            {
                arrived = true;
                break;
            }
            app.unfollow(viewer, target).await;
        }
        assert!(arrived, "the fan-out never read partition {p}");
    }

    let mut subscription = app.app.events.subscribe(UserId(viewer));
    for &approver in &approvers {
        app.follow(viewer, approver).await; // a request, told to the approver
        crate::consent::act(&app, approver, "approveFollowRequest", viewer).await;
    }
    let followers: Vec<i64> = (41..=60).collect();
    for &follower in &followers {
        app.follow(follower, viewer).await;
    }
    let expected = approvers.len() + followers.len();
    let mut received: HashMap<(EventKind, UserId), usize> = HashMap::new();
    for _ in 0..expected {
        match tokio::time::timeout(Duration::from_secs(10), subscription.next()).await {
            Ok(Some(Delivery::Event(event))) => {
                *received
                    .entry((event.kind, event.counterpart()))
                    .or_default() += 1;
            }
            other => panic!("expected an event, got {other:?} after {received:?}"),
        }
    }
    for &approver in &approvers {
        assert_eq!(
            received.get(&(EventKind::Approve, UserId(approver))),
            Some(&1)
        );
    }
    for &follower in &followers {
        assert_eq!(
            received.get(&(EventKind::Follow, UserId(follower))),
            Some(&1)
        );
    }

    // Every entry for the viewer appended again, in its partition and in another one (as after a
    // change of P), must not reach it again; the next new event must.
    let mut conn = app.redis().await;
    let streams = app.app.stream.clone();
    let mut again = redis::pipe();
    for names in streams.read() {
        for event in partition_events(&mut conn, names).await {
            if event.recipient() != Some(UserId(viewer)) {
                continue;
            }
            let other = &streams.read()[(names.partition + 1) % 4];
            for target in [names, other] {
                again.cmd("XADD").arg(&target.stream).arg("*");
                for (field, value) in codec::fields(&event) {
                    again.arg(field).arg(value);
                }
                again.ignore();
            }
        }
    }
    let () = again.query_async(&mut conn).await.expect("XADD again");
    let last = user_in(2..=40, (partition_of(UserId(viewer), 4) + 1) % 4, 4);
    app.follow(last, viewer).await;
    match tokio::time::timeout(Duration::from_secs(10), subscription.next()).await {
        Ok(Some(Delivery::Event(event))) => assert_eq!(
            (event.kind, event.follower),
            (EventKind::Follow, UserId(last)),
            "an event was delivered again"
        ),
        other => panic!("expected the last follow, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_republishes_a_lost_entry_into_its_followee_s_partition() {
    let app = TestApp::with_options(partitioned(4, None, false)).await;
    app.create_users(1..=40).await;
    let followee = user_in(2..=40, 3, 4);
    app.follow(1, followee).await;
    let mut conn = app.redis().await;
    let streams = app.app.stream.clone();
    assert_eq!(lengths(&mut conn, streams.read()).await, [0, 0, 0, 1]);

    // The partition's stream is lost: the relay publishes the row again, into the same partition.
    let _: i64 = redis::cmd("DEL")
        .arg(&streams.read()[3].stream)
        .query_async(&mut conn)
        .await
        .expect("DEL");
    let pass = app.relay_pass().await;
    assert_eq!((pass.claimed, pass.republished), (1, 1));
    assert_eq!(lengths(&mut conn, streams.read()).await, [0, 0, 0, 1]);
    let republished = partition_events(&mut conn, &streams.read()[3]).await;
    assert_eq!(republished[0].followee, UserId(followee));

    // Still there and not yet delivered: a second pass leaves it alone.
    let pass = app.relay_pass().await;
    assert_eq!((pass.in_flight, pass.republished), (1, 0));

    let _worker = app.instance(partitioned(4, None, true)).await;
    app.drained().await;
    app.assert_counts_exact().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growing_then_shrinking_p_while_reading_both_layouts_loses_nothing() {
    // P = 1 writes (its stream is partition 0 of every layout), nothing applies them.
    let app = TestApp::with_options(partitioned(1, None, false)).await;
    app.create_users(1..=40).await;
    for follower in 21..=30 {
        app.follow(follower, follower - 20).await;
    }
    // Then P = 4 writes too, over the same database and prefix.
    let four = app.instance(partitioned(4, None, false)).await;
    for follower in 31..=40 {
        edge_on(&four.app, "follow", follower, follower - 30).await;
        edge_on(&four.app, "follow", follower, follower - 20).await;
    }
    let mut conn = app.redis().await;
    let lengths = lengths(&mut conn, four.app.stream.read()).await;
    assert!(lengths[0] >= 10, "{lengths:?}");
    assert!(lengths[1..].iter().all(|&n| n > 0), "{lengths:?}");

    // Shrunk to P = 2 while the readers still cover four partitions, with a relay too slow to help: the
    // consumers themselves drain partitions 2 and 3.
    let mut two = partitioned(2, Some(4), true);
    two.relay_after = Duration::from_secs(120);
    let shrunk = app.instance(two).await;
    edge_on(&shrunk.app, "follow", 40, 35).await;
    app.drained().await;
    app.assert_counts_exact().await;
    all_acknowledged(&shrunk.app, shrunk.app.stream.read()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_stranded_in_a_partition_nobody_reads_is_relayed_and_applied() {
    // P = 4 writes into partitions 1..=3 and stops; P = 1 alone runs the pipeline afterwards.
    let app = TestApp::with_options(partitioned(4, None, false)).await;
    app.create_users(1..=40).await;
    let followees: Vec<i64> = (1..=3).map(|p| user_in(2..=40, p, 4)).collect();
    for &followee in &followees {
        app.follow(1, followee).await;
    }
    let one = app.instance(partitioned(1, None, true)).await;
    assert_eq!(one.app.stream.read().len(), 1);
    app.drained().await;
    app.assert_counts_exact().await;
    // Applied through partition 0, where the relay put them: the stranded entries were never read (no
    // group was ever made on their streams).
    let mut conn = app.redis().await;
    assert_eq!(
        lengths(&mut conn, &app.app.stream.read()[1..]).await,
        [1, 1, 1]
    );
    for names in &app.app.stream.read()[1..] {
        let groups: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&names.stream)
            .query_async(&mut conn)
            .await
            .expect("XINFO GROUPS");
        assert!(
            groups.groups.is_empty(),
            "partition {} was read",
            names.partition
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_spanning_partitions_rides_one_and_publishes_the_others_beside() {
    let app = TestApp::with_options(partitioned(4, None, false)).await;
    app.create_users(1..=40).await;
    let (a, b) = (user_in(1..=40, 0, 4), user_in(1..=40, 2, 4));
    app.follow(a, b).await;
    app.follow(b, a).await;
    // A block ends both follows in one write: an event in a's partition and one in b's.
    crate::consent::act(&app, a, "block", b).await;
    let mut conn = app.redis().await;
    let streams = app.app.stream.clone();
    let mut marked = Vec::new();
    for p in [0, 2] {
        let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
            .arg(&streams.read()[p].stream)
            .arg("-")
            .arg("+")
            .query_async(&mut conn)
            .await
            .expect("XRANGE");
        assert_eq!(
            entries.ids.len(),
            2,
            "partition {p}: a follow and the block's"
        );
        let last = &entries.ids[1].map;
        let event = codec::decode(last).expect("decodable");
        assert_ne!(event.kind, EventKind::Follow, "partition {p}: {event:?}");
        marked.push(codec::recorded_in_caches(last));
    }
    // One append rode the cache's round trip (marked as recorded there); the other went beside it.
    marked.sort();
    assert_eq!(marked, [false, true]);

    let _worker = app.instance(partitioned(4, None, true)).await;
    app.drained().await;
    app.assert_counts_exact().await;
}
