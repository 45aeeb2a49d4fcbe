# -*- test-case-name: tests.test_uploads_service -*-
"""
L{UploadService}: uploads from C{file:upload} to a stored file, signed
links, thumbnails and the sweeps (FILES.md).

It keeps the tus state (L{crm_im.uploads.tus.Upload}) of the uploads this
process has seen in memory, loaded on first use from the record and the
size of the C{.part} file on disk, so an upload resumes after a restart
(or a kill) from the bytes that reached the disk. Bytes stream through an
L{UploadSink} per request: each chunk is appended on the file store's
threads while the connection is paused, so an upload holds at most what
one read of the connection delivered, whatever the file's size; the
SHA-256 is computed as the bytes are written. A complete file becomes a
content-addressed blob (identical bytes kept once). Every timer runs on
the injected clock.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Awaitable, Callable, Optional, TypeVar

import attrs
from twisted.internet.defer import Deferred, DeferredSemaphore, ensureDeferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from zope.interface import implementer

from ..http.cors import CORSPolicy
from ..http.streaming import IBodySink
from ..im.errors import INVALID_PAYLOAD, IMError
from ..im.files import FILES_PATH, TooManyUploads, UploadRefused, cleanMimeType, filePath
from ..serial import KeyedOnce, KeyedSerializer
from ..storage.files import isFileId
from ..storage.interface import ABORTED, COMPLETE, EXPIRED, UPLOADING, FileRecord, IFileBytes, IFileRecords
from . import tus
from .signing import DOWNLOAD, THUMBNAIL, SignatureError, URLSigner
from .thumbnails import THUMBNAIL_TYPES, ThumbnailError, makeThumbnail

MiB = 1 << 20

_T = TypeVar("_T")

#: The SHA-256 of a file of 0 bytes.
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

#: Where thumbnails are served.
THUMBNAILS_PATH = "/api/thumbnails/"

@attrs.frozen
class UploadSettings:
    """
    @ivar maxFileSize: the largest file, bytes (C{--max-file-size}).
    @ivar quota: bytes one user's uploading and stored files may take
        (C{--file-quota}; 0: no quota).
    @ivar uploadIdle: seconds an upload stays open after its last byte.
    @ivar linkLifetime: seconds a signed download link is valid.
    @ivar retentionDays: days file bytes are kept (0: forever).
    @ivar sweepInterval: seconds between sweeps.
    @ivar maxPixels: the largest image a thumbnail is made of.
    @ivar thumbnailSize: the long side of a thumbnail, px.
    @ivar thumbnailConcurrency: thumbnails made at once.
    @ivar sweepBatch: records handled per sweep step.
    @ivar sweepBatches: steps of retention one sweep takes at most (its
        files expired a minute: C{sweepBatch} times this).
    @ivar maxUnfinished: uploads one user may have open in this process at
        once: each holds a record, a running hash and a part file for up
        to C{uploadIdle} after its last byte, and the quota bounds bytes,
        not uploads (a thousand empty-handed C{file:upload}s of 1 byte
        each pass it).
    """

    maxFileSize: int = 100 * MiB
    quota: int = 1024 * MiB
    uploadIdle: float = 3600.0
    linkLifetime: float = 7 * 86400.0
    retentionDays: float = 0.0
    sweepInterval: float = 60.0
    maxPixels: int = 50_000_000
    thumbnailSize: int = 256
    thumbnailConcurrency: int = 2
    sweepBatch: int = 100
    sweepBatches: int = 50
    maxUnfinished: int = 32


@attrs.define
class ActiveUpload:
    """
    An upload this process knows: its record, its tus state and the
    running hash of its bytes (L{None} if they were not all hashed here).
    """

    record: FileRecord
    upload: tus.Upload
    hasher: Any


def _tusError(error: Exception) -> tus.TusError:
    if isinstance(error, tus.TusError):
        return error
    return tus.TusError(500, "internal error", "INTERNAL")


class UploadService:
    """
    Uploads, links, thumbnails and sweeps over one L{IFileBytes} (the
    L{crm_im.storage.files.DiskFileStore}) and its L{IFileRecords}.
    """

    log = Logger()

    def __init__(
        self,
        files: IFileBytes,
        records: IFileRecords,
        signer: URLSigner,
        clock: IReactorTime,
        settings: UploadSettings | None = None,
    ) -> None:
        self.files = files
        self.records = records
        self.signer = signer
        self.clock = clock
        self.settings = settings if settings is not None else UploadSettings()
        self.active: dict[str, ActiveUpload] = {}
        self._quotaLocks = KeyedSerializer()
        #: the most body bytes one request held in memory at once, ever
        #: (what bounds an upload's memory; observed by the tests)
        self.peakBuffered = 0
        #: the CORS policy of answers given before the body is read
        self.cors: CORSPolicy | None = None
        self._loading: KeyedOnce[ActiveUpload] = KeyedOnce()
        # Uploads whose write request ended and which are being completed
        # (or their expiry moved): see L{finishWrite}.
        self._finishing: set[str] = set()
        self._thumbnails = DeferredSemaphore(self.settings.thumbnailConcurrency)
        #: the thumbnail job under way of an image, by its SHA-256, whose
        #: outcome every request for it meanwhile shares (L{thumbnail})
        self._thumbnailJobs: KeyedOnce[Any] = KeyedOnce()
        self._sweep = LoopingCall(self.sweep)
        self._sweep.clock = clock

    def nowMs(self) -> int:
        """
        Milliseconds since the epoch, from the injected clock.
        """
        return int(self.clock.seconds() * 1000)

    # ---- creating (file:upload)

    async def create(
        self,
        fromId: str,
        toId: str,
        conversation: str,
        fileName: str,
        fileSize: int,
        mimeType: str | None,
        sha256: str | None,
        fileId: str,
    ) -> dict[str, Any]:
        """
        Record a new upload after checking the size and the quota.

        @return: C{{fileId, uploadUrl, expiresAt}} (C{expiresAt} in ms).
        @raise UploadRefused: too large for C{--max-file-size} or the quota.
        @raise IMError: C{INVALID_PAYLOAD} for an empty file announced with
            another file's C{sha256}: it is complete as it is announced, so
            its checksum is checked here, before anything is recorded (it
            failed the completion inside C{file:upload}: C{INTERNAL}).
        """
        if fileSize == 0 and sha256 is not None and sha256.lower() != EMPTY_SHA256:
            raise IMError(INVALID_PAYLOAD, f"sha256 does not match an empty file (fileSize 0): its SHA-256 is {EMPTY_SHA256}")
        return await self.admit(
            fromId, fileSize, lambda: self._create(fromId, toId, conversation, fileName, fileSize, mimeType, sha256, fileId)
        )

    async def admit(self, fromId: str, fileSize: int, record: Callable[[], Awaitable[_T]]) -> _T:
        """
        Run C{record}, which records a file of C{fileSize} bytes for
        C{fromId}, if the file is within C{--max-file-size} and the user's
        quota. Uploads (L{create}) and inline transfers (C{file_transfer})
        are both admitted here, so each counts against the other.

        @raise UploadRefused: too large for C{--max-file-size} or the quota.
        """
        settings = self.settings
        if fileSize > settings.maxFileSize:
            raise UploadRefused(f"files may be at most {settings.maxFileSize} bytes")
        # One file per user at a time: two concurrent ones cannot both
        # pass the quota with the same bytes.

        async def admitted() -> _T:
            if settings.quota:
                used = await self.records.quotaUsed(fromId)
                if used + fileSize > settings.quota:
                    raise UploadRefused(
                        f"this file would exceed your storage quota ({used} of {settings.quota} bytes used)"
                    )
            return await record()

        return await self._quotaLocks.run(fromId, admitted)

    async def _create(
        self,
        fromId: str,
        toId: str,
        conversation: str,
        fileName: str,
        fileSize: int,
        mimeType: str | None,
        sha256: str | None,
        fileId: str,
    ) -> dict[str, Any]:
        settings = self.settings
        unfinished = sum(1 for active in self.active.values() if active.record.fromId == fromId)
        if unfinished >= settings.maxUnfinished:
            raise TooManyUploads(
                f"{unfinished} uploads are unfinished: finish or cancel one first (at most {settings.maxUnfinished})"
            )
        now = self.nowMs()
        expiresAt = now + int(settings.uploadIdle * 1000)
        record = FileRecord(
            fileId=fileId,
            fromId=fromId,
            toId=toId,
            fileName=fileName,
            mimeType=cleanMimeType(mimeType),
            size=fileSize,
            createdAt=now,
            conversation=conversation,
            state=UPLOADING,
            expectedSha256=sha256,
            expiresAt=expiresAt,
        )
        await self.records.recordFile(record)
        self.active[fileId] = ActiveUpload(record, tus.Upload(fileId, fileSize, 0, expiresAt), hashlib.sha256())
        if fileSize == 0:
            # nothing to upload: complete now (the empty blob is a blob too)
            writer = await self.files.openPart(fileId)
            await writer.close()
            await self._complete(self.active[fileId])
        return {"fileId": fileId, "uploadUrl": self.uploadUrl(fileId), "expiresAt": expiresAt}

    def uploadUrl(self, fileId: str) -> str:
        """
        The C{uploadUrl} of an upload: its path with its token.
        """
        return f"{FILES_PATH}{fileId}?token={self.signer.uploadToken(fileId)}"

    # ---- links

    def _expiry(self) -> int:
        """
        When a link made now expires: C{linkLifetime} from now, rounded up
        to the hour so that links made within one hour are the same URL
        (browsers cache them).
        """
        expires = self.clock.seconds() + self.settings.linkLifetime
        return int(math.ceil(expires / 3600.0) * 3600)

    def filePath(self, fileId: str, fileName: str) -> str:
        """
        The unsigned path of a file (what a message stores).
        """
        return filePath(fileId, fileName)

    def fileUrl(self, fileId: str, fileName: str) -> str:
        """
        A fresh signed download URL.
        """
        expires = self._expiry()
        return f"{self.filePath(fileId, fileName)}?exp={expires}&sig={self.signer.sign(DOWNLOAD, fileId, expires)}"

    def thumbnailUrl(self, fileId: str, mimeType: str | None) -> str | None:
        """
        A fresh signed thumbnail URL, for the image types thumbnails are
        made of.
        """
        if mimeType not in THUMBNAIL_TYPES:
            return None
        expires = self._expiry()
        return f"{THUMBNAILS_PATH}{fileId}.jpg?exp={expires}&sig={self.signer.sign(THUMBNAIL, fileId, expires)}"

    def signWire(self, wire: dict[str, Any]) -> dict[str, Any]:
        """
        Fill a C{file} message's wire form with fresh links (its C{fileId}
        is set): C{fileUrl} and, for images, C{thumbnailUrl}.
        """
        fileId = wire["fileId"]
        wire["fileUrl"] = self.fileUrl(fileId, wire.get("fileName") or "file")
        thumbnail = self.thumbnailUrl(fileId, wire.get("mimeType"))
        if thumbnail is not None:
            wire["thumbnailUrl"] = thumbnail
        return wire

    def verifyLink(self, purpose: str, fileId: str, expires: str | None, signature: str | None) -> None:
        """
        @raise SignatureError: if the link is not good now.
        """
        self.signer.verify(purpose, fileId, expires, signature)

    # ---- the tus state of an upload

    def load(self, fileId: str) -> Deferred[ActiveUpload]:
        """
        The state of an upload: from memory while a request of this
        process writes or completes it, else from its record and the bytes
        on disk, as memory may be stale: nodes of a cluster share the
        files directory, and a client behind a round-robin balancer sends
        its requests to any of them. A node that kept the offset it last
        saw answered C{HEAD} with it after another node had appended, and
        refused every C{PATCH} at the true offset with 409 ("HEAD it
        again"): the upload could never be resumed through that node.

        @raise tus.TusError: 404 unknown, 409 complete, 410 abandoned.
        """
        active = self.active.get(fileId)
        if active is not None and (active.upload.writer or fileId in self._finishing):
            return _succeed(active)
        return self._loading.run(fileId, lambda: self._load(fileId))

    async def _load(self, fileId: str) -> ActiveUpload:
        record = await self.records.fileRecord(fileId) if isFileId(fileId) else None
        if record is None:
            raise tus.TusError(404, "no such upload")
        if record.state == COMPLETE:
            # (completed here, or by another node)
            self.active.pop(fileId, None)
            upload = tus.Upload(fileId, record.size, record.size, 0, tus.COMPLETE)
            return ActiveUpload(record, upload, None)
        if record.state in (ABORTED, EXPIRED) or record.expiresAt is None:
            self.active.pop(fileId, None)
            raise tus.TusError(410, "this upload was abandoned or expired")
        size = await self.files.partSize(fileId)
        if size > record.size:
            raise tus.TusError(409, "this upload's bytes are longer than announced")
        active = self.active.get(fileId)
        if active is not None and active.upload.offset != size:
            # bytes written by another node: its running hash is not theirs
            active = None
        if active is None:
            upload = tus.Upload(fileId, record.size, size, record.expiresAt)
            active = self.active[fileId] = ActiveUpload(record, upload, hashlib.sha256() if size == 0 else None)
        else:
            # (moved by whichever node wrote last)
            active.upload.expiresAt = record.expiresAt
        return active

    async def authorize(self, fileId: str, token: str | None) -> ActiveUpload:
        """
        Check the token of a request to an C{uploadUrl} and load its upload.

        @raise tus.TusError: 401 without a token, 403 with a bad one, and
            as L{load}.
        """
        if not token:
            raise tus.TusError(401, "an upload needs the token of its uploadUrl")
        try:
            self.signer.verifyUploadToken(fileId, token)
        except SignatureError as error:
            raise tus.TusError(403, error.message)
        return await self.load(fileId)

    async def abort(self, active: ActiveUpload) -> None:
        """
        C{DELETE}: give the upload up and delete its bytes.
        """
        upload = active.upload
        upload.check(self.nowMs())
        if upload.state == tus.COMPLETE:
            raise tus.TusError(409, "this upload is complete; it cannot be terminated")
        if upload.writer:
            raise tus.TusError(409, "a request is writing this upload")
        upload.abort()
        self.active.pop(upload.fileId, None)
        await self.records.abortUpload(upload.fileId, self.nowMs())
        await self.files.removePart(upload.fileId)

    async def finishWrite(self, active: ActiveUpload) -> None:
        """
        A request writing the upload ended (its bytes are on disk): complete
        the file if every byte is in, else move its expiry.

        @raise tus.TusError: 460 if its SHA-256 is not the one announced.
        """
        upload = active.upload
        now = self.nowMs()
        # (L{load} keeps to memory meanwhile: the part file may be gone
        # into its blob before the record says complete)
        self._finishing.add(upload.fileId)
        try:
            if upload.endWrite(now, int(self.settings.uploadIdle * 1000)):
                await self._complete(active)
            else:
                await self.records.touchUpload(upload.fileId, upload.expiresAt)
        finally:
            self._finishing.discard(upload.fileId)

    async def _complete(self, active: ActiveUpload) -> None:
        upload = active.upload
        fileId = upload.fileId
        if active.hasher is not None:
            sha256 = active.hasher.hexdigest()
        else:
            sha256 = await self.files.hashPart(fileId)
        expected = active.record.expectedSha256
        if expected is not None and expected.lower() != sha256:
            upload.abort()
            self.active.pop(fileId, None)
            await self.records.abortUpload(fileId, self.nowMs())
            await self.files.removePart(fileId)
            raise tus.TusError(460, "the file's SHA-256 is not the one announced; upload it again")

        async def commit() -> FileRecord | None:
            await self.files.commitPart(fileId, sha256)
            return await self.records.completeUpload(fileId, sha256, self.nowMs())

        record = await self.files.withBlob(sha256, commit)
        upload.complete()
        self.active.pop(fileId, None)
        if record is not None and record.mimeType in THUMBNAIL_TYPES:
            # made now so that history has it ready
            self.thumbnail(record).addErrback(self._thumbnailFailed, fileId)

    def sink(self, method: bytes, path: bytes, headers: Headers, length: Optional[int], request: Any) -> Optional[IBodySink]:
        """
        The L{crm_im.http.streaming.BodyRouter} of uploads: a sink for a
        C{PATCH} or C{PUT} to an C{uploadUrl}.
        """
        if method not in (b"PATCH", b"PUT") or not path.startswith(FILES_PATH.encode("ascii")):
            return None
        rest, _, query = path[len(FILES_PATH):].partition(b"?")
        if b"/" in rest:
            return None
        token = None
        for pair in query.split(b"&"):
            name, _, value = pair.partition(b"=")
            if name == b"token":
                token = value.decode("ascii", "replace")
        sink = UploadSink(self, request, rest.decode("ascii", "replace"), token, method == b"PUT", headers, length)
        sink.start()
        return sink

    # ---- thumbnails

    def thumbnail(self, record: FileRecord) -> Deferred[Any]:
        """
        The path of the thumbnail of a complete image, made (once, off the
        reactor thread, a bounded number at a time) if it is not there.

        Requests for the thumbnail of one image (one SHA-256: one
        thumbnail) while a job for it is under way wait for that job's
        result rather than start another: the job started on completion
        and the first C{GET}s of its C{thumbnailUrl} made it two or more
        times at once, for nothing.

        @raise ThumbnailError: (in the L{Deferred}) for an image too large,
            unreadable or of another type.
        """
        sha256 = record.sha256
        if record.mimeType not in THUMBNAIL_TYPES or sha256 is None:
            return fail(ThumbnailError("no thumbnail for this type of file"))
        return self._thumbnailJobs.run(sha256, lambda: self._thumbnail(record))

    def _thumbnailFailed(self, failure: Failure, fileId: str) -> None:
        """
        The thumbnail made on completion failed: an image it cannot be made
        of is no news (its C{GET} answers 404), anything else is logged.
        """
        if not failure.check(ThumbnailError):
            self.log.failure("thumbnail of {fileId}", failure, fileId=fileId)

    async def _thumbnail(self, record: FileRecord) -> Any:
        assert record.sha256 is not None
        target = self.files.thumbnailPath(record.sha256)
        if await self.files.run(target.exists):
            return target
        source = self.files.pathFor(record)
        settings = self.settings
        await self._thumbnails.acquire()
        try:
            await self.files.run(
                makeThumbnail,
                source,
                target,
                settings.thumbnailSize,
                settings.maxPixels,
                self.files.openBytes,
                self.files.writeBytes,
            )
        finally:
            self._thumbnails.release()
        return target

    # ---- sweeps

    def start(self) -> None:
        """
        Sweep abandoned uploads (and, with retention, old files) every
        C{sweepInterval}.
        """
        if not self._sweep.running:
            self._sweep.start(self.settings.sweepInterval, now=False).addErrback(
                lambda f: self.log.failure("file sweeps stopped", f)
            )

    def stop(self) -> Deferred[None]:
        """
        Stop sweeping; fires once a sweep under way is over.
        """
        if self._sweep.running:
            self._sweep.stop()
        done: Deferred[None] = Deferred()
        if self._sweeping is None:
            done.callback(None)
        else:

            def finished(result: object) -> object:
                done.callback(None)
                return result

            self._sweeping.addBoth(finished)
        return done

    _sweeping: Deferred[None] | None = None

    def sweep(self) -> Deferred[None]:
        """
        One sweep: abandoned uploads, then files past retention.
        """
        d = ensureDeferred(self._sweepOnce())
        d.addErrback(lambda f: self.log.failure("sweeping files", f))
        self._sweeping = d

        def over(result: object) -> object:
            if self._sweeping is d:
                self._sweeping = None
            return result

        d.addBoth(over)
        return d

    async def _sweepOnce(self) -> None:
        now = self.nowMs()
        batch = self.settings.sweepBatch
        for record in await self.records.expiredUploads(now, batch):
            active = self.active.get(record.fileId)
            if active is not None and (active.upload.writer or active.upload.expiresAt >= now):
                continue
            if await self.records.abortUpload(record.fileId, now):
                self.active.pop(record.fileId, None)
                await self.files.removePart(record.fileId)
                self.log.info("abandoned upload {fileId} deleted", fileId=record.fileId)
        days = self.settings.retentionDays
        if days > 0:
            await self._retain(now - int(days * 86400 * 1000), batch)

    async def _retain(self, cutoff: int, batch: int) -> None:
        """
        Expire the files past retention, batch after batch while batches
        come full, up to C{sweepBatches} of them: one batch a sweep (100 a
        minute) fell behind a server that takes more files a day than that
        (~144,000), and the backlog of a first sweep took days.
        """
        expired = 0
        for _ in range(self.settings.sweepBatches):
            records = await self.records.retentionCandidates(cutoff, batch)
            for record in records:
                await self.expire(record)
            expired += len(records)
            if len(records) < batch:
                break
        if expired:
            self.log.info("retention: {count} files past {cutoff} expired", count=expired, cutoff=cutoff)

    async def expire(self, record: FileRecord) -> None:
        """
        Retention: the file's bytes go (once no other file shares them);
        its record stays, as expired (downloads answer 410).
        """
        if record.sha256 is None:
            await self.records.expireFile(record.fileId)
            await self.files.removeLegacy(record)
            return
        sha256 = record.sha256

        async def drop() -> None:
            _, last = await self.records.expireFile(record.fileId)
            if last:
                await self.files.removeBlob(sha256)

        await self.files.withBlob(sha256, drop)


def _succeed(value: Any) -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.callback(value)
    return d


@implementer(IBodySink)
class UploadSink:
    """
    The body of one C{PATCH} (or C{PUT}) to an C{uploadUrl}, streamed to the
    upload's C{.part} file by one coroutine (L{_run}) that owns the file.

    While the upload is being loaded and authorised, and while a write is
    on a thread, the connection is paused: what arrives meanwhile is at
    most the rest of one read. A refusal decided before the body is in is
    answered at once (the connection closes; the rest is never read).
    Whatever was written before a refusal or a dropped connection stays:
    the client resumes from it; but a body that goes past the upload's
    length (413) is discarded whole (L{tus.Upload.rewind}): the upload is
    back where this request began.

    @ivar result: fires with C{(status, headers)} for the response, or
        fails with L{tus.TusError}.
    @ivar peakQueued: the most body bytes held in memory at once.
    @ivar finished: fires once the write is over, whatever its outcome
        (the part file closed, the upload free for its next writer).
    """

    log = Logger()

    def __init__(
        self,
        service: UploadService,
        request: Any,
        fileId: str,
        token: str | None,
        whole: bool,
        headers: Headers,
        length: Optional[int],
    ) -> None:
        self.service = service
        self.request = request
        self.fileId = fileId
        self.token = token
        self.whole = whole
        self.headers = headers
        self.length = length
        self.result: Deferred[tuple[int, dict[bytes, bytes]]] = Deferred()
        self._active: ActiveUpload | None = None
        self._queue: list[bytes] = []
        self._queued = 0
        self._bodyDone = False
        self._lost = False
        self._overran = False
        self._error: tus.TusError | None = None
        self._wake: Deferred[None] | None = None
        self.peakQueued = 0
        self.finished: Deferred[None] = Deferred()

    def _header(self, name: bytes) -> bytes | None:
        value = self.headers.getRawHeaders(name)
        return value[0] if value else None

    def start(self) -> None:
        """
        Pause the connection; load, authorise and write the upload.
        """
        self.request.pauseReading()
        d = ensureDeferred(self._run())
        d.addErrback(lambda f: self.log.failure("upload {fileId}", f, fileId=self.fileId))
        d.addBoth(lambda _: self.finished.callback(None))

    def _poke(self) -> None:
        wake, self._wake = self._wake, None
        if wake is not None:
            wake.callback(None)

    async def _authorize(self) -> tuple[ActiveUpload, Any]:
        """
        Load and check the upload; open its part file.

        @return: the upload, and its part file's writer (L{None} if there
            is nothing to write, L{tus.Upload.beginWrite}).
        """
        tus.checkVersion(self._header(b"tus-resumable"))
        active = await self.service.authorize(self.fileId, self.token)
        offset = 0 if self.whole else tus.headerNumber(self._header(b"upload-offset"), "Upload-Offset")
        upload = active.upload
        if not upload.beginWrite(self.service.nowMs(), offset, self.length, self._header(b"content-type"), self.whole):
            return active, None
        try:
            writer = await self.service.files.openPart(self.fileId, active.hasher)
            if writer.size != upload.offset:
                await writer.close()
                raise tus.TusError(409, "the stored bytes of this upload changed; HEAD it again")
        except BaseException:
            upload.writer = False
            raise
        return active, writer

    async def _run(self) -> None:
        try:
            active, writer = await self._authorize()
        except Exception as error:
            self._fail(_tusError(error))
            return
        if writer is None:
            headers = _tusHeaders()
            headers[b"upload-offset"] = b"%d" % active.upload.offset
            self.result.callback((204, headers))
            return
        self._active = active
        upload = active.upload
        # where this request began, to discard its bytes if it overruns
        start = upload.offset
        hashed = active.hasher.copy() if active.hasher is not None else None
        try:
            try:
                # bytes that came while authorising count now
                if self._queued:
                    upload.received(self._queued)
                while self._error is None:
                    if self._queue:
                        self.request.pauseReading()
                        chunk = b"".join(self._queue)
                        self._queue.clear()
                        self._queued = 0
                        await writer.write(chunk)
                        continue
                    if self._bodyDone or self._lost:
                        break
                    # (its own: bytes that come within resumeReading fire
                    # and clear self._wake before it returns)
                    wake = self._wake = Deferred()
                    self.request.resumeReading()
                    await wake
            finally:
                if self._overran:
                    upload.rewind(start)
                    active.hasher = hashed
                await writer.close(start if self._overran else None)
                await self.service.finishWrite(active)
        except Exception as error:
            self._fail(_tusError(error))
            return
        if self._error is not None or self._lost:
            return
        if self.whole and upload.state != tus.COMPLETE:
            self._fail(tus.TusError(400, f"a PUT carries the whole file: {upload.length} bytes; {upload.offset} arrived"))
            return
        headers = _tusHeaders()
        headers[b"upload-offset"] = b"%d" % upload.offset
        if upload.state != tus.COMPLETE:
            headers[b"upload-expires"] = _httpDate(upload.expiresAt)
        self.result.callback((204, headers))

    def _fail(self, error: tus.TusError) -> None:
        """
        Refuse: drop the body; answer now if it is still arriving.
        """
        if self._error is not None:
            return
        if error.status == 500:
            self.log.error("upload {fileId} failed: {message}", fileId=self.fileId, message=str(error))
        self._error = error
        self._queue.clear()
        self._queued = 0
        if not self._bodyDone and not self._lost:
            # no render will follow: answer here
            from .resource import errorBody

            headers = _tusHeaders()
            headers[b"content-type"] = b"application/json; charset=utf-8"
            cors = self.service.cors
            if cors is not None:
                headers.update(cors.headersFor(self._header(b"origin")))
            self.request.answerEarly(error.status, _reason(error.status), headers, errorBody(error))
        elif not self._lost:
            self.result.errback(error)
        self._poke()

    def write(self, data: bytes) -> None:
        """
        See L{IBodySink.write}.
        """
        if self._error is not None or not data:
            return
        active = self._active
        if active is not None:
            try:
                active.upload.received(len(data))
            except tus.TusError as error:
                self._overran = True
                self._fail(error)
                return
        elif self._queued + len(data) > self.service.settings.maxFileSize:
            # not authorised yet (the connection is paused)
            self._fail(tus.TusError(413, "the body is longer than any upload"))
            return
        self._queue.append(data)
        self._queued += len(data)
        if self._queued > self.peakQueued:
            self.peakQueued = self._queued
            if self._queued > self.service.peakBuffered:
                self.service.peakBuffered = self._queued
        self._poke()

    def bodyDone(self) -> None:
        """
        See L{IBodySink.bodyDone}.
        """
        self._bodyDone = True
        self._poke()

    def connectionLost(self, reason: Failure) -> None:
        """
        See L{IBodySink.connectionLost}: what arrived is kept.
        """
        if self._bodyDone or self._lost:
            return
        self._lost = True
        self._poke()


def _tusHeaders() -> dict[bytes, bytes]:
    return {b"tus-resumable": tus.TUS_VERSION.encode("ascii"), b"cache-control": b"no-store"}


def _httpDate(ms: int) -> bytes:
    from twisted.web.http import datetimeToString

    return datetimeToString(ms // 1000)


_REASONS = {
    400: b"Bad Request",
    401: b"Unauthorized",
    403: b"Forbidden",
    404: b"Not Found",
    409: b"Conflict",
    410: b"Gone",
    412: b"Precondition Failed",
    413: b"Payload Too Large",
    415: b"Unsupported Media Type",
    460: b"Checksum Mismatch",
    500: b"Internal Server Error",
}


def _reason(status: int) -> bytes:
    return _REASONS.get(status, b"Error")
