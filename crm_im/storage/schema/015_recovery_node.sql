-- The cluster node (--node-id) a recovery record's socket is connected to;
-- '' on a single node and for records written before this version. A node
-- starting again gives the records left without an expiry by its previous
-- life (sockets connected when it was killed) the window: only its own.
-- Before, it gave them to every record without one, those of the sockets
-- connected to the other nodes too, which then expired while connected,
-- and could no longer be recovered when their own node went down.
ALTER TABLE recovery_sessions ADD COLUMN node TEXT NOT NULL DEFAULT '';
