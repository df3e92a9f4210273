//! The HTTP surface: routes, bearer-token extraction, limits, health.

pub mod admission;
mod graphiql;
mod graphql;
mod health;
mod metrics;
mod negotiate;
pub mod server;
mod state;
pub mod ws;

pub use state::{Health, HttpParts, HttpState, Probe};

use axum::{
    Router,
    extract::{Request, State},
    http::{Method, StatusCode, header},
    middleware::{self, Next},
    response::Response,
    routing::get,
};
use tower_http::{
    cors::{AllowOrigin, CorsLayer},
    limit::RequestBodyLimitLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    timeout::TimeoutLayer,
    trace::TraceLayer,
};

/// The header that carries each request's id, in the request (set here unless the client or a proxy
/// sent one) and in the response.
pub const REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");

/// Every route of the service, in one place.
pub fn router(state: impl Into<HttpState>) -> Router {
    let state: HttpState = state.into();
    let body_limit = state.config.max_body_bytes;
    let timeout = state.config.request_timeout;
    let cors = cors(&state.config.cors_origins);
    let trusted_proxies = std::sync::Arc::new(state.config.trusted_proxies.clone());
    let public_metrics = state.config.metrics_listen.is_none();
    let mut routes = Router::new()
        .route("/", get(graphiql::page))
        .route(
            "/graphql",
            get(graphql::get_graphql)
                .post(graphql::post_graphql)
                .route_layer(middleware::from_fn_with_state(
                    state.clone(),
                    admission::gate,
                )),
        )
        .route(
            "/graphql/ws",
            get(ws::upgrade).route_layer(middleware::from_fn_with_state(
                state.clone(),
                admission::gate,
            )),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));
    if public_metrics {
        routes = routes.route("/metrics", get(metrics::render));
    }
    routes
        .merge(graphiql::asset_routes())
        .with_state(state)
        // A streamed body is cut at the limit; a declared length over it is refused before reading.
        .layer(RequestBodyLimitLayer::new(body_limit))
        .layer(middleware::from_fn_with_state(
            Door {
                body_limit,
                trusted_proxies,
            },
            door,
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            timeout,
        ))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        // One span per request, carrying its id: every log line of the request (errors included) has it.
        .layer(TraceLayer::new_for_http().make_span_with(|request: &Request| {
            let id = request.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("-");
            tracing::info_span!("request", id = %id, method = %request.method(), path = %request.uri().path())
        }))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        // Outermost: a preflight is answered before any limit, and every answer carries the headers.
        .layer(cors)
}

/// The operators' listener (`FOLLOW_METRICS_LISTEN`): `/metrics`, `/healthz` and `/readyz`, kept off the
/// public address so that load and dependency details are not published to clients.
pub fn operator_router(state: impl Into<HttpState>) -> Router {
    let state: HttpState = state.into();
    Router::new()
        .route("/metrics", get(metrics::render))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .with_state(state)
}

/// CORS for web apps on other origins (`FOLLOW_CORS_ORIGINS`): GET and POST with the headers GraphQL
/// clients send. Tokens travel in `Authorization`, not cookies, so no credentials mode is needed.
fn cors(origins: &[String]) -> CorsLayer {
    let origin = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|o| header::HeaderValue::from_str(o).ok()),
        )
    };
    CorsLayer::new()
        .allow_origin(origin)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::ACCEPT,
            REQUEST_ID,
            header::HeaderName::from_static("apollographql-client-name"),
            header::HeaderName::from_static("apollographql-client-version"),
        ])
        .expose_headers([REQUEST_ID])
        .max_age(std::time::Duration::from_secs(3_600))
}

/// What [`door`] needs.
#[derive(Clone)]
struct Door {
    body_limit: usize,
    trusted_proxies: std::sync::Arc<Vec<crate::config::IpNet>>,
}

/// Middleware, one for what every request needs before routing (one layer costs a boxed future and a
/// copy of the inner service per request): refuses a request whose `Content-Length` exceeds the limit,
/// with a message naming it, and records the client's address ([`admission::ClientAddress`]).
async fn door(State(door): State<Door>, mut request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|length| length > door.body_limit) {
        return graphql::body_too_large(door.body_limit);
    }
    admission::record_client_address(&mut request, &door.trusted_proxies);
    next.run(request).await
}
