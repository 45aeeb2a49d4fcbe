-- File upload storage (FILES.md): resumable uploads, content-addressed
-- bytes with reference counts, file messages that name their file,
-- retention. Portable SQL (SQLite and PostgreSQL).

-- What a file is for and where it stands. Files kept before this version
-- stay readable: conversation NULL (their sender and recipient may read
-- them), state 'complete', sha256 NULL (bytes at their own path).
ALTER TABLE files ADD COLUMN conversation TEXT;
ALTER TABLE files ADD COLUMN state TEXT NOT NULL DEFAULT 'complete';
ALTER TABLE files ADD COLUMN sha256 TEXT;
ALTER TABLE files ADD COLUMN expected_sha256 TEXT;
ALTER TABLE files ADD COLUMN expires_at BIGINT;
ALTER TABLE files ADD COLUMN completed_at BIGINT;

-- a user's quota; abandoned uploads; retention
CREATE INDEX files_owner_state ON files (from_id, state);
CREATE INDEX files_uploading_expiry ON files (expires_at) WHERE state = 'uploading';
CREATE INDEX files_complete_created ON files (created_at) WHERE state = 'complete';

-- identical bytes are kept once: refs counts the complete files naming them
CREATE TABLE file_blobs (
    sha256 TEXT PRIMARY KEY NOT NULL,
    size BIGINT NOT NULL,
    refs BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);

-- a file message names its file; size and type travel with the message
ALTER TABLE messages ADD COLUMN file_id TEXT;
ALTER TABLE messages ADD COLUMN file_size BIGINT;
ALTER TABLE messages ADD COLUMN mime_type TEXT;
CREATE INDEX messages_file_id ON messages (file_id, server_timestamp) WHERE file_id IS NOT NULL;
