//! The background tasks of a process: which ones each role runs ([`Background::of`]), how they start
//! ([`App::spawn_background`]) and how they stop ([`BackgroundTasks::stop`]).

use std::time::Duration;

use tokio::{sync::watch, task::JoinHandle};

use super::App;
use crate::{
    config::Config,
    events::{consumer, relay},
};

/// What a process is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `serve`: answers the API, and runs the event pipeline unless `FOLLOW_RUN_CONSUMER=false`.
    Api,
    /// `worker`: runs only the event pipeline.
    Worker,
}

/// Which background tasks to start: a role's list, less any that a caller turns off (tests that apply
/// events themselves, or that count cache hits from a cold start).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Background {
    /// The event consumers, the outbox relay, the stream trimmer and the scheduled reconcile.
    pub pipeline: bool,
    /// Other instances' cache announcements applied to this instance's L1 (L1 stays unused until it is up).
    pub cache_subscriber: bool,
    /// The event stream tailed for this instance's subscribers.
    pub event_fanout: bool,
    /// The start-up warm-up of the caches (`/readyz` waits for it).
    pub warm_up: bool,
    /// The gauges of `/metrics` sampled every `FOLLOW_METRICS_SAMPLE_MS`.
    pub gauge_sampler: bool,
}

impl Background {
    /// Every background task `role` runs under `config`.
    pub fn of(role: Role, config: &Config) -> Self {
        match role {
            Role::Api => Self {
                pipeline: config.run_consumer,
                cache_subscriber: true,
                event_fanout: true,
                warm_up: true,
                gauge_sampler: true,
            },
            Role::Worker => Self {
                pipeline: true,
                cache_subscriber: false,
                event_fanout: false,
                warm_up: false,
                gauge_sampler: true,
            },
        }
    }
}

/// Background tasks running; [`stop`](Self::stop) ends them in order, and dropping them aborts them.
pub struct BackgroundTasks {
    /// Turns true to tell the draining tasks to finish.
    shutdown: watch::Sender<bool>,
    /// Tasks that finish their work in hand once `shutdown` turns true (the pipeline, the cache
    /// subscriber, the fan-out).
    draining: Vec<JoinHandle<()>>,
    /// The gauge sampler: aborted on stop, before the others are told to finish.
    sampler: Option<JoinHandle<()>>,
    /// The warm-up: ends by itself within `FOLLOW_WARMUP_TIMEOUT_S`; not waited for.
    warm_up: Option<JoinHandle<()>>,
}

/// How long [`BackgroundTasks::stop`] waits for each draining task.
const DRAIN_BOUND: Duration = Duration::from_secs(5);

impl BackgroundTasks {
    /// Aborts the gauge sampler, tells the other tasks to finish, and waits for each up to 5 s.
    pub async fn stop(mut self) {
        if let Some(sampler) = self.sampler.take() {
            sampler.abort();
        }
        let _ = self.shutdown.send(true);
        for task in std::mem::take(&mut self.draining) {
            let _ = tokio::time::timeout(DRAIN_BOUND, task).await;
        }
    }

    /// Tells every task to finish and aborts it at once, without waiting (a test instance going away).
    pub fn abort(&mut self) {
        let _ = self.shutdown.send(true);
        let tasks = self.draining.drain(..);
        for task in tasks.chain(self.sampler.take()).chain(self.warm_up.take()) {
            task.abort();
        }
    }
}

impl Drop for BackgroundTasks {
    fn drop(&mut self) {
        self.abort();
    }
}

impl App {
    /// Starts the tasks of `which`, in this order: pipeline, cache subscriber, fan-out, warm-up, gauge
    /// sampler.
    pub fn spawn_background(&self, which: Background) -> BackgroundTasks {
        let (shutdown, stopped) = watch::channel(false);
        let mut draining = if which.pipeline {
            self.spawn_pipeline(stopped)
        } else {
            Vec::new()
        };
        if which.cache_subscriber {
            draining.push(self.spawn_cache_subscriber(shutdown.subscribe()));
        }
        if which.event_fanout {
            draining.push(self.spawn_event_fanout(shutdown.subscribe()));
        }
        let warm_up = which.warm_up.then(|| self.spawn_warm_up());
        let sampler = which
            .gauge_sampler
            .then(|| self.spawn_gauge_sampler(self.config.metrics_sample));
        BackgroundTasks {
            shutdown,
            draining,
            sampler,
            warm_up,
        }
    }

    /// Starts the event consumers, the outbox relay, the stream trimmer and (when
    /// `FOLLOW_RECONCILE_EVERY_S` is set) the scheduled reconcile; they stop when `shutdown` turns true.
    ///
    /// Consumers: `max(FOLLOW_CONSUMERS, partitions read)` of them, consumer `i` reading partition
    /// `i mod partitions`, so every partition has one and the extra ones share the partitions round; at
    /// most `FOLLOW_CONSUMERS` apply at once (the write pool holds that many connections for them).
    pub fn spawn_pipeline(&self, shutdown: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        let base = consumer_name();
        let partitions = self.stream.read();
        let applying =
            std::sync::Arc::new(tokio::sync::Semaphore::new(self.config.consumers.max(1)));
        let mut tasks: Vec<JoinHandle<()>> =
            (0..self.config.consumers.max(partitions.len()).max(1))
                .map(|i| {
                    let settings = consumer::ConsumerSettings {
                        redis: self.config.redis.clone(),
                        names: partitions[i % partitions.len()].clone(),
                        consumer_name: format!("{base}-{i}"),
                        batch_size: self.config.consumer_batch,
                        block: self.config.consumer_block,
                        caches: self.caches.clone(),
                        claim_idle: self.config.claim_idle,
                        max_deliveries: self.config.max_deliveries,
                        refresh_slots: std::sync::Arc::new(tokio::sync::Semaphore::new(
                            consumer::REFRESHES_IN_FLIGHT,
                        )),
                        applying: applying.clone(),
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
            self.config.redis.clone(),
            self.stream.read().to_vec(),
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
    fn spawn_cache_subscriber(&self, shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        tokio::spawn(crate::cache::invalidation::run(
            self.caches.clone(),
            self.config.redis.clone(),
            shutdown,
        ))
    }

    /// Starts tailing every partition of the event stream read for this instance's subscribers; it stops
    /// when `shutdown` turns true.
    fn spawn_event_fanout(&self, shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        tokio::spawn(crate::events::fanout::run(
            self.events.clone(),
            self.config.redis.clone(),
            self.stream.read().to_vec(),
            FANOUT_BLOCK,
            shutdown,
        ))
    }

    /// Starts sampling the gauges of `/metrics` (pools, stream, outbox) every `interval`.
    fn spawn_gauge_sampler(&self, interval: Duration) -> JoinHandle<()> {
        crate::telemetry::metrics::install();
        tokio::spawn(super::gauges::sample_forever(self.clone(), interval))
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
}

/// How long the fan-out blocks in one XREAD: short enough to notice a shutdown soon.
const FANOUT_BLOCK: Duration = Duration::from_secs(5);

/// A consumer name unique to this process: host, pid and a random suffix.
fn consumer_name() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".to_owned());
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}-{}-{}", std::process::id(), &suffix[..8])
}
