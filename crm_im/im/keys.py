# -*- test-case-name: tests.test_keys -*-
"""
The key directory of end-to-end encryption (ENCRYPTION.md, "End to end")
as transport-free handlers: C{keys:upload}, C{keys:query}, C{keys:claim},
and the server events they cause, C{keys:low} (to the owner of a device
running out of one-time keys) and C{keys:changed} (to the contacts of a
user whose device replaced its identity key).

The server only stores and hands out public keys: clients run the session
set-up (X3DH, Olm) among themselves and send C{type: 'encrypted'}
messages, which the message path stores and relays untouched. Every count
and size is bounded here (L{KeyLimits}); the store enforces the per-device
and per-user totals in the transaction that writes.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.defer import DeferredLock, ensureDeferred
from twisted.internet.interfaces import IReactorTime

from ..safelog import Logger
from ..storage.keys import (
    DeviceKeys,
    IdentityKeyConflict,
    IKeyStore,
    KeyUpload,
    OneTimeKey,
    SignedPreKey,
    TooManyOneTimeKeys,
)
from . import validation
from .errors import FORBIDDEN, INTERNAL, INVALID_PAYLOAD, TOO_LARGE, IMError
from .interfaces import Caller, IRouter

#: Longest public key, signature or identity key, in characters: room for
#: base64 of today's X25519/Ed25519 keys (44) and of a post-quantum
#: Kyber-768 one (1,184 bytes, 1,580 in base64), while a C{keys:query} of
#: 100 users with 16 devices each stays under 10 MB (a session buffers at
#: most 16 MiB for its client).
MAX_KEY = 2048
#: Largest key id: JavaScript's largest exact integer.
MAX_KEY_ID = 2**53 - 1
#: The longest device id (client-chosen).
MAX_DEVICE_ID = validation.MAX_ID


@attrs.frozen
class KeyLimits:
    """
    The key directory's bounds.

    @ivar oneTimeKeysPerUpload: one-time keys in one C{keys:upload}.
    @ivar oneTimeKeysPerDevice: one-time keys stored per device.
    @ivar devicesPerUser: devices with keys per user (also the most a
        query or claim returns per user); a new device past it replaces
        the one updated longest ago.
    @ivar usersPerQuery: users in one C{keys:query}.
    @ivar lowWatermark: C{keys:low} once a device has fewer one-time keys.
    @ivar maxContacts: users told of one identity change at most.
    """

    oneTimeKeysPerUpload: int = 100
    oneTimeKeysPerDevice: int = 500
    devicesPerUser: int = 16
    usersPerQuery: int = 100
    lowWatermark: int = 10
    maxContacts: int = 10_000


def _invalid(message: str) -> IMError:
    return IMError(INVALID_PAYLOAD, message)


def keyId(value: Any, field: str) -> int:
    """
    A key id: an integer in 0..2**53-1.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_KEY_ID:
        raise _invalid(f"{field} must be an integer in 0..{MAX_KEY_ID}")
    return value


def publicKey(value: Any, field: str) -> str:
    """
    A key or signature: a non-empty string of at most L{MAX_KEY}
    characters (base64 or any text encoding the clients agree on).
    """
    return validation.text(value, field, MAX_KEY, 1)


def deviceId(value: Any, field: str = "deviceId") -> str:
    """
    A client-chosen device id.
    """
    return validation.text(value, field, MAX_DEVICE_ID, 1)


