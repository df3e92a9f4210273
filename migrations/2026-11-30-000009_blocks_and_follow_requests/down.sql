DROP FUNCTION follow_gates(BIGINT[], BIGINT[]);
-- Events of the new kinds still unapplied keep their deltas under the old kinds.
UPDATE outbox SET kind = 'follow' WHERE kind = 'approve';
UPDATE outbox SET kind = 'unfollow' WHERE kind = 'remove';
DELETE FROM outbox WHERE kind = 'request';
ALTER TABLE outbox DROP CONSTRAINT outbox_kind_check;
ALTER TABLE outbox ADD CONSTRAINT outbox_kind_check CHECK (kind IN ('follow', 'unfollow'));
COMMENT ON COLUMN outbox.kind IS 'follow (+1) or unfollow (-1).';
DROP TABLE follow_requests;
DROP TABLE blocks;
ALTER TABLE users DROP COLUMN is_private;
