-- Narrow counter table, written only by the event consumer (and reconcile), read by every count query.
CREATE TABLE user_stats (
    user_id         BIGINT      PRIMARY KEY REFERENCES users (id),
    follower_count  BIGINT      NOT NULL DEFAULT 0,
    following_count BIGINT      NOT NULL DEFAULT 0,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

COMMENT ON TABLE user_stats IS 'Follower and following counts per user, folded from outbox events by the consumer; equals the edge counts in follows once the outbox is drained.';
COMMENT ON COLUMN user_stats.user_id IS 'The user these counts belong to.';
COMMENT ON COLUMN user_stats.follower_count IS 'How many users follow user_id (may dip below zero for an instant when an unfollow is applied before its follow; reads clamp at zero).';
COMMENT ON COLUMN user_stats.following_count IS 'How many users user_id follows.';
COMMENT ON COLUMN user_stats.updated_at IS 'When a consumer batch or reconcile last changed this row.';
