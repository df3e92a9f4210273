//! GraphQL over HTTP as the specification says: media types by `Accept`, a status code for each case,
//! GET for queries only; and Apollo's automatic persisted queries.

use axum::{
    body::Body,
    http::{HeaderMap, Request, StatusCode, header},
};
use serde_json::{Value, json};

use follow_service::app::App;

use crate::support::{Options, TestApp, graphql_post, query_body, send};

const GRAPHQL_RESPONSE: &str = "application/graphql-response+json; charset=utf-8";
const JSON: &str = "application/json";

fn content_type(headers: &HeaderMap) -> &str {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// POSTs `body` accepting `accept`; returns the status, the content type and the JSON body.
async fn post(app: &TestApp, accept: Option<&str>, body: Body) -> (StatusCode, String, Value) {
    // Not `graphql_post`: that one sends an `Accept` of its own.
    let mut request = Request::post("/graphql").header(header::CONTENT_TYPE, "application/json");
    if let Some(accept) = accept {
        request = request.header(header::ACCEPT, accept);
    }
    let (status, headers, body) = app.http(request.body(body).expect("request")).await;
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    (status, content_type(&headers).to_owned(), json)
}

/// GETs `/graphql?{query}` from `app` accepting `accept`.
async fn get(app: &App, accept: &str, query: &str) -> (StatusCode, HeaderMap, Value) {
    let request = Request::get(format!("/graphql?{query}"))
        .header(header::ACCEPT, accept)
        .body(Body::empty())
        .expect("request");
    let (status, headers, body) = send(app, request).await;
    (
        status,
        headers,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

fn url(parameters: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(parameters).expect("encodes")
}

#[tokio::test]
async fn each_case_of_the_specification_has_its_status_and_media_type() {
    let app = TestApp::without_pipeline().await;
    app.create_users(1..=1).await;
    let both = "application/graphql-response+json, application/json;q=0.9";

    // A result: 200 in the media type asked for (`application/json` when no Accept is sent, or only
    // a wildcard, as the specification says a server SHOULD).
    for (accept, expected) in [
        (None, JSON),
        (Some("*/*"), JSON),
        (Some(both), GRAPHQL_RESPONSE),
        (Some("application/json"), JSON),
    ] {
        let (status, media, body) =
            post(&app, accept, query_body("{ user(id: \"1\") { handle } }")).await;
        assert_eq!(
            (status, media.as_str()),
            (StatusCode::OK, expected),
            "Accept {accept:?}"
        );
        assert_eq!(body, json!({ "data": { "user": { "handle": "u1" } } }));
    }

    // Fields come back in the order the query asks for them.
    let (_, _, body) = post(&app, None, query_body("{ user(id: \"1\") { handle id } }")).await;
    assert_eq!(
        body.to_string(),
        r#"{"data":{"user":{"handle":"u1","id":"1"}}}"#
    );

    // A document that does not parse, or does not validate: a request error, without `data`.
    for document in ["{ user(id: ", "{ noSuchField }"] {
        let (status, media, body) = post(&app, Some(both), query_body(document)).await;
        assert_eq!(
            (status, media.as_str()),
            (StatusCode::BAD_REQUEST, GRAPHQL_RESPONSE),
            "{document}"
        );
        assert!(
            body.get("data").is_none() && body["errors"][0]["message"].is_string(),
            "{body}"
        );
        // The legacy media type keeps 200 for every well-formed request, as the specification says.
        let (status, media, body) =
            post(&app, Some("application/json"), query_body(document)).await;
        assert_eq!(
            (status, media.as_str()),
            (StatusCode::OK, JSON),
            "{document}"
        );
        assert!(body.get("data").is_none(), "{body}");
    }

    // A field error is a result: 200 with `data` in both media types.
    for accept in [both, "application/json"] {
        let (status, _, body) = post(
            &app,
            Some(accept),
            query_body("{ isFollowing(followerId: \"x\", followeeId: \"1\") }"),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.get("data").is_some(), "{body}");
        assert_eq!(body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    }

    // Not a GraphQL request at all: 400 whatever the media type.
    for (accept, body) in [
        (both, Body::from("{ not json")),
        ("application/json", Body::from("{ not json")),
        (both, Body::from(json!({ "variables": {} }).to_string())),
        (
            "application/json",
            Body::from(json!({ "query": "" }).to_string()),
        ),
    ] {
        let (status, _, body) = post(&app, Some(accept), body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    }

    // A client that accepts neither media type: 406.
    let (status, _, _) = post(&app, Some("text/plain"), query_body("{ __typename }")).await;
    assert_eq!(status, StatusCode::NOT_ACCEPTABLE);

    // A body that is not declared as JSON: 415.
    let request = Request::post("/graphql")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(query_body("{ __typename }"))
        .expect("request");
    let (status, _, _) = app.http(request).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn get_runs_queries_and_refuses_mutations() {
    let app = TestApp::without_pipeline().await;
    app.create_users(1..=2).await;
    let accept = "application/graphql-response+json";

    let query = url(&[
        ("query", "query($id: ID!) { user(id: $id) { handle } }"),
        ("variables", r#"{"id":"2"}"#),
    ]);
    let (status, headers, body) = get(&app.app, accept, &query).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type(&headers), GRAPHQL_RESPONSE);
    assert_eq!(
        headers.get(header::VARY).and_then(|v| v.to_str().ok()),
        Some("Accept")
    );
    assert_eq!(body, json!({ "data": { "user": { "handle": "u2" } } }));

    // operationName picks the operation: the query runs, the mutation is refused.
    let document = "query Read { user(id: \"1\") { id } } mutation Write { follow(userId: \"2\") { changed } }";
    let (status, _, body) = get(
        &app.app,
        accept,
        &url(&[("query", document), ("operationName", "Read")]),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["user"]["id"], "1");
    let (status, headers, _) = get(
        &app.app,
        accept,
        &url(&[("query", document), ("operationName", "Write")]),
    )
    .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        headers.get(header::ALLOW).and_then(|v| v.to_str().ok()),
        Some("POST")
    );

    // Parameters that are not a request: 400 (a browser asking for HTML gets GraphiQL instead).
    let (status, _, body) = get(&app.app, accept, "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _, _) = get(
        &app.app,
        accept,
        &url(&[("query", "{ __typename }"), ("variables", "[1]")]),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = get(
        &app.app,
        accept,
        &url(&[("query", "{ __typename }"), ("variables", "{")]),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// The APQ extension for `text`.
fn persisted(text: &str) -> Value {
    json!({ "persistedQuery": { "version": 1, "sha256Hash": follow_service::graphql::persisted::sha256_hex(text) } })
}

#[tokio::test]
async fn a_persisted_query_registers_once_and_runs_by_hash_on_every_instance() {
    let app = TestApp::without_pipeline().await;
    app.create_users(1..=2).await;
    let text = "query Handle($id: ID!) { user(id: $id) { handle } }";
    let extensions = persisted(text);
    let accept = "application/graphql-response+json, application/json;q=0.9";

    // The hash alone, before registration: PERSISTED_QUERY_NOT_FOUND, so the client sends the text.
    let hash_only = json!({ "extensions": extensions, "variables": { "id": "1" } }).to_string();
    let (status, _, body) = post(&app, Some(accept), Body::from(hash_only.clone())).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(body["errors"][0]["message"], "PersistedQueryNotFound");
    assert_eq!(
        body["errors"][0]["extensions"]["code"],
        "PERSISTED_QUERY_NOT_FOUND"
    );
    let (status, _, body) = post(
        &app,
        Some("application/json"),
        Body::from(hash_only.clone()),
    )
    .await;
    assert_eq!(
        (status, &body["errors"][0]["extensions"]["code"]),
        (StatusCode::OK, &json!("PERSISTED_QUERY_NOT_FOUND"))
    );

    // The text with its hash registers it and runs.
    let register = json!({ "query": text, "extensions": extensions, "variables": { "id": "1" } });
    let (status, _, body) = post(&app, Some(accept), Body::from(register.to_string())).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::OK,
            json!({ "data": { "user": { "handle": "u1" } } })
        )
    );

    // From now on the hash is enough, by POST or GET, here and on another instance (through Redis).
    let (status, _, body) = post(&app, Some(accept), Body::from(hash_only)).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::OK,
            json!({ "data": { "user": { "handle": "u1" } } })
        )
    );
    let other = app.sibling(Options::default());
    let query = url(&[
        ("extensions", &extensions.to_string()),
        ("variables", r#"{"id":"2"}"#),
    ]);
    let (status, _, body) = get(&other, accept, &query).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::OK,
            json!({ "data": { "user": { "handle": "u2" } } })
        )
    );

    // A hash that is not the text's is refused, and registers nothing.
    let wrong = json!({ "query": "{ __typename }", "extensions": extensions });
    let (status, _, body) = post(&app, Some(accept), Body::from(wrong.to_string())).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");

    // A persisted mutation is still a mutation: GET by hash is refused.
    let mutation = "mutation($id: ID!) { follow(userId: $id) { changed } }";
    let register =
        json!({ "query": mutation, "extensions": persisted(mutation), "variables": { "id": "2" } });
    let request = graphql_post(Some(&app.token(1, false)))
        .body(Body::from(register.to_string()))
        .expect("request");
    let (status, _, _) = app.http(request).await;
    assert_eq!(status, StatusCode::OK);
    let query = url(&[
        ("extensions", &persisted(mutation).to_string()),
        ("variables", r#"{"id":"2"}"#),
    ]);
    let (status, _, _) = get(&app.app, accept, &query).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn web_apps_on_listed_origins_may_call_the_api() {
    let app = TestApp::with_options(Options {
        pipeline: false,
        cors_origins: "https://app.example.com, https://admin.example.com".into(),
        ..Options::default()
    })
    .await;
    let allowed_origin = |headers: &HeaderMap| {
        headers
            .get(header::ACCESS_CONTROL_ALLOW_ORIGIN)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let preflight = |origin: &str| {
        Request::options("/graphql")
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                "authorization,content-type",
            )
            .body(Body::empty())
            .expect("request")
    };

    // The browser's preflight for a POST with a bearer token is answered for a listed origin.
    let (status, headers, _) = app.http(preflight("https://app.example.com")).await;
    assert!(status.is_success(), "{status}");
    assert_eq!(
        allowed_origin(&headers).as_deref(),
        Some("https://app.example.com")
    );
    let allowed_headers = headers
        .get(header::ACCESS_CONTROL_ALLOW_HEADERS)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    assert!(allowed_headers.contains("authorization") && allowed_headers.contains("content-type"));

    // Another origin gets no permission.
    let (_, headers, _) = app.http(preflight("https://evil.example.net")).await;
    assert_eq!(allowed_origin(&headers), None);

    // The request itself carries the permission, and lets the page read the request id.
    let request = graphql_post(None)
        .header(header::ORIGIN, "https://admin.example.com")
        .body(query_body("{ __typename }"))
        .expect("request");
    let (status, headers, _) = app.http(request).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        allowed_origin(&headers).as_deref(),
        Some("https://admin.example.com")
    );
    let exposed = headers
        .get(header::ACCESS_CONTROL_EXPOSE_HEADERS)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(exposed.contains("x-request-id"), "{exposed}");
}
