//! Who may follow whom, as the viewer decides it: blocks, removing a follower, and the follow requests
//! to a private account (mutations, and the two lists only the viewer sees).

use async_graphql::{Context, ID, Object, Result};

use super::{
    connection::page_size,
    cursor,
    ids::parse_user_id,
    mutation::require_viewer,
    scalars::DateTime,
    types::{BlockPayload, FollowerPayload, PageInfo, User, load_user, load_users, loaders},
};
use crate::graph::{ConsentOutcome, FollowGraph, Keyset, ListEntry, ViewerList};

/// Blocking, removing followers, answering follow requests.
#[derive(Default)]
pub struct ConsentMutation;

/// Marks both users and both pairs as written when the call changed edges, so the payload's counts and
/// statuses show it.
fn written(ctx: &Context<'_>, viewer_id: i64, outcome: ConsentOutcome) -> Result<()> {
    if outcome.changed {
        let loaders = loaders(ctx)?;
        loaders.mark_written([viewer_id, outcome.user_id]);
        loaders.mark_pairs_written([(viewer_id, outcome.user_id), (outcome.user_id, viewer_id)]);
    }
    Ok(())
}

#[Object]
impl ConsentMutation {
    /// The viewer blocks userId: any follow either way, and any follow request either way, ends, and
    /// neither can follow the other while the block stands (FORBIDDEN). userId is not told. Blocking
    /// twice is no error: the second call has changed = false.
    async fn block(&self, ctx: &Context<'_>, user_id: ID) -> Result<BlockPayload> {
        let viewer = require_viewer(ctx)?;
        let target = parse_user_id(&user_id, "userId")?;
        let outcome = ctx
            .data::<FollowGraph>()?
            .block(viewer.user_id, target)
            .await?;
        written(ctx, viewer.user_id, outcome)?;
        Ok(BlockPayload {
            viewer_id: viewer.user_id,
            blocking: true,
            outcome,
        })
    }

    /// The viewer lifts its block of userId (the follows it ended stay ended). Unblocking a user not
    /// blocked has changed = false.
    async fn unblock(&self, ctx: &Context<'_>, user_id: ID) -> Result<BlockPayload> {
        let viewer = require_viewer(ctx)?;
        let target = parse_user_id(&user_id, "userId")?;
        let outcome = ctx
            .data::<FollowGraph>()?
            .unblock(viewer.user_id, target)
            .await?;
        Ok(BlockPayload {
            viewer_id: viewer.user_id,
            blocking: false,
            outcome,
        })
    }

    /// The viewer removes userId from its followers, without a block (userId may follow again, or ask
    /// again if the viewer is private). userId is not told. Removing a user who does not follow the
    /// viewer has changed = false.
    async fn remove_follower(&self, ctx: &Context<'_>, user_id: ID) -> Result<FollowerPayload> {
        let viewer = require_viewer(ctx)?;
        let target = parse_user_id(&user_id, "userId")?;
        let outcome = ctx
            .data::<FollowGraph>()?
            .remove_follower(viewer.user_id, target)
            .await?;
        written(ctx, viewer.user_id, outcome)?;
        Ok(FollowerPayload {
            viewer_id: viewer.user_id,
            outcome,
        })
    }

    /// The viewer approves userId's pending request to follow it: userId now follows the viewer and is
    /// told (FOLLOW_REQUEST_APPROVED). A request no longer pending (cancelled by an unfollow, rejected,
    /// ended by a block) has changed = false and follows nobody.
    async fn approve_follow_request(
        &self,
        ctx: &Context<'_>,
        user_id: ID,
    ) -> Result<FollowerPayload> {
        let viewer = require_viewer(ctx)?;
        let target = parse_user_id(&user_id, "userId")?;
        let outcome = ctx
            .data::<FollowGraph>()?
            .approve_request(viewer.user_id, target)
            .await?;
        written(ctx, viewer.user_id, outcome)?;
        Ok(FollowerPayload {
            viewer_id: viewer.user_id,
            outcome,
        })
    }

    /// The viewer rejects userId's pending request (userId is not told, and may ask again). Rejecting a
    /// request not pending has changed = false.
    async fn reject_follow_request(
        &self,
        ctx: &Context<'_>,
        user_id: ID,
    ) -> Result<FollowerPayload> {
        let viewer = require_viewer(ctx)?;
        let target = parse_user_id(&user_id, "userId")?;
        let outcome = ctx
            .data::<FollowGraph>()?
            .reject_request(viewer.user_id, target)
            .await?;
        Ok(FollowerPayload {
            viewer_id: viewer.user_id,
            outcome,
        })
    }
}

/// The viewer's own lists: whom it blocks, who asks to follow it.
#[derive(Default)]
pub struct ConsentQuery;

