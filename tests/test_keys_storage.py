"""
Tests for L{IKeyStore} (the end-to-end key directory) and for how the
store keeps C{type: 'encrypted'} messages, run against the memory fake,
SQLite in a temporary file and PostgreSQL (one mixin of semantics), plus
claims from two stores on one PostgreSQL database at once.
"""

from __future__ import annotations

import itertools
from typing import Any

from twisted.internet.defer import gatherResults
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from crm_im.storage import MemoryMessageStore
from crm_im.storage.interface import GroupChange, GroupRecord, MemberRecord, NewMessage, directConversation
from crm_im.storage.keys import (
    DeviceKeys,
    IdentityKeyConflict,
    IKeyStore,
    KeyUpload,
    OneTimeKey,
    SignedPreKey,
    TooManyOneTimeKeys,
)
from crm_im.storage.store import SQLMessageStore

from tests.support.stores import PostgresStores, SQLiteStores

_ids = itertools.count(1)


def device(userId: str, deviceId: str, identity: str = "IK") -> DeviceKeys:
    """
    A device of C{userId} with identity key C{identity}.
    """
    return DeviceKeys(userId, deviceId, identity, SignedPreKey(1, f"SPK-{deviceId}", f"SIG-{deviceId}"))


def otks(first: int, count: int) -> tuple[OneTimeKey, ...]:
    """
    C{count} one-time keys with ids from C{first}.
    """
    return tuple(OneTimeKey(n, f"OTK{n}") for n in range(first, first + count))


def upload(d: DeviceKeys, keys: tuple[OneTimeKey, ...] = (), replace: bool = False) -> KeyUpload:
    """
    An upload of C{d} with C{keys}.
    """
    return KeyUpload(d, keys, replace, 1000)


def encrypted(fromId: str, toId: str | None, ciphertext: Any, groupId: str | None = None) -> NewMessage:
    """
    A C{type: 'encrypted'} message.
    """
    return NewMessage(
        fromId=fromId,
        fromName=fromId.title(),
        toId=toId,
        id=f"e{next(_ids)}",
        topic=None,
        type="encrypted",
        content="",
        fileUrl=None,
        fileName=None,
        clientTimestamp=None,
        serverTimestamp=1000,
        groupId=groupId,
        ciphertext=ciphertext,
        algorithm="x25519-hkdf-aes256gcm",
    )


