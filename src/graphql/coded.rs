//! Gives the library's argument errors a code: a value async-graphql accepts in validation but cannot
//! convert when the resolver reads its arguments (`upsertUser(input: 1)`: its validation lets any
//! non-object stand for an input object) fails the field with a path and no `extensions.code`.
//!
//! Every error the service's own resolvers raise carries a code (see `error.rs`), so a field error
//! without one can only be such an argument error: it becomes `BAD_USER_INPUT`.

use std::sync::Arc;

use async_graphql::{
    Response,
    extensions::{Extension, ExtensionContext, ExtensionFactory, NextExecute},
};

use crate::error::ErrorCode;

/// Installs [`CodeArgumentErrors`].
pub struct CodeArgumentErrors;

impl ExtensionFactory for CodeArgumentErrors {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(CodeArgumentErrors)
    }
}

#[async_trait::async_trait]
impl Extension for CodeArgumentErrors {
    async fn execute(
        &self,
        ctx: &ExtensionContext<'_>,
        operation_name: Option<&str>,
        next: NextExecute<'_>,
    ) -> Response {
        let mut response = next.run(ctx, operation_name).await;
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
        response
    }
}
