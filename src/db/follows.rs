//! Queries on `follows`: edge changes (a batch with its outbox rows, in one statement), status and list pages.

use chrono::{DateTime, Utc};
use diesel::{
    prelude::*,
    result::{DatabaseErrorKind, Error as DieselError},
    sql_types::{Array, BigInt, Bool, Nullable, Text, Timestamptz},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::{StoreError, StoreResult, prepared::prepared};
use crate::domain::{EventId, EventKind, FollowEvent, UserId};

/// Which end of the edge a list is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ListKind {
    /// Who follows the owner.
    Followers,
    /// Whom the owner follows.
    Following,
}

/// A position in a list ordered newest first: the edge's time, then the other user's id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Keyset {
    pub at: DateTime<Utc>,
    pub user_id: i64,
}

/// One entry of a list page: the user at the other end of the edge, and when the follow began.
#[derive(Clone, Debug, PartialEq, Eq, QueryableByName)]
pub struct ListEntry {
    #[diesel(sql_type = BigInt)]
    pub owner_id: i64,
    #[diesel(sql_type = BigInt)]
    pub user_id: i64,
    #[diesel(sql_type = Timestamptz)]
    pub followed_at: DateTime<Utc>,
}

/// One edge change asked of a batch: `follower → followee` appears (`follow`) or goes away.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EdgeChange {
    pub follower_id: i64,
    pub followee_id: i64,
    pub follow: bool,
}

/// What a batch statement did to one change asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EdgeResult {
    /// The edge changed; its event, committed with it.
    Changed(FollowEvent),
    /// The edge already was as asked (and, for an unfollow, no request was pending).
    Unchanged,
    /// A follow of a private account: a request is pending; its event if this change made it.
    Requested(Option<FollowEvent>),
    /// An unfollow withdrew a pending request (there was no edge).
    Withdrawn,
    /// A block stands between the two, either way: nothing written.
    Blocked,
    /// Another change of the same call met a block: nothing of the call is written.
    Refused,
    /// An unfollow found a request to withdraw, which a concurrent approval, rejection or block took
    /// first: what it did (an edge, maybe) committed after this statement's snapshot, so the unfollow
    /// must run again to see it.
    Raced,
    /// The follower has no user record: nothing written.
    UnknownFollower,
    /// The followee has no user record: nothing written.
    UnknownFollowee,
}

impl EdgeResult {
    /// The event this change committed, if any.
    pub fn event(&self) -> Option<&FollowEvent> {
        match self {
            Self::Changed(row) | Self::Requested(Some(row)) => Some(row),
            _ => None,
        }
    }
}

/// Why a batch could not be written: a user's record went away between the check and the write (the
/// foreign key caught it), or the store failed.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("a user record went away during the write")]
    UnknownUser,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl super::Transient for EdgeError {
    fn is_transient(&self) -> bool {
        matches!(self, Self::Store(err) if err.is_retryable())
    }
}

fn edge_error(err: DieselError) -> EdgeError {
    match &err {
        DieselError::DatabaseError(DatabaseErrorKind::ForeignKeyViolation, _) => {
            EdgeError::UnknownUser
        }
        _ => EdgeError::Store(err.into()),
    }
}

/// What the change statement decided for one change: the follow gate's verdict for a follow
/// (`follow_gates`, one call per batch that follows), `unfollow` or an unknown user for an unfollow, and
/// `refused` for any change of a call another of whose changes a block refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, diesel::deserialize::FromSqlRow)]
enum Gate {
    Follow,
    Request,
    Unfollow,
    Blocked,
    Refused,
    NoFollower,
    NoFollowee,
}

impl diesel::deserialize::FromSql<Text, diesel::pg::Pg> for Gate {
    fn from_sql(value: diesel::pg::PgValue<'_>) -> diesel::deserialize::Result<Self> {
        let text = <String as diesel::deserialize::FromSql<Text, diesel::pg::Pg>>::from_sql(value)?;
        Ok(match text.as_str() {
            "follow" => Self::Follow,
            "request" => Self::Request,
            "unfollow" => Self::Unfollow,
            "blocked" => Self::Blocked,
            "refused" => Self::Refused,
            "no_follower" => Self::NoFollower,
            "no_followee" => Self::NoFollowee,
            other => return Err(format!("unknown gate verdict {other:?}").into()),
        })
    }
}

