//! The stream entry of a follow event: its fields on the way in (XADD) and out (XREADGROUP, XRANGE).

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::{
    domain::{EventId, FollowEvent, UserId},
    redis_pool::redis,
};

/// A stream entry's optional field, set (to `1`) by a writer whose append rode the round trip that
/// recorded the event's status in the caches and announced it: the consumer need not record it again.
/// Entries the relay publishes lack it, so their statuses are recorded when they are applied.
pub const RECORDED_FIELD: &str = "cached";

/// The entry's fields, in the order they are appended.
pub fn fields(event: &FollowEvent) -> [(&'static str, String); 5] {
    [
        ("id", event.id.to_string()),
        ("kind", event.kind.as_str().to_owned()),
        ("follower", event.follower.to_string()),
        ("followee", event.followee.to_string()),
        (
            "at",
            event
                .at
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        ),
    ]
}

/// Decodes an entry's fields; `None` for an entry this version cannot read (a missing field, an
/// unknown kind), which the consumer sends to the dead letters.
pub fn decode(map: &HashMap<String, redis::Value>) -> Option<FollowEvent> {
    let text = |name: &str| -> Option<String> { redis::from_redis_value_ref(map.get(name)?).ok() };
    Some(FollowEvent {
        id: EventId(text("id")?.parse().ok()?),
        kind: text("kind")?.parse().ok()?,
        follower: UserId(text("follower")?.parse().ok()?),
        followee: UserId(text("followee")?.parse().ok()?),
        at: DateTime::parse_from_rfc3339(&text("at")?)
            .ok()?
            .with_timezone(&Utc),
    })
}

/// Whether an entry carries [`RECORDED_FIELD`].
pub fn recorded_in_caches(map: &HashMap<String, redis::Value>) -> bool {
    map.get(RECORDED_FIELD)
        .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
        .is_some_and(|v| v == "1")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::EventKind;

    fn entry(fields: impl IntoIterator<Item = (String, String)>) -> HashMap<String, redis::Value> {
        fields
            .into_iter()
            .map(|(k, v)| (k, redis::Value::BulkString(v.into_bytes())))
            .collect()
    }

    #[test]
    fn an_event_survives_its_stream_encoding() {
        for kind in EventKind::ALL {
            let event = FollowEvent {
                id: EventId(42),
                kind,
                follower: UserId(7),
                followee: UserId(9),
                at: DateTime::parse_from_rfc3339("2026-11-25T10:00:00.123456Z")
                    .map(|t| t.with_timezone(&Utc))
                    .expect("valid"),
            };
            let map = entry(fields(&event).map(|(k, v)| (k.to_owned(), v)));
            assert_eq!(decode(&map), Some(event));
        }
    }

    #[test]
    fn an_entry_with_a_missing_field_or_an_unknown_kind_is_not_decoded() {
        assert_eq!(decode(&entry([("id".into(), "1".into())])), None);
        let unknown = entry(
            [
                ("id", "1"),
                ("kind", "block"),
                ("follower", "7"),
                ("followee", "9"),
                ("at", "2026-11-25T10:00:00Z"),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
        assert_eq!(decode(&unknown), None);
    }
}
