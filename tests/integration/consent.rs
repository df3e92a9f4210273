//! Who may follow whom (issue 15), black-box through HTTP with bearer tokens: blocks, removing a
//! follower, private accounts and their follow requests, the events these tell (and do not tell),
//! what a private account's lists show to whom, the follow-write quota, and a block seen from a second
//! instance. The races are in `consent_races`.

use std::time::Duration;

use serde_json::{Value, json};

use follow_service::app::App;

use axum::http::StatusCode;

use crate::support::{
    Options, Served, TestApp, eventually, fail_on, ok_on, post, serve, ws::WsClient,
};

// ---------------------------------------------------------------------------------------------------
// Helpers (also used by `consent_races`).

/// A user's bearer token (not an admin's); `None`: anonymous.
fn bearer(app: &TestApp, viewer: Option<i64>) -> Option<String> {
    viewer.map(|id| app.token(id, false))
}

/// An operation as `viewer` (None: anonymous) on the main instance that must succeed; its `data`.
pub(crate) async fn data(
    app: &TestApp,
    viewer: Option<i64>,
    query: &str,
    variables: Value,
) -> Value {
    ok_on(&app.app, bearer(app, viewer).as_deref(), query, variables).await
}

/// An operation as `viewer` on the main instance that must fail; its first error's code and message.
pub(crate) async fn error(
    app: &TestApp,
    viewer: Option<i64>,
    query: &str,
    variables: Value,
) -> (String, String) {
    fail_on(&app.app, bearer(app, viewer).as_deref(), query, variables).await
}

/// The text of `mutation(userId: $u)` with the payload fields a test reads.
pub(crate) fn mutation_text(mutation: &str) -> String {
    let selection = match mutation {
        "follow" | "unfollow" => "following requested changed",
        "block" | "unblock" => "blocking changed",
        _ => "followedBy changed",
    };
    format!("mutation($u: ID!) {{ {mutation}(userId: $u) {{ {selection} }} }}")
}

/// `viewer` runs `mutation(userId: user)` (follow, unfollow, block, unblock, removeFollower,
/// approveFollowRequest, rejectFollowRequest), which must succeed; returns its payload.
pub(crate) async fn act(app: &TestApp, viewer: i64, mutation: &str, user: i64) -> Value {
    data(
        app,
        Some(viewer),
        &mutation_text(mutation),
        json!({ "u": user.to_string() }),
    )
    .await[mutation]
        .clone()
}

/// The same mutation, which must fail: the error's code and message.
pub(crate) async fn refused(
    app: &TestApp,
    viewer: i64,
    mutation: &str,
    user: i64,
) -> (String, String) {
    error(
        app,
        Some(viewer),
        &mutation_text(mutation),
        json!({ "u": user.to_string() }),
    )
    .await
}

/// Makes `id` private (`Some(true)`), public (`Some(false)`) or leaves it (`None`) through upsertUser
/// with an admin token, as the user service would; returns the record's `isPrivate`.
pub(crate) async fn set_private(app: &TestApp, id: i64, private: Option<bool>) -> Value {
    let admin = app.token(id, true);
    let data = ok_on(
        &app.app,
        Some(&admin),
        "mutation($id: ID!, $h: String!, $p: Boolean) { upsertUser(input: { id: $id, handle: $h, isPrivate: $p }) { id isPrivate } }",
        json!({ "id": id.to_string(), "h": format!("u{id}"), "p": private }),
    )
    .await;
    assert_eq!(data["upsertUser"]["id"], id.to_string(), "{data}");
    data["upsertUser"]["isPrivate"].clone()
}

/// Whether `follower → followee` is an edge, in PostgreSQL.
pub(crate) async fn edge(app: &TestApp, follower: i64, followee: i64) -> bool {
    app.count(&format!(
        "SELECT count(*) FROM follows WHERE follower_id = {follower} AND followee_id = {followee}"
    ))
    .await
        == 1
}

/// Whether `requester`'s request to follow `target` is pending, in PostgreSQL.
pub(crate) async fn request(app: &TestApp, requester: i64, target: i64) -> bool {
    app.count(&format!(
        "SELECT count(*) FROM follow_requests WHERE requester_id = {requester} AND target_id = {target}"
    ))
    .await
        == 1
}

/// Whether `blocker` blocks `blocked`, in PostgreSQL.
pub(crate) async fn block_stands(app: &TestApp, blocker: i64, blocked: i64) -> bool {
    app.count(&format!(
        "SELECT count(*) FROM blocks WHERE blocker_id = {blocker} AND blocked_id = {blocked}"
    ))
    .await
        == 1
}

/// `user(id)`'s counts as the API shows them to anyone.
pub(crate) async fn counts(app: &TestApp, id: i64) -> Value {
    data(
        app,
        None,
        "query($id: ID!) { user(id: $id) { followerCount followingCount } }",
        json!({ "id": id.to_string() }),
    )
    .await["user"]
        .clone()
}

/// Once the outbox is drained: every user's stored counts equal its edges, and each `(id, followers,
/// following)` is what the API answers for that user.
pub(crate) async fn settled(app: &TestApp, expected: &[(i64, i64, i64)]) {
    app.drained().await;
    app.assert_counts_exact().await;
    for &(id, followers, following) in expected {
        assert_eq!(
            counts(app, id).await,
            json!({ "followerCount": followers, "followingCount": following }),
            "user {id}"
        );
    }
}

const EVENTS: &str = "subscription { followEvents { kind follower { id } followee { id } } }";

/// An event as `next_event` returns it.
fn event(kind: &str, follower: i64, followee: i64) -> Value {
    json!({ "kind": kind, "follower": { "id": follower.to_string() }, "followee": { "id": followee.to_string() } })
}

/// An app whose relay waits a minute: the events a test awaits must be published by the write itself.
async fn without_relay() -> TestApp {
    TestApp::with_options(Options {
        relay_after: Duration::from_secs(60),
        ..Options::default()
    })
    .await
}

