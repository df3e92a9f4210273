//! What the HTTP layer serves with: the parts of the application its handlers use, handed down by
//! the composition root (`app`), so that this layer never names the layer that builds it.

use std::{future::Future, ops::Deref, pin::Pin, sync::Arc};

use tokio::sync::watch;

use super::{admission::PenaltyBox, ws::Sockets};
use crate::{
    auth::JwtKeys,
    config::Config,
    graphql::{FollowSchema, documents::Documents},
    ratelimit::RateLimiter,
};

/// The handlers' shared state (axum state); cheap to clone.
#[derive(Clone)]
pub struct HttpState(Arc<HttpParts>);

/// The parts of [`HttpState`].
pub struct HttpParts {
    /// The settings the application was built from.
    pub config: Config,
    /// The executable GraphQL schema.
    pub schema: FollowSchema,
    /// Persisted queries and parsed documents, shared by every transport.
    pub documents: Documents,
    /// Signs and checks bearer tokens.
    pub jwt: JwtKeys,
    /// The rate limits' buckets, shared by every instance through Redis.
    pub limiter: RateLimiter,
    /// Clients out of points, turned away before their requests are read (see `admission`).
    pub penalties: PenaltyBox,
    /// Open websockets, in all and by client, against their caps.
    pub sockets: Sockets,
    /// Turns true when the process begins to shut down: long-lived connections close so clients move.
    pub closing: watch::Sender<bool>,
    /// What `/readyz` asks.
    pub health: Arc<dyn Health>,
}

/// A probe's answer: `Err` carries the driver's words, for the log only.
pub type Probe = Result<(), String>;

/// What `/readyz` needs to know of the process, answered by the layer that owns the stores.
pub trait Health: Send + Sync + 'static {
    /// Whether PostgreSQL and Redis answer, in that order, within the configured timeouts.
    fn probe(&self) -> Pin<Box<dyn Future<Output = (Probe, Probe)> + Send + '_>>;
    /// Whether the start-up cache warm-up is still running.
    fn warming_up(&self) -> bool;
}

impl HttpState {
    /// The state of the parts given.
    pub fn new(parts: HttpParts) -> Self {
        Self(Arc::new(parts))
    }
}

impl Deref for HttpState {
    type Target = HttpParts;

    fn deref(&self) -> &HttpParts {
        &self.0
    }
}
