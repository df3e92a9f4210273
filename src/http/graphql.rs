//! The GraphQL endpoint, as the GraphQL-over-HTTP specification says: POST with a JSON body, or GET with
//! URL parameters for queries only; the response's media type chosen by `Accept`; status codes that
//! tell a request error from a result under `application/graphql-response+json`, and 200 for every
//! well-formed request under `application/json`, for clients that predate the specification.
//!
//! | case                                        | graphql-response+json | application/json |
//! |---------------------------------------------|-----------------------|------------------|
//! | result, with or without field errors        | 200                   | 200              |
//! | document does not parse or validate         | 400 (no `data`)       | 200 (no `data`)  |
//! | persisted query hash unknown                | 404                   | 200              |
//! | over a rate limit (`RATE_LIMITED`)          | 429, `Retry-After`    | 429              |
//! | body or URL parameters are not a request    | 400                   | 400              |
//! | token present but invalid                   | 401                   | 401              |
//! | mutation by GET                             | 405, `Allow: POST`    | 405              |
//! | `Accept` allows neither type                | 406                   | 406              |
//! | body too large                              | 413                   | 413              |
//! | POST body not `application/json`            | 415                   | 415              |

use async_graphql::{BatchRequest, parser::types::OperationType};
use axum::{
    Extension,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize, ser::SerializeMap};

use super::{
    HttpState,
    admission::{self, Admission, Client, ClientAddress, Refused},
    negotiate::{MediaType, negotiate},
};
use crate::{
    auth::Viewer,
    error::{AppError, ErrorCode},
    graphql::{self, is_request_error},
    ratelimit::Decision,
};

/// `POST /graphql`: one operation or a batch, as JSON. The headers are read in place and the body only
/// once they allow it (no copy of the header map, no detour through a generic body reader).
pub async fn post_graphql(
    State(state): State<HttpState>,
    Extension(address): Extension<ClientAddress>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();
    let headers = &parts.headers;
    let media = match accepted(headers) {
        Ok(media) => media,
        Err(response) => return *response,
    };
    if !is_json(headers) {
        let err = AppError::bad_input(
            "a POST body must be JSON, sent with Content-Type: application/json",
        );
        return refusal(StatusCode::UNSUPPORTED_MEDIA_TYPE, err, media);
    }
    let body_bytes = declared_length(headers);
    let request = match read_batch(body).await {
        Ok(request) => request,
        Err(unreadable) => {
            let client = Client::new(None, address);
            Admission::of(&state)
                .charge_refusal(&client, None, body_bytes.unwrap_or(0))
                .await;
            return unreadable_request(&state, unreadable, media);
        }
    };
    let viewer = match authenticate(&state, headers, media) {
        Ok(viewer) => viewer,
        Err(response) => return *response,
    };
    let operations = match &request {
        BatchRequest::Single(_) => 1,
        BatchRequest::Batch(requests) => requests.len().max(1),
    };
    let asker = Asker {
        viewer,
        client: Client::new(viewer, address),
        bytes: body_bytes.map(|bytes| bytes / operations),
    };
    match request {
        BatchRequest::Single(request) if lacks_query(&request) => {
            refusal(StatusCode::BAD_REQUEST, no_query(), media)
        }
        BatchRequest::Single(request) => render(media, run(&state, request, &asker).await),
        BatchRequest::Batch(requests) if requests.len() > state.config.max_batch_operations => {
            let err = AppError::bad_input(format!(
                "a batch may carry at most {} operations (FOLLOW_MAX_BATCH_OPERATIONS); got {}",
                state.config.max_batch_operations,
                requests.len()
            ));
            refusal(StatusCode::BAD_REQUEST, err, media)
        }
        BatchRequest::Batch(requests) => {
            // Batching is not in the specification: each operation's outcome is in its own entry, and
            // the batch as a whole is 200.
            let mut outcomes = Vec::with_capacity(requests.len());
            for request in requests {
                outcomes.push(run(&state, request, &asker).await);
            }
            let bodies: Vec<Wire<'_>> = outcomes.iter().map(|o| Wire(&o.response)).collect();
            let mut response = with_media(StatusCode::OK, media, to_bytes(&bodies));
            // The budget the batch left: the last operation's answer is the most recent.
            if let Some(budget) = outcomes.iter().rev().find_map(|o| o.budget) {
                admission::set_headers(response.headers_mut(), &budget);
            }
            response
        }
    }
}

/// Why a POST body is not a GraphQL request.
#[derive(Debug)]
enum Unreadable {
    /// It went past `FOLLOW_MAX_BODY_BYTES` while streaming (a declared length over it is refused
    /// before the body is read).
    TooLarge,
    /// It could not be read, or is not the JSON of a request or of a non-empty array of them.
    NotARequest(String),
}

