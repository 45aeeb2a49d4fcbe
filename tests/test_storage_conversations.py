"""
Tests for L{IConversationStore} (groups, members, read cursors, rooms) and
the methods L{IMessageStore} gained with them (C{conversationHistory},
C{findMessage}, C{findSharedMessages}, C{recall}): one
mixin of semantics run against every implementation, as in
L{tests.test_storage}: the memory fake and SQLite in a temporary file. A
PostgreSQL engine gets the same tests by adding one more subclass with its
own C{makeStore}.
"""

from __future__ import annotations

import itertools
import uuid
from typing import Any, Sequence

from twisted.trial.unittest import TestCase
from zope.interface.verify import verifyObject

from crm_im.storage import MemoryMessageStore
from crm_im.storage import conversations as sqlconversations
from crm_im.storage.interface import (
    ADMIN,
    MEMBER,
    OWNER,
    GroupChange,
    GroupRecord,
    GroupState,
    IConversationStore,
    IMessageStore,
    MemberRecord,
    NewMessage,
    RoomRecord,
    StoredMessage,
    groupConversation,
    roomConversation,
)
from crm_im.storage.store import SQLMessageStore

from tests.support.stores import PostgresStores, SQLiteStores

_ids = itertools.count(1)


def message(
    fromId: str = "alice",
    id: str | None = None,
    groupId: str | None = None,
    roomId: str | None = None,
    toId: str | None = None,
    content: str = "hello",
    **kwargs: Any,
) -> NewMessage:
    """
    A message in one conversation, with defaults for what a test does not
    care about (a fresh id unless one is given).
    """
    fields: dict[str, Any] = dict(
        fromId=fromId,
        fromName=fromId.title(),
        toId=toId,
        id=id if id is not None else f"auto-{next(_ids)}",
        topic=None,
        type="text",
        content=content,
        fileUrl=None,
        fileName=None,
        clientTimestamp=None,
        serverTimestamp=1_700_000_000_000,
        groupId=groupId,
        roomId=roomId,
    )
    fields.update(kwargs)
    return NewMessage(**fields)


def system(groupId: str, by: str, action: str, **extra: Any) -> NewMessage:
    """
    The system message recording C{action} by C{by} in C{groupId}.
    """
    return message(by, groupId=groupId, type="system", content=action, system=dict(extra, action=action, by=by))


def groupRecord(
    id: str = "g1", createdBy: str = "alice", clientId: str | None = "g1", name: str = "Team", createdAt: int = 1000
) -> GroupRecord:
    """
    A group record as C{group:create} makes it (the client's id as id).
    """
    return GroupRecord(id, name, None, createdBy, createdBy, clientId, createdAt)


def members(owner: str, *others: str, at: int = 1000) -> list[MemberRecord]:
    """
    C{owner} as owner and C{others} as members, all joining at C{at}.
    """
    return [MemberRecord(owner, OWNER, at)] + [MemberRecord(u, MEMBER, at) for u in others]


#: L{roomRecord}'s default client id: the room's id.
SAME = "\x00same"


def roomRecord(
    id: str = "r1", createdBy: str = "alice", clientId: str | None = SAME, public: bool = True, createdAt: int = 1000
) -> RoomRecord:
    """
    A room record as C{room:create} makes it (the client's id as id, unless
    another C{clientId} is given).
    """
    return RoomRecord(id, f"Room {id}", None, public, createdBy, id if clientId == SAME else clientId, createdAt)


def seqs(messages: Sequence[StoredMessage]) -> list[int]:
    """
    The seqs of C{messages}, in order.
    """
    return [m.seq for m in messages]


