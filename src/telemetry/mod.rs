//! Telemetry: logs (`tracing` to stdout, filtered by `RUST_LOG`, as text or JSON with
//! `FOLLOW_LOG_FORMAT=json`) and Prometheus metrics ([`metrics`]).

pub mod metrics;

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

/// Installs the global subscriber once; calls after the first (tests) are no-ops.
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let _ = if json {
        registry
            .with(fmt::layer().json().with_current_span(true))
            .try_init()
    } else {
        registry.with(fmt::layer()).try_init()
    };
}
