"""
Tests for L{crm_im.uploads.service}: uploads created within the limits,
completed into content-addressed blobs (identical bytes kept once,
reference-counted), abandoned uploads swept and old files expired on an
injected clock, an upload resumed by a new service from the bytes on disk
(a restart or a kill), and thumbnails (with a decompression bomb refused).

The service's clock is a L{task.Clock}; the file store's threads report
through the real reactor, so these tests wait on L{Deferred}s.
"""

from __future__ import annotations

import errno
import hashlib
import io
import struct
import zlib
from typing import Any, Callable

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredQueue
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.task import Clock
from twisted.python.filepath import FilePath
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import TestCase
from twisted.web.http_headers import Headers
from zope.interface.verify import verifyObject

from crm_im.im.errors import INVALID_PAYLOAD, IMError
from crm_im.im.files import TooManyUploads, UploadRefused
from crm_im.storage import MemoryMessageStore, SQLiteMessageStore
from crm_im.storage.filerecords import SQLFileRecords
from crm_im.storage.files import DiskFileStore, newFileId
from crm_im.storage.interface import ABORTED, COMPLETE, EXPIRED, UPLOADING, FileRecord, IFileBytes, IFileRecords, NewMessage
from crm_im.storage.memoryfiles import MemoryFileRecords
from crm_im.uploads import tus
from crm_im.im.files import cleanMimeType
from crm_im.uploads.service import UploadService, UploadSettings, UploadSink
from crm_im.uploads.thumbnails import ThumbnailError, makeThumbnail

START = 1_700_000_000.0


class FakeWriteRequest:
    """
    What an L{UploadSink} needs of its request: pausing and early answers.
    """

    def __init__(self) -> None:
        self.paused = False
        self.early: list[tuple[int, bytes]] = []

    def pauseReading(self) -> None:
        self.paused = True

    def resumeReading(self) -> None:
        self.paused = False

    def answerEarly(self, status: int, reason: bytes, headers: Any, body: bytes) -> None:
        self.early.append((status, body))


class SteppedRequest(FakeWriteRequest):
    """
    A request that tells when the sink asks for more of the body (it
    resumes reading once all it had is written): a test sends a body a
    chunk at a time, each after the last was written, as a slow client's
    chunked body arrives.

    @ivar reads: has an item for each time the sink resumed reading.
    """

    def __init__(self) -> None:
        super().__init__()
        self.reads: DeferredQueue[None] = DeferredQueue()

    def resumeReading(self) -> None:
        super().resumeReading()
        self.reads.put(None)


