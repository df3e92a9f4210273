//! Typed cache keys: their Redis names (hash-tagged by user, so a Redis Cluster keeps a user's keys in
//! one slot) and the encoding of their values (`<version>:<payload>` in Redis).

use crate::{
    db::{
        follows::{ListEntry, ListKind},
        users::UserRecord,
    },
    domain::{Counts, UserId},
};

/// Version tag of the key layout and value encoding: bump it when either changes.
const LAYOUT: &str = "c1";

/// Redis key names under one deployment's prefix.
#[derive(Clone, Debug)]
pub struct KeyNames {
    prefix: String,
}

impl KeyNames {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// Whether `follower` follows `followee`.
    pub fn status(&self, follower: i64, followee: i64) -> String {
        format!("{}:{LAYOUT}:st:{{{follower}}}:{followee}", self.prefix)
    }

    /// A user's counts.
    pub fn counts(&self, user: i64) -> String {
        format!("{}:{LAYOUT}:ct:{{{user}}}", self.prefix)
    }

    /// A user's record (or its absence).
    pub fn user(&self, user: i64) -> String {
        format!("{}:{LAYOUT}:us:{{{user}}}", self.prefix)
    }

    /// The version of one of a user's lists; bumping it drops every cached page of the list.
    pub fn list_version(&self, kind: ListKind, owner: i64) -> String {
        format!("{}:{LAYOUT}:lv:{{{owner}}}:{}", self.prefix, kind_tag(kind))
    }

    /// The first page, of `limit` rows, of a list at `version`.
    pub fn list_page(&self, kind: ListKind, owner: i64, version: i64, limit: i64) -> String {
        format!(
            "{}:{LAYOUT}:lp:{{{owner}}}:{}:{version}:{limit}",
            self.prefix,
            kind_tag(kind)
        )
    }

    /// The set of ids a user follows (a Redis set; see `sets`).
    pub fn following_set(&self, user: i64) -> String {
        format!("{}:{LAYOUT}:fs:{{{user}}}", self.prefix)
    }

    /// A user's follows and unfollows of the last minute, and the generation that set fills check.
    pub fn recent_changes(&self, user: i64) -> String {
        format!("{}:{LAYOUT}:rc:{{{user}}}", self.prefix)
    }

    /// When Redis's cache data began (ms since the Unix epoch, by the instance that found it missing):
    /// a young epoch means the recent changes may have been lost with the rest.
    pub fn epoch(&self) -> String {
        format!("{}:{LAYOUT}:epoch", self.prefix)
    }

    /// When the cache data of one hash slot began (Redis's clock, µs), kept in that slot: a list
    /// version missing there was never bumped since, or lost with the data before this instant.
    pub fn slot_epoch(&self, slot: u16) -> String {
        format!(
            "{}:{LAYOUT}:ep:{{{}}}",
            self.prefix,
            crate::redis_pool::slot_tag(slot)
        )
    }

    /// Viewers active lately (a sorted set by last seen), for warm-up.
    pub fn active_viewers(&self) -> String {
        format!("{}:{LAYOUT}:active", self.prefix)
    }

    /// The pub/sub channel of L1 invalidations.
    pub fn channel(&self) -> String {
        format!("{}:{LAYOUT}:invalidate", self.prefix)
    }
}

/// What a per-user key names, read back from its name (to tell other instances which L1 entries a
/// write that could not reach Redis left behind).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Named {
    Status { follower: i64, followee: i64 },
    Counts { user: i64 },
    User { user: i64 },
    ListVersion { kind: ListKind, owner: i64 },
    FollowingSet { user: i64 },
    RecentChanges { user: i64 },
}

impl KeyNames {
    /// The entry `key` names, if it is one of this deployment's per-user keys (list pages are not: their
    /// keys carry versions that never repeat).
    pub fn parse(&self, key: &str) -> Option<Named> {
        let rest = key.strip_prefix(self.prefix.as_str())?;
        let rest = rest
            .strip_prefix(':')?
            .strip_prefix(LAYOUT)?
            .strip_prefix(':')?;
        let (kind, rest) = rest.split_once(':')?;
        let (user, tail) = rest.strip_prefix('{')?.split_once('}')?;
        let user: i64 = user.parse().ok()?;
        let tail = tail.strip_prefix(':');
        Some(match (kind, tail) {
            ("st", Some(followee)) => Named::Status {
                follower: user,
                followee: followee.parse().ok()?,
            },
            ("ct", None) => Named::Counts { user },
            ("us", None) => Named::User { user },
            ("lv", Some(tag)) => Named::ListVersion {
                kind: kind_from_tag(tag)?,
                owner: user,
            },
            ("fs", None) => Named::FollowingSet { user },
            ("rc", None) => Named::RecentChanges { user },
            _ => return None,
        })
    }
}

