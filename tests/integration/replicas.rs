//! Read replicas: lag-tolerant reads go to a replica that is caught up, a viewer's own write and a
//! mutation's payload are read from the primary, and a replica down or too far behind is skipped.
//!
//! The tests that need a real streaming replica run when `TEST_DATABASE_REPLICA_URLS` names one (CI
//! starts it with `scripts/ensure-pg-replica.sh` and sets `postgres://postgres@127.0.0.1:5433`); without
//! it they say so and pass. The test of a replica that is down needs none and always runs.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Options, RedisProxy, TestApp, databases::REPLAY_PAUSES, eventually};

/// The first test replica's server (for pausing its replay), when the variable names one.
fn replica_server() -> Option<String> {
    let templates = std::env::var("TEST_DATABASE_REPLICA_URLS").ok()?;
    let first = templates
        .split(',')
        .map(str::trim)
        .find(|t| !t.is_empty())?;
    let authority = first.find("://").map_or(0, |i| i + 3);
    let end = first[authority..]
        .find('/')
        .map_or(first.len(), |i| authority + i);
    Some(format!("{}/postgres", &first[..end]))
}

/// The test apps' replica server, or `None` (and a note) when the tests run without one.
fn replica_or_skip(test: &str) -> Option<String> {
    let server = replica_server();
    if server.is_none() {
        eprintln!("{test}: skipped, TEST_DATABASE_REPLICA_URLS is unset");
    }
    server
}

/// Tests that pause the replica's replay, or need it current, take turns (the replica is shared by the
/// whole run).
static REPLAY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Pauses the replica's WAL replay until dropped, which resumes it (with `psql`, so that it happens even
/// when the test panics). Other tests' waits for the replica hold off meanwhile (`REPLAY_PAUSES`).
struct ReplayPaused {
    server: String,
    _pausing: tokio::sync::RwLockWriteGuard<'static, ()>,
}

impl ReplayPaused {
    async fn start(server: &str) -> Self {
        let paused = Self {
            server: server.to_owned(),
            _pausing: REPLAY_PAUSES.write().await,
        };
        paused.sql("SELECT pg_wal_replay_pause()");
        paused
    }

    fn sql(&self, sql: &str) {
        let status = std::process::Command::new("psql")
            .args([self.server.as_str(), "-X", "-q", "-c", sql])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("psql runs");
        assert!(status.success(), "{sql} failed on the replica");
    }
}

impl Drop for ReplayPaused {
    fn drop(&mut self) {
        self.sql("SELECT pg_wal_replay_resume()");
    }
}

