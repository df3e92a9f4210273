//! Apollo Federation: the entities this subgraph resolves for a router (`Query._entities`).
//!
//! `User @key(fields: "id")`: a router holding a user's id from another subgraph asks this one for the
//! follow fields. Every representation resolves through the loaders, so a router's batch of 100
//! users costs one lookup per kind, not 100. A user this service has no record of is still an entity:
//! it has no follows (edges need records), so its follow fields answer zeros and empty lists, and only
//! its `handle` (which the users subgraph owns) is an error.

use async_graphql::{Context, ID, Object, Result};

use super::{ids, types::User};

/// The entity resolvers, merged into the query root.
#[derive(Default)]
pub struct Entities;

#[Object]
impl Entities {
    /// Resolves `User` by its key.
    #[graphql(entity)]
    async fn find_user_by_id(&self, ctx: &Context<'_>, id: ID) -> Result<User> {
        let id = ids::parse_user_id(&id, "id")?;
        let record = super::types::loaders(ctx)?.user(id).await?;
        Ok(record.map_or_else(|| User::reference(id), User))
    }
}
