//! The GraphQL endpoint: authenticates the bearer token, then hands the request to the schema.

use async_graphql_axum::{GraphQLBatchRequest, GraphQLResponse, rejection::GraphQLRejection};
use axum::{
    Json,
    extract::{RawQuery, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

use crate::{app::App, auth::Viewer, error::AppError, graphql};

/// `POST /graphql`: one operation or a batch.
pub async fn post_graphql(
    State(app): State<App>,
    headers: HeaderMap,
    request: Result<GraphQLBatchRequest, GraphQLRejection>,
) -> Response {
    let request = match request {
        Ok(request) => request,
        Err(rejection) => return unreadable_request(&app, rejection),
    };
    let viewer = match authenticate(&app, &headers) {
        Ok(viewer) => viewer,
        Err(response) => return *response,
    };
    let batch = request.into_inner();
    let batch = match batch {
        async_graphql::BatchRequest::Single(r) => {
            async_graphql::BatchRequest::Single(graphql::prepare(&app.schema, r, viewer))
        }
        async_graphql::BatchRequest::Batch(rs) if rs.len() > app.config.max_batch_operations => {
            let err = AppError::bad_input(format!(
                "a batch may carry at most {} operations (FOLLOW_MAX_BATCH_OPERATIONS); got {}",
                app.config.max_batch_operations,
                rs.len()
            ));
            return error_response(StatusCode::BAD_REQUEST, &err);
        }
        async_graphql::BatchRequest::Batch(rs) => async_graphql::BatchRequest::Batch(
            rs.into_iter()
                .map(|r| graphql::prepare(&app.schema, r, viewer))
                .collect(),
        ),
    };
    GraphQLResponse::from(app.schema.execute_batch(batch).await).into_response()
}

/// `GET /graphql`: GraphiQL for a browser, else a query from the URL's parameters.
pub async fn get_graphql(
    State(app): State<App>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    let query = query.unwrap_or_default();
    if wants_html || query.is_empty() {
        return super::graphiql::page().await;
    }
    let request = match async_graphql::http::parse_query_string(&query) {
        Ok(request) => request,
        Err(err) => {
            let err =
                AppError::bad_input(format!("the query string is not a GraphQL request: {err}"));
            return error_response(StatusCode::BAD_REQUEST, &err);
        }
    };
    if is_mutation(&request) {
        let err = AppError::bad_input("mutations are sent with POST, not GET");
        let mut response = error_response(StatusCode::METHOD_NOT_ALLOWED, &err);
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("POST"));
        return response;
    }
    let viewer = match authenticate(&app, &headers) {
        Ok(viewer) => viewer,
        Err(response) => return *response,
    };
    let request = graphql::prepare(&app.schema, request, viewer);
    let response = app.schema.execute(request).await;
    GraphQLResponse::from(response).into_response()
}

/// The viewer of the request's bearer token. A token that is present but not valid is refused with 401
/// and a GraphQL error `UNAUTHENTICATED`: it never becomes an anonymous request.
fn authenticate(app: &App, headers: &HeaderMap) -> Result<Option<Viewer>, Box<Response>> {
    let header = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""));
    app.jwt
        .viewer_from_header(header)
        .map_err(|err| Box::new(error_response(StatusCode::UNAUTHORIZED, &err)))
}

/// A GraphQL-shaped error body for a request refused before execution.
fn error_response(status: StatusCode, err: &AppError) -> Response {
    let body = json!({ "errors": [{ "message": err.message(), "extensions": { "code": err.code().as_str() } }] });
    let mut response = (status, Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

/// Whether the operation a GET request would run is a mutation (GET must not change anything).
fn is_mutation(request: &async_graphql::Request) -> bool {
    use async_graphql::parser::types::OperationType;
    let Ok(document) = async_graphql::parser::parse_query(&request.query) else {
        return false; // the schema reports the parse error
    };
    document.operations.iter().any(|(name, operation)| {
        let selected = match (&request.operation_name, name) {
            (Some(wanted), Some(name)) => wanted.as_str() == name.as_str(),
            _ => true,
        };
        selected && operation.node.ty == OperationType::Mutation
    })
}

/// A body that is not a GraphQL request: 413 naming the limit when it was too large, else 400.
fn unreadable_request(app: &App, rejection: GraphQLRejection) -> Response {
    use async_graphql::ParseRequestError;
    let too_large = match &rejection.0 {
        ParseRequestError::PayloadTooLarge => true,
        ParseRequestError::Io(err) => err.to_string().contains("length limit exceeded"),
        _ => false,
    };
    if too_large {
        return body_too_large(app.config.max_body_bytes);
    }
    let err = AppError::bad_input(format!(
        "the body is not a GraphQL request: {}",
        rejection.0
    ));
    error_response(StatusCode::BAD_REQUEST, &err)
}

/// 413 with a GraphQL error that names the body size limit.
pub fn body_too_large(limit: usize) -> Response {
    let err = AppError::bad_input(format!(
        "the request body exceeds the limit of {limit} bytes (FOLLOW_MAX_BODY_BYTES)"
    ));
    error_response(StatusCode::PAYLOAD_TOO_LARGE, &err)
}
