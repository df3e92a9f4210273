//! The follow graph's operations, as the API promises them: validation, the write path (edges and
//! their outbox rows gathered into one statement per batch, then one Redis round trip: see
//! [`group_commit`]) and batched reads through the caches. The GraphQL layer calls only this.

mod consent;
mod group_commit;

pub use consent::{ConsentOutcome, ViewerList};
pub use group_commit::GroupCommitSettings;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use crate::{
    cache::Caches,
    db::{
        self, DbPool, Freshness, Reads,
        follows::{EdgeChange, EdgeResult},
        users::UpsertError,
    },
    error::AppError,
    events::producer::Producer,
};
/// The records and events the graph's API speaks in, for the layers above it.
pub use crate::{
    db::{
        follows::{Keyset, KnownPage, ListEntry, ListKind},
        users::UserRecord,
    },
    domain::{Counts, EdgeState, EventKind, FollowEvent, UserId},
    events::fanout::{Delivery, EventHub},
};

/// Most ids one batch argument may carry.
pub const MAX_BATCH: usize = 100;
/// Largest page a list returns.
pub const MAX_PAGE: i64 = 100;
/// Page size when the client does not say.
pub const DEFAULT_PAGE: i64 = 20;

/// Who reads, which decides where a read may go (see [`FollowGraph::freshness`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reader {
    /// The request's viewer, whose own recent writes its reads must show.
    pub viewer_id: Option<i64>,
    /// The request writes (a mutation): everything it reads comes from the primary.
    pub writes: bool,
}

/// Passes of an edge change whose unfollow keeps racing decisions on its request.
const RACE_ATTEMPTS: usize = 4;

/// Users per batch of a warm-up: one query per kind and batch.
const WARM_UP_CHUNK: usize = 1_000;

/// What a warm-up loads.
#[derive(Clone, Copy, Debug)]
pub struct WarmUpPlan {
    /// Most-followed users whose counts, records and following sets are loaded.
    pub users: usize,
    /// Most-followed users whose first page of followers is loaded.
    pub pages: usize,
    /// Recently active viewers whose following sets are loaded.
    pub viewers: usize,
}

/// What a warm-up has loaded so far (it may be cut short by its time bound).
#[derive(Debug, Default)]
pub struct WarmUp {
    /// Hot users whose counts, record and following set are cached.
    pub users: std::sync::atomic::AtomicUsize,
    /// Hot users whose first page of followers is cached.
    pub pages: std::sync::atomic::AtomicUsize,
    /// Following sets of recently active viewers cached.
    pub sets: std::sync::atomic::AtomicUsize,
}

/// What a follow or unfollow did to one pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FollowOutcome {
    /// The user followed or unfollowed.
    pub user_id: i64,
    /// Whether the viewer follows the user after the call.
    pub following: bool,
    /// Whether the viewer's request to follow the user (a private account) is pending after the call.
    pub requested: bool,
    /// Whether the call changed the edge or the request.
    pub changed: bool,
}

/// Where one pair stands after a write: the outcome without the order asked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct PairState {
    following: bool,
    requested: bool,
    changed: bool,
}

/// The follow graph's operations over the store and the event stream.
#[derive(Clone)]
pub struct FollowGraph {
    /// Where the reads that may lag go (a replica caught up enough, else the primary); its primary pool
    /// also serves the writes outside the group commit ([`Self::db`]).
    reads: Reads,
    /// Viewers' last writes through this instance, so that their next reads see them.
    writers: Arc<RecentWriters>,
    caches: Caches,
    writes: group_commit::GroupCommit,
    /// Publishes the events of the writes outside the group commit (blocks, approvals, privacy).
    publisher: Arc<Publisher>,
}

impl FollowGraph {
    /// `reads` routes the reads (its primary pool also serves the writes outside the group commit),
    /// `db_writes` (generic plans) the group commit.
    pub fn new(
        reads: Reads,
        db_writes: DbPool,
        producer: Producer,
        caches: Caches,
        writes: GroupCommitSettings,
    ) -> Self {
        let publisher = Publisher {
            producer,
            caches: caches.clone(),
        };
        Self {
            publisher: Arc::new(publisher.clone()),
            writes: group_commit::GroupCommit::new(db_writes, publisher, writes),
            writers: Arc::new(RecentWriters::new(reads.max_lag())),
            reads,
            caches,
        }
    }

