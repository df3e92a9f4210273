//! Serving the router over TCP with hyper, with the connection hygiene a public endpoint needs.
//!
//! - **At most `FOLLOW_MAX_CONNECTIONS` connections.** One more is answered at once with a 503 that says
//!   so (and `Retry-After`), then closed, instead of queueing in the kernel or taking memory.
//! - **Headers within `FOLLOW_HEADER_TIMEOUT_MS`** of their first byte: a client that trickles a request
//!   (slowloris) is cut off. hyper's own header timer also runs while a keep-alive connection waits for
//!   its next request, so it cannot tell a slow client from an idle one; this module's watchdog can.
//! - **Idle keep-alive connections close after `FOLLOW_KEEP_ALIVE_IDLE_S`**, longer than the usual load
//!   balancer idle timeout (60 s), so the balancer, not the service, closes first and never sends a
//!   request into a closing connection.
//! - The peer address goes into each request as axum's `ConnectInfo`, for the rate limits.
//! - A graceful shutdown stops accepting, lets requests in flight finish (`FOLLOW_REQUEST_TIMEOUT_MS` at
//!   most), and closes idle connections at once. Upgraded websockets leave hyper and close themselves
//!   (1001) when the process says it is closing.

use std::{
    net::SocketAddr,
    pin::pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, extract::ConnectInfo};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
};
use tower::ServiceExt;

use crate::telemetry::metrics::{HTTP_CONNECTIONS, HTTP_CONNECTIONS_REFUSED};

/// How the server treats connections.
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// `FOLLOW_MAX_CONNECTIONS`.
    pub max_connections: usize,
    /// `FOLLOW_HEADER_TIMEOUT_MS`.
    pub header_timeout: Duration,
    /// `FOLLOW_KEEP_ALIVE_IDLE_S`.
    pub keep_alive_idle: Duration,
    /// How long a shutdown waits for requests in flight.
    pub drain: Duration,
}

impl ServerLimits {
    /// The limits `config` sets; a shutdown waits for requests in flight up to their own timeout.
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self {
            max_connections: config.max_connections,
            header_timeout: config.header_timeout,
            keep_alive_idle: config.keep_alive_idle,
            drain: config.request_timeout,
        }
    }
}

/// The answer to a connection over the cap: complete, so that any HTTP client reads it as a refusal.
fn over_capacity() -> String {
    let body = r#"{"errors":[{"message":"too many connections: this instance is at its limit (FOLLOW_MAX_CONNECTIONS); retry shortly","extensions":{"code":"SERVICE_UNAVAILABLE"}}]}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let (closing, closing_rx) = watch::channel(false);
    let open = Arc::new(AtomicUsize::new(0));
    let mut shutdown = pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of descriptors or a reset before accept: the listener itself is fine.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            ::metrics::counter!(HTTP_CONNECTIONS_REFUSED).increment(1);
            tokio::spawn(refuse(stream));
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let closing = closing_rx.clone();
        let open = open.clone();
        open.fetch_add(1, Ordering::Relaxed);
        ::metrics::gauge!(HTTP_CONNECTIONS).increment(1.0);
        tokio::spawn(async move {
            serve_connection(stream, peer, router, limits, closing).await;
            drop(slot);
            open.fetch_sub(1, Ordering::Relaxed);
            ::metrics::gauge!(HTTP_CONNECTIONS).decrement(1.0);
        });
    }
    drop(listener);
    closing.send_replace(true);
    let deadline = Instant::now() + limits.drain;
    while open.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// Answers a connection over the cap and closes it, without reading its request.
async fn refuse(mut stream: TcpStream) {
    let write = async {
        stream.write_all(over_capacity().as_bytes()).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

/// What the watchdog knows of a connection.
#[derive(Default)]
struct Activity {
    /// Milliseconds since the connection began, of the last byte read or written.
    last_io_ms: AtomicU64,
    /// When bytes of a request head arrived with no request in flight (ms since start; 0: none).
    head_started_ms: AtomicU64,
    /// Requests handed to the router and not answered yet.
    in_flight: AtomicUsize,
    /// Whether the connection left hyper (a websocket): the watchdog's rules no longer apply.
    upgraded: AtomicBool,
}

/// Serves one connection; the watchdog ends it when it idles too long or trickles its headers.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: ServerLimits,
    mut closing: watch::Receiver<bool>,
) {
    let started = Instant::now();
    let activity = Arc::new(Activity::default());
    let io = TokioIo::new(Watched {
        inner: stream,
        started,
        activity: activity.clone(),
    });
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |mut request: axum::http::Request<Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            let upgrading = request.headers().get(axum::http::header::UPGRADE).is_some();
            activity.in_flight.fetch_add(1, Ordering::Relaxed);
            activity.head_started_ms.store(0, Ordering::Relaxed);
            let router = router.clone();
            let activity = activity.clone();
            async move {
                let response = router.oneshot(request.map(axum::body::Body::new)).await;
                if upgrading && response.as_ref().is_ok_and(|r| r.status().as_u16() == 101) {
                    activity.upgraded.store(true, Ordering::Relaxed);
                }
                activity.in_flight.fetch_sub(1, Ordering::Relaxed);
                let ms = started.elapsed().as_millis() as u64;
                activity.last_io_ms.store(ms, Ordering::Relaxed);
                response
            }
        })
    };
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .serve_connection(io, service)
        .with_upgrades();
    let mut connection = pin!(connection);
    let tick = (limits.header_timeout / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut watchdog = tokio::time::interval(tick);
    let mut draining = false;
    let mut idle_closed = false;
    loop {
        tokio::select! {
            _ = connection.as_mut() => return,
            _ = watchdog.tick() => {
                if activity.upgraded.load(Ordering::Relaxed) {
                    continue;
                }
                let now = started.elapsed().as_millis() as u64;
                let head = activity.head_started_ms.load(Ordering::Relaxed);
                let idle_since = activity.last_io_ms.load(Ordering::Relaxed);
                let waiting = activity.in_flight.load(Ordering::Relaxed) == 0;
                if waiting && head > 0 && now.saturating_sub(head) > limits.header_timeout.as_millis() as u64 {
                    tracing::debug!(%peer, "closing a connection whose request headers did not arrive in time");
                    return; // dropped: the socket closes
                }
                let idle = now.saturating_sub(idle_since) > limits.keep_alive_idle.as_millis() as u64;
                if waiting && head == 0 && idle && !idle_closed {
                    idle_closed = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
            _ = closing.wait_for(|c| *c), if !draining => {
                draining = true;
                if !idle_closed {
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// A socket that tells the watchdog when bytes move, and when a new request's head begins.
struct Watched {
    inner: TcpStream,
    started: Instant,
    activity: Arc<Activity>,
}

impl Watched {
    fn touched(&self, reading: bool) {
        let ms = (self.started.elapsed().as_millis() as u64).max(1);
        self.activity.last_io_ms.store(ms, Ordering::Relaxed);
        if reading
            && self.activity.in_flight.load(Ordering::Relaxed) == 0
            && self.activity.head_started_ms.load(Ordering::Relaxed) == 0
        {
            self.activity.head_started_ms.store(ms, Ordering::Relaxed);
        }
    }
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touched(true);
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.touched(false);
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.touched(false);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
