//! Subscriptions over a real websocket: events across instances, and the protocol's rules.

use std::time::Duration;

use serde_json::json;

use crate::support::{Options, RedisProxy, TestApp, eventually, serve, ws::WsClient};

const EVENTS: &str =
    "subscription { followEvents { kind at follower { id handle } followee { id } } }";

/// Waits until `app` has `n` subscriptions open (the server does not acknowledge a subscribe).
async fn subscribed(app: &follow_service::app::App, n: usize) {
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.events.subscriber_count() == n
        })
        .await,
        "the subscription never registered"
    );
}

#[tokio::test]
async fn a_follow_through_one_instance_reaches_a_subscriber_of_another() {
    let app = TestApp::spawn().await;
    app.create_users(1..=3).await;
    let other = app.instance(Options::default()).await;
    let served = serve(&other.app).await;
    let mut subscriber = WsClient::connect(served.address, Some(&app.token(2, false))).await;
    subscriber.subscribe("events", EVENTS).await;
    subscribed(&other.app, 1).await;

    // An event for someone else first: it must not reach user 2.
    app.follow(1, 3).await;
    app.follow(1, 2).await;
    let message = subscriber.next().await;
    assert_eq!(message["type"], "next", "{message}");
    assert_eq!(message["id"], "events");
    let event = &message["payload"]["data"]["followEvents"];
    assert_eq!(event["kind"], "FOLLOW", "{message}");
    let fields: Vec<&String> = event
        .as_object()
        .map(|o| o.keys().collect())
        .unwrap_or_default();
    assert_eq!(
        fields,
        ["kind", "at", "follower", "followee"],
        "the query's order"
    );
    assert_eq!(event["follower"], json!({ "id": "1", "handle": "u1" }));
    assert_eq!(event["followee"]["id"], "2");
    assert!(event["at"].as_str().is_some_and(|at| at.ends_with('Z')));

    app.unfollow(1, 2).await;
    let message = subscriber.next().await;
    assert_eq!(
        message["payload"]["data"]["followEvents"]["kind"], "UNFOLLOW",
        "{message}"
    );

    // `complete` from the client ends the subscription on the server.
    subscriber
        .send(json!({ "id": "events", "type": "complete" }))
        .await;
    subscribed(&other.app, 0).await;
}

#[tokio::test]
async fn a_subscriber_gets_what_was_written_while_its_instance_had_lost_redis() {
    let app = TestApp::spawn().await;
    app.create_users(1..=3).await;
    let proxy = RedisProxy::start().await;
    let other = app.instance_behind(&proxy).await;
    let served = serve(&other.app).await;
    let mut subscriber = WsClient::connect(served.address, Some(&app.token(2, false))).await;
    subscriber.subscribe("events", EVENTS).await;
    subscribed(&other.app, 1).await;

    // The subscriber's instance loses Redis; writes go on through the first instance meanwhile.
    proxy.cut();
    app.follow(1, 2).await;
    app.follow(3, 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.restore();

    // Its fan-out reconnects and reads on from the last entry it had seen: nothing is skipped.
    let mut followers = Vec::new();
    for _ in 0..2 {
        let message = subscriber.next().await;
        assert_eq!(message["type"], "next", "{message}");
        followers.push(message["payload"]["data"]["followEvents"]["follower"]["id"].clone());
    }
    assert_eq!(followers, [json!("1"), json!("3")]);
}

#[tokio::test]
async fn an_event_published_twice_arrives_once() {
    let app = TestApp::without_pipeline().await;
    app.create_users(1..=2).await;
    let served = serve(&app.app).await;
    let mut subscriber = WsClient::connect(served.address, Some(&app.token(2, false))).await;
    subscriber.subscribe("e", EVENTS).await;
    subscribed(&app.app, 1).await;
    app.follow(1, 2).await;
    assert_eq!(subscriber.next().await["type"], "next");
    // Redis loses the stream before the counters applied the event: the relay publishes it again, and
    // the subscriber must not see it again.
    let mut conn = app.redis().await;
    let _: i64 = follow_service::redis_pool::redis::cmd("DEL")
        .arg(&app.app.stream.first().stream)
        .query_async(&mut conn)
        .await
        .expect("DEL");
    let pass = app.relay_pass().await;
    assert_eq!(pass.republished, 1);
    app.follow(1, 2).await; // unchanged: no event
    app.unfollow(1, 2).await;
    let message = subscriber.next().await;
    assert_eq!(
        message["payload"]["data"]["followEvents"]["kind"], "UNFOLLOW",
        "{message}"
    );
}

#[tokio::test]
async fn follow_events_needs_a_viewer() {
    let app = TestApp::without_pipeline().await;
    let served = serve(&app.app).await;
    let mut anonymous = WsClient::connect(served.address, None).await;
    anonymous.subscribe("1", EVENTS).await;
    let message = anonymous.next().await;
    let errors = match message["type"].as_str() {
        Some("error") => message["payload"].clone(),
        Some("next") => message["payload"]["errors"].clone(),
        _ => panic!("unexpected {message}"),
    };
    assert_eq!(
        errors[0]["extensions"]["code"], "UNAUTHENTICATED",
        "{message}"
    );
}

#[tokio::test]
async fn queries_and_bad_operations_over_the_socket() {
    let app = TestApp::without_pipeline().await;
    app.create_users(1..=1).await;
    let served = serve(&app.app).await;
    let mut client = WsClient::connect(served.address, Some(&app.token(1, false))).await;

    client.subscribe("q", "{ viewer { handle } }").await;
    let next = client.next().await;
    assert_eq!(
        next,
        json!({ "id": "q", "type": "next", "payload": { "data": { "viewer": { "handle": "u1" } } } })
    );
    assert_eq!(
        client.next().await,
        json!({ "id": "q", "type": "complete" })
    );

    // An operation that does not validate never starts: one `error` message, no `complete`.
    client
        .subscribe("bad", "subscription { noSuchField }")
        .await;
    let error = client.next().await;
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["id"], "bad");
    assert!(
        error["payload"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("noSuchField"))
    );

    // The id of a finished operation may be used again; fields come in the order asked.
    client.subscribe("q", "{ viewer { id handle } }").await;
    assert_eq!(
        client.next().await["payload"].to_string(),
        r#"{"data":{"viewer":{"id":"1","handle":"u1"}}}"#
    );

    // Ping is answered with pong.
    client.send(json!({ "type": "ping" })).await;
    assert_eq!(client.next().await["type"], "complete");
    assert_eq!(client.next().await, json!({ "type": "pong" }));
}

