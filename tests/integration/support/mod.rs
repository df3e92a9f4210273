//! The test app: a real PostgreSQL database and a Redis key prefix of its own per test, the schema
//! driven in process, and the background tasks of `serve` running (less the warm-up and the gauge
//! sampler).
//!
//! Databases are cloned from a template migrated once per run (`CREATE DATABASE … TEMPLATE`), named
//! after the test process, and dropped when the test ends; a run drops what dead runs left behind.
//! `TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`) and `TEST_REDIS_URL`
//! (default `redis://127.0.0.1:6379`) point the tests at other servers. `TEST_LOG=1` prints logs.

pub mod ws;

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use axum::body::Body;
use follow_service::{
    app::{App, Background, BackgroundTasks, Role},
    config::Config,
    db, graphql, http,
};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tower::ServiceExt;

static NEXT_DB: AtomicUsize = AtomicUsize::new(0);
static TEMPLATE: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();

/// The admin connection URL of the test server.
pub fn server_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// The URL of database `name` on the test server.
pub fn database_url(name: &str) -> String {
    let base = server_url();
    let cut = base.rfind('/').unwrap_or(base.len());
    format!("{}/{name}", &base[..cut])
}

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

/// Options of a test app.
#[derive(Clone)]
pub struct Options {
    /// Run the consumer and relay (most tests want counts to move).
    pub pipeline: bool,
    pub redis_url: String,
    pub relay_after: Duration,
    /// How long DataLoaders gather keys (the service's default unless set).
    pub loader_delay: Duration,
    /// Another PostgreSQL than the test's database (to make it unreachable).
    pub database_url: Option<String>,
    /// The two-level cache on (`FOLLOW_CACHE`).
    pub cache: bool,
    /// `FOLLOW_CORS_ORIGINS`.
    pub cors_origins: String,
    /// Any other settings, by variable name (they win over the ones above).
    pub env: Vec<(&'static str, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            pipeline: true,
            redis_url: redis_url(),
            relay_after: Duration::from_millis(300),
            loader_delay: Duration::ZERO,
            database_url: None,
            cache: true,
            cors_origins: String::new(),
            env: Vec::new(),
        }
    }
}

/// One instance of the service, over its own database and Redis prefix.
pub struct TestApp {
    pub app: App,
    pub database: String,
    pub prefix: String,
    background: BackgroundTasks,
}

impl TestApp {
    /// An app with its pipeline running.
    pub async fn spawn() -> Self {
        Self::with_options(Options::default()).await
    }

    /// An app whose events wait in the stream and the outbox until a test applies them.
    pub async fn without_pipeline() -> Self {
        Self::with_options(Options {
            pipeline: false,
            ..Options::default()
        })
        .await
    }

    pub async fn with_options(options: Options) -> Self {
        let database = fresh_database().await;
        let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
        let app = Self::build_app(&database, &prefix, &options);
        let background = start_background(&app, options.pipeline);
        let test_app = Self {
            app,
            database,
            prefix,
            background,
        };
        test_app.wait_for_l1(&test_app.app).await;
        test_app
    }

    /// A second instance over the same database and Redis prefix (as behind a load balancer), built
    /// but running nothing in the background.
    pub fn sibling(&self, options: Options) -> App {
        Self::build_app(&self.database, &self.prefix, &options)
    }

    /// Another running instance over the same database and Redis, without a pipeline of its own (the
    /// test's main instance applies the events): what most two-instance tests want.
    pub async fn second_instance(&self) -> Instance {
        self.instance(Options {
            pipeline: false,
            ..Options::default()
        })
        .await
    }

    /// Another running instance: its cache subscription (and its pipeline when `options.pipeline`) run
    /// until it is dropped. Returns once its L1 is in use (when its Redis is reachable).
    pub async fn instance(&self, options: Options) -> Instance {
        let app = self.sibling(options.clone());
        let background = start_background(&app, options.pipeline);
        self.wait_for_l1(&app).await;
        Instance {
            app,
            _background: background,
        }
    }

