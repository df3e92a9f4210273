//! Mutation roots: the viewer follows and unfollows; admins upsert user records.

use async_graphql::{Context, ID, MergedObject, Object, Result};

use super::{
    RequestViewer,
    ids::{parse_user_id, parse_user_ids},
    types::{FollowPayload, UpsertUserInput, User},
};
use crate::{auth::Viewer, error::AppError, graph::FollowGraph};

// The mutation domains below, merged into the one root type.
/// Changing the follow graph as the viewer (a bearer token is required), and user records (admins).
#[derive(MergedObject, Default)]
pub struct Mutation(
    FollowMutation,
    super::consent::ConsentMutation,
    UserMutation,
);

/// The viewer the request authenticated, or `UNAUTHENTICATED`.
pub(crate) fn require_viewer(ctx: &Context<'_>) -> Result<Viewer, AppError> {
    ctx.data_opt::<RequestViewer>()
        .and_then(|v| v.0)
        .ok_or_else(AppError::needs_viewer)
}

/// The payload of one follow or unfollow; a changed edge makes the request read both ends' counts as
/// they stand now, so the payload's counts include this write.
fn payload(
    ctx: &Context<'_>,
    viewer_id: i64,
    outcome: crate::graph::FollowOutcome,
) -> Result<FollowPayload> {
    if outcome.changed {
        super::types::loaders(ctx)?.mark_written([viewer_id, outcome.user_id]);
    }
    Ok(FollowPayload { viewer_id, outcome })
}

/// Changing the viewer's follows.
#[derive(Default)]
pub struct FollowMutation;

#[Object]
impl FollowMutation {
    /// The viewer follows userId; when userId is a private account, this asks to (requested = true,
    /// following = false until userId approves). Following twice is no error: the second call has
    /// changed = false. A block either way refuses it (FORBIDDEN).
    async fn follow(&self, ctx: &Context<'_>, user_id: ID) -> Result<FollowPayload> {
        let viewer = require_viewer(ctx)?;
        let target = parse_user_id(&user_id, "userId")?;
        let outcome = ctx
            .data::<FollowGraph>()?
            .follow(viewer.user_id, target)
            .await?;
        payload(ctx, viewer.user_id, outcome)
    }

    /// The viewer stops following userId, or withdraws its pending request to. Unfollowing a user not
    /// followed nor asked has changed = false.
    async fn unfollow(&self, ctx: &Context<'_>, user_id: ID) -> Result<FollowPayload> {
        let viewer = require_viewer(ctx)?;
        let target = parse_user_id(&user_id, "userId")?;
        let outcome = ctx
            .data::<FollowGraph>()?
            .unfollow(viewer.user_id, target)
            .await?;
        payload(ctx, viewer.user_id, outcome)
    }

    /// follow for each id, in order. At most 100 ids; checked whole before anything is written.
    async fn follow_many(
        &self,
        ctx: &Context<'_>,
        user_ids: Vec<ID>,
    ) -> Result<Vec<FollowPayload>> {
        let viewer = require_viewer(ctx)?;
        let targets = parse_user_ids(&user_ids, "userIds")?;
        let outcomes = ctx
            .data::<FollowGraph>()?
            .follow_many(viewer.user_id, &targets)
            .await?;
        outcomes
            .into_iter()
            .map(|outcome| payload(ctx, viewer.user_id, outcome))
            .collect()
    }

    /// unfollow for each id, in order. At most 100 ids; checked whole before anything is written.
    async fn unfollow_many(
        &self,
        ctx: &Context<'_>,
        user_ids: Vec<ID>,
    ) -> Result<Vec<FollowPayload>> {
        let viewer = require_viewer(ctx)?;
        let targets = parse_user_ids(&user_ids, "userIds")?;
        let outcomes = ctx
            .data::<FollowGraph>()?
            .unfollow_many(viewer.user_id, &targets)
            .await?;
        outcomes
            .into_iter()
            .map(|outcome| payload(ctx, viewer.user_id, outcome))
            .collect()
    }
}

/// Keeping the local user records in step with the user service.
#[derive(Default)]
pub struct UserMutation;

#[Object]
impl UserMutation {
    /// Creates or updates the local record of a user (id, handle, display name). Admin role only.
    async fn upsert_user(&self, ctx: &Context<'_>, input: UpsertUserInput) -> Result<User> {
        let viewer = require_viewer(ctx)?;
        if !viewer.is_admin {
            return Err(
                AppError::Forbidden("upsertUser needs a token with role admin".into()).into(),
            );
        }
        let id = parse_user_id(&input.id, "input.id")?;
        let graph = ctx.data::<FollowGraph>()?;
        Ok(User(
            graph
                .upsert_user(
                    id,
                    &input.handle,
                    input.display_name.as_deref(),
                    input.is_private,
                )
                .await?,
        ))
    }
}
