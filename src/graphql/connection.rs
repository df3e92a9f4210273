//! Building follow connections: page size and cursor checks, then one page through the loaders.

use async_graphql::{Context, Result};

use super::{
    cursor,
    loaders::{KnownCountKey, KnownKey, ListKey},
    types::{FollowConnection, TotalCount, loaders, viewer_id},
};
use crate::{
    error::AppError,
    graph::{DEFAULT_PAGE, KnownPage, ListKind, MAX_PAGE, UserRecord},
};

/// The page size asked: null means the default; outside 1..=100 is `BAD_USER_INPUT` naming the limit.
pub fn page_size(first: Option<i32>) -> Result<i64, AppError> {
    match first.map(i64::from) {
        None => Ok(DEFAULT_PAGE),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(n) => Err(AppError::bad_input(format!(
            "first must be between 1 and {MAX_PAGE} (the page size limit); got {n}"
        ))),
    }
}

/// Whether the viewer may see the lists of `owner`: anyone for a public account; for a private one, the
/// account itself and its followers (the viewer's own status, read-your-writes).
async fn may_see_lists(ctx: &Context<'_>, owner: &UserRecord) -> Result<bool> {
    if !owner.is_private {
        return Ok(true);
    }
    match viewer_id(ctx) {
        Some(viewer) if viewer == owner.id => Ok(true),
        Some(viewer) => loaders(ctx)?.status((viewer, owner.id)).await,
        None => Ok(false),
    }
}

/// A page of a user's followers or following: to whom may not see it (a private account's), no
/// entries, and the count still shown, as the profile shows it.
pub async fn list(
    ctx: &Context<'_>,
    kind: ListKind,
    owner: &UserRecord,
    first: Option<i32>,
    after: Option<String>,
) -> Result<FollowConnection> {
    let owner_id = owner.id;
    let size = page_size(first)?;
    let after = after.as_deref().map(cursor::decode).transpose()?;
    let total = match kind {
        ListKind::Followers => TotalCount::Followers(owner_id),
        ListKind::Following => TotalCount::Following(owner_id),
    };
    if !may_see_lists(ctx, owner).await? {
        return Ok(FollowConnection::page(Default::default(), 0, total));
    }
    let key = ListKey {
        kind,
        owner_id,
        after,
        limit: size + 1,
    };
    let rows = loaders(ctx)?.list(key).await?;
    Ok(FollowConnection::page(rows, size as usize, total))
}

/// A page of the followers of `owner_id` whom the viewer follows; empty without a viewer, and empty
/// with a zero count for a private account the viewer may not see the lists of (a part of its follower
/// list, its count included). The page and its `totalCount` go through the known-followers loaders: the
/// request's pages cost one statement, and its counts another, however many users ask.
pub async fn known_followers(
    ctx: &Context<'_>,
    owner: &UserRecord,
    first: Option<i32>,
    after: Option<String>,
) -> Result<FollowConnection> {
    let owner_id = owner.id;
    let size = page_size(first)?;
    let after = after.as_deref().map(cursor::decode).transpose()?;
    let viewer_id = match viewer_id(ctx) {
        Some(viewer) if may_see_lists(ctx, owner).await? => Some(viewer),
        _ => None,
    };
    let Some(viewer_id) = viewer_id else {
        return Ok(FollowConnection::page(
            Default::default(),
            0,
            TotalCount::Zero,
        ));
    };
    let key = KnownKey {
        viewer_id,
        page: KnownPage {
            owner_id,
            after,
            limit: size + 1,
        },
    };
    let rows = loaders(ctx)?.known_followers(key).await?;
    let total = TotalCount::KnownFollowers(KnownCountKey {
        viewer_id,
        owner_id,
    });
    Ok(FollowConnection::page(rows, size as usize, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes_are_checked() {
        assert_eq!(page_size(None).ok(), Some(20));
        assert_eq!(page_size(Some(100)).ok(), Some(100));
        assert!(page_size(Some(0)).is_err());
        assert!(page_size(Some(101)).is_err());
        assert!(page_size(Some(-5)).is_err());
    }
}
