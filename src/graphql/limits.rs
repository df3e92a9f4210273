//! The cost check, as a part of the schema's extension (see [`super::hooks`]): every document is
//! measured (see [`super::cost`]) right after it is parsed and before the library touches it, whoever
//! executes it (HTTP, websocket, tests).
//!
//! The library's own parse step walks every fragment spread without memoizing (its recursion-depth
//! check), so the parse hook replaces that step instead of wrapping it: it parses the text itself, or
//! takes the document a transport already parsed and measured ([`CheckedDocument`]), and never calls the
//! library's parser.

use std::sync::Arc;

use async_graphql::{
    ServerResult, Variables,
    extensions::{ExtensionContext, NextParseQuery},
    parser::types::ExecutableDocument,
};

use super::cost::{self, CostLimits};

/// Request data: this request's document, parsed and found within the limits by its transport.
pub struct CheckedDocument(pub Arc<ExecutableDocument>);

/// The parse step: the transport's checked document, or the text parsed and measured here.
pub(super) fn parse(
    ctx: &ExtensionContext<'_>,
    query: &str,
    variables: &Variables,
    limits: &CostLimits,
    // Deliberately not run: see the module doc.
    _next: NextParseQuery<'_>,
) -> ServerResult<ExecutableDocument> {
    if let Some(checked) = ctx.data_opt::<CheckedDocument>() {
        return Ok((*checked.0).clone());
    }
    cost::check_text_nesting(query).map_err(cost::CostError::into_server_error)?;
    let document = async_graphql::parser::parse_query(query)?;
    cost::analyze(&document, None, variables, limits).map_err(cost::CostError::into_server_error)?;
    Ok(document)
}
