//! Building follow connections: page size and cursor checks, then one page through the loaders.

use async_graphql::{Context, Result};

use super::{
    cursor,
    loaders::{KnownCountKey, KnownKey, ListKey},
    types::{FollowConnection, TotalCount, loaders, viewer_id},
};
use crate::{
    db::follows::{KnownPage, ListKind},
    error::AppError,
    graph::{DEFAULT_PAGE, MAX_PAGE},
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

/// A page of a user's followers or following.
pub async fn list(
    ctx: &Context<'_>,
    kind: ListKind,
    owner_id: i64,
    first: Option<i32>,
    after: Option<String>,
) -> Result<FollowConnection> {
    let size = page_size(first)?;
    let after = after.as_deref().map(cursor::decode).transpose()?;
    let key = ListKey {
        kind,
        owner_id,
        after,
        limit: size + 1,
    };
    let rows = loaders(ctx)?.list(key).await?;
    let total = match kind {
        ListKind::Followers => TotalCount::Followers(owner_id),
        ListKind::Following => TotalCount::Following(owner_id),
    };
    Ok(FollowConnection::page(rows, size as usize, total))
}

/// A page of the followers of `owner_id` whom the viewer follows; empty without a viewer. The page and
/// its `totalCount` go through the known-followers loaders: the request's pages cost one statement, and
/// its counts another, however many users ask.
pub async fn known_followers(
    ctx: &Context<'_>,
    owner_id: i64,
    first: Option<i32>,
    after: Option<String>,
) -> Result<FollowConnection> {
    let size = page_size(first)?;
    let after = after.as_deref().map(cursor::decode).transpose()?;
    let Some(viewer_id) = viewer_id(ctx) else {
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