    fn build_app(database: &str, prefix: &str, options: &Options) -> App {
        let url = options
            .database_url
            .clone()
            .unwrap_or_else(|| database_url(database));
        let redis_url = options.redis_url.clone();
        let prefix = prefix.to_owned();
        let relay_after = options.relay_after.as_millis().to_string();
        let loader_delay = options.loader_delay.as_micros().to_string();
        let cache = if options.cache { "on" } else { "off" };
        let cors_origins = options.cors_origins.clone();
        let env = options.env.clone();
        let config = Config::from_lookup(move |name| {
            if let Some((_, value)) = env.iter().find(|(n, _)| *n == name) {
                return Some(value.clone());
            }
            match name {
                "DATABASE_URL" => Some(url.clone()),
                "REDIS_URL" => Some(redis_url.clone()),
                "FOLLOW_REDIS_PREFIX" => Some(prefix.clone()),
                "FOLLOW_JWT_SECRET" => Some(TEST_SECRET.to_owned()),
                "FOLLOW_DB_POOL_SIZE" => Some("6".to_owned()),
                "FOLLOW_REDIS_POOL_SIZE" => Some("4".to_owned()),
                "FOLLOW_CONSUMER_BLOCK_MS" => Some("100".to_owned()),
                "FOLLOW_RELAY_AFTER_MS" => Some(relay_after.clone()),
                "FOLLOW_RELAY_INTERVAL_MS" => Some("100".to_owned()),
                "FOLLOW_LOADER_DELAY_US" => Some(loader_delay.clone()),
                "FOLLOW_CACHE" => Some(cache.to_owned()),
                "FOLLOW_REDIS_BREAKER_COOLDOWN_MS" => Some("200".to_owned()),
                "FOLLOW_WS_INIT_TIMEOUT_MS" => Some("500".to_owned()),
                "FOLLOW_CORS_ORIGINS" => Some(cors_origins.clone()),
                _ => None,
            }
        })
        .expect("test config is valid");
        App::build(config).expect("app builds")
    }

