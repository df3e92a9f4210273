-- A per-row version, so that cached counts can be replaced only by newer ones (see src/cache).
ALTER TABLE user_stats ADD COLUMN version BIGINT NOT NULL DEFAULT 0;

COMMENT ON COLUMN user_stats.version IS 'Bumped by every change of this row; caches keep the value with the highest version, so a late write of an older value cannot win.';
