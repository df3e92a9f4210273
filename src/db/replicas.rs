//! The read router: a read that may lag goes to a streaming replica that has replayed enough of the
//! primary's WAL, every other read to the primary. A probe compares WAL positions every
//! `FOLLOW_REPLICA_PROBE_MS`: it reads the primary's insert position, noting the time just before, and
//! each replica's replay position; a replica whose replay passed a noted position holds every commit made
//! before that position's time ("caught up to" it). Time lag alone would mislead: on an idle primary the
//! last replayed commit grows old while the replica is current.
//!
//! A replica is used for a read only if it is caught up to what the read needs ([`Freshness`]) and to no
//! older than `FOLLOW_REPLICA_MAX_LAG_MS` ago; a replica that errors is skipped until the next probe finds
//! it well, and its read runs again on the primary. Nothing here fails a read that the primary can serve.

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use ::metrics::{counter, gauge};

use super::{DbConn, DbPool, StoreError, StoreResult, connect};
use crate::telemetry::metrics::{
    DB_READS, DB_REPLICA_FALLBACKS, DB_REPLICA_LAG, DB_REPLICA_LAG_BYTES, DB_REPLICA_UP,
};

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    /// Every commit so far: the primary (a viewer's own pairs, a mutation's payload, consent checks).
    Primary,
    /// What any replica within the lag bound holds (list pages, counts, users, known followers).
    MayLag,
    /// Every commit made before this instant, in microseconds since the Unix epoch: a viewer's reads after
    /// its own write, a cache fill stored under a version dated this instant.
    Since(i64),
}

impl Freshness {
    /// The stricter of the two.
    pub fn and(self, other: Self) -> Self {
        match (self, other) {
            (Self::Primary, _) | (_, Self::Primary) => Self::Primary,
            (Self::Since(a), Self::Since(b)) => Self::Since(a.max(b)),
            (Self::Since(a), Self::MayLag) | (Self::MayLag, Self::Since(a)) => Self::Since(a),
            (Self::MayLag, Self::MayLag) => Self::MayLag,
        }
    }
}

/// How fresh the primary's answer is, in [`Reads::run_as_of`]: every commit made before it began.
pub const ALL_COMMITS: i64 = i64::MAX;

