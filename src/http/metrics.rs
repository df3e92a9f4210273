//! `/metrics`: the Prometheus text exposition of the process-wide recorder.

use axum::{http::header, response::IntoResponse};

/// Renders every series recorded so far.
pub async fn render() -> impl IntoResponse {
    let handle = crate::telemetry::metrics::install();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
}