#[derive(QueryableByName)]
struct ChangeRow {
    #[diesel(sql_type = Text)]
    gate: Gate,
    #[diesel(sql_type = Nullable<BigInt>)]
    id: Option<EventId>,
    #[diesel(sql_type = Nullable<Text>)]
    kind: Option<EventKind>,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    occurred_at: Option<DateTime<Utc>>,
    #[diesel(sql_type = Bool)]
    withdrew: bool,
    #[diesel(sql_type = Bool)]
    raced: bool,
}

/// Applies a batch of edge changes, of any followers, in one statement (so one transaction and one
/// commit): the edges that appear or go away, the requests made to private accounts or withdrawn, and
/// one outbox row for each edge or request that appeared or went away. A change whose follower or
/// followee has no record, or between users a block separates, writes nothing and is reported so; the
/// others go on. Returns one result per change, in the order asked. The batch must not name one pair
/// twice (the statement's parts see one snapshot, so a second change of a pair would not see the first).
/// `calls` numbers each change's call (a request's changes share a number): a call with a change a
/// block refuses writes none of its changes, so a `followMany` is refused whole.
pub async fn change_edges(
    conn: &mut AsyncPgConnection,
    changes: &[EdgeChange],
    calls: &[i64],
) -> Result<Vec<EdgeResult>, EdgeError> {
    let rows: Vec<ChangeRow> = ChangeEdges {
        followers: changes.iter().map(|c| c.follower_id).collect(),
        followees: changes.iter().map(|c| c.followee_id).collect(),
        follows: changes.iter().map(|c| c.follow).collect(),
        calls: calls.to_vec(),
    }
    .load(conn)
    .await
    .map_err(edge_error)?;
    if rows.len() != changes.len() {
        return Err(EdgeError::Store(StoreError::Query(
            DieselError::QueryBuilderError(
                format!("{} results for {} changes", rows.len(), changes.len()).into(),
            ),
        )));
    }
    Ok(changes
        .iter()
        .zip(rows)
        .map(|(change, row)| {
            let event = match (row.id, row.kind, row.occurred_at) {
                (Some(id), Some(kind), Some(occurred_at)) => Some(FollowEvent {
                    id,
                    kind,
                    follower: UserId(change.follower_id),
                    followee: UserId(change.followee_id),
                    at: occurred_at,
                }),
                _ => None,
            };
            match (row.gate, event) {
                (Gate::NoFollower, _) => EdgeResult::UnknownFollower,
                (Gate::NoFollowee, _) => EdgeResult::UnknownFollowee,
                (Gate::Blocked, _) => EdgeResult::Blocked,
                (Gate::Refused, _) => EdgeResult::Refused,
                (Gate::Request, event) => EdgeResult::Requested(event),
                (Gate::Follow | Gate::Unfollow, Some(event)) => EdgeResult::Changed(event),
                (_, None) if row.withdrew => EdgeResult::Withdrawn,
                (_, None) if row.raced => EdgeResult::Raced,
                (_, None) => EdgeResult::Unchanged,
            }
        })
        .collect())
}