#[Object]
impl ConsentQuery {
    /// Whom the viewer blocks, most recent first. Needs a viewer; first: 1 to 100, default 20.
    #[graphql(complexity = "super::list_complexity(first, child_complexity)")]
    async fn blocking(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 20)] first: Option<i32>,
        after: Option<String>,
    ) -> Result<BlockConnection> {
        Ok(BlockConnection(
            UserPage::read(ctx, ViewerList::Blocking, first, after).await?,
        ))
    }

    /// The follow requests pending to the viewer (a private account), most recent first. Needs a viewer;
    /// first: 1 to 100, default 20.
    #[graphql(complexity = "super::list_complexity(first, child_complexity)")]
    async fn follow_requests(
        &self,
        ctx: &Context<'_>,
        #[graphql(default = 20)] first: Option<i32>,
        after: Option<String>,
    ) -> Result<FollowRequestConnection> {
        Ok(FollowRequestConnection(
            UserPage::read(ctx, ViewerList::FollowRequests, first, after).await?,
        ))
    }
}

/// A page of one of the viewer's lists, fetched one row beyond the page; its length is read only if
/// `totalCount` is asked for.
struct UserPage {
    rows: Vec<ListEntry>,
    shown: usize,
    list: ViewerList,
    viewer_id: i64,
}

impl UserPage {
    /// The page `first` / `after` asks of the viewer's `list`.
    async fn read(
        ctx: &Context<'_>,
        list: ViewerList,
        first: Option<i32>,
        after: Option<String>,
    ) -> Result<Self> {
        let viewer = require_viewer(ctx)?;
        let size = page_size(first)?;
        let after = after.as_deref().map(cursor::decode).transpose()?;
        let rows = ctx
            .data::<FollowGraph>()?
            .viewer_list_page(
                list,
                viewer.user_id,
                after,
                size + 1,
                super::types::loaders(ctx)?.reader(),
            )
            .await?;
        let shown = rows.len().min(size as usize);
        Ok(Self {
            rows,
            shown,
            list,
            viewer_id: viewer.user_id,
        })
    }

    fn entries(&self) -> &[ListEntry] {
        &self.rows[..self.shown]
    }

    async fn nodes(&self, ctx: &Context<'_>) -> Result<Vec<User>> {
        let ids: Vec<i64> = self.entries().iter().map(|e| e.user_id).collect();
        load_users(ctx, &ids).await
    }

    fn page_info(&self) -> PageInfo {
        PageInfo {
            has_next_page: self.rows.len() > self.shown,
            has_previous_page: false,
            start_cursor: self.entries().first().map(entry_cursor),
            end_cursor: self.entries().last().map(entry_cursor),
        }
    }

    async fn total_count(&self, ctx: &Context<'_>) -> Result<i32> {
        let n = ctx
            .data::<FollowGraph>()?
            .viewer_list_count(
                self.list,
                self.viewer_id,
                super::types::loaders(ctx)?.reader(),
            )
            .await?;
        Ok(n.clamp(0, i64::from(i32::MAX)) as i32)
    }
}

fn entry_cursor(entry: &ListEntry) -> String {
    cursor::encode(Keyset {
        at: entry.followed_at,
        user_id: entry.user_id,
    })
}

/// A page of the users the viewer blocks (Relay cursor connection).
pub struct BlockConnection(UserPage);

#[Object]
impl BlockConnection {
    async fn edges(&self) -> Vec<BlockEdge> {
        self.0.entries().iter().cloned().map(BlockEdge).collect()
    }

    async fn nodes(&self, ctx: &Context<'_>) -> Result<Vec<User>> {
        self.0.nodes(ctx).await
    }

    async fn page_info(&self) -> PageInfo {
        self.0.page_info()
    }

    /// How many users the viewer blocks.
    async fn total_count(&self, ctx: &Context<'_>) -> Result<i32> {
        self.0.total_count(ctx).await
    }
}

/// One user the viewer blocks.
pub struct BlockEdge(ListEntry);

#[Object]
impl BlockEdge {
    async fn cursor(&self) -> String {
        entry_cursor(&self.0)
    }

    async fn node(&self, ctx: &Context<'_>) -> Result<User> {
        load_user(ctx, self.0.user_id).await
    }

    /// When the block began.
    async fn blocked_at(&self) -> DateTime {
        DateTime(self.0.followed_at)
    }
}

/// A page of the users asking to follow the viewer (Relay cursor connection).
pub struct FollowRequestConnection(UserPage);

#[Object]
impl FollowRequestConnection {
    async fn edges(&self) -> Vec<FollowRequestEdge> {
        self.0
            .entries()
            .iter()
            .cloned()
            .map(FollowRequestEdge)
            .collect()
    }

    async fn nodes(&self, ctx: &Context<'_>) -> Result<Vec<User>> {
        self.0.nodes(ctx).await
    }

    async fn page_info(&self) -> PageInfo {
        self.0.page_info()
    }

    /// How many requests are pending to the viewer.
    async fn total_count(&self, ctx: &Context<'_>) -> Result<i32> {
        self.0.total_count(ctx).await
    }
}

/// One user asking to follow the viewer.
pub struct FollowRequestEdge(ListEntry);

#[Object]
impl FollowRequestEdge {
    async fn cursor(&self) -> String {
        entry_cursor(&self.0)
    }

    async fn node(&self, ctx: &Context<'_>) -> Result<User> {
        load_user(ctx, self.0.user_id).await
    }

    /// When the request was made.
    async fn requested_at(&self) -> DateTime {
        DateTime(self.0.followed_at)
    }
}
