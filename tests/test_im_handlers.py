"""
Unit tests of the transport-free IM handlers (L{crm_im.im.groups},
L{crm_im.im.messaging}, L{crm_im.im.rooms}, L{crm_im.im.sessions}) built
by L{IMCore} on the in-memory store, a L{Presence}, a L{Clock} and a
L{RecordingRouter}: no sockets, no frames. What a handler delivers is read
from the router, resolved to the devices it would reach.
"""

from __future__ import annotations

import inspect
import uuid
from typing import Any, Callable, Iterable, Sequence

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from crm_im._json import dumps
from crm_im.im.core import IMCore, IMSettings
from crm_im.im.errors import FORBIDDEN, INVALID_PAYLOAD, NOT_FOUND, RATE_LIMITED, TOO_LARGE, IMError
from crm_im.im.groups import GroupLimits
from crm_im.im.interfaces import Caller, IRouter
from crm_im.im.messaging import PENDING_BATCH
from crm_im.im.rooms import RoomLimits
from crm_im.presence import Presence
from crm_im.routing.local import OFFSET_EVENTS
from crm_im.storage.interface import MessageOrder, directConversation, groupConversation
from crm_im.storage.memory import MemoryMessageStore

#: The clock's start: a realistic "now", in seconds.
START = 1_700_000_000


@attrs.frozen
class Delivery:
    """
    One call on the router.

    @ivar method: C{toUsers}, C{toDevices}, C{toEveryone} or C{toConnected}.
    @ivar recipients: the user ids (C{toUsers}) or device ids given.
    @ivar devices: the devices it reached, resolved when it was made.
    @ivar order: the stored message's place in its conversation, if given.
    """

    method: str
    recipients: tuple[str, ...]
    event: str
    payload: Any
    exceptDevice: str | None
    devices: frozenset[str]
    order: MessageOrder | None = None


@implementer(IRouter)
class RecordingRouter:
    """
    An L{IRouter} that records every delivery, and resolves users to the
    devices L{Presence} gives them at that moment.
    """

    def __init__(self, presence: Presence) -> None:
        self.presence = presence
        self.sent: list[Delivery] = []
        self.closed: list[str] = []
        #: Devices whose connection is full (L{whenWritable} waits).
        self.full: set[str] = set()
        self.waiting: list[tuple[str, Deferred[bool]]] = []
        #: Devices held (L{hold}) -> the stored messages' events kept for them.
        self.holding: dict[str, list[tuple[str, Any]]] = {}

    def _record(
        self,
        method: str,
        recipients: Iterable[str],
        event: str,
        payload: Any,
        exceptDevice: str | None,
        devices: Iterable[str],
        order: MessageOrder | None = None,
    ) -> int:
        reached = frozenset(d for d in devices if d != exceptDevice)
        if event in OFFSET_EVENTS:
            for device in reached & self.holding.keys():
                self.holding[device].append((event, payload))
            held = len(reached & self.holding.keys())
            reached -= self.holding.keys()
            if held and not reached:
                return held
        self.sent.append(Delivery(method, tuple(recipients), event, payload, exceptDevice, reached, order))
        return len(reached)

    def toUsers(
        self,
        userIds: Iterable[str],
        event: str,
        payload: Any,
        exceptDevice: str | None = None,
        order: MessageOrder | None = None,
    ) -> int:
        """
        See L{IRouter.toUsers}.
        """
        users = tuple(userIds)
        devices = [d for u in users for d in self.presence.devicesOf(u)]
        return self._record("toUsers", users, event, payload, exceptDevice, devices, order)

    def toDevices(
        self,
        deviceIds: Iterable[str],
        event: str,
        payload: Any,
        exceptDevice: str | None = None,
        order: MessageOrder | None = None,
    ) -> int:
        """
        See L{IRouter.toDevices}.
        """
        devices = tuple(deviceIds)
        return self._record("toDevices", devices, event, payload, exceptDevice, devices, order)

    def toEveryone(self, event: str, payload: Any, exceptDevice: str | None = None) -> int:
        """
        See L{IRouter.toEveryone}.
        """
        return self._record("toEveryone", (), event, payload, exceptDevice, list(self.presence.allDevices()))

    def toEveryoneHere(self, event: str, payload: Any) -> int:
        """
        See L{IRouter.toEveryoneHere}.
        """
        return self._record("toEveryoneHere", (), event, payload, None, list(self.presence.allDevices()))

    def toConnected(self, event: str, payload: Any) -> None:
        """
        See L{IRouter.toConnected}.
        """
        self._record("toConnected", (), event, payload, None, list(self.presence.allDevices()))

    def disconnect(self, device: str) -> None:
        """
        See L{IRouter.disconnect}.
        """
        self.closed.append(device)

    def hold(self, device: str) -> None:
        """
        See L{IRouter.hold} (without a bound).
        """
        self.holding.setdefault(device, [])

    def release(self, device: str) -> list[tuple[str, dict[str, Any]]]:
        """
        See L{IRouter.release}.
        """
        return self.holding.pop(device, [])

    def whenWritable(self, device: str) -> Deferred[bool]:
        """
        See L{IRouter.whenWritable}: at once unless C{device} is in
        L{full}; C{False} for a device logged out.
        """
        if device in self.full:
            d: Deferred[bool] = Deferred()
            self.waiting.append((device, d))
            return d
        return succeed(self.presence.userOfDevice(device) is not None)

    def drain(self, device: str) -> None:
        """
        C{device}'s connection has room again: its waiters go on.
        """
        self.full.discard(device)
        waiting, self.waiting = self.waiting, []
        for which, d in waiting:
            if which == device:
                d.callback(self.presence.userOfDevice(device) is not None)
            else:
                self.waiting.append((which, d))

    # ---- reading what was sent

    def events(self, event: str) -> list[Delivery]:
        """
        The deliveries of C{event}, in order.
        """
        return [d for d in self.sent if d.event == event]

    def reached(self, event: str) -> list[Delivery]:
        """
        The deliveries of C{event} that reached at least one device.
        """
        return [d for d in self.sent if d.event == event and d.devices]

    def inbox(self, device: str) -> list[tuple[str, Any]]:
        """
        What C{device} was sent, in order.
        """
        return [(d.event, d.payload) for d in self.sent if device in d.devices]

    def clear(self) -> None:
        """
        Forget what was sent.
        """
        del self.sent[:]


class HandlerTestCase(SynchronousTestCase):
    """
    An L{IMCore} on a memory store with a recording router. Online: alice
    on a1 and a2, bob on b1 and b2, carol on c1, dave on d1; erin and frank
    are offline.
    """

    groupLimits = GroupLimits()
    roomLimits = RoomLimits()
    recallWindow = 120.0
    maxHistoryBytes = 1_000_000

    def setUp(self) -> None:
        """
        Build the core and log the users in.
        """
        self.clock = Clock()
        self.clock.advance(START)
        self.store = MemoryMessageStore()
        self.presence = Presence(self.clock)
        self.router = RecordingRouter(self.presence)
        settings = IMSettings(
            logEvents=False,
            recallWindow=self.recallWindow,
            groups=self.groupLimits,
            rooms=self.roomLimits,
            maxHistoryBytes=self.maxHistoryBytes,
        )
        self.core = IMCore(self.store, None, self.presence, self.router, self.clock, settings)  # type: ignore[arg-type]
        for userId, devices in (("alice", ("a1", "a2")), ("bob", ("b1", "b2")), ("carol", ("c1",)), ("dave", ("d1",))):
            for device in devices:
                self.presence.login(userId, device, userId.title(), None)

    def caller(self, device: str) -> Caller:
        """
        The caller logged in on C{device}.
        """
        return self.core.sessions.caller(device)

    def answer(self, result: Any) -> Any:
        """
        The result of a handler: a value, or a L{Deferred} or coroutine that
        must have succeeded already (the memory store answers at once).
        """
        if inspect.iscoroutine(result):
            result = Deferred.fromCoroutine(result)
        if isinstance(result, Deferred):
            return self.successResultOf(result)
        return result

    def refused(self, handler: Callable[..., Any], *args: Any) -> str:
        """
        Call C{handler} with C{args}; it must refuse.

        @return: the refusal's code.
        """
        try:
            result = handler(*args)
        except IMError as error:
            return error.code
        if inspect.iscoroutine(result):
            result = Deferred.fromCoroutine(result)
        self.assertIsInstance(result, Deferred, f"{handler} accepted: {result!r}")
        return self.failureResultOf(result, IMError).value.code  # type: ignore[no-any-return]

    def makeGroup(self, device: str, memberIds: Sequence[str], id: str = "g1", name: str = "Team") -> dict[str, Any]:
        """
        Create a group as the user of C{device}; forget its events.
        """
        ack = self.answer(self.core.groups.create(self.caller(device), {"name": name, "memberIds": list(memberIds), "id": id}))
        self.router.clear()
        return ack  # type: ignore[no-any-return]

    def send(self, device: str, content: str = "hi", id: str | None = None, **where: Any) -> dict[str, Any]:
        """
        Send a message as the user of C{device}.

        @return: the receipt.
        """
        data: dict[str, Any] = dict(where, content=content)
        if id is not None:
            data["id"] = id
        return self.answer(self.core.messaging.send(self.caller(device), data))  # type: ignore[no-any-return]

    def info(self, device: str, groupId: str = "g1") -> dict[str, Any]:
        """
        C{group:info} as the user of C{device}.
        """
        return self.answer(self.core.groups.info(self.caller(device), {"groupId": groupId}))  # type: ignore[no-any-return]

    def roles(self, groupId: str = "g1") -> dict[str, str]:
        """
        The members of a group and their roles, from the store.
        """
        state = self.successResultOf(self.store.group(groupId))
        assert state is not None
        return {userId: member.role for userId, member in state.members.items()}

    def groupHistory(self, groupId: str = "g1") -> list[dict[str, Any]]:
        """
        Every message of a group, from the store, as wire objects.
        """
        page = self.successResultOf(self.store.conversationHistory(groupConversation(groupId), 1000, None, None))
        return [m.toWire() for m in page.messages]

    def summary(self, device: str, groupId: str = "g1") -> dict[str, Any]:
        """
        The C{group:list} entry of a group for the user of C{device}.
        """
        listed = self.answer(self.core.groups.listGroups(self.caller(device), None))["groups"]
        (entry,) = [g for g in listed if g["id"] == groupId]
        return entry  # type: ignore[no-any-return]