prepared!(
    /// A batch of edge changes and their outbox rows, with one result row per change, in the order asked.
    /// Inserts go in key order, so two batches inserting the same keys wait for each other instead of
    /// deadlocking (deletes may still meet in opposite orders: the caller retries a deadlock).
    ChangeEdges {
        followers: Vec<i64> => Array<BigInt>,
        followees: Vec<i64> => Array<BigInt>,
        follows: Vec<bool> => Array<Bool>,
        calls: Vec<i64> => Array<BigInt>,
    } = "WITH input AS ( \
             SELECT r.*, row_number() OVER (PARTITION BY r.follow ORDER BY r.n) AS k \
             FROM unnest(?::bigint[], ?::bigint[], ?::bool[], ?::bigint[]) \
                  WITH ORDINALITY AS r(follower_id, followee_id, follow, call, n)), \
         gates AS ( \
             SELECT CASE WHEN bool_or(follow) THEN follow_gates( \
                 array_agg(follower_id ORDER BY n) FILTER (WHERE follow), \
                 array_agg(followee_id ORDER BY n) FILTER (WHERE follow)) END AS verdicts \
             FROM input), \
         asked AS ( \
             SELECT i.n, i.call, i.follower_id, i.followee_id, i.follow, \
                    CASE WHEN i.follow THEN (SELECT verdicts FROM gates)[i.k] \
                         WHEN NOT EXISTS (SELECT 1 FROM users u WHERE u.id = i.follower_id) THEN 'no_follower' \
                         WHEN NOT EXISTS (SELECT 1 FROM users u WHERE u.id = i.followee_id) THEN 'no_followee' \
                         ELSE 'unfollow' END AS gate \
             FROM input i), \
         refused AS (SELECT DISTINCT call FROM asked WHERE gate = 'blocked'), \
         admitted AS ( \
             SELECT * FROM asked a WHERE NOT EXISTS (SELECT 1 FROM refused r WHERE r.call = a.call)), \
         added AS ( \
             INSERT INTO follows (follower_id, followee_id) \
             SELECT follower_id, followee_id FROM admitted WHERE gate = 'follow' \
             ORDER BY follower_id, followee_id \
             ON CONFLICT DO NOTHING \
             RETURNING follower_id, followee_id, created_at), \
         requested AS ( \
             INSERT INTO follow_requests (requester_id, target_id) \
             SELECT follower_id, followee_id FROM admitted WHERE gate = 'request' \
             ORDER BY follower_id, followee_id \
             ON CONFLICT DO NOTHING \
             RETURNING requester_id, target_id, created_at), \
         removed AS ( \
             DELETE FROM follows f USING admitted a \
             WHERE a.gate = 'unfollow' AND f.follower_id = a.follower_id AND f.followee_id = a.followee_id \
             RETURNING f.follower_id, f.followee_id), \
         withdrawn AS ( \
             DELETE FROM follow_requests q USING admitted a \
             WHERE a.gate = 'unfollow' AND q.requester_id = a.follower_id AND q.target_id = a.followee_id \
             RETURNING q.requester_id, q.target_id), \
         events AS ( \
             INSERT INTO outbox (kind, follower_id, followee_id, occurred_at) \
             SELECT 'follow', follower_id, followee_id, created_at FROM added \
             UNION ALL \
             SELECT 'unfollow', follower_id, followee_id, now() FROM removed \
             UNION ALL \
             SELECT 'request', requester_id, target_id, created_at FROM requested \
             RETURNING id, kind, follower_id, followee_id, occurred_at) \
         SELECT CASE WHEN a.gate <> 'blocked' AND a.call IN (SELECT call FROM refused) \
                     THEN 'refused' ELSE a.gate END AS gate, \
                e.id, e.kind, e.occurred_at, (w.requester_id IS NOT NULL) AS withdrew, \
                (a.gate = 'unfollow' AND w.requester_id IS NULL AND EXISTS ( \
                    SELECT 1 FROM follow_requests q \
                    WHERE q.requester_id = a.follower_id AND q.target_id = a.followee_id)) AS raced \
         FROM asked a \
         LEFT JOIN events e ON e.follower_id = a.follower_id AND e.followee_id = a.followee_id \
         LEFT JOIN withdrawn w ON w.requester_id = a.follower_id AND w.target_id = a.followee_id \
         ORDER BY a.n"
);

#[derive(QueryableByName)]
struct Pair {
    #[diesel(sql_type = BigInt)]
    follower_id: i64,
    #[diesel(sql_type = BigInt)]
    followee_id: i64,
}

/// Of these (follower, followee) pairs, the ones that are edges: one index probe per pair, one round trip.
pub async fn existing_pairs(
    conn: &mut AsyncPgConnection,
    pairs: &[(i64, i64)],
) -> StoreResult<Vec<(i64, i64)>> {
    let (followers, followees): (Vec<i64>, Vec<i64>) = pairs.iter().copied().unzip();
    let rows: Vec<Pair> = ExistingPairs {
        followers,
        followees,
    }
    .load(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|p| (p.follower_id, p.followee_id))
        .collect())
}

