//! What keeps the pipeline whole when consumers die or entries cannot be applied.
//!
//! - **Reclaim**: an entry delivered to a consumer that died (or failed) stays pending in the group.
//!   Every consumer periodically lists entries pending longer than `claim_idle` and takes them over
//!   (XCLAIM), then applies them like any batch; applying is idempotent, so a slow consumer that was
//!   not dead after all changes nothing by finishing too.
//! - **Dead letters**: an entry delivered `max_deliveries` times without being acknowledged (it cannot
//!   be decoded, or applying it keeps failing) is copied to the dead-letter stream with its history,
//!   acknowledged, counted and logged, so it never blocks the others. Its outbox row, if it has one,
//!   still exists: the relay publishes it again as a fresh entry, so nothing is lost.
//! - **Trimming**: the stream is cut below the oldest entry the group still needs (the oldest pending
//!   one, else the last delivered), never by length, so no entry goes before it is applied.
//! - **Forgetting consumers**: every process start names new consumers, and a group keeps every name
//!   it has seen. Consumers idle for [`CONSUMER_FORGOTTEN_AFTER`] with nothing pending are deleted from
//!   the group. One still alive is created again by its next read; an entry delivered to it between the
//!   look and the delete leaves the group's pending list, but its outbox row stays until the entry is
//!   applied, so the relay publishes it again if it never is.

use anyhow::Context;

use super::consumer::{ConsumerSettings, process_entries};
use crate::{
    db::DbPool,
    redis_pool::{
        Dedicated,
        redis::{
            self,
            streams::{
                StreamClaimReply, StreamInfoConsumersReply, StreamInfoGroupsReply,
                StreamPendingCountReply, StreamRangeReply,
            },
        },
    },
    telemetry::metrics::{DEAD_LETTERS, EVENTS_RECLAIMED},
};

/// Most pending entries looked at per pass.
const RECLAIM_BATCH: usize = 200;
/// The dead-letter stream keeps about this many entries.
const DEAD_LETTERS_KEPT: usize = 100_000;

/// What one reclaim pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reclaimed {
    /// Entries taken over from another consumer (or from this one's earlier failure).
    pub claimed: usize,
    /// Events whose delta those entries applied.
    pub applied: i64,
    /// Entries moved to the dead letters.
    pub dead: usize,
}

/// One pass: dead-letters the entries over the delivery limit, takes over the other long-pending ones.
pub async fn reclaim_once(
    db: &DbPool,
    conn: &mut Dedicated,
    settings: &ConsumerSettings,
) -> anyhow::Result<Reclaimed> {
    let names = &settings.names;
    let idle = settings.claim_idle.as_millis() as u64;
    let pending: StreamPendingCountReply = redis::cmd("XPENDING")
        .arg(&names.stream)
        .arg(names.group)
        .arg("IDLE")
        .arg(idle)
        .arg("-")
        .arg("+")
        .arg(RECLAIM_BATCH)
        .query_async(conn)
        .await
        .context("XPENDING failed")?;
    if pending.ids.is_empty() {
        return Ok(Reclaimed::default());
    }
    let (dead, retry): (Vec<_>, Vec<_>) = pending
        .ids
        .into_iter()
        .partition(|p| p.times_delivered >= settings.max_deliveries);

    let mut report = Reclaimed::default();
    if !dead.is_empty() {
        let mut fetch = redis::pipe();
        for entry in &dead {
            fetch
                .cmd("XRANGE")
                .arg(&names.stream)
                .arg(&entry.id)
                .arg(&entry.id);
        }
        let bodies: Vec<StreamRangeReply> =
            fetch.query_async(conn).await.context("XRANGE failed")?;
        let mut move_them = redis::pipe();
        for (entry, body) in dead.iter().zip(&bodies) {
            let mut add = redis::cmd("XADD");
            add.arg(&names.dead_letters)
                .arg("MAXLEN")
                .arg("~")
                .arg(DEAD_LETTERS_KEPT)
                .arg("*");
            add.arg("original_id").arg(&entry.id);
            add.arg("deliveries").arg(entry.times_delivered);
            add.arg("last_consumer").arg(&entry.consumer);
            for item in body.ids.iter().flat_map(|b| b.map.iter()) {
                if let Ok(value) = redis::from_redis_value_ref::<String>(item.1) {
                    add.arg(format!("field:{}", item.0)).arg(value);
                }
            }
            move_them.add_command(add).ignore();
            tracing::error!(
                entry = %entry.id,
                deliveries = entry.times_delivered,
                consumer = %entry.consumer,
                dead_letters = %names.dead_letters,
                "stream entry could not be applied after the delivery limit; moved to the dead letters"
            );
        }
        let ids: Vec<&str> = dead.iter().map(|e| e.id.as_str()).collect();
        move_them
            .cmd("XACK")
            .arg(&names.stream)
            .arg(names.group)
            .arg(&ids)
            .ignore();
        // Their events are no longer in flight: the relay publishes their rows again.
        let outbox_ids: Vec<i64> = bodies
            .iter()
            .flat_map(|b| b.ids.iter())
            .filter_map(|b| super::codec::decode(&b.map))
            .map(|e| e.id.get())
            .collect();
        if !outbox_ids.is_empty() {
            move_them
                .cmd("HDEL")
                .arg(&names.published)
                .arg(&outbox_ids)
                .ignore();
        }
        let () = move_them
            .query_async(conn)
            .await
            .context("moving entries to the dead letters failed")?;
        ::metrics::counter!(DEAD_LETTERS).increment(dead.len() as u64);
        report.dead = dead.len();
    }

    if !retry.is_empty() {
        let ids: Vec<&str> = retry.iter().map(|e| e.id.as_str()).collect();
        let claimed: StreamClaimReply = redis::cmd("XCLAIM")
            .arg(&names.stream)
            .arg(names.group)
            .arg(&settings.consumer_name)
            .arg(idle)
            .arg(&ids)
            .query_async(conn)
            .await
            .context("XCLAIM failed")?;
        report.claimed = claimed.ids.len();
        if report.claimed > 0 {
            ::metrics::counter!(EVENTS_RECLAIMED).increment(report.claimed as u64);
            tracing::info!(
                entries = report.claimed,
                "took over entries left pending by another consumer"
            );
            report.applied = process_entries(db, conn, settings, &claimed.ids).await?;
        }
    }
    Ok(report)
}

