//! The object types of the schema: users, follow connections, relationships, payloads, events.

use std::sync::Arc;

use async_graphql::{Context, Enum, ID, InputObject, Object, Result, SimpleObject};

use super::{
    RequestViewer, cursor,
    loaders::{KnownCountKey, Loaders},
    scalars::DateTime,
};
use crate::{
    error::AppError,
    graph::{ListEntry, UserRecord},
};

/// Per-request data every resolver may need.
pub(crate) fn loaders<'a>(ctx: &'a Context<'_>) -> Result<&'a Loaders> {
    ctx.data::<Loaders>()
}

/// The viewer's user id, if the request carries a valid token.
pub(crate) fn viewer_id(ctx: &Context<'_>) -> Option<i64> {
    ctx.data_opt::<RequestViewer>()
        .and_then(|v| v.0)
        .map(|v| v.user_id)
}

/// Loads users that must exist (they are ends of edges, which the schema ties to `users`). A cached
/// "no such user" for one of them is stale (the user was created after it was cached): those are read
/// again from the database, which also replaces the stale entry everywhere.
pub(crate) async fn load_users(ctx: &Context<'_>, ids: &[i64]) -> Result<Vec<User>> {
    let mut found = loaders(ctx)?.users(ids).await?;
    let missing: Vec<i64> = ids
        .iter()
        .copied()
        .filter(|id| !found.contains_key(id))
        .collect();
    if !missing.is_empty() {
        let graph = ctx.data::<crate::graph::FollowGraph>()?;
        found.extend(graph.users_from_store(&missing).await?);
    }
    Ok(ids
        .iter()
        .map(|&id| match found.get(&id) {
            Some(record) => User(record.clone()),
            // Deleted between the edge's read and this one: the id alone, its handle NOT_FOUND.
            None => User::reference(id),
        })
        .collect())
}

/// One user that must exist, as [`load_users`].
pub(crate) async fn load_user(ctx: &Context<'_>, id: i64) -> Result<User> {
    let mut users = load_users(ctx, &[id]).await?;
    Ok(users.pop().unwrap_or_else(|| User::reference(id)))
}

/// A user of the social product, with their place in the follow graph.
pub struct User(pub UserRecord);

impl User {
    /// A user known only by id (a federation router's reference to a user this service has no record
    /// of). Handles are never empty, so the empty one marks it.
    pub fn reference(id: i64) -> Self {
        Self(UserRecord {
            id,
            handle: String::new(),
            display_name: None,
            updated_at: chrono::DateTime::UNIX_EPOCH,
            is_private: false,
        })
    }

    fn is_reference(&self) -> bool {
        self.0.handle.is_empty()
    }
}

// In a supergraph the users subgraph owns `handle` and `displayName`; this one keeps a copy of both
// (`@shareable`) for the users it has records of.
#[Object]
impl User {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    #[graphql(shareable)]
    async fn handle(&self) -> Result<&str> {
        if self.is_reference() {
            return Err(AppError::NotFound(format!(
                "user {} has no record in follow-service; its handle comes from the users service",
                self.0.id
            ))
            .into());
        }
        Ok(&self.0.handle)
    }

    #[graphql(shareable)]
    async fn display_name(&self) -> Option<&str> {
        self.0.display_name.as_deref()
    }

    /// Whether this is a private account: following it asks the user first (a follow request), and its
    /// lists show only to its followers and itself (to others: no entries, totalCount still shown).
    async fn is_private(&self) -> bool {
        self.0.is_private
    }

    /// How many users follow this user. Eventually consistent: it converges within about a second.
    async fn follower_count(&self, ctx: &Context<'_>) -> Result<i32> {
        let counts = loaders(ctx)?.counts(self.0.id).await?;
        Ok(clamp_count(counts.follower_count))
    }

    /// How many users this user follows. Eventually consistent, as followerCount.
    async fn following_count(&self, ctx: &Context<'_>) -> Result<i32> {
        let counts = loaders(ctx)?.counts(self.0.id).await?;
        Ok(clamp_count(counts.following_count))
    }

