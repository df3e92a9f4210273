ALTER TABLE user_stats DROP COLUMN version;
