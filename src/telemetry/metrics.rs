//! Prometheus metrics: the recorder, the name of every series, and the series registered at zero.
//! The gauges that no request updates (pools, stream, outbox) are sampled by `app::gauges`.
//!
//! Names follow Prometheus conventions: a `follow_` prefix, base units (`_seconds`), `_total` counters.
//! The recorder is process-wide (the `metrics` facade has one global recorder); `/metrics` renders it.

use std::{
    collections::{HashMap, HashSet},
    sync::{Mutex, OnceLock, RwLock},
};

use ::metrics::{describe_counter, describe_gauge, describe_histogram, gauge};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// GraphQL request duration, labelled `operation_name`, `operation_type` and `class` ([`RequestClass`]).
pub const GRAPHQL_DURATION: &str = "follow_graphql_request_duration_seconds";
/// GraphQL requests, labelled `class` ([`RequestClass`]) and `outcome` ([`Outcome`]): the error ratio's
/// numerator and denominator.
pub const GRAPHQL_REQUESTS: &str = "follow_graphql_requests_total";
/// GraphQL errors returned to clients, labelled `code` (`extensions.code`, or `GRAPHQL_VALIDATION` for
/// parse and validation errors).
pub const GRAPHQL_ERRORS: &str = "follow_graphql_errors_total";
/// Cache lookups, labelled `cache` (status, counts, lists, users), `level` (l1, l2) and `result` (hit, miss).
pub const CACHE_REQUESTS: &str = "follow_cache_requests_total";
/// Keys per loader batch, labelled `loader`.
pub const LOADER_BATCH: &str = "follow_dataloader_batch_size";
/// PostgreSQL pool connections, labelled `state` (in_use, idle).
pub const DB_POOL_CONNECTIONS: &str = "follow_db_pool_connections";
/// Requests waiting for a PostgreSQL connection.
pub const DB_POOL_WAITING: &str = "follow_db_pool_waiting";
/// Statements run by this process.
pub const DB_QUERIES: &str = "follow_db_queries_total";
/// Redis pool connections, labelled `state`.
pub const REDIS_POOL_CONNECTIONS: &str = "follow_redis_pool_connections";
/// Requests waiting for a Redis connection.
pub const REDIS_POOL_WAITING: &str = "follow_redis_pool_waiting";
/// Entries in the event stream (XLEN).
pub const STREAM_LENGTH: &str = "follow_stream_length";
/// Entries delivered to the consumer group and not acknowledged.
pub const STREAM_PENDING: &str = "follow_stream_pending";
/// Entries in the stream not yet delivered to the consumer group.
pub const STREAM_LAG: &str = "follow_stream_lag";
/// Entries in the dead-letter stream (XLEN; it keeps about the most recent 100,000).
pub const STREAM_DEAD_LETTERS: &str = "follow_stream_dead_letters";
/// The PostgreSQL server's WAL insert position in bytes (all its databases), sampled: its rate over the
/// rate of `follow_edge_changes_total` is WAL bytes per write.
pub const PG_WAL_BYTES: &str = "follow_pg_wal_bytes";
/// The Redis server's `total_commands_processed` (every client's), sampled: its rate over the rate of
/// `follow_edge_changes_total` is Redis commands per write.
pub const REDIS_COMMANDS: &str = "follow_redis_commands_processed";
/// Reads routed by the read router (`db::replicas`), labelled `target` (primary, replica) and `what`
/// (users, counts, lists, following_sets, statuses, …): each one statement, so the primary's share of
/// reads is its rate over the sum.
pub const DB_READS: &str = "follow_db_reads_total";
/// How far each read replica is behind, labelled `replica` (host:port): the time since the newest
/// primary WAL position it has replayed was read, so an idle primary shows no lag.
pub const DB_REPLICA_LAG: &str = "follow_db_replica_lag_seconds";
/// How far each read replica's replay is behind the primary's WAL, in bytes, labelled `replica`.
pub const DB_REPLICA_LAG_BYTES: &str = "follow_db_replica_lag_bytes";
/// Whether each read replica takes reads (1) or is skipped as down or too far behind (0), by `replica`.
pub const DB_REPLICA_UP: &str = "follow_db_replica_up";
/// Reads that failed on a replica and were run again on the primary, labelled `replica`.
pub const DB_REPLICA_FALLBACKS: &str = "follow_db_replica_fallbacks_total";
/// Connections of the write pool (group commit and consumers), labelled `state`.
pub const DB_WRITE_POOL_CONNECTIONS: &str = "follow_db_write_pool_connections";
/// Group-commit batches and consumer batches waiting for a write-pool connection.
pub const DB_WRITE_POOL_WAITING: &str = "follow_db_write_pool_waiting";
/// Edge changes per group-commit batch (one statement, one commit, one Redis round trip).
pub const WRITE_BATCH: &str = "follow_write_batch_size";
/// Group-commit batches run again after a deadlock or serialization failure.
pub const WRITE_BATCH_RETRIES: &str = "follow_write_batch_retries_total";
/// Edges the write path changed (each one event): the denominator of the per-write ratios.
pub const EDGE_CHANGES: &str = "follow_edge_changes_total";
/// Entries per consumer batch.
pub const CONSUMER_BATCH: &str = "follow_consumer_batch_size";
/// Time to apply one consumer batch in PostgreSQL.
pub const CONSUMER_APPLY: &str = "follow_consumer_apply_duration_seconds";
/// Events whose delta a consumer applied (redeliveries not counted).
pub const EVENTS_APPLIED: &str = "follow_events_applied_total";
/// Time from an event's commit to its delta being applied to the counts.
pub const APPLY_LAG: &str = "follow_event_commit_to_apply_seconds";
/// Stream entries moved to the dead letters after the delivery limit.
pub const DEAD_LETTERS: &str = "follow_events_dead_lettered_total";
/// Pending entries taken over from another (dead or slow) consumer.
pub const EVENTS_RECLAIMED: &str = "follow_events_reclaimed_total";
/// Counts repaired by the scheduled reconcile.
pub const COUNTS_REPAIRED: &str = "follow_reconcile_repaired_total";
/// Events appended to the stream, labelled `source` (writer, relay).
pub const EVENTS_PUBLISHED: &str = "follow_events_published_total";
/// Failed appends, labelled `source`; the events wait in the outbox.
pub const PUBLISH_FAILURES: &str = "follow_events_publish_failures_total";
/// Committed events not applied yet (counted up to `db::outbox::BACKLOG_COUNTED`, 1,000,000).
pub const OUTBOX_BACKLOG: &str = "follow_outbox_backlog";
/// Age of the oldest unapplied event.
pub const OUTBOX_OLDEST_AGE: &str = "follow_outbox_oldest_age_seconds";

