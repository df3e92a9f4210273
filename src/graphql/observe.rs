//! Records each GraphQL request's duration by operation name, type and class, its outcome, and its
//! errors by code (a part of the schema's extension, see [`super::hooks`]).
//!
//! The class says which of the service's latency targets a request answers to (`write`, `list`,
//! `status`, `count`, `user`, `subscription`, `other`): operation names are the clients' own, so alerts
//! and dashboards group by class. A request that ends without an answer (the request timeout, or a
//! client gone) is still recorded, as `cancelled`: it is the slowest kind there is.
//!
//! The duration histogram of each (operation name, type, class) is looked up once and kept
//! ([`crate::telemetry::metrics::graphql_duration`]): building and hashing its labels on every request
//! was a measurable part of a cheap request.

use std::{collections::HashSet, sync::Mutex, time::Instant};

use async_graphql::{
    Response,
    parser::types::{
        DocumentOperations, ExecutableDocument, OperationDefinition, OperationType, Selection,
        SelectionSet,
    },
    registry::{MetaTypeName, Registry},
};

use crate::error::ErrorCode;
use crate::telemetry::metrics::{
    GRAPHQL_ERRORS, Outcome, RequestClass, count_request, graphql_duration,
};

/// The codes of errors that are the service's fault, not the client's.
const SERVER_ERROR_CODES: [ErrorCode; 2] = [
    ErrorCode::InternalServerError,
    ErrorCode::ServiceUnavailable,
];

/// Per-request state: the histogram and class of the operation that ran, once `execute` knows it.
#[derive(Default)]
pub struct Observation {
    running: Mutex<Option<(::metrics::Histogram, RequestClass)>>,
}

fn type_name(ty: OperationType) -> &'static str {
    match ty {
        OperationType::Query => "query",
        OperationType::Mutation => "mutation",
        OperationType::Subscription => "subscription",
    }
}

/// The operation of `document` that `name` selects (a lone operation whatever its name).
fn operation<'d>(
    document: &'d ExecutableDocument,
    name: Option<&str>,
) -> Option<&'d OperationDefinition> {
    match &document.operations {
        DocumentOperations::Single(op) => Some(&op.node),
        DocumentOperations::Multiple(ops) => ops
            .iter()
            .find(|(n, _)| Some(n.as_str()) == name)
            .map(|(_, op)| &op.node),
    }
}

impl Observation {
    /// Operation `name` of `document` (`None`: the request was not parsed) is about to run: its
    /// duration goes to the histogram of its name, type and class.
    pub fn executing(
        &self,
        registry: &Registry,
        document: Option<&ExecutableDocument>,
        name: Option<&str>,
    ) {
        let found = document.and_then(|document| {
            let op = operation(document, name)?;
            let class = classify(registry, document, op.ty, &op.selection_set.node);
            Some((type_name(op.ty), class))
        });
        let (ty, class) = found.unwrap_or(("unknown", RequestClass::Other));
        if let Ok(mut running) = self.running.lock() {
            *running = Some((graphql_duration(name, ty, class), class));
        }
    }

    /// The request begins: the returned guard records it once, answered or not.
    pub fn start(&self) -> Recording<'_> {
        Recording {
            observation: self,
            started: Instant::now(),
            done: false,
        }
    }

    /// Records the duration since `started`, the outcome and the errors of `response` (none: cancelled).
    fn record(&self, started: Instant, response: Option<&Response>) {
        let running = self
            .running
            .lock()
            .ok()
            .and_then(|mut running| running.take());
        let (histogram, class) = running.unwrap_or_else(|| {
            let class = RequestClass::Other;
            (graphql_duration(None, "unknown", class), class)
        });
        histogram.record(started.elapsed().as_secs_f64());
        let Some(response) = response else {
            count_request(class, Outcome::Cancelled);
            return;
        };
        let mut outcome = Outcome::Ok;
        for error in &response.errors {
            let code = error
                .extensions
                .as_ref()
                .and_then(|ext| ext.get("code"))
                .and_then(|v| match v {
                    async_graphql::Value::String(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_else(|| "GRAPHQL_VALIDATION".to_owned());
            let by_server = SERVER_ERROR_CODES.iter().any(|c| c.as_str() == code);
            outcome = outcome.max(if by_server {
                Outcome::ServerError
            } else {
                Outcome::ClientError
            });
            ::metrics::counter!(GRAPHQL_ERRORS, "code" => code).increment(1);
        }
        count_request(class, outcome);
    }
}

/// A request being recorded: [`Recording::finished`] records its answer; dropped before that (the
/// request timeout, or the client went away), it records the request as cancelled.
pub struct Recording<'a> {
    observation: &'a Observation,
    started: Instant,
    done: bool,
}

impl Recording<'_> {
    /// The request is answered with `response`.
    pub fn finished(mut self, response: &Response) {
        self.done = true;
        self.observation.record(self.started, Some(response));
    }
}

impl Drop for Recording<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.observation.record(self.started, None);
        }
    }
}

/// What a field of a type costs the service, for the request's class (`None`: it costs nothing of
/// its own, its selection decides).
fn field_class(type_name: &str, field: &str) -> Option<RequestClass> {
    Some(match (type_name, field) {
        (
            "Mutation",
            "follow"
            | "unfollow"
            | "followMany"
            | "unfollowMany"
            | "block"
            | "unblock"
            | "removeFollower"
            | "approveFollowRequest"
            | "rejectFollowRequest",
        ) => RequestClass::Write,
        ("User", "followers" | "following" | "knownFollowers")
        | ("Query", "blocking" | "followRequests") => RequestClass::List,
        ("Query", "isFollowing" | "relationships")
        | ("User", "viewerIsFollowing" | "followsViewer" | "viewerHasRequested" | "blocking") => {
            RequestClass::Status
        }
        ("User", "followerCount" | "followingCount") => RequestClass::Count,
        ("Query", "viewer" | "user" | "userByHandle" | "users") | ("Mutation", "upsertUser") => {
            RequestClass::User
        }
        _ => return None,
    })
}

