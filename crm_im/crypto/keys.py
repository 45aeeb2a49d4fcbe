# -*- test-case-name: tests.test_crypto -*-
"""
The key file of encryption at rest (C{--encryption-keys FILE}, ENCRYPTION.md):
one key a line, C{keyId:base64(32 bytes)}, the first line the current key
(new rows and files are written under it), the others kept so that rows
written under them stay readable until a rekey has moved them.

Why a file and not an option or environment variable: a key on a command
line is visible to every user of the machine (C{ps}), and a file can be
readable by the service's account alone. A file that other users may read
is accepted with a warning (the operator may have reasons, e.g. a secret
mounted by an orchestrator with its own protection), a bad line is refused
with its line number and never its content.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import stat

import attrs

#: What a key id may be: short, printable, no separator of the key file or
#: of the sealed formats.
KEY_ID = re.compile(r"\A[A-Za-z0-9_.-]{1,64}\Z")

#: AES-256: 32 bytes of key.
KEY_BYTES = 32

#: At most this many keys in one file (a rotation keeps a few).
MAX_KEYS = 64

#: A key file larger than this is not a key file.
MAX_FILE_BYTES = 64 * 1024


class KeyFileError(ValueError):
    """
    The key file cannot be used; the message says which line and why, and
    never shows key material.
    """


@attrs.frozen
class EncryptionKey:
    """
    One key of the key file.

    @ivar id: its id, stored beside every ciphertext made with it.
    @ivar secret: the 32 bytes of the AES-256 key.
    """

    id: str
    secret: bytes = attrs.field(repr=False)

    @property
    def check(self) -> str:
        """
        A value that tells this key from another of the same id without
        showing anything of it (an HMAC-SHA256 of a constant under the key,
        hex, 128 bits): the database keeps it beside the key id, so that a
        key file with the right id and the wrong bytes is refused at start.
        """
        return hmac.new(self.secret, b"crm_im encryption key check v1", hashlib.sha256).hexdigest()[:32]


@attrs.frozen
class KeyRing:
    """
    The keys of a key file, the current one first.

    @ivar source: where they were read from (for messages).
    """

    keys: tuple[EncryptionKey, ...]
    source: str = "<keys>"

    def __attrs_post_init__(self) -> None:
        if not self.keys:
            raise KeyFileError(f"{self.source}: no key in the file")

    @property
    def current(self) -> EncryptionKey:
        """
        The key new ciphertexts are made with.
        """
        return self.keys[0]

    @property
    def ids(self) -> frozenset[str]:
        """
        The ids of every key.
        """
        return frozenset(key.id for key in self.keys)

    def byId(self, keyId: str) -> EncryptionKey | None:
        """
        The key with id C{keyId}, if the file has it.
        """
        for key in self.keys:
            if key.id == keyId:
                return key
        return None


def parseKeys(text: str, source: str = "<keys>") -> KeyRing:
    """
    The keys of a key file's text: C{keyId:base64} a line, blank lines and
    lines starting with C{#} ignored.

    @raise KeyFileError: for a malformed line, a key not of 32 bytes, an id
        given twice, no key or too many.
    """
    keys: list[EncryptionKey] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keyId, colon, encoded = line.partition(":")
        keyId = keyId.strip()
        if not colon:
            raise KeyFileError(f"{source}, line {number}: expected keyId:base64(32 bytes)")
        if KEY_ID.match(keyId) is None:
            raise KeyFileError(
                f"{source}, line {number}: a key id is 1 to 64 letters, digits, '_', '.' or '-'"
            )
        if keyId in seen:
            raise KeyFileError(f"{source}, line {number}: key id {keyId!r} is given twice")
        try:
            # standard or URL-safe alphabet, nothing else
            secret = base64.b64decode(encoded.strip().replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            raise KeyFileError(f"{source}, line {number}: key {keyId!r} is not valid base64") from None
        if len(secret) != KEY_BYTES:
            raise KeyFileError(
                f"{source}, line {number}: key {keyId!r} is {len(secret)} bytes, not {KEY_BYTES}"
                " (make one with: head -c 32 /dev/urandom | base64)"
            )
        seen.add(keyId)
        keys.append(EncryptionKey(keyId, secret))
        if len(keys) > MAX_KEYS:
            raise KeyFileError(f"{source}: more than {MAX_KEYS} keys")
    if not keys:
        raise KeyFileError(f"{source}: no key in the file (expected lines keyId:base64(32 bytes))")
    return KeyRing(tuple(keys), source)


def loadKeyFile(path: str) -> tuple[KeyRing, list[str]]:
    """
    Read and parse a key file (blocking: at start-up, before the reactor
    runs, or in the rekey command).

    @return: the keys, and warnings to log (a file other users may read).
    @raise KeyFileError: for a file that cannot be read or parsed.
    """
    warnings: list[str] = []
    try:
        with open(path, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise KeyFileError(f"{path}: not a regular file")
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as error:
        raise KeyFileError(f"{path}: cannot read the key file ({error.strerror or error})") from None
    if len(data) > MAX_FILE_BYTES:
        raise KeyFileError(f"{path}: too large for a key file")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyFileError(f"{path}: a key file is ASCII text (keyId:base64 lines)") from None
    if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.append(
            f"{path} may be read by other users (mode {stat.S_IMODE(info.st_mode):o}):"
            f" chmod 600 {path} so that only crm_im's account reads the keys"
        )
    return parseKeys(text, path), warnings