class ManualThreads:
    """
    Stands for the file store's C{run} (the thumbnail jobs' threads): keeps
    each call until the test runs them, so jobs interleave as it says.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...], Deferred[Any]]] = []

    def run(self, func: Callable[..., Any], *args: Any) -> Deferred[Any]:
        """
        Keep the call; fire the result when the test runs it.
        """
        d: Deferred[Any] = Deferred()
        self.calls.append((func, args, d))
        return d

    def drain(self) -> list[Callable[..., Any]]:
        """
        Run the calls kept, and those they lead to, in order, on this
        thread. @return: the functions run.
        """
        ran = []
        while self.calls:
            func, args, d = self.calls.pop(0)
            ran.append(func)
            try:
                result = func(*args)
            except BaseException:
                d.errback()
            else:
                d.callback(result)
        return ran


def greyPNG(width: int, height: int) -> bytes:
    """
    A real grey PNG of a few hundred bytes.
    """
    return png(width, height, (b"\x00" + bytes(x % 256 for x in range(width))) * height)


class ServiceTestsMixin:
    """
    An L{UploadService} on a memory or SQLite store; subclasses say which.
    """

    settings = UploadSettings(maxFileSize=1000, quota=2500, uploadIdle=60, retentionDays=1)

    def makeRecords(self) -> tuple[Any, IFileRecords]:
        raise NotImplementedError()

    async def asyncSetUp(self) -> None:
        self.threadpool = ThreadPool(1, 2, "test-uploads")
        self.threadpool.start()
        self.addCleanup(self.threadpool.stop)  # type: ignore[attr-defined]
        self.clock = Clock()
        self.clock.advance(START)
        self.store, self.records = await self.makeRecords()
        self.directory = FilePath(self.mktemp())  # type: ignore[attr-defined]
        self.files = DiskFileStore(self.directory, IReactorFromThreads(reactor), self.threadpool, self.records)
        from crm_im.uploads.signing import URLSigner

        self.service = UploadService(self.files, self.records, URLSigner(b"s" * 32, self.clock), self.clock, self.settings)

    async def upload(self, data: bytes, size: int | None = None, sha256: str | None = None) -> str:
        """
        Create an upload of C{size} bytes (default: C{data}'s) and write
        C{data} through a sink; return its id.
        """
        from crm_im.storage.files import newFileId

        fileId = newFileId()
        length = len(data) if size is None else size
        await self.service.create("alice", "bob", "alice\x1fbob", "a.bin", length, None, sha256, fileId)
        if data:
            await self.write(fileId, data)
        return fileId

    def patchSink(self, fileId: str, offset: int, request: FakeWriteRequest) -> UploadSink:
        """
        The sink of a chunked PATCH at C{offset} (started).
        """
        headers = Headers(
            {
                b"tus-resumable": [b"1.0.0"],
                b"upload-offset": [b"%d" % offset],
                b"content-type": [b"application/offset+octet-stream"],
            }
        )
        sink = UploadSink(self.service, request, fileId, self.service.signer.uploadToken(fileId), False, headers, None)
        sink.start()
        return sink

    async def write(self, fileId: str, data: bytes, offset: int = 0, lost: bool = False) -> Any:
        """
        One PATCH of C{data} at C{offset}, through an L{UploadSink}.
        """
        request = FakeWriteRequest()
        sink = self.patchSink(fileId, offset, request)
        for start in range(0, len(data), 7):
            sink.write(data[start:start + 7])
        if lost:
            from twisted.python.failure import Failure

            sink.connectionLost(Failure(ConnectionError("gone")))
            await sink.finished
            return None
        sink.bodyDone()
        if request.early:
            raise tus.TusError(request.early[0][0], request.early[0][1].decode())
        return await sink.result

    async def test_createWithinLimits(self) -> None:
        """
        An upload past C{maxFileSize} or the quota (counting unfinished
        uploads) is refused; a new one is recorded as uploading until
        C{uploadIdle} from now, with a URL holding its token.
        """
        with self.assertRaises(UploadRefused):  # type: ignore[attr-defined]
            await self.service.create("alice", "bob", "k", "a", 1001, None, None, "A" * 32)
        answer = await self.service.create("alice", "bob", "k", "a", 1000, "Text/Plain; x=y", None, "B" * 32)
        self.assertEqual(answer["expiresAt"], int(START * 1000) + 60_000)  # type: ignore[attr-defined]
        self.assertIn(self.service.signer.uploadToken("B" * 32), answer["uploadUrl"])  # type: ignore[attr-defined]
        record = await self.records.fileRecord("B" * 32)
        self.assertEqual((record.state, record.mimeType), (UPLOADING, "text/plain"))  # type: ignore[attr-defined,union-attr]
        await self.service.create("alice", "bob", "k", "a", 1000, None, None, "C" * 32)
        with self.assertRaises(UploadRefused):  # type: ignore[attr-defined]
            await self.service.create("alice", "bob", "k", "a", 501, None, None, "D" * 32)
        await self.service.create("bob", "alice", "k", "a", 1000, None, None, "E" * 32)

    async def test_identicalBytesKeptOnce(self) -> None:
        """
        Two uploads of the same bytes are two files and one blob; the blob
        goes with the last file that refers to it (retention).
        """
        data = b"same bytes" * 10
        first = await self.upload(data)
        second = await self.upload(data)
        a = await self.records.fileRecord(first)
        b = await self.records.fileRecord(second)
        digest = hashlib.sha256(data).hexdigest()
        self.assertEqual((a.state, a.sha256, b.sha256), (COMPLETE, digest, digest))  # type: ignore[attr-defined,union-attr]
        blobs = [p for p in self.directory.child("blobs").walk() if p.isfile()]
        self.assertEqual(blobs, [self.files.blobPath(digest)])  # type: ignore[attr-defined]
        self.assertFalse(self.files.partPath(first).exists())  # type: ignore[attr-defined]
        await self.service.expire(a)  # type: ignore[arg-type]
        self.assertTrue(self.files.blobPath(digest).exists())  # type: ignore[attr-defined]
        await self.service.expire(b)  # type: ignore[arg-type]
        self.assertFalse(self.files.blobPath(digest).exists())  # type: ignore[attr-defined]
        self.assertEqual((await self.records.fileRecord(first)).state, EXPIRED)  # type: ignore[attr-defined,union-attr]

    async def test_loadsOfUnknownUploadAllRefused(self) -> None:
        """
        Loads of one unknown upload at once all fail with 404: the second
        of two such loads was given C{None} for the upload.
        """
        from crm_im.storage.files import newFileId

        fileId = newFileId()
        loads = [self.service.load(fileId) for _ in range(3)]
        for load in loads:
            with self.assertRaises(tus.TusError) as refused:  # type: ignore[attr-defined]
                await load
            self.assertEqual(refused.exception.status, 404)  # type: ignore[attr-defined]

    async def test_abandonedUploadsSwept(self) -> None:
        """
        An upload with no byte for C{uploadIdle} is given up by the sweep
        and its bytes deleted; one still receiving bytes is not.
        """
        idle = await self.upload(b"", size=10)
        await self.write(idle, b"half", lost=True)
        busy = await self.upload(b"", size=10)
        self.assertTrue(self.files.partPath(idle).exists())  # type: ignore[attr-defined]
        self.clock.advance(59)
        await self.write(busy, b"more", lost=True)
        self.clock.advance(1)
        await self.service.sweep()
        self.assertEqual((await self.records.fileRecord(idle)).state, UPLOADING)  # type: ignore[attr-defined,union-attr]
        self.clock.advance(1)
        await self.service.sweep()
        self.assertEqual((await self.records.fileRecord(idle)).state, ABORTED)  # type: ignore[attr-defined,union-attr]
        self.assertFalse(self.files.partPath(idle).exists())  # type: ignore[attr-defined]
        self.assertEqual((await self.records.fileRecord(busy)).state, UPLOADING)  # type: ignore[attr-defined,union-attr]
        with self.assertRaises(tus.TusError) as caught:  # type: ignore[attr-defined]
            await self.write(idle, b"late", offset=4)
        self.assertEqual(caught.exception.status, 410)  # type: ignore[attr-defined]
        self.clock.advance(60)
        await self.service.sweep()
        self.assertEqual((await self.records.fileRecord(busy)).state, ABORTED)  # type: ignore[attr-defined,union-attr]

    async def test_sweepOnTheLoopingCall(self) -> None:
        """
        L{UploadService.start} sweeps every C{sweepInterval} of the clock.
        """
        fileId = await self.upload(b"", size=10)
        self.service.start()
        self.addCleanup(self.service.stop)  # type: ignore[attr-defined]
        for _ in range(2):
            self.clock.advance(60)
            if self.service._sweeping is not None:
                # the SQLite store answers from its thread
                await self.service._sweeping
        self.assertEqual((await self.records.fileRecord(fileId)).state, ABORTED)  # type: ignore[attr-defined,union-attr]

    async def test_resumedByANewService(self) -> None:
        """
        After a restart (or a kill) a new service finds the upload from its
        record and the bytes on disk, resumes at their length, and hashes
        the file from disk when it completes.
        """
        data = bytes(range(200)) * 4
        fileId = await self.upload(b"", size=len(data))
        await self.write(fileId, data[:333], lost=True)
        from crm_im.uploads.signing import URLSigner

        self.service = UploadService(self.files, self.records, URLSigner(b"s" * 32, self.clock), self.clock, self.settings)
        active = await self.service.load(fileId)
        self.assertEqual((active.upload.offset, active.hasher), (333, None))  # type: ignore[attr-defined]
        with self.assertRaises(tus.TusError) as caught:  # type: ignore[attr-defined]
            await self.write(fileId, data[333:], offset=0)
        self.assertEqual(caught.exception.status, 409)  # type: ignore[attr-defined]
        await self.write(fileId, data[333:], offset=333)
        record = await self.records.fileRecord(fileId)
        self.assertEqual((record.state, record.sha256), (COMPLETE, hashlib.sha256(data).hexdigest()))  # type: ignore[attr-defined,union-attr]

    async def test_resumedThroughAnotherNode(self) -> None:
        """
        Nodes of a cluster share the files directory and the records, and
        a balancer sends an upload's requests to any of them: a node that
        served the upload before another one appended to it answers C{HEAD}
        with the bytes on disk, takes the next C{PATCH} there, and leaves
        an upload another node completed complete.
        """
        data = bytes(range(200)) * 4
        fileId = await self.upload(b"", size=len(data))
        from crm_im.uploads.signing import URLSigner

        node1 = self.service
        node2 = UploadService(self.files, self.records, URLSigner(b"s" * 32, self.clock), self.clock, self.settings)
        self.assertEqual((await node1.load(fileId)).upload.offset, 0)  # type: ignore[attr-defined]
        self.service = node2
        await self.write(fileId, data[:333], lost=True)
        self.service = node1
        self.assertEqual((await node1.load(fileId)).upload.head(node1.nowMs()), 333)  # type: ignore[attr-defined]
        await self.write(fileId, data[333:500], offset=333, lost=True)
        self.service = node2
        self.assertEqual((await node2.load(fileId)).upload.offset, 500)  # type: ignore[attr-defined]
        await self.write(fileId, data[500:], offset=500)
        record = await self.records.fileRecord(fileId)
        self.assertEqual((record.state, record.sha256), (COMPLETE, hashlib.sha256(data).hexdigest()))  # type: ignore[attr-defined,union-attr]
        again = await node1.load(fileId)
        self.assertEqual((again.upload.state, again.upload.offset), (tus.COMPLETE, len(data)))  # type: ignore[attr-defined]
        self.assertNotIn(fileId, node1.active)  # type: ignore[attr-defined]
        with open(self.files.blobPath(hashlib.sha256(data).hexdigest()).path, "rb") as blob:  # type: ignore[attr-defined]
            self.assertEqual(blob.read(), data)  # type: ignore[attr-defined]

    async def test_retention(self) -> None:
        """
        With C{retentionDays}, a file older than that which no newer
        message carries is expired by the sweep; one a recent message
        carries stays.
        """
        old = await self.upload(b"old bytes")
        kept = await self.upload(b"kept bytes")
        self.clock.advance(2 * 86400)
        await self.store.storeMessage(
            NewMessage("alice", "A", "bob", "m1", None, "file", "", None, "a.bin", None, int(self.clock.seconds() * 1000), fileId=kept)
        )
        await self.service.sweep()
        self.assertEqual((await self.records.fileRecord(old)).state, EXPIRED)  # type: ignore[attr-defined,union-attr]
        self.assertEqual((await self.records.fileRecord(kept)).state, COMPLETE)  # type: ignore[attr-defined,union-attr]

    async def test_retentionBacklog(self) -> None:
        """
        A sweep expires the files past retention batch after batch (more
        than one batch of them), up to C{sweepBatches}; the next sweep goes
        on from there. It says how many it expired.
        """
        from twisted.logger import capturedLogs

        self.service.settings = attrs.evolve(self.settings, retentionDays=1, sweepBatch=2, sweepBatches=2)
        ids = [await self.upload(b"bytes %d" % i) for i in range(5)]
        self.clock.advance(2 * 86400)

        async def states() -> list[str]:
            return [(await self.records.fileRecord(fileId)).state for fileId in ids]  # type: ignore[union-attr]

        with capturedLogs() as events:
            await self.service.sweep()
        self.assertEqual((await states()).count(EXPIRED), 4)
        self.assertEqual([e["count"] for e in events if "count" in e], [4])
        await self.service.sweep()
        self.assertEqual(await states(), [EXPIRED] * 5)

    async def test_boundedBuffer(self) -> None:
        """
        A sink holds at most what arrives while one write is on a thread:
        its buffer never holds the file.
        """
        data = b"x" * 1000
        await self.upload(data)
        self.assertLessEqual(self.service.peakBuffered, 1000)  # type: ignore[attr-defined]
        self.assertGreater(self.service.peakBuffered, 0)  # type: ignore[attr-defined]

    async def test_emptyFile(self) -> None:
        """
        A file of 0 bytes is complete as soon as it is announced.
        """
        fileId = await self.upload(b"")
        record = await self.records.fileRecord(fileId)
        self.assertEqual((record.state, record.sha256), (COMPLETE, hashlib.sha256(b"").hexdigest()))  # type: ignore[attr-defined,union-attr]

    async def test_overrunDiscardsTheRequest(self) -> None:
        """
        A chunked PATCH whose body goes past the upload's length is 413 and
        none of its bytes count, although those before the excess reach the
        length: the upload is back where the PATCH began, incomplete (not
        complete with a cut body), and resumes from there.
        """
        data = bytes(range(40))
        fileId = await self.upload(b"", size=20)
        await self.write(fileId, data[:5])
        request = SteppedRequest()
        sink = self.patchSink(fileId, 5, request)
        for chunk in (data[5:12], data[12:20], data[20:27]):
            await request.reads.get()
            sink.write(chunk)
        await sink.finished
        self.assertEqual([status for status, _ in request.early], [413])  # type: ignore[attr-defined]
        record = await self.records.fileRecord(fileId)
        self.assertEqual(record.state, UPLOADING)  # type: ignore[attr-defined,union-attr]
        active = await self.service.load(fileId)
        self.assertEqual((active.upload.offset, active.upload.state), (5, tus.UPLOADING))  # type: ignore[attr-defined]
        self.assertEqual(self.files.partPath(fileId).getsize(), 5)  # type: ignore[attr-defined]
        await self.write(fileId, data[5:20], offset=5)
        record = await self.records.fileRecord(fileId)
        self.assertEqual((record.state, record.sha256), (COMPLETE, hashlib.sha256(data[:20]).hexdigest()))  # type: ignore[attr-defined,union-attr]

    async def test_emptyFileOfAnotherChecksum(self) -> None:
        """
        A file of 0 bytes announced with a SHA-256 other than the empty
        file's is refused at once, C{INVALID_PAYLOAD} (it cannot match),
        with nothing recorded or stored; with the empty file's it is
        complete.
        """
        with self.assertRaises(IMError) as caught:  # type: ignore[attr-defined]
            await self.service.create("alice", "bob", "k", "empty.txt", 0, None, "a" * 64, "F" * 32)
        self.assertEqual(caught.exception.code, INVALID_PAYLOAD)  # type: ignore[attr-defined]
        self.assertIn("does not match an empty file", caught.exception.message)  # type: ignore[attr-defined]
        self.assertIsNone(await self.records.fileRecord("F" * 32))  # type: ignore[attr-defined]
        self.assertEqual(self.service.active, {})  # type: ignore[attr-defined]
        self.assertEqual([p for p in self.directory.walk() if p.isfile()], [])  # type: ignore[attr-defined]
        empty = hashlib.sha256(b"").hexdigest()
        await self.service.create("alice", "bob", "k", "empty.txt", 0, None, empty, "G" * 32)
        record = await self.records.fileRecord("G" * 32)
        self.assertEqual((record.state, record.sha256), (COMPLETE, empty))  # type: ignore[attr-defined,union-attr]

    async def test_checksumMismatch(self) -> None:
        """
        Bytes whose SHA-256 is not the one announced are 460; the upload
        is given up and its bytes deleted.
        """
        with self.assertRaises(tus.TusError) as caught:  # type: ignore[attr-defined]
            await self.upload(b"abc", sha256="0" * 64)
        self.assertEqual(caught.exception.status, 460)  # type: ignore[attr-defined]
        self.assertEqual([p for p in self.directory.walk() if p.isfile()], [])  # type: ignore[attr-defined]

    async def imageUpload(self, data: bytes, mimeType: str) -> FileRecord:
        """
        Upload C{data} as a file of C{mimeType}; return its record.
        """
        fileId = newFileId()
        await self.service.create("alice", "bob", "alice\x1fbob", "a", len(data), mimeType, None, fileId)
        await self.write(fileId, data)
        record = await self.records.fileRecord(fileId)
        assert record is not None
        return record

    async def test_oneThumbnailJobPerImage(self) -> None:
        """
        Requests for an image's thumbnail while a job for it is under way
        (the one started on completion; the first C{GET}s of its
        C{thumbnailUrl}) wait for that job: the thumbnail is made once and
        each request gets its path. A request after the job finds it made.
        """
        threads = ManualThreads()
        self.patch(self.files, "run", threads.run)  # type: ignore[attr-defined]
        record = await self.imageUpload(greyPNG(300, 200), "image/png")
        first = self.service.thumbnail(record)
        second = self.service.thumbnail(record)
        ran = threads.drain()
        self.assertEqual(ran.count(makeThumbnail), 1, ran)  # type: ignore[attr-defined]
        target = self.files.thumbnailPath(record.sha256)  # type: ignore[arg-type]
        self.assertEqual(self.successResultOf(first), target)  # type: ignore[attr-defined]
        self.assertEqual(self.successResultOf(second), target)  # type: ignore[attr-defined]
        with self.files.openBytes(target) as handle:
            self.assertEqual(handle.read(3), b"\xff\xd8\xff")  # type: ignore[attr-defined]
        later = self.service.thumbnail(record)
        self.assertNotIn(makeThumbnail, threads.drain())  # type: ignore[attr-defined]
        self.assertEqual(self.successResultOf(later), target)  # type: ignore[attr-defined]

    async def test_oneThumbnailJobFailsForAll(self) -> None:
        """
        The failure of the one job for an image (bytes that are no image)
        goes to every request that waited for it.
        """
        threads = ManualThreads()
        self.patch(self.files, "run", threads.run)  # type: ignore[attr-defined]
        record = await self.imageUpload(b"not a png at all", "image/png")
        first = self.service.thumbnail(record)
        second = self.service.thumbnail(record)
        self.assertEqual(threads.drain().count(makeThumbnail), 1)  # type: ignore[attr-defined]
        self.failureResultOf(first, ThumbnailError)  # type: ignore[attr-defined]
        self.failureResultOf(second, ThumbnailError)  # type: ignore[attr-defined]

    def test_interface(self) -> None:
        """
        The records provide L{IFileRecords}, the disk store L{IFileBytes}.
        """
        self.assertTrue(verifyObject(IFileRecords, self.records))  # type: ignore[attr-defined]
        self.assertTrue(verifyObject(IFileBytes, self.files))  # type: ignore[attr-defined]

    async def test_concurrentCreationsShareTheQuota(self) -> None:
        """
        Uploads announced at once cannot both pass the quota with the same
        bytes: one of three 1000-byte uploads (quota 2500) is refused.
        """
        from twisted.internet.defer import DeferredList

        results = await DeferredList(
            [
                Deferred.fromCoroutine(self.service.create("alice", "bob", "k", "a", 1000, None, None, c * 32))
                for c in "XYZ"
            ],
            consumeErrors=True,
        )
        refused = [r for ok, r in results if not ok]
        self.assertEqual(len(refused), 1)  # type: ignore[attr-defined]
        self.assertTrue(refused[0].check(UploadRefused))  # type: ignore[attr-defined]

    async def test_inlineFilesAdmitted(self) -> None:
        """
        A file kept otherwise than by upload (an inline transfer) is
        admitted by L{UploadService.admit} against the same limits: past
        C{maxFileSize} or the quota it is not saved; saved, it counts
        against uploads; three at once (1000 bytes each, quota 2500) cannot
        all pass, as each is saved before the next is weighed.
        """
        from twisted.internet.defer import DeferredList

        saved: list[bytes] = []

        def saver(data: bytes) -> Any:
            def save() -> Deferred[Any]:
                saved.append(data)
                return self.files.save("alice", "bob", "a.bin", None, data, int(START * 1000), "k")

            return save

        with self.assertRaises(UploadRefused):  # type: ignore[attr-defined]
            await self.service.admit("alice", 1001, saver(b"x" * 1001))
        results = await DeferredList(
            [Deferred.fromCoroutine(self.service.admit("alice", 1000, saver(c * 1000))) for c in (b"X", b"Y", b"Z")],
            consumeErrors=True,
        )
        refused = [r for ok, r in results if not ok]
        self.assertEqual(len(refused), 1)  # type: ignore[attr-defined]
        self.assertTrue(refused[0].check(UploadRefused))  # type: ignore[attr-defined]
        self.assertEqual(saved, [b"X" * 1000, b"Y" * 1000])  # type: ignore[attr-defined]
        self.assertEqual(await self.records.quotaUsed("alice"), 2000)  # type: ignore[attr-defined]
        with self.assertRaises(UploadRefused):  # type: ignore[attr-defined]
            await self.service.create("alice", "bob", "k", "a", 501, None, None, "A" * 32)
        await self.service.create("alice", "bob", "k", "a", 500, None, None, "B" * 32)

    async def test_unfinishedBounded(self) -> None:
        """
        A user with C{maxUnfinished} uploads open is refused another
        (L{TooManyUploads}) whatever its size; finishing one makes room,
        and other users are not affected.
        """
        self.service.settings = attrs.evolve(self.settings, maxUnfinished=3)
        ids = []
        for c in "PQR":
            await self.service.create("alice", "bob", "k", "a", 1, None, None, c * 32)
            ids.append(c * 32)
        with self.assertRaises(TooManyUploads):  # type: ignore[attr-defined]
            await self.service.create("alice", "bob", "k", "a", 1, None, None, "S" * 32)
        await self.service.create("bob", "alice", "k", "a", 1, None, None, "T" * 32)
        await self.write(ids[0], b"x")
        await self.service.create("alice", "bob", "k", "a", 1, None, None, "S" * 32)


class MemoryServiceTests(ServiceTestsMixin, TestCase):
    """
    On the memory records.
    """

    async def makeRecords(self) -> tuple[Any, IFileRecords]:  # type: ignore[override]
        store = MemoryMessageStore()
        return store, MemoryFileRecords(store)

    async def setUp(self) -> None:  # type: ignore[override]
        await self.asyncSetUp()


class SQLiteServiceTests(ServiceTestsMixin, TestCase):
    """
    On the SQLite store.
    """

    async def makeRecords(self) -> tuple[Any, IFileRecords]:  # type: ignore[override]
        store = SQLiteMessageStore(self.mktemp(), reactor)
        await store.open()
        self.addCleanup(store.close)
        return store, SQLFileRecords(store)

    async def setUp(self) -> None:  # type: ignore[override]
        await self.asyncSetUp()


def png(width: int, height: int, pixels: bytes | None = None) -> bytes:
    """
    A grey PNG; with C{pixels} None, a header claiming C{width}x{height}
    with almost no data (a decompression bomb's shape).
    """

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    raw = pixels if pixels is not None else b"\x00" * 64
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


class ThumbnailTests(TestCase):
    """
    L{makeThumbnail}.
    """

    def test_thumbnail(self) -> None:
        """
        An image becomes a JPEG at most 256 px on its long side.
        """
        from PIL import Image

        source = FilePath(self.mktemp())
        image = Image.new("RGBA", (1000, 400), (10, 200, 30, 128))
        buffer = io.BytesIO()
        image.save(buffer, "PNG")
        source.setContent(buffer.getvalue())
        target = FilePath(self.mktemp())
        makeThumbnail(source, target, 256, 50_000_000)
        with Image.open(target.path) as thumb:
            self.assertEqual((thumb.format, thumb.size), ("JPEG", (256, 102)))

    def test_decompressionBomb(self) -> None:
        """
        An image claiming more pixels than the bound is refused before a
        pixel is decoded; so is one Pillow's own bound would warn about.
        """
        source = FilePath(self.mktemp())
        source.setContent(png(100_000, 100_000))
        target = FilePath(self.mktemp())
        error = self.assertRaises(ThumbnailError, makeThumbnail, source, target, 256, 50_000_000)
        self.assertIn("too large", str(error))
        self.assertFalse(target.exists())
        source.setContent(png(20_000, 20_000))
        self.assertRaises(ThumbnailError, makeThumbnail, source, target, 256, 10**12)

    def test_writeFailureIsNotTheImages(self) -> None:
        """
        A thumbnail that cannot be written (a full disk; a rename that
        finds its file gone) fails with that C{OSError}, not a
        L{ThumbnailError}: its C{GET} is a 500 that is logged, not a 404
        saying that a good image is unreadable.
        """
        source = FilePath(self.mktemp())
        source.setContent(greyPNG(300, 200))

        def gone(path: FilePath[str], data: bytes) -> None:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory")

        target = FilePath(self.mktemp())
        self.assertRaises(FileNotFoundError, makeThumbnail, source, target, 256, 10**6, writeTarget=gone)
        makeThumbnail(source, target, 256, 10**6)
        self.assertTrue(target.exists())

    def test_notAnImage(self) -> None:
        """
        Bytes that are no image (or an SVG) are refused, and the reason
        (which the thumbnail's 404 gives) does not name the file's path on
        disk, as Pillow's message does.
        """
        source = FilePath(self.mktemp())
        for content in (b"not an image", b"<svg xmlns='http://www.w3.org/2000/svg'/>"):
            source.setContent(content)
            error = self.assertRaises(ThumbnailError, makeThumbnail, source, FilePath(self.mktemp()), 256, 10**6)
            self.assertNotIn(source.basename(), str(error))
            self.assertNotIn("BufferedReader", str(error))

    def test_mimeTypes(self) -> None:
        """
        A declared MIME type is kept only as a plain C{type/subtype}.
        """
        self.assertEqual(cleanMimeType("Image/PNG"), "image/png")
        self.assertEqual(cleanMimeType("text/html; charset=utf-8"), "text/html")
        for bad in (None, "", "html", "text/html\r\nX-Evil: 1", "a/b c", "/x"):
            self.assertEqual(cleanMimeType(bad), "application/octet-stream")
