//! Test databases: each a clone of a template migrated once per run (`CREATE DATABASE … TEMPLATE`),
//! named after the test process, dropped when its test ends; a run drops what dead runs left behind.

use std::sync::atomic::{AtomicUsize, Ordering};

use follow_service::db;

static NEXT_DB: AtomicUsize = AtomicUsize::new(0);
static TEMPLATE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();

/// The admin connection URL of the test server.
pub fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The URL of database `name` on the test server.
pub fn database_url(name: &str) -> String {
    let base = server_url();
    let cut = base.rfind('/').unwrap_or(base.len());
    format!("{}/{name}", &base[..cut])
}

/// The URLs of database `name` on the test replicas, comma-separated, when `TEST_DATABASE_REPLICA_URLS`
/// names some: servers (`postgres://postgres@127.0.0.1:5433`, any path is replaced) that stream from the
/// test server, so that every test app reads through them (`scripts/ensure-pg-replica.sh` starts one).
pub fn replica_urls(name: &str) -> Option<String> {
    let templates = std::env::var("TEST_DATABASE_REPLICA_URLS").ok()?;
    let urls: Vec<String> = templates
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|template| {
            let authority = template.find("://").map_or(0, |i| i + 3);
            let end = template[authority..]
                .find('/')
                .map_or(template.len(), |i| authority + i);
            format!("{}/{name}", &template[..end])
        })
        .collect();
    (!urls.is_empty()).then(|| urls.join(","))
}

/// Held for writing while a test keeps the test replica's replay paused, and for reading by a wait for
/// the replicas to catch up: such a wait (any test's) starts its clock once no replay is paused.
pub static REPLAY_PAUSES: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// A connection to the test server's admin database.
async fn admin() -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&server_url(), tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL is reachable for tests");
    tokio::spawn(connection);
    client
}

/// A migrated template, built once per run (and reused across runs while the migrations are unchanged).
async fn template() -> String {
    TEMPLATE
        .get_or_init(|| async {
            if std::env::var("TEST_LOG").is_ok() {
                follow_service::telemetry::init(false);
            }
            let client = admin().await;
            drop_leftovers(&client).await;
            let name = format!("follow_test_tpl_{:016x}", migrations_fingerprint());
            let exists = client
                .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
                .await
                .expect("query pg_database")
                .is_some();
            if !exists {
                // Build under a private name, then rename: a half-built template is never used.
                let building = format!("follow_test_build_{}", std::process::id());
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {building}"))
                    .await
                    .expect("drop");
                client
                    .batch_execute(&format!("CREATE DATABASE {building}"))
                    .await
                    .expect("create template");
                db::run_migrations(&database_url(&building))
                    .await
                    .expect("migrate template");
                let renamed = client
                    .batch_execute(&format!("ALTER DATABASE {building} RENAME TO {name}"))
                    .await;
                if renamed.is_err() {
                    client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {building}"))
                        .await
                        .expect("drop");
                }
            }
            name
        })
        .await
        .clone()
}

/// A hash of every migration's text, so a changed migration builds a new template.
fn migrations_fingerprint() -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let mut dirs: Vec<_> = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .expect("migrations dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    dirs.sort();
    for dir in dirs {
        dir.hash(&mut hasher);
        for file in ["up.sql", "down.sql"] {
            std::fs::read_to_string(dir.join(file))
                .unwrap_or_default()
                .hash(&mut hasher);
        }
    }
    hasher.finish()
}

/// Drops test databases of test processes that are gone.
async fn drop_leftovers(client: &tokio_postgres::Client) {
    let rows = client
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'follow_test_db_%'",
            &[],
        )
        .await
        .expect("list test databases");
    for row in rows {
        let name: String = row.get(0);
        let pid = name
            .trim_start_matches("follow_test_db_")
            .split('_')
            .next()
            .unwrap_or("");
        let alive = std::path::Path::new(&format!("/proc/{pid}")).exists();
        if !alive {
            let _ = client
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await;
        }
    }
}

/// A fresh, migrated database of this test's own.
pub async fn fresh_database() -> String {
    let template = template().await;
    let name = format!(
        "follow_test_db_{}_{}",
        std::process::id(),
        NEXT_DB.fetch_add(1, Ordering::SeqCst)
    );
    admin()
        .await
        .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {template}"))
        .await
        .expect("clone the template database");
    name
}

/// Drops database `name`, closing its connections.
pub async fn drop_database(name: &str) {
    if let Ok((client, connection)) =
        tokio_postgres::connect(&server_url(), tokio_postgres::NoTls).await
    {
        tokio::spawn(connection);
        let _ = client
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await;
    }
}
