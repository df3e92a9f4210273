//! Connection hygiene on a real socket: slow headers cut off, idle keep-alive closed, a connection cap
//! with a clear refusal, websockets capped per client, and the operators' endpoints off the public port.

use std::time::{Duration, Instant};

use axum::{
    body::Body,
    http::{Request, StatusCode},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::support::{Options, TestApp, serve, ws::WsClient};

fn with(env: &[(&'static str, &str)]) -> Options {
    Options {
        pipeline: false,
        env: env.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        ..Options::default()
    }
}

const REQUEST: &[u8] = b"POST /graphql HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\ncontent-length: 26\r\n\r\n{\"query\":\"{ __typename }\"}";

/// Reads until the server closes the connection (or `limit` passes); returns what was read and when
/// the close came.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, Option<Duration>) {
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                return (
                    String::from_utf8_lossy(&seen).into(),
                    Some(started.elapsed()),
                );
            }
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => return (String::from_utf8_lossy(&seen).into(), None),
        }
    }
}

/// Reads one response to [`REQUEST`] (its body ends the read).
async fn read_response(stream: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("\"Query\"") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("a response within 5 s")
            .expect("read");
        assert!(
            n > 0,
            "closed before the response: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&seen).into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_that_trickle_are_cut_off_while_idle_keep_alive_waits_longer() {
    let app = TestApp::with_options(with(&[
        ("FOLLOW_HEADER_TIMEOUT_MS", "300"),
        ("FOLLOW_KEEP_ALIVE_IDLE_S", "2"),
    ]))
    .await;
    let served = serve(&app.app).await;

    // Slowloris: a request line and one header, then nothing.
    let mut slow = TcpStream::connect(served.address).await.expect("connect");
    slow.write_all(b"POST /graphql HTTP/1.1\r\nhost: test\r\n")
        .await
        .expect("write");
    let (_, closed) = read_until_closed(&mut slow, Duration::from_secs(5)).await;
    let closed = closed.expect("the server closes a connection whose headers do not arrive");
    assert!(
        closed < Duration::from_millis(1_800),
        "closed after {closed:?}"
    );

    // A keep-alive connection idle past the header timeout is still served...
    let mut client = TcpStream::connect(served.address).await.expect("connect");
    client.write_all(REQUEST).await.expect("write");
    assert!(read_response(&mut client).await.starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(800)).await;
    client.write_all(REQUEST).await.expect("write");
    assert!(read_response(&mut client).await.starts_with("HTTP/1.1 200"));
    // ...and closed once idle for the keep-alive timeout.
    let (_, closed) = read_until_closed(&mut client, Duration::from_secs(6)).await;
    let closed = closed.expect("an idle keep-alive connection is closed");
    assert!(
        closed >= Duration::from_millis(1_500),
        "closed after {closed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_refused_clearly() {
    let app = TestApp::with_options(with(&[("FOLLOW_MAX_CONNECTIONS", "2")])).await;
    let served = serve(&app.app).await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(served.address).await.expect("connect");
        stream.write_all(REQUEST).await.expect("write");
        assert!(read_response(&mut stream).await.starts_with("HTTP/1.1 200"));
        held.push(stream);
    }
    let mut third = TcpStream::connect(served.address).await.expect("connect");
    let (answer, closed) = read_until_closed(&mut third, Duration::from_secs(5)).await;
    assert!(closed.is_some(), "refused and closed: {answer}");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("FOLLOW_MAX_CONNECTIONS"), "{answer}");
    assert!(answer.contains("SERVICE_UNAVAILABLE"), "{answer}");
    // A slot freed is a slot for the next client.
    held.pop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut next = TcpStream::connect(served.address).await.expect("connect");
    next.write_all(REQUEST).await.expect("write");
    assert!(read_response(&mut next).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_are_capped_per_viewer() {
    let app = TestApp::with_options(with(&[("FOLLOW_WS_MAX_PER_VIEWER", "1")])).await;
    app.create_users(1..=2).await;
    let served = serve(&app.app).await;
    let token = app.token(1, false);
    let _first = WsClient::connect(served.address, Some(&token)).await;
    let mut second = WsClient::open(served.address, Some("graphql-transport-ws")).await;
    second
        .send(serde_json::json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {token}") } }))
        .await;
    let (code, reason) = second.closed().await;
    assert_eq!(code, 4429, "{reason}");
    assert!(reason.contains("FOLLOW_WS_MAX_PER_VIEWER"), "{reason}");
    // Another viewer is not affected.
    let _other = WsClient::connect(served.address, Some(&app.token(2, false))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_to_their_own_listener_and_readiness_tells_no_driver_details() {
    let app = TestApp::with_options(with(&[("FOLLOW_METRICS_LISTEN", "127.0.0.1:0")])).await;
    let get = |path: &str| Request::get(path).body(Body::empty()).expect("request");
    let (status, _, _) = app.http(get("/metrics")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "not on the public listener");
    let operators = follow_service::http::operator_router(app.app.clone());
    let response = tower::ServiceExt::oneshot(operators, get("/metrics"))
        .await
        .expect("answers");
    assert_eq!(response.status(), StatusCode::OK);

    let cut_off = app.sibling(Options {
        database_url: Some("postgres://postgres@127.0.0.1:1/follow".to_owned()),
        ..with(&[])
    });
    let (status, _, body) = crate::support::send(&cut_off, get("/readyz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains(r#""postgres":"unavailable""#), "{body}");
    assert!(
        !body.contains("127.0.0.1") && !body.contains("refused"),
        "{body}"
    );
}
