//! Records each GraphQL request's duration by operation name and type, and its errors by code (a part
//! of the schema's extension, see [`super::hooks`]).
//!
//! The duration histogram of each (operation name, type) is looked up once and kept
//! ([`crate::telemetry::metrics::graphql_duration`]): building and hashing its labels on every request
//! was a measurable part of a cheap request.

use std::{sync::Mutex, time::Instant};

use async_graphql::{
    Name, Response,
    parser::types::{DocumentOperations, ExecutableDocument, OperationType},
};

use crate::telemetry::metrics::{GRAPHQL_ERRORS, graphql_duration};

/// Per-request state: what the parsed document says the operation is, then which one ran.
#[derive(Default)]
pub struct Observation {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The document's operations (all `execute` needs, without a copy of the document).
    operations: Operations,
    /// The histogram of the operation that ran, once `execute` knows it.
    histogram: Option<::metrics::Histogram>,
}

#[derive(Default)]
enum Operations {
    /// Not parsed (yet): the request failed before.
    #[default]
    Unknown,
    /// One operation, whatever its name.
    Single(OperationType),
    /// Several, by name.
    Multiple(Vec<(Name, OperationType)>),
}

fn type_name(ty: OperationType) -> &'static str {
    match ty {
        OperationType::Query => "query",
        OperationType::Mutation => "mutation",
        OperationType::Subscription => "subscription",
    }
}

impl Observation {
    /// The document parsed: remembers its operations' types.
    pub fn parsed(&self, document: &ExecutableDocument) {
        let operations = match &document.operations {
            DocumentOperations::Single(op) => Operations::Single(op.node.ty),
            DocumentOperations::Multiple(ops) => Operations::Multiple(
                ops.iter()
                    .map(|(name, op)| (name.clone(), op.node.ty))
                    .collect(),
            ),
        };
        if let Ok(mut state) = self.state.lock() {
            state.operations = operations;
        }
    }

    /// The operation `name` is about to run: its duration goes to its own histogram.
    pub fn executing(&self, name: Option<&str>) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        let ty = match &state.operations {
            Operations::Single(ty) => Some(type_name(*ty)),
            Operations::Multiple(many) => name
                .and_then(|wanted| many.iter().find(|(n, _)| n.as_str() == wanted))
                .map(|(_, ty)| type_name(*ty)),
            Operations::Unknown => None,
        };
        state.operations = Operations::Unknown;
        state.histogram = Some(graphql_duration(name, ty.unwrap_or("unknown")));
    }

    /// The request, begun at `started`, is answered: records its duration and errors.
    pub fn finished(&self, started: Instant, response: &Response) {
        let histogram = self
            .state
            .lock()
            .ok()
            .and_then(|mut state| state.histogram.take())
            .unwrap_or_else(|| graphql_duration(None, "unknown"));
        histogram.record(started.elapsed().as_secs_f64());
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
            ::metrics::counter!(GRAPHQL_ERRORS, "code" => code).increment(1);
        }
    }
}