pub fn kind_tag(kind: ListKind) -> &'static str {
    match kind {
        ListKind::Followers => "fr",
        ListKind::Following => "fg",
    }
}

pub fn kind_from_tag(tag: &str) -> Option<ListKind> {
    match tag {
        "fr" => Some(ListKind::Followers),
        "fg" => Some(ListKind::Following),
        _ => None,
    }
}

/// Splits a stored `<version>:<payload>`.
pub fn split_versioned(stored: &str) -> Option<(i64, &str)> {
    let (version, payload) = stored.split_once(':')?;
    Some((version.parse().ok()?, payload))
}

pub fn encode_status(follows: bool) -> &'static str {
    if follows { "1" } else { "0" }
}

pub fn decode_status(payload: &str) -> Option<bool> {
    match payload {
        "1" => Some(true),
        "0" => Some(false),
        _ => None,
    }
}

pub fn encode_counts(counts: &Counts) -> String {
    format!("{},{}", counts.follower_count, counts.following_count)
}

pub fn decode_counts(user_id: i64, version: i64, payload: &str) -> Option<Counts> {
    let (followers, following) = payload.split_once(',')?;
    Some(Counts {
        user_id: UserId(user_id),
        follower_count: followers.parse().ok()?,
        following_count: following.parse().ok()?,
        version,
    })
}

/// A user record as JSON, or `-` for "no such user".
pub fn encode_user(user: Option<&UserRecord>) -> String {
    user.and_then(|u| serde_json::to_string(u).ok())
        .unwrap_or_else(|| "-".to_owned())
}

pub fn decode_user(payload: &str) -> Option<Option<UserRecord>> {
    if payload == "-" {
        Some(None)
    } else {
        serde_json::from_str(payload).ok().map(Some)
    }
}

/// A page as `micros,user;micros,user`.
pub fn encode_page(entries: &[ListEntry]) -> String {
    entries
        .iter()
        .map(|e| format!("{},{}", e.followed_at.timestamp_micros(), e.user_id))
        .collect::<Vec<_>>()
        .join(";")
}

pub fn decode_page(owner_id: i64, payload: &str) -> Option<Vec<ListEntry>> {
    if payload.is_empty() {
        return Some(Vec::new());
    }
    payload
        .split(';')
        .map(|item| {
            let (micros, user) = item.split_once(',')?;
            Some(ListEntry {
                owner_id,
                user_id: user.parse().ok()?,
                followed_at: chrono::DateTime::from_timestamp_micros(micros.parse().ok()?)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {

    #[test]
    fn per_user_keys_read_back_as_what_they_name() {
        let names = KeyNames::new("p");
        let all = [
            (
                names.status(1, 2),
                Named::Status {
                    follower: 1,
                    followee: 2,
                },
            ),
            (names.counts(3), Named::Counts { user: 3 }),
            (names.user(4), Named::User { user: 4 }),
            (
                names.list_version(ListKind::Following, 5),
                Named::ListVersion {
                    kind: ListKind::Following,
                    owner: 5,
                },
            ),
            (names.following_set(6), Named::FollowingSet { user: 6 }),
            (names.recent_changes(7), Named::RecentChanges { user: 7 }),
        ];
        for (key, named) in all {
            assert_eq!(names.parse(&key), Some(named), "{key}");
        }
        assert_eq!(
            names.parse(&names.list_page(ListKind::Followers, 1, 2, 3)),
            None
        );
        assert_eq!(KeyNames::new("other").parse(&names.user(4)), None);
    }

    use super::*;

    #[test]
    fn values_survive_their_encoding() {
        let counts = Counts {
            user_id: UserId(3),
            follower_count: 10,
            following_count: 2,
            version: 9,
        };
        assert_eq!(decode_counts(3, 9, &encode_counts(&counts)), Some(counts));
        let at = chrono::DateTime::from_timestamp_micros(1_764_000_000_123_456).expect("valid");
        let page = vec![
            ListEntry {
                owner_id: 1,
                user_id: 5,
                followed_at: at,
            },
            ListEntry {
                owner_id: 1,
                user_id: 6,
                followed_at: at,
            },
        ];
        assert_eq!(decode_page(1, &encode_page(&page)), Some(page));
        assert_eq!(decode_page(1, ""), Some(Vec::new()));
        assert_eq!(decode_user("-"), Some(None));
        assert_eq!(split_versioned("12:1"), Some((12, "1")));
        assert_eq!(split_versioned("x:1"), None);
        let names = KeyNames::new("p");
        assert_eq!(names.status(1, 2), "p:c1:st:{1}:2");
        assert_eq!(
            names.list_page(ListKind::Followers, 7, 3, 21),
            "p:c1:lp:{7}:fr:3:21"
        );
    }
}
