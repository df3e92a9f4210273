//! What a document costs, measured before the library validates it, in time linear in its text.
//!
//! async-graphql's depth and complexity visitors follow every fragment spread without memoizing, so a
//! few hundred bytes of fragments that each spread the next one twice cost seconds of CPU before they
//! are refused (the class of GHSA-mfj6-6p54-m98c). This pass computes each fragment's cost once
//! (memoized by name, cycles refused) and stops as soon as a limit is passed, so the library only ever
//! sees documents whose expansion is small.
//!
//! For every operation (and so every fragment it reaches) it measures:
//! - **depth**: fields nested inside each other after fragments are inlined;
//! - **fields**: how many fields the operation has once fragments are inlined (what the library walks);
//! - **complexity**: each field costs 1 plus its selection, times the page size or id count for list
//!   fields, plus [`STATEMENT_COST`] for each piece of database work a field does for every parent
//!   (`knownFollowers` intersects two lists per parent, for its page and its count, even batched);
//! - **edge changes**: follows and unfollows a mutation asks for (one per id), which the write limits
//!   spend.
//!
//! Field kinds come from `schema.graphql` (the client schema, generated from the code and checked by a
//! test) plus the table in [`special_field`]; `_entities` costs its selection once per representation.

use std::{
    collections::{HashMap, hash_map::Entry},
    sync::LazyLock,
};

use async_graphql::{
    Name, Positioned, Value as ConstValue, Variables,
    parser::types::{
        BaseType, ExecutableDocument, Field, OperationDefinition, OperationType, Selection,
        SelectionSet, TypeKind, TypeSystemDefinition,
    },
};
use async_graphql_value::Value;

/// What database work done for each parent costs, in complexity points: about a page of ten users.
pub const STATEMENT_COST: usize = 10;

/// The most ids a batch argument takes (larger batches are refused by the resolver).
const MAX_BATCH: usize = 100;

/// How deeply selection sets, fragments and inline fragments may nest while the walk recurses (the
/// library's own recursion limit, which this pass replaces): it bounds the walk's stack.
pub const MAX_NESTING: usize = 32;

/// How deeply brackets (`{`, `[`, `(`) may nest in a document's text. The parser builds argument values
/// recursively without a limit of its own (a few hundred nested lists overflow a thread's stack), so
/// texts are measured before they are parsed; real documents nest a few dozen at most.
pub const MAX_TEXT_NESTING: usize = 64;

/// The page size of a connection when `first` is not given.
const DEFAULT_PAGE: usize = 20;

/// The largest page size (larger ones are refused by the resolver; they cost as this).
const MAX_PAGE: usize = 100;

/// The limits a document must stay within.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CostLimits {
    /// `FOLLOW_MAX_DEPTH`.
    pub max_depth: usize,
    /// `FOLLOW_MAX_COMPLEXITY`.
    pub max_complexity: usize,
    /// `FOLLOW_MAX_FIELDS`: fields after fragments are inlined.
    pub max_fields: usize,
    /// `FOLLOW_MAX_ENTITIES`: representations one `_entities` call may carry.
    pub max_entities: usize,
}

/// The cost of one operation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    pub depth: usize,
    pub complexity: usize,
    pub fields: usize,
    /// Follows and unfollows asked for (mutations only).
    pub edge_changes: usize,
}

impl Cost {
    /// The cost of a selection set holding both `self` and `other`.
    fn beside(self, other: Cost) -> Cost {
        Cost {
            depth: self.depth.max(other.depth),
            complexity: self.complexity.saturating_add(other.complexity),
            fields: self.fields.saturating_add(other.fields),
            edge_changes: self.edge_changes.saturating_add(other.edge_changes),
        }
    }
}

/// Why a document is refused: each names the limit and its setting.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CostError {
    TooDeep { max: usize },
    TooComplex { max: usize },
    TooManyFields { max: usize },
    TooManyEntities { max: usize, got: usize },
    TooNested { max: usize },
    FragmentCycle { name: String },
}

