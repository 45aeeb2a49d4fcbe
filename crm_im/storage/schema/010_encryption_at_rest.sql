-- Encryption at rest (ENCRYPTION.md, crm_im/crypto): the id of the key that
-- sealed a row's user text (NULL: stored in clear), the key ids ever used on
-- this database (read at start: a server without one of them refuses to
-- start), and how far a rekey (crm_im-rekey) went. Portable SQL.

ALTER TABLE messages ADD COLUMN key_id TEXT;
ALTER TABLE files ADD COLUMN key_id TEXT;

CREATE TABLE encryption_keys (
    key_id TEXT PRIMARY KEY NOT NULL,
    first_used BIGINT NOT NULL
);

-- one row per table a rekey walks: the key it moves rows to, and the last
-- key (seq or file id) done
CREATE TABLE rekey_progress (
    target TEXT PRIMARY KEY NOT NULL,
    key_id TEXT NOT NULL,
    position TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
