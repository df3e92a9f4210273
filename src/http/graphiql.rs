//! GraphiQL for browsers, served with its assets from the binary so that it works on a closed network.

use axum::{
    Router,
    response::{Html, IntoResponse, Response},
};

/// The GraphiQL page (placeholder until the offline assets land).
pub async fn page() -> Response {
    Html(
        async_graphql::http::GraphiQLSource::build()
            .endpoint("/graphql")
            .subscription_endpoint("/graphql/ws")
            .finish(),
    )
    .into_response()
}

/// Routes for the page's assets, merged into the service's router.
pub fn asset_routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
}
