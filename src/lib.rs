//! follow-service: a GraphQL API for the follow graph of a social product.
//!
//! The module map (see docs/ARCHITECTURE.md for how the parts fit):
//! - [`config`]: settings from the environment; [`error`]: the error policy and client codes;
//!   [`auth`]: bearer tokens.
//! - [`db`]: PostgreSQL store (diesel-async), migrations. Knows nothing of GraphQL.
//! - [`events`]: the follow event, stream producer, consumer group, outbox relay.
//! - [`cache`]: L1 (mini-moka) and L2 (Redis) behind the loaders, with invalidation across instances;
//!   [`redis_health`]: the circuit breaker every Redis user asks first.
//! - [`graph`]: the follow graph's operations; the GraphQL layer calls only this.
//! - [`graphql`]: schema, resolvers, loaders. Knows nothing of HTTP.
//! - [`ratelimit`]: rate limits shared by every instance (GCRA in Redis, a local one while it is down).
//! - [`http`]: routes, authentication, limits, health.
//! - [`app`]: the composition root: builds all of it from a [`config::Config`], starts the background
//!   tasks of each role (API, worker) and samples the gauges of `/metrics`.
//! - [`telemetry`]: logging, and the metrics' names and recorder; it uses no other module.
//! - [`seed`], [`redis_pool`]: demo data, Redis connections.

// The future of a GraphQL field that awaits a pooled database read nests deeper than the default 128
// levels when rustc proves it `Send`/`Sync` (the viewer's list fields, through the per-request memo).
#![recursion_limit = "256"]

pub mod app;
pub mod auth;
pub mod cache;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod events;
pub mod graph;
pub mod graphql;
pub mod http;
pub mod ratelimit;
pub mod reconcile;
pub mod redis_health;
pub mod redis_pool;
pub mod seed;
pub mod telemetry;
