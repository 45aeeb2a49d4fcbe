"""
Tests for L{IRecoveryStore} (connection state recovery records and the
missed-message query, schema 011) against the memory fake, SQLite in a
temporary file and PostgreSQL in a schema of the test's own: one mixin of
semantics.
"""

from __future__ import annotations

import itertools
from typing import Any

import attrs
from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from crm_im.storage import MemoryMessageStore
from crm_im.storage.interface import GroupChange, GroupRecord, MemberRecord, NewMessage
from crm_im.storage.recovery import IRecoveryStore, MemoryRecoveryStore, RecoveryRecord, SQLRecoveryStore
from crm_im.storage.store import SQLMessageStore

from tests.support.stores import PostgresStores, SQLiteStores

_ids = itertools.count(1)


def message(fromId: str, toId: str | None = None, groupId: str | None = None, roomId: str | None = None) -> NewMessage:
    """
    A text message to C{toId}, a group or a room, its content its id.
    """
    id = f"m{next(_ids)}"
    return NewMessage(
        fromId=fromId,
        fromName=fromId.title(),
        toId=toId,
        id=id,
        topic=None,
        type="text",
        content=id,
        fileUrl=None,
        fileName=None,
        clientTimestamp=None,
        serverTimestamp=1000,
        groupId=groupId,
        roomId=roomId,
    )


def record(pid: str = "p1", userId: str = "alice", expiresAt: int | None = None, lastSeq: int = -1) -> RecoveryRecord:
    """
    A record of C{userId}'s socket C{pid}.
    """
    return RecoveryRecord(pid, "sid-" + pid, userId, userId.title(), None, ("r1",), lastSeq, expiresAt)