    /// Waits (up to 5 s) until `app`'s cache subscription is up, so tests start with L1 in use.
    pub async fn wait_for_l1(&self, app: &App) {
        let started = Instant::now();
        while app.config.cache.enabled
            && !app.caches.l1_active()
            && started.elapsed() < Duration::from_secs(5)
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// A bearer token for `user_id`, signed with the app's secret.
    pub fn token(&self, user_id: i64, admin: bool) -> String {
        self.app.jwt.issue(user_id, admin, 3600).expect("token")
    }

    /// Runs an operation through the schema as `viewer` (None: anonymous); returns the whole response.
    pub async fn run(&self, viewer: Option<i64>, query: &str, variables: Value) -> Value {
        run_on(&self.app, viewer, query, variables).await
    }

    /// Runs an operation that must succeed; returns its `data`.
    pub async fn data(&self, viewer: Option<i64>, query: &str, variables: Value) -> Value {
        let response = self.run(viewer, query, variables).await;
        assert!(
            response.get("errors").is_none(),
            "unexpected errors: {response:#}"
        );
        response["data"].clone()
    }

    /// Runs an operation that must fail; returns the first error's `extensions.code` and message.
    pub async fn error(
        &self,
        viewer: Option<i64>,
        query: &str,
        variables: Value,
    ) -> (String, String) {
        let response = self.run(viewer, query, variables).await;
        let error = &response["errors"][0];
        assert!(!error.is_null(), "expected an error: {response:#}");
        (
            error["extensions"]["code"]
                .as_str()
                .unwrap_or("")
                .to_owned(),
            error["message"].as_str().unwrap_or("").to_owned(),
        )
    }

    /// Creates users `ids` (handles `u<id>`) in one statement.
    pub async fn create_users(&self, ids: impl IntoIterator<Item = i64>) {
        let ids: Vec<i64> = ids.into_iter().collect();
        let handles: Vec<String> = ids.iter().map(|id| format!("u{id}")).collect();
        let names: Vec<Option<String>> = ids.iter().map(|id| Some(format!("User {id}"))).collect();
        let mut conn = db::connect(&self.app.db).await.expect("connection");
        db::users::insert_many(&mut conn, &ids, &handles, &names)
            .await
            .expect("insert users");
    }

    /// `viewer` follows `user` through the API.
    pub async fn follow(&self, viewer: i64, user: i64) -> Value {
        self.edge("follow", viewer, user).await
    }

    /// `viewer` unfollows `user` through the API.
    pub async fn unfollow(&self, viewer: i64, user: i64) -> Value {
        self.edge("unfollow", viewer, user).await
    }

    /// Runs `follow` or `unfollow` as `viewer`; returns its `changed` and `following`.
    async fn edge(&self, mutation: &str, viewer: i64, user: i64) -> Value {
        let query =
            format!("mutation($u: ID!) {{ {mutation}(userId: $u) {{ changed following }} }}");
        self.data(Some(viewer), &query, json!({ "u": user.to_string() }))
            .await[mutation]
            .clone()
    }

    /// Waits until every committed event is applied (the outbox is empty); panics after 30 s.
    pub async fn drained(&self) {
        let started = Instant::now();
        loop {
            let backlog = {
                let mut conn = db::connect(&self.app.db).await.expect("connection");
                db::outbox::backlog(&mut conn).await.expect("backlog")
            };
            if backlog == 0 {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{backlog} events still unapplied after 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Asserts that every stored count equals the edge count in `follows`, for every user.
    pub async fn assert_counts_exact(&self) {
        let rows = self
            .sql(
                "SELECT u.id, COALESCE(s.follower_count, 0), COALESCE(s.following_count, 0), \
                    (SELECT count(*) FROM follows WHERE followee_id = u.id), \
                    (SELECT count(*) FROM follows WHERE follower_id = u.id) \
             FROM users u LEFT JOIN user_stats s ON s.user_id = u.id",
            )
            .await;
        assert!(!rows.is_empty(), "no users to check");
        for row in rows {
            let (id, followers, following, edges_in, edges_out): (i64, i64, i64, i64, i64) =
                (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
            assert_eq!(
                (followers, following),
                (edges_in, edges_out),
                "user {id}: stored counts vs edges"
            );
        }
    }

    /// Runs SQL on the app's database (for checks that must not go through the app).
    pub async fn sql(&self, sql: &str) -> Vec<tokio_postgres::Row> {
        let (client, connection) =
            tokio_postgres::connect(&database_url(&self.database), tokio_postgres::NoTls)
                .await
                .expect("connect");
        tokio::spawn(connection);
        client.query(sql, &[]).await.expect("test SQL")
    }

    /// One count from SQL.
    pub async fn count(&self, sql: &str) -> i64 {
        self.sql(sql).await[0].get(0)
    }

    /// Sends an HTTP request through the router in process.
    /// Holds user `id`'s row (`SELECT … FOR UPDATE` in an open transaction) on a connection of its own:
    /// a write that names the user waits in its foreign-key check until the returned client commits.
    pub async fn hold_user_row(&self, id: i64) -> tokio_postgres::Client {
        let (client, connection) =
            tokio_postgres::connect(&database_url(&self.database), tokio_postgres::NoTls)
                .await
                .expect("connect");
        tokio::spawn(connection);
        client
            .batch_execute(&format!(
                "BEGIN; SELECT 1 FROM users WHERE id = {id} FOR UPDATE"
            ))
            .await
            .expect("lock the user's row");
        client
    }

    pub async fn http(
        &self,
        request: axum::http::Request<Body>,
    ) -> (axum::http::StatusCode, axum::http::HeaderMap, Vec<u8>) {
        send(&self.app, request).await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.background.abort();
        let name = self.database.clone();
        let prefix = self.prefix.clone();
        // Drop the database and the Redis keys from a thread of its own: Drop cannot await.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok((client, connection)) =
                    tokio_postgres::connect(&server_url(), tokio_postgres::NoTls).await
                {
                    tokio::spawn(connection);
                    let _ = client
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .await;
                }
                redis_forget(&prefix).await;
            });
        })
        .join();
    }
}

/// Starts what a test instance runs in the background: the API's list (`Background::of(Role::Api)`),
/// with the pipeline only when `pipeline`, and without the warm-up (tests start cold, or warm up
/// themselves) and the gauge sampler (tests sample when they look). The tasks are aborted when the
/// returned handle is dropped.
fn start_background(app: &App, pipeline: bool) -> BackgroundTasks {
    app.spawn_background(Background {
        pipeline,
        warm_up: false,
        gauge_sampler: false,
        ..Background::of(Role::Api, &app.config)
    })
}

/// Sends an HTTP request through `app`'s router in process; returns the status, headers and body.
pub async fn send(
    app: &App,
    request: axum::http::Request<Body>,
) -> (axum::http::StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let response = http::router(app.clone())
        .oneshot(request)
        .await
        .expect("router answers");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

/// An instance's router served on a real socket until dropped.
pub struct Served {
    pub address: std::net::SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves `app`'s router on a free local port.
pub async fn serve(app: &App) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let router = http::router(app.clone());
    let limits = http::server::ServerLimits::from_config(&app.config);
    let task = tokio::spawn(async move {
        let _ = http::server::serve(listener, router, limits, std::future::pending()).await;
    });
    Served { address, task }
}

/// A running instance besides the test's main one; its background tasks are aborted when it is dropped.
pub struct Instance {
    pub app: App,
    _background: BackgroundTasks,
}

/// A `POST /graphql` with a JSON content type, the `Accept` of Apollo Client and graphql-http (the
/// specification's media type first, so request errors are 4xx) and, when given, a bearer token; add
/// headers, then a body.
pub fn graphql_post(token: Option<&str>) -> axum::http::request::Builder {
    let builder = axum::http::Request::post("/graphql")
        .header(axum::http::header::CONTENT_TYPE, "application/json")
        .header(
            axum::http::header::ACCEPT,
            "application/graphql-response+json, application/json;q=0.9",
        );
    match token {
        Some(token) => builder.header(axum::http::header::AUTHORIZATION, format!("Bearer {token}")),
        None => builder,
    }
}

/// The JSON body of one operation.
pub fn query_body(query: &str) -> Body {
    Body::from(json!({ "query": query }).to_string())
}

/// The secret test apps sign tokens with.
pub const TEST_SECRET: &str = "test-secret-of-at-least-sixteen-bytes";

/// Runs an operation through `app`'s schema as `viewer`.
pub async fn run_on(app: &App, viewer: Option<i64>, query: &str, variables: Value) -> Value {
    let viewer = viewer.map(|user_id| follow_service::auth::Viewer {
        user_id,
        is_admin: false,
    });
    run_as(app, viewer, query, variables).await
}

/// Runs an operation through `app`'s schema as an explicit viewer (admin or not).
pub async fn run_as(
    app: &App,
    viewer: Option<follow_service::auth::Viewer>,
    query: &str,
    variables: Value,
) -> Value {
    let request = async_graphql::Request::new(query)
        .variables(async_graphql::Variables::from_json(variables));
    let request = graphql::prepare(&app.schema, request, viewer);
    let response = app.schema.execute(request).await;
    serde_json::to_value(response).expect("response serializes")
}

/// A TCP proxy in front of Redis that a test can cut (every connection dropped, new ones refused) and
/// restore, to make Redis unreachable for one instance only.
pub struct RedisProxy {
    pub url: String,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
    acceptor: JoinHandle<()>,
}

impl RedisProxy {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let url = format!("redis://{}", listener.local_addr().expect("address"));
        let target = redis_url()
            .trim_start_matches("redis://")
            .trim_end_matches('/')
            .to_owned();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let acceptor = {
            let (cut, connections) = (cut.clone(), connections.clone());
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if cut.load(Ordering::SeqCst) {
                        continue; // dropped: the client sees the connection closed
                    }
                    let target = target.clone();
                    let task = tokio::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    if let Ok(mut all) = connections.lock() {
                        all.push(task);
                    }
                }
            })
        };
        Self {
            url,
            cut,
            connections,
            acceptor,
        }
    }

    /// Redis becomes unreachable through the proxy.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        if let Ok(mut all) = self.connections.lock() {
            for task in all.drain(..) {
                task.abort();
            }
        }
    }

    /// Redis is reachable again.
    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for RedisProxy {
    fn drop(&mut self) {
        self.cut();
        self.acceptor.abort();
    }
}