/// A test app reading through the test replica (with `max_lag_ms` as the lag bound), once a read has
/// gone there: its database exists on the replica and the probe has seen it caught up.
async fn app_on_replica(max_lag_ms: u64, cache: bool) -> TestApp {
    let app = TestApp::with_options(Options {
        cache,
        env: vec![("FOLLOW_REPLICA_MAX_LAG_MS", max_lag_ms.to_string())],
        ..Options::default()
    })
    .await;
    assert!(app.app.reads.has_replicas(), "the app has the test replica");
    app.create_users(1..=6).await;
    // A user asked for the first time each pass: no cache answers it.
    let unknown = std::sync::atomic::AtomicI64::new(1_000);
    let reached = eventually(Duration::from_secs(10), || async {
        let id = unknown.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        app.data(
            None,
            &format!(r#"{{ user(id: "{id}") {{ handle }} }}"#),
            json!({}),
        )
        .await;
        app.app.reads.counts().replica > 0
    })
    .await;
    assert!(reached, "no read reached the replica in 10 s");
    app
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_tolerant_reads_go_to_a_caught_up_replica() {
    if replica_or_skip("lag_tolerant_reads_go_to_a_caught_up_replica").is_none() {
        return;
    }
    // Not while another test holds the replica's replay paused (it would be skipped as lagging).
    let _turn = REPLAY.lock().await;
    // No cache: every read below is a statement, so the counters tell where each went.
    // A lag bound the replica meets even while the whole suite loads the box (its values are checked
    // after `drained()`, which waits for the replica to replay).
    let app = app_on_replica(30_000, false).await;
    app.follow(2, 1).await;
    app.follow(3, 1).await;
    app.drained().await;
    let before = app.app.reads.counts();
    let data = app
        .data(
            None,
            r#"{ user(id: "1") { handle followerCount followers(first: 10) { totalCount nodes { id } } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(data["user"]["followerCount"], 2);
    assert_eq!(data["user"]["followers"]["totalCount"], 2);
    assert_eq!(
        data["user"]["followers"]["nodes"],
        json!([{ "id": "3" }, { "id": "2" }])
    );
    let after = app.app.reads.counts();
    assert!(
        after.replica >= before.replica + 2,
        "the users, counts and list reads went to the replica: {before:?} -> {after:?}"
    );
    assert_eq!(
        after.primary, before.primary,
        "an anonymous read of data that may lag used the primary: {before:?} -> {after:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewers_own_write_is_read_from_the_primary_while_the_replica_lags() {
    let Some(server) =
        replica_or_skip("a_viewers_own_write_is_read_from_the_primary_while_the_replica_lags")
    else {
        return;
    };
    let _turn = REPLAY.lock().await;
    // A lag bound far above the test's length: the paused replica stays in use for reads that may lag.
    let app = app_on_replica(60_000, false).await;
    let paused = ReplayPaused::start(&server).await;

    // The mutation's payload shows the write (its reads go to the primary).
    let payload = app
        .data(
            Some(4),
            r#"mutation { follow(userId: "5") { changed viewer { following(first: 10) { totalCount nodes { id } } } user { followers(first: 10) { nodes { id } } } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(payload["follow"]["changed"], true);
    assert_eq!(
        payload["follow"]["viewer"]["following"]["nodes"],
        json!([{ "id": "5" }])
    );
    assert_eq!(
        payload["follow"]["user"]["followers"]["nodes"],
        json!([{ "id": "4" }])
    );
    // The viewer's next reads show it too, though the replica has not replayed it.
    let before = app.app.reads.counts();
    let own = app
        .data(
            Some(4),
            r#"{ viewer { following(first: 10) { nodes { id } } } isFollowing(followerId: "4", followeeId: "5") }"#,
            json!({}),
        )
        .await;
    assert_eq!(own["viewer"]["following"]["nodes"], json!([{ "id": "5" }]));
    assert_eq!(own["isFollowing"], true);
    let after = app.app.reads.counts();
    assert_eq!(
        after.replica, before.replica,
        "the viewer's reads after its write went to the paused replica"
    );
    // Anyone else may read the lagging replica: the list there does not show the follow yet, which is
    // what proves the reads above did not come from it.
    let other = app
        .data(
            Some(6),
            r#"{ user(id: "4") { following(first: 10) { nodes { id } } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(other["user"]["following"]["nodes"], json!([]));
    assert!(app.app.reads.counts().replica > after.replica);

    drop(paused);
    // Once replayed, everyone sees it, and the counts are exact.
    app.drained().await;
    let settled = eventually(Duration::from_secs(10), || async {
        let data = app
            .data(
                Some(6),
                r#"{ user(id: "4") { followingCount following(first: 10) { nodes { id } } } }"#,
                json!({}),
            )
            .await;
        data["user"] == json!({ "followingCount": 1, "following": { "nodes": [{ "id": "5" }] } })
    })
    .await;
    assert!(settled, "the replica never showed the follow");
    app.assert_counts_exact().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_pages_are_read_from_the_replica_and_cached_only_once_it_holds_their_version() {
    let Some(server) = replica_or_skip(
        "first_pages_are_read_from_the_replica_and_cached_only_once_it_holds_their_version",
    ) else {
        return;
    };
    let _turn = REPLAY.lock().await;
    let app = app_on_replica(60_000, true).await;
    let followers_of_1 = r#"{ user(id: "1") { followers(first: 10) { nodes { id } } } }"#;

    // A list nobody read before: its version is created by this read, yet the page comes from the
    // replica (the primary would serve every cold list otherwise).
    let before = app.app.reads.counts();
    let cold = app.data(None, followers_of_1, json!({})).await;
    assert_eq!(cold["user"]["followers"]["nodes"], json!([]));
    let after = app.app.reads.counts();
    assert_eq!(
        after.primary, before.primary,
        "a cold list's first page was read on the primary: {before:?} -> {after:?}"
    );

    // A follow the paused replica has not replayed, applied by the consumer (the list's version bumped).
    let paused = ReplayPaused::start(&server).await;
    app.follow(2, 1).await;
    let applied = eventually(Duration::from_secs(10), || async {
        app.count("SELECT count(*) FROM outbox").await == 0
    })
    .await;
    assert!(applied, "the follow's event was not applied in 10 s");
    // Anyone may read the lagging replica: its page lacks the follow. It must not be cached under the
    // version that follows the follow.
    let before = app.app.reads.counts();
    let stale = app.data(None, followers_of_1, json!({})).await;
    assert_eq!(stale["user"]["followers"]["nodes"], json!([]));
    assert_eq!(app.app.reads.counts().primary, before.primary);

    drop(paused);
    app.replicated().await;
    let current = app.data(None, followers_of_1, json!({})).await;
    assert_eq!(
        current["user"]["followers"]["nodes"],
        json!([{ "id": "2" }]),
        "the page read from the lagging replica was cached"
    );
    // Once the replica holds the version, a read fills the cache, and the next reads take no statement.
    let cached = eventually(Duration::from_secs(10), || async {
        let before = app.app.reads.counts();
        let data = app.data(None, followers_of_1, json!({})).await;
        assert_eq!(data["user"]["followers"]["nodes"], json!([{ "id": "2" }]));
        app.app.reads.counts() == before
    })
    .await;
    assert!(cached, "the first page was never cached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_list_is_cached_at_its_first_read_once_the_replica_holds_its_slots_data() {
    if replica_or_skip(
        "a_cold_list_is_cached_at_its_first_read_once_the_replica_holds_its_slots_data",
    )
    .is_none()
    {
        return;
    }
    let _turn = REPLAY.lock().await;
    let app = app_on_replica(60_000, true).await;
    let list =
        |kind: &str| format!(r#"{{ user(id: "3") {{ {kind}(first: 10) {{ nodes {{ id }} }} }} }}"#);
    let start = app.app.reads.counts();
    // The first list of user 3's hash slot starts the slot's epoch: a replica holds no commit after
    // it yet, so that first page waits for a later read to be cached.
    let empty = |kind: &str| json!({ "user": { kind: { "nodes": [] } } });
    let cached = eventually(Duration::from_secs(10), || async {
        let before = app.app.reads.counts();
        let data = app.data(None, &list("followers"), json!({})).await;
        assert_eq!(data, empty("followers"));
        app.app.reads.counts() == before
    })
    .await;
    assert!(cached, "the followers page was never cached");
    // Another cold list of the same slot: its version is new, but every bump it could stand for was
    // lost before the slot's epoch, which the replica holds: its first read is cached.
    let before = app.app.reads.counts();
    let data = app.data(None, &list("following"), json!({})).await;
    assert_eq!(data, empty("following"));
    let first = app.app.reads.counts();
    assert_eq!(first.replica, before.replica + 1, "{before:?} -> {first:?}");
    app.data(None, &list("following"), json!({})).await;
    assert_eq!(
        app.app.reads.counts(),
        first,
        "the first page of a cold list read from a replica holding its slot's epoch was not cached"
    );
    assert_eq!(
        app.app.reads.counts().primary,
        start.primary,
        "a list was read on the primary"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_too_far_behind_is_skipped() {
    let Some(server) = replica_or_skip("a_replica_too_far_behind_is_skipped") else {
        return;
    };
    let _turn = REPLAY.lock().await;
    let app = app_on_replica(300, false).await;
    let paused = ReplayPaused::start(&server).await;
    app.follow(2, 3).await;
    // Past the lag bound (and a probe), the paused replica takes no read; the primary shows the write.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before = app.app.reads.counts();
    let data = app
        .data(
            None,
            r#"{ user(id: "2") { following(first: 10) { nodes { id } } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(data["user"]["following"]["nodes"], json!([{ "id": "3" }]));
    let after = app.app.reads.counts();
    assert_eq!(after.replica, before.replica, "a lagging replica was read");
    assert!(after.primary > before.primary);
    drop(paused);
    // Caught up again, it takes reads again.
    let back = eventually(Duration::from_secs(10), || async {
        app.data(None, r#"{ user(id: "2") { handle } }"#, json!({}))
            .await;
        app.app.reads.counts().replica > after.replica
    })
    .await;
    assert!(back, "the replica never took reads again after catching up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_is_down_is_skipped_and_fails_nothing() {
    // A closed port: every connection is refused. Needs no real replica.
    let app = TestApp::with_options(Options {
        cache: false,
        replica_urls: Some("postgres://postgres@127.0.0.1:1/none".to_owned()),
        ..Options::default()
    })
    .await;
    app.create_users(1..=3).await;
    app.follow(1, 2).await;
    app.follow(3, 2).await;
    app.drained().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    for viewer in [None, Some(1)] {
        let data = app
            .data(
                viewer,
                r#"{ user(id: "2") { handle followerCount followers(first: 10) { nodes { id } } } }"#,
                json!({}),
            )
            .await;
        assert_eq!(
            data["user"],
            json!({ "handle": "u2", "followerCount": 2, "followers": { "nodes": [{ "id": "3" }, { "id": "1" }] } })
        );
    }
    let counts = app.app.reads.counts();
    assert_eq!(counts.replica, 0, "{counts:?}");
    assert!(counts.primary > 0, "{counts:?}");
    app.assert_counts_exact().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_whose_version_bump_was_lost_in_an_outage_is_not_cached_from_a_replica_lacking_the_write()
 {
    use follow_service::{
        events::consumer::{self, ConsumerSettings, REFRESHES_IN_FLIGHT},
        redis_pool::redis,
    };
    let Some(server) = replica_or_skip(
        "a_list_whose_version_bump_was_lost_in_an_outage_is_not_cached_from_a_replica_lacking_the_write",
    ) else {
        return;
    };
    let _turn = REPLAY.lock().await;
    // A (the reader, on the one Redis server even in the cluster run) and C (the consumer's refresh,
    // through a proxy the test cuts) share one Redis; no pipeline runs but the test's.
    let a = TestApp::with_options(Options {
        pipeline: false,
        env: vec![
            ("FOLLOW_REPLICA_MAX_LAG_MS", "60000".to_owned()),
            ("REDIS_CLUSTER_URLS", String::new()),
        ],
        ..Options::default()
    })
    .await;
    a.create_users(1..=3).await;
    let proxy = RedisProxy::start().await;
    let c = a.instance_behind(&proxy).await;
    let followers_of_1 = r#"{ user(id: "1") { followers(first: 10) { nodes { id } } } }"#;
    let nodes = |data: Value| data["user"]["followers"]["nodes"].clone();
    // The list's first page cached from the replica: it holds the slot's epoch.
    let cached = eventually(Duration::from_secs(10), || async {
        let before = a.app.reads.counts();
        assert_eq!(
            nodes(a.data(None, followers_of_1, json!({})).await),
            json!([])
        );
        a.app.reads.counts() == before
    })
    .await;
    assert!(cached, "the first page was never cached");

    // A follow the paused replica does not replay, applied by a consumer whose bump of the list's
    // version fails (its Redis is cut): the version stays, and the page cached under it is stale.
    let paused = ReplayPaused::start(&server).await;
    a.follow(2, 1).await;
    let mut stream = a.redis().await;
    consumer::ensure_group(&mut stream, a.app.stream.first())
        .await
        .expect("group");
    let settings = ConsumerSettings {
        caches: c.app.caches.clone(),
        ..a.consumer_settings(10, "test-consumer")
    };
    proxy.cut();
    let applied = consumer::consume_once(&a.app.db, &mut stream, &settings)
        .await
        .expect("applied");
    assert_eq!(applied, 1);
    // The refresh (behind the consumer) has failed once every slot is free again.
    let _refreshed = settings
        .refresh_slots
        .acquire_many(REFRESHES_IN_FLIGHT as u32)
        .await
        .expect("refresh slots");
    let version_key = format!("{}:c1:lv:{{1}}:fr", a.prefix);
    let version = || async {
        let mut conn = a.redis().await;
        redis::cmd("GET")
            .arg(&version_key)
            .query_async::<Option<String>>(&mut conn)
            .await
            .expect("GET")
    };
    assert!(version().await.is_some(), "the version is still there");

    // Redis back: C's repair deletes the version it could not bump.
    proxy.restore();
    let repaired = eventually(Duration::from_secs(10), || async {
        version().await.is_none()
    })
    .await;
    assert!(repaired, "C never repaired the list's version");
    // Read through the lagging replica (as anyone may): it lacks the follow, so its page must not be
    // cached under the version this read creates, although that version is new.
    let read = eventually(Duration::from_secs(5), || async {
        let before = a.app.reads.counts();
        assert_eq!(
            nodes(a.data(None, followers_of_1, json!({})).await),
            json!([])
        );
        let after = a.app.reads.counts();
        assert_eq!(after.primary, before.primary, "read on the primary");
        after.replica > before.replica
    })
    .await;
    assert!(read, "the page was not read from the replica");

    drop(paused);
    a.replicated().await;
    assert_eq!(
        nodes(a.data(None, followers_of_1, json!({})).await),
        json!([{ "id": "2" }]),
        "a page read from a replica lacking the follow was cached under the version made after the repair"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_count_repaired_while_the_replica_lags_is_not_put_back_stale_by_a_replica_read() {
    let Some(server) = replica_or_skip(
        "a_count_repaired_while_the_replica_lags_is_not_put_back_stale_by_a_replica_read",
    ) else {
        return;
    };
    let _turn = REPLAY.lock().await;
    let app = app_on_replica(60_000, true).await;
    app.follow(1, 2).await;
    app.drained().await;
    // A count gone wrong, as the replica has it too.
    app.sql("UPDATE user_stats SET follower_count = 99 WHERE user_id = 2")
        .await;
    app.replicated().await;
    let count = || async {
        app.data(None, r#"{ user(id: "2") { followerCount } }"#, json!({}))
            .await["user"]["followerCount"]
            .clone()
    };

    // The repair commits while the replica lags; a read then (through the replica, as counts may lag)
    // must not cache the count the repair replaced.
    let paused = ReplayPaused::start(&server).await;
    let repaired = follow_service::reconcile::reconcile(&app.app.db, &app.app.caches, true)
        .await
        .expect("repaired");
    assert_eq!(repaired.len(), 1);
    count().await;
    drop(paused);
    app.replicated().await;
    assert_eq!(
        count().await,
        1,
        "the count read from the lagging replica was cached over the repair"
    );
}
