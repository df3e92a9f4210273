//! Liveness and readiness probes for load balancers and orchestrators.

use axum::{Json, extract::State, http::StatusCode, response::IntoResponse};
use serde_json::json;

use super::HttpState;

/// Alive: the process answers HTTP.
pub async fn healthz() -> &'static str {
    "ok"
}

/// Ready: PostgreSQL and Redis both answer and the start-up cache warm-up is over (done, or cut short
/// by its bound); 503 naming what is not. The driver's own words (addresses, user names) go to the
/// log, not to whoever asks.
pub async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    let (database, redis) = state.health.probe().await;
    let warming = state.health.warming_up();
    let status = if database.is_ok() && redis.is_ok() && !warming {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let describe = |name: &str, r: &Result<(), String>| match r {
        Ok(()) => "ok",
        Err(e) => {
            tracing::warn!(dependency = name, error = %e, "not ready");
            "unavailable"
        }
    };
    let (database, redis) = (describe("postgres", &database), describe("redis", &redis));
    (
        status,
        Json(json!({
            "postgres": database,
            "redis": redis,
            "warmup": if warming { "running" } else { "done" },
        })),
    )
}
