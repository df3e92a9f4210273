//! The follow graph's vocabulary, typed once: user and event ids, event kinds, the one follow event
//! that the outbox, the stream, the consumer, the caches, the fan-out and the subscription all pass, a
//! user's counts, and what applying a batch of events did (made by the store, read by the consumer and
//! the caches, so neither knows the other's types).
//!
//! Each type maps to SQL here (diesel `ToSql`/`FromSql`), so a row with an unknown kind fails to load
//! instead of being skipped; the GraphQL layer maps them to the wire in `graphql/ids.rs` and
//! `graphql/types.rs`.

use std::{fmt, str::FromStr};

use chrono::{DateTime, Utc};
use diesel::{
    Queryable, QueryableByName,
    deserialize::{self, FromSql, FromSqlRow},
    expression::AsExpression,
    pg::{Pg, PgValue},
    serialize::{self, Output, ToSql},
    sql_types::{BigInt, Text, Timestamptz},
};

/// Declares an `i64` id newtype that reads and writes as SQL `bigint`.
macro_rules! bigint_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, AsExpression, FromSqlRow,
        )]
        #[diesel(sql_type = BigInt)]
        pub struct $name(pub i64);

        impl $name {
            /// The number itself, for keys, SQL built by hand and the wire.
            pub const fn get(self) -> i64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl ToSql<BigInt, Pg> for $name {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
                <i64 as ToSql<BigInt, Pg>>::to_sql(&self.0, out)
            }
        }

        impl FromSql<BigInt, Pg> for $name {
            fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
                <i64 as FromSql<BigInt, Pg>>::from_sql(value).map(Self)
            }
        }
    };
}

bigint_id!(
    /// A user of the social product (`users.id`): positive, assigned by the product, not by us.
    UserId
);

bigint_id!(
    /// An event's outbox id (`outbox.id`): orders the changes of one pair, and makes applying an event
    /// idempotent (its row is deleted when applied).
    EventId
);

/// What happened to a pair (follower, followee): an edge appeared or went away, or a request was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, AsExpression, FromSqlRow)]
#[diesel(sql_type = Text)]
pub enum EventKind {
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

impl EventKind {
    /// Every kind, for tests and for the SQL that names them.
    pub const ALL: [Self; 5] = [
        Self::Follow,
        Self::Unfollow,
        Self::Approve,
        Self::Remove,
        Self::Request,
    ];

    /// The form stored in `outbox.kind` and in stream entries.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Follow => "follow",
            Self::Unfollow => "unfollow",
            Self::Approve => "approve",
            Self::Remove => "remove",
            Self::Request => "request",
        }
    }

    /// Whether the edge exists after the event: `None` when the event does not change it.
    pub const fn edge_after(self) -> Option<bool> {
        match self {
            Self::Follow | Self::Approve => Some(true),
            Self::Unfollow | Self::Remove => Some(false),
            Self::Request => None,
        }
    }

    /// What the event adds to its follower's following count and to its followee's follower count.
    pub const fn count_delta(self) -> i64 {
        match self.edge_after() {
            Some(true) => 1,
            Some(false) => -1,
            None => 0,
        }
    }
}

/// A kind this version does not know (a row or an entry written by a newer one).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown follow event kind {0:?}")]
pub struct UnknownEventKind(pub String);

impl FromStr for EventKind {
    type Err = UnknownEventKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| UnknownEventKind(s.to_owned()))
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ToSql<Text, Pg> for EventKind {
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
        <str as ToSql<Text, Pg>>::to_sql(self.as_str(), out)
    }
}

impl FromSql<Text, Pg> for EventKind {
    fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
        let text = <String as FromSql<Text, Pg>>::from_sql(value)?;
        Ok(text.parse()?)
    }
}

/// One committed change of a pair, as its outbox row records it.
#[derive(Clone, Debug, PartialEq, Eq, QueryableByName)]
pub struct FollowEvent {
    #[diesel(sql_type = BigInt)]
    pub id: EventId,
    #[diesel(sql_type = Text)]
    pub kind: EventKind,
    #[diesel(sql_type = BigInt, column_name = follower_id)]
    pub follower: UserId,
    #[diesel(sql_type = BigInt, column_name = followee_id)]
    pub followee: UserId,
    /// When the change committed (`outbox.occurred_at`).
    #[diesel(sql_type = Timestamptz, column_name = occurred_at)]
    pub at: DateTime<Utc>,
}

