//! Requests to an instance in process: HTTP requests through its router, GraphQL operations through
//! its schema.

use axum::{
    body::Body,
    http::{HeaderMap, StatusCode},
};
use follow_service::{app::App, graphql, http};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

/// Sends an HTTP request through `app`'s router in process; returns the status, headers and body.
pub async fn send(
    app: &App,
    request: axum::http::Request<Body>,
) -> (axum::http::StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let response = http::router(app.clone())
        .oneshot(request)
        .await
        .expect("router answers");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    (status, headers, body)
}

/// A `POST /graphql` with a JSON content type, the `Accept` of Apollo Client and graphql-http (the
/// specification's media type first, so request errors are 4xx) and, when given, a bearer token; add
/// headers, then a body.
pub fn graphql_post(token: Option<&str>) -> axum::http::request::Builder {
    let builder = axum::http::Request::post("/graphql")
        .header(axum::http::header::CONTENT_TYPE, "application/json")
        .header(
            axum::http::header::ACCEPT,
            "application/graphql-response+json, application/json;q=0.9",
        );
    match token {
        Some(token) => builder.header(axum::http::header::AUTHORIZATION, format!("Bearer {token}")),
        None => builder,
    }
}

/// The JSON body of one operation.
pub fn query_body(query: &str) -> Body {
    Body::from(json!({ "query": query }).to_string())
}

/// Runs an operation through `app`'s schema as `viewer`.
pub async fn run_on(app: &App, viewer: Option<i64>, query: &str, variables: Value) -> Value {
    let viewer = viewer.map(|user_id| follow_service::auth::Viewer {
        user_id,
        is_admin: false,
    });
    run_as(app, viewer, query, variables).await
}

/// Runs an operation through `app`'s schema as an explicit viewer (admin or not).
pub async fn run_as(
    app: &App,
    viewer: Option<follow_service::auth::Viewer>,
    query: &str,
    variables: Value,
) -> Value {
    let request = async_graphql::Request::new(query)
        .variables(async_graphql::Variables::from_json(variables));
    let request = graphql::prepare(&app.schema, request, viewer);
    let response = app.schema.execute(request).await;
    serde_json::to_value(response).expect("response serializes")
}

/// POSTs one operation to `app`'s router with `token`; returns the status, the headers and the JSON.
pub async fn post(
    app: &App,
    token: Option<&str>,
    query: &str,
    variables: Value,
) -> (StatusCode, HeaderMap, Value) {
    let body = json!({ "query": query, "variables": variables }).to_string();
    let request = graphql_post(token).body(Body::from(body)).expect("request");
    let (status, headers, body) = send(app, request).await;
    let json = serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("a JSON body, got {}", String::from_utf8_lossy(&body)));
    (status, headers, json)
}

/// An operation over HTTP that must succeed on `app` with `token`: 200 and no errors; its `data`.
pub async fn ok_on(app: &App, token: Option<&str>, query: &str, variables: Value) -> Value {
    let (status, _, body) = post(app, token, query, variables).await;
    assert_eq!(status, StatusCode::OK, "{body:#}");
    assert!(body.get("errors").is_none(), "unexpected errors: {body:#}");
    body["data"].clone()
}

/// An operation over HTTP that must fail on `app` with `token`; its first error's code and message.
pub async fn fail_on(
    app: &App,
    token: Option<&str>,
    query: &str,
    variables: Value,
) -> (String, String) {
    first_error(&post(app, token, query, variables).await.2)
}

/// A response's first error: its `extensions.code` and message (it must have one).
pub fn first_error(response: &Value) -> (String, String) {
    let error = &response["errors"][0];
    assert!(!error.is_null(), "expected an error: {response:#}");
    (
        error["extensions"]["code"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
        error["message"].as_str().unwrap_or("").to_owned(),
    )
}
