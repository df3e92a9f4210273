//! The schema as clients see it: `schema.graphql` is current, the contract is kept, migrations reverse.

use std::collections::BTreeMap;

use async_graphql::parser::{
    parse_schema,
    types::{TypeKind, TypeSystemDefinition},
};

/// Each type's members as comparable text: `field(arg: Type, …): Type`, or the enum value.
fn members(sdl: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let document = parse_schema(sdl).expect("valid SDL");
    let mut types = BTreeMap::new();
    for definition in document.definitions {
        let TypeSystemDefinition::Type(ty) = definition else {
            continue;
        };
        let ty = ty.node;
        let mut fields = BTreeMap::new();
        match ty.kind {
            TypeKind::Object(object) => {
                for field in object.fields {
                    let field = field.node;
                    let args: BTreeMap<String, String> = field
                        .arguments
                        .iter()
                        .map(|a| (a.node.name.node.to_string(), format!("{}", a.node.ty.node)))
                        .collect();
                    fields.insert(
                        field.name.node.to_string(),
                        format!("{args:?}: {}", field.ty.node),
                    );
                }
            }
            TypeKind::InputObject(input) => {
                for field in input.fields {
                    fields.insert(
                        field.node.name.node.to_string(),
                        field.node.ty.node.to_string(),
                    );
                }
            }
            TypeKind::Enum(enumeration) => {
                for value in enumeration.values {
                    fields.insert(value.node.value.node.to_string(), String::new());
                }
            }
            _ => {}
        }
        types.insert(ty.name.node.to_string(), fields);
    }
    types
}

#[test]
fn schema_graphql_is_generated_from_the_code() {
    let committed = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql"))
        .expect("schema.graphql");
    assert!(
        committed == follow_service::graphql::sdl(),
        "schema.graphql is stale: run `cargo run -- schema --write` and commit it"
    );
}

#[test]
fn subgraph_graphql_is_generated_from_the_code() {
    let committed =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/subgraph.graphql"))
            .expect("subgraph.graphql");
    assert!(
        committed == follow_service::graphql::subgraph_sdl(),
        "subgraph.graphql is stale: run `cargo run -- schema --write` and commit it"
    );
}

#[test]
fn the_schema_keeps_every_type_field_and_argument_of_the_contract() {
    let contract = members(include_str!("../contract.graphql"));
    let server = members(&follow_service::graphql::sdl());
    for (name, fields) in &contract {
        let Some(ours) = server.get(name) else {
            panic!("type {name} of the contract is missing")
        };
        for (field, signature) in fields {
            assert_eq!(
                ours.get(field),
                Some(signature),
                "{name}.{field} differs from the contract"
            );
        }
    }
}

#[test]
fn the_contract_copy_matches_the_design_folder() {
    // The design folder sits beside the repository in CI and on developers' machines.
    let upstream = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../shared/design/contract.graphql"
    );
    if let Ok(upstream) = std::fs::read_to_string(upstream) {
        assert_eq!(
            upstream,
            include_str!("../contract.graphql"),
            "tests/contract.graphql is stale: copy the design's contract"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_migration_reverts_and_reapplies_to_the_same_schema() {
    let database = crate::support::fresh_database().await;
    let url = crate::support::database_url(&database);
    let describe = || async {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        let rows = client
            .query(
                "SELECT table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable || ' ' || COALESCE(column_default, '') \
                 FROM information_schema.columns WHERE table_schema = 'public' \
                 UNION ALL SELECT indexdef FROM pg_indexes WHERE schemaname = 'public' \
                 UNION ALL SELECT conname || ' ' || pg_get_constraintdef(oid) FROM pg_constraint WHERE connamespace = 'public'::regnamespace \
                 UNION ALL SELECT c.relname || COALESCE('.' || a.attname, '') || ': ' || d.description FROM pg_description d \
                     JOIN pg_class c ON c.oid = d.objoid LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = d.objsubid \
                     WHERE c.relnamespace = 'public'::regnamespace \
                 ORDER BY 1",
                &[],
            )
            .await
            .expect("describe schema");
        rows.iter()
            .map(|r| r.get::<_, String>(0))
            .collect::<Vec<_>>()
    };
    let before = describe().await;
    assert!(
        before.iter().any(|l| l.starts_with("follows.follower_id")),
        "migrated: {before:?}"
    );
    assert!(
        before
            .iter()
            .any(|l| l.starts_with("user_stats.follower_count: ")),
        "columns are commented"
    );
    let reverted = follow_service::db::revert_all_migrations(&url)
        .await
        .expect("revert");
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .expect("migrations")
        .count();
    assert_eq!(reverted, migrations);
    let empty = describe().await;
    assert!(
        empty
            .iter()
            .all(|l| l.starts_with("__diesel_schema_migrations")
                || l.contains("__diesel_schema_migrations")),
        "left behind: {empty:?}"
    );
    follow_service::db::run_migrations(&url)
        .await
        .expect("reapply");
    assert_eq!(describe().await, before);
    let (client, connection) =
        tokio_postgres::connect(&crate::support::server_url(), tokio_postgres::NoTls)
            .await
            .expect("connect");
    tokio::spawn(connection);
    client
        .batch_execute(&format!("DROP DATABASE {database} WITH (FORCE)"))
        .await
        .expect("drop");
}
