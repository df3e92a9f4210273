//! The HTTP surface: the GraphQL endpoint by POST and GET, limits, health, GraphiQL, and a real socket.

use axum::{
    body::Body,
    http::{Request, StatusCode, header},
};
use serde_json::{Value, json};

use crate::support::{Options, TestApp, graphql_post, query_body};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_get_and_the_refusals_of_the_graphql_endpoint() {
    let app = TestApp::spawn().await;
    app.create_users(1..=2).await;
    let token = app.token(1, false);

    let request = graphql_post(Some(&token))
        .body(query_body(
            r#"mutation { follow(userId: "2") { changed viewer { handle } } }"#,
        ))
        .expect("request");
    let (status, headers, body) = app.http(request).await;
    assert_eq!(status, StatusCode::OK);
    let body: Value = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(
        body,
        json!({ "data": { "follow": { "changed": true, "viewer": { "handle": "u1" } } } })
    );
    assert!(
        headers.get("x-request-id").is_some_and(|id| id.len() >= 32),
        "every response carries its request id"
    );

    // A request id sent by a proxy is kept.
    let request = graphql_post(None)
        .header("x-request-id", "from-the-proxy-1")
        .body(query_body("{ __typename }"))
        .expect("request");
    let (_, headers, _) = app.http(request).await;
    assert_eq!(
        headers.get("x-request-id").and_then(|v| v.to_str().ok()),
        Some("from-the-proxy-1")
    );

    // A batch over the operations limit is refused whole.
    let batch: Vec<Value> = (0..11)
        .map(|_| json!({ "query": "{ __typename }" }))
        .collect();
    let request = graphql_post(None)
        .body(Body::from(Value::Array(batch).to_string()))
        .expect("request");
    let (status, _, body) = app.http(request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("at most 10 operations"));

    let query =
        "query=%7B%20isFollowing(followerId%3A%20%221%22%2C%20followeeId%3A%20%222%22)%20%7D";
    let (status, _, body) = app
        .http(
            Request::get(format!("/graphql?{query}"))
                .body(Body::empty())
                .expect("request"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).expect("JSON"),
        json!({ "data": { "isFollowing": true } })
    );

    let mutation =
        "query=mutation%20%7B%20unfollow(userId%3A%20%222%22)%20%7B%20changed%20%7D%20%7D";
    let request = Request::get(format!("/graphql?{mutation}"))
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Body::empty())
        .expect("request");
    let (status, headers, _) = app.http(request).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        headers.get(header::ALLOW).and_then(|v| v.to_str().ok()),
        Some("POST")
    );
    assert_eq!(
        app.count("SELECT count(*) FROM follows").await,
        1,
        "a GET never writes"
    );

    // Too large, declared or streamed: 413 naming the limit.
    let huge =
        json!({ "query": format!("{{ __typename }} # {}", "x".repeat(100_000)) }).to_string();
    for declared in [true, false] {
        let mut request = graphql_post(None);
        if declared {
            request = request.header(header::CONTENT_LENGTH, huge.len());
        }
        let (status, _, body) = app
            .http(request.body(Body::from(huge.clone())).expect("request"))
            .await;
        assert_eq!(
            status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "declared: {declared}"
        );
        let body: Value = serde_json::from_slice(&body).expect("JSON");
        assert!(
            body["errors"][0]["message"]
                .as_str()
                .unwrap_or("")
                .contains("65536 bytes"),
            "{body}"
        );
    }

    // Not JSON at all: 400 with a GraphQL-shaped error.
    let request = graphql_post(None)
        .body(Body::from("{nope"))
        .expect("request");
    let (status, _, body) = app.http(request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        serde_json::from_slice::<Value>(&body).is_ok_and(|b| b["errors"][0]["message"].is_string())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_and_graphiql() {
    let app = TestApp::spawn().await;
    let (status, _, body) = get(&app, "/healthz").await;
    assert_eq!(
        (status, body.as_slice()),
        (StatusCode::OK, b"ok".as_slice())
    );
    let (status, _, body) = get(&app, "/readyz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).expect("JSON"),
        json!({ "postgres": "ok", "redis": "ok", "warmup": "done" })
    );

    let browser = Request::get("/graphql")
        .header(header::ACCEPT, "text/html")
        .body(Body::empty())
        .expect("request");
    let (status, headers, body) = app.http(browser).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("text/html"))
    );
    assert!(String::from_utf8_lossy(&body).contains("graphiql"));

    // An instance whose Redis is gone is alive but not ready, and says why.
    let cut_off = app.sibling(crate::support::Options {
        redis_url: "redis://127.0.0.1:1".to_owned(),
        ..Default::default()
    });
    let response = tower::ServiceExt::oneshot(
        follow_service::http::router(cut_off),
        Request::get("/readyz")
            .body(Body::empty())
            .expect("request"),
    )
    .await
    .expect("answer");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_a_real_socket() {
    let app = TestApp::spawn().await;
    app.create_users(1..=2).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let server = tokio::spawn(
        axum::serve(listener, follow_service::http::router(app.app.clone())).into_future(),
    );

    let client = reqwest::Client::new();
    let token = app.token(2, false);
    let response = client
        .post(format!("http://{address}/graphql"))
        .bearer_auth(&token)
        .json(&json!({ "query": "mutation($u: ID!) { follow(userId: $u) { following } }", "variables": { "u": "1" } }))
        .send()
        .await
        .expect("POST");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.expect("JSON"),
        json!({ "data": { "follow": { "following": true } } })
    );

    // A batch of two operations in one POST.
    let batch = client
        .post(format!("http://{address}/graphql"))
        .json(&json!([{ "query": "{ user(id: \"1\") { handle } }" }, { "query": "{ isFollowing(followerId: \"2\", followeeId: \"1\") }" }]))
        .send()
        .await
        .expect("POST batch")
        .json::<Value>()
        .await
        .expect("JSON");
    assert_eq!(
        batch,
        json!([{ "data": { "user": { "handle": "u1" } } }, { "data": { "isFollowing": true } }])
    );
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_requests_loaders_pipeline_and_pools() {
    let app = TestApp::spawn().await;
    app.create_users(1..=3).await;
    let token = app.token(1, false);
    let request = graphql_post(Some(&token))
        .body(query_body(
            "mutation MetricsFollow { follow(userId: \"2\") { changed user { followerCount } } }",
        ))
        .expect("request");
    assert_eq!(app.http(request).await.0, StatusCode::OK);
    let bad = graphql_post(None)
        .body(query_body("query MetricsBad { user(id: \"x\") { id } }"))
        .expect("request");
    assert_eq!(app.http(bad).await.0, StatusCode::OK);
    app.drained().await;
    follow_service::app::gauges::sample_once(&app.app).await;

    let (status, headers, body) = get(&app, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("text/plain"))
    );
    let text = String::from_utf8_lossy(&body);
    for needle in [
        "follow_graphql_request_duration_seconds_bucket{operation_name=\"MetricsFollow\",operation_type=\"mutation\"",
        "follow_graphql_errors_total{code=\"BAD_USER_INPUT\"}",
        "follow_dataloader_batch_size_bucket{loader=\"users\"",
        "follow_events_published_total{source=\"writer\"}",
        "follow_events_applied_total",
        "follow_consumer_apply_duration_seconds_bucket",
        "follow_db_pool_connections{state=\"in_use\"}",
        "follow_redis_pool_waiting",
        "follow_stream_length",
        "follow_stream_pending",
        "follow_outbox_backlog",
        "follow_outbox_oldest_age_seconds",
        "follow_db_queries_total",
    ] {
        assert!(text.contains(needle), "/metrics lacks {needle}:\n{text}");
    }
}