prepared!(
    /// The pairs that are edges: one primary-key probe per pair.
    ExistingPairs { followers: Vec<i64> => Array<BigInt>, followees: Vec<i64> => Array<BigInt> } =
    "SELECT f.follower_id, f.followee_id \
     FROM unnest(?::bigint[], ?::bigint[]) AS p(follower_id, followee_id) \
     JOIN follows f ON f.follower_id = p.follower_id AND f.followee_id = p.followee_id"
);

#[derive(QueryableByName)]
struct FollowingRow {
    #[diesel(sql_type = BigInt)]
    user_id: i64,
    #[diesel(sql_type = Array<BigInt>)]
    followees: Vec<i64>,
}

/// Whom each user follows, at most `limit` ids per user (one range scan each), in one round trip.
pub async fn following_sets(
    conn: &mut AsyncPgConnection,
    users: &[i64],
    limit: i64,
) -> StoreResult<Vec<(i64, Vec<i64>)>> {
    let rows: Vec<FollowingRow> = FollowingSets {
        limit,
        users: users.to_vec(),
    }
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.user_id, r.followees)).collect())
}

prepared!(
    /// Each user's followees, cut at a limit: a scan of the primary key's range of that follower.
    FollowingSets { limit: i64 => BigInt, users: Vec<i64> => Array<BigInt> } =
    "SELECT u.id AS user_id, \
            ARRAY(SELECT f.followee_id FROM follows f WHERE f.follower_id = u.id LIMIT ?) AS followees \
     FROM unnest(?::bigint[]) AS u(id)"
);

/// One page, newest first, of the lists of several owners at once (all after the same keyset, if any):
/// up to `limit` entries per owner, each served by a keyset range scan of its own.
pub async fn list_pages(
    conn: &mut AsyncPgConnection,
    kind: ListKind,
    owner_ids: &[i64],
    after: Option<Keyset>,
    limit: i64,
) -> StoreResult<Vec<ListEntry>> {
    let owners = owner_ids.to_vec();
    // Four statements rather than one with `after IS NULL OR …`: each keeps a plan that bounds its
    // index range scan, whatever PostgreSQL decides about generic plans.
    Ok(match (kind, after) {
        (ListKind::Followers, None) => FollowerFirstPages { owners, limit }.load(conn).await?,
        (ListKind::Following, None) => FollowingFirstPages { owners, limit }.load(conn).await?,
        (ListKind::Followers, Some(k)) => {
            FollowerPagesAfter {
                owners,
                at: k.at,
                id: k.user_id,
                limit,
            }
            .load(conn)
            .await?
        }
        (ListKind::Following, Some(k)) => {
            FollowingPagesAfter {
                owners,
                at: k.at,
                id: k.user_id,
                limit,
            }
            .load(conn)
            .await?
        }
    })
}

/// The text of a list-page statement: the list of `$owner` (the column that picks it) shows `$other`,
/// newest first; `$after` is empty for a first page, or the keyset condition.
macro_rules! page_sql {
    ($other:literal, $owner:literal, $after:literal) => {
        concat!(
            "SELECT o.id AS owner_id, e.user_id, e.followed_at FROM unnest(?::bigint[]) AS o(id) ",
            "CROSS JOIN LATERAL (SELECT f.",
            $other,
            " AS user_id, f.created_at AS followed_at FROM follows f ",
            "WHERE f.",
            $owner,
            " = o.id",
            $after,
            " ORDER BY f.created_at DESC, f.",
            $other,
            " DESC LIMIT ?) AS e"
        )
    };
}

prepared!(
    /// The newest followers of each owner.
    FollowerFirstPages { owners: Vec<i64> => Array<BigInt>, limit: i64 => BigInt } =
    page_sql!("follower_id", "followee_id", "")
);

prepared!(
    /// Whom each owner followed most recently.
    FollowingFirstPages { owners: Vec<i64> => Array<BigInt>, limit: i64 => BigInt } =
    page_sql!("followee_id", "follower_id", "")
);

prepared!(
    /// Followers of each owner after a keyset position.
    FollowerPagesAfter {
        owners: Vec<i64> => Array<BigInt>,
        at: DateTime<Utc> => Timestamptz,
        id: i64 => BigInt,
        limit: i64 => BigInt,
    } = page_sql!("follower_id", "followee_id", " AND (f.created_at, f.follower_id) < (?, ?)")
);

