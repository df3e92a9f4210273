//! The cost check, and the memo of validations, as parts of the schema's extension (see [`super::hooks`]).
//!
//! **Cost.** Every document is measured (see [`super::cost`]) right after it is parsed and before the
//! library touches it, whoever executes it (HTTP, websocket, tests). The library's own parse step walks
//! every fragment spread without memoizing (its recursion-depth check), so the parse hook replaces that
//! step instead of wrapping it: it parses the text itself, or takes the document a transport already
//! parsed and measured ([`CheckedDocument`]), and never calls the library's parser.
//!
//! **Validation, once per document and variable shape.** The library validates every request against
//! the schema (22 rules, two walks of the document) even when the same text arrives a thousand times a
//! second. Its verdict depends on the document, the operation name, and the variables' values; but when
//! every variable the document declares is of a built-in scalar type (`ID`, `String`, `Int`, `Float`,
//! `Boolean`, in any list or non-null wrapping), it depends on each value only through its *shape*: null,
//! boolean, string, number (and which integer ranges it fits), list of shapes, object. Those are all the
//! built-in scalars' `is_valid` and the complexity functions' argument parsing look at, and a variable
//! can only stand where its own named type is expected (the rule `VariableInAllowedPosition`). So a
//! transport that resolved the document ([`super::documents`]) attaches a [`ValidationKey`]: the
//! operation name and the declared variables' names and shapes. A successful validation is remembered
//! under it in the document's cache entry, and the next request with the same key skips the walk;
//! errors are never remembered. Documents declaring other variable types (enums, input objects, custom
//! scalars) are validated every time. The remembered result's `complexity` is that of the first request
//! of its key (nothing reads it: the cost check is ours).

use std::sync::{Arc, Mutex};

use async_graphql::{
    ServerError, ServerResult, ValidationResult, Variables,
    extensions::{ExtensionContext, NextParseQuery, NextValidation},
    parser::types::{BaseType, ExecutableDocument, Type},
};
use async_graphql_value::ConstValue;

use super::cost::{self, CostLimits};

/// Request data: this request's document, parsed and found within the limits by its transport, and the
/// key its validation is remembered under (when it can be).
pub struct CheckedDocument {
    pub document: Arc<ExecutableDocument>,
    pub validation: Option<ValidationKey>,
}

/// Where a validation is remembered, and under which key.
pub struct ValidationKey {
    memo: Arc<ValidationMemo>,
    key: Box<[u8]>,
}

/// The successful validations of one document, by key (a handful at most: operation names times the
/// shapes clients send).
#[derive(Default)]
pub struct ValidationMemo {
    results: Mutex<Vec<(Box<[u8]>, ValidationResult)>>,
}

/// Keys remembered per document; past it the oldest is forgotten.
const MAX_KEYS_PER_DOCUMENT: usize = 16;

/// A longer key (a long list of items of mixed shapes) is not remembered.
const MAX_KEY_BYTES: usize = 256;

impl ValidationMemo {
    fn get(&self, key: &[u8]) -> Option<ValidationResult> {
        let results = self.results.lock().ok()?;
        results
            .iter()
            .find(|(k, _)| **k == *key)
            .map(|(_, result)| *result)
    }

    fn remember(&self, key: Box<[u8]>, result: ValidationResult) {
        let Ok(mut results) = self.results.lock() else {
            return;
        };
        if results.iter().any(|(k, _)| *k == key) {
            return;
        }
        if results.len() >= MAX_KEYS_PER_DOCUMENT {
            results.remove(0);
        }
        results.push((key, result));
    }
}

/// What of a document decides whether its validations can be remembered: the variables its operations
/// declare, when every one of them is of a built-in scalar type.
pub struct VariableDeclarations {
    /// `None`: some variable is of another type, so nothing is remembered for this document.
    names: Option<Vec<async_graphql::Name>>,
}

impl VariableDeclarations {
    pub fn of(document: &ExecutableDocument) -> Self {
        let mut names = Vec::new();
        for (_, operation) in document.operations.iter() {
            for definition in &operation.node.variable_definitions {
                if !is_built_in_scalar(&definition.node.var_type.node) {
                    return Self { names: None };
                }
                names.push(definition.node.name.node.clone());
            }
        }
        Self { names: Some(names) }
    }