impl CostError {
    /// The message a client sees (the depth and complexity wordings are the ones clients already saw).
    pub fn message(&self) -> String {
        match self {
            Self::TooDeep { max } => {
                format!("Query is nested too deep: the depth limit is {max} (FOLLOW_MAX_DEPTH)")
            }
            Self::TooComplex { max } => format!(
                "Query is too complex: its cost exceeds the complexity limit of {max} \
                 (FOLLOW_MAX_COMPLEXITY; a list field costs its `first` times its selection)"
            ),
            Self::TooManyFields { max } => format!(
                "Query has too many fields: more than {max} once fragments are expanded \
                 (FOLLOW_MAX_FIELDS)"
            ),
            Self::TooManyEntities { max, got } => format!(
                "_entities takes at most {max} representations per request \
                 (FOLLOW_MAX_ENTITIES); got {got}"
            ),
            Self::TooNested { max } => format!(
                "The recursion depth of the query cannot be greater than {max} \
                 (selections, fragments, inline fragments or argument values nested in each other)"
            ),
            Self::FragmentCycle { name } => {
                format!("Cannot spread fragment \"{name}\" within itself")
            }
        }
    }

    /// The setting that names the limit, for `extensions.limit`.
    pub fn limit(&self) -> Option<&'static str> {
        match self {
            Self::TooDeep { .. } => Some("FOLLOW_MAX_DEPTH"),
            Self::TooComplex { .. } => Some("FOLLOW_MAX_COMPLEXITY"),
            Self::TooManyFields { .. } => Some("FOLLOW_MAX_FIELDS"),
            Self::TooManyEntities { .. } => Some("FOLLOW_MAX_ENTITIES"),
            Self::TooNested { .. } | Self::FragmentCycle { .. } => None,
        }
    }

    /// A validation error as the library would report it (no path, no data), naming the limit.
    pub fn into_server_error(self) -> async_graphql::ServerError {
        let mut error = async_graphql::ServerError::new(self.message(), None);
        if let Some(limit) = self.limit() {
            let mut extensions = async_graphql::ErrorExtensionValues::default();
            extensions.set("limit", limit);
            error.extensions = Some(extensions);
        }
        error
    }
}

/// How a field's cost is computed, beyond 1 plus its selection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FieldKind {
    Plain,
    /// A connection: its selection costs `first` times (default 20, at most 100).
    Page,
    /// A connection that also does database work for each parent (an intersection for its page and
    /// one for its count, batched across parents but still proportional to them).
    PagePerParent,
    /// Its selection costs once per id of this argument (at most 100).
    PerId(&'static str),
    /// Runs a statement of its own.
    Statement,
    /// Federation `_entities`: once per representation, which are capped.
    Entities,
    /// A follow or unfollow of one user.
    EdgeChange,
    /// Follows or unfollows of every id of this argument.
    EdgeChanges(&'static str),
}

/// The fields whose cost is not 1 plus their selection (by parent type and field name).
fn special_field(parent: &str, field: &str) -> FieldKind {
    match (parent, field) {
        ("User", "followers" | "following") => FieldKind::Page,
        ("User", "knownFollowers") => FieldKind::PagePerParent,
        ("Query", "users") => FieldKind::PerId("ids"),
        ("Query", "relationships") => FieldKind::PerId("otherIds"),
        ("Query", "userByHandle") => FieldKind::Statement,
        ("Query", "_entities") => FieldKind::Entities,
        ("Query", "blocking" | "followRequests") => FieldKind::Page,
        (
            "Mutation",
            "follow"
            | "unfollow"
            | "block"
            | "unblock"
            | "removeFollower"
            | "approveFollowRequest"
            | "rejectFollowRequest",
        ) => FieldKind::EdgeChange,
        ("Mutation", "followMany" | "unfollowMany") => FieldKind::EdgeChanges("userIds"),
        _ => FieldKind::Plain,
    }
}

/// The result type of every field of the client schema, by parent type and field name.
pub struct TypeMap {
    /// Parent type → field → the field's named type (looked up by `&str`, allocating nothing).
    fields: HashMap<String, HashMap<String, String>>,
}

impl TypeMap {
    /// The map of `schema.graphql`, parsed once.
    pub fn client_schema() -> &'static TypeMap {
        static MAP: LazyLock<TypeMap> =
            LazyLock::new(|| TypeMap::from_sdl(include_str!("../../schema.graphql")));
        &MAP
    }

    /// Reads object and interface types' fields from SDL (an unparsable text gives an empty map).
    pub fn from_sdl(sdl: &str) -> TypeMap {
        let mut fields: HashMap<String, HashMap<String, String>> = HashMap::new();
        let Ok(document) = async_graphql::parser::parse_schema(sdl) else {
            return TypeMap { fields };
        };
        for definition in document.definitions {
            let TypeSystemDefinition::Type(ty) = definition else {
                continue;
            };
            let parent = ty.node.name.node.to_string();
            let defined = match ty.node.kind {
                TypeKind::Object(object) => object.fields,
                TypeKind::Interface(interface) => interface.fields,
                _ => continue,
            };
            for field in defined {
                let mut base = &field.node.ty.node.base;
                while let BaseType::List(inner) = base {
                    base = &inner.base;
                }
                if let BaseType::Named(name) = base {
                    fields
                        .entry(parent.clone())
                        .or_default()
                        .insert(field.node.name.node.to_string(), name.to_string());
                }
            }
        }
        TypeMap { fields }
    }

    fn field_type(&self, parent: &str, field: &str) -> Option<&str> {
        self.fields.get(parent)?.get(field).map(String::as_str)
    }
}