    /// The primary's pool, for the writes outside the group commit.
    fn db(&self) -> &DbPool {
        self.reads.primary()
    }

    /// Where `reader`'s reads of lag-tolerant data may go: the primary in a mutation; a replica that has
    /// replayed the viewer's last write through this instance, if it wrote within the lag bound; else
    /// any replica within the bound.
    pub fn freshness(&self, reader: Reader) -> Freshness {
        if reader.writes {
            return Freshness::Primary;
        }
        if !self.reads.has_replicas() {
            // Every read goes to the primary: no viewer's writes to look up.
            return Freshness::MayLag;
        }
        match reader
            .viewer_id
            .and_then(|viewer| self.writers.wrote_at(viewer))
        {
            Some(at) => Freshness::Since(at),
            None => Freshness::MayLag,
        }
    }

    /// Notes that `viewer_id` has just written (committed or not: a write whose answer was lost may
    /// have committed), so that its reads skip replicas until one has replayed past this moment.
    fn note_write(&self, viewer_id: i64) {
        if self.reads.has_replicas() {
            self.writers.note(viewer_id);
        }
    }

    /// The viewer follows `user_id`; following twice changes nothing the second time.
    pub async fn follow(&self, viewer_id: i64, user_id: i64) -> Result<FollowOutcome, AppError> {
        only_outcome(self.follow_many(viewer_id, &[user_id]).await?)
    }

    /// The viewer follows each user, checked whole first: too many ids, oneself, an unknown user or a
    /// block either way fails the call with nothing written. Following a private account makes a request
    /// instead. A repeated id is applied once; outcomes keep the order asked.
    pub async fn follow_many(
        &self,
        viewer_id: i64,
        user_ids: &[i64],
    ) -> Result<Vec<FollowOutcome>, AppError> {
        check_batch(user_ids)?;
        if user_ids.contains(&viewer_id) {
            return Err(AppError::bad_input("a user cannot follow themself"));
        }
        let targets = sorted_unique(user_ids);
        if targets.len() > 1 {
            // Name every unknown id before anything is written; a single id learns it from the write.
            // Blocks need no check here: the write's gate refuses the whole call when it meets one.
            self.require_users(viewer_id, &targets).await?;
        }
        let states = self.change_edges(viewer_id, &targets, true).await?;
        Ok(outcomes(user_ids, states))
    }

    /// The viewer stops following `user_id`; unfollowing a user not followed (or oneself) changes nothing.
    pub async fn unfollow(&self, viewer_id: i64, user_id: i64) -> Result<FollowOutcome, AppError> {
        only_outcome(self.unfollow_many(viewer_id, &[user_id]).await?)
    }

    /// `unfollow` for each user, checked whole first like `follow_many`.
    pub async fn unfollow_many(
        &self,
        viewer_id: i64,
        user_ids: &[i64],
    ) -> Result<Vec<FollowOutcome>, AppError> {
        check_batch(user_ids)?;
        let targets: Vec<i64> = sorted_unique(user_ids)
            .into_iter()
            .filter(|&id| id != viewer_id)
            .collect();
        if targets.len() != 1 {
            self.require_users(viewer_id, &targets).await?;
        }
        let states = self.change_edges(viewer_id, &targets, false).await?;
        Ok(outcomes(user_ids, states))
    }

    /// Writes `viewer → each target` (follow or unfollow) in the next group commit; returns where each
    /// target's pair stands. An unknown viewer or target fails the call with `NOT_FOUND`, a block with
    /// `FORBIDDEN` (and then none of the call's changes is written).
    async fn change_edges(
        &self,
        viewer_id: i64,
        targets: &[i64],
        follow: bool,
    ) -> Result<HashMap<i64, PairState>, AppError> {
        let mut targets = targets.to_vec();
        let mut states = HashMap::with_capacity(targets.len());
        // An unfollow that raced a decision on its own request runs again (a few times at most: each
        // race needs another decision on the same pair meanwhile).
        for _ in 0..RACE_ATTEMPTS {
            let raced = self
                .change_edges_once(viewer_id, &targets, follow, &mut states)
                .await?;
            if raced.is_empty() {
                return Ok(states);
            }
            targets = raced;
        }
        Err(AppError::ServiceUnavailable(
            "the follow request changed under this call several times; try again".into(),
        ))
    }

