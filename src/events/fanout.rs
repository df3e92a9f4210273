//! Live fan-out of follow events to this instance's subscribers.
//!
//! Every instance runs one [`run`] task that tails the stream with plain `XREAD` (no consumer group:
//! each instance must see every event, and reading takes nothing from the counters' group). It hands
//! each event to the [`EventHub`], which routes it only to the subscribers of the user it concerns (the
//! followee), so the cost of an event does not grow with the number of subscribers of other users.
//!
//! A subscriber owns a bounded queue. The hub never waits for a subscriber: when a queue is full the
//! subscriber is marked as overrun and its subscription ends with an error the client can act on
//! (subscribe again and re-read what it shows), instead of stalling the others or growing memory.
//! The relay may publish an event twice (when the counters lag); the hub drops ids it has just seen.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
    time::Duration,
};

use futures::Stream;
use tokio::sync::{mpsc, watch};

use super::{FollowEvent, StreamNames};
use crate::{
    redis_pool::redis::{self, streams::StreamReadReply},
    telemetry::metrics::{SUBSCRIBERS, SUBSCRIPTION_EVENTS, SUBSCRIPTIONS_OVERRUN},
};

/// How many recent event ids the hub remembers to drop the relay's republished duplicates.
const RECENT_IDS: usize = 8_192;

/// Routes events to the subscribers of each user; cheap to clone.
#[derive(Clone)]
pub struct EventHub {
    inner: Arc<HubInner>,
}

struct HubInner {
    /// Subscribers by the user whose events they want; each has a bounded queue.
    routes: Mutex<Routes>,
    /// Events one subscriber may have queued before it counts as overrun.
    buffer: usize,
}

#[derive(Default)]
struct Routes {
    by_user: HashMap<i64, Vec<Subscriber>>,
    next_id: u64,
    recent: RecentIds,
}

struct Subscriber {
    id: u64,
    queue: mpsc::Sender<FollowEvent>,
}

/// What a subscription yields: an event, or the notice that it fell too far behind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    Event(FollowEvent),
    /// The subscriber's queue overflowed: events were dropped and the subscription is over.
    Overrun,
}

impl EventHub {
    /// A hub whose subscribers may each have `buffer` events waiting.
    pub fn new(buffer: usize) -> Self {
        Self {
            inner: Arc::new(HubInner {
                routes: Mutex::new(Routes::default()),
                buffer: buffer.max(1),
            }),
        }
    }

    /// Subscribes to the events whose followee is `user_id`.
    pub fn subscribe(&self, user_id: i64) -> EventSubscription {
        let (queue, receiver) = mpsc::channel(self.inner.buffer);
        let mut routes = self.routes();
        routes.next_id += 1;
        let id = routes.next_id;
        routes
            .by_user
            .entry(user_id)
            .or_default()
            .push(Subscriber { id, queue });
        ::metrics::gauge!(SUBSCRIBERS).increment(1.0);
        EventSubscription {
            receiver,
            hub: self.clone(),
            user_id,
            id,
            finished: false,
        }
    }

