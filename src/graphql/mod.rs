//! The GraphQL schema: types, resolvers and loaders. Knows nothing of HTTP: the transport hands it
//! a request and the viewer it authenticated ([`prepare`]), and tests drive the same schema directly.

pub mod batch;
pub mod coded;
pub mod connection;
pub mod consent;
pub mod cost;
pub mod cursor;
pub mod documents;
pub mod entities;
pub mod hooks;
pub mod ids;
pub mod limits;
pub mod loaders;
pub mod mutation;
pub mod observe;
pub mod order;
pub mod persisted;
pub mod query;
pub mod scalars;
pub mod subscription;
pub mod types;

use std::time::Duration;

use async_graphql::{ErrorExtensions, Schema};

use crate::{
    auth::Viewer,
    error::AppError,
    graph::{EventHub, FollowGraph},
};

pub use self::{
    mutation::Mutation,
    query::{Query, ServedQuery},
    subscription::Subscription,
};

/// The executable schema: a federation v2 subgraph that direct clients use as well.
pub type FollowSchema = Schema<ServedQuery, Mutation, Subscription>;

/// The viewer of one request (`None`: anonymous), as the transport authenticated it.
#[derive(Clone, Copy, Debug)]
pub struct RequestViewer(pub Option<Viewer>);

/// Limits the schema enforces before validation, before any resolver runs.
#[derive(Clone, Copy, Debug)]
pub struct SchemaLimits {
    /// Depth, complexity, fields and entities a document may reach (see [`cost`]).
    pub cost: cost::CostLimits,
    /// How long a loader batch gathers keys before querying (zero: one scheduling pass).
    pub loader_delay: Duration,
}

/// Settings the schema keeps for building per-request data.
#[derive(Clone, Copy, Debug)]
struct LoaderSettings {
    delay: Duration,
}

/// Builds the schema over the follow graph; subscriptions draw on `events`.
pub fn build_schema(graph: FollowGraph, events: EventHub, limits: SchemaLimits) -> FollowSchema {
    Schema::build(ServedQuery::default(), Mutation::default(), Subscription)
        .data(graph)
        .data(events)
        .data(LoaderSettings {
            delay: limits.loader_delay,
        })
        // The library's own depth and complexity limits are not set: its visitors follow fragment
        // spreads without memoizing, so the linear-time cost check runs first and is the one that refuses.
        // One extension does the cost check, the validation memo, the metrics and the error codes.
        .extension(hooks::Hooks { cost: limits.cost })
        .finish()
}

/// Attaches the per-request data to a request: the viewer and fresh loaders.
pub fn prepare(
    schema: &FollowSchema,
    request: async_graphql::Request,
    viewer: Option<Viewer>,
) -> async_graphql::Request {
    let graph = schema.data::<FollowGraph>();
    let delay = schema
        .data::<LoaderSettings>()
        .map_or(Duration::ZERO, |s| s.delay);
    let request = request.data(RequestViewer(viewer));
    if let (Some(graph), Some(viewer)) = (graph, viewer) {
        graph.note_active(viewer.user_id);
    }
    match graph {
        Some(graph) => request.data(loaders::Loaders::new(
            graph,
            delay,
            viewer.map(|v| v.user_id),
        )),
        None => request,
    }
}

/// The schema's SDL for clients, as committed in `schema.graphql`: without the federation fields.
pub fn sdl() -> String {
    Schema::build(Query::default(), Mutation::default(), Subscription)
        .finish()
        .sdl()
}

/// The subgraph's SDL for a federation router, as `_service { sdl }` answers and `subgraph.graphql`
/// holds (Federation v2: `@link`, `@key`, `@shareable`).
pub fn subgraph_sdl() -> String {
    Schema::build(ServedQuery::default(), Mutation::default(), Subscription)
        .finish()
        .sdl_with_options(
            async_graphql::SDLExportOptions::new()
                .federation()
                .compose_directive(),
        )
}

/// Where the library's own complexity count stops growing: far above any limit, far enough below
/// `usize::MAX` that its unchecked `+ 1`s cannot overflow (a panic in debug builds, a wrap in release).
const COMPLEXITY_CEILING: usize = 1 << 40;

/// The cost of a list field: its page size times what each node asks for. The limits are enforced by
/// [`cost`] before the library counts; this keeps the library's count meaningful and overflow-free.
pub fn list_complexity(first: Option<i32>, child_complexity: usize) -> usize {
    let size = first.unwrap_or(20).clamp(1, 100) as usize;
    batch_complexity(size, child_complexity)
}

/// The cost of a field that resolves its selection once per id (`users`, `relationships`).
pub fn batch_complexity(items: usize, child_complexity: usize) -> usize {
    items
        .saturating_mul(child_complexity)
        .saturating_add(1)
        .min(COMPLEXITY_CEILING)
}

/// The response error for an `AppError`: its message and `extensions.code`. An internal error is
/// logged here with its details (inside the request's span), and the client sees only "internal error".
pub fn to_graphql_error(err: AppError) -> async_graphql::Error {
    if let AppError::Internal(details) = &err {
        tracing::error!(error = %format!("{details:#}"), "internal error");
    }
    let code = err.code();
    let retry_after = match &err {
        AppError::RateLimited {
            retry_after_secs, ..
        } => Some(*retry_after_secs),
        _ => None,
    };
    async_graphql::Error::new(err.message()).extend_with(|_, ext| {
        ext.set("code", code.as_str());
        if let Some(seconds) = retry_after {
            ext.set("retryAfter", seconds);
        }
    })
}

/// A request error (the operation never ran): the message and `extensions.code` of `err`, without a
/// location or path. Every transport builds its refusals with this, so they all look alike.
pub fn request_error(err: AppError) -> async_graphql::ServerError {
    let mut error = to_graphql_error(err).into_server_error(async_graphql::Pos::default());
    error.locations.clear();
    error
}

/// Whether a response reports that the operation never ran (the GraphQL spec's request error): no data
/// and only errors without a path. Parse and validation errors have no path; a resolver's always has.
pub fn is_request_error(response: &async_graphql::Response) -> bool {
    matches!(response.data, async_graphql::Value::Null)
        && !response.errors.is_empty()
        && response.errors.iter().all(|e| e.path.is_empty())
}

impl From<AppError> for async_graphql::Error {
    fn from(err: AppError) -> Self {
        to_graphql_error(err)
    }
}
