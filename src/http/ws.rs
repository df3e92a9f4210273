//! `/graphql/ws`: GraphQL over websockets with the graphql-transport-ws protocol (the `graphql-ws`
//! library's protocol, which Apollo Client, Relay, urql and GraphiQL speak).
//!
//! Written here rather than taken from async-graphql-axum because that one closes with the wrong codes
//! (1002/1011 where the protocol says 4400/4401/4409), has no initialisation timeout and buffers without
//! bound. Here:
//! - the viewer comes from `connection_init`'s `Authorization` (or the upgrade request's header);
//!   an invalid token closes with 4401, a subscribe before the acknowledgement with 4401, a message that is
//!   not the protocol's with 4400, a second `connection_init` with 4429, a reused id with 4409, no
//!   `connection_init` in time with 4408, an unoffered subprotocol with 4406;
//! - every buffer is bounded: each operation writes into one bounded queue per connection, a writer task
//!   drains it into the socket, and a client that stops reading stalls only its own operations, whose
//!   subscriptions then overrun their own hub queues and end (see `events::fanout`);
//! - a shutting-down instance closes with 1001 so that clients reconnect elsewhere;
//! - sockets are capped: past `FOLLOW_WS_MAX_CONNECTIONS` per process a new one closes with 1013 (try
//!   again later, which clients retry), past `FOLLOW_WS_MAX_PER_VIEWER` for one viewer (or one anonymous
//!   address) with 4429;
//! - the read loop never waits on the socket's writer: a client that stops reading cannot hold off the
//!   token-expiry and idle closes; when even the control queue is full, the connection closes (1008);
//! - every subscribe spends its cost against the client's rate limits, as an HTTP request does.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Extension,
    extract::{
        State,
        ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade},
    },
    http::{HeaderMap, header},
    response::Response as HttpResponse,
};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio::{sync::mpsc, task::AbortHandle, time::Instant};

use super::{
    HttpState,
    admission::{Admission, Client, ClientAddress},
};
use crate::{
    auth::Viewer,
    error::AppError,
    graphql,
    telemetry::metrics::{WS_CONNECTIONS, WS_REFUSED},
};

/// The only subprotocol served.
pub const PROTOCOL: &str = "graphql-transport-ws";

/// Frames one connection may have waiting for the socket.
const OUTGOING_FRAMES: usize = 32;

/// Bytes read from a socket at a time (see `follow-bench --subscriptions`: memory per subscriber).
const READ_BUFFER_BYTES: usize = 8 * 1024;

/// Close codes of the protocol (and of RFC 6455 where it has one).
mod close {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const POLICY_VIOLATION: u16 = 1008;
    pub const TRY_AGAIN_LATER: u16 = 1013;
    pub const BAD_REQUEST: u16 = 4400;
    pub const UNAUTHORIZED: u16 = 4401;
    pub const SUBPROTOCOL_NOT_ACCEPTABLE: u16 = 4406;
    pub const INIT_TIMEOUT: u16 = 4408;
    pub const SUBSCRIBER_EXISTS: u16 = 4409;
    pub const TOO_MANY_INITS: u16 = 4429;
}

