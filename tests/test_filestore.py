"""
Tests for L{crm_im.storage.files}: files on disk written from a thread pool,
records through L{IFileMetadata}.
"""

from __future__ import annotations

import errno
import os
import threading

from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.filepath import FilePath
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from crm_im.storage import (
    DiskFileStore,
    FileRecord,
    IFileMetadata,
    IFileStore,
    MemoryMessageStore,
    SQLiteMessageStore,
    isFileId,
    newFileId,
)
from crm_im.storage import files


@implementer(IFileMetadata)
class BrokenMetadata(MemoryMessageStore):
    """
    Metadata whose writes fail, and which counts lookups.
    """

    def __init__(self) -> None:
        """
        No lookups yet.
        """
        MemoryMessageStore.__init__(self)
        self.lookups = 0

    def recordFile(self, record: FileRecord) -> Deferred[None]:
        """
        Fail.
        """
        return fail(OSError("disk full"))

    def fileRecord(self, fileId: str) -> Deferred[FileRecord | None]:
        """
        Count the lookup, then look up.
        """
        self.lookups += 1
        return MemoryMessageStore.fileRecord(self, fileId)


class FileIdTests(SynchronousTestCase):
    """
    Tests for L{newFileId} and L{isFileId}.
    """

    def test_newIdsAreWellFormedAndDistinct(self) -> None:
        """
        New ids are 32 url-safe characters and do not repeat.
        """
        made = {newFileId() for _ in range(1000)}
        self.assertEqual(len(made), 1000)
        self.assertTrue(all(isFileId(fileId) for fileId in made))

    def test_malformedIds(self) -> None:
        """
        Anything not of the form is refused, path tricks included.
        """
        good = newFileId()
        for bad in [
            "",
            good[:-1],
            good + "A",
            "../" + good[3:],
            good[:31] + "/",
            good[:31] + ".",
            good[:31] + "\n",
            good + "\n",
            "..",
        ]:
            self.assertFalse(isFileId(bad), bad)


