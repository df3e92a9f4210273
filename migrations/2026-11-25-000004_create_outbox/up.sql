-- Transactional outbox: each edge change writes one row here in the same transaction;
-- the consumer deletes the row in the transaction that applies its delta, so a delta is applied exactly once.
CREATE TABLE outbox (
    id           BIGSERIAL   PRIMARY KEY,
    kind         TEXT        NOT NULL CHECK (kind IN ('follow', 'unfollow')),
    follower_id  BIGINT      NOT NULL,
    followee_id  BIGINT      NOT NULL,
    occurred_at  TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
    published_at TIMESTAMPTZ
);

-- The relay looks for rows nobody applied for a while, oldest first.
CREATE INDEX outbox_relay_idx ON outbox (COALESCE(published_at, occurred_at));

COMMENT ON TABLE outbox IS 'Follow events committed with their edge change and not yet applied to user_stats; the source of truth for the event stream.';
COMMENT ON COLUMN outbox.id IS 'Event id, carried in the stream entry; the consumer applies a delta only for an id it deletes here.';
COMMENT ON COLUMN outbox.kind IS 'follow (+1) or unfollow (-1).';
COMMENT ON COLUMN outbox.follower_id IS 'The user who followed or unfollowed.';
COMMENT ON COLUMN outbox.followee_id IS 'The user who was followed or unfollowed.';
COMMENT ON COLUMN outbox.occurred_at IS 'When the edge change committed (its follows.created_at for a follow).';
COMMENT ON COLUMN outbox.published_at IS 'When the relay last republished this row to the stream (NULL: only the writer published it).';