def upload(data: Any, userId: str, now: int, limits: KeyLimits) -> KeyUpload:
    """
    Validate C{keys:upload}.
    """
    data = validation.payloadObject(data, "keys:upload")
    spk = data.get("signedPreKey")
    if not isinstance(spk, dict):
        raise _invalid("signedPreKey must be an object {keyId, publicKey, signature}")
    raw = data.get("oneTimeKeys")
    if raw is None:
        raw = []
    if not isinstance(raw, list):
        raise _invalid("oneTimeKeys must be a list of {keyId, publicKey}")
    if len(raw) > limits.oneTimeKeysPerUpload:
        raise _invalid(f"oneTimeKeys: at most {limits.oneTimeKeysPerUpload} per keys:upload")
    oneTimeKeys = []
    for item in raw:
        if not isinstance(item, dict):
            raise _invalid("oneTimeKeys must be a list of {keyId, publicKey}")
        oneTimeKeys.append(
            OneTimeKey(keyId(item.get("keyId"), "oneTimeKeys[].keyId"), publicKey(item.get("publicKey"), "oneTimeKeys[].publicKey"))
        )
    replace = data.get("replace", False)
    if not isinstance(replace, bool):
        raise _invalid("replace must be a boolean")
    device = DeviceKeys(
        userId,
        deviceId(data.get("deviceId")),
        publicKey(data.get("identityKey"), "identityKey"),
        SignedPreKey(
            keyId(spk.get("keyId"), "signedPreKey.keyId"),
            publicKey(spk.get("publicKey"), "signedPreKey.publicKey"),
            publicKey(spk.get("signature"), "signedPreKey.signature"),
        ),
    )
    return KeyUpload(device, tuple(oneTimeKeys), replace, now)


def queriedUsers(data: Any, limits: KeyLimits) -> list[str]:
    """
    Validate C{keys:query}: its C{userIds}, each once, in order.
    """
    data = validation.payloadObject(data, "keys:query")
    raw = data.get("userIds")
    if not isinstance(raw, list) or not raw or len(raw) > limits.usersPerQuery:
        raise _invalid(f"userIds must be a list of 1..{limits.usersPerQuery} user ids")
    return list(dict.fromkeys(validation.userId(item, "userIds[]") for item in raw))


def claimed(data: Any, limits: KeyLimits) -> tuple[str, list[str] | None]:
    """
    Validate C{keys:claim}: C{(userId, deviceIds or None for all)}.
    """
    data = validation.payloadObject(data, "keys:claim")
    userId = validation.userId(data.get("userId"), "userId")
    raw = data.get("deviceIds")
    if raw is None:
        return userId, None
    if not isinstance(raw, list) or not raw or len(raw) > limits.devicesPerUser:
        raise _invalid(f"deviceIds must be a list of 1..{limits.devicesPerUser} device ids")
    return userId, list(dict.fromkeys(deviceId(item, "deviceIds[]") for item in raw))


