-- Who may follow whom (issue 15): private accounts, blocks, follow requests, and the event kinds they write.

ALTER TABLE users ADD COLUMN is_private BOOLEAN NOT NULL DEFAULT false;
COMMENT ON COLUMN users.is_private IS 'A private account: following it creates a follow request the user approves; its lists show only to its followers and itself. Set by upsertUser; turning it off approves every pending request.';

-- One row per block: blocker_id blocks blocked_id. While it stands there is no edge and no request
-- either way between the two, and neither can follow the other.
CREATE TABLE blocks (
    blocker_id BIGINT      NOT NULL REFERENCES users (id),
    blocked_id BIGINT      NOT NULL REFERENCES users (id),
    created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (blocker_id, blocked_id),
    CONSTRAINT blocks_no_self_block CHECK (blocker_id <> blocked_id)
);
-- "Whom X blocks, newest first" by keyset (created_at, blocked_id). The follow gate probes the primary
-- key both ways round, so no index by blocked_id is needed.
CREATE INDEX blocks_blocker_recent_idx ON blocks (blocker_id, created_at DESC, blocked_id DESC);

COMMENT ON TABLE blocks IS 'Blocks: while a row stands, neither user can follow the other; made and seen only by the blocker.';
COMMENT ON COLUMN blocks.blocker_id IS 'The user who blocks.';
COMMENT ON COLUMN blocks.blocked_id IS 'The user who is blocked (never told).';
COMMENT ON COLUMN blocks.created_at IS 'When the block began; orders the blocker''s list, newest first.';

-- One row per pending follow request to a private account.
CREATE TABLE follow_requests (
    requester_id BIGINT      NOT NULL REFERENCES users (id),
    target_id    BIGINT      NOT NULL REFERENCES users (id),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (requester_id, target_id),
    CONSTRAINT follow_requests_no_self_request CHECK (requester_id <> target_id)
);
-- "Requests to X, newest first" by keyset (created_at, requester_id).
CREATE INDEX follow_requests_target_recent_idx ON follow_requests (target_id, created_at DESC, requester_id DESC);

COMMENT ON TABLE follow_requests IS 'Pending follow requests to private accounts: approving one moves it to follows; rejecting, cancelling (unfollow) or a block deletes it.';
COMMENT ON COLUMN follow_requests.requester_id IS 'The user who asked to follow.';
COMMENT ON COLUMN follow_requests.target_id IS 'The private account asked.';
COMMENT ON COLUMN follow_requests.created_at IS 'When the request was made; orders the target''s requests, newest first.';

ALTER TABLE outbox DROP CONSTRAINT outbox_kind_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_kind_check
    CHECK (kind IN ('follow', 'unfollow', 'approve', 'remove', 'request'));
COMMENT ON COLUMN outbox.kind IS 'follow (+1: the follower followed), unfollow (-1: the follower unfollowed), approve (+1: the followee approved the follower''s request), remove (-1: the followee removed the follower, or a block did), request (0: the follower asked a private followee).';

-- The follow gate: what following does now, for each (follower, followee) of a batch, in order:
-- no_follower, no_followee, blocked, request (a private followee not followed yet) or follow. VOLATILE,
-- so each of its queries takes a fresh snapshot (READ COMMITTED) after the lock: a block or a privacy
-- change that commits while a write waits for the lock is seen, never missed by the calling statement's
-- older snapshot. Every user row the batch names is locked FOR KEY SHARE, in id order (as the foreign
-- keys lock them anyway: follows never wait for each other); a block and a change of privacy lock their
-- rows FOR UPDATE, which waits for the follows in flight and makes new ones wait. So a follow commits
-- wholly before a block (whose delete then removes its edge), or sees the block. One call per batch:
-- two queries in all, not four per follow.
CREATE FUNCTION follow_gates(followers BIGINT[], followees BIGINT[]) RETURNS TEXT[]
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    PERFORM 1 FROM users WHERE id = ANY (followers || followees) ORDER BY id FOR KEY SHARE;
    RETURN ARRAY(
        SELECT CASE
                   WHEN NOT EXISTS (SELECT 1 FROM users u WHERE u.id = p.follower) THEN 'no_follower'
                   WHEN fe.id IS NULL THEN 'no_followee'
                   WHEN EXISTS (SELECT 1 FROM blocks b
                                WHERE (b.blocker_id = p.follower AND b.blocked_id = p.followee)
                                   OR (b.blocker_id = p.followee AND b.blocked_id = p.follower)) THEN 'blocked'
                   WHEN fe.is_private AND NOT EXISTS (
                            SELECT 1 FROM follows f
                            WHERE f.follower_id = p.follower AND f.followee_id = p.followee) THEN 'request'
                   ELSE 'follow'
               END
        FROM unnest(followers, followees) WITH ORDINALITY AS p(follower, followee, n)
        LEFT JOIN users fe ON fe.id = p.followee
        ORDER BY p.n);
END
$$;
COMMENT ON FUNCTION follow_gates(BIGINT[], BIGINT[]) IS 'What each follow of a batch does now: no_follower, no_followee, blocked, request (private followee) or follow; locks the users rows FOR KEY SHARE first (see the migration).';
