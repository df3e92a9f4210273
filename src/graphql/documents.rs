//! Operation documents: Apollo's automatic persisted queries, and a cache of parsed documents.
//!
//! Every transport hands its request to [`Documents::resolve`] before execution. It swaps a persisted
//! query's hash for its text, attaches the parsed document from the cache (parsing once per distinct
//! text), measures its cost against the limits (see [`super::cost`]), and tells the transport which kind
//! of operation the request selects and what it costs: HTTP refuses a mutation sent by GET even when only
//! its hash was sent, and every transport spends the cost against the client's rate limits.
//!
//! A new persisted text is registered only once it parsed and passed the limits, and only when the
//! transport says so ([`Documents::register`]), after it authenticated the client and charged the
//! registration to its budget: nobody can fill the store with junk.

use std::{
    hash::{BuildHasher, RandomState},
    sync::Arc,
};

use async_graphql::{
    Positioned, Request, ServerError,
    parser::types::{DocumentOperations, ExecutableDocument, OperationDefinition, OperationType},
};
use mini_moka::sync::Cache as MokaCache;

use super::{
    cost::{self, Cost, CostLimits},
    limits::{CheckedDocument, ValidationMemo, VariableDeclarations},
    persisted::{PersistedQueries, sha256_hex},
};
use crate::{error::AppError, telemetry::metrics::PERSISTED_QUERIES};

/// The request extension of Apollo's APQ protocol.
pub const PERSISTED_QUERY: &str = "persistedQuery";

/// Texts longer than this are parsed every time: real operations are far shorter, and a huge one-off
/// document must not sit in memory.
const MAX_CACHED_TEXT: usize = 16 * 1024;

/// Bytes of syntax tree a byte of text may become, at worst (a run of short field names): the weight
/// that bounds the cache's memory, not just its text.
const TREE_BYTES_PER_TEXT_BYTE: usize = 32;

/// The longest text a client may register as a persisted query (real operations are far shorter).
pub const MAX_PERSISTED_TEXT: usize = MAX_CACHED_TEXT;

/// Parsed documents and persisted queries of one process.
pub struct Documents {
    /// By a hash of the text (so a lookup copies nothing); each entry keeps its text to compare.
    parsed: MokaCache<u64, Arc<Parsed>>,
    hasher: RandomState,
    persisted: PersistedQueries,
    limits: CostLimits,
}

/// A text, its parsed document, and its successful validations (see [`super::limits`]).
struct Parsed {
    text: Box<str>,
    document: Arc<ExecutableDocument>,
    declarations: VariableDeclarations,
    validations: Arc<ValidationMemo>,
}

/// What a resolved request is: the operation it selects and what that costs.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    /// `None` when the schema will report why there is none: the text does not parse, or names no
    /// single operation.
    pub kind: Option<OperationType>,
    /// `None` when the text does not parse (the schema reports the syntax error).
    pub cost: Option<Cost>,
    /// A text sent with its hash to be registered: the transport registers it once it allows it.
    pub registration: Option<Registration>,
}

/// A persisted query's text waiting to be registered under its hash (already parsed and measured).
#[derive(Debug, PartialEq, Eq)]
pub struct Registration {
    hash: String,
    text: String,
}

impl Documents {
    /// Keeps parsed documents taking at most about `memory_bytes`; documents over `limits` are refused.
    pub fn new(persisted: PersistedQueries, memory_bytes: u64, limits: CostLimits) -> Self {
        Self {
            parsed: MokaCache::builder()
                .weigher(|_: &u64, parsed: &Arc<Parsed>| {
                    let weight = parsed.text.len().saturating_mul(TREE_BYTES_PER_TEXT_BYTE);
                    u32::try_from(weight).unwrap_or(u32::MAX)
                })
                .max_capacity(memory_bytes)
                .build(),
            hasher: RandomState::new(),
            persisted,
            limits,
        }
    }

