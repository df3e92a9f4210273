//! The application, the composition root: every shared part built once from the configuration
//! ([`App`]), the background tasks each role runs ([`background`]) and the gauges they sample
//! ([`gauges`]).

pub mod background;
pub mod gauges;

use std::{future::Future, pin::Pin, sync::Arc};

use anyhow::Context;
use tokio::sync::watch;

pub use background::{Background, BackgroundTasks, Role};

use crate::{
    auth::JwtKeys,
    cache::Caches,
    config::Config,
    db::{self, DbPool},
    error::ErrorCode,
    events::{Streams, fanout::EventHub, producer::Producer},
    graph::FollowGraph,
    graphql::{self, FollowSchema, SchemaLimits, persisted::PersistedQueries},
    http::{Health, HttpParts, HttpState, Probe, ws::Sockets},
    redis_health::RedisHealth,
    redis_pool::{self, RedisPool},
};

/// The shared state of one process; cheap to clone (handlers take it as axum state).
#[derive(Clone)]
pub struct App(Arc<AppInner>);

/// The parts of the application.
pub struct AppInner {
    /// The settings it was built from.
    pub config: Config,
    /// PostgreSQL connections of the reads (and everything but the writes and the consumers).
    pub db: DbPool,
    /// PostgreSQL connections of the group commit and the event consumers, with generic plans.
    pub db_writes: DbPool,
    /// Where reads go: the primary (`db`) or a read replica caught up enough.
    pub reads: db::Reads,
    /// Statements run on every pool so far (the replicas' included).
    pub queries: Arc<db::QueryCounter>,
    /// Redis connections (stream producer and relay, L2 cache, persisted queries, rate limits).
    pub redis: RedisPool,
    /// Signs and checks bearer tokens.
    pub jwt: JwtKeys,
    /// The follow graph's operations.
    pub graph: FollowGraph,
    /// The executable GraphQL schema.
    pub schema: FollowSchema,
    /// Key names of the event stream's partitions (`FOLLOW_STREAM_PARTITIONS`).
    pub stream: Streams,
    /// The two-level cache.
    pub caches: Caches,
    /// The Redis circuit breaker shared by the cache and the producer.
    pub redis_health: Arc<RedisHealth>,
    /// Routes follow events from the stream to this instance's subscribers.
    pub events: EventHub,
    /// What the HTTP layer serves with (the schema, the limits, the sockets), built once.
    pub http: HttpState,
    /// Turns true when the process begins to shut down: long-lived connections close so clients move.
    pub closing: watch::Sender<bool>,
    /// The start-up warm-up of the caches: `/readyz` waits for it.
    pub warm_up: Arc<WarmUpState>,
}

/// Where the start-up warm-up stands.
#[derive(Debug, Default)]
pub struct WarmUpState {
    /// Running: neither finished nor cut short by its bound.
    running: std::sync::atomic::AtomicBool,
    /// What it loaded.
    pub loaded: crate::graph::WarmUp,
}

