-- The relay now stamps every stale row it looks at, and republishes only those whose stream entry is gone.
-- The column keeps its name so that instances of the previous version keep working during a rolling deploy.
COMMENT ON COLUMN outbox.published_at IS 'When a relay last looked at this row (republishing it only if its stream entry was gone); NULL: no relay has yet. The relay looks again once FOLLOW_RELAY_AFTER_MS has passed since COALESCE(published_at, occurred_at).';