/// Microseconds since the Unix epoch, the clock every [`Freshness::Since`] is read on.
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Where reads went, since the router was built (tests read it; `/metrics` has `follow_db_reads_total`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadCounts {
    pub primary: u64,
    pub replica: u64,
    /// Reads that failed on a replica and ran again on the primary (counted under `primary` too).
    pub fallbacks: u64,
}

/// One replica: its pools and how far it is known to have replayed.
struct Replica {
    /// `host:port`, the metrics' `replica` label.
    label: String,
    pool: DbPool,
    /// One connection for the probe, whose statements count nowhere (statement counts are the reads').
    probe: DbPool,
    /// Every commit the primary made before this instant (µs since the epoch) is replayed here; 0: not
    /// known, or the replica failed since the last probe.
    caught_up: AtomicI64,
}

struct Inner {
    primary: DbPool,
    /// One primary connection for the probe, apart from the reads for the same reason.
    primary_probe: DbPool,
    replicas: Vec<Replica>,
    max_lag_us: i64,
    /// Round robin among the replicas caught up enough.
    next: AtomicUsize,
    primary_reads: AtomicU64,
    replica_reads: AtomicU64,
    fallbacks: AtomicU64,
}

/// The read router over the primary's read pool and one pool per replica; cheap to clone.
#[derive(Clone)]
pub struct Reads(Arc<Inner>);

impl Reads {
    /// A router over `primary` and `replicas`; each with a probe pool beside (one connection, opened
    /// only when [`Self::spawn_probe`] runs). Until a probe has seen a replica caught up, reads go to
    /// the primary.
    pub fn new(primary: (DbPool, DbPool), replicas: Vec<ReplicaPools>, max_lag: Duration) -> Self {
        let (primary, primary_probe) = primary;
        // Counter handles taken before the recorder exists would count nowhere.
        crate::telemetry::metrics::install();
        let replicas = replicas
            .into_iter()
            .map(
                |ReplicaPools {
                     label,
                     reads,
                     probe,
                 }| {
                    gauge!(DB_REPLICA_UP, "replica" => label.clone()).set(0.0);
                    Replica {
                        label,
                        pool: reads,
                        probe,
                        caught_up: AtomicI64::new(0),
                    }
                },
            )
            .collect();
        Self(Arc::new(Inner {
            primary,
            primary_probe,
            replicas,
            max_lag_us: max_lag.as_micros() as i64,
            next: AtomicUsize::new(0),
            primary_reads: AtomicU64::new(0),
            replica_reads: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
        }))
    }

    /// Starts the probe on the current Tokio runtime; it ends by itself once every clone of the router
    /// is dropped (it holds a weak reference), so the router needs no task list of its own. Outside a
    /// runtime, or without replicas, it starts nothing and every read goes to the primary.
    pub fn spawn_probe(&self, every: Duration) {
        if self.0.replicas.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                "no runtime to probe the read replicas on: every read goes to the primary"
            );
            return;
        };
        let weak = Arc::downgrade(&self.0);
        // Samples over twice the lag bound: a replica further behind is skipped anyway.
        let keep = (self.0.max_lag_us / every.as_micros().max(1) as i64) as usize * 2 + 4;
        runtime.spawn(async move {
            let mut samples = VecDeque::with_capacity(keep);
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                ticker.tick().await;
                let Some(inner) = weak.upgrade() else {
                    return;
                };
                inner.probe(&mut samples, keep, every).await;
            }
        });
    }

    /// The primary's read pool, for the reads that must see every commit and take several statements.
    pub fn primary(&self) -> &DbPool {
        &self.0.primary
    }

    /// How far behind a replica may be and still take reads.
    pub fn max_lag(&self) -> Duration {
        Duration::from_micros(self.0.max_lag_us.max(0) as u64)
    }

    /// Whether any replica is configured.
    pub fn has_replicas(&self) -> bool {
        !self.0.replicas.is_empty()
    }

    /// A primary connection for one read that must see every commit, counted as a primary read (for a
    /// read that cannot run twice, as [`Self::run`] may).
    pub async fn primary_read(&self, what: &'static str) -> StoreResult<DbConn> {
        self.0.primary_reads.fetch_add(1, Ordering::Relaxed);
        counter!(DB_READS, "target" => "primary", "what" => what).increment(1);
        connect(&self.0.primary).await
    }

    /// Where reads went so far.
    pub fn counts(&self) -> ReadCounts {
        ReadCounts {
            primary: self.0.primary_reads.load(Ordering::Relaxed),
            replica: self.0.replica_reads.load(Ordering::Relaxed),
            fallbacks: self.0.fallbacks.load(Ordering::Relaxed),
        }
    }

    /// Runs one read (`statement` on a connection) where `freshness` allows (`what` it reads labels its
    /// count): a replica caught up enough,
    /// else the primary. A read that fails on a replica runs again on the primary, so a replica's trouble
    /// costs time, never an error.
    pub async fn run<T, F, Fut>(
        &self,
        freshness: Freshness,
        what: &'static str,
        statement: F,
    ) -> StoreResult<T>
    where
        F: FnMut(DbConn) -> Fut,
        Fut: std::future::Future<Output = StoreResult<T>>,
    {
        Ok(self.run_as_of(freshness, what, statement).await?.0)
    }

    /// [`Self::run`], also telling how fresh its answer is: every commit made before the returned
    /// instant (µs since the epoch) is in it; [`ALL_COMMITS`] when the primary answered (it holds every
    /// commit made before the statement began).
    pub async fn run_as_of<T, F, Fut>(
        &self,
        freshness: Freshness,
        what: &'static str,
        mut statement: F,
    ) -> StoreResult<(T, i64)>
    where
        F: FnMut(DbConn) -> Fut,
        Fut: std::future::Future<Output = StoreResult<T>>,
    {
        let inner = &*self.0;
        if let Some((replica, caught_up)) = inner.pick(freshness) {
            let failure = match replica.pool.get().await {
                Ok(conn) => match statement(conn).await {
                    Ok(value) => {
                        inner.replica_reads.fetch_add(1, Ordering::Relaxed);
                        counter!(DB_READS, "target" => "replica", "what" => what).increment(1);
                        return Ok((value, caught_up));
                    }
                    Err(err) => err,
                },
                Err(err) => StoreError::Unavailable(err.to_string()),
            };
            if matches!(failure, StoreError::Unavailable(_)) {
                // Down (or its database not there yet): skipped until a probe finds it well.
                replica.caught_up.store(0, Ordering::Relaxed);
            }
            tracing::warn!(replica = %replica.label, error = %failure, "read failed on a replica; the primary serves it");
            inner.fallbacks.fetch_add(1, Ordering::Relaxed);
            counter!(DB_REPLICA_FALLBACKS, "replica" => replica.label.clone()).increment(1);
        }
        inner.primary_reads.fetch_add(1, Ordering::Relaxed);
        counter!(DB_READS, "target" => "primary", "what" => what).increment(1);
        let conn = connect(&inner.primary).await?;
        Ok((statement(conn).await?, ALL_COMMITS))
    }
}

