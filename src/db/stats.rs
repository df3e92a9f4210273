//! Queries on `user_stats`: reading counts, folding applied events into them, reconciling them.

use chrono::{DateTime, Utc};
use diesel::{
    prelude::*,
    sql_types::{Array, BigInt, Bool, Double, Text, Timestamptz},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::{StoreResult, prepared::prepared, schema::user_stats};
use crate::domain::{AppliedBatch, AppliedEvent, Counts, EventId, EventKind, FollowEvent, UserId};

/// Stored counts of these users; a user without a row has no edges yet (zero counts).
pub async fn counts(conn: &mut AsyncPgConnection, user_ids: &[i64]) -> StoreResult<Vec<Counts>> {
    Ok(user_stats::table
        .filter(user_stats::user_id.eq_any(user_ids))
        .select((
            user_stats::user_id,
            user_stats::follower_count,
            user_stats::following_count,
            user_stats::version,
        ))
        .load(conn)
        .await?)
}

/// The `n` users with the most followers (warm-up's hot users).
pub async fn most_followed(conn: &mut AsyncPgConnection, n: i64) -> StoreResult<Vec<i64>> {
    Ok(user_stats::table
        .order(user_stats::follower_count.desc())
        .limit(n)
        .select(user_stats::user_id)
        .load(conn)
        .await?)
}

/// A user's counts as a statement returns them (columns `user_id`, `follower_count`, `following_count`,
/// `version`).
#[derive(Clone, Debug, PartialEq, Eq, QueryableByName)]
pub struct CountsRow {
    #[diesel(sql_type = BigInt)]
    user_id: i64,
    #[diesel(sql_type = BigInt)]
    follower_count: i64,
    #[diesel(sql_type = BigInt)]
    following_count: i64,
    #[diesel(sql_type = BigInt)]
    version: i64,
}

impl From<&CountsRow> for Counts {
    fn from(row: &CountsRow) -> Self {
        Counts {
            user_id: UserId(row.user_id),
            follower_count: row.follower_count,
            following_count: row.following_count,
            version: row.version,
        }
    }
}

/// `counts_now`'s statement: each side of the pending deltas is read through its own index of `outbox`
/// (`outbox_followee_idx` for followers, `outbox_follower_idx` for following), never by a scan.
pub const COUNTS_NOW_SQL: &str = concat!(
    "SELECT u.user_id, \
        (COALESCE(s.follower_count, 0) + COALESCE(d.followers, 0))::bigint AS follower_count, \
        (COALESCE(s.following_count, 0) + COALESCE(d.following, 0))::bigint AS following_count, \
        COALESCE(s.version, 0)::bigint AS version \
 FROM unnest($1::bigint[]) AS u(user_id) \
 LEFT JOIN user_stats s ON s.user_id = u.user_id \
 LEFT JOIN ( \
     SELECT user_id, sum(followers)::bigint AS followers, sum(following)::bigint AS following \
     FROM ( \
         SELECT followee_id AS user_id, ",
    crate::outbox_delta_sql!(),
    " AS followers, 0 AS following \
         FROM outbox WHERE followee_id = ANY($1::bigint[]) \
         UNION ALL \
         SELECT follower_id, 0, ",
    crate::outbox_delta_sql!(),
    " \
         FROM outbox WHERE follower_id = ANY($1::bigint[]) \
     ) AS p GROUP BY user_id) AS d ON d.user_id = u.user_id"
);

/// Counts of these users as the edges stand now: the stored counts plus the deltas of their events
/// still in the outbox. One statement, so one snapshot: the consumer deletes an event's outbox row and
/// adds its delta in one transaction, and the snapshot holds the delta in exactly one of the two places.
/// For the users a request has just written (their stored counts lag by the consumer's few milliseconds);
/// never cached, since it is ahead of the stored version. A few index probes, whatever the backlog.
pub async fn counts_now(
    conn: &mut AsyncPgConnection,
    user_ids: &[i64],
) -> StoreResult<Vec<Counts>> {
    let rows: Vec<CountsRow> = diesel::sql_query(COUNTS_NOW_SQL)
        .bind::<Array<BigInt>, _>(user_ids)
        .load(conn)
        .await?;
    Ok(rows.iter().map(Counts::from).collect())
}

/// The apply statement's one row: the applied events and the new counts, each as parallel arrays.
#[derive(QueryableByName)]
struct AppliedRow {
    #[diesel(sql_type = Array<BigInt>)]
    ids: Vec<EventId>,
    #[diesel(sql_type = Array<Text>)]
    kinds: Vec<EventKind>,
    #[diesel(sql_type = Array<BigInt>)]
    followers: Vec<UserId>,
    #[diesel(sql_type = Array<BigInt>)]
    followees: Vec<UserId>,
    #[diesel(sql_type = Array<Timestamptz>)]
    ats: Vec<DateTime<Utc>>,
    #[diesel(sql_type = Array<Bool>)]
    follows_now: Vec<bool>,
    #[diesel(sql_type = Array<Double>)]
    lags: Vec<f64>,
    #[diesel(sql_type = Array<BigInt>)]
    count_users: Vec<UserId>,
    #[diesel(sql_type = Array<BigInt>)]
    follower_counts: Vec<i64>,
    #[diesel(sql_type = Array<BigInt>)]
    following_counts: Vec<i64>,
    #[diesel(sql_type = Array<BigInt>)]
    versions: Vec<i64>,
}

/// The signed delta of each outbox row of `$src` (a table or a CTE with the outbox's columns), per user
/// and per count, as SQL shared by apply and reconcile.
macro_rules! deltas_per_user_sql {
    ($src:literal) => {
        concat!(
            "SELECT user_id, sum(followers)::bigint AS followers, sum(following)::bigint AS following \
             FROM ( \
                 SELECT followee_id AS user_id, ",
            crate::outbox_delta_sql!(),
            " AS followers, 0 AS following FROM ",
            $src,
            " \
                 UNION ALL \
                 SELECT follower_id, 0, ",
            crate::outbox_delta_sql!(),
            " FROM ",
            $src,
            " \
             ) AS d GROUP BY user_id"
        )
    };
}

/// The apply statement (`?`: the outbox ids): delete the batch's outbox rows, add their deltas, and
/// return what it applied and the new counts in one row of arrays.
const APPLY_SQL: &str = concat!(
    "WITH applied AS ( \
         DELETE FROM outbox WHERE id = ANY(?::bigint[]) \
         RETURNING id, kind, follower_id, followee_id, occurred_at), \
     deltas AS (",
    deltas_per_user_sql!("applied"),
    "), \
     upserted AS ( \
         INSERT INTO user_stats (user_id, follower_count, following_count, version) \
         SELECT user_id, followers, following, 1 FROM deltas \
         WHERE followers <> 0 OR following <> 0 \
         ORDER BY user_id \
         ON CONFLICT (user_id) DO UPDATE SET \
             follower_count = user_stats.follower_count + EXCLUDED.follower_count, \
             following_count = user_stats.following_count + EXCLUDED.following_count, \
             version = user_stats.version + 1, \
             updated_at = now() \
         RETURNING user_id, follower_count, following_count, version), \
     events AS ( \
         SELECT a.id, a.kind, a.follower_id, a.followee_id, a.occurred_at, \
                (f.follower_id IS NOT NULL) AS follows_now, \
                EXTRACT(EPOCH FROM clock_timestamp() - a.occurred_at)::float8 AS lag \
         FROM applied a \
         LEFT JOIN follows f ON f.follower_id = a.follower_id AND f.followee_id = a.followee_id) \
     SELECT e.*, c.* FROM \
         (SELECT COALESCE(array_agg(id ORDER BY id), ARRAY[]::bigint[]) AS ids, \
                 COALESCE(array_agg(kind ORDER BY id), ARRAY[]::text[]) AS kinds, \
                 COALESCE(array_agg(follower_id ORDER BY id), ARRAY[]::bigint[]) AS followers, \
                 COALESCE(array_agg(followee_id ORDER BY id), ARRAY[]::bigint[]) AS followees, \
                 COALESCE(array_agg(occurred_at ORDER BY id), ARRAY[]::timestamptz[]) AS ats, \
                 COALESCE(array_agg(follows_now ORDER BY id), ARRAY[]::bool[]) AS follows_now, \
                 COALESCE(array_agg(lag ORDER BY id), ARRAY[]::float8[]) AS lags \
          FROM events) AS e, \
         (SELECT COALESCE(array_agg(user_id ORDER BY user_id), ARRAY[]::bigint[]) AS count_users, \
                 COALESCE(array_agg(follower_count ORDER BY user_id), ARRAY[]::bigint[]) AS follower_counts, \
                 COALESCE(array_agg(following_count ORDER BY user_id), ARRAY[]::bigint[]) AS following_counts, \
                 COALESCE(array_agg(version ORDER BY user_id), ARRAY[]::bigint[]) AS versions \
          FROM upserted) AS c"
);

prepared!(
    /// Deletes a batch's outbox rows and adds their folded deltas to `user_stats`, in one statement;
    /// prepared once per connection (on the write pool, with a generic plan: no planning per batch).
    ApplyEvents { outbox_ids: Vec<EventId> => Array<BigInt> } = APPLY_SQL
);

/// Applies the events with these outbox ids exactly once: in one statement, deletes their outbox rows,
/// folds the deleted rows' deltas per user and adds them to `user_stats`. An id whose row is already gone
/// (applied before, a redelivery) contributes nothing. Rows are locked in user-id order against deadlocks.
pub async fn apply_events(
    conn: &mut AsyncPgConnection,
    outbox_ids: &[EventId],
) -> StoreResult<AppliedBatch> {
    let row: AppliedRow = ApplyEvents {
        outbox_ids: outbox_ids.to_vec(),
    }
    .get_result(conn)
    .await?;
    let events = (row.ids.into_iter())
        .zip(row.kinds)
        .zip(row.followers.into_iter().zip(row.followees))
        .zip(row.ats.into_iter().zip(row.follows_now).zip(row.lags))
        .map(
            |(((id, kind), (follower, followee)), ((at, follows_now), lag_seconds))| AppliedEvent {
                event: FollowEvent {
                    id,
                    kind,
                    follower,
                    followee,
                    at,
                },
                follows_now,
                lag_seconds,
            },
        )
        .collect();
    let counts = (row.count_users.into_iter())
        .zip(row.follower_counts)
        .zip(row.following_counts.into_iter().zip(row.versions))
        .map(
            |((user_id, follower_count), (following_count, version))| Counts {
                user_id,
                follower_count,
                following_count,
                version,
            },
        )
        .collect();
    Ok(AppliedBatch { events, counts })
}

/// A user whose stored counts differ from what the edges say.
#[derive(Clone, Debug, PartialEq, Eq, QueryableByName)]
pub struct Drift {
    #[diesel(sql_type = BigInt)]
    pub user_id: i64,
    #[diesel(sql_type = BigInt)]
    pub stored_followers: i64,
    #[diesel(sql_type = BigInt)]
    pub expected_followers: i64,
    #[diesel(sql_type = BigInt)]
    pub stored_following: i64,
    #[diesel(sql_type = BigInt)]
    pub expected_following: i64,
}

/// The drift query: in one snapshot, the counts each user should have = its edges in `follows` minus the
/// deltas of outbox rows not applied yet (they will be), compared with `user_stats`.
fn drift_sql() -> String {
    let pending = deltas_per_user_sql!("outbox");
    format!(
        "WITH truth AS ( \
             SELECT u.id AS user_id, COALESCE(fr.n, 0) AS followers, COALESCE(fg.n, 0) AS following \
             FROM users u \
             LEFT JOIN (SELECT followee_id AS id, count(*) AS n FROM follows GROUP BY followee_id) fr ON fr.id = u.id \
             LEFT JOIN (SELECT follower_id AS id, count(*) AS n FROM follows GROUP BY follower_id) fg ON fg.id = u.id), \
         pending AS ({pending}), \
         drift AS ( \
             SELECT t.user_id, \
                    COALESCE(s.follower_count, 0) AS stored_followers, \
                    t.followers - COALESCE(p.followers, 0) AS expected_followers, \
                    COALESCE(s.following_count, 0) AS stored_following, \
                    t.following - COALESCE(p.following, 0) AS expected_following \
             FROM truth t \
             LEFT JOIN user_stats s ON s.user_id = t.user_id \
             LEFT JOIN pending p ON p.user_id = t.user_id \
             WHERE COALESCE(s.follower_count, 0) <> t.followers - COALESCE(p.followers, 0) \
                OR COALESCE(s.following_count, 0) <> t.following - COALESCE(p.following, 0))"
    )
}

/// Every user whose stored counts are wrong, without changing anything.
pub async fn find_drift(conn: &mut AsyncPgConnection) -> StoreResult<Vec<Drift>> {
    let sql = format!("{} SELECT * FROM drift ORDER BY user_id", drift_sql());
    Ok(diesel::sql_query(sql).load(conn).await?)
}

/// Finds and repairs drift in one statement. The repair adds the difference to the current row rather
/// than overwriting it, so a consumer batch committed meanwhile is kept: safe while the service serves.
pub async fn fix_drift(conn: &mut AsyncPgConnection) -> StoreResult<Vec<Drift>> {
    Ok(diesel::sql_query(fix_drift_sql()).load(conn).await?)
}

/// [`fix_drift`]'s statement.
fn fix_drift_sql() -> String {
    format!(
        "{}, fixed AS ( \
             INSERT INTO user_stats (user_id, follower_count, following_count, version) \
             SELECT user_id, expected_followers - stored_followers, expected_following - stored_following, 1 \
             FROM drift ORDER BY user_id \
             ON CONFLICT (user_id) DO UPDATE SET \
                 follower_count = user_stats.follower_count + EXCLUDED.follower_count, \
                 following_count = user_stats.following_count + EXCLUDED.following_count, \
                 version = user_stats.version + 1, \
                 updated_at = now() \
             RETURNING user_id, follower_count, following_count, version) \
         SELECT d.*, f.follower_count, f.following_count, f.version \
         FROM drift d JOIN fixed f USING (user_id) ORDER BY d.user_id",
        drift_sql()
    )
}

/// Overwrites every user's counts with its edge counts; only for `seed`, when nothing else writes.
pub async fn recompute_all(conn: &mut AsyncPgConnection) -> StoreResult<usize> {
    Ok(diesel::sql_query(
        "INSERT INTO user_stats (user_id, follower_count, following_count) \
         SELECT u.id, COALESCE(fr.n, 0), COALESCE(fg.n, 0) FROM users u \
         LEFT JOIN (SELECT followee_id AS id, count(*) AS n FROM follows GROUP BY followee_id) fr ON fr.id = u.id \
         LEFT JOIN (SELECT follower_id AS id, count(*) AS n FROM follows GROUP BY follower_id) fg ON fg.id = u.id \
         ON CONFLICT (user_id) DO UPDATE SET follower_count = EXCLUDED.follower_count, \
             following_count = EXCLUDED.following_count, version = user_stats.version + 1, updated_at = now()",
    )
    .execute(conn)
    .await?)
}

/// The advisory lock that keeps repairs from running at once: two repairs would each add the same
/// difference (scheduled ones on several instances, or one run by hand beside them).
pub const RECONCILE_LOCK: i64 = 7_213_862_105;

#[derive(QueryableByName)]
struct Locked {
    #[diesel(sql_type = diesel::sql_types::Bool)]
    locked: bool,
}

/// How a repair meets another one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenLocked {
    /// Waits for it to finish (a repair asked for by hand).
    Wait,
    /// Skips this turn (a scheduled repair: another instance is doing it).
    Skip,
}

