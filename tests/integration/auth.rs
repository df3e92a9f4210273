//! Bearer tokens over HTTP: a bad token is never an anonymous request.

use follow_service::auth::JwtKeys;
use serde_json::Value;

use crate::support::{TestApp, graphql_post, query_body};

async fn code_of(app: &TestApp, token: Option<&str>, query: &str) -> (u16, String) {
    let (status, _, body) = app
        .http(
            graphql_post(token)
                .body(query_body(query))
                .expect("request"),
        )
        .await;
    let body: Value = serde_json::from_slice(&body).expect("JSON body");
    (
        status.as_u16(),
        body["errors"][0]["extensions"]["code"]
            .as_str()
            .unwrap_or("none")
            .to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_unauthenticated_and_roles_are_enforced() {
    let app = TestApp::spawn().await;
    app.create_users(1..=2).await;
    let follow = r#"mutation { follow(userId: "2") { changed } }"#;

    assert_eq!(
        code_of(&app, None, follow).await,
        (200, "UNAUTHENTICATED".into()),
        "no token"
    );
    let expired = app.app.jwt.issue(1, false, -3600).expect("token");
    assert_eq!(
        code_of(&app, Some(&expired), follow).await,
        (401, "UNAUTHENTICATED".into()),
        "expired"
    );
    let forged = JwtKeys::new("some-other-secret-entirely")
        .issue(1, true, 3600)
        .expect("token");
    assert_eq!(
        code_of(&app, Some(&forged), follow).await,
        (401, "UNAUTHENTICATED".into()),
        "other secret"
    );
    assert_eq!(
        code_of(&app, Some("not.a.jwt"), "{ __typename }").await,
        (401, "UNAUTHENTICATED".into()),
        "garbage on a public query"
    );

    let user = app.token(1, false);
    let upsert = r#"mutation { upsertUser(input: { id: "9", handle: "nine" }) { id } }"#;
    assert_eq!(
        code_of(&app, Some(&user), upsert).await,
        (200, "FORBIDDEN".into())
    );
    assert_eq!(
        code_of(&app, None, upsert).await,
        (200, "UNAUTHENTICATED".into())
    );
    assert_eq!(
        app.count("SELECT count(*) FROM follows").await
            + app.count("SELECT count(*) FROM users WHERE id = 9").await,
        0
    );

    let admin = app.token(1, true);
    assert_eq!(
        code_of(&app, Some(&admin), upsert).await,
        (200, "none".into())
    );
    assert_eq!(
        code_of(&app, Some(&user), follow).await,
        (200, "none".into())
    );
    assert_eq!(app.count("SELECT count(*) FROM follows").await, 1);
}
