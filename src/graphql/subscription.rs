//! Subscription root: follow events that concern the viewer, as this instance's event hub routes them.

use async_graphql::{Context, Result, Subscription};
use futures::{Stream, StreamExt};

use super::types::{FollowEvent, viewer_id};
use crate::{
    error::AppError,
    graph::{Delivery, EventHub, UserId},
};

#[derive(Default)]
pub struct Subscription;

#[Subscription]
impl Subscription {
    /// Follow events that concern the viewer: someone followed or unfollowed them, or asked to follow
    /// them (FOLLOW_REQUESTED), or approved the viewer's request (FOLLOW_REQUEST_APPROVED). Blocks and
    /// removed followers are told to nobody. Needs a viewer.
    ///
    /// Events arrive once committed and published, in stream order. A client that falls too far behind
    /// gets one SERVICE_UNAVAILABLE error and the subscription ends: subscribe again and re-read.
    async fn follow_events(
        &self,
        ctx: &Context<'_>,
    ) -> Result<impl Stream<Item = Result<FollowEvent>> + use<>> {
        let viewer = viewer_id(ctx).ok_or_else(AppError::needs_viewer)?;
        let hub = ctx.data::<EventHub>()?;
        Ok(hub
            .subscribe(UserId(viewer))
            .map(|delivery| {
                match delivery {
            Delivery::Event(event) => Ok(FollowEvent(event)),
            Delivery::Overrun => Err(AppError::ServiceUnavailable(
                "this subscription fell too far behind its events and was ended; subscribe again"
                    .into(),
            )
            .into()),
        }
            }))
    }
}
