//! Settings, read once from the environment (a `.env` file may set them), validated at start.

use std::{net::SocketAddr, str::FromStr, time::Duration};

use anyhow::{Context, bail};

/// The secret used when `FOLLOW_JWT_SECRET` is unset: fine on a laptop, refused in production.
pub const DEVELOPMENT_JWT_SECRET: &str =
    "follow-service-development-secret-do-not-use-in-production";

/// Secrets that appear in this repository (the built-in one, docker-compose's default, the tests' and the
/// benchmark's): anyone can sign tokens with them, so production refuses every one.
pub const PUBLISHED_JWT_SECRETS: &[&str] = &[
    DEVELOPMENT_JWT_SECRET,
    "compose-development-secret-change-me",
    "follow-bench-secret-not-for-production",
    "test-secret-of-at-least-sixteen-bytes",
];

/// Where Redis is: one server, or a Redis Cluster reached through seed nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RedisTarget {
    /// `REDIS_URL`: one server.
    Node(String),
    /// `REDIS_CLUSTER_URLS`: some of a cluster's nodes (any of them; the rest is learnt from them).
    Cluster(Vec<String>),
}

impl RedisTarget {
    /// The cluster when `cluster_urls` names nodes (comma-separated), else the one server at `url`.
    pub fn from_settings(url: &str, cluster_urls: &str) -> anyhow::Result<Self> {
        let seeds: Vec<String> = cluster_urls
            .split(',')
            .map(str::trim)
            .filter(|seed| !seed.is_empty())
            .map(str::to_owned)
            .collect();
        if seeds.is_empty() {
            return Ok(Self::Node(url.to_owned()));
        }
        if let Some(bad) = seeds
            .iter()
            .find(|seed| !seed.starts_with("redis://") && !seed.starts_with("rediss://"))
        {
            bail!("REDIS_CLUSTER_URLS must list redis://host:port addresses, not {bad:?}");
        }
        Ok(Self::Cluster(seeds))
    }

    /// The addresses of single servers to try in turn for a plain connection: the server, or each
    /// seed of the cluster (a PUBLISH reaches the subscribers of every node of a cluster).
    pub fn node_urls(&self) -> &[String] {
        match self {
            Self::Node(url) => std::slice::from_ref(url),
            Self::Cluster(seeds) => seeds,
        }
    }
}