class RecoveryStoreTestsMixin:
    """
    L{IRecoveryStore} semantics, for every implementation.
    """

    store: Any
    records: Any
    assertEqual: Any
    assertIsNone: Any
    assertTrue: Any
    addCleanup: Any

    def makeStore(self) -> Any:
        """
        A new, unopened message store.
        """
        raise NotImplementedError()

    def recordsOf(self, store: Any) -> Any:
        """
        The L{IRecoveryStore} beside C{store}.
        """
        raise NotImplementedError()

    def setUp(self) -> Any:
        """
        Open a fresh store; close it after the test.
        """
        self.store = self.makeStore()
        self.addCleanup(self.store.close)
        self.records = self.recordsOf(self.store)
        return self.store.open()

    async def store_(self, new: NewMessage) -> int:
        outcome = await self.store.storeMessage(new)
        seq: int = outcome.message.seq
        return seq

    def test_interface(self) -> None:
        """
        It provides L{IRecoveryStore}.
        """
        self.assertTrue(verifyObject(IRecoveryStore, self.records))

    async def test_lifecycle(self) -> None:
        """
        A record kept at login has the highest seq then and no expiry: it
        is not found (its socket is connected). Kept again with an expiry
        it is found until then; dropped, it is gone.
        """
        await self.store_(message("bob", "alice"))
        last = await self.store_(message("bob", "carol"))
        kept = await self.records.keepRecovery(record())
        self.assertEqual((kept.lastSeq, kept.expiresAt), (last, None))
        self.assertIsNone(await self.records.recoveryRecord("p1", 5000))
        await self.records.keepRecovery(record(expiresAt=9000, lastSeq=kept.lastSeq))
        found = await self.records.recoveryRecord("p1", 5000)
        self.assertEqual(found, record(expiresAt=9000, lastSeq=last))
        self.assertIsNone(await self.records.recoveryRecord("p1", 9000))
        self.assertIsNone(await self.records.recoveryRecord("p2", 5000))
        await self.records.dropRecovery("p1")
        self.assertIsNone(await self.records.recoveryRecord("p1", 5000))

    async def test_dropUser(self) -> None:
        """
        Every record of a user goes at once (a kick or a ban).
        """
        await self.records.keepRecovery(record("p1", expiresAt=9000, lastSeq=0))
        await self.records.keepRecovery(record("p2", expiresAt=9000, lastSeq=0))
        await self.records.keepRecovery(record("p3", "bob", expiresAt=9000, lastSeq=0))
        self.assertEqual(await self.records.dropRecoveriesOf("alice"), 2)
        self.assertIsNone(await self.records.recoveryRecord("p1", 1))
        self.assertIsNone(await self.records.recoveryRecord("p2", 1))
        self.assertIsNotNone(await self.records.recoveryRecord("p3", 1))  # type: ignore[attr-defined]

    async def test_expire(self) -> None:
        """
        Expired records are deleted; with C{orphansUntil}, records with no
        expiry (connected when their node stopped) get that one.
        """
        await self.records.keepRecovery(record("old", expiresAt=1000, lastSeq=0))
        await self.records.keepRecovery(record("live", lastSeq=0))
        self.assertEqual(await self.records.expireRecoveries(2000), 1)
        self.assertIsNone(await self.records.recoveryRecord("live", 2000))
        self.assertEqual(await self.records.expireRecoveries(2000, 5000), 0)
        found = await self.records.recoveryRecord("live", 2000)
        self.assertEqual(found.expiresAt, 5000)

    async def test_expireOnlyOwnOrphans(self) -> None:
        """
        C{orphansUntil} goes to the records with no expiry of the node
        named (and of none: written alone, or before nodes were recorded),
        not to those of the sockets connected to other nodes.
        """
        await self.records.keepRecovery(attrs.evolve(record("mine", lastSeq=0), node="n1"))
        await self.records.keepRecovery(attrs.evolve(record("other", lastSeq=0), node="n2"))
        await self.records.keepRecovery(record("none", lastSeq=0))
        await self.records.expireRecoveries(2000, 5000, "n1")
        self.assertEqual((await self.records.recoveryRecord("mine", 2000)).node, "n1")
        self.assertIsNotNone(await self.records.recoveryRecord("none", 2000))  # type: ignore[attr-defined]
        self.assertIsNone(await self.records.recoveryRecord("other", 2000))
        await self.records.expireRecoveries(6000)
        self.assertIsNone(await self.records.recoveryRecord("other", 2000))
        await self.records.expireRecoveries(6000, 9000, "n2")
        self.assertEqual((await self.records.recoveryRecord("other", 6000)).expiresAt, 9000)

    async def test_missed(self) -> None:
        """
        The messages missed: the 1:1 ones to the user after C{after}; its
        groups' and the listed rooms' after C{since} too; never its own
        (without C{ownAfter}), another group's or another room's; seq ascending, at most
        C{limit}.
        """
        members = [MemberRecord("bob", "owner", 1, 1), MemberRecord("alice", "member", 1, 2)]
        await self.store.createGroup(
            GroupRecord("g1", "Team", None, "bob", "bob", None, 1),
            members,
            NewMessage("bob", "Bob", None, "sys1", None, "system", "", None, None, None, 1, groupId="g1",
                       system={"action": "create", "by": "bob"}),
        )
        await self.store.createGroup(
            GroupRecord("g2", "Other", None, "bob", "bob", None, 1),
            [MemberRecord("bob", "owner", 1, 1)],
            NewMessage("bob", "Bob", None, "sys2", None, "system", "", None, None, None, 1, groupId="g2",
                       system={"action": "create", "by": "bob"}),
        )
        early = await self.store_(message("bob", "alice"))
        sinceGroup = await self.store_(message("bob", groupId="g1"))
        wanted = [
            await self.store_(message("bob", "alice")),
            await self.store_(message("bob", groupId="g1")),
            await self.store_(message("carol", roomId="r1")),
        ]
        await self.store_(message("alice", "bob"))
        await self.store_(message("alice", groupId="g1"))
        await self.store_(message("bob", groupId="g2"))
        await self.store_(message("bob", roomId="r2"))
        await self.store_(message("bob", "carol"))
        wanted.append(await self.store_(message("carol", "alice")))
        found = await self.records.missedMessages("alice", ["r1"], early - 1, sinceGroup, 100)
        self.assertEqual([m.seq for m in found], [early] + wanted)
        found = await self.records.missedMessages("alice", ["r1"], early, early, 100)
        self.assertEqual([m.seq for m in found], [sinceGroup] + wanted)
        found = await self.records.missedMessages("alice", ["r1"], early, early, 2)
        self.assertEqual([m.seq for m in found], [sinceGroup, wanted[0]])
        self.assertEqual(found[1].content, found[1].id)
        # A member who left misses nothing more of the group.
        await self.store.changeGroup(
            GroupChange("g1", 5000, remove=("alice",),
                        system=NewMessage("bob", "Bob", None, "sys3", None, "system", "", None, None, None, 1,
                                          groupId="g1", system={"action": "remove", "by": "bob"}))
        )
        found = await self.records.missedMessages("alice", [], sinceGroup, sinceGroup, 100)
        self.assertEqual([m.seq for m in found], [wanted[0], wanted[3]])

    async def test_missedOwnFromOtherDevices(self) -> None:
        """
        With C{ownAfter} (when the socket went away), the user's own
        messages stored after it are missed too (sent from its other
        devices): 1:1 ones to anyone, its groups' and listed rooms' after
        C{since}; not those stored before, nor another group's.
        """
        await self.store.createGroup(
            GroupRecord("g1", "Team", None, "bob", "bob", None, 1),
            [MemberRecord("bob", "owner", 1, 1), MemberRecord("alice", "member", 1, 2)],
            NewMessage("bob", "Bob", None, "sys1", None, "system", "", None, None, None, 1, groupId="g1",
                       system={"action": "create", "by": "bob"}),
        )
        start = await self.store_(message("bob", "alice"))
        await self.store_(message("alice", "bob"))  # at 1000: before it went away
        later = [attrs.evolve(m, serverTimestamp=3000) for m in (
            message("alice", "carol"), message("alice", groupId="g1"), message("alice", roomId="r1"),
            message("alice", groupId="g2"), message("alice", roomId="r2"), message("alice", "alice"))]
        seqs = [await self.store_(m) for m in later]
        found = await self.records.missedMessages("alice", ["r1"], start, start, 100, None, 2000)
        self.assertEqual([m.seq for m in found], [seqs[0], seqs[1], seqs[2], seqs[5]])
        found = await self.records.missedMessages("alice", ["r1"], start, start, 100)
        self.assertEqual([m.seq for m in found], [])

    async def test_missedMessagesBytes(self) -> None:
        """
        With C{maxBytes}, C{missedMessages} stops at the message whose
        weight takes the total past it, that one included.
        """
        start = await self.store_(message("bob", "alice"))
        for i in range(4):
            await self.store_(attrs.evolve(message("bob", "alice"), content="x" * 800))
        found = await self.records.missedMessages("alice", [], start, start, 100, 1500)
        self.assertEqual([m.content for m in found], ["x" * 800] * 2)
        found = await self.records.missedMessages("alice", [], start, start, 100)
        self.assertEqual(len(found), 4)


