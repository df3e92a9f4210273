//! Makes depth and complexity refusals name the limit they hit (async-graphql's own messages do not).

use std::sync::Arc;

use async_graphql::{
    ServerError, ValidationResult,
    extensions::{Extension, ExtensionContext, ExtensionFactory, NextValidation},
};

/// The limits to name, installed as a schema extension.
#[derive(Clone, Copy, Debug)]
pub struct NameTheLimits {
    pub max_depth: usize,
    pub max_complexity: usize,
}

impl ExtensionFactory for NameTheLimits {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(*self)
    }
}

#[async_trait::async_trait]
impl Extension for NameTheLimits {
    async fn validation(
        &self,
        ctx: &ExtensionContext<'_>,
        next: NextValidation<'_>,
    ) -> Result<ValidationResult, Vec<ServerError>> {
        next.run(ctx).await.map_err(|errors| {
            errors
                .into_iter()
                .map(|mut error| {
                    if error.message == "Query is too complex." {
                        error.message = format!(
                            "Query is too complex: its cost exceeds the complexity limit of {} \
                             (a list field costs its `first` times its selection)",
                            self.max_complexity
                        );
                    } else if error.message == "Query is nested too deep." {
                        error.message = format!(
                            "Query is nested too deep: the depth limit is {}",
                            self.max_depth
                        );
                    }
                    error
                })
                .collect()
        })
    }
}
