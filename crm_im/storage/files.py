# -*- test-case-name: tests.test_filestore -*-
"""
L{DiskFileStore}: transferred files as files on disk, their records in the
message store's database (table C{files}, through L{IFileMetadata}).

A file's id is 32 url-safe characters from L{secrets}; its bytes are at
C{<directory>/<first two characters>/<id>}. Writing happens on a thread of the
injected thread pool: to a temporary file, flushed and C{fsync}ed, renamed in
place, the directory C{fsync}ed; only then is the record committed. So a
record always names bytes that are there; a crash in between leaves at most an
unreferenced file. Ids not of that form are refused before any path is built,
so no id can name a path outside the directory.
"""

from __future__ import annotations

import os
import re
import secrets

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.filepath import FilePath
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from .interface import FileRecord, IFileMetadata, IFileStore

_FILE_ID = re.compile(r"\A[A-Za-z0-9_-]{32}\Z")


def newFileId() -> str:
    """
    A new random file id: 32 url-safe characters (192 bits).
    """
    return secrets.token_urlsafe(24)


def isFileId(fileId: str) -> bool:
    """
    Whether C{fileId} has the form of the ids L{newFileId} makes.
    """
    return _FILE_ID.match(fileId) is not None


def _writeDurably(path: FilePath[str], data: bytes) -> None:
    """
    Write C{data} to C{path} atomically and durably (blocking: run it on a
    pool thread).
    """
    parent = path.parent()
    parent.makedirs(ignoreExistingDirectory=True)
    temporary = path.siblingExtension(".tmp")
    with open(temporary.path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary.path, path.path)
    directoryFd = os.open(parent.path, os.O_RDONLY)
    try:
        os.fsync(directoryFd)
    finally:
        os.close(directoryFd)


def _remove(path: FilePath[str]) -> None:
    """
    Remove C{path} if it is there (blocking).
    """
    try:
        path.remove()
    except FileNotFoundError:
        pass


@implementer(IFileStore)
class DiskFileStore:
    """
    Files under one directory, records in an L{IFileMetadata}.
    """

    log = Logger()

    def __init__(
        self,
        directory: FilePath[str],
        reactor: IReactorFromThreads,
        threadpool: ThreadPool,
        metadata: IFileMetadata,
    ) -> None:
        """
        @param directory: where the files go; created on the first save.
        @param reactor: delivers the thread pool's results.
        @param threadpool: runs the blocking file I/O (started and stopped by
            its owner).
        @param metadata: keeps the records, usually the message store.
        """
        self.directory = directory
        self._reactor = reactor
        self._threadpool = threadpool
        self._metadata = metadata

    def _pathForId(self, fileId: str) -> FilePath[str]:
        """
        Where the bytes of C{fileId} are.

        @raise ValueError: if C{fileId} is not a well-formed id.
        """
        if not isFileId(fileId):
            raise ValueError(f"not a file id: {fileId!r}")
        return self.directory.child(fileId[:2]).child(fileId)

    async def _save(
        self,
        fromId: str,
        toId: str,
        fileName: str,
        mimeType: str | None,
        data: bytes,
        now: int,
    ) -> FileRecord:
        record = FileRecord(
            fileId=newFileId(),
            fromId=fromId,
            toId=toId,
            fileName=fileName,
            mimeType=mimeType,
            size=len(data),
            createdAt=now,
        )
        path = self._pathForId(record.fileId)
        await deferToThreadPool(
            self._reactor, self._threadpool, _writeDurably, path, data
        )
        try:
            await self._metadata.recordFile(record)
        except BaseException:
            await deferToThreadPool(self._reactor, self._threadpool, _remove, path)
            raise
        return record

    def save(
        self,
        fromId: str,
        toId: str,
        fileName: str,
        mimeType: str | None,
        data: bytes,
        now: int,
    ) -> Deferred[FileRecord]:
        """
        See L{IFileStore.save}.
        """
        return Deferred.fromCoroutine(
            self._save(fromId, toId, fileName, mimeType, data, now)
        )

    def get(self, fileId: str) -> Deferred[FileRecord | None]:
        """
        See L{IFileStore.get}.
        """
        if not isFileId(fileId):
            return succeed(None)
        return self._metadata.fileRecord(fileId)

    def pathFor(self, record: FileRecord) -> FilePath[str]:
        """
        See L{IFileStore.pathFor}.

        @raise ValueError: if the record's id is not a well-formed id.
        """
        return self._pathForId(record.fileId)
