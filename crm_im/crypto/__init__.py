"""
Encryption at rest (ENCRYPTION.md, "At rest"): the key file
(L{crm_im.crypto.keys}), AES-256-GCM for the store's records
(L{crm_im.crypto.records}) and streamed, chunked AES-256-GCM for file bytes
(L{crm_im.crypto.stream}). The store and the file store take an L{AtRest}
and call it; nothing else sees a key.
"""

from __future__ import annotations

import attrs

from .keys import EncryptionKey, KeyFileError, KeyRing, loadKeyFile, parseKeys
from .records import DecryptionError, RecordCipher, UnknownKeyError, fieldAAD
from .stream import FileCipher

__all__ = [
    "AtRest",
    "atRestFor",
    "DecryptionError",
    "EncryptionKey",
    "FileCipher",
    "KeyFileError",
    "KeyRing",
    "RecordCipher",
    "UnknownKeyError",
    "fieldAAD",
    "loadKeyFile",
    "parseKeys",
]


@attrs.frozen
class AtRest:
    """
    The ciphers of one key file: records and files.
    """

    ring: KeyRing
    records: RecordCipher
    files: FileCipher

    @classmethod
    def fromRing(cls, ring: KeyRing) -> "AtRest":
        """
        The ciphers of C{ring}.
        """
        return cls(ring, RecordCipher(ring), FileCipher(ring))

    @property
    def currentId(self) -> str:
        """
        The id of the key new rows and files are sealed with.
        """
        return self.ring.current.id


def atRestFor(path: str | None) -> AtRest | None:
    """
    The ciphers of the key file at C{path} (C{--encryption-keys}), or
    L{None} without one; a key file other users may read is logged.

    @raise KeyFileError: for a key file that cannot be used.
    """
    if path is None:
        return None
    from twisted.logger import Logger

    ring, warnings = loadKeyFile(path)
    log = Logger(namespace="crm_im.crypto")
    for warning in warnings:
        log.warn("{warning}", warning=warning)
    log.info(
        "Encryption at rest: current key {keyId}, {count} key(s) in {path}",
        keyId=ring.current.id,
        count=len(ring.keys),
        path=path,
    )
    return AtRest.fromRing(ring)
