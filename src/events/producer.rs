//! Appends committed events to the Redis Stream (XADD), within a short time budget.

use std::{sync::Arc, time::Duration};

use anyhow::Context;

use super::{FollowEvent, StreamNames};
use crate::{
    redis_health::RedisHealth,
    redis_pool::{RedisPool, redis},
    telemetry::metrics::{EVENTS_PUBLISHED, PUBLISH_FAILURES},
};

/// Publishes events to the stream; cheap to clone.
#[derive(Clone)]
pub struct Producer {
    redis: RedisPool,
    names: StreamNames,
    timeout: Duration,
    /// Who publishes (`writer` or `relay`), for metrics.
    source: &'static str,
    /// The Redis circuit breaker: while open, writers skip the XADD (the relay publishes later).
    health: Arc<RedisHealth>,
}

impl Producer {
    pub fn new(
        redis: RedisPool,
        names: StreamNames,
        timeout: Duration,
        source: &'static str,
        health: Arc<RedisHealth>,
    ) -> Self {
        Self {
            health,
            redis,
            names,
            source,
            timeout,
        }
    }

    /// XADDs every event in one round trip (the stream is trimmed by the consumers' progress, never by
    /// length: see `recovery`). An error here loses
    /// nothing: the events stay in the outbox and the relay publishes them later.
    pub async fn publish(&self, events: &[FollowEvent]) -> anyhow::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        // While the breaker is open, Redis is not called: the events wait in the outbox for the relay.
        if !self.health.is_closed() {
            ::metrics::counter!(PUBLISH_FAILURES, "source" => self.source)
                .increment(events.len() as u64);
            anyhow::bail!("Redis is considered down (circuit open)");
        }
        let call = async {
            let mut pipe = redis::pipe();
            for event in events {
                pipe.cmd("XADD").arg(&self.names.stream).arg("*");
                for (field, value) in event.to_fields() {
                    pipe.arg(field).arg(value);
                }
                pipe.ignore();
            }
            let () = self.redis.query_pipe(&pipe).await.context("XADD failed")?;
            anyhow::Ok(())
        };
        let outcome = tokio::time::timeout(self.timeout, call)
            .await
            .context("XADD timed out")
            .and_then(|r| r);
        let name = if outcome.is_ok() {
            EVENTS_PUBLISHED
        } else {
            PUBLISH_FAILURES
        };
        ::metrics::counter!(name, "source" => self.source).increment(events.len() as u64);
        outcome
    }
}
