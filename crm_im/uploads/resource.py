# -*- test-case-name: tests.test_uploads_resource -*-
"""
C{/api/files/} and C{/api/thumbnails/} on twisted.web (FILES.md).

C{/api/files/<fileId>?token=...} is an C{uploadUrl}: tus 1.0.0 C{OPTIONS},
C{HEAD}, C{PATCH}, C{DELETE}, and C{PUT} of the whole body. Bodies are not
read here: L{crm_im.http.streaming} hands them as they arrive to the
L{crm_im.uploads.service.UploadSink} of the request, and this resource
answers when the sink is done.

C{/api/files/<fileId>/<name>?exp=...&sig=...} downloads a file with a
signed link (the name is for the browser; only the id counts), with
C{ETag}, C{Range} (206/416, from twisted's static L{File}), a
C{Content-Disposition} in RFC 6266/5987 form, C{inline} only for images
other than SVG, audio and video, and C{nosniff} and
C{Content-Security-Policy: sandbox} so that uploaded content never runs as
a page of this origin. C{/api/thumbnails/<fileId>.jpg?exp=...&sig=...} is
an image's thumbnail, made on first request if it is not there yet.

Errors are JSON C{{error, code}}.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from twisted.internet.defer import ensureDeferred
from twisted.logger import Logger
from twisted.web import http
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from .._json import dumps
from ..http.cors import CORSPolicy
from ..http.query import QueryError, parseQuery
from ..storage.interface import COMPLETE, EXPIRED
from . import tus
from .service import UploadService, _tusHeaders
from .signing import DOWNLOAD, THUMBNAIL, SignatureError
from .thumbnails import ThumbnailError

JSON_TYPE = b"application/json; charset=utf-8"

_EXPOSE = (
    b"Upload-Offset, Upload-Length, Upload-Expires, Tus-Resumable, Tus-Version, Tus-Extension, Tus-Max-Size,"
    b" Location, ETag, Content-Disposition, Content-Range, Content-Length, Accept-Ranges"
)
_METHODS = b"GET, HEAD, PATCH, PUT, DELETE, OPTIONS"
_ALLOW_HEADERS = (
    b"Tus-Resumable, Upload-Offset, Upload-Length, Upload-Metadata, Content-Type, Range, If-None-Match,"
    b" X-HTTP-Method-Override, X-Requested-With"
)


def errorBody(error: tus.TusError) -> bytes:
    """
    The JSON body of a refusal.
    """
    return dumps({"error": error.message, "code": error.code})


def _answer(request: Any, status: int, headers: dict[bytes, bytes], body: bytes = b"") -> None:
    if request.finished or request._disconnected:
        return
    request.setResponseCode(status)
    for name, value in headers.items():
        request.setHeader(name, value)
    if body:
        request.setHeader(b"content-type", JSON_TYPE)
    request.setHeader(b"content-length", b"%d" % len(body))
    if body and request.method != b"HEAD":
        request.write(body)
    request.finish()


def _refuse(request: Any, error: tus.TusError) -> None:
    _answer(request, error.status, _tusHeaders(), errorBody(error))


_log = Logger()


def _failed(failure: Any, request: Any) -> None:
    if failure.check(tus.TusError):
        _refuse(request, failure.value)
        return
    _log.failure("serving {uri}", failure, uri=request.uri[:200])
    _refuse(request, tus.TusError(500, "internal error", "INTERNAL"))


def contentDisposition(kind: str, fileName: str) -> bytes:
    """
    A C{Content-Disposition} header (RFC 6266) whose C{filename} is an
    ASCII stand-in and C{filename*} the real name in UTF-8 (RFC 5987), so
    Chinese names survive in every browser.
    """
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\%;' else "_" for c in fileName) or "file"
    encoded = quote(fileName, safe="!#$&+-.^_`|~")
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}".encode("ascii")


def dispositionKind(mimeType: str | None) -> str:
    """
    C{inline} for images other than SVG, audio and video; C{attachment}
    for the rest.
    """
    mimeType = mimeType or ""
    if mimeType.startswith(("audio/", "video/")):
        return "inline"
    if mimeType.startswith("image/") and not mimeType.startswith("image/svg"):
        return "inline"
    return "attachment"


def _secure(request: IRequest) -> None:
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"content-security-policy", b"sandbox")


class FilesAPIResource(Resource):
    """
    C{/api/files/}: uploads (tus) and signed downloads.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, service: UploadService, cors: CORSPolicy) -> None:
        super().__init__()
        self.service = service
        self.cors = cors

    def render(self, request: Any) -> Any:
        self.cors.apply(request)
        request.setHeader(b"access-control-expose-headers", _EXPOSE)
        method = request.method
        if method == b"OPTIONS":
            return self._options(request)
        segments = request.postpath
        try:
            query = parseQuery(request.uri)
        except QueryError:
            query = {}
        if len(segments) == 1 and segments[0]:
            fileId = segments[0].decode("ascii", "replace")
            token = query.get("token")
            if method == b"HEAD":
                d = ensureDeferred(self._head(request, fileId, token))
            elif method in (b"PATCH", b"PUT"):
                d = ensureDeferred(self._write(request))
            elif method == b"DELETE":
                d = ensureDeferred(self._delete(request, fileId, token))
            else:
                _refuse(request, tus.TusError(405, "an uploadUrl takes HEAD, PATCH, PUT and DELETE", "INVALID_PAYLOAD"))
                return NOT_DONE_YET
        elif len(segments) == 2 and segments[0] and method in (b"GET", b"HEAD"):
            fileId = segments[0].decode("ascii", "replace")
            d = ensureDeferred(self._download(request, fileId, query.get("exp"), query.get("sig")))
        else:
            _refuse(request, tus.TusError(404, "not found"))
            return NOT_DONE_YET
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    def _failed(self, failure: Any, request: Any) -> None:
        _failed(failure, request)

    def _options(self, request: Any) -> bytes:
        if request.getHeader(b"access-control-request-method") is not None:
            self.cors.preflight(request)
            request.setHeader(b"access-control-allow-methods", _METHODS)
            request.setHeader(b"access-control-allow-headers", _ALLOW_HEADERS)
        request.setResponseCode(204)
        request.setHeader(b"tus-resumable", tus.TUS_VERSION.encode("ascii"))
        request.setHeader(b"tus-version", tus.TUS_VERSION.encode("ascii"))
        request.setHeader(b"tus-extension", tus.TUS_EXTENSIONS.encode("ascii"))
        request.setHeader(b"tus-max-size", b"%d" % self.service.settings.maxFileSize)
        request.setHeader(b"content-length", b"0")
        return b""

    async def _head(self, request: Any, fileId: str, token: str | None) -> None:
        tus.checkVersion(request.getHeader(b"tus-resumable"))
        active = await self.service.authorize(fileId, token)
        upload = active.upload
        offset = upload.head(self.service.nowMs())
        headers = _tusHeaders()
        headers[b"upload-offset"] = b"%d" % offset
        headers[b"upload-length"] = b"%d" % upload.length
        if upload.state == tus.UPLOADING:
            from .service import _httpDate

            headers[b"upload-expires"] = _httpDate(upload.expiresAt)
        _answer(request, 200, headers)

    async def _write(self, request: Any) -> None:
        sink = getattr(request, "bodySink", None)
        if sink is None:
            # the site does not stream bodies to uploads: a wiring error
            raise tus.TusError(500, "uploads are not enabled on this site", "INTERNAL")
        status, headers = await sink.result
        _answer(request, status, headers)

    async def _delete(self, request: Any, fileId: str, token: str | None) -> None:
        tus.checkVersion(request.getHeader(b"tus-resumable"))
        active = await self.service.authorize(fileId, token)
        await self.service.abort(active)
        _answer(request, 204, _tusHeaders())

    async def _download(self, request: Any, fileId: str, exp: str | None, sig: str | None) -> None:
        try:
            self.service.verifyLink(DOWNLOAD, fileId, exp, sig)
        except SignatureError as error:
            raise tus.TusError(403, error.message)
        record = await self.service.files.get(fileId)
        if record is None or record.state not in (COMPLETE, EXPIRED):
            raise tus.TusError(404, "no such file")
        if record.state == EXPIRED:
            raise tus.TusError(410, "this file has expired (--file-retention-days)")
        path = self.service.files.pathFor(record)
        if not await self.service.files.run(path.exists):
            raise tus.TusError(410, "this file's bytes are gone")
        mimeType = record.mimeType or "application/octet-stream"
        _secure(request)
        request.setHeader(b"content-disposition", contentDisposition(dispositionKind(mimeType), record.fileName))
        request.setHeader(b"cache-control", b"private, max-age=86400")
        if record.sha256 is not None:
            if request.setETag(b'"%s"' % record.sha256.encode("ascii")) == http.CACHED:
                request.setHeader(b"content-length", b"0")
                request.finish()
                return
        _serveFile(request, self.service.files.resourceFor(path, mimeType))


