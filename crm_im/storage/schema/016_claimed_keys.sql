-- The one-time keys keys:claim handed out, per device (the newest few
-- hundred: see crm_im.storage.keys), so that an upload sending one of them
-- again does not store it anew. A client whose keys:upload ack was lost
-- sends the same keys again (Olm marks them published only once acked);
-- a key claimed in between would otherwise be stored again and handed out
-- a second time, and two senders would start sessions on one one-time key
-- (ENCRYPTION.md: no key is ever handed out twice).
CREATE TABLE claimed_one_time_keys (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    key_id BIGINT NOT NULL,
    public_key TEXT NOT NULL,
    claimed_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, key_id)
);
