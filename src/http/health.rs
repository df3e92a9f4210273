//! Liveness and readiness probes for load balancers and orchestrators.

use axum::{Json, extract::State, http::StatusCode, response::IntoResponse};
use serde_json::json;

use crate::app::App;

/// Alive: the process answers HTTP.
pub async fn healthz() -> &'static str {
    "ok"
}

/// Ready: PostgreSQL and Redis both answer; 503 naming the one that does not.
pub async fn readyz(State(app): State<App>) -> impl IntoResponse {
    let (database, redis) = app.readiness().await;
    let status = if database.is_ok() && redis.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let describe = |r: &Result<(), String>| match r {
        Ok(()) => "ok".to_owned(),
        Err(e) => e.clone(),
    };
    (
        status,
        Json(json!({ "postgres": describe(&database), "redis": describe(&redis) })),
    )
}
