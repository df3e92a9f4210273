//! The store: PostgreSQL through diesel-async, one file per table's queries. Knows nothing of GraphQL.

pub mod blocks;
pub mod follows;
pub mod outbox;
pub mod pairs;
mod prepared;
pub mod replicas;
pub mod requests;
pub mod schema;
pub mod stats;
pub mod users;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context;
use diesel::{
    connection::{Instrumentation, InstrumentationEvent},
    result::{DatabaseErrorKind, Error as DieselError},
};
use diesel_async::{
    AsyncConnection, AsyncPgConnection,
    async_connection_wrapper::AsyncConnectionWrapper,
    pooled_connection::{AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod, deadpool},
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

pub use replicas::{Freshness, Reads};

/// The migrations under `migrations/`, compiled into the binary.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// A pool of PostgreSQL connections.
pub type DbPool = deadpool::Pool<AsyncPgConnection>;
/// One connection taken from the pool.
pub type DbConn = deadpool::Object<AsyncPgConnection>;

/// Why a store call failed: the database could not be reached, or a query failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Query(DieselError),
}

impl From<DieselError> for StoreError {
    fn from(err: DieselError) -> Self {
        Self::from_diesel(err)
    }
}

/// The client's view of a store failure: the database away is `SERVICE_UNAVAILABLE` (retry), a failed
/// query is internal (logged, never shown).
impl From<StoreError> for crate::error::AppError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(reason) => {
                tracing::warn!(%reason, "database unavailable");
                Self::ServiceUnavailable("the database is unavailable; try again shortly".into())
            }
            StoreError::Query(err) => Self::Internal(err.into()),
        }
    }
}

impl StoreError {
    /// Sorts a diesel error: a closed connection or a failed send (no SQLSTATE: the socket is gone) means
    /// the database went away, anything else is a query error.
    pub fn from_diesel(err: DieselError) -> Self {
        match &err {
            DieselError::DatabaseError(
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
                _,
            ) => Self::Unavailable(err.to_string()),
            _ => Self::Query(err),
        }
    }

    /// Whether retrying the same transaction may succeed (deadlock or serialization failure).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Query(DieselError::DatabaseError(
                DatabaseErrorKind::SerializationFailure,
                _
            ))
        ) || matches!(self, Self::Query(DieselError::DatabaseError(_, info)) if info.message().contains("deadlock detected"))
    }
}

/// Result of a store call.
pub type StoreResult<T> = Result<T, StoreError>;

/// One number read back from a statement (`… AS n`).
#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// An error that tells whether running the same statement again may succeed.
pub trait Transient {
    fn is_transient(&self) -> bool;
}

impl Transient for StoreError {
    fn is_transient(&self) -> bool {
        self.is_retryable()
    }
}

/// Attempts of a statement that meets deadlocks or serialization failures: the first and 5 repeats.
pub const ATTEMPTS: u32 = 6;