    /// Who follows this user, most recent first. first: 1 to 100, default 20.
    #[graphql(complexity = "super::list_complexity(first, child_complexity)")]
    async fn followers(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 20)] first: Option<i32>,
        after: Option<String>,
    ) -> Result<FollowConnection> {
        // Boxed: see `Loaders` (the largest field future sizes every field's).
        Box::pin(super::connection::list(
            ctx,
            crate::graph::ListKind::Followers,
            &self.0,
            first,
            after,
        ))
        .await
    }

    /// Whom this user follows, most recent first. first: 1 to 100, default 20.
    #[graphql(complexity = "super::list_complexity(first, child_complexity)")]
    async fn following(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 20)] first: Option<i32>,
        after: Option<String>,
    ) -> Result<FollowConnection> {
        Box::pin(super::connection::list(
            ctx,
            crate::graph::ListKind::Following,
            &self.0,
            first,
            after,
        ))
        .await
    }

    /// Followers of this user whom the viewer follows, most recent first. Empty without a viewer.
    #[graphql(complexity = "super::list_complexity(first, child_complexity)")]
    async fn known_followers(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 20)] first: Option<i32>,
        after: Option<String>,
    ) -> Result<FollowConnection> {
        Box::pin(super::connection::known_followers(
            ctx, &self.0, first, after,
        ))
        .await
    }

    /// Whether the viewer follows this user; false without a viewer.
    async fn viewer_is_following(&self, ctx: &Context<'_>) -> Result<bool> {
        match viewer_id(ctx) {
            Some(viewer) if viewer != self.0.id => {
                Ok(loaders(ctx)?.status((viewer, self.0.id)).await?)
            }
            _ => Ok(false),
        }
    }

    /// Whether this user follows the viewer; false without a viewer.
    async fn follows_viewer(&self, ctx: &Context<'_>) -> Result<bool> {
        match viewer_id(ctx) {
            Some(viewer) if viewer != self.0.id => {
                Ok(loaders(ctx)?.status((self.0.id, viewer)).await?)
            }
            _ => Ok(false),
        }
    }

    /// Whether the viewer's request to follow this user (a private account) is pending; false without
    /// a viewer.
    async fn viewer_has_requested(&self, ctx: &Context<'_>) -> Result<bool> {
        match viewer_id(ctx) {
            Some(viewer) if viewer != self.0.id => {
                Ok(loaders(ctx)?.request((viewer, self.0.id)).await?)
            }
            _ => Ok(false),
        }
    }

    /// Whether the viewer blocks this user; false without a viewer. (Whether this user blocks the
    /// viewer is deliberately not told.)
    async fn blocking(&self, ctx: &Context<'_>) -> Result<bool> {
        match viewer_id(ctx) {
            Some(viewer) if viewer != self.0.id => {
                Ok(loaders(ctx)?.block((viewer, self.0.id)).await?)
            }
            _ => Ok(false),
        }
    }
}

/// Counts are 64-bit in the store and `Int` (32-bit) on the wire; a count is never shown below zero
/// (an unfollow's delta may land an instant before its follow's).
fn clamp_count(n: i64) -> i32 {
    n.clamp(0, i64::from(i32::MAX)) as i32
}

/// Where a connection's `totalCount` comes from.
#[derive(Clone, Copy)]
pub(crate) enum TotalCount {
    Followers(i64),
    Following(i64),
    /// How many followers of the owner the viewer follows (through the known-counts loader).
    KnownFollowers(KnownCountKey),
    Zero,
}

/// A page of users in a follow list (Relay cursor connection).
pub struct FollowConnection {
    /// The rows fetched (maybe shared with the cache): the page, and one more when a next page exists.
    rows: Arc<Vec<ListEntry>>,
    /// How many of `rows` the page shows.
    shown: usize,
    total: TotalCount,
}

