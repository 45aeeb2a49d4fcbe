# -*- test-case-name: tests.test_crypto_stream -*-
"""
Streamed, chunked AES-256-GCM for file bytes at rest.

A sealed file is a header then chunks::

    header   MAGIC (8) | len(keyId) (1) | keyId | salt (16)
    chunk i  AES-GCM(fileKey, nonce=i, plaintext[i*CHUNK:(i+1)*CHUNK],
                     aad = header | identity | i (8) | final (1)) + tag (16)

C{fileKey} is derived from the key C{keyId} names and the file's random
salt (HKDF-SHA256), so every file has a key of its own and the chunk
counter can be the nonce. Every chunk is C{CHUNK} bytes of plaintext but
the last, which is flagged final in its associated data (an empty file is
one empty final chunk): a file cut at a chunk boundary, chunks swapped or
moved, a ciphertext moved to another path (the identity) all fail.

The plaintext size follows from the sealed size alone, and chunk C{i}
starts at a known offset: a range read (HTTP C{Range}, thumbnails) seeks to
the chunk that holds its first byte and decrypts only the chunks it needs.
Memory is bounded by one chunk whatever the file's size.
"""

from __future__ import annotations

import io
import os
import struct
from typing import IO, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .keys import KeyRing
from .records import DecryptionError, UnknownKeyError

#: The first bytes of every sealed file.
MAGIC = b"CRMIMF\x01\x00"
#: Plaintext bytes per chunk.
CHUNK = 64 * 1024
TAG = 16
SALT = 16
_INFO = b"crm_im file key v1"


def _fileKey(secret: bytes, salt: bytes) -> AESGCM:
    return AESGCM(HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=_INFO).derive(secret))


def _nonce(index: int) -> bytes:
    return b"\x00\x00\x00\x00" + struct.pack(">Q", index)


def _aad(header: bytes, identity: bytes, index: int, final: bool) -> bytes:
    return header + identity + struct.pack(">QB", index, 1 if final else 0)