/// The Redis circuit breaker: 0 closed, 0.5 half-open, 1 open.
pub const REDIS_BREAKER_STATE: &str = "follow_redis_breaker_state";
/// Breaker state changes, labelled `to`.
pub const REDIS_BREAKER_TRANSITIONS: &str = "follow_redis_breaker_transitions_total";
/// Concurrent loads of a key that waited for one load in flight instead of querying PostgreSQL, by `cache`.
pub const CACHE_COALESCED: &str = "follow_cache_coalesced_loads_total";
/// Pages read from a replica not yet caught up to their list version, answered but not cached, by `cache`.
pub const CACHE_FILLS_SKIPPED: &str = "follow_cache_fills_skipped_total";
/// Cache invalidation messages applied to this instance's L1, by `kind`.
pub const CACHE_INVALIDATIONS: &str = "follow_cache_invalidations_total";
/// `followEvents` subscriptions open on this instance.
pub const SUBSCRIBERS: &str = "follow_subscriptions_active";
/// Events handed to subscribers on this instance.
pub const SUBSCRIPTION_EVENTS: &str = "follow_subscription_events_total";
/// Subscriptions ended because their client fell too far behind.
pub const SUBSCRIPTIONS_OVERRUN: &str = "follow_subscriptions_overrun_total";
/// Websocket connections open on this instance.
pub const WS_CONNECTIONS: &str = "follow_ws_connections_active";
/// HTTP connections open on this instance (websockets count in `WS_CONNECTIONS` once upgraded).
pub const HTTP_CONNECTIONS: &str = "follow_http_connections_active";
/// Connections refused because the instance held `FOLLOW_MAX_CONNECTIONS`.
pub const HTTP_CONNECTIONS_REFUSED: &str = "follow_http_connections_refused_total";
/// Websockets refused by their caps, by `cap` (`instance`, `client`).
pub const WS_REFUSED: &str = "follow_ws_refused_total";
/// Automatic persisted queries looked up, by `result` (hit, miss, registered).
pub const PERSISTED_QUERIES: &str = "follow_persisted_queries_total";
/// Requests the rate limits refused, by `limit` (the quota's name, or `door` for a client turned away
/// from the penalty box) and `source` (redis, local, penalty_box).
pub const RATE_LIMITED: &str = "follow_rate_limited_total";
/// Rate limit checks answered by the local limiter because Redis was unavailable, by `reason`
/// (breaker_open, error, timeout).
pub const RATE_LIMITER_FALLBACK: &str = "follow_rate_limiter_fallback_total";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process-wide recorder once and returns its handle (calls after the first return the same
/// handle).
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_seconds".to_owned()),
                    &[
                        0.000_1, 0.000_25, 0.000_5, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                        2.5, 5.0, 10.0,
                    ],
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Suffix("_size".to_owned()),
                        &[1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0],
                    )
                });
            let recorder = match builder {
                Ok(builder) => builder.build_recorder(),
                Err(err) => {
                    tracing::error!(error = %err, "metric buckets refused; using summaries");
                    PrometheusBuilder::new().build_recorder()
                }
            };
            let handle = recorder.handle();
            if ::metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics shows this one's series only");
            }
            describe();
            register_known_series();
            handle
        })
        .clone()
}

