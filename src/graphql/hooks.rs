//! The schema's one extension: the cost check and the validation memo ([`super::limits`]), the request
//! metrics ([`super::observe`]), the codes of argument errors ([`super::coded`]), and responses in the
//! document's field order ([`super::order`]).
//!
//! One extension rather than one per concern because the library calls every installed extension at
//! every step of every request, and at every field it resolves, each call a boxed future: with three
//! extensions a `{ __typename }` cost eighteen of them, most passing straight through.

use std::sync::{Arc, OnceLock};

use async_graphql::{
    Response, ServerError, ServerResult, ValidationResult, Variables,
    extensions::{
        Extension, ExtensionContext, ExtensionFactory, NextExecute, NextParseQuery, NextRequest,
        NextSubscribe, NextValidation,
    },
    futures_util::stream::{BoxStream, StreamExt},
    parser::types::ExecutableDocument,
    registry::Registry,
};

use super::{coded, cost::CostLimits, limits, observe::Observation, order};

/// Whether the operation to run is a mutation (its reads, payload included, then go to the primary).
fn is_mutation(document: &ExecutableDocument, operation_name: Option<&str>) -> bool {
    document.operations.iter().any(|(name, operation)| {
        operation.node.ty == async_graphql::parser::types::OperationType::Mutation
            && (operation_name.is_none() || name.map(|n| n.as_str()) == operation_name)
    })
}

/// Installs [`RequestHooks`] for every request.
#[derive(Clone, Copy, Debug)]
pub struct Hooks {
    /// The limits every document is measured against.
    pub cost: CostLimits,
}

impl ExtensionFactory for Hooks {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(RequestHooks {
            cost: self.cost,
            observation: Observation::default(),
            parsed: Arc::default(),
        })
    }
}

/// The extension of one request.
pub struct RequestHooks {
    cost: CostLimits,
    observation: Observation,
    /// The document and variables, kept from the parse step to order the response.
    parsed: Arc<OnceLock<Parsed>>,
}

/// What the parse step saw.
struct Parsed {
    document: Arc<ExecutableDocument>,
    variables: Variables,
}

impl Parsed {
    /// Puts `response`'s fields in the order of operation `operation_name`.
    fn order(&self, registry: &Registry, operation: order::Operation<'_>, response: &mut Response) {
        order::reorder(
            registry,
            &self.document,
            operation,
            &self.variables,
            &mut response.data,
        );
    }
}

#[async_trait::async_trait]
impl Extension for RequestHooks {
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        let recording = self.observation.start();
        let response = next.run(ctx).await;
        recording.finished(&response);
        response
    }

    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let document = limits::parse(ctx, query, variables, &self.cost, next)?;
        // Variables matter to the order only through `@skip`/`@include`: copied only when the text
        // has a directive at all.
        let variables = if query.contains('@') {
            variables.clone()
        } else {
            Variables::default()
        };
        let _ = self.parsed.set(Parsed {
            document: document.clone(),
            variables,
        });
        Ok(Arc::unwrap_or_clone(document))
    }

    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        limits::validate(ctx, next).await
    }

    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        let document = self.parsed.get().map(|parsed| &*parsed.document);
        if document.is_some_and(|document| is_mutation(document, operation_name))
            && let Some(loaders) = ctx.data_opt::<super::loaders::Loaders>()
        {
            loaders.mark_mutation();
        }
        let registry = &ctx.schema_env.registry;
        self.observation
            .executing(registry, document, operation_name);
        let mut response = next.run(ctx, operation_name).await;
        coded::code_argument_errors(&mut response);
        if let Some(parsed) = self.parsed.get() {
            let operation = order::Operation::Named(operation_name);
            parsed.order(&ctx.schema_env.registry, operation, &mut response);
        }
        response
    }

    /// Subscription events do not pass through `execute`: each is ordered as it goes out.
    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        let parsed = self.parsed.clone();
        let schema_env = ctx.schema_env.clone();
        let stream = stream.map(move |mut response| {
            if let Some(parsed) = parsed.get() {
                let operation = order::Operation::Subscription;
                parsed.order(&schema_env.registry, operation, &mut response);
            }
            response
        });
        next.run(ctx, stream.boxed())
    }
}
