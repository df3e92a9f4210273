//! Subscription fan-out: S websocket subscribers (graphql-transport-ws, `Subscription.followEvents`),
//! each a distinct followee, split evenly over two `serve` instances that share one database and Redis
//! prefix; a paced follow/unfollow load through instance A by writer users that subscribe to nothing;
//! and, per event, the time from the moment the mutation was sent to the moment its subscriber received
//! it, both read from this process's one monotonic clock.
//!
//! Every write that changed an edge (its answer says `changed: true`) must reach its followee's
//! subscriber exactly once: the run reports events missing, duplicated, unexpected (no such write) and
//! misrouted (to another user's subscriber), and fails if there is any. It also reads each instance's
//! resident memory idle, with its subscribers connected, and at peak (VmHWM).
//!
//! Each size runs on freshly started instances, so their peaks and idle baselines are their own.
//! The writes of one followee all go through one of the client's connections, in order, so a follow
//! and the unfollow of the same pair never race; a pair (writer, followee, kind) is used once per run
//! as long as there are writers enough, so each event is matched to exactly one write.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use bytes::Bytes;
use follow_service::auth::JwtKeys;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream, connect_async_with_config,
    tungstenite::{Message, client::IntoClientRequest, http::HeaderValue},
};

use crate::{
    graph::{self, GraphPlan},
    load, metrics,
    process::{self, ServeSettings, Server},
    report::{
        self,
        subscriptions::{InstanceReport, SizeReport, SubscriptionsReport, markdown},
    },
    scenarios::Request,
};

/// The graph: followees are users 1..=S, writers come after the users and follow nobody at the start.
const GRAPH: GraphPlan = GraphPlan {
    users: 10_000,
    edges: 20_000,
    writers: 1_000,
    exponent: 1.0,
    rng_seed: 17,
};

/// The Redis key prefix both instances share.
const PREFIX: &str = "follow-bench-subscriptions";

const QUERY: &str = "subscription { followEvents { kind at follower { id } followee { id } } }";

/// Websocket handshakes (with `connection_init` and the subscribe) in flight at once.
const HANDSHAKES_IN_FLIGHT: usize = 64;

/// How long after the load the run waits for events still on their way.
const DELIVERY_WAIT: Duration = Duration::from_secs(30);

/// How long it keeps listening once every expected event arrived, to catch late duplicates.
const DUPLICATE_WAIT: Duration = Duration::from_secs(2);

/// What to measure.
pub struct SubscriptionPlan {
    /// Subscriber counts, one run each.
    pub sizes: Vec<usize>,
    /// Follows + unfollows per second.
    pub write_rate: f64,
    pub duration: Duration,
    /// Keep-alive HTTP connections the writes go through.
    pub lanes: usize,
    pub database_url: String,
    pub redis_url: String,
    pub server_env: Vec<String>,
    pub out: PathBuf,
}

/// (follower, followee, follow?) of one event.
type Key = (i64, i64, bool);