/// Subscribes `user` to its follow events on `served` (an instance of `app`); returns once `app` has
/// `open` subscriptions.
async fn listen(app: &TestApp, served: &Served, user: i64, open: usize) -> WsClient {
    let mut client = WsClient::connect(served.address, Some(&app.token(user, false))).await;
    client.subscribe("events", EVENTS).await;
    assert!(
        eventually(Duration::from_secs(5), || async {
            app.app.events.subscriber_count() == open
        })
        .await,
        "the subscription of user {user} never registered"
    );
    client
}

/// The next event a subscriber gets.
async fn next_event(client: &mut WsClient) -> Value {
    let message = client.next().await;
    assert_eq!(message["type"], "next", "{message}");
    message["payload"]["data"]["followEvents"].clone()
}

/// The ids of a list of nodes.
fn ids(nodes: &Value) -> Vec<String> {
    nodes
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .map(|n| n["id"].as_str().unwrap_or("?").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn strings(ids: &[i64]) -> Vec<String> {
    ids.iter().map(ToString::to_string).collect()
}

// ---------------------------------------------------------------------------------------------------
// Blocks.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_ends_the_edges_both_ways_and_refuses_follows_until_lifted() {
    let app = TestApp::spawn().await;
    app.create_users(1..=4).await;
    act(&app, 1, "follow", 2).await;
    act(&app, 2, "follow", 1).await;
    act(&app, 3, "follow", 2).await;
    act(&app, 1, "follow", 4).await;

    let blocked = data(
        &app,
        Some(1),
        r#"mutation { block(userId: "2") { changed blocking user { id blocking viewerIsFollowing followsViewer } viewer { followerCount followingCount } } }"#,
        json!({}),
    )
    .await;
    assert_eq!(
        blocked["block"],
        json!({ "changed": true, "blocking": true,
                "user": { "id": "2", "blocking": true, "viewerIsFollowing": false, "followsViewer": false },
                "viewer": { "followerCount": 0, "followingCount": 1 } }),
        "the payload's counts already leave out both removed edges"
    );
    assert!(!edge(&app, 1, 2).await && !edge(&app, 2, 1).await);
    assert!(block_stands(&app, 1, 2).await);

    // While it stands, neither may follow the other, by follow or followMany.
    for (viewer, user) in [(1, 2), (2, 1)] {
        assert_eq!(
            refused(&app, viewer, "follow", user).await,
            (
                "FORBIDDEN".to_owned(),
                "you cannot follow this user".to_owned()
            ),
            "{viewer} follows {user}"
        );
    }
    let many = "mutation($ids: [ID!]!) { followMany(userIds: $ids) { changed } }";
    for (viewer, others, blocked) in [(1, ["3", "2"], 2), (2, ["4", "1"], 1)] {
        let (code, message) = error(&app, Some(viewer), many, json!({ "ids": others })).await;
        assert_eq!(
            (code.as_str(), message),
            ("FORBIDDEN", format!("you cannot follow user {blocked}"))
        );
    }
    assert!(
        !edge(&app, 1, 3).await && !edge(&app, 2, 4).await,
        "a refused followMany wrote nothing"
    );
    assert!(!edge(&app, 1, 2).await && !edge(&app, 2, 1).await);

    // Blocking twice changes nothing.
    assert_eq!(
        act(&app, 1, "block", 2).await,
        json!({ "blocking": true, "changed": false })
    );

    // Each removal was counted once.
    settled(&app, &[(1, 0, 1), (2, 1, 0)]).await;

    // Lifting it: once, then nothing; the ended follows stay ended, new ones are allowed.
    assert_eq!(
        act(&app, 1, "unblock", 2).await,
        json!({ "blocking": false, "changed": true })
    );
    assert_eq!(
        act(&app, 1, "unblock", 2).await,
        json!({ "blocking": false, "changed": false })
    );
    assert!(!block_stands(&app, 1, 2).await);
    let seen = data(
        &app,
        Some(1),
        r#"{ user(id: "2") { blocking viewerIsFollowing followsViewer } }"#,
        json!({}),
    )
    .await;
    assert_eq!(
        seen["user"],
        json!({ "blocking": false, "viewerIsFollowing": false, "followsViewer": false })
    );
    for (viewer, user) in [(2, 1), (1, 2)] {
        assert_eq!(
            act(&app, viewer, "follow", user).await,
            json!({ "following": true, "requested": false, "changed": true })
        );
    }
    settled(&app, &[(2, 2, 1)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_ends_pending_requests_both_ways() {
    let app = TestApp::spawn().await;
    app.create_users(1..=3).await;
    set_private(&app, 1, Some(true)).await;
    set_private(&app, 3, Some(true)).await;
    // 2 asks private 1; 1 asks private 3.
    assert_eq!(
        act(&app, 2, "follow", 1).await,
        json!({ "following": false, "requested": true, "changed": true })
    );
    assert_eq!(act(&app, 1, "follow", 3).await["requested"], true);

    // 1 blocks the user who asked it, and the user it asked.
    assert_eq!(act(&app, 1, "block", 2).await["changed"], true);
    assert_eq!(act(&app, 1, "block", 3).await["changed"], true);
    assert!(!request(&app, 2, 1).await && !request(&app, 1, 3).await);

    let mine = "{ followRequests { totalCount nodes { id } } }";
    for owner in [1, 3] {
        assert_eq!(
            data(&app, Some(owner), mine, json!({})).await["followRequests"],
            json!({ "totalCount": 0, "nodes": [] }),
            "requests pending to {owner}"
        );
    }
    let asked = data(
        &app,
        Some(2),
        r#"{ user(id: "1") { viewerHasRequested } }"#,
        json!({}),
    )
    .await;
    assert_eq!(asked["user"]["viewerHasRequested"], false);

    // The requests are gone, not hidden: approving them now makes no edge.
    assert_eq!(
        act(&app, 1, "approveFollowRequest", 2).await,
        json!({ "followedBy": false, "changed": false })
    );
    assert_eq!(
        act(&app, 3, "approveFollowRequest", 1).await,
        json!({ "followedBy": false, "changed": false })
    );
    assert!(!edge(&app, 2, 1).await && !edge(&app, 1, 3).await);
    // Nor may they ask again while it stands.
    assert_eq!(refused(&app, 2, "follow", 1).await.0, "FORBIDDEN");
    assert_eq!(refused(&app, 3, "follow", 1).await.0, "FORBIDDEN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_lists_whom_the_viewer_blocks_newest_first_in_pages() {
    let app = TestApp::spawn().await;
    app.create_users(1..=7).await;
    for user in 2..=6 {
        act(&app, 1, "block", user).await;
    }
    act(&app, 7, "block", 1).await;

    let query = "query($first: Int, $after: String) { blocking(first: $first, after: $after) { totalCount nodes { id } edges { cursor blockedAt node { id } } pageInfo { hasNextPage endCursor } } }";
    let mut after = Value::Null;
    let mut pages = Vec::new();
    let mut times = Vec::new();
    loop {
        let page =
            data(&app, Some(1), query, json!({ "first": 2, "after": after })).await["blocking"]
                .clone();
        assert_eq!(page["totalCount"], 5, "{page:#}");
        let edge_ids: Vec<String> = page["edges"]
            .as_array()
            .expect("edges")
            .iter()
            .map(|e| e["node"]["id"].as_str().unwrap_or("?").to_owned())
            .collect();
        assert_eq!(edge_ids, ids(&page["nodes"]), "edges and nodes agree");
        for edge in page["edges"].as_array().expect("edges") {
            let at = edge["blockedAt"].as_str().expect("blockedAt");
            times.push(chrono::DateTime::parse_from_rfc3339(at).expect("RFC 3339"));
        }
        pages.push(ids(&page["nodes"]));
        if page["pageInfo"]["hasNextPage"] == false {
            break;
        }
        after = page["pageInfo"]["endCursor"].clone();
        assert!(pages.len() < 5, "pagination never ends: {pages:?}");
    }
    assert_eq!(
        pages,
        [strings(&[6, 5]), strings(&[4, 3]), strings(&[2])],
        "newest first, in pages of two"
    );
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "blockedAt descends: {times:?}"
    );

    // The default page; and a lifted block leaves the list.
    act(&app, 1, "unblock", 4).await;
    let all = data(
        &app,
        Some(1),
        "{ blocking { totalCount nodes { id } } }",
        json!({}),
    )
    .await;
    assert_eq!(
        all["blocking"],
        json!({ "totalCount": 4, "nodes": [{ "id": "6" }, { "id": "5" }, { "id": "3" }, { "id": "2" }] })
    );
    // Each viewer sees its own blocks only: 7's is 1; 2 does not learn it is blocked.
    let theirs = "{ blocking { totalCount nodes { id } } }";
    assert_eq!(
        data(&app, Some(7), theirs, json!({})).await["blocking"],
        json!({ "totalCount": 1, "nodes": [{ "id": "1" }] })
    );
    assert_eq!(
        data(&app, Some(2), theirs, json!({})).await["blocking"],
        json!({ "totalCount": 0, "nodes": [] })
    );
    // Without a viewer there is no list; a page is 1 to 100.
    assert_eq!(
        error(&app, None, theirs, json!({})).await.0,
        "UNAUTHENTICATED"
    );
    for first in [0, 101] {
        let (code, message) = error(&app, Some(1), query, json!({ "first": first })).await;
        assert_eq!(code, "BAD_USER_INPUT", "first: {first}: {message}");
    }
}

/// The viewer's own lists asked under many aliases (the fuzzer's alias floods) are one read per
/// distinct page and one per count in a request, not one each per occurrence (250 aliases took the
/// server 10 times what other list fields take: 500 statements, each prepared anew); and they are
/// read again by the next request, never cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_viewers_lists_under_many_aliases_are_read_once_per_request() {
    // No consumer nor relay: their statements would count with the request's.
    let app = TestApp::without_pipeline().await;
    app.create_users(1..=5).await;
    assert_eq!(set_private(&app, 1, Some(true)).await, true);
    act(&app, 1, "block", 2).await;
    act(&app, 1, "block", 3).await;
    act(&app, 4, "follow", 1).await;
    act(&app, 5, "follow", 1).await;

    let aliases = 60;
    let mut query = String::from("{ ");
    for i in 0..aliases {
        query.push_str(&format!(
            "b{i}: blocking {{ totalCount nodes {{ id }} }} r{i}: followRequests(first: null, after: null) {{ totalCount nodes {{ id }} }} "
        ));
    }
    query.push_str("one: blocking(first: 1) { nodes { id } pageInfo { hasNextPage } } }");
    let read = async || {
        let before = app.app.queries.get();
        let data = data(&app, Some(1), &query, json!({})).await;
        (data, app.app.queries.get() - before)
    };

    let (first, spent) = read().await;
    // Three pages (blocking twice, requests once) and two counts; the nodes' records, until cached, one
    // or two more. One read per occurrence would be 241.
    assert!(
        spent <= 8,
        "{spent} statements for {aliases} aliases of each list"
    );
    for i in 0..aliases {
        assert_eq!(
            first[format!("b{i}")],
            json!({ "totalCount": 2, "nodes": [{ "id": "3" }, { "id": "2" }] }),
            "alias b{i}"
        );
        assert_eq!(
            first[format!("r{i}")],
            json!({ "totalCount": 2, "nodes": [{ "id": "5" }, { "id": "4" }] }),
            "alias r{i}"
        );
    }
    assert_eq!(
        first["one"],
        json!({ "nodes": [{ "id": "3" }], "pageInfo": { "hasNextPage": true } })
    );

    // The next request reads the lists again: consent data is never served from an earlier read.
    act(&app, 1, "unblock", 3).await;
    act(&app, 1, "approveFollowRequest", 5).await;
    let (second, spent) = read().await;
    assert!(
        spent <= 8,
        "{spent} statements for {aliases} aliases of each list"
    );
    for i in 0..aliases {
        assert_eq!(
            second[format!("b{i}")],
            json!({ "totalCount": 1, "nodes": [{ "id": "2" }] }),
            "alias b{i}"
        );
        assert_eq!(
            second[format!("r{i}")],
            json!({ "totalCount": 1, "nodes": [{ "id": "4" }] }),
            "alias r{i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_blocked_user_is_not_told() {
    let app = without_relay().await;
    app.create_users(1..=4).await;
    let served = serve(&app.app).await;
    let mut blocker = listen(&app, &served, 1, 1).await;
    let mut blocked = listen(&app, &served, 2, 2).await;
    act(&app, 1, "follow", 2).await;
    assert_eq!(next_event(&mut blocked).await, event("FOLLOW", 1, 2));
    act(&app, 2, "follow", 1).await;
    assert_eq!(next_event(&mut blocker).await, event("FOLLOW", 2, 1));

    // The block removes both edges and tells nobody: each next event is a later, unrelated follow.
    assert_eq!(act(&app, 1, "block", 2).await["changed"], true);
    act(&app, 3, "follow", 2).await;
    act(&app, 4, "follow", 1).await;
    assert_eq!(next_event(&mut blocked).await, event("FOLLOW", 3, 2));
    assert_eq!(next_event(&mut blocker).await, event("FOLLOW", 4, 1));

    // What the blocked user can read says nothing of the block.
    let by_blocked = data(
        &app,
        Some(2),
        r#"{ user(id: "1") { blocking viewerIsFollowing followsViewer }
             mine: relationships(userId: "2", otherIds: ["1"]) { following followedBy blocking }
             theirs: relationships(userId: "1", otherIds: ["2"]) { following followedBy blocking }
             blocking { totalCount } }"#,
        json!({}),
    )
    .await;
    assert_eq!(
        by_blocked,
        json!({ "user": { "blocking": false, "viewerIsFollowing": false, "followsViewer": false },
                "mine": [{ "following": false, "followedBy": false, "blocking": false }],
                "theirs": [{ "following": false, "followedBy": false, "blocking": null }],
                "blocking": { "totalCount": 0 } })
    );
    // The blocker sees its own block, as Relationship.blocking and User.blocking.
    let by_blocker = data(
        &app,
        Some(1),
        r#"{ user(id: "2") { blocking } relationships(userId: "1", otherIds: ["2", "3"]) { otherId blocking } }"#,
        json!({}),
    )
    .await;
    assert_eq!(
        by_blocker,
        json!({ "user": { "blocking": true },
                "relationships": [{ "otherId": "2", "blocking": true }, { "otherId": "3", "blocking": false }] })
    );
    // Others, and anonymous readers, see no block at all.
    let query = r#"{ user(id: "2") { blocking } relationships(userId: "1", otherIds: ["2"]) { blocking } }"#;
    for viewer in [Some(3), None] {
        assert_eq!(
            data(&app, viewer, query, json!({})).await,
            json!({ "user": { "blocking": false }, "relationships": [{ "blocking": null }] }),
            "viewer {viewer:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_mutations_refuse_oneself_unknown_users_and_anonymous_callers() {
    let app = TestApp::spawn().await;
    app.create_users(1..=2).await;
    let (code, _) = refused(&app, 1, "block", 1).await;
    assert_eq!(code, "BAD_USER_INPUT", "blocking oneself");
    let (code, message) = refused(&app, 1, "block", 999).await;
    assert_eq!(code, "NOT_FOUND", "{message}");
    assert!(message.contains("999"), "{message}");
    assert_eq!(
        app.count("SELECT count(*) FROM blocks").await,
        0,
        "nothing written"
    );

    for mutation in [
        "block",
        "unblock",
        "removeFollower",
        "approveFollowRequest",
        "rejectFollowRequest",
    ] {
        let (code, _) = error(&app, None, &mutation_text(mutation), json!({ "u": "2" })).await;
        assert_eq!(code, "UNAUTHENTICATED", "{mutation} without a token");
    }
    for query in [
        "{ blocking { totalCount } }",
        "{ followRequests { totalCount } }",
    ] {
        assert_eq!(
            error(&app, None, query, json!({})).await.0,
            "UNAUTHENTICATED"
        );
    }
}

// ---------------------------------------------------------------------------------------------------
// Removing a follower.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_follower_drops_its_edge_silently_and_it_may_follow_again() {
    let app = without_relay().await;
    app.create_users(1..=5).await;
    let served = serve(&app.app).await;
    let mut owner = listen(&app, &served, 1, 1).await;
    let mut removed = listen(&app, &served, 2, 2).await;
    act(&app, 2, "follow", 1).await;
    assert_eq!(next_event(&mut owner).await, event("FOLLOW", 2, 1));
    act(&app, 3, "follow", 1).await;
    assert_eq!(next_event(&mut owner).await, event("FOLLOW", 3, 1));
    act(&app, 1, "follow", 2).await;
    assert_eq!(next_event(&mut removed).await, event("FOLLOW", 1, 2));

    let payload = data(
        &app,
        Some(1),
        r#"mutation { removeFollower(userId: "2") { changed followedBy user { id viewerIsFollowing followsViewer followingCount } viewer { followerCount followingCount } } }"#,
        json!({}),
    )
    .await;
    assert_eq!(
        payload["removeFollower"],
        json!({ "changed": true, "followedBy": false,
                "user": { "id": "2", "viewerIsFollowing": true, "followsViewer": false, "followingCount": 0 },
                "viewer": { "followerCount": 1, "followingCount": 1 } })
    );
    assert!(
        !edge(&app, 2, 1).await && edge(&app, 1, 2).await,
        "only follower → viewer goes"
    );

    // Nobody is told: each next event is a later, unrelated follow.
    act(&app, 4, "follow", 1).await;
    act(&app, 4, "follow", 2).await;
    assert_eq!(next_event(&mut owner).await, event("FOLLOW", 4, 1));
    assert_eq!(next_event(&mut removed).await, event("FOLLOW", 4, 2));

    // Removing again, or removing a user who never followed: nothing changes.
    for user in [2, 5] {
        assert_eq!(
            act(&app, 1, "removeFollower", user).await,
            json!({ "followedBy": false, "changed": false }),
            "removing {user}"
        );
    }
    // No block: the removed user may follow again.
    assert_eq!(
        act(&app, 2, "follow", 1).await,
        json!({ "following": true, "requested": false, "changed": true })
    );
    assert_eq!(next_event(&mut owner).await, event("FOLLOW", 2, 1));

    settled(&app, &[(1, 3, 1), (2, 2, 1)]).await;
}

// ---------------------------------------------------------------------------------------------------
// Private accounts and follow requests.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn following_a_private_account_asks_it_first() {
    let app = TestApp::spawn().await;
    app.create_users(1..=5).await;
    assert_eq!(set_private(&app, 1, Some(true)).await, true);
    assert_eq!(
        data(
            &app,
            None,
            r#"{ user(id: "1") { isPrivate } u2: user(id: "2") { isPrivate } }"#,
            json!({})
        )
        .await,
        json!({ "user": { "isPrivate": true }, "u2": { "isPrivate": false } })
    );

    // A user may also be created private.
    assert_eq!(set_private(&app, 9, Some(true)).await, true);
    assert_eq!(
        act(&app, 5, "follow", 9).await,
        json!({ "following": false, "requested": true, "changed": true })
    );

    assert_eq!(
        act(&app, 2, "follow", 1).await,
        json!({ "following": false, "requested": true, "changed": true })
    );
    assert_eq!(
        act(&app, 2, "follow", 1).await,
        json!({ "following": false, "requested": true, "changed": false }),
        "asking twice changes nothing"
    );
    act(&app, 3, "follow", 1).await;
    act(&app, 4, "follow", 1).await;
    assert!(!edge(&app, 2, 1).await && request(&app, 2, 1).await);

    // The requester sees its request; it does not follow yet.
    let requester = data(
        &app,
        Some(2),
        r#"{ user(id: "1") { viewerHasRequested viewerIsFollowing }
             isFollowing(followerId: "2", followeeId: "1")
             mine: relationships(userId: "2", otherIds: ["1"]) { following requested requestedBy }
             theirs: relationships(userId: "1", otherIds: ["2"]) { followedBy requested requestedBy } }"#,
        json!({}),
    )
    .await;
    assert_eq!(
        requester,
        json!({ "user": { "viewerHasRequested": true, "viewerIsFollowing": false },
                "isFollowing": false,
                "mine": [{ "following": false, "requested": true, "requestedBy": false }],
                "theirs": [{ "followedBy": false, "requested": false, "requestedBy": true }] })
    );
    // So does the owner.
    let owner = data(
        &app,
        Some(1),
        r#"{ relationships(userId: "1", otherIds: ["2", "5"]) { otherId followedBy requested requestedBy } }"#,
        json!({}),
    )
    .await;
    assert_eq!(
        owner["relationships"],
        json!([{ "otherId": "2", "followedBy": false, "requested": false, "requestedBy": true },
               { "otherId": "5", "followedBy": false, "requested": false, "requestedBy": false }])
    );
    // Nobody else does.
    let outsider = r#"{ user(id: "1") { viewerHasRequested }
                        a: relationships(userId: "1", otherIds: ["2"]) { requested requestedBy }
                        b: relationships(userId: "2", otherIds: ["1"]) { requested requestedBy } }"#;
    for viewer in [Some(5), None] {
        assert_eq!(
            data(&app, viewer, outsider, json!({})).await,
            json!({ "user": { "viewerHasRequested": false },
                    "a": [{ "requested": null, "requestedBy": null }],
                    "b": [{ "requested": null, "requestedBy": null }] }),
            "viewer {viewer:?}"
        );
    }

    // The owner's requests: newest first, in pages, with their count.
    let query = "query($after: String) { followRequests(first: 2, after: $after) { totalCount nodes { id } edges { cursor requestedAt node { id } } pageInfo { hasNextPage endCursor } } }";
    let first =
        data(&app, Some(1), query, json!({ "after": null })).await["followRequests"].clone();
    assert_eq!(first["totalCount"], 3);
    assert_eq!(ids(&first["nodes"]), strings(&[4, 3]));
    assert_eq!(first["pageInfo"]["hasNextPage"], true);
    let at = |edge: &Value| {
        chrono::DateTime::parse_from_rfc3339(edge["requestedAt"].as_str().expect("requestedAt"))
            .expect("RFC 3339")
    };
    assert!(at(&first["edges"][0]) >= at(&first["edges"][1]));
    let second = data(
        &app,
        Some(1),
        query,
        json!({ "after": first["pageInfo"]["endCursor"] }),
    )
    .await["followRequests"]
        .clone();
    assert_eq!(second["totalCount"], 3);
    assert_eq!(ids(&second["nodes"]), strings(&[2]));
    assert_eq!(second["pageInfo"]["hasNextPage"], false);
    for first in [0, 101] {
        let (code, _) = error(
            &app,
            Some(1),
            "query($first: Int) { followRequests(first: $first) { totalCount } }",
            json!({ "first": first }),
        )
        .await;
        assert_eq!(code, "BAD_USER_INPUT", "first: {first}");
    }
    // A requester has no requests of its own to answer.
    assert_eq!(
        data(
            &app,
            Some(2),
            "{ followRequests { totalCount nodes { id } } }",
            json!({})
        )
        .await["followRequests"],
        json!({ "totalCount": 0, "nodes": [] })
    );

    app.drained().await;
    app.assert_counts_exact().await;
    assert_eq!(
        counts(&app, 1).await,
        json!({ "followerCount": 0, "followingCount": 0 }),
        "a request is no follower"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_makes_the_edge_and_tells_only_the_requester() {
    let app = without_relay().await;
    app.create_users(1..=3).await;
    set_private(&app, 1, Some(true)).await;
    let served = serve(&app.app).await;
    let mut owner = listen(&app, &served, 1, 1).await;
    let mut requester = listen(&app, &served, 2, 2).await;

    act(&app, 2, "follow", 1).await;
    assert_eq!(
        next_event(&mut owner).await,
        event("FOLLOW_REQUESTED", 2, 1),
        "the owner is told of the request"
    );

    let approved = data(
        &app,
        Some(1),
        r#"mutation { approveFollowRequest(userId: "2") { changed followedBy user { id followsViewer } viewer { followerCount } } }"#,
        json!({}),
    )
    .await;
    assert_eq!(
        approved["approveFollowRequest"],
        json!({ "changed": true, "followedBy": true,
                "user": { "id": "2", "followsViewer": true }, "viewer": { "followerCount": 1 } })
    );
    assert_eq!(
        next_event(&mut requester).await,
        event("FOLLOW_REQUEST_APPROVED", 2, 1),
        "the requester is told: follower = requester, followee = owner"
    );
    // The owner is not told of its own approval: its next event is a later request.
    act(&app, 3, "follow", 1).await;
    assert_eq!(
        next_event(&mut owner).await,
        event("FOLLOW_REQUESTED", 3, 1)
    );

    assert_eq!(
        act(&app, 1, "approveFollowRequest", 2).await,
        json!({ "followedBy": true, "changed": false }),
        "approving twice changes nothing"
    );
    assert!(edge(&app, 2, 1).await && !request(&app, 2, 1).await);
    let seen = data(
        &app,
        Some(2),
        r#"{ user(id: "1") { viewerIsFollowing viewerHasRequested } isFollowing(followerId: "2", followeeId: "1") }"#,
        json!({}),
    )
    .await;
    assert_eq!(
        seen,
        json!({ "user": { "viewerIsFollowing": true, "viewerHasRequested": false }, "isFollowing": true })
    );
    assert_eq!(
        data(
            &app,
            Some(1),
            "{ followRequests { totalCount nodes { id } } }",
            json!({})
        )
        .await["followRequests"],
        json!({ "totalCount": 1, "nodes": [{ "id": "3" }] })
    );
    app.drained().await;
    app.assert_counts_exact().await;
    assert_eq!(counts(&app, 1).await["followerCount"], 1);
    assert_eq!(counts(&app, 2).await["followingCount"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_tells_nobody_and_the_requester_may_ask_again() {
    let app = without_relay().await;
    app.create_users(1..=3).await;
    set_private(&app, 1, Some(true)).await;
    let served = serve(&app.app).await;
    let mut owner = listen(&app, &served, 1, 1).await;
    let mut requester = listen(&app, &served, 2, 2).await;
    act(&app, 2, "follow", 1).await;
    assert_eq!(
        next_event(&mut owner).await,
        event("FOLLOW_REQUESTED", 2, 1)
    );

    assert_eq!(
        act(&app, 1, "rejectFollowRequest", 2).await,
        json!({ "followedBy": false, "changed": true })
    );
    assert_eq!(
        act(&app, 1, "rejectFollowRequest", 2).await,
        json!({ "followedBy": false, "changed": false })
    );
    assert!(!request(&app, 2, 1).await && !edge(&app, 2, 1).await);
    let seen = data(
        &app,
        Some(2),
        r#"{ user(id: "1") { viewerHasRequested viewerIsFollowing } }"#,
        json!({}),
    )
    .await;
    assert_eq!(
        seen["user"],
        json!({ "viewerHasRequested": false, "viewerIsFollowing": false })
    );
    assert_eq!(
        data(
            &app,
            Some(1),
            "{ followRequests { totalCount } }",
            json!({})
        )
        .await["followRequests"]["totalCount"],
        0
    );
    // The requester was not told: its next event is a later follow of it.
    act(&app, 3, "follow", 2).await;
    assert_eq!(next_event(&mut requester).await, event("FOLLOW", 3, 2));

    // It may ask again, and the owner hears of it again.
    assert_eq!(
        act(&app, 2, "follow", 1).await,
        json!({ "following": false, "requested": true, "changed": true })
    );
    assert_eq!(
        next_event(&mut owner).await,
        event("FOLLOW_REQUESTED", 2, 1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfollow_cancels_a_request_and_a_later_approval_does_nothing() {
    let app = TestApp::spawn().await;
    app.create_users(1..=2).await;
    set_private(&app, 1, Some(true)).await;
    act(&app, 2, "follow", 1).await;
    assert_eq!(
        act(&app, 2, "unfollow", 1).await,
        json!({ "following": false, "requested": false, "changed": true }),
        "the unfollow withdrew the request"
    );
    assert_eq!(
        act(&app, 2, "unfollow", 1).await,
        json!({ "following": false, "requested": false, "changed": false })
    );
    assert_eq!(
        act(&app, 1, "approveFollowRequest", 2).await,
        json!({ "followedBy": false, "changed": false }),
        "nothing left to approve"
    );
    assert!(!edge(&app, 2, 1).await && !request(&app, 2, 1).await);
    assert_eq!(
        data(
            &app,
            Some(1),
            "{ followRequests { totalCount } }",
            json!({})
        )
        .await["followRequests"]["totalCount"],
        0
    );
    app.drained().await;
    app.assert_counts_exact().await;
    assert_eq!(counts(&app, 1).await["followerCount"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_accounts_lists_show_only_to_itself_and_its_followers() {
    let app = TestApp::spawn().await;
    app.create_users(1..=7).await;
    // 2 and 3 follow 1; 1 follows 4 and 5; 2 and 6 follow 3 (a follower of 1).
    for (a, b) in [(2, 1), (3, 1), (1, 4), (1, 5), (2, 3), (6, 3)] {
        act(&app, a, "follow", b).await;
    }
    set_private(&app, 1, Some(true)).await;
    act(&app, 7, "follow", 1).await; // a request, not a follow
    app.drained().await;

    let lists = r#"{ user(id: "1") {
        followers(first: 10) { totalCount nodes { id } edges { node { id } } }
        following(first: 10) { totalCount nodes { id } edges { node { id } } }
        knownFollowers { totalCount nodes { id } edges { node { id } } } } }"#;
    let list = |nodes: &[i64], total: i64| {
        let nodes: Vec<Value> = nodes
            .iter()
            .map(|id| json!({ "id": id.to_string() }))
            .collect();
        let edges: Vec<Value> = nodes.iter().map(|n| json!({ "node": n })).collect();
        json!({ "totalCount": total, "nodes": nodes, "edges": edges })
    };
    // The owner and its followers see the lists.
    assert_eq!(
        data(&app, Some(1), lists, json!({})).await["user"],
        json!({ "followers": list(&[3, 2], 2), "following": list(&[5, 4], 2), "knownFollowers": list(&[], 0) })
    );
    assert_eq!(
        data(&app, Some(2), lists, json!({})).await["user"],
        json!({ "followers": list(&[3, 2], 2), "following": list(&[5, 4], 2), "knownFollowers": list(&[3], 1) })
    );
    // Others (one who follows a follower, a requester) and anonymous readers see no entries, but the
    // counts; and no known followers at all.
    let hidden = json!({ "followers": list(&[], 2), "following": list(&[], 2), "knownFollowers": list(&[], 0) });
    for viewer in [Some(6), Some(7), None] {
        assert_eq!(
            data(&app, viewer, lists, json!({})).await["user"],
            hidden,
            "viewer {viewer:?}"
        );
    }

    // A removed follower loses the view.
    act(&app, 1, "removeFollower", 2).await;
    app.drained().await;
    let after_removal = data(&app, Some(2), lists, json!({})).await["user"].clone();
    assert_eq!(
        after_removal,
        json!({ "followers": list(&[], 1), "following": list(&[], 2), "knownFollowers": list(&[], 0) })
    );
    // It may ask again: a private account gets a request.
    assert_eq!(
        act(&app, 2, "follow", 1).await,
        json!({ "following": false, "requested": true, "changed": true })
    );

    // Public again: the requests of 2 and 7 are approved, and everyone sees the lists.
    set_private(&app, 1, Some(false)).await;
    app.drained().await;
    let public = json!({ "followers": list(&[2, 3, 7], 3), "following": list(&[5, 4], 2), "knownFollowers": list(&[3], 1) });
    let seen_by_6 = || async {
        let mut user = data(&app, Some(6), lists, json!({})).await["user"].clone();
        // The two approved at once may come in either order: compare the followers as a set.
        for part in ["nodes", "edges"] {
            if let Some(list) = user["followers"][part].as_array_mut() {
                list.sort_by_key(|entry| entry.to_string());
            }
        }
        user
    };
    let shown = eventually(Duration::from_secs(2), || async {
        seen_by_6().await == public
    })
    .await;
    assert!(shown, "{:#}", seen_by_6().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn making_an_account_public_approves_its_pending_requests() {
    let app = without_relay().await;
    app.create_users(1..=6).await;
    set_private(&app, 1, Some(true)).await;
    let served = serve(&app.app).await;
    let mut requester = listen(&app, &served, 3, 1).await;
    for user in [2, 3, 4] {
        assert_eq!(act(&app, user, "follow", 1).await["requested"], true);
    }
    // An upsert that does not mention privacy keeps it.
    assert_eq!(set_private(&app, 1, None).await, true);
    assert_eq!(act(&app, 5, "follow", 1).await["requested"], true);

    assert_eq!(set_private(&app, 1, Some(false)).await, false);
    assert_eq!(
        next_event(&mut requester).await,
        event("FOLLOW_REQUEST_APPROVED", 3, 1)
    );
    assert_eq!(
        app.count("SELECT count(*) FROM follow_requests").await,
        0,
        "no request left"
    );
    for user in [2, 3, 4, 5] {
        assert!(edge(&app, user, 1).await, "{user} follows 1");
    }
    let seen = data(
        &app,
        Some(2),
        r#"{ user(id: "1") { isPrivate viewerIsFollowing viewerHasRequested } }"#,
        json!({}),
    )
    .await;
    assert_eq!(
        seen["user"],
        json!({ "isPrivate": false, "viewerIsFollowing": true, "viewerHasRequested": false })
    );
    assert_eq!(
        data(
            &app,
            Some(1),
            "{ followRequests { totalCount } }",
            json!({})
        )
        .await["followRequests"]["totalCount"],
        0
    );
    // New follows are follows at once.
    assert_eq!(
        act(&app, 6, "follow", 1).await,
        json!({ "following": true, "requested": false, "changed": true })
    );
    app.drained().await;
    app.assert_counts_exact().await;
    assert_eq!(counts(&app, 1).await["followerCount"], 5);
}

// ---------------------------------------------------------------------------------------------------
// Rate limits.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_removals_and_answers_to_requests_spend_the_follow_write_quota() {
    let app = TestApp::with_options(Options {
        env: vec![
            ("FOLLOW_RATE_FOLLOWS_PER_MINUTE", "2".to_owned()),
            ("FOLLOW_RATE_FOLLOWS_PER_DAY", "400".to_owned()),
        ],
        ..Options::default()
    })
    .await;
    app.create_users(1..=60).await;
    // Set-up as admins, whom the follow caps do not bind.
    let admin = |id: i64| app.token(id, true);
    let setup = |viewer: i64, mutation: &'static str, user: i64| {
        let token = admin(viewer);
        let app = &app;
        async move {
            ok_on(
                &app.app,
                Some(&token),
                &mutation_text(mutation),
                json!({ "u": user.to_string() }),
            )
            .await;
        }
    };
    setup(20, "block", 21).await;
    setup(20, "block", 22).await;
    setup(31, "follow", 30).await;
    setup(32, "follow", 30).await;
    for owner in [40, 50] {
        set_private(&app, owner, Some(true)).await;
        setup(owner + 1, "follow", owner).await;
        setup(owner + 2, "follow", owner).await;
    }

    // Each viewer: the write once (1 of 2), a follow (2 of 2), the write again: refused, nothing written.
    for (viewer, mutation) in [
        (10, "block"),
        (20, "unblock"),
        (30, "removeFollower"),
        (40, "approveFollowRequest"),
        (50, "rejectFollowRequest"),
    ] {
        let token = app.token(viewer, false);
        let vars = |user: i64| json!({ "u": user.to_string() });
        let text = mutation_text(mutation);
        let first = ok_on(&app.app, Some(&token), &text, vars(viewer + 1)).await;
        assert_eq!(first[mutation]["changed"], true, "{mutation}: {first}");
        ok_on(
            &app.app,
            Some(&token),
            &mutation_text("follow"),
            vars(viewer + 3),
        )
        .await;
        let (status, headers, body) = post(&app.app, Some(&token), &text, vars(viewer + 2)).await;
        assert_eq!(
            status,
            StatusCode::TOO_MANY_REQUESTS,
            "{mutation}: {body:#}"
        );
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "RATE_LIMITED",
            "{mutation}: {body:#}"
        );
        assert!(headers.get("retry-after").is_some(), "{mutation}");
        assert!(
            body["errors"][0]["message"]
                .as_str()
                .is_some_and(|m| m.contains("FOLLOW_RATE_FOLLOWS_PER_MINUTE")),
            "{body:#}"
        );
    }
    assert!(!block_stands(&app, 10, 12).await, "the refused block");
    assert!(block_stands(&app, 20, 22).await, "the refused unblock");
    assert!(edge(&app, 32, 30).await, "the refused removal");
    assert!(
        request(&app, 42, 40).await && !edge(&app, 42, 40).await,
        "the refused approval"
    );
    assert!(request(&app, 52, 50).await, "the refused rejection");
}

// ---------------------------------------------------------------------------------------------------
// Two instances.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_on_one_instance_turns_the_statuses_false_on_the_other() {
    let app = TestApp::spawn().await;
    app.create_users(1..=3).await;
    let b = app.second_instance().await;
    act(&app, 1, "follow", 2).await;
    act(&app, 2, "follow", 1).await;

    let status = "query($a: ID!, $b: ID!) { isFollowing(followerId: $a, followeeId: $b) }";
    let is_following = |on: &App, viewer: Option<i64>, a: i64, c: i64| {
        let token = bearer(&app, viewer);
        let on = on.clone();
        async move {
            ok_on(
                &on,
                token.as_deref(),
                status,
                json!({ "a": a.to_string(), "b": c.to_string() }),
            )
            .await["isFollowing"]
                .clone()
        }
    };
    let own = r#"{ user(id: "2") { viewerIsFollowing followsViewer } }"#;
    // B caches the statuses (L1 and L2).
    for _ in 0..2 {
        assert_eq!(is_following(&b.app, None, 1, 2).await, true);
        assert_eq!(is_following(&b.app, Some(3), 2, 1).await, true);
        assert_eq!(
            ok_on(&b.app, bearer(&app, Some(1)).as_deref(), own, json!({})).await["user"],
            json!({ "viewerIsFollowing": true, "followsViewer": true })
        );
    }

    assert_eq!(act(&app, 1, "block", 2).await["changed"], true);
    // The blocker's own pairs: at once, on A and on B.
    for on in [&app.app, &b.app] {
        assert_eq!(
            ok_on(on, bearer(&app, Some(1)).as_deref(), own, json!({})).await["user"],
            json!({ "viewerIsFollowing": false, "followsViewer": false })
        );
    }
    // Anyone's read on B: as soon as the announcement arrives.
    let converged = eventually(Duration::from_secs(2), || async {
        is_following(&b.app, None, 1, 2).await == false
            && is_following(&b.app, Some(3), 2, 1).await == false
    })
    .await;
    assert!(
        converged,
        "B still says {} and {}",
        is_following(&b.app, None, 1, 2).await,
        is_following(&b.app, Some(3), 2, 1).await
    );
    // The block holds through B too.
    let (code, message) = fail_on(
        &b.app,
        bearer(&app, Some(2)).as_deref(),
        &mutation_text("follow"),
        json!({ "u": "1" }),
    )
    .await;
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("FORBIDDEN", "you cannot follow this user")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_privacy_change_on_one_instance_reaches_the_other() {
    let app = TestApp::spawn().await;
    app.create_users(1..=3).await;
    let b = app.second_instance().await;
    act(&app, 2, "follow", 1).await;
    app.drained().await;
    let profile = r#"{ user(id: "1") { isPrivate followers { totalCount nodes { id } } } }"#;
    // B caches the public profile.
    for _ in 0..2 {
        assert_eq!(
            ok_on(&b.app, None, profile, json!({})).await["user"],
            json!({ "isPrivate": false, "followers": { "totalCount": 1, "nodes": [{ "id": "2" }] } })
        );
    }

    set_private(&app, 1, Some(true)).await;
    // A follow through B asks at once (the store decides), whatever B has cached.
    let asked = ok_on(
        &b.app,
        bearer(&app, Some(3)).as_deref(),
        &mutation_text("follow"),
        json!({ "u": "1" }),
    )
    .await;
    assert_eq!(
        asked["follow"],
        json!({ "following": false, "requested": true, "changed": true })
    );
    // B's readers soon see a private profile whose list is hidden.
    let hidden = json!({ "isPrivate": true, "followers": { "totalCount": 1, "nodes": [] } });
    let converged = eventually(Duration::from_secs(2), || async {
        ok_on(&b.app, None, profile, json!({})).await["user"] == hidden
    })
    .await;
    assert!(
        converged,
        "{:#}",
        ok_on(&b.app, None, profile, json!({})).await
    );
    // The follower still sees it, through B too.
    assert_eq!(
        ok_on(&b.app, bearer(&app, Some(2)).as_deref(), profile, json!({})).await["user"],
        json!({ "isPrivate": true, "followers": { "totalCount": 1, "nodes": [{ "id": "2" }] } })
    );
}
