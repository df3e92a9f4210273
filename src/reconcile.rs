//! Reconciling counts with edges: on demand (`reconcile [--fix]`) and, with `FOLLOW_RECONCILE_EVERY_S`,
//! on a schedule. A repair holds a PostgreSQL advisory lock for its transaction, so one repairs at a
//! time (a scheduled run skips its turn while another holds it; one run by hand waits): repairing adds
//! the difference to the current count, which is safe while the consumers apply events (see
//! `db::stats::fix_drift`) but not beside another repair, which would add the same difference again.

use std::time::Duration;

use tokio::sync::watch;

use crate::{
    cache::Caches,
    db::{
        self, DbPool,
        stats::{Drift, WhenLocked},
    },
    telemetry::metrics::COUNTS_REPAIRED,
};

/// Finds drift and, with `fix`, repairs it (waiting for any other repair to finish) and forgets the
/// repaired counts in the caches.
pub async fn reconcile(db: &DbPool, caches: &Caches, fix: bool) -> anyhow::Result<Vec<Drift>> {
    let mut conn = db::connect(db).await?;
    if !fix {
        return Ok(db::stats::find_drift(&mut conn).await?);
    }
    Ok(repair(conn, caches, WhenLocked::Wait)
        .await?
        .unwrap_or_default())
}

/// Repairs drift under the reconcile lock (`None`: another repair held it and `when_locked` skips),
/// then writes the repaired counts into the caches.
async fn repair(
    mut conn: db::DbConn,
    caches: &Caches,
    when_locked: WhenLocked,
) -> anyhow::Result<Option<Vec<Drift>>> {
    let Some(repaired) = db::stats::fix_drift_locked(&mut conn, when_locked).await? else {
        return Ok(None);
    };
    drop(conn);
    let counts: Vec<_> = repaired.iter().map(|r| (&r.counts).into()).collect();
    caches.record_counts(&counts).await;
    Ok(Some(repaired.into_iter().map(|r| r.drift).collect()))
}

/// Runs `reconcile --fix` every `period` (when this instance gets the lock) until `shutdown`.
pub async fn run_every(
    db: DbPool,
    caches: Caches,
    period: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    while !*shutdown.borrow() {
        tokio::select! {
            _ = tokio::time::sleep(period) => {},
            _ = shutdown.changed() => break,
        }
        let pass = async {
            let conn = db::connect(&db).await?;
            repair(conn, &caches, WhenLocked::Skip).await
        };
        match pass.await {
            Ok(Some(drift)) if !drift.is_empty() => {
                ::metrics::counter!(COUNTS_REPAIRED).increment(drift.len() as u64);
                for d in &drift {
                    tracing::warn!(
                        user = d.user_id,
                        followers = %format!("{} -> {}", d.stored_followers, d.expected_followers),
                        following = %format!("{} -> {}", d.stored_following, d.expected_following),
                        "scheduled reconcile repaired a count"
                    );
                }
            }
            Ok(_) => tracing::debug!("scheduled reconcile: every count matches"),
            Err(err) => tracing::warn!(error = %format!("{err:#}"), "scheduled reconcile failed"),
        }
    }
}