/// Refuses a text whose brackets nest deeper than [`MAX_TEXT_NESTING`], before anything parses it: one
/// pass over the bytes, skipping strings, block strings and comments.
pub fn check_text_nesting(text: &str) -> Result<(), CostError> {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' && bytes[i] != b'\r' {
                    i += 1;
                }
            }
            b'"' if bytes[i..].starts_with(b"\"\"\"") => {
                i += 3;
                while i < bytes.len() && !bytes[i..].starts_with(b"\"\"\"") {
                    // An escaped triple quote stays inside the block string.
                    i += if bytes[i..].starts_with(b"\\\"\"\"") {
                        4
                    } else {
                        1
                    };
                }
                i += 2;
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' && bytes[i] != b'\n' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            b'{' | b'[' | b'(' => {
                depth += 1;
                if depth > MAX_TEXT_NESTING {
                    return Err(CostError::TooNested {
                        max: MAX_TEXT_NESTING,
                    });
                }
            }
            b'}' | b']' | b')' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// Measures every operation of `document` against `limits` and returns the cost of the one `name`
/// selects (the only one when `None`; the costliest when the document has several and none is named).
pub fn analyze(
    document: &ExecutableDocument,
    name: Option<&str>,
    variables: &Variables,
    limits: &CostLimits,
) -> Result<Cost, CostError> {
    let mut pass = Pass {
        document,
        variables,
        defaults: HashMap::new(),
        limits,
        types: TypeMap::client_schema(),
        fragments: HashMap::new(),
        nesting: 0,
        field_depth: 0,
    };
    // Variables' defaults from every operation (the selected one first): a fragment's cost is computed
    // once, whichever operation reaches it first.
    let mut operations: Vec<(Option<&Name>, &Positioned<OperationDefinition>)> =
        document.operations.iter().collect();
    operations.sort_by_key(|(n, _)| name.is_none() || n.map(|n| n.as_str()) != name);
    for (_, operation) in &operations {
        for definition in &operation.node.variable_definitions {
            if let Some(default) = definition.node.default_value() {
                pass.defaults
                    .entry(definition.node.name.node.as_str())
                    .or_insert(default);
            }
        }
    }
    let mut selected = None;
    let mut costliest = Cost::default();
    for (operation_name, operation) in operations {
        let root = match operation.node.ty {
            OperationType::Query => "Query",
            OperationType::Mutation => "Mutation",
            OperationType::Subscription => "Subscription",
        };
        let cost = pass.selection_set(&operation.node.selection_set.node, Some(root))?;
        if name.is_some() && operation_name.map(|n| n.as_str()) == name {
            selected = Some(cost);
        }
        if cost.complexity >= costliest.complexity {
            costliest = cost;
        }
    }
    Ok(selected.unwrap_or(costliest))
}

/// One walk over a document.
struct Pass<'a> {
    document: &'a ExecutableDocument,
    variables: &'a Variables,
    defaults: HashMap<&'a str, &'a ConstValue>,
    limits: &'a CostLimits,
    types: &'a TypeMap,
    /// Each fragment's cost once known; `None` while it is being measured (a spread of it then is a cycle).
    fragments: HashMap<&'a str, Option<Cost>>,
    /// Selection sets the walk is inside of now.
    nesting: usize,
    /// Fields the walk is inside of now: past the depth limit it stops at once, not on the way back.
    field_depth: usize,
}

impl<'a> Pass<'a> {
    fn selection_set(
        &mut self,
        set: &'a SelectionSet,
        ty: Option<&'a str>,
    ) -> Result<Cost, CostError> {
        if self.nesting >= MAX_NESTING {
            return Err(CostError::TooNested { max: MAX_NESTING });
        }
        self.nesting += 1;
        let total = self.selections(set, ty);
        self.nesting -= 1;
        total
    }

    fn selections(
        &mut self,
        set: &'a SelectionSet,
        ty: Option<&'a str>,
    ) -> Result<Cost, CostError> {
        let mut total = Cost::default();
        for selection in &set.items {
            let cost = match &selection.node {
                Selection::Field(field) => self.field(&field.node, ty)?,
                Selection::InlineFragment(inline) => {
                    let on = inline
                        .node
                        .type_condition
                        .as_ref()
                        .map(|c| c.node.on.node.as_str())
                        .or(ty);
                    self.selection_set(&inline.node.selection_set.node, on)?
                }
                Selection::FragmentSpread(spread) => {
                    self.fragment(spread.node.fragment_name.node.as_str())?
                }
            };
            total = total.beside(cost);
            self.check(&total)?;
        }
        Ok(total)
    }

    /// A named fragment's cost, measured once; an unknown fragment costs nothing (validation reports it).
    fn fragment(&mut self, name: &'a str) -> Result<Cost, CostError> {
        match self.fragments.entry(name) {
            Entry::Occupied(known) => {
                return match known.get() {
                    Some(cost) => Ok(*cost),
                    None => Err(CostError::FragmentCycle {
                        name: name.to_owned(),
                    }),
                };
            }
            Entry::Vacant(slot) => {
                slot.insert(None);
            }
        }
        let Some(definition) = self.document.fragments.get(name) else {
            self.fragments.insert(name, Some(Cost::default()));
            return Ok(Cost::default());
        };
        let on = definition.node.type_condition.node.on.node.as_str();
        let cost = self.selection_set(&definition.node.selection_set.node, Some(on))?;
        self.fragments.insert(name, Some(cost));
        Ok(cost)
    }

    fn field(&mut self, field: &'a Field, parent: Option<&'a str>) -> Result<Cost, CostError> {
        let name = field.name.node.as_str();
        let kind = parent.map_or(FieldKind::Plain, |p| special_field(p, name));
        let child_type = parent.and_then(|p| self.types.field_type(p, name));
        let selection = if field.selection_set.node.items.is_empty() {
            Cost::default()
        } else {
            self.field_depth += 1;
            let selection = if self.field_depth >= self.limits.max_depth {
                Err(CostError::TooDeep {
                    max: self.limits.max_depth,
                })
            } else {
                self.selection_set(&field.selection_set.node, child_type)
            };
            self.field_depth -= 1;
            selection?
        };
        let (times, own, edge_changes) = match kind {
            FieldKind::Plain => (1, 1, 0),
            FieldKind::Page => (self.page_size(field), 1, 0),
            FieldKind::PagePerParent => (self.page_size(field), 1 + 2 * STATEMENT_COST, 0),
            FieldKind::PerId(argument) => (self.id_count(field, argument).min(MAX_BATCH), 1, 0),
            FieldKind::Statement => (1, 1 + STATEMENT_COST, 0),
            FieldKind::Entities => {
                let got = self.id_count(field, "representations");
                if got > self.limits.max_entities {
                    return Err(CostError::TooManyEntities {
                        max: self.limits.max_entities,
                        got,
                    });
                }
                (got, 1, 0)
            }
            FieldKind::EdgeChange => (1, 1, 1),
            FieldKind::EdgeChanges(argument) => {
                let ids = self.id_count(field, argument).min(MAX_BATCH);
                (1, 1, ids)
            }
        };
        let cost = Cost {
            depth: selection.depth.saturating_add(1),
            complexity: selection
                .complexity
                .saturating_mul(times)
                .saturating_add(own),
            fields: selection.fields.saturating_add(1),
            edge_changes: selection.edge_changes.saturating_add(edge_changes),
        };
        self.check(&cost)?;
        Ok(cost)
    }

    /// Stops the walk as soon as any limit is passed.
    fn check(&self, cost: &Cost) -> Result<(), CostError> {
        let limits = self.limits;
        if cost.fields > limits.max_fields {
            Err(CostError::TooManyFields {
                max: limits.max_fields,
            })
        } else if cost.depth > limits.max_depth {
            Err(CostError::TooDeep {
                max: limits.max_depth,
            })
        } else if cost.complexity > limits.max_complexity {
            Err(CostError::TooComplex {
                max: limits.max_complexity,
            })
        } else {
            Ok(())
        }
    }

    /// What an argument holds, read in place (variables from the request, else their defaults): the
    /// walk runs on every request, and copying a 100-id list to count it would be waste.
    fn argument(&self, field: &'a Field, name: &str) -> Shape {
        let Some(value) = field.get_argument(name) else {
            return Shape::Missing;
        };
        match &value.node {
            Value::Variable(variable) => {
                let given = self
                    .variables
                    .get(variable)
                    .or_else(|| self.defaults.get(variable.as_str()).copied());
                match given {
                    None | Some(ConstValue::Null) => Shape::Null,
                    Some(ConstValue::List(items)) => Shape::List(items.len()),
                    Some(ConstValue::Number(n)) => Shape::Number(n.as_u64()),
                    Some(_) => Shape::Other,
                }
            }
            Value::Null => Shape::Null,
            Value::List(items) => Shape::List(items.len()),
            Value::Number(n) => Shape::Number(n.as_u64()),
            _ => Shape::Other,
        }
    }

    /// `first`, as the resolver reads it: absent or null is the default, and it costs at most 100.
    fn page_size(&self, field: &'a Field) -> usize {
        match self.argument(field, "first") {
            Shape::Number(n) => n.map_or(1, |n| (n as usize).clamp(1, MAX_PAGE)),
            _ => DEFAULT_PAGE,
        }
    }

    /// How many items a list argument holds (a single value is a list of one, as input coercion says).
    fn id_count(&self, field: &'a Field, name: &str) -> usize {
        match self.argument(field, name) {
            Shape::Missing | Shape::Null => 0,
            Shape::List(items) => items,
            Shape::Number(_) | Shape::Other => 1,
        }
    }
}

/// What an argument holds, as far as its cost goes.
enum Shape {
    Missing,
    Null,
    /// A list of this many items.
    List(usize),
    /// A number (`None`: negative or not an integer).
    Number(Option<u64>),
    Other,
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    const LIMITS: CostLimits = CostLimits {
        max_depth: 16,
        max_complexity: 20_000,
        max_fields: 2_000,
        max_entities: 100,
    };

    fn cost(text: &str, variables: serde_json::Value) -> Result<Cost, CostError> {
        let document = async_graphql::parser::parse_query(text).expect("parses");
        analyze(&document, None, &Variables::from_json(variables), &LIMITS)
    }

    fn fan_out(levels: usize) -> String {
        let mut text = String::from(r#"{ user(id: "1") { ...F1 } }"#);
        for i in 1..levels {
            text.push_str(&format!(
                " fragment F{i} on User {{ ...F{n} ...F{n} }}",
                n = i + 1
            ));
        }
        text.push_str(&format!(" fragment F{levels} on User {{ id }}"));
        text
    }

    #[test]
    fn fragment_fan_out_is_refused_in_linear_time() {
        // The schema's type map is parsed once, on first use: not part of what is measured.
        let _ = cost("{ __typename }", serde_json::json!({}));
        let started = Instant::now();
        let refused = cost(&fan_out(26), serde_json::json!({}));
        assert_eq!(refused, Err(CostError::TooManyFields { max: 2_000 }));
        let deeper = cost(&fan_out(64), serde_json::json!({}));
        assert_eq!(deeper, Err(CostError::TooNested { max: MAX_NESTING }));
        // Not a speed measurement: an exponential walk of 2^26 (let alone 2^64) expansions would take
        // seconds to forever, a linear one microseconds; the bound only tells the two apart, with room
        // for a debug build on a loaded machine (50 ms failed there once).
        assert!(started.elapsed() < Duration::from_secs(2));
        // Ten levels expand to 512 ids: within the limit, and measured without expanding.
        let fine = cost(&fan_out(10), serde_json::json!({})).expect("within limits");
        assert_eq!(fine.fields, 1 + 512);
    }

    #[test]
    fn a_long_chain_of_fragments_is_refused_before_it_deepens_the_stack() {
        let mut text = String::from("{ ...C0 }");
        for i in 0..5_000 {
            text.push_str(&format!(" fragment C{i} on Query {{ ...C{} }}", i + 1));
        }
        text.push_str(" fragment C5000 on Query { __typename }");
        assert_eq!(
            cost(&text, serde_json::json!({})),
            Err(CostError::TooNested { max: MAX_NESTING })
        );
    }

    #[test]
    fn nested_values_are_refused_before_parsing() {
        let deep = format!(
            r#"{{ users(ids: {}"1"{}) {{ id }} }}"#,
            "[".repeat(300),
            "]".repeat(300)
        );
        assert_eq!(
            check_text_nesting(&deep),
            Err(CostError::TooNested {
                max: MAX_TEXT_NESTING
            })
        );
        // Brackets inside strings, block strings and comments do not count.
        let quoted = format!(
            "# {open}\n{{ userByHandle(handle: \"{open}\\\"\") {{ id }} a: userByHandle(handle: \"\"\"{open}\\\"\"\"\"\"\") {{ id }} }}",
            open = "[".repeat(300)
        );
        assert_eq!(check_text_nesting(&quoted), Ok(()));
        assert_eq!(check_text_nesting("{ a { b { c } } }"), Ok(()));
    }

    #[test]
    fn fragment_cycles_are_refused() {
        let text =
            r#"{ user(id: "1") { ...A } } fragment A on User { ...B } fragment B on User { ...A }"#;
        assert!(matches!(
            cost(text, serde_json::json!({})),
            Err(CostError::FragmentCycle { .. })
        ));
    }

    #[test]
    fn list_fields_cost_their_page_size_and_variables_count() {
        let text =
            r#"query($n: Int = 50) { user(id: "1") { followers(first: $n) { nodes { id } } } }"#;
        // user 1 + followers (1 + n × (nodes 1 + id 1)).
        assert_eq!(
            cost(text, serde_json::json!({})).map(|c| c.complexity),
            Ok(1 + 1 + 50 * 2)
        );
        assert_eq!(
            cost(text, serde_json::json!({ "n": 5 })).map(|c| c.complexity),
            Ok(1 + 1 + 5 * 2)
        );
        // Omitted `first` is the default page of 20; a huge one costs as the largest page.
        let default = r#"{ user(id: "1") { following { nodes { id } } } }"#;
        assert_eq!(
            cost(default, serde_json::json!({})).map(|c| c.complexity),
            Ok(1 + 1 + 20 * 2)
        );
        let huge = r#"{ user(id: "1") { following(first: 1000000) { nodes { id } } } }"#;
        assert_eq!(
            cost(huge, serde_json::json!({})).map(|c| c.complexity),
            Ok(1 + 1 + 100 * 2)
        );
    }

    #[test]
    fn the_readme_example_costs_what_it_says() {
        // README, Limits: a page of 20 followers with `id handle`, inside its `user`, costs 62.
        let page = r#"{ user(id: "1") { followers { nodes { id handle } } } }"#;
        assert_eq!(
            cost(page, serde_json::json!({})).map(|c| c.complexity),
            Ok(62)
        );
        // BENCHMARKS, Abuse: the benchmark's list page costs 222 points.
        let bench = r#"{ user(id: "1") { followers(first: 20) { edges { cursor node { id handle viewerIsFollowing followerCount followingCount } } pageInfo { hasNextPage endCursor } } } }"#;
        assert_eq!(
            cost(bench, serde_json::json!({})).map(|c| c.complexity),
            Ok(222)
        );
    }

    #[test]
    fn per_parent_statements_multiply_with_the_page() {
        let one = r#"{ user(id: "1") { followers(first: 100) { nodes { knownFollowers(first: 1) { totalCount } } } } }"#;
        let single = cost(one, serde_json::json!({})).expect("one page is fine");
        assert!(single.complexity > 100 * 2 * STATEMENT_COST, "{single:?}");
        let aliases: String = (0..60)
            .map(|i| format!(r#"a{i}: user(id: "{i}") {{ followers(first: 100) {{ nodes {{ knownFollowers(first: 1) {{ totalCount }} }} }} }} "#))
            .collect();
        assert_eq!(
            cost(&format!("{{ {aliases} }}"), serde_json::json!({})),
            Err(CostError::TooComplex { max: 20_000 })
        );
    }

    #[test]
    fn entities_cost_per_representation_and_are_capped() {
        let text = r#"query($r: [_Any!]!) { _entities(representations: $r) { ... on User { id followerCount } } }"#;
        let reps = |n: usize| {
            let list: Vec<_> = (0..n)
                .map(|i| serde_json::json!({ "__typename": "User", "id": i.to_string() }))
                .collect();
            serde_json::json!({ "r": list })
        };
        assert_eq!(cost(text, reps(10)).map(|c| c.complexity), Ok(1 + 10 * 2));
        assert_eq!(
            cost(text, reps(2_000)),
            Err(CostError::TooManyEntities {
                max: 100,
                got: 2_000
            })
        );
    }

    #[test]
    fn mutations_count_the_edges_they_change() {
        let text = r#"mutation($ids: [ID!]!) { a: follow(userId: "2") { changed } b: unfollow(userId: "3") { changed } c: followMany(userIds: $ids) { changed } }"#;
        let ids: Vec<String> = (10..40).map(|i| i.to_string()).collect();
        let measured = cost(text, serde_json::json!({ "ids": ids })).expect("fine");
        assert_eq!(measured.edge_changes, 32);
        // Blocks, removals and answers to requests spend the same write quota as follows.
        let consent = r#"mutation { a: block(userId: "2") { changed } b: unblock(userId: "2") { changed } c: removeFollower(userId: "3") { changed } d: approveFollowRequest(userId: "4") { changed } e: rejectFollowRequest(userId: "5") { changed } }"#;
        assert_eq!(
            cost(consent, serde_json::json!({})).map(|c| c.edge_changes),
            Ok(5)
        );
        let fragment = r#"mutation { ...M ...M } fragment M on Mutation { a: follow(userId: "2") { changed } }"#;
        assert_eq!(
            cost(fragment, serde_json::json!({})).map(|c| c.edge_changes),
            Ok(2)
        );
    }

    #[test]
    fn depth_counts_nested_fields_through_fragments() {
        let mut deep = String::from(r#"{ user(id: "1") { ...L1 } }"#);
        for i in 1..12 {
            deep.push_str(&format!(
                " fragment L{i} on User {{ followers(first: 1) {{ nodes {{ ...L{} }} }} }}",
                i + 1
            ));
        }
        deep.push_str(" fragment L12 on User { id }");
        assert_eq!(
            cost(&deep, serde_json::json!({})),
            Err(CostError::TooDeep { max: 16 })
        );
    }

    #[test]
    fn the_selected_operation_is_measured() {
        let document = async_graphql::parser::parse_query(
            r#"query Small { __typename } query Big { user(id: "1") { followers(first: 100) { nodes { id } } } }"#,
        )
        .expect("parses");
        let small = analyze(&document, Some("Small"), &Variables::default(), &LIMITS);
        assert_eq!(small.map(|c| c.complexity), Ok(1));
    }

    #[test]
    fn every_list_of_the_schema_is_costed() {
        // A new list or connection field must get a kind in `special_field`, or it costs as one item.
        let sdl = include_str!("../../schema.graphql");
        let document = async_graphql::parser::parse_schema(sdl).expect("schema parses");
        for definition in document.definitions {
            let TypeSystemDefinition::Type(ty) = definition else {
                continue;
            };
            let TypeKind::Object(object) = &ty.node.kind else {
                continue;
            };
            for field in &object.fields {
                let is_list = matches!(field.node.ty.node.base, BaseType::List(_))
                    || field.node.ty.node.to_string().contains("Connection");
                let parent = ty.node.name.node.as_str();
                let name = field.node.name.node.as_str();
                // Lists inside a page cost through the page that holds them.
                let held = matches!(
                    parent,
                    "FollowConnection" | "BlockConnection" | "FollowRequestConnection"
                );
                // Mutation batches cost their ids as edge changes.
                if is_list && !held {
                    assert_ne!(
                        special_field(parent, name),
                        FieldKind::Plain,
                        "{parent}.{name} is a list without a cost"
                    );
                }
            }
        }
    }
}
