//! Integration tests: the whole service against the real PostgreSQL and Redis, each test on its own
//! database and Redis key prefix (see `support`), in parallel.

mod support;

mod auth;
mod cache;
mod cluster;
mod connections;
mod consent;
mod consent_races;
mod contract;
mod errors;
mod events;
mod federation;
mod following_sets;
mod follows;
mod fuzz;
mod group_commit;
mod hostile;
mod house;
mod http;
mod known_followers;
mod limits;
mod model;
mod over_http;
mod pagination;
mod partitions;
mod queries;
mod ratelimit;
mod replicas;
mod subscriptions;