class KeyStoreTestsMixin:
    """
    L{IKeyStore} semantics, for every implementation.
    """

    store: Any
    assertEqual: Any
    assertIsNone: Any
    assertTrue: Any
    assertFailure: Any
    addCleanup: Any

    def makeStore(self) -> Any:
        """
        A new, unopened store.
        """
        raise NotImplementedError()

    def setUp(self) -> Any:
        """
        Open a fresh store; close it after the test.
        """
        self.store = self.makeStore()
        self.addCleanup(self.store.close)
        return self.store.open()

    def test_interface(self) -> None:
        """
        The store provides L{IKeyStore}.
        """
        self.assertTrue(verifyObject(IKeyStore, self.store))

    async def test_uploadQuery(self) -> None:
        """
        Uploaded devices are returned per user, ordered by device id, at
        most C{maxDevices} each; a user without keys is absent; the count
        of one-time keys is returned; a key id already stored is kept as
        it was, and ids repeated in one upload count once.
        """
        outcome = await self.store.uploadKeys(upload(device("alice", "phone"), otks(1, 3)), 8, 500)
        self.assertEqual((outcome.oneTimeKeyCount, outcome.identityChanged), (3, False))
        again = (OneTimeKey(3, "OTHER"), OneTimeKey(4, "OTK4"), OneTimeKey(4, "OTK4-dup"))
        outcome = await self.store.uploadKeys(upload(device("alice", "pc"), otks(1, 1)), 8, 500)
        outcome = await self.store.uploadKeys(upload(device("alice", "phone"), again), 8, 500)
        self.assertEqual(outcome.oneTimeKeyCount, 4)
        found = await self.store.deviceKeys(["alice", "bob"], 8)
        self.assertEqual(found, {"alice": [device("alice", "pc"), device("alice", "phone")]})
        self.assertEqual(await self.store.deviceKeys(["alice"], 1), {"alice": [device("alice", "pc")]})
        claims = await self.store.claimKeys("alice", ["phone"], 8, 5000)
        self.assertEqual([c.oneTimeKey for c in claims], [OneTimeKey(1, "OTK1")])
        claims = await self.store.claimKeys("alice", ["phone"], 8, 5000)
        claims = await self.store.claimKeys("alice", ["phone"], 8, 5000)
        self.assertEqual([(c.oneTimeKey, c.remaining) for c in claims], [(OneTimeKey(3, "OTK3"), 1)])
        claims = await self.store.claimKeys("alice", ["phone"], 8, 5000)
        self.assertEqual([(c.oneTimeKey, c.remaining) for c in claims], [(OneTimeKey(4, "OTK4"), 0)])

    async def test_signedPreKeyRotates(self) -> None:
        """
        A new signed pre-key under the same identity key needs no
        C{replace}.
        """
        await self.store.uploadKeys(upload(device("alice", "phone")), 8, 500)
        rotated = DeviceKeys("alice", "phone", "IK", SignedPreKey(2, "SPK2", "SIG2"))
        outcome = await self.store.uploadKeys(upload(rotated), 8, 500)
        self.assertEqual(outcome.identityChanged, False)
        self.assertEqual(await self.store.deviceKeys(["alice"], 8), {"alice": [rotated]})

    async def test_identityConflict(self) -> None:
        """
        A changed identity key without C{replace} is refused and changes
        nothing; with it, the device's old one-time keys go and the new
        ones are stored.
        """
        await self.store.uploadKeys(upload(device("alice", "phone"), otks(1, 5)), 8, 500)
        await self.assertFailure(
            self.store.uploadKeys(upload(device("alice", "phone", "IK2"), otks(10, 1)), 8, 500), IdentityKeyConflict
        )
        self.assertEqual(await self.store.deviceKeys(["alice"], 8), {"alice": [device("alice", "phone")]})
        outcome = await self.store.uploadKeys(upload(device("alice", "phone", "IK2"), otks(10, 2), replace=True), 8, 500)
        self.assertEqual((outcome.oneTimeKeyCount, outcome.identityChanged), (2, True))
        claims = await self.store.claimKeys("alice", None, 8, 5000)
        self.assertEqual(
            [(c.device.identityKey, c.oneTimeKey, c.remaining) for c in claims], [("IK2", OneTimeKey(10, "OTK10"), 1)]
        )

    async def test_bounds(self) -> None:
        """
        A new device past the user's limit replaces the one updated
        longest ago (with its one-time keys); an upload that would store
        more one-time keys than the limit is refused whole.
        """
        await self.store.uploadKeys(KeyUpload(device("alice", "old"), otks(1, 3), False, 100), 2, 5)
        await self.store.uploadKeys(upload(device("alice", "a"), otks(1, 4)), 2, 5)
        outcome = await self.store.uploadKeys(KeyUpload(device("alice", "old"), (), False, 900), 2, 5)
        self.assertEqual((outcome.evicted, outcome.oneTimeKeyCount), ((), 3))
        outcome = await self.store.uploadKeys(upload(device("alice", "b")), 2, 5)
        self.assertEqual(outcome.evicted, ("old",))
        found = await self.store.deviceKeys(["alice"], 8)
        self.assertEqual([d.deviceId for d in found["alice"]], ["a", "b"])
        self.assertEqual(await self.store.claimKeys("alice", ["old"], 8, 5000), [])
        again = await self.store.uploadKeys(upload(device("alice", "old")), 2, 5)
        self.assertEqual((again.evicted, again.oneTimeKeyCount), (("a",), 0))
        await self.store.uploadKeys(upload(device("alice", "a"), otks(1, 4)), 3, 5)
        failure = await self.assertFailure(
            self.store.uploadKeys(upload(device("alice", "a"), otks(5, 2)), 2, 5), TooManyOneTimeKeys
        )
        self.assertEqual(failure.stored, 4)
        outcome = await self.store.uploadKeys(upload(device("alice", "a"), otks(5, 1)), 3, 5)
        self.assertEqual(outcome.oneTimeKeyCount, 5)

    async def test_claimFallback(self) -> None:
        """
        Claiming without device ids takes one key of every device; a
        device without keys left gives its signed pre-key alone; unknown
        devices are left out.
        """
        await self.store.uploadKeys(upload(device("bob", "pc"), otks(7, 1)), 8, 500)
        await self.store.uploadKeys(upload(device("bob", "phone"), otks(1, 2)), 8, 500)
        claims = await self.store.claimKeys("bob", None, 8, 5000)
        self.assertEqual(
            [(c.device.deviceId, c.oneTimeKey, c.remaining) for c in claims],
            [("pc", OneTimeKey(7, "OTK7"), 0), ("phone", OneTimeKey(1, "OTK1"), 1)],
        )
        claims = await self.store.claimKeys("bob", ["pc", "tablet"], 8, 5000)
        self.assertEqual([(c.device, c.oneTimeKey, c.remaining) for c in claims], [(device("bob", "pc"), None, 0)])
        self.assertEqual(await self.store.claimKeys("carol", None, 8, 5000), [])

    async def test_claimsNeverRepeat(self) -> None:
        """
        Claims issued at once each get a different key, and once they are
        gone, none.
        """
        await self.store.uploadKeys(upload(device("bob", "pc"), otks(1, 20)), 8, 500)
        results = await gatherResults([self.store.claimKeys("bob", ["pc"], 8, 5000) for _ in range(25)])
        keys = [claims[0].oneTimeKey for claims in results]
        given = [k.keyId for k in keys if k is not None]
        self.assertEqual(sorted(given), list(range(1, 21)))
        self.assertEqual(keys.count(None), 5)

    async def test_uploadSentAgain(self) -> None:
        """
        An upload sent again (its ack was lost) after one of its keys was
        claimed does not store that key anew: it is never handed out a
        second time. A new key under the id of one handed out is stored;
        so is any key after the identity key was replaced.
        """
        keys = upload(device("bob", "pc"), otks(1, 3))
        await self.store.uploadKeys(keys, 8, 500)
        (first,) = await self.store.claimKeys("bob", ["pc"], 8, 5000)
        self.assertEqual(first.oneTimeKey, OneTimeKey(1, "OTK1"))
        outcome = await self.store.uploadKeys(keys, 8, 500)
        self.assertEqual(outcome.oneTimeKeyCount, 2)
        given = [(await self.store.claimKeys("bob", ["pc"], 8, 5000 + n))[0].oneTimeKey for n in range(3)]
        self.assertEqual(given, [OneTimeKey(2, "OTK2"), OneTimeKey(3, "OTK3"), None])
        outcome = await self.store.uploadKeys(upload(device("bob", "pc"), (*otks(1, 3), OneTimeKey(2, "NEW2"))), 8, 500)
        self.assertEqual(outcome.oneTimeKeyCount, 0)
        outcome = await self.store.uploadKeys(upload(device("bob", "pc"), (OneTimeKey(2, "NEW2"),)), 8, 500)
        self.assertEqual(outcome.oneTimeKeyCount, 1)
        outcome = await self.store.uploadKeys(upload(device("bob", "pc", "IK2"), otks(1, 3), replace=True), 8, 500)
        self.assertEqual(outcome.oneTimeKeyCount, 3)

    async def test_claimedKeptBounded(self) -> None:
        """
        The keys handed out kept for that check are, once an upload is
        over, the device's C{maxOneTimeKeys} claimed last: as many as can be
        claimed between an upload and the same upload sent again.
        """
        await self.store.uploadKeys(upload(device("bob", "pc"), otks(1, 2)), 8, 2)
        for n in range(2):
            await self.store.claimKeys("bob", ["pc"], 8, 5000 + n)
        await self.store.uploadKeys(upload(device("bob", "pc"), otks(3, 2)), 8, 2)
        for n in range(2):
            await self.store.claimKeys("bob", ["pc"], 8, 6000 + n)
        await self.store.uploadKeys(upload(device("bob", "pc")), 8, 2)
        # keys 1 and 2 were claimed before the last two: forgotten now
        outcome = await self.store.uploadKeys(upload(device("bob", "pc"), otks(1, 4)), 8, 2)
        self.assertEqual(outcome.oneTimeKeyCount, 2)
        given = [(await self.store.claimKeys("bob", ["pc"], 8, 7000 + n))[0].oneTimeKey for n in range(3)]
        self.assertEqual(given, [OneTimeKey(1, "OTK1"), OneTimeKey(2, "OTK2"), None])

    async def test_contacts(self) -> None:
        """
        A user's contacts: whom they sent a 1:1 message, who sent them
        one, and the members of their groups; not former members, not
        themselves, not strangers.
        """
        await self.store.storeMessage(encrypted("alice", "bob", "c1"))
        await self.store.storeMessage(encrypted("carol", "alice", "c2"))
        await self.store.storeMessage(encrypted("alice", "alice", "note"))
        await self.store.storeMessage(encrypted("eve", "mallory", "c3"))
        members = [MemberRecord("dave", "owner", 1, 1), MemberRecord("alice", "member", 1, 2),
                   MemberRecord("frank", "member", 1, 3)]
        await self.store.createGroup(
            GroupRecord("g1", "Team", None, "dave", "dave", None, 1),
            members,
            NewMessage("dave", "Dave", None, "sys1", None, "system", "", None, None, None, 1, groupId="g1",
                       system={"action": "create", "by": "dave"}),
        )
        await self.store.changeGroup(
            GroupChange("g1", 2, remove=("frank",),
                        system=NewMessage("dave", "Dave", None, "sys2", None, "system", "", None, None, None, 2,
                                          groupId="g1", system={"action": "remove", "by": "dave"}))
        )
        self.assertEqual(await self.store.contacts("alice", 100), ["bob", "carol", "dave"])
        self.assertEqual(await self.store.contacts("alice", 2), ["bob", "carol"])
        self.assertEqual(await self.store.contacts("mallory", 100), ["eve"])

    async def test_encryptedMessage(self) -> None:
        """
        An encrypted message's ciphertext (string or object) and algorithm
        come back as stored, from the store, a resend, the offline queue
        and history; a recall erases the ciphertext.
        """
        perDevice = {"phone": "AAEC\u00e9\u0000", "pc": "BBB"}
        stored = (await self.store.storeMessage(encrypted("alice", "bob", perDevice))).message
        self.assertEqual((stored.type, stored.content, stored.ciphertext), ("encrypted", "", perDevice))
        again = await self.store.storeMessage(encrypted("alice", "bob", "x"))
        first = encrypted("alice", "bob", "opaque==")
        await self.store.storeMessage(first)
        resent = await self.store.storeMessage(first)
        self.assertEqual((resent.created, resent.message.ciphertext), (False, "opaque=="))
        pending = await self.store.pendingFor("bob", 10)
        self.assertEqual([m.ciphertext for m in pending], [perDevice, "x", "opaque=="])
        self.assertEqual(list(pending[0].ciphertext), ["phone", "pc"])
        page = await self.store.history("bob", "alice", None, 10, None, None)
        self.assertEqual([(m.ciphertext, m.algorithm) for m in page.messages][0], (perDevice, "x25519-hkdf-aes256gcm"))
        recalled = await self.store.recall(again.message.seq, "alice", 2000)
        self.assertEqual((recalled.ciphertext, recalled.algorithm, recalled.recalledBy), (None, "x25519-hkdf-aes256gcm", "alice"))
        wire = recalled.toWire()
        self.assertEqual((wire.get("ciphertext"), "content" in wire, wire["recalled"]), (None, False, True))
        self.assertEqual(page.messages[0].conversation, directConversation("alice", "bob"))