def sealedSize(plainSize: int, keyId: str) -> int:
    """
    The size of a sealed file of C{plainSize} bytes under C{keyId}.
    """
    chunks = max(1, -(-plainSize // CHUNK))
    return len(MAGIC) + 1 + len(keyId.encode("ascii")) + SALT + plainSize + chunks * TAG


def plainSizeOf(bodySize: int) -> int:
    """
    The plaintext bytes of a chunk body of C{bodySize} bytes (the sealed
    file minus its header).

    @raise DecryptionError: for a size no sealed file has.
    """
    chunks = -(-bodySize // (CHUNK + TAG))
    plain = bodySize - chunks * TAG
    # every chunk but the last is full, and a last chunk after full ones
    # holds at least a byte (an empty file is one empty chunk)
    if chunks == 0 or plain < 0 or (chunks > 1 and plain <= (chunks - 1) * CHUNK):
        raise DecryptionError("a sealed file has an impossible size (truncated?)")
    return plain


class FileCipher:
    """
    Seals and opens files with the keys of a L{KeyRing}.
    """

    def __init__(self, ring: KeyRing) -> None:
        self.ring = ring
        self.currentId = ring.current.id

    def _secret(self, keyId: str) -> bytes:
        key = self.ring.byId(keyId)
        if key is None:
            raise UnknownKeyError(f"key {keyId!r} is not in the key file {self.ring.source}")
        return key.secret

    def writer(self, target: IO[bytes], identity: bytes) -> "SealingWriter":
        """
        A writer sealing what is written to it into C{target}, under the
        current key, for C{identity} (the file's place in the store).
        """
        salt = os.urandom(SALT)
        keyId = self.currentId.encode("ascii")
        header = MAGIC + bytes([len(keyId)]) + keyId + salt
        return SealingWriter(target, _fileKey(self._secret(self.currentId), salt), header, identity)

    def seal(self, data: bytes, identity: bytes) -> bytes:
        """
        C{data} sealed whole (small files: inline transfers, thumbnails).
        """
        out = io.BytesIO()
        writer = self.writer(out, identity)
        writer.write(data)
        writer.close()
        return out.getvalue()

    def sealStream(self, source: "IO[bytes] | io.RawIOBase", target: IO[bytes], identity: bytes) -> int:
        """
        Seal everything C{source} holds into C{target}, a chunk at a time.

        @return: the plaintext bytes sealed.
        """
        writer = self.writer(target, identity)
        total = 0
        while data := source.read(CHUNK):
            writer.write(data)
            total += len(data)
        writer.close()
        return total

    def reader(self, source: IO[bytes], identity: bytes) -> "OpeningReader":
        """
        A seekable reader of the plaintext of sealed C{source}.

        @raise DecryptionError: if C{source} is not sealed, or its key is
            not in the key file.
        """
        header, keyId = readHeader(source)
        if keyId is None:
            raise DecryptionError("not a sealed file")
        source.seek(0, os.SEEK_END)
        bodySize = source.tell() - len(header)
        salt = header[-SALT:]
        return OpeningReader(source, _fileKey(self._secret(keyId), salt), header, identity, plainSizeOf(bodySize))


def readHeader(source: IO[bytes]) -> tuple[bytes, str | None]:
    """
    The header of C{source} (read from its start) and its key id; C{(b"",
    None)} for a file that is not sealed (written before encryption at rest
    was on). Leaves the position after the header.
    """
    source.seek(0)
    start = source.read(len(MAGIC) + 1)
    if len(start) < len(MAGIC) + 1 or start[: len(MAGIC)] != MAGIC:
        source.seek(0)
        return b"", None
    rest = source.read(start[-1] + SALT)
    if len(rest) != start[-1] + SALT:
        raise DecryptionError("a sealed file's header is cut short")
    try:
        keyId = rest[: start[-1]].decode("ascii")
    except UnicodeDecodeError:
        raise DecryptionError("a sealed file's header is damaged") from None
    return start + rest, keyId


def sealedKeyId(path: str) -> str | None:
    """
    The id of the key that sealed the file at C{path}, or L{None} if it is
    not sealed (blocking).
    """
    with open(path, "rb") as f:
        return readHeader(f)[1]


class SealingWriter:
    """
    Seals a stream chunk by chunk: a full chunk is written once the next
    byte arrives (the last chunk must be flagged final), so at most one
    chunk is held.
    """

    def __init__(self, target: IO[bytes], aead: AESGCM, header: bytes, identity: bytes) -> None:
        self._target = target
        self._aead = aead
        self._header = header
        self._identity = identity
        self._buffer = bytearray()
        self._index = 0
        self._closed = False
        target.write(header)

    def _emit(self, data: bytes, final: bool) -> None:
        index = self._index
        self._target.write(self._aead.encrypt(_nonce(index), data, _aad(self._header, self._identity, index, final)))
        self._index = index + 1

    def write(self, data: bytes) -> None:
        """
        Seal C{data} (written out a chunk at a time).
        """
        if self._closed:
            raise ValueError("write to a closed sealing writer")
        buffer = self._buffer
        buffer += data
        # what follows a full chunk decides that it is not the last one;
        # the buffer is cut once per write (not per chunk: a large write
        # would move its tail again for every chunk)
        offset = 0
        while len(buffer) - offset > CHUNK:
            self._emit(bytes(buffer[offset : offset + CHUNK]), False)
            offset += CHUNK
        if offset:
            del buffer[:offset]

    def close(self) -> None:
        """
        Write the final chunk (not the target's C{close}).
        """
        if not self._closed:
            self._closed = True
            self._emit(bytes(self._buffer), True)
            self._buffer = bytearray()


class OpeningReader(io.RawIOBase):
    """
    The plaintext of a sealed file, seekable: a read decrypts the chunks it
    covers (the last one decrypted is kept, so sequential small reads
    decrypt each chunk once).

    @ivar size: the plaintext size.
    """

    def __init__(self, source: IO[bytes], aead: AESGCM, header: bytes, identity: bytes, size: int) -> None:
        super().__init__()
        self._source = source
        self._aead = aead
        self._header = header
        self._identity = identity
        self.size = size
        self._chunks = max(1, -(-size // CHUNK))
        self._position = 0
        self._cached: tuple[int, bytes] | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_SET:
            position = offset
        elif whence == os.SEEK_CUR:
            position = self._position + offset
        elif whence == os.SEEK_END:
            position = self.size + offset
        else:
            raise ValueError(f"bad whence {whence}")
        if position < 0:
            raise ValueError("negative seek position")
        self._position = position
        return position

    def _chunk(self, index: int) -> bytes:
        cached = self._cached
        if cached is not None and cached[0] == index:
            return cached[1]
        final = index == self._chunks - 1
        length = (self.size - index * CHUNK if final else CHUNK) + TAG
        self._source.seek(len(self._header) + index * (CHUNK + TAG))
        sealed = self._source.read(length)
        if len(sealed) != length:
            raise DecryptionError("a sealed file is cut short")
        try:
            plain = self._aead.decrypt(_nonce(index), sealed, _aad(self._header, self._identity, index, final))
        except InvalidTag:
            raise DecryptionError(
                f"chunk {index} of a sealed file fails authentication: altered, truncated, reordered or moved"
            ) from None
        self._cached = (index, plain)
        return plain

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        position = self._position
        if position >= self.size or not len(view):
            return 0
        index, within = divmod(position, CHUNK)
        plain = self._chunk(index)
        count = min(len(view), len(plain) - within)
        view[:count] = plain[within : within + count]
        self._position = position + count
        return count

    def readall(self) -> bytes:
        parts = []
        while data := self.read(CHUNK):
            parts.append(data)
        return b"".join(parts)

    def close(self) -> None:
        if not self.closed:
            self._source.close()
        super().close()
