//! Who may follow whom (issue 15): blocks, removing a follower, private accounts and follow requests.

use serde_json::json;

use crate::support::TestApp;

/// Makes `id` private (or public) through upsertUser, as the user service would.
async fn set_private(app: &TestApp, id: i64, private: bool) {
    let admin = Some(follow_service::auth::Viewer {
        user_id: id,
        is_admin: true,
    });
    let data = crate::support::run_as(
        &app.app,
        admin,
        r#"mutation($id: ID!, $h: String!, $p: Boolean) { upsertUser(input: { id: $id, handle: $h, isPrivate: $p }) { isPrivate } }"#,
        json!({ "id": id.to_string(), "h": format!("u{id}"), "p": private }),
    )
    .await;
    assert_eq!(data["data"]["upsertUser"]["isPrivate"], private, "{data}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_removes_both_edges_and_refuses_follows_both_ways() {
    let app = TestApp::spawn().await;
    app.create_users(1..=3).await;
    app.follow(1, 2).await;
    app.follow(2, 1).await;
    app.follow(3, 2).await;

    let data = app
        .data(
            Some(1),
            r#"mutation { block(userId: "2") { changed blocking user { id blocking viewerIsFollowing followsViewer } viewer { followerCount followingCount } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        data["block"],
        json!({ "changed": true, "blocking": true,
                "user": { "id": "2", "blocking": true, "viewerIsFollowing": false, "followsViewer": false },
                "viewer": { "followerCount": 0, "followingCount": 0 } })
    );
    for (viewer, user) in [(1, 2), (2, 1)] {
        let (code, message) = app
            .error(
                Some(viewer),
                r#"mutation($u: ID!) { follow(userId: $u) { changed } }"#,
                json!({ "u": user.to_string() }),
            )
            .await;
        assert_eq!(
            (code.as_str(), message.as_str()),
            ("FORBIDDEN", "you cannot follow this user")
        );
    }
    // The blocked user is not told: its view of the blocker says nothing of the block.
    let seen = app
        .data(
            Some(2),
            r#"{ user(id: "1") { blocking viewerIsFollowing } relationships(userId: "2", otherIds: ["1"]) { blocking following followedBy } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        seen,
        json!({ "user": { "blocking": false, "viewerIsFollowing": false },
                "relationships": [{ "blocking": false, "following": false, "followedBy": false }] })
    );
    let list = app
        .data(
            Some(1),
            r#"{ blocking { totalCount nodes { id } edges { blockedAt } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(list["blocking"]["totalCount"], 1);
    assert_eq!(list["blocking"]["nodes"], json!([{ "id": "2" }]));

    app.drained().await;
    app.assert_counts_exact().await;
    let counts = app
        .data(
            None,
            r#"{ user(id: "2") { followerCount followingCount followers { totalCount nodes { id } } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        counts["user"],
        json!({ "followerCount": 1, "followingCount": 0, "followers": { "totalCount": 1, "nodes": [{ "id": "3" }] } })
    );

    let lifted = app
        .data(
            Some(1),
            r#"mutation { unblock(userId: "2") { changed blocking } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        lifted["unblock"],
        json!({ "changed": true, "blocking": false })
    );
    assert_eq!(
        app.follow(2, 1).await,
        json!({ "changed": true, "following": true })
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_account_gets_requests_it_approves_or_rejects() {
    let app = TestApp::spawn().await;
    app.create_users(1..=4).await;
    set_private(&app, 1, true).await;

    let asked = app
        .data(
            Some(2),
            r#"mutation { follow(userId: "1") { changed following requested } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        asked["follow"],
        json!({ "changed": true, "following": false, "requested": true })
    );
    app.follow(3, 1).await;
    app.follow(4, 1).await;
    let requests = app
        .data(
            Some(1),
            r#"{ followRequests { totalCount nodes { id viewerHasRequested } } relationships(userId: "1", otherIds: ["2"]) { requested requestedBy } }"#,
            json!({}),
        )
        .await;
    assert_eq!(requests["followRequests"]["totalCount"], 3);
    assert_eq!(
        requests["followRequests"]["nodes"],
        json!([{ "id": "4", "viewerHasRequested": false }, { "id": "3", "viewerHasRequested": false }, { "id": "2", "viewerHasRequested": false }])
    );
    assert_eq!(
        requests["relationships"],
        json!([{ "requested": false, "requestedBy": true }])
    );
    // Others see neither the requests nor the lists, but the counts.
    let outsider = app
        .data(
            Some(4),
            r#"{ relationships(userId: "1", otherIds: ["2"]) { requested } user(id: "1") { isPrivate viewerHasRequested followers { totalCount nodes { id } } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(outsider["relationships"], json!([{ "requested": null }]));
    assert_eq!(
        outsider["user"],
        json!({ "isPrivate": true, "viewerHasRequested": true, "followers": { "totalCount": 0, "nodes": [] } })
    );

    let approved = app
        .data(
            Some(1),
            r#"mutation { approveFollowRequest(userId: "2") { changed followedBy viewer { followerCount } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        approved["approveFollowRequest"],
        json!({ "changed": true, "followedBy": true, "viewer": { "followerCount": 1 } })
    );
    let rejected = app
        .data(
            Some(1),
            r#"mutation { rejectFollowRequest(userId: "3") { changed followedBy } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        rejected["rejectFollowRequest"],
        json!({ "changed": true, "followedBy": false })
    );
    // The requester cancels by unfollowing; an approval after it does nothing.
    assert_eq!(
        app.unfollow(4, 1).await,
        json!({ "changed": true, "following": false })
    );
    let late = app
        .data(
            Some(1),
            r#"mutation { approveFollowRequest(userId: "4") { changed followedBy } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        late["approveFollowRequest"],
        json!({ "changed": false, "followedBy": false })
    );
    // A follower sees the lists.
    let follower = app
        .data(
            Some(2),
            r#"{ user(id: "1") { followers { totalCount nodes { id } } } }"#,
            json!({}),
        )
        .await;
    assert_eq!(
        follower["user"]["followers"],
        json!({ "totalCount": 1, "nodes": [{ "id": "2" }] })
    );
    app.drained().await;
    app.assert_counts_exact().await;
}
