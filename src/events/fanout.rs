//! Live fan-out of follow events to this instance's subscribers.
//!
//! Every instance runs one [`run`] task that tails the stream with plain `XREAD` (no consumer group:
//! each instance must see every event, and reading takes nothing from the counters' group): one `XREAD`
//! loop per partition read, each on its own connection (a blocking read holds its connection, and on a
//! Redis Cluster the partitions' keys live in different slots, so one `XREAD` of several would be
//! refused as CROSSSLOT). Every change of one edge is in its followee's partition, so the partitions'
//! interleaving never reorders an edge's events (but while P changes, see `ARCHITECTURE.md`). It hands
//! each event to the [`EventHub`], which routes it only to the subscribers of the user it concerns (its
//! recipient: the followee of a follow, an unfollow or a request, the follower of an approval; nobody
//! for a removal), so the cost of an event does not grow with the number of subscribers of other users.
//!
//! A subscriber owns a bounded queue. The hub never waits for a subscriber: when a queue is full the
//! subscriber is marked as overrun and its subscription ends with an error the client can act on
//! (subscribe again and re-read what it shows), instead of stalling the others or growing memory.
//!
//! An event can reach the stream twice (the relay republishes a row whose entry it could not find, a
//! writer's XADD is retried), any time later. The hub drops it by its outbox id: per edge (follower,
//! followee) it keeps the highest id it delivered, and an event whose id is not above its edge's mark is
//! a duplicate or an older change of that edge that a newer one already superseded (changes of one edge
//! are numbered in commit order). A mark per followee would not do: two follows of one user commit and
//! reach the stream in either order. Nor would one per pair of users: the approval of F's request to
//! follow E (edge F → E, in E's partition) and E's follow of F (edge E → F, in F's partition) are both
//! told to F about E, and may arrive in either order. See [`Marks`] for what bounds their memory.

use std::{
    collections::{HashMap, VecDeque, hash_map::Entry},
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard},
    task::{Context, Poll},
    time::Duration,
};

use futures::Stream;
use tokio::sync::{mpsc, watch};

use super::{StreamNames, codec};
use crate::{
    domain::{EventId, FollowEvent, UserId},
    redis_pool::redis::{self, streams::StreamReadReply},
    telemetry::metrics::{SUBSCRIBERS, SUBSCRIPTION_EVENTS, SUBSCRIPTIONS_OVERRUN},
};

/// How many edge marks the hub keeps at most (about 4 MiB with their queue): see [`Marks`].
const MARKS: usize = 65_536;

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