    /// One pass of [`Self::change_edges`]: each target's state into `states`; returns the targets whose
    /// unfollow raced a decision on its request.
    async fn change_edges_once(
        &self,
        viewer_id: i64,
        targets: &[i64],
        follow: bool,
        states: &mut HashMap<i64, PairState>,
    ) -> Result<Vec<i64>, AppError> {
        let changes = targets
            .iter()
            .map(|&followee_id| EdgeChange {
                follower_id: viewer_id,
                followee_id,
                follow,
            })
            .collect();
        let results = self.writes.submit(changes).await;
        self.note_write(viewer_id);
        let results = results?;
        let mut raced = Vec::new();
        let mut unknown = Vec::new();
        let mut blocked = None;
        for (&target, result) in targets.iter().zip(results) {
            let state = match result {
                EdgeResult::Changed(_) => PairState {
                    following: follow,
                    requested: false,
                    changed: true,
                },
                EdgeResult::Unchanged => PairState {
                    following: follow,
                    requested: false,
                    changed: false,
                },
                EdgeResult::Requested(event) => PairState {
                    following: false,
                    requested: true,
                    changed: event.is_some(),
                },
                EdgeResult::Withdrawn => PairState {
                    following: false,
                    requested: false,
                    changed: true,
                },
                EdgeResult::Blocked => {
                    blocked.get_or_insert(target);
                    continue;
                }
                // Another of this call's changes was blocked: nothing of the call was written.
                EdgeResult::Refused => continue,
                EdgeResult::Raced => {
                    raced.push(target);
                    continue;
                }
                EdgeResult::UnknownFollower => return Err(AppError::viewer_not_found(viewer_id)),
                EdgeResult::UnknownFollowee => {
                    unknown.push(target.to_string());
                    continue;
                }
            };
            states.insert(target, state);
        }
        if let Some(target) = blocked {
            return Err(consent::cannot_follow(targets.len(), target));
        }
        if unknown.is_empty() {
            Ok(raced)
        } else {
            Err(AppError::NotFound(format!(
                "no user with id {}",
                unknown.join(", ")
            )))
        }
    }

