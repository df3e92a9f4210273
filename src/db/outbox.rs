//! Queries on `outbox`: the events committed with their edge change and not yet applied to the counters.

use std::time::Duration;

use diesel::{prelude::*, sql_types::BigInt};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::{Count, StoreResult};
use crate::domain::{EventId, FollowEvent};

/// SQL for an outbox row's delta to both counts (its follower's following, its followee's followers),
/// from its `kind` column: the one place the counters' arithmetic names the kinds (a unit test checks
/// it against `EventKind::count_delta`; the table's CHECK admits no other kind).
#[macro_export]
macro_rules! outbox_delta_sql {
    () => {
        "CASE kind WHEN 'follow' THEN 1 WHEN 'unfollow' THEN -1 WHEN 'approve' THEN 1 \
         WHEN 'remove' THEN -1 WHEN 'request' THEN 0 END"
    };
}

/// Claims up to `limit` rows that nobody applied, and no relay looked at, for `older_than`, oldest first,
/// and stamps them as looked at now, so that several relays (one per instance) do not handle the same row.
pub async fn claim_stale(
    conn: &mut AsyncPgConnection,
    older_than: Duration,
    limit: i64,
) -> StoreResult<Vec<FollowEvent>> {
    let micros = i64::try_from(older_than.as_micros()).unwrap_or(i64::MAX);
    Ok(diesel::sql_query(
        "UPDATE outbox SET published_at = clock_timestamp() \
         WHERE id IN ( \
             SELECT id FROM outbox \
             WHERE COALESCE(published_at, occurred_at) < clock_timestamp() - make_interval(secs => $1 / 1e6) \
             ORDER BY id LIMIT $2 \
             FOR UPDATE SKIP LOCKED) \
         RETURNING id, kind, follower_id, followee_id, occurred_at",
    )
    .bind::<BigInt, _>(micros)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await?)
}

#[derive(QueryableByName)]
struct Id {
    #[diesel(sql_type = BigInt)]
    id: EventId,
}

/// Of these outbox ids, the ones whose row is still there (not applied yet).
pub async fn unapplied(conn: &mut AsyncPgConnection, ids: &[EventId]) -> StoreResult<Vec<EventId>> {
    let rows: Vec<Id> = diesel::sql_query("SELECT id FROM outbox WHERE id = ANY($1::bigint[])")
        .bind::<diesel::sql_types::Array<BigInt>, _>(ids)
        .load(conn)
        .await?;
    Ok(rows.into_iter().map(|r| r.id).collect())
}

/// How far behind the counters are.
#[derive(Clone, Copy, Debug, Default, PartialEq, QueryableByName)]
pub struct OutboxStats {
    /// Committed events not applied yet.
    #[diesel(sql_type = BigInt)]
    pub backlog: i64,
    /// Age of the oldest of them (0 when none).
    #[diesel(sql_type = diesel::sql_types::Double)]
    pub oldest_age_seconds: f64,
}

/// The most rows [`stats`] counts: a backlog beyond it reads as this many. Counting is a scan, and the
/// gauges are sampled every few seconds on every instance within a 1 s budget: an uncapped count of a
/// large backlog (an incident) missed the budget, and took the oldest age, which alerts read, with it.
pub const BACKLOG_COUNTED: i64 = 1_000_000;

/// Backlog (at most [`BACKLOG_COUNTED`]) and oldest age, in one bounded query: the age is the oldest
/// row's by id (the primary key), not a scan for the smallest `occurred_at` (ids and commit times
/// differ in order by at most the length of a write transaction).
pub async fn stats(conn: &mut AsyncPgConnection) -> StoreResult<OutboxStats> {
    Ok(diesel::sql_query(
        "SELECT (SELECT count(*) FROM (SELECT 1 FROM outbox LIMIT $1) AS counted) AS backlog, \
                COALESCE(EXTRACT(EPOCH FROM clock_timestamp() \
                    - (SELECT occurred_at FROM outbox ORDER BY id LIMIT 1)), 0)::float8 AS oldest_age_seconds",
    )
    .bind::<BigInt, _>(BACKLOG_COUNTED)
    .get_result(conn)
    .await?)
}

/// How many events are committed but not applied yet.
pub async fn backlog(conn: &mut AsyncPgConnection) -> StoreResult<i64> {
    let row: Count = diesel::sql_query("SELECT count(*) AS n FROM outbox")
        .get_result(conn)
        .await?;
    Ok(row.n)
}
