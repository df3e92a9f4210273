//! The gauges of `/metrics` that no request updates (pools, stream, outbox, the servers' totals),
//! sampled from the application's parts; `telemetry::metrics` names and installs them.

use std::time::Duration;

use ::metrics::gauge;

use super::App;
use crate::redis_pool::PoolStatus;
use crate::telemetry::metrics::{
    DB_POOL_CONNECTIONS, DB_POOL_WAITING, DB_QUERIES, DB_WRITE_POOL_CONNECTIONS,
    DB_WRITE_POOL_WAITING, OUTBOX_BACKLOG, OUTBOX_OLDEST_AGE, PG_WAL_BYTES, REDIS_COMMANDS,
    REDIS_POOL_CONNECTIONS, REDIS_POOL_WAITING, STREAM_DEAD_LETTERS, STREAM_LAG, STREAM_LENGTH,
    STREAM_PENDING,
};

/// Samples the gauges every `interval`, until the task is aborted.
pub async fn sample_forever(app: App, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticker.tick().await;
        sample_once(&app).await;
        crate::telemetry::metrics::run_upkeep();
    }
}

/// A pool's connections in use and idle, and its waiters.
fn pool_gauges(connections: &'static str, waiting: &'static str, status: PoolStatus) {
    gauge!(connections, "state" => "in_use")
        .set(status.size.saturating_sub(status.available) as f64);
    gauge!(connections, "state" => "idle").set(status.available as f64);
    gauge!(waiting).set(status.waiting as f64);
}

/// A database pool's use, in the terms of the Redis connections'.
fn db_status(pool: &crate::db::DbPool) -> PoolStatus {
    let status = pool.status();
    PoolStatus {
        size: status.size,
        available: status.available,
        waiting: status.waiting,
    }
}

/// One sample of pools, stream and outbox; each source that does not answer in time is skipped.
pub async fn sample_once(app: &App) {
    pool_gauges(DB_POOL_CONNECTIONS, DB_POOL_WAITING, db_status(&app.db));
    pool_gauges(
        DB_WRITE_POOL_CONNECTIONS,
        DB_WRITE_POOL_WAITING,
        db_status(&app.db_writes),
    );
    pool_gauges(
        REDIS_POOL_CONNECTIONS,
        REDIS_POOL_WAITING,
        app.redis.status(),
    );
    ::metrics::counter!(DB_QUERIES).absolute(app.queries.get());

    app.caches.probe().await;
    let budget = Duration::from_secs(1);
    // One series per partition read, labelled `partition` (dashboards sum one instance's view of
    // them), the partitions asked side by side within the one budget.
    let partitions = app.stream.read().iter().map(|names| async move {
        let stats = tokio::time::timeout(budget, crate::events::stream_stats(&app.redis, names));
        (names, stats.await)
    });
    for (names, stats) in futures::future::join_all(partitions).await {
        if let Ok(Ok(stream)) = stats {
            let partition = names.partition.to_string();
            gauge!(STREAM_LENGTH, "partition" => partition.clone()).set(stream.length as f64);
            gauge!(STREAM_PENDING, "partition" => partition.clone()).set(stream.pending as f64);
            gauge!(STREAM_LAG, "partition" => partition.clone()).set(stream.lag as f64);
            gauge!(STREAM_DEAD_LETTERS, "partition" => partition).set(stream.dead_letters as f64);
        }
    }
    let outbox = async {
        let mut conn = crate::db::connect(&app.db).await?;
        let stats = crate::db::outbox::stats(&mut conn).await?;
        // Fails on a replica (no insert position there): the WAL gauge is then left alone.
        let wal = crate::db::wal_position(&mut conn).await.ok();
        Ok::<_, crate::db::StoreError>((stats, wal))
    };
    if let Ok(Ok((outbox, wal))) = tokio::time::timeout(budget, outbox).await {
        gauge!(OUTBOX_BACKLOG).set(outbox.backlog as f64);
        gauge!(OUTBOX_OLDEST_AGE).set(outbox.oldest_age_seconds);
        if let Some(bytes) = wal {
            gauge!(PG_WAL_BYTES).set(bytes as f64);
        }
    }
    let commands = app.redis.info_sum("stats", "total_commands_processed");
    if let Ok(Ok(commands)) = tokio::time::timeout(budget, commands).await {
        gauge!(REDIS_COMMANDS).set(commands);
    }
}