fn describe() {
    describe_histogram!(
        GRAPHQL_DURATION,
        ::metrics::Unit::Seconds,
        "GraphQL request duration by operation"
    );
    describe_counter!(
        GRAPHQL_REQUESTS,
        "GraphQL requests by class (the latency target they answer to) and outcome (ok, client_error, server_error, cancelled)"
    );
    describe_counter!(
        GRAPHQL_ERRORS,
        "GraphQL errors returned, by extensions.code"
    );
    describe_counter!(CACHE_REQUESTS, "Cache lookups by cache, level and result");
    describe_histogram!(LOADER_BATCH, "Keys per loader batch");
    describe_gauge!(DB_POOL_CONNECTIONS, "PostgreSQL pool connections by state");
    describe_gauge!(
        DB_POOL_WAITING,
        "Requests waiting for a PostgreSQL connection"
    );
    describe_counter!(DB_QUERIES, "SQL statements run by this process");
    describe_counter!(
        DB_READS,
        "Reads routed to the primary or a read replica, by target and what they read"
    );
    describe_gauge!(
        DB_REPLICA_LAG,
        ::metrics::Unit::Seconds,
        "How far each read replica is behind the primary, by replica"
    );
    describe_gauge!(
        DB_REPLICA_LAG_BYTES,
        ::metrics::Unit::Bytes,
        "WAL bytes each read replica has yet to replay, by replica"
    );
    describe_gauge!(
        DB_REPLICA_UP,
        "Whether each read replica takes reads (1) or is skipped (0)"
    );
    describe_counter!(
        DB_REPLICA_FALLBACKS,
        "Reads that failed on a replica and ran again on the primary, by replica"
    );
    describe_gauge!(REDIS_POOL_CONNECTIONS, "Redis pool connections by state");
    describe_gauge!(
        REDIS_POOL_WAITING,
        "Requests waiting for a Redis connection"
    );
    describe_gauge!(STREAM_LENGTH, "Entries in the follow event stream");
    describe_gauge!(
        STREAM_PENDING,
        "Entries delivered to the counters group and not acknowledged"
    );
    describe_gauge!(
        STREAM_LAG,
        "Entries not yet delivered to the counters group"
    );
    describe_gauge!(STREAM_DEAD_LETTERS, "Entries in the dead-letter stream");
    describe_gauge!(
        PG_WAL_BYTES,
        "PostgreSQL server's WAL insert position in bytes (sampled; all databases)"
    );
    describe_gauge!(
        REDIS_COMMANDS,
        "Redis server's total_commands_processed (sampled; every client)"
    );
    describe_gauge!(
        DB_WRITE_POOL_CONNECTIONS,
        "PostgreSQL write-pool connections (group commit, consumers) by state"
    );
    describe_gauge!(
        DB_WRITE_POOL_WAITING,
        "Batches waiting for a write-pool connection"
    );
    describe_histogram!(
        WRITE_BATCH,
        "Edge changes per group-commit batch (one statement, one commit, one Redis round trip)"
    );
    describe_counter!(
        WRITE_BATCH_RETRIES,
        "Group-commit batches run again after a deadlock or serialization failure"
    );
    describe_counter!(
        EDGE_CHANGES,
        "Edges changed by the write path (one event each)"
    );
    describe_histogram!(CONSUMER_BATCH, "Stream entries per consumer batch");
    describe_histogram!(
        CONSUMER_APPLY,
        ::metrics::Unit::Seconds,
        "Time to apply one consumer batch"
    );
    describe_counter!(
        EVENTS_APPLIED,
        "Events applied to the counters (each exactly once)"
    );
    describe_counter!(EVENTS_PUBLISHED, "Events appended to the stream, by source");
    describe_histogram!(
        APPLY_LAG,
        ::metrics::Unit::Seconds,
        "Time from an event's commit to its count update"
    );
    describe_counter!(DEAD_LETTERS, "Stream entries moved to the dead letters");
    describe_counter!(
        EVENTS_RECLAIMED,
        "Pending entries taken over from another consumer"
    );
    describe_counter!(
        COUNTS_REPAIRED,
        "Users whose counts the scheduled reconcile repaired"
    );
    describe_counter!(PUBLISH_FAILURES, "Failed stream appends, by source");
    describe_gauge!(
        REDIS_BREAKER_STATE,
        "Redis circuit breaker: 0 closed, 0.5 half-open, 1 open"
    );
    describe_counter!(
        REDIS_BREAKER_TRANSITIONS,
        "Redis circuit breaker state changes"
    );
    describe_counter!(
        CACHE_COALESCED,
        "Loads that joined a load of the same key in flight"
    );
    describe_counter!(
        CACHE_FILLS_SKIPPED,
        "Pages answered from a replica not caught up to their list version, so not cached"
    );
    describe_counter!(
        CACHE_INVALIDATIONS,
        "Cache invalidations applied to this instance's L1"
    );
    describe_gauge!(
        SUBSCRIBERS,
        "followEvents subscriptions open on this instance"
    );
    describe_counter!(SUBSCRIPTION_EVENTS, "Events handed to subscribers");
    describe_counter!(
        SUBSCRIPTIONS_OVERRUN,
        "Subscriptions ended because their client fell behind"
    );
    describe_gauge!(
        WS_CONNECTIONS,
        "Websocket connections open on this instance"
    );
    describe_gauge!(HTTP_CONNECTIONS, "HTTP connections open on this instance");
    describe_counter!(
        HTTP_CONNECTIONS_REFUSED,
        "Connections refused because the instance was at FOLLOW_MAX_CONNECTIONS"
    );
    describe_counter!(
        WS_REFUSED,
        "Websockets refused by their caps, by cap (instance, client)"
    );
    describe_counter!(
        PERSISTED_QUERIES,
        "Automatic persisted query lookups, by result"
    );
    describe_gauge!(
        OUTBOX_BACKLOG,
        "Committed events not yet applied (counted up to 1,000,000)"
    );
    describe_gauge!(
        OUTBOX_OLDEST_AGE,
        ::metrics::Unit::Seconds,
        "Age of the oldest unapplied event"
    );
    describe_counter!(
        RATE_LIMITED,
        "Requests refused by the rate limiter, by limit and source"
    );
    describe_counter!(
        RATE_LIMITER_FALLBACK,
        "Rate limit checks answered locally because Redis was unavailable, by reason"
    );
}