class HistoryBytesTests(HandlerTestCase):
    """
    A history page weighs at most C{maxHistoryBytes} encoded, whatever its
    count: the messages nearest the cursor stay, C{hasMore} says more
    remain, and paging on gets them all.
    """

    maxHistoryBytes = 10_000

    def page(self, device: str, **request: Any) -> tuple[list[str], bool]:
        answer = self.answer(self.core.messaging.history(self.caller(device), request))
        if len(answer["messages"]) > 1:
            self.assertLessEqual(len(dumps(answer["messages"])), self.maxHistoryBytes)
        return [m["content"][-1] for m in answer["messages"]], answer["hasMore"]

    def seqOf(self, digit: str) -> int:
        """
        The seq of alice's message to bob that ends with C{digit}.
        """
        page = self.successResultOf(self.store.history("bob", "alice", None, 200, None, None))
        (seq,) = [m.seq for m in page.messages if m.content[-1] == digit]
        return seq

    def test_direct(self) -> None:
        """
        Ten messages of 3,000 characters come three to a page, back from
        the latest and forward from the start.
        """
        for i in range(10):
            self.send("a1", "x" * 2999 + str(i), toId="bob")
        self.assertEqual(self.page("b1", friendId="alice"), (["7", "8", "9"], True))
        before = self.seqOf("7")
        self.assertEqual(self.page("b1", friendId="alice", before=before), (["4", "5", "6"], True))
        before = self.seqOf("1")
        self.assertEqual(self.page("b1", friendId="alice", before=before), (["0"], False))
        self.assertEqual(self.page("b1", friendId="alice", after=0), (["0", "1", "2"], True))
        after = self.seqOf("8")
        self.assertEqual(self.page("b1", friendId="alice", after=after), (["9"], False))

    def test_oneLargerThanTheBound(self) -> None:
        """
        A message heavier than the bound comes alone, so paging goes on.
        """
        self.send("a1", "x" * 2999 + "0", toId="bob")
        self.send("a1", "y" * 11999 + "1", toId="bob")
        self.assertEqual(self.page("b1", friendId="alice"), (["1"], True))

    def test_group(self) -> None:
        """
        A group's history is bounded the same way.
        """
        self.makeGroup("a1", ["bob"])
        for i in range(5):
            self.send("a1", "x" * 2999 + str(i), groupId="g1")
        answer = self.answer(self.core.messaging.history(self.caller("b1"), {"groupId": "g1"}))
        self.assertEqual([m["content"][-1] for m in answer["messages"]], ["2", "3", "4"])
        self.assertTrue(answer["hasMore"])


class RecordingRouterTests(HandlerTestCase):
    """
    The test double itself.
    """

    def test_interface(self) -> None:
        """
        L{RecordingRouter} provides L{IRouter}, so it stands where the
        local router does.
        """
        self.assertTrue(verifyObject(IRouter, self.router))


class GroupCreateTests(HandlerTestCase):
    """
    C{group:create} and its idempotent retry.
    """

    def test_create(self) -> None:
        """
        The caller owns the group; the member list loses duplicates and the
        caller; users need not be online. The ack is the Group with members,
        which every member's devices get as C{group:joined}, followed by a
        C{create} system message to all of them.
        """
        ack = self.answer(
            self.core.groups.create(
                self.caller("a1"), {"name": "Team", "memberIds": ["bob", "carol", "bob", "alice", "erin"], "id": "g1"}
            )
        )
        self.assertEqual(
            {k: ack[k] for k in ("id", "name", "avatar", "ownerId", "createdAt", "memberCount")},
            {"id": "g1", "name": "Team", "avatar": None, "ownerId": "alice", "createdAt": START * 1000, "memberCount": 4},
        )
        self.assertEqual(
            [(m["userId"], m["role"]) for m in ack["members"]],
            [("alice", "owner"), ("bob", "member"), ("carol", "member"), ("erin", "member")],
        )
        (joined,) = self.router.events("group:joined")
        self.assertEqual(joined.payload, {"group": ack})
        self.assertEqual(set(joined.recipients), {"alice", "bob", "carol", "erin"})
        self.assertEqual(joined.devices, {"a1", "a2", "b1", "b2", "c1"})
        (system,) = self.router.events("message")
        self.assertEqual(system.devices, {"a1", "a2", "b1", "b2", "c1"})
        self.assertEqual(system.payload["type"], "system")
        self.assertEqual(system.payload["groupId"], "g1")
        self.assertEqual(system.payload["system"], {"action": "create", "by": "alice", "userIds": ["bob", "carol", "erin"]})
        self.assertEqual(ack["lastSeq"], system.payload["seq"])
        self.assertEqual([m["seq"] for m in self.groupHistory()], [system.payload["seq"]])

    def test_idempotentRetry(self) -> None:
        """
        The same creator sending the same C{id} again gets the group it
        made, and nothing is stored or sent again.
        """
        first = self.makeGroup("a1", ["bob"])
        stored = len(self.store.messages)
        again = self.answer(self.core.groups.create(self.caller("a2"), {"name": "Team", "memberIds": ["bob"], "id": "g1"}))
        self.assertEqual(again, first)
        self.assertEqual(self.router.sent, [])
        self.assertEqual(len(self.store.messages), stored)

    def test_idTakenByAnotherCreator(self) -> None:
        """
        An C{id} another creator's group has already gives a new group
        with a UUID; the first group is untouched.
        """
        self.makeGroup("a1", ["bob"])
        other = self.answer(self.core.groups.create(self.caller("c1"), {"name": "Other", "memberIds": [], "id": "g1"}))
        self.assertNotEqual(other["id"], "g1")
        uuid.UUID(other["id"])
        self.assertEqual(other["ownerId"], "carol")
        self.assertEqual(self.info("a1")["name"], "Team")
        # carol's retry finds her own group, not alice's
        again = self.answer(self.core.groups.create(self.caller("c1"), {"name": "Other", "memberIds": [], "id": "g1"}))
        self.assertEqual(again["id"], other["id"])

    def test_invalidName(self) -> None:
        """
        A missing, empty or blank name is C{INVALID_PAYLOAD} and creates
        nothing; a rename to a blank name changes nothing; so is a room's.
        """
        self.assertEqual(self.refused(self.core.groups.create, self.caller("a1"), {"memberIds": []}), INVALID_PAYLOAD)
        self.assertEqual(self.refused(self.core.groups.create, self.caller("a1"), {"name": "", "memberIds": []}), INVALID_PAYLOAD)
        self.assertEqual(
            self.refused(self.core.groups.create, self.caller("a1"), {"name": " \t\u3000", "memberIds": []}), INVALID_PAYLOAD
        )
        self.assertEqual(self.store.messages, {})
        self.makeGroup("a1", ["bob"])
        self.assertEqual(self.refused(self.core.groups.update, self.caller("a1"), {"groupId": "g1", "name": "  "}), INVALID_PAYLOAD)
        self.assertEqual(self.info("a1")["name"], "Team")
        self.assertEqual(self.refused(self.core.rooms.create, self.caller("a1"), {"name": "\n"}), INVALID_PAYLOAD)


