//! Redis outages: the breaker's probe when no request calls Redis, and the repair of the keys that
//! writes could not update (deleted, and their L1 entries dropped everywhere, before Redis is read again).

use super::Caches;

impl Caches {
    /// Lets an open breaker probe Redis even when no request does, and repairs keys that writes could not
    /// update (called every second by the invalidation subscriber and by the metrics sampler).
    pub async fn probe(&self) {
        if !self.settings.enabled {
            // No cache to repair, but the breaker is shared (the rate limiter and the producer open it
            // too): without this probe nothing would close it again.
            if !self.l2.available() {
                self.l2.ping().await;
            }
            return;
        }
        if self.l2.available() {
            self.l2.repair_dirty().await;
        } else {
            self.l2.ping().await;
        }
    }
}