prepared!(
    /// Whom each owner followed, after a keyset position.
    FollowingPagesAfter {
        owners: Vec<i64> => Array<BigInt>,
        at: DateTime<Utc> => Timestamptz,
        id: i64 => BigInt,
        limit: i64 => BigInt,
    } = page_sql!("followee_id", "follower_id", " AND (f.created_at, f.followee_id) < (?, ?)")
);

/// One known-followers page asked for: the followers of `owner_id` whom the viewer follows, newest
/// first, after `after` if set, `limit` rows at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KnownPage {
    pub owner_id: i64,
    pub after: Option<Keyset>,
    pub limit: i64,
}

/// A row of [`KnownFollowersPages`]: which page it belongs to (1-based, in the order asked), and its entry.
#[derive(QueryableByName)]
struct KnownRow {
    #[diesel(sql_type = BigInt)]
    page: i64,
    #[diesel(embed)]
    entry: ListEntry,
}

/// Several known-followers pages of one viewer in one statement, whatever their owners, cursors and
/// sizes: for each page asked, the followers of its owner whom `viewer_id` follows, newest first, after
/// its own keyset (if any), `limit` entries at most. Returns the pages in the order asked.
pub async fn known_followers_pages(
    conn: &mut AsyncPgConnection,
    viewer_id: i64,
    pages: &[KnownPage],
) -> StoreResult<Vec<Vec<ListEntry>>> {
    let rows: Vec<KnownRow> = KnownFollowersPages {
        owners: pages.iter().map(|p| p.owner_id).collect(),
        ats: pages.iter().map(|p| p.after.map(|k| k.at)).collect(),
        ids: pages
            .iter()
            .map(|p| p.after.map_or(0, |k| k.user_id))
            .collect(),
        limits: pages.iter().map(|p| p.limit).collect(),
        viewer_id,
    }
    .load(conn)
    .await?;
    let mut found = vec![Vec::new(); pages.len()];
    // Rows come ordered by page, then newest first: pushing in that order keeps each page's order.
    for row in rows {
        let slot = usize::try_from(row.page - 1)
            .ok()
            .and_then(|i| found.get_mut(i));
        if let Some(page) = slot {
            page.push(row.entry);
        }
    }
    Ok(found)
}

// Known followers of an owner: "followers of the owner ∩ users the viewer follows". Both statements below
// drive from the viewer's side, as the one-owner statement they replace did (its plan: nested loop over
// the viewer's following list, probing each edge x → owner): a following list is short next to a popular
// owner's followers. For each owner asked they read the viewer's following list (an index-only range scan
// of `follows_follower_recent_idx`, follower_id = viewer) and, for each user x on it, probe the one edge
// x → owner (index-only: the pages on `follows_follower_recent_idx`, which carries created_at; the counts
// on `follows_pkey`). Cost: owners × following(viewer) probes, in one round trip and one statement.
//
// The `OFFSET 0` keeps each probe a subquery run per (owner, x). Without it the planner, which cannot
// know the owners' sizes (they come in an array), hash-joined the viewer's list against an index scan of
// every follower of every owner: on the seeded graph (`seed --users 20000`, 400 000 edges), 100 popular
// owners and a viewer following 39 users, that read 168 000 index entries (27 ms); the probes read
// 3 900 entries (about 12 000 buffer hits, 5 ms), in custom and generic plans alike.
//
// Considered and left: scanning the whole following list of each x and keeping the owners asked (a
// two-hop walk). It read 128 buffers on the seeded graph, whose users follow 20 on average, but its cost
// is the sum of the following counts of the viewer's followees, however few owners are asked, where the
// probes cost what the request asks for (owners × the viewer's following count).

