//! Response fields in the order the document asked for them.
//!
//! The library resolves an object's fields concurrently and inserts each into the response when it
//! finishes (a `FuturesUnordered` in its container resolver), so a field that waited on the cache or
//! the database lands after one that did not: `{ user { followerCount } isFollowing(…) }` answered
//! `isFollowing` first on a cold cache. The GraphQL spec orders a response's fields as the document's
//! selections (CollectFields); normalized client caches and snapshot tests rely on it. This puts every
//! object of a response back in that order, using the document, the variables (`@skip`, `@include`)
//! and the schema's types (type conditions).

use std::collections::HashMap;

use async_graphql::{
    Name, Positioned, Value, Variables,
    indexmap::IndexMap,
    parser::types::{
        Directive, DocumentOperations, ExecutableDocument, OperationType, Selection, SelectionSet,
    },
    registry::{MetaTypeName, Registry},
};

/// How deep fragments may nest before the walk gives up (a validated document has no cycles; this
/// only bounds the work on one that was not validated).
const MAX_FRAGMENT_DEPTH: usize = 64;

/// Entries of a collected field list looked up linearly up to this many, then through a map.
const LINEAR_LOOKUP: usize = 16;

/// Which operation of a document produced a response.
#[derive(Clone, Copy, Debug)]
pub enum Operation<'a> {
    /// The one the request named (`None`: the document's only operation).
    Named(Option<&'a str>),
    /// The document's subscription (its events reach extensions without the operation's name).
    Subscription,
}

/// Reorders the objects of `data`, the result of `operation` of `document`.
pub fn reorder(
    registry: &Registry,
    document: &ExecutableDocument,
    operation: Operation<'_>,
    variables: &Variables,
    data: &mut Value,
) {
    let operation = match (&document.operations, operation) {
        (DocumentOperations::Single(operation), _) => operation,
        (DocumentOperations::Multiple(operations), Operation::Named(Some(name))) => {
            match operations.get(name) {
                Some(operation) => operation,
                None => return,
            }
        }
        (DocumentOperations::Multiple(operations), Operation::Named(None)) => {
            let mut all = operations.values();
            match (all.next(), all.next()) {
                (Some(operation), None) => operation,
                _ => return,
            }
        }
        (DocumentOperations::Multiple(operations), Operation::Subscription) => {
            let mut subscriptions = operations
                .values()
                .filter(|o| o.node.ty == OperationType::Subscription);
            match (subscriptions.next(), subscriptions.next()) {
                (Some(operation), None) => operation,
                _ => return,
            }
        }
    };
    let root = match operation.node.ty {
        OperationType::Query => Some(registry.query_type.as_str()),
        OperationType::Mutation => registry.mutation_type.as_deref(),
        OperationType::Subscription => registry.subscription_type.as_deref(),
    };
    let Some(root) = root else { return };
    let walk = Walk {
        registry,
        document,
        variables,
    };
    walk.values(root, &[&operation.node.selection_set.node], vec![data]);
}

/// One response key of an object, with the selection sets of every field that answers to it.
struct Collected<'d> {
    key: &'d Name,
    field: &'d Name,
    selections: Vec<&'d SelectionSet>,
}

struct Walk<'d> {
    registry: &'d Registry,
    document: &'d ExecutableDocument,
    variables: &'d Variables,
}

