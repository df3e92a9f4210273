// Runs the client against a running follow-service (Node 20):
//
//   FOLLOW_URL=http://127.0.0.1:8080/graphql FOLLOW_TOKEN=$(cargo run -q -- token --user 1) \
//     npm run build && npm start -- 2
//
// follows user 2 (the first argument, or FOLLOW_TARGET), pages through that user's followers, then
// listens to the viewer's follow events for FOLLOW_LISTEN_SECONDS (5) seconds.
import type { ResultOf } from '@graphql-typed-document-node/core';
import WebSocket from 'ws';
import { FollowApiError, FollowClient } from './client.js';
import { followerPages } from './followers.js';
import { FollowDocument, FollowEventsDocument, ViewerRelationshipsDocument } from './operations.js';

const url = process.env['FOLLOW_URL'] ?? 'http://127.0.0.1:8080/graphql';
const token = process.env['FOLLOW_TOKEN'];
const target = process.argv[2] ?? process.env['FOLLOW_TARGET'] ?? '2';
const listenSeconds = Number(process.env['FOLLOW_LISTEN_SECONDS'] ?? '5');

type FollowEvent = ResultOf<typeof FollowEventsDocument>['followEvents'];

/** One line per event kind (a Record, so a kind added to the schema fails the type check here). */
const eventLine: Record<FollowEvent['kind'], (follower: string, followee: string) => string> = {
  FOLLOW: (follower, followee) => `@${follower} followed @${followee}`,
  UNFOLLOW: (follower, followee) => `@${follower} unfollowed @${followee}`,
  FOLLOW_REQUESTED: (follower, followee) => `@${follower} asked to follow @${followee}`,
  FOLLOW_REQUEST_APPROVED: (follower, followee) => `@${followee} approved @${follower}'s request to follow`,
};

/** What to tell the developer for each error code the server sends. */
function explain(error: FollowApiError): string {
  const where = error.requestId === null ? '' : ` (request id ${error.requestId})`;
  const detail = error.errors[0]?.message ?? error.message;
  switch (error.code) {
    case 'UNAUTHENTICATED':
      return `the token was refused or is missing: make one with \`follow-service token --user ID\`${where}`;
    case 'FORBIDDEN':
      // A block between the two users (either way), or an admin-only mutation.
      return `the token's user may not do this: ${detail}${where}`;
    case 'BAD_USER_INPUT':
      return `the server refused the input: ${detail}`;
    case 'NOT_FOUND':
      return `no such user: ${detail}`;
    case 'RATE_LIMITED':
      return `too many requests; try again later${where}`;
    case 'SERVICE_UNAVAILABLE':
      return `the service is unavailable (its database is unreachable); try again later${where}`;
    case 'INTERNAL_SERVER_ERROR':
      return `the server failed; its log has the details${where}`;
    case undefined: {
      // No code: a transport failure, or a parse or validation error (an operation out of date).
      const cause = error.cause instanceof Error ? `: ${error.cause.message}` : '';
      return `${error.message}${cause}`;
    }
  }
}

async function main(): Promise<number> {
  if (token === undefined || token === '') {
    console.error('FOLLOW_TOKEN is not set: make one with `follow-service token --user ID`');
    return 2;
  }
  const client = new FollowClient({ url, token, webSocketImpl: WebSocket });
  try {
    const follow = await client.execute(FollowDocument, { userId: target });
    const { user, viewer } = follow.follow;
    const status = follow.follow.requested
      ? `${follow.follow.changed ? 'asked to follow' : 'already asked to follow'} (a private account: it must approve)`
      : follow.follow.changed
        ? 'now following'
        : 'already following';
    console.log(
      `${status} @${user.handle} (${user.id}), ` +
        `who has ${user.followerCount} followers; user ${viewer.id} follows ${viewer.followingCount}`,
    );

    const rel = await client.execute(ViewerRelationshipsDocument, { viewerId: viewer.id, otherIds: [target] });
    for (const r of rel.relationships) {
      console.log(
        `viewer -> ${r.otherId}: following=${r.following} followedBy=${r.followedBy} ` +
          `requested=${r.requested} requestedBy=${r.requestedBy} blocking=${r.blocking}`,
      );
    }

    let seen = 0;
    for await (const page of followerPages(client, target, { pageSize: 20, maxPages: 5 })) {
      for (const edge of page.edges) {
        const name = edge.node.displayName ?? edge.node.handle;
        console.log(`  ${++seen}/${page.totalCount}  @${edge.node.handle} (${name}) since ${edge.followedAt}`);
      }
    }

    console.log(`listening for follow events for ${listenSeconds}s…`);
    await new Promise<void>((resolve) => {
      const stop = client.subscribe(
        FollowEventsDocument,
        {},
        ({ followEvents: e }) => {
          console.log(`  ${e.at}: ${eventLine[e.kind](e.follower.handle, e.followee.handle)}`);
        },
        {
          onError: (error) => {
            console.error(`subscription: ${explain(error)}`);
            resolve();
          },
          onComplete: resolve,
        },
      );
      setTimeout(() => {
        stop();
        resolve();
      }, listenSeconds * 1000);
    });
    return 0;
  } catch (error) {
    if (error instanceof FollowApiError) {
      console.error(explain(error));
      return 1;
    }
    throw error;
  } finally {
    await client.dispose();
  }
}

process.exitCode = await main();
