# -*- test-case-name: tests.test_crypto -*-
"""
AES-256-GCM for the short records of the store (message text, file names,
system texts): a fresh 96-bit random nonce per record, the key id kept
beside the ciphertext by the caller (a column of the row), and the row's
identity as associated data, so that a ciphertext copied into another row
or another column fails to decrypt instead of showing there.

The sealed form is text (base64 of nonce, ciphertext and tag) because the
columns are C{TEXT} on both engines; it costs a third more bytes than raw.

Why random nonces: a record is written once per key (a rekey writes it
anew with a new nonce); 2**32 records under one key keep the chance of a
repeated nonce below 2**-32 (NIST SP 800-38D), far beyond one store's
messages between rotations.
"""

from __future__ import annotations

import os
import threading
from binascii import Error as BinasciiError, a2b_base64, b2a_base64

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .keys import KeyRing

NONCE_BYTES = 12
TAG_BYTES = 16


class DecryptionError(Exception):
    """
    A stored ciphertext cannot be read: its key is not in the key file, or
    it was altered or moved from another row.
    """


class UnknownKeyError(DecryptionError):
    """
    The key that wrote a ciphertext is not in the key file.
    """


#: Random bytes drawn from the OS at a time for nonces.
_POOL_BYTES = 12 * 512


#: Bumped in a forked child: its threads' pools are drawn again, so that
#: parent and child never use the same unused bytes.
_forks = [0]


def _forked() -> None:
    _forks[0] += 1


os.register_at_fork(after_in_child=_forked)


class _Nonces(threading.local):
    """
    Fresh random nonces, drawn from the OS a few thousand bytes at a time:
    one C{getrandom} call per nonce cost about as much as the encryption of
    a chat message. Per thread (no lock); drawn again after a fork.
    """

    def __init__(self) -> None:
        self.pool = b""
        self.offset = 0
        self.fork = -1

    def next(self) -> bytes:
        offset = self.offset
        if offset >= len(self.pool) or self.fork != _forks[0]:
            self.pool = os.urandom(_POOL_BYTES)
            self.fork = _forks[0]
            offset = 0
        self.offset = offset + NONCE_BYTES
        return self.pool[offset : offset + NONCE_BYTES]


class RecordCipher:
    """
    Seals and opens records with the keys of a L{KeyRing}, one C{AESGCM}
    object per key made once (the key schedule is not redone per record).

    @ivar currentId: the id of the key new records are sealed with.
    """

    def __init__(self, ring: KeyRing) -> None:
        self.ring = ring
        self.currentId = ring.current.id
        self._aeads = {key.id: AESGCM(key.secret) for key in ring.keys}
        self._current = self._aeads[self.currentId]
        self._nonces = _Nonces()

    def seal(self, plaintext: str, aad: bytes) -> str:
        """
        Encrypt C{plaintext} under the current key, bound to C{aad}.

        @return: the sealed text, to store with L{currentId}.
        """
        nonce = self._nonces.next()
        sealed = self._current.encrypt(nonce, plaintext.encode("utf-8"), aad)
        return b2a_base64(nonce + sealed, newline=False).decode("ascii")

    def open(self, keyId: str, sealed: str, aad: bytes) -> str:
        """
        Decrypt what L{seal} made under key C{keyId} for C{aad}.

        @raise UnknownKeyError: if C{keyId} is not in the key file.
        @raise DecryptionError: if the record was altered, or sealed for
            another C{aad} (another row or column).
        """
        aead = self._aeads.get(keyId)
        if aead is None:
            raise UnknownKeyError(f"key {keyId!r} is not in the key file {self.ring.source}")
        try:
            raw = a2b_base64(sealed)
        except (BinasciiError, ValueError):
            raise DecryptionError("a sealed record is not base64 (altered?)") from None
        if len(raw) < NONCE_BYTES + TAG_BYTES:
            raise DecryptionError("a sealed record is too short (altered?)")
        try:
            plain = aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], aad)
        except InvalidTag:
            raise DecryptionError(
                "a sealed record fails authentication: altered, or moved from another row"
            ) from None
        return plain.decode("utf-8")


def fieldAAD(table: str, column: str, *identity: str) -> bytes:
    """
    The associated data of one column of one row: the table, the column
    and the row's identity, each length-prefixed so that no two rows share
    it (C{("ab", "c")} and C{("a", "bc")} differ). It is the column's
    prefix (C{fieldAAD(table, column)}) followed by L{identityAAD}, so a hot
    path computes the prefix once.
    """
    parts = [table, column, *identity]
    return "|".join(f"{len(part)}:{part}" for part in parts).encode("utf-8")


def identityAAD(first: str, second: str) -> bytes:
    """
    The end of L{fieldAAD} for a row identified by two strings.
    """
    return f"|{len(first)}:{first}|{len(second)}:{second}".encode("utf-8")