/// The class of an operation: the costliest of its fields, fragments included (each fragment walked
/// once, so the walk is linear in the document; fragments are context-free, their type condition
/// names their type).
fn classify(
    registry: &Registry,
    document: &ExecutableDocument,
    ty: OperationType,
    selection: &SelectionSet,
) -> RequestClass {
    let root = match ty {
        OperationType::Query => registry.query_type.as_str(),
        OperationType::Mutation => match &registry.mutation_type {
            Some(name) => name.as_str(),
            None => return RequestClass::Other,
        },
        OperationType::Subscription => return RequestClass::Subscription,
    };
    let mut class = RequestClass::Other;
    let mut walked: HashSet<&str> = HashSet::new();
    let mut stack: Vec<(&str, &SelectionSet)> = vec![(root, selection)];
    while let Some((type_name, set)) = stack.pop() {
        for item in &set.items {
            match &item.node {
                Selection::Field(field) => {
                    let field = &field.node;
                    let name = field.name.node.as_str();
                    if let Some(of_field) = field_class(type_name, name) {
                        class = class.max(of_field);
                    }
                    if field.selection_set.node.items.is_empty() {
                        continue;
                    }
                    let child = registry
                        .concrete_type_by_name(type_name)
                        .and_then(|meta| meta.field_by_name(name))
                        .map(|meta| MetaTypeName::concrete_typename(&meta.ty));
                    if let Some(child) = child {
                        stack.push((child, &field.selection_set.node));
                    }
                }
                Selection::InlineFragment(fragment) => {
                    let fragment = &fragment.node;
                    let on = fragment
                        .type_condition
                        .as_ref()
                        .map_or(type_name, |condition| condition.node.on.node.as_str());
                    stack.push((on, &fragment.selection_set.node));
                }
                Selection::FragmentSpread(spread) => {
                    let name = spread.node.fragment_name.node.as_str();
                    if walked.insert(name)
                        && let Some(fragment) =
                            document.fragments.get(&spread.node.fragment_name.node)
                    {
                        let on = fragment.node.type_condition.node.on.node.as_str();
                        stack.push((on, &fragment.node.selection_set.node));
                    }
                }
            }
        }
    }
    class
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class_of(query: &str) -> RequestClass {
        use async_graphql::OutputType;
        let mut registry = Registry {
            query_type: "Query".to_owned(),
            mutation_type: Some("Mutation".to_owned()),
            ..Registry::default()
        };
        <crate::graphql::ServedQuery as OutputType>::create_type_info(&mut registry);
        <crate::graphql::Mutation as OutputType>::create_type_info(&mut registry);
        let document = async_graphql::parser::parse_query(query).expect("parses");
        let op = operation(&document, None).expect("one operation");
        classify(&registry, &document, op.ty, &op.selection_set.node)
    }

    #[test]
    fn a_request_answers_to_the_target_of_its_costliest_field() {
        assert_eq!(
            class_of("mutation { follow(userId: \"2\") { following } }"),
            RequestClass::Write
        );
        assert_eq!(
            class_of("mutation { upsertUser(input: {id: \"2\", handle: \"x\"}) { id } }"),
            RequestClass::User
        );
        assert_eq!(
            class_of("{ user(id: \"1\") { followerCount followers { totalCount } } }"),
            RequestClass::List
        );
        assert_eq!(
            class_of("{ user(id: \"1\") { followerCount } }"),
            RequestClass::Count
        );
        assert_eq!(
            class_of("{ user(id: \"1\") { handle } }"),
            RequestClass::User
        );
        assert_eq!(class_of("{ __typename }"), RequestClass::Other);
        assert_eq!(
            class_of("subscription { followEvents { kind } }"),
            RequestClass::Subscription
        );
    }

    #[test]
    fn blocks_and_requests_count_as_writes_lists_and_statuses() {
        assert_eq!(
            class_of("mutation { block(userId: \"2\") { changed } }"),
            RequestClass::Write
        );
        assert_eq!(
            class_of("mutation { approveFollowRequest(userId: \"2\") { changed } }"),
            RequestClass::Write
        );
        // `blocking` is the viewer's list on Query, a status on a User.
        assert_eq!(class_of("{ blocking { totalCount } }"), RequestClass::List);
        assert_eq!(
            class_of("{ user(id: \"1\") { blocking viewerHasRequested } }"),
            RequestClass::Status
        );
    }

    #[test]
    fn a_field_counts_by_the_type_it_is_on_through_fragments() {
        // `following` on a Relationship is a status, on a User a list.
        assert_eq!(
            class_of("{ relationships(userId: \"1\", otherIds: [\"2\"]) { following } }"),
            RequestClass::Status
        );
        assert_eq!(
            class_of(
                "query { ...Q } fragment Q on Query { user(id: \"1\") { ...U } } fragment U on User { viewerIsFollowing }"
            ),
            RequestClass::Status
        );
        assert_eq!(
            class_of("{ user(id: \"1\") { ... on User { following { totalCount } } } }"),
            RequestClass::List
        );
    }
}
