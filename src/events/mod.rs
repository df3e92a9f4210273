//! Follow events: the stream entry format, the stream's key names, and the tasks that move events
//! from the outbox to the counters.
//!
//! The flow (SERVICE.md, "Event pipeline"): a write commits its edge and an `outbox` row in one statement
//! and the [`producer`] appends the event to a Redis Stream. The [`consumer`] group reads the stream in
//! batches and applies each batch in one statement that deletes the batch's outbox rows and adds their
//! deltas to `user_stats`; a row already deleted contributes nothing, so a redelivered or duplicated entry
//! changes nothing. The outbox, not the stream, is the source of truth: the [`relay`] republishes rows that
//! stayed unapplied for a few seconds and whose entry is no longer in the stream on its way to the group
//! (Redis was down, the process died between commit and XADD, the stream was lost), so every committed
//! event is applied once, whatever was lost in Redis.

pub mod codec;
pub mod consumer;
pub mod fanout;
pub mod producer;
pub mod recovery;
pub mod relay;

use crate::redis_pool::{RedisPool, redis};

/// Redis key names of the event pipeline, under the configured prefix, with one hash tag so that a
/// Redis Cluster keeps them in one slot.
#[derive(Clone, Debug)]
pub struct StreamNames {
    /// The stream every instance appends follow events to.
    pub stream: String,
    /// The consumer group that folds events into the counters.
    pub group: &'static str,
    /// Where entries go that could not be applied after the delivery limit.
    pub dead_letters: String,
    /// Hash of outbox id → stream entry id of each published event still in flight (see `producer`).
    pub published: String,
}

impl StreamNames {
    /// The names for one deployment's prefix (tests use a random prefix each).
    pub fn new(prefix: &str) -> Self {
        Self {
            stream: format!("{prefix}:{{events}}:follow:v1"),
            group: "counters",
            dead_letters: format!("{prefix}:{{events}}:follow:v1:dead"),
            published: format!("{prefix}:{{events}}:follow:v1:published"),
        }
    }
}

/// The stream's size and the counters group's progress, for metrics and the benchmark.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamStats {
    /// Entries in the stream (XLEN).
    pub length: u64,
    /// Entries delivered to the group and not acknowledged.
    pub pending: u64,
    /// Entries not yet delivered to the group (0 when Redis cannot tell).
    pub lag: u64,
    /// Entries in the dead-letter stream.
    pub dead_letters: u64,
}

/// Reads XLEN and the group's XINFO in one round trip; a missing stream or group reads as zeros.
pub async fn stream_stats(redis: &RedisPool, names: &StreamNames) -> anyhow::Result<StreamStats> {
    let mut xlen = redis::cmd("XLEN");
    xlen.arg(&names.stream);
    let length: u64 = redis.query_cmd(&xlen).await?;
    let mut xlen = redis::cmd("XLEN");
    xlen.arg(&names.dead_letters);
    let dead_letters: u64 = redis.query_cmd(&xlen).await?;
    let mut xinfo = redis::cmd("XINFO");
    xinfo.arg("GROUPS").arg(&names.stream);
    let groups: anyhow::Result<redis::streams::StreamInfoGroupsReply> =
        redis.query_cmd(&xinfo).await;
    let group = groups
        .ok()
        .and_then(|g| g.groups.into_iter().find(|g| g.name == names.group));
    Ok(StreamStats {
        length,
        pending: group.as_ref().map_or(0, |g| g.pending as u64),
        lag: group.and_then(|g| g.lag).unwrap_or(0) as u64,
        dead_letters,
    })
}