class MemoryKeyStoreTests(KeyStoreTestsMixin, TestCase):
    """
    The key store tests against L{MemoryMessageStore}.
    """

    def makeStore(self) -> MemoryMessageStore:
        """
        A memory store.
        """
        return MemoryMessageStore()


class SQLKeyStoreTestsMixin(KeyStoreTestsMixin):
    """
    The key store tests against the SQL store on one engine, and how the
    rows look.
    """

    newStore: Any
    rows: Any

    def makeStore(self) -> SQLMessageStore:
        """
        A store on a database of the test's own.
        """
        store: SQLMessageStore = self.newStore()
        return store

    def recordStatements(self) -> list[tuple[str, tuple[Any, ...]]]:
        """
        Record every statement the store's reads execute, with its
        arguments.
        """
        statements: list[tuple[str, tuple[Any, ...]]] = []
        read = self.store._read

        class Recording:
            def __init__(self, txn: Any) -> None:
                self.txn = txn

            def execute(self, sql: str, args: Any = ()) -> None:
                statements.append((sql, tuple(args)))
                self.txn.execute(sql, args)

            def __getattr__(self, name: str) -> Any:
                return getattr(self.txn, name)

        self.store._read = lambda desc, func: read(desc, lambda txn: func(Recording(txn)))
        return statements

    async def test_contactsInChunks(self) -> None:
        """
        The 1:1 contacts are found in reads of at most C{contactsChunk}
        messages each, by seq, so that a walk of a large store never holds
        it for long; what is found is the same.
        """
        for n in range(5):
            await self.store.storeMessage(encrypted(f"u{n}", "alice", "c"))
        await self.store.storeMessage(encrypted("alice", "zed", "c"))
        await self.store.storeMessage(encrypted("eve", "mallory", "c"))
        self.store.contactsChunk = 2
        statements = self.recordStatements()
        self.assertEqual(await self.store.contacts("alice", 100), ["u0", "u1", "u2", "u3", "u4", "zed"])
        ranges = [args[:2] for sql, args in statements if "seq > ?" in sql]
        self.assertEqual(ranges, [(0, 2), (2, 4), (4, 6), (6, 7)])
        self.assertEqual(await self.store.contacts("alice", 3), ["u0", "u1", "u2"])

    async def test_rows(self) -> None:
        """
        An encrypted message's row has an empty content and the client's
        ciphertext as JSON text beside its algorithm; a claimed key's row
        is gone.
        """
        msg = encrypted("alice", "bob", {"d1": "CIPHER"})
        await self.store.storeMessage(msg)
        self.assertEqual(
            self.rows("SELECT content, ciphertext, algorithm FROM messages WHERE message_id = ?", (msg.id,)),
            [("", '{"d1":"CIPHER"}', "x25519-hkdf-aes256gcm")],
        )
        await self.store.uploadKeys(upload(device("bob", "pc"), otks(1, 2)), 8, 500)
        await self.store.claimKeys("bob", None, 8, 5000)
        self.assertEqual(self.rows("SELECT key_id, public_key FROM one_time_keys"), [(2, "OTK2")])


