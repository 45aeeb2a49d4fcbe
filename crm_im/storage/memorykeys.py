# -*- test-case-name: tests.test_keys_storage -*-
"""
L{MemoryKeyStore}: the key directory in dicts, the fake behind
L{crm_im.storage.memory.MemoryMessageStore}'s L{IKeyStore} methods. Same
semantics as L{crm_im.storage.keys}; every L{Deferred} has already fired.
"""

from __future__ import annotations

from typing import Any, Sequence

from twisted.internet.defer import Deferred, fail, succeed

from .interface import StoredMessage
from .keys import (
    ClaimedKey,
    DeviceKeys,
    IdentityKeyConflict,
    KeyUpload,
    OneTimeKey,
    TooManyOneTimeKeys,
    Uploaded,
)


class MemoryKeyStore:
    """
    Devices and one-time keys in dicts.
    """

    messages: dict[int, StoredMessage]

    def __init__(self) -> None:
        #: C{(userId, deviceId) -> DeviceKeys}
        self.devices: dict[tuple[str, str], DeviceKeys] = {}
        #: C{(userId, deviceId) -> {keyId: OneTimeKey}}
        self.oneTimeKeys: dict[tuple[str, str], dict[int, OneTimeKey]] = {}
        #: C{(userId, deviceId) -> ms of its last upload}
        self.updatedAt: dict[tuple[str, str], int] = {}
        #: C{(userId, deviceId) -> {keyId: (OneTimeKey, ms claimed)}}: the
        #: keys handed out, which an upload does not store again
        self.claimed: dict[tuple[str, str], dict[int, tuple[OneTimeKey, int]]] = {}

    def uploadKeys(self, upload: KeyUpload, maxDevices: int, maxOneTimeKeys: int) -> Deferred[Uploaded]:
        """
        See L{IKeyStore.uploadKeys}.
        """
        device = upload.device
        where = (device.userId, device.deviceId)
        known = self.devices.get(where)
        changed = False
        if known is not None and known.identityKey != device.identityKey:
            if not upload.replace:
                return fail(IdentityKeyConflict())
            changed = True
        stored = {} if changed else dict(self.oneTimeKeys.get(where, {}))
        claimed = {} if changed else self.claimed.get(where, {})
        before = len(stored)
        fresh: dict[int, OneTimeKey] = {}
        for key in upload.oneTimeKeys:
            fresh.setdefault(key.keyId, key)
        for keyId, key in fresh.items():
            # a key id stored is kept; a key handed out is not stored again
            if keyId not in stored and claimed.get(keyId, (None, 0))[0] != key:
                stored[keyId] = key
        if len(stored) > maxOneTimeKeys:
            return fail(TooManyOneTimeKeys(before))
        evicted: tuple[str, ...] = ()
        if known is None:
            # make room: the devices updated longest ago go
            mine = sorted((self.updatedAt[key], key[1]) for key in self.devices if key[0] == device.userId)
            evicted = tuple(deviceId for _, deviceId in mine[: max(0, len(mine) - maxDevices + 1)])
            for deviceId in evicted:
                for table in (self.devices, self.oneTimeKeys, self.updatedAt, self.claimed):
                    table.pop((device.userId, deviceId), None)
        self.devices[where] = device
        self.oneTimeKeys[where] = stored
        # the claimed keys kept: the newest maxOneTimeKeys
        newest = sorted(claimed.items(), key=lambda item: (item[1][1], item[0]), reverse=True)[:maxOneTimeKeys]
        self.claimed[where] = dict(newest)
        self.updatedAt[where] = upload.now
        return succeed(Uploaded(len(stored), changed, evicted))

    def deviceKeys(self, userIds: Sequence[str], maxDevices: int) -> Deferred[dict[str, list[DeviceKeys]]]:
        """
        See L{IKeyStore.deviceKeys}.
        """
        wanted = set(userIds)
        found: dict[str, list[DeviceKeys]] = {}
        for (userId, _), device in sorted(self.devices.items()):
            if userId in wanted:
                devices = found.setdefault(userId, [])
                if len(devices) < maxDevices:
                    devices.append(device)
        return succeed(found)

    def claimKeys(
        self, userId: str, deviceIds: Sequence[str] | None, maxDevices: int, now: int
    ) -> Deferred[list[ClaimedKey]]:
        """
        See L{IKeyStore.claimKeys}.
        """
        wanted = None if deviceIds is None else set(deviceIds)
        devices = [
            device
            for (user, deviceId), device in sorted(self.devices.items())
            if user == userId and (wanted is None or deviceId in wanted)
        ][:maxDevices]
        claimed = []
        for device in devices:
            keys = self.oneTimeKeys.setdefault((userId, device.deviceId), {})
            key = keys.pop(min(keys)) if keys else None
            if key is not None:
                self.claimed.setdefault((userId, device.deviceId), {})[key.keyId] = (key, now)
            claimed.append(ClaimedKey(device, key, len(keys)))
        return succeed(claimed)

    def contacts(self, userId: str, limit: int) -> Deferred[list[str]]:
        """
        See L{IKeyStore.contacts}.
        """
        found: set[str] = set()
        for message in self.messages.values():
            if message.toId is None:
                continue
            if message.fromId == userId:
                found.add(message.toId)
            elif message.toId == userId:
                found.add(message.fromId)
        groups: dict[str, Any] = getattr(self, "_groups", {})
        for kept in groups.values():
            if userId in kept.members and not kept.dissolved:
                found.update(kept.members)
        found.discard(userId)
        return succeed(sorted(found)[:limit])
