//! Integration tests: the whole service against the real PostgreSQL and Redis, each test on its own
//! database and Redis key prefix (see `support`), in parallel.

mod support;

mod auth;
mod cache;
mod contract;
mod errors;
mod events;
mod federation;
mod follows;
mod fuzz;
mod http;
mod over_http;
mod pagination;
mod queries;
mod subscriptions;