/// `GET /graphql/ws`: upgrades to a websocket that speaks graphql-transport-ws.
pub async fn upgrade(
    State(state): State<HttpState>,
    Extension(address): Extension<ClientAddress>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> HttpResponse {
    let header_auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let upgrade = upgrade
        .protocols([PROTOCOL])
        .max_message_size(state.config.max_body_bytes)
        .max_frame_size(state.config.max_body_bytes)
        // tungstenite's default 128 KiB is zero-filled and resident for every socket, though the
        // protocol's messages are a few hundred bytes; a larger frame still grows the buffer.
        .read_buffer_size(READ_BUFFER_BYTES);
    let agreed = upgrade.selected_protocol().is_some();
    upgrade.on_upgrade(move |socket| async move {
        if !agreed {
            close_now(
                socket,
                close::SUBPROTOCOL_NOT_ACCEPTABLE,
                "Subprotocol not acceptable: use graphql-transport-ws",
            )
            .await;
        } else if let Some(slot) = state.sockets.open() {
            serve(state, socket, header_auth, address, slot).await;
        } else {
            ::metrics::counter!(WS_REFUSED, "cap" => "instance").increment(1);
            let reason = format!(
                "Too many connections: this instance holds {} (FOLLOW_WS_MAX_CONNECTIONS); try again later",
                state.config.ws_max_connections
            );
            close_now(socket, close::TRY_AGAIN_LATER, &reason).await;
        }
    })
}

/// Open websockets of a process, in all and by client (viewer or anonymous address).
pub struct Sockets {
    max: usize,
    max_per_client: usize,
    open: Arc<Mutex<SocketCounts>>,
}

#[derive(Default)]
struct SocketCounts {
    all: usize,
    by_client: HashMap<String, usize>,
}

/// One open socket: counted until dropped.
pub struct SocketSlot {
    open: Arc<Mutex<SocketCounts>>,
    client: Option<String>,
}

impl Sockets {
    pub fn new(max: usize, max_per_client: usize) -> Self {
        Self {
            max,
            max_per_client,
            open: Arc::default(),
        }
    }

    fn counts(open: &Mutex<SocketCounts>) -> std::sync::MutexGuard<'_, SocketCounts> {
        open.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A slot for a new socket, unless the process holds its maximum.
    fn open(&self) -> Option<SocketSlot> {
        let mut counts = Self::counts(&self.open);
        (counts.all < self.max).then(|| {
            counts.all += 1;
            SocketSlot {
                open: self.open.clone(),
                client: None,
            }
        })
    }

    /// Counts `slot` against `client`'s sockets, unless the client holds its maximum.
    fn claim(&self, slot: &mut SocketSlot, client: &Client) -> bool {
        let mut counts = Self::counts(&self.open);
        let held = counts.by_client.entry(client.key().to_owned()).or_default();
        if *held >= self.max_per_client {
            return false;
        }
        *held += 1;
        slot.client = Some(client.key().to_owned());
        true
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        let mut counts = Sockets::counts(&self.open);
        counts.all = counts.all.saturating_sub(1);
        if let Some(client) = self.client.take()
            && let Some(held) = counts.by_client.get_mut(&client)
        {
            *held = held.saturating_sub(1);
            if *held == 0 {
                counts.by_client.remove(&client);
            }
        }
    }
}

/// A client message of the protocol.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMessage {
    ConnectionInit {
        #[serde(default)]
        payload: Option<serde_json::Map<String, serde_json::Value>>,
    },
    Ping {},
    Pong {},
    Subscribe {
        id: String,
        /// A GraphQL-over-HTTP request body: query, operationName, variables, extensions.
        payload: Box<async_graphql::Request>,
    },
    Complete {
        id: String,
    },
}

/// Why the server ends a connection: a close code and its reason.
struct Closing(u16, String);

/// The operations running on one connection, by the client's id.
type Operations = Arc<Mutex<HashMap<String, AbortHandle>>>;

/// One connection's protocol state.
struct Connection {
    state: HttpState,
    header_auth: Option<String>,
    /// Where the connection comes from (the client of an anonymous viewer).
    address: ClientAddress,
    /// This socket's place in the process's and the client's counts.
    slot: SocketSlot,
    /// `None` until `connection_init` was accepted; then the viewer (or anonymous).
    viewer: Option<Option<Viewer>>,
    /// Whose budget the connection's operations spend (known once `connection_init` was accepted).
    client: Option<Client>,
    /// When the viewer's token expires: the connection closes then (4401), so an expired or
    /// short-lived token cannot keep a subscription open for ever.
    expires: Option<Instant>,
    operations: Operations,
    outgoing: mpsc::Sender<Message>,
}

