//! The cost check as a schema extension: every document is measured (see [`super::cost`]) right after it
//! is parsed and before the library touches it, whoever executes it (HTTP, websocket, tests).
//!
//! The library's own parse step walks every fragment spread without memoizing (its recursion-depth
//! check), so this extension replaces that step instead of wrapping it: it parses the text itself, or
//! takes the document a transport already parsed and measured ([`CheckedDocument`]), and never calls the
//! library's parser.

use std::sync::Arc;

use async_graphql::{
    ServerResult, Variables,
    extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery},
    parser::types::ExecutableDocument,
};

use super::cost::{self, CostLimits};

/// Request data: this request's document, parsed and found within the limits by its transport.
pub struct CheckedDocument(pub Arc<ExecutableDocument>);

/// Refuses documents over the limits before validation, installed as a schema extension.
#[derive(Clone, Copy, Debug)]
pub struct CheckCost(pub CostLimits);

impl ExtensionFactory for CheckCost {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(*self)
    }
}

#[async_trait::async_trait]
impl Extension for CheckCost {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        // Deliberately not run: see the module doc.
        _next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        if let Some(checked) = ctx.data_opt::<CheckedDocument>() {
            return Ok((*checked.0).clone());
        }
        cost::check_text_nesting(query).map_err(cost::CostError::into_server_error)?;
        let document = async_graphql::parser::parse_query(query)?;
        cost::analyze(&document, None, variables, &self.0)
            .map_err(cost::CostError::into_server_error)?;
        Ok(document)
    }
}