impl FollowConnection {
    /// A page of at most `size` entries from `rows`, fetched as `size + 1` to tell whether more follow.
    pub(crate) fn page(rows: Arc<Vec<ListEntry>>, size: usize, total: TotalCount) -> Self {
        let shown = rows.len().min(size);
        Self { rows, shown, total }
    }

    fn entries(&self) -> &[ListEntry] {
        &self.rows[..self.shown]
    }
}

#[Object]
impl FollowConnection {
    async fn edges(&self) -> Vec<FollowEdge> {
        self.entries().iter().cloned().map(FollowEdge).collect()
    }

    async fn nodes(&self, ctx: &Context<'_>) -> Result<Vec<User>> {
        let ids: Vec<i64> = self.entries().iter().map(|e| e.user_id).collect();
        load_users(ctx, &ids).await
    }

    async fn page_info(&self) -> PageInfo {
        PageInfo {
            has_next_page: self.rows.len() > self.shown,
            has_previous_page: false,
            start_cursor: self.entries().first().map(entry_cursor),
            end_cursor: self.entries().last().map(entry_cursor),
        }
    }

    // For knownFollowers: exact (one GROUP BY statement for the request's owners), and 0 without a
    // viewer. The description below is the contract's: it stays as the contract words it.
    /// The list's whole length (for followers and following: the user's followerCount or followingCount).
    async fn total_count(&self, ctx: &Context<'_>) -> Result<i32> {
        let loaders = loaders(ctx)?;
        Ok(match self.total {
            TotalCount::Followers(id) => clamp_count(loaders.counts(id).await?.follower_count),
            TotalCount::Following(id) => clamp_count(loaders.counts(id).await?.following_count),
            TotalCount::KnownFollowers(key) => {
                clamp_count(loaders.known_followers_count(key).await?)
            }
            TotalCount::Zero => 0,
        })
    }
}

fn entry_cursor(entry: &ListEntry) -> String {
    cursor::encode(crate::graph::Keyset {
        at: entry.followed_at,
        user_id: entry.user_id,
    })
}

/// One user in a follow list, with when the follow began.
pub struct FollowEdge(ListEntry);

#[Object]
impl FollowEdge {
    async fn cursor(&self) -> String {
        entry_cursor(&self.0)
    }

    async fn node(&self, ctx: &Context<'_>) -> Result<User> {
        load_user(ctx, self.0.user_id).await
    }

    /// When the follow began.
    async fn followed_at(&self) -> DateTime {
        DateTime(self.0.followed_at)
    }
}

// Relay's page info: other subgraphs define the same type (`@shareable`).
#[derive(SimpleObject)]
#[graphql(shareable)]
pub struct PageInfo {
    pub has_next_page: bool,
    pub has_previous_page: bool,
    pub start_cursor: Option<String>,
    pub end_cursor: Option<String>,
}

/// The relationship between userId and one other user.
#[derive(SimpleObject)]
pub struct Relationship {
    pub user_id: ID,
    pub other_id: ID,
    /// userId follows otherId.
    pub following: bool,
    /// otherId follows userId.
    pub followed_by: bool,
    /// userId's request to follow otherId (a private account) is pending. Null unless the viewer is
    /// userId or otherId: a request shows only to its two users.
    pub requested: Option<bool>,
    /// otherId's request to follow userId is pending. Null unless the viewer is userId or otherId.
    pub requested_by: Option<bool>,
    /// userId blocks otherId. Null unless the viewer is userId: a block shows only to the blocker.
    pub blocking: Option<bool>,
}

/// What a follow or unfollow did.
pub struct FollowPayload {
    pub(crate) viewer_id: i64,
    pub(crate) outcome: crate::graph::FollowOutcome,
}

#[Object]
impl FollowPayload {
    async fn viewer(&self, ctx: &Context<'_>) -> Result<User> {
        load_user(ctx, self.viewer_id).await
    }

    /// The user followed or unfollowed.
    async fn user(&self, ctx: &Context<'_>) -> Result<User> {
        load_user(ctx, self.outcome.user_id).await
    }

    /// Whether the viewer follows user after this call.
    async fn following(&self) -> bool {
        self.outcome.following
    }