class GroupMembershipTests(HandlerTestCase):
    """
    C{group:add_members}, C{group:remove_members}, C{group:set_role},
    C{group:update}.
    """

    def test_addMembers(self) -> None:
        """
        New members' devices get C{group:joined}; the others (the actor's
        devices too) C{group:members} with who was added; users already in
        are ignored; an C{add} system message goes to every member.
        """
        self.makeGroup("a1", ["bob", "carol"])
        ack = self.answer(self.core.groups.addMembers(self.caller("a1"), {"groupId": "g1", "userIds": ["bob", "dave", "frank"]}))
        self.assertEqual(ack["memberCount"], 5)
        (joined,) = self.router.events("group:joined")
        self.assertEqual((set(joined.recipients), joined.devices), ({"dave", "frank"}, {"d1"}))
        self.assertEqual(joined.payload, {"group": ack})
        (members,) = self.router.events("group:members")
        self.assertEqual(set(members.recipients), {"alice", "bob", "carol"})
        self.assertEqual(members.devices, {"a1", "a2", "b1", "b2", "c1"})
        self.assertEqual(members.payload, {"groupId": "g1", "added": ["dave", "frank"], "removed": [], "by": "alice"})
        (system,) = self.router.events("message")
        self.assertEqual(system.payload["system"], {"action": "add", "by": "alice", "userIds": ["dave", "frank"]})
        self.assertEqual(system.devices, {"a1", "a2", "b1", "b2", "c1", "d1"})

    def test_addNobodyNew(self) -> None:
        """
        Adding only current members changes and sends nothing.
        """
        self.makeGroup("a1", ["bob"])
        ack = self.answer(self.core.groups.addMembers(self.caller("a1"), {"groupId": "g1", "userIds": ["bob", "alice"]}))
        self.assertEqual(ack["memberCount"], 2)
        self.assertEqual(self.router.sent, [])

    def test_addRefused(self) -> None:
        """
        A plain member may not add (C{FORBIDDEN}); a stranger is told the
        group does not exist (C{NOT_FOUND}); nothing changes.
        """
        self.makeGroup("a1", ["bob"])
        self.assertEqual(self.refused(self.core.groups.addMembers, self.caller("b1"), {"groupId": "g1", "userIds": ["dave"]}), FORBIDDEN)
        self.assertEqual(self.refused(self.core.groups.addMembers, self.caller("d1"), {"groupId": "g1", "userIds": ["dave"]}), NOT_FOUND)
        self.assertEqual(self.roles(), {"alice": "owner", "bob": "member"})
        self.assertEqual(self.router.sent, [])

    def makeAdmins(self) -> None:
        """
        g1: alice owner, bob and erin admins, carol and dave members.
        """
        self.makeGroup("a1", ["bob", "carol", "dave", "erin"])
        for userId in ("bob", "erin"):
            self.answer(self.core.groups.setRole(self.caller("a1"), {"groupId": "g1", "userId": userId, "role": "admin"}))
        self.router.clear()

    def test_adminRemovesMember(self) -> None:
        """
        An admin removes a plain member: the removed user's devices get
        C{group:left} (reason C{removed}), the remaining members'
        C{group:members}; the removed user is a former member afterwards.
        """
        self.makeAdmins()
        ack = self.answer(self.core.groups.removeMembers(self.caller("b1"), {"groupId": "g1", "userIds": ["carol", "nobody"]}))
        self.assertEqual(ack["memberCount"], 4)
        (left,) = self.router.events("group:left")
        self.assertEqual((left.recipients, left.devices), (("carol",), {"c1"}))
        self.assertEqual(left.payload, {"groupId": "g1", "reason": "removed", "by": "bob"})
        (members,) = self.router.events("group:members")
        self.assertEqual(set(members.recipients), {"alice", "bob", "dave", "erin"})
        self.assertEqual(members.payload, {"groupId": "g1", "added": [], "removed": ["carol"], "by": "bob"})
        (system,) = self.router.events("message")
        self.assertEqual(system.payload["system"], {"action": "remove", "by": "bob", "userIds": ["carol"]})
        self.assertNotIn("c1", system.devices)
        self.assertEqual(self.refused(self.core.messaging.send, self.caller("c1"), {"groupId": "g1", "content": "x"}), FORBIDDEN)
        self.assertEqual(self.refused(self.core.groups.info, self.caller("c1"), {"groupId": "g1"}), NOT_FOUND)

    def test_adminMayNotRemoveAdmin(self) -> None:
        """
        An admin removing an admin is C{FORBIDDEN}, and so is the whole
        request when it also names a plain member: nobody is removed.
        """
        self.makeAdmins()
        for userIds in (["erin"], ["dave", "erin"]):
            code = self.refused(self.core.groups.removeMembers, self.caller("b1"), {"groupId": "g1", "userIds": userIds})
            self.assertEqual(code, FORBIDDEN)
        self.assertEqual(set(self.roles()), {"alice", "bob", "carol", "dave", "erin"})
        self.assertEqual(self.router.sent, [])

    def test_nobodyRemovesTheOwner(self) -> None:
        """
        Neither an admin nor the owner themself removes the owner.
        """
        self.makeAdmins()
        self.assertEqual(self.refused(self.core.groups.removeMembers, self.caller("b1"), {"groupId": "g1", "userIds": ["alice"]}), FORBIDDEN)
        self.assertEqual(self.refused(self.core.groups.removeMembers, self.caller("a1"), {"groupId": "g1", "userIds": ["alice"]}), FORBIDDEN)
        self.assertEqual(self.roles()["alice"], "owner")

    def test_ownerRemovesAdmin(self) -> None:
        """
        The owner removes an admin.
        """
        self.makeAdmins()
        self.answer(self.core.groups.removeMembers(self.caller("a1"), {"groupId": "g1", "userIds": ["bob"]}))
        self.assertNotIn("bob", self.roles())

    def test_memberMayNotRemove(self) -> None:
        """
        A plain member may not remove anyone, not even another plain member.
        """
        self.makeAdmins()
        self.assertEqual(self.refused(self.core.groups.removeMembers, self.caller("c1"), {"groupId": "g1", "userIds": ["dave"]}), FORBIDDEN)

    def test_setRole(self) -> None:
        """
        The owner makes a member admin: members' devices get
        C{group:updated} and a C{role} system message; setting the same
        role again changes and sends nothing.
        """
        self.makeGroup("a1", ["bob", "carol"])
        ack = self.answer(self.core.groups.setRole(self.caller("a1"), {"groupId": "g1", "userId": "bob", "role": "admin"}))
        self.assertEqual({m["userId"]: m["role"] for m in ack["members"]}["bob"], "admin")
        (updated,) = self.router.events("group:updated")
        self.assertEqual(updated.payload, {"group": ack})
        self.assertEqual(updated.devices, {"a1", "a2", "b1", "b2", "c1"})
        (system,) = self.router.events("message")
        self.assertEqual(system.payload["system"], {"action": "role", "by": "alice", "userIds": ["bob"], "role": "admin"})
        self.router.clear()
        self.answer(self.core.groups.setRole(self.caller("a1"), {"groupId": "g1", "userId": "bob", "role": "admin"}))
        self.assertEqual(self.router.sent, [])

    def test_setRoleRefused(self) -> None:
        """
        Only the owner sets roles (an admin: C{FORBIDDEN}); the target must
        be a member (C{NOT_FOUND}); the role must be one of the three
        (C{INVALID_PAYLOAD}).
        """
        self.makeAdmins()
        self.assertEqual(self.refused(self.core.groups.setRole, self.caller("b1"), {"groupId": "g1", "userId": "carol", "role": "admin"}), FORBIDDEN)
        self.assertEqual(self.refused(self.core.groups.setRole, self.caller("a1"), {"groupId": "g1", "userId": "frank", "role": "admin"}), NOT_FOUND)
        self.assertEqual(self.refused(self.core.groups.setRole, self.caller("a1"), {"groupId": "g1", "userId": "carol", "role": "king"}), INVALID_PAYLOAD)
        self.assertEqual(self.roles()["carol"], "member")

    def test_handOwnershipOver(self) -> None:
        """
        Role C{owner} hands the group over: the target is owner, the old
        owner admin, and the new owner may now set roles.
        """
        self.makeGroup("a1", ["bob", "carol"])
        ack = self.answer(self.core.groups.setRole(self.caller("a1"), {"groupId": "g1", "userId": "carol", "role": "owner"}))
        self.assertEqual(ack["ownerId"], "carol")
        self.assertEqual(self.roles(), {"alice": "admin", "bob": "member", "carol": "owner"})
        self.assertEqual([m["userId"] for m in ack["members"]][0], "carol")
        self.answer(self.core.groups.setRole(self.caller("c1"), {"groupId": "g1", "userId": "bob", "role": "admin"}))
        self.assertEqual(self.refused(self.core.groups.setRole, self.caller("a1"), {"groupId": "g1", "userId": "bob", "role": "member"}), FORBIDDEN)

    def test_update(self) -> None:
        """
        An admin renames the group: members get C{group:updated} and a
        C{rename} system message; a plain member is C{FORBIDDEN}.
        """
        self.makeGroup("a1", ["bob", "carol"])
        self.answer(self.core.groups.setRole(self.caller("a1"), {"groupId": "g1", "userId": "bob", "role": "admin"}))
        self.router.clear()
        ack = self.answer(self.core.groups.update(self.caller("b1"), {"groupId": "g1", "name": "Renamed"}))
        self.assertEqual(ack["name"], "Renamed")
        (updated,) = self.router.events("group:updated")
        self.assertEqual(updated.payload["group"]["name"], "Renamed")
        (system,) = self.router.events("message")
        self.assertEqual(system.payload["system"], {"action": "rename", "by": "bob", "name": "Renamed"})
        self.assertEqual(self.refused(self.core.groups.update, self.caller("c1"), {"groupId": "g1", "name": "x"}), FORBIDDEN)

    def test_updateChangingNothing(self) -> None:
        """
        An update to the name and avatar the group has stores nothing and
        announces nothing: history shows no update that was none. It is
        still answered with the group, and refused to a plain member.
        """
        self.makeGroup("a1", ["bob"])
        self.answer(self.core.groups.update(self.caller("a1"), {"groupId": "g1", "avatar": "https://a/x.png"}))
        self.router.clear()
        stored = len(self.store.messages)
        for change in ({"name": "Team"}, {"avatar": "https://a/x.png"}, {"name": "Team", "avatar": "https://a/x.png"}):
            ack = self.answer(self.core.groups.update(self.caller("a1"), {"groupId": "g1", **change}))
            self.assertEqual((ack["name"], ack["avatar"]), ("Team", "https://a/x.png"))
        self.assertEqual(self.router.sent, [])
        self.assertEqual(len(self.store.messages), stored)
        self.assertEqual(self.refused(self.core.groups.update, self.caller("b1"), {"groupId": "g1", "name": "Team"}), FORBIDDEN)
        # a change of either still is one
        self.answer(self.core.groups.update(self.caller("a1"), {"groupId": "g1", "name": "Team", "avatar": None}))
        (updated,) = self.router.events("group:updated")
        self.assertIsNone(updated.payload["group"]["avatar"])
        self.assertEqual(len(self.store.messages), stored + 1)


class GroupLeaveTests(HandlerTestCase):
    """
    C{group:leave}, the owner's handover, and the last member leaving.
    """

    def test_memberLeaves(self) -> None:
        """
        A member leaving: their devices get C{group:left} (reason C{left}),
        the others C{group:members}; the owner stays and nobody is sent
        C{group:updated}.
        """
        self.makeGroup("a1", ["bob", "carol"])
        self.assertEqual(self.answer(self.core.groups.leave(self.caller("b2"), {"groupId": "g1"})), {"groupId": "g1", "left": True})
        (left,) = self.router.events("group:left")
        self.assertEqual((left.devices, left.payload), ({"b1", "b2"}, {"groupId": "g1", "reason": "left", "by": "bob"}))
        (members,) = self.router.events("group:members")
        self.assertEqual(members.devices, {"a1", "a2", "c1"})
        self.assertEqual(members.payload, {"groupId": "g1", "added": [], "removed": ["bob"], "by": "bob"})
        self.assertEqual(self.router.events("group:updated"), [])
        self.assertEqual(self.roles(), {"alice": "owner", "carol": "member"})
        # a former member leaving again is told they are not a member any
        # more (they know the group), as for every event but group:info
        self.assertEqual(self.refused(self.core.groups.leave, self.caller("b1"), {"groupId": "g1"}), FORBIDDEN)

    def test_ownerHandsOverToLongestServingAdmin(self) -> None:
        """
        An owner leaving hands the group to the longest-serving admin, even
        when plain members joined earlier; the remaining members get
        C{group:updated} with the new owner and a C{role} system message
        after the C{leave} one.
        """
        self.makeGroup("a1", ["bob", "carol"])
        self.clock.advance(10)
        self.answer(self.core.groups.addMembers(self.caller("a1"), {"groupId": "g1", "userIds": ["erin", "dave"]}))
        self.answer(self.core.groups.setRole(self.caller("a1"), {"groupId": "g1", "userId": "dave", "role": "admin"}))
        self.clock.advance(10)
        self.answer(self.core.groups.addMembers(self.caller("a1"), {"groupId": "g1", "userIds": ["frank"]}))
        self.answer(self.core.groups.setRole(self.caller("a1"), {"groupId": "g1", "userId": "frank", "role": "admin"}))
        self.router.clear()
        self.answer(self.core.groups.leave(self.caller("a1"), {"groupId": "g1"}))
        self.assertEqual(
            self.roles(), {"bob": "member", "carol": "member", "dave": "owner", "erin": "member", "frank": "admin"}
        )
        (updated,) = self.router.events("group:updated")
        self.assertEqual(updated.payload["group"]["ownerId"], "dave")
        self.assertEqual(updated.devices, {"b1", "b2", "c1", "d1"})
        (left,) = self.router.events("group:left")
        self.assertEqual(left.devices, {"a1", "a2"})
        history = self.groupHistory()
        self.assertEqual([m["system"]["action"] for m in history[-2:]], ["leave", "role"])
        self.assertEqual(history[-1]["system"], {"action": "role", "by": "alice", "userIds": ["dave"], "role": "owner"})
        self.assertEqual(self.info("d1")["ownerId"], "dave")
        self.assertEqual(self.refused(self.core.groups.info, self.caller("a1"), {"groupId": "g1"}), NOT_FOUND)
        self.assertEqual(self.refused(self.core.messaging.send, self.caller("a1"), {"groupId": "g1", "content": "x"}), FORBIDDEN)

    def test_handoverAnnouncesLastSeq(self) -> None:
        """
        The C{group:updated} that announces the new owner carries the
        group's C{lastSeq} as it is then: the C{role} system message of the
        handover is stored before it is sent, so it is counted (as every
        other C{group:*} event counts the system message of its change).
        """
        self.makeGroup("a1", ["bob"])
        self.answer(self.core.groups.leave(self.caller("a1"), {"groupId": "g1"}))
        (updated,) = self.router.events("group:updated")
        role = self.groupHistory()[-1]
        self.assertEqual(role["system"]["action"], "role")
        self.assertEqual(updated.payload["group"]["lastSeq"], role["seq"])

    def test_ownerHandsOverToLongestServingMember(self) -> None:
        """
        Without an admin, the member who joined first inherits; members
        who joined together are ranked in the order they were named.
        """
        self.makeGroup("a1", ["carol", "bob"])
        self.answer(self.core.groups.leave(self.caller("a1"), {"groupId": "g1"}))
        self.assertEqual(self.roles(), {"carol": "owner", "bob": "member"})

    def test_lastMemberLeaving(self) -> None:
        """
        The last member leaving dissolves the group: it is gone for
        everyone.
        """
        self.makeGroup("a1", [])
        self.assertEqual(self.answer(self.core.groups.leave(self.caller("a1"), {"groupId": "g1"})), {"groupId": "g1", "left": True})
        self.assertIsNone(self.successResultOf(self.store.group("g1")))
        self.assertEqual(self.refused(self.core.groups.info, self.caller("a1"), {"groupId": "g1"}), NOT_FOUND)


