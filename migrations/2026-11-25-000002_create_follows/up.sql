-- One row per follow edge: follower_id follows followee_id.
CREATE TABLE follows (
    follower_id BIGINT      NOT NULL REFERENCES users (id),
    followee_id BIGINT      NOT NULL REFERENCES users (id),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (follower_id, followee_id),
    CONSTRAINT follows_no_self_follow CHECK (follower_id <> followee_id)
);

-- "Followers of X, newest first" by keyset (created_at, follower_id).
CREATE INDEX follows_followee_recent_idx ON follows (followee_id, created_at DESC, follower_id DESC);
-- "Whom X follows, newest first" by keyset (created_at, followee_id).
CREATE INDEX follows_follower_recent_idx ON follows (follower_id, created_at DESC, followee_id DESC);

COMMENT ON TABLE follows IS 'The follow graph: one row per edge; the primary key makes follow idempotent.';
COMMENT ON COLUMN follows.follower_id IS 'The user who follows.';
COMMENT ON COLUMN follows.followee_id IS 'The user who is followed.';
COMMENT ON COLUMN follows.created_at IS 'When the follow began; orders follower and following lists, newest first.';