/// Runs one connection until either side closes it.
async fn serve(
    state: HttpState,
    socket: WebSocket,
    header_auth: Option<String>,
    address: ClientAddress,
    slot: SocketSlot,
) {
    ::metrics::gauge!(WS_CONNECTIONS).increment(1.0);
    let (mut sink, mut incoming) = socket.split();
    let (outgoing, mut queue) = mpsc::channel::<Message>(OUTGOING_FRAMES);
    // The only task that writes to the socket; it stops after sending a close frame.
    let writer = tokio::spawn(async move {
        while let Some(message) = queue.recv().await {
            let is_close = matches!(message, Message::Close(_));
            if sink.send(message).await.is_err() || is_close {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let mut shutting_down = state.closing.subscribe();
    let init_deadline = Instant::now() + state.config.ws_init_timeout;
    let idle = state.config.ws_idle_timeout;
    let mut connection = Connection {
        state,
        header_auth,
        address,
        slot,
        viewer: None,
        client: None,
        expires: None,
        operations: Arc::default(),
        outgoing,
    };
    let mut last_heard = Instant::now();
    let mut heartbeat = tokio::time::interval_at(Instant::now() + idle / 3, idle / 3);
    let closing = loop {
        tokio::select! {
            frame = incoming.next() => {
                last_heard = Instant::now();
                match frame {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break None,
                    Some(Ok(Message::Text(text))) => {
                        if let Err(closing) = connection.handle(text.as_str()).await {
                            break Some(closing);
                        }
                    }
                    Some(Ok(Message::Binary(_))) => break Some(Closing(
                        close::BAD_REQUEST,
                        "binary messages are not part of graphql-transport-ws".into(),
                    )),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                }
            }
            _ = sleep_until_some(connection.expires) => {
                break Some(Closing(close::UNAUTHORIZED, "Unauthorized: the bearer token has expired".into()));
            }
            _ = tokio::time::sleep_until(init_deadline), if connection.viewer.is_none() => {
                break Some(Closing(close::INIT_TIMEOUT, "Connection initialisation timeout".into()));
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() >= idle {
                    break Some(Closing(close::NORMAL, format!("nothing heard for {} s", idle.as_secs())));
                }
                // Clients answer a ping frame by themselves; the pong proves the client is still there.
                let _ = connection.outgoing.try_send(Message::Ping(Default::default()));
            }
            _ = async { let _ = shutting_down.wait_for(|closing| *closing).await; } => {
                break Some(Closing(close::GOING_AWAY, "the server is shutting down; reconnect".into()));
            }
        }
    };
    connection.stop_all();
    if let Some(Closing(code, reason)) = closing {
        let frame = close_frame(code, &reason);
        let send = connection.outgoing.send(frame);
        let _ = tokio::time::timeout(Duration::from_secs(1), send).await;
    }
    drop(connection); // its sender was the writer's last: the writer ends
    let abort = writer.abort_handle();
    if tokio::time::timeout(Duration::from_secs(2), writer)
        .await
        .is_err()
    {
        abort.abort(); // a client that does not read would hold the writer (and the socket) for ever
    }
    ::metrics::gauge!(WS_CONNECTIONS).decrement(1.0);
}

impl Connection {
    /// Acts on one text message; `Err` closes the connection.
    async fn handle(&mut self, text: &str) -> Result<(), Closing> {
        let message: ClientMessage = serde_json::from_str(text).map_err(|err| {
            Closing(
                close::BAD_REQUEST,
                format!("Invalid message received: {err}"),
            )
        })?;
        match message {
            ClientMessage::ConnectionInit { payload } => self.init(payload).await,
            ClientMessage::Ping {} => self.send(json!({ "type": "pong" })),
            ClientMessage::Pong {} => Ok(()),
            ClientMessage::Subscribe { id, payload } => self.subscribe(id, *payload).await,
            ClientMessage::Complete { id } => {
                if let Some(operation) = self.operations().remove(&id) {
                    operation.abort();
                }
                Ok(())
            }
        }
    }

    /// Authenticates the connection from the init payload (or the upgrade's header) and acknowledges it.
    async fn init(
        &mut self,
        payload: Option<serde_json::Map<String, serde_json::Value>>,
    ) -> Result<(), Closing> {
        // A refused init closes the connection, so a second one always follows an accepted one.
        if self.viewer.is_some() {
            return Err(Closing(
                close::TOO_MANY_INITS,
                "Too many initialisation requests".into(),
            ));
        }
        let from_payload = payload.as_ref().and_then(|payload| {
            payload
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case("authorization"))
                .map(|(_, value)| value.as_str().unwrap_or_default().to_owned())
        });
        let authorization = from_payload.or_else(|| self.header_auth.clone());
        let session = self
            .state
            .jwt
            .session_from_header(authorization.as_deref())
            .map_err(|err| {
                Closing(
                    close::UNAUTHORIZED,
                    format!("Unauthorized: {}", err.message()),
                )
            })?;
        let viewer = session.map(|(viewer, _)| viewer);
        let client = Client::new(viewer, self.address);
        if !self.state.sockets.claim(&mut self.slot, &client) {
            ::metrics::counter!(WS_REFUSED, "cap" => "client").increment(1);
            return Err(Closing(
                close::TOO_MANY_INITS,
                format!(
                    "Too many connections for this client: at most {} per instance (FOLLOW_WS_MAX_PER_VIEWER)",
                    self.state.config.ws_max_per_viewer
                ),
            ));
        }
        self.expires = session.map(|(_, expiry)| instant_at(expiry));
        self.viewer = Some(viewer);
        self.client = Some(client);
        self.send(json!({ "type": "connection_ack" }))
    }

    /// Starts an operation whose results go to the client as `next` messages, then `complete`.
    async fn subscribe(
        &mut self,
        id: String,
        request: async_graphql::Request,
    ) -> Result<(), Closing> {
        let (Some(viewer), Some(client)) = (self.viewer, self.client.clone()) else {
            return Err(Closing(close::UNAUTHORIZED, "Unauthorized".into()));
        };
        let limit = self.state.config.ws_max_subscriptions;
        // Only this loop adds operations, so the answer holds until the insert below.
        let (exists, full) = {
            let operations = self.operations();
            (operations.contains_key(&id), operations.len() >= limit)
        };
        if exists {
            return Err(Closing(
                close::SUBSCRIBER_EXISTS,
                format!("Subscriber for {id} already exists"),
            ));
        }
        if full {
            let message = format!(
                "a connection may run at most {limit} operations at once (FOLLOW_WS_MAX_SUBSCRIPTIONS)"
            );
            let error = graphql::request_error(AppError::bad_input(message));
            return self.send(json!({ "id": id, "type": "error", "payload": [error] }));
        }
        let task = tokio::spawn(run_operation(
            self.state.clone(),
            id.clone(),
            (request, viewer, client),
            self.operations.clone(),
            self.outgoing.clone(),
        ));
        self.operations().insert(id, task.abort_handle());
        Ok(())
    }

    fn operations(&self) -> std::sync::MutexGuard<'_, HashMap<String, AbortHandle>> {
        self.operations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Stops every operation of the connection.
    fn stop_all(&self) {
        for (_, operation) in self.operations().drain() {
            operation.abort();
        }
    }

    /// Queues a control message for the client without waiting: the read loop must stay free to
    /// close on time. A full queue means the client stopped reading: the connection closes.
    fn send(&self, message: serde_json::Value) -> Result<(), Closing> {
        match self.outgoing.try_send(text(message)) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => Err(Closing(
                close::POLICY_VIOLATION,
                "the client does not read its messages".into(),
            )),
            Err(mpsc::error::TrySendError::Closed(_)) => Ok(()),
        }
    }
}

/// Drives one operation: each result becomes a `next` message; a request error (the operation could not
/// start: it does not parse or validate) becomes one `error` message; the end becomes `complete`.
async fn run_operation(
    state: HttpState,
    id: String,
    (request, viewer, client): (async_graphql::Request, Option<Viewer>, Client),
    operations: Operations,
    outgoing: mpsc::Sender<Message>,
) {
    let mut request = request;
    match admit(&state, &mut request, viewer, &client).await {
        Ok(()) => {}
        Err(error) => {
            forget(&operations, &id);
            let errors = serde_json::to_value([error]).unwrap_or_default();
            let _ = outgoing
                .send(text(
                    json!({ "id": id, "type": "error", "payload": errors }),
                ))
                .await;
            return;
        }
    }
    let request = graphql::prepare(&state.schema, request, viewer);
    let mut results = state.schema.execute_stream(request);
    let mut first = true;
    while let Some(response) = results.next().await {
        if first && graphql::is_request_error(&response) {
            forget(&operations, &id);
            let errors = serde_json::to_value(&response.errors).unwrap_or_default();
            let _ = outgoing
                .send(text(
                    json!({ "id": id, "type": "error", "payload": errors }),
                ))
                .await;
            return;
        }
        first = false;
        let payload = serde_json::to_value(&response).unwrap_or_default();
        if outgoing
            .send(text(
                json!({ "id": id, "type": "next", "payload": payload }),
            ))
            .await
            .is_err()
        {
            return; // the connection is gone
        }
    }
    // Forget the id before saying so: the client may reuse it as soon as it reads `complete`.
    forget(&operations, &id);
    let _ = outgoing
        .send(text(json!({ "id": id, "type": "complete" })))
        .await;
}

/// Resolves an operation's document and spends its cost (and its registration) against the client's
/// limits, as HTTP does.
async fn admit(
    state: &HttpState,
    request: &mut async_graphql::Request,
    viewer: Option<Viewer>,
    client: &Client,
) -> Result<(), async_graphql::ServerError> {
    let resolved = state.documents.resolve(request).await?;
    Admission::of(state)
        .admit_resolved(&state.documents, client, viewer, resolved)
        .await
        .map(|_| ())
        .map_err(|refused| graphql::request_error(refused.error))
}

fn forget(operations: &Operations, id: &str) {
    if let Ok(mut operations) = operations.lock() {
        operations.remove(id);
    }
}

fn text(message: serde_json::Value) -> Message {
    Message::Text(Utf8Bytes::from(message.to_string()))
}

/// Sleeps until `deadline`, or for ever without one.
async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The instant of a Unix time in seconds (now, if it is past).
fn instant_at(unix_seconds: i64) -> Instant {
    let left = unix_seconds.saturating_sub(chrono::Utc::now().timestamp());
    let left = Duration::from_secs(u64::try_from(left).unwrap_or(0));
    // Tokens' expiries are clamped (auth::MAX_SESSION_SECONDS); this guards the addition all the same.
    let now = Instant::now();
    now.checked_add(left)
        .unwrap_or(now + Duration::from_secs(86_400))
}

/// A close frame; the reason is cut to the 123 bytes a close frame can carry.
fn close_frame(code: u16, reason: &str) -> Message {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(&reason[..end]),
    }))
}

/// Closes a socket at once with `code`.
async fn close_now(mut socket: WebSocket, code: u16, reason: &str) {
    let _ = socket.send(close_frame(code, reason)).await;
}
