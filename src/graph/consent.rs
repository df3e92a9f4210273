//! Who may follow whom: blocks, removing a follower, and follow requests to private accounts.
//!
//! These writes are rare next to follows, so each is its own short transaction (not the group commit);
//! their edge changes are outbox events like any other (kinds `remove` and `approve`), published the
//! same way, so counts stay exact and caches learn of them as they learn of follows.

use std::collections::HashSet;

use diesel_async::AsyncPgConnection;

use super::{FollowGraph, group_commit::Publish};
use crate::{
    db::{
        self, Freshness,
        follows::{Keyset, ListEntry},
        pairs::PairError,
    },
    domain::FollowEvent,
    error::AppError,
};

/// What a block, unblock, removal, approval or rejection did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConsentOutcome {
    /// The other user.
    pub user_id: i64,
    /// Whether the call changed anything.
    pub changed: bool,
}

/// The lists only their owner, the viewer, reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ViewerList {
    /// Whom the viewer blocks.
    Blocking,
    /// Who asks to follow the viewer.
    FollowRequests,
}

/// The refusal of a follow across a block, either way: it says no more than that.
pub(super) fn cannot_follow(asked: usize, target: i64) -> AppError {
    if asked > 1 {
        AppError::Forbidden(format!("you cannot follow user {target}"))
    } else {
        AppError::Forbidden("you cannot follow this user".into())
    }
}

impl FollowGraph {
    /// The viewer blocks `user_id`: the edges both ways and any request go, and neither can follow the
    /// other until it is lifted. Blocking twice changes nothing the second time.
    pub async fn block(&self, viewer_id: i64, user_id: i64) -> Result<ConsentOutcome, AppError> {
        if viewer_id == user_id {
            return Err(AppError::bad_input("a user cannot block themself"));
        }
        self.pair_write(PairWrite::Block, viewer_id, user_id).await
    }

    /// The viewer lifts its block of `user_id`; lifting none changes nothing.
    pub async fn unblock(&self, viewer_id: i64, user_id: i64) -> Result<ConsentOutcome, AppError> {
        self.pair_write(PairWrite::Unblock, viewer_id, user_id)
            .await
    }

    /// The viewer removes `user_id` from its followers (no block: it may follow again). Removing one who
    /// does not follow changes nothing.
    pub async fn remove_follower(
        &self,
        viewer_id: i64,
        user_id: i64,
    ) -> Result<ConsentOutcome, AppError> {
        if viewer_id != user_id {
            self.require_users(viewer_id, &[user_id]).await?;
        }
        let mut conn = db::connect(self.db()).await?;
        let event = db::follows::remove_follower(&mut conn, viewer_id, user_id).await;
        drop(conn);
        self.note_write(viewer_id);
        let event = event?;
        let changed = event.is_some();
        self.publish(event.as_slice()).await;
        Ok(ConsentOutcome { user_id, changed })
    }

    /// The viewer approves the request of `user_id` to follow it: the edge appears (the requester is
    /// told). A request no longer pending (cancelled, rejected, or gone with a block) changes nothing.
    pub async fn approve_request(
        &self,
        viewer_id: i64,
        user_id: i64,
    ) -> Result<ConsentOutcome, AppError> {
        self.pair_write(PairWrite::Approve, viewer_id, user_id)
            .await
    }

    /// The viewer rejects the request of `user_id` (who is not told and may ask again).
    pub async fn reject_request(
        &self,
        viewer_id: i64,
        user_id: i64,
    ) -> Result<ConsentOutcome, AppError> {
        self.pair_write(PairWrite::Reject, viewer_id, user_id).await
    }

    /// Runs one write on the pair (viewer, user), again after a deadlock, and publishes its events; with
    /// oneself it changes nothing and writes nothing.
    async fn pair_write(
        &self,
        write: PairWrite,
        viewer_id: i64,
        user_id: i64,
    ) -> Result<ConsentOutcome, AppError> {
        if viewer_id == user_id {
            return Ok(ConsentOutcome {
                user_id,
                changed: false,
            });
        }
        let changed_events = db::retrying(
            self.db(),
            RETRY_PAUSE,
            || {},
            |mut conn| async move {
                let (v, u) = (viewer_id, user_id);
                match write {
                    PairWrite::Block => db::blocks::block(&mut conn, v, u)
                        .await
                        .map(|b| (b.changed, b.events)),
                    PairWrite::Unblock => db::blocks::unblock(&mut conn, v, u)
                        .await
                        .map(|changed| (changed, Vec::new())),
                    PairWrite::Approve => db::requests::approve(&mut conn, v, u)
                        .await
                        .map(|a| (a.changed, a.event.into_iter().collect())),
                    PairWrite::Reject => db::requests::reject(&mut conn, v, u)
                        .await
                        .map(|changed| (changed, Vec::new())),
                }
            },
        )
        .await;
        self.note_write(viewer_id);
        let (changed, events) =
            changed_events.map_err(|err| pair_error(err, viewer_id, user_id))?;
        self.publish(&events).await;
        Ok(ConsentOutcome { user_id, changed })
    }