class SQLiteKeyStoreTests(SQLiteStores, SQLKeyStoreTestsMixin, TestCase):
    """
    The key store tests against L{SQLiteMessageStore} in a temporary file.
    """

    async def test_contactsPlan(self) -> None:
        """
        No statement of the contacts' walk scans the messages: each reads a
        range of their primary key (or an index). As one statement the
        received side went through the sender index, a random read per
        message of the store, while every write waited.
        """
        await self.store.storeMessage(encrypted("bob", "alice", "c"))
        statements = self.recordStatements()
        self.assertEqual(await self.store.contacts("alice", 100), ["bob"])
        self.assertTrue(statements)
        for sql, args in statements:
            plan = " ".join(str(row[-1]) for row in self.rows("EXPLAIN QUERY PLAN " + sql, args))
            self.assertNotIn("SCAN messages", plan, sql)


class PostgresKeyStoreTests(PostgresStores, SQLKeyStoreTestsMixin, TestCase):
    """
    The key store tests against L{PostgresMessageStore} in a schema of the
    test's own.
    """

    async def test_twoNodesClaim(self) -> None:
        """
        Two stores on one database (two nodes, two connection pools) claim
        the same device's keys at once: every key is handed out once, and
        once all are gone both get none.
        """
        other = self.newStore()
        await other.open()
        self.addCleanup(other.close)
        await self.store.uploadKeys(upload(device("bob", "pc"), otks(1, 60)), 8, 500)
        claims = []
        for _ in range(35):
            claims.append(self.store.claimKeys("bob", ["pc"], 8, 5000))
            claims.append(other.claimKeys("bob", ["pc"], 8, 5000))
        results = await gatherResults(claims)
        keys = [result[0].oneTimeKey for result in results]
        given = [k.keyId for k in keys if k is not None]
        self.assertEqual(sorted(given), list(range(1, 61)))
        self.assertEqual(keys.count(None), 10)

    def test_skipLocked(self) -> None:
        """
        The claiming statement itself, on two connections with no other
        lock: while one transaction has taken a key and not committed,
        the other takes the next one instead of the same (or of waiting
        and getting none); after both commit, both are gone.
        """
        import psycopg

        from crm_im.storage.database import Transaction
        from crm_im.storage.engines import PostgresEngine
        from crm_im.storage.keys import claim_txn, upload_txn

        engine = PostgresEngine(self.url)
        with psycopg.connect(self.url) as first, psycopg.connect(self.url) as second:
            setup = Transaction(first.cursor(), engine)
            upload_txn(setup, upload(device("bob", "pc"), otks(1, 3)), 8, 500)
            first.commit()
            # without SKIP LOCKED the second claim would wait for the
            # first transaction, which this thread never gets to commit
            second.execute("SET lock_timeout = '5s'")
            one = claim_txn(Transaction(first.cursor(), engine), "bob", ["pc"], 8, 5000)
            two = claim_txn(Transaction(second.cursor(), engine), "bob", ["pc"], 8, 5000)
            first.commit()
            second.commit()
        self.assertEqual([c.oneTimeKey for c in one + two], [OneTimeKey(1, "OTK1"), OneTimeKey(2, "OTK2")])
        self.assertEqual(self.rows("SELECT key_id FROM one_time_keys"), [(3,)])