    /// Fails with `NOT_FOUND` naming the viewer or the first unknown user.
    async fn require_users(&self, viewer_id: i64, user_ids: &[i64]) -> Result<(), AppError> {
        let mut wanted = user_ids.to_vec();
        wanted.push(viewer_id);
        let wanted = &wanted;
        // A write's check: the primary.
        let known: HashSet<i64> = self
            .reads
            .run(Freshness::Primary, "write_check", |mut conn| async move {
                db::users::existing_ids(&mut conn, wanted).await
            })
            .await?
            .into_iter()
            .collect();
        if !known.contains(&viewer_id) {
            return Err(AppError::viewer_not_found(viewer_id));
        }
        let missing: Vec<String> = user_ids
            .iter()
            .filter(|id| !known.contains(id))
            .map(ToString::to_string)
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(AppError::NotFound(format!(
                "no user with id {}",
                missing.join(", ")
            )))
        }
    }

    /// Creates or updates a user's record after checking the handle and display name; `is_private`
    /// (when set) makes the account private, or public, which approves its pending requests.
    pub async fn upsert_user(
        &self,
        id: i64,
        handle: &str,
        display_name: Option<&str>,
        is_private: Option<bool>,
    ) -> Result<UserRecord, AppError> {
        check_handle(handle)?;
        let display_name = display_name.map(str::trim).filter(|n| !n.is_empty());
        if display_name.is_some_and(|n| n.chars().count() > 100) {
            return Err(AppError::bad_input(
                "displayName is longer than 100 characters",
            ));
        }
        // A change of privacy locks the row against follows in flight and approves requests: it may
        // meet a block in a deadlock, and runs again.
        let upserted = db::retrying(
            self.db(),
            std::time::Duration::from_millis(2),
            || {},
            |mut conn| async move {
                db::users::upsert(&mut conn, id, handle, display_name, is_private).await
            },
        )
        .await
        .map_err(|err| match err {
            UpsertError::HandleTaken => {
                AppError::bad_input(format!("the handle {handle:?} is taken"))
            }
            UpsertError::Store(err) => err.into(),
        })?;
        let record = upserted.record;
        // The new record replaces what every instance cached, a miss included: else a user looked up
        // before it existed stays unknown (and a follow of it cannot load it), and a handle stays old.
        self.caches
            .record_users(std::slice::from_ref(&record))
            .await;
        self.publish(&upserted.approved).await;
        Ok(record)
    }

    /// What this instance's L1 holds, without waiting: resolvers try these before their loader.
    pub fn peek_user(&self, id: i64) -> Option<Option<UserRecord>> {
        self.caches.peek_user(id)
    }

    pub fn peek_statuses(
        &self,
        pairs: &[(i64, i64)],
        viewer_id: Option<i64>,
    ) -> crate::cache::StatusPeek {
        self.caches.peek_statuses(pairs, viewer_id)
    }

    pub fn peek_counts(&self, id: i64) -> Option<Counts> {
        self.caches.peek_counts(id)
    }

    pub fn peek_status(&self, pair: (i64, i64), viewer_id: Option<i64>) -> Option<bool> {
        self.caches.peek_status(pair, viewer_id)
    }

    pub fn peek_first_page(
        &self,
        kind: ListKind,
        owner: i64,
        limit: i64,
    ) -> Option<Arc<Vec<ListEntry>>> {
        self.caches.peek_first_page(kind, owner, limit)
    }

    /// Users by id; unknown ids are absent from the map. A replica may fill the cache: a record carries
    /// its `updated_at` as version, so an older one never replaces a newer.
    pub async fn users(
        &self,
        ids: &[i64],
        reader: Reader,
    ) -> Result<HashMap<i64, UserRecord>, AppError> {
        let freshness = self.freshness(reader);
        self.caches
            .users(ids, |ids| async move {
                let ids = &ids;
                let users = self
                    .reads
                    .run(freshness, "users", |mut conn| async move {
                        db::users::by_ids(&mut conn, ids).await
                    })
                    .await?;
                Ok::<_, AppError>(users.into_iter().map(|u| (u.id, u)).collect())
            })
            .await
    }

    /// Users by id from the database, past the caches, whose entries they replace (a cached absence
    /// of an edge's end is stale).
    pub async fn users_from_store(
        &self,
        ids: &[i64],
    ) -> Result<HashMap<i64, UserRecord>, AppError> {
        let users = self
            .reads
            .run(Freshness::Primary, "users", |mut conn| async move {
                db::users::by_ids(&mut conn, ids).await
            })
            .await?;
        self.caches.record_users(&users).await;
        Ok(users.into_iter().map(|u| (u.id, u)).collect())
    }

    /// A user by handle, ignoring case.
    pub async fn user_by_handle(
        &self,
        handle: &str,
        reader: Reader,
    ) -> Result<Option<UserRecord>, AppError> {
        if check_handle(handle).is_err() {
            return Ok(None);
        }
        Ok(self
            .reads
            .run(self.freshness(reader), "users", |mut conn| async move {
                db::users::by_handle(&mut conn, handle).await
            })
            .await?)
    }

    /// Counts by user id; a user absent from the map has zero of each. A replica may fill the cache:
    /// counts carry `user_stats.version`, so older counts never replace newer.
    pub async fn counts(
        &self,
        ids: &[i64],
        reader: Reader,
    ) -> Result<HashMap<i64, Counts>, AppError> {
        let freshness = self.freshness(reader);
        self.caches
            .counts(ids, |ids| async move {
                let ids = &ids;
                let counts = self
                    .reads
                    .run(freshness, "counts", |mut conn| async move {
                        db::stats::counts(&mut conn, ids).await
                    })
                    .await?;
                Ok::<_, AppError>(counts.into_iter().map(|c| (c.user_id.get(), c)).collect())
            })
            .await
    }

    /// Counts as the edges stand now, past the caches and the consumer's lag: for the users whose
    /// edges the request has just changed (see `db::stats::counts_now`).
    pub async fn counts_now(&self, ids: &[i64]) -> Result<HashMap<i64, Counts>, AppError> {
        let counts = self
            .reads
            .run(
                Freshness::Primary,
                "payload_counts",
                |mut conn| async move { db::stats::counts_now(&mut conn, ids).await },
            )
            .await?;
        Ok(counts.into_iter().map(|c| (c.user_id.get(), c)).collect())
    }

    /// Follow status of each (follower, followee) pair. The viewer's own pairs are read past L1, so that
    /// a viewer sees their own follows on every instance as soon as the write returned.
    pub async fn statuses(
        &self,
        pairs: &[(i64, i64)],
        viewer_id: Option<i64>,
    ) -> Result<HashMap<(i64, i64), bool>, AppError> {
        self.caches
            .statuses(
                pairs,
                viewer_id,
                |users| self.load_following_sets(users),
                |pairs| async move {
                    let pairs = &pairs;
                    let edges = self
                        .reads
                        .run(Freshness::Primary, "statuses", |mut conn| async move {
                            db::follows::existing_pairs(&mut conn, pairs).await
                        })
                        .await?;
                    Ok::<_, AppError>(edges.into_iter().collect::<HashSet<_>>())
                },
            )
            .await
    }

    /// Of these pairs, the edges as PostgreSQL holds them now, past the caches: for pairs the request has
    /// just changed on behalf of their other user, which a cache load begun before the write could still
    /// answer for.
    pub async fn statuses_now(
        &self,
        pairs: &[(i64, i64)],
    ) -> Result<HashSet<(i64, i64)>, AppError> {
        let edges = self
            .reads
            .run(Freshness::Primary, "statuses", |mut conn| async move {
                db::follows::existing_pairs(&mut conn, pairs).await
            })
            .await?;
        Ok(edges.into_iter().collect())
    }

    /// Whom each user follows, each cut at the set limit + 1 (so that "over the limit" shows).
    async fn load_following_sets(
        &self,
        users: Vec<i64>,
    ) -> Result<HashMap<i64, Vec<i64>>, AppError> {
        let limit = self.caches.set_limit() as i64 + 1;
        let users = &users;
        let sets = self
            .reads
            .run(Freshness::Primary, "following_sets", |mut conn| async move {
                db::follows::following_sets(&mut conn, users, limit).await
            })
            .await?;
        Ok(sets.into_iter().collect())
    }

    /// Notes a viewer as active, for the next instance's warm-up.
    pub fn note_active(&self, viewer_id: i64) {
        self.caches.note_active(viewer_id);
    }

    /// Fills this instance's caches before it takes traffic: the `plan.users` most-followed users'
    /// counts, records and following sets (small entries, asked about most), the first pages of
    /// followers of the `plan.pages` most followed, then the following sets of the `plan.viewers`
    /// viewers active most recently. Waits for L1 to be live first (it is emptied when the invalidation
    /// subscription comes up). The caller bounds its time; `progress` says how far it got.
    pub async fn warm_up(&self, plan: WarmUpPlan, progress: &WarmUp) -> Result<(), AppError> {
        use std::sync::atomic::Ordering::Relaxed;
        if !self.caches.enabled() {
            return Ok(());
        }
        while !self.caches.l1_active() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // The viewer's recent changes are trusted a while after Redis's data began: start that clock now.
        self.caches.start_epoch().await;
        let most = plan.users.max(plan.pages) as i64;
        let hot = self
            .reads
            .run(Freshness::MayLag, "warm_up", |mut conn| async move {
                db::stats::most_followed(&mut conn, most).await
            })
            .await?;
        let reader = Reader::default();
        // On the primary: a version created here is newer than any replica's replay, and a page read
        // there would not be cached (one statement per thousand users, once per start).
        for chunk in hot[..plan.pages.min(hot.len())].chunks(WARM_UP_CHUNK) {
            let limit = DEFAULT_PAGE + 1;
            self.list_pages_at(ListKind::Followers, chunk, None, limit, Freshness::Primary)
                .await?;
            progress.pages.fetch_add(chunk.len(), Relaxed);
        }
        for chunk in hot[..plan.users.min(hot.len())].chunks(WARM_UP_CHUNK) {
            let sets = self
                .caches
                .load_following_sets(chunk, |users| self.load_following_sets(users));
            tokio::try_join!(self.counts(chunk, reader), self.users(chunk, reader), sets)?;
            progress.users.fetch_add(chunk.len(), Relaxed);
        }
        let active = self.caches.active_viewers(plan.viewers).await;
        for chunk in active.chunks(WARM_UP_CHUNK) {
            let loaded = self
                .caches
                .load_following_sets(chunk, |users| self.load_following_sets(users))
                .await?;
            progress.sets.fetch_add(loaded, Relaxed);
        }
        Ok(())
    }

    /// One page of the lists of several owners (one SQL query), `limit` entries at most per owner. First
    /// pages come through the cache; later pages (by cursor) from PostgreSQL. Either may come from a
    /// replica: the cache keeps a first page only if its read holds every commit its list version
    /// follows (see [`Caches::first_pages`]).
    pub async fn list_pages(
        &self,
        kind: ListKind,
        owner_ids: &[i64],
        after: Option<Keyset>,
        limit: i64,
        reader: Reader,
    ) -> Result<HashMap<i64, Arc<Vec<ListEntry>>>, AppError> {
        self.list_pages_at(kind, owner_ids, after, limit, self.freshness(reader))
            .await
    }

    /// [`Self::list_pages`] read where `freshness` allows.
    async fn list_pages_at(
        &self,
        kind: ListKind,
        owner_ids: &[i64],
        after: Option<Keyset>,
        limit: i64,
        freshness: Freshness,
    ) -> Result<HashMap<i64, Arc<Vec<ListEntry>>>, AppError> {
        let load = |owners: Vec<i64>| async move {
            let owners = &owners;
            let (entries, as_of) = self
                .reads
                .run_as_of(freshness, "lists", |mut conn| async move {
                    db::follows::list_pages(&mut conn, kind, owners, after, limit).await
                })
                .await?;
            let mut pages: HashMap<i64, Vec<ListEntry>> = HashMap::new();
            for entry in entries {
                pages.entry(entry.owner_id).or_default().push(entry);
            }
            Ok::<_, AppError>((pages, as_of))
        };
        if after.is_some() {
            let (pages, _) = load(owner_ids.to_vec()).await?;
            return Ok(pages
                .into_iter()
                .map(|(owner, page)| (owner, Arc::new(page)))
                .collect());
        }
        // Cached pages are shared, never copied per request.
        self.caches.first_pages(kind, owner_ids, limit, load).await
    }

    /// Known-followers pages of one viewer (the followers of each page's owner whom the viewer follows),
    /// in the order asked, all in one SQL statement. Not cached: such a page is one viewer's, and rarely
    /// asked twice.
    pub async fn known_followers_pages(
        &self,
        viewer_id: i64,
        pages: &[KnownPage],
        reader: Reader,
    ) -> Result<Vec<Vec<ListEntry>>, AppError> {
        Ok(self
            .reads
            .run(
                self.freshness(reader),
                "known_followers",
                |mut conn| async move {
                    db::follows::known_followers_pages(&mut conn, viewer_id, pages).await
                },
            )
            .await?)
    }

    /// How many followers of each owner the viewer follows (exact; absent: none), in one SQL statement.
    pub async fn known_followers_counts(
        &self,
        viewer_id: i64,
        owner_ids: &[i64],
        reader: Reader,
    ) -> Result<HashMap<i64, i64>, AppError> {
        let counts = self
            .reads
            .run(
                self.freshness(reader),
                "known_followers",
                |mut conn| async move {
                    db::follows::known_followers_counts(&mut conn, viewer_id, owner_ids).await
                },
            )
            .await?;
        Ok(counts.into_iter().collect())
    }
}