    /// Of these (blocker, blocked) pairs, the blocks that stand. Read from the primary, not cached: only
    /// a blocker may ask about its own blocks, which is rare next to follow statuses, and a consent check
    /// must not lag.
    pub async fn blocks_between(
        &self,
        pairs: &[(i64, i64)],
    ) -> Result<HashSet<(i64, i64)>, AppError> {
        self.pairs_found(pairs, async |conn, pairs| {
            db::blocks::existing(conn, pairs).await
        })
        .await
    }

    /// Of these (requester, target) pairs, the pending requests. Read from PostgreSQL, as blocks.
    pub async fn requests_between(
        &self,
        pairs: &[(i64, i64)],
    ) -> Result<HashSet<(i64, i64)>, AppError> {
        self.pairs_found(pairs, async |conn, pairs| {
            db::requests::existing(conn, pairs).await
        })
        .await
    }

    /// The pairs a store probe finds; no statement for no pairs.
    async fn pairs_found(
        &self,
        pairs: &[(i64, i64)],
        probe: impl AsyncFnOnce(
            &mut AsyncPgConnection,
            &[(i64, i64)],
        ) -> db::StoreResult<Vec<(i64, i64)>>,
    ) -> Result<HashSet<(i64, i64)>, AppError> {
        if pairs.is_empty() {
            return Ok(HashSet::new());
        }
        // A consent check must not lag: the primary.
        let mut conn = self.reads.primary_read("consent").await?;
        Ok(probe(&mut conn, pairs).await?.into_iter().collect())
    }

    /// A page of one of the viewer's own lists, newest first, `limit` rows at most. Consent data: read
    /// from the primary every time, never cached (a request reads each page it asks once: see
    /// `graphql::loaders::Loaders::viewer_list_page`).
    pub async fn viewer_list_page(
        &self,
        list: ViewerList,
        viewer_id: i64,
        after: Option<Keyset>,
        limit: i64,
    ) -> Result<Vec<ListEntry>, AppError> {
        Ok(self
            .reads
            .run(
                // Blocks and requests are consent, which must not lag: the primary, whoever reads.
                Freshness::Primary,
                "viewer_lists",
                |mut conn| async move {
                    match list {
                        ViewerList::Blocking => {
                            db::blocks::page(&mut conn, viewer_id, after, limit).await
                        }
                        ViewerList::FollowRequests => {
                            db::requests::page(&mut conn, viewer_id, after, limit).await
                        }
                    }
                },
            )
            .await?)
    }

    /// How long one of the viewer's own lists is, read from the primary as its pages.
    pub async fn viewer_list_count(
        &self,
        list: ViewerList,
        viewer_id: i64,
    ) -> Result<i64, AppError> {
        Ok(self
            .reads
            .run(
                // Blocks and requests are consent, which must not lag: the primary, whoever reads.
                Freshness::Primary,
                "viewer_lists",
                |mut conn| async move {
                    match list {
                        ViewerList::Blocking => db::blocks::count(&mut conn, viewer_id).await,
                        ViewerList::FollowRequests => {
                            db::requests::count(&mut conn, viewer_id).await
                        }
                    }
                },
            )
            .await?)
    }

    /// Puts what a write outside the group commit committed into the caches and onto the stream.
    pub(super) async fn publish(&self, events: &[FollowEvent]) {
        if events.is_empty() {
            return;
        }
        self.publisher.publish(events).await;
    }
}

/// The writes of one user on a pair that consent makes, each its own short transaction.
#[derive(Clone, Copy, Debug)]
enum PairWrite {
    Block,
    Unblock,
    Approve,
    Reject,
}

/// Pause between attempts of a consent write that met a deadlock (a block against a batch of follows).
const RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(2);

/// The client's error for a pair write that wrote nothing.
fn pair_error(err: PairError, viewer_id: i64, user_id: i64) -> AppError {
    match err {
        PairError::UnknownActor => AppError::viewer_not_found(viewer_id),
        PairError::UnknownUser => AppError::NotFound(format!("no user with id {user_id}")),
        PairError::Store(err) => err.into(),
    }
}
