//! Queries on `follow_requests`: approving and rejecting requests to a private account, which requests
//! are pending between pairs, and a private account's list of requests.

use diesel::{
    prelude::*,
    sql_types::{BigInt, Nullable, Timestamptz},
};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::domain::{EventId, EventKind, FollowEvent, UserId};

use super::{
    Count, StoreResult,
    follows::{Keyset, ListEntry},
    pairs::{PairError, lock_users},
    prepared::prepared,
};

/// What an approval did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Approval {
    /// Whether a request was pending (and is now gone).
    pub changed: bool,
    /// The edge's event (kind `approve`), when the approval made the edge.
    pub event: Option<FollowEvent>,
}

/// `target` approves the pending request of `requester`: the request becomes an edge, with its outbox
/// event, in one transaction. A request no longer pending (cancelled, rejected, removed by a block)
/// changes nothing. The two user rows are locked FOR UPDATE first, as a block locks them: a block or a
/// repeated follow in flight between the two commits before (a removal of the request is seen here; a
/// repeated request finds the request there and adds nothing), and one that comes later waits for this
/// approval, then sees the edge (a follow changes nothing, a block removes it). With a share lock, a
/// repeated follow's request waited on the row this approval deleted and was written again after it,
/// beside the new edge.
pub async fn approve(
    conn: &mut AsyncPgConnection,
    target: i64,
    requester: i64,
) -> Result<Approval, PairError> {
    conn.transaction::<_, PairError, _>(async |conn| {
        lock_users(conn, target, requester, true).await?;
        #[derive(QueryableByName)]
        struct Moved {
            #[diesel(sql_type = BigInt)]
            moved: i64,
            #[diesel(sql_type = Nullable<BigInt>)]
            id: Option<EventId>,
            #[diesel(sql_type = Nullable<diesel::sql_types::Text>)]
            kind: Option<EventKind>,
            #[diesel(sql_type = Nullable<Timestamptz>)]
            occurred_at: Option<chrono::DateTime<chrono::Utc>>,
        }
        let row: Moved = diesel::sql_query(
            "WITH moved AS ( \
                 DELETE FROM follow_requests WHERE requester_id = $1 AND target_id = $2 \
                 RETURNING requester_id, target_id), \
             added AS ( \
                 INSERT INTO follows (follower_id, followee_id) \
                 SELECT requester_id, target_id FROM moved \
                 ON CONFLICT DO NOTHING \
                 RETURNING follower_id, followee_id, created_at), \
             events AS ( \
                 INSERT INTO outbox (kind, follower_id, followee_id, occurred_at) \
                 SELECT 'approve', follower_id, followee_id, created_at FROM added \
                 RETURNING id, kind, occurred_at) \
             SELECT (SELECT count(*) FROM moved) AS moved, e.id, e.kind, e.occurred_at \
             FROM (SELECT 1) AS one LEFT JOIN events e ON true",
        )
        .bind::<BigInt, _>(requester)
        .bind::<BigInt, _>(target)
        .get_result(conn)
        .await?;
        let event = match (row.id, row.kind, row.occurred_at) {
            (Some(id), Some(kind), Some(occurred_at)) => Some(FollowEvent {
                id,
                kind,
                follower: UserId(requester),
                followee: UserId(target),
                at: occurred_at,
            }),
            _ => None,
        };
        Ok(Approval {
            changed: row.moved > 0,
            event,
        })
    })
    .await
}

/// `target` rejects the pending request of `requester`; returns whether one was pending. The requester
/// is not told (no event); it may ask again.
pub async fn reject(
    conn: &mut AsyncPgConnection,
    target: i64,
    requester: i64,
) -> Result<bool, PairError> {
    conn.transaction::<_, PairError, _>(async |conn| {
        lock_users(conn, target, requester, false).await?;
        let removed = diesel::sql_query(
            "DELETE FROM follow_requests WHERE requester_id = $1 AND target_id = $2",
        )
        .bind::<BigInt, _>(requester)
        .bind::<BigInt, _>(target)
        .execute(conn)
        .await?;
        Ok(removed > 0)
    })
    .await
}

