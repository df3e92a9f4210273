//! Figures of the event pipeline: events applied per second by one consumer at several batch sizes,
//! and the time from a write's commit to its count update under a steady write rate.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use follow_service::{
    app::App,
    config::Config,
    domain::UserId,
    events::consumer::{self, ConsumerSettings},
    redis_pool::redis,
};

use crate::{
    graph::{self, GraphPlan},
    metrics,
};

const GRAPH: GraphPlan = GraphPlan {
    users: 10_000,
    edges: 20_000,
    writers: 1_000,
    exponent: 1.0,
    rng_seed: 11,
};

/// Runs both measurements and prints them as Markdown; `partitions` sets `FOLLOW_STREAM_PARTITIONS`
/// (else the environment's, else 1).
pub async fn run(
    database_url: String,
    redis_url: String,
    partitions: Option<usize>,
) -> anyhow::Result<()> {
    graph::ensure_graph(&database_url, GRAPH).await?;
    let prefix = "follow-bench-pipeline";
    crate::clear_redis_prefix(&redis_url, prefix).await?;
    let (db_url, r_url) = (database_url.clone(), redis_url.clone());
    let config = Config::from_lookup(move |name| match name {
        "DATABASE_URL" => Some(db_url.clone()),
        "REDIS_URL" => Some(r_url.clone()),
        "FOLLOW_REDIS_PREFIX" => Some(prefix.to_owned()),
        "FOLLOW_JWT_SECRET" => Some("follow-bench-secret-not-for-production".to_owned()),
        "FOLLOW_CONSUMER_BLOCK_MS" => Some("100".to_owned()),
        "FOLLOW_STREAM_PARTITIONS" if partitions.is_some() => partitions.map(|p| p.to_string()),
        // Anything else from the environment (FOLLOW_CACHE=off measures the consumer without its cache refresh).
        other => std::env::var(other).ok(),
    })?;
    let app = App::build(config)?;
    let checks = graph::client(&database_url).await?;
    // The service's own connection type: one server, or the cluster of REDIS_CLUSTER_URLS.
    let mut conn = follow_service::redis_pool::dedicated(&app.config.redis, Duration::ZERO)
        .await
        .context("connecting to Redis")?;

    let partitions = app.stream.written();
    println!(
        "Stream partitions (FOLLOW_STREAM_PARTITIONS): {partitions}, one consumer each.\n\n\
         | batch size | events | seconds | events applied per second |\n| ---: | ---: | ---: | ---: |"
    );
    for (batch, events) in [(1usize, 5_000i64), (100, 100_000), (1_000, 100_000)] {
        checks.batch_execute("TRUNCATE outbox").await?;
        clear_streams(&app, &mut conn).await?;
        // Committed events (follows of Zipf-ish users, as after a burst), then their stream entries,
        // each in its followee's partition.
        checks
            .execute(
                "INSERT INTO outbox (kind, follower_id, followee_id) \
                 SELECT 'follow', 1 + (i % 10000), 1 + floor(power(10000, random()))::bigint FROM generate_series(1, $1::int8) AS i",
                &[&events],
            )
            .await?;
        let rows = checks
            .query(
                "SELECT id, follower_id, followee_id FROM outbox ORDER BY id",
                &[],
            )
            .await?;
        let mut per_partition = vec![0i64; partitions];
        for chunk in rows.chunks(5_000) {
            let mut pipe = redis::pipe();
            for row in chunk {
                let (id, follower, followee): (i64, i64, i64) =
                    (row.get(0), row.get(1), row.get(2));
                let names = app.stream.of(UserId(followee));
                per_partition[names.partition] += 1;
                pipe.cmd("XADD")
                    .arg(&names.stream)
                    .arg("*")
                    .arg("id")
                    .arg(id)
                    .arg("kind")
                    .arg("follow")
                    .arg("follower")
                    .arg(follower)
                    .arg("followee")
                    .arg(followee)
                    .arg("at")
                    .arg("2026-01-01T00:00:00.000000Z")
                    .ignore();
            }
            let () = pipe.query_async(&mut conn).await?;
        }
        // One consumer per partition, each on its own connection, all at once.
        let applying = Arc::new(tokio::sync::Semaphore::new(partitions));
        let mut consumers = Vec::new();
        for (names, expected) in app.stream.read().iter().zip(&per_partition) {
            let settings = ConsumerSettings {
                redis: app.config.redis.clone(),
                names: names.clone(),
                consumer_name: format!("bench-{batch}-{}", names.partition),
                batch_size: batch,
                block: Duration::from_millis(100),
                caches: app.caches.clone(),
                claim_idle: Duration::from_secs(60),
                max_deliveries: 3,
                refresh_slots: Arc::new(tokio::sync::Semaphore::new(consumer::REFRESHES_IN_FLIGHT)),
                applying: applying.clone(),
            };
            let mut own = follow_service::redis_pool::dedicated(&app.config.redis, Duration::ZERO)
                .await
                .context("connecting to Redis")?;
            consumer::ensure_group(&mut own, names).await?;
            consumers.push((settings, own, *expected));
        }
        let started = Instant::now();
        let runs = consumers.into_iter().map(|(settings, mut own, expected)| {
            let db = app.db_writes.clone();
            async move {
                let mut applied = 0;
                while applied < expected {
                    applied += consumer::consume_once(&db, &mut own, &settings).await?;
                }
                anyhow::Ok(())
            }
        });
        for run in futures::future::join_all(runs).await {
            run?;
        }
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "| {batch} | {events} | {seconds:.2} | {:.0} |",
            events as f64 / seconds
        );
        for names in app.stream.read() {
            let _: i64 = redis::cmd("XGROUP")
                .arg("DESTROY")
                .arg(&names.stream)
                .arg(names.group)
                .query_async(&mut conn)
                .await?;
        }
    }

    // Commit to count under a steady write rate, through the follow graph (the API's own code path).
    clear_streams(&app, &mut conn).await?;
    graph::ensure_graph(&database_url, GRAPH).await?; // counts back in line with the edges
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let tasks = app.spawn_pipeline(stopped);
    let handle = follow_service::telemetry::metrics::install();
    let before = handle.render();
    let rate = 1_000u64;
    let seconds = 10u64;
    let started = tokio::time::Instant::now();
    let graph_ops = Arc::new(app.graph.clone());
    let mut writes = Vec::new();
    for n in 0..rate * seconds {
        let at = started + Duration::from_micros(n * 1_000_000 / rate);
        let graph_ops = graph_ops.clone();
        // Writer n % 1000 follows, then (its next turn) unfollows, one user each time.
        let writer = GRAPH.users + 1 + (n % GRAPH.writers as u64) as i64;
        let target = 1 + ((n / GRAPH.writers as u64) % 5_000) as i64;
        let follow = (n / GRAPH.writers as u64).is_multiple_of(2);
        writes.push(tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            if follow {
                graph_ops.follow(writer, target).await.is_ok()
            } else {
                graph_ops.unfollow(writer, target - 1).await.is_ok()
            }
        }));
    }
    let mut failed = 0;
    for write in writes {
        if !write.await.unwrap_or(false) {
            failed += 1;
        }
    }
    let drain = Instant::now();
    while graph::outbox_backlog(&checks).await? > 0 && drain.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let after = handle.render();
    let _ = stop.send(true);
    for task in tasks {
        task.abort();
    }
    let (p50, p99, count) = lag_quantiles(&before, &after);
    let mismatches = graph::count_mismatches(&checks).await?;
    println!(
        "\nCommit to count update at {rate} writes/s for {seconds} s ({count} events, {failed} writes failed): \
         p50 ≤ {:.1} ms, p99 ≤ {:.1} ms (histogram bucket bounds); users whose counts differ from their edges: {mismatches}.",
        p50 * 1000.0,
        p99 * 1000.0
    );
    graph::ensure_graph(&database_url, GRAPH).await?;
    Ok(())
}

