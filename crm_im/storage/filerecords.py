# -*- test-case-name: tests.test_filerecords -*-
"""
The records of stored files in SQL (the bytes are files on disk,
L{crm_im.storage.files}): C{*_txn} functions run on the pool thread, and
L{SQLFileRecords}, the L{IFileRecords} of a SQL message store, which runs
them through that store's group commit.

Uploaded bytes are content-addressed: a complete file names its blob by
SHA-256, and the C{file_blobs} table counts the complete files that refer
to each blob, so identical bytes are kept once and deleted with their last
reference. Portable SQL (SQLite and PostgreSQL).
"""

from __future__ import annotations

from typing import Any, Sequence

from twisted.internet.defer import Deferred
from zope.interface import implementer

from ..crypto.records import RecordCipher, UnknownKeyError, fieldAAD
from .database import Transaction
from .interface import ABORTED, COMPLETE, EXPIRED, UPLOADING, FileRecord, IFileRecords
from .section import StoreSection


_FILE_COLUMNS = (
    "file_id, from_id, to_id, file_name, mime_type, size, created_at,"
    " conversation, state, sha256, expected_sha256, expires_at, completed_at, key_id"
)


def _nameAAD(fileId: str) -> bytes:
    """
    The associated data of a file record's sealed name: its file id.
    """
    return fieldAAD("files", "file_name", fileId)


def _record(row: Sequence[Any], cipher: RecordCipher | None) -> FileRecord:
    """
    A L{FileRecord} from a row of C{_FILE_COLUMNS}, its name decrypted if
    it was sealed at rest (C{key_id}, the last column, not NULL).
    """
    keyId = row[-1]
    if keyId is None:
        return FileRecord(*row[:-1])
    if cipher is None:
        raise UnknownKeyError(
            f"file {row[0]!r} is encrypted at rest (key {keyId!r}) and no --encryption-keys file was given"
        )
    return FileRecord(row[0], row[1], row[2], cipher.open(keyId, row[3], _nameAAD(row[0])), *row[4:-1])


def recordFile_txn(txn: Transaction, record: FileRecord) -> None:
    """
    Insert a file record (its name sealed with C{txn.cipher}, if any).
    """
    cipher = txn.cipher
    txn.execute(
        f"INSERT INTO files ({_FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            record.fileId,
            record.fromId,
            record.toId,
            record.fileName if cipher is None else cipher.seal(record.fileName, _nameAAD(record.fileId)),
            record.mimeType,
            record.size,
            record.createdAt,
            record.conversation,
            record.state,
            record.sha256,
            record.expectedSha256,
            record.expiresAt,
            record.completedAt,
            None if cipher is None else cipher.currentId,
        ),
    )
    if record.state == COMPLETE and record.sha256 is not None:
        _takeBlob_txn(txn, record.sha256, record.size, record.createdAt)


def fileRecord_txn(txn: Transaction, fileId: str) -> FileRecord | None:
    """
    The record of C{fileId}, if any.
    """
    txn.execute(f"SELECT {_FILE_COLUMNS} FROM files WHERE file_id = ?", (fileId,))
    row = txn.fetchone()
    return None if row is None else _record(row, txn.cipher)


def _takeBlob_txn(txn: Transaction, sha256: str, size: int, now: int) -> None:
    txn.execute(
        "INSERT INTO file_blobs (sha256, size, refs, created_at) VALUES (?, ?, 1, ?)"
        " ON CONFLICT (sha256) DO UPDATE SET refs = file_blobs.refs + 1",
        (sha256, size, now),
    )


def quotaUsed_txn(txn: Transaction, userId: str) -> int:
    """
    See L{IFileRecords.quotaUsed}.
    """
    txn.execute(
        "SELECT COALESCE(SUM(size), 0) FROM files WHERE from_id = ? AND state IN (?, ?)",
        (userId, UPLOADING, COMPLETE),
    )
    row = txn.fetchone()
    return int(row[0]) if row is not None else 0


def touchUpload_txn(txn: Transaction, fileId: str, expiresAt: int) -> None:
    """
    See L{IFileRecords.touchUpload}.
    """
    txn.execute("UPDATE files SET expires_at = ? WHERE file_id = ? AND state = ?", (expiresAt, fileId, UPLOADING))


def completeUpload_txn(txn: Transaction, fileId: str, sha256: str, now: int) -> FileRecord | None:
    """
    See L{IFileRecords.completeUpload}.
    """
    txn.execute(
        "UPDATE files SET state = ?, sha256 = ?, completed_at = ?, expires_at = NULL WHERE file_id = ? AND state = ?",
        (COMPLETE, sha256, now, fileId, UPLOADING),
    )
    if txn.rowcount != 1:
        return None
    record = fileRecord_txn(txn, fileId)
    assert record is not None
    _takeBlob_txn(txn, sha256, record.size, now)
    return record


def abortUpload_txn(txn: Transaction, fileId: str, now: int) -> bool:
    """
    See L{IFileRecords.abortUpload}.
    """
    txn.execute(
        "UPDATE files SET state = ?, completed_at = ? WHERE file_id = ? AND state = ?",
        (ABORTED, now, fileId, UPLOADING),
    )
    return bool(txn.rowcount == 1)


