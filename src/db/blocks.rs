//! Queries on `blocks`: making and lifting blocks, which blocks stand between pairs, and a blocker's list.

use chrono::{DateTime, Utc};
use diesel::sql_types::{BigInt, Timestamptz};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

use crate::domain::FollowEvent;

use super::{
    Count, StoreResult,
    follows::{Keyset, ListEntry},
    pairs::{PairError, lock_users},
    prepared::prepared,
};

/// What a block did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockOutcome {
    /// Whether the block is new.
    pub changed: bool,
    /// The removal of each edge it took away (none, one or both ways), committed with it.
    pub events: Vec<FollowEvent>,
}

/// `blocker` blocks `blocked`, in one transaction: the block row, the edges both ways (each removal an
/// outbox event of kind `remove`, so the counts follow and nobody is told) and any request either way.
/// Both user rows are locked FOR UPDATE first, in id order: a follow in flight between the two commits
/// before (and its edge is removed here), and a later one waits, then sees the block (`follow_gates`).
pub async fn block(
    conn: &mut AsyncPgConnection,
    blocker: i64,
    blocked: i64,
) -> Result<BlockOutcome, PairError> {
    conn.transaction::<_, PairError, _>(async |conn| {
        lock_users(conn, blocker, blocked, true).await?;
        let inserted = diesel::sql_query(
            "INSERT INTO blocks (blocker_id, blocked_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind::<BigInt, _>(blocker)
        .bind::<BigInt, _>(blocked)
        .execute(conn)
        .await?;
        if inserted == 0 {
            // Standing already: no edge nor request can exist between the two.
            return Ok(BlockOutcome::default());
        }
        let events: Vec<FollowEvent> = diesel::sql_query(
            "WITH removed AS ( \
                 DELETE FROM follows \
                 WHERE (follower_id = $1 AND followee_id = $2) OR (follower_id = $2 AND followee_id = $1) \
                 RETURNING follower_id, followee_id), \
             dropped AS ( \
                 DELETE FROM follow_requests \
                 WHERE (requester_id = $1 AND target_id = $2) OR (requester_id = $2 AND target_id = $1)) \
             INSERT INTO outbox (kind, follower_id, followee_id, occurred_at) \
             SELECT 'remove', follower_id, followee_id, now() FROM removed \
             RETURNING id, kind, follower_id, followee_id, occurred_at",
        )
        .bind::<BigInt, _>(blocker)
        .bind::<BigInt, _>(blocked)
        .load(conn)
        .await
        ?;
        Ok(BlockOutcome {
            changed: true,
            events,
        })
    })
    .await
}

/// `blocker` lifts its block of `blocked`; returns whether there was one. Nothing else comes back: the
/// edges the block removed stay removed.
pub async fn unblock(
    conn: &mut AsyncPgConnection,
    blocker: i64,
    blocked: i64,
) -> Result<bool, PairError> {
    conn.transaction::<_, PairError, _>(async |conn| {
        // Only to tell an unknown user apart; a share lock is enough.
        lock_users(conn, blocker, blocked, false).await?;
        let removed =
            diesel::sql_query("DELETE FROM blocks WHERE blocker_id = $1 AND blocked_id = $2")
                .bind::<BigInt, _>(blocker)
                .bind::<BigInt, _>(blocked)
                .execute(conn)
                .await?;
        Ok(removed > 0)
    })
    .await
}

/// Of these (blocker, blocked) pairs, the ones that are blocks: one primary-key probe per pair.
pub async fn existing(
    conn: &mut AsyncPgConnection,
    pairs: &[(i64, i64)],
) -> StoreResult<Vec<(i64, i64)>> {
    super::pairs::existing(
        conn,
        "SELECT b.blocker_id AS a, b.blocked_id AS b \
     FROM unnest($1::bigint[], $2::bigint[]) AS p(blocker_id, blocked_id) \
     JOIN blocks b ON b.blocker_id = p.blocker_id AND b.blocked_id = p.blocked_id",
        pairs,
    )
    .await
}

/// Whom `blocker` blocks, newest first, after `after` if set: at most `limit` entries (`followed_at`
/// is when the block began), by a range scan of `blocks_blocker_recent_idx`. Prepared statements (one
/// round trip, no planning after a connection's first call), a first page and a later one apart so that
/// each keeps a plan that bounds its range scan.
pub async fn page(
    conn: &mut AsyncPgConnection,
    blocker: i64,
    after: Option<Keyset>,
    limit: i64,
) -> StoreResult<Vec<ListEntry>> {
    Ok(match after {
        None => BlockedFirstPage { blocker, limit }.load(conn).await?,
        Some(k) => {
            BlockedPageAfter {
                blocker,
                at: k.at,
                id: k.user_id,
                limit,
            }
            .load(conn)
            .await?
        }
    })
}

/// How many users `blocker` blocks.
pub async fn count(conn: &mut AsyncPgConnection, blocker: i64) -> StoreResult<i64> {
    let row: Count = BlockedCount { blocker }.get_result(conn).await?;
    Ok(row.n)
}

prepared!(
    /// The newest blocks of a blocker.
    BlockedFirstPage { blocker: i64 => BigInt, limit: i64 => BigInt } =
    "SELECT blocker_id AS owner_id, blocked_id AS user_id, created_at AS followed_at \
     FROM blocks WHERE blocker_id = ? \
     ORDER BY created_at DESC, blocked_id DESC LIMIT ?"
);

prepared!(
    /// A blocker's blocks after a keyset position.
    BlockedPageAfter {
        blocker: i64 => BigInt,
        at: DateTime<Utc> => Timestamptz,
        id: i64 => BigInt,
        limit: i64 => BigInt,
    } =
    "SELECT blocker_id AS owner_id, blocked_id AS user_id, created_at AS followed_at \
     FROM blocks WHERE blocker_id = ? AND (created_at, blocked_id) < (?, ?) \
     ORDER BY created_at DESC, blocked_id DESC LIMIT ?"
);

prepared!(
    /// How many users a blocker blocks.
    BlockedCount { blocker: i64 => BigInt } =
    "SELECT count(*) AS n FROM blocks WHERE blocker_id = ?"
);
