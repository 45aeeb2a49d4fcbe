# -*- test-case-name: tests.test_uploads_signing -*-
"""
Signed, expiring capabilities for files (FILES.md): the single-use token of
an C{uploadUrl} and the C{exp}/C{sig} of a download URL.

Both are an HMAC-SHA256 over what they grant (the purpose, the file id and
the expiry) with the server's secret, so a URL is its own credential: an
C{<img src>} needs no cookie or header. Any change to the id, the purpose,
the expiry or the signature makes it invalid; comparisons are in constant
time. The secret is C{--url-secret} or 32 random bytes kept in the data
directory (C{url-secret}, mode 0600), made on the first start, so links
survive a restart.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets

from twisted.internet.interfaces import IReactorTime
from twisted.python.filepath import FilePath

#: The purposes a signature is bound to: an upload token never works as a
#: download signature and the reverse.
UPLOAD = "upload"
DOWNLOAD = "download"
THUMBNAIL = "thumbnail"

SECRET_FILE = "url-secret"


class SignatureError(Exception):
    """
    A signature is missing, malformed, forged or expired.

    @ivar expired: the signature was good but its time is over.
    """

    def __init__(self, message: str, expired: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.expired = expired


def loadSecret(dataDir: FilePath[str], configured: str | None = None) -> bytes:
    """
    The signing secret: C{configured} if given, else the one kept in
    C{dataDir}, made there (mode 0600) on first use. Blocking (start-up).
    """
    if configured:
        return configured.encode("utf-8")
    dataDir.makedirs(ignoreExistingDirectory=True)
    path = dataDir.child(SECRET_FILE)
    try:
        secret = path.getContent()
        if len(secret) >= 32:
            return secret
    except FileNotFoundError:
        pass
    secret = secrets.token_bytes(32)
    temporary = path.siblingExtension(".tmp")
    fd = os.open(temporary.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, secret)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary.path, path.path)
    return secret


class URLSigner:
    """
    Makes and checks the signatures of file URLs, with an injected clock.
    """

    def __init__(self, secret: bytes, clock: IReactorTime) -> None:
        if len(secret) < 16:
            raise ValueError("the URL secret must be at least 16 bytes")
        self._secret = secret
        self.clock = clock

    def _mac(self, purpose: str, fileId: str, expires: int) -> str:
        message = f"{purpose}\n{fileId}\n{expires}".encode("utf-8")
        digest = hmac.new(self._secret, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def sign(self, purpose: str, fileId: str, expires: int) -> str:
        """
        The signature granting C{purpose} on C{fileId} until C{expires}
        (unix seconds).
        """
        return self._mac(purpose, fileId, expires)

    def verify(self, purpose: str, fileId: str, expires: str | None, signature: str | None) -> int:
        """
        Check a signature against the clock.

        @param expires: the C{exp} as it came (text).
        @return: the expiry (unix seconds).
        @raise SignatureError: if it is missing, malformed, not ours for
            this purpose and id, or expired (C{expired} set).
        """
        if not expires or not signature:
            raise SignatureError("a signed URL needs exp and sig")
        if not expires.isdigit() or len(expires) > 12 or len(signature) > 64:
            raise SignatureError("malformed signature")
        expiry = int(expires)
        if not hmac.compare_digest(self._mac(purpose, fileId, expiry), signature):
            raise SignatureError("bad signature")
        if expiry < self.clock.seconds():
            raise SignatureError("this link has expired; ask for a fresh one (file:url)", expired=True)
        return expiry

    def uploadToken(self, fileId: str) -> str:
        """
        The token of an C{uploadUrl}. It carries no time of its own: an
        upload stays open until its record's C{expiresAt} (which moves as
        bytes arrive), and the token dies with the upload (single use: once
        the file is complete or abandoned, it opens nothing).
        """
        return self._mac(UPLOAD, fileId, 0)

    def verifyUploadToken(self, fileId: str, token: str | None) -> None:
        """
        Check an upload token (see L{uploadToken}).

        @raise SignatureError: if it is missing or not the token of this file.
        """
        if not token:
            raise SignatureError("an upload needs the token of its uploadUrl")
        if len(token) > 64 or not hmac.compare_digest(self._mac(UPLOAD, fileId, 0), token):
            raise SignatureError("bad upload token")
