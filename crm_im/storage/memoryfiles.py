# -*- test-case-name: tests.test_filerecords -*-
"""
L{MemoryFileRecords}: L{IFileRecords} as a fake in memory, beside a
L{MemoryMessageStore} (whose C{files} dict and messages it shares), with
the semantics of L{crm_im.storage.filerecords}. Every L{Deferred} it
returns has already fired.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from .interface import ABORTED, COMPLETE, EXPIRED, UPLOADING, FileRecord, IFileRecords


@implementer(IFileRecords)
class MemoryFileRecords:
    """
    File records and blob reference counts in dicts.

    @ivar blobs: references per content address.
    """

    def __init__(self, store: Any) -> None:
        """
        @param store: the L{MemoryMessageStore} whose C{files} and
            C{messages} these records go with.
        """
        self._store = store
        self.files: dict[str, FileRecord] = store.files
        self.blobs: dict[str, int] = {}

    def recordFile(self, record: FileRecord) -> Deferred[None]:
        """
        See L{IFileMetadata.recordFile}.
        """
        if record.fileId in self.files:
            return fail(ValueError(f"file {record.fileId} recorded already"))
        self.files[record.fileId] = record
        if record.state == COMPLETE and record.sha256 is not None:
            self.blobs[record.sha256] = self.blobs.get(record.sha256, 0) + 1
        return succeed(None)

    def fileRecord(self, fileId: str) -> Deferred[FileRecord | None]:
        """
        See L{IFileMetadata.fileRecord}.
        """
        return succeed(self.files.get(fileId))

    def quotaUsed(self, userId: str) -> Deferred[int]:
        """
        See L{IFileRecords.quotaUsed}.
        """
        return succeed(
            sum(r.size for r in self.files.values() if r.fromId == userId and r.state in (UPLOADING, COMPLETE))
        )

    def touchUpload(self, fileId: str, expiresAt: int) -> Deferred[None]:
        """
        See L{IFileRecords.touchUpload}.
        """
        record = self.files.get(fileId)
        if record is not None and record.state == UPLOADING:
            self.files[fileId] = attrs.evolve(record, expiresAt=expiresAt)
        return succeed(None)

    def completeUpload(self, fileId: str, sha256: str, now: int) -> Deferred[FileRecord | None]:
        """
        See L{IFileRecords.completeUpload}.
        """
        record = self.files.get(fileId)
        if record is None or record.state != UPLOADING:
            return succeed(None)
        record = attrs.evolve(record, state=COMPLETE, sha256=sha256, completedAt=now, expiresAt=None)
        self.files[fileId] = record
        self.blobs[sha256] = self.blobs.get(sha256, 0) + 1
        return succeed(record)

    def abortUpload(self, fileId: str, now: int) -> Deferred[bool]:
        """
        See L{IFileRecords.abortUpload}.
        """
        record = self.files.get(fileId)
        if record is None or record.state != UPLOADING:
            return succeed(False)
        self.files[fileId] = attrs.evolve(record, state=ABORTED, completedAt=now)
        return succeed(True)

    def expiredUploads(self, now: int, limit: int) -> Deferred[list[FileRecord]]:
        """
        See L{IFileRecords.expiredUploads}.
        """
        found = [
            r for r in self.files.values() if r.state == UPLOADING and r.expiresAt is not None and r.expiresAt < now
        ]
        found.sort(key=lambda r: r.expiresAt or 0)
        return succeed(found[:limit])

    def retentionCandidates(self, cutoff: int, limit: int) -> Deferred[list[FileRecord]]:
        """
        See L{IFileRecords.retentionCandidates}.
        """
        recent = {
            m.fileId
            for m in self._store.messages.values()
            if m.fileId is not None and m.serverTimestamp >= cutoff
        }
        found = [
            r
            for r in self.files.values()
            if r.state == COMPLETE and r.createdAt < cutoff and r.fileId not in recent
        ]
        found.sort(key=lambda r: r.createdAt)
        return succeed(found[:limit])

    def expireFile(self, fileId: str) -> Deferred[tuple[str | None, bool]]:
        """
        See L{IFileRecords.expireFile}.
        """
        record = self.files.get(fileId)
        if record is None or record.state != COMPLETE:
            return succeed((None, False))
        self.files[fileId] = attrs.evolve(record, state=EXPIRED)
        if record.sha256 is None:
            return succeed((None, True))
        refs = self.blobs.get(record.sha256, 0) - 1
        if refs <= 0:
            self.blobs.pop(record.sha256, None)
            return succeed((record.sha256, True))
        self.blobs[record.sha256] = refs
        return succeed((record.sha256, False))

    def blobReferenced(self, sha256: str) -> Deferred[bool]:
        """
        See L{IFileRecords.blobReferenced}.
        """
        return succeed(self.blobs.get(sha256, 0) > 0)

    def fileConversations(self, fileId: str) -> Deferred[list[str]]:
        """
        See L{IFileRecords.fileConversations}.
        """
        found = {m.conversation for m in self._store.messages.values() if m.fileId == fileId}
        return succeed(sorted(found)[:100])
