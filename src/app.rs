//! The application: every shared part built once from the configuration, and the background tasks.

use std::sync::Arc;

use anyhow::Context;
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    auth::JwtKeys,
    cache::Caches,
    config::Config,
    db::{self, DbPool},
    events::{StreamNames, consumer, fanout::EventHub, producer::Producer, relay},
    graph::FollowGraph,
    graphql::{self, FollowSchema, SchemaLimits, persisted::PersistedQueries},
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
    /// Statements run on both pools so far.
    pub queries: Arc<db::QueryCounter>,
    /// Redis connections (stream producer, relay; later the shared cache).
    pub redis: RedisPool,
    /// Signs and checks bearer tokens.
    pub jwt: JwtKeys,
    /// The follow graph's operations.
    pub graph: FollowGraph,
    /// The executable GraphQL schema.
    pub schema: FollowSchema,
    /// Key names of the event stream.
    pub stream: StreamNames,
    /// The two-level cache.
    pub caches: Caches,
    /// The Redis circuit breaker shared by the cache and the producer.
    pub redis_health: Arc<RedisHealth>,
    /// Routes follow events from the stream to this instance's subscribers.
    pub events: EventHub,
    /// Persisted queries and parsed documents, shared by every transport.
    pub documents: graphql::documents::Documents,
    /// The rate limits' buckets, shared by every instance through Redis (disabled by `FOLLOW_RATE_LIMIT=off`).
    pub limiter: crate::ratelimit::RateLimiter,
    /// Clients out of points, turned away before their requests are read (see `http::admission`).
    pub penalties: crate::http::admission::PenaltyBox,
    /// Open websockets, in all and by client, against their caps.
    pub sockets: crate::http::ws::Sockets,
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
        crate::telemetry::metrics::install();
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
        let redis = redis_pool::build_pool(
            &config.redis_url,
            config.redis_pool_size,
            config.redis_timeout,
        )?;
        let stream = StreamNames::new(&config.redis_prefix);
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
            db.clone(),
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
        let sockets =
            crate::http::ws::Sockets::new(config.ws_max_connections, config.ws_max_per_viewer);
        Ok(Self(Arc::new(AppInner {
            config,
            db,
            db_writes,
            queries,
            redis,
            jwt,
            graph,
            schema,
            stream,
            caches,
            redis_health,
            events,
            documents,
            limiter,
            penalties: Default::default(),
            warm_up: Default::default(),
            sockets,
            closing: watch::channel(false).0,
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

    /// Starts sampling the gauges of `/metrics` (pools, stream, outbox) every `interval`.
    pub fn spawn_metrics_sampler(&self, interval: std::time::Duration) -> JoinHandle<()> {
        crate::telemetry::metrics::install();
        tokio::spawn(crate::telemetry::metrics::sample_forever(
            self.clone(),
            interval,
        ))
    }

    /// Starts the event consumer and the outbox relay; they stop when `shutdown` turns true.
    pub fn spawn_pipeline(&self, shutdown: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        let base = consumer_name();
        let mut tasks: Vec<JoinHandle<()>> = (0..self.config.consumers.max(1))
            .map(|i| {
                let settings = consumer::ConsumerSettings {
                    redis_url: self.config.redis_url.clone(),
                    names: self.stream.clone(),
                    consumer_name: format!("{base}-{i}"),
                    batch_size: self.config.consumer_batch,
                    block: self.config.consumer_block,
                    caches: self.caches.clone(),
                    claim_idle: self.config.claim_idle,
                    max_deliveries: self.config.max_deliveries,
                    refresh_slots: std::sync::Arc::new(tokio::sync::Semaphore::new(
                        consumer::REFRESHES_IN_FLIGHT,
                    )),
                };
                tokio::spawn(consumer::run(
                    self.db_writes.clone(),
                    settings,
                    shutdown.clone(),
                ))
            })
            .collect();
        tasks.push(tokio::spawn(relay::run(
            self.db.clone(),
            self.producer("relay"),
            self.config.relay_after,
            self.config.relay_interval,
            shutdown.clone(),
        )));
        tasks.push(tokio::spawn(relay::trim_forever(
            self.config.redis_url.clone(),
            self.stream.clone(),
            self.config.relay_interval * 10,
            shutdown.clone(),
        )));
        if !self.config.reconcile_every.is_zero() {
            tasks.push(tokio::spawn(crate::reconcile::run_every(
                self.db.clone(),
                self.caches.clone(),
                self.config.reconcile_every,
                shutdown,
            )));
        }
        tasks
    }

    /// Starts applying other instances' cache announcements to this instance's L1 (L1 stays unused
    /// until this subscription is up); it stops when `shutdown` turns true.
    pub fn spawn_cache_subscriber(&self, shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        tokio::spawn(crate::cache::invalidation::run(
            self.caches.clone(),
            self.config.redis_url.clone(),
            shutdown,
        ))
    }

    /// Starts tailing the event stream for this instance's subscribers; it stops when `shutdown` turns true.
    pub fn spawn_event_fanout(&self, shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        tokio::spawn(crate::events::fanout::run(
            self.events.clone(),
            self.config.redis_url.clone(),
            self.stream.clone(),
            FANOUT_BLOCK,
            shutdown,
        ))
    }

    /// Warms the caches (see `FollowGraph::warm_up`) within `FOLLOW_WARMUP_TIMEOUT_S`; `/readyz`
    /// answers 503 until it finishes or its time is up.
    pub fn spawn_warm_up(&self) -> JoinHandle<()> {
        let state = self.warm_up.clone();
        state
            .running
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let (graph, config) = (self.graph.clone(), self.config.clone());
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let outcome = tokio::time::timeout(
                config.warmup_timeout,
                graph.warm_up(
                    crate::graph::WarmUpPlan {
                        users: config.warmup_users,
                        pages: config.warmup_pages,
                        viewers: config.warmup_viewers,
                    },
                    &state.loaded,
                ),
            )
            .await;
            let loaded =
                |n: &std::sync::atomic::AtomicUsize| n.load(std::sync::atomic::Ordering::Relaxed);
            let (users, pages, sets) = (
                loaded(&state.loaded.users),
                loaded(&state.loaded.pages),
                loaded(&state.loaded.sets),
            );
            let ms = started.elapsed().as_millis() as u64;
            match outcome {
                Ok(Ok(())) => tracing::info!(
                    hot_users = users,
                    first_pages = pages,
                    viewer_sets = sets,
                    ms,
                    "cache warm-up done"
                ),
                Ok(Err(err)) => {
                    tracing::warn!(hot_users = users, first_pages = pages, viewer_sets = sets, ms, error = ?err, "cache warm-up failed; serving cold")
                }
                Err(_) => tracing::warn!(
                    hot_users = users,
                    first_pages = pages,
                    viewer_sets = sets,
                    ms,
                    "cache warm-up cut short by FOLLOW_WARMUP_TIMEOUT_S; serving partly cold"
                ),
            }
            state
                .running
                .store(false, std::sync::atomic::Ordering::SeqCst);
        })
    }

    /// Whether PostgreSQL and Redis both answer, each with its error if not.
    pub async fn readiness(&self) -> (Result<(), String>, Result<(), String>) {
        let timeout = self.config.db_timeout;
        let database = async {
            match tokio::time::timeout(timeout, db::ping(&self.db)).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(err)) => Err(err.to_string()),
                Err(_) => Err("timed out".to_owned()),
            }
        };
        let redis = async {
            redis_pool::ping(
                &self.redis,
                self.config
                    .redis_timeout
                    .max(std::time::Duration::from_millis(500)),
            )
            .await
            .map_err(|err| format!("{err:#}"))
        };
        tokio::join!(database, redis)
    }
}

/// Persisted query texts kept in process: far more than any client's set of operations, and a bound
/// against clients that register a new text every time.
const PERSISTED_TEXT_BYTES: u64 = 4 * 1024 * 1024;

/// Memory for parsed documents (about 2 MiB of text at the worst ratio of tree to text).
const PARSED_DOCUMENT_BYTES: u64 = 64 * 1024 * 1024;

/// How long the fan-out blocks in one XREAD: short enough to notice a shutdown soon.
const FANOUT_BLOCK: std::time::Duration = std::time::Duration::from_secs(5);

/// A consumer name unique to this process: host, pid and a random suffix.
fn consumer_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".to_owned());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &suffix[..8])
}

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
