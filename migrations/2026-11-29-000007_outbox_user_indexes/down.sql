DROP INDEX outbox_follower_idx;
DROP INDEX outbox_followee_idx;
