//! Queries on `users`: the local records of users.

use diesel::{prelude::*, result::DatabaseErrorKind};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::{StoreError, StoreResult, schema::users};

/// A user as this service stores it.
#[derive(
    Clone,
    Debug,
    PartialEq,
    Eq,
    Queryable,
    QueryableByName,
    Selectable,
    serde::Serialize,
    serde::Deserialize,
)]
#[diesel(table_name = users)]
pub struct UserRecord {
    pub id: i64,
    pub handle: String,
    pub display_name: Option<String>,
    /// When the record last changed through upsertUser: orders versions of the record in caches.
    pub updated_at: chrono::DateTime<chrono::Utc>,
    /// A private account (follows become requests; lists show to followers only). Cached records of
    /// an earlier version lack it: they read as public until replaced.
    #[serde(default)]
    pub is_private: bool,
}

/// Users with these ids, in no particular order; unknown ids are absent.
pub async fn by_ids(conn: &mut AsyncPgConnection, ids: &[i64]) -> StoreResult<Vec<UserRecord>> {
    Ok(users::table
        .filter(users::id.eq_any(ids))
        .select(UserRecord::as_select())
        .load(conn)
        .await?)
}

/// The user with this handle, ignoring case (served by `users_handle_lower_key`).
pub async fn by_handle(
    conn: &mut AsyncPgConnection,
    handle: &str,
) -> StoreResult<Option<UserRecord>> {
    diesel::define_sql_function!(fn lower(x: diesel::sql_types::Text) -> diesel::sql_types::Text);
    Ok(users::table
        .filter(lower(users::handle).eq(handle.to_lowercase()))
        .select(UserRecord::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// Which of these ids have a record.
pub async fn existing_ids(conn: &mut AsyncPgConnection, ids: &[i64]) -> StoreResult<Vec<i64>> {
    Ok(users::table
        .filter(users::id.eq_any(ids))
        .select(users::id)
        .load(conn)
        .await?)
}

/// Why an upsert was refused.
#[derive(Debug, thiserror::Error)]
pub enum UpsertError {
    #[error("the handle is taken by another user")]
    HandleTaken,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl super::Transient for UpsertError {
    fn is_transient(&self) -> bool {
        matches!(self, Self::Store(err) if err.is_retryable())
    }
}

/// What an upsert wrote: the record, and the events of the requests it approved (an account turned
/// public approves every pending request).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upserted {
    pub record: UserRecord,
    pub approved: Vec<crate::domain::FollowEvent>,
}

/// Creates the user or updates its handle and display name, and its privacy when `is_private` is set
/// (a new user is public unless told). Setting privacy locks the row FOR UPDATE first, in the same
/// transaction: a follow in flight (whose gate holds the row FOR KEY SHARE) commits first, and a new
/// one waits and then sees the new setting, so a public account never keeps a request it did not see.
/// Turning public locks the pending requesters' rows too (see below).
pub async fn upsert(
    conn: &mut AsyncPgConnection,
    id: i64,
    handle: &str,
    display_name: Option<&str>,
    is_private: Option<bool>,
) -> Result<Upserted, UpsertError> {
    use diesel::sql_types::{BigInt, Bool, Nullable, Text};
    use diesel_async::AsyncConnection;
    let result = conn
        .transaction::<_, diesel::result::Error, _>(async |conn| {
            match is_private {
                Some(true) => {
                    diesel::sql_query("SELECT id FROM users WHERE id = $1 FOR UPDATE")
                        .bind::<BigInt, _>(id)
                        .execute(conn)
                        .await?;
                }
                // Turning public approves the pending requests, whose follows lock the requesters' rows
                // (foreign keys): all of them are locked here, in id order with the user's own, the
                // order a block takes its two rows in. Locked one after the other, a requester's block
                // (its own row first) and this flip waited for each other until PostgreSQL's deadlock
                // check broke the cycle a second later.
                Some(false) => {
                    diesel::sql_query(
                        "SELECT id FROM users \
                         WHERE id = $1 OR id IN (SELECT requester_id FROM follow_requests WHERE target_id = $1) \
                         ORDER BY id FOR UPDATE",
                    )
                    .bind::<BigInt, _>(id)
                    .execute(conn)
                    .await?;
                }
                None => {}
            }
            let record: UserRecord = diesel::sql_query(
                "INSERT INTO users (id, handle, display_name, is_private) \
                 VALUES ($1, $2, $3, COALESCE($4, false)) \
                 ON CONFLICT (id) DO UPDATE SET \
                     handle = EXCLUDED.handle, \
                     display_name = EXCLUDED.display_name, \
                     is_private = COALESCE($4, users.is_private), \
                     updated_at = clock_timestamp() \
                 RETURNING id, handle, display_name, updated_at, is_private",
            )
            .bind::<BigInt, _>(id)
            .bind::<Text, _>(handle)
            .bind::<Nullable<Text>, _>(display_name)
            .bind::<Nullable<Bool>, _>(is_private)
            .get_result(conn)
            .await?;
            let approved = if is_private == Some(false) {
                super::requests::approve_all(conn, id).await?
            } else {
                Vec::new()
            };
            Ok(Upserted { record, approved })
        })
        .await;
    match result {
        Ok(upserted) => Ok(upserted),
        Err(diesel::result::Error::DatabaseError(DatabaseErrorKind::UniqueViolation, info))
            if info.constraint_name() == Some("users_handle_lower_key") =>
        {
            Err(UpsertError::HandleTaken)
        }
        Err(err) => Err(UpsertError::Store(err.into())),
    }
}

/// Inserts users that do not exist yet, many per statement (for `seed`); returns how many were new.
pub async fn insert_many(
    conn: &mut AsyncPgConnection,
    ids: &[i64],
    handles: &[String],
    display_names: &[Option<String>],
) -> StoreResult<usize> {
    use diesel::sql_types::{Array, BigInt, Nullable, Text};
    Ok(diesel::sql_query(
        "INSERT INTO users (id, handle, display_name) \
         SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[]) \
         ON CONFLICT DO NOTHING",
    )
    .bind::<Array<BigInt>, _>(ids)
    .bind::<Array<Text>, _>(handles)
    .bind::<Array<Nullable<Text>>, _>(display_names)
    .execute(conn)
    .await?)
}