prepared!(
    /// For each (owner, keyset, limit) asked, a page of the followers of owner whom the viewer follows,
    /// ordered and paged as the follower lists (`page_sql!`): (created_at, follower_id) descending, the
    /// next page strictly below the cursor.
    KnownFollowersPages {
        owners: Vec<i64> => Array<BigInt>,
        ats: Vec<Option<DateTime<Utc>>> => Array<Nullable<Timestamptz>>,
        ids: Vec<i64> => Array<BigInt>,
        limits: Vec<i64> => Array<BigInt>,
        viewer_id: i64 => BigInt,
    } = "SELECT k.page, k.owner_id, e.user_id, e.followed_at \
         FROM unnest(?::bigint[], ?::timestamptz[], ?::bigint[], ?::bigint[]) \
              WITH ORDINALITY AS k(owner_id, at, id, lim, page) \
         CROSS JOIN LATERAL ( \
             SELECT f.follower_id AS user_id, f.created_at AS followed_at \
             FROM follows v \
             CROSS JOIN LATERAL ( \
                 SELECT f.follower_id, f.created_at FROM follows f \
                 WHERE f.follower_id = v.followee_id AND f.followee_id = k.owner_id \
                 OFFSET 0) AS f \
             WHERE v.follower_id = ? \
               AND (k.at IS NULL OR (f.created_at, f.follower_id) < (k.at, k.id)) \
             ORDER BY f.created_at DESC, f.follower_id DESC \
             LIMIT k.lim) AS e \
         ORDER BY k.page, e.followed_at DESC, e.user_id DESC"
);

#[derive(QueryableByName)]
struct OwnerCount {
    #[diesel(sql_type = BigInt)]
    owner_id: i64,
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// How many followers of each owner `viewer_id` follows (exact), in one statement. Owners with none are
/// absent from the answer.
pub async fn known_followers_counts(
    conn: &mut AsyncPgConnection,
    viewer_id: i64,
    owner_ids: &[i64],
) -> StoreResult<Vec<(i64, i64)>> {
    let rows: Vec<OwnerCount> = KnownFollowersCounts {
        owners: owner_ids.to_vec(),
        viewer_id,
    }
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| (r.owner_id, r.n)).collect())
}

prepared!(
    /// For each distinct owner, how many of its followers the viewer follows (see the note above
    /// `KnownFollowersPages`: the same walk, counted with one GROUP BY).
    KnownFollowersCounts { owners: Vec<i64> => Array<BigInt>, viewer_id: i64 => BigInt } =
    "SELECT o.owner_id, count(*) AS n \
     FROM (SELECT DISTINCT owner_id FROM unnest(?::bigint[]) AS u(owner_id)) AS o \
     CROSS JOIN follows v \
     CROSS JOIN LATERAL ( \
         SELECT FROM follows f \
         WHERE f.follower_id = v.followee_id AND f.followee_id = o.owner_id \
         OFFSET 0) AS f \
     WHERE v.follower_id = ? \
     GROUP BY o.owner_id"
);

/// Inserts edges directly, without outbox rows, many per statement: only for `seed`, which repairs
/// the counters afterwards with `stats::fix_drift`. Returns how many were new.
pub async fn insert_edges_bulk(
    conn: &mut AsyncPgConnection,
    follower_ids: &[i64],
    followee_ids: &[i64],
    created_at: &[DateTime<Utc>],
) -> StoreResult<usize> {
    Ok(diesel::sql_query(
        "INSERT INTO follows (follower_id, followee_id, created_at) \
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::timestamptz[]) \
         ON CONFLICT DO NOTHING",
    )
    .bind::<Array<BigInt>, _>(follower_ids)
    .bind::<Array<BigInt>, _>(followee_ids)
    .bind::<Array<Timestamptz>, _>(created_at)
    .execute(conn)
    .await?)
}

/// `owner` removes `follower` from its followers: the edge goes, with an outbox event of kind `remove`
/// (counted as an unfollow, told to nobody), in one statement. `None` when there was no such edge.
pub async fn remove_follower(
    conn: &mut AsyncPgConnection,
    owner: i64,
    follower: i64,
) -> StoreResult<Option<FollowEvent>> {
    let rows: Vec<FollowEvent> = diesel::sql_query(
        "WITH removed AS ( \
             DELETE FROM follows WHERE follower_id = $1 AND followee_id = $2 \
             RETURNING follower_id, followee_id) \
         INSERT INTO outbox (kind, follower_id, followee_id, occurred_at) \
         SELECT 'remove', follower_id, followee_id, now() FROM removed \
         RETURNING id, kind, follower_id, followee_id, occurred_at",
    )
    .bind::<BigInt, _>(follower)
    .bind::<BigInt, _>(owner)
    .load(conn)
    .await?;
    Ok(rows.into_iter().next())
}