impl FollowEvent {
    /// The user whose subscription shows this event, if any: the followee is told of a follow, an
    /// unfollow and a request, the requester of an approval; nobody of a removal (the one removed is
    /// not told, and the one who removed did it).
    pub fn recipient(&self) -> Option<UserId> {
        match self.kind {
            EventKind::Follow | EventKind::Unfollow | EventKind::Request => Some(self.followee),
            EventKind::Approve => Some(self.follower),
            EventKind::Remove => None,
        }
    }

    /// The other user of the event, from its recipient's side.
    pub fn counterpart(&self) -> UserId {
        if self.recipient() == Some(self.follower) {
            self.followee
        } else {
            self.follower
        }
    }

    /// The pair's edge as this event leaves it, versioned by the event's id; `None` for a request.
    pub fn edge_state(&self) -> Option<EdgeState> {
        self.kind.edge_after().map(|follows| EdgeState {
            follower: self.follower,
            followee: self.followee,
            follows,
            version: self.id,
        })
    }
}

/// Whether `follower` follows `followee`, as known at event `version`: what the caches record, so that
/// a late state (a lower version) never overwrites a newer one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EdgeState {
    pub follower: UserId,
    pub followee: UserId,
    pub follows: bool,
    pub version: EventId,
}

/// The stored counts of one user.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Queryable)]
pub struct Counts {
    pub user_id: UserId,
    pub follower_count: i64,
    pub following_count: i64,
    /// Bumped by every change of the row (0: no row yet); caches keep the highest.
    pub version: i64,
}

/// One event whose delta a batch applied, with its pair's edge as the batch found it.
#[derive(Clone, Debug, PartialEq)]
pub struct AppliedEvent {
    pub event: FollowEvent,
    /// Whether the edge exists as the batch is applied (read in the same statement): not the event's own
    /// direction, which a later change of the pair may have undone already. The cache records this state
    /// under the event's id, so a late event can never put an older state back where Redis forgot the
    /// newer change's version (its data lost).
    pub follows_now: bool,
    /// Seconds from the event's commit (its `occurred_at`) to this application.
    pub lag_seconds: f64,
}

impl AppliedEvent {
    /// The pair's edge as the batch found it, versioned by this event: what the caches record.
    pub fn edge_now(&self) -> EdgeState {
        EdgeState {
            follower: self.event.follower,
            followee: self.event.followee,
            follows: self.follows_now,
            version: self.event.id,
        }
    }
}

/// What applying a batch of events did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AppliedBatch {
    /// Events whose outbox row this batch deleted, so whose delta it applied.
    pub events: Vec<AppliedEvent>,
    /// The new counts of every user whose counts changed.
    pub counts: Vec<Counts>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_reads_back_and_says_what_it_did_to_the_edge() {
        for kind in EventKind::ALL {
            assert_eq!(kind.as_str().parse::<EventKind>(), Ok(kind));
        }
        assert_eq!(
            "block".parse::<EventKind>(),
            Err(UnknownEventKind("block".into()))
        );
        let edge: Vec<Option<bool>> = EventKind::ALL.map(EventKind::edge_after).into();
        assert_eq!(
            edge,
            [Some(true), Some(false), Some(true), Some(false), None]
        );
    }

    #[test]
    fn the_sql_deltas_agree_with_the_kinds() {
        // outbox_delta_sql! is the counters' arithmetic in SQL; it must say what count_delta says.
        let sql = crate::outbox_delta_sql!();
        for kind in EventKind::ALL {
            let delta = kind.count_delta();
            let named = format!("WHEN '{}' THEN {delta} ", kind.as_str());
            assert!(sql.contains(&named), "{kind}: {sql}");
        }
    }

    #[test]
    fn events_go_to_the_user_they_concern() {
        let event = |kind| FollowEvent {
            id: EventId(1),
            kind,
            follower: UserId(7),
            followee: UserId(9),
            at: DateTime::UNIX_EPOCH,
        };
        let told: Vec<Option<(UserId, UserId)>> = EventKind::ALL
            .map(|kind| {
                let e = event(kind);
                e.recipient().map(|r| (r, e.counterpart()))
            })
            .into();
        assert_eq!(
            told,
            [
                Some((UserId(9), UserId(7))),
                Some((UserId(9), UserId(7))),
                Some((UserId(7), UserId(9))),
                None,
                Some((UserId(9), UserId(7))),
            ]
        );
        assert_eq!(event(EventKind::Request).edge_state(), None);
    }
}