/// Deletes every partition's stream and published index (a run starts from empty streams).
async fn clear_streams(
    app: &follow_service::app::App,
    conn: &mut follow_service::redis_pool::Dedicated,
) -> anyhow::Result<()> {
    for names in app.stream.read() {
        let _: i64 = redis::cmd("DEL")
            .arg(&names.stream)
            .arg(&names.published)
            .query_async(conn)
            .await?;
    }
    Ok(())
}

/// p50 and p99 (bucket upper bounds) of the commit-to-apply histogram between two renders.
fn lag_quantiles(before: &str, after: &str) -> (f64, f64, f64) {
    let buckets =
        |text: &str| metrics::histogram_buckets(text, "follow_event_commit_to_apply_seconds");
    let (b, a) = (buckets(before), buckets(after));
    let delta: Vec<(f64, f64)> = a
        .iter()
        .map(|(le, n)| {
            (
                *le,
                n - b.iter().find(|(l, _)| l == le).map_or(0.0, |(_, m)| *m),
            )
        })
        .collect();
    let total = delta.last().map_or(0.0, |(_, n)| *n);
    let quantile = |q: f64| {
        delta
            .iter()
            .find(|(_, n)| *n >= q * total)
            .map_or(f64::NAN, |(le, _)| *le)
    };
    (quantile(0.5), quantile(0.99), total)
}