/// Every setting of the service; one field per environment variable.
#[derive(Clone, Debug)]
pub struct Config {
    /// `DATABASE_URL`: PostgreSQL; the database is created and migrated at start if missing.
    pub database_url: String,
    /// `REDIS_URL` (one server) or `REDIS_CLUSTER_URLS` (a Redis Cluster's seed nodes, which replace
    /// it): Redis holding the event stream, the shared (L2) cache and its invalidation channel.
    pub redis: RedisTarget,
    /// `FOLLOW_LISTEN`: the HTTP address to bind.
    pub listen: SocketAddr,
    /// `FOLLOW_JWT_SECRET`: HS256 secret that signs bearer tokens.
    pub jwt_secret: String,
    /// `FOLLOW_REDIS_PREFIX`: prefix of every Redis key, so several deployments (or tests) share one Redis.
    pub redis_prefix: String,
    /// `FOLLOW_ENV`: `development` or `production`; production refuses unsafe defaults.
    pub environment: Environment,
    /// `FOLLOW_LOG_FORMAT`: `text` (default) or `json`.
    pub log_json: bool,
    /// `FOLLOW_DB_POOL_SIZE`: PostgreSQL connections per process.
    pub db_pool_size: usize,
    /// `FOLLOW_DB_TIMEOUT_MS`: how long a request waits for a pooled connection before `SERVICE_UNAVAILABLE`.
    pub db_timeout: Duration,
    /// `FOLLOW_REDIS_POOL_SIZE`: shared multiplexed Redis connections per process, every call pipelined over them.
    pub redis_pool_size: usize,
    /// `FOLLOW_REDIS_TIMEOUT_MS`: budget of one Redis call on a request path; past it the request goes on without Redis.
    pub redis_timeout: Duration,
    /// `FOLLOW_REQUEST_TIMEOUT_MS`: a whole HTTP request's budget.
    pub request_timeout: Duration,
    /// `FOLLOW_MAX_BODY_BYTES`: the largest request body accepted.
    pub max_body_bytes: usize,
    /// `FOLLOW_MAX_BATCH_OPERATIONS`: most operations one batched POST may carry.
    pub max_batch_operations: usize,
    /// `FOLLOW_MAX_DEPTH`: deepest query accepted.
    pub max_depth: usize,
    /// `FOLLOW_MAX_COMPLEXITY`: most expensive query accepted (list fields cost `first` times their children).
    pub max_complexity: usize,
    /// `FOLLOW_MAX_FIELDS`: most fields a document may have once its fragments are expanded.
    pub max_fields: usize,
    /// `FOLLOW_MAX_ENTITIES`: most representations one federation `_entities` call may carry.
    pub max_entities: usize,
    /// `FOLLOW_WARMUP_TIMEOUT_S`: longest warm-up at start before `/readyz` answers ready anyway.
    pub warmup_timeout: Duration,
    /// `FOLLOW_WARMUP_USERS`: most-followed users whose counts, records and following sets warm-up loads.
    pub warmup_users: usize,
    /// `FOLLOW_WARMUP_PAGES`: most-followed users whose first page of followers warm-up loads.
    pub warmup_pages: usize,
    /// `FOLLOW_WARMUP_VIEWERS`: recently active viewers whose following sets warm-up loads.
    pub warmup_viewers: usize,
    /// `FOLLOW_LOADER_DELAY_US`: how long a loader waits to gather keys into one batch (0: the keys
    /// asked in one scheduling pass).
    pub loader_delay: Duration,
    /// `FOLLOW_WRITE_WINDOW_US`: how long a write batch may wait for more changes while another slot's
    /// batch is in its statement (0: it takes what is queued; a lone write never waits; one slot: never).
    pub write_window: Duration,
    /// `FOLLOW_WRITE_CONCURRENCY`: write batches committed at once, each on its own connection.
    pub write_concurrency: usize,
    /// `FOLLOW_WRITE_BATCH`: most edge changes one write batch carries (one request's are never split).
    pub write_batch: usize,
    /// `FOLLOW_CONSUMER_BATCH`: most stream entries a consumer reads and applies in one transaction.
    pub consumer_batch: usize,
    /// `FOLLOW_CONSUMER_BLOCK_MS`: how long an idle consumer blocks in `XREADGROUP`.
    pub consumer_block: Duration,
    /// `FOLLOW_CONSUMERS`: event consumers per process.
    pub consumers: usize,
    /// `FOLLOW_CLAIM_IDLE_MS`: how long an entry may stay pending before another consumer takes it over.
    pub claim_idle: Duration,
    /// `FOLLOW_MAX_DELIVERIES`: deliveries after which an unapplied entry goes to the dead letters.
    pub max_deliveries: usize,
    /// `FOLLOW_STREAM_PARTITIONS`: P, the partitions of the event stream; each event goes to its
    /// followee's (1: the single stream of before, under the same key).
    pub stream_partitions: usize,
    /// `FOLLOW_STREAM_PARTITIONS_READ`: partitions the consumers, trimmer, fan-out and gauges cover, at
    /// least P (default P); set to the larger P of two layouts while P changes.
    pub stream_partitions_read: usize,
    /// `FOLLOW_RECONCILE_EVERY_S`: run `reconcile --fix` on this period (0: never).
    pub reconcile_every: Duration,
    /// `FOLLOW_RELAY_AFTER_MS`: age after which the relay checks an unapplied outbox row (and publishes it
    /// again if its stream entry is gone).
    pub relay_after: Duration,
    /// `FOLLOW_RELAY_INTERVAL_MS`: how often the relay looks for such rows.
    pub relay_interval: Duration,
    /// `FOLLOW_METRICS_SAMPLE_MS`: how often the pool, stream and outbox gauges of `/metrics` are sampled.
    pub metrics_sample: Duration,
    /// `FOLLOW_CACHE` and `FOLLOW_CACHE_*`: the two-level cache (on by default).
    pub cache: CacheSettings,
    /// `FOLLOW_REDIS_BREAKER_FAILURES`: consecutive Redis failures that open the circuit breaker.
    pub breaker_failures: u32,
    /// `FOLLOW_REDIS_BREAKER_COOLDOWN_MS`: how long an open breaker keeps Redis uncalled before a probe.
    pub breaker_cool_down: Duration,
    /// `FOLLOW_RUN_CONSUMER`: whether `serve` also runs the consumer and relay (default true).
    pub run_consumer: bool,
    /// `FOLLOW_SUBSCRIPTION_BUFFER`: events one subscriber may have waiting before its subscription
    /// ends as overrun (a slow client never stalls the others nor grows memory past this).
    pub subscription_buffer: usize,
    /// `FOLLOW_WS_MAX_SUBSCRIPTIONS`: operations one websocket may run at once.
    pub ws_max_subscriptions: usize,
    /// `FOLLOW_WS_INIT_TIMEOUT_MS`: how long a websocket may stay open without `connection_init`.
    pub ws_init_timeout: Duration,
    /// `FOLLOW_WS_IDLE_TIMEOUT_S`: a websocket silent this long (no message, no pong) is closed.
    pub ws_idle_timeout: Duration,
    /// `FOLLOW_APQ_TTL_S`: how long an automatic persisted query stays registered in Redis.
    pub apq_ttl: Duration,
    /// `FOLLOW_RATE_LIMIT` and `FOLLOW_RATE_*`: the rate limits (on by default).
    pub rate: RateSettings,
    /// `FOLLOW_TRUSTED_PROXIES`: networks (CIDR, comma-separated) of proxies whose `X-Forwarded-For`
    /// names the client; empty: the peer address is the client.
    pub trusted_proxies: Vec<IpNet>,
    /// `FOLLOW_MAX_CONNECTIONS`: open HTTP connections per process; more are refused with 503.
    pub max_connections: usize,
    /// `FOLLOW_HEADER_TIMEOUT_MS`: how long a client may take to send a request's headers.
    pub header_timeout: Duration,
    /// `FOLLOW_KEEP_ALIVE_IDLE_S`: an idle keep-alive connection is closed after this long.
    pub keep_alive_idle: Duration,
    /// `FOLLOW_WS_MAX_CONNECTIONS`: websockets open per process.
    pub ws_max_connections: usize,
    /// `FOLLOW_WS_MAX_PER_VIEWER`: websockets one viewer (or one anonymous address) may hold per process.
    pub ws_max_per_viewer: usize,
    /// `FOLLOW_METRICS_LISTEN`: serve `/metrics` on this address only (not on the public listener).
    pub metrics_listen: Option<SocketAddr>,
    /// `FOLLOW_JWT_ISSUER`: when set, tokens must carry this `iss`.
    pub jwt_issuer: Option<String>,
    /// `FOLLOW_JWT_AUDIENCE`: when set, tokens must carry this `aud`.
    pub jwt_audience: Option<String>,
    /// `FOLLOW_CORS_ORIGINS`: web origins allowed to call the API from a browser (comma-separated,
    /// `*` for any); empty: none, so only pages served by the API's own origin (GraphiQL) may.
    pub cors_origins: Vec<String>,
    /// Read replicas: where lag-tolerant reads go, and how far behind one may be.
    pub replicas: ReplicaSettings,
}

