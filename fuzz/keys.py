"""
Fuzz target: the end-to-end encryption payloads: the key directory's
validators (L{crm_im.im.keys}: C{keys:upload}, C{keys:query},
C{keys:claim}) and C{message {type: 'encrypted'}}
(L{crm_im.im.validation.message}).

The first byte picks a validator; the payload is the rest parsed as the
Socket.IO decoder parses an event's argument, or a value built from the
input's bytes with the fields these validators read. Bugs: any exception
but L{IMError}; an accepted value outside the documented bounds.
"""

from __future__ import annotations

from typing import Any, Callable

from crm_im.im import keys as k
from crm_im.im import validation as v

from . import Input
from .validation import checkOne

FIELDS = (
    "deviceId", "identityKey", "signedPreKey", "oneTimeKeys", "keyId", "publicKey", "signature", "replace",
    "userIds", "userId", "deviceIds", "type", "toId", "groupId", "roomId", "ciphertext", "algorithm", "content",
    "id", "fileId", "mentions", "timestamp",
)
STRINGS = ("", "a", "encrypted", "text", "\x00", "\x1f", "x" * 129, "k" * 2049, "QQ==", "\ud800")
NUMBERS = (0, 1, -1, 2**53 - 1, 2**53, 2**63, 0.5, True, False)
LIMITS = k.KeyLimits()


def value(source: Input, depth: int = 0) -> Any:
    """
    A JSON-like value, objects keyed by the fields above.
    """
    kind = source.byte() % (8 if depth < 3 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return source.choice(NUMBERS)
    if kind == 2:
        return source.choice(STRINGS)
    if kind == 3:
        return source.text(100)
    if kind == 4:
        return source.integer(source.byte() % 9 or 1)
    if kind == 5:
        return [value(source, depth + 1) for _ in range(source.byte() % 6)]
    if kind == 6:
        # long lists, to reach the count bounds
        return [value(source, 3) for _ in range(source.byte() * 2)]
    if source.byte() & 1:
        # an object keyed by anything: a ciphertext per device
        return {source.text(8): value(source, depth + 1) for _ in range(source.byte() % 6)}
    return {str(source.choice(FIELDS)): value(source, depth + 1) for _ in range(source.byte() % 10)}


def _upload(data: Any) -> None:
    request = k.upload(data, "me", 0, LIMITS)
    device = request.device
    assert device.userId == "me" and 1 <= len(device.deviceId) <= k.MAX_DEVICE_ID
    assert 0 <= device.signedPreKey.keyId <= k.MAX_KEY_ID
    assert len(request.oneTimeKeys) <= LIMITS.oneTimeKeysPerUpload
    for text in (device.identityKey, device.signedPreKey.publicKey, device.signedPreKey.signature):
        assert 1 <= len(text) <= k.MAX_KEY and "\x00" not in text
    assert all(0 <= key.keyId <= k.MAX_KEY_ID and 1 <= len(key.publicKey) <= k.MAX_KEY for key in request.oneTimeKeys)


def _query(data: Any) -> None:
    userIds = k.queriedUsers(data, LIMITS)
    assert 1 <= len(userIds) <= LIMITS.usersPerQuery


def _claim(data: Any) -> None:
    _, deviceIds = k.claimed(data, LIMITS)
    assert deviceIds is None or 1 <= len(deviceIds) <= LIMITS.devicesPerUser


def _encrypted(data: Any) -> None:
    if isinstance(data, dict) and data.get("type") is None:
        data = dict(data, type="encrypted")
    request = v.message(data, "me", 1000, 5000)
    if request.type != "encrypted":
        return
    assert request.content == "" and request.roomId is None and request.fileId is None
    assert (request.toId is None) != (request.groupId is None)
    assert request.algorithm is not None and 1 <= len(request.algorithm) <= v.MAX_ALGORITHM
    ciphertext = request.ciphertext
    if isinstance(ciphertext, str):
        assert 1 <= len(ciphertext) <= 5000
    else:
        assert isinstance(ciphertext, dict) and 1 <= len(ciphertext) <= v.MAX_CIPHERTEXT_DEVICES
        assert sum(len(d) + len(c) for d, c in ciphertext.items()) <= 5000
        assert all(isinstance(c, str) and c for c in ciphertext.values())


VALIDATORS: tuple[Callable[[Any], Any], ...] = (_upload, _query, _claim, _encrypted)


def TestOneInput(data: bytes) -> None:
    checkOne(data, VALIDATORS, value)