/// Runs every size, writes `latest.md` and `latest.json` into `plan.out`, and fails if an event was
/// missing, duplicated, unexpected or misrouted, or a write or subscription failed.
pub async fn run(plan: SubscriptionPlan, server_binary: PathBuf) -> anyhow::Result<()> {
    let largest = plan.sizes.iter().copied().max().unwrap_or(0);
    anyhow::ensure!(
        largest >= 2 && largest as i64 <= GRAPH.users,
        "--subscribers must be from 2 to {}",
        GRAPH.users
    );
    anyhow::ensure!(
        plan.write_rate > 0.0 && plan.lanes > 0,
        "--write-rate and --concurrency must be positive"
    );
    check_open_files(largest)?;
    let started_at = report::started_at();
    let keys = JwtKeys::new(crate::BENCH_SECRET);
    let mut sizes = Vec::new();
    for &subscribers in &plan.sizes {
        println!("subscriptions: {subscribers} subscribers, seeding or reusing the graph…");
        // Writers' edges and the outbox back to empty, counters in line (nothing runs yet).
        graph::ensure_graph(&plan.database_url, GRAPH).await?;
        crate::clear_redis_prefix(&plan.redis_url, PREFIX).await?;
        let mut instances = Vec::new();
        for name in ["a", "b"] {
            instances.push(Instance::start(&plan, &server_binary, name)?);
        }
        let outcome = measure(&plan, &keys, subscribers, &instances).await;
        for instance in &mut instances {
            instance.stop().await;
        }
        let report = outcome?;
        println!(
            "subscriptions: {} subscribers: {} events expected, {} received, {} missing, {} duplicates; \
             latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            report.subscribers,
            report.events_expected,
            report.events_received,
            report.missing,
            report.duplicates,
            report.latency_p50_ms,
            report.latency_p99_ms,
            report.latency_max_ms
        );
        sizes.push(report);
    }
    let run = SubscriptionsReport {
        started_at,
        command: report::command_line(),
        commit: report::git_commit(),
        machine: report::machine(),
        write_rate: plan.write_rate,
        duration_s: plan.duration.as_secs_f64(),
        lanes: plan.lanes,
        server_env: plan.server_env.clone(),
        sizes,
    };
    let markdown = markdown(&run);
    report::save(&plan.out, &markdown, &run)?;
    let faults: Vec<String> = run
        .sizes
        .iter()
        .filter_map(|s| {
            let bad = s.missing
                + s.duplicates
                + s.unexpected
                + s.misrouted
                + s.subscription_errors
                + s.write_errors;
            (bad > 0).then(|| {
                format!(
                    "{} subscribers: {} missing, {} duplicates, {} unexpected, {} misrouted, {} subscription errors, {} write errors",
                    s.subscribers,
                    s.missing,
                    s.duplicates,
                    s.unexpected,
                    s.misrouted,
                    s.subscription_errors,
                    s.write_errors
                )
            })
        })
        .collect();
    if !faults.is_empty() {
        bail!("subscription fan-out faults: {}", faults.join("; "));
    }
    Ok(())
}

/// Fails early when this process (and so the servers it starts) may not open enough sockets.
fn check_open_files(subscribers: usize) -> anyhow::Result<()> {
    let needed = subscribers + 512;
    if let Some(soft) = process::open_file_limit() {
        anyhow::ensure!(
            soft >= needed,
            "the open-file limit is {soft}, {needed} are needed: raise it (ulimit -n) and run again"
        );
    }
    Ok(())
}

/// One `follow-service serve` child.
struct Instance {
    name: &'static str,
    addr: SocketAddr,
    server: Server,
}

impl Instance {
    fn start(
        plan: &SubscriptionPlan,
        binary: &std::path::Path,
        name: &'static str,
    ) -> anyhow::Result<Self> {
        let addr = process::free_local_addr()?;
        let log_path = std::env::temp_dir().join(format!("follow-bench-subscriptions-{name}.log"));
        let server = Server::spawn(
            binary,
            ServeSettings {
                database_url: &plan.database_url,
                redis_url: &plan.redis_url,
                listen: addr,
                redis_prefix: PREFIX,
                secret: crate::BENCH_SECRET,
                log: &log_path,
                extra_env: &plan.server_env,
            },
        )?;
        println!(
            "subscriptions: started instance {name} on {addr} (log: {})",
            log_path.display()
        );
        Ok(Self { name, addr, server })
    }

    /// A `/proc/<pid>/status` figure (`VmRSS`, `VmHWM`) in MiB.
    fn memory_mib(&self, field: &str) -> Option<f64> {
        self.server.memory_mib(field)
    }

    async fn stop(&mut self) {
        self.server.stop().await;
    }
}

/// The sum of a metric's samples (all label sets) in a `/metrics` text; 0 when it has none.
fn metric(text: &str, name: &str) -> f64 {
    metrics::sum(text, name).unwrap_or(0.0)
}

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a socket to `/graphql/ws`, completes `connection_init` as the bearer of `token` and subscribes.
async fn open(addr: SocketAddr, token: &str) -> anyhow::Result<Socket> {
    let mut request = format!("ws://{addr}/graphql/ws").into_client_request()?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("graphql-transport-ws"),
    );
    let (mut socket, _) = connect_async_with_config(request, None, true)
        .await
        .with_context(|| format!("websocket handshake with {addr}"))?;
    let init = json!({ "type": "connection_init", "payload": { "Authorization": format!("Bearer {token}") } });
    socket.send(Message::Text(init.to_string().into())).await?;
    let acknowledged = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(frame) = socket.next().await {
            match frame? {
                Message::Text(text) => return anyhow::Ok(text.as_str().to_owned()),
                Message::Close(frame) => bail!("closed during connection_init: {frame:?}"),
                _ => continue,
            }
        }
        bail!("the socket ended during connection_init")
    })
    .await
    .context("no connection_ack within 30 s")??;
    anyhow::ensure!(
        acknowledged.contains("\"connection_ack\""),
        "expected connection_ack, got {acknowledged}"
    );
    let subscribe = json!({ "id": "1", "type": "subscribe", "payload": { "query": QUERY } });
    socket
        .send(Message::Text(subscribe.to_string().into()))
        .await?;
    Ok(socket)
}

