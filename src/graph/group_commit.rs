//! Group commit: the edge changes of concurrent requests are written together, by one statement in one
//! transaction, and published together, in one Redis round trip.
//!
//! Requests queue their changes; a dispatcher takes whatever is queued as soon as one of the
//! `concurrency` batch slots is free. So a lone write goes at once, and under load the changes that
//! arrive while the slots are busy form the next batch: batches grow with the load, with no timer on
//! the way (`window`, off by default, adds a short wait for more while other batches are in flight).
//! Each request returns after its own batch committed and was published, with its own results: an
//! unknown user fails only the request that named it.

use std::{
    collections::{HashSet, VecDeque},
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::{
    db::{
        self, DbPool, StoreError,
        follows::{EdgeChange, EdgeError, EdgeResult},
    },
    domain::FollowEvent,
    error::AppError,
    telemetry::metrics::{EDGE_CHANGES, WRITE_BATCH, WRITE_BATCH_RETRIES},
};

/// How writes are gathered into batches.
#[derive(Clone, Copy, Debug)]
pub struct GroupCommitSettings {
    /// Longest extra wait for more changes while another slot's batch is in its statement (zero: none;
    /// with one slot, never).
    pub window: Duration,
    /// Batches written at once, each on its own connection.
    pub concurrency: usize,
    /// Most changes per batch (a request's changes are never split).
    pub max_changes: usize,
}

/// The result of one request's changes, in the order it gave them.
type Reply = Result<Vec<EdgeResult>, AppError>;

/// One request's changes, waiting for a batch.
struct Job {
    changes: Vec<EdgeChange>,
    reply: oneshot::Sender<Reply>,
}

/// What a committed batch hands over to be published before its requests return.
pub(super) trait Publish: Send + Sync + 'static {
    /// Puts the committed events into the caches and onto the stream, in one round trip.
    fn publish(&self, events: &[FollowEvent]) -> impl Future<Output = ()> + Send;
}

/// The queue of writes and its dispatcher; cheap to clone.
#[derive(Clone)]
pub(super) struct GroupCommit {
    queue: mpsc::Sender<Job>,
    /// The dispatcher until it starts (on the first write, inside the runtime).
    waiting: Arc<Mutex<Option<DispatcherTask>>>,
}

/// The dispatcher's loop, not yet spawned.
type DispatcherTask = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Queued writes per slot of concurrency the queue holds before requests wait to enqueue.
const QUEUE_PER_SLOT: usize = 4_096;

impl GroupCommit {
    pub(super) fn new<P: Publish>(db: DbPool, publisher: P, settings: GroupCommitSettings) -> Self {
        let settings = GroupCommitSettings {
            concurrency: settings.concurrency.max(1),
            max_changes: settings.max_changes.max(1),
            ..settings
        };
        let (queue, jobs) = mpsc::channel(QUEUE_PER_SLOT * settings.concurrency);
        let dispatcher = Dispatcher {
            jobs,
            db,
            publisher: Arc::new(publisher),
            settings,
        };
        Self {
            queue,
            waiting: Arc::new(Mutex::new(Some(Box::pin(dispatcher.run())))),
        }
    }

    /// Writes these changes in the next batch; returns once that batch is committed and published.
    pub(super) async fn submit(&self, changes: Vec<EdgeChange>) -> Reply {
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        self.start();
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Job { changes, reply })
            .await
            .map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    fn start(&self) {
        let dispatcher = match self.waiting.lock() {
            Ok(mut waiting) => waiting.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(dispatcher) = dispatcher {
            tokio::spawn(dispatcher);
        }
    }
}

fn closed() -> AppError {
    AppError::Internal(anyhow::anyhow!("the write queue closed"))
}

/// Takes queued jobs into batches and writes each batch in a slot of its own.
struct Dispatcher<P> {
    jobs: mpsc::Receiver<Job>,
    db: DbPool,
    publisher: Arc<P>,
    settings: GroupCommitSettings,
}

impl<P: Publish> Dispatcher<P> {
    /// Runs until every sender is gone.
    async fn run(mut self) {
        let slots = Arc::new(Semaphore::new(self.settings.concurrency));
        // Jobs held back from a batch because it already changes one of their pairs.
        let mut deferred: VecDeque<Job> = VecDeque::new();
        loop {
            // Wait for a slot first: while every slot is busy, arrivals gather in the queue.
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            if deferred.is_empty() {
                match self.jobs.recv().await {
                    Some(job) => deferred.push_back(job),
                    None => return,
                }
            }
            let batch = self.gather(&mut deferred, &slots).await;
            let db = self.db.clone();
            let publisher = self.publisher.clone();
            tokio::spawn(async move {
                write_batch(&db, &*publisher, batch, permit).await;
            });
        }
    }

