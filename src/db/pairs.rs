//! What the statements on a pair of users share: their row shapes, their errors, and the locks on
//! the two users' rows that order blocks, approvals and privacy changes against follows in flight.

use diesel::{
    prelude::*,
    result::Error as DieselError,
    sql_types::{Array, BigInt},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::{Count, StoreError, StoreResult};

/// A pair of user ids read back from a statement.
#[derive(QueryableByName)]
pub(super) struct Pair {
    #[diesel(sql_type = BigInt)]
    pub a: i64,
    #[diesel(sql_type = BigInt)]
    pub b: i64,
}

/// Why a statement on a pair (the acting user, another user) wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum PairError {
    #[error("the acting user has no record")]
    UnknownActor,
    #[error("the other user has no record")]
    UnknownUser,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<DieselError> for PairError {
    fn from(err: DieselError) -> Self {
        Self::Store(err.into())
    }
}

impl super::Transient for PairError {
    fn is_transient(&self) -> bool {
        matches!(self, Self::Store(err) if err.is_retryable())
    }
}

/// Locks the rows of `actor` and `other` in id order, `FOR UPDATE` (`exclusive`: a block or a privacy
/// change, which must wait for the follows in flight between them and hold back new ones) or `FOR KEY
/// SHARE` (as a follow's gate and its foreign keys lock them), until the transaction ends. Fails when
/// either has no record.
pub(super) async fn lock_users(
    conn: &mut AsyncPgConnection,
    actor: i64,
    other: i64,
    exclusive: bool,
) -> Result<(), PairError> {
    let sql = if exclusive {
        "SELECT id AS n FROM users WHERE id IN ($1, $2) ORDER BY id FOR UPDATE"
    } else {
        "SELECT id AS n FROM users WHERE id IN ($1, $2) ORDER BY id FOR KEY SHARE"
    };
    let found: Vec<Count> = diesel::sql_query(sql)
        .bind::<BigInt, _>(actor)
        .bind::<BigInt, _>(other)
        .load(conn)
        .await?;
    if !found.iter().any(|r| r.n == actor) {
        return Err(PairError::UnknownActor);
    }
    if !found.iter().any(|r| r.n == other) {
        return Err(PairError::UnknownUser);
    }
    Ok(())
}

/// Of these pairs, the ones `sql` finds: `sql` takes the pairs' first ids as `$1` and second ids as
/// `$2` (two arrays, one primary-key probe per pair) and returns each pair found as `a, b`.
pub(super) async fn existing(
    conn: &mut AsyncPgConnection,
    sql: &'static str,
    pairs: &[(i64, i64)],
) -> StoreResult<Vec<(i64, i64)>> {
    let (firsts, seconds): (Vec<i64>, Vec<i64>) = pairs.iter().copied().unzip();
    let rows: Vec<Pair> = diesel::sql_query(sql)
        .bind::<Array<BigInt>, _>(firsts)
        .bind::<Array<BigInt>, _>(seconds)
        .load(conn)
        .await?;
    Ok(rows.into_iter().map(|p| (p.a, p.b)).collect())
}