def _serveFile(request: Any, resource: Any) -> None:
    # the file store's resource: decrypts bytes sealed at rest as it sends
    result = resource.render(request)
    if result is not NOT_DONE_YET:
        request.write(result)
        request.finish()


class ThumbnailsResource(Resource):
    """
    C{/api/thumbnails/<fileId>.jpg?exp=...&sig=...}.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, service: UploadService, cors: CORSPolicy) -> None:
        super().__init__()
        self.service = service
        self.cors = cors

    def render(self, request: Any) -> Any:
        if request.method == b"OPTIONS":
            return self.cors.preflight(request)
        self.cors.apply(request)
        segments = request.postpath
        if request.method not in (b"GET", b"HEAD") or len(segments) != 1 or not segments[0].endswith(b".jpg"):
            _refuse(request, tus.TusError(404, "not found"))
            return NOT_DONE_YET
        try:
            query = parseQuery(request.uri)
        except QueryError:
            query = {}
        fileId = segments[0][:-4].decode("ascii", "replace")
        d = ensureDeferred(self._serve(request, fileId, query.get("exp"), query.get("sig")))
        d.addErrback(_failed, request)
        return NOT_DONE_YET

    async def _serve(self, request: Any, fileId: str, exp: str | None, sig: str | None) -> None:
        try:
            self.service.verifyLink(THUMBNAIL, fileId, exp, sig)
        except SignatureError as error:
            raise tus.TusError(403, error.message)
        record = await self.service.files.get(fileId)
        if record is None or record.state not in (COMPLETE, EXPIRED):
            raise tus.TusError(404, "no such file")
        if record.state == EXPIRED:
            raise tus.TusError(410, "this file has expired (--file-retention-days)")
        try:
            path = await self.service.thumbnail(record)
        except ThumbnailError as error:
            raise tus.TusError(404, f"no thumbnail: {error}")
        _secure(request)
        request.setHeader(b"cache-control", b"private, max-age=86400")
        if request.setETag(b'"t-%s"' % (record.sha256 or "").encode("ascii")) == http.CACHED:
            request.setHeader(b"content-length", b"0")
            request.finish()
            return
        _serveFile(request, self.service.files.resourceFor(path, "image/jpeg"))
