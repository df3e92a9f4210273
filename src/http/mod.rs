//! The HTTP surface: routes, bearer-token extraction, limits, health.

mod graphql;
mod health;

use axum::{Router, http::StatusCode, routing::get};
use tower_http::{limit::RequestBodyLimitLayer, timeout::TimeoutLayer, trace::TraceLayer};

use crate::app::App;

/// Every route of the service, in one place.
pub fn router(app: App) -> Router {
    let body_limit = app.config.max_body_bytes;
    let timeout = app.config.request_timeout;
    Router::new()
        .route("/", get(graphql::graphiql))
        .route(
            "/graphql",
            get(graphql::get_graphql).post(graphql::post_graphql),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .with_state(app)
        .layer(RequestBodyLimitLayer::new(body_limit))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            timeout,
        ))
        .layer(TraceLayer::new_for_http())
}