impl WarmUpState {
    /// Whether the warm-up keeps the instance from being ready.
    pub fn running(&self) -> bool {
        self.running.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl std::ops::Deref for App {
    type Target = AppInner;

    fn deref(&self) -> &AppInner {
        &self.0
    }
}

impl App {
    /// Creates the database if missing, migrates it, and builds every part.
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        db::ensure_database(&config.database_url).await?;
        db::run_migrations(&config.database_url).await?;
        Self::build(config)
    }

    /// Builds every part without touching the database (it must already be migrated).
    pub fn build(config: Config) -> anyhow::Result<Self> {
        crate::telemetry::metrics::register_error_codes(ErrorCode::ALL.map(ErrorCode::as_str));
        let queries = Arc::new(db::QueryCounter::default());
        let db = db::build_pool(
            &config.database_url,
            config.db_pool_size,
            config.db_timeout,
            queries.clone(),
            db::Plans::Chosen,
        )?;
        // One connection per write slot and per consumer (each holds one at a time), and one spare.
        let db_writes = db::build_pool(
            &config.database_url,
            config.write_concurrency + config.consumers + 1,
            config.db_timeout,
            queries.clone(),
            db::Plans::Generic,
        )?;
        let reads = read_router(&config, db.clone(), queries.clone())?;
        let redis =
            redis_pool::build_pool(&config.redis, config.redis_pool_size, config.redis_timeout)?;
        let stream = Streams::new(
            &config.redis_prefix,
            config.stream_partitions,
            config.stream_partitions_read,
        );
        let redis_health = Arc::new(RedisHealth::new(
            config.breaker_failures,
            config.breaker_cool_down,
        ));
        let caches = Caches::new(
            config.cache.clone(),
            redis.clone(),
            redis_health.clone(),
            &config.redis_prefix,
        );
        let producer = Producer::new(
            redis.clone(),
            stream.clone(),
            config.redis_timeout,
            "writer",
            redis_health.clone(),
        );
        let graph = FollowGraph::new(
            reads.clone(),
            db_writes.clone(),
            producer,
            caches.clone(),
            crate::graph::GroupCommitSettings {
                window: config.write_window,
                concurrency: config.write_concurrency,
                max_changes: config.write_batch,
            },
        );
        let events = EventHub::new(config.subscription_buffer);
        let cost_limits = graphql::cost::CostLimits {
            max_depth: config.max_depth,
            max_complexity: config.max_complexity,
            max_fields: config.max_fields,
            max_entities: config.max_entities,
        };
        let schema = graphql::build_schema(
            graph.clone(),
            events.clone(),
            SchemaLimits {
                cost: cost_limits,
                loader_delay: config.loader_delay,
            },
        );
        let jwt = JwtKeys::new(&config.jwt_secret)
            .requiring(config.jwt_issuer.as_deref(), config.jwt_audience.as_deref());
        let limiter = if config.rate.enabled {
            crate::ratelimit::RateLimiter::new(
                redis.clone(),
                redis_health.clone(),
                &config.redis_prefix,
                config.redis_timeout,
            )
        } else {
            crate::ratelimit::RateLimiter::disabled()
        };
        let documents = graphql::documents::Documents::new(
            PersistedQueries::new(
                redis.clone(),
                redis_health.clone(),
                config.redis_timeout,
                config.apq_ttl,
                &config.redis_prefix,
                PERSISTED_TEXT_BYTES,
            ),
            PARSED_DOCUMENT_BYTES,
            cost_limits,
        );
        let closing = watch::channel(false).0;
        let warm_up: Arc<WarmUpState> = Arc::default();
        let http = HttpState::new(HttpParts {
            config: config.clone(),
            schema: schema.clone(),
            documents,
            jwt: jwt.clone(),
            limiter,
            penalties: Default::default(),
            sockets: Sockets::new(config.ws_max_connections, config.ws_max_per_viewer),
            closing: closing.clone(),
            health: Arc::new(Probes {
                db: db.clone(),
                redis: redis.clone(),
                db_timeout: config.db_timeout,
                redis_timeout: config.redis_timeout,
                warm_up: warm_up.clone(),
            }),
        });
        Ok(Self(Arc::new(AppInner {
            config,
            db,
            db_writes,
            reads,
            queries,
            redis,
            jwt,
            graph,
            schema,
            stream,
            caches,
            redis_health,
            events,
            http,
            warm_up,
            closing,
        })))
    }

    /// A stream producer for `source` (`writer`, `relay`), as metrics label it.
    pub fn producer(&self, source: &'static str) -> Producer {
        Producer::new(
            self.redis.clone(),
            self.stream.clone(),
            self.config.redis_timeout,
            source,
            self.redis_health.clone(),
        )
    }
}

/// The read router over `primary` and one pool per `DATABASE_REPLICA_URLS` entry (as large as the
/// primary's read pool, giving up sooner: a replica that keeps a read waiting is worse than the primary),
/// its probe started.
fn read_router(
    config: &Config,
    primary: DbPool,
    queries: Arc<db::QueryCounter>,
) -> anyhow::Result<db::Reads> {
    let settings = &config.replicas;
    let timeout = config.db_timeout.min(settings.max_lag);
    // The probe's statements count nowhere: statement counts are the requests' (tests check them).
    let probe_pool = |url: &str| db::build_pool(url, 1, timeout, Arc::default(), db::Plans::Chosen);
    let replicas = settings
        .urls
        .iter()
        .map(|url| {
            Ok(db::replicas::ReplicaPools {
                label: db::replicas::label(url),
                reads: db::build_pool(
                    url,
                    config.db_pool_size,
                    timeout,
                    queries.clone(),
                    db::Plans::Chosen,
                )?,
                probe: probe_pool(url)?,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let primary_probe = probe_pool(&config.database_url)?;
    let reads = db::Reads::new((primary, primary_probe), replicas, settings.max_lag);
    reads.spawn_probe(settings.probe_interval);
    Ok(reads)
}

/// The answers `/readyz` gives, from the stores this layer owns.
struct Probes {
    db: DbPool,
    redis: RedisPool,
    db_timeout: std::time::Duration,
    redis_timeout: std::time::Duration,
    warm_up: Arc<WarmUpState>,
}

impl Health for Probes {
    fn probe(&self) -> Pin<Box<dyn Future<Output = (Probe, Probe)> + Send + '_>> {
        Box::pin(async move {
            let database = async {
                match tokio::time::timeout(self.db_timeout, db::ping(&self.db)).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(err)) => Err(err.to_string()),
                    Err(_) => Err("timed out".to_owned()),
                }
            };
            let redis = async {
                redis_pool::ping(
                    &self.redis,
                    self.redis_timeout
                        .max(std::time::Duration::from_millis(500)),
                )
                .await
                .map_err(|err| format!("{err:#}"))
            };
            tokio::join!(database, redis)
        })
    }

    fn warming_up(&self) -> bool {
        self.warm_up.running()
    }
}

/// The HTTP layer's view of the application.
impl From<App> for HttpState {
    fn from(app: App) -> Self {
        app.http.clone()
    }
}

/// Persisted query texts kept in process: far more than any client's set of operations, and a bound
/// against clients that register a new text every time.
const PERSISTED_TEXT_BYTES: u64 = 4 * 1024 * 1024;

/// Memory for parsed documents (about 2 MiB of text at the worst ratio of tree to text).
const PARSED_DOCUMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Waits for Ctrl-C or SIGTERM.
pub async fn shutdown_signal() -> anyhow::Result<()> {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            r = ctrl_c => r.context("waiting for Ctrl-C")?,
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    ctrl_c.await.context("waiting for Ctrl-C")?;
    Ok(())
}
