//! The test app: an instance of the service over a database and a Redis key prefix of its own, its
//! schema driven in process and the background tasks of `serve` running (less the warm-up and the gauge
//! sampler); more instances beside it over the same database and prefix; an instance's router served on
//! a real socket.

use std::time::{Duration, Instant};

use axum::body::Body;
use follow_service::{
    app::{App, Background, BackgroundTasks, Role},
    config::Config,
    db, http,
};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use super::{
    databases::{REPLAY_PAUSES, database_url, drop_database, fresh_database, replica_urls},
    redis::{RedisProxy, redis_forget, redis_url},
    requests::{run_on, send},
};

/// The secret test apps sign tokens with.
pub const TEST_SECRET: &str = "test-secret-of-at-least-sixteen-bytes";

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
    /// `DATABASE_REPLICA_URLS`: `None` takes the test replicas of `TEST_DATABASE_REPLICA_URLS` (none when
    /// unset), `Some("")` none at all.
    pub replica_urls: Option<String>,
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
            replica_urls: None,
            env: Vec::new(),
        }
    }
}

/// One instance of the service, over its own database and Redis prefix.
pub struct TestApp {
    pub app: App,
    pub database: String,
    pub prefix: String,
    /// Whether the app reads through the suite's test replicas (not a replica the test chose, such as
    /// one that is down on purpose): waits for them to catch up.
    on_test_replicas: bool,
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
        let on_test_replicas = options.replica_urls.is_none() && replica_urls(&database).is_some();
        let test_app = Self {
            app,
            database,
            prefix,
            on_test_replicas,
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

    /// Another running instance without a pipeline, whose Redis is reached through `proxy` (a test
    /// cuts it to give this instance alone an outage).
    pub async fn instance_behind(&self, proxy: &RedisProxy) -> Instance {
        self.instance(Options {
            pipeline: false,
            redis_url: proxy.url.clone(),
            ..Options::default()
        })
        .await
    }

    /// A connection of its own to the app's Redis (the server or the cluster), for a test's raw calls
    /// and for consumer passes (a blocking read must not hold up a shared one).
    pub async fn redis(&self) -> follow_service::redis_pool::Dedicated {
        follow_service::redis_pool::dedicated(&self.app.config.redis, Duration::ZERO)
            .await
            .expect("Redis is reachable for tests")
    }

    /// The settings of a consumer named `name` of the app's first partition, reading `batch_size`
    /// entries at a time and refreshing the app's caches, for a test to drive pass by pass.
    pub fn consumer_settings(
        &self,
        batch_size: usize,
        name: &str,
    ) -> follow_service::events::consumer::ConsumerSettings {
        use follow_service::events::consumer::{ConsumerSettings, REFRESHES_IN_FLIGHT};
        ConsumerSettings {
            redis: self.app.config.redis.clone(),
            names: self.app.stream.first().clone(),
            consumer_name: name.to_owned(),
            batch_size,
            block: Duration::from_millis(50),
            caches: self.app.caches.clone(),
            claim_idle: Duration::from_millis(100),
            max_deliveries: 3,
            refresh_slots: std::sync::Arc::new(tokio::sync::Semaphore::new(REFRESHES_IN_FLIGHT)),
            applying: std::sync::Arc::new(tokio::sync::Semaphore::new(1)),
        }
    }

    fn build_app(database: &str, prefix: &str, options: &Options) -> App {
        let url = options
            .database_url
            .clone()
            .unwrap_or_else(|| database_url(database));
        let redis_url = options.redis_url.clone();
        // The suite's cluster, unless the test points this instance at a Redis of its own (a proxy).
        let cluster = if redis_url == super::redis::redis_url() {
            super::redis::redis_cluster_urls()
        } else {
            String::new()
        };
        let prefix = prefix.to_owned();
        let relay_after = options.relay_after.as_millis().to_string();
        let loader_delay = options.loader_delay.as_micros().to_string();
        let cache = if options.cache { "on" } else { "off" };
        let cors_origins = options.cors_origins.clone();
        let replicas = options
            .replica_urls
            .clone()
            .or_else(|| replica_urls(database))
            .unwrap_or_default();
        let env = options.env.clone();
        let config = Config::from_lookup(move |name| {
            if let Some((_, value)) = env.iter().find(|(n, _)| *n == name) {
                return Some(value.clone());
            }
            match name {
                "DATABASE_URL" => Some(url.clone()),
                "REDIS_URL" => Some(redis_url.clone()),
                "REDIS_CLUSTER_URLS" => Some(cluster.clone()),
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
                "DATABASE_REPLICA_URLS" => Some(replicas.clone()),
                // Probed often, so that a test's replica is in use soon after its database appears,
                // and skipped soon when it lags (tests that pause its replay make every app's replica
                // lag): a count read through it is then at most this much older than the pipeline's.
                "FOLLOW_REPLICA_PROBE_MS" => Some("20".to_owned()),
                "FOLLOW_REPLICA_MAX_LAG_MS" => Some("250".to_owned()),
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
        super::requests::first_error(&self.run(viewer, query, variables).await)
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
        drop(conn);
        self.replicated().await;
    }

    /// Waits (up to 10 s, once no test holds the replay paused) until the suite's test replicas, if the
    /// app reads through them, have replayed everything written so far: a test that writes past the
    /// service (SQL) then reads through it must not read a replica that has not seen its rows yet.
    pub async fn replicated(&self) {
        if !self.on_test_replicas {
            return;
        }
        let _no_pause = tokio::time::timeout(Duration::from_secs(60), REPLAY_PAUSES.read())
            .await
            .expect("a test kept the replica's replay paused for 60 s");
        let started = Instant::now();
        while !self.app.reads.replicas_caught_up().await.unwrap_or(false) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "the read replicas did not catch up in 10 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
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

    /// A burst of `clients` concurrent clients, each making `operations` random follows (60 %) and
    /// unfollows among users `1..=users`, seeded by client number (the same burst every run): many pairs
    /// are followed and unfollowed repeatedly, in races with each other.
    pub async fn random_burst(&self, clients: u64, operations: usize, users: i64) {
        use rand::{Rng, SeedableRng, rngs::StdRng};
        let bursts = (0..clients).map(|client| async move {
            let mut rng = StdRng::seed_from_u64(client);
            for _ in 0..operations {
                let (a, b) = (rng.random_range(1..=users), rng.random_range(1..=users));
                if a == b {
                    continue;
                }
                if rng.random_bool(0.6) {
                    self.follow(a, b).await;
                } else {
                    self.unfollow(a, b).await;
                }
            }
        });
        futures::future::join_all(bursts).await;
    }

    /// One pass of the outbox relay, now, over every unapplied row (as the relay task would make once
    /// the rows are old enough): what it claimed, republished and found still in flight.
    pub async fn relay_pass(&self) -> follow_service::events::relay::RelayPass {
        self.relay_pass_after(Duration::ZERO).await
    }

    /// One pass of the outbox relay over the rows unapplied (and not looked at) for `relay_after`. A
    /// pass that fails (a Redis call past its time budget on a loaded box) is made again after
    /// `relay_after`, as the relay task would at its next interval; panics after ten failures.
    pub async fn relay_pass_after(
        &self,
        relay_after: Duration,
    ) -> follow_service::events::relay::RelayPass {
        let producer = self.app.producer("relay");
        for _ in 0..10 {
            match follow_service::events::relay::relay_once(&self.app.db, &producer, relay_after)
                .await
            {
                Ok(pass) => return pass,
                Err(err) => {
                    eprintln!("relay pass failed, made again: {err:#}");
                    tokio::time::sleep(relay_after + Duration::from_millis(10)).await;
                }
            }
        }
        panic!("ten relay passes failed in a row");
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
                // The counts the consumer wrote are read through the replicas too.
                self.replicated().await;
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

    /// A connection of its own to the app's database, past the app's pools.
    pub async fn postgres(&self) -> tokio_postgres::Client {
        let (client, connection) =
            tokio_postgres::connect(&database_url(&self.database), tokio_postgres::NoTls)
                .await
                .expect("connect");
        tokio::spawn(connection);
        client
    }

    /// Runs SQL on the app's database (for checks that must not go through the app).
    pub async fn sql(&self, sql: &str) -> Vec<tokio_postgres::Row> {
        self.postgres()
            .await
            .query(sql, &[])
            .await
            .expect("test SQL")
    }

    /// One count from SQL.
    pub async fn count(&self, sql: &str) -> i64 {
        self.sql(sql).await[0].get(0)
    }

    /// Holds user `id`'s row (`SELECT … FOR UPDATE` in an open transaction) on a connection of its own:
    /// a write that names the user waits in its foreign-key check until the returned client commits.
    pub async fn hold_user_row(&self, id: i64) -> tokio_postgres::Client {
        self.in_open_transaction(&format!("SELECT 1 FROM users WHERE id = {id} FOR UPDATE"))
            .await
    }

    /// Runs `sql` in a transaction left open on a connection of its own: what it locked stays locked
    /// until the returned client commits or rolls back.
    pub async fn in_open_transaction(&self, sql: &str) -> tokio_postgres::Client {
        let client = self.postgres().await;
        client
            .batch_execute(&format!("BEGIN; {sql}"))
            .await
            .expect("SQL in an open transaction");
        client
    }

    /// Sends an HTTP request through the router in process.
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
                drop_database(&name).await;
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
