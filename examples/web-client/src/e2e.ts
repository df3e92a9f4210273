// End-to-end check of this client against a running follow-service (Node 20), run by
// scripts/browser-test.sh in CI:
//
//   FOLLOW_URL=http://127.0.0.1:8080/graphql \
//   FOLLOW_USER_A=3 FOLLOW_TOKEN_A=$(follow-service token --user 3) \
//   FOLLOW_USER_B=4 FOLLOW_TOKEN_B=$(follow-service token --user 4) \
//   FOLLOW_ADMIN_TOKEN=$(follow-service token --user 1 --admin) \
//     npm run e2e
//
// Users A and B subscribe to followEvents; user B unfollows A (if needed), follows A, reads the
// relationship back (read-your-writes) and finds itself among A's followers; A's followerCount goes up
// by one (it is eventually consistent: polled); B unfollows A; A sees both events.
// Then consent: the admin token makes A private (upsertUser); B's follow becomes a request (A gets
// FOLLOW_REQUESTED) and A's lists show B no entries but their counts; A finds B in followRequests and
// approves (B gets FOLLOW_REQUEST_APPROVED and follows A); A removes follower B, B asks again, A
// rejects; A blocks B, and a follow either way is FORBIDDEN, the block showing to A only; A unblocks B
// and is made public again. Then a forged token must be refused with UNAUTHENTICATED, over HTTP (401)
// and over the WebSocket (4401). Exits 0 with one summary line, 1 with the failed step on stderr, 2
// when the environment is incomplete. Writes to the graph: run it against a test server only.
import type { ResultOf } from '@graphql-typed-document-node/core';
import WebSocket from 'ws';
import { FollowApiError, FollowClient } from './client.js';
import { followerPages } from './followers.js';
import { graphql } from './gql/index.js';
import {
  ApproveFollowRequestDocument,
  BlockDocument,
  BlockingPageDocument,
  FollowDocument,
  FollowEventsDocument,
  FollowRequestsPageDocument,
  RejectFollowRequestDocument,
  RemoveFollowerDocument,
  UnblockDocument,
  UnfollowDocument,
  UpsertUserDocument,
  UserProfileDocument,
  ViewerDocument,
  ViewerRelationshipsDocument,
} from './operations.js';

/** Whether followerId follows followeeId (read-your-writes for the viewer's own follows). */
const IsFollowingDocument = graphql(`
  query IsFollowing($followerId: ID!, $followeeId: ID!) {
    isFollowing(followerId: $followerId, followeeId: $followeeId)
  }
`);

const TOTAL_TIMEOUT_MS = 20_000;
/** The server does not acknowledge a subscribe: give it this long after connection_ack. */
const SUBSCRIBE_GRACE_MS = 300;
/** How long to wait for an event before following again (once), then before failing. */
const EVENT_WAIT_MS = 3_000;
/** followerCount is eventually consistent; it converges within about a second. */
const COUNT_CONVERGE_MS = 5_000;
const POLL_MS = 100;
const FOLLOWER_PAGE_SIZE = 20;

type FollowEvent = ResultOf<typeof FollowEventsDocument>['followEvents'];

/** A failed check: the message says what was expected and what came instead. */
class CheckFailed extends Error {
  override readonly name = 'CheckFailed';
}