/// One event as a subscriber received it.
struct Receipt {
    key: Key,
    at: Instant,
    instance: usize,
}

/// What a subscriber saw besides its events.
#[derive(Default)]
struct ReaderOutcome {
    misrouted: u64,
    errors: u64,
    first_error: Option<String>,
}

/// Reads `socket` until `stop`; each event goes to `receipts` with the time it was read.
async fn read_events(
    mut socket: Socket,
    user: i64,
    instance: usize,
    receipts: mpsc::UnboundedSender<Receipt>,
    received: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> ReaderOutcome {
    let mut outcome = ReaderOutcome::default();
    let fail = |outcome: &mut ReaderOutcome, what: String| {
        outcome.errors += 1;
        outcome.first_error.get_or_insert(what);
    };
    loop {
        let frame = tokio::select! {
            frame = socket.next() => Some(frame),
            _ = stop.wait_for(|stop| *stop) => None,
        };
        let Some(frame) = frame else {
            let _ = socket.close(None).await;
            return outcome;
        };
        let at = Instant::now();
        let text = match frame {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(Message::Close(frame))) => {
                fail(
                    &mut outcome,
                    format!("user {user}: closed by the server: {frame:?}"),
                );
                return outcome;
            }
            Some(Ok(_)) => continue,
            Some(Err(err)) => {
                fail(&mut outcome, format!("user {user}: {err}"));
                return outcome;
            }
            None => {
                fail(&mut outcome, format!("user {user}: the socket ended"));
                return outcome;
            }
        };
        let message: Value = match serde_json::from_str(text.as_str()) {
            Ok(message) => message,
            Err(err) => {
                fail(
                    &mut outcome,
                    format!("user {user}: not JSON ({err}): {text}"),
                );
                continue;
            }
        };
        match message["type"].as_str() {
            Some("next") => {
                let event = &message["payload"]["data"]["followEvents"];
                let id = |field: &str| event[field]["id"].as_str()?.parse::<i64>().ok();
                let kind = event["kind"].as_str();
                match (id("follower"), id("followee"), kind) {
                    (Some(follower), Some(followee), Some(kind @ ("FOLLOW" | "UNFOLLOW")))
                        if message["payload"]["errors"].is_null() =>
                    {
                        if followee != user {
                            outcome.misrouted += 1;
                        }
                        received.fetch_add(1, Ordering::Relaxed);
                        let _ = receipts.send(Receipt {
                            key: (follower, followee, kind == "FOLLOW"),
                            at,
                            instance,
                        });
                    }
                    _ => fail(&mut outcome, format!("user {user}: {text}")),
                }
            }
            Some("ping") => {
                let _ = socket
                    .send(Message::Text(json!({ "type": "pong" }).to_string().into()))
                    .await;
            }
            Some("pong") => {}
            _ => fail(&mut outcome, format!("user {user}: {text}")),
        }
    }
}

/// One write of the load.
struct Op {
    n: u64,
    writer: i64,
    token: Arc<str>,
    followee: i64,
    follow: bool,
}

/// One write as sent.
struct Sent {
    key: Key,
    at: Instant,
    answered: Instant,
    /// `Some(changed)` when answered without errors.
    changed: Option<bool>,
}

struct LaneOutcome {
    sent: Vec<Sent>,
    errors: u64,
    first_error: Option<String>,
    latency_us: Histogram<u64>,
    max_lag: Duration,
    last_answer: Instant,
}

