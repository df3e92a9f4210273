//! Viewers active recently, on any instance: remembered in Redis so that an instance starting up warms
//! their following sets first.

use super::Caches;

/// Most viewers remembered as recently active.
const ACTIVE_KEPT: usize = 10_000;

impl Caches {
    /// Notes a viewer as active (remembered in Redis every few seconds, for warm-up).
    pub fn note_active(&self, viewer: i64) {
        if !self.settings.enabled {
            return;
        }
        if let Ok(mut active) = self.active.lock()
            && active.len() < ACTIVE_KEPT
        {
            active.insert(viewer);
        }
    }

    /// Adds the viewers noted since the last call to Redis's active-viewers set, which keeps the
    /// `ACTIVE_KEPT` most recent.
    pub async fn flush_active(&self) {
        let seen: Vec<i64> = match self.active.lock() {
            Ok(mut active) => active.drain().collect(),
            Err(_) => return,
        };
        if seen.is_empty() {
            return;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let scored: Vec<(f64, i64)> = seen.into_iter().map(|v| (now, v)).collect();
        self.l2
            .record_active(&self.names.active_viewers(), &scored, ACTIVE_KEPT)
            .await;
    }

    /// The `n` viewers active most recently (any instance), for warm-up; empty when Redis is unavailable.
    pub async fn active_viewers(&self, n: usize) -> Vec<i64> {
        self.l2
            .top_members(&self.names.active_viewers(), n.min(ACTIVE_KEPT))
            .await
            .unwrap_or_default()
    }
}