    /// The key of a request's validation: its operation name, then each declared variable it gives,
    /// with its value's shape. `None` when the document's validations are not remembered.
    pub fn key(&self, operation_name: Option<&str>, variables: &Variables) -> Option<Box<[u8]>> {
        let names = self.names.as_ref()?;
        let mut key = Vec::with_capacity(32);
        match operation_name {
            Some(name) => {
                key.push(1);
                key.extend_from_slice(name.as_bytes());
                key.push(0xff); // never in UTF-8: ends the name
            }
            None => key.push(0),
        }
        // In the variables' own (sorted) order: the same variables give the same key.
        for (name, value) in variables.iter() {
            if names.iter().any(|declared| declared == name) {
                key.extend_from_slice(name.as_bytes());
                key.push(0xff);
                shape(value, &mut key);
                if key.len() > MAX_KEY_BYTES {
                    return None;
                }
            }
        }
        Some(key.into_boxed_slice())
    }

    /// The key for this request, tied to the memo of its document.
    pub fn validation_key(
        &self,
        memo: &Arc<ValidationMemo>,
        operation_name: Option<&str>,
        variables: &Variables,
    ) -> Option<ValidationKey> {
        self.key(operation_name, variables)
            .map(|key| ValidationKey {
                memo: memo.clone(),
                key,
            })
    }
}

fn is_built_in_scalar(ty: &Type) -> bool {
    match &ty.base {
        BaseType::Named(name) => {
            matches!(name.as_str(), "ID" | "String" | "Int" | "Float" | "Boolean")
        }
        BaseType::List(inner) => is_built_in_scalar(inner),
    }
}

/// Appends what validation can see of a value: its kind, the integer ranges a number fits (the
/// built-in `Int` types check theirs), the shapes of a list's items (once when they are all alike,
/// since a list is valid when each item is). An object's fields do not matter: no built-in scalar
/// accepts an object.
fn shape(value: &ConstValue, key: &mut Vec<u8>) {
    match value {
        ConstValue::Null => key.push(b'n'),
        ConstValue::Boolean(_) => key.push(b'b'),
        ConstValue::String(_) => key.push(b's'),
        ConstValue::Enum(_) => key.push(b'e'),
        ConstValue::Binary(_) => key.push(b'x'),
        ConstValue::Object(_) => key.push(b'o'),
        ConstValue::Number(number) => {
            key.push(b'#');
            key.push(number_class(number));
        }
        ConstValue::List(items) => {
            key.push(b'[');
            let start = key.len();
            let mut first_end = None;
            let mut all_alike = true;
            for item in items {
                let before = key.len();
                shape(item, key);
                match first_end {
                    None => first_end = Some(key.len()),
                    Some(end) if all_alike => {
                        if key[before..] == key[start..end] {
                            key.truncate(before);
                        } else {
                            all_alike = false;
                        }
                    }
                    Some(_) => {}
                }
            }
            key.push(b']');
        }
    }
}

/// A number's class: whether it is an integer that fits `i64` or only `u64`, or a float, and which of
/// the narrower integer types it fits.
fn number_class(number: &serde_json::Number) -> u8 {
    if let Some(n) = number.as_i64() {
        let fits = |ok: bool, bit: u8| if ok { bit } else { 0 };
        0x80 | fits(i8::try_from(n).is_ok(), 0x01)
            | fits(u8::try_from(n).is_ok(), 0x02)
            | fits(i16::try_from(n).is_ok(), 0x04)
            | fits(u16::try_from(n).is_ok(), 0x08)
            | fits(i32::try_from(n).is_ok(), 0x10)
            | fits(u32::try_from(n).is_ok(), 0x20)
            | fits(n >= 0, 0x40)
    } else if number.is_u64() {
        0x41
    } else {
        0x42
    }
}