class GroupDissolveTests(HandlerTestCase):
    """
    C{group:dissolve}.
    """

    def test_dissolve(self) -> None:
        """
        Only the owner dissolves; every member's devices get C{group:left}
        (reason C{dissolved}); afterwards the group is C{NOT_FOUND} for
        everyone, in every event, and out of everyone's list.
        """
        self.makeGroup("a1", ["bob", "carol"])
        self.send("b1", id="m1", groupId="g1")
        self.router.clear()
        self.assertEqual(self.refused(self.core.groups.dissolve, self.caller("b1"), {"groupId": "g1"}), FORBIDDEN)
        ack = self.answer(self.core.groups.dissolve(self.caller("a1"), {"groupId": "g1"}))
        self.assertEqual(ack, {"groupId": "g1", "dissolved": True})
        (left,) = self.router.events("group:left")
        self.assertEqual(left.devices, {"a1", "a2", "b1", "b2", "c1"})
        self.assertEqual(left.payload, {"groupId": "g1", "reason": "dissolved", "by": "alice"})
        for device in ("a1", "b1"):
            caller = self.caller(device)
            self.assertEqual(self.refused(self.core.groups.info, caller, {"groupId": "g1"}), NOT_FOUND)
            self.assertEqual(self.refused(self.core.messaging.send, caller, {"groupId": "g1", "content": "x"}), NOT_FOUND)
            self.assertEqual(self.refused(self.core.messaging.history, caller, {"groupId": "g1"}), NOT_FOUND)
            self.assertEqual(self.refused(self.core.messaging.read, caller, {"groupId": "g1", "upToSeq": 1}), NOT_FOUND)
            self.assertEqual(
                self.refused(self.core.groups.readReceipts, caller, {"groupId": "g1", "messageId": "m1"}, self.core.messaging.findSharedMessages),
                NOT_FOUND,
            )
            self.assertEqual(self.answer(self.core.groups.listGroups(caller, None)), {"groups": []})

    def test_clientIdReusable(self) -> None:
        """
        After dissolving, the creator's same C{id} makes a new group rather
        than finding the dissolved one.
        """
        self.makeGroup("a1", ["bob"])
        self.answer(self.core.groups.dissolve(self.caller("a1"), {"groupId": "g1"}))
        again = self.answer(self.core.groups.create(self.caller("a1"), {"name": "Again", "memberIds": ["carol"], "id": "g1"}))
        self.assertEqual((again["name"], again["memberCount"]), ("Again", 2))
        self.assertEqual(len(self.router.events("group:joined")), 1)
        self.assertEqual(self.info("c1", again["id"])["name"], "Again")


class GroupMessageTests(HandlerTestCase):
    """
    Messages to a group: delivery, the receipt, dedup, typing, history.
    """

    def test_delivery(self) -> None:
        """
        A group message goes once to every device of every member but the
        sending socket (the sender's other device included; offline members
        and non-members get nothing), with C{groupId} and no C{toId}; the
        receipt C{message:sent} (status C{sent}, with C{seq}) goes to the
        sending socket and is the ack.
        """
        self.makeGroup("a1", ["bob", "erin"])
        ack = self.send("a1", "hello", id="m1", groupId="g1")
        (message,) = self.router.events("message")
        self.assertEqual(message.devices, {"a2", "b1", "b2"})
        self.assertEqual(message.exceptDevice, "a1")
        self.assertEqual(message.payload["groupId"], "g1")
        self.assertNotIn("toId", message.payload)
        self.assertEqual((message.payload["id"], message.payload["content"], message.payload["fromId"]), ("m1", "hello", "alice"))
        self.assertEqual(
            ack, {"messageId": "m1", "status": "sent", "timestamp": START * 1000, "seq": message.payload["seq"]}
        )
        (receipt,) = self.router.events("message:sent")
        self.assertEqual((receipt.devices, receipt.payload), ({"a1"}, ack))
        self.assertEqual(self.groupHistory()[-1]["id"], "m1")

    def test_order(self) -> None:
        """
        Each new message (the group's system message included) is handed
        to the router with its place in the conversation as the store
        linked it, for a router that must keep order across nodes; a 1:1
        message too, on its own conversation.
        """
        self.answer(self.core.groups.create(self.caller("a1"), {"name": "Team", "memberIds": ["bob"], "id": "g1"}))
        self.send("a1", "one", id="m1", groupId="g1")
        self.send("b1", "two", id="m2", groupId="g1")
        self.send("a1", "direct", id="d1", toId="bob")
        created, one, two, direct = self.router.events("message")
        self.assertEqual(created.payload["type"], "system")
        self.assertEqual(
            [(m.order.conversation, m.order.seq, m.order.prevSeq) for m in (created, one, two, direct)],
            [
                (groupConversation("g1"), created.payload["seq"], 0),
                (groupConversation("g1"), one.payload["seq"], created.payload["seq"]),
                (groupConversation("g1"), two.payload["seq"], one.payload["seq"]),
                (directConversation("alice", "bob"), direct.payload["seq"], 0),
            ],
        )

    def test_dedup(self) -> None:
        """
        A resend with the same C{id} gets the same receipt again and is
        neither stored nor delivered a second time.
        """
        self.makeGroup("a1", ["bob"])
        first = self.send("a1", "hello", id="m1", groupId="g1")
        stored = len(self.store.messages)
        self.router.clear()
        again = self.send("a1", "changed", id="m1", groupId="g1")
        self.assertEqual(again, first)
        self.assertEqual(self.router.events("message"), [])
        (receipt,) = self.router.events("message:sent")
        self.assertEqual(receipt.devices, {"a1"})
        self.assertEqual(len(self.store.messages), stored)

    def test_idInAnotherConversation(self) -> None:
        """
        The sender's id used again in another group, in a chat room or to
        a user is no resend: C{INVALID_PAYLOAD} naming the id; nothing
        stored or delivered. (It was answered with the first message's
        receipt, so the sender took it for sent.)
        """
        self.makeGroup("a1", ["bob"])
        self.makeGroup("a1", ["carol"], id="g2")
        self.answer(self.core.rooms.create(self.caller("a1"), {"name": "R", "id": "r1"}))
        self.answer(self.core.rooms.join(self.caller("a1"), {"roomId": "r1"}))
        self.send("a1", "hello", id="m1", groupId="g1")
        stored = len(self.store.messages)
        self.router.clear()
        for where in ({"groupId": "g2"}, {"roomId": "r1"}, {"toId": "bob"}):
            data = dict(where, content="elsewhere", id="m1")
            self.assertEqual(self.refused(self.core.messaging.send, self.caller("a1"), data), INVALID_PAYLOAD)
        self.assertEqual(len(self.store.messages), stored)
        self.assertEqual(self.router.events("message"), [])
        self.assertEqual(self.router.events("message:sent"), [])

    def test_refused(self) -> None:
        """
        A non-member is told C{NOT_FOUND}, a former member C{FORBIDDEN},
        and naming two conversations is C{INVALID_PAYLOAD}; nothing is
        stored.
        """
        self.makeGroup("a1", ["bob", "carol"])
        self.answer(self.core.groups.removeMembers(self.caller("a1"), {"groupId": "g1", "userIds": ["carol"]}))
        stored = len(self.store.messages)
        self.router.clear()
        send = self.core.messaging.send
        self.assertEqual(self.refused(send, self.caller("d1"), {"groupId": "g1", "content": "x"}), NOT_FOUND)
        self.assertEqual(self.refused(send, self.caller("d1"), {"groupId": "nope", "content": "x"}), NOT_FOUND)
        self.assertEqual(self.refused(send, self.caller("c1"), {"groupId": "g1", "content": "x"}), FORBIDDEN)
        self.assertEqual(self.refused(send, self.caller("a1"), {"groupId": "g1", "toId": "bob", "content": "x"}), INVALID_PAYLOAD)
        self.assertEqual(len(self.store.messages), stored)
        self.assertEqual(self.router.events("message"), [])

    def test_history(self) -> None:
        """
        Members see the whole history, those who joined later included;
        a former member is C{FORBIDDEN}; a stranger C{NOT_FOUND}.
        """
        self.makeGroup("a1", ["bob"])
        self.send("a1", "one", id="m1", groupId="g1")
        self.answer(self.core.groups.addMembers(self.caller("a1"), {"groupId": "g1", "userIds": ["carol"]}))
        page = self.answer(self.core.messaging.history(self.caller("c1"), {"groupId": "g1"}))
        self.assertEqual(page["groupId"], "g1")
        self.assertEqual([m.get("system", {}).get("action", m["id"]) for m in page["messages"]], ["create", "m1", "add"])
        self.assertFalse(page["hasMore"])
        self.answer(self.core.groups.leave(self.caller("b1"), {"groupId": "g1"}))
        self.assertEqual(self.refused(self.core.messaging.history, self.caller("b1"), {"groupId": "g1"}), FORBIDDEN)
        self.assertEqual(self.refused(self.core.messaging.history, self.caller("d1"), {"groupId": "g1"}), NOT_FOUND)

    def test_typing(self) -> None:
        """
        C{typing} in a group goes to every member device but the sending
        socket, and is not stored.
        """
        self.makeGroup("a1", ["bob"])
        stored = len(self.store.messages)
        ack = self.answer(self.core.messaging.typing(self.caller("a1"), {"groupId": "g1", "isTyping": True}))
        self.assertEqual(ack, {"groupId": "g1", "delivered": True})
        (typing,) = self.router.events("typing")
        self.assertEqual(typing.devices, {"a2", "b1", "b2"})
        self.assertEqual(typing.payload, {"fromId": "alice", "fromName": "Alice", "isTyping": True, "groupId": "g1"})
        self.assertEqual(len(self.store.messages), stored)
        self.assertEqual(self.refused(self.core.messaging.typing, self.caller("d1"), {"groupId": "g1", "isTyping": True}), NOT_FOUND)