impl Reads {
    /// Whether every replica has replayed what the primary had written when this was called (tests wait
    /// on it after writing past the service, so that their reads through a replica see those writes). A
    /// replica that cannot answer (down, or without the database yet) is an error, never caught up: it
    /// may take reads a moment later.
    pub async fn replicas_caught_up(&self) -> StoreResult<bool> {
        let target = {
            let mut conn = connect(&self.0.primary_probe).await?;
            super::wal_position(&mut conn).await?
        };
        for replica in &self.0.replicas {
            if replay_position(&replica.probe)
                .await?
                .is_some_and(|replayed| replayed < target)
            {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

impl Inner {
    /// A replica caught up to what `freshness` needs (round robin among them), with how far it had
    /// caught up when picked; or none: the primary.
    fn pick(&self, freshness: Freshness) -> Option<(&Replica, i64)> {
        if self.replicas.is_empty() {
            return None;
        }
        let oldest = now_micros() - self.max_lag_us;
        let needed = match freshness {
            Freshness::Primary => return None,
            Freshness::MayLag => oldest,
            Freshness::Since(at) => at.max(oldest),
        };
        let n = self.replicas.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..n)
            .map(|i| &self.replicas[(start + i) % n])
            .map(|replica| (replica, replica.caught_up.load(Ordering::Relaxed)))
            .find(|&(_, caught_up)| caught_up >= needed)
    }

    /// One probe: the primary's position (kept with the time read), then each replica's replay,
    /// concurrently; each answer within `budget`.
    async fn probe(&self, samples: &mut VecDeque<(i64, i64)>, keep: usize, budget: Duration) {
        let before = now_micros();
        let primary = async {
            let mut conn = connect(&self.primary_probe).await?;
            super::wal_position(&mut conn).await
        };
        // The primary unreadable: its older samples still date what the replicas replayed.
        if let Ok(Ok(position)) = tokio::time::timeout(budget, primary).await {
            if samples.len() == keep {
                samples.pop_front();
            }
            samples.push_back((before, position));
        }
        let newest = samples.back().map(|&(_, position)| position);
        let probes = self.replicas.iter().map(|replica| async move {
            let replayed = tokio::time::timeout(budget, replay_position(&replica.probe)).await;
            (replica, replayed)
        });
        for (replica, replayed) in futures::future::join_all(probes).await {
            let probed = match replayed {
                Ok(Ok(Some(replayed))) => {
                    if let Some(newest) = newest {
                        gauge!(DB_REPLICA_LAG_BYTES, "replica" => replica.label.clone())
                            .set(newest.saturating_sub(replayed).max(0) as f64);
                    }
                    Probed::Replayed(replayed)
                }
                Ok(Ok(None)) => {
                    tracing::warn!(replica = %replica.label, "not a replica (no replay position): skipped");
                    Probed::Unusable
                }
                Ok(Err(err)) => {
                    tracing::debug!(replica = %replica.label, error = %err, "replica probe failed");
                    Probed::Unusable
                }
                Err(_) => {
                    tracing::debug!(replica = %replica.label, "replica probe timed out");
                    Probed::TimedOut
                }
            };
            match probed.caught_up(samples) {
                CaughtUp::AtLeast(at) => {
                    replica.caught_up.fetch_max(at, Ordering::Relaxed);
                }
                CaughtUp::Unknown => replica.caught_up.store(0, Ordering::Relaxed),
                CaughtUp::AsBefore => {}
            }
            let caught_up = replica.caught_up.load(Ordering::Relaxed);
            let now = now_micros();
            if caught_up > 0 {
                gauge!(DB_REPLICA_LAG, "replica" => replica.label.clone())
                    .set((now - caught_up).max(0) as f64 / 1e6);
            }
            let up = caught_up >= now - self.max_lag_us;
            gauge!(DB_REPLICA_UP, "replica" => replica.label.clone()).set(f64::from(u8::from(up)));
            // The series exists before the first fallback (the dashboard and rates read it).
            counter!(DB_REPLICA_FALLBACKS, "replica" => replica.label.clone()).increment(0);
        }
    }
}

/// What one probe of a replica found.
#[derive(Debug, Clone, Copy)]
enum Probed {
    /// Its replay position, in bytes of WAL.
    Replayed(i64),
    /// An error, or a server that replays nothing: it takes no reads until a probe finds it well.
    Unusable,
    /// No answer within the probe's budget.
    TimedOut,
}

/// What a probe tells of the instant a replica holds every commit before.
#[derive(Debug, PartialEq)]
enum CaughtUp {
    AtLeast(i64),
    Unknown,
    AsBefore,
}

impl Probed {
    fn caught_up(self, samples: &VecDeque<(i64, i64)>) -> CaughtUp {
        match self {
            // The newest sample of the primary it has replayed dates every commit it holds.
            Self::Replayed(replayed) => samples
                .iter()
                .rev()
                .find(|&&(_, position)| position <= replayed)
                .map_or(CaughtUp::AsBefore, |&(at, _)| CaughtUp::AtLeast(at)),
            Self::Unusable => CaughtUp::Unknown,
            // Slow, not behind: it still holds what it held, and the lag bound ages that instant out
            // if it stays silent. Forgetting it sent every read to the primary at each slow probe (the
            // budget is one probe interval, 50 ms), which is when the primary can least afford them.
            Self::TimedOut => CaughtUp::AsBefore,
        }
    }
}

/// The pools of one replica, as [`Reads::new`] takes them.
pub struct ReplicaPools {
    /// `host:port`, the metrics' `replica` label (see [`label`]).
    pub label: String,
    /// The reads' pool.
    pub reads: DbPool,
    /// The probe's pool: one connection, its statements counted nowhere.
    pub probe: DbPool,
}

#[derive(diesel::QueryableByName)]
struct ReplayPosition {
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::BigInt>)]
    bytes: Option<i64>,
}

/// How far a replica has replayed the primary's WAL, in bytes (`None` on a server not in recovery).
async fn replay_position(pool: &DbPool) -> StoreResult<Option<i64>> {
    use diesel_async::RunQueryDsl;
    let mut conn = connect(pool).await?;
    let row: ReplayPosition = diesel::sql_query(
        "SELECT pg_wal_lsn_diff(pg_last_wal_replay_lsn(), '0/0')::bigint AS bytes",
    )
    .get_result(&mut conn)
    .await?;
    Ok(row.bytes)
}

/// The `host:port` of a PostgreSQL URL, for the `replica` label (never its credentials).
pub fn label(url: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let after_user = after_scheme
        .rsplit_once('@')
        .map_or(after_scheme, |(_, rest)| rest);
    after_user
        .split(['/', '?'])
        .next()
        .unwrap_or(after_user)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_probe_dates_a_replica_by_the_newest_primary_sample_it_replayed_and_a_slow_one_changes_nothing()
     {
        let samples: VecDeque<(i64, i64)> = [(100, 10), (200, 20), (300, 30)].into();
        assert_eq!(
            Probed::Replayed(25).caught_up(&samples),
            CaughtUp::AtLeast(200)
        );
        assert_eq!(
            Probed::Replayed(30).caught_up(&samples),
            CaughtUp::AtLeast(300)
        );
        assert_eq!(Probed::Replayed(5).caught_up(&samples), CaughtUp::AsBefore);
        assert_eq!(Probed::TimedOut.caught_up(&samples), CaughtUp::AsBefore);
        assert_eq!(Probed::Unusable.caught_up(&samples), CaughtUp::Unknown);
    }

    #[test]
    fn the_stricter_freshness_wins() {
        use Freshness::*;
        assert_eq!(MayLag.and(Since(5)), Since(5));
        assert_eq!(Since(7).and(Since(5)), Since(7));
        assert_eq!(Since(7).and(Primary), Primary);
        assert_eq!(MayLag.and(MayLag), MayLag);
    }

    #[test]
    fn labels_name_host_and_port_only() {
        assert_eq!(
            label("postgres://app:secret@db-replica-1:5433/follow?sslmode=require"),
            "db-replica-1:5433"
        );
        assert_eq!(label("postgres://127.0.0.1:5433/x"), "127.0.0.1:5433");
    }
}