/// Viewers' last writes through this instance (µs since the epoch), forgotten after the lag bound:
/// by then every replica still in use has replayed them. Another instance does not see these; see
/// ARCHITECTURE.md, "Read replicas", for why that is enough.
struct RecentWriters {
    max_lag_us: i64,
    wrote: std::sync::Mutex<HashMap<i64, i64>>,
}

/// Entries past which a note of a write sweeps out the expired ones.
const RECENT_WRITERS_SWEEP: usize = 4_096;

impl RecentWriters {
    fn new(max_lag: std::time::Duration) -> Self {
        Self {
            max_lag_us: max_lag.as_micros() as i64,
            wrote: std::sync::Mutex::default(),
        }
    }

    fn note(&self, viewer_id: i64) {
        let now = db::replicas::now_micros();
        // A poisoned map is still a map of instants: never lose a write to a panic elsewhere.
        let mut wrote = self
            .wrote
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if wrote.len() >= RECENT_WRITERS_SWEEP {
            wrote.retain(|_, at| *at >= now - self.max_lag_us);
        }
        wrote.insert(viewer_id, now);
    }

    /// When `viewer_id` last wrote, if within the lag bound.
    fn wrote_at(&self, viewer_id: i64) -> Option<i64> {
        let oldest = db::replicas::now_micros() - self.max_lag_us;
        let wrote = self
            .wrote
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        wrote.get(&viewer_id).copied().filter(|&at| at >= oldest)
    }
}

