ALTER TABLE user_stats RESET (fillfactor);
