COMMENT ON COLUMN outbox.published_at IS 'When the relay last republished this row to the stream (NULL: only the writer published it).';