function check(condition: unknown, message: string): asserts condition {
  if (!condition) throw new CheckFailed(message);
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

const RFC3339 = /^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$/;
function isRfc3339(value: unknown): value is string {
  return typeof value === 'string' && RFC3339.test(value) && !Number.isNaN(Date.parse(value));
}

function describeEvent(e: FollowEvent): string {
  return `${e.kind} ${e.follower.id}(@${e.follower.handle}) -> ${e.followee.id}(@${e.followee.handle}) at ${e.at}`;
}

function describeError(error: unknown): string {
  if (error instanceof FollowApiError) {
    const parts = [
      error.code === undefined ? undefined : `code ${error.code}`,
      error.status === undefined ? undefined : `HTTP ${error.status}`,
      error.closeCode === undefined ? undefined : `close ${error.closeCode}`,
      error.requestId === null ? undefined : `request id ${error.requestId}`,
    ].filter((p) => p !== undefined);
    const cause = error.cause instanceof Error ? ` (cause: ${error.cause.message})` : '';
    return `FollowApiError: ${error.message}${cause}${parts.length > 0 ? ` [${parts.join(', ')}]` : ''}`;
  }
  return error instanceof Error ? `${error.name}: ${error.message}` : String(error);
}

/** The FollowApiError that run fails with; a CheckFailed when it succeeds or fails otherwise. */
async function expectError(what: string, run: () => Promise<unknown>): Promise<FollowApiError> {
  let data: unknown;
  try {
    data = await run();
  } catch (error) {
    check(error instanceof FollowApiError, `${what}: expected a FollowApiError, got ${describeError(error)}`);
    return error;
  }
  throw new CheckFailed(`${what} succeeded, expected an error: ${JSON.stringify(data)}`);
}

/** The events of one subscription, kept in arrival order, with waits for a matching one. */
class EventLog {
  readonly events: FollowEvent[] = [];
  constructor(readonly name: string) {}
  #failure: FollowApiError | undefined;
  #ended = false;
  #wake: (() => void)[] = [];

  push(event: FollowEvent): void {
    this.events.push(event);
    this.#notify();
  }

  fail(error: FollowApiError): void {
    this.#failure ??= error;
    this.#notify();
  }

  end(): void {
    this.#ended = true;
    this.#notify();
  }

  /** The position after the last event received: pass it as `since` to ignore what came before. */
  mark(): number {
    return this.events.length;
  }

  /** The first event at or after `since` that matches, or undefined after timeoutMs. */
  async wait(since: number, matches: (e: FollowEvent) => boolean, timeoutMs: number): Promise<FollowEvent | undefined> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.events.slice(since).find(matches);
      if (found !== undefined) return found;
      if (this.#failure !== undefined) {
        throw new CheckFailed(`${this.name}'s followEvents subscription failed: ${describeError(this.#failure)}`);
      }
      if (this.#ended) throw new CheckFailed(`the server completed ${this.name}'s followEvents subscription`);
      const left = deadline - Date.now();
      if (left <= 0) return undefined;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.#wake.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  #notify(): void {
    const wake = this.#wake;
    this.#wake = [];
    for (const w of wake) w();
  }
}

function env(name: string): string | undefined {
  const value = process.env[name];
  return value === undefined || value.trim() === '' ? undefined : value.trim();
}

let currentStep = 'start';
const passed: string[] = [];

async function step<T>(name: string, run: () => Promise<T>): Promise<T> {
  currentStep = name;
  const result = await run();
  passed.push(name);
  return result;
}

async function main(): Promise<number> {
  const missing = [
    'FOLLOW_URL',
    'FOLLOW_TOKEN_A',
    'FOLLOW_TOKEN_B',
    'FOLLOW_USER_A',
    'FOLLOW_USER_B',
    'FOLLOW_ADMIN_TOKEN',
  ].filter((name) => env(name) === undefined);
  if (missing.length > 0) {
    console.error(
      `e2e: set ${missing.join(', ')} (tokens: \`follow-service token --user ID\`, ` +
        `the admin's with \`--admin\`)`,
    );
    return 2;
  }
  const url = env('FOLLOW_URL')!;
  const userA = env('FOLLOW_USER_A')!;
  const userB = env('FOLLOW_USER_B')!;
  if (userA === userB) {
    console.error('e2e: FOLLOW_USER_A and FOLLOW_USER_B must be two different users');
    return 2;
  }

  const started = Date.now();
  const connected = { A: false, B: false };
  const clientA = new FollowClient({
    url,
    token: env('FOLLOW_TOKEN_A')!,
    webSocketImpl: WebSocket,
    on: { connected: () => (connected.A = true) },
  });
  const clientB = new FollowClient({
    url,
    token: env('FOLLOW_TOKEN_B')!,
    webSocketImpl: WebSocket,
    on: { connected: () => (connected.B = true) },
  });
  // Only upsertUser (making A private, then public again) needs the admin role.
  const admin = new FollowClient({ url, token: env('FOLLOW_ADMIN_TOKEN')! });
  const events = new EventLog('A');
  const eventsB = new EventLog('B');
  const stops: (() => void)[] = [];
  // Set once the consent part changed A (private, a block): `finally` then puts A back if a step failed.
  let restoreA: (() => Promise<void>) | undefined;

  // Every event of the run has B as follower and A as followee, whoever receives it.
  const isFollowEvent = (kind: FollowEvent['kind']) => (e: FollowEvent) =>
    e.kind === kind && e.follower.id === userB && e.followee.id === userA;

  try {
    // The tokens are who they say: each viewer is the user given.
    const [viewerA, handleB] = await step('tokens name users A and B (viewer)', async () => {
      const [a, b] = await Promise.all([clientA.execute(ViewerDocument, {}), clientB.execute(ViewerDocument, {})]);
      check(a.viewer?.id === userA, `FOLLOW_TOKEN_A's viewer is ${a.viewer?.id ?? 'null'}, expected user ${userA}`);
      check(b.viewer?.id === userB, `FOLLOW_TOKEN_B's viewer is ${b.viewer?.id ?? 'null'}, expected user ${userB}`);
      return [a.viewer, b.viewer.handle];
    });
    const handleA = viewerA.handle;
    /** upsertUser for A with its own handle and display name (null would clear it), private or not. */
    const setPrivateA = (isPrivate: boolean) =>
      admin.execute(UpsertUserDocument, {
        input: { id: userA, handle: handleA, displayName: viewerA.displayName ?? null, isPrivate },
      });

    await step('A and B subscribe to followEvents', async () => {
      for (const [who, client, log] of [['A', clientA, events], ['B', clientB, eventsB]] as const) {
        stops.push(
          client.subscribe(FollowEventsDocument, {}, (data) => log.push(data.followEvents), {
            onError: (error) => log.fail(error),
            onComplete: () => log.end(),
          }),
        );
        // Wait for connection_ack; a refused token closes the socket first, which log.wait reports.
        const deadline = Date.now() + 5_000;
        while (!connected[who] && Date.now() < deadline) await log.wait(0, () => false, 50);
        check(connected[who], `${who}'s WebSocket was not acknowledged (connection_ack) within 5 s`);
      }
      await sleep(SUBSCRIBE_GRACE_MS);
      await events.wait(0, () => false, 0); // an error from the subscribe itself
      await eventsB.wait(0, () => false, 0);
    });

    // A previous run that was cut short (the watchdog) may have left A private or B blocked.
    await step('A starts public, blocking nobody of B', async () => {
      await clientA.execute(UnblockDocument, { userId: userB });
      if (viewerA.isPrivate) {
        const r = await setPrivateA(false);
        check(!r.upsertUser.isPrivate, `upsertUser(isPrivate: false) left A private`);
      }
    });

    const unfollowedFirst = await step('B unfollows A first (idempotent)', async () => {
      const r = await clientB.execute(UnfollowDocument, { userId: userA });
      check(r.unfollow.following === false, `after unfollow, following = ${r.unfollow.following}`);
      const now = await clientB.execute(IsFollowingDocument, { followerId: userB, followeeId: userA });
      check(now.isFollowing === false, 'isFollowing(B, A) is still true right after B unfollowed A');
      if (r.unfollow.changed) {
        // followerCount is eventually consistent: let it settle before reading the "before" count.
        await sleep(1_500);
      }
      return r.unfollow.changed;
    });

    const before = await step("read A's followerCount", async () => {
      const v = await clientA.execute(ViewerDocument, {});
      check(v.viewer !== null && v.viewer !== undefined, 'viewer is null for FOLLOW_TOKEN_A');
      return v.viewer.followerCount;
    });

    let followRetried = false;
    const followEvent = await step('B follows A; A receives FOLLOW', async () => {
      const since = events.mark();
      const r = await clientB.execute(FollowDocument, { userId: userA });
      check(r.follow.changed, 'follow(A) by B reported changed = false right after B unfollowed A');
      check(r.follow.following, 'follow(A) by B reported following = false');
      check(r.follow.user.id === userA && r.follow.viewer.id === userB, `follow payload is user ${r.follow.user.id}, viewer ${r.follow.viewer.id}`);
      let event = await events.wait(since, isFollowEvent('FOLLOW'), EVENT_WAIT_MS);
      if (event === undefined) {
        // The subscription may not have been listening yet: follow once more.
        followRetried = true;
        await clientB.execute(UnfollowDocument, { userId: userA });
        await clientB.execute(FollowDocument, { userId: userA });
        event = await events.wait(since, isFollowEvent('FOLLOW'), EVENT_WAIT_MS);
      }
      check(
        event !== undefined,
        `no FOLLOW event (follower ${userB}, followee ${userA}) within ${(2 * EVENT_WAIT_MS) / 1000} s, ` +
          `after following twice; events received: ${events.events.map(describeEvent).join('; ') || 'none'}`,
      );
      check(isRfc3339(event.at), `the FOLLOW event's at is not RFC 3339: ${JSON.stringify(event.at)}`);
      check(event.follower.handle === handleB && event.followee.handle === handleA,
        `the FOLLOW event names @${event.follower.handle} -> @${event.followee.handle}, expected @${handleB} -> @${handleA}`);
      return event;
    });

    await step('B reads the follow back (read-your-writes)', async () => {
      const [rel, is] = await Promise.all([
        clientB.execute(ViewerRelationshipsDocument, { viewerId: userB, otherIds: [userA] }),
        clientB.execute(IsFollowingDocument, { followerId: userB, followeeId: userA }),
      ]);
      check(rel.viewer?.id === userB, `relationships: viewer is ${rel.viewer?.id ?? 'null'}, expected ${userB}`);
      const r = rel.relationships[0];
      check(rel.relationships.length === 1 && r !== undefined && r.otherId === userA,
        `relationships(${userB}, [${userA}]) returned ${JSON.stringify(rel.relationships)}`);
      check(r.following, `relationships(${userB}, [${userA}]).following is false right after B followed A`);
      check(is.isFollowing, `isFollowing(${userB}, ${userA}) is false right after B followed A`);
    });

    const foundAt = await step("B is among A's followers (newest first)", async () => {
      let page = 0;
      let seen = 0;
      for await (const p of followerPages(clientB, userA, { pageSize: FOLLOWER_PAGE_SIZE, maxPages: 50 })) {
        page++;
        const index = p.edges.findIndex((e) => e.node.id === userB);
        if (index >= 0) {
          const edge = p.edges[index]!;
          check(isRfc3339(edge.followedAt), `followedAt is not RFC 3339: ${JSON.stringify(edge.followedAt)}`);
          check(page === 1 && index === 0,
            `B is follower #${seen + index + 1} (page ${page}), expected the newest: the first on the first page`);
          return { page, position: seen + index + 1, totalCount: p.totalCount };
        }
        seen += p.edges.length;
      }
      throw new CheckFailed(`B (${userB}) is not among A's followers: ${page} page(s), ${seen} followers read`);
    });

    const converged = await step(`A's followerCount converges to ${before + 1}`, async () => {
      const t0 = Date.now();
      let last = before;
      while (Date.now() - t0 <= COUNT_CONVERGE_MS) {
        const v = await clientA.execute(ViewerDocument, {});
        last = v.viewer?.followerCount ?? -1;
        if (last === before + 1) return Date.now() - t0;
        await sleep(POLL_MS);
      }
      throw new CheckFailed(`A's followerCount is ${last} after ${COUNT_CONVERGE_MS / 1000} s, expected ${before + 1} (was ${before})`);
    });

    const unfollowEvent = await step('B unfollows A; A receives UNFOLLOW', async () => {
      const since = events.mark();
      const r = await clientB.execute(UnfollowDocument, { userId: userA });
      check(r.unfollow.changed && !r.unfollow.following, `unfollow(A) by B: changed = ${r.unfollow.changed}, following = ${r.unfollow.following}`);
      const event = await events.wait(since, isFollowEvent('UNFOLLOW'), 2 * EVENT_WAIT_MS);
      check(event !== undefined,
        `no UNFOLLOW event (follower ${userB}, followee ${userA}) within ${(2 * EVENT_WAIT_MS) / 1000} s; ` +
          `events since the unfollow: ${events.events.slice(since).map(describeEvent).join('; ') || 'none'}`);
      check(isRfc3339(event.at), `the UNFOLLOW event's at is not RFC 3339: ${JSON.stringify(event.at)}`);
      check(Date.parse(event.at) >= Date.parse(followEvent.at), `UNFOLLOW at ${event.at} is before FOLLOW at ${followEvent.at}`);
      const is = await clientB.execute(IsFollowingDocument, { followerId: userB, followeeId: userA });
      check(!is.isFollowing, `isFollowing(${userB}, ${userA}) is true right after B unfollowed A`);
      return event;
    });

    // Consent: a private account with follow requests, removing a follower, a block.
    restoreA = async () => {
      await clientA.execute(UnblockDocument, { userId: userB });
      await clientB.execute(UnfollowDocument, { userId: userA }); // withdraws a pending request too
      await setPrivateA(false);
    };

    await step('the admin makes A private (upsertUser isPrivate: true)', async () => {
      const r = await setPrivateA(true);
      const u = r.upsertUser;
      check(u.isPrivate && u.id === userA && u.handle === handleA && u.displayName === (viewerA.displayName ?? null),
        `upsertUser returned ${JSON.stringify(u)}, expected A private with its handle and display name kept`);
    });

    const requestEvent = await step('B asks to follow A (requested); A receives FOLLOW_REQUESTED', async () => {
      const since = events.mark();
      const t0 = Date.now();
      const r = await clientB.execute(FollowDocument, { userId: userA });
      check(r.follow.changed && r.follow.requested && !r.follow.following && r.follow.user.isPrivate,
        `follow(A) by B: changed ${r.follow.changed}, requested ${r.follow.requested}, following ` +
          `${r.follow.following}, isPrivate ${r.follow.user.isPrivate}; expected a new request to a private account`);
      const event = await events.wait(since, isFollowEvent('FOLLOW_REQUESTED'), 2 * EVENT_WAIT_MS);
      check(event !== undefined,
        `no FOLLOW_REQUESTED event within ${(2 * EVENT_WAIT_MS) / 1000} s; ` +
          `events since the follow: ${events.events.slice(since).map(describeEvent).join('; ') || 'none'}`);
      check(isRfc3339(event.at), `the FOLLOW_REQUESTED event's at is not RFC 3339: ${JSON.stringify(event.at)}`);
      return { at: event.at, afterMs: Date.now() - t0 };
    });

    const hiddenCounts = await step("B sees its request pending, and A's lists with no entries but their counts", async () => {
      const [p, rel] = await Promise.all([
        clientB.execute(UserProfileDocument, { userId: userA, first: 5 }),
        clientB.execute(ViewerRelationshipsDocument, { viewerId: userB, otherIds: [userA] }),
      ]);
      const u = p.user;
      check(u !== null && u !== undefined, `user(${userA}) is null`);
      check(u.isPrivate && u.viewerHasRequested && !u.viewerIsFollowing,
        `A as B sees it: isPrivate ${u.isPrivate}, viewerHasRequested ${u.viewerHasRequested}, viewerIsFollowing ${u.viewerIsFollowing}`);
      for (const [list, count] of [[u.followers, u.followerCount], [u.following, u.followingCount]] as const) {
        check(list.edges.length === 0 && list.totalCount === count,
          `a private account's list, to a non-follower: ${list.edges.length} entries and totalCount ` +
            `${list.totalCount}, expected none and the count (${count})`);
      }
      const r = rel.relationships[0];
      check(r !== undefined && r.requested === true && r.requestedBy === false && !r.following && r.blocking === false,
        `relationships(${userB}, [${userA}]) as B: ${JSON.stringify(rel.relationships)}, expected requested, not following`);
      return `${u.followerCount}/${u.followingCount}`;
    });

    await step("A finds B's request in followRequests", async () => {
      const r = await clientA.execute(FollowRequestsPageDocument, { first: 20 });
      const edge = r.followRequests.edges[0];
      check(edge !== undefined && edge.node.id === userB && edge.node.handle === handleB,
        `A's newest follow request is ${JSON.stringify(edge?.node ?? null)}, expected B (${userB})`);
      check(isRfc3339(edge.requestedAt), `requestedAt is not RFC 3339: ${JSON.stringify(edge.requestedAt)}`);
      check(r.followRequests.totalCount >= 1, `followRequests.totalCount is ${r.followRequests.totalCount}`);
    });

    const approvedEvent = await step('A approves; B receives FOLLOW_REQUEST_APPROVED and follows A', async () => {
      const since = eventsB.mark();
      const r = await clientA.execute(ApproveFollowRequestDocument, { userId: userB });
      check(r.approveFollowRequest.changed && r.approveFollowRequest.followedBy && r.approveFollowRequest.user.id === userB,
        `approveFollowRequest(B): ${JSON.stringify(r.approveFollowRequest)}`);
      const event = await eventsB.wait(since, isFollowEvent('FOLLOW_REQUEST_APPROVED'), 2 * EVENT_WAIT_MS);
      check(event !== undefined,
        `B got no FOLLOW_REQUEST_APPROVED event within ${(2 * EVENT_WAIT_MS) / 1000} s; ` +
          `B's events since the approval: ${eventsB.events.slice(since).map(describeEvent).join('; ') || 'none'}`);
      const [is, left] = await Promise.all([
        clientB.execute(IsFollowingDocument, { followerId: userB, followeeId: userA }),
        clientA.execute(FollowRequestsPageDocument, { first: 20 }),
      ]);
      check(is.isFollowing, `isFollowing(${userB}, ${userA}) is false right after A approved B`);
      check(!left.followRequests.edges.some((e) => e.node.id === userB), "B's request is still in A's followRequests after the approval");
      return event;
    });

    await step("B's following starts with A, and A's lists now show to B", async () => {
      const [mine, theirs] = await Promise.all([
        clientB.execute(UserProfileDocument, { userId: userB, first: 1 }),
        clientB.execute(UserProfileDocument, { userId: userA, first: 1 }),
      ]);
      const newest = mine.user?.following.edges[0]?.node;
      check(newest?.id === userA, `B's newest following is ${JSON.stringify(newest ?? null)}, expected A (${userA})`);
      const u = theirs.user;
      check(u?.viewerIsFollowing === true && !u.viewerHasRequested,
        `A as B sees it: viewerIsFollowing ${u?.viewerIsFollowing}, viewerHasRequested ${u?.viewerHasRequested}`);
      check(u.followers.edges[0]?.node.id === userB,
        `A's followers, to B (now a follower), start with ${JSON.stringify(u.followers.edges[0]?.node ?? null)}, expected B`);
    });

    await step('A removes follower B; B asks again and A rejects', async () => {
      const removed = await clientA.execute(RemoveFollowerDocument, { userId: userB });
      check(removed.removeFollower.changed && !removed.removeFollower.followedBy,
        `removeFollower(B): ${JSON.stringify(removed.removeFollower)}`);
      const is = await clientB.execute(IsFollowingDocument, { followerId: userB, followeeId: userA });
      check(!is.isFollowing, `isFollowing(${userB}, ${userA}) is true after A removed B`);
      const again = await clientB.execute(FollowDocument, { userId: userA });
      check(again.follow.requested && !again.follow.following, `follow(A) by B after the removal: ${JSON.stringify(again.follow)}`);
      const rejected = await clientA.execute(RejectFollowRequestDocument, { userId: userB });
      check(rejected.rejectFollowRequest.changed && !rejected.rejectFollowRequest.followedBy,
        `rejectFollowRequest(B): ${JSON.stringify(rejected.rejectFollowRequest)}`);
      const p = await clientB.execute(UserProfileDocument, { userId: userA, first: 1 });
      check(p.user?.viewerHasRequested === false && !p.user.viewerIsFollowing,
        `after the rejection B sees viewerHasRequested ${p.user?.viewerHasRequested}, viewerIsFollowing ${p.user?.viewerIsFollowing}`);
    });

    const aFollowedB = await step('A blocks B; a follow either way is FORBIDDEN', async () => {
      const before = await clientA.execute(ViewerRelationshipsDocument, { viewerId: userA, otherIds: [userB] });
      const r = await clientA.execute(BlockDocument, { userId: userB });
      check(r.block.changed && r.block.blocking && r.block.user.id === userB, `block(B) by A: ${JSON.stringify(r.block)}`);
      for (const [who, client, target] of [['B follows A', clientB, userA], ['A follows B', clientA, userB]] as const) {
        const error = await expectError(`${who} across A's block`, () => client.execute(FollowDocument, { userId: target }));
        const first = error.errors[0];
        check(first?.extensions?.['code'] === 'FORBIDDEN' && error.code === 'FORBIDDEN',
          `${who} across A's block: expected extensions.code FORBIDDEN, got ${describeError(error)}`);
        check(first.message === 'you cannot follow this user', `${who} across A's block: message ${JSON.stringify(first.message)}`);
      }
      // The block ended A's follow of B too, if there was one: put it back after the unblock.
      return before.relationships[0]?.following === true;
    });

    await step('the block shows to A only', async () => {
      const [list, relA, relAsB, relB] = await Promise.all([
        clientA.execute(BlockingPageDocument, { first: 5 }),
        clientA.execute(ViewerRelationshipsDocument, { viewerId: userA, otherIds: [userB] }),
        // B asks about the pair from A's side: blocking is A's to see, so null.
        clientB.execute(ViewerRelationshipsDocument, { viewerId: userA, otherIds: [userB] }),
        clientB.execute(UserProfileDocument, { userId: userA, first: 1 }),
      ]);
      const edge = list.blocking.edges[0];
      check(edge?.node.id === userB && isRfc3339(edge.blockedAt),
        `A's newest block is ${JSON.stringify(edge ?? null)}, expected B with an RFC 3339 blockedAt`);
      check(relA.relationships[0]?.blocking === true, `relationships(${userA}, [${userB}]) as A: ${JSON.stringify(relA.relationships)}`);
      check(relAsB.relationships[0]?.blocking === null,
        `relationships(${userA}, [${userB}]) as B shows blocking = ${relAsB.relationships[0]?.blocking}, expected null`);
      check(relB.user?.blocking === false, `user(${userA}).blocking as B is ${relB.user?.blocking}, expected false`);
    });

    await step('A unblocks B; B may ask to follow A again', async () => {
      const r = await clientA.execute(UnblockDocument, { userId: userB });
      check(r.unblock.changed && !r.unblock.blocking, `unblock(B) by A: ${JSON.stringify(r.unblock)}`);
      const again = await clientB.execute(FollowDocument, { userId: userA });
      check(again.follow.requested && !again.follow.following, `follow(A) by B after the unblock: ${JSON.stringify(again.follow)}`);
      const withdrawn = await clientB.execute(UnfollowDocument, { userId: userA });
      check(withdrawn.unfollow.changed && !withdrawn.unfollow.requested,
        `unfollow(A) by B, withdrawing the request: ${JSON.stringify(withdrawn.unfollow)}`);
      if (aFollowedB) await clientA.execute(FollowDocument, { userId: userB });
    });

    await step('the admin makes A public again', async () => {
      const r = await setPrivateA(false);
      check(!r.upsertUser.isPrivate, 'upsertUser(isPrivate: false) left A private');
      restoreA = undefined;
    });

    await step('a forged token is refused over HTTP (401 UNAUTHENTICATED)', async () => {
      const forged = new FollowClient({ url, token: `${env('FOLLOW_TOKEN_B')!.slice(0, -4)}AAAA` });
      const garbage = new FollowClient({ url, token: 'not-a-token' });
      for (const [what, client] of [['a forged signature', forged], ['a malformed token', garbage]] as const) {
        let error: unknown;
        try {
          const data = await client.execute(ViewerDocument, {});
          throw new CheckFailed(`${what} was accepted: viewer ${JSON.stringify(data.viewer)}`);
        } catch (e) {
          if (e instanceof CheckFailed) throw e;
          error = e;
        }
        check(error instanceof FollowApiError, `${what}: expected a FollowApiError, got ${describeError(error)}`);
        check(error.code === 'UNAUTHENTICATED' && error.status === 401,
          `${what}: expected UNAUTHENTICATED with HTTP 401, got ${describeError(error)}`);
      }
    });

    await step('a forged token is refused over the WebSocket (UNAUTHENTICATED)', async () => {
      const client = new FollowClient({ url, token: 'not-a-token', webSocketImpl: WebSocket });
      try {
        const outcome = await new Promise<FollowApiError | string>((resolve) => {
          const timer = setTimeout(() => resolve('no error within 5 s'), 5_000);
          client.subscribe(FollowEventsDocument, {}, (data) => resolve(`an event arrived: ${describeEvent(data.followEvents)}`), {
            onError: (error) => {
              clearTimeout(timer);
              resolve(error);
            },
            onComplete: () => resolve('the subscription completed without an error'),
          });
        });
        check(outcome instanceof FollowApiError, `subscribing with a malformed token: ${String(outcome)}`);
        check(outcome.code === 'UNAUTHENTICATED', `subscribing with a malformed token: expected UNAUTHENTICATED, got ${describeError(outcome)}`);
      } finally {
        await client.dispose();
      }
    });

    console.log(
      `e2e OK in ${((Date.now() - started) / 1000).toFixed(1)} s against ${url}: ` +
        `@${handleB} (${userB}) ${unfollowedFirst ? 'unfollowed then ' : ''}followed @${handleA} (${userA}), ` +
        `FOLLOW event${followRetried ? ' (after a second follow)' : ''} at ${followEvent.at}, ` +
        `read back at once, newest of ${foundAt.totalCount} followers, ` +
        `followerCount ${before} -> ${before + 1} in ${converged} ms, ` +
        `UNFOLLOW event at ${unfollowEvent.at}; A private: B's request (FOLLOW_REQUESTED at ${requestEvent.at}, ` +
        `received ${requestEvent.afterMs} ms after the follow) ` +
        `saw A's lists empty (counts ${hiddenCounts}), approved (FOLLOW_REQUEST_APPROVED at ${approvedEvent.at}), ` +
        `removed, rejected; A's block made follows FORBIDDEN both ways, unblocked; ` +
        `bad tokens refused (HTTP 401, WebSocket); ${passed.length} steps passed`,
    );
    return 0;
  } catch (error) {
    const detail = error instanceof CheckFailed ? error.message : describeError(error);
    console.error(`e2e FAILED at step "${currentStep}": ${detail}`);
    if (passed.length > 0) console.error(`  passed before it: ${passed.join('; ')}`);
    return 1;
  } finally {
    for (const stop of stops) stop();
    if (restoreA !== undefined) {
      // A step of the consent part failed: leave A public and unblocked for the next run.
      await Promise.race([restoreA().catch((error) => console.error(`  could not restore A: ${describeError(error)}`)), sleep(2_000)]);
    }
    await Promise.race([Promise.all([clientA.dispose(), clientB.dispose()]), sleep(1_000)]);
  }
}

const watchdog = setTimeout(() => {
  console.error(`e2e FAILED: timed out after ${TOTAL_TIMEOUT_MS / 1000} s at step "${currentStep}"`);
  if (passed.length > 0) console.error(`  passed before it: ${passed.join('; ')}`);
  process.exit(1);
}, TOTAL_TIMEOUT_MS);

const code = await main();
clearTimeout(watchdog);
// Exit now: nothing of the run should keep the process alive, and a stray socket must not hang CI.
process.exit(code);
