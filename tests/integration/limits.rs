//! Rate limits over HTTP: shared by instances through Redis, honest about when to come back, local while
//! Redis is away, keyed by viewer or by client address.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    extract::ConnectInfo,
    http::{HeaderMap, StatusCode},
};
use serde_json::{Value, json};

use crate::support::{Options, RedisProxy, TestApp, graphql_post, query_body, send};

/// Settings that make budgets small enough to spend in a test: 100 points a minute, documents up to 100.
fn small_budgets(extra: &[(&'static str, &str)]) -> Options {
    let mut env = vec![
        ("FOLLOW_MAX_COMPLEXITY", "100".to_owned()),
        ("FOLLOW_RATE_ANONYMOUS_POINTS", "100".to_owned()),
        ("FOLLOW_RATE_VIEWER_POINTS", "100".to_owned()),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
    Options {
        pipeline: false,
        env,
        ..Options::default()
    }
}

/// A query that costs `n` points (`n` aliases of `__typename`).
fn costing(n: usize) -> String {
    let fields: String = (0..n).map(|i| format!("a{i}: __typename ")).collect();
    format!("{{ {fields} }}")
}

async fn ask(
    app: &follow_service::app::App,
    token: Option<&str>,
    text: &str,
) -> (StatusCode, HeaderMap, Value) {
    let request = graphql_post(token).body(query_body(text)).expect("request");
    let (status, headers, body) = send(app, request).await;
    (
        status,
        headers,
        serde_json::from_slice(&body).expect("JSON"),
    )
}

fn header(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_share_a_budget_and_retry_after_is_honest() {
    let app = TestApp::with_options(small_budgets(&[])).await;
    let other = app.sibling(small_budgets(&[]));

    let (status, headers, _) = ask(&app.app, None, &costing(50)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "ratelimit-limit"), Some(100));
    assert_eq!(header(&headers, "ratelimit-remaining"), Some(50));
    assert!(header(&headers, "ratelimit-reset").is_some_and(|s| (1..=60).contains(&s)));

    // The other instance sees what this one spent.
    let (status, headers, _) = ask(&other, None, &costing(50)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "ratelimit-remaining"), Some(0));

    let (status, headers, body) = ask(&app.app, None, "{ __typename }").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body:#}");
    assert_eq!(body["errors"][0]["extensions"]["code"], "RATE_LIMITED");
    let retry = header(&headers, "retry-after").expect("Retry-After");
    assert_eq!(
        body["errors"][0]["extensions"]["retryAfter"],
        json!(retry),
        "the body says what the header says"
    );
    assert!(body.get("data").is_none(), "{body:#}");
    // One point comes back every 0.6 s: the wait is a second, and a retry after it passes.
    assert_eq!(retry, 1);
    tokio::time::sleep(Duration::from_secs(retry)).await;
    let (status, _, body) = ask(&other, None, "{ __typename }").await;
    assert_eq!(status, StatusCode::OK, "{body:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_clients_are_told_apart_by_address_behind_a_trusted_proxy() {
    let app =
        TestApp::with_options(small_budgets(&[("FOLLOW_TRUSTED_PROXIES", "127.0.0.1/32")])).await;
    let from = |peer: &str, forwarded: Option<&str>| {
        let mut builder = graphql_post(None);
        if let Some(forwarded) = forwarded {
            builder = builder.header("x-forwarded-for", forwarded);
        }
        let mut request = builder.body(query_body(&costing(80))).expect("request");
        let peer: SocketAddr = peer.parse().expect("address");
        request.extensions_mut().insert(ConnectInfo(peer));
        request
    };
    // Two clients behind the proxy have a budget each.
    let (status, _, _) = app.http(from("127.0.0.1:4000", Some("203.0.113.1"))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = app.http(from("127.0.0.1:4001", Some("203.0.113.2"))).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = app.http(from("127.0.0.1:4002", Some("203.0.113.1"))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // A client that is not the proxy cannot pick its address with the header.
    let (status, _, _) = app
        .http(from("198.51.100.7:5000", Some("203.0.113.3")))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = app
        .http(from("198.51.100.7:5001", Some("203.0.113.4")))
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_have_a_cap_per_minute_that_admins_skip() {
    let app = TestApp::with_options(small_budgets(&[
        ("FOLLOW_RATE_FOLLOWS_PER_MINUTE", "5"),
        ("FOLLOW_RATE_FOLLOWS_PER_DAY", "400"),
    ]))
    .await;
    app.create_users(1..=20).await;
    let token = app.token(1, false);
    let (status, _, body) = ask(
        &app.app,
        Some(&token),
        r#"mutation { followMany(userIds: ["2", "3", "4", "5"]) { changed } }"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body:#}");
    let follow = |user: i64| format!(r#"mutation {{ follow(userId: "{user}") {{ changed }} }}"#);
    let (status, _, _) = ask(&app.app, Some(&token), &follow(6)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, headers, body) = ask(&app.app, Some(&token), &follow(7)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body:#}");
    assert_eq!(body["errors"][0]["extensions"]["code"], "RATE_LIMITED");
    assert!(header(&headers, "retry-after").is_some_and(|s| s >= 1));
    assert_eq!(
        app.count("SELECT count(*) FROM follows WHERE follower_id = 1")
            .await,
        5,
        "the refused follow wrote nothing"
    );

    // A document asking for more than a whole minute's follows can never pass: a plain refusal.
    let many: String = (8..=15)
        .map(|u| format!(r#"f{u}: follow(userId: "{u}") {{ changed }} "#))
        .collect();
    let (status, _, body) = ask(
        &app.app,
        Some(&app.token(2, false)),
        &format!("mutation {{ {many} }}"),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body:#}");
    assert_eq!(body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("FOLLOW_RATE_FOLLOWS_PER_MINUTE")),
        "{body:#}"
    );

    // Admins are exempt from the follow caps (not from the points).
    let admin = app.token(1, true);
    let (status, _, body) = ask(&app.app, Some(&admin), &follow(7)).await;
    assert_eq!(status, StatusCode::OK, "{body:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_each_instance_keeps_the_same_budget_locally() {
    let app = TestApp::with_options(small_budgets(&[])).await;
    let proxy = RedisProxy::start().await;
    let mut options = small_budgets(&[]);
    options.redis_url = proxy.url.clone();
    let cut_off = app.sibling(options);
    proxy.cut();
    let started = Instant::now();
    let (status, _, _) = ask(&cut_off, None, &costing(60)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = ask(&cut_off, None, &costing(30)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, headers, body) = ask(&cut_off, None, &costing(30)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body:#}");
    assert!(header(&headers, "retry-after").is_some());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "answered without waiting on Redis: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persisted_query_registrations_are_rate_limited_per_client() {
    use follow_service::graphql::persisted::sha256_hex;
    let app = TestApp::with_options(small_budgets(&[("FOLLOW_RATE_APQ_PER_MINUTE", "3")])).await;
    let register = |i: usize| {
        let text = format!("query Q{i} {{ __typename }}");
        let extensions =
            json!({ "persistedQuery": { "version": 1, "sha256Hash": sha256_hex(&text) } });
        graphql_post(None)
            .body(Body::from(
                json!({ "query": text, "extensions": extensions }).to_string(),
            ))
            .expect("request")
    };
    for i in 0..3 {
        let (status, _, _) = app.http(register(i)).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _, body) = app.http(register(3)).await;
    assert_eq!(
        status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        String::from_utf8_lossy(&body)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_documents_spend_points_and_a_spent_client_is_turned_away_at_the_door() {
    let app = TestApp::with_options(small_budgets(&[])).await;
    // 2,000 bytes of a document that does not parse: 125 points each, more than the whole budget.
    let junk = format!("{{ {} ", "broken(".repeat(250));
    let (status, _, _) = ask(&app.app, None, &junk).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = ask(&app.app, None, &junk).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "refused, and now out of points"
    );
    // Any request of that client is now turned away before it is read, with an honest wait.
    let (status, headers, body) = ask(&app.app, None, "{ __typename }").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body:#}");
    assert_eq!(body["errors"][0]["extensions"]["code"], "RATE_LIMITED");
    let wait = header(&headers, "retry-after").expect("Retry-After");
    assert!((1..=60).contains(&wait), "{wait}");
    // Another client is not.
    let token = app.token(1, false);
    let (status, _, _) = ask(&app.app, Some(&token), "{ __typename }").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_caches_a_breaker_the_limiter_opened_closes_once_redis_is_back() {
    let mut options = small_budgets(&[("FOLLOW_REDIS_BREAKER_COOLDOWN_MS", "200")]);
    options.cache = false;
    let app = TestApp::with_options(options).await;
    let proxy = RedisProxy::start().await;
    let mut options = small_budgets(&[("FOLLOW_REDIS_BREAKER_COOLDOWN_MS", "200")]);
    options.cache = false;
    options.redis_url = proxy.url.clone();
    let cut_off = app.sibling(options);
    proxy.cut();
    for _ in 0..10 {
        let (status, _, _) = ask(&cut_off, None, &costing(1)).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert!(
        !cut_off.redis_health.is_closed(),
        "the limiter's failures opened the breaker"
    );
    proxy.restore();
    // The gauge sampler's probe (every FOLLOW_METRICS_SAMPLE_MS in a server) is what tries Redis again
    // when no request path does.
    let closed = crate::support::eventually(Duration::from_secs(10), || async {
        follow_service::app::gauges::sample_once(&cut_off).await;
        cut_off.redis_health.is_closed()
    })
    .await;
    assert!(closed, "the breaker stayed open with Redis back");
}