    /// A batch: the deferred jobs, then whatever is queued, up to the size bound, no pair twice.
    async fn gather(&mut self, deferred: &mut VecDeque<Job>, slots: &Semaphore) -> Vec<Job> {
        let mut batch: Vec<Job> = Vec::new();
        let mut pairs: HashSet<(i64, i64)> = HashSet::new();
        let mut size = 0;
        let mut held: VecDeque<Job> = VecDeque::new();
        let max = self.settings.max_changes;
        // Other batches in flight: a short wait may fill this one (a lone write never waits).
        let deadline = (!self.settings.window.is_zero()
            && slots.available_permits() + 1 < self.settings.concurrency)
            .then(|| tokio::time::Instant::now() + self.settings.window);
        loop {
            let next = match deferred.pop_front() {
                Some(job) => Some(job),
                None => match self.jobs.try_recv() {
                    Ok(job) => Some(job),
                    Err(_) => match deadline {
                        Some(at) if size < max => tokio::time::timeout_at(at, self.jobs.recv())
                            .await
                            .ok()
                            .flatten(),
                        _ => None,
                    },
                },
            };
            let Some(job) = next else { break };
            let fits = batch.is_empty() || size + job.changes.len() <= max;
            let clashes = job
                .changes
                .iter()
                .any(|c| pairs.contains(&(c.follower_id, c.followee_id)));
            if !fits || clashes {
                held.push_back(job);
                if !fits {
                    break;
                }
                continue;
            }
            pairs.extend(job.changes.iter().map(|c| (c.follower_id, c.followee_id)));
            size += job.changes.len();
            batch.push(job);
        }
        // Held jobs go first next time, ahead of what is still queued, in their order.
        held.extend(deferred.drain(..));
        *deferred = held;
        batch
    }
}

/// Writes one batch, publishes what changed, and answers each job. The slot is free again once the
/// batch committed, so the next batch's statement overlaps this one's Redis round trip (versions and
/// outbox ids make the order of publications irrelevant). If the batch as a whole fails for a reason one
/// job may have caused (a user record deleted under it), each job is written alone, so that the others
/// still succeed.
async fn write_batch<P: Publish>(
    db: &DbPool,
    publisher: &P,
    jobs: Vec<Job>,
    slot: OwnedSemaphorePermit,
) {
    let changes: Vec<EdgeChange> = jobs
        .iter()
        .flat_map(|j| j.changes.iter().copied())
        .collect();
    ::metrics::histogram!(WRITE_BATCH).record(changes.len() as f64);
    // Each job's changes share its number: a block refuses a call whole.
    let calls: Vec<i64> = jobs
        .iter()
        .enumerate()
        .flat_map(|(i, j)| std::iter::repeat_n(i as i64, j.changes.len()))
        .collect();
    let written = write_with_retry(db, &changes, &calls).await;
    if !matches!(written, Err(EdgeError::UnknownUser)) || jobs.len() == 1 {
        drop(slot);
    }
    match written {
        Ok(results) => answer(publisher, jobs, results).await,
        Err(EdgeError::UnknownUser) if jobs.len() > 1 => {
            for job in jobs {
                let calls = vec![0; job.changes.len()];
                match write_with_retry(db, &job.changes, &calls).await {
                    Ok(results) => answer(publisher, vec![job], results).await,
                    Err(err) => {
                        let _ = job.reply.send(Err(edge_error(&err)));
                    }
                }
            }
        }
        Err(err) => {
            for job in jobs {
                let _ = job.reply.send(Err(edge_error(&err)));
            }
        }
    }
}

/// Publishes a committed batch's events, then gives each job its share of the results.
async fn answer<P: Publish>(publisher: &P, jobs: Vec<Job>, results: Vec<EdgeResult>) {
    // Edge changes and new requests (whose event reaches the owner's subscription).
    let events: Vec<FollowEvent> = results
        .iter()
        .filter_map(EdgeResult::event)
        .cloned()
        .collect();
    ::metrics::counter!(EDGE_CHANGES).increment(events.len() as u64);
    publisher.publish(&events).await;
    let mut results = results.into_iter();
    for job in jobs {
        let mine: Vec<EdgeResult> = results.by_ref().take(job.changes.len()).collect();
        let _ = job.reply.send(Ok(mine));
    }
}

/// The batch's statement, again after a deadlock or serialization failure (two batches deleting the
/// same edges in opposite orders).
async fn write_with_retry(
    db: &DbPool,
    changes: &[EdgeChange],
    calls: &[i64],
) -> Result<Vec<EdgeResult>, EdgeError> {
    db::retrying(
        db,
        Duration::from_millis(1),
        || ::metrics::counter!(WRITE_BATCH_RETRIES).increment(1),
        |mut conn| async move { db::follows::change_edges(&mut conn, changes, calls).await },
    )
    .await
}

/// The error each job of a failed batch answers (every job gets its own copy).
fn edge_error(err: &EdgeError) -> AppError {
    match err {
        EdgeError::UnknownUser => AppError::NotFound("a user of this call has no record".into()),
        EdgeError::Store(StoreError::Unavailable(reason)) => {
            StoreError::Unavailable(reason.clone()).into()
        }
        EdgeError::Store(StoreError::Query(err)) => {
            AppError::Internal(anyhow::anyhow!("writing a batch of edges failed: {err}"))
        }
    }
}
