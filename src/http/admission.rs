//! Rate limits at the door: who is asking, and what each operation spends before it runs.
//!
//! - **Who**: the viewer (token `sub`) when the request has a valid token, else the client's address:
//!   the peer's, or, when the peer is a trusted proxy (`FOLLOW_TRUSTED_PROXIES`), the nearest address in
//!   `X-Forwarded-For` that is not one. An IPv6 client is its /64, which one subscriber usually holds whole.
//! - **What**: an operation's complexity (see `graphql::cost`) against the reader's points per minute,
//!   as large public GraphQL APIs meter; a mutation's follows and unfollows, one per edge it asks to
//!   change, against a per-minute and a per-day cap (admins are exempt from these caps only); a
//!   persisted query's registration against its own per-minute count.
//! - **Answer**: `RATE_LIMITED` with `extensions.retryAfter`, HTTP 429 with `Retry-After`, and the
//!   `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` headers on every answer that spent.
//!   An operation that could never fit a budget (1,500 follows in one document) is `BAD_USER_INPUT`
//!   naming the limit, since no retry would help.
//!
//! - **Refusals cost too**: a request refused before execution (it does not parse, passes a cost
//!   limit, names an unknown persisted query...) still cost the server its parse, so it spends one
//!   point per [`REFUSED_BYTES_PER_POINT`] bytes of its body. A client that keeps sending 64 KB
//!   documents the limits refuse runs out of points after a few.
//! - **A client out of points is turned away at the door**: once its points are refused, the instance
//!   remembers until when ([`PenaltyBox`]), and [`gate`] answers its requests with 429 before their
//!   body is read or parsed, without asking Redis. An attacker's refused requests then cost nothing.
//!
//! The budgets are shared by every instance through Redis (see `ratelimit`); `FOLLOW_RATE_LIMIT=off`
//! turns them all off, for load benchmarks.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use axum::{
    extract::{ConnectInfo, Request},
    http::{HeaderMap, HeaderName, HeaderValue, header},
    middleware::Next,
    response::Response,
};

use crate::{
    auth::Viewer,
    config::{IpNet, RateSettings},
    error::AppError,
    graphql::cost::Cost,
    ratelimit::{Decision, Limit, Quota, RateLimiter, Verdict},
    telemetry::metrics::RATE_LIMITED,
};

/// The address a request comes from, as the proxies in front say (request extension set by
/// [`client_address`]); `None` when it is not known (a request driven in process).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientAddress(pub Option<IpAddr>);

/// Who spends the budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    /// The key of the client's buckets: `viewer:42` or `ip:203.0.113.9`.
    key: String,
}

impl Client {
    /// The key of this client's buckets and counts.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The viewer when there is one, else the address.
    pub fn new(viewer: Option<Viewer>, address: ClientAddress) -> Self {
        let key = match (viewer, address.0) {
            (Some(viewer), _) => format!("viewer:{}", viewer.user_id),
            (None, Some(IpAddr::V6(v6))) if v6.to_ipv4_mapped().is_none() => {
                let net = u128::from(v6) & (u128::MAX << 64);
                format!("ip:{}/64", std::net::Ipv6Addr::from(net))
            }
            (None, Some(IpAddr::V6(v6))) => format!("ip:{}", v6.to_canonical()),
            (None, Some(ip)) => format!("ip:{ip}"),
            (None, None) => "ip:unknown".to_owned(),
        };
        Self { key }
    }
}

/// An operation the limits refused: the error for the client, and the budget that refused it (for the
/// `RateLimit-*` and `Retry-After` headers).
#[derive(Debug)]
pub struct Refused {
    pub error: AppError,
    pub budget: Option<Decision>,
}

/// Bytes of a refused request's body that cost one point: a 64 KB document refused costs 4,096, a
/// 500-byte typo 31.
pub const REFUSED_BYTES_PER_POINT: usize = 16;

