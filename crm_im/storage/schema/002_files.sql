-- Records of files kept by the file store (the bytes are files on disk).
CREATE TABLE files (
    file_id TEXT PRIMARY KEY NOT NULL,
    from_id TEXT NOT NULL,
    to_id TEXT NOT NULL,
    file_name TEXT NOT NULL,
    mime_type TEXT,
    size BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
