"""
Tests for L{IPushStore} (pushkeys, mutes, the push outbox) run against the
memory fake and SQLite in a temporary file, as L{tests.test_storage}: one
mixin of semantics; a PostgreSQL engine adds one subclass.
"""

from __future__ import annotations

import itertools
from typing import Any

from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from crm_im.storage import MemoryMessageStore
from crm_im.storage.interface import GroupRecord, MemberRecord, NewMessage, groupConversation
from crm_im.storage.outbox import IPushStore, Pushkey
from crm_im.storage.store import SQLMessageStore

from tests.support.stores import PostgresStores, SQLiteStores

_ids = itertools.count(1)


def direct(fromId: str, toId: str, notify: tuple[str, ...] = (), at: int = 1000) -> NewMessage:
    """
    A 1:1 text message, naming C{notify} to notify.
    """
    return NewMessage(
        fromId=fromId,
        fromName=fromId.title(),
        toId=toId,
        id=f"m{next(_ids)}",
        topic=None,
        type="text",
        content="hello",
        fileUrl=None,
        fileName=None,
        clientTimestamp=None,
        serverTimestamp=at,
        notify=notify,
    )


def key(pushkey: str, userId: str, at: int = 1000) -> Pushkey:
    """
    A pushkey of C{userId} registered at C{at}.
    """
    return Pushkey(pushkey, userId, "app", "android", None, {"url": "x"}, at)