class GroupReadTests(HandlerTestCase):
    """
    The read cursor (C{message:read {groupId}}) and C{group:read_receipts}.
    """

    def setUp(self) -> None:
        """
        g1: alice and bob; bob sent three messages, C{self.seqs}.
        """
        super().setUp()
        self.makeGroup("a1", ["bob"])
        self.seqs = [self.send("b1", f"m{i}", id=f"m{i}", groupId="g1")["seq"] for i in range(3)]
        self.router.clear()

    def read(self, device: str, upToSeq: int) -> dict[str, Any]:
        """
        C{message:read {groupId: g1, upToSeq}} from C{device}.
        """
        return self.answer(self.core.messaging.read(self.caller(device), {"groupId": "g1", "upToSeq": upToSeq}))  # type: ignore[no-any-return]

    def test_moveForward(self) -> None:
        """
        Reading moves the cursor; the ack says where it is now; the
        reader's other devices (only they) are told.
        """
        ack = self.read("a1", self.seqs[1])
        self.assertEqual(ack, {"readerId": "alice", "groupId": "g1", "upToSeq": self.seqs[1], "timestamp": START * 1000})
        (told,) = self.router.sent
        self.assertEqual((told.event, told.devices, told.payload), ("message:read", {"a2"}, ack))
        self.assertEqual(self.successResultOf(self.store.readCursors(groupConversation("g1"))), {"alice": self.seqs[1]})

    def test_neverBack(self) -> None:
        """
        Reading up to an earlier seq leaves the cursor where it is and
        tells nobody.
        """
        self.read("a1", self.seqs[2])
        self.router.clear()
        ack = self.read("a2", self.seqs[0])
        self.assertEqual(ack["upToSeq"], self.seqs[2])
        self.assertEqual(self.router.sent, [])

    def test_cappedAtLastSeq(self) -> None:
        """
        A cursor never goes past the group's last message; asking for the
        same place again tells nobody.
        """
        ack = self.read("a1", self.seqs[2] + 100)
        self.assertEqual(ack["upToSeq"], self.seqs[2])
        self.assertEqual(len(self.router.sent), 1)
        self.router.clear()
        self.assertEqual(self.read("a1", self.seqs[2] + 100)["upToSeq"], self.seqs[2])
        self.assertEqual(self.router.sent, [])
        self.assertEqual(self.summary("a1")["readSeq"], self.seqs[2])

    def test_readRefused(self) -> None:
        """
        A stranger may not read a group (C{NOT_FOUND}).
        """
        self.assertEqual(self.refused(self.core.messaging.read, self.caller("d1"), {"groupId": "g1", "upToSeq": 1}), NOT_FOUND)

    def test_readReceipts(self) -> None:
        """
        C{group:read_receipts} splits the current members but the sender
        by read cursor (at or past the message: read), in member order;
        members who joined after the message are in neither list.
        """
        self.clock.advance(1)
        self.answer(self.core.groups.addMembers(self.caller("a1"), {"groupId": "g1", "userIds": ["carol", "dave"]}))
        m3 = self.send("a1", "later", id="later", groupId="g1")["seq"]
        self.read("b1", m3)
        self.read("c1", m3 - 1)

        def receipts(device: str, messageId: str) -> dict[str, Any]:
            return self.answer(  # type: ignore[no-any-return]
                self.core.groups.readReceipts(
                    self.caller(device), {"groupId": "g1", "messageId": messageId}, self.core.messaging.findSharedMessages
                )
            )

        self.assertEqual(receipts("c1", "later"), {"messageId": "later", "readBy": ["bob"], "unreadBy": ["carol", "dave"]})
        # bob's m0: alice has no cursor; carol and dave joined after it
        # (their cursors start past it)
        self.assertEqual(receipts("a1", "m0"), {"messageId": "m0", "readBy": [], "unreadBy": ["alice"]})
        self.answer(self.core.groups.removeMembers(self.caller("a1"), {"groupId": "g1", "userIds": ["dave"]}))
        self.assertEqual(receipts("a1", "later")["unreadBy"], ["carol"])

    def test_readReceiptsOfOwnId(self) -> None:
        """
        Two members' messages with one id (ids are per sender): a sender
        gets the receipts of their own (it got the other's, in which it
        was itself unread); anyone else those of the latest.
        """
        bobs = self.send("b1", "bob's", id="x1", groupId="g1")["seq"]
        alices = self.send("a1", "alice's", id="x1", groupId="g1")["seq"]
        self.read("a1", alices)
        self.read("b1", bobs)

        def receipts(device: str) -> dict[str, Any]:
            return self.answer(  # type: ignore[no-any-return]
                self.core.groups.readReceipts(
                    self.caller(device), {"groupId": "g1", "messageId": "x1"}, self.core.messaging.findSharedMessages
                )
            )

        self.assertEqual(receipts("b1"), {"messageId": "x1", "readBy": ["alice"], "unreadBy": []})
        self.assertEqual(receipts("a1"), {"messageId": "x1", "readBy": [], "unreadBy": ["bob"]})

    def test_readReceiptsRefused(self) -> None:
        """
        An unknown message, or a message of another group, is
        C{NOT_FOUND}; so is a stranger asking.
        """
        self.makeGroup("b1", ["alice"], id="g2")
        self.send("b1", "elsewhere", id="other", groupId="g2")
        find = self.core.messaging.findSharedMessages
        self.assertEqual(self.refused(self.core.groups.readReceipts, self.caller("a1"), {"groupId": "g1", "messageId": "nope"}, find), NOT_FOUND)
        self.assertEqual(self.refused(self.core.groups.readReceipts, self.caller("a1"), {"groupId": "g1", "messageId": "other"}, find), NOT_FOUND)
        self.assertEqual(self.refused(self.core.groups.readReceipts, self.caller("d1"), {"groupId": "g1", "messageId": "m0"}, find), NOT_FOUND)


class GroupListTests(HandlerTestCase):
    """
    C{group:list}: unread counts from read cursors, order of activity.
    """

    def test_unreadCount(self) -> None:
        """
        A member's unread count is the messages after their cursor that
        others sent (system messages by others included, their own
        messages never); reading lowers it.
        """
        self.makeGroup("a1", ["bob"])
        self.send("b1", id="b-1", groupId="g1")
        self.send("b1", id="b-2", groupId="g1")
        last = self.send("a1", id="a-1", groupId="g1")
        alice = self.summary("a1")
        self.assertEqual((alice["unreadCount"], alice["readSeq"], alice["lastSeq"]), (2, 0, last["seq"]))
        self.assertEqual(alice["lastMessage"]["id"], "a-1")
        # bob: alice's create system message and her message
        self.assertEqual(self.summary("b1")["unreadCount"], 2)
        self.answer(self.core.messaging.read(self.caller("b1"), {"groupId": "g1", "upToSeq": last["seq"] - 1}))
        self.assertEqual((self.summary("b1")["unreadCount"], self.summary("b1")["readSeq"]), (1, last["seq"] - 1))
        self.answer(self.core.messaging.read(self.caller("a1"), {"groupId": "g1", "upToSeq": last["seq"]}))
        self.assertEqual(self.summary("a1")["unreadCount"], 0)

    def test_newMemberStartsAtArrival(self) -> None:
        """
        A member added later starts with their cursor at the group's last
        message when they arrived: what was said before does not count as
        unread (only the C{add} message recording their arrival, and what
        follows).
        """
        self.makeGroup("a1", ["bob"])
        for i in range(4):
            before = self.send("b1", id=f"b-{i}", groupId="g1")["seq"]
        self.answer(self.core.groups.addMembers(self.caller("a1"), {"groupId": "g1", "userIds": ["carol"]}))
        carol = self.summary("c1")
        self.assertEqual((carol["readSeq"], carol["unreadCount"]), (before, 1))
        self.send("b1", id="after", groupId="g1")
        self.assertEqual(self.summary("c1")["unreadCount"], 2)

    def test_order(self) -> None:
        """
        Groups are listed most recent activity first, and the C{groups}
        entries carry the summary fields.
        """
        self.makeGroup("a1", ["bob"], id="g1")
        self.makeGroup("a1", ["bob"], id="g2")
        listed = self.answer(self.core.groups.listGroups(self.caller("b1"), None))["groups"]
        self.assertEqual([g["id"] for g in listed], ["g2", "g1"])
        self.send("a1", id="x", groupId="g1")
        listed = self.answer(self.core.groups.listGroups(self.caller("b1"), None))["groups"]
        self.assertEqual([g["id"] for g in listed], ["g1", "g2"])
        self.assertEqual(
            set(listed[0]),
            {"id", "name", "avatar", "ownerId", "createdAt", "memberCount", "lastSeq", "unreadCount", "readSeq", "lastMessage"},
        )


class RoomTests(HandlerTestCase):
    """
    Chat rooms: membership per socket, C{room:joined}/C{room:left} per
    user, messages only from sockets in the room. alice also has a3, which
    never joins.
    """

    def setUp(self) -> None:
        """
        alice creates the public room r1.
        """
        super().setUp()
        self.presence.login("alice", "a3", "Alice", None)
        self.room = self.answer(self.core.rooms.create(self.caller("a1"), {"name": "Lobby", "id": "r1"}))
        self.router.clear()

    def join(self, device: str, roomId: str = "r1") -> dict[str, Any]:
        """
        C{room:join} from C{device}.
        """
        return self.answer(self.core.rooms.join(self.caller(device), {"roomId": roomId}))  # type: ignore[no-any-return]

    def leave(self, device: str, roomId: str = "r1") -> dict[str, Any]:
        """
        C{room:leave} from C{device}.
        """
        return self.answer(self.core.rooms.leave(self.caller(device), {"roomId": roomId}))  # type: ignore[no-any-return]

    def test_create(self) -> None:
        """
        The Room: public by default, nobody in it; a retry with the same id
        returns it.
        """
        self.assertEqual(
            self.room,
            {"id": "r1", "name": "Lobby", "topic": None, "public": True, "createdBy": "alice", "createdAt": START * 1000, "onlineCount": 0},
        )
        self.assertEqual(self.answer(self.core.rooms.create(self.caller("a2"), {"name": "Lobby", "id": "r1"})), self.room)

    def test_recordsCacheBounded(self) -> None:
        """
        At most C{maxCachedRooms} room records are kept, the oldest
        dropped first; a dropped one is read from the store again.
        """
        rooms = self.core.rooms
        rooms.maxCachedRooms = 2
        for roomId in ("r2", "r3"):
            self.answer(rooms.create(self.caller("a1"), {"name": roomId, "id": roomId}))
        self.assertEqual(sorted(rooms._records), ["r2", "r3"])
        self.assertEqual(self.join("b1", "r1")["room"]["id"], "r1")
        self.assertEqual(sorted(rooms._records), ["r1", "r3"])

    def test_joinedOnlyForFirstSocket(self) -> None:
        """
        When a user's first socket enters, the sockets already in the room
        get C{room:joined}; their second socket entering tells nobody.
        """
        first = self.join("a1")
        self.assertEqual(first["members"], [{"id": "alice", "name": "Alice", "avatar": "", "status": "online"}])
        self.assertEqual((first["room"]["onlineCount"], first["messages"]), (1, []))
        self.assertEqual(self.router.reached("room:joined"), [])
        second = self.join("b1")
        self.assertEqual([u["id"] for u in second["members"]], ["alice", "bob"])
        self.assertEqual(second["room"]["onlineCount"], 2)
        (joined,) = self.router.reached("room:joined")
        self.assertEqual(joined.devices, {"a1"})
        self.assertEqual(joined.payload, {"roomId": "r1", "user": {"id": "bob", "name": "Bob", "avatar": "", "status": "online"}})
        self.router.clear()
        third = self.join("a2")
        self.assertEqual(third["room"]["onlineCount"], 2)
        self.assertEqual(self.router.reached("room:joined"), [])

    def test_joinAgain(self) -> None:
        """
        Joining again from the same socket answers the same and sends
        nothing.
        """
        self.join("a1")
        self.join("b1")
        self.router.clear()
        self.assertEqual(self.join("b1")["room"]["onlineCount"], 2)
        self.assertEqual(self.router.reached("room:joined"), [])

    def test_leftOnlyForLastSocket(self) -> None:
        """
        C{room:left} goes to the others when a user's last socket leaves,
        not before; leaving a room the socket is not in says so.
        """
        for device in ("a1", "a2", "b1"):
            self.join(device)
        self.router.clear()
        self.assertEqual(self.leave("a1"), {"roomId": "r1", "left": True})
        self.assertEqual(self.router.reached("room:left"), [])
        self.leave("a2")
        (left,) = self.router.reached("room:left")
        self.assertEqual((left.devices, left.payload), ({"b1"}, {"roomId": "r1", "userId": "alice"}))
        self.assertEqual(self.leave("a2"), {"roomId": "r1", "left": False})

    def test_disconnectLeaves(self) -> None:
        """
        A socket that disconnects leaves its rooms: the others are told
        when it was its user's last one.
        """
        self.join("a1")
        self.join("b1")
        self.router.clear()
        self.core.sessions.disconnected("b1", "transport close")
        (left,) = self.router.reached("room:left")
        self.assertEqual((left.devices, left.payload), ({"a1"}, {"roomId": "r1", "userId": "bob"}))
        self.assertEqual(self.answer(self.core.rooms.listRooms(self.caller("a1"), None))["rooms"][0]["onlineCount"], 1)

    def test_messagesFromSocketsInTheRoom(self) -> None:
        """
        A room message goes to every socket in the room but the sender's
        (not to the sender's sockets outside it); a socket not in the room
        may not send (C{FORBIDDEN}), not even of a user who is in it.
        """
        for device in ("a1", "a2", "b1"):
            self.join(device)
        self.router.clear()
        ack = self.send("b1", "hi all", id="r-m", roomId="r1")
        (message,) = self.router.events("message")
        self.assertEqual(message.devices, {"a1", "a2"})
        self.assertEqual(message.payload["roomId"], "r1")
        self.assertEqual((ack["status"], ack["seq"]), ("sent", message.payload["seq"]))
        send = self.core.messaging.send
        self.assertEqual(self.refused(send, self.caller("a3"), {"roomId": "r1", "content": "x"}), FORBIDDEN)
        self.assertEqual(self.refused(send, self.caller("d1"), {"roomId": "r1", "content": "x"}), FORBIDDEN)
        self.assertEqual(self.refused(send, self.caller("a1"), {"roomId": "nope", "content": "x"}), NOT_FOUND)

    def test_joinHistory(self) -> None:
        """
        The join ack carries the latest 50 messages, oldest first.
        """
        self.join("a1")
        seqs = [self.send("a1", f"n{i}", roomId="r1")["seq"] for i in range(52)]
        answer = self.join("b1")
        self.assertEqual([m["seq"] for m in answer["messages"]], seqs[-50:])

    def test_joinRefused(self) -> None:
        """
        An unknown room is C{NOT_FOUND}.
        """
        self.assertEqual(self.refused(self.core.rooms.join, self.caller("a1"), {"roomId": "nope"}), NOT_FOUND)

    def test_history(self) -> None:
        """
        A public room's history is open to any logged-in user; a
        non-public one's only to sockets in it (else C{NOT_FOUND}).
        """
        self.join("a1")
        self.send("a1", "public", id="p", roomId="r1")
        page = self.answer(self.core.messaging.history(self.caller("d1"), {"roomId": "r1"}))
        self.assertEqual([m["id"] for m in page["messages"]], ["p"])
        self.answer(self.core.rooms.create(self.caller("a1"), {"name": "Back", "id": "r2", "public": False}))
        self.join("a1", "r2")
        self.send("a1", "secret", id="s", roomId="r2")
        self.assertEqual(self.refused(self.core.messaging.history, self.caller("d1"), {"roomId": "r2"}), NOT_FOUND)
        self.assertEqual(self.refused(self.core.messaging.history, self.caller("a2"), {"roomId": "r2"}), NOT_FOUND)
        page = self.answer(self.core.messaging.history(self.caller("a1"), {"roomId": "r2"}))
        self.assertEqual([m["id"] for m in page["messages"]], ["s"])

    def test_list(self) -> None:
        """
        C{room:list}: the public rooms, and the non-public ones this socket
        is in.
        """
        self.answer(self.core.rooms.create(self.caller("a1"), {"name": "Back", "id": "r2", "public": False}))
        self.join("b1", "r2")
        listed = lambda device: [r["id"] for r in self.answer(self.core.rooms.listRooms(self.caller(device), None))["rooms"]]
        self.assertEqual(listed("b1"), ["r1", "r2"])
        self.assertEqual(listed("b2"), ["r1"])


