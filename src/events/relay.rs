//! The outbox relay: republishes events that stayed unapplied for a while.
//!
//! The writer XADDs right after commit, so the relay only sees rows whose entry was lost: the process
//! died between commit and XADD, Redis was down or lost its data, or a consumer failed to apply them.
//! Claiming stamps `published_at` and skips locked rows, so relays of several instances share the work.

use std::time::Duration;

use tokio::sync::watch;

use super::{FollowEvent, producer::Producer};
use crate::db::{self, DbPool};

/// How many rows one relay pass claims at most.
const RELAY_BATCH: i64 = 1_000;

/// Runs the relay until `shutdown` turns true.
pub async fn run(
    db: DbPool,
    producer: Producer,
    relay_after: Duration,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    while !*shutdown.borrow() {
        match relay_once(&db, &producer, relay_after).await {
            // A full batch means more may wait: go again at once.
            Ok(n) if n as i64 == RELAY_BATCH => continue,
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %format!("{err:#}"), "outbox relay pass failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {},
            _ = shutdown.changed() => break,
        }
    }
}

/// One pass: claims stale outbox rows and publishes them. Returns how many were published.
pub async fn relay_once(
    db: &DbPool,
    producer: &Producer,
    relay_after: Duration,
) -> anyhow::Result<usize> {
    let rows = {
        let mut conn = db::connect(db).await?;
        db::outbox::claim_stale(&mut conn, relay_after, RELAY_BATCH).await?
    };
    if rows.is_empty() {
        return Ok(0);
    }
    let events: Vec<FollowEvent> = rows.iter().filter_map(FollowEvent::from_outbox).collect();
    producer.publish(&events).await?;
    tracing::info!(
        events = events.len(),
        "relay republished unapplied outbox events"
    );
    Ok(events.len())
}

/// Trims the stream every `interval` below the oldest entry the counters group still needs.
pub async fn trim_forever(
    redis_url: String,
    names: super::StreamNames,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conn = None;
    while !*shutdown.borrow() {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {},
            _ = shutdown.changed() => break,
        }
        if conn.is_none() {
            conn = match crate::redis_pool::redis::Client::open(redis_url.as_str()) {
                Ok(client) => client.get_multiplexed_async_connection().await.ok(),
                Err(_) => None,
            };
        }
        if let Some(c) = conn.as_mut()
            && let Err(err) = super::recovery::trim_once(c, &names).await
        {
            tracing::warn!(error = %format!("{err:#}"), "stream trim failed");
            conn = None;
        }
    }
}
