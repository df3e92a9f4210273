//! The consumer group task that folds follow events into `user_stats`.
//!
//! Each consumer (uniquely named, reading one partition of the stream) reads up to a batch of entries
//! with XREADGROUP, applies them in one statement (`db::stats::apply_events`: delete the outbox rows, add
//! their deltas), then XACKs. A process runs at least one consumer per partition it reads, and at most
//! `FOLLOW_CONSUMERS` of them apply at once (they share the permits of `applying`).
//! Applying keys on the outbox row, so an entry delivered twice, or published twice by the relay, counts
//! once. If applying fails the entries are not acknowledged and their outbox rows stay pending: they are
//! taken over and, after the delivery limit, dead-lettered, and then the relay publishes them again, so
//! nothing is lost.

use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;

use super::{StreamNames, codec};
use crate::{
    db::{self, DbPool},
    domain::{AppliedBatch, EventId},
    redis_pool::{
        Dedicated, RedisTarget,
        redis::{self, streams::StreamReadReply},
    },
    telemetry::metrics::{APPLY_LAG, CONSUMER_APPLY, CONSUMER_BATCH, EVENTS_APPLIED},
};

/// Settings of one consumer.
#[derive(Clone)]
pub struct ConsumerSettings {
    pub redis: RedisTarget,
    /// The partition this consumer reads.
    pub names: StreamNames,
    /// This consumer's name in the group; unique per process.
    pub consumer_name: String,
    pub batch_size: usize,
    pub block: Duration,
    /// Refreshed after each batch: statuses, counts and list versions of what it applied.
    pub caches: crate::cache::Caches,
    /// How long an entry stays pending (delivered, not acknowledged) before another consumer takes it.
    pub claim_idle: Duration,
    /// Deliveries after which an entry that still could not be applied goes to the dead letters.
    pub max_deliveries: usize,
    /// Cache refreshes in flight for this consumer: a batch's refresh overlaps the next batch's SQL.
    pub refresh_slots: std::sync::Arc<tokio::sync::Semaphore>,
    /// Batches the process's consumers may apply at once, shared by them: with more partitions than
    /// `FOLLOW_CONSUMERS`, a consumer waits for a permit, not for one of the write pool's connections.
    pub applying: std::sync::Arc<tokio::sync::Semaphore>,
}

/// Cache refreshes a consumer lets run behind it before it waits.
pub const REFRESHES_IN_FLIGHT: usize = 4;

