# -*- test-case-name: tests.test_keys_storage -*-
"""
The key directory of end-to-end encryption (ENCRYPTION.md, "End to end"):
each device's public identity key and signed pre-key, and its one-time
pre-keys, as C{*_txn} functions run on the pool thread, and L{SQLKeyStore},
their methods on the SQL store.

The server never holds a private key: it stores what devices publish and
hands it to whoever asks. The one property that needs the database is that
a one-time key is handed out at most once: L{claim_txn} deletes it in the
transaction that returns it (C{DELETE ... RETURNING}), which on PostgreSQL
also skips a row another transaction holds (C{FOR UPDATE SKIP LOCKED}), so
two claimers, on one node or two, never get the same key; and it keeps the
key it handed out (C{claimed_one_time_keys}), so that an upload sending it
again, a client's retry of an upload whose ack was lost, does not store it
anew for a second claimer. Writes go through the store's group commit,
whose batches on PostgreSQL take the engine's write lock as well.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import attrs
from twisted.internet.defer import Deferred, ensureDeferred
from zope.interface import Interface

from .database import Transaction, placeholders


@attrs.frozen
class SignedPreKey:
    """
    A device's medium-term pre-key, signed with its identity key (the
    server does not check the signature: clients do).
    """

    keyId: int
    publicKey: str
    signature: str

    def toWire(self) -> dict[str, Any]:
        """
        The contract's C{signedPreKey} object.
        """
        return {"keyId": self.keyId, "publicKey": self.publicKey, "signature": self.signature}


@attrs.frozen
class OneTimeKey:
    """
    A one-time pre-key, handed out once.
    """

    keyId: int
    publicKey: str

    def toWire(self) -> dict[str, Any]:
        """
        The contract's C{oneTimeKey} object.
        """
        return {"keyId": self.keyId, "publicKey": self.publicKey}


@attrs.frozen
class DeviceKeys:
    """
    What the directory publishes of one device.
    """

    userId: str
    deviceId: str
    identityKey: str
    signedPreKey: SignedPreKey

    def toWire(self) -> dict[str, Any]:
        """
        One entry of C{keys:query}'s answer.
        """
        return {"deviceId": self.deviceId, "identityKey": self.identityKey, "signedPreKey": self.signedPreKey.toWire()}


@attrs.frozen
class KeyUpload:
    """
    A device publishing its keys (C{keys:upload}), validated.

    @ivar replace: a changed identity key is accepted (the device was
        reinstalled); without it, a changed one is refused.
    @ivar now: ms since the epoch.
    """

    device: DeviceKeys
    oneTimeKeys: tuple[OneTimeKey, ...]
    replace: bool
    now: int


@attrs.frozen
class Uploaded:
    """
    The outcome of L{IKeyStore.uploadKeys}.

    @ivar oneTimeKeyCount: the device's one-time keys now stored.
    @ivar identityChanged: the device was known with another identity key,
        now replaced (its old one-time keys are gone with it).
    @ivar evicted: the user's devices dropped (with their one-time keys) to
        make room for this new one, updated longest ago first.
    """

    oneTimeKeyCount: int
    identityChanged: bool
    evicted: tuple[str, ...] = ()


@attrs.frozen
class ClaimedKey:
    """
    What L{IKeyStore.claimKeys} handed out for one device.

    @ivar oneTimeKey: L{None} when the device had none left (the claimer
        falls back to the signed pre-key).
    @ivar remaining: the device's one-time keys left after this claim.
    """

    device: DeviceKeys
    oneTimeKey: OneTimeKey | None
    remaining: int


class IdentityKeyConflict(Exception):
    """
    An upload changes a known device's identity key without C{replace}.
    """


class TooManyOneTimeKeys(Exception):
    """
    An upload would leave a device with more one-time keys than allowed.

    @ivar stored: how many it holds now.
    """

    def __init__(self, stored: int) -> None:
        super().__init__(stored)
        self.stored = stored


class IKeyStore(Interface):
    """
    The key directory's storage.
    """

    def uploadKeys(upload: KeyUpload, maxDevices: int, maxOneTimeKeys: int) -> Deferred[Uploaded]:
        """
        Publish a device's identity key and signed pre-key and add its
        one-time keys (a key id it already has stored is kept as it was,
        and a key a claim already handed out is not stored again).

        A new device past the user's C{maxDevices} makes room: the devices
        updated longest ago are dropped (a reinstalled app usually comes
        back with a new device id, and the old one would otherwise stay for
        good).

        @raise IdentityKeyConflict: (errback) the identity key changed
            without C{replace}; nothing changed.
        @raise TooManyOneTimeKeys: (errback) more than C{maxOneTimeKeys}
            would be stored; nothing changed.
        """

    def deviceKeys(userIds: Sequence[str], maxDevices: int) -> Deferred[dict[str, list[DeviceKeys]]]:
        """
        The published devices of each of C{userIds} (at most C{maxDevices}
        each, ordered by device id); a user without any is absent.
        """

    def claimKeys(
        userId: str, deviceIds: Sequence[str] | None, maxDevices: int, now: int
    ) -> Deferred[list[ClaimedKey]]:
        """
        For each device of C{userId} (those of C{deviceIds} that exist, or
        all, at most C{maxDevices}), remove and return one one-time key,
        atomically: no key is ever returned twice, not even after an upload
        sent it again.

        @param now: ms since the epoch (the claimed keys kept are the
            newest).
        """

    def contacts(userId: str, limit: int) -> Deferred[list[str]]:
        """
        The users who share a conversation with C{userId}: a stored 1:1
        message either way, or a group both are members of (at most
        C{limit}, sorted).
        """


_DEVICE_COLUMNS = "user_id, device_id, identity_key, signed_prekey_id, signed_prekey, signed_prekey_signature"


def _device(row: Sequence[Any]) -> DeviceKeys:
    return DeviceKeys(row[0], row[1], row[2], SignedPreKey(int(row[3]), row[4], row[5]))


def _oneTimeCount_txn(txn: Transaction, userId: str, deviceId: str) -> int:
    txn.execute("SELECT COUNT(*) FROM one_time_keys WHERE user_id = ? AND device_id = ?", (userId, deviceId))
    row = txn.fetchone()
    assert row is not None
    return int(row[0])


def upload_txn(txn: Transaction, upload: KeyUpload, maxDevices: int, maxOneTimeKeys: int) -> Uploaded:
    """
    See L{IKeyStore.uploadKeys}. Raises before writing anything when it
    refuses (and runs in a savepoint of the group commit, which undoes a
    refusal's partial work anyway).
    """
    device = upload.device
    userId, deviceId = device.userId, device.deviceId
    txn.execute("SELECT identity_key FROM device_keys WHERE user_id = ? AND device_id = ?", (userId, deviceId))
    row = txn.fetchone()
    changed = False
    if row is not None and row[0] != device.identityKey:
        if not upload.replace:
            raise IdentityKeyConflict()
        changed = True
    # the one-time keys this upload adds: ids not stored yet, each once,
    # and not handed out already
    fresh: dict[int, OneTimeKey] = {}
    for key in upload.oneTimeKeys:
        fresh.setdefault(key.keyId, key)
    stored = 0
    if row is not None and not changed:
        stored = _oneTimeCount_txn(txn, userId, deviceId)
        if fresh:
            ids = list(fresh)
            txn.execute(
                f"SELECT key_id FROM one_time_keys WHERE user_id = ? AND device_id = ? AND key_id IN ({placeholders(len(ids))})",
                [userId, deviceId, *ids],
            )
            for (keyId,) in txn.fetchall():
                fresh.pop(int(keyId), None)
        if fresh:
            _dropClaimed_txn(txn, userId, deviceId, fresh)
    if stored + len(fresh) > maxOneTimeKeys:
        raise TooManyOneTimeKeys(stored)
    spk = device.signedPreKey
    evicted: tuple[str, ...] = ()
    if row is None:
        evicted = _makeRoom_txn(txn, userId, maxDevices)
        txn.execute(
            f"INSERT INTO device_keys ({_DEVICE_COLUMNS}, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (userId, deviceId, device.identityKey, spk.keyId, spk.publicKey, spk.signature, upload.now),
        )
    else:
        if changed:
            # a reinstalled device: its old one-time keys were made by
            # the identity it no longer has (and a new key may come back
            # under the id of one handed out before)
            txn.execute("DELETE FROM one_time_keys WHERE user_id = ? AND device_id = ?", (userId, deviceId))
            txn.execute("DELETE FROM claimed_one_time_keys WHERE user_id = ? AND device_id = ?", (userId, deviceId))
        else:
            _pruneClaimed_txn(txn, userId, deviceId, maxOneTimeKeys)
        txn.execute(
            "UPDATE device_keys SET identity_key = ?, signed_prekey_id = ?, signed_prekey = ?,"
            " signed_prekey_signature = ?, updated_at = ? WHERE user_id = ? AND device_id = ?",
            (device.identityKey, spk.keyId, spk.publicKey, spk.signature, upload.now, userId, deviceId),
        )
    if fresh:
        keys = list(fresh.values())
        txn.execute(
            "INSERT INTO one_time_keys (user_id, device_id, key_id, public_key) VALUES "
            + ", ".join(["(?, ?, ?, ?)"] * len(keys)),
            [value for key in keys for value in (userId, deviceId, key.keyId, key.publicKey)],
        )
    return Uploaded(stored + len(fresh), changed, evicted)


def _dropClaimed_txn(txn: Transaction, userId: str, deviceId: str, fresh: dict[int, OneTimeKey]) -> None:
    """
    Take out of C{fresh} the keys a claim already handed out (the same id
    and public key): an upload sent again, whose first sending was stored
    and claimed from before its ack was lost. A new key under the id of
    one handed out is a new key, and stays.
    """
    ids = list(fresh)
    txn.execute(
        "SELECT key_id, public_key FROM claimed_one_time_keys WHERE user_id = ? AND device_id = ?"
        f" AND key_id IN ({placeholders(len(ids))})",
        [userId, deviceId, *ids],
    )
    for keyId, public in txn.fetchall():
        key = fresh.get(int(keyId))
        if key is not None and key.publicKey == public:
            del fresh[key.keyId]


def _pruneClaimed_txn(txn: Transaction, userId: str, deviceId: str, keep: int) -> None:
    """
    Forget all but the C{keep} keys of the device claimed last (once the
    upload is checked against them all). Between an upload and the same
    upload sent again no more than the device stores (C{maxOneTimeKeys})
    can be claimed, so these are the ones a retry may bring back; the
    table holds at most C{2 * keep} per device, as claims only turn stored
    keys into claimed ones.
    """
    txn.execute(
        "DELETE FROM claimed_one_time_keys WHERE user_id = ? AND device_id = ? AND key_id NOT IN ("
        "SELECT key_id FROM claimed_one_time_keys WHERE user_id = ? AND device_id = ?"
        " ORDER BY claimed_at DESC, key_id DESC LIMIT ?)",
        (userId, deviceId, userId, deviceId, keep),
    )


def _makeRoom_txn(txn: Transaction, userId: str, maxDevices: int) -> tuple[str, ...]:
    """
    Drop the user's devices updated longest ago (and their one-time keys)
    so that one more fits in C{maxDevices}.

    @return: the device ids dropped.
    """
    txn.execute("SELECT device_id FROM device_keys WHERE user_id = ? ORDER BY updated_at, device_id", (userId,))
    devices = [row[0] for row in txn.fetchall()]
    evicted = tuple(devices[: max(0, len(devices) - maxDevices + 1)])
    for deviceId in evicted:
        txn.execute("DELETE FROM one_time_keys WHERE user_id = ? AND device_id = ?", (userId, deviceId))
        txn.execute("DELETE FROM claimed_one_time_keys WHERE user_id = ? AND device_id = ?", (userId, deviceId))
        txn.execute("DELETE FROM device_keys WHERE user_id = ? AND device_id = ?", (userId, deviceId))
    return evicted


def deviceKeys_txn(txn: Transaction, userIds: Sequence[str], maxDevices: int) -> dict[str, list[DeviceKeys]]:
    """
    See L{IKeyStore.deviceKeys}. (The handler bounds C{userIds}, below the
    engines' limit on parameters.)
    """
    found: dict[str, list[DeviceKeys]] = {}
    if not userIds:
        return found
    txn.execute(
        f"SELECT {_DEVICE_COLUMNS} FROM device_keys WHERE user_id IN ({placeholders(len(userIds))})"
        " ORDER BY user_id, device_id",
        list(userIds),
    )
    for row in txn.fetchall():
        devices = found.setdefault(row[0], [])
        if len(devices) < maxDevices:
            devices.append(_device(row))
    return found


def _takeOneTimeKeySQL(engine: str) -> str:
    """
    The statement that removes and returns one one-time key of a device:
    the lowest key id, in one statement. On PostgreSQL a row another
    transaction has locked (claimed, not yet committed) is skipped rather
    than waited for and handed out again.
    """
    lock = " FOR UPDATE SKIP LOCKED" if engine == "postgres" else ""
    return (
        "DELETE FROM one_time_keys WHERE user_id = ? AND device_id = ? AND key_id = ("
        "SELECT key_id FROM one_time_keys WHERE user_id = ? AND device_id = ?"
        f" ORDER BY key_id LIMIT 1{lock}) RETURNING key_id, public_key"
    )


#: Keeps a claimed key (L{_dropClaimed_txn}); a key id claimed again (a
#: new key under an old id) keeps the latest.
_KEEP_CLAIMED = (
    "INSERT INTO claimed_one_time_keys (user_id, device_id, key_id, public_key, claimed_at) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (user_id, device_id, key_id) DO UPDATE SET public_key = excluded.public_key,"
    " claimed_at = excluded.claimed_at"
)


def claim_txn(
    txn: Transaction, userId: str, deviceIds: Sequence[str] | None, maxDevices: int, now: int
) -> list[ClaimedKey]:
    """
    See L{IKeyStore.claimKeys}.
    """
    if deviceIds is None:
        txn.execute(
            f"SELECT {_DEVICE_COLUMNS} FROM device_keys WHERE user_id = ? ORDER BY device_id LIMIT ?",
            (userId, maxDevices),
        )
    elif not deviceIds:
        return []
    else:
        txn.execute(
            f"SELECT {_DEVICE_COLUMNS} FROM device_keys WHERE user_id = ?"
            f" AND device_id IN ({placeholders(len(deviceIds))}) ORDER BY device_id LIMIT ?",
            [userId, *deviceIds, maxDevices],
        )
    devices = [_device(row) for row in txn.fetchall()]
    take = _takeOneTimeKeySQL(txn.engine.name)
    claimed = []
    for device in devices:
        txn.execute(take, (userId, device.deviceId, userId, device.deviceId))
        row = txn.fetchone()
        key = None if row is None else OneTimeKey(int(row[0]), row[1])
        if key is not None:
            txn.execute(_KEEP_CLAIMED, (userId, device.deviceId, key.keyId, key.publicKey, now))
        claimed.append(ClaimedKey(device, key, _oneTimeCount_txn(txn, userId, device.deviceId)))
    return claimed


#: Messages (by seq) one read of L{directContacts_txn} looks at: a few ms
#: of SQLite's one connection, which every write and read waits for.
CONTACTS_CHUNK = 10_000


def groupContacts_txn(txn: Transaction, userId: str, limit: int) -> tuple[list[str], int]:
    """
    The members of the user's groups (at most C{limit}), and the highest
    message seq: where L{directContacts_txn} stops.
    """
    txn.execute(
        "SELECT DISTINCT other.user_id FROM group_members mine"
        " JOIN group_members other ON other.group_id = mine.group_id"
        " WHERE mine.user_id = ? AND mine.left_at IS NULL AND other.left_at IS NULL"
        " AND other.user_id <> ? LIMIT ?",
        (userId, userId, limit),
    )
    members = [row[0] for row in txn.fetchall()]
    txn.execute("SELECT COALESCE(MAX(seq), 0) FROM messages")
    row = txn.fetchone()
    return members, 0 if row is None else int(row[0])


def directContacts_txn(txn: Transaction, userId: str, after: int, upTo: int) -> set[str]:
    """
    The users the user exchanged a 1:1 message with, either way, among the
    messages of seq C{after < seq <= upTo}: a range of the primary key.
    No index has a message's recipient (schema 012 dropped the last: it
    cost every insert), so the received side is a walk of the table. As
    one statement SQLite walked it through the sender index, a random read
    per message (seconds per million messages, while every write waited);
    by seq it reads in order, in ranges of L{CONTACTS_CHUNK} with other
    work between them.
    """
    txn.execute(
        "SELECT DISTINCT from_id, to_id FROM messages WHERE seq > ? AND seq <= ? AND to_id <> ''"
        " AND (from_id = ? OR to_id = ?)",
        (after, upTo, userId, userId),
    )
    found = {toId if fromId == userId else fromId for fromId, toId in txn.fetchall()}
    found.discard(userId)
    return found


class SQLKeyStore:
    """
    L{IKeyStore} on the SQL store: mixed into
    L{crm_im.storage.store.SQLMessageStore}, which provides its writes
    (C{_write}, the group commit) and its reads (C{_read}).
    """

    _write: Callable[..., Deferred[Any]]
    _read: Callable[..., Deferred[Any]]

    def uploadKeys(self, upload: KeyUpload, maxDevices: int, maxOneTimeKeys: int) -> Deferred[Uploaded]:
        """
        See L{IKeyStore.uploadKeys}.
        """
        return self._write("uploadKeys", lambda txn: upload_txn(txn, upload, maxDevices, maxOneTimeKeys))

    def deviceKeys(self, userIds: Sequence[str], maxDevices: int) -> Deferred[dict[str, list[DeviceKeys]]]:
        """
        See L{IKeyStore.deviceKeys}.
        """
        ids = list(userIds)
        return self._read("deviceKeys", lambda txn: deviceKeys_txn(txn, ids, maxDevices))

    def claimKeys(
        self, userId: str, deviceIds: Sequence[str] | None, maxDevices: int, now: int
    ) -> Deferred[list[ClaimedKey]]:
        """
        See L{IKeyStore.claimKeys}: a write, so that it runs in the group
        commit's transaction (and, on PostgreSQL, under its write lock).
        """
        ids = None if deviceIds is None else list(deviceIds)
        return self._write("claimKeys", lambda txn: claim_txn(txn, userId, ids, maxDevices, now))

    #: see L{CONTACTS_CHUNK}
    contactsChunk = CONTACTS_CHUNK

    def contacts(self, userId: str, limit: int) -> Deferred[list[str]]:
        """
        See L{IKeyStore.contacts}: the groups in one read, the 1:1
        messages in reads of L{contactsChunk} seqs each
        (L{directContacts_txn}), until C{limit} users are found.
        """
        return ensureDeferred(self._contacts(userId, limit))

    async def _contacts(self, userId: str, limit: int) -> list[str]:
        members, last = await self._read("contacts", lambda txn: groupContacts_txn(txn, userId, limit))
        found = set(members)
        chunk = self.contactsChunk
        after = 0
        while after < last and len(found) < limit:
            upTo = min(after + chunk, last)
            found |= await self._read(
                "contacts", lambda txn, after=after, upTo=upTo: directContacts_txn(txn, userId, after, upTo)
            )
            after = upTo
        return sorted(found)[:limit]