    /// Prepares `request` for execution: resolves a persisted query, attaches the parsed document, and
    /// measures it. A document over the limits is a request error here, before anything else reads it.
    pub async fn resolve(&self, request: &mut Request) -> Result<Resolved, ServerError> {
        let mut registration = None;
        if let Some(extension) = request.extensions.0.remove(PERSISTED_QUERY) {
            registration = self.resolve_persisted(request, extension).await?;
        }
        let text: &str = &request.query;
        let key = self.hasher.hash_one(text);
        let parsed = match self.parsed.get(&key).filter(|p| &*p.text == text) {
            Some(parsed) => parsed,
            None => match cost::check_text_nesting(text)
                .map_err(cost::CostError::into_server_error)
                .map(|()| async_graphql::parser::parse_query(text))?
            {
                Ok(document) => {
                    let parsed = Arc::new(Parsed {
                        text: text.into(),
                        declarations: VariableDeclarations::of(&document),
                        document: Arc::new(document),
                        validations: Arc::default(),
                    });
                    if text.len() <= MAX_CACHED_TEXT {
                        self.parsed.insert(key, parsed.clone());
                    }
                    parsed
                }
                // A text that does not parse is never registered.
                Err(_) if registration.is_some() => {
                    return Err(bad_input(
                        "a persisted query must be a GraphQL document that parses",
                    ));
                }
                // Left to the schema, which reports a parse error with its locations.
                Err(_) => return Ok(Resolved::default()),
            },
        };
        let name = request.operation_name.as_deref();
        let cost = cost::analyze(&parsed.document, name, &request.variables, &self.limits)
            .map_err(cost::CostError::into_server_error)?;
        check_required_variables(&parsed.document, name, &request.variables)?;
        let kind = operation_type(&parsed.document, name);
        let validation =
            parsed
                .declarations
                .validation_key(&parsed.validations, name, &request.variables);
        request.data.insert(CheckedDocument {
            document: parsed.document.clone(),
            validation,
        });
        Ok(Resolved {
            kind,
            cost: Some(cost),
            registration,
        })
    }

    /// Stores a persisted query's text under its hash (for every instance).
    pub async fn register(&self, registration: Registration) {
        ::metrics::counter!(PERSISTED_QUERIES, "result" => "registered").increment(1);
        self.persisted
            .put(&registration.hash, &registration.text)
            .await;
    }

    /// APQ: a hash alone is replaced by its registered text; a hash with a text (checked against the
    /// hash and the size limit) is to be registered.
    async fn resolve_persisted(
        &self,
        request: &mut Request,
        extension: async_graphql::Value,
    ) -> Result<Option<Registration>, ServerError> {
        let (version, hash) = match &extension {
            async_graphql::Value::Object(fields) => (
                fields.get("version").cloned(),
                fields.get("sha256Hash").and_then(|h| match h {
                    async_graphql::Value::String(h) => Some(h.to_ascii_lowercase()),
                    _ => None,
                }),
            ),
            _ => (None, None),
        };
        if version != Some(async_graphql::Value::from(1)) {
            return Err(bad_input(
                "extensions.persistedQuery.version must be 1 (the only APQ version)",
            ));
        }
        let Some(hash) = hash.filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        else {
            return Err(bad_input(
                "extensions.persistedQuery.sha256Hash must be 64 hexadecimal digits",
            ));
        };
        if request.query.is_empty() {
            match self.persisted.get(&hash).await {
                Some(text) => {
                    ::metrics::counter!(PERSISTED_QUERIES, "result" => "hit").increment(1);
                    request.query = text.to_string();
                    Ok(None)
                }
                None => {
                    ::metrics::counter!(PERSISTED_QUERIES, "result" => "miss").increment(1);
                    Err(super::request_error(AppError::PersistedQueryNotFound))
                }
            }
        } else if request.query.len() > MAX_PERSISTED_TEXT {
            Err(bad_input(&format!(
                "a persisted query's text may be at most {MAX_PERSISTED_TEXT} bytes; send a longer one without the persistedQuery extension"
            )))
        } else if sha256_hex(&request.query) == hash {
            Ok(Some(Registration {
                hash,
                text: request.query.clone(),
            }))
        } else {
            Err(bad_input(
                "provided sha does not match query: extensions.persistedQuery.sha256Hash must be the SHA-256 of the query text",
            ))
        }
    }
}

