# -*- test-case-name: tests.test_filestore -*-
"""
L{DiskFileStore}: the bytes of files on disk, content-addressed, their
records in the message store's database (through L{IFileRecords}).

Layout under the directory::

    blobs/<2>/<sha256>        the bytes of every complete file, kept once
    uploads/<fileId>.part     an upload's bytes while they arrive
    thumbs/<2>/<sha256>.jpg   thumbnails of images
    <2>/<fileId>              files kept before content addressing

A file's id is 32 url-safe characters from L{secrets}; ids and digests not
of their form are refused before any path is built, so no name a client
sends can reach a path outside the directory. Every blocking operation
runs on a thread of the injected pool. A blob is written to a temporary
file (or is the finished C{.part}), flushed and C{fsync}ed, renamed in
place, its directory C{fsync}ed; only then is the record committed. A
crash in between leaves at most bytes nobody refers to. Blob bytes are
deleted only when the last record referring to them goes, and never while
a new reference to them is being committed (one lock per digest).

With encryption at rest (a L{FileCipher}), blobs and thumbnails are sealed
(L{crm_im.crypto.stream}: chunked AES-256-GCM, their path under the
directory as associated data, so bytes moved to another blob's place fail);
a finished upload is sealed into its blob as it is moved there. Bytes
written before encryption was on stay readable as they are. An upload's
C{.part} is in clear while it arrives (tus appends at any offset), and is
deleted once sealed.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import secrets
from typing import IO, TYPE_CHECKING, Any, Callable, TypeVar

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.filepath import FilePath
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from ..serial import KeyedSerializer
from .interface import COMPLETE, FileRecord, IFileBytes, IFileMetadata, IFileStore

if TYPE_CHECKING:
    from twisted.web.static import File

    from ..crypto.stream import FileCipher

_FILE_ID = re.compile(r"\A[A-Za-z0-9_-]{32}\Z")
_SHA256 = re.compile(r"\A[0-9a-f]{64}\Z")

#: Bytes read at a time when hashing or copying.
READ_SIZE = 1 << 20

_R = TypeVar("_R")


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


def isDigest(sha256: str) -> bool:
    """
    Whether C{sha256} is a lower-case hex SHA-256.
    """
    return _SHA256.match(sha256) is not None


def _fsyncDirectory(directory: FilePath[str]) -> None:
    fd = os.open(directory.path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replaceDurably(target: FilePath[str], fill: Callable[[IO[bytes]], object], onlyIfPresent: bool = False) -> bool:
    """
    Write C{target} atomically and durably (blocking): C{fill} writes its
    bytes to a temporary file beside it, which is C{fsync}ed and renamed
    over it, then the directory is C{fsync}ed.

    The temporary file's name is unique (L{FilePath.temporarySibling}:
    random characters, then the name, then C{.tmp}, which the rekey walk
    skips), not C{<name>.tmp}: two writers of one path at once (two
    thumbnail jobs of one image, two nodes on shared storage, a rekey run
    and another) each rename their own whole file and the last rename
    wins, where with one fixed name the second truncated the first's file
    and its rename then found it gone (C{FileNotFoundError}). A write that
    fails removes its temporary file (a unique name is not reused, so it
    would stay).

    @param onlyIfPresent: replace C{target} only if it is still there once
        the bytes are written (a file sealed again by C{crm_im-rekey} that
        retention deleted meanwhile stays deleted).
    @return: whether C{target} was written.
    """
    parent = target.parent()
    parent.makedirs(ignoreExistingDirectory=True)
    temporary = target.temporarySibling(".tmp")
    try:
        with open(temporary.path, "wb") as out:
            fill(out)
            out.flush()
            os.fsync(out.fileno())
        if onlyIfPresent and not os.path.exists(target.path):
            _remove(temporary)
            return False
        os.replace(temporary.path, target.path)
    except BaseException:
        _remove(temporary)
        raise
    _fsyncDirectory(parent)
    return True


def _writeDurably(path: FilePath[str], data: bytes) -> None:
    """
    Write C{data} to C{path} atomically and durably (blocking: run it on a
    pool thread); see L{replaceDurably}.
    """
    replaceDurably(path, lambda out: out.write(data))


def _sealDurably(source: FilePath[str], target: FilePath[str], cipher: "FileCipher", identity: bytes) -> None:
    """
    Seal the bytes of C{source} into C{target} atomically and durably, a
    chunk at a time, then delete C{source} (blocking).
    """

    def seal(out: IO[bytes]) -> None:
        with open(source.path, "rb") as f:
            cipher.sealStream(f, out, identity)

    replaceDurably(target, seal)
    _remove(source)


def _remove(path: FilePath[str]) -> None:
    """
    Remove C{path} if it is there (blocking).
    """
    try:
        path.remove()
    except FileNotFoundError:
        pass


def _moveDurably(source: FilePath[str], target: FilePath[str]) -> None:
    """
    C{fsync} C{source} and rename it to C{target} (blocking). Identical
    content may be there already: the rename replaces it atomically.
    """
    with open(source.path, "rb") as f:
        os.fsync(f.fileno())
    parent = target.parent()
    parent.makedirs(ignoreExistingDirectory=True)
    os.replace(source.path, target.path)
    _fsyncDirectory(parent)


def hashFile(path: FilePath[str]) -> str:
    """
    The SHA-256 of a file, read a chunk at a time (blocking).
    """
    digest = hashlib.sha256()
    with open(path.path, "rb") as f:
        while chunk := f.read(READ_SIZE):
            digest.update(chunk)
    return digest.hexdigest()


class PartWriter:
    """
    Appends to one upload's C{.part} file on the pool's threads; the SHA-256
    of everything written since offset 0 is kept if C{hasher} was given.

    One writer per upload at a time; its writes are not concurrent (the
    caller waits for each before the next).
    """

    def __init__(self, store: "DiskFileStore", handle: IO[bytes], size: int, hasher: Any) -> None:
        self._store = store
        self._handle = handle
        #: bytes in the file when it was opened
        self.size = size
        self.hasher = hasher

    def _writeBlocking(self, data: bytes) -> None:
        self._handle.write(data)
        if self.hasher is not None:
            self.hasher.update(data)

    def write(self, data: bytes) -> Deferred[None]:
        """
        Append C{data} (written through to the OS before this fires).
        """
        return self._store._inThread(self._writeBlocking, data)

    def _closeBlocking(self, size: int | None) -> None:
        try:
            self._handle.flush()
            if size is not None:
                self._handle.truncate(size)
        finally:
            self._handle.close()

    def close(self, size: int | None = None) -> Deferred[None]:
        """
        Flush and close the file; with C{size}, cut it back to that many
        bytes first (the bytes of a refused request are discarded).
        """
        return self._store._inThread(self._closeBlocking, size)


@implementer(IFileStore, IFileBytes)
class DiskFileStore:
    """
    File bytes under one directory, records in an L{IFileMetadata} (an
    L{IFileRecords} for uploads and blob reference counts).
    """

    log = Logger()

    def __init__(
        self,
        directory: FilePath[str],
        reactor: IReactorFromThreads,
        threadpool: ThreadPool,
        metadata: IFileMetadata,
        cipher: "FileCipher | None" = None,
    ) -> None:
        """
        @param directory: where the files go; created on the first save.
        @param reactor: delivers the thread pool's results.
        @param threadpool: runs the blocking file I/O (started and stopped by
            its owner).
        @param metadata: keeps the records, usually the message store.
        @param cipher: seals the bytes at rest (C{--encryption-keys}), or
            L{None}.
        """
        self.cipher = cipher
        self.directory = directory
        self._reactor = reactor
        self._threadpool = threadpool
        self._metadata = metadata
        self._blobLocks = KeyedSerializer()

    def _inThread(self, func: Callable[..., _R], *args: Any) -> Deferred[_R]:
        return deferToThreadPool(self._reactor, self._threadpool, func, *args)

    # ---- paths

    def _pathForId(self, fileId: str) -> FilePath[str]:
        """
        Where the bytes of a file kept before content addressing are.

        @raise ValueError: if C{fileId} is not a well-formed id.
        """
        if not isFileId(fileId):
            raise ValueError(f"not a file id: {fileId!r}")
        return self.directory.child(fileId[:2]).child(fileId)

    def blobPath(self, sha256: str) -> FilePath[str]:
        """
        Where the bytes with this SHA-256 are.

        @raise ValueError: if C{sha256} is not a lower-case hex digest.
        """
        if not isDigest(sha256):
            raise ValueError(f"not a SHA-256: {sha256!r}")
        return self.directory.child("blobs").child(sha256[:2]).child(sha256)

    def partPath(self, fileId: str) -> FilePath[str]:
        """
        Where an upload's bytes are while they arrive.

        @raise ValueError: if C{fileId} is not a well-formed id.
        """
        if not isFileId(fileId):
            raise ValueError(f"not a file id: {fileId!r}")
        return self.directory.child("uploads").child(fileId + ".part")

    def thumbnailPath(self, sha256: str) -> FilePath[str]:
        """
        Where the thumbnail of the image with this SHA-256 is.
        """
        if not isDigest(sha256):
            raise ValueError(f"not a SHA-256: {sha256!r}")
        return self.directory.child("thumbs").child(sha256[:2]).child(sha256 + ".jpg")

    def pathFor(self, record: FileRecord) -> FilePath[str]:
        """
        See L{IFileStore.pathFor}.

        @raise ValueError: if the record's id or digest is malformed.
        """
        if record.sha256 is not None:
            return self.blobPath(record.sha256)
        return self._pathForId(record.fileId)

    # ---- bytes sealed at rest

    def identityOf(self, path: FilePath[str]) -> bytes:
        """
        The associated data of the bytes at C{path}: their place under the
        directory (C{blobs/ab/ab12...}), the same after a restore into
        another directory.
        """
        return "/".join(path.segmentsFrom(self.directory)).encode("utf-8")

    def openBytes(self, path: FilePath[str]) -> IO[bytes]:
        """
        See L{IFileBytes.openBytes}.

        @raise crm_im.crypto.DecryptionError: for bytes sealed with a key
            not in the key file, or altered.
        """
        from ..crypto.stream import readHeader

        handle = open(path.path, "rb")
        try:
            _, keyId = readHeader(handle)
            if keyId is None:
                return handle
            if self.cipher is None:
                from ..crypto.records import UnknownKeyError

                raise UnknownKeyError(f"{path.path} is encrypted at rest and no --encryption-keys file was given")
            return io.BufferedReader(self.cipher.reader(handle, self.identityOf(path)))
        except BaseException:
            handle.close()
            raise

    def writeBytes(self, path: FilePath[str], data: bytes) -> None:
        """
        See L{IFileBytes.writeBytes}.
        """
        if self.cipher is not None:
            data = self.cipher.seal(data, self.identityOf(path))
        _writeDurably(path, data)

    def resourceFor(self, path: FilePath[str], mimeType: str) -> "File":
        """
        See L{IFileStore.resourceFor}.
        """
        from twisted.web.static import File

        resource: File
        if self.cipher is None:
            resource = File(path.path, defaultType=mimeType)
        else:
            from ..crypto.web import SealedFile

            resource = SealedFile(path.path, self.cipher, self.identityOf(path), mimeType)
        resource.type = mimeType  # type: ignore[assignment]
        resource.encoding = None
        return resource

    # ---- files sent inline

    def _writeBlob(self, sha256: str, data: bytes) -> bool:
        """
        Write the blob unless it is there. @return: whether it was written.
        """
        path = self.blobPath(sha256)
        if path.exists():
            return False
        self.writeBytes(path, data)
        return True

    async def _save(
        self,
        fromId: str,
        toId: str,
        fileName: str,
        mimeType: str | None,
        data: bytes,
        now: int,
        conversation: str | None,
    ) -> FileRecord:
        sha256 = hashlib.sha256(data).hexdigest()

        async def store() -> FileRecord:
            written = await self._inThread(self._writeBlob, sha256, data)
            record = FileRecord(
                fileId=newFileId(),
                fromId=fromId,
                toId=toId,
                fileName=fileName,
                mimeType=mimeType,
                size=len(data),
                createdAt=now,
                conversation=conversation,
                state=COMPLETE,
                sha256=sha256,
                completedAt=now,
            )
            try:
                await self._metadata.recordFile(record)
            except BaseException:
                # nobody refers to bytes written just now (the lock is ours)
                if written:
                    await self._inThread(_remove, self.blobPath(sha256))
                raise
            return record

        return await self.withBlob(sha256, store)

    def save(
        self,
        fromId: str,
        toId: str,
        fileName: str,
        mimeType: str | None,
        data: bytes,
        now: int,
        conversation: str | None = None,
    ) -> Deferred[FileRecord]:
        """
        See L{IFileStore.save}: the bytes are kept once however many files
        carry them.
        """
        return Deferred.fromCoroutine(self._save(fromId, toId, fileName, mimeType, data, now, conversation))

    def get(self, fileId: str) -> Deferred[FileRecord | None]:
        """
        See L{IFileStore.get}.
        """
        if not isFileId(fileId):
            return succeed(None)
        return self._metadata.fileRecord(fileId)

    # ---- blobs

    async def withBlob(self, sha256: str, action: Callable[[], Any]) -> Any:
        """
        Run C{action} (a coroutine function) holding the lock of the blob
        C{sha256}: taking or dropping a reference and writing or deleting
        its bytes never interleave.
        """
        return await self._blobLocks.run(sha256, action)

    def removeBlob(self, sha256: str) -> Deferred[None]:
        """
        Delete the bytes (and thumbnail) of a blob nobody refers to any more
        (call it inside L{withBlob}).
        """

        def remove() -> None:
            _remove(self.blobPath(sha256))
            _remove(self.thumbnailPath(sha256))

        return self._inThread(remove)

    def removeLegacy(self, record: FileRecord) -> Deferred[None]:
        """
        Delete the bytes of a file kept before content addressing.
        """
        return self._inThread(_remove, self._pathForId(record.fileId))

    # ---- uploads

    def _openPartBlocking(self, fileId: str) -> tuple[IO[bytes], int]:
        path = self.partPath(fileId)
        path.parent().makedirs(ignoreExistingDirectory=True)
        handle = open(path.path, "ab")
        return handle, handle.tell()

    async def _openPart(self, fileId: str, hasher: Any) -> PartWriter:
        handle, size = await self._inThread(self._openPartBlocking, fileId)
        return PartWriter(self, handle, size, hasher)

    def openPart(self, fileId: str, hasher: Any = None) -> Deferred[PartWriter]:
        """
        Open an upload's C{.part} file for appending (created if absent).

        @param hasher: a C{hashlib} object fed with every byte written, for
            a file written from its first byte.
        """
        return Deferred.fromCoroutine(self._openPart(fileId, hasher))

    def partSize(self, fileId: str) -> Deferred[int]:
        """
        The bytes of an upload on disk: where it resumes, after a restart
        too (0 if nothing arrived).
        """

        def size() -> int:
            try:
                return os.stat(self.partPath(fileId).path).st_size
            except FileNotFoundError:
                return 0

        return self._inThread(size)

    def hashPart(self, fileId: str) -> Deferred[str]:
        """
        The SHA-256 of an upload's bytes, read from disk (when its stream
        was not hashed from the first byte, e.g. after a restart).
        """
        return self._inThread(hashFile, self.partPath(fileId))

    def commitPart(self, fileId: str, sha256: str) -> Deferred[None]:
        """
        Make a finished upload's bytes the blob C{sha256} (call it inside
        L{withBlob}).
        """
        if self.cipher is not None:
            target = self.blobPath(sha256)
            return self._inThread(_sealDurably, self.partPath(fileId), target, self.cipher, self.identityOf(target))
        return self._inThread(_moveDurably, self.partPath(fileId), self.blobPath(sha256))

    def removePart(self, fileId: str) -> Deferred[None]:
        """
        Delete an abandoned upload's bytes.
        """
        return self._inThread(_remove, self.partPath(fileId))

    def run(self, func: Callable[..., _R], *args: Any) -> Deferred[_R]:
        """
        Run blocking C{func} (thumbnails) on the store's thread pool.
        """
        return self._inThread(func, *args)
