//! The schema's one extension: the cost check and the validation memo ([`super::limits`]), the request
//! metrics ([`super::observe`]), and the codes of argument errors ([`super::coded`]).
//!
//! One extension rather than one per concern because the library calls every installed extension at
//! every step of every request, and at every field it resolves, each call a boxed future: with three
//! extensions a `{ __typename }` cost eighteen of them, most passing straight through.

use std::{sync::Arc, time::Instant};

use async_graphql::{
    Response, ServerError, ServerResult, ValidationResult, Variables,
    extensions::{
        Extension, ExtensionContext, ExtensionFactory, NextExecute, NextParseQuery, NextRequest,
        NextValidation,
    },
    parser::types::ExecutableDocument,
};

use super::{coded, cost::CostLimits, limits, observe::Observation};

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
        })
    }
}

/// The extension of one request.
pub struct RequestHooks {
    cost: CostLimits,
    observation: Observation,
}

#[async_trait::async_trait]
impl Extension for RequestHooks {
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        let started = Instant::now();
        let response = next.run(ctx).await;
        self.observation.finished(started, &response);
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
        self.observation.parsed(&document);
        Ok(document)
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
        self.observation.executing(operation_name);
        let mut response = next.run(ctx, operation_name).await;
        coded::code_argument_errors(&mut response);
        response
    }
}
