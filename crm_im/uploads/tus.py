# -*- test-case-name: tests.test_uploads_tus -*-
"""
The tus 1.0.0 resumable upload protocol (core, termination and expiration
extensions; uploads are created over the socket by C{file:upload}, FILES.md)
as a pure state machine: what each request may do to an upload, decided
from the upload's state, the request's headers and the time, with no I/O.
L{crm_im.uploads.service} acts on the verdicts; L{crm_im.uploads.resource}
turns L{TusError} into an HTTP answer.

One request writes an upload at a time (a second is 409 while the first is
open); every byte a request delivered counts, even if its connection then
drops, so the client resumes from C{HEAD}'s C{Upload-Offset}. A request
refused for a body past the announced length (413) is the exception: none
of its bytes count (L{Upload.rewind}).
"""

from __future__ import annotations

import attrs

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "termination,expiration"
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"

UPLOADING = "uploading"
COMPLETE = "complete"
ABORTED = "aborted"

#: The largest header number accepted (2**63 - 1 has 19 digits).
_MAX_DIGITS = 19


class TusError(Exception):
    """
    A request refused: its HTTP status and a message for the developer.

    @ivar code: the contract's C{code} of the JSON error body.
    """

    def __init__(self, status: int, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code if code is not None else _CODES.get(status, "INVALID_PAYLOAD")


_CODES = {
    400: "INVALID_PAYLOAD",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    409: "CONFLICT",
    410: "GONE",
    412: "UNSUPPORTED_VERSION",
    413: "TOO_LARGE",
    415: "INVALID_PAYLOAD",
    460: "CHECKSUM_MISMATCH",
}


def headerNumber(value: bytes | str | None, name: str) -> int:
    """
    A non-negative decimal header value.

    @raise TusError: 400 if absent or not such a number.
    """
    if value is None:
        raise TusError(400, f"{name} is required")
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    value = value.strip()
    if not value.isdigit() or not value.isascii() or len(value) > _MAX_DIGITS:
        raise TusError(400, f"{name} must be a non-negative integer")
    return int(value)


def checkVersion(tusResumable: bytes | None) -> None:
    """
    Every request but C{OPTIONS} names the protocol version.

    @raise TusError: 412 for a version other than 1.0.0.
    """
    if tusResumable is not None and tusResumable.strip() != TUS_VERSION.encode("ascii"):
        raise TusError(412, f"this server speaks tus {TUS_VERSION}")


@attrs.define
class Upload:
    """
    One upload's state.

    @ivar length: the size announced by C{file:upload} (C{Upload-Length}).
    @ivar offset: the bytes stored so far.
    @ivar expiresAt: ms since the epoch after which the upload is abandoned.
    @ivar writer: whether a request is writing it now.
    """

    fileId: str
    length: int
    offset: int
    expiresAt: int
    state: str = UPLOADING
    writer: bool = False

    def check(self, nowMs: int) -> None:
        """
        The upload can be read or written at C{nowMs}.

        @raise TusError: 410 if abandoned or expired.
        """
        if self.state == ABORTED:
            raise TusError(410, "this upload was abandoned")
        if self.state == UPLOADING and nowMs > self.expiresAt:
            raise TusError(410, "this upload expired; start again with file:upload")

    def head(self, nowMs: int) -> int:
        """
        C{HEAD}: the offset to resume from.
        """
        self.check(nowMs)
        return self.offset

    def beginWrite(
        self,
        nowMs: int,
        offset: int,
        contentLength: int | None,
        contentType: bytes | None = None,
        whole: bool = False,
    ) -> bool:
        """
        A C{PATCH} (or, with C{whole}, a C{PUT} of the whole file) begins.

        @param offset: its C{Upload-Offset} (0 for a C{PUT}).
        @param contentLength: its body's length, L{None} if chunked.
        @return: C{False} if there is nothing to write: an empty body at the
            end of a complete upload (a C{PUT} of an empty file, which is
            complete once created; a client's last C{PATCH} again), which
            succeeds as it is.
        @raise TusError: 410 gone; 409 complete, busy or a wrong offset; 415
            a wrong content type; 413 a body past the announced length.
        """
        self.check(nowMs)
        if not whole:
            kind = (contentType or b"").split(b";", 1)[0].strip().lower()
            if kind != OFFSET_CONTENT_TYPE.encode("ascii"):
                raise TusError(415, f"a PATCH must be Content-Type: {OFFSET_CONTENT_TYPE}")
        if self.state == COMPLETE:
            if contentLength == 0 and offset == self.length:
                return False
            raise TusError(409, "this upload is complete")
        if self.writer:
            raise TusError(409, "another request is writing this upload; retry after it")
        if offset != self.offset:
            raise TusError(409, f"Upload-Offset is {self.offset}, not {offset}")
        if contentLength is not None and offset + contentLength > self.length:
            raise TusError(413, f"the body goes past the upload's length ({self.length} bytes)")
        if whole and contentLength is not None and contentLength != self.length:
            raise TusError(400, f"a PUT carries the whole file: {self.length} bytes")
        self.writer = True
        return True

    def received(self, count: int) -> None:
        """
        C{count} more bytes arrived for the writing request.

        @raise TusError: 413 past the announced length (nothing counted).
        """
        if self.offset + count > self.length:
            raise TusError(413, f"the body goes past the upload's length ({self.length} bytes)")
        self.offset += count

    def rewind(self, offset: int) -> None:
        """
        The writing request, which began at C{offset}, was refused for a
        body past the announced length (413, L{received}): none of its
        bytes count. Its body was not the file's next bytes (the file is
        not the one announced), and what came before the excess may reach
        the length: kept, it would complete the upload with a cut body.
        """
        if offset > self.offset:
            raise ValueError(f"an upload at {self.offset} is not rewound to {offset}")
        self.offset = offset

    def endWrite(self, nowMs: int, idle: int) -> bool:
        """
        The writing request ended (completely or not): the expiry moves to
        C{idle} ms after now.

        @return: whether every byte is in.
        """
        self.writer = False
        self.expiresAt = nowMs + idle
        return self.offset == self.length

    def complete(self) -> None:
        """
        The file is stored; the token opens nothing any more.
        """
        self.state = COMPLETE

    def abort(self) -> None:
        """
        C{DELETE} or expiry: the upload is given up.
        """
        self.state = ABORTED
        self.writer = False
