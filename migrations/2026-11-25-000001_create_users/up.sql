-- The local record of each user the follow graph knows about.
CREATE TABLE users (
    id           BIGINT      PRIMARY KEY CHECK (id > 0),
    handle       TEXT        NOT NULL CHECK (handle ~ '^[A-Za-z0-9_]{1,30}$'),
    display_name TEXT        CHECK (char_length(display_name) <= 100),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Handles are unique ignoring case, and looked up that way.
CREATE UNIQUE INDEX users_handle_lower_key ON users (lower(handle));

COMMENT ON TABLE users IS 'Local record of a user: the id comes from the user service; the follow graph refers to it.';
COMMENT ON COLUMN users.id IS 'User id assigned by the user service (positive 64-bit integer).';
COMMENT ON COLUMN users.handle IS 'Public handle, 1 to 30 of [A-Za-z0-9_], unique ignoring case (users_handle_lower_key).';
COMMENT ON COLUMN users.display_name IS 'Name shown to people, optional, at most 100 characters.';
COMMENT ON COLUMN users.created_at IS 'When this record was first stored here.';
COMMENT ON COLUMN users.updated_at IS 'When handle or display name last changed through upsertUser.';