class ConversationStoreTestsMixin:
    """
    Tests of L{IConversationStore} and the conversation methods of
    L{IMessageStore}, for every implementation.

    Mixed into a L{TestCase} that defines L{makeStore}.
    """

    store: Any

    # Provided by TestCase.
    assertEqual: Any
    assertNotEqual: Any
    assertTrue: Any
    assertFalse: Any
    assertIsNone: Any
    assertIn: Any
    assertNotIn: Any
    addCleanup: Any
    patch: Any

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

    async def createGroup(
        self, record: GroupRecord | None = None, people: Sequence[MemberRecord] | None = None
    ) -> tuple[GroupState, bool, StoredMessage | None]:
        """
        Create a group (by default g1: alice owning, bob and carol members).
        """
        record = record if record is not None else groupRecord()
        people = people if people is not None else members(record.createdBy, "bob", "carol")
        return await self.store.createGroup(record, people, system(record.id, record.createdBy, "create"))  # type: ignore[no-any-return]

    async def state(self, groupId: str = "g1") -> GroupState:
        """
        The state of a group that must exist.
        """
        state = await self.store.group(groupId)
        assert state is not None, groupId
        return state  # type: ignore[no-any-return]

    async def storeAll(self, *messages: NewMessage) -> list[StoredMessage]:
        """
        Store C{messages} one after another.
        """
        return [(await self.store.storeMessage(m)).message for m in messages]

    async def history(self, conversation: str, limit: int = 100, before: int | None = None, after: int | None = None) -> Any:
        """
        A page of C{conversation}.
        """
        return await self.store.conversationHistory(conversation, limit, before, after)

    def test_interfaces(self) -> None:
        """
        The store provides both interfaces.
        """
        self.assertTrue(verifyObject(IConversationStore, self.store))
        self.assertTrue(verifyObject(IMessageStore, self.store))

    # ---- groups

    async def test_createGroup(self) -> None:
        """
        A new group: created now, its members numbered in the order given,
        nobody former, its system message stored in it; read back the same.
        """
        state, created, stored = await self.createGroup()
        self.assertTrue(created)
        self.assertEqual(state.group, groupRecord())
        self.assertEqual(
            [(m.userId, m.role, m.joinedAt, m.order) for m in state.members.values()],
            [("alice", OWNER, 1000, 1), ("bob", MEMBER, 1000, 2), ("carol", MEMBER, 1000, 3)],
        )
        self.assertEqual(state.former, frozenset())
        assert stored is not None
        self.assertEqual((stored.groupId, stored.toId, stored.type), ("g1", None, "system"))
        self.assertEqual(stored.system, {"action": "create", "by": "alice"})
        again = await self.state()
        self.assertEqual((again.group, again.members, again.former), (state.group, state.members, state.former))
        self.assertEqual(again.lastSeq, stored.seq)

    async def test_createGroupStateLastSeq(self) -> None:
        """
        The state C{createGroup} returns counts the system message it
        stored: its C{lastSeq} is that message's seq, as a read gives.
        """
        state, _, stored = await self.createGroup()
        assert stored is not None
        self.assertEqual(state.lastSeq, stored.seq)

    async def test_adminGroupListLastSeq(self) -> None:
        """
        The admin store's group list gives each group's member count and
        the seq of its last message (a group of another conversation's
        messages, or without messages of its own, is not confused).
        """
        from crm_im.storage.admin import adminStoreFor

        _, _, created = await self.createGroup()
        await self.createGroup(groupRecord(id="g2", clientId="g2"), members("alice", "bob"))
        assert created is not None
        (later,) = await self.storeAll(message("bob", groupId="g1", content="later"))
        await self.storeAll(message("bob", roomId="g1", content="a room of the same id"))
        listed = await adminStoreFor(self.store).listGroups(None, None, 10)
        self.assertEqual([(record.id, count) for record, count, _ in listed], [("g1", 3), ("g2", 2)])
        g2 = await self.state("g2")
        self.assertEqual([lastSeq for _, _, lastSeq in listed], [later.seq, g2.lastSeq])

    async def test_createGroupRetry(self) -> None:
        """
        The same creator and client id again: the existing group, not
        created, no system message stored, whatever the retry says.
        """
        first, _, _ = await self.createGroup()
        state, created, stored = await self.createGroup(groupRecord(name="Renamed"), members("alice", "dave"))
        self.assertFalse(created)
        self.assertIsNone(stored)
        self.assertEqual((state.group, set(state.members)), (first.group, {"alice", "bob", "carol"}))
        self.assertEqual(len((await self.history(groupConversation("g1"))).messages), 1)

    async def test_createGroupIdTaken(self) -> None:
        """
        Another creator asking for an id a group has already gets a group
        with a new UUID, its system message in that group; a retry of theirs
        finds it.
        """
        await self.createGroup()
        state, created, stored = await self.createGroup(groupRecord(createdBy="bob"), members("bob"))
        self.assertTrue(created)
        self.assertNotEqual(state.group.id, "g1")
        uuid.UUID(state.group.id)
        assert stored is not None
        self.assertEqual(stored.groupId, state.group.id)
        self.assertEqual(len((await self.history(groupConversation("g1"))).messages), 1)
        self.assertEqual(len((await self.history(groupConversation(state.group.id))).messages), 1)
        retry, created, _ = await self.createGroup(groupRecord(createdBy="bob"), members("bob"))
        self.assertFalse(created)
        self.assertEqual(retry.group.id, state.group.id)
        self.assertEqual((await self.state("g1")).group.ownerId, "alice")

    async def test_createGroupIdTakenNoClientId(self) -> None:
        """
        A group made without a client id whose server id is taken gets a
        new UUID too.
        """
        await self.createGroup()
        state, created, _ = await self.createGroup(groupRecord(createdBy="bob", clientId=None), members("bob"))
        self.assertTrue(created)
        self.assertNotEqual(state.group.id, "g1")

    async def test_unknownGroup(self) -> None:
        """
        A group that was never made is L{None}.
        """
        self.assertIsNone(await self.store.group("nope"))

    async def test_addMembers(self) -> None:
        """
        Added members come after the others in order, with their join time;
        their read cursor starts at the group's last message before the
        change; the change's system message is stored and returned.
        """
        _, _, created = await self.createGroup()
        assert created is not None
        (said,) = await self.storeAll(message("bob", groupId="g1"))
        stored = await self.store.changeGroup(
            GroupChange("g1", 2000, add=(MemberRecord("dave", MEMBER, 2000),), system=system("g1", "alice", "add", userIds=["dave"]))
        )
        self.assertEqual(stored.groupId, "g1")
        self.assertEqual(stored.system, {"action": "add", "by": "alice", "userIds": ["dave"]})
        self.assertTrue(stored.seq > said.seq)
        state = await self.state()
        self.assertEqual(state.members["dave"], MemberRecord("dave", MEMBER, 2000, 4))
        self.assertEqual(state.lastSeq, stored.seq)
        self.assertEqual(await self.store.readCursors(groupConversation("g1")), {"dave": said.seq})

    async def test_removeMembers(self) -> None:
        """
        Removed members become former members; naming a user who is not a
        member changes nothing; a change without a system message returns
        L{None}.
        """
        await self.createGroup()
        result = await self.store.changeGroup(GroupChange("g1", 2000, remove=("carol", "stranger")))
        self.assertIsNone(result)
        state = await self.state()
        self.assertEqual((set(state.members), state.former), ({"alice", "bob"}, frozenset({"carol"})))

    async def test_readdFormerMember(self) -> None:
        """
        A former member added again is a member again (not former), with
        the new join time and a place at the end of the order.
        """
        await self.createGroup()
        await self.store.changeGroup(GroupChange("g1", 2000, remove=("bob",)))
        await self.store.changeGroup(GroupChange("g1", 3000, add=(MemberRecord("bob", MEMBER, 3000),)))
        state = await self.state()
        self.assertEqual(state.former, frozenset())
        self.assertEqual((state.members["bob"].joinedAt, state.members["bob"].order), (3000, 4))

    async def test_rolesAndOwner(self) -> None:
        """
        Roles change for the members named; ownership moves with
        C{ownerId}.
        """
        await self.createGroup()
        await self.store.changeGroup(
            GroupChange("g1", 2000, ownerId="bob", roles=(("bob", OWNER), ("alice", ADMIN)), system=system("g1", "alice", "role"))
        )
        state = await self.state()
        self.assertEqual(state.group.ownerId, "bob")
        self.assertEqual({u: m.role for u, m in state.members.items()}, {"alice": ADMIN, "bob": OWNER, "carol": MEMBER})

    async def test_nameAndAvatar(self) -> None:
        """
        A new name and avatar are kept; an avatar of C{""} clears it; a
        change without them leaves them.
        """
        await self.createGroup()
        await self.store.changeGroup(GroupChange("g1", 2000, name="Renamed", avatar="https://a/b.png"))
        self.assertEqual(((await self.state()).group.name, (await self.state()).group.avatar), ("Renamed", "https://a/b.png"))
        await self.store.changeGroup(GroupChange("g1", 2001, remove=("carol",)))
        self.assertEqual((await self.state()).group.avatar, "https://a/b.png")
        await self.store.changeGroup(GroupChange("g1", 2002, avatar=""))
        self.assertEqual(((await self.state()).group.name, (await self.state()).group.avatar), ("Renamed", None))

    async def test_dissolve(self) -> None:
        """
        A dissolved group is gone: L{None} to read, counted and listed for
        nobody; its creator may use its client id again, for a new group.
        """
        await self.createGroup()
        await self.store.changeGroup(GroupChange("g1", 2000, dissolve=True))
        self.assertIsNone(await self.store.group("g1"))
        self.assertEqual(await self.store.groupCounts(["alice", "bob"]), {"alice": 0, "bob": 0})
        self.assertEqual(await self.store.groupSummaries("bob"), [])
        state, created, _ = await self.createGroup(groupRecord(name="Again"))
        self.assertTrue(created)
        self.assertEqual(state.group.name, "Again")
        self.assertEqual((await self.state(state.group.id)).group.name, "Again")

    async def test_changeAfterDissolve(self) -> None:
        """
        A change to a dissolved (or unknown) group writes nothing, not
        even its system message: a member added by a change decided
        before the dissolve (on another node) would count against their
        groups for good, in a group nobody can see.
        """
        await self.createGroup()
        await self.store.changeGroup(GroupChange("g1", 2000, dissolve=True))
        add = GroupChange(
            "g1", 2001, add=(MemberRecord("dave", MEMBER, 2001),), system=system("g1", "alice", "add", userIds=["dave"])
        )
        self.assertIsNone(await self.store.changeGroup(add))
        self.assertIsNone(await self.store.changeGroup(GroupChange("nope", 2001, add=add.add, system=add.system)))
        self.assertEqual(await self.store.groupCounts(["dave"]), {"dave": 0})
        page = await self.store.conversationHistory(groupConversation("g1"), 50, None, None)
        self.assertNotIn("add", [m.system["action"] for m in page.messages if m.system])

    async def test_groupCounts(self) -> None:
        """
        How many groups each user is a current member of; 0 for users in
        none, former memberships not counted.
        """
        await self.createGroup()
        await self.createGroup(groupRecord("g2", clientId="g2"), members("alice", "bob"))
        await self.store.changeGroup(GroupChange("g2", 2000, remove=("bob",)))
        self.assertEqual(
            await self.store.groupCounts(["alice", "bob", "carol", "zed"]), {"alice": 2, "bob": 1, "carol": 1, "zed": 0}
        )

    async def test_groupSummaries(self) -> None:
        """
        A user's groups, most recent activity first, each with its member
        count, last message, the user's cursor and the messages after it
        that others sent.
        """
        await self.createGroup()  # g1: alice, bob, carol
        await self.createGroup(groupRecord("g2", createdBy="bob", clientId="g2", createdAt=2000), members("bob", "alice"))
        a1, b1, b2 = await self.storeAll(message("alice", groupId="g1"), message("bob", groupId="g1"), message("bob", groupId="g1"))
        await self.store.moveReadCursor(groupConversation("g1"), "alice", a1.seq)
        (summary1, summary2) = await self.store.groupSummaries("alice")
        self.assertEqual([summary1.group.id, summary2.group.id], ["g1", "g2"])
        self.assertEqual(
            (summary1.memberCount, summary1.lastSeq, summary1.readSeq, summary1.unreadCount),
            (3, b2.seq, a1.seq, 2),
        )
        assert summary1.lastMessage is not None
        self.assertEqual((summary1.lastMessage.id, summary1.lastMessage.seq), (b2.id, b2.seq))
        # g2: only bob's create message, unread for alice
        self.assertEqual((summary2.memberCount, summary2.readSeq, summary2.unreadCount), (2, 0, 1))
        assert summary2.lastMessage is not None
        self.assertEqual(summary2.lastMessage.type, "system")
        # bob: alice's create message and her message in g1, nothing in g2
        bobs = {s.group.id: s.unreadCount for s in await self.store.groupSummaries("bob")}
        self.assertEqual(bobs, {"g1": 2, "g2": 0})
        await self.storeAll(message("bob", groupId="g2"))
        self.assertEqual([s.group.id for s in await self.store.groupSummaries("alice")], ["g2", "g1"])
        self.assertEqual([s.group.id for s in await self.store.groupSummaries("carol")], ["g1"])
        self.assertEqual(await self.store.groupSummaries("zed"), [])

    async def test_unreadCapped(self) -> None:
        """
        Unread counts stop at C{MAX_UNREAD} (a badge shows "9999+"), in
        both stores.
        """
        self.patch(sqlconversations, "MAX_UNREAD", 2)
        await self.createGroup(groupRecord(createdBy="bob"), members("bob", "alice"))
        await self.storeAll(*[message("bob", groupId="g1") for _ in range(3)])
        (summary,) = await self.store.groupSummaries("alice")
        self.assertEqual(summary.unreadCount, 2)

    async def test_groupSummariesFormer(self) -> None:
        """
        A group the user left is not in their list.
        """
        await self.createGroup()
        await self.store.changeGroup(GroupChange("g1", 2000, remove=("carol",)))
        self.assertEqual(await self.store.groupSummaries("carol"), [])
        self.assertEqual((await self.store.groupSummaries("bob"))[0].memberCount, 2)

    # ---- read cursors

    async def test_readCursorForwardOnly(self) -> None:
        """
        A cursor moves forward, never back; each call says where it is and
        whether it moved.
        """
        await self.createGroup()
        m1, m2 = await self.storeAll(message("bob", groupId="g1"), message("bob", groupId="g1"))
        conversation = groupConversation("g1")
        self.assertEqual(await self.store.moveReadCursor(conversation, "alice", m1.seq), (m1.seq, True))
        self.assertEqual(await self.store.moveReadCursor(conversation, "alice", m2.seq), (m2.seq, True))
        self.assertEqual(await self.store.moveReadCursor(conversation, "alice", m1.seq), (m2.seq, False))
        self.assertEqual(await self.store.moveReadCursor(conversation, "alice", m2.seq), (m2.seq, False))
        self.assertEqual(await self.store.readCursors(conversation), {"alice": m2.seq})

    async def test_readCursorCapped(self) -> None:
        """
        A cursor stops at the conversation's last message (not the last
        message of any conversation); in an empty conversation it does not
        move.
        """
        await self.createGroup()
        (last,) = await self.storeAll(message("bob", groupId="g1"))
        await self.storeAll(message("bob", toId="alice"), message("bob", roomId="r1"))
        conversation = groupConversation("g1")
        self.assertEqual(await self.store.moveReadCursor(conversation, "alice", last.seq + 50), (last.seq, True))
        self.assertEqual(await self.store.moveReadCursor(groupConversation("empty"), "alice", 10), (0, False))
        self.assertEqual(await self.store.readCursors(groupConversation("empty")), {})

    # ---- rooms

    async def test_createRoom(self) -> None:
        """
        A new room is created and read back; the same creator and client id
        again returns it, not created; unknown rooms are L{None}.
        """
        room, created = await self.store.createRoom(roomRecord())
        self.assertTrue(created)
        self.assertEqual(room, roomRecord())
        self.assertEqual(await self.store.room("r1"), roomRecord())
        again, created = await self.store.createRoom(roomRecord(public=False))
        self.assertFalse(created)
        self.assertEqual(again, roomRecord())
        self.assertIsNone(await self.store.room("nope"))

    async def test_createRoomIdTaken(self) -> None:
        """
        A room id taken by another creator's room gives a new UUID.
        """
        await self.store.createRoom(roomRecord())
        room, created = await self.store.createRoom(roomRecord(createdBy="bob"))
        self.assertTrue(created)
        self.assertNotEqual(room.id, "r1")
        uuid.UUID(room.id)
        self.assertEqual(await self.store.room(room.id), room)
        self.assertEqual((await self.store.room("r1")).createdBy, "alice")

    async def test_createRoomIdOfClosedRoom(self) -> None:
        """
        The id of a closed room (its row deleted, its messages kept for
        the export) is not given again, to another creator nor to its
        own: a new UUID whose history is empty, as for a live room's id,
        so a new room never shows the old one's messages. A closed room
        without messages has no history to show: its id is free again.
        """
        from crm_im.storage.admin import adminStoreFor

        admin = adminStoreFor(self.store)
        await self.store.createRoom(roomRecord("planning", public=False))
        await self.storeAll(message("alice", roomId="planning", content="confidential"))
        self.assertTrue(await admin.deleteRoom("planning"))
        for createdBy in ("bob", "alice"):
            room, created = await self.store.createRoom(roomRecord("planning", createdBy=createdBy))
            self.assertTrue(created)
            self.assertNotEqual(room.id, "planning")
            uuid.UUID(room.id)
            self.assertEqual(await self.store.room(room.id), room)
            self.assertEqual((await self.history(roomConversation(room.id))).messages, [])
        self.assertIsNone(await self.store.room("planning"))
        await self.store.createRoom(roomRecord("empty"))
        self.assertTrue(await admin.deleteRoom("empty"))
        room, created = await self.store.createRoom(roomRecord("empty", createdBy="bob"))
        self.assertEqual((room.id, created), ("empty", True))

    async def test_publicRoomsAndCount(self) -> None:
        """
        Public rooms oldest first, at most C{limit}; non-public ones are not
        listed; rooms are counted per creator.
        """
        await self.store.createRoom(roomRecord("r3", createdAt=3000, clientId=None))
        await self.store.createRoom(roomRecord("r1", createdAt=1000))
        await self.store.createRoom(roomRecord("hidden", public=False, createdAt=500, createdBy="bob"))
        await self.store.createRoom(roomRecord("r2", createdAt=2000, createdBy="bob"))
        self.assertEqual([r.id for r in await self.store.publicRooms(10)], ["r1", "r2", "r3"])
        self.assertEqual([r.id for r in await self.store.publicRooms(2)], ["r1", "r2"])
        hidden = await self.store.room("hidden")
        self.assertFalse(hidden.public)
        self.assertEqual((await self.store.roomCount("alice"), await self.store.roomCount("bob"), await self.store.roomCount("zed")), (2, 2, 0))

    # ---- the message store's conversation methods

    async def test_conversationHistory(self) -> None:
        """
        A group's or a room's messages only (not a 1:1 conversation's, nor
        the room with the group's id), paged as 1:1 history: the latest
        C{limit}, before a seq, after a seq, with C{hasMore}.
        """
        stored = await self.storeAll(
            *[message("alice", groupId="x", content=f"g{i}") for i in range(5)],
            message("alice", roomId="x"),
            message("alice", toId="bob"),
        )
        group = stored[:5]
        key = groupConversation("x")
        page = await self.history(key, 3)
        self.assertEqual((seqs(page.messages), page.hasMore), (seqs(group[2:]), True))
        page = await self.history(key, 3, before=group[2].seq)
        self.assertEqual((seqs(page.messages), page.hasMore), (seqs(group[:2]), False))
        page = await self.history(key, 2, after=group[0].seq)
        self.assertEqual((seqs(page.messages), page.hasMore), (seqs(group[1:3]), True))
        page = await self.history(key, 10)
        self.assertEqual((seqs(page.messages), page.hasMore), (seqs(group), False))
        self.assertEqual([m.groupId for m in page.messages], ["x"] * 5)
        room = await self.history(roomConversation("x"))
        self.assertEqual([(m.roomId, m.groupId, m.toId) for m in room.messages], [("x", None, None)])

    async def test_systemMessageKept(self) -> None:
        """
        A system message's C{system} object comes back as it was stored.
        """
        (stored,) = await self.storeAll(system("g1", "alice", "add", userIds=["bob", "carol"], role=None))
        (read,) = (await self.history(groupConversation("g1"))).messages
        self.assertEqual(read.system, {"action": "add", "by": "alice", "userIds": ["bob", "carol"], "role": None})
        self.assertEqual(read, stored)

    async def test_findMessage(self) -> None:
        """
        C{findMessage} finds what a sender sent under an id, in any kind of
        conversation; another sender's message with that id is not it.
        """
        direct, group, room = await self.storeAll(
            message("alice", id="d", toId="bob"), message("alice", id="g", groupId="g1"), message("alice", id="r", roomId="r1")
        )
        self.assertEqual(await self.store.findMessage("alice", "d"), direct)
        self.assertEqual(await self.store.findMessage("alice", "g"), group)
        self.assertEqual(await self.store.findMessage("alice", "r"), room)
        self.assertIsNone(await self.store.findMessage("bob", "g"))
        self.assertIsNone(await self.store.findMessage("alice", "nope"))

    async def test_findSharedMessages(self) -> None:
        """
        C{findSharedMessages}: the group and room messages with an id, from
        every sender, seq ascending; never a 1:1 message.
        """
        await self.storeAll(message("carol", id="same", toId="dave"))
        first, second = await self.storeAll(message("alice", id="same", groupId="g1"), message("bob", id="same", roomId="r1"))
        await self.storeAll(message("alice", id="other", groupId="g1"))
        self.assertEqual(await self.store.findSharedMessages("same"), [first, second])
        self.assertEqual(await self.store.findSharedMessages("nope"), [])

    async def test_mentions(self) -> None:
        """
        A group message's C{mentions} are stored, in the order given, and
        read back by every read (history, the message by id, the group's
        latest); a message without them reads back with none, and its wire
        form has no C{mentions}.
        """
        (plain, mentioning) = await self.storeAll(
            message("bob", groupId="g1", content="all"),
            message("bob", groupId="g1", content="@dave @carol", mentions=("dave", "carol")),
        )
        self.assertEqual((plain.mentions, mentioning.mentions), ((), ("dave", "carol")))
        page = await self.history(groupConversation("g1"))
        self.assertEqual([m.mentions for m in page.messages], [(), ("dave", "carol")])
        self.assertEqual(page.messages, [plain, mentioning])
        self.assertEqual((await self.store.findMessage("bob", mentioning.id)).mentions, ("dave", "carol"))
        self.assertEqual(page.messages[1].toWire()["mentions"], ["dave", "carol"])
        self.assertNotIn("mentions", page.messages[0].toWire())

    async def test_recall(self) -> None:
        """
        A recalled message keeps its seq and place; its content, file name
        and URL and mentions are gone and C{recalledBy} is set, in the stub
        returned and in every later read; recalling it again, or an unknown
        seq, gives L{None}.
        """
        (kept, file, after) = await self.storeAll(
            message("bob", groupId="g1", content="stays"),
            message(
                "bob", groupId="g1", type="file", content="a.txt", fileUrl="/files/x/a.txt", fileName="a.txt", mentions=("carol",)
            ),
            message("bob", groupId="g1"),
        )
        stub = await self.store.recall(file.seq, "alice", 5000)
        assert stub is not None
        self.assertEqual(
            (stub.seq, stub.id, stub.fromId, stub.type, stub.content, stub.fileUrl, stub.fileName, stub.recalledBy, stub.mentions),
            (file.seq, file.id, "bob", "file", "", None, None, "alice", ()),
        )
        self.assertEqual(stub.toWire()["recalled"], True)
        page = await self.history(groupConversation("g1"))
        self.assertEqual(page.messages, [kept, stub, after])
        self.assertEqual(await self.store.findMessage("bob", file.id), stub)
        self.assertIsNone(await self.store.recall(file.seq, "bob", 6000))
        self.assertIsNone(await self.store.recall(after.seq + 100, "bob", 6000))
        self.assertEqual((await self.store.findMessage("bob", file.id)).recalledBy, "alice")

    async def test_recallDirect(self) -> None:
        """
        A 1:1 message recalled: the stub is what the recipient's history
        and offline queue give.
        """
        (sent,) = await self.storeAll(message("alice", toId="bob", content="oops"))
        await self.store.recall(sent.seq, "alice", 5000)
        (pending,) = await self.store.pendingFor("bob", 10)
        self.assertEqual((pending.seq, pending.content, pending.recalledBy), (sent.seq, "", "alice"))
        (read,) = (await self.store.history("bob", "alice", None, 10, None, None)).messages
        self.assertEqual(read, pending)