/// Refuses a request that leaves a required variable (non-null, without a default) of its operation
/// without a value, as the specification's CoerceVariableValues does before execution: async-graphql
/// would instead fail each field that reads it, with a path and no code.
fn check_required_variables(
    document: &ExecutableDocument,
    name: Option<&str>,
    variables: &async_graphql::Variables,
) -> Result<(), ServerError> {
    // No single operation selected: the schema reports why.
    let Some(operation) = selected_operation(document, name) else {
        return Ok(());
    };
    for definition in &operation.node.variable_definitions {
        let definition = &definition.node;
        let required = !definition.var_type.node.nullable && definition.default_value.is_none();
        let given = variables
            .get(&definition.name.node)
            .is_some_and(|value| !matches!(value, async_graphql::Value::Null));
        if required && !given {
            return Err(super::request_error(AppError::bad_input(format!(
                "variable ${} of required type {} was not provided",
                definition.name.node, definition.var_type.node
            ))));
        }
    }
    Ok(())
}

/// The type of the operation a request selects, if it selects exactly one.
fn operation_type(document: &ExecutableDocument, name: Option<&str>) -> Option<OperationType> {
    selected_operation(document, name).map(|operation| operation.node.ty)
}

/// The operation a request selects, if it selects exactly one.
fn selected_operation<'a>(
    document: &'a ExecutableDocument,
    name: Option<&str>,
) -> Option<&'a Positioned<OperationDefinition>> {
    match (&document.operations, name) {
        (DocumentOperations::Single(operation), _) => Some(operation),
        (DocumentOperations::Multiple(operations), Some(name)) => operations
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, operation)| operation),
        (DocumentOperations::Multiple(_), None) => None,
    }
}

fn bad_input(message: &str) -> ServerError {
    super::request_error(AppError::bad_input(message))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn document(text: &str) -> ExecutableDocument {
        async_graphql::parser::parse_query(text).expect("parses")
    }

    fn documents() -> Documents {
        let timeout = std::time::Duration::from_millis(50);
        // Nothing listens there: these tests never reach Redis (no persisted query is sent).
        let redis = crate::redis_pool::build_pool(
            &crate::redis_pool::RedisTarget::Node("redis://127.0.0.1:1".into()),
            1,
            timeout,
        )
        .expect("a lazy pool");
        let health = Arc::new(crate::redis_health::RedisHealth::new(1, timeout));
        let persisted = PersistedQueries::new(redis, health, timeout, timeout, "test", 1 << 20);
        let limits = CostLimits {
            max_depth: 16,
            max_complexity: 20_000,
            max_fields: 2_000,
            max_entities: 100,
        };
        Documents::new(persisted, 1 << 24, limits)
    }

    fn is_cached(documents: &Documents, text: &str) -> bool {
        documents
            .parsed
            .contains_key(&documents.hasher.hash_one(text))
    }

    #[tokio::test]
    async fn a_document_is_parsed_once_and_a_huge_one_is_not_kept() {
        let documents = documents();
        let text = "query A { __typename } mutation B { __typename }";
        let mut first = Request::new(text).operation_name("A");
        assert_eq!(
            documents.resolve(&mut first).await.map(|r| r.kind),
            Ok(Some(OperationType::Query))
        );
        assert!(is_cached(&documents, text));
        // The cached tree serves another request of the same text, whatever operation it selects.
        let mut second = Request::new(text).operation_name("B");
        assert_eq!(
            documents.resolve(&mut second).await.map(|r| r.kind),
            Ok(Some(OperationType::Mutation))
        );

        let huge = format!("{{ {} }}", "__typename ".repeat(2_000));
        let mut request = Request::new(huge.clone());
        assert_eq!(
            documents.resolve(&mut request).await.map(|r| r.kind),
            Ok(Some(OperationType::Query))
        );
        assert!(!is_cached(&documents, &huge));

        // A text that does not parse is left to the schema, which reports it with its location.
        let mut broken = Request::new("{ user(");
        assert_eq!(
            documents.resolve(&mut broken).await,
            Ok(Resolved::default())
        );
    }

    #[test]
    fn the_selected_operation_decides_the_type() {
        let doc = document("query A { __typename } mutation B { __typename }");
        assert_eq!(operation_type(&doc, Some("A")), Some(OperationType::Query));
        assert_eq!(
            operation_type(&doc, Some("B")),
            Some(OperationType::Mutation)
        );
        assert_eq!(operation_type(&doc, Some("C")), None);
        assert_eq!(operation_type(&doc, None), None);
        let single = document("mutation { __typename }");
        assert_eq!(operation_type(&single, None), Some(OperationType::Mutation));
    }
}