#[tokio::test]
async fn the_protocol_closes_with_its_codes() {
    let app = TestApp::without_pipeline().await;
    let served = serve(&app.app).await;
    let address = served.address;
    let protocol = Some("graphql-transport-ws");

    // A token that does not verify: 4401.
    let mut client = WsClient::open(address, protocol).await;
    client
        .send(json!({ "type": "connection_init", "payload": { "Authorization": "Bearer not-a-jwt" } }))
        .await;
    let (code, reason) = client.closed().await;
    assert_eq!(code, 4401, "{reason}");

    // Subscribing before the connection is acknowledged: 4401.
    let mut client = WsClient::open(address, protocol).await;
    client.subscribe("1", "{ __typename }").await;
    assert_eq!(client.closed().await.0, 4401);

    // Not JSON, or not a message of the protocol: 4400.
    let mut client = WsClient::open(address, protocol).await;
    client.send_text("{ not json").await;
    assert_eq!(client.closed().await.0, 4400);
    let mut client = WsClient::connect(address, None).await;
    client.send(json!({ "type": "start", "id": "1" })).await;
    assert_eq!(client.closed().await.0, 4400);

    // A second connection_init: 4429.
    let mut client = WsClient::connect(address, None).await;
    client.send(json!({ "type": "connection_init" })).await;
    assert_eq!(client.closed().await.0, 4429);

    // An id still in use: 4409.
    let token = app.token(1, false);
    let mut client = WsClient::connect(address, Some(&token)).await;
    client.subscribe("same", EVENTS).await;
    client.subscribe("same", EVENTS).await;
    let (code, reason) = client.closed().await;
    assert_eq!(code, 4409, "{reason}");
    assert_eq!(reason, "Subscriber for same already exists");

    // No connection_init within the timeout (500 ms in tests): 4408.
    let mut client = WsClient::open(address, protocol).await;
    assert_eq!(client.closed().await.0, 4408);

    // A socket that did not offer graphql-transport-ws: 4406.
    let mut client = WsClient::open(address, None).await;
    assert_eq!(client.closed().await.0, 4406);
}

#[tokio::test]
async fn a_connection_ends_when_its_token_expires() {
    let app = TestApp::without_pipeline().await;
    let served = serve(&app.app).await;
    let token = app.app.jwt.issue(1, false, 1).expect("token");
    let mut client = WsClient::connect(served.address, Some(&token)).await;
    client.subscribe("e", EVENTS).await;
    subscribed(&app.app, 1).await;
    let (code, reason) = client.closed().await;
    assert_eq!(code, 4401, "{reason}");
    assert!(reason.contains("expired"), "{reason}");
    subscribed(&app.app, 0).await;
}

#[tokio::test]
async fn a_stopping_instance_sends_its_subscribers_elsewhere() {
    let app = TestApp::without_pipeline().await;
    let served = serve(&app.app).await;
    let mut client = WsClient::connect(served.address, Some(&app.token(1, false))).await;
    client.subscribe("e", EVENTS).await;
    subscribed(&app.app, 1).await;
    app.app.closing.send_replace(true);
    let (code, _) = client.closed().await;
    assert_eq!(
        code, 1001,
        "going away: clients reconnect to another instance"
    );
    subscribed(&app.app, 0).await;
}