/// Read replicas of PostgreSQL (issue 17): reads that may lag go to one that is caught up enough.
#[derive(Clone, Debug)]
pub struct ReplicaSettings {
    /// `DATABASE_REPLICA_URLS`: streaming replicas of `DATABASE_URL`'s server, comma-separated; empty:
    /// every read goes to the primary.
    pub urls: Vec<String>,
    /// `FOLLOW_REPLICA_MAX_LAG_MS` (1000): a replica that has not replayed what the primary had committed
    /// this long ago is skipped; also how long a viewer's own write keeps its reads off a replica at most.
    pub max_lag: Duration,
    /// `FOLLOW_REPLICA_PROBE_MS` (50): how often each replica's replay position is compared with the
    /// primary's; a replica is seen caught up to a write one or two probes after it.
    pub probe_interval: Duration,
}

/// Cache sizes and lifetimes.
#[derive(Clone, Debug)]
pub struct CacheSettings {
    /// Caching on (`FOLLOW_CACHE=on`) or every read from PostgreSQL.
    pub enabled: bool,
    /// Bytes L1 may hold, all kinds together (each kind gets a fixed share, see `cache::L1_SHARES`).
    pub l1_max_bytes: u64,
    /// L1's safety lifetime: entries stay until a write or the consumer changes them (announcements
    /// reach every instance), this long at most.
    pub l1_ttl: Duration,
    /// Most ids of a following set kept whole; a user following more gets per-pair lookups.
    pub set_limit: usize,
    pub sets_ttl: Duration,
    pub status_ttl: Duration,
    pub counts_ttl: Duration,
    pub lists_ttl: Duration,
    pub users_ttl: Duration,
    /// Budget of one Redis cache call.
    pub redis_timeout: Duration,
}

/// The rate limits' budgets (`FOLLOW_RATE_*`), each per client and per minute unless named otherwise.
#[derive(Clone, Copy, Debug)]
pub struct RateSettings {
    /// `FOLLOW_RATE_LIMIT`: `off` turns every limiter off (load benchmarks), with a warning at start.
    pub enabled: bool,
    /// `FOLLOW_RATE_VIEWER_POINTS`: query cost points a viewer (token `sub`) may spend per minute.
    pub viewer_points: u32,
    /// `FOLLOW_RATE_ANONYMOUS_POINTS`: query cost points one client address may spend per minute.
    pub anonymous_points: u32,
    /// `FOLLOW_RATE_FOLLOWS_PER_MINUTE`: follows and unfollows a viewer may make per minute.
    pub follows_per_minute: u32,
    /// `FOLLOW_RATE_FOLLOWS_PER_DAY`: follows and unfollows a viewer may make per day (admins exempt).
    pub follows_per_day: u32,
    /// `FOLLOW_RATE_APQ_PER_MINUTE`: persisted queries a client may register per minute.
    pub registrations_per_minute: u32,
}

