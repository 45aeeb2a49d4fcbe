-- The history-by-topic index holds only messages that have a topic.
--
-- Every index on messages costs each insert a page in the WAL at commit
-- (its keys are random, so each message lands on a different page), and
-- most messages carry no topic: as a partial index it costs them nothing.
-- "topic = ?" implies "topic IS NOT NULL", so SQLite still uses it for
-- history with a topic.
DROP INDEX messages_conversation_topic_seq;
CREATE INDEX messages_conversation_topic_seq ON messages (conversation, topic, seq) WHERE topic IS NOT NULL;
