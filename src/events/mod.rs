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

pub mod consumer;
pub mod fanout;
pub mod producer;
pub mod recovery;
pub mod relay;

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::{
    db::outbox::OutboxRow,
    redis_pool::{RedisPool, redis},
};

/// What happened to a pair (follower, followee): an edge appeared or went away, or a request was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FollowEventKind {
    /// The follower followed: an edge appeared.
    Follow,
    /// The follower unfollowed: the edge went away.
    Unfollow,
    /// The followee approved the follower's request: an edge appeared.
    Approve,
    /// The followee removed the follower, or a block did: the edge went away, and nobody is told.
    Remove,
    /// The follower asked to follow a private followee: no edge yet.
    Request,
}

impl FollowEventKind {
    /// The form stored in `outbox.kind` and in stream entries.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Follow => "follow",
            Self::Unfollow => "unfollow",
            Self::Approve => "approve",
            Self::Remove => "remove",
            Self::Request => "request",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "follow" => Self::Follow,
            "unfollow" => Self::Unfollow,
            "approve" => Self::Approve,
            "remove" => Self::Remove,
            "request" => Self::Request,
            _ => return None,
        })
    }

    /// Whether the edge exists after the event: `None` when the event does not change it.
    pub fn edge_after(self) -> Option<bool> {
        match self {
            Self::Follow | Self::Approve => Some(true),
            Self::Unfollow | Self::Remove => Some(false),
            Self::Request => None,
        }
    }
}

/// A stream entry's optional field, set (to `1`) by a writer whose append rode the round trip that
/// recorded the event's status in the caches and announced it: the consumer need not record it again.
/// Entries the relay publishes lack it, so their statuses are recorded when they are applied.
pub const RECORDED_FIELD: &str = "cached";

/// Whether a stream entry carries [`RECORDED_FIELD`].
pub fn recorded_in_caches(map: &HashMap<String, redis::Value>) -> bool {
    map.get(RECORDED_FIELD)
        .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
        .is_some_and(|v| v == "1")
}

/// One committed edge change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FollowEvent {
    /// The outbox row's id: what makes applying the event idempotent.
    pub id: i64,
    pub kind: FollowEventKind,
    pub follower_id: i64,
    pub followee_id: i64,
    pub at: DateTime<Utc>,
}

impl FollowEvent {
    /// The event an outbox row records, if its kind is known.
    pub fn from_outbox(row: &OutboxRow) -> Option<Self> {
        Some(Self {
            id: row.id,
            kind: FollowEventKind::parse(&row.kind)?,
            follower_id: row.follower_id,
            followee_id: row.followee_id,
            at: row.occurred_at,
        })
    }

    /// The stream entry's fields.
    pub fn to_fields(&self) -> [(&'static str, String); 5] {
        [
            ("id", self.id.to_string()),
            ("kind", self.kind.as_str().to_owned()),
            ("follower", self.follower_id.to_string()),
            ("followee", self.followee_id.to_string()),
            (
                "at",
                self.at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            ),
        ]
    }

    /// The user whose subscription shows this event, if any: the followee is told of a follow, an
    /// unfollow and a request, the requester of an approval; nobody of a removal (the one removed is
    /// not told, and the one who removed did it).
    pub fn recipient(&self) -> Option<i64> {
        match self.kind {
            FollowEventKind::Follow | FollowEventKind::Unfollow | FollowEventKind::Request => {
                Some(self.followee_id)
            }
            FollowEventKind::Approve => Some(self.follower_id),
            FollowEventKind::Remove => None,
        }
    }

    /// The other user of the event, from its recipient's side.
    pub fn counterpart(&self) -> i64 {
        if self.recipient() == Some(self.follower_id) {
            self.followee_id
        } else {
            self.follower_id
        }
    }

    /// Decodes a stream entry's fields; `None` for an entry this version cannot read.
    pub fn from_fields(map: &HashMap<String, redis::Value>) -> Option<Self> {
        let text =
            |name: &str| -> Option<String> { redis::from_redis_value_ref(map.get(name)?).ok() };
        Some(Self {
            id: text("id")?.parse().ok()?,
            kind: FollowEventKind::parse(&text("kind")?)?,
            follower_id: text("follower")?.parse().ok()?,
            followee_id: text("followee")?.parse().ok()?,
            at: DateTime::parse_from_rfc3339(&text("at")?)
                .ok()?
                .with_timezone(&Utc),
        })
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_survives_its_stream_encoding() {
        let event = FollowEvent {
            id: 42,
            kind: FollowEventKind::Unfollow,
            follower_id: 7,
            followee_id: 9,
            at: DateTime::parse_from_rfc3339("2026-11-25T10:00:00.123456Z")
                .map(|t| t.with_timezone(&Utc))
                .expect("valid"),
        };
        let map: HashMap<String, redis::Value> = event
            .to_fields()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), redis::Value::BulkString(v.into_bytes())))
            .collect();
        assert_eq!(FollowEvent::from_fields(&map), Some(event));
    }

    #[test]
    fn every_kind_reads_back_and_says_what_it_did_to_the_edge() {
        use FollowEventKind::*;
        for kind in [Follow, Unfollow, Approve, Remove, Request] {
            assert_eq!(FollowEventKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(FollowEventKind::parse("block"), None);
        let edge: Vec<Option<bool>> = [Follow, Unfollow, Approve, Remove, Request]
            .into_iter()
            .map(FollowEventKind::edge_after)
            .collect();
        assert_eq!(
            edge,
            [Some(true), Some(false), Some(true), Some(false), None]
        );
    }

    #[test]
    fn an_entry_with_a_missing_field_is_not_decoded() {
        let map: HashMap<String, redis::Value> =
            [("id".to_owned(), redis::Value::BulkString(b"1".to_vec()))]
                .into_iter()
                .collect();
        assert_eq!(FollowEvent::from_fields(&map), None);
    }
}
