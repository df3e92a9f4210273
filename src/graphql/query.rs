//! Query roots: users, and the follow graph between them.

use async_graphql::{Context, ID, MergedObject, Object, Result};

use super::{
    ids::{parse_user_id, parse_user_ids},
    types::{Relationship, User, loaders, viewer_id},
};
use crate::graph::FollowGraph;

// The query domains below, merged into the one root type.
/// Reading users and the follow graph between them. Everything here is public; a bearer token adds
/// the viewer-relative fields.
#[derive(MergedObject, Default)]
pub struct Query(UserQuery, FollowQuery, super::consent::ConsentQuery);

// The query root as served: `Query` plus the federation entity resolvers, which add `_entities` and
// `_service` for a router (and nothing a direct client must know about: `schema.graphql` is `Query`).
// (A plain comment: a doc comment would become the type's description in the SDL.)
/// Reading users and the follow graph between them. Everything here is public; a bearer token adds
/// the viewer-relative fields.
#[derive(MergedObject, Default)]
#[graphql(name = "Query")]
pub struct ServedQuery(
    UserQuery,
    FollowQuery,
    super::consent::ConsentQuery,
    super::entities::Entities,
);

/// Looking users up.
#[derive(Default)]
pub struct UserQuery;

#[Object]
impl UserQuery {
    /// The authenticated user, or null when the request carries no valid bearer token.
    async fn viewer(&self, ctx: &Context<'_>) -> Result<Option<User>> {
        let Some(id) = viewer_id(ctx) else {
            return Ok(None);
        };
        Ok(loaders(ctx)?.user(id).await?.map(User))
    }

    /// A user by id, or null when there is no such user.
    async fn user(&self, ctx: &Context<'_>, id: ID) -> Result<Option<User>> {
        let id = parse_user_id(&id, "id")?;
        Ok(loaders(ctx)?.user(id).await?.map(User))
    }

    /// A user by handle (case-insensitive), or null when there is no such user.
    async fn user_by_handle(&self, ctx: &Context<'_>, handle: String) -> Result<Option<User>> {
        Ok(ctx
            .data::<FollowGraph>()?
            .user_by_handle(&handle, loaders(ctx)?.reader())
            .await?
            .map(User))
    }

    /// Users by id, in the order asked, null where unknown. At most 100 ids.
    #[graphql(complexity = "super::batch_complexity(ids.len(), child_complexity)")]
    async fn users(&self, ctx: &Context<'_>, ids: Vec<ID>) -> Result<Vec<Option<User>>> {
        let ids = parse_user_ids(&ids, "ids")?;
        let found = loaders(ctx)?.users(&ids).await?;
        Ok(ids
            .iter()
            .map(|id| found.get(id).cloned().map(User))
            .collect())
    }
}

/// Asking about edges.
#[derive(Default)]
pub struct FollowQuery;

#[Object]
impl FollowQuery {
    /// Whether followerId follows followeeId. Read-your-writes for the viewer's own follows.
    async fn is_following(
        &self,
        ctx: &Context<'_>,
        follower_id: ID,
        followee_id: ID,
    ) -> Result<bool> {
        let follower = parse_user_id(&follower_id, "followerId")?;
        let followee = parse_user_id(&followee_id, "followeeId")?;
        if follower == followee {
            return Ok(false);
        }
        loaders(ctx)?.status((follower, followee)).await
    }

    /// The relationship between userId and each of otherIds, in the order asked. At most 100 ids.
    /// Requests and blocks show only to the users they concern (see Relationship).
    #[graphql(complexity = "super::batch_complexity(other_ids.len(), child_complexity)")]
    async fn relationships(
        &self,
        ctx: &Context<'_>,
        user_id: ID,
        other_ids: Vec<ID>,
    ) -> Result<Vec<Relationship>> {
        let user = parse_user_id(&user_id, "userId")?;
        let others = parse_user_ids(&other_ids, "otherIds")?;
        let pairs = others
            .iter()
            .filter(|&&o| o != user)
            .flat_map(|&o| [(user, o), (o, user)]);
        let pairs: Vec<(i64, i64)> = pairs.collect();
        let statuses = loaders(ctx)?.statuses(&pairs).await?;
        let status = |pair| statuses.get(&pair).copied().unwrap_or(false);
        // Requests show to their two users, blocks to the blocker: only the pairs with the viewer in
        // them are read, and only when the selection asks.
        let viewer = viewer_id(ctx);
        let shown = |other: i64| viewer.is_some_and(|v| v == user || v == other);
        let selection = ctx.look_ahead();
        let graph = ctx.data::<FollowGraph>()?;
        // Empty when not asked for (the graph answers an empty list without a statement); the two
        // statements run at once.
        let asked_requests: Vec<(i64, i64)> =
            if selection.field("requested").exists() || selection.field("requestedBy").exists() {
                pairs
                    .iter()
                    .copied()
                    .filter(|&(a, b)| shown(if a == user { b } else { a }))
                    .collect()
            } else {
                Vec::new()
            };
        let asked_blocks: Vec<(i64, i64)> =
            if selection.field("blocking").exists() && viewer == Some(user) {
                others
                    .iter()
                    .filter(|&&o| o != user)
                    .map(|&o| (user, o))
                    .collect()
            } else {
                Vec::new()
            };
        let (requests, blocks) = futures::try_join!(
            graph.requests_between(&asked_requests),
            graph.blocks_between(&asked_blocks)
        )?;
        Ok(others
            .iter()
            .zip(other_ids)
            .map(|(&other, other_id)| {
                let visible = shown(other) && other != user;
                Relationship {
                    user_id: user_id.clone(),
                    other_id,
                    following: status((user, other)),
                    followed_by: status((other, user)),
                    requested: visible.then(|| requests.contains(&(user, other))),
                    requested_by: visible.then(|| requests.contains(&(other, user))),
                    blocking: (viewer == Some(user) && other != user)
                        .then(|| blocks.contains(&(user, other))),
                }
            })
            .collect())
    }
}
