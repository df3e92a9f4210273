//! Queries on `users`: the local records of users.

use diesel::{prelude::*, result::DatabaseErrorKind};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::{StoreError, StoreResult, schema::users};

/// A user as this service stores it.
#[derive(
    Clone, Debug, PartialEq, Eq, Queryable, Selectable, serde::Serialize, serde::Deserialize,
)]
#[diesel(table_name = users)]
pub struct UserRecord {
    pub id: i64,
    pub handle: String,
    pub display_name: Option<String>,
    /// When handle or display name last changed: orders versions of the record in caches.
    pub updated_at: chrono::DateTime<chrono::Utc>,
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

/// Creates the user or updates its handle and display name.
pub async fn upsert(
    conn: &mut AsyncPgConnection,
    id: i64,
    handle: &str,
    display_name: Option<&str>,
) -> Result<UserRecord, UpsertError> {
    let result = diesel::insert_into(users::table)
        .values((
            users::id.eq(id),
            users::handle.eq(handle),
            users::display_name.eq(display_name),
        ))
        .on_conflict(users::id)
        .do_update()
        .set((
            users::handle.eq(handle),
            users::display_name.eq(display_name),
            users::updated_at.eq(diesel::dsl::sql::<diesel::sql_types::Timestamptz>(
                "clock_timestamp()",
            )),
        ))
        .returning(UserRecord::as_returning())
        .get_result(conn)
        .await;
    match result {
        Ok(user) => Ok(user),
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