/// Whether reading a body failed on the body limit (`RequestBodyLimitLayer` wraps the body in a
/// `Limited`), found by type along the error's sources rather than by its message.
fn over_the_limit(err: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(err) = source {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// Reads a POST body and parses it as one request or a batch: an array is a batch, anything else one
/// request (what async-graphql's untagged `BatchRequest` decides too, without buffering the document
/// into an intermediate tree first).
async fn read_batch(body: axum::body::Body) -> Result<BatchRequest, Unreadable> {
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .map_err(|err| {
            if over_the_limit(&err) {
                Unreadable::TooLarge
            } else {
                Unreadable::NotARequest(err.to_string())
            }
        })?;
    parse_batch(&bytes).map_err(|err| {
        Unreadable::NotARequest(
            async_graphql::ParseRequestError::InvalidRequest(Box::new(err)).to_string(),
        )
    })
}

fn parse_batch(body: &[u8]) -> Result<BatchRequest, serde_json::Error> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        let requests: Vec<async_graphql::Request> = serde_json::from_slice(body)?;
        if requests.is_empty() {
            return Err(serde::de::Error::invalid_length(
                0,
                &"a non-empty array of requests",
            ));
        }
        Ok(BatchRequest::Batch(requests))
    } else {
        serde_json::from_slice(body).map(BatchRequest::Single)
    }
}

/// The URL parameters of a GET request (the names are the specification's, in camelCase).
#[derive(Deserialize)]
struct GetParameters {
    #[serde(default)]
    query: String,
    #[serde(default, rename = "operationName")]
    operation_name: Option<String>,
    #[serde(default)]
    variables: Option<String>,
    #[serde(default)]
    extensions: Option<String>,
}

