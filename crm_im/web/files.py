# -*- test-case-name: tests.test_web -*-
"""
C{GET /files/<fileId>/<name>}: files kept for offline recipients.

The id is checked by the store (no path traversal); the bytes are served
by twisted.web's static L{File} (ranges, HEAD, streaming with
back-pressure), with the MIME type recorded at upload and
C{Content-Disposition: attachment} so a browser never renders uploaded
content as a page of this origin.

In JWT mode a request needs a token (C{Authorization: Bearer <token>}, or
C{?token=<token>} for links) and a file is served only to its sender and
its recipient; anyone else gets the same 404 as for a file that does not
exist.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from ..auth import AuthenticationError, Claims, IAuthenticator, OpenAuthenticator
from ..http import CORSPolicy, QueryError, parseQuery
from ..storage import FileRecord, IFileStore
from .json import jsonResponse


class FilesResource(Resource):
    """
    The files route.
    """

    isLeaf = True

    def __init__(self, files: IFileStore, cors: CORSPolicy, authenticator: IAuthenticator | None = None) -> None:
        super().__init__()
        self.files = files
        self.cors = cors
        self.authenticator = authenticator if authenticator is not None else OpenAuthenticator()

    def _claims(self, request: IRequest) -> Claims | None:
        """
        The verified claims of the request's token (C{None} in open mode).

        @raise AuthenticationError: if a token is required and bad or absent.
        """
        if not self.authenticator.required:
            return None
        header = request.getHeader(b"authorization") or b""
        scheme, _, value = header.partition(b" ")
        if scheme.lower() == b"bearer" and value.strip():
            token = value.strip().decode("latin-1")
        else:
            try:
                token = parseQuery(request.uri).get("token", "")
            except QueryError:
                token = ""
        return self.authenticator.verify(token)

    def render(self, request: IRequest) -> Any:
        if request.method == b"OPTIONS":
            return self.cors.preflight(request)
        self.cors.apply(request)
        if request.method not in (b"GET", b"HEAD"):
            return jsonResponse(request, {"error": "method not allowed"}, 405)
        postpath = request.postpath
        if not postpath or not postpath[0]:
            return jsonResponse(request, {"error": "not found"}, 404)
        try:
            fileId = postpath[0].decode("ascii")
        except UnicodeDecodeError:
            return jsonResponse(request, {"error": "not found"}, 404)
        try:
            claims = self._claims(request)
        except AuthenticationError as error:
            request.setHeader(b"www-authenticate", b'Bearer realm="crm_im"')
            return jsonResponse(request, {"error": error.message}, 401)
        d: Deferred[FileRecord | None] = self.files.get(fileId)
        if claims is not None:
            subject = claims.subject
            d.addCallback(lambda record: record if record is not None and subject in (record.fromId, record.toId) else None)
        d.addCallback(self._serve, request)
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    def _serve(self, record: FileRecord | None, request: Any) -> None:
        if record is None:
            request.write(jsonResponse(request, {"error": "not found"}, 404))
            request.finish()
            return
        path = self.files.pathFor(record)
        # the file store's resource: decrypts bytes sealed at rest as it sends
        resource = self.files.resourceFor(path, record.mimeType or "application/octet-stream")
        request.setHeader(
            b"content-disposition",
            b"attachment; filename*=UTF-8''" + quote(record.fileName, safe="").encode("ascii"),
        )
        request.setHeader(b"x-content-type-options", b"nosniff")
        result = resource.render(request)
        if result is not NOT_DONE_YET:
            request.write(result)
            request.finish()

    def _failed(self, failure: Any, request: Any) -> None:
        request.write(jsonResponse(request, {"error": "internal error"}, 500))
        request.finish()
