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

from twisted.web.static import File

from .stream import FileCipher, OpeningReader, readHeader


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

    def getFileSize(self) -> int:
        """
        The plaintext size (L{File} asks after L{openForReading}).
        """
        opened = self._opened
        if isinstance(opened, OpeningReader):
            return opened.size
        return int(super().getFileSize())