/// Approves every request pending to `target`, in the caller's transaction (an account turned public,
/// whose row the caller holds FOR UPDATE, so no new request can slip in): one edge and one `approve`
/// event per request, in one statement.
pub async fn approve_all(
    conn: &mut AsyncPgConnection,
    target: i64,
) -> QueryResult<Vec<FollowEvent>> {
    diesel::sql_query(
        "WITH moved AS ( \
             DELETE FROM follow_requests WHERE target_id = $1 RETURNING requester_id, target_id), \
         added AS ( \
             INSERT INTO follows (follower_id, followee_id) \
             SELECT requester_id, target_id FROM moved ORDER BY requester_id \
             ON CONFLICT DO NOTHING \
             RETURNING follower_id, followee_id, created_at) \
         INSERT INTO outbox (kind, follower_id, followee_id, occurred_at) \
         SELECT 'approve', follower_id, followee_id, created_at FROM added \
         RETURNING id, kind, follower_id, followee_id, occurred_at",
    )
    .bind::<BigInt, _>(target)
    .load(conn)
    .await
}

/// Of these (requester, target) pairs, the ones with a pending request: one primary-key probe each.
pub async fn existing(
    conn: &mut AsyncPgConnection,
    pairs: &[(i64, i64)],
) -> StoreResult<Vec<(i64, i64)>> {
    super::pairs::existing(
        conn,
        "SELECT q.requester_id AS a, q.target_id AS b \
     FROM unnest($1::bigint[], $2::bigint[]) AS p(requester_id, target_id) \
     JOIN follow_requests q ON q.requester_id = p.requester_id AND q.target_id = p.target_id",
        pairs,
    )
    .await
}

/// Who asked to follow `target`, newest first, after `after` if set: at most `limit` entries
/// (`followed_at` is when the request was made), by a range scan of `follow_requests_target_recent_idx`.
/// Prepared statements, a first page and a later one apart, as the blocker's list (`blocks::page`).
pub async fn page(
    conn: &mut AsyncPgConnection,
    target: i64,
    after: Option<Keyset>,
    limit: i64,
) -> StoreResult<Vec<ListEntry>> {
    Ok(match after {
        None => RequestsFirstPage { target, limit }.load(conn).await?,
        Some(k) => {
            RequestsPageAfter {
                target,
                at: k.at,
                id: k.user_id,
                limit,
            }
            .load(conn)
            .await?
        }
    })
}

/// How many requests are pending to `target`.
pub async fn count(conn: &mut AsyncPgConnection, target: i64) -> StoreResult<i64> {
    let row: Count = RequestsCount { target }.get_result(conn).await?;
    Ok(row.n)
}

prepared!(
    /// The newest requests pending to a target.
    RequestsFirstPage { target: i64 => BigInt, limit: i64 => BigInt } =
    "SELECT target_id AS owner_id, requester_id AS user_id, created_at AS followed_at \
     FROM follow_requests WHERE target_id = ? \
     ORDER BY created_at DESC, requester_id DESC LIMIT ?"
);

prepared!(
    /// The requests pending to a target after a keyset position.
    RequestsPageAfter {
        target: i64 => BigInt,
        at: chrono::DateTime<chrono::Utc> => Timestamptz,
        id: i64 => BigInt,
        limit: i64 => BigInt,
    } =
    "SELECT target_id AS owner_id, requester_id AS user_id, created_at AS followed_at \
     FROM follow_requests WHERE target_id = ? AND (created_at, requester_id) < (?, ?) \
     ORDER BY created_at DESC, requester_id DESC LIMIT ?"
);

prepared!(
    /// How many requests are pending to a target.
    RequestsCount { target: i64 => BigInt } =
    "SELECT count(*) AS n FROM follow_requests WHERE target_id = ?"
);