/// `GET /graphql`: GraphiQL for a browser, else a query (or a persisted query's hash) from the URL.
pub async fn get_graphql(
    State(state): State<HttpState>,
    Extension(address): Extension<ClientAddress>,
    request: Request,
) -> Response {
    let (parts, _) = request.into_parts();
    let headers = &parts.headers;
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    if wants_html {
        return super::graphiql::page().await;
    }
    let media = match accepted(headers) {
        Ok(media) => media,
        Err(response) => return *response,
    };
    let query = parts.uri.query().unwrap_or_default();
    let mut request = match parse_parameters(query) {
        Ok(request) => request,
        Err(message) => {
            let err = AppError::bad_input(format!(
                "the URL parameters are not a GraphQL request: {message}"
            ));
            return refusal(StatusCode::BAD_REQUEST, err, media);
        }
    };
    if lacks_query(&request) {
        return refusal(StatusCode::BAD_REQUEST, no_query(), media);
    }
    // Authenticated first: a persisted query is registered only for a client the service knows.
    let viewer = match authenticate(&state, headers, media) {
        Ok(viewer) => viewer,
        Err(response) => return *response,
    };
    let asker = Asker {
        viewer,
        client: Client::new(viewer, address),
        bytes: Some(query.len()),
    };
    let resolved = match resolve(&state, &mut request).await {
        Err(response) => {
            let outcome = Outcome::unmetered(response);
            charge_if_refused(&state, &asker, &outcome, 0).await;
            return render(media, outcome);
        }
        Ok(resolved) => resolved,
    };
    if resolved.kind == Some(OperationType::Mutation) {
        let err = AppError::bad_input("mutations are sent with POST, not GET");
        let mut response = refusal(StatusCode::METHOD_NOT_ALLOWED, err, media);
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    let text_bytes = request.query.len();
    let outcome = admit_and_execute(&state, request, resolved, &asker).await;
    charge_if_refused(&state, &asker, &outcome, text_bytes).await;
    render(media, outcome)
}

/// Whether a request has neither a document nor a persisted query's hash: it is not a GraphQL request.
fn lacks_query(request: &async_graphql::Request) -> bool {
    request.query.trim().is_empty()
        && !request
            .extensions
            .0
            .contains_key(graphql::documents::PERSISTED_QUERY)
}

fn no_query() -> AppError {
    AppError::bad_input("a GraphQL request needs a query (or a persisted query's hash)")
}

/// A GraphQL request from URL parameters; `variables` and `extensions` are JSON.
fn parse_parameters(query: &str) -> Result<async_graphql::Request, String> {
    let parameters: GetParameters = serde_urlencoded::from_str(query).map_err(|e| e.to_string())?;
    let mut request = async_graphql::Request::new(parameters.query);
    request.operation_name = parameters.operation_name;
    if let Some(variables) = parameters.variables {
        let value: serde_json::Value =
            serde_json::from_str(&variables).map_err(|e| format!("variables is not JSON: {e}"))?;
        if !value.is_object() && !value.is_null() {
            return Err("variables must be a JSON object".into());
        }
        request.variables = async_graphql::Variables::from_json(value);
    }
    if let Some(extensions) = parameters.extensions {
        request.extensions = serde_json::from_str(&extensions)
            .map_err(|e| format!("extensions is not a JSON object: {e}"))?;
    }
    Ok(request)
}

/// Resolves the request's document (persisted query, parse cache, cost); a persisted query that cannot
/// be resolved, or a document over the limits, is a response already.
async fn resolve(
    state: &HttpState,
    request: &mut async_graphql::Request,
) -> Result<graphql::documents::Resolved, async_graphql::Response> {
    state
        .documents
        .resolve(request)
        .await
        .map_err(|error| async_graphql::Response::from_errors(vec![error]))
}

/// Who asks: the viewer of the token, and the client whose budget the request spends.
struct Asker {
    viewer: Option<Viewer>,
    client: Client,
    /// The bytes of the request each operation stands for (its share of the body), when known.
    bytes: Option<usize>,
}

/// An operation's response and the budget it left (none when nothing was spent).
struct Outcome {
    response: async_graphql::Response,
    budget: Option<Decision>,
}

impl Outcome {
    fn unmetered(response: async_graphql::Response) -> Self {
        Self {
            response,
            budget: None,
        }
    }
}

/// Resolves and runs one operation for `asker`; a refusal before execution is charged to its client.
async fn run(state: &HttpState, mut request: async_graphql::Request, asker: &Asker) -> Outcome {
    let text_bytes = request.query.len();
    let outcome = match resolve(state, &mut request).await {
        Ok(resolved) => admit_and_execute(state, request, resolved, asker).await,
        Err(response) => Outcome::unmetered(response),
    };
    charge_if_refused(state, asker, &outcome, text_bytes).await;
    outcome
}

/// Charges the client for a request refused before execution (it still cost its parse); a rate-limit
/// refusal has been charged already.
async fn charge_if_refused(state: &HttpState, asker: &Asker, outcome: &Outcome, text_bytes: usize) {
    if is_request_error(&outcome.response) && !has_code(&outcome.response, ErrorCode::RateLimited) {
        let bytes = asker.bytes.unwrap_or(0).max(text_bytes);
        Admission::of(state)
            .charge_refusal(&asker.client, asker.viewer, bytes)
            .await;
    }
}

/// The body length a request declares, if it does.
fn declared_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Spends a resolved operation's cost (and its registration, if it carries one), then runs it.
async fn admit_and_execute(
    state: &HttpState,
    request: async_graphql::Request,
    resolved: graphql::documents::Resolved,
    asker: &Asker,
) -> Outcome {
    let limits = Admission::of(state);
    let refused = |refused: Refused| Outcome {
        response: async_graphql::Response::from_errors(vec![graphql::request_error(refused.error)]),
        budget: refused.budget,
    };
    if resolved.kind == Some(OperationType::Subscription) {
        return refused(Refused {
            error: AppError::bad_input(
                "subscriptions are served over websockets at /graphql/ws (graphql-transport-ws), not over HTTP",
            ),
            budget: None,
        });
    }
    let budget = match limits
        .admit_resolved(&state.documents, &asker.client, asker.viewer, resolved)
        .await
    {
        Ok(budget) => budget,
        Err(refusal) => return refused(refusal),
    };
    Outcome {
        response: execute(state, request, asker.viewer).await,
        budget,
    }
}

/// Runs a resolved request for `viewer`.
async fn execute(
    state: &HttpState,
    request: async_graphql::Request,
    viewer: Option<Viewer>,
) -> async_graphql::Response {
    state
        .schema
        .execute(graphql::prepare(&state.schema, request, viewer))
        .await
}

/// The wire form of a response: as async-graphql writes it, except that a request error (the operation
/// never ran) has no `data` entry, as the GraphQL specification says. Serialized straight to bytes.
struct Wire<'a>(&'a async_graphql::Response);

impl Serialize for Wire<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if !is_request_error(self.0) {
            return self.0.serialize(serializer);
        }
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("errors", &self.0.errors)?;
        if !self.0.extensions.is_empty() {
            map.serialize_entry("extensions", &self.0.extensions)?;
        }
        map.end()
    }
}

fn to_bytes(body: &impl Serialize) -> Vec<u8> {
    // Most answers are short: one allocation instead of the vector's growth from empty.
    let mut bytes = Vec::with_capacity(256);
    match serde_json::to_writer(&mut bytes, body) {
        Ok(()) => bytes,
        Err(_) => b"{}".to_vec(),
    }
}

