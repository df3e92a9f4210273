//! What the statements on a pair of users share: their row shapes, their errors, and the locks on
//! the two users' rows that order blocks, approvals and privacy changes against follows in flight.

use diesel::{prelude::*, result::Error as DieselError, sql_types::BigInt};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::StoreError;

/// A pair of user ids read back from a statement.
#[derive(QueryableByName)]
pub(super) struct Pair {
    #[diesel(sql_type = BigInt)]
    pub a: i64,
    #[diesel(sql_type = BigInt)]
    pub b: i64,
}

/// One number read back from a statement.
#[derive(QueryableByName)]
pub(super) struct Count {
    #[diesel(sql_type = BigInt)]
    pub n: i64,
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

impl PairError {
    pub(super) fn store(err: DieselError) -> Self {
        Self::Store(err.into())
    }
}

impl From<DieselError> for PairError {
    fn from(err: DieselError) -> Self {
        Self::store(err)
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
        .await
        .map_err(PairError::store)?;
    if !found.iter().any(|r| r.n == actor) {
        return Err(PairError::UnknownActor);
    }
    if !found.iter().any(|r| r.n == other) {
        return Err(PairError::UnknownUser);
    }
    Ok(())
}