class RoomLimitTests(HandlerTestCase):
    """
    The bound on sockets per room.
    """

    roomLimits = RoomLimits(maxSockets=2)

    def test_full(self) -> None:
        """
        A socket entering a full room is refused C{TOO_LARGE}; one already
        in may join again.
        """
        self.answer(self.core.rooms.create(self.caller("a1"), {"name": "Small", "id": "r1"}))
        for device in ("a1", "b1"):
            self.answer(self.core.rooms.join(self.caller(device), {"roomId": "r1"}))
        self.assertEqual(self.refused(self.core.rooms.join, self.caller("c1"), {"roomId": "r1"}), TOO_LARGE)
        self.answer(self.core.rooms.join(self.caller("a1"), {"roomId": "r1"}))


class RecallTests(HandlerTestCase):
    """
    C{message:recall}: the sender within the window (120 s here), a
    group's owner and admins any time; the stub; who is told.
    """

    def recall(self, device: str, messageId: str, **hint: Any) -> dict[str, Any]:
        """
        C{message:recall} from C{device}.
        """
        return self.answer(self.core.messaging.recall(self.caller(device), dict(hint, messageId=messageId)))  # type: ignore[no-any-return]

    def test_directWithinWindow(self) -> None:
        """
        The sender recalls a 1:1 message exactly at the window's end: both
        users' devices are told, and history keeps a stub.
        """
        sent = self.send("a1", "oops", id="m1", toId="erin")
        seq = self.store.messages[max(self.store.messages)].seq
        self.clock.advance(self.recallWindow)
        self.router.clear()
        self.assertEqual(self.recall("a2", "m1"), {"messageId": "m1", "recalled": True})
        (recalled,) = self.router.events("message:recalled")
        self.assertEqual(set(recalled.recipients), {"alice", "erin"})
        self.assertEqual(
            recalled.payload,
            {
                "messageId": "m1",
                "seq": seq,
                "conversation": {"toId": "erin"},
                "fromId": "alice",
                "by": "alice",
                "timestamp": sent["timestamp"] + int(self.recallWindow * 1000),
            },
        )
        page = self.successResultOf(self.store.history("erin", "alice", None, 10, None, None))
        (stub,) = [m.toWire() for m in page.messages]
        self.assertEqual((stub["content"], stub["recalled"], stub["recalledBy"]), ("", True, "alice"))

    def test_directAfterWindow(self) -> None:
        """
        A millisecond past the window the sender is C{FORBIDDEN} and the
        message keeps its content.
        """
        self.send("a1", "kept", id="m1", toId="bob")
        self.clock.advance(self.recallWindow + 0.001)
        self.router.clear()
        self.assertEqual(self.refused(self.core.messaging.recall, self.caller("a1"), {"messageId": "m1"}), FORBIDDEN)
        self.assertEqual(self.router.events("message:recalled"), [])
        self.assertEqual(self.successResultOf(self.store.findMessage("alice", "m1")).content, "kept")

    def test_directOthers(self) -> None:
        """
        The recipient of a 1:1 message who names the conversation (C{toId},
        the other side) may not recall it (C{FORBIDDEN}); without C{toId}
        there is no sender to find it under (C{NOT_FOUND}); anyone else is
        told it does not exist (C{NOT_FOUND}).
        """
        self.send("a1", "x", id="m1", toId="bob")
        recall = self.core.messaging.recall
        self.assertEqual(self.refused(recall, self.caller("b1"), {"messageId": "m1", "toId": "alice"}), FORBIDDEN)
        self.assertEqual(self.refused(recall, self.caller("b1"), {"messageId": "m1"}), NOT_FOUND)
        self.assertEqual(self.refused(recall, self.caller("d1"), {"messageId": "m1", "toId": "alice"}), NOT_FOUND)

    def test_recallRefusalsSayWhy(self) -> None:
        """
        A member recalling another member's group message hears that only
        its sender (or the owner and admins) may, not that the window is
        over; the group's owner may not recall its system messages.
        """
        self.makeGroup("a1", ["bob", "carol"])
        self.send("b1", "mine", id="gm1", groupId="g1")
        failure = self.failureResultOf(
            Deferred.fromCoroutine(self.core.messaging.recall(self.caller("c1"), {"messageId": "gm1", "groupId": "g1"})),
            IMError,
        )
        self.assertEqual(failure.value.code, FORBIDDEN)
        self.assertIn("only its sender", failure.value.message)
        page = self.answer(self.core.messaging.history(self.caller("a1"), {"groupId": "g1"}))
        (system, *_) = [m for m in page["messages"] if m["type"] == "system"]
        failure = self.failureResultOf(
            Deferred.fromCoroutine(
                self.core.messaging.recall(self.caller("a1"), {"messageId": system["id"], "groupId": "g1"})
            ),
            IMError,
        )
        self.assertEqual((failure.value.code, failure.value.message), (FORBIDDEN, "system messages cannot be recalled"))

    def test_recalledAlready(self) -> None:
        """
        Recalling a recalled message answers the same and tells nobody.
        """
        self.send("a1", "x", id="m1", toId="bob")
        self.recall("a1", "m1")
        self.router.clear()
        self.assertEqual(self.recall("a1", "m1"), {"messageId": "m1", "recalled": True})
        self.assertEqual(self.router.sent, [])

    def test_groupAdminAnyTime(self) -> None:
        """
        In a group an admin recalls a member's file message long after the
        window: the stub loses content and file, gains C{recalledBy}, and
        every member's devices are told; the sender and another member are
        C{FORBIDDEN} by then.
        """
        self.makeGroup("a1", ["bob", "carol", "erin"])
        self.answer(self.core.groups.setRole(self.caller("a1"), {"groupId": "g1", "userId": "carol", "role": "admin"}))
        receipt = self.answer(
            self.core.messaging.send(
                self.caller("b1"),
                {"groupId": "g1", "id": "f1", "type": "file", "content": "a.txt", "fileUrl": "/files/x/a.txt", "fileName": "a.txt"},
            )
        )
        self.clock.advance(3600)
        self.router.clear()
        self.assertEqual(self.refused(self.core.messaging.recall, self.caller("b1"), {"messageId": "f1"}), FORBIDDEN)
        self.assertEqual(self.refused(self.core.messaging.recall, self.caller("d1"), {"messageId": "f1"}), NOT_FOUND)
        self.answer(self.core.groups.setRole(self.caller("a1"), {"groupId": "g1", "userId": "carol", "role": "member"}))
        self.assertEqual(self.refused(self.core.messaging.recall, self.caller("c1"), {"messageId": "f1", "groupId": "g1"}), FORBIDDEN)
        self.answer(self.core.groups.setRole(self.caller("a1"), {"groupId": "g1", "userId": "carol", "role": "admin"}))
        self.router.clear()
        self.assertEqual(self.recall("c1", "f1", groupId="g1"), {"messageId": "f1", "recalled": True})
        (recalled,) = self.router.events("message:recalled")
        self.assertEqual(set(recalled.recipients), {"alice", "bob", "carol", "erin"})
        self.assertEqual(recalled.devices, {"a1", "a2", "b1", "b2", "c1"})
        self.assertEqual(
            recalled.payload,
            {
                "messageId": "f1",
                "seq": receipt["seq"],
                "conversation": {"groupId": "g1"},
                "fromId": "bob",
                "by": "carol",
                "timestamp": (START + 3600) * 1000,
            },
        )
        (stub,) = [m for m in self.groupHistory() if m["id"] == "f1"]
        self.assertEqual((stub["content"], stub["recalled"], stub["recalledBy"]), ("", True, "carol"))
        self.assertNotIn("fileUrl", stub)
        self.assertNotIn("fileName", stub)

    def test_groupOwnerAnyTime(self) -> None:
        """
        The owner recalls a member's message after the window.
        """
        self.makeGroup("a1", ["bob"])
        self.send("b1", "x", id="m1", groupId="g1")
        self.clock.advance(10 * self.recallWindow)
        self.assertEqual(self.recall("a1", "m1"), {"messageId": "m1", "recalled": True})
        (recalled,) = self.router.events("message:recalled")
        self.assertEqual(recalled.payload["by"], "alice")

    def test_room(self) -> None:
        """
        A room message recalled by its sender: the sockets in the room are
        told; someone else in the room is C{FORBIDDEN}.
        """
        self.answer(self.core.rooms.create(self.caller("a1"), {"name": "Lobby", "id": "r1"}))
        for device in ("a1", "b1"):
            self.answer(self.core.rooms.join(self.caller(device), {"roomId": "r1"}))
        self.send("a1", "x", id="rm", roomId="r1")
        self.router.clear()
        self.assertEqual(self.refused(self.core.messaging.recall, self.caller("b1"), {"messageId": "rm"}), FORBIDDEN)
        self.recall("a1", "rm")
        (recalled,) = self.router.events("message:recalled")
        self.assertEqual((recalled.devices, recalled.payload["conversation"]), ({"a1", "b1"}, {"roomId": "r1"}))