class MemoryConversationStoreTests(ConversationStoreTestsMixin, TestCase):
    """
    The conversation store tests against L{MemoryMessageStore}.
    """

    def makeStore(self) -> MemoryMessageStore:
        """
        A memory store.
        """
        return MemoryMessageStore()


class SQLConversationStoreTestsMixin(ConversationStoreTestsMixin):
    """
    The conversation store tests against the SQL store on one engine (mixed with
    L{SQLiteStores} or L{PostgresStores}), and durability.
    """

    newStore: Any

    def makeStore(self) -> SQLMessageStore:
        """
        A store on a database of the test's own.
        """
        store: SQLMessageStore = self.newStore()
        return store

    async def test_survivesReopen(self) -> None:
        """
        Groups (members, former members, roles), cursors and rooms are
        durable: a store opened again on the database reads the same.
        """
        await self.createGroup()
        await self.store.changeGroup(GroupChange("g1", 2000, remove=("carol",), roles=(("bob", ADMIN),)))
        (said,) = await self.storeAll(message("bob", groupId="g1"))
        await self.store.moveReadCursor(groupConversation("g1"), "alice", said.seq)
        await self.store.createRoom(roomRecord())
        before = await self.state()
        await self.store.close()
        store = self.newStore()
        await store.open()
        self.addCleanup(store.close)
        self.assertEqual(await store.group("g1"), before)
        self.assertEqual(await store.readCursors(groupConversation("g1")), {"alice": said.seq})
        self.assertEqual(await store.room("r1"), roomRecord())


class SQLiteConversationStoreTests(SQLiteStores, SQLConversationStoreTestsMixin, TestCase):
    """
    The conversation store tests against L{SQLiteMessageStore} in a temporary file.
    """


class PostgresConversationStoreTests(PostgresStores, SQLConversationStoreTestsMixin, TestCase):
    """
    The conversation store tests against L{PostgresMessageStore} in a schema of the
    test's own.
    """
