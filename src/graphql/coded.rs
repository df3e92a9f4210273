//! Gives the library's argument errors a code: a value async-graphql accepts in validation but cannot
//! convert when the resolver reads its arguments (`upsertUser(input: 1)`: its validation lets any
//! non-object stand for an input object) fails the field with a path and no `extensions.code`.
//!
//! Every error the service's own resolvers raise carries a code (see `error.rs`), so a field error
//! without one can only be such an argument error: it becomes `BAD_USER_INPUT`. Applied to every
//! executed response by the schema's extension (see [`super::hooks`]).

use async_graphql::Response;

use crate::error::ErrorCode;

/// Codes the uncoded field errors of an executed response `BAD_USER_INPUT`.
pub fn code_argument_errors(response: &mut Response) {
    for error in &mut response.errors {
        let coded = error
            .extensions
            .as_ref()
            .is_some_and(|extensions| extensions.get("code").is_some());
        if !error.path.is_empty() && !coded {
            error
                .extensions
                .get_or_insert_with(Default::default)
                .set("code", ErrorCode::BadUserInput.as_str());
        }
    }
}