class MemoryRecoveryStoreTests(RecoveryStoreTestsMixin, TestCase):
    """
    The tests against the memory fake.
    """

    def makeStore(self) -> MemoryMessageStore:
        return MemoryMessageStore()

    def recordsOf(self, store: Any) -> MemoryRecoveryStore:
        return MemoryRecoveryStore(store)


class SQLRecoveryStoreTestsMixin(RecoveryStoreTestsMixin):
    """
    The tests against the SQL store on one engine, and durability.
    """

    newStore: Any

    def makeStore(self) -> SQLMessageStore:
        store: SQLMessageStore = self.newStore()
        return store

    def recordsOf(self, store: Any) -> SQLRecoveryStore:
        return SQLRecoveryStore(store)

    async def test_durable(self) -> None:
        """
        A record survives a restart (the store opened again).
        """
        await self.records.keepRecovery(record(expiresAt=9000, lastSeq=3))
        await self.store.close()
        store = self.newStore()
        await store.open()
        self.addCleanup(store.close)
        found = await SQLRecoveryStore(store).recoveryRecord("p1", 5000)
        self.assertEqual(found, record(expiresAt=9000, lastSeq=3))


class SQLiteRecoveryStoreTests(SQLiteStores, SQLRecoveryStoreTestsMixin, TestCase):
    """
    The tests against SQLite in a temporary file.
    """


class PostgresRecoveryStoreTests(PostgresStores, SQLRecoveryStoreTestsMixin, TestCase):
    """
    The tests against PostgreSQL in a schema of the test's own.
    """