/// Waits up to `limit` for `check` to hold, polling every 10 ms; returns whether it did.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return true;
        }
        if started.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Deletes every Redis key under `prefix` (SCAN + DEL: other tests share the server, so never
/// FLUSHDB; SCAN, not KEYS, which blocks Redis for every other test while it walks the keyspace): a
/// test's cleanup, or Redis losing its data. Returns how many keys went.
pub async fn redis_forget(prefix: &str) -> usize {
    use follow_service::redis_pool::redis;
    let Ok(client) = redis::Client::open(redis_url()) else {
        return 0;
    };
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return 0;
    };
    let mut deleted = 0;
    let mut cursor: u64 = 0;
    loop {
        let Ok((next, keys)): Result<(u64, Vec<String>), _> = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1_000)
            .query_async(&mut conn)
            .await
        else {
            break;
        };
        if !keys.is_empty() {
            deleted += keys.len();
            let _: Result<(), _> = redis::cmd("DEL").arg(keys).query_async(&mut conn).await;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    deleted
}

/// Reads a raw Redis key (to look at what the cache stored).
pub async fn redis_get(key: &str) -> Option<String> {
    use follow_service::redis_pool::redis;
    let client = redis::Client::open(redis_url()).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .ok()?
}

/// The members of a Redis set, sorted (`None`: no such key).
pub async fn redis_members(key: &str) -> Option<Vec<String>> {
    use follow_service::redis_pool::redis;
    let client = redis::Client::open(redis_url()).ok()?;
    let mut conn = client.get_multiplexed_async_connection().await.ok()?;
    let mut members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(key)
        .query_async(&mut conn)
        .await
        .ok()?;
    members.sort();
    (!members.is_empty()).then_some(members)
}
