-- Groups, chat rooms, read cursors and recall (GROUPS.md).
--
-- Group and room messages live in the messages table with every other
-- message, so that seq stays one counter: their conversation key is
-- NUL 'g' NUL groupId or NUL 'r' NUL roomId, to_id is '' (no user id is
-- empty), and they are stored delivered and read (delivered = 1,
-- read_at = server_timestamp) so that the 1:1 offline-queue and unread
-- partial indexes never hold them: members catch up from read cursors.
ALTER TABLE messages ADD COLUMN recalled_by TEXT;
ALTER TABLE messages ADD COLUMN recalled_at BIGINT;
-- type 'system' messages: what happened, as JSON {action, by, userIds?}
ALTER TABLE messages ADD COLUMN system TEXT;

CREATE TABLE groups (
    group_id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    avatar TEXT,
    owner_id TEXT NOT NULL,
    created_by TEXT NOT NULL,
    client_id TEXT,
    created_at BIGINT NOT NULL,
    dissolved_at BIGINT
);

-- a retried group:create (same creator, same id) finds its group
CREATE UNIQUE INDEX groups_creator_client_id ON groups (created_by, client_id);

-- current members have left_at NULL; former ones keep their row (they may
-- not read the group any more, and are told FORBIDDEN rather than NOT_FOUND)
CREATE TABLE group_members (
    group_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    role TEXT NOT NULL,
    joined_at BIGINT NOT NULL,
    ordinal BIGINT NOT NULL,
    left_at BIGINT,
    PRIMARY KEY (group_id, user_id)
);

CREATE INDEX group_members_user ON group_members (user_id, group_id) WHERE left_at IS NULL;

-- how far each user has read each conversation (a group's today; a 1:1
-- conversation can move to the same model)
CREATE TABLE read_cursors (
    conversation TEXT NOT NULL,
    user_id TEXT NOT NULL,
    read_seq BIGINT NOT NULL,
    PRIMARY KEY (conversation, user_id)
);

CREATE TABLE rooms (
    room_id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    topic TEXT,
    public SMALLINT NOT NULL,
    created_by TEXT NOT NULL,
    client_id TEXT,
    created_at BIGINT NOT NULL
);

CREATE UNIQUE INDEX rooms_creator_client_id ON rooms (created_by, client_id);