class KeyHandlers:
    """
    C{keys:upload}, C{keys:query} and C{keys:claim}.
    """

    log = Logger()

    def __init__(self, store: IKeyStore, router: IRouter, clock: IReactorTime, limits: KeyLimits | None = None) -> None:
        """
        @param store: the key directory's storage.
        @param router: delivers C{keys:low} and C{keys:changed}.
        @param clock: for the time of an upload or a claim.
        """
        self.store = store
        self.router = router
        self.clock = clock
        self.limits = limits if limits is not None else KeyLimits()
        #: identity changes waiting to be announced, per user: device id ->
        #: the socket that uploaded it (not told); see L{_identityChanged}
        self._changed: dict[str, dict[str, str | None]] = {}
        #: one walk of the contacts at a time on this node
        self._walking = DeferredLock()

    def _internal(self, what: str) -> IMError:
        self.log.failure("key directory: {what}", what=what)
        return IMError(INTERNAL, f"the key directory could not {what}; try again")

    async def upload(self, caller: Caller, data: Any) -> dict[str, Any]:
        """
        C{keys:upload}: publish the caller's device keys. Ack
        C{{oneTimeKeyCount}}; a replaced identity key tells the caller's
        contacts (and the caller's other devices) C{keys:changed}.
        """
        limits = self.limits
        request = upload(data, caller.userId, int(self.clock.seconds() * 1000), limits)
        try:
            outcome = await self.store.uploadKeys(request, limits.devicesPerUser, limits.oneTimeKeysPerDevice)
        except IdentityKeyConflict:
            raise IMError(
                FORBIDDEN, "this device has another identity key; send replace: true to replace it"
            ) from None
        except TooManyOneTimeKeys as error:
            raise IMError(
                TOO_LARGE,
                f"a device stores at most {limits.oneTimeKeysPerDevice} one-time keys ({error.stored} stored)",
            ) from None
        except Exception:
            raise self._internal("store the keys") from None
        if outcome.evicted:
            self.log.info(
                "[密钥] {userId}: {count} devices updated longest ago dropped for {deviceId}",
                userId=caller.userId,
                count=len(outcome.evicted),
                deviceId=request.device.deviceId,
            )
        if outcome.identityChanged:
            self._identityChanged(caller, request.device.deviceId)
        return {"oneTimeKeyCount": outcome.oneTimeKeyCount}

    def _identityChanged(self, caller: Caller, device: str) -> None:
        """
        Announce a replaced identity key (L{_announce}), after the ack:
        finding the contacts walks the user's 1:1 messages, which on a
        large store takes a while. The walks go one at a time, so that
        identity changes (any user may make one) never take more of the
        store than one walk; a user's changes made while theirs waits are
        told with it.
        """
        waiting = self._changed.get(caller.userId)
        if waiting is not None:
            waiting[device] = caller.device
            return
        self._changed[caller.userId] = {device: caller.device}
        ensureDeferred(self._announce(caller.userId))

    async def _announce(self, userId: str) -> None:
        """
        C{keys:changed} to every contact of C{userId} and to the user's
        other devices (which encrypt for their own user's devices too),
        for each device of theirs whose identity key changed. A failure to
        find the contacts is logged: the keys are stored, and contacts see
        the new key at their next C{keys:query}.
        """
        await self._walking.acquire()
        try:
            changes = self._changed.pop(userId)
            contacts = await self.store.contacts(userId, self.limits.maxContacts)
        except Exception:
            self.log.failure("key directory: the contacts of {userId}", userId=userId)
            return
        finally:
            self._walking.release()
        for device, socket in changes.items():
            self.router.toUsers([*contacts, userId], "keys:changed", {"userId": userId, "deviceId": device}, socket)

    async def query(self, caller: Caller, data: Any) -> dict[str, Any]:
        """
        C{keys:query}: the published devices of each user asked for (an
        empty list for a user without any).
        """
        userIds = queriedUsers(data, self.limits)
        try:
            found = await self.store.deviceKeys(userIds, self.limits.devicesPerUser)
        except Exception:
            raise self._internal("read the keys") from None
        return {"devices": {userId: [device.toWire() for device in found.get(userId, [])] for userId in userIds}}

    async def claim(self, caller: Caller, data: Any) -> dict[str, Any]:
        """
        C{keys:claim}: for each device asked for (or all of the user's),
        its identity key, signed pre-key and one one-time key removed for
        good (none when it has none left: the claimer uses the signed
        pre-key alone). A device left with fewer than the low watermark
        makes its owner's devices get C{keys:low}.
        """
        userId, deviceIds = claimed(data, self.limits)
        try:
            claims = await self.store.claimKeys(
                userId, deviceIds, self.limits.devicesPerUser, int(self.clock.seconds() * 1000)
            )
        except Exception:
            raise self._internal("hand out keys") from None
        keys: dict[str, Any] = {}
        for claim in claims:
            device = claim.device
            entry: dict[str, Any] = {"identityKey": device.identityKey, "signedPreKey": device.signedPreKey.toWire()}
            if claim.oneTimeKey is not None:
                entry["oneTimeKey"] = claim.oneTimeKey.toWire()
            keys[device.deviceId] = entry
            if claim.remaining < self.limits.lowWatermark:
                self.router.toUsers((userId,), "keys:low", {"deviceId": device.deviceId, "count": claim.remaining})
        return {"keys": keys}
