-- The back office (ADMIN.md): the audit log, bans, and every user seen.
-- Portable SQL (SQLite and PostgreSQL): no AUTOINCREMENT, no engine types;
-- ids are made by the application, times are BIGINT ms since the epoch.

-- every admin action that changed something: who, what, when, from where;
-- listed newest first, paged by (at, audit_id)
CREATE TABLE admin_audit (
    audit_id TEXT PRIMARY KEY NOT NULL,
    at BIGINT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT,
    detail TEXT,
    address TEXT NOT NULL
);

CREATE INDEX admin_audit_at ON admin_audit (at, audit_id);

-- a banned user is refused at login until unbanned or until_at (NULL: for good)
CREATE TABLE admin_bans (
    user_id TEXT PRIMARY KEY NOT NULL,
    until_at BIGINT,
    reason TEXT,
    banned_at BIGINT NOT NULL,
    banned_by TEXT NOT NULL
);

-- every user who ever logged in, with the name and avatar of their last login
CREATE TABLE users_seen (
    user_id TEXT PRIMARY KEY NOT NULL,
    name TEXT NOT NULL,
    avatar TEXT,
    first_seen BIGINT NOT NULL,
    last_seen BIGINT NOT NULL
);