/// Most distinct operation names kept as labels; past it, new names count as `other` (a client sending
/// random names must not grow the series without bound).
const MAX_OPERATION_NAMES: usize = 200;

/// The label of requests without an operation name.
const ANONYMOUS: &str = "anonymous";
/// The label of the names that are not kept as labels.
const OTHER: &str = "other";

/// The label for a client's operation name: itself if short and plain and among the first names seen.
pub fn operation_label(name: Option<&str>) -> String {
    static SEEN: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let Some(name) = name else {
        return ANONYMOUS.to_owned();
    };
    let plain = name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !plain {
        return OTHER.to_owned();
    }
    let seen = SEEN.get_or_init(|| Mutex::new(HashSet::new()));
    let Ok(mut seen) = seen.lock() else {
        return OTHER.to_owned();
    };
    if seen.contains(name) || seen.len() < MAX_OPERATION_NAMES {
        seen.insert(name.to_owned());
        name.to_owned()
    } else {
        OTHER.to_owned()
    }
}

/// Which of the service's latency targets a request answers to: the costliest field it asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RequestClass {
    /// Introspection, `__typename`, federation's `_service`: nothing of the follow graph.
    Other,
    /// Users by id or handle, `upsertUser`.
    User,
    /// Follower and following counts.
    Count,
    /// Follow status of pairs.
    Status,
    /// Follower and following pages.
    List,
    /// Follows and unfollows.
    Write,
    /// `followEvents`.
    Subscription,
}