    /// Hands an event to the subscribers of its followee; never waits. Returns how many received it.
    pub fn publish(&self, event: &FollowEvent) -> usize {
        let mut routes = self.routes();
        if !routes.recent.insert(event.id) {
            return 0; // a republished duplicate
        }
        let Some(subscribers) = routes.by_user.get_mut(&event.followee_id) else {
            return 0;
        };
        let mut delivered = 0;
        subscribers.retain(
            |subscriber| match subscriber.queue.try_send(event.clone()) {
                Ok(()) => {
                    delivered += 1;
                    true
                }
                // Full: dropping the sender ends the subscriber's stream with `Overrun` once it drains.
                Err(mpsc::error::TrySendError::Full(_)) => {
                    ::metrics::counter!(SUBSCRIPTIONS_OVERRUN).increment(1);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            },
        );
        if subscribers.is_empty() {
            routes.by_user.remove(&event.followee_id);
        }
        ::metrics::counter!(SUBSCRIPTION_EVENTS).increment(delivered as u64);
        delivered
    }

    /// Subscriptions open on this instance.
    pub fn subscriber_count(&self) -> usize {
        self.routes().by_user.values().map(Vec::len).sum()
    }

    fn routes(&self) -> MutexGuard<'_, Routes> {
        // A panic while holding the lock leaves the routes consistent (each step is one map edit).
        self.inner
            .routes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn unsubscribe(&self, user_id: i64, id: u64) {
        let mut routes = self.routes();
        if let Some(subscribers) = routes.by_user.get_mut(&user_id) {
            subscribers.retain(|s| s.id != id);
            if subscribers.is_empty() {
                routes.by_user.remove(&user_id);
            }
        }
    }
}

/// One subscriber's events; unsubscribes when dropped.
pub struct EventSubscription {
    receiver: mpsc::Receiver<FollowEvent>,
    hub: EventHub,
    user_id: i64,
    id: u64,
    finished: bool,
}

impl Stream for EventSubscription {
    type Item = Delivery;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Delivery>> {
        if self.finished {
            return Poll::Ready(None);
        }
        match self.receiver.poll_recv(cx) {
            Poll::Ready(Some(event)) => Poll::Ready(Some(Delivery::Event(event))),
            // The hub dropped our queue's sender: only an overflow does that while we are alive.
            Poll::Ready(None) => {
                self.finished = true;
                Poll::Ready(Some(Delivery::Overrun))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for EventSubscription {
    fn drop(&mut self) {
        self.hub.unsubscribe(self.user_id, self.id);
        ::metrics::gauge!(SUBSCRIBERS).decrement(1.0);
    }
}

/// A bounded set of the most recent event ids.
#[derive(Default)]
struct RecentIds {
    order: VecDeque<i64>,
    seen: HashSet<i64>,
}

impl RecentIds {
    /// Remembers `id`; false if it was already remembered.
    fn insert(&mut self, id: i64) -> bool {
        if !self.seen.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > RECENT_IDS
            && let Some(oldest) = self.order.pop_front()
        {
            self.seen.remove(&oldest);
        }
        true
    }
}

/// Tails the stream and publishes every event to `hub`, until `shutdown` turns true. It starts at
/// Redis's clock when it first connects (not at `$` when the first XREAD arrives, which would lose what
/// was appended in between). After a failure it reconnects and goes on from the last entry it read;
/// entry ids are Redis times, so even a Redis that lost its data numbers new entries after that one.
pub async fn run(
    hub: EventHub,
    redis_url: String,
    names: StreamNames,
    block: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut last_id: Option<String> = None;
    let mut backoff = Duration::from_millis(100);
    let mut conn = None;
    while !*shutdown.borrow() {
        let step = async {
            let connection = match conn.as_mut() {
                Some(c) => c,
                None => conn.insert(crate::redis_pool::dedicated(&redis_url, block).await?),
            };
            let from = match last_id.as_mut() {
                Some(id) => id,
                None => last_id.insert(redis_now(connection).await?),
            };
            read_once(connection, &names, from, block, &hub).await
        };
        let outcome = tokio::select! {
            outcome = step => outcome,
            _ = shutdown.changed() => break,
        };
        match outcome {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(err) => {
                tracing::warn!(error = %format!("{err:#}"), "event fan-out read failed; retrying");
                conn = None;
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {},
                    _ = shutdown.changed() => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The stream id of Redis's current time: entries appended from now on come after it.
async fn redis_now(conn: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<String> {
    let (seconds, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await?;
    Ok(format!(
        "{}-0",
        (seconds * 1_000 + micros / 1_000).saturating_sub(1)
    ))
}

/// Reads what was appended after `last_id` (blocking up to `block`) and publishes it.
async fn read_once(
    conn: &mut redis::aio::MultiplexedConnection,
    names: &StreamNames,
    last_id: &mut String,
    block: Duration,
    hub: &EventHub,
) -> anyhow::Result<()> {
    let reply: Option<StreamReadReply> = redis::cmd("XREAD")
        .arg("COUNT")
        .arg(1_000)
        .arg("BLOCK")
        .arg(block.as_millis() as u64)
        .arg("STREAMS")
        .arg(&names.stream)
        .arg(last_id.as_str())
        .query_async(conn)
        .await?;
    for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
        if let Some(event) = FollowEvent::from_fields(&entry.map) {
            hub.publish(&event);
        }
        *last_id = entry.id;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;
    use crate::events::FollowEventKind;

    fn event(id: i64, followee_id: i64) -> FollowEvent {
        FollowEvent {
            id,
            kind: FollowEventKind::Follow,
            follower_id: 1,
            followee_id,
            at: chrono::DateTime::UNIX_EPOCH,
        }
    }

    #[tokio::test]
    async fn an_event_reaches_only_the_subscribers_of_its_followee() {
        let hub = EventHub::new(8);
        let mut mine = hub.subscribe(2);
        let mut other = hub.subscribe(3);
        assert_eq!(hub.publish(&event(10, 2)), 1);
        assert_eq!(mine.next().await, Some(Delivery::Event(event(10, 2))));
        assert!(futures::poll!(other.next()).is_pending());
    }

    #[tokio::test]
    async fn a_republished_event_is_delivered_once() {
        let hub = EventHub::new(8);
        let mut sub = hub.subscribe(2);
        let e = event(10, 2);
        assert_eq!(hub.publish(&e), 1);
        assert_eq!(hub.publish(&e), 0);
        assert_eq!(sub.next().await, Some(Delivery::Event(e)));
        assert!(futures::poll!(sub.next()).is_pending());
    }

    #[tokio::test]
    async fn a_full_queue_ends_that_subscription_and_no_other() {
        let hub = EventHub::new(2);
        let mut slow = hub.subscribe(2);
        let mut fast = hub.subscribe(2);
        for id in 1..=3 {
            hub.publish(&event(id, 2));
            // The fast subscriber keeps up.
            assert!(matches!(fast.next().await, Some(Delivery::Event(_))));
        }
        assert!(matches!(slow.next().await, Some(Delivery::Event(e)) if e.id == 1));
        assert!(matches!(slow.next().await, Some(Delivery::Event(e)) if e.id == 2));
        assert_eq!(slow.next().await, Some(Delivery::Overrun));
        assert_eq!(slow.next().await, None);
        assert_eq!(hub.subscriber_count(), 1);
        assert_eq!(hub.publish(&event(4, 2)), 1);
    }

    #[tokio::test]
    async fn dropping_a_subscription_unsubscribes_it() {
        let hub = EventHub::new(2);
        let sub = hub.subscribe(2);
        assert_eq!(hub.subscriber_count(), 1);
        drop(sub);
        assert_eq!(hub.subscriber_count(), 0);
        assert_eq!(hub.publish(&event(1, 2)), 0);
    }
}