/// The parse step: the transport's checked document, or the text parsed and measured here (shared, so
/// that the response can be put in the document's order afterwards, see [`super::order`]).
pub(super) fn parse(
    ctx: &ExtensionContext<'_>,
    query: &str,
    variables: &Variables,
    limits: &CostLimits,
    // Deliberately not run: see the module doc.
    _next: NextParseQuery<'_>,
) -> ServerResult<Arc<ExecutableDocument>> {
    if let Some(checked) = ctx.data_opt::<CheckedDocument>() {
        return Ok(checked.document.clone());
    }
    cost::check_text_nesting(query).map_err(cost::CostError::into_server_error)?;
    let document = async_graphql::parser::parse_query(query)?;
    cost::analyze(&document, None, variables, limits)
        .map_err(cost::CostError::into_server_error)?;
    Ok(Arc::new(document))
}

/// The validation step: remembered when the transport gave a key, else the library's.
pub(super) async fn validate(
    ctx: &ExtensionContext<'_>,
    next: NextValidation<'_>,
) -> Result<ValidationResult, Vec<ServerError>> {
    let key = ctx
        .data_opt::<CheckedDocument>()
        .and_then(|checked| checked.validation.as_ref());
    let Some(ValidationKey { memo, key }) = key else {
        return next.run(ctx).await;
    };
    if let Some(result) = memo.get(key) {
        return Ok(result);
    }
    let result = next.run(ctx).await?;
    memo.remember(key.clone(), result);
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declarations(text: &str) -> VariableDeclarations {
        VariableDeclarations::of(&async_graphql::parser::parse_query(text).expect("parses"))
    }

    fn variables(json: serde_json::Value) -> Variables {
        Variables::from_json(json)
    }

    #[test]
    fn keys_tell_shapes_not_values() {
        let d = declarations(
            "query($a: ID!, $b: ID!, $n: Int) { isFollowing(followerId: $a, followeeId: $b) }",
        );
        let key = |json| d.key(None, &variables(json)).expect("memoizable");
        // Other ids, same shapes: the same key.
        assert_eq!(
            key(serde_json::json!({"a": "1", "b": "2"})),
            key(serde_json::json!({"a": "99", "b": "123456"}))
        );
        // A number where a string was, a missing variable, an integer past i32: other keys.
        assert_ne!(
            key(serde_json::json!({"a": "1", "b": "2"})),
            key(serde_json::json!({"a": 1, "b": "2"}))
        );
        assert_ne!(
            key(serde_json::json!({"a": "1", "b": "2"})),
            key(serde_json::json!({"a": "1"}))
        );
        assert_ne!(
            key(serde_json::json!({"a": "1", "b": "2", "n": 5})),
            key(serde_json::json!({"a": "1", "b": "2", "n": 5_000_000_000_i64}))
        );
        // Variables the document does not declare do not count.
        assert_eq!(
            key(serde_json::json!({"a": "1", "b": "2"})),
            key(serde_json::json!({"a": "1", "b": "2", "zzz": {"x": 1}}))
        );
        // The operation name does.
        assert_ne!(
            d.key(Some("A"), &variables(serde_json::json!({}))),
            d.key(None, &variables(serde_json::json!({})))
        );
    }

    #[test]
    fn lists_of_alike_items_have_one_shape() {
        let d = declarations("query($o: [ID!]!) { __typename }");
        let key = |json| d.key(None, &variables(json)).expect("memoizable");
        assert_eq!(
            key(serde_json::json!({"o": ["1", "2", "3"]})),
            key(serde_json::json!({"o": ["4"]}))
        );
        assert_ne!(
            key(serde_json::json!({"o": ["1", "2", "3"]})),
            key(serde_json::json!({"o": ["1", 2, "3"]}))
        );
        assert_ne!(
            key(serde_json::json!({"o": ["1", "2"]})),
            key(serde_json::json!({"o": ["1", null]}))
        );
    }

    #[test]
    fn other_variable_types_are_validated_every_time() {
        let d = declarations("query($t: DateTime) { __typename }");
        assert!(d.key(None, &variables(serde_json::json!({}))).is_none());
        let d = declarations(
            "query A($a: ID) { __typename } query B($i: UpsertUserInput) { __typename }",
        );
        assert!(
            d.key(Some("A"), &variables(serde_json::json!({})))
                .is_none()
        );
        assert!(
            declarations("{ __typename }")
                .key(None, &Variables::default())
                .is_some()
        );
    }
}
