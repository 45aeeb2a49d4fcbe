-- A check value per key ever used (crm_im.crypto.keys.EncryptionKey.check:
-- an HMAC of a constant under the key, which shows nothing of the key): a
-- key file that has a used key's id with other bytes is refused at start.
-- Before, such a file started, failed every old row, and sealed new rows
-- under a second key of the same id, which no key file could then read
-- together with the first. NULL for keys recorded before this version:
-- the first start that can verify one against a sealed row records it.
ALTER TABLE encryption_keys ADD COLUMN key_check TEXT;