/// Sends `ops` in order through one keep-alive connection, each at its scheduled time (or as soon as
/// the previous one is answered, when behind).
async fn write_lane(
    addr: SocketAddr,
    ops: Vec<Op>,
    start: tokio::time::Instant,
    rate: f64,
) -> anyhow::Result<LaneOutcome> {
    let mut outcome = LaneOutcome {
        sent: Vec::with_capacity(ops.len()),
        errors: 0,
        first_error: None,
        latency_us: crate::load::latency_histogram()?,
        max_lag: Duration::ZERO,
        last_answer: Instant::now(),
    };
    let mut conn = load::connect(addr).await?;
    for op in ops {
        let due = start + Duration::from_secs_f64(op.n as f64 / rate);
        tokio::time::sleep_until(due).await;
        outcome.max_lag = outcome.max_lag.max(tokio::time::Instant::now() - due);
        let name = if op.follow { "follow" } else { "unfollow" };
        let body = json!({
            "query": format!("mutation($u: ID!) {{ {name}(userId: $u) {{ changed }} }}"),
            "variables": { "u": op.followee.to_string() },
        });
        let request = Request {
            body: Bytes::from(body.to_string()),
            token: Some(op.token),
        };
        let at = Instant::now();
        let answer = load::send(&mut conn, addr, &request).await;
        outcome.last_answer = Instant::now();
        outcome
            .latency_us
            .saturating_record(at.elapsed().as_micros().max(1) as u64);
        let changed = match answer {
            Ok((200, body)) => serde_json::from_slice::<Value>(&body)
                .ok()
                .filter(|v| v["errors"].is_null())
                .and_then(|v| v["data"][name]["changed"].as_bool())
                .ok_or_else(|| format!("HTTP 200: {}", String::from_utf8_lossy(&body))),
            Ok((status, body)) => Err(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&body[..body.len().min(300)])
            )),
            Err(err) => {
                conn = load::connect(addr).await?;
                Err(format!("{err:#}"))
            }
        };
        let changed = match changed {
            Ok(changed) => Some(changed),
            Err(err) => {
                outcome.errors += 1;
                outcome.first_error.get_or_insert(err);
                None
            }
        };
        outcome.sent.push(Sent {
            key: (op.writer, op.followee, op.follow),
            at,
            answered: outcome.last_answer,
            changed,
        });
    }
    Ok(outcome)
}