    /// Whether the viewer's request to follow user (a private account) is pending after this call.
    async fn requested(&self) -> bool {
        self.outcome.requested
    }

    /// Whether this call changed anything.
    async fn changed(&self) -> bool {
        self.outcome.changed
    }
}

/// What a block or unblock did.
pub struct BlockPayload {
    pub(crate) viewer_id: i64,
    pub(crate) blocking: bool,
    pub(crate) outcome: crate::graph::ConsentOutcome,
}

#[Object]
impl BlockPayload {
    async fn viewer(&self, ctx: &Context<'_>) -> Result<User> {
        load_user(ctx, self.viewer_id).await
    }

    /// The user blocked or unblocked.
    async fn user(&self, ctx: &Context<'_>) -> Result<User> {
        load_user(ctx, self.outcome.user_id).await
    }

    /// Whether the viewer blocks user after this call.
    async fn blocking(&self) -> bool {
        self.blocking
    }

    /// Whether this call changed anything.
    async fn changed(&self) -> bool {
        self.outcome.changed
    }
}

/// What removing a follower, or approving or rejecting a follow request, did.
pub struct FollowerPayload {
    pub(crate) viewer_id: i64,
    pub(crate) outcome: crate::graph::ConsentOutcome,
}

#[Object]
impl FollowerPayload {
    async fn viewer(&self, ctx: &Context<'_>) -> Result<User> {
        load_user(ctx, self.viewer_id).await
    }

    /// The follower removed, or the user whose request was approved or rejected.
    async fn user(&self, ctx: &Context<'_>) -> Result<User> {
        load_user(ctx, self.outcome.user_id).await
    }

    /// Whether user follows the viewer after this call.
    async fn followed_by(&self, ctx: &Context<'_>) -> Result<bool> {
        loaders(ctx)?
            .status((self.outcome.user_id, self.viewer_id))
            .await
    }

    /// Whether this call changed anything.
    async fn changed(&self) -> bool {
        self.outcome.changed
    }
}

/// Something that happened between a follower and a followee: see kind, and who is told of it.
pub struct FollowEvent(pub crate::graph::FollowEvent);

#[Object]
impl FollowEvent {
    async fn kind(&self) -> FollowEventKind {
        self.0.kind.into()
    }

    async fn follower(&self, ctx: &Context<'_>) -> Result<User> {
        load_user(ctx, self.0.follower.get()).await
    }

    async fn followee(&self, ctx: &Context<'_>) -> Result<User> {
        load_user(ctx, self.0.followee.get()).await
    }

    async fn at(&self) -> DateTime {
        DateTime(self.0.at)
    }
}

#[derive(Enum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum FollowEventKind {
    /// follower followed followee (told to the followee).
    Follow,
    /// follower unfollowed followee (told to the followee).
    Unfollow,
    /// follower asked to follow followee, a private account (told to the followee).
    FollowRequested,
    /// followee approved follower's request: follower now follows followee (told to the follower).
    FollowRequestApproved,
}

impl From<crate::graph::EventKind> for FollowEventKind {
    fn from(kind: crate::graph::EventKind) -> Self {
        use crate::graph::EventKind as Kind;
        match kind {
            Kind::Follow => Self::Follow,
            // A removal has no recipient, so the hub never delivers one; to the edge it is an unfollow.
            Kind::Unfollow | Kind::Remove => Self::Unfollow,
            Kind::Request => Self::FollowRequested,
            Kind::Approve => Self::FollowRequestApproved,
        }
    }
}

/// The local record of a user, as the user service knows it.
#[derive(InputObject)]
pub struct UpsertUserInput {
    pub id: ID,
    /// 1 to 30 of [A-Za-z0-9_], unique ignoring case.
    pub handle: String,
    /// At most 100 characters; null or blank clears it.
    pub display_name: Option<String>,
    /// Makes the account private (true) or public (false, which approves its pending follow requests);
    /// null or absent keeps it as it is (a new user is public).
    pub is_private: Option<bool>,
}
