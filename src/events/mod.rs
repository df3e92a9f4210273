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

use std::sync::Arc;

use crate::{
    domain::UserId,
    redis_pool::{RedisPool, redis},
};

/// Redis key names of one partition of the event pipeline, under the configured prefix, with one hash
/// tag per partition so that a Redis Cluster keeps a partition's keys in one slot (a script and a
/// pipeline touch one partition only) and spreads the partitions over slots.
#[derive(Clone, Debug)]
pub struct StreamNames {
    /// Which partition these keys are (its metric label); 0 is the only one when P = 1.
    pub partition: usize,
    /// The stream this partition's events are appended to.
    pub stream: String,
    /// The consumer group that folds events into the counters.
    pub group: &'static str,
    /// Where entries go that could not be applied after the delivery limit.
    pub dead_letters: String,
    /// Hash of outbox id → stream entry id of each published event still in flight (see `producer`).
    pub published: String,
}

impl StreamNames {
    /// Partition 0's names for one deployment's prefix (tests use a random prefix each): the names of
    /// the single stream from before partitions, so a deployment at P = 1 keeps its keys.
    pub fn new(prefix: &str) -> Self {
        Self::partition(prefix, 0)
    }

    /// Partition `partition`'s names. They do not depend on P: partition 2 has the same keys under
    /// P = 4 as under P = 8, so changing P strands no partition that both layouts have.
    pub fn partition(prefix: &str, partition: usize) -> Self {
        let tag = if partition == 0 {
            "{events}".to_owned()
        } else {
            format!("{{events:{partition}}}")
        };
        Self {
            partition,
            stream: format!("{prefix}:{tag}:follow:v1"),
            group: "counters",
            dead_letters: format!("{prefix}:{tag}:follow:v1:dead"),
            published: format!("{prefix}:{tag}:follow:v1:published"),
        }
    }
}

/// The partitions of a deployment's event stream: the `written` ones, among which each event goes to
/// its followee's ([`partition_of`]), and the ones read, which are those and, while P changes, those of
/// the other layout (`FOLLOW_STREAM_PARTITIONS_READ`). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Streams {
    /// Names of partitions `0..read`, the written ones first.
    read: Arc<[StreamNames]>,
    /// P: how many partitions writers append to.
    written: usize,
}

impl Streams {
    /// `written` partitions for writers, `read` (raised to `written` if below) for the readers.
    pub fn new(prefix: &str, written: usize, read: usize) -> Self {
        let written = written.max(1);
        Self {
            read: (0..read.max(written))
                .map(|p| StreamNames::partition(prefix, p))
                .collect(),
            written,
        }
    }

    /// The partition an event of `followee` is appended to.
    pub fn of(&self, followee: UserId) -> &StreamNames {
        &self.read[partition_of(followee, self.written)]
    }

    /// How many partitions writers append to (P).
    pub fn written(&self) -> usize {
        self.written
    }

    /// Every partition the consumers, the trimmer, the fan-out and the gauges cover.
    pub fn read(&self) -> &[StreamNames] {
        &self.read
    }

    /// Partition 0: the only one when P = 1, and the stream of a deployment from before partitions.
    pub fn first(&self) -> &StreamNames {
        &self.read[0]
    }
}

/// The partition of `followee`'s events among `partitions`: the jump consistent hash (Lamping and
/// Veach, 2014) of the SplitMix64 mix of the id. Stable across processes and versions (no random seed);
/// going from P to P + 1 partitions moves only 1/(P + 1) of the followees, all to the new partition.
/// Keying on the followee keeps every change of one edge in one partition, in commit order.
pub fn partition_of(followee: UserId, partitions: usize) -> usize {
    if partitions <= 1 {
        return 0;
    }
    let mut key = splitmix64(followee.get() as u64);
    let (mut bucket, mut next) = (0i64, 0i64);
    while next < partitions as i64 {
        bucket = next;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        next = ((bucket + 1) as f64 * ((1i64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    bucket as usize
}

/// SplitMix64's finalizer: spreads consecutive ids over all 64 bits before the jump hash.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One partition's size and the counters group's progress on it, for metrics and the benchmark.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_partition_keeps_the_names_from_before_partitions() {
        let names = StreamNames::new("follow");
        assert_eq!(names.stream, "follow:{events}:follow:v1");
        assert_eq!(names.dead_letters, "follow:{events}:follow:v1:dead");
        assert_eq!(names.published, "follow:{events}:follow:v1:published");
        let streams = Streams::new("follow", 1, 1);
        assert_eq!(streams.read().len(), 1);
        assert_eq!(streams.of(UserId(12345)).stream, names.stream);
        assert_eq!(
            StreamNames::partition("follow", 3).published,
            "follow:{events:3}:follow:v1:published"
        );
    }

    #[test]
    fn partitions_are_stable_and_spread_followees_evenly() {
        // Fixed values: the function must never change (it places events already in Redis).
        let placed: Vec<usize> = (1..=8).map(|id| partition_of(UserId(id), 4)).collect();
        assert_eq!(placed, [3, 0, 1, 3, 3, 0, 1, 0]);
        for partitions in [2usize, 3, 4, 8] {
            let mut per = vec![0usize; partitions];
            for id in 1..=40_000 {
                per[partition_of(UserId(id), partitions)] += 1;
            }
            let even = 40_000 / partitions;
            for n in per {
                assert!(
                    n.abs_diff(even) < even / 10,
                    "{n} vs {even} of {partitions}"
                );
            }
        }
    }

    #[test]
    fn growing_p_moves_followees_only_to_the_new_partition() {
        for id in 1..=10_000 {
            let (before, after) = (partition_of(UserId(id), 4), partition_of(UserId(id), 5));
            assert!(
                after == before || after == 4,
                "user {id}: {before} -> {after}"
            );
        }
    }

    #[test]
    fn readers_cover_the_larger_layout_and_writers_the_configured_one() {
        let streams = Streams::new("p", 2, 4);
        assert_eq!(streams.written(), 2);
        assert_eq!(streams.read().len(), 4);
        assert!((1..=1_000).all(|id| streams.of(UserId(id)).partition < 2));
        assert_eq!(Streams::new("p", 4, 2).read().len(), 4);
    }
}