/// Refuses a batch argument over the limit.
pub fn check_batch(ids: &[i64]) -> Result<(), AppError> {
    check_batch_len(ids.len())
}

/// Refuses a batch of `len` ids over the limit, naming the limit.
pub fn check_batch_len(len: usize) -> Result<(), AppError> {
    if len > MAX_BATCH {
        return Err(AppError::bad_input(format!(
            "at most {MAX_BATCH} ids per call (the batch limit); got {len}"
        )));
    }
    Ok(())
}

/// The outcome of a call with one id.
fn only_outcome(outcomes: Vec<FollowOutcome>) -> Result<FollowOutcome, AppError> {
    outcomes
        .into_iter()
        .next()
        .ok_or_else(|| AppError::Internal(anyhow::anyhow!("no outcome")))
}

/// One outcome per id asked, in order: an id whose pair changed reports `changed` on its first copy
/// only (the later copies found it done already).
fn outcomes(user_ids: &[i64], mut states: HashMap<i64, PairState>) -> Vec<FollowOutcome> {
    user_ids
        .iter()
        .map(|&user_id| {
            let state = states.get(&user_id).copied().unwrap_or_default();
            if let Some(seen) = states.get_mut(&user_id) {
                seen.changed = false;
            }
            FollowOutcome {
                user_id,
                following: state.following,
                requested: state.requested,
                changed: state.changed,
            }
        })
        .collect()
}