struct Routes {
    by_user: HashMap<UserId, Vec<Subscriber>>,
    next_id: u64,
    marks: Marks,
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
                routes: Mutex::new(Routes {
                    by_user: HashMap::new(),
                    next_id: 0,
                    marks: Marks::new(MARKS),
                }),
                buffer: buffer.max(1),
            }),
        }
    }

    /// Subscribes to the events whose followee is `user_id`.
    pub fn subscribe(&self, user_id: UserId) -> EventSubscription {
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

    /// Hands an event to the subscribers of its recipient (see [`FollowEvent::recipient`]); never
    /// waits. Returns how many received it.
    pub fn publish(&self, event: &FollowEvent) -> usize {
        let Some(recipient) = event.recipient() else {
            return 0;
        };
        let mut routes = self.routes();
        let Routes { by_user, marks, .. } = &mut *routes;
        let Some(subscribers) = by_user.get_mut(&recipient) else {
            return 0;
        };
        if !marks.admit(recipient, (event.follower, event.followee), event.id) {
            return 0; // delivered before, or superseded
        }
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
            by_user.remove(&recipient);
            marks.forget(recipient);
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

    fn unsubscribe(&self, user_id: UserId, id: u64) {
        let mut routes = self.routes();
        if let Some(subscribers) = routes.by_user.get_mut(&user_id) {
            subscribers.retain(|s| s.id != id);
            if subscribers.is_empty() {
                routes.by_user.remove(&user_id);
                routes.marks.forget(user_id);
            }
        }
    }
}

/// One subscriber's events; unsubscribes when dropped.
pub struct EventSubscription {
    receiver: mpsc::Receiver<FollowEvent>,
    hub: EventHub,
    user_id: UserId,
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

/// The highest outbox id delivered per edge, for the followees that have subscribers here.
///
/// Memory is bounded twice. Marks exist only for followees with a subscriber on this instance (events
/// of other users are not delivered, so need no mark) and go when their last subscriber does. And there
/// are at most `capacity` of them: past it, the oldest mark set goes, and its followee's `floor` rises to
/// its id, so any later event of that followee with an id at or below the floor is dropped too. A repeat
/// of an evicted edge's event is still dropped; what the floor could also drop is a first delivery that
/// arrives after `capacity` newer marks were set (an XADD lost at commit whose relay copy comes seconds
/// later behind that many events of subscribed users): it is treated as superseded.
struct Marks {
    by_followee: HashMap<UserId, FolloweeMarks>,
    /// (recipient, edge, id) in the order marks were set; an entry whose mark has since moved on or
    /// gone is skipped when its turn comes. Its length bounds the number of marks.
    order: VecDeque<(UserId, Edge, EventId)>,
    capacity: usize,
}

/// An edge, (follower, followee): one of its ends is the recipient whose marks hold it.
type Edge = (UserId, UserId);

#[derive(Default)]
struct FolloweeMarks {
    /// Events of this followee with an id at or below it are dropped (raised by evictions).
    floor: EventId,
    /// The highest id delivered per edge of this recipient.
    by_edge: HashMap<Edge, EventId>,
}

impl Marks {
    fn new(capacity: usize) -> Self {
        Self {
            by_followee: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Whether the event `id` of `edge`, told to `recipient`, is new for the edge; if so it becomes the
    /// edge's mark.
    fn admit(&mut self, recipient: UserId, edge: Edge, id: EventId) -> bool {
        let followee = self.by_followee.entry(recipient).or_default();
        if id <= followee.floor {
            return false;
        }
        match followee.by_edge.entry(edge) {
            Entry::Occupied(mark) if *mark.get() >= id => return false,
            Entry::Occupied(mut mark) => *mark.get_mut() = id,
            Entry::Vacant(mark) => {
                mark.insert(id);
            }
        }
        // Make room first, so the queue never outgrows its capacity (nor its allocation, the next
        // power of two).
        while self.order.len() >= self.capacity {
            let Some((followee_id, edge, id)) = self.order.pop_front() else {
                break;
            };
            if let Some(followee) = self.by_followee.get_mut(&followee_id)
                && followee.by_edge.get(&edge) == Some(&id)
            {
                followee.by_edge.remove(&edge);
                followee.floor = followee.floor.max(id);
            }
        }
        self.order.push_back((recipient, edge, id));
        true
    }

    /// Drops the marks of a followee that has no subscriber here any more.
    fn forget(&mut self, followee_id: UserId) {
        self.by_followee.remove(&followee_id);
    }

    /// Marks held (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_followee.values().map(|f| f.by_edge.len()).sum()
    }
}

/// Tails every partition in `partitions` and publishes every event to `hub`, until `shutdown` turns
/// true.
pub async fn run(
    hub: EventHub,
    redis: crate::redis_pool::RedisTarget,
    partitions: Vec<StreamNames>,
    block: Duration,
    shutdown: watch::Receiver<bool>,
) {
    let tails = partitions
        .into_iter()
        .map(|names| tail(&hub, redis.clone(), names, block, shutdown.clone()));
    futures::future::join_all(tails).await;
}

/// Tails one partition. It starts at Redis's clock when it first connects (not at `$` when the first
/// XREAD arrives, which would lose what was appended in between). After a failure it reconnects and goes
/// on from the last entry it read; entry ids are Redis times, so even a Redis that lost its data numbers
/// new entries after that one.
async fn tail(
    hub: &EventHub,
    redis: crate::redis_pool::RedisTarget,
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
                None => conn.insert(crate::redis_pool::dedicated(&redis, block).await?),
            };
            let from = match last_id.as_mut() {
                Some(id) => id,
                None => last_id.insert(redis_now(connection).await?),
            };
            read_once(connection, &names, from, block, hub).await
        };
        let outcome = tokio::select! {
            outcome = step => outcome,
            _ = shutdown.changed() => break,
        };
        match outcome {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(err) => {
                tracing::warn!(error = %format!("{err:#}"), partition = names.partition, "event fan-out read failed; retrying");
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
async fn redis_now(conn: &mut crate::redis_pool::Dedicated) -> anyhow::Result<String> {
    let (seconds, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await?;
    Ok(format!(
        "{}-0",
        (seconds * 1_000 + micros / 1_000).saturating_sub(1)
    ))
}

/// Reads what was appended after `last_id` (blocking up to `block`) and publishes it.
async fn read_once(
    conn: &mut crate::redis_pool::Dedicated,
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
        if let Some(event) = codec::decode(&entry.map) {
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
    use crate::domain::EventKind as FollowEventKind;

    fn event(id: i64, followee_id: i64) -> FollowEvent {
        edge_event(id, 1, followee_id)
    }

    fn edge_event(id: i64, follower_id: i64, followee_id: i64) -> FollowEvent {
        FollowEvent {
            id: EventId(id),
            kind: FollowEventKind::Follow,
            follower: UserId(follower_id),
            followee: UserId(followee_id),
            at: chrono::DateTime::UNIX_EPOCH,
        }
    }

    #[tokio::test]
    async fn an_approval_reaches_the_requester_and_a_removal_reaches_nobody() {
        let hub = EventHub::new(8);
        let mut requester = hub.subscribe(UserId(1));
        let mut owner = hub.subscribe(UserId(2));
        let approval = FollowEvent {
            kind: FollowEventKind::Approve,
            ..edge_event(10, 1, 2)
        };
        let removal = FollowEvent {
            kind: FollowEventKind::Remove,
            ..edge_event(11, 1, 2)
        };
        assert_eq!(hub.publish(&approval), 1);
        assert_eq!(hub.publish(&removal), 0);
        assert_eq!(requester.next().await, Some(Delivery::Event(approval)));
        let request = FollowEvent {
            kind: FollowEventKind::Request,
            ..edge_event(12, 3, 2)
        };
        assert_eq!(hub.publish(&request), 1);
        assert_eq!(owner.next().await, Some(Delivery::Event(request)));
    }

    #[tokio::test]
    async fn an_event_reaches_only_the_subscribers_of_its_followee() {
        let hub = EventHub::new(8);
        let mut mine = hub.subscribe(UserId(2));
        let mut other = hub.subscribe(UserId(3));
        assert_eq!(hub.publish(&event(10, 2)), 1);
        assert_eq!(mine.next().await, Some(Delivery::Event(event(10, 2))));
        assert!(futures::poll!(other.next()).is_pending());
    }

    #[tokio::test]
    async fn a_republished_event_is_delivered_once() {
        let hub = EventHub::new(8);
        let mut sub = hub.subscribe(UserId(2));
        let e = event(10, 2);
        assert_eq!(hub.publish(&e), 1);
        assert_eq!(hub.publish(&e), 0);
        assert_eq!(sub.next().await, Some(Delivery::Event(e)));
        assert!(futures::poll!(sub.next()).is_pending());
    }

    #[tokio::test]
    async fn a_repeat_is_dropped_however_many_events_came_between() {
        let hub = EventHub::new(8);
        let mut sub = hub.subscribe(UserId(2));
        let first = edge_event(10, 1, 2);
        assert_eq!(hub.publish(&first), 1);
        assert_eq!(sub.next().await, Some(Delivery::Event(first.clone())));
        // Many events of users nobody here subscribes to: they leave no mark.
        for id in 11..20_000 {
            assert_eq!(hub.publish(&edge_event(id, 1, 3)), 0);
        }
        assert_eq!(hub.publish(&first), 0);
        assert!(futures::poll!(sub.next()).is_pending());
    }

    #[tokio::test]
    async fn two_followers_events_arriving_out_of_order_are_both_delivered() {
        let hub = EventHub::new(8);
        let mut sub = hub.subscribe(UserId(2));
        assert_eq!(hub.publish(&edge_event(11, 3, 2)), 1);
        assert_eq!(hub.publish(&edge_event(10, 4, 2)), 1);
        assert!(matches!(sub.next().await, Some(Delivery::Event(e)) if e.id == EventId(11)));
        assert!(matches!(sub.next().await, Some(Delivery::Event(e)) if e.id == EventId(10)));
    }

    #[tokio::test]
    async fn an_older_change_of_an_edge_after_a_newer_one_is_dropped() {
        let hub = EventHub::new(8);
        let _sub = hub.subscribe(UserId(2));
        assert_eq!(hub.publish(&edge_event(12, 3, 2)), 1);
        assert_eq!(hub.publish(&edge_event(11, 3, 2)), 0);
    }

    #[tokio::test]
    async fn an_approval_and_a_follow_back_told_to_one_user_arrive_in_either_order() {
        // F (1) asked to follow E (2): E approves (edge 1 → 2, id 10), then follows F back (edge 2 → 1,
        // id 11). Both are told to F; from two partitions, the follow back may be read first.
        let hub = EventHub::new(8);
        let mut requester = hub.subscribe(UserId(1));
        let approval = FollowEvent {
            kind: FollowEventKind::Approve,
            ..edge_event(10, 1, 2)
        };
        let follow_back = edge_event(11, 2, 1);
        assert_eq!(hub.publish(&follow_back), 1);
        assert_eq!(
            hub.publish(&approval),
            1,
            "the approval was taken for superseded"
        );
        assert_eq!(requester.next().await, Some(Delivery::Event(follow_back)));
        assert_eq!(requester.next().await, Some(Delivery::Event(approval)));
    }

    #[test]
    fn marks_stay_within_their_capacity_and_evicted_edges_still_drop_repeats() {
        let mut marks = Marks::new(4);
        for id in 1..=100 {
            assert!(marks.admit(UserId(2), (UserId(id), UserId(2)), EventId(id)));
            assert!(marks.len() <= 4);
        }
        assert!(
            !marks.admit(UserId(2), (UserId(1), UserId(2)), EventId(1)),
            "below the floor"
        );
        assert!(
            !marks.admit(UserId(2), (UserId(100), UserId(2)), EventId(100)),
            "still marked"
        );
        assert!(marks.admit(UserId(2), (UserId(1), UserId(2)), EventId(101)));
        marks.forget(UserId(2));
        assert_eq!(marks.len(), 0);
    }

    #[tokio::test]
    async fn a_followee_s_marks_go_with_its_last_subscriber() {
        let hub = EventHub::new(8);
        let sub = hub.subscribe(UserId(2));
        assert_eq!(hub.publish(&event(10, 2)), 1);
        assert_eq!(hub.routes().marks.len(), 1);
        drop(sub);
        assert_eq!(hub.routes().marks.len(), 0);
    }

    #[tokio::test]
    async fn a_full_queue_ends_that_subscription_and_no_other() {
        let hub = EventHub::new(2);
        let mut slow = hub.subscribe(UserId(2));
        let mut fast = hub.subscribe(UserId(2));
        for id in 1..=3 {
            hub.publish(&event(id, 2));
            // The fast subscriber keeps up.
            assert!(matches!(fast.next().await, Some(Delivery::Event(_))));
        }
        assert!(matches!(slow.next().await, Some(Delivery::Event(e)) if e.id == EventId(1)));
        assert!(matches!(slow.next().await, Some(Delivery::Event(e)) if e.id == EventId(2)));
        assert_eq!(slow.next().await, Some(Delivery::Overrun));
        assert_eq!(slow.next().await, None);
        assert_eq!(hub.subscriber_count(), 1);
        assert_eq!(hub.publish(&event(4, 2)), 1);
    }

    #[tokio::test]
    async fn dropping_a_subscription_unsubscribes_it() {
        let hub = EventHub::new(2);
        let sub = hub.subscribe(UserId(2));
        assert_eq!(hub.subscriber_count(), 1);
        drop(sub);
        assert_eq!(hub.subscriber_count(), 0);
        assert_eq!(hub.publish(&event(1, 2)), 0);
    }
}