impl RequestClass {
    /// Every class, for the series that exist from the start.
    pub const ALL: [Self; 7] = [
        Self::Other,
        Self::User,
        Self::Count,
        Self::Status,
        Self::List,
        Self::Write,
        Self::Subscription,
    ];

    /// The `class` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Other => "other",
            Self::User => "user",
            Self::Count => "count",
            Self::Status => "status",
            Self::List => "list",
            Self::Write => "write",
            Self::Subscription => "subscription",
        }
    }
}

/// How a request ended, worst last: a request with client and server errors is a server error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// Answered without errors.
    Ok,
    /// Answered with errors of the client's making (validation, bad input, not found, rate limited).
    ClientError,
    /// Answered with `INTERNAL_SERVER_ERROR` or `SERVICE_UNAVAILABLE`.
    ServerError,
    /// Not answered: the request timeout struck, or the client went away first.
    Cancelled,
}

impl Outcome {
    /// Every outcome, for the series that exist from the start.
    pub const ALL: [Self; 4] = [
        Self::Ok,
        Self::ClientError,
        Self::ServerError,
        Self::Cancelled,
    ];

    /// The `outcome` label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::ClientError => "client_error",
            Self::ServerError => "server_error",
            Self::Cancelled => "cancelled",
        }
    }
}

/// The request counters, class by class in [`RequestClass::ALL`]'s order, each outcome in
/// [`Outcome::ALL`]'s: built once with the recorder, since building a labelled handle hashes its labels.
static REQUEST_COUNTERS: OnceLock<Vec<::metrics::Counter>> = OnceLock::new();

fn request_counter(class: RequestClass, outcome: Outcome) -> ::metrics::Counter {
    ::metrics::counter!(GRAPHQL_REQUESTS, "class" => class.label(), "outcome" => outcome.label())
}

/// Counts one request of `class` that ended with `outcome`.
pub fn count_request(class: RequestClass, outcome: Outcome) {
    let index = class as usize * Outcome::ALL.len() + outcome as usize;
    match REQUEST_COUNTERS
        .get()
        .and_then(|counters| counters.get(index))
    {
        Some(counter) => counter.increment(1),
        None => request_counter(class, outcome).increment(1),
    }
}