/// Runs the consumer until `shutdown` turns true.
pub async fn run(db: DbPool, settings: ConsumerSettings, mut shutdown: watch::Receiver<bool>) {
    tracing::info!(consumer = %settings.consumer_name, stream = %settings.names.stream, partition = settings.names.partition, "event consumer started");
    let mut conn: Option<Dedicated> = None;
    let mut backoff = Duration::from_millis(100);
    // Look for entries left pending by dead consumers a few times per idle period.
    let reclaim_every = (settings.claim_idle / 3).max(Duration::from_millis(50));
    let mut last_reclaim = std::time::Instant::now();
    while !*shutdown.borrow() {
        let step = async {
            let connection = match conn.as_mut() {
                Some(c) => c,
                None => conn.insert(connect(&settings).await?),
            };
            if last_reclaim.elapsed() >= reclaim_every {
                last_reclaim = std::time::Instant::now();
                super::recovery::reclaim_once(&db, connection, &settings).await?;
            }
            consume_once(&db, connection, &settings).await
        };
        let outcome = tokio::select! {
            outcome = step => outcome,
            _ = shutdown.changed() => break,
        };
        match outcome {
            Ok(_) => backoff = Duration::from_millis(100),
            Err(err) => {
                tracing::warn!(error = %format!("{err:#}"), "event consumer step failed; retrying");
                conn = None;
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {},
                    _ = shutdown.changed() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    tracing::info!(consumer = %settings.consumer_name, "event consumer stopped");
}

/// A dedicated connection (XREADGROUP blocks), with the group in place.
async fn connect(settings: &ConsumerSettings) -> anyhow::Result<Dedicated> {
    let mut conn = crate::redis_pool::dedicated(&settings.redis, settings.block).await?;
    ensure_group(&mut conn, &settings.names).await?;
    Ok(conn)
}

/// Creates the stream and the group if missing; a new group starts at the stream's first entry.
pub async fn ensure_group(conn: &mut Dedicated, names: &StreamNames) -> anyhow::Result<()> {
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&names.stream)
        .arg(names.group)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(conn)
        .await;
    match created {
        Ok(()) => Ok(()),
        Err(err) if err.code() == Some("BUSYGROUP") => Ok(()),
        Err(err) => Err(err).context("creating the consumer group"),
    }
}

/// Reads one batch (blocking up to `block` when idle), applies it and acknowledges it.
/// Returns how many events were applied.
pub async fn consume_once(
    db: &DbPool,
    conn: &mut Dedicated,
    settings: &ConsumerSettings,
) -> anyhow::Result<i64> {
    let reply: redis::RedisResult<Option<StreamReadReply>> = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(settings.names.group)
        .arg(&settings.consumer_name)
        .arg("COUNT")
        .arg(settings.batch_size)
        .arg("BLOCK")
        .arg(settings.block.as_millis() as u64)
        .arg("STREAMS")
        .arg(&settings.names.stream)
        .arg(">")
        .query_async(conn)
        .await;
    let reply = match reply {
        Ok(reply) => reply,
        // The stream or group vanished (Redis restarted or was flushed): recreate it; the relay
        // republishes whatever the lost entries carried.
        Err(err) if err.code() == Some("NOGROUP") => {
            ensure_group(conn, &settings.names).await?;
            return Ok(0);
        }
        Err(err) => return Err(err).context("XREADGROUP failed"),
    };
    let entries: Vec<_> = reply
        .into_iter()
        .flat_map(|r| r.keys)
        .flat_map(|k| k.ids)
        .collect();
    process_entries(db, conn, settings, &entries).await
}

/// Applies delivered entries in one statement and acknowledges them. An entry that cannot be decoded
/// is left pending: it is delivered again after the claim idle time and, after the delivery limit,
/// moved to the dead letters (see `recovery`); it never holds up the entries around it.
pub async fn process_entries(
    db: &DbPool,
    conn: &mut Dedicated,
    settings: &ConsumerSettings,
    entries: &[redis::streams::StreamId],
) -> anyhow::Result<i64> {
    if entries.is_empty() {
        return Ok(0);
    }
    let mut outbox_ids = Vec::with_capacity(entries.len());
    let mut done: Vec<&str> = Vec::with_capacity(entries.len());
    // Events whose status the writer's own round trip recorded in the caches: not recorded again.
    let mut recorded = std::collections::HashSet::new();
    for entry in entries {
        match codec::decode(&entry.map) {
            Some(event) => {
                outbox_ids.push(event.id);
                done.push(entry.id.as_str());
                if codec::recorded_in_caches(&entry.map) {
                    recorded.insert(event.id);
                }
            }
            None => tracing::warn!(entry = %entry.id, "undecodable stream entry left pending"),
        }
    }
    let applied = {
        let _permit = settings
            .applying
            .acquire()
            .await
            .context("the consumers' apply permits are closed")?;
        let started = std::time::Instant::now();
        let applied = apply_with_retry(db, &outbox_ids).await?;
        ::metrics::histogram!(CONSUMER_APPLY).record(started.elapsed().as_secs_f64());
        applied
    };
    ::metrics::histogram!(CONSUMER_BATCH).record(entries.len() as f64);
    let applied_count = applied.events.len();
    ::metrics::counter!(EVENTS_APPLIED).increment(applied_count as u64);
    let lag = ::metrics::histogram!(APPLY_LAG);
    for event in &applied.events {
        lag.record(event.lag_seconds.max(0.0));
    }
    // The refresh runs behind the consumer (versions make the order of refreshes irrelevant), at most
    // a few at a time, so Redis work overlaps the next batch's SQL instead of adding to it.
    if let Ok(permit) = settings.refresh_slots.clone().acquire_owned().await {
        let caches = settings.caches.clone();
        tokio::spawn(async move {
            caches.record_applied(&applied, &recorded).await;
            drop(permit);
        });
    }
    if !done.is_empty() {
        // The published index forgets the acknowledged events in the same round trip (see `producer`).
        let () = redis::pipe()
            .cmd("XACK")
            .arg(&settings.names.stream)
            .arg(settings.names.group)
            .arg(&done)
            .ignore()
            .cmd("HDEL")
            .arg(&settings.names.published)
            .arg(outbox_ids.iter().map(|id| id.get()).collect::<Vec<i64>>())
            .ignore()
            .query_async(conn)
            .await
            .context("XACK failed")?;
    }
    tracing::debug!(
        entries = entries.len(),
        applied = applied_count,
        "applied a batch"
    );
    Ok(applied_count as i64)
}

/// Applies a batch, again when PostgreSQL reports a deadlock or serialization failure (two consumers
/// holding one redelivered row each).
pub async fn apply_with_retry(db: &DbPool, outbox_ids: &[EventId]) -> anyhow::Result<AppliedBatch> {
    db::retrying(
        db,
        Duration::from_millis(10),
        || {},
        |mut conn| async move { db::stats::apply_events(&mut conn, outbox_ids).await },
    )
    .await
    .context("applying a batch of events")
}
