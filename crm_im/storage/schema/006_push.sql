-- Offline push notifications (PUSH.md): the pushkeys of each user, the
-- groups each user muted, and the outbox of notifications to send.
-- Portable SQL (SQLite and PostgreSQL): no AUTOINCREMENT, no engine types.

-- a device's push registration; a pushkey belongs to one user at a time
CREATE TABLE push_keys (
    pushkey TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    platform TEXT,
    lang TEXT,
    data TEXT,
    created_at BIGINT NOT NULL
);

CREATE INDEX push_keys_user ON push_keys (user_id, created_at);

-- a muted group notifies its member only when mentioned
CREATE TABLE push_mutes (
    user_id TEXT NOT NULL,
    group_id TEXT NOT NULL,
    PRIMARY KEY (user_id, group_id)
);

-- one row per (recipient, stored message) to notify, written in the same
-- transaction as the message; deleted once sent, skipped or given up
CREATE TABLE push_outbox (
    user_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, seq)
);

CREATE INDEX push_outbox_seq ON push_outbox (seq);