/// The duration histogram of an operation (`name` as [`operation_label`] bounds it, `ty` its type,
/// `class` its target), looked up once and kept: building and hashing its labels took a lock and
/// several allocations on every request. Handles are kept only once the recorder is installed (one
/// taken before would record nowhere, for good).
pub fn graphql_duration(
    name: Option<&str>,
    ty: &'static str,
    class: RequestClass,
) -> ::metrics::Histogram {
    type Kept = Vec<(&'static str, RequestClass, ::metrics::Histogram)>;
    type Handles = RwLock<HashMap<Box<str>, Kept>>;
    static HANDLES: OnceLock<Handles> = OnceLock::new();
    let handles = HANDLES.get_or_init(Handles::default);
    let key = name.unwrap_or(ANONYMOUS);
    let found = handles.read().ok().and_then(|map| {
        map.get(key)?
            .iter()
            .find(|(t, c, _)| *t == ty && *c == class)
            .map(|(_, _, histogram)| histogram.clone())
    });
    if let Some(histogram) = found {
        return histogram;
    }
    let label = operation_label(name);
    let histogram = ::metrics::histogram!(
        GRAPHQL_DURATION,
        "operation_name" => label.clone(),
        "operation_type" => ty,
        "class" => class.label(),
    );
    // A name past the bound is labelled `other`, and not kept under its own name.
    if HANDLE.get().is_some()
        && (label == key || label == OTHER)
        && let Ok(mut map) = handles.write()
    {
        let kept = map.entry(label.into_boxed_str()).or_default();
        if !kept.iter().any(|(t, c, _)| *t == ty && *c == class) {
            kept.push((ty, class, histogram.clone()));
        }
    }
    histogram
}

/// Registers at zero the counters whose label values are known in advance and have no owner that
/// registers them (the breaker, the producers and the limiter register their own), so that a fresh
/// instance exports them: a rate or `increase()` over a series that appears at its first event misses that
/// event, and an alert on it could never fire for the first one.
fn register_known_series() {
    let requests = RequestClass::ALL
        .into_iter()
        .flat_map(|class| Outcome::ALL.map(|outcome| request_counter(class, outcome)))
        .inspect(|counter| counter.absolute(0))
        .collect();
    let _ = REQUEST_COUNTERS.set(requests);
    for cache in ["status", "counts", "users", "lists", "sets"] {
        ::metrics::counter!(CACHE_COALESCED, "cache" => cache).absolute(0);
        if cache == "lists" {
            ::metrics::counter!(CACHE_FILLS_SKIPPED, "cache" => cache).absolute(0);
        }
        for level in ["l1", "l2"] {
            for result in ["hit", "miss"] {
                ::metrics::counter!(CACHE_REQUESTS, "cache" => cache, "level" => level, "result" => result)
                    .absolute(0);
            }
        }
    }
    for result in ["hit", "miss", "registered"] {
        ::metrics::counter!(PERSISTED_QUERIES, "result" => result).absolute(0);
    }
    // The lag-tolerant kinds, on both targets; the primary-only kinds appear at their first read.
    for target in ["primary", "replica"] {
        for what in ["users", "counts", "lists", "known_followers"] {
            ::metrics::counter!(DB_READS, "target" => target, "what" => what).absolute(0);
        }
    }
    for cap in ["instance", "client"] {
        ::metrics::counter!(WS_REFUSED, "cap" => cap).absolute(0);
    }
    // The quotas' names are the limiter's; the penalty box's door is the one refusal known here.
    ::metrics::counter!(RATE_LIMITED, "limit" => "door", "source" => "penalty_box").absolute(0);
    for name in [
        DEAD_LETTERS,
        EVENTS_RECLAIMED,
        EVENTS_APPLIED,
        COUNTS_REPAIRED,
        EDGE_CHANGES,
        WRITE_BATCH_RETRIES,
        SUBSCRIPTIONS_OVERRUN,
        SUBSCRIPTION_EVENTS,
        HTTP_CONNECTIONS_REFUSED,
    ] {
        ::metrics::counter!(name).absolute(0);
    }
    // Gauges set on change: present from the start, at their resting value (0 unless already set).
    for name in [SUBSCRIBERS, WS_CONNECTIONS, HTTP_CONNECTIONS] {
        gauge!(name).increment(0.0);
    }
}

/// Registers at zero the error counter of each of `codes` (the service's `extensions.code` values) and of
/// `GRAPHQL_VALIDATION`, which parse and validation errors count as (they carry no code of ours), so that
/// a fresh instance exports them. A counter already counting keeps its count.
pub fn register_error_codes(codes: impl IntoIterator<Item = &'static str>) {
    install();
    for code in codes.into_iter().chain(["GRAPHQL_VALIDATION"]) {
        ::metrics::counter!(GRAPHQL_ERRORS, "code" => code).increment(0);
    }
}

/// Runs the recorder's upkeep (histograms' recent samples folded into their buckets) once it is
/// installed; the gauge sampler calls it on every sample.
pub fn run_upkeep() {
    if let Some(handle) = HANDLE.get() {
        handle.run_upkeep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_counters_are_indexed_in_the_order_of_all() {
        for (i, class) in RequestClass::ALL.into_iter().enumerate() {
            assert_eq!(class as usize, i, "{class:?}");
        }
        for (i, outcome) in Outcome::ALL.into_iter().enumerate() {
            assert_eq!(outcome as usize, i, "{outcome:?}");
        }
    }

    #[test]
    fn operation_names_are_bounded() {
        assert_eq!(operation_label(None), "anonymous");
        assert_eq!(operation_label(Some("FollowersPage")), "FollowersPage");
        assert_eq!(operation_label(Some("has space")), "other");
        assert_eq!(operation_label(Some(&"x".repeat(65))), "other");
        for i in 0..MAX_OPERATION_NAMES + 10 {
            operation_label(Some(&format!("Op{i}")));
        }
        assert_eq!(operation_label(Some("BrandNewName")), "other");
        assert_eq!(operation_label(Some("FollowersPage")), "FollowersPage");
    }
}