def expiredUploads_txn(txn: Transaction, now: int, limit: int) -> list[FileRecord]:
    """
    See L{IFileRecords.expiredUploads}.
    """
    txn.execute(
        f"SELECT {_FILE_COLUMNS} FROM files WHERE state = ? AND expires_at < ? ORDER BY expires_at LIMIT ?",
        (UPLOADING, now, limit),
    )
    return [_record(row, txn.cipher) for row in txn.fetchall()]


def retentionCandidates_txn(txn: Transaction, cutoff: int, limit: int) -> list[FileRecord]:
    """
    See L{IFileRecords.retentionCandidates}.
    """
    txn.execute(
        f"SELECT {', '.join('f.' + c.strip() for c in _FILE_COLUMNS.split(','))} FROM files f"
        " WHERE f.state = ? AND f.created_at < ?"
        " AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.file_id = f.file_id AND m.server_timestamp >= ?)"
        " ORDER BY f.created_at LIMIT ?",
        (COMPLETE, cutoff, cutoff, limit),
    )
    return [_record(row, txn.cipher) for row in txn.fetchall()]


def expireFile_txn(txn: Transaction, fileId: str) -> tuple[str | None, bool]:
    """
    See L{IFileRecords.expireFile}.
    """
    record = fileRecord_txn(txn, fileId)
    if record is None or record.state != COMPLETE:
        return None, False
    txn.execute("UPDATE files SET state = ? WHERE file_id = ?", (EXPIRED, fileId))
    if record.sha256 is None:
        return None, True
    txn.execute("UPDATE file_blobs SET refs = refs - 1 WHERE sha256 = ?", (record.sha256,))
    txn.execute("SELECT refs FROM file_blobs WHERE sha256 = ?", (record.sha256,))
    row = txn.fetchone()
    if row is None or row[0] <= 0:
        txn.execute("DELETE FROM file_blobs WHERE sha256 = ?", (record.sha256,))
        return record.sha256, True
    return record.sha256, False


def blobReferenced_txn(txn: Transaction, sha256: str) -> bool:
    """
    See L{IFileRecords.blobReferenced}.
    """
    txn.execute("SELECT refs FROM file_blobs WHERE sha256 = ?", (sha256,))
    row = txn.fetchone()
    return row is not None and row[0] > 0


def fileConversations_txn(txn: Transaction, fileId: str) -> list[str]:
    """
    See L{IFileRecords.fileConversations}.
    """
    txn.execute("SELECT DISTINCT conversation FROM messages WHERE file_id = ? LIMIT 100", (fileId,))
    return [row[0] for row in txn.fetchall()]


@implementer(IFileRecords)
class SQLFileRecords(StoreSection):
    """
    L{IFileRecords} on a SQL message store: reads on its pool, writes in
    its group commit.
    """

    def recordFile(self, record: FileRecord) -> Deferred[None]:
        """
        See L{IFileMetadata.recordFile}.
        """
        return self._writeTxn("recordFile", lambda txn: recordFile_txn(txn, record))

    def fileRecord(self, fileId: str) -> Deferred[FileRecord | None]:
        """
        See L{IFileMetadata.fileRecord}.
        """
        return self._readTxn("fileRecord", lambda txn: fileRecord_txn(txn, fileId))

    def quotaUsed(self, userId: str) -> Deferred[int]:
        """
        See L{IFileRecords.quotaUsed}.
        """
        return self._readTxn("quotaUsed", lambda txn: quotaUsed_txn(txn, userId))

    def touchUpload(self, fileId: str, expiresAt: int) -> Deferred[None]:
        """
        See L{IFileRecords.touchUpload}.
        """
        return self._writeTxn("touchUpload", lambda txn: touchUpload_txn(txn, fileId, expiresAt))

    def completeUpload(self, fileId: str, sha256: str, now: int) -> Deferred[FileRecord | None]:
        """
        See L{IFileRecords.completeUpload}.
        """
        return self._writeTxn("completeUpload", lambda txn: completeUpload_txn(txn, fileId, sha256, now))

    def abortUpload(self, fileId: str, now: int) -> Deferred[bool]:
        """
        See L{IFileRecords.abortUpload}.
        """
        return self._writeTxn("abortUpload", lambda txn: abortUpload_txn(txn, fileId, now))

    def expiredUploads(self, now: int, limit: int) -> Deferred[list[FileRecord]]:
        """
        See L{IFileRecords.expiredUploads}.
        """
        return self._readTxn("expiredUploads", lambda txn: expiredUploads_txn(txn, now, limit))

    def retentionCandidates(self, cutoff: int, limit: int) -> Deferred[list[FileRecord]]:
        """
        See L{IFileRecords.retentionCandidates}.
        """
        return self._readTxn("retentionCandidates", lambda txn: retentionCandidates_txn(txn, cutoff, limit))

    def expireFile(self, fileId: str) -> Deferred[tuple[str | None, bool]]:
        """
        See L{IFileRecords.expireFile}.
        """
        return self._writeTxn("expireFile", lambda txn: expireFile_txn(txn, fileId))

    def blobReferenced(self, sha256: str) -> Deferred[bool]:
        """
        See L{IFileRecords.blobReferenced}.
        """
        return self._readTxn("blobReferenced", lambda txn: blobReferenced_txn(txn, sha256))

    def fileConversations(self, fileId: str) -> Deferred[list[str]]:
        """
        See L{IFileRecords.fileConversations}.
        """
        return self._readTxn("fileConversations", lambda txn: fileConversations_txn(txn, fileId))
