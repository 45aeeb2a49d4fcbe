-- 1:1 messages. seq orders every stored message; (from_id, message_id) is
-- unique (a resend is not stored twice); conversation is the two user ids
-- sorted and joined with NUL, so both directions share one index range.
-- client_timestamp is NUMERIC: integers stay integers, fractions stay REAL.
CREATE TABLE messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL,
    from_id TEXT NOT NULL,
    from_name TEXT NOT NULL,
    to_id TEXT NOT NULL,
    conversation TEXT NOT NULL,
    topic TEXT,
    type TEXT NOT NULL,
    content TEXT NOT NULL,
    file_url TEXT,
    file_name TEXT,
    client_timestamp NUMERIC,
    server_timestamp BIGINT NOT NULL,
    delivered SMALLINT NOT NULL DEFAULT 0,
    read_at BIGINT
);

CREATE UNIQUE INDEX messages_sender_message_id ON messages (from_id, message_id);

-- history, without and with a topic
CREATE INDEX messages_conversation_seq ON messages (conversation, seq);
CREATE INDEX messages_conversation_topic_seq ON messages (conversation, topic, seq);

-- offline messages of a user
CREATE INDEX messages_undelivered ON messages (to_id, seq) WHERE delivered = 0;

-- message:read, both forms
CREATE INDEX messages_unread_from ON messages (to_id, from_id, seq) WHERE read_at IS NULL;
CREATE INDEX messages_recipient_message_id ON messages (to_id, message_id);