/// Publishes what a write committed: the pairs' statuses into the caches (announced to every
/// instance) and the events onto the stream, in one Redis round trip. If it fails, the events wait in
/// the outbox for the relay, and the cache keys it touched are dropped before they are read again.
#[derive(Clone)]
struct Publisher {
    producer: Producer,
    caches: Caches,
}

impl group_commit::Publish for Publisher {
    async fn publish(&self, events: &[FollowEvent]) {
        if events.is_empty() {
            return;
        }
        if !self.caches.enabled() {
            if let Err(err) = self.producer.publish(events).await {
                tracing::warn!(error = %format!("{err:#}"), events = events.len(), "XADD failed; the relay will publish these events");
            }
            return;
        }
        // A request changes no edge: nothing to record but its append.
        let statuses: Vec<EdgeState> = events.iter().filter_map(FollowEvent::edge_state).collect();
        // One partition's append rides the round trip; the others' (P > 1) go beside it.
        let riding = self.producer.rider(events);
        let carried = riding.rider.is_some();
        let (done, beside) = tokio::join!(
            self.caches
                .record_statuses(&statuses, riding.rider.as_ref()),
            self.producer.publish(&riding.beside)
        );
        if carried {
            self.producer.carried(riding.carried, done);
        }
        if !(carried && done) || beside.is_err() {
            tracing::warn!(
                events = events.len(),
                "XADD failed or skipped; the relay will publish these events"
            );
        }
    }
}

/// Refuses a handle outside 1 to 30 of `[A-Za-z0-9_]`.
pub fn check_handle(handle: &str) -> Result<(), AppError> {
    let valid = (1..=30).contains(&handle.len())
        && handle
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(AppError::bad_input(
            "a handle is 1 to 30 characters of A-Z, a-z, 0-9 and _",
        ))
    }
}

fn sorted_unique(ids: &[i64]) -> Vec<i64> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handles_are_checked() {
        assert!(check_handle("ada_lovelace").is_ok());
        assert!(check_handle("").is_err());
        assert!(check_handle("with space").is_err());
        assert!(check_handle(&"x".repeat(31)).is_err());
        assert!(check_handle("émile").is_err());
    }

    #[test]
    fn a_batch_over_the_limit_names_the_limit() {
        let ids: Vec<i64> = (1..=101).collect();
        let err = check_batch(&ids).expect_err("too many");
        assert!(err.message().contains("at most 100"), "{err:?}");
    }
}
