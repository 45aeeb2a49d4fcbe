-- End-to-end encryption (ENCRYPTION.md, "End to end"): the key directory,
-- and the columns of type 'encrypted' messages.
-- Portable SQL (SQLite and PostgreSQL): no engine types.

-- one row per device of a user: its long-term identity key and its
-- current signed pre-key (the server only stores and hands out public keys)
CREATE TABLE device_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    identity_key TEXT NOT NULL,
    signed_prekey_id BIGINT NOT NULL,
    signed_prekey TEXT NOT NULL,
    signed_prekey_signature TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id)
);

-- the one-time pre-keys of a device, each handed out once (keys:claim
-- deletes the row in the transaction that returns it)
CREATE TABLE one_time_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    key_id BIGINT NOT NULL,
    public_key TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, key_id)
);

-- A type 'encrypted' message keeps its ciphertext (the client's JSON value,
-- a string or an object of strings keyed by device id, as JSON text) and its
-- algorithm here; its content is ''. Other messages have NULL in both.
ALTER TABLE messages ADD COLUMN ciphertext TEXT;
ALTER TABLE messages ADD COLUMN algorithm TEXT;