/// An executed (or refused-before-execution) operation's response, with the status its media type
/// gives it (see the table above) and the budget's headers.
fn render(media: MediaType, outcome: Outcome) -> Response {
    let Outcome { response, budget } = outcome;
    let status = match media {
        _ if is_request_error(&response) && has_code(&response, ErrorCode::RateLimited) => {
            StatusCode::TOO_MANY_REQUESTS
        }
        MediaType::Json => StatusCode::OK,
        MediaType::GraphQLResponse if !is_request_error(&response) => StatusCode::OK,
        MediaType::GraphQLResponse if has_code(&response, ErrorCode::PersistedQueryNotFound) => {
            StatusCode::NOT_FOUND
        }
        MediaType::GraphQLResponse => StatusCode::BAD_REQUEST,
    };
    let mut http = with_media(status, media, to_bytes(&Wire(&response)));
    for (name, value) in response.http_headers.iter() {
        http.headers_mut().append(name, value.clone());
    }
    if let Some(budget) = budget {
        admission::set_headers(http.headers_mut(), &budget);
    }
    http
}

fn has_code(response: &async_graphql::Response, code: ErrorCode) -> bool {
    response.errors.iter().any(|error| {
        error
            .extensions
            .as_ref()
            .and_then(|ext| ext.get("code"))
            .is_some_and(|value| *value == async_graphql::Value::from(code.as_str()))
    })
}

/// A JSON body in `media`, which varies with the request's `Accept`.
fn with_media(status: StatusCode, media: MediaType, body: Vec<u8>) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(media.content_type()),
    );
    headers.insert(header::VARY, HeaderValue::from_static("Accept"));
    response
}

/// The media type to answer in, or 406 when the client accepts neither of the specification's.
fn accepted(headers: &HeaderMap) -> Result<MediaType, Box<Response>> {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    negotiate(accept).ok_or_else(|| {
        let err = AppError::bad_input(
            "the Accept header must allow application/graphql-response+json or application/json",
        );
        Box::new(refusal(StatusCode::NOT_ACCEPTABLE, err, MediaType::Json))
    })
}

/// Whether a POST declares a JSON body (`application/json`, any parameters).
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"))
}

/// The viewer of the request's bearer token. A token that is present but not valid is refused with 401
/// and a GraphQL error `UNAUTHENTICATED`: it never becomes an anonymous request.
fn authenticate(
    state: &HttpState,
    headers: &HeaderMap,
    media: MediaType,
) -> Result<Option<Viewer>, Box<Response>> {
    let header = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or(""));
    state
        .jwt
        .viewer_from_header(header)
        .map_err(|err| Box::new(refusal(StatusCode::UNAUTHORIZED, err, media)))
}

/// A GraphQL-shaped error body for a request refused before execution.
fn refusal(status: StatusCode, err: AppError, media: MediaType) -> Response {
    let body = async_graphql::Response::from_errors(vec![graphql::request_error(err)]);
    let mut response = with_media(status, media, to_bytes(&Wire(&body)));
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// A body that is not a GraphQL request: 413 naming the limit when it was too large, else 400.
fn unreadable_request(state: &HttpState, unreadable: Unreadable, media: MediaType) -> Response {
    match unreadable {
        Unreadable::TooLarge => body_too_large(state.config.max_body_bytes),
        Unreadable::NotARequest(reason) => {
            let err = AppError::bad_input(format!("the body is not a GraphQL request: {reason}"));
            refusal(StatusCode::BAD_REQUEST, err, media)
        }
    }
}

/// 413 with a GraphQL error that names the body size limit.
pub fn body_too_large(limit: usize) -> Response {
    let err = AppError::bad_input(format!(
        "the request body exceeds the limit of {limit} bytes (FOLLOW_MAX_BODY_BYTES)"
    ));
    refusal(StatusCode::PAYLOAD_TOO_LARGE, err, MediaType::Json)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_one_request_or_a_non_empty_batch() {
        let single = parse_batch(br#" {"query":"{ __typename }","variables":{"a":"1"}}"#);
        let Ok(BatchRequest::Single(request)) = single else {
            panic!("one request: {single:?}");
        };
        assert_eq!(request.query, "{ __typename }");
        assert_eq!(request.variables.len(), 1);
        let batch = parse_batch(b"\n[{\"query\":\"{ a }\"},{\"query\":\"{ b }\"}]");
        assert!(matches!(batch, Ok(BatchRequest::Batch(ref r)) if r.len() == 2));
        assert!(parse_batch(b"[]").is_err());
        assert!(parse_batch(b"\"{ __typename }\"").is_err());
        assert!(parse_batch(b"{\"query\":").is_err());
    }
}