class CatchUpTests(HandlerTestCase):
    """
    A 1:1 message to an offline user, and the login that catches them up.
    """

    def test_offlineThenLogin(self) -> None:
        """
        Messages to an offline user are acknowledged C{offline}; at login
        their first device gets them in seq order after C{user:login:success}
        and C{online_users}, then the C{groups} summary; the senders learn
        they were delivered. A second device gets the summary, not the
        messages again.
        """
        self.makeGroup("a1", ["erin"])
        receipts = [self.send("a1", f"n{i}", id=f"n{i}", toId="erin") for i in range(3)]
        self.assertEqual([r["status"] for r in receipts], ["offline"] * 3)
        self.router.clear()
        ack = self.core.sessions.login("e1", "127.0.0.1", {"id": "erin", "name": "Erin"})
        self.assertEqual(ack["id"], "erin")
        inbox = self.router.inbox("e1")
        self.assertEqual(
            [event for event, _ in inbox], ["user:login:success", "online_users", "message", "message", "message", "groups"]
        )
        messages = [payload for event, payload in inbox if event == "message"]
        self.assertEqual([m["id"] for m in messages], ["n0", "n1", "n2"])
        self.assertEqual([m["seq"] for m in messages], sorted(m["seq"] for m in messages))
        (groups,) = [payload for event, payload in inbox if event == "groups"]
        self.assertEqual([(g["id"], g["unreadCount"]) for g in groups["groups"]], [("g1", 1)])
        delivered = [d for d in self.router.events("message:sent") if d.payload["status"] == "delivered"]
        self.assertEqual([d.payload["messageId"] for d in delivered], ["n0", "n1", "n2"])
        self.assertEqual({device for d in delivered for device in d.devices}, {"a1", "a2"})
        self.router.clear()
        self.core.sessions.login("e2", "127.0.0.1", {"id": "erin", "name": "Erin"})
        self.assertEqual([event for event, _ in self.router.inbox("e2")], ["user:login:success", "online_users", "groups"])


    def pending(self, userId: str) -> list[str]:
        """
        The ids of the messages in C{userId}'s offline queue.
        """
        return [m.id for m in self.successResultOf(self.store.pendingFor(userId, 1000))]

    def test_pacedOnReading(self) -> None:
        """
        The queue goes as the device's connection has room: nothing while
        it is full, everything, in order and once, when it drains; the
        senders hear C{delivered} then.
        """
        for i in range(3):
            self.send("a1", f"n{i}", id=f"n{i}", toId="erin")
        self.router.full.add("e1")
        self.router.clear()
        self.core.sessions.login("e1", "127.0.0.1", {"id": "erin", "name": "Erin"})
        self.assertEqual([event for event, _ in self.router.inbox("e1")], ["user:login:success", "online_users"])
        self.assertEqual(self.pending("erin"), ["n0", "n1", "n2"])
        self.router.drain("e1")
        self.clock.advance(0)
        self.assertEqual([p["id"] for e, p in self.router.inbox("e1") if e == "message"], ["n0", "n1", "n2"])
        self.assertEqual([e for e, _ in self.router.inbox("e1")][-1], "groups")
        self.assertEqual(self.pending("erin"), [])
        delivered = [d.payload["messageId"] for d in self.router.events("message:sent") if d.payload["status"] == "delivered"]
        self.assertEqual(delivered, ["n0", "n1", "n2"])

    def test_goneWhileFull(self) -> None:
        """
        A device that goes while its connection is full was sent nothing:
        the queue stays whole for the next login, and no sender hears
        C{delivered}.
        """
        for i in range(2):
            self.send("a1", f"n{i}", id=f"n{i}", toId="erin")
        self.router.full.add("e1")
        self.router.clear()
        self.core.sessions.login("e1", "127.0.0.1", {"id": "erin", "name": "Erin"})
        self.presence.logout("e1")
        self.router.drain("e1")
        self.clock.advance(0)
        self.assertEqual([e for e, _ in self.router.inbox("e1") if e == "message"], [])
        self.assertEqual(self.pending("erin"), ["n0", "n1"])
        self.assertEqual([d for d in self.router.events("message:sent") if d.payload["status"] == "delivered"], [])

    def test_fromAnotherNodeDuringCatchUp(self) -> None:
        """
        What the router delivers to the catch-up's device meanwhile (from
        another node, which stored it there) waits for the queue: it comes
        after it, in C{seq} order, and not twice when the catch-up's read
        found it too; an event without a seq comes last. The user's other
        device, not caught up, gets it at once. Without the hold, another
        node's newer message overtook the queue.
        """
        stored = [self.send("a1", f"n{i}", id=f"n{i}", toId="erin") for i in range(2)]
        self.assertEqual([r["status"] for r in stored], ["offline"] * 2)
        (first, second) = self.successResultOf(self.store.pendingFor("erin", 10))
        self.router.full.add("e1")
        self.router.clear()
        self.core.sessions.login("e1", "127.0.0.1", {"id": "erin", "name": "Erin"})
        self.presence.login("erin", "e2", "Erin", None)
        # as the cluster's router delivers what another node stored
        self.router.toUsers(("erin",), "message", {"id": "r2", "seq": second.seq + 2, "toId": "erin"})
        self.router.toUsers(("erin",), "message", {"id": "r1", "seq": second.seq + 1, "toId": "erin"})
        self.router.toUsers(("erin",), "message", {"id": second.id, "seq": second.seq, "toId": "erin"})
        self.router.toUsers(("erin",), "file_transfer", {"fileName": "a.txt"})
        self.assertEqual([p.get("id") for e, p in self.router.inbox("e1") if e in ("message", "file_transfer")], [])
        self.assertEqual(
            [p.get("id") for e, p in self.router.inbox("e2") if e in ("message", "file_transfer")],
            ["r2", "r1", second.id, None],
        )
        self.router.drain("e1")
        self.clock.advance(0)
        self.assertEqual(
            [p.get("id", p.get("fileName")) for e, p in self.router.inbox("e1") if e in ("message", "file_transfer")],
            [first.id, second.id, "r1", "r2", "a.txt"],
        )
        self.assertEqual(self.router.holding, {})

    def test_routedBackToQueueWhenGone(self) -> None:
        """
        A message another node routed to the catch-up's device (and marked
        delivered there) goes back to the offline queue if the device goes
        before it was sent: held, it would otherwise be lost.
        """
        self.send("a1", "queued", id="n0", toId="erin")
        self.send("a1", "live", id="r1", toId="erin")
        (queued, routed) = self.successResultOf(self.store.pendingFor("erin", 10))
        # (as the other node does once it routed r1)
        self.successResultOf(self.store.markDelivered([routed.seq]))
        self.router.full.add("e1")
        self.core.sessions.login("e1", "127.0.0.1", {"id": "erin", "name": "Erin"})
        self.router.toUsers(("erin",), "message", self.core.messaging.wire(routed))
        self.presence.logout("e1")
        self.router.drain("e1")
        self.clock.advance(0)
        self.assertEqual(self.pending("erin"), ["n0", "r1"])
        self.assertEqual(self.router.holding, {})

    def test_readsBoundedInBytes(self) -> None:
        """
        The queue is read about C{maxHistoryBytes} at a time (here two
        messages of 600 characters per read), so a queue of heavy messages
        is never held whole; every message still comes once, in order.
        """
        self.core.messaging.settings = attrs.evolve(self.core.messaging.settings, maxHistoryBytes=1000)
        for i in range(5):
            self.send("a1", f"{i}" * 600, id=f"n{i}", toId="erin")
        reads: list[int] = []
        pendingFor = self.store.pendingFor

        def recording(userId: str, limit: int, maxBytes: int | None = None, after: int = 0) -> Deferred[Any]:
            d = pendingFor(userId, limit, maxBytes, after)
            d.addCallback(lambda found: reads.append(len(found)) or found)
            return d

        self.store.pendingFor = recording  # type: ignore[method-assign]
        self.core.sessions.login("e1", "127.0.0.1", {"id": "erin", "name": "Erin"})
        self.clock.advance(0)
        self.assertEqual([p["id"] for e, p in self.router.inbox("e1") if e == "message"], [f"n{i}" for i in range(5)])
        self.assertEqual(reads, [2, 2, 1])
        self.assertEqual(self.pending("erin"), [])

    def test_arrivingDuringCatchUp(self) -> None:
        """
        A message that comes while the queue is being sent goes after it,
        and stays in the queue until a device is sent it: if the device
        goes first, the next login gets it.
        """
        self.send("a1", "old", id="old", toId="erin")
        self.router.full.add("e1")
        self.core.sessions.login("e1", "127.0.0.1", {"id": "erin", "name": "Erin"})
        receipt = self.send("a1", "new", id="new", toId="erin")
        self.assertEqual(receipt["status"], "delivered")
        self.presence.logout("e1")
        self.router.drain("e1")
        self.clock.advance(0)
        self.assertEqual(self.pending("erin"), ["old", "new"])
        self.router.clear()
        self.core.sessions.login("e2", "127.0.0.1", {"id": "erin", "name": "Erin"})
        self.clock.advance(0)
        self.assertEqual([p["id"] for e, p in self.router.inbox("e2") if e == "message"], ["old", "new"])
        self.assertEqual(self.pending("erin"), [])
        delivered = [d.payload["messageId"] for d in self.router.events("message:sent") if d.payload["status"] == "delivered"]
        self.assertEqual(delivered, ["old", "new"])

    def test_manyArrivingDuringCatchUp(self) -> None:
        """
        More messages than a catch-up holds, coming while it waits, all
        come after the queue, in order and once.
        """
        self.send("a1", "old", id="old", toId="erin")
        self.router.full.add("e1")
        self.core.sessions.login("e1", "127.0.0.1", {"id": "erin", "name": "Erin"})
        for i in range(PENDING_BATCH + 5):
            self.send("a1", "new", id=f"new{i}", toId="erin")
        self.router.drain("e1")
        self.clock.advance(0)
        got = [p["id"] for e, p in self.router.inbox("e1") if e == "message"]
        self.assertEqual(got, ["old"] + [f"new{i}" for i in range(PENDING_BATCH + 5)])
        self.assertEqual(self.pending("erin"), [])

    def test_deliveredAsStoreCloses(self) -> None:
        """
        A message delivered just as the store closes (the server stopping)
        is not a failure: its delivered mark is not written, nothing is
        logged as an error, and it comes again from the offline queue.
        """
        receipt = self.send("a1", "late", id="m1", toId="bob")
        self.assertEqual(receipt["status"], "delivered")
        self.store.close()
        self.clock.advance(0)
        self.assertEqual(self.flushLoggedErrors(), [])
        (stored,) = [m for m in self.store.messages.values() if m.id == "m1"]
        self.assertFalse(stored.delivered)