/// A user a repair changed: its drift, and its counts as the repair left them (their version bumped).
#[derive(Clone, Debug, PartialEq, Eq, QueryableByName)]
pub struct Repaired {
    #[diesel(embed)]
    pub drift: Drift,
    #[diesel(embed)]
    pub counts: CountsRow,
}

/// [`fix_drift`] under the reconcile lock, or `None` when another repair holds it and `when_locked`
/// says skip. The lock is a transaction's (`pg_advisory_xact_lock`): it ends with the transaction
/// whatever happens, whereas a session's lock stayed with a pooled connection whose pass was cancelled
/// between lock and unlock, and every later repair skipped or waited for good.
pub async fn fix_drift_locked(
    conn: &mut AsyncPgConnection,
    when_locked: WhenLocked,
) -> StoreResult<Option<Vec<Repaired>>> {
    use diesel_async::AsyncConnection;
    Ok(conn
        .transaction::<_, diesel::result::Error, _>(async |conn| {
            let lock = match when_locked {
                WhenLocked::Wait => {
                    "SELECT true AS locked FROM (SELECT pg_advisory_xact_lock($1)) AS l"
                }
                WhenLocked::Skip => "SELECT pg_try_advisory_xact_lock($1) AS locked",
            };
            let row: Locked = diesel::sql_query(lock)
                .bind::<BigInt, _>(RECONCILE_LOCK)
                .get_result(conn)
                .await?;
            if !row.locked {
                return Ok(None);
            }
            let sql = fix_drift_sql();
            Ok(Some(diesel::sql_query(sql).load(conn).await?))
        })
        .await?)
}
