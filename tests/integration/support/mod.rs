//! What the integration tests share, by job: [`databases`] (a migrated database per test),
//! [`app`] (the test app and more instances beside it), [`requests`] (HTTP and GraphQL requests in
//! process), [`redis`] (the test Redis, a proxy to cut it, raw keys), [`ws`] (a websocket client), and
//! [`eventually`].
//!
//! `TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`) and `TEST_REDIS_URL`
//! (default `redis://127.0.0.1:6379`) point the tests at other servers. `TEST_LOG=1` prints logs.

pub mod app;
pub mod databases;
pub mod redis;
pub mod requests;
pub mod ws;

use std::time::{Duration, Instant};

pub use app::{Options, Served, TEST_SECRET, TestApp, serve};
pub use databases::{database_url, fresh_database, server_url};
pub use redis::{
    RedisProxy, redis_connection, redis_forget, redis_get, redis_members, redis_target,
};
pub use requests::{fail_on, graphql_post, ok_on, post, query_body, run_as, run_on, send};

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