/// A GET of `path` without headers.
async fn get(app: &TestApp, path: &str) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    app.http(Request::get(path).body(Body::empty()).expect("request"))
        .await
}

/// The value of one exported series (`name{labels}`), 0 when absent.
fn series_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn metrics_text(app: &TestApp) -> String {
    let (status, _, body) = get(app, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    String::from_utf8_lossy(&body).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_counted_by_class_and_outcome_and_one_the_timeout_cuts_as_cancelled() {
    let app = TestApp::with_options(Options {
        env: vec![("FOLLOW_REQUEST_TIMEOUT_MS", "1500".to_owned())],
        ..Options::default()
    })
    .await;
    app.create_users(1..=3).await;
    let token = app.token(1, false);
    let cancelled = "follow_graphql_requests_total{class=\"write\",outcome=\"cancelled\"}";
    let status_ok = "follow_graphql_requests_total{class=\"status\",outcome=\"ok\"}";
    let before = metrics_text(&app).await;

    let status = graphql_post(Some(&token))
        .body(query_body(
            "query ClassStatus { relationships(userId: \"1\", otherIds: [\"2\"]) { following } }",
        ))
        .expect("request");
    assert_eq!(app.http(status).await.0, StatusCode::OK);

    // Hold user 3's row: the follow waits in its foreign-key check until the timeout answers 503.
    let blocker = app.hold_user_row(3).await;
    let follow = graphql_post(Some(&token))
        .body(query_body(
            "mutation CancelledFollow { follow(userId: \"3\") { changed } }",
        ))
        .expect("request");
    assert_eq!(app.http(follow).await.0, StatusCode::SERVICE_UNAVAILABLE);
    blocker.batch_execute("COMMIT").await.expect("unlock");

    let after = metrics_text(&app).await;
    // Other tests share the process's recorder: their requests may add to the class counters, never take.
    assert!(series_value(&after, status_ok) >= series_value(&before, status_ok) + 1.0);
    assert!(
        series_value(&after, cancelled) >= series_value(&before, cancelled) + 1.0,
        "the request the timeout cut is not counted as cancelled:\n{after}"
    );
    // Its duration is recorded too, under its own name and class (no other test uses the name).
    let duration = "follow_graphql_request_duration_seconds_count{operation_name=\"CancelledFollow\",operation_type=\"mutation\",class=\"write\"}";
    assert_eq!(series_value(&after, duration), 1.0, "{after}");
    let slow = "follow_graphql_request_duration_seconds_bucket{operation_name=\"CancelledFollow\",operation_type=\"mutation\",class=\"write\",le=\"1\"}";
    assert_eq!(
        series_value(&after, slow),
        0.0,
        "cut after 1.5 s, it took less than 1 s:\n{after}"
    );
}
