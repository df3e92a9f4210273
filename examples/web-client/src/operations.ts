// The operations this client sends. Each graphql(`...`) call is read by GraphQL Code Generator
// (`npm run codegen`), validated against ../../schema.graphql, and returns a TypedDocumentNode whose
// result and variables types come from the schema. Change an operation, then run codegen again.
import { graphql } from './gql/index.js';

export const FollowDocument = graphql(`
  mutation Follow($userId: ID!) {
    follow(userId: $userId) {
      changed
      following
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

export const UnfollowDocument = graphql(`
  mutation Unfollow($userId: ID!) {
    unfollow(userId: $userId) {
      changed
      following
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

/** The viewer's counts, and how the viewer relates to each of otherIds. */
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
      followerCount
      followingCount
    }
  }
`);

/** Someone followed or unfollowed the viewer. Needs a token. */
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
