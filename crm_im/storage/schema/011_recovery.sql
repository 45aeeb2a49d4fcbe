-- Connection state recovery (issue 17): what a Socket.IO socket needs to
-- come back with its private session id (pid) after a restart of its node
-- or on another node sharing the database. A row is written when the
-- socket logs in (expires_at NULL: its socket is connected) and given an
-- expiry when the socket goes away for a reason worth recovering from;
-- a logout or a deliberate disconnect (kick, ban, abuse, expired token)
-- deletes it. rooms is a JSON array of the chat rooms the socket was in;
-- last_seq the highest message seq when it logged in (the group and room
-- messages before it are history, not missed).
CREATE TABLE recovery_sessions (
    pid TEXT PRIMARY KEY NOT NULL,
    sid TEXT NOT NULL,
    user_id TEXT NOT NULL,
    user_name TEXT NOT NULL,
    avatar TEXT,
    rooms TEXT NOT NULL,
    last_seq BIGINT NOT NULL,
    expires_at BIGINT
);

CREATE INDEX recovery_sessions_user ON recovery_sessions (user_id);
CREATE INDEX recovery_sessions_expiry ON recovery_sessions (expires_at);
