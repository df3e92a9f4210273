// The operations this client sends. Each graphql(`...`) call is read by GraphQL Code Generator
// (`npm run codegen`), validated against ../../schema.graphql, and returns a TypedDocumentNode whose
// result and variables types come from the schema. Change an operation, then run codegen again.
import { graphql } from './gql/index.js';

/**
 * The viewer follows userId. For a private account it asks instead: requested = true and following =
 * false until userId approves. FORBIDDEN when a block stands either way.
 */
export const FollowDocument = graphql(`
  mutation Follow($userId: ID!) {
    follow(userId: $userId) {
      changed
      following
      requested
      user {
        id
        handle
        isPrivate
        followerCount
      }
      viewer {
        id
        followingCount
      }
    }
  }
`);

/** The viewer unfollows userId, or withdraws its pending request to follow userId. */
export const UnfollowDocument = graphql(`
  mutation Unfollow($userId: ID!) {
    unfollow(userId: $userId) {
      changed
      following
      requested
      user {
        id
        handle
        followerCount
      }
      viewer {
        id
        followingCount
      }
    }
  }
`);

/** One page of a user's followers, most recent first; pass the previous page's endCursor as after. */
export const FollowersPageDocument = graphql(`
  query FollowersPage($userId: ID!, $first: Int, $after: String) {
    user(id: $userId) {
      id
      handle
      followers(first: $first, after: $after) {
        edges {
          cursor
          followedAt
          node {
            id
            handle
            displayName
          }
        }
        pageInfo {
          hasNextPage
          endCursor
        }
        totalCount
      }
    }
  }
`);

/**
 * The viewer's counts, and how the viewer relates to each of otherIds. requested, requestedBy and
 * blocking are null unless the viewer is one of the pair (blocking: unless the viewer is userId), so
 * pass the viewer's own id as viewerId.
 */
export const ViewerRelationshipsDocument = graphql(`
  query ViewerRelationships($viewerId: ID!, $otherIds: [ID!]!) {
    viewer {
      id
      handle
      followerCount
      followingCount
    }
    relationships(userId: $viewerId, otherIds: $otherIds) {
      otherId
      following
      followedBy
      requested
      requestedBy
      blocking
    }
  }
`);

/** The viewer alone: who the token belongs to (null without a valid token). */
export const ViewerDocument = graphql(`
  query Viewer {
    viewer {
      id
      handle
      displayName
      isPrivate
      followerCount
      followingCount
    }
  }
`);

/**
 * Follow events for the viewer. Needs a token. FOLLOW, UNFOLLOW and FOLLOW_REQUESTED go to the
 * followee (the viewer is followee); FOLLOW_REQUEST_APPROVED goes to the requester (the viewer is
 * follower). Blocks and removed followers are told to nobody.
 */
export const FollowEventsDocument = graphql(`
  subscription FollowEvents {
    followEvents {
      kind
      follower {
        id
        handle
      }
      followee {
        id
        handle
      }
      at
    }
  }
`);

/**
 * A user as the viewer sees them, with the first entries of both lists. A private account's lists show
 * entries only to its followers and itself; to anyone else edges are empty and totalCount is still the
 * real count.
 */
export const UserProfileDocument = graphql(`
  query UserProfile($userId: ID!, $first: Int) {
    user(id: $userId) {
      id
      handle
      displayName
      isPrivate
      followerCount
      followingCount
      viewerIsFollowing
      followsViewer
      viewerHasRequested
      blocking
      followers(first: $first) {
        totalCount
        edges {
          followedAt
          node {
            id
            handle
          }
        }
      }
      following(first: $first) {
        totalCount
        edges {
          followedAt
          node {
            id
            handle
          }
        }
      }
    }
  }
`);

/** The viewer blocks userId: follows and requests between them end, either way. userId is not told. */
export const BlockDocument = graphql(`
  mutation Block($userId: ID!) {
    block(userId: $userId) {
      changed
      blocking
      user {
        id
        handle
      }
      viewer {
        id
      }
    }
  }
`);

/** The viewer lifts its block of userId; the follows the block ended stay ended. */
export const UnblockDocument = graphql(`
  mutation Unblock($userId: ID!) {
    unblock(userId: $userId) {
      changed
      blocking
      user {
        id
        handle
      }
      viewer {
        id
      }
    }
  }
`);

/** One page of the users the viewer blocks, most recent first. Needs a token. */
export const BlockingPageDocument = graphql(`
  query BlockingPage($first: Int, $after: String) {
    blocking(first: $first, after: $after) {
      totalCount
      edges {
        cursor
        blockedAt
        node {
          id
          handle
        }
      }
      pageInfo {
        hasNextPage
        endCursor
      }
    }
  }
`);

/** The viewer removes userId from its followers (no block: userId may follow again). userId is not told. */
export const RemoveFollowerDocument = graphql(`
  mutation RemoveFollower($userId: ID!) {
    removeFollower(userId: $userId) {
      changed
      followedBy
      user {
        id
        handle
      }
      viewer {
        id
        followerCount
      }
    }
  }
`);

/** One page of the follow requests pending to the viewer (a private account), most recent first. */
export const FollowRequestsPageDocument = graphql(`
  query FollowRequestsPage($first: Int, $after: String) {
    followRequests(first: $first, after: $after) {
      totalCount
      edges {
        cursor
        requestedAt
        node {
          id
          handle
          displayName
        }
      }
      pageInfo {
        hasNextPage
        endCursor
      }
    }
  }
`);

/** The viewer approves userId's pending request: userId now follows the viewer (and is told). */
export const ApproveFollowRequestDocument = graphql(`
  mutation ApproveFollowRequest($userId: ID!) {
    approveFollowRequest(userId: $userId) {
      changed
      followedBy
      user {
        id
        handle
      }
      viewer {
        id
        followerCount
      }
    }
  }
`);

/** The viewer rejects userId's pending request (userId is not told, and may ask again). */
export const RejectFollowRequestDocument = graphql(`
  mutation RejectFollowRequest($userId: ID!) {
    rejectFollowRequest(userId: $userId) {
      changed
      followedBy
      user {
        id
        handle
      }
      viewer {
        id
      }
    }
  }
`);

/**
 * Creates or updates a user's local record; admin token only (FORBIDDEN otherwise). displayName null
 * or absent clears it, so pass the current one to keep it; isPrivate null or absent keeps the account
 * as it is, false approves its pending requests.
 */
export const UpsertUserDocument = graphql(`
  mutation UpsertUser($input: UpsertUserInput!) {
    upsertUser(input: $input) {
      id
      handle
      displayName
      isPrivate
    }
  }
`);
