# -*- test-case-name: tests.test_crypto_stream -*-
"""
L{SealedFile}: Twisted's static L{File} over a file sealed at rest, so that
downloads keep everything L{File} does (C{Range}, multiple ranges, C{HEAD},
C{Content-Length}) while the bytes are decrypted as they are sent, a chunk
at a time. A file that is not sealed (written before encryption at rest
was turned on) is served as it is.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.web.static import File

from .records import DecryptionError
from .stream import FileCipher, OpeningReader, readHeader


class _CutOffOnFailure:
    """
    The plaintext a static producer reads, ending the download's connection
    when a chunk fails to decrypt (altered bytes, the wrong key). Twisted's
    producers do not expect C{read} to raise: the error stopped the
    producer and the response, headers sent and C{Content-Length} short,
    held the client's connection open for ever. Cut off instead, the client
    sees a failed download at once.
    """

    log = Logger()

    def __init__(self, reader: Any, request: Any, path: str) -> None:
        self._reader = reader
        self._request = request
        self._path = path
        self._failed = False

    def read(self, size: int = -1) -> bytes:
        if self._failed:
            return b""
        try:
            data: bytes = self._reader.read(size)
        except DecryptionError:
            self._failed = True
            self.log.failure("download of {path} cut off: its bytes do not decrypt", path=self._path)
            self._request.transport.abortConnection()
            return b""
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return int(self._reader.seek(offset, whence))

    def close(self) -> None:
        self._reader.close()


class SealedFile(File):
    """
    A static file whose bytes may be sealed by a L{FileCipher}.
    """

    def __init__(self, path: str, cipher: FileCipher, identity: bytes, defaultType: str) -> None:
        super().__init__(path, defaultType=defaultType)
        self._cipher = cipher
        self._identity = identity
        self._opened: Any = None

    def openForReading(self) -> Any:
        """
        The plaintext: decrypted as read if the file is sealed.
        """
        handle = self.open()
        _, keyId = readHeader(handle)
        if keyId is None:
            handle.seek(0)
            self._opened = handle
            return handle
        self._opened = self._cipher.reader(handle, self._identity)
        return self._opened

    def makeProducer(self, request: Any, fileForReading: Any) -> Any:
        """
        L{File}'s producer, reading through L{_CutOffOnFailure}.
        """
        return super().makeProducer(request, _CutOffOnFailure(fileForReading, request, self.path))

    def getFileSize(self) -> int:
        """
        The plaintext size (L{File} asks after L{openForReading}).
        """
        opened = self._opened
        if isinstance(opened, OpeningReader):
            return opened.size
        return int(super().getFileSize())