/// Clients whose points were refused, and until when (per instance): their requests are turned away
/// before anything reads them. Bounded; an entry is only a shortcut for what Redis would answer.
pub struct PenaltyBox {
    until: mini_moka::sync::Cache<String, Instant>,
    /// When the last hold ends (ms after `epoch`): past it the box is empty, and a request is let through
    /// without building its client's key or looking it up (the common case costs one clock read).
    last_release_ms: std::sync::atomic::AtomicU64,
    epoch: Instant,
}

impl Default for PenaltyBox {
    fn default() -> Self {
        Self {
            until: mini_moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_secs(120))
                .build(),
            last_release_ms: std::sync::atomic::AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl PenaltyBox {
    /// Whether anyone may be held now.
    fn is_empty(&self) -> bool {
        let now = self.epoch.elapsed().as_millis() as u64;
        now >= self
            .last_release_ms
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How long `client` must still wait, if it must.
    pub fn wait(&self, client: &Client) -> Option<Duration> {
        let until = self.until.get(&client.key)?;
        until.checked_duration_since(Instant::now())
    }

    fn hold(&self, client: &Client, wait: Duration) {
        if wait.is_zero() {
            return;
        }
        let until = Instant::now() + wait;
        let release = (until - self.epoch).as_millis() as u64 + 1;
        self.last_release_ms
            .fetch_max(release, std::sync::atomic::Ordering::Relaxed);
        self.until.insert(client.key.clone(), until);
    }
}

/// The limits, over the shared limiter of the process.
pub struct Admission<'a> {
    limiter: &'a RateLimiter,
    rate: &'a RateSettings,
    penalties: &'a PenaltyBox,
}

/// Metric labels and key suffixes of the limits.
mod names {
    pub const POINTS: &str = "points";
    pub const FOLLOWS_MINUTE: &str = "follows-minute";
    pub const FOLLOWS_DAY: &str = "follows-day";
    pub const REGISTRATIONS: &str = "apq-minute";
}

impl<'a> Admission<'a> {
    /// The limits of the served state.
    pub fn of(state: &'a super::HttpState) -> Self {
        Self {
            limiter: &state.limiter,
            rate: &state.config.rate,
            penalties: &state.penalties,
        }
    }

    /// Charges a request refused before execution for the work its `bytes` cost to read and parse.
    pub async fn charge_refusal(&self, client: &Client, viewer: Option<Viewer>, bytes: usize) {
        if !self.limiter.is_enabled() {
            return;
        }
        let (quota, _) = self.points_quota(viewer);
        let points = saturate(bytes / REFUSED_BYTES_PER_POINT).clamp(1, quota.points);
        let limits = [Limit::new(names::POINTS, &client.key, quota)];
        let decision = self.limiter.check(&limits, points).await;
        if decision.verdict == Verdict::Limited {
            self.penalties.hold(client, decision.retry_after);
        }
    }

    /// The points a client may spend per minute, and the setting that says so.
    fn points_quota(&self, viewer: Option<Viewer>) -> (Quota, &'static str) {
        match viewer {
            Some(_) => (
                Quota::per_minute(self.rate.viewer_points),
                "FOLLOW_RATE_VIEWER_POINTS",
            ),
            None => (
                Quota::per_minute(self.rate.anonymous_points),
                "FOLLOW_RATE_ANONYMOUS_POINTS",
            ),
        }
    }

    /// Spends what a resolved operation costs, as every transport does: its registration as a
    /// persisted query (registered once allowed), then its cost. Returns the budget left.
    pub async fn admit_resolved(
        &self,
        documents: &crate::graphql::documents::Documents,
        client: &Client,
        viewer: Option<Viewer>,
        resolved: crate::graphql::documents::Resolved,
    ) -> Result<Option<Decision>, Refused> {
        if let Some(registration) = resolved.registration {
            self.admit_registration(client).await?;
            documents.register(registration).await;
        }
        match resolved.cost {
            Some(cost) => self.admit(client, viewer, &cost).await,
            None => Ok(None),
        }
    }

    /// Spends what an operation costs; returns the budget to tell the client, or why it must wait.
    pub async fn admit(
        &self,
        client: &Client,
        viewer: Option<Viewer>,
        cost: &Cost,
    ) -> Result<Option<Decision>, Refused> {
        if !self.limiter.is_enabled() {
            return Ok(None);
        }
        let exempt = viewer.is_some_and(|v| v.is_admin);
        if cost.edge_changes > 0 && !exempt {
            let limits = [
                Limit::new(
                    names::FOLLOWS_MINUTE,
                    &client.key,
                    Quota::per_minute(self.rate.follows_per_minute),
                ),
                Limit::new(
                    names::FOLLOWS_DAY,
                    &client.key,
                    Quota::per_day(self.rate.follows_per_day),
                ),
            ];
            let spent = saturate(cost.edge_changes);
            let decision = self.limiter.check(&limits, spent).await;
            refuse_unless_allowed(&decision, || {
                format!(
                    "this operation asks for {spent} follows and unfollows; a viewer may make {} a minute (FOLLOW_RATE_FOLLOWS_PER_MINUTE) and {} a day (FOLLOW_RATE_FOLLOWS_PER_DAY)",
                    self.rate.follows_per_minute, self.rate.follows_per_day
                )
            })?;
        }
        let (quota, setting) = self.points_quota(viewer);
        let points = quota.points;
        // Leased: a busy client's points come from a slice this instance holds (see `ratelimit::lease`).
        let limit = Limit::new(names::POINTS, &client.key, quota);
        let decision = self.limiter.spend(limit, saturate(cost.complexity)).await;
        if decision.verdict == Verdict::Limited {
            self.penalties.hold(client, decision.retry_after);
        }
        refuse_unless_allowed(&decision, || {
            format!(
                "this operation costs {} points; a client may spend {points} a minute ({setting})",
                cost.complexity
            )
        })?;
        Ok(Some(decision))
    }

    /// Spends one registration of a persisted query.
    pub async fn admit_registration(&self, client: &Client) -> Result<(), Refused> {
        if !self.limiter.is_enabled() {
            return Ok(());
        }
        let limits = [Limit::new(
            names::REGISTRATIONS,
            &client.key,
            Quota::per_minute(self.rate.registrations_per_minute),
        )];
        let decision = self.limiter.check(&limits, 1).await;
        refuse_unless_allowed(&decision, || {
            format!(
                "a client may register {} persisted queries a minute (FOLLOW_RATE_APQ_PER_MINUTE)",
                self.rate.registrations_per_minute
            )
        })
    }
}

fn saturate(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// `RATE_LIMITED` (retry later) or `BAD_USER_INPUT` (never fits) unless the decision allowed it.
fn refuse_unless_allowed(
    decision: &Decision,
    explain: impl FnOnce() -> String,
) -> Result<(), Refused> {
    let error = match decision.verdict {
        Verdict::Allowed => return Ok(()),
        Verdict::TooCostly => AppError::bad_input(format!(
            "{}: more than the whole budget, so it can never pass",
            explain()
        )),
        Verdict::Limited => AppError::RateLimited {
            message: format!(
                "rate limited: {}; retry after {} s",
                explain(),
                decision.retry_after_secs()
            ),
            retry_after_secs: decision.retry_after_secs(),
        },
    };
    Err(Refused {
        error,
        budget: Some(*decision),
    })
}

/// The `RateLimit-*` headers of a decision (and `Retry-After` when it refused).
pub fn set_headers(headers: &mut HeaderMap, decision: &Decision) {
    const LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
    const REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
    const RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
    if decision.limit == u32::MAX {
        return; // unlimited: nothing to tell
    }
    headers.insert(LIMIT, HeaderValue::from(decision.limit));
    headers.insert(REMAINING, HeaderValue::from(decision.remaining));
    headers.insert(RESET, HeaderValue::from(decision.reset_secs()));
    if decision.verdict == Verdict::Limited {
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from(decision.retry_after_secs()),
        );
    }
}

/// Middleware on the GraphQL routes: a client in the [`PenaltyBox`] gets 429 `RATE_LIMITED` with
/// `Retry-After` before its body is read. The viewer is read from the token when it is valid (an
/// invalid one is the handler's to refuse with 401).
pub async fn gate(
    axum::extract::State(state): axum::extract::State<super::HttpState>,
    request: Request,
    next: Next,
) -> Response {
    if state.penalties.is_empty() {
        return next.run(request).await;
    }
    let address = request
        .extensions()
        .get::<ClientAddress>()
        .copied()
        .unwrap_or_default();
    let viewer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| state.jwt.viewer_from_header(Some(value)).ok().flatten());
    let client = Client::new(viewer, address);
    match state.penalties.wait(&client) {
        Some(wait) => {
            ::metrics::counter!(RATE_LIMITED, "limit" => "door", "source" => "penalty_box")
                .increment(1);
            turned_away(wait)
        }
        None => next.run(request).await,
    }
}

/// The 429 of a client in the penalty box.
fn turned_away(wait: Duration) -> Response {
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let body = serde_json::json!({
        "errors": [{
            "message": format!("rate limited: this client spent its points; retry after {seconds} s"),
            "extensions": { "code": "RATE_LIMITED", "retryAfter": seconds },
        }]
    });
    let mut response = axum::response::IntoResponse::into_response((
        axum::http::StatusCode::TOO_MANY_REQUESTS,
        body.to_string(),
    ));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// Records the client's address ([`ClientAddress`]) in the request, for the handlers.
pub fn record_client_address(request: &mut Request, trusted: &[IpNet]) {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip());
    let address = ClientAddress(peer.map(|peer| resolve(peer, request.headers(), trusted)));
    request.extensions_mut().insert(address);
}

/// The client's address: the peer, unless the peer is a trusted proxy; then the nearest address in
/// `X-Forwarded-For` (read from the right) that is not a trusted proxy itself.
fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .collect::<Vec<_>>();
    for hop in hops.iter().rev() {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !is_trusted(ip) {
                    break;
                }
            }
            // A hop that is not an address was written by someone untrusted: stop at what we know.
            Err(_) => break,
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarded(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_str(value).expect("value"),
        );
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("ip")
    }

    #[test]
    fn forwarded_for_counts_only_behind_a_trusted_proxy() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let headers = forwarded("198.51.100.7, 203.0.113.5, 10.0.0.2");
        // From a trusted proxy: the nearest untrusted hop, not the left-most (which anyone can forge).
        assert_eq!(
            resolve(ip("10.0.0.1"), &headers, &trusted),
            ip("203.0.113.5")
        );
        // From anywhere else the header is ignored.
        assert_eq!(
            resolve(ip("192.0.2.1"), &headers, &trusted),
            ip("192.0.2.1")
        );
        // No header: the proxy itself.
        assert_eq!(
            resolve(ip("10.0.0.1"), &HeaderMap::new(), &trusted),
            ip("10.0.0.1")
        );
        // Garbage stops the walk at the last address known good.
        let junk = forwarded("nonsense, 10.0.0.9");
        assert_eq!(resolve(ip("10.0.0.1"), &junk, &trusted), ip("10.0.0.9"));
    }

    #[test]
    fn clients_are_viewers_or_addresses() {
        let viewer = Viewer {
            user_id: 42,
            is_admin: false,
        };
        let address = ClientAddress(Some(ip("2001:db8:1:2:3:4:5:6")));
        assert_eq!(Client::new(Some(viewer), address).key, "viewer:42");
        assert_eq!(Client::new(None, address).key, "ip:2001:db8:1:2::/64");
        let mapped = ClientAddress(Some(ip("::ffff:203.0.113.9")));
        assert_eq!(Client::new(None, mapped).key, "ip:203.0.113.9");
        assert_eq!(Client::new(None, ClientAddress(None)).key, "ip:unknown");
    }
}