/// One size: connect the subscribers, run the load, match events to writes, read the memory figures.
async fn measure(
    plan: &SubscriptionPlan,
    keys: &JwtKeys,
    subscribers: usize,
    instances: &[Instance],
) -> anyhow::Result<SizeReport> {
    for instance in instances {
        process::wait_healthy(instance.addr).await?;
    }
    // Let both settle (pools, the fan-out's first XREAD) before the idle reading.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle: Vec<Option<f64>> = instances.iter().map(|i| i.memory_mib("VmRSS")).collect();
    let before: Vec<String> = metrics(instances).await;

    // Subscribers: user i on instance (i − 1) % 2.
    let connecting = Instant::now();
    let sockets: Vec<(i64, usize, Socket)> = futures::stream::iter(1..=subscribers as i64)
        .map(|user| {
            let instance = (user as usize - 1) % instances.len();
            let addr = instances[instance].addr;
            let token = keys.issue(user, false, 24 * 3600);
            async move {
                let socket = open(addr, &token?)
                    .await
                    .with_context(|| format!("subscriber {user}"))?;
                anyhow::Ok((user, instance, socket))
            }
        })
        .buffer_unordered(HANDSHAKES_IN_FLIGHT)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let (receipts_tx, mut receipts_rx) = mpsc::unbounded_channel();
    let received = Arc::new(AtomicU64::new(0));
    let (stop, stopped) = watch::channel(false);
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|(user, instance, socket)| {
            tokio::spawn(read_events(
                socket,
                user,
                instance,
                receipts_tx.clone(),
                received.clone(),
                stopped.clone(),
            ))
        })
        .collect();
    drop(receipts_tx);
    // The server does not acknowledge a subscribe: wait for its gauge to count them all.
    let since = Instant::now();
    loop {
        let active: f64 = metrics(instances)
            .await
            .iter()
            .map(|m| metric(m, "follow_subscriptions_active"))
            .sum();
        if active as usize >= subscribers {
            break;
        }
        if since.elapsed() > Duration::from_secs(60) {
            let _ = stop.send(true);
            bail!("only {active} of {subscribers} subscriptions active after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let connect_s = connecting.elapsed().as_secs_f64();
    println!("subscriptions: {subscribers} subscribers connected in {connect_s:.1} s");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let connected: Vec<Option<f64>> = instances.iter().map(|i| i.memory_mib("VmRSS")).collect();

    // The load: op n at n / rate s; followee n % S; writer and kind by round, so a pair follows then
    // unfollows; all writes of one followee through the same lane, in order.
    let total = (plan.write_rate * plan.duration.as_secs_f64()).round() as u64;
    let lanes = plan.lanes.min(subscribers);
    let mut tokens: HashMap<i64, Arc<str>> = HashMap::new();
    let mut lane_ops: Vec<Vec<Op>> = (0..lanes).map(|_| Vec::new()).collect();
    for n in 0..total {
        let index = (n % subscribers as u64) as usize;
        let round = n / subscribers as u64;
        let writer = GRAPH.users + 1 + ((round / 2) % GRAPH.writers as u64) as i64;
        let token = match tokens.get(&writer) {
            Some(token) => token.clone(),
            None => {
                let token: Arc<str> = Arc::from(keys.issue(writer, false, 24 * 3600)?);
                tokens.insert(writer, token.clone());
                token
            }
        };
        lane_ops[index % lanes].push(Op {
            n,
            writer,
            token,
            followee: index as i64 + 1,
            follow: round.is_multiple_of(2),
        });
    }
    let writer_addr = instances[0].addr;
    let start = tokio::time::Instant::now() + Duration::from_millis(100);
    let load_started = Instant::now();
    let lane_tasks: Vec<_> = lane_ops
        .into_iter()
        .map(|ops| tokio::spawn(write_lane(writer_addr, ops, start, plan.write_rate)))
        .collect();
    let mut sent = Vec::with_capacity(total as usize);
    let mut write_errors = 0;
    let mut first_write_error = None;
    let mut write_latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut max_lag = Duration::ZERO;
    let mut last_answer = load_started;
    for task in lane_tasks {
        let lane = task.await??;
        sent.extend(lane.sent);
        write_errors += lane.errors;
        first_write_error = first_write_error.or(lane.first_error);
        write_latency.add(lane.latency_us)?;
        max_lag = max_lag.max(lane.max_lag);
        last_answer = last_answer.max(lane.last_answer);
    }
    let load_seconds = load_started.elapsed().as_secs_f64() - 0.1;
    let expected = sent.iter().filter(|s| s.changed == Some(true)).count() as u64;

    // Wait for what is still on its way, then a little more for duplicates.
    let waiting = Instant::now();
    while received.load(Ordering::Relaxed) < expected && waiting.elapsed() < DELIVERY_WAIT {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(DUPLICATE_WAIT).await;
    let peak: Vec<Option<f64>> = instances.iter().map(|i| i.memory_mib("VmHWM")).collect();
    let after = metrics(instances).await;
    let _ = stop.send(true);
    let mut subscription_errors = 0;
    let mut first_subscription_error = None;
    let mut misrouted = 0;
    for reader in readers {
        let outcome = reader.await?;
        subscription_errors += outcome.errors;
        misrouted += outcome.misrouted;
        first_subscription_error = first_subscription_error.or(outcome.first_error);
    }
    let mut receipts = Vec::new();
    while let Some(receipt) = receipts_rx.recv().await {
        receipts.push(receipt);
    }

    // Match each event to the earliest unmatched changing write of its key.
    sent.sort_by_key(|s| s.at);
    receipts.sort_by_key(|r| r.at);
    let mut outstanding: HashMap<Key, VecDeque<(Instant, Instant)>> = HashMap::new();
    let mut failed_keys = HashSet::new();
    for s in &sent {
        match s.changed {
            Some(true) => outstanding
                .entry(s.key)
                .or_default()
                .push_back((s.at, s.answered)),
            Some(false) => {}
            None => {
                failed_keys.insert(s.key);
            }
        }
    }
    let expected_keys: HashSet<Key> = outstanding.keys().copied().collect();
    let new_histogram = || Histogram::<u64>::new_with_bounds(1, 600_000_000, 3);
    let mut latency = new_histogram()?;
    let mut by_instance = instances
        .iter()
        .map(|_| new_histogram())
        .collect::<Result<Vec<_>, _>>()?;
    // How long after the write's own answer its event arrived (zero when it arrived first).
    let mut after_answer = new_histogram()?;
    let mut before_answer = 0u64;
    let (mut duplicates, mut unexpected, mut from_failed) = (0, 0, 0);
    let mut last_delivery = last_answer;
    for receipt in &receipts {
        match outstanding
            .get_mut(&receipt.key)
            .and_then(VecDeque::pop_front)
        {
            Some((at, answered)) => {
                let micros = receipt.at.saturating_duration_since(at).as_micros().max(1) as u64;
                if receipt.at < answered {
                    before_answer += 1;
                }
                after_answer.saturating_record(
                    receipt
                        .at
                        .saturating_duration_since(answered)
                        .as_micros()
                        .max(1) as u64,
                );
                latency.saturating_record(micros);
                by_instance[receipt.instance].saturating_record(micros);
                last_delivery = last_delivery.max(receipt.at);
            }
            None if failed_keys.contains(&receipt.key) => from_failed += 1,
            None if expected_keys.contains(&receipt.key) => duplicates += 1,
            None => unexpected += 1,
        }
    }
    let missing: u64 = outstanding.values().map(|v| v.len() as u64).sum();
    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let instance_reports = instances
        .iter()
        .enumerate()
        .map(|(i, instance)| {
            let on_it = (subscribers + instances.len() - 1 - i) / instances.len();
            let delta = |name: &str| metric(&after[i], name) - metric(&before[i], name);
            InstanceReport {
                name: instance.name,
                subscribers: on_it,
                delivered_by_server: delta("follow_subscription_events_total"),
                overruns: delta("follow_subscriptions_overrun_total"),
                latency_p50_ms: ms(&by_instance[i], 0.5),
                latency_p99_ms: ms(&by_instance[i], 0.99),
                latency_max_ms: by_instance[i].max() as f64 / 1000.0,
                idle_rss_mib: idle[i],
                connected_rss_mib: connected[i],
                peak_rss_mib: peak[i],
                per_1000_subscribers_mib: match (idle[i], connected[i]) {
                    (Some(idle), Some(connected)) if on_it > 0 => {
                        Some((connected - idle) * 1000.0 / on_it as f64)
                    }
                    _ => None,
                },
            }
        })
        .collect();
    Ok(SizeReport {
        subscribers,
        connect_s,
        writes: sent.len() as u64,
        writes_per_s: sent.len() as f64 / load_seconds,
        write_errors,
        first_write_error,
        write_p50_ms: ms(&write_latency, 0.5),
        write_p99_ms: ms(&write_latency, 0.99),
        max_schedule_lag_ms: max_lag.as_secs_f64() * 1000.0,
        events_expected: expected,
        events_received: receipts.len() as u64,
        missing,
        duplicates,
        unexpected,
        from_failed_writes: from_failed,
        misrouted,
        subscription_errors,
        first_subscription_error,
        drain_ms: last_delivery
            .saturating_duration_since(last_answer)
            .as_secs_f64()
            * 1000.0,
        latency_p50_ms: ms(&latency, 0.5),
        latency_p90_ms: ms(&latency, 0.9),
        latency_p99_ms: ms(&latency, 0.99),
        latency_p999_ms: ms(&latency, 0.999),
        latency_max_ms: latency.max() as f64 / 1000.0,
        before_answer_share: before_answer as f64 / (expected - missing).max(1) as f64,
        after_answer_p50_ms: ms(&after_answer, 0.5),
        after_answer_p99_ms: ms(&after_answer, 0.99),
        after_answer_max_ms: after_answer.max() as f64 / 1000.0,
        instances: instance_reports,
    })
}

/// Each instance's `/metrics` (empty when it does not answer).
async fn metrics(instances: &[Instance]) -> Vec<String> {
    let mut texts = Vec::new();
    for instance in instances {
        texts.push(metrics::scrape(instance.addr).await.unwrap_or_default());
    }
    texts
}
