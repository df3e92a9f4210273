import type { ResultOf } from '@graphql-typed-document-node/core';
import type { FollowClient } from './client.js';
import { FollowersPageDocument } from './operations.js';

type FollowersPage = NonNullable<ResultOf<typeof FollowersPageDocument>['user']>['followers'];
export type FollowerEdge = FollowersPage['edges'][number];

export interface FollowersPageResult {
  edges: FollowerEdge[];
  totalCount: number;
  /** Pass as `after` for the next page; null on the last page. */
  nextCursor: string | null;
}

/**
 * Pages through a user's followers, most recent first, `pageSize` (1 to 100) at a time, stopping
 * after `maxPages`. Returns nothing when the user does not exist.
 */
export async function* followerPages(
  client: FollowClient,
  userId: string,
  { pageSize = 20, maxPages = Infinity }: { pageSize?: number; maxPages?: number } = {},
): AsyncGenerator<FollowersPageResult, void, void> {
  let after: string | null = null;
  for (let page = 0; page < maxPages; page++) {
    // Annotated: `after` is narrowed through the loop, which would make the inferred type circular.
    const data: ResultOf<typeof FollowersPageDocument> = await client.execute(FollowersPageDocument, { userId, first: pageSize, after });
    if (data.user === null || data.user === undefined) return;
    const { edges, pageInfo, totalCount } = data.user.followers;
    const nextCursor = pageInfo.hasNextPage ? (pageInfo.endCursor ?? null) : null;
    yield { edges, totalCount, nextCursor };
    if (nextCursor === null) return;
    after = nextCursor;
  }
}