impl<'d> Walk<'d> {
    /// Reorders `values`, all of schema type `type_name` and selected by `selections` (lists: each item).
    /// The values of one selection path go together, so each path's field order is collected once, not
    /// once per object (a page of 100 nodes costs one plan).
    fn values(&self, type_name: &str, selections: &[&'d SelectionSet], values: Vec<&mut Value>) {
        let mut objects = Vec::with_capacity(values.len());
        let mut pending = values;
        while let Some(value) = pending.pop() {
            match value {
                Value::List(items) => pending.extend(items.iter_mut()),
                Value::Object(object) => objects.push(object),
                _ => {}
            }
        }
        if objects.is_empty() {
            return;
        }
        let Some(meta) = self.registry.types.get(type_name) else {
            return;
        };
        if meta
            .possible_types()
            .is_some_and(|possible| possible.len() > 1)
        {
            // An abstract type with several object types: each object by its own `__typename`.
            for object in objects {
                if let Some(concrete) = self.concrete_type(type_name, selections, object) {
                    self.objects(&concrete, selections, vec![object]);
                }
            }
            return;
        }
        let concrete = match meta.possible_types().and_then(|p| p.iter().next()) {
            Some(only) => only.clone(),
            None => type_name.to_owned(),
        };
        self.objects(&concrete, selections, objects);
    }

    /// Reorders `objects`, all of object type `concrete`, then their fields' values, path by path.
    fn objects(
        &self,
        concrete: &str,
        selections: &[&'d SelectionSet],
        objects: Vec<&mut IndexMap<Name, Value>>,
    ) {
        let mut fields = Fields::default();
        for selection_set in selections {
            self.collect(concrete, selection_set, &mut fields, 0);
        }
        let meta = self.registry.types.get(concrete);
        let nested: Vec<usize> = (0..fields.entries.len())
            .filter(|&at| !fields.entries[at].selections.is_empty())
            .collect();
        let mut children: Vec<Vec<&mut Value>> = nested.iter().map(|_| Vec::new()).collect();
        for object in objects {
            reorder_object(object, &fields);
            if nested.is_empty() {
                continue;
            }
            for (key, value) in object.iter_mut() {
                if let Some(slot) = nested.iter().position(|&at| fields.entries[at].key == key) {
                    children[slot].push(value);
                }
            }
        }
        let Some(meta) = meta else { return };
        for (slot, values) in children.into_iter().enumerate() {
            let field = &fields.entries[nested[slot]];
            if values.is_empty() {
                continue;
            }
            if let Some(meta_field) = meta.field_by_name(field.field) {
                let field_type = MetaTypeName::concrete_typename(&meta_field.ty);
                self.values(field_type, &field.selections, values);
            }
        }
    }

    /// The object type of a value of `type_name`: itself, the one possible type of an abstract type, or
    /// what the response's `__typename` says (`None` when it cannot be known: the value is left as is).
    fn concrete_type(
        &self,
        type_name: &str,
        selections: &[&'d SelectionSet],
        object: &IndexMap<Name, Value>,
    ) -> Option<String> {
        let meta = self.registry.types.get(type_name)?;
        let Some(possible) = meta.possible_types() else {
            return Some(type_name.to_owned());
        };
        if possible.len() == 1 {
            return possible.iter().next().cloned();
        }
        let mut fields = Fields::default();
        for selection_set in selections {
            self.collect(type_name, selection_set, &mut fields, 0);
        }
        fields
            .entries
            .iter()
            .filter(|f| f.field.as_str() == "__typename")
            .find_map(|f| match object.get(f.key) {
                Some(Value::String(name)) => Some(name.clone()),
                _ => None,
            })
    }

    /// CollectFields of the spec: the response keys in order of first appearance.
    fn collect(
        &self,
        concrete: &str,
        selection_set: &'d SelectionSet,
        fields: &mut Fields<'d>,
        depth: usize,
    ) {
        if depth > MAX_FRAGMENT_DEPTH {
            return;
        }
        for selection in &selection_set.items {
            match &selection.node {
                Selection::Field(field) => {
                    let field = &field.node;
                    if self.included(&field.directives) {
                        fields.add(
                            &field.response_key().node,
                            &field.name.node,
                            &field.selection_set.node,
                        );
                    }
                }
                Selection::FragmentSpread(spread) => {
                    let spread = &spread.node;
                    let Some(fragment) = self.document.fragments.get(&spread.fragment_name.node)
                    else {
                        continue;
                    };
                    if self.included(&spread.directives)
                        && self.applies(&fragment.node.type_condition.node.on.node, concrete)
                    {
                        self.collect(
                            concrete,
                            &fragment.node.selection_set.node,
                            fields,
                            depth + 1,
                        );
                    }
                }
                Selection::InlineFragment(inline) => {
                    let inline = &inline.node;
                    let applies = inline
                        .type_condition
                        .as_ref()
                        .is_none_or(|condition| self.applies(&condition.node.on.node, concrete));
                    if applies && self.included(&inline.directives) {
                        self.collect(concrete, &inline.selection_set.node, fields, depth + 1);
                    }
                }
            }
        }
    }

    /// A fragment on `condition` applies to an object of type `concrete`.
    fn applies(&self, condition: &str, concrete: &str) -> bool {
        condition == concrete
            || self
                .registry
                .types
                .get(condition)
                .is_some_and(|meta| meta.is_possible_type(concrete))
    }

    /// `@skip(if:)` and `@include(if:)` allow the selection.
    fn included(&self, directives: &[Positioned<Directive>]) -> bool {
        directives.iter().all(|directive| {
            let directive = &directive.node;
            let wanted = match directive.name.node.as_str() {
                "skip" => false,
                "include" => true,
                _ => return true,
            };
            let condition = match directive.get_argument("if").map(|value| &value.node) {
                Some(async_graphql_value::Value::Boolean(value)) => *value,
                Some(async_graphql_value::Value::Variable(name)) => {
                    matches!(self.variables.get(name), Some(Value::Boolean(true)))
                }
                _ => false,
            };
            condition == wanted
        })
    }
}

/// Puts `object`'s keys in the order of `fields` (left alone when they already are, as most are).
fn reorder_object(object: &mut IndexMap<Name, Value>, fields: &Fields<'_>) {
    let in_order = object
        .keys()
        .zip(fields.entries.iter().filter(|f| object.contains_key(f.key)))
        .all(|(have, want)| have == want.key);
    if in_order {
        return;
    }
    let mut unordered = std::mem::take(object);
    for field in &fields.entries {
        if let Some((key, value)) = unordered.shift_remove_entry(field.key) {
            object.insert(key, value);
        }
    }
    // Keys no selection names (none in a well-formed response) keep their place at the end.
    object.extend(unordered);
}

/// Collected fields in order, with an index by response key once there are many.
#[derive(Default)]
struct Fields<'d> {
    entries: Vec<Collected<'d>>,
    index: HashMap<&'d str, usize>,
}

impl<'d> Fields<'d> {
    fn add(&mut self, key: &'d Name, field: &'d Name, selection_set: &'d SelectionSet) {
        let found = if self.entries.len() <= LINEAR_LOOKUP {
            self.entries.iter().position(|entry| entry.key == key)
        } else {
            if self.index.is_empty() {
                self.index = self
                    .entries
                    .iter()
                    .enumerate()
                    .map(|(at, entry)| (entry.key.as_str(), at))
                    .collect();
            }
            self.index.get(key.as_str()).copied()
        };
        let at = match found {
            Some(at) => at,
            None => {
                if !self.index.is_empty() {
                    self.index.insert(key.as_str(), self.entries.len());
                }
                self.entries.push(Collected {
                    key,
                    field,
                    selections: Vec::new(),
                });
                self.entries.len() - 1
            }
        };
        if !selection_set.items.is_empty() {
            self.entries[at].selections.push(selection_set);
        }
    }
}

#[cfg(test)]
mod tests {
    use async_graphql::{EmptyMutation, EmptySubscription, Object, Schema, SimpleObject};

    use super::*;

    #[derive(SimpleObject)]
    struct Inner {
        a: i32,
        b: i32,
    }

    struct Root;

    #[Object]
    impl Root {
        async fn fast(&self) -> i32 {
            1
        }
        async fn slow(&self) -> Inner {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            Inner { a: 1, b: 2 }
        }
    }

    fn keys(value: &Value) -> Vec<String> {
        match value {
            Value::Object(object) => object.keys().map(|k| k.to_string()).collect(),
            _ => Vec::new(),
        }
    }

    /// Runs `query` through a schema with the service's extension, which puts the fields in order.
    async fn reordered(query: &str, variables: serde_json::Value) -> Value {
        let limits = crate::graphql::cost::CostLimits {
            max_depth: 10,
            max_complexity: 1_000,
            max_fields: 100,
            max_entities: 10,
        };
        let schema = Schema::build(Root, EmptyMutation, EmptySubscription)
            .extension(crate::graphql::hooks::Hooks { cost: limits })
            .finish();
        let request = async_graphql::Request::new(query).variables(Variables::from_json(variables));
        let response = schema.execute(request).await;
        assert!(response.errors.is_empty(), "{:?}", response.errors);
        response.data
    }

    #[tokio::test]
    async fn a_slow_field_keeps_its_place() {
        let data = reordered("{ slow { b a } fast }", serde_json::json!({})).await;
        assert_eq!(keys(&data), ["slow", "fast"]);
        if let Value::Object(object) = &data {
            assert_eq!(keys(&object["slow"]), ["b", "a"]);
        }
    }

    #[tokio::test]
    async fn fragments_aliases_and_conditions_order_as_collected() {
        let data = reordered(
            "query($no: Boolean!) { x: fast @include(if: $no) ...F slow { a } fast ... { slow { b } } }
             fragment F on Root { y: slow { b } }",
            serde_json::json!({ "no": false }),
        )
        .await;
        assert_eq!(keys(&data), ["y", "slow", "fast"]);
        if let Value::Object(object) = &data {
            assert_eq!(keys(&object["slow"]), ["a", "b"]);
        }
    }
}