class GroupLimitTests(HandlerTestCase):
    """
    Members per group (3 here) and groups per user (2 here).
    """

    groupLimits = GroupLimits(maxMembers=3, maxGroupsPerUser=2)

    def test_tooManyMembers(self) -> None:
        """
        Creating or growing a group past its size is C{TOO_LARGE}, and
        nothing is stored.
        """
        create = self.core.groups.create
        self.assertEqual(self.refused(create, self.caller("a1"), {"name": "Big", "memberIds": ["bob", "carol", "dave"]}), TOO_LARGE)
        self.assertEqual(self.store.messages, {})
        self.makeGroup("a1", ["bob", "carol"])
        self.assertEqual(self.refused(self.core.groups.addMembers, self.caller("a1"), {"groupId": "g1", "userIds": ["dave"]}), TOO_LARGE)
        self.assertEqual(set(self.roles()), {"alice", "bob", "carol"})

    def test_tooManyGroups(self) -> None:
        """
        Creating or adding that would put a user past their number of
        groups is C{RATE_LIMITED}, for the creator as for a member.
        """
        self.makeGroup("a1", ["bob"], id="g1")
        self.makeGroup("a1", ["bob"], id="g2")
        create = self.core.groups.create
        self.assertEqual(self.refused(create, self.caller("c1"), {"name": "Third", "memberIds": ["bob"], "id": "g3"}), RATE_LIMITED)
        self.assertEqual(self.refused(create, self.caller("a1"), {"name": "Third", "memberIds": [], "id": "g3"}), RATE_LIMITED)
        self.assertIsNone(self.successResultOf(self.store.group("g3")))
        self.makeGroup("c1", [], id="g3")
        self.assertEqual(self.refused(self.core.groups.addMembers, self.caller("c1"), {"groupId": "g3", "userIds": ["bob"]}), RATE_LIMITED)
        self.assertEqual(set(self.roles("g3")), {"carol"})

    def test_tooManyGroupsSaysNoCount(self) -> None:
        """
        The refusal tells the caller of their own limit, but nothing of
        how many groups another user is in.
        """
        self.makeGroup("a1", ["bob"], id="g1")
        self.makeGroup("a1", ["bob"], id="g2")

        def refusal(device: str, data: dict[str, Any]) -> str:
            return str(self.failureResultOf(Deferred.fromCoroutine(self.core.groups.create(self.caller(device), data)), IMError).value)

        self.assertEqual(refusal("c1", {"name": "Third", "memberIds": ["bob"]}), "a user named may not join more groups")
        self.assertEqual(refusal("a1", {"name": "Third", "memberIds": []}), "you are in 2 groups already, the most a user may be in")

    def test_retryAtTheLimit(self) -> None:
        """
        A retried C{group:create} (same creator, same C{id}) returns the
        group it made even when that group brought its users to their
        limit: the retry creates nothing, so no limit applies to it.
        """
        self.makeGroup("a1", ["bob"], id="g1")
        made = self.makeGroup("a1", ["bob"], id="g2")
        again = self.answer(self.core.groups.create(self.caller("a1"), {"name": "Team", "memberIds": ["bob"], "id": "g2"}))
        self.assertEqual(again, made)
        self.assertEqual(self.router.sent, [])


class GroupRaceTests(HandlerTestCase):
    """
    Changes to one group that overlap (two devices, two admins) are
    decided one after the other: each on the state the last one left.
    Once L{hold} is called the store holds each change until the test
    lets it through, as a real store's transaction keeps it waiting.
    """

    groupLimits = GroupLimits(maxMembers=4, maxGroupsPerUser=2)

    def hold(self) -> None:
        """
        From now on, keep each change in L{held} until L{letThrough}.
        """
        self.held: list[tuple[Any, Deferred[Any]]] = []
        self.write = self.store.changeGroup

        def changeGroup(change: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            self.held.append((change, d))
            return d

        self.store.changeGroup = changeGroup  # type: ignore[method-assign]
        self.router.clear()

    def letThrough(self) -> None:
        """
        Write every change the store holds, in order, and any that those
        let start.
        """
        while self.held:
            change, d = self.held.pop(0)
            self.write(change).chainDeferred(d)

    def start(self, handler: Callable[..., Any], device: str, data: dict[str, Any]) -> Deferred[Any]:
        """
        Call C{handler} as the user of C{device}, without waiting for it.
        """
        return Deferred.fromCoroutine(handler(self.caller(device), data))

    def refusedWith(self, d: Deferred[Any]) -> str:
        """
        The code C{d} failed with.
        """
        error = self.failureResultOf(d, IMError).value
        assert isinstance(error, IMError)
        return error.code

    def makeAdmins(self, *userIds: str) -> None:
        for userId in userIds:
            self.answer(self.core.groups.setRole(self.caller("a1"), {"groupId": "g1", "userId": userId, "role": "admin"}))

    def members(self) -> dict[str, str]:
        state = self.successResultOf(self.core.directory.reload("g1"))
        return {m.userId: m.role for m in state.members.values()}

    def test_handOverWhileLeaving(self) -> None:
        """
        The owner hands the group to bob on one device and leaves on the
        other at once: one owner, bob; alice, an admin by then, just
        leaves. (Both were decided on the state before either: carol, the
        longest-serving member, became owner by the leave, bob by the
        handover, both with the owner's role.)
        """
        self.makeGroup("a1", ["carol", "bob"])
        self.hold()
        handOver = self.start(self.core.groups.setRole, "a1", {"groupId": "g1", "userId": "bob", "role": "owner"})
        leave = self.start(self.core.groups.leave, "a2", {"groupId": "g1"})
        self.letThrough()
        self.assertEqual(self.successResultOf(handOver)["ownerId"], "bob")
        self.assertEqual(self.successResultOf(leave), {"groupId": "g1", "left": True})
        self.assertEqual(self.successResultOf(self.core.directory.reload("g1")).group.ownerId, "bob")
        self.assertEqual(self.members(), {"bob": "owner", "carol": "member"})

    def test_addsPastTheBound(self) -> None:
        """
        Two adds at once cannot take a group past its size: the second is
        decided on the members the first added.
        """
        self.makeGroup("a1", ["bob"])
        self.hold()
        first = self.start(self.core.groups.addMembers, "a1", {"groupId": "g1", "userIds": ["carol", "dave"]})
        second = self.start(self.core.groups.addMembers, "a2", {"groupId": "g1", "userIds": ["erin"]})
        self.letThrough()
        self.assertEqual(len(self.successResultOf(first)["members"]), 4)
        self.assertEqual(self.refusedWith(second), TOO_LARGE)
        self.assertEqual(sorted(self.members()), ["alice", "bob", "carol", "dave"])

    def test_addWhileRemoved(self) -> None:
        """
        An admin's add that overlaps the owner removing that admin is
        decided after the removal: refused, nothing added.
        """
        self.makeGroup("a1", ["bob", "carol"])
        self.makeAdmins("bob")
        self.hold()
        remove = self.start(self.core.groups.removeMembers, "a1", {"groupId": "g1", "userIds": ["bob"]})
        add = self.start(self.core.groups.addMembers, "b1", {"groupId": "g1", "userIds": ["dave"]})
        self.letThrough()
        self.successResultOf(remove)
        self.assertEqual(self.refusedWith(add), FORBIDDEN)
        self.assertEqual(sorted(self.members()), ["alice", "carol"])

    def test_sameAddTwice(self) -> None:
        """
        Two admins adding the same user at once: one system message, one
        C{group:joined}.
        """
        self.makeGroup("a1", ["bob"])
        self.makeAdmins("bob")
        self.hold()
        adds = [self.start(self.core.groups.addMembers, device, {"groupId": "g1", "userIds": ["dave"]}) for device in ("a1", "b1")]
        self.letThrough()
        for d in adds:
            self.assertIn("dave", [m["userId"] for m in self.successResultOf(d)["members"]])
        self.assertEqual([d.devices for d in self.router.sent if d.event == "group:joined"], [{"d1"}])
        added = [d for d in self.router.sent if d.event == "message" and d.payload["system"]["action"] == "add"]
        self.assertEqual(len(added), 1)

    def test_addWhileDissolved(self) -> None:
        """
        An add that overlaps the dissolve is decided after it: C{NOT_FOUND},
        and nothing is written into the dissolved group (a membership
        there counted against dave's groups for good). No lock is kept.
        """
        self.makeGroup("a1", ["bob"])
        self.makeAdmins("bob")
        self.hold()
        dissolve = self.start(self.core.groups.dissolve, "a1", {"groupId": "g1"})
        add = self.start(self.core.groups.addMembers, "b1", {"groupId": "g1", "userIds": ["dave"]})
        self.letThrough()
        self.successResultOf(dissolve)
        self.assertEqual(self.refusedWith(add), NOT_FOUND)
        self.assertEqual(self.successResultOf(self.store.groupCounts(["dave"])), {"dave": 0})
        self.assertEqual(len(self.core.groups.serial), 0)


    def test_addsToTwoGroupsPastUsersBound(self) -> None:
        """
        Two adds of bob to two different groups at once, when he may join
        only one more: one is refused (each read his stored count from
        before the other, and both passed); the count of those being
        written is gone once the writes are over.
        """
        self.makeGroup("a1", ["bob"], id="g1")
        self.makeGroup("c1", [], id="g2")
        self.makeGroup("d1", [], id="g3")
        self.hold()
        first = self.start(self.core.groups.addMembers, "c1", {"groupId": "g2", "userIds": ["bob"]})
        second = self.start(self.core.groups.addMembers, "d1", {"groupId": "g3", "userIds": ["bob"]})
        self.letThrough()
        self.assertIn("bob", [m["userId"] for m in self.successResultOf(first)["members"]])
        self.assertEqual(self.refusedWith(second), RATE_LIMITED)
        self.assertEqual(self.successResultOf(self.store.groupCounts(["bob"])), {"bob": 2})
        self.assertEqual(len(self.core.groups.joining), 0)
        third = self.start(self.core.groups.addMembers, "d1", {"groupId": "g3", "userIds": ["bob"]})
        self.assertEqual(self.refusedWith(third), RATE_LIMITED)


class RoomCreateLimitTests(HandlerTestCase):
    """
    Rooms created per user (1 here).
    """

    roomLimits = RoomLimits(maxRoomsPerUser=1)

    def test_tooManyRooms(self) -> None:
        """
        A user past their number of rooms is C{RATE_LIMITED}.
        """
        self.answer(self.core.rooms.create(self.caller("a1"), {"name": "One", "id": "r1"}))
        self.assertEqual(self.refused(self.core.rooms.create, self.caller("a1"), {"name": "Two", "id": "r2"}), RATE_LIMITED)
        self.assertIsNone(self.successResultOf(self.store.room("r2")))

    def test_burstPastTheLimit(self) -> None:
        """
        Several C{room:create} at once (one burst of events) create one room:
        the others are C{RATE_LIMITED}, as each read the count of stored
        rooms from before the others were written.
        """
        held: list[tuple[Any, Deferred[Any]]] = []
        write = self.store.createRoom

        def createRoom(room: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            held.append((room, d))
            return d

        self.store.createRoom = createRoom  # type: ignore[method-assign]
        creates = [
            Deferred.fromCoroutine(self.core.rooms.create(self.caller("a1"), {"name": f"R{i}", "id": f"r{i}"}))
            for i in range(3)
        ]
        while held:
            room, d = held.pop(0)
            write(room).chainDeferred(d)
        self.successResultOf(creates[0])
        for d in creates[1:]:
            self.assertEqual(self.failureResultOf(d, IMError).value.code, RATE_LIMITED)  # type: ignore[attr-defined]
        self.assertEqual(self.successResultOf(self.store.roomCount("alice")), 1)
        self.assertEqual(len(self.core.rooms.creating), 0)

    def test_retryAtTheLimit(self) -> None:
        """
        A retried C{room:create} (same creator, same C{id}) returns the
        room it made, even at the limit.
        """
        made = self.answer(self.core.rooms.create(self.caller("a1"), {"name": "One", "id": "r1"}))
        self.assertEqual(self.answer(self.core.rooms.create(self.caller("a1"), {"name": "One", "id": "r1"})), made)