class DurableWriteTests(SynchronousTestCase):
    """
    Tests for C{_writeDurably}, which writes blobs and thumbnails.
    """

    def setUp(self) -> None:
        """
        A path in a directory of its own.
        """
        self.target = FilePath(self.mktemp()).child("thumb.jpg")

    def test_twoWritersOfOnePath(self) -> None:
        """
        A second writer of a path that writes and renames between the first
        one's write and its rename (two thumbnail jobs of one image; two
        nodes on shared storage) harms neither: each renames its own whole
        file, the last rename wins, no temporary file stays. (With one
        temporary name for the path, the second truncated the first's file
        and moved it away, and the first's rename failed.)
        """
        fsync = os.fsync
        writer = threading.current_thread()
        interleaved = []

        def fsyncThenInterleave(fd: int) -> None:
            fsync(fd)
            if not interleaved and threading.current_thread() is writer:
                interleaved.append(True)
                files._writeDurably(self.target, b"second")

        self.patch(files.os, "fsync", fsyncThenInterleave)
        files._writeDurably(self.target, b"first")
        self.assertEqual(interleaved, [True])
        self.assertEqual(self.target.getContent(), b"first")
        self.assertEqual(self.target.parent().listdir(), ["thumb.jpg"])

    def test_failedWriteLeavesNothing(self) -> None:
        """
        A write that fails (a full disk) raises, and removes its temporary
        file: its name is not used again, so nothing else would.
        """

        def full(fd: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        self.patch(files.os, "fsync", full)
        self.assertRaises(OSError, files._writeDurably, self.target, b"x")
        self.assertEqual(self.target.parent().listdir(), [])


class DiskFileStoreTests(TestCase):
    """
    Tests for L{DiskFileStore}.
    """

    def fileStore(self, metadata: IFileMetadata) -> DiskFileStore:
        """
        A file store in C{self.directory} with C{metadata}.
        """
        return DiskFileStore(
            self.directory, IReactorFromThreads(reactor), self.threadpool, metadata
        )

    def setUp(self) -> None:
        """
        A started thread pool, a memory metadata store and a file store in a
        temporary directory.
        """
        self.threadpool = ThreadPool(1, 1, "test-files")
        self.threadpool.start()
        self.addCleanup(self.threadpool.stop)
        self.metadata = MemoryMessageStore()
        self.directory = FilePath(self.mktemp())
        self.store = self.fileStore(self.metadata)

    def test_interface(self) -> None:
        """
        L{DiskFileStore} provides L{IFileStore}.
        """
        self.assertTrue(verifyObject(IFileStore, self.store))

    async def test_saveAndGet(self) -> None:
        """
        C{save} writes the bytes under the directory and records the file;
        C{get} finds the record and C{pathFor} the bytes.
        """
        data = b"\x00\x01binary\xff" * 1000
        record = await self.store.save(
            "alice", "bob", "a.pdf", "application/pdf", data, 1234
        )
        self.assertTrue(isFileId(record.fileId))
        self.assertEqual(
            (record.fromId, record.toId, record.fileName, record.mimeType),
            ("alice", "bob", "a.pdf", "application/pdf"),
        )
        self.assertEqual((record.size, record.createdAt), (len(data), 1234))
        self.assertEqual(await self.store.get(record.fileId), record)
        path = self.store.pathFor(record)
        self.assertTrue(path.segmentsFrom(self.directory))
        self.assertEqual(path.getContent(), data)
        self.assertEqual(path.parent().children(), [path])

    async def test_eachSaveGetsItsOwnFile(self) -> None:
        """
        Two saves of the same name get different ids and files.
        """
        first = await self.store.save("alice", "bob", "a.txt", None, b"one", 1)
        second = await self.store.save("alice", "bob", "a.txt", None, b"two", 2)
        self.assertNotEqual(first.fileId, second.fileId)
        self.assertEqual(self.store.pathFor(first).getContent(), b"one")
        self.assertEqual(self.store.pathFor(second).getContent(), b"two")

    async def test_writesOffTheReactorThread(self) -> None:
        """
        The bytes are written on a thread of the pool, not the reactor
        thread.
        """
        threads = []
        write = files._writeDurably

        def recordingWrite(path: FilePath[str], data: bytes) -> None:
            threads.append(threading.current_thread())
            write(path, data)

        self.patch(files, "_writeDurably", recordingWrite)
        await self.store.save("alice", "bob", "a.txt", None, b"x", 1)
        self.assertEqual(len(threads), 1)
        self.assertIsNot(threads[0], threading.current_thread())

    async def test_getRefusesMalformedIds(self) -> None:
        """
        C{get} answers L{None} for a malformed id without asking the metadata
        store, and C{pathFor} refuses to build a path for one.
        """
        metadata = BrokenMetadata()
        store = self.fileStore(metadata)
        self.assertIsNone(await store.get("../../etc/passwd"))
        self.assertIsNone(await store.get(""))
        self.assertEqual(metadata.lookups, 0)
        self.assertIsNone(await store.get(newFileId()))
        self.assertEqual(metadata.lookups, 1)
        self.assertRaises(
            ValueError,
            store.pathFor,
            FileRecord("../x", "alice", "bob", "x", None, 0, 0),
        )

    async def test_failedRecordRemovesBytes(self) -> None:
        """
        If the record cannot be stored, C{save} fails and leaves no file
        behind.
        """
        store = self.fileStore(BrokenMetadata())
        await self.assertFailure(
            store.save("alice", "bob", "a.txt", None, b"x", 1), OSError
        )
        leftovers = [path for path in self.directory.walk() if path.isfile()]
        self.assertEqual(leftovers, [])

    async def test_recordsInSQLite(self) -> None:
        """
        With the SQLite message store as metadata, a saved file is found
        again after the database is reopened.
        """
        path = self.mktemp()
        metadata = SQLiteMessageStore(path, reactor)
        await metadata.open()
        store = self.fileStore(metadata)
        record = await store.save("alice", "bob", "a.txt", "text/plain", b"hi", 5)
        await metadata.close()
        reopened = SQLiteMessageStore(path, reactor)
        await reopened.open()
        self.addCleanup(reopened.close)
        store = self.fileStore(reopened)
        self.assertEqual(await store.get(record.fileId), record)
        self.assertEqual(store.pathFor(record).getContent(), b"hi")