class PushStoreTestsMixin:
    """
    L{IPushStore} semantics, for every implementation.
    """

    store: Any
    assertEqual: Any
    assertIsNone: Any
    assertTrue: Any
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
        The store provides L{IPushStore}.
        """
        self.assertTrue(verifyObject(IPushStore, self.store))

    async def test_registerMoveLimit(self) -> None:
        """
        A pushkey registered by another user moves to them; past the limit
        a user's oldest pushkeys are dropped; unregistering forgets one.
        """
        await self.store.registerPushkey(key("k1", "alice", 1), 3)
        moved = await self.store.registerPushkey(key("k1", "bob", 2), 3)
        self.assertEqual((moved.movedFrom, moved.movedFromRemaining), ("alice", 0))
        for n in range(2, 5):
            outcome = await self.store.registerPushkey(key(f"k{n}", "bob", 2 + n), 3)
        self.assertEqual(outcome.evicted, 1)
        loaded = await self.store.loadPush()
        self.assertEqual(loaded.users, frozenset({"bob"}))
        self.assertEqual(await self.store.unregisterPushkey("bob", "k3"), 2)
        self.assertEqual(await self.store.unregisterPushkey("alice", "k4"), 0)

    async def test_outboxWithMessage(self) -> None:
        """
        A message naming recipients to notify leaves one outbox row per
        recipient, in the same write; the plan shows the unread message,
        the count and the pushkeys; finishing deletes the rows and the
        rejected pushkeys.
        """
        await self.store.registerPushkey(key("k1", "bob"), 10)
        await self.store.registerPushkey(key("k2", "bob"), 10)
        first = await self.store.storeMessage(direct("alice", "bob", ("bob",)))
        await self.store.storeMessage(direct("alice", "bob", ("bob",)))
        await self.store.storeMessage(direct("alice", "carol"))
        loaded = await self.store.loadPush()
        self.assertEqual(loaded.outbox, [("bob", 1000, 2)])
        plan = await self.store.pushPlan("bob")
        self.assertEqual((plan.rows, plan.unread, len(plan.messages)), (2, 2, 2))
        self.assertEqual([k.pushkey for k in plan.pushkeys], ["k1", "k2"])
        await self.store.markDelivered([first.message.seq])
        plan = await self.store.pushPlan("bob")
        self.assertEqual((plan.unread, len(plan.messages)), (1, 1))
        self.assertEqual(await self.store.finishPush("bob", plan.upToSeq, ["k2"]), (2, 1))
        self.assertIsNone(await self.store.pushPlan("bob"))
        self.assertIsNone(await self.store.pushPlan("carol"))

    async def test_groupPlan(self) -> None:
        """
        A group message is still worth notifying until the member's read
        cursor passes it; mutes are durable; the count covers the group.
        """
        members = [MemberRecord("alice", "owner", 1, 1), MemberRecord("bob", "member", 1, 2)]
        await self.store.createGroup(
            GroupRecord("g1", "Team", None, "alice", "alice", None, 1),
            members,
            NewMessage("alice", "Alice", None, "sys1", None, "system", "", None, None, None, 1, groupId="g1",
                       system={"action": "create", "by": "alice"}),
        )
        await self.store.registerPushkey(key("k1", "bob"), 10)
        outcome = await self.store.storeMessage(
            NewMessage("alice", "Alice", None, "g-m1", None, "text", "hi", None, None, None, 2000,
                       groupId="g1", notify=("bob",))
        )
        plan = await self.store.pushPlan("bob")
        self.assertEqual((len(plan.messages), plan.unread, plan.groupNames), (1, 1, {"g1": "Team"}))
        await self.store.moveReadCursor(groupConversation("g1"), "bob", outcome.message.seq)
        plan = await self.store.pushPlan("bob")
        self.assertEqual((len(plan.messages), plan.rows), (0, 1))
        await self.store.setMute("bob", "g1", True)
        self.assertEqual((await self.store.loadPush()).mutes, frozenset({("bob", "g1")}))
        await self.store.setMute("bob", "g1", False)
        self.assertEqual((await self.store.loadPush()).mutes, frozenset())
        for userId, groupId in (("bob", "g1"), ("carol", "g1"), ("dave", "g1"), ("bob", "g2")):
            await self.store.setMute(userId, groupId, True)
        await self.store.forgetMutes("g1", ["bob", "carol", "erin"])
        self.assertEqual((await self.store.loadPush()).mutes, frozenset({("dave", "g1"), ("bob", "g2")}))

    async def test_trim(self) -> None:
        """
        Past its bound the outbox loses its oldest rows.
        """
        for _ in range(5):
            await self.store.storeMessage(direct("alice", "bob", ("bob",)))
        await self.store.enqueuePush("carol", 10_000, 5)
        self.assertEqual(await self.store.trimOutbox(4), 2)
        self.assertEqual(await self.store.trimOutbox(4), 0)
        loaded = await self.store.loadPush()
        self.assertEqual(sorted(loaded.outbox), [("bob", 1000, 3), ("carol", 5, 1)])


class MemoryPushStoreTests(PushStoreTestsMixin, TestCase):
    """
    The push store tests against L{MemoryMessageStore}.
    """

    def makeStore(self) -> MemoryMessageStore:
        """
        A memory store.
        """
        return MemoryMessageStore()


class SQLPushStoreTestsMixin(PushStoreTestsMixin):
    """
    The push store tests against the SQL store on one engine (mixed with
    L{SQLiteStores} or L{PostgresStores}), and durability.
    """

    newStore: Any

    def makeStore(self) -> SQLMessageStore:
        """
        A store on a database of the test's own.
        """
        store: SQLMessageStore = self.newStore()
        return store

    async def test_outboxSurvivesReopen(self) -> None:
        """
        Outbox rows and pushkeys are durable: a store opened again on the
        database loads them.
        """
        await self.store.registerPushkey(key("k1", "bob"), 10)
        await self.store.storeMessage(direct("alice", "bob", ("bob",)))
        await self.store.close()
        store = self.newStore()
        await store.open()
        self.addCleanup(store.close)
        loaded = await store.loadPush()
        self.assertEqual((loaded.users, loaded.outbox), (frozenset({"bob"}), [("bob", 1000, 1)]))


class SQLitePushStoreTests(SQLiteStores, SQLPushStoreTestsMixin, TestCase):
    """
    The push store tests against L{SQLiteMessageStore} in a temporary file.
    """


class PostgresPushStoreTests(PostgresStores, SQLPushStoreTestsMixin, TestCase):
    """
    The push store tests against L{PostgresMessageStore} in a schema of the
    test's own.
    """
