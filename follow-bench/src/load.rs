//! The load engine: fixed concurrency for a fixed time over keep-alive HTTP/1.1 connections, one per
//! worker, on one client thread; latencies into an HDR histogram.

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, OnceLock},
    time::{Duration, Instant},
};

use anyhow::Context;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::{Request as HttpRequest, client::conn::http1::SendRequest, header};
use hyper_util::rt::TokioIo;
use rand::SeedableRng;

use crate::scenarios::{Generator, Request, Scenario, Shared};

/// What one scenario's measured window produced.
pub struct LoadResult {
    pub requests: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub latency_us: Histogram<u64>,
    pub measured: Duration,
}

impl LoadResult {
    /// Nothing measured yet, over a window of `measured`.
    pub fn empty(measured: Duration) -> anyhow::Result<Self> {
        Ok(Self {
            requests: 0,
            errors: 0,
            first_error: None,
            latency_us: latency_histogram()?,
            measured,
        })
    }
}

/// A latency histogram in µs (1 µs to 60 s, 3 significant figures), as every report reads them.
pub fn latency_histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

/// Opens the measured window `(start, end)` now that the warm-up is over: `duration` long, or empty
/// when the warm-up failed, which stops the workers at once.
pub fn open_window(window: &OnceLock<(Instant, Instant)>, warmed: bool, duration: Duration) {
    let start = Instant::now();
    let end = start + if warmed { duration } else { Duration::ZERO };
    let _ = window.set((start, end));
}

pub struct Connection {
    sender: SendRequest<Full<Bytes>>,
}

pub async fn connect(addr: SocketAddr) -> anyhow::Result<Connection> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(Connection { sender })
}

/// Sends one request; returns the status and body.
pub async fn send(
    conn: &mut Connection,
    addr: SocketAddr,
    request: &Request,
) -> anyhow::Result<(u16, Bytes)> {
    send_from(conn, addr, request, None).await
}

/// Sends one request as the client at `forwarded_for` (an `X-Forwarded-For` header, which the service
/// believes only from a trusted proxy); returns the status and body.
pub async fn send_from(
    conn: &mut Connection,
    addr: SocketAddr,
    request: &Request,
    forwarded_for: Option<&str>,
) -> anyhow::Result<(u16, Bytes)> {
    let mut builder = HttpRequest::post("/graphql")
        .header(header::HOST, addr.to_string())
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(token) = &request.token {
        builder = builder.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if let Some(client) = forwarded_for {
        builder = builder.header("x-forwarded-for", client);
    }
    let http = builder.body(Full::new(request.body.clone()))?;
    conn.sender.ready().await?;
    let response = conn.sender.send_request(http).await?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// A GET of `path` on a fresh connection (for `/metrics` and `/healthz`).
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut conn = connect(addr).await?;
    let request = HttpRequest::get(path)
        .header(header::HOST, addr.to_string())
        .body(Full::new(Bytes::new()))?;
    conn.sender.ready().await?;
    let response = conn.sender.send_request(request).await?;
    anyhow::ensure!(
        response.status().is_success(),
        "GET {path}: {}",
        response.status()
    );
    let body = response.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// Whether an answer is a failure: not 200, or a body carrying `errors`.
pub fn is_error(status: u16, body: &[u8]) -> bool {
    status != 200 || body.windows(8).any(|w| w == b"\"errors\"")
}

/// Runs `scenario` with `concurrency` workers: unrecorded until `warm_up` completes (a fixed time, or
/// until the caches have settled, see `steady.rs`), then `duration` recorded; the same connections and
/// request streams throughout. Returns the measured window's figures and what `warm_up` returned.
pub async fn run<W>(
    addr: SocketAddr,
    scenario: Scenario,
    shared: Arc<Shared>,
    concurrency: usize,
    warm_up: impl Future<Output = anyhow::Result<W>>,
    duration: Duration,
    rng_seed: u64,
) -> anyhow::Result<(LoadResult, W)> {
    // The measured window (start, end), set when the warm-up is over.
    let window: Arc<OnceLock<(Instant, Instant)>> = Arc::new(OnceLock::new());
    let mut workers = Vec::with_capacity(concurrency);
    for worker in 0..concurrency {
        let shared = shared.clone();
        let window = window.clone();
        workers.push(tokio::spawn(async move {
            let rng =
                rand::rngs::StdRng::seed_from_u64(rng_seed ^ ((worker as u64 + 1) * 0x9E37_79B9));
            let mut generator = Generator::new(worker, concurrency, rng);
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
            let (mut requests, mut errors, mut first_error) = (0u64, 0u64, None);
            let mut conn = connect(addr).await?;
            while window.get().is_none_or(|(_, end)| Instant::now() < *end) {
                let request = generator.next(scenario, &shared);
                let sent = Instant::now();
                let outcome = send(&mut conn, addr, &request).await;
                let latency = sent.elapsed();
                let failed = match &outcome {
                    Ok((status, body)) => {
                        let bad = is_error(*status, body);
                        if bad && first_error.is_none() {
                            first_error = Some(format!(
                                "HTTP {status}: {}",
                                String::from_utf8_lossy(&body[..body.len().min(300)])
                            ));
                        }
                        bad
                    }
                    Err(err) => {
                        if first_error.is_none() {
                            first_error = Some(format!("{err:#}"));
                        }
                        conn = connect(addr).await?;
                        true
                    }
                };
                if window.get().is_some_and(|(start, _)| sent >= *start) {
                    requests += 1;
                    errors += u64::from(failed);
                    histogram.saturating_record(latency.as_micros().max(1) as u64);
                }
            }
            // Undo an outstanding follow so the graph ends as it began.
            if let Some(request) = generator.cleanup(&shared) {
                let _ = send(&mut conn, addr, &request).await;
            }
            anyhow::Ok((requests, errors, first_error, histogram))
        }));
    }
    let warmed = warm_up.await;
    open_window(&window, warmed.is_ok(), duration);
    let mut total = LoadResult::empty(duration)?;
    for worker in workers {
        let (requests, errors, first_error, histogram) = worker.await??;
        total.requests += requests;
        total.errors += errors;
        total.first_error = total.first_error.or(first_error);
        total.latency_us.add(histogram)?;
    }
    Ok((total, warmed?))
}
