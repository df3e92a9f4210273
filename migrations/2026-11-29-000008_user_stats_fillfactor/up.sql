-- Every applied event updates two user_stats rows. With pages half empty, the new row version almost
-- always fits on the same page, so the update is HOT: no index entry, less WAL, no bloat of the key
-- index. The table is small (one narrow row per user), so the doubled size costs little. Rows written
-- before this migration move to roomy pages as they are updated, or at once with VACUUM FULL user_stats.
ALTER TABLE user_stats SET (fillfactor = 50);
