//! Apollo Federation v2: the service as a subgraph that resolves `User` entities for a router.

use serde_json::{Value, json};

use crate::support::{Options, TestApp};

const ENTITIES: &str = r#"query($representations: [_Any!]!) {
  _entities(representations: $representations) {
    ... on User { id followerCount followingCount viewerIsFollowing }
  }
}"#;

fn representations(ids: impl IntoIterator<Item = i64>) -> Value {
    Value::Array(
        ids.into_iter()
            .map(|id| json!({ "__typename": "User", "id": id.to_string() }))
            .collect(),
    )
}

#[tokio::test]
async fn the_service_describes_itself_as_a_subgraph() {
    let app = TestApp::without_pipeline().await;
    let data = app.data(None, "{ _service { sdl } }", json!({})).await;
    let sdl = data["_service"]["sdl"].as_str().unwrap_or("");
    assert_eq!(sdl, follow_service::graphql::subgraph_sdl());
    assert!(
        sdl.contains("https://specs.apollo.dev/federation/v2."),
        "Federation 2 links its spec"
    );
    assert!(sdl.contains(r#"type User @key(fields: "id")"#), "{sdl}");
    assert!(sdl.contains("handle: String! @shareable"), "{sdl}");
    // Clients' schema stays free of the federation machinery.
    let client = follow_service::graphql::sdl();
    assert!(
        !client.contains("_entities") && !client.contains("@key"),
        "{client}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_user_entities_cost_a_few_batched_lookups() {
    // No pipeline: its relay would run statements of its own while the test counts.
    let app = TestApp::with_options(Options {
        pipeline: false,
        cache: false,
        loader_delay: std::time::Duration::from_millis(50),
        ..Options::default()
    })
    .await;
    app.create_users(1..=100).await;
    app.follow(2, 1).await;
    let outbox: Vec<follow_service::domain::EventId> = app
        .sql("SELECT id FROM outbox")
        .await
        .iter()
        .map(|row| follow_service::domain::EventId(row.get(0)))
        .collect();
    follow_service::events::consumer::apply_with_retry(&app.app.db, &outbox)
        .await
        .expect("the follow's event applied");

    let before = app.app.queries.get();
    let data = app
        .data(
            Some(2),
            ENTITIES,
            json!({ "representations": representations(1..=100) }),
        )
        .await;
    let spent = app.app.queries.get() - before;
    let entities = data["_entities"].as_array().expect("a list");
    assert_eq!(entities.len(), 100);
    assert_eq!(
        entities[0],
        json!({ "id": "1", "followerCount": 1, "followingCount": 0, "viewerIsFollowing": true })
    );
    assert_eq!(entities[99]["id"], "100");
    // users, counts and statuses: one statement each; a loaded machine splits batches, and a fresh pooled
    // connection prepares its statements (7 was seen under a parallel test run). One per entity would
    // be over 200.
    assert!(spent <= 9, "{spent} statements for 100 entities");
}

#[tokio::test]
async fn a_user_without_a_record_is_an_entity_with_no_follows() {
    let app = TestApp::without_pipeline().await;
    app.create_users(1..=1).await;
    let query = r#"query($representations: [_Any!]!) {
      _entities(representations: $representations) { ... on User { id followerCount followers(first: 5) { totalCount } } }
    }"#;
    let data = app
        .data(
            None,
            query,
            json!({ "representations": representations([1, 424242]) }),
        )
        .await;
    assert_eq!(
        data["_entities"][1],
        json!({ "id": "424242", "followerCount": 0, "followers": { "totalCount": 0 } })
    );
    // Its handle belongs to the users subgraph: asked here, it is an error on that field alone.
    let response = app
        .run(
            None,
            r#"query($r: [_Any!]!) { _entities(representations: $r) { ... on User { handle } } }"#,
            json!({ "r": representations([424242]) }),
        )
        .await;
    assert_eq!(
        response["errors"][0]["extensions"]["code"], "NOT_FOUND",
        "{response}"
    );
}