/// A network in CIDR notation (`10.0.0.0/8`, `::1/128`; a bare address is a network of one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    address: std::net::IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Whether `ip` lies in this network (an IPv4-mapped IPv6 address counts as its IPv4 address).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpNet {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let (address, prefix) = match s.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (s, None),
        };
        let address: std::net::IpAddr = address
            .trim()
            .parse()
            .with_context(|| format!("{s:?} is not an address or a network such as 10.0.0.0/8"))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .with_context(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Self { address, prefix })
    }
}

/// Where the service runs; production refuses the development secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Environment {
    Development,
    Production,
}

impl FromStr for Environment {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "development" | "dev" => Ok(Self::Development),
            "production" | "prod" => Ok(Self::Production),
            other => bail!("FOLLOW_ENV must be development or production, not {other:?}"),
        }
    }
}

impl Config {
    /// Reads the process environment (after loading `.env` if present) and validates it.
    pub fn from_env() -> anyhow::Result<Self> {
        let _ = dotenvy::dotenv();
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Builds the settings from any variable lookup; tests pass their own.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let parse = |name: &str, default: &str| -> String {
            get(name)
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| default.to_owned())
        };
        let number = |name: &str, default: u64| -> anyhow::Result<u64> {
            match get(name).filter(|v| !v.trim().is_empty()) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse()
                    .with_context(|| format!("{name} must be a whole number, not {v:?}")),
            }
        };
        let millis = |name: &str, default: u64| number(name, default).map(Duration::from_millis);
        let seconds = |name: &str, default: u64| number(name, default).map(Duration::from_secs);
        let flag = |name: &str, default: bool| -> anyhow::Result<bool> {
            match get(name).map(|v| v.trim().to_ascii_lowercase()) {
                None => Ok(default),
                Some(v) if v.is_empty() => Ok(default),
                Some(v) if ["1", "true", "yes", "on"].contains(&v.as_str()) => Ok(true),
                Some(v) if ["0", "false", "no", "off"].contains(&v.as_str()) => Ok(false),
                Some(v) => bail!("{name} must be true or false, not {v:?}"),
            }
        };

        let points = |name: &str, default: u32| -> anyhow::Result<u32> {
            let value = number(name, u64::from(default))?;
            u32::try_from(value).with_context(|| format!("{name} must be at most {}", u32::MAX))
        };

        let environment: Environment = parse("FOLLOW_ENV", "development").parse()?;
        let jwt_secret = parse("FOLLOW_JWT_SECRET", DEVELOPMENT_JWT_SECRET);
        let log_format = parse("FOLLOW_LOG_FORMAT", "text");
        let config = Self {
            database_url: parse(
                "DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/follow_service",
            ),
            redis: RedisTarget::from_settings(
                &parse("REDIS_URL", "redis://127.0.0.1:6379"),
                &parse("REDIS_CLUSTER_URLS", ""),
            )?,
            listen: parse("FOLLOW_LISTEN", "127.0.0.1:8080")
                .parse()
                .context("FOLLOW_LISTEN must be an address such as 127.0.0.1:8080")?,
            jwt_secret,
            redis_prefix: parse("FOLLOW_REDIS_PREFIX", "follow"),
            environment,
            log_json: match log_format.as_str() {
                "json" => true,
                "text" => false,
                other => bail!("FOLLOW_LOG_FORMAT must be text or json, not {other:?}"),
            },
            db_pool_size: number("FOLLOW_DB_POOL_SIZE", 16)? as usize,
            db_timeout: millis("FOLLOW_DB_TIMEOUT_MS", 2_000)?,
            redis_pool_size: number("FOLLOW_REDIS_POOL_SIZE", 2)? as usize,
            redis_timeout: millis("FOLLOW_REDIS_TIMEOUT_MS", 100)?,
            request_timeout: millis("FOLLOW_REQUEST_TIMEOUT_MS", 10_000)?,
            max_body_bytes: number("FOLLOW_MAX_BODY_BYTES", 64 * 1024)? as usize,
            max_batch_operations: number("FOLLOW_MAX_BATCH_OPERATIONS", 10)? as usize,
            max_depth: number("FOLLOW_MAX_DEPTH", 16)? as usize,
            max_complexity: number("FOLLOW_MAX_COMPLEXITY", 20_000)? as usize,
            max_fields: number("FOLLOW_MAX_FIELDS", 2_000)? as usize,
            max_entities: number("FOLLOW_MAX_ENTITIES", 100)? as usize,
            loader_delay: Duration::from_micros(number("FOLLOW_LOADER_DELAY_US", 0)?),
            warmup_timeout: seconds("FOLLOW_WARMUP_TIMEOUT_S", 10)?,
            warmup_users: number("FOLLOW_WARMUP_USERS", 100_000)? as usize,
            warmup_pages: number("FOLLOW_WARMUP_PAGES", 1_000)? as usize,
            warmup_viewers: number("FOLLOW_WARMUP_VIEWERS", 10_000)? as usize,
            write_window: Duration::from_micros(number("FOLLOW_WRITE_WINDOW_US", 0)?),
            write_concurrency: number("FOLLOW_WRITE_CONCURRENCY", 1)? as usize,
            write_batch: number("FOLLOW_WRITE_BATCH", 1_000)? as usize,
            consumer_batch: number("FOLLOW_CONSUMER_BATCH", 500)? as usize,
            consumer_block: millis("FOLLOW_CONSUMER_BLOCK_MS", 1_000)?,
            consumers: number("FOLLOW_CONSUMERS", 4)? as usize,
            claim_idle: millis("FOLLOW_CLAIM_IDLE_MS", 10_000)?,
            max_deliveries: number("FOLLOW_MAX_DELIVERIES", 3)? as usize,
            stream_partitions: number("FOLLOW_STREAM_PARTITIONS", 1)? as usize,
            stream_partitions_read: number(
                "FOLLOW_STREAM_PARTITIONS_READ",
                number("FOLLOW_STREAM_PARTITIONS", 1)?,
            )? as usize,
            reconcile_every: seconds("FOLLOW_RECONCILE_EVERY_S", 0)?,
            relay_after: millis("FOLLOW_RELAY_AFTER_MS", 5_000)?,
            relay_interval: millis("FOLLOW_RELAY_INTERVAL_MS", 1_000)?,
            metrics_sample: millis("FOLLOW_METRICS_SAMPLE_MS", 2_000)?,
            cache: CacheSettings {
                enabled: flag("FOLLOW_CACHE", true)?,
                l1_max_bytes: number("FOLLOW_L1_MAX_BYTES", 256 * 1024 * 1024)?,
                l1_ttl: seconds("FOLLOW_CACHE_L1_TTL_S", 3_600)?,
                set_limit: number("FOLLOW_CACHE_SET_LIMIT", 5_000)? as usize,
                sets_ttl: seconds("FOLLOW_CACHE_SETS_TTL_S", 3_600)?,
                status_ttl: seconds("FOLLOW_CACHE_STATUS_TTL_S", 3_600)?,
                counts_ttl: seconds("FOLLOW_CACHE_COUNTS_TTL_S", 1_800)?,
                lists_ttl: seconds("FOLLOW_CACHE_LISTS_TTL_S", 600)?,
                users_ttl: seconds("FOLLOW_CACHE_USERS_TTL_S", 3_600)?,
                redis_timeout: millis("FOLLOW_REDIS_TIMEOUT_MS", 100)?,
            },
            breaker_failures: number("FOLLOW_REDIS_BREAKER_FAILURES", 5)? as u32,
            breaker_cool_down: millis("FOLLOW_REDIS_BREAKER_COOLDOWN_MS", 1_000)?,
            run_consumer: flag("FOLLOW_RUN_CONSUMER", true)?,
            subscription_buffer: number("FOLLOW_SUBSCRIPTION_BUFFER", 256)? as usize,
            ws_max_subscriptions: number("FOLLOW_WS_MAX_SUBSCRIPTIONS", 32)? as usize,
            ws_init_timeout: millis("FOLLOW_WS_INIT_TIMEOUT_MS", 3_000)?,
            ws_idle_timeout: seconds("FOLLOW_WS_IDLE_TIMEOUT_S", 60)?,
            apq_ttl: seconds("FOLLOW_APQ_TTL_S", 7 * 24 * 3_600)?,
            rate: RateSettings {
                enabled: flag("FOLLOW_RATE_LIMIT", true)?,
                viewer_points: points("FOLLOW_RATE_VIEWER_POINTS", 60_000)?,
                anonymous_points: points("FOLLOW_RATE_ANONYMOUS_POINTS", 30_000)?,
                follows_per_minute: points("FOLLOW_RATE_FOLLOWS_PER_MINUTE", 100)?,
                follows_per_day: points("FOLLOW_RATE_FOLLOWS_PER_DAY", 400)?,
                registrations_per_minute: points("FOLLOW_RATE_APQ_PER_MINUTE", 60)?,
            },
            trusted_proxies: parse("FOLLOW_TRUSTED_PROXIES", "")
                .split(',')
                .map(str::trim)
                .filter(|net| !net.is_empty())
                .map(|net| net.parse().context("FOLLOW_TRUSTED_PROXIES"))
                .collect::<anyhow::Result<_>>()?,
            max_connections: number("FOLLOW_MAX_CONNECTIONS", 10_000)? as usize,
            header_timeout: millis("FOLLOW_HEADER_TIMEOUT_MS", 5_000)?,
            keep_alive_idle: seconds("FOLLOW_KEEP_ALIVE_IDLE_S", 75)?,
            ws_max_connections: number("FOLLOW_WS_MAX_CONNECTIONS", 5_000)? as usize,
            ws_max_per_viewer: number("FOLLOW_WS_MAX_PER_VIEWER", 8)? as usize,
            metrics_listen: get("FOLLOW_METRICS_LISTEN")
                .filter(|v| !v.trim().is_empty())
                .map(|v| v.trim().parse())
                .transpose()
                .context("FOLLOW_METRICS_LISTEN must be an address such as 127.0.0.1:9090")?,
            jwt_issuer: get("FOLLOW_JWT_ISSUER").filter(|v| !v.trim().is_empty()),
            jwt_audience: get("FOLLOW_JWT_AUDIENCE").filter(|v| !v.trim().is_empty()),
            cors_origins: parse("FOLLOW_CORS_ORIGINS", "")
                .split(',')
                .map(|origin| origin.trim().trim_end_matches('/').to_owned())
                .filter(|origin| !origin.is_empty())
                .collect(),
            replicas: ReplicaSettings {
                urls: parse("DATABASE_REPLICA_URLS", "")
                    .split(',')
                    .map(str::trim)
                    .filter(|url| !url.is_empty())
                    .map(str::to_owned)
                    .collect(),
                max_lag: millis("FOLLOW_REPLICA_MAX_LAG_MS", 1_000)?,
                probe_interval: millis("FOLLOW_REPLICA_PROBE_MS", 50)?,
            },
        };
        config.validate()?;
        Ok(config)
    }

    /// Refuses settings that cannot work, with the variable's name in the message.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.environment == Environment::Production && self.uses_development_secret() {
            bail!(
                "FOLLOW_ENV=production needs FOLLOW_JWT_SECRET: the built-in development secret is public"
            );
        }
        if self.environment == Environment::Production
            && PUBLISHED_JWT_SECRETS.contains(&self.jwt_secret.as_str())
        {
            bail!(
                "FOLLOW_ENV=production refuses this FOLLOW_JWT_SECRET: it is published in the service's repository, so anyone can sign tokens with it"
            );
        }
        for (name, points) in [
            ("FOLLOW_RATE_VIEWER_POINTS", self.rate.viewer_points),
            ("FOLLOW_RATE_ANONYMOUS_POINTS", self.rate.anonymous_points),
        ] {
            if self.rate.enabled && (points as usize) < self.max_complexity {
                bail!(
                    "{name} ({points}) must be at least FOLLOW_MAX_COMPLEXITY ({}): a query within the complexity limit must fit in a minute's budget",
                    self.max_complexity
                );
            }
        }
        let replicas = &self.replicas;
        if replicas.probe_interval.is_zero() || replicas.probe_interval * 2 > replicas.max_lag {
            bail!(
                "FOLLOW_REPLICA_PROBE_MS must be above 0 and at most half of FOLLOW_REPLICA_MAX_LAG_MS: a replica is seen caught up only at a probe"
            );
        }
        if self.jwt_secret.len() < 16 {
            bail!("FOLLOW_JWT_SECRET must be at least 16 bytes long");
        }
        // Each partition read costs a process a blocking connection for its consumer and its fan-out.
        const MAX_STREAM_PARTITIONS: usize = 64;
        if !(1..=MAX_STREAM_PARTITIONS).contains(&self.stream_partitions) {
            bail!("FOLLOW_STREAM_PARTITIONS must be 1 to {MAX_STREAM_PARTITIONS}");
        }
        if !(self.stream_partitions..=MAX_STREAM_PARTITIONS).contains(&self.stream_partitions_read)
        {
            bail!(
                "FOLLOW_STREAM_PARTITIONS_READ must be FOLLOW_STREAM_PARTITIONS ({}) to {MAX_STREAM_PARTITIONS}: readers cover at least the partitions written",
                self.stream_partitions
            );
        }
        if self.redis_prefix.is_empty() || self.redis_prefix.contains(['{', '}', ' ']) {
            bail!("FOLLOW_REDIS_PREFIX must be non-empty, without braces or spaces");
        }
        for origin in &self.cors_origins {
            let valid = origin == "*"
                || ((origin.starts_with("http://") || origin.starts_with("https://"))
                    && axum::http::HeaderValue::from_str(origin).is_ok());
            if !valid {
                bail!(
                    "FOLLOW_CORS_ORIGINS must list origins such as https://app.example.com (or *), not {origin:?}"
                );
            }
        }
        for (name, value) in [
            ("FOLLOW_DB_POOL_SIZE", self.db_pool_size),
            ("FOLLOW_REDIS_POOL_SIZE", self.redis_pool_size),
            ("FOLLOW_WRITE_CONCURRENCY", self.write_concurrency),
            ("FOLLOW_WRITE_BATCH", self.write_batch),
            ("FOLLOW_CONSUMER_BATCH", self.consumer_batch),
            ("FOLLOW_CONSUMERS", self.consumers),
            ("FOLLOW_MAX_DELIVERIES", self.max_deliveries),
            ("FOLLOW_MAX_DEPTH", self.max_depth),
            ("FOLLOW_MAX_BATCH_OPERATIONS", self.max_batch_operations),
            ("FOLLOW_MAX_COMPLEXITY", self.max_complexity),
            ("FOLLOW_MAX_FIELDS", self.max_fields),
            ("FOLLOW_MAX_ENTITIES", self.max_entities),
            ("FOLLOW_MAX_BODY_BYTES", self.max_body_bytes),
            ("FOLLOW_MAX_CONNECTIONS", self.max_connections),
            ("FOLLOW_WS_MAX_CONNECTIONS", self.ws_max_connections),
            ("FOLLOW_WS_MAX_PER_VIEWER", self.ws_max_per_viewer),
            (
                "FOLLOW_HEADER_TIMEOUT_MS",
                self.header_timeout.as_millis() as usize,
            ),
            (
                "FOLLOW_KEEP_ALIVE_IDLE_S",
                self.keep_alive_idle.as_secs() as usize,
            ),
            (
                "FOLLOW_RATE_VIEWER_POINTS",
                self.rate.viewer_points as usize,
            ),
            (
                "FOLLOW_RATE_ANONYMOUS_POINTS",
                self.rate.anonymous_points as usize,
            ),
            (
                "FOLLOW_RATE_FOLLOWS_PER_MINUTE",
                self.rate.follows_per_minute as usize,
            ),
            (
                "FOLLOW_RATE_FOLLOWS_PER_DAY",
                self.rate.follows_per_day as usize,
            ),
            (
                "FOLLOW_RATE_APQ_PER_MINUTE",
                self.rate.registrations_per_minute as usize,
            ),
            ("FOLLOW_L1_MAX_BYTES", self.cache.l1_max_bytes as usize),
            ("FOLLOW_CACHE_SET_LIMIT", self.cache.set_limit),
            ("FOLLOW_SUBSCRIPTION_BUFFER", self.subscription_buffer),
            ("FOLLOW_WS_MAX_SUBSCRIPTIONS", self.ws_max_subscriptions),
            (
                "FOLLOW_WS_INIT_TIMEOUT_MS",
                self.ws_init_timeout.as_millis() as usize,
            ),
            (
                "FOLLOW_WS_IDLE_TIMEOUT_S",
                self.ws_idle_timeout.as_secs() as usize,
            ),
            (
                "FOLLOW_REDIS_TIMEOUT_MS",
                self.redis_timeout.as_millis() as usize,
            ),
        ] {
            if value == 0 {
                bail!("{name} must be at least 1");
            }
        }
        Ok(())
    }

    /// Whether tokens are signed with the public development secret.
    pub fn uses_development_secret(&self) -> bool {
        self.jwt_secret == DEVELOPMENT_JWT_SECRET
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_work_without_any_variable() {
        let config = Config::from_lookup(|_| None).expect("defaults are valid");
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert!(config.uses_development_secret());
        assert!(config.run_consumer);
    }

    #[test]
    fn production_refuses_the_development_secret() {
        let err =
            Config::from_lookup(|name| (name == "FOLLOW_ENV").then(|| "production".to_owned()))
                .expect_err("must refuse");
        assert!(err.to_string().contains("FOLLOW_JWT_SECRET"), "{err}");
    }

    #[test]
    fn production_refuses_every_secret_published_in_the_repository() {
        let compose = include_str!("../docker-compose.yml");
        let default = compose
            .split("FOLLOW_JWT_SECRET:-")
            .nth(1)
            .and_then(|rest| rest.split('}').next())
            .expect("docker-compose.yml has a default secret");
        assert!(PUBLISHED_JWT_SECRETS.contains(&default), "{default}");
        for secret in PUBLISHED_JWT_SECRETS {
            let err = Config::from_lookup(|name| match name {
                "FOLLOW_ENV" => Some("production".to_owned()),
                "FOLLOW_JWT_SECRET" => Some((*secret).to_owned()),
                _ => None,
            })
            .expect_err("must refuse");
            assert!(err.to_string().contains("FOLLOW_JWT_SECRET"), "{err}");
        }
        let fine = Config::from_lookup(|name| match name {
            "FOLLOW_ENV" => Some("production".to_owned()),
            "FOLLOW_JWT_SECRET" => Some("a-secret-only-this-deployment-knows".to_owned()),
            _ => None,
        });
        assert!(fine.is_ok());
    }

    #[test]
    fn replica_urls_are_a_list_and_the_probe_fits_the_lag_bound() {
        let config = Config::from_lookup(|name| match name {
            "DATABASE_REPLICA_URLS" => {
                Some(" postgres://a:5433/x, ,postgres://b:5433/x ".to_owned())
            }
            _ => None,
        })
        .expect("valid");
        assert_eq!(
            config.replicas.urls,
            ["postgres://a:5433/x", "postgres://b:5433/x"]
        );
        assert!(
            Config::from_lookup(|_| None)
                .expect("defaults")
                .replicas
                .urls
                .is_empty()
        );
        let err = Config::from_lookup(|name| match name {
            "FOLLOW_REPLICA_MAX_LAG_MS" => Some("100".to_owned()),
            "FOLLOW_REPLICA_PROBE_MS" => Some("80".to_owned()),
            _ => None,
        })
        .expect_err("a probe slower than half the lag bound");
        assert!(err.to_string().contains("FOLLOW_REPLICA_PROBE_MS"), "{err}");
    }

    #[test]
    fn trusted_proxies_are_networks() {
        let net: IpNet = "10.1.0.0/16".parse().expect("a network");
        assert!(net.contains("10.1.200.3".parse().expect("ip")));
        assert!(!net.contains("10.2.0.1".parse().expect("ip")));
        let one: IpNet = "127.0.0.1".parse().expect("an address");
        assert!(one.contains("::ffff:127.0.0.1".parse().expect("mapped")));
        let v6: IpNet = "2001:db8::/32".parse().expect("v6");
        assert!(v6.contains("2001:db8:1::5".parse().expect("ip")));
        let all: IpNet = "0.0.0.0/0".parse().expect("all");
        assert!(all.contains("203.0.113.9".parse().expect("ip")));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("proxy.local".parse::<IpNet>().is_err());
    }

    #[test]
    fn cors_origins_are_a_list_of_origins() {
        let with = |value: &'static str| {
            Config::from_lookup(move |name| {
                (name == "FOLLOW_CORS_ORIGINS").then(|| value.to_owned())
            })
        };
        let config = with(" https://app.example.com/, http://localhost:5173 ").expect("valid");
        assert_eq!(
            config.cors_origins,
            ["https://app.example.com", "http://localhost:5173"]
        );
        assert!(with("").expect("valid").cors_origins.is_empty());
        let err = with("app.example.com").expect_err("not an origin");
        assert!(err.to_string().contains("FOLLOW_CORS_ORIGINS"), "{err}");
    }

    #[test]
    fn a_bad_number_names_its_variable() {
        let err =
            Config::from_lookup(|name| (name == "FOLLOW_DB_POOL_SIZE").then(|| "many".to_owned()))
                .expect_err("must refuse");
        assert!(err.to_string().contains("FOLLOW_DB_POOL_SIZE"), "{err}");
    }

    #[test]
    fn stream_partitions_default_to_one_and_readers_cover_at_least_the_written_ones() {
        let with = |pairs: &'static [(&'static str, &'static str)]| {
            Config::from_lookup(move |name| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| (*v).to_owned())
            })
        };
        let default = with(&[]).expect("valid");
        assert_eq!(
            (default.stream_partitions, default.stream_partitions_read),
            (1, 1)
        );
        let four = with(&[("FOLLOW_STREAM_PARTITIONS", "4")]).expect("valid");
        assert_eq!(
            (four.stream_partitions, four.stream_partitions_read),
            (4, 4)
        );
        let shrinking = with(&[
            ("FOLLOW_STREAM_PARTITIONS", "2"),
            ("FOLLOW_STREAM_PARTITIONS_READ", "4"),
        ])
        .expect("valid");
        assert_eq!(
            (
                shrinking.stream_partitions,
                shrinking.stream_partitions_read
            ),
            (2, 4)
        );
        for bad in [
            &[("FOLLOW_STREAM_PARTITIONS", "0")][..],
            &[("FOLLOW_STREAM_PARTITIONS", "65")][..],
            &[
                ("FOLLOW_STREAM_PARTITIONS", "4"),
                ("FOLLOW_STREAM_PARTITIONS_READ", "2"),
            ][..],
        ] {
            let err = with(bad).expect_err("must refuse");
            assert!(
                err.to_string().contains("FOLLOW_STREAM_PARTITIONS"),
                "{err}"
            );
        }
    }
}