/// Whether an XINFO failed because the stream does not exist yet (nothing was ever published).
fn no_stream(err: &redis::RedisError) -> bool {
    err.to_string().contains("no such key")
}

/// Cuts the stream below the oldest entry the counters group still needs. Returns the cut, if any.
pub async fn trim_once(
    conn: &mut Dedicated,
    names: &super::StreamNames,
) -> anyhow::Result<Option<String>> {
    let groups: StreamInfoGroupsReply = match redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&names.stream)
        .query_async(conn)
        .await
    {
        Ok(groups) => groups,
        Err(err) if no_stream(&err) => return Ok(None),
        Err(err) => return Err(err).context("XINFO GROUPS failed"),
    };
    let Some(group) = groups.groups.into_iter().find(|g| g.name == names.group) else {
        return Ok(None);
    };
    // The oldest pending entry, if any: everything before it was delivered and acknowledged.
    let oldest_pending: redis::Value = redis::cmd("XPENDING")
        .arg(&names.stream)
        .arg(names.group)
        .query_async(conn)
        .await?;
    let oldest = match &oldest_pending {
        redis::Value::Array(items) if items.len() >= 2 => {
            redis::from_redis_value_ref::<Option<String>>(&items[1])
                .ok()
                .flatten()
        }
        _ => None,
    };
    let cut = oldest.unwrap_or(group.last_delivered_id);
    if cut == "0-0" {
        return Ok(None);
    }
    let _: i64 = redis::cmd("XTRIM")
        .arg(&names.stream)
        .arg("MINID")
        .arg("~")
        .arg(&cut)
        .query_async(conn)
        .await?;
    Ok(Some(cut))
}

/// How long a consumer with nothing pending may stay idle before it is deleted from the group.
pub const CONSUMER_FORGOTTEN_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

/// Deletes the consumers of the counters group idle for `idle_after` with nothing pending. Returns how
/// many went.
pub async fn forget_idle_consumers(
    conn: &mut Dedicated,
    names: &super::StreamNames,
    idle_after: std::time::Duration,
) -> anyhow::Result<usize> {
    let consumers: StreamInfoConsumersReply = match redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(&names.stream)
        .arg(names.group)
        .query_async(conn)
        .await
    {
        Ok(consumers) => consumers,
        Err(err) if no_stream(&err) => return Ok(0),
        Err(err) => return Err(err).context("XINFO CONSUMERS failed"),
    };
    let idle_after = idle_after.as_millis();
    let mut forgotten = 0;
    for consumer in consumers
        .consumers
        .iter()
        .filter(|c| c.pending == 0 && c.idle as u128 >= idle_after)
    {
        let _: i64 = redis::cmd("XGROUP")
            .arg("DELCONSUMER")
            .arg(&names.stream)
            .arg(names.group)
            .arg(&consumer.name)
            .query_async(conn)
            .await
            .context("XGROUP DELCONSUMER failed")?;
        forgotten += 1;
    }
    Ok(forgotten)
}
