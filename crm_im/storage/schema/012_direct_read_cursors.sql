-- 1:1 read state moves from a flag on each message to a read cursor per
-- (conversation, reader), the model groups already use (issue 18).
--
-- Every index on messages costs each insert a page of the WAL at commit.
-- The two that served the per-message read state were keyed by the
-- recipient and the client's random message id, or kept every unread
-- message: bench/store.py measured them at ~40 % of the store's CPU per
-- message. Reading now moves a cursor (read_cursors, one row per reader
-- and conversation) and finds what it newly covers through the
-- conversation's own index; message:read {messageIds} names the friend,
-- and its ids are resolved through the sender's unique (from_id,
-- message_id) index.
--
-- What was read before this version becomes each reader's cursor: the
-- highest seq they had read in each conversation.
INSERT INTO read_cursors (conversation, user_id, read_seq)
    SELECT conversation, to_id, MAX(seq) FROM messages
    WHERE to_id <> '' AND read_at IS NOT NULL
    GROUP BY conversation, to_id;

DROP INDEX messages_unread_from;
DROP INDEX messages_recipient_message_id;

-- group and room messages by id (recall names them by id); 1:1 messages,
-- most of them, are not in it
CREATE INDEX messages_shared_message_id ON messages (message_id) WHERE to_id = '';
