//! Records each GraphQL request's duration by operation name and type, and its errors by code.

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use async_graphql::{
    Response, ServerResult, Variables,
    extensions::{
        Extension, ExtensionContext, ExtensionFactory, NextExecute, NextParseQuery, NextRequest,
    },
    parser::types::{DocumentOperations, ExecutableDocument, OperationType},
};

use crate::telemetry::metrics::{GRAPHQL_DURATION, GRAPHQL_ERRORS, operation_label};

/// Installs [`ObserveRequest`] for every request.
pub struct Observe;

impl ExtensionFactory for Observe {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ObserveRequest::default())
    }
}

/// Per-request state: what the parsed document says the operation is.
#[derive(Default)]
pub struct ObserveRequest {
    operation: Mutex<Option<(Option<String>, &'static str)>>,
    /// The document's operations (name, type): all `execute` needs, without a copy of the document.
    operations: Mutex<Vec<(Option<String>, OperationType)>>,
}

fn type_name(ty: OperationType) -> &'static str {
    match ty {
        OperationType::Query => "query",
        OperationType::Mutation => "mutation",
        OperationType::Subscription => "subscription",
    }
}

#[async_trait::async_trait]
impl Extension for ObserveRequest {
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        let started = Instant::now();
        let response = next.run(ctx).await;
        let (name, ty) = self
            .operation
            .lock()
            .ok()
            .and_then(|op| op.clone())
            .unwrap_or((None, "unknown"));
        ::metrics::histogram!(
            GRAPHQL_DURATION,
            "operation_name" => operation_label(name.as_deref()),
            "operation_type" => ty,
        )
        .record(started.elapsed().as_secs_f64());
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
        response
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let document = next.run(ctx, query, variables).await?;
        let operations = match &document.operations {
            DocumentOperations::Single(op) => vec![(None, op.node.ty)],
            DocumentOperations::Multiple(ops) => ops
                .iter()
                .map(|(name, op)| (Some(name.to_string()), op.node.ty))
                .collect(),
        };
        if let Ok(mut slot) = self.operations.lock() {
            *slot = operations;
        }
        Ok(document)
    }

    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        let operations = self
            .operations
            .lock()
            .map(|mut o| std::mem::take(&mut *o))
            .unwrap_or_default();
        let ty = match operations.as_slice() {
            [(None, ty)] => Some(type_name(*ty)),
            many => operation_name
                .and_then(|wanted| many.iter().find(|(n, _)| n.as_deref() == Some(wanted)))
                .map(|(_, ty)| type_name(*ty)),
        };
        if let Ok(mut slot) = self.operation.lock() {
            *slot = Some((operation_name.map(str::to_owned), ty.unwrap_or("unknown")));
        }
        next.run(ctx, operation_name).await
    }
}