/// Runs `statement` on a pooled connection, again after a deadlock or serialization failure (two
/// transactions locking the same rows in opposite orders), up to [`ATTEMPTS`] in all, `pause` times the
/// attempt apart; `on_retry` is told of each repeat.
pub async fn retrying<T, E, F, Fut>(
    pool: &DbPool,
    pause: Duration,
    on_retry: impl Fn(),
    mut statement: F,
) -> Result<T, E>
where
    E: Transient + From<StoreError>,
    F: FnMut(DbConn) -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        let outcome = match connect(pool).await {
            Ok(conn) => statement(conn).await,
            Err(err) => Err(err.into()),
        };
        match outcome {
            Err(err) if err.is_transient() && attempt < ATTEMPTS => {
                on_retry();
                tokio::time::sleep(pause * attempt).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Takes a connection from the pool, or says the database is unavailable.
pub async fn connect(pool: &DbPool) -> StoreResult<DbConn> {
    pool.get()
        .await
        .map_err(|err| StoreError::Unavailable(err.to_string()))
}

/// Counts the statements every connection of a pool has run (tests check batching with it; metrics read it).
#[derive(Debug, Default)]
pub struct QueryCounter(AtomicU64);

impl QueryCounter {
    /// Statements finished so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Diesel instrumentation that bumps a [`QueryCounter`] when a statement finishes.
struct CountQueries(Arc<QueryCounter>);

impl Instrumentation for CountQueries {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        if let InstrumentationEvent::FinishQuery { .. } = event {
            self.0.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// How a pool's connections plan their prepared statements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plans {
    /// PostgreSQL's choice per statement (`plan_cache_mode = auto`): reads, whose best plan may depend
    /// on the values.
    Chosen,
    /// One generic plan per statement and connection (`force_generic_plan`): the write and apply
    /// statements, whose plan never depends on the values and which PostgreSQL would otherwise plan
    /// again on every call (planning a batch write costs twice its execution).
    Generic,
}

/// Builds the pool; connections are opened lazily and checked only by use (no ping per checkout).
/// Every connection counts its statements into `counter`.
pub fn build_pool(
    database_url: &str,
    size: usize,
    wait_timeout: Duration,
    counter: Arc<QueryCounter>,
    plans: Plans,
) -> anyhow::Result<DbPool> {
    let mut manager_config = ManagerConfig::<AsyncPgConnection>::default();
    manager_config.recycling_method = RecyclingMethod::Fast;
    manager_config.custom_setup = Box::new(move |url| {
        let counter = counter.clone();
        let url = url.to_owned();
        Box::pin(async move {
            let mut conn = AsyncPgConnection::establish(&url).await?;
            if plans == Plans::Generic {
                diesel_async::SimpleAsyncConnection::batch_execute(
                    &mut conn,
                    "SET plan_cache_mode = force_generic_plan",
                )
                .await
                .map_err(|err| diesel::ConnectionError::BadConnection(err.to_string()))?;
            }
            conn.set_instrumentation(CountQueries(counter));
            Ok(conn)
        })
    });
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(
        database_url,
        manager_config,
    );
    deadpool::Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(wait_timeout))
        .create_timeout(Some(wait_timeout))
        .runtime(::deadpool::Runtime::Tokio1)
        .build()
        .context("building the PostgreSQL pool")
}

#[derive(diesel::QueryableByName)]
struct WalPosition {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    bytes: i64,
}

/// Bytes of WAL the whole server has written so far (its insert position): the difference between two
/// readings is the WAL written meanwhile, by every database of the server.
pub async fn wal_position(conn: &mut AsyncPgConnection) -> StoreResult<i64> {
    use diesel_async::RunQueryDsl;
    let row: WalPosition = diesel::sql_query(
        "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), '0/0')::bigint AS bytes",
    )
    .get_result(conn)
    .await?;
    Ok(row.bytes)
}

/// Creates the database named in `database_url` if it does not exist yet.
pub async fn ensure_database(database_url: &str) -> anyhow::Result<()> {
    let config: tokio_postgres::Config = database_url
        .parse()
        .context("DATABASE_URL is not a PostgreSQL URL")?;
    let name = config.get_dbname().unwrap_or("postgres").to_owned();
    let mut admin = config.clone();
    admin.dbname("postgres");
    let (client, connection) = admin
        .connect(tokio_postgres::NoTls)
        .await
        .with_context(|| format!("connecting to PostgreSQL at {}", redact(database_url)))?;
    let driver = tokio::spawn(connection);
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await?
        .is_some();
    if !exists {
        let quoted = format!("\"{}\"", name.replace('"', "\"\""));
        match client
            .batch_execute(&format!("CREATE DATABASE {quoted}"))
            .await
        {
            Ok(()) => tracing::info!(database = %name, "created the database"),
            // Another instance created it at the same moment.
            Err(err)
                if err.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {}
            Err(err) => return Err(err).context("creating the database"),
        }
    }
    drop(client);
    let _ = driver.await;
    Ok(())
}

/// Applies every pending migration; returns how many ran. Safe to call from several instances at once.
pub async fn run_migrations(database_url: &str) -> anyhow::Result<usize> {
    let url = database_url.to_owned();
    tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
        let mut conn =
            <AsyncConnectionWrapper<AsyncPgConnection> as diesel::Connection>::establish(&url)
                .with_context(|| format!("connecting to {}", redact(&url)))?;
        // One migrator at a time across instances: a session advisory lock.
        diesel::RunQueryDsl::execute(
            diesel::sql_query("SELECT pg_advisory_lock(7213862104)"),
            &mut conn,
        )?;
        let applied: anyhow::Result<Vec<String>> = conn
            .run_pending_migrations(MIGRATIONS)
            .map(|versions| versions.iter().map(ToString::to_string).collect())
            .map_err(|err| anyhow::anyhow!("running migrations: {err}"));
        diesel::RunQueryDsl::execute(
            diesel::sql_query("SELECT pg_advisory_unlock(7213862104)"),
            &mut conn,
        )?;
        let applied = applied?;
        for version in &applied {
            tracing::info!(%version, "applied migration");
        }
        Ok(applied.len())
    })
    .await
    .context("the migration task panicked")?
}

/// Reverts every migration (tests use it to prove each `down.sql`).
pub async fn revert_all_migrations(database_url: &str) -> anyhow::Result<usize> {
    let url = database_url.to_owned();
    tokio::task::spawn_blocking(move || -> anyhow::Result<usize> {
        let mut conn =
            <AsyncConnectionWrapper<AsyncPgConnection> as diesel::Connection>::establish(&url)?;
        let reverted = conn
            .revert_all_migrations(MIGRATIONS)
            .map_err(|err| anyhow::anyhow!("reverting migrations: {err}"))?;
        Ok(reverted.len())
    })
    .await
    .context("the migration task panicked")?
}

/// Checks that the database answers (for `/readyz`).
pub async fn ping(pool: &DbPool) -> StoreResult<()> {
    use diesel_async::RunQueryDsl;
    let mut conn = connect(pool).await?;
    diesel::sql_query("SELECT 1").execute(&mut conn).await?;
    Ok(())
}

/// The URL without its password, for logs and errors.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}
