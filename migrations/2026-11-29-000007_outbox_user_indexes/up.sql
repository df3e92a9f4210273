-- counts_now (a mutation's counts, exact: stored counts plus the user's unapplied events) reads the outbox
-- by user on each side; without these it scanned the whole outbox, the whole backlog while consumers lag.
-- Every outbox row is unapplied (applying deletes it), so a partial index would exclude nothing; the
-- indexes stay as small as the backlog. Cost: two 8-byte B-tree entries per event written.
CREATE INDEX outbox_followee_idx ON outbox (followee_id);
CREATE INDEX outbox_follower_idx ON outbox (follower_id);

COMMENT ON INDEX outbox_followee_idx IS 'Unapplied events by followee: the follower-count deltas counts_now adds to user_stats.';
COMMENT ON INDEX outbox_follower_idx IS 'Unapplied events by follower: the following-count deltas counts_now adds to user_stats.';
