//! The outbox relay: republishes events that stayed unapplied for a while and whose entry was lost.
//!
//! The writer XADDs right after commit, so a row the counters have not applied after `relay_after`
//! either waits in the stream (the consumers lag) or lost its entry: the process died between commit and
//! XADD, Redis was down or lost its data, or the entry went to the dead letters. Claiming stamps
//! `published_at` and skips locked rows, so relays of several instances share the work and each row is
//! looked at once per `relay_after`. The relay then asks Redis which of the claimed rows still have an
//! entry on its way to the counters group (`Producer::in_flight`) and publishes only the others: a
//! lagging consumer makes the relay look, never append, so the stream holds one entry per unapplied row.
//!
//! With partitions, a row is checked in, and republished to, its followee's partition under the current
//! P. An entry left in another partition (P changed and nothing reads the old layout any more) has its
//! field in that partition's index, so the row reads as missing here and is republished where it is read:
//! an entry stranded by a change of P is late by `relay_after`, never lost.

use std::{collections::HashSet, time::Duration};

use anyhow::Context;
use tokio::sync::watch;

use super::producer::Producer;
use crate::{
    db::{self, DbPool},
    domain::{EventId, FollowEvent},
};

/// How many rows one relay pass claims at most.
const RELAY_BATCH: i64 = 1_000;

/// Fields of the published index the trimmer sweeps per pass (see `producer::sweep_published`).
const SWEEP_PAGE: usize = 250;

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
            Ok(pass) if pass.claimed as i64 == RELAY_BATCH => continue,
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %format!("{err:#}"), "outbox relay pass failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {},
            _ = shutdown.changed() => break,
        }
    }
}

/// What one relay pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayPass {
    /// Stale rows claimed (unapplied for `relay_after`, not looked at for as long).
    pub claimed: usize,
    /// Of those, rows whose entry was still in the stream on its way to the group: left alone.
    pub in_flight: usize,
    /// Rows published again: their entry was missing and the row still unapplied.
    pub republished: usize,
}

/// One pass: claims stale outbox rows and publishes those whose entry is missing from the stream.
pub async fn relay_once(
    db: &DbPool,
    producer: &Producer,
    relay_after: Duration,
) -> anyhow::Result<RelayPass> {
    let rows = {
        let mut conn = db::connect(db).await?;
        db::outbox::claim_stale(&mut conn, relay_after, RELAY_BATCH).await?
    };
    let mut pass = RelayPass {
        claimed: rows.len(),
        ..RelayPass::default()
    };
    if rows.is_empty() {
        return Ok(pass);
    }
    let ids: Vec<EventId> = rows.iter().map(|r| r.id).collect();
    let in_flight: HashSet<EventId> = producer.in_flight(&rows).await?.into_iter().collect();
    pass.in_flight = in_flight.len();
    let missing: Vec<EventId> = ids
        .into_iter()
        .filter(|id| !in_flight.contains(id))
        .collect();
    if missing.is_empty() {
        return Ok(pass);
    }
    // Read after Redis: an entry the group acknowledged had its row deleted before the XACK, so a row
    // still here now was not applied through it (a consumer that applied it meanwhile is not a loss).
    let unapplied: HashSet<EventId> = {
        let mut conn = db::connect(db).await?;
        db::outbox::unapplied(&mut conn, &missing).await?
    }
    .into_iter()
    .collect();
    let events: Vec<FollowEvent> = rows
        .into_iter()
        .filter(|event| unapplied.contains(&event.id))
        .collect();
    producer.publish(&events).await?;
    pass.republished = events.len();
    if pass.republished > 0 {
        tracing::info!(
            events = pass.republished,
            in_flight = pass.in_flight,
            "relay republished outbox events whose stream entry was missing"
        );
    }
    Ok(pass)
}

/// Every `interval`, in each partition read: trims the stream below the oldest entry the counters group
/// still needs, deletes long-idle consumers with nothing pending from the group, and sweeps a page of
/// the published index.
pub async fn trim_forever(
    redis: crate::redis_pool::RedisTarget,
    partitions: Vec<super::StreamNames>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conn = None;
    let mut sweep_cursors = vec![0; partitions.len()];
    while !*shutdown.borrow() {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {},
            _ = shutdown.changed() => break,
        }
        if conn.is_none() {
            conn = crate::redis_pool::dedicated(&redis, Duration::ZERO)
                .await
                .ok();
        }
        let Some(c) = conn.as_mut() else { continue };
        for (names, sweep_cursor) in partitions.iter().zip(sweep_cursors.iter_mut()) {
            if let Err(err) = trim_partition(c, names, sweep_cursor).await {
                tracing::warn!(error = %format!("{err:#}"), partition = names.partition, "stream upkeep failed");
                conn = None;
                break;
            }
        }
    }
}

/// One partition's upkeep pass: trim, forget idle consumers, sweep a page of the published index.
async fn trim_partition(
    c: &mut crate::redis_pool::Dedicated,
    names: &super::StreamNames,
    sweep_cursor: &mut u64,
) -> anyhow::Result<()> {
    super::recovery::trim_once(c, names)
        .await
        .context("stream trim failed")?;
    let forget = super::recovery::CONSUMER_FORGOTTEN_AFTER;
    match super::recovery::forget_idle_consumers(c, names, forget).await {
        Ok(0) => {}
        Ok(forgotten) => tracing::info!(
            consumers = forgotten,
            partition = names.partition,
            "deleted consumers idle for an hour with nothing pending from the group"
        ),
        Err(err) => {
            tracing::warn!(error = %format!("{err:#}"), "forgetting idle consumers failed")
        }
    }
    let (next, swept) = super::producer::sweep_published(c, names, *sweep_cursor, SWEEP_PAGE)
        .await
        .context("published-index sweep failed")?;
    *sweep_cursor = next;
    if swept > 0 {
        tracing::info!(
            fields = swept,
            partition = names.partition,
            "swept published-index fields of entries no longer in flight"
        );
    }
    Ok(())
}
