"""
Groups, chat rooms and recall end to end: every event, ack and refusal of
C{shared/spec/GROUPS.md} with the payloads and codes C{docs/groups.md}
settles, with the real L{CRMIMService} on a loopback port.

As in L{tests.integration.test_im}, each scenario is written once and run by
both client kinds: Node's socket.io-client over WebSocket only (the PC
client) and python-socketio with its default transports, long-polling
upgraded to WebSocket (the mobile client); one driver process holds every
named client of a test.

  - L{GroupScenario}: groups (create and its idempotent retry, update,
    members, leave and the owner's handover, roles, dissolve, list, info,
    read receipts, messages, offline catch-up through the C{groups} summary,
    several devices, typing, system messages, durability across a
    restart), chat rooms and recall, on a server with the default limits;
  - L{LimitScenario}: C{TOO_LARGE}, C{RATE_LIMITED} and the room-creator
    restriction, on a server with small limits;
  - L{RecallWindowScenario}: a recall window of 0 s, where a sender may
    never recall but a group's owner and admins still may.

Nothing here sleeps.  That an event did I{not} arrive is shown with a
barrier (L{GroupScenario.barrier}): a 1:1 message through the same server to
the same socket, sent after the event would have been; once it arrived, the
event would have too.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, Generator, List, Optional, Sequence, Tuple

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.trial.unittest import TestCase

from crm_im.config import Config
from crm_im.server import CRMIMService
from tests.integration.test_im import serveIM, user
from tests.support.clients import ClientDriver, DriverTestMixin

Inline = Generator[Deferred[Any], Any, Any]
Predicate = Callable[[List[Any]], bool]

#: the longest message content the scenarios' server accepts
MAX_LENGTH = 1000
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
#: the fields of a Group (GROUPS.md; docs/groups.md)
GROUP_FIELDS = {"id", "name", "avatar", "ownerId", "createdAt", "memberCount", "lastSeq"}
#: what group:list and the login summary add to each Group
SUMMARY_FIELDS = {"unreadCount", "readSeq", "lastMessage"}
#: the fields of a Room
ROOM_FIELDS = {"id", "name", "topic", "public", "createdBy", "createdAt", "onlineCount"}
#: every client event GROUPS.md adds, with a well-formed payload
NEW_EVENTS: List[Tuple[str, Any]] = [
    ("group:create", {"name": "g", "memberIds": ["b"]}),
    ("group:update", {"groupId": "g", "name": "h"}),
    ("group:add_members", {"groupId": "g", "userIds": ["c"]}),
    ("group:remove_members", {"groupId": "g", "userIds": ["c"]}),
    ("group:leave", {"groupId": "g"}),
    ("group:set_role", {"groupId": "g", "userId": "b", "role": "admin"}),
    ("group:dissolve", {"groupId": "g"}),
    ("group:list", None),
    ("group:info", {"groupId": "g"}),
    ("group:read_receipts", {"groupId": "g", "messageId": "m"}),
    ("room:create", {"name": "r"}),
    ("room:list", None),
    ("room:join", {"roomId": "r"}),
    ("room:leave", {"roomId": "r"}),
    ("message:recall", {"messageId": "m"}),
    ("message", {"groupId": "g", "content": "hi"}),
    ("message", {"roomId": "r", "content": "hi"}),
    ("typing", {"groupId": "g", "isTyping": True}),
    ("get_history", {"groupId": "g"}),
    ("message:read", {"groupId": "g", "upToSeq": 1}),
]


def first(args: List[Any]) -> Dict[str, Any]:
    """
    An event's payload.
    """
    payload: Dict[str, Any] = args[0]
    return payload


def inGroup(groupId: str) -> Predicate:
    """
    Match an event whose payload names C{groupId}.
    """
    return lambda args: first(args).get("groupId") == groupId


def joinedTo(groupId: str) -> Predicate:
    """
    Match C{group:joined}/C{group:updated} for C{groupId}.
    """
    return lambda args: first(args)["group"]["id"] == groupId


def withContent(content: str) -> Predicate:
    """
    Match a C{message} with this C{content}.
    """
    return lambda args: first(args).get("content") == content


def withId(messageId: str) -> Predicate:
    """
    Match a C{message}, C{message:sent} or C{message:recalled} about the
    message C{messageId}.
    """
    return lambda args: (first(args).get("id") == messageId
                         or first(args).get("messageId") == messageId)


def systemAction(groupId: str, action: str) -> Predicate:
    """
    Match a system C{message} of C{groupId} with this C{action}.
    """
    return lambda args: (first(args).get("groupId") == groupId
                         and first(args).get("type") == "system"
                         and first(args).get("system", {}).get("action") == action)


def roles(group: Dict[str, Any]) -> Dict[str, str]:
    """
    A group's members as C{{userId: role}}.
    """
    return {member["userId"]: member["role"] for member in group["members"]}


class Scenario(DriverTestMixin):
    """
    Helpers shared by the scenarios of this module: a server per test,
    login, acks, refusals and barriers.

    @cvar transports: the clients' C{transports} option (L{None}: the
        client's default).
    @cvar ordered: whether the client reports events in the order they
        arrived (python-engineio runs each message's handler in a thread of
        its own, so python clients may not).
    @cvar serverSettings: L{Config} fields for this scenario's server.
    """

    transports: Optional[List[str]] = None
    ordered = True
    serverSettings: Dict[str, Any] = {"maxMessageLength": MAX_LENGTH}

    @inlineCallbacks
    def setUp(self) -> Inline:
        """
        Serve crm_im with this scenario's settings.
        """
        self.service, self.url = yield serveIM(self, **self.serverSettings)

    @inlineCallbacks
    def serveOn(self, dataDir: str) -> Inline:
        """
        Start a server on C{dataDir} (which may hold an earlier server's
        data) and make it the one L{connect} uses; it is stopped at cleanup
        unless the test stopped it.

        @return: the service.
        """
        settings = dict(self.serverSettings, listen=("tcp:0:interface=127.0.0.1",),
                        dataDir=dataDir, logEvents=False, shutdownGrace=0.5)
        service = CRMIMService(Config(**settings), reactor)
        service.startService()
        self.addCleanup(lambda: service.stopService() if service.running else None)
        ports = yield service.ready
        self.url = f"http://127.0.0.1:{ports[0].getHost().port}"
        return service

    def connect(self, driver: ClientDriver, client: str) -> Deferred[Any]:
        """
        Connect C{client} with this case's transports.
        """
        opts: Dict[str, Any] = {}
        if self.transports is not None:
            opts["transports"] = self.transports
        return driver.connect(client, self.url, **opts)

    @inlineCallbacks
    def login(self, driver: ClientDriver, client: str, userId: str,
              name: Optional[str] = None) -> Inline:
        """
        Connect C{client} and log it in as C{userId}; consume its
        C{user:login:success} and C{online_users} (its C{groups} summary is
        left for the test to wait on).
        """
        yield self.connect(driver, client)
        (ack,) = yield driver.emit(client, "user:login",
                                   {"id": userId, "name": name or f"User {userId}"}, ack=True)
        self.assertEqual(ack["id"], userId)
        yield driver.waitFor(client, "user:login:success")
        yield driver.waitFor(client, "online_users")

    @inlineCallbacks
    def ask(self, driver: ClientDriver, client: str, event: str,
            payload: Any = None) -> Inline:
        """
        Emit C{event} asking for an ack; fail unless the ack is a success.

        @return: the ack's payload.
        """
        args = () if payload is None else (payload,)
        ack = yield driver.emit(client, event, *args, ack=True)
        self.assertEqual(len(ack), 1, f"{event}: ack {ack!r}")
        self.assertFalse(isinstance(ack[0], dict) and "error" in ack[0],
                         f"{event} {payload!r} refused: {ack!r}")
        return ack[0]

    @inlineCallbacks
    def refused(self, driver: ClientDriver, client: str, event: str, payload: Any,
                code: str, withAck: bool = True) -> Inline:
        """
        Emit C{event} and check the refusal: the C{error} event
        C{{message, code, event}} and, when asked for, the ack
        C{{"error": {message, code}}}.

        @return: the C{error} event's payload.
        """
        args = () if payload is None else (payload,)
        ack = yield driver.emit(client, event, *args, ack=withAck)
        (error,) = yield driver.waitFor(client, "error",
                                        predicate=lambda a: first(a).get("event") == event)
        self.assertEqual((error["code"], error["event"]), (code, event),
                         f"{event} {payload!r}: {error!r}")
        self.assertIsInstance(error["message"], str)
        self.assertTrue(error["message"])
        if withAck:
            self.assertEqual(ack, [{"error": {"message": error["message"], "code": code}}])
        if event == "message" and isinstance(payload, dict) and "id" in payload:
            # (membership refusals of group and room messages named none)
            self.assertEqual(error.get("id"), payload["id"], f"{event} {payload!r}: {error!r}")
        return error

    @inlineCallbacks
    def create(self, driver: ClientDriver, client: str, name: str,
               memberIds: Sequence[Any], **fields: Any) -> Inline:
        """
        C{group:create}; wait for the C{group:joined} of the caller's socket
        and return the acked Group.
        """
        group = yield self.ask(driver, client, "group:create",
                               dict(name=name, memberIds=list(memberIds), **fields))
        yield driver.waitFor(client, "group:joined", predicate=joinedTo(group["id"]))
        return group

    @inlineCallbacks
    def send(self, driver: ClientDriver, client: str, content: str, **fields: Any) -> Inline:
        """
        Send a text message (C{fields} name its conversation) with an ack;
        return the receipt.
        """
        receipt = yield self.ask(driver, client, "message",
                                 dict({"type": "text"}, content=content, **fields))
        return receipt

    @inlineCallbacks
    def barrier(self, driver: ClientDriver, sender: str,
                observers: Sequence[Tuple[str, str]]) -> Inline:
        """
        Send a 1:1 message from C{sender} to each observer and wait until
        it arrived: every event the server sent that socket before is in by
        then.

        @param observers: C{(client, userId)} pairs.
        """
        for client, userId in observers:
            token = f"barrier-{id(self)}-{client}-{len(driver.reports)}"
            yield self.send(driver, sender, token, toId=userId)
            yield driver.waitFor(client, "message", predicate=withContent(token))

    def count(self, driver: ClientDriver, client: str, event: str,
              predicate: Optional[Predicate] = None) -> int:
        """
        How many C{event} C{client} received so far that match
        C{predicate}.
        """
        return len([args for args in driver.events(client, event)
                    if predicate is None or predicate(args)])


class GroupScenario(Scenario):
    """
    Groups, rooms and recall with the default limits, for one client kind.
    """

    # ---- group:create, group:info, group:list

    @inlineCallbacks
    def test_create(self) -> Inline:
        """
        C{group:create} makes the caller owner and the others members
        (duplicates and the creator dropped, integers made strings), acks
        the Group with members, sends C{group:joined} to every member's
        devices (the creator's included) and stores a C{create} system
        message; a retry with the same creator and C{id} returns the group
        again with no new event; another creator's C{id} is not taken over;
        C{group:info} and C{group:list} answer members only.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "a1", "a", "Alice")
        yield self.login(driver, "a2", "a", "Alice")
        yield self.login(driver, "b", "b", "Bob")
        yield self.login(driver, "x", "x", "X")
        payload = {"name": "销售一组", "memberIds": ["b", "c", "b", "a", 42],
                   "id": "g-sales", "avatar": "https://x/g.png"}
        group = yield self.ask(driver, "a1", "group:create", payload)
        self.assertEqual(set(group), GROUP_FIELDS | {"members"})
        self.assertEqual((group["id"], group["name"], group["avatar"], group["ownerId"],
                          group["memberCount"]),
                         ("g-sales", "销售一组", "https://x/g.png", "a", 4))
        self.assertIsInstance(group["createdAt"], int)
        self.assertIsInstance(group["lastSeq"], int)
        self.assertEqual(group["members"][0]["userId"], "a")
        self.assertEqual(roles(group), {"a": "owner", "b": "member", "c": "member",
                                        "42": "member"})
        for member in group["members"]:
            self.assertEqual(set(member), {"userId", "role", "joinedAt"})
            self.assertIsInstance(member["joinedAt"], int)
        for client in ("a1", "a2", "b"):
            (joined,) = yield driver.waitFor(client, "group:joined")
            self.assertEqual(set(joined), {"group"})
            self.assertEqual((joined["group"]["id"], joined["group"]["ownerId"],
                              joined["group"]["members"]),
                             ("g-sales", "a", group["members"]))
            (system,) = yield driver.waitFor(client, "message",
                                             predicate=systemAction("g-sales", "create"))
            self.assertEqual((system["fromId"], system["system"]["by"]), ("a", "a"))
            self.assertNotIn("toId", system)
            self.assertIsInstance(system["content"], str)
            self.assertIsInstance(system["seq"], int)
        # the retry: same creator, same id
        again = yield self.ask(driver, "a1", "group:create", payload)
        self.assertEqual((again["id"], again["createdAt"], again["ownerId"], roles(again)),
                         ("g-sales", group["createdAt"], "a", roles(group)))
        yield self.barrier(driver, "x", [("b", "b"), ("a1", "a")])
        for client in ("a1", "b"):
            self.assertEqual(self.count(driver, client, "group:joined"), 1, client)
            self.assertEqual(self.count(driver, client, "message",
                                        systemAction("g-sales", "create")), 1, client)
        self.assertEqual(driver.events("x", "group:joined"), [])
        # another creator's id, and no id at all
        other = yield self.create(driver, "b", "B's", ["a"], id="g-sales")
        self.assertRegex(other["id"], UUID)
        self.assertEqual((other["ownerId"], other["memberCount"]), ("b", 2))
        (joined,) = yield driver.waitFor("a2", "group:joined", predicate=joinedTo(other["id"]))
        made = yield self.create(driver, "x", "solo", [])
        self.assertRegex(made["id"], UUID)
        self.assertEqual((made["memberCount"], roles(made)), (1, {"x": "owner"}))
        # group:info: members only
        info = yield self.ask(driver, "b", "group:info", {"groupId": "g-sales"})
        self.assertEqual(set(info), GROUP_FIELDS | {"members"})
        self.assertEqual((info["id"], info["name"], info["members"]),
                         ("g-sales", "销售一组", group["members"]))
        yield self.refused(driver, "x", "group:info", {"groupId": "g-sales"}, "NOT_FOUND")
        yield self.refused(driver, "b", "group:info", {"groupId": "no-such"}, "NOT_FOUND")
        # group:list: most recent activity first
        listed = yield self.ask(driver, "a1", "group:list")
        self.assertEqual(set(listed), {"groups"})
        self.assertEqual([g["id"] for g in listed["groups"]], [other["id"], "g-sales"])
        for entry in listed["groups"]:
            self.assertLessEqual(GROUP_FIELDS | SUMMARY_FIELDS, set(entry))
        yield self.send(driver, "b", "in sales", groupId="g-sales")
        listed = yield self.ask(driver, "a2", "group:list")
        self.assertEqual([g["id"] for g in listed["groups"]], ["g-sales", other["id"]])
        self.assertEqual(listed["groups"][0]["lastMessage"]["content"], "in sales")
        listed = yield self.ask(driver, "x", "group:list")
        self.assertEqual([g["id"] for g in listed["groups"]], [made["id"]])
        # the system message is in the history
        (page,) = yield driver.emit("b", "get_history", {"groupId": "g-sales"}, ack=True)
        self.assertLessEqual({"groupId", "messages", "hasMore"}, set(page))
        self.assertEqual((page["groupId"], page["hasMore"]), ("g-sales", False))
        self.assertEqual([(m["type"], m.get("system", {}).get("action")) for m in page["messages"]],
                         [("system", "create"), ("text", None)])

    @inlineCallbacks
    def test_survivesRestart(self) -> Inline:
        """
        Groups, members and roles, read cursors, recall stubs and rooms
        are durable: after a restart on the same data directory a member's
        login summary, C{group:info}, history and C{room:list} are as they
        were, and a member who never logged in finds the group.
        """
        dataDir = self.mktemp()
        service = yield self.serveOn(dataDir)
        driver = yield self.startDriver()
        yield self.login(driver, "a", "a", "Alice")
        yield self.login(driver, "c", "c", "Carol")
        yield self.create(driver, "a", "durable", ["b", "c"], id="g-durable")
        yield self.ask(driver, "a", "group:set_role",
                       {"groupId": "g-durable", "userId": "c", "role": "admin"})
        yield self.send(driver, "a", "one", groupId="g-durable", id="d-1")
        oops = yield self.send(driver, "a", "oops", groupId="g-durable", id="d-2")
        yield self.ask(driver, "a", "message:recall", {"messageId": "d-2"})
        yield self.ask(driver, "c", "message:read", {"groupId": "g-durable", "upToSeq": oops["seq"]})
        last = yield self.send(driver, "a", "three", groupId="g-durable", id="d-3", mentions=["c"])
        yield self.ask(driver, "a", "room:create", {"name": "persist", "id": "persist"})
        yield self.ask(driver, "a", "room:join", {"roomId": "persist"})
        yield self.send(driver, "a", "kept", roomId="persist")
        yield service.stopService()
        yield self.serveOn(dataDir)
        yield self.login(driver, "c-again", "c", "Carol")
        (summary,) = yield driver.waitFor("c-again", "groups")
        (entry,) = summary["groups"]
        self.assertEqual((entry["id"], entry["name"], entry["readSeq"], entry["unreadCount"],
                          entry["lastSeq"], entry["lastMessage"]["id"]),
                         ("g-durable", "durable", oops["seq"], 1, last["seq"], "d-3"))
        info = yield self.ask(driver, "c-again", "group:info", {"groupId": "g-durable"})
        self.assertEqual(roles(info), {"a": "owner", "b": "member", "c": "admin"})
        (page,) = yield driver.emit("c-again", "get_history", {"groupId": "g-durable"}, ack=True)
        texts = [(m["id"], m["content"], bool(m.get("recalled")))
                 for m in page["messages"] if m["type"] != "system"]
        self.assertEqual(texts, [("d-1", "one", False), ("d-2", "", True), ("d-3", "three", False)])
        self.assertEqual(page["messages"][-1]["mentions"], ["c"])
        yield self.login(driver, "b", "b", "Bob")
        (summary,) = yield driver.waitFor("b", "groups")
        self.assertEqual([g["id"] for g in summary["groups"]], ["g-durable"])
        listed = yield self.ask(driver, "b", "room:list")
        self.assertEqual([(r["id"], r["onlineCount"]) for r in listed["rooms"]], [("persist", 0)])
        (page,) = yield driver.emit("b", "get_history", {"roomId": "persist"}, ack=True)
        self.assertEqual([m["content"] for m in page["messages"]], ["kept"])

    # ---- group messages

    @inlineCallbacks
    def test_groupMessage(self) -> Inline:
        """
        A group message is stored once and acked with C{message:sent
        {messageId, status: 'sent', timestamp, seq}}; it goes as C{message}
        (with C{groupId}, no C{toId}) to every device of every member but
        the sending socket, the sender's other devices included, and to
        nobody else; a resend of its id gets the receipt again and causes
        no second delivery; strangers, unknown groups, spoofed senders and
        bad payloads are refused.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "a1", "a", "Alice")
        yield self.login(driver, "a2", "a", "Alice")
        yield self.login(driver, "b", "b", "Bob")
        yield self.login(driver, "c", "c", "Carol")
        yield self.login(driver, "x", "x", "X")
        group = yield self.create(driver, "a1", "deal room", ["b", "c", "d"])
        gid = group["id"]
        receipt = yield self.send(driver, "a1", "大家好 🌏", groupId=gid, id="gm-1",
                                  topic="deal-7", timestamp=1700000000000, fromName="Mallory")
        self.assertEqual(set(receipt), {"messageId", "status", "timestamp", "seq"})
        self.assertEqual((receipt["messageId"], receipt["status"]), ("gm-1", "sent"))
        self.assertIsInstance(receipt["seq"], int)
        (sent,) = yield driver.waitFor("a1", "message:sent", predicate=withId("gm-1"))
        self.assertEqual(sent, receipt)
        for client in ("a2", "b", "c"):
            (message,) = yield driver.waitFor(client, "message", predicate=withId("gm-1"))
            self.assertEqual(message, {
                "id": "gm-1", "fromId": "a", "fromName": "Alice", "groupId": gid,
                "content": "大家好 🌏", "type": "text", "topic": "deal-7",
                "timestamp": 1700000000000, "serverTimestamp": receipt["timestamp"],
                "seq": receipt["seq"]})
        yield self.send(driver, "a1", "direct", toId="x", id="gm-direct")
        (direct,) = yield driver.waitFor("x", "message", predicate=withId("gm-direct"))
        self.assertGreater(direct["seq"], receipt["seq"])
        again = yield self.send(driver, "a1", "大家好 🌏", groupId=gid, id="gm-1")
        self.assertEqual(again, receipt)
        second = yield self.send(driver, "b", "second", groupId=gid)
        self.assertRegex(second["messageId"], UUID)
        self.assertGreater(second["seq"], direct["seq"])
        for client in ("a1", "a2", "c"):
            yield driver.waitFor(client, "message", predicate=withContent("second"))
        yield self.barrier(driver, "x", [("a1", "a"), ("b", "b"), ("c", "c")])
        self.assertEqual(self.count(driver, "a1", "message", withId("gm-1")), 0)
        self.assertEqual(self.count(driver, "b", "message", withContent("second")), 0)
        for client in ("a2", "b", "c"):
            self.assertEqual(self.count(driver, client, "message", withId("gm-1")), 1, client)
        self.assertEqual([args for args in driver.events("x", "message") if inGroup(gid)(args)], [])
        # without an ack, the receipt still comes as message:sent
        yield driver.emit("c", "message", {"groupId": gid, "content": "no ack", "id": "gm-3"})
        (sent,) = yield driver.waitFor("c", "message:sent", predicate=withId("gm-3"))
        self.assertEqual(sent["status"], "sent")
        # mentions go with the message, as sent (not only to push)
        yield self.send(driver, "a1", "@Bob @Dave", groupId=gid, id="gm-4", mentions=["b", "d"])
        for client in ("a2", "b", "c"):
            (message,) = yield driver.waitFor(client, "message", predicate=withId("gm-4"))
            self.assertEqual(message["mentions"], ["b", "d"])
        (page,) = yield driver.emit("c", "get_history", {"groupId": gid}, ack=True)
        self.assertEqual([m.get("mentions") for m in page["messages"] if m["type"] == "text"],
                         [None, None, None, ["b", "d"]])
        # refusals
        error = yield self.refused(driver, "b", "message",
                                   {"groupId": gid, "content": "x", "fromId": "a", "id": "spoof"},
                                   "FORBIDDEN")
        self.assertEqual(error["id"], "spoof")
        yield self.refused(driver, "x", "message", {"groupId": gid, "content": "let me in", "id": "x-1"},
                           "NOT_FOUND")
        yield self.refused(driver, "b", "message", {"groupId": "no-such", "content": "x", "id": "b-1"},
                           "NOT_FOUND")
        yield self.refused(driver, "b", "message",
                           {"groupId": gid, "content": "x" * (MAX_LENGTH + 1)}, "TOO_LARGE")
        for payload in [{"groupId": gid, "toId": "a", "content": "both"},
                        {"groupId": gid, "roomId": "r", "content": "both"},
                        {"toId": "a", "roomId": "r", "content": "both"},
                        {"groupId": gid, "content": 5},
                        {"groupId": gid, "content": "x", "type": "video"}]:
            yield self.refused(driver, "b", "message", payload, "INVALID_PAYLOAD")
        yield self.barrier(driver, "x", [("a1", "a")])
        self.assertEqual(self.count(driver, "a2", "message", withContent("both")), 0)

    @inlineCallbacks
    def test_offlineCatchUp(self) -> Inline:
        """
        A member offline while the group talks gets no backlog message by
        message: at login, right after C{online_users}, it gets C{groups
        {groups}} with C{unreadCount}, C{readSeq} and C{lastMessage}, and
        catches up with C{get_history {groupId, after: readSeq}};
        C{message:read} then moves its cursor (forward only, capped at
        C{lastSeq}) and the unread count falls to 0.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "a", "a", "Alice")
        yield self.create(driver, "a", "team", ["b", "c"], id="g-team")
        yield self.send(driver, "a", "before b ever came", groupId="g-team")
        # b's first login: the group is in the summary
        yield self.login(driver, "b1", "b", "Bob")
        (summary,) = yield driver.waitFor("b1", "groups")
        self.assertEqual(set(summary), {"groups"})
        (entry,) = summary["groups"]
        self.assertLessEqual(GROUP_FIELDS | SUMMARY_FIELDS, set(entry))
        self.assertEqual((entry["id"], entry["name"], entry["memberCount"], entry["ownerId"]),
                         ("g-team", "team", 3, "a"))
        self.assertEqual(entry["lastMessage"]["content"], "before b ever came")
        self.assertEqual(entry["lastSeq"], entry["lastMessage"]["seq"])
        names = [r["event"] for r in driver.reports
                 if r.get("type") == "event" and r["client"] == "b1"]
        if self.ordered:
            self.assertEqual(names, ["user:login:success", "online_users", "groups"])
        read = yield self.ask(driver, "b1", "message:read",
                              {"groupId": "g-team", "upToSeq": entry["lastSeq"]})
        self.assertEqual(set(read), {"readerId", "groupId", "upToSeq", "timestamp"})
        self.assertEqual((read["readerId"], read["groupId"], read["upToSeq"]),
                         ("b", "g-team", entry["lastSeq"]))
        readSeq = read["upToSeq"]
        yield driver.close("b1")
        # the group talks while b is away; a 1:1 message waits for b too
        yield self.login(driver, "c", "c", "Carol")
        direct = yield self.send(driver, "a", "1:1 while away", toId="b", id="direct-away")
        self.assertEqual(direct["status"], "offline")
        receipts = []
        for i, sender in enumerate(["a", "a", "c"]):
            receipt = yield self.send(driver, sender, f"while away {i}", groupId="g-team",
                                      id=f"away-{i}")
            self.assertEqual(receipt["status"], "sent")
            receipts.append(receipt)
        # b comes back: its 1:1 messages, then a summary, no group backlog
        yield self.login(driver, "b2", "b", "Bob")
        (summary,) = yield driver.waitFor("b2", "groups")
        yield driver.waitFor("b2", "message", predicate=withId("direct-away"))
        names = [r["event"] for r in driver.reports
                 if r.get("type") == "event" and r["client"] == "b2"]
        if self.ordered:
            # (each stored message is followed by its recovery:offset)
            self.assertEqual(names, ["user:login:success", "online_users", "message", "recovery:offset", "groups"])
        (entry,) = summary["groups"]
        self.assertEqual((entry["id"], entry["unreadCount"], entry["readSeq"], entry["lastSeq"]),
                         ("g-team", 3, readSeq, receipts[-1]["seq"]))
        last = entry["lastMessage"]
        self.assertEqual((last["id"], last["fromId"], last["groupId"], last["content"],
                          last["seq"]),
                         ("away-2", "c", "g-team", "while away 2", receipts[-1]["seq"]))
        (page,) = yield driver.emit("b2", "get_history", {"groupId": "g-team", "after": readSeq},
                                    ack=True)
        self.assertEqual([m["content"] for m in page["messages"]],
                         ["while away 0", "while away 1", "while away 2"])
        self.assertEqual([m["seq"] for m in page["messages"]], [r["seq"] for r in receipts])
        self.assertFalse(page["hasMore"])
        (older,) = yield driver.emit("b2", "get_history",
                                     {"groupId": "g-team", "limit": 2, "before": receipts[1]["seq"]},
                                     ack=True)
        self.assertEqual([m["content"] for m in older["messages"]],
                         ["before b ever came", "while away 0"])
        self.assertTrue(older["hasMore"])
        yield self.barrier(driver, "a", [("b2", "b")])
        self.assertEqual(self.count(driver, "b2", "message", inGroup("g-team")), 0)
        self.assertEqual(self.count(driver, "b2", "message"), 2)  # direct-away and the barrier
        # reading: forward only, capped at lastSeq
        middle = yield self.ask(driver, "b2", "message:read",
                                {"groupId": "g-team", "upToSeq": receipts[1]["seq"]})
        self.assertEqual(middle["upToSeq"], receipts[1]["seq"])
        back = yield self.ask(driver, "b2", "message:read",
                              {"groupId": "g-team", "upToSeq": readSeq})
        self.assertEqual(back["upToSeq"], receipts[1]["seq"])
        listed = yield self.ask(driver, "b2", "group:list")
        self.assertEqual((listed["groups"][0]["unreadCount"], listed["groups"][0]["readSeq"]),
                         (1, receipts[1]["seq"]))
        capped = yield self.ask(driver, "b2", "message:read",
                                {"groupId": "g-team", "upToSeq": receipts[-1]["seq"] + 1000})
        self.assertEqual(capped["upToSeq"], receipts[-1]["seq"])
        listed = yield self.ask(driver, "b2", "group:list")
        self.assertEqual((listed["groups"][0]["unreadCount"], listed["groups"][0]["readSeq"]),
                         (0, receipts[-1]["seq"]))
        # the sender's own messages never count as unread
        yield self.send(driver, "b2", "mine", groupId="g-team")
        listed = yield self.ask(driver, "b2", "group:list")
        self.assertEqual(listed["groups"][0]["unreadCount"], 0)
        yield self.refused(driver, "b2", "message:read", {"groupId": "g-team"}, "INVALID_PAYLOAD")
        yield self.refused(driver, "b2", "message:read",
                           {"groupId": "g-team", "friendId": "a", "upToSeq": 1}, "INVALID_PAYLOAD")
        yield self.refused(driver, "b2", "get_history", {"groupId": "g-team", "friendId": "a"},
                           "INVALID_PAYLOAD")

    @inlineCallbacks
    def test_severalDevicesAndReceipts(self) -> Inline:
        """
        C{message:read {groupId, upToSeq}} from one device sends
        C{message:read {readerId, groupId, upToSeq, timestamp}} to the
        reader's other devices only (not the caller's socket, not the
        sender), and only when the cursor moved; C{group:read_receipts}
        splits the members but the sender by their cursors; strangers get
        C{NOT_FOUND}, and so does an unknown message.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "a", "a", "Alice")
        yield self.login(driver, "b1", "b", "Bob")
        yield self.login(driver, "b2", "b", "Bob")
        yield self.login(driver, "b3", "b", "Bob")
        yield self.login(driver, "c", "c", "Carol")
        yield self.login(driver, "x", "x", "X")
        group = yield self.create(driver, "a", "devices", ["b", "c", "d"])
        gid = group["id"]
        one = yield self.send(driver, "a", "one", groupId=gid, id="dev-1")
        second = yield self.send(driver, "a", "two", groupId=gid, id="dev-2")
        for client in ("b1", "b2", "b3", "c"):
            yield driver.waitFor(client, "message", predicate=withId("dev-2"))
        ack = yield self.ask(driver, "b1", "message:read",
                             {"groupId": gid, "upToSeq": one["seq"]})
        for device in ("b2", "b3"):
            (read,) = yield driver.waitFor(device, "message:read")
            self.assertEqual(read, {"readerId": "b", "groupId": gid, "upToSeq": one["seq"],
                                    "timestamp": ack["timestamp"]})
        receipts = yield self.ask(driver, "c", "group:read_receipts",
                                  {"groupId": gid, "messageId": "dev-1"})
        self.assertEqual(set(receipts), {"messageId", "readBy", "unreadBy"})
        self.assertEqual((receipts["messageId"], receipts["readBy"], sorted(receipts["unreadBy"])),
                         ("dev-1", ["b"], ["c", "d"]))
        receipts = yield self.ask(driver, "a", "group:read_receipts",
                                  {"groupId": gid, "messageId": "dev-2"})
        self.assertEqual((receipts["readBy"], sorted(receipts["unreadBy"])), ([], ["b", "c", "d"]))
        # not moved: nobody is told
        yield self.ask(driver, "b2", "message:read", {"groupId": gid, "upToSeq": one["seq"]})
        yield self.ask(driver, "c", "message:read", {"groupId": gid, "upToSeq": second["seq"]})
        receipts = yield self.ask(driver, "b3", "group:read_receipts",
                                  {"groupId": gid, "messageId": "dev-2"})
        self.assertEqual((receipts["readBy"], sorted(receipts["unreadBy"])), (["c"], ["b", "d"]))
        yield self.barrier(driver, "x", [("a", "a"), ("b1", "b"), ("c", "c")])
        self.assertEqual(driver.events("b1", "message:read"), [])
        self.assertEqual(len(driver.events("b2", "message:read")), 1)
        self.assertEqual(len(driver.events("b3", "message:read")), 1)
        self.assertEqual(driver.events("a", "message:read"), [])
        self.assertEqual(driver.events("c", "message:read"), [])
        yield self.refused(driver, "x", "group:read_receipts", {"groupId": gid, "messageId": "dev-1"},
                           "NOT_FOUND")
        yield self.refused(driver, "a", "group:read_receipts", {"groupId": gid, "messageId": "nope"},
                           "NOT_FOUND")
        yield self.refused(driver, "x", "message:read", {"groupId": gid, "upToSeq": 1}, "NOT_FOUND")
        yield self.refused(driver, "x", "get_history", {"groupId": gid}, "NOT_FOUND")

    # ---- membership

    @inlineCallbacks
    def test_membership(self) -> Inline:
        """
        C{group:update}, C{group:set_role}, C{group:add_members},
        C{group:remove_members} and C{group:leave} with their acks, their
        events to the right devices and their system messages; who may do
        what (owner, admin, member, former member, stranger); the owner who
        leaves hands the group to the longest-serving admin; C{set_role
        owner} hands it over and makes the old owner admin.
        """
        driver = yield self.startDriver()
        for name in "abcdex":
            yield self.login(driver, name, name, name.upper())
        group = yield self.create(driver, "a", "old name", ["b", "c"])
        gid = group["id"]
        for client in ("b", "c"):
            yield driver.waitFor(client, "group:joined", predicate=joinedTo(gid))
        # update: owner or admin; members refused, strangers not told it exists
        updated = yield self.ask(driver, "a", "group:update",
                                 {"groupId": gid, "name": "新名字", "avatar": "https://x/1.png"})
        self.assertEqual(set(updated), GROUP_FIELDS | {"members"})
        self.assertEqual((updated["name"], updated["avatar"]), ("新名字", "https://x/1.png"))
        for client in ("a", "b", "c"):
            (event,) = yield driver.waitFor(client, "group:updated", predicate=joinedTo(gid))
            self.assertEqual(set(event), {"group"})
            self.assertEqual((event["group"]["name"], event["group"]["members"]),
                             ("新名字", updated["members"]))
            (system,) = yield driver.waitFor(client, "message", predicate=systemAction(gid, "rename"))
            self.assertEqual((system["fromId"], system["system"]["by"]), ("a", "a"))
        avatarOnly = yield self.ask(driver, "a", "group:update",
                                    {"groupId": gid, "avatar": "https://x/2.png"})
        self.assertEqual((avatarOnly["name"], avatarOnly["avatar"]), ("新名字", "https://x/2.png"))
        (system,) = yield driver.waitFor("c", "message", predicate=systemAction(gid, "update"))
        self.assertEqual(system["system"]["by"], "a")
        yield self.refused(driver, "c", "group:update", {"groupId": gid, "name": "mine"}, "FORBIDDEN")
        yield self.refused(driver, "x", "group:update", {"groupId": gid, "name": "mine"}, "NOT_FOUND")
        yield self.refused(driver, "a", "group:update", {"groupId": gid, "name": ""},
                           "INVALID_PAYLOAD")
        yield self.refused(driver, "a", "group:update", {"groupId": gid, "name": "n" * 129},
                           "INVALID_PAYLOAD")
        # set_role: owner only
        promoted = yield self.ask(driver, "a", "group:set_role",
                                  {"groupId": gid, "userId": "b", "role": "admin"})
        self.assertEqual(roles(promoted), {"a": "owner", "b": "admin", "c": "member"})
        for client in ("b", "c"):
            (event,) = yield driver.waitFor(client, "group:updated",
                                            predicate=lambda args: roles(first(args)["group"]).get("b") == "admin")
            (system,) = yield driver.waitFor(client, "message", predicate=systemAction(gid, "role"))
            self.assertEqual((system["system"]["by"], system["system"]["userIds"],
                              system["system"]["role"]), ("a", ["b"], "admin"))
        yield self.refused(driver, "b", "group:set_role",
                           {"groupId": gid, "userId": "c", "role": "admin"}, "FORBIDDEN")
        yield self.refused(driver, "a", "group:set_role",
                           {"groupId": gid, "userId": "c", "role": "boss"}, "INVALID_PAYLOAD")
        yield self.refused(driver, "a", "group:set_role",
                           {"groupId": gid, "userId": "x", "role": "admin"}, "NOT_FOUND")
        # add_members: by an admin; members already there ignored
        added = yield self.ask(driver, "b", "group:add_members",
                               {"groupId": gid, "userIds": ["d", "e", "c"]})
        self.assertEqual(roles(added), {"a": "owner", "b": "admin", "c": "member",
                                        "d": "member", "e": "member"})
        self.assertEqual(added["memberCount"], 5)
        order = [m["userId"] for m in added["members"]]
        self.assertEqual((order[0], sorted(order[1:3]), sorted(order[3:])), ("a", ["b", "c"], ["d", "e"]))
        joinedAts = [m["joinedAt"] for m in added["members"][1:]]
        self.assertEqual(joinedAts, sorted(joinedAts))
        for client in ("d", "e"):
            (joined,) = yield driver.waitFor(client, "group:joined", predicate=joinedTo(gid))
            self.assertEqual(joined["group"]["members"], added["members"])
        for client in ("a", "b", "c"):
            (change,) = yield driver.waitFor(client, "group:members", predicate=inGroup(gid))
            self.assertEqual((change["groupId"], sorted(change["added"]), change["removed"],
                              change["by"]), (gid, ["d", "e"], [], "b"))
            (system,) = yield driver.waitFor(client, "message", predicate=systemAction(gid, "add"))
            self.assertEqual((system["fromId"], sorted(system["system"]["userIds"])),
                             ("b", ["d", "e"]))
        (page,) = yield driver.emit("d", "get_history", {"groupId": gid}, ack=True)
        self.assertEqual([m["system"]["action"] for m in page["messages"]][:3],
                         ["create", "rename", "update"])
        yield self.refused(driver, "c", "group:add_members", {"groupId": gid, "userIds": ["x"]},
                           "FORBIDDEN")
        yield self.refused(driver, "x", "group:add_members", {"groupId": gid, "userIds": ["x"]},
                           "NOT_FOUND")
        yield self.refused(driver, "a", "group:add_members", {"groupId": gid, "userIds": "x"},
                           "INVALID_PAYLOAD")
        yield self.ask(driver, "a", "group:set_role", {"groupId": gid, "userId": "e", "role": "admin"})
        # remove_members: nobody removes the owner; an admin removes members only
        yield self.refused(driver, "b", "group:remove_members", {"groupId": gid, "userIds": ["a"]},
                           "FORBIDDEN")
        yield self.refused(driver, "a", "group:remove_members", {"groupId": gid, "userIds": ["a"]},
                           "FORBIDDEN")
        yield self.refused(driver, "b", "group:remove_members", {"groupId": gid, "userIds": ["e"]},
                           "FORBIDDEN")
        yield self.refused(driver, "c", "group:remove_members", {"groupId": gid, "userIds": ["d"]},
                           "FORBIDDEN")
        removed = yield self.ask(driver, "b", "group:remove_members",
                                 {"groupId": gid, "userIds": ["d", "x"]})
        self.assertNotIn("d", roles(removed))
        self.assertEqual(removed["memberCount"], 4)
        (left,) = yield driver.waitFor("d", "group:left")
        self.assertEqual(left, {"groupId": gid, "reason": "removed", "by": "b"})
        for client in ("a", "b", "c", "e"):
            (change,) = yield driver.waitFor(client, "group:members",
                                             predicate=lambda args: first(args)["removed"] == ["d"])
            self.assertEqual((change["groupId"], change["added"], change["by"]), (gid, [], "b"))
            yield driver.waitFor(client, "message", predicate=systemAction(gid, "remove"))
        # a former member: no more messages; FORBIDDEN to send or read, info NOT_FOUND
        yield self.send(driver, "a", "after d left", groupId=gid)
        yield self.refused(driver, "d", "message", {"groupId": gid, "content": "still here?", "id": "d-1"},
                           "FORBIDDEN")
        yield self.refused(driver, "d", "get_history", {"groupId": gid}, "FORBIDDEN")
        yield self.refused(driver, "d", "group:info", {"groupId": gid}, "NOT_FOUND")
        yield self.refused(driver, "d", "typing", {"groupId": gid, "isTyping": True}, "FORBIDDEN")
        listed = yield self.ask(driver, "d", "group:list")
        self.assertEqual(listed["groups"], [])
        # leave: a member
        ack = yield self.ask(driver, "c", "group:leave", {"groupId": gid})
        self.assertEqual(ack, {"groupId": gid, "left": True})
        (left,) = yield driver.waitFor("c", "group:left")
        self.assertEqual(left, {"groupId": gid, "reason": "left", "by": "c"})
        for client in ("a", "b", "e"):
            (change,) = yield driver.waitFor(client, "group:members",
                                             predicate=lambda args: first(args)["removed"] == ["c"])
            self.assertEqual((change["added"], change["by"]), ([], "c"))
        # leave: the owner, handing over to the longest-serving admin (b, not e)
        ack = yield self.ask(driver, "a", "group:leave", {"groupId": gid})
        self.assertEqual(ack, {"groupId": gid, "left": True})
        for client in ("b", "e"):
            (event,) = yield driver.waitFor(client, "group:updated",
                                            predicate=lambda args: first(args)["group"]["ownerId"] == "b")
            self.assertEqual(roles(event["group"]), {"b": "owner", "e": "admin"})
        info = yield self.ask(driver, "e", "group:info", {"groupId": gid})
        self.assertEqual((info["ownerId"], info["members"][0]["userId"], info["memberCount"]),
                         ("b", "b", 2))
        # set_role owner: a handover, the old owner becomes admin
        handed = yield self.ask(driver, "b", "group:set_role",
                                {"groupId": gid, "userId": "e", "role": "owner"})
        self.assertEqual((handed["ownerId"], roles(handed)), ("e", {"e": "owner", "b": "admin"}))
        yield self.refused(driver, "b", "group:dissolve", {"groupId": gid}, "FORBIDDEN")
        # the history tells the story
        (page,) = yield driver.emit("e", "get_history", {"groupId": gid}, ack=True)
        actions = [m["system"]["action"] for m in page["messages"] if m["type"] == "system"]
        for action in ("create", "rename", "role", "add", "remove"):
            self.assertIn(action, actions)
        self.assertEqual(actions[:6], ["create", "rename", "update", "role", "add", "role"])
        for message in page["messages"]:
            if message["type"] == "system":
                self.assertEqual(message["fromId"], message["system"]["by"])
        yield self.barrier(driver, "x", [("d", "d"), ("c", "c")])
        self.assertEqual(self.count(driver, "d", "message", withContent("after d left")), 0)
        self.assertEqual(self.count(driver, "d", "group:members"), 0)
        self.assertEqual(self.count(driver, "c", "group:members",
                                    lambda args: first(args)["removed"] == ["c"]), 0)

    @inlineCallbacks
    def test_ownerLeavesWithoutAdmins(self) -> Inline:
        """
        An owner who leaves a group with no admin hands it to the
        longest-serving member; members learn it through C{group:updated};
        a C{role} system message records it.
        """
        driver = yield self.startDriver()
        for name in "abcx":
            yield self.login(driver, name, name, name.upper())
        group = yield self.create(driver, "a", "handover", ["b"])
        gid = group["id"]
        yield self.ask(driver, "a", "group:add_members", {"groupId": gid, "userIds": ["c"]})
        yield self.ask(driver, "a", "group:leave", {"groupId": gid})
        for client in ("b", "c"):
            (event,) = yield driver.waitFor(client, "group:updated",
                                            predicate=lambda args: first(args)["group"]["ownerId"] == "b")
            self.assertEqual(roles(event["group"]), {"b": "owner", "c": "member"})
        info = yield self.ask(driver, "c", "group:info", {"groupId": gid})
        self.assertEqual((info["ownerId"], info["memberCount"]), ("b", 2))
        yield self.refused(driver, "c", "group:update", {"groupId": gid, "name": "c's?"}, "FORBIDDEN")
        yield self.ask(driver, "b", "group:update", {"groupId": gid, "name": "b's now"})
        yield driver.waitFor("c", "message", predicate=systemAction(gid, "rename"))
        (page,) = yield driver.emit("c", "get_history", {"groupId": gid}, ack=True)
        handovers = [m["system"] for m in page["messages"]
                     if m["type"] == "system" and m["system"]["action"] == "role"]
        self.assertEqual([h.get("userIds") for h in handovers], [["b"]],
                         "the owner's handover on leaving is stored as a 'role' system message")
        self.assertEqual(self.count(driver, "c", "message", systemAction(gid, "role")), 1)

    @inlineCallbacks
    def test_dissolve(self) -> Inline:
        """
        Only the owner dissolves; every member's devices get C{group:left
        {reason: 'dissolved'}}, and the group is C{NOT_FOUND} for everyone
        afterwards; the last member leaving dissolves a group too.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "a1", "a", "A")
        yield self.login(driver, "a2", "a", "A")
        yield self.login(driver, "b", "b", "B")
        group = yield self.create(driver, "a1", "short-lived", ["b", "c"])
        gid = group["id"]
        yield self.send(driver, "b", "hello", groupId=gid, id="doomed")
        yield self.refused(driver, "b", "group:dissolve", {"groupId": gid}, "FORBIDDEN")
        ack = yield self.ask(driver, "a1", "group:dissolve", {"groupId": gid})
        self.assertEqual(ack, {"groupId": gid, "dissolved": True})
        for client in ("a1", "a2", "b"):
            (left,) = yield driver.waitFor(client, "group:left")
            self.assertEqual(left, {"groupId": gid, "reason": "dissolved", "by": "a"})
        for client in ("a1", "b"):
            for event, payload in [("group:info", {"groupId": gid}),
                                   ("get_history", {"groupId": gid}),
                                   ("message", {"groupId": gid, "content": "anyone?"}),
                                   ("group:update", {"groupId": gid, "name": "back"}),
                                   ("group:add_members", {"groupId": gid, "userIds": ["d"]}),
                                   ("group:read_receipts", {"groupId": gid, "messageId": "doomed"}),
                                   ("group:leave", {"groupId": gid}),
                                   ("group:dissolve", {"groupId": gid})]:
                yield self.refused(driver, client, event, payload, "NOT_FOUND")
        listed = yield self.ask(driver, "b", "group:list")
        self.assertEqual(listed["groups"], [])
        # the last member leaving
        lonely = yield self.create(driver, "b", "lonely", ["a"])
        yield self.ask(driver, "a1", "group:leave", {"groupId": lonely["id"]})
        yield self.ask(driver, "b", "group:leave", {"groupId": lonely["id"]})
        # a former member of a living group would be FORBIDDEN here
        for client in ("b", "a2"):
            yield self.refused(driver, client, "get_history", {"groupId": lonely["id"]},
                               "NOT_FOUND")
            yield self.refused(driver, client, "message",
                               {"groupId": lonely["id"], "content": "anyone?"}, "NOT_FOUND")

    @inlineCallbacks
    def test_groupTyping(self) -> Inline:
        """
        C{typing {groupId, isTyping}} reaches every online member device but
        the sending socket as C{{fromId, fromName, isTyping, groupId}},
        nobody else; the ack is C{{groupId, delivered}}; strangers get
        C{NOT_FOUND}.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "a1", "a", "Alice")
        yield self.login(driver, "a2", "a", "Alice")
        yield self.login(driver, "b", "b", "Bob")
        yield self.login(driver, "x", "x", "X")
        group = yield self.create(driver, "a1", "typists", ["b", "c"])
        gid = group["id"]
        ack = yield self.ask(driver, "a1", "typing", {"groupId": gid, "isTyping": True,
                                                      "fromName": "ignored"})
        self.assertEqual(ack, {"groupId": gid, "delivered": True})
        for client in ("a2", "b"):
            (typing,) = yield driver.waitFor(client, "typing")
            self.assertEqual(typing, {"fromId": "a", "fromName": "Alice", "isTyping": True,
                                      "groupId": gid})
        yield driver.emit("b", "typing", {"groupId": gid, "isTyping": False})
        (stopped,) = yield driver.waitFor("a1", "typing")
        self.assertEqual(stopped, {"fromId": "b", "fromName": "Bob", "isTyping": False,
                                   "groupId": gid})
        solo = yield self.create(driver, "x", "nobody else online", ["c"])
        ack = yield self.ask(driver, "x", "typing", {"groupId": solo["id"], "isTyping": True})
        self.assertEqual(ack, {"groupId": solo["id"], "delivered": False})
        yield self.refused(driver, "x", "typing", {"groupId": gid, "isTyping": True}, "NOT_FOUND")
        yield self.refused(driver, "b", "typing", {"groupId": gid, "toId": "a", "isTyping": True},
                           "INVALID_PAYLOAD")
        yield self.barrier(driver, "x", [("a1", "a"), ("b", "b")])
        self.assertEqual(len(driver.events("a1", "typing")), 1)
        self.assertEqual(len(driver.events("b", "typing")), 1)
        self.assertEqual(driver.events("x", "typing"), [])

    # ---- chat rooms

    @inlineCallbacks
    def test_rooms(self) -> Inline:
        """
        C{room:create} (idempotent per creator and id), C{room:list}
        (public rooms and this socket's), C{room:join} (the room, the users
        in it and the latest 50 messages), room messages and typing to the
        sockets in the room but the sender's, from sockets in the room only;
        C{get_history} of a public room for anyone logged in, of a private
        one only for sockets in it.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "a1", "a", "Alice")
        yield self.login(driver, "a2", "a", "Alice")
        yield self.login(driver, "b", "b", "Bob")
        yield self.login(driver, "c", "c", "Carol")
        room = yield self.ask(driver, "a1", "room:create",
                              {"name": "大厅", "id": "lobby", "topic": "general"})
        self.assertEqual(set(room), ROOM_FIELDS)
        self.assertEqual((room["id"], room["name"], room["topic"], room["public"],
                          room["createdBy"], room["onlineCount"]),
                         ("lobby", "大厅", "general", True, "a", 0))
        self.assertIsInstance(room["createdAt"], int)
        again = yield self.ask(driver, "a2", "room:create", {"name": "大厅", "id": "lobby"})
        self.assertEqual((again["id"], again["createdAt"]), ("lobby", room["createdAt"]))
        taken = yield self.ask(driver, "b", "room:create", {"name": "mine", "id": "lobby"})
        self.assertRegex(taken["id"], UUID)
        self.assertEqual((taken["topic"], taken["createdBy"]), (None, "b"))
        secret = yield self.ask(driver, "a1", "room:create",
                                {"name": "secret", "id": "secret", "public": False})
        self.assertFalse(secret["public"])
        listed = yield self.ask(driver, "c", "room:list")
        self.assertEqual(set(listed), {"rooms"})
        self.assertEqual(sorted(r["id"] for r in listed["rooms"]), sorted(["lobby", taken["id"]]))
        for entry in listed["rooms"]:
            self.assertEqual(set(entry), ROOM_FIELDS)
        # joining
        joined = yield self.ask(driver, "a1", "room:join", {"roomId": "lobby"})
        self.assertEqual(set(joined), {"room", "members", "messages"})
        self.assertEqual((joined["room"]["id"], joined["room"]["onlineCount"]), ("lobby", 1))
        self.assertEqual(joined["members"], [user("a", "Alice")])
        self.assertEqual(joined["messages"], [])
        joined = yield self.ask(driver, "b", "room:join", {"roomId": "lobby"})
        self.assertEqual(sorted(u["id"] for u in joined["members"]), ["a", "b"])
        self.assertEqual(joined["room"]["onlineCount"], 2)
        (arrival,) = yield driver.waitFor("a1", "room:joined")
        self.assertEqual(arrival, {"roomId": "lobby", "user": user("b", "Bob")})
        listed = yield self.ask(driver, "a1", "room:list")
        self.assertEqual({r["id"]: r["onlineCount"] for r in listed["rooms"]}["lobby"], 2)
        # messages: from sockets in the room, to the other sockets in it
        receipt = yield self.send(driver, "b", "大家好", roomId="lobby", id="rm-1")
        self.assertEqual(set(receipt), {"messageId", "status", "timestamp", "seq"})
        self.assertEqual((receipt["messageId"], receipt["status"]), ("rm-1", "sent"))
        (message,) = yield driver.waitFor("a1", "message", predicate=withId("rm-1"))
        self.assertEqual((message["roomId"], message["fromId"], message["fromName"],
                          message["content"], message["seq"]),
                         ("lobby", "b", "Bob", "大家好", receipt["seq"]))
        self.assertNotIn("toId", message)
        self.assertNotIn("groupId", message)
        yield self.refused(driver, "a2", "message", {"roomId": "lobby", "content": "me too", "id": "a2-1"},
                           "FORBIDDEN")
        yield self.refused(driver, "c", "message", {"roomId": "lobby", "content": "me too"},
                           "FORBIDDEN")
        yield self.refused(driver, "c", "message", {"roomId": "no-such", "content": "x", "id": "c-1"},
                           "NOT_FOUND")
        yield self.refused(driver, "c", "room:join", {"roomId": "no-such"}, "NOT_FOUND")
        ack = yield self.ask(driver, "a1", "typing", {"roomId": "lobby", "isTyping": True})
        self.assertEqual(ack, {"roomId": "lobby", "delivered": True})
        (typing,) = yield driver.waitFor("b", "typing")
        self.assertEqual(typing, {"fromId": "a", "fromName": "Alice", "isTyping": True,
                                  "roomId": "lobby"})
        yield self.refused(driver, "c", "typing", {"roomId": "lobby", "isTyping": True},
                           "FORBIDDEN")
        # joining again from the same socket: the same answer, no event
        rejoined = yield self.ask(driver, "b", "room:join", {"roomId": "lobby"})
        self.assertEqual(sorted(u["id"] for u in rejoined["members"]), ["a", "b"])
        self.assertEqual([m["id"] for m in rejoined["messages"]], ["rm-1"])
        # the latest 50, oldest first
        sends = [driver.emit("b", "message", {"roomId": "lobby", "content": f"n{i}", "id": f"n{i}"},
                             ack=True) for i in range(51)]
        yield gatherResults(sends)
        yield driver.waitFor("a1", "message", predicate=withId("n50"))
        late = yield self.ask(driver, "c", "room:join", {"roomId": "lobby"})
        self.assertEqual([m["content"] for m in late["messages"]], [f"n{i}" for i in range(1, 51)])
        seqs = [m["seq"] for m in late["messages"]]
        self.assertEqual(seqs, sorted(seqs))
        # history: a public room for anyone logged in, a private one for its sockets only
        (page,) = yield driver.emit("a2", "get_history", {"roomId": "lobby", "limit": 2}, ack=True)
        self.assertLessEqual({"roomId", "messages", "hasMore"}, set(page))
        self.assertEqual((page["roomId"], [m["content"] for m in page["messages"]], page["hasMore"]),
                         ("lobby", ["n49", "n50"], True))
        yield self.ask(driver, "a1", "room:join", {"roomId": "secret"})
        yield self.send(driver, "a1", "hush", roomId="secret")
        yield self.refused(driver, "b", "get_history", {"roomId": "secret"}, "NOT_FOUND")
        yield self.refused(driver, "a2", "get_history", {"roomId": "secret"}, "NOT_FOUND")
        secretJoin = yield self.ask(driver, "b", "room:join", {"roomId": "secret"})
        self.assertEqual([m["content"] for m in secretJoin["messages"]], ["hush"])
        (page,) = yield driver.emit("b", "get_history", {"roomId": "secret"}, ack=True)
        self.assertEqual([m["content"] for m in page["messages"]], ["hush"])
        # read state: a cursor per user, as for groups, kept in step on the
        # reader's other devices (was INVALID_PAYLOAD)
        lastSeq = seqs[-1]
        read = yield self.ask(driver, "a1", "message:read", {"roomId": "lobby", "upToSeq": lastSeq})
        self.assertEqual(set(read), {"readerId", "roomId", "upToSeq", "timestamp"})
        self.assertEqual((read["readerId"], read["roomId"], read["upToSeq"]), ("a", "lobby", lastSeq))
        (synced,) = yield driver.waitFor("a2", "message:read")
        self.assertEqual(synced, read)
        back = yield self.ask(driver, "a2", "message:read", {"roomId": "lobby", "upToSeq": seqs[0]})
        self.assertEqual(back["upToSeq"], lastSeq)
        yield self.refused(driver, "c", "message:read", {"roomId": "secret", "upToSeq": 1}, "NOT_FOUND")
        yield self.refused(driver, "c", "message:read", {"roomId": "lobby"}, "INVALID_PAYLOAD")
        yield self.refused(driver, "c", "message:read", {"roomId": "lobby", "groupId": "g", "upToSeq": 1},
                           "INVALID_PAYLOAD")
        listed = yield self.ask(driver, "b", "room:list")
        self.assertIn("secret", [r["id"] for r in listed["rooms"]])
        listed = yield self.ask(driver, "c", "room:list")
        self.assertNotIn("secret", [r["id"] for r in listed["rooms"]])
        yield self.barrier(driver, "c", [("a2", "a")])
        yield self.barrier(driver, "a2", [("c", "c"), ("b", "b")])
        self.assertEqual(self.count(driver, "a2", "message", lambda args: "roomId" in first(args)), 0)
        self.assertEqual(driver.events("a2", "room:joined"), [])
        self.assertEqual(driver.events("a2", "typing"), [])
        self.assertEqual(self.count(driver, "c", "message", withId("rm-1")), 0)
        self.assertEqual(self.count(driver, "b", "message", lambda args: "roomId" in first(args)), 0)
        self.assertEqual([(first(args)["roomId"], first(args)["user"]["id"])
                          for args in driver.events("a1", "room:joined")],
                         [("lobby", "b"), ("lobby", "c"), ("secret", "b")])
        for payload in [{}, {"name": ""}, {"name": "n" * 129}, {"name": "r", "public": "yes"}]:
            yield self.refused(driver, "c", "room:create", payload, "INVALID_PAYLOAD")
        yield self.refused(driver, "c", "room:join", {}, "INVALID_PAYLOAD")
        yield self.refused(driver, "c", "room:leave", {}, "INVALID_PAYLOAD")

    @inlineCallbacks
    def test_roomPresencePerUser(self) -> Inline:
        """
        C{room:joined} and C{room:left} are per user, not per socket: a
        user's second socket entering or its first leaving says nothing;
        its last socket leaving, disconnecting or logging out says
        C{room:left}; C{room:leave} acks whether the socket was in.
        """
        # (without connection state recovery: a python client's close may
        # reach the server as a transport close, whose socket recovery
        # keeps in its rooms for the window)
        self.service, self.url = yield serveIM(self, recoveryWindow=0, **self.serverSettings)
        driver = yield self.startDriver()
        yield self.login(driver, "a", "a", "Alice")
        yield self.login(driver, "b1", "b", "Bob")
        yield self.login(driver, "b2", "b", "Bob")
        yield self.login(driver, "c", "c", "Carol")
        yield self.ask(driver, "a", "room:create", {"name": "floor", "id": "floor"})
        yield self.ask(driver, "a", "room:join", {"roomId": "floor"})
        yield self.ask(driver, "b1", "room:join", {"roomId": "floor"})
        (arrival,) = yield driver.waitFor("a", "room:joined")
        self.assertEqual(arrival, {"roomId": "floor", "user": user("b", "Bob")})
        joined = yield self.ask(driver, "b2", "room:join", {"roomId": "floor"})
        self.assertEqual(sorted(u["id"] for u in joined["members"]), ["a", "b"])
        self.assertEqual(joined["room"]["onlineCount"], 2)
        ack = yield self.ask(driver, "b1", "room:leave", {"roomId": "floor"})
        self.assertEqual(ack, {"roomId": "floor", "left": True})
        ack = yield self.ask(driver, "b1", "room:leave", {"roomId": "floor"})
        self.assertEqual(ack, {"roomId": "floor", "left": False})
        yield self.barrier(driver, "c", [("a", "a")])
        self.assertEqual(len(driver.events("a", "room:joined")), 1)
        self.assertEqual(driver.events("a", "room:left"), [])
        yield driver.close("b2")
        (gone,) = yield driver.waitFor("a", "room:left")
        self.assertEqual(gone, {"roomId": "floor", "userId": "b"})
        yield self.ask(driver, "c", "room:join", {"roomId": "floor"})
        yield driver.waitFor("a", "room:joined", predicate=lambda args: first(args)["user"]["id"] == "c")
        yield self.ask(driver, "c", "user:logout")
        (gone,) = yield driver.waitFor("a", "room:left", predicate=lambda args: first(args)["userId"] == "c")
        self.assertEqual(gone, {"roomId": "floor", "userId": "c"})
        listed = yield self.ask(driver, "a", "room:list")
        self.assertEqual({r["id"]: r["onlineCount"] for r in listed["rooms"]}, {"floor": 1})
        yield self.send(driver, "a", "alone", roomId="floor")
        yield self.barrier(driver, "a", [("b1", "b")])
        self.assertEqual(self.count(driver, "b1", "message", withContent("alone")), 0)
        self.assertEqual(driver.events("b1", "room:left"), [])

    # ---- recall

    @inlineCallbacks
    def test_recallDirect(self) -> Inline:
        """
        The sender recalls a 1:1 message: ack C{{messageId, recalled:
        true}}, C{message:recalled} to every device of both users, the stub
        (no content, no file) in history and in a later offline delivery;
        a second recall acks again without an event; the recipient is
        C{FORBIDDEN}, anyone else C{NOT_FOUND}.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "a1", "a", "Alice")
        yield self.login(driver, "a2", "a", "Alice")
        yield self.login(driver, "b", "b", "Bob")
        yield self.login(driver, "x", "x", "X")
        yield self.send(driver, "a1", "oops", toId="b", id="r-1")
        (original,) = yield driver.waitFor("b", "message", predicate=withId("r-1"))
        ack = yield self.ask(driver, "a1", "message:recall", {"messageId": "r-1"})
        self.assertEqual(ack, {"messageId": "r-1", "recalled": True})
        for client in ("a1", "a2", "b"):
            (recalled,) = yield driver.waitFor(client, "message:recalled")
            self.assertEqual(set(recalled), {"messageId", "seq", "conversation", "fromId", "by",
                                             "timestamp"})
            self.assertEqual((recalled["messageId"], recalled["conversation"], recalled["fromId"],
                              recalled["by"]), ("r-1", {"toId": "b"}, "a", "a"))
            self.assertEqual(recalled["seq"], original["seq"])
            self.assertIsInstance(recalled["timestamp"], int)
        again = yield self.ask(driver, "a2", "message:recall", {"messageId": "r-1", "toId": "b"})
        self.assertEqual(again, {"messageId": "r-1", "recalled": True})
        (page,) = yield driver.emit("b", "get_history", {"friendId": "a"}, ack=True)
        (stub,) = page["messages"]
        self.assertEqual((stub["id"], stub["content"], stub["recalled"], stub["recalledBy"],
                          stub["fromId"]), ("r-1", "", True, "a", "a"))
        # a file message, recalled before its offline recipient logs in
        yield self.send(driver, "a1", "", toId="d", id="r-file", type="file",
                        fileUrl="https://cdn/x.pdf", fileName="报价.pdf")
        yield self.ask(driver, "a1", "message:recall", {"messageId": "r-file"})
        yield self.login(driver, "d", "d", "Dan")
        (queued,) = yield driver.waitFor("d", "message", predicate=withId("r-file"))
        self.assertEqual((queued["content"], queued["recalled"], queued["recalledBy"]),
                         ("", True, "a"))
        self.assertNotIn("fileUrl", queued)
        self.assertNotIn("fileName", queued)
        (page,) = yield driver.emit("a1", "get_history", {"friendId": "d"}, ack=True)
        self.assertNotIn("fileUrl", page["messages"][0])
        # who may not (the recipient: test_recallDirectByRecipient)
        yield self.send(driver, "b", "keep", toId="a", id="r-2")
        yield self.refused(driver, "x", "message:recall", {"messageId": "r-2"}, "NOT_FOUND")
        yield self.refused(driver, "x", "message:recall", {"messageId": "r-1"}, "NOT_FOUND")
        yield self.refused(driver, "a1", "message:recall", {"messageId": "never"}, "NOT_FOUND")
        yield self.refused(driver, "a1", "message:recall", {}, "INVALID_PAYLOAD")
        yield self.refused(driver, "a1", "message:recall", {"messageId": "r-1", "toId": "b",
                                                            "groupId": "g"}, "INVALID_PAYLOAD")
        yield self.barrier(driver, "x", [("a1", "a"), ("b", "b")])
        yield self.barrier(driver, "b", [("x", "x")])
        for client in ("a1", "a2", "b"):
            self.assertEqual(self.count(driver, client, "message:recalled", withId("r-1")), 1, client)
        self.assertEqual(driver.events("x", "message:recalled"), [])
        (page,) = yield driver.emit("b", "get_history", {"friendId": "a"}, ack=True)
        self.assertEqual([m["content"] for m in page["messages"]], ["", "keep"])

    @inlineCallbacks
    def test_recallDirectByRecipient(self) -> Inline:
        """
        The recipient of a 1:1 message sees it but may not recall it:
        C{FORBIDDEN} when it names the conversation (C{toId}: the sender;
        docs/groups.md), C{NOT_FOUND} without (a message is found by its
        sender and id), and nothing changes.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "a", "a", "Alice")
        yield self.login(driver, "b", "b", "Bob")
        yield self.send(driver, "b", "keep", toId="a", id="r-2")
        yield driver.waitFor("a", "message", predicate=withId("r-2"))
        error = yield self.refused(driver, "a", "message:recall", {"messageId": "r-2", "toId": "b"}, "FORBIDDEN")
        self.assertEqual(error["id"], "r-2")
        yield self.refused(driver, "a", "message:recall", {"messageId": "r-2"}, "NOT_FOUND")
        (page,) = yield driver.emit("a", "get_history", {"friendId": "b"}, ack=True)
        self.assertEqual([(m["content"], bool(m.get("recalled"))) for m in page["messages"]],
                         [("keep", False)])

    @inlineCallbacks
    def test_recallGroup(self) -> Inline:
        """
        In a group the sender recalls its own message, the owner and admins
        anyone's; every member device gets C{message:recalled} with
        C{conversation: {groupId}}; a member recalling another's message is
        C{FORBIDDEN}, a stranger C{NOT_FOUND}; history shows the stub.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "a", "a", "Owner")
        yield self.login(driver, "b", "b", "Admin")
        yield self.login(driver, "c1", "c", "Member")
        yield self.login(driver, "c2", "c", "Member")
        yield self.login(driver, "x", "x", "X")
        group = yield self.create(driver, "a", "recalls", ["b", "c"])
        gid = group["id"]
        yield self.ask(driver, "a", "group:set_role", {"groupId": gid, "userId": "b", "role": "admin"})
        for i in range(3):
            yield self.send(driver, "c1", f"c says {i}", groupId=gid, id=f"gr-{i}")
        yield self.send(driver, "a", "owner says", groupId=gid, id="gr-a")
        yield self.send(driver, "c1", "", groupId=gid, id="gr-file", type="file",
                        fileUrl="https://cdn/q.pdf", fileName="q.pdf")
        (filed,) = yield driver.waitFor("c2", "message", predicate=withId("gr-file"))
        self.assertEqual((filed["fileUrl"], filed["fileName"]), ("https://cdn/q.pdf", "q.pdf"))
        yield self.ask(driver, "c1", "message:recall", {"messageId": "gr-file"})
        ack = yield self.ask(driver, "c1", "message:recall", {"messageId": "gr-0", "groupId": gid})
        self.assertEqual(ack, {"messageId": "gr-0", "recalled": True})
        ack = yield self.ask(driver, "b", "message:recall", {"messageId": "gr-1"})
        self.assertEqual(ack, {"messageId": "gr-1", "recalled": True})
        ack = yield self.ask(driver, "a", "message:recall", {"messageId": "gr-2"})
        for client in ("a", "b", "c1", "c2"):
            for messageId, by in [("gr-0", "c"), ("gr-1", "b"), ("gr-2", "a")]:
                (recalled,) = yield driver.waitFor(client, "message:recalled",
                                                   predicate=withId(messageId))
                self.assertEqual((recalled["conversation"], recalled["fromId"], recalled["by"]),
                                 ({"groupId": gid}, "c", by))
        yield self.refused(driver, "c2", "message:recall", {"messageId": "gr-a"}, "FORBIDDEN")
        yield self.refused(driver, "x", "message:recall", {"messageId": "gr-a"}, "NOT_FOUND")
        (page,) = yield driver.emit("c2", "get_history", {"groupId": gid}, ack=True)
        texts = [m for m in page["messages"] if m["type"] != "system"]
        self.assertEqual([(m["id"], m["content"], bool(m.get("recalled")), m.get("recalledBy"))
                          for m in texts],
                         [("gr-0", "", True, "c"), ("gr-1", "", True, "b"), ("gr-2", "", True, "a"),
                          ("gr-a", "owner says", False, None), ("gr-file", "", True, "c")])
        self.assertNotIn("fileUrl", texts[-1])
        self.assertNotIn("fileName", texts[-1])
        yield self.barrier(driver, "a", [("x", "x")])
        self.assertEqual(driver.events("x", "message:recalled"), [])

    @inlineCallbacks
    def test_recallRoom(self) -> Inline:
        """
        In a room the sender recalls its message; every socket in the room
        gets C{message:recalled} with C{conversation: {roomId}}; another
        user in the room is C{FORBIDDEN}; the join answer and history show
        the stub.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "a", "a", "A")
        yield self.login(driver, "b", "b", "B")
        yield self.login(driver, "c", "c", "C")
        yield self.ask(driver, "a", "room:create", {"name": "talk", "id": "talk"})
        for client in ("a", "b"):
            yield self.ask(driver, client, "room:join", {"roomId": "talk"})
        yield self.send(driver, "b", "oops", roomId="talk", id="rr-1")
        yield self.refused(driver, "a", "message:recall", {"messageId": "rr-1"}, "FORBIDDEN")
        ack = yield self.ask(driver, "b", "message:recall", {"messageId": "rr-1", "roomId": "talk"})
        self.assertEqual(ack, {"messageId": "rr-1", "recalled": True})
        for client in ("a", "b"):
            (recalled,) = yield driver.waitFor(client, "message:recalled")
            self.assertEqual((recalled["messageId"], recalled["conversation"], recalled["fromId"],
                              recalled["by"]), ("rr-1", {"roomId": "talk"}, "b", "b"))
        joined = yield self.ask(driver, "c", "room:join", {"roomId": "talk"})
        self.assertEqual([(m["id"], m["content"], m["recalled"]) for m in joined["messages"]],
                         [("rr-1", "", True)])
        (page,) = yield driver.emit("c", "get_history", {"roomId": "talk"}, ack=True)
        self.assertEqual([(m["content"], m["recalledBy"]) for m in page["messages"]], [("", "b")])

    # ---- refusals common to every new event

    @inlineCallbacks
    def test_notLoggedIn(self) -> Inline:
        """
        Every event GROUPS.md adds is C{NOT_LOGGED_IN} before login.
        """
        driver = yield self.startDriver()
        yield self.connect(driver, "anon")
        for event, payload in NEW_EVENTS:
            yield self.refused(driver, "anon", event, payload, "NOT_LOGGED_IN")
        yield self.refused(driver, "anon", "group:create", {"name": "g", "memberIds": []},
                           "NOT_LOGGED_IN", withAck=False)

    @inlineCallbacks
    def test_invalidPayloads(self) -> Inline:
        """
        Malformed payloads of the new events are C{INVALID_PAYLOAD}, and
        so is naming more than one conversation in C{message},
        C{get_history}, C{typing} and C{message:read}.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "a", "a", "A")
        group = yield self.create(driver, "a", "valid", ["b"])
        gid = group["id"]
        cases: List[Tuple[str, Any]] = [
            ("group:create", {"memberIds": ["b"]}),
            ("group:create", {"name": "", "memberIds": ["b"]}),
            ("group:create", {"name": "n" * 129, "memberIds": ["b"]}),
            ("group:create", {"name": "g", "memberIds": "b"}),
            ("group:create", {"name": "g", "memberIds": [{"id": "b"}]}),
            ("group:create", {"name": "g", "memberIds": ["b"], "avatar": "v" * 2049}),
            ("group:create", "g"),
            ("group:update", {"name": "no group"}),
            ("group:add_members", {"groupId": gid}),
            ("group:remove_members", {"groupId": gid, "userIds": "b"}),
            ("group:leave", {}),
            ("group:set_role", {"groupId": gid, "userId": "b"}),
            ("group:set_role", {"groupId": gid, "userId": "b", "role": "king"}),
            ("group:dissolve", {}),
            ("group:info", {}),
            ("group:read_receipts", {"groupId": gid}),
            ("message", {"toId": "b", "groupId": gid, "content": "x"}),
            ("message", {"content": "x"}),
            ("get_history", {"groupId": gid, "roomId": "r"}),
            ("get_history", {"groupId": gid, "limit": 0}),
            ("typing", {"toId": "b", "roomId": "r", "isTyping": True}),
            ("message:read", {"groupId": gid, "upToSeq": "ten"}),
            ("message:recall", {"messageId": ""}),
        ]
        for event, payload in cases:
            yield self.refused(driver, "a", event, payload, "INVALID_PAYLOAD")
        # the group is untouched
        info = yield self.ask(driver, "a", "group:info", {"groupId": gid})
        self.assertEqual((info["name"], roles(info)), ("valid", {"a": "owner", "b": "member"}))


class GroupNodeTests(GroupScenario, TestCase):
    """
    Groups, rooms and recall with Node's socket.io-client over WebSocket.
    """

    kind = "node"
    transports = ["websocket"]


class GroupPythonTests(GroupScenario, TestCase):
    """
    Groups, rooms and recall with python-socketio, long-polling upgraded to
    WebSocket.
    """

    kind = "python"
    ordered = False


class LimitScenario(Scenario):
    """
    The bounds of GROUPS.md on a server with small ones: 4 members per
    group, 2 groups per user, 2 sockets per room, 1 room per creator, and
    only C{boss} may create rooms.
    """

    serverSettings = {"maxGroupMembers": 4, "maxGroupsPerUser": 2, "maxRoomSockets": 2,
                      "maxRoomsPerUser": 1, "roomCreators": ("boss",)}

    @inlineCallbacks
    def test_groupLimits(self) -> Inline:
        """
        A group past C{maxGroupMembers} (owner included) is C{TOO_LARGE},
        whether created so or grown so; a user past C{maxGroupsPerUser} is
        C{RATE_LIMITED}, whether creating or being added; nothing changes.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "a", "a", "A")
        yield self.login(driver, "b", "b", "B")
        yield self.refused(driver, "a", "group:create",
                           {"name": "big", "memberIds": ["b", "c", "d", "e"]}, "TOO_LARGE")
        full = yield self.create(driver, "a", "full", ["b", "c", "d"])
        self.assertEqual(full["memberCount"], 4)
        yield self.refused(driver, "a", "group:add_members",
                           {"groupId": full["id"], "userIds": ["e"]}, "TOO_LARGE")
        info = yield self.ask(driver, "a", "group:info", {"groupId": full["id"]})
        self.assertEqual(info["memberCount"], 4)
        yield self.create(driver, "a", "second", [])
        yield self.refused(driver, "a", "group:create", {"name": "third", "memberIds": []},
                           "RATE_LIMITED")
        other = yield self.create(driver, "b", "b's second", [])
        yield self.refused(driver, "b", "group:add_members",
                           {"groupId": other["id"], "userIds": ["a"]}, "RATE_LIMITED")
        yield self.refused(driver, "b", "group:create", {"name": "with a", "memberIds": ["a"]},
                           "RATE_LIMITED")
        listed = yield self.ask(driver, "a", "group:list")
        self.assertEqual(len(listed["groups"]), 2)
        yield self.ask(driver, "a", "group:leave", {"groupId": full["id"]})
        yield self.create(driver, "a", "after leaving one", [])

    @inlineCallbacks
    def test_roomLimits(self) -> Inline:
        """
        With room creators configured, others are C{FORBIDDEN} to create
        rooms; a creator past C{maxRoomsPerUser} is C{RATE_LIMITED}; a
        socket joining a room that holds C{maxRoomSockets} is C{TOO_LARGE}.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "boss", "boss", "Boss")
        yield self.login(driver, "a1", "a", "A")
        yield self.login(driver, "a2", "a", "A")
        yield self.refused(driver, "a1", "room:create", {"name": "mine"}, "FORBIDDEN")
        room = yield self.ask(driver, "boss", "room:create", {"name": "hall", "id": "hall"})
        yield self.refused(driver, "boss", "room:create", {"name": "another"}, "RATE_LIMITED")
        yield self.ask(driver, "boss", "room:join", {"roomId": room["id"]})
        yield self.ask(driver, "a1", "room:join", {"roomId": room["id"]})
        yield self.refused(driver, "a2", "room:join", {"roomId": room["id"]}, "TOO_LARGE")
        yield self.ask(driver, "a1", "room:leave", {"roomId": room["id"]})
        joined = yield self.ask(driver, "a2", "room:join", {"roomId": room["id"]})
        self.assertEqual(joined["room"]["onlineCount"], 2)


class LimitNodeTests(LimitScenario, TestCase):
    """
    The bounds with Node's socket.io-client over WebSocket.
    """

    kind = "node"
    transports = ["websocket"]


class LimitPythonTests(LimitScenario, TestCase):
    """
    The bounds with python-socketio.
    """

    kind = "python"
    ordered = False


class RecallWindowScenario(Scenario):
    """
    Recall on a server whose recall window is 0 s: every sender's recall
    comes too late, and a group's owner and admins may still recall.
    """

    serverSettings = {"recallWindow": 0.0}

    @inlineCallbacks
    def test_outsideWindow(self) -> Inline:
        """
        Outside the window a sender's recall is C{FORBIDDEN} in every kind
        of conversation and changes nothing; the group's owner and admins
        recall any member's message at any time.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "a", "a", "Owner")
        yield self.login(driver, "b", "b", "Admin")
        yield self.login(driver, "c", "c", "Member")
        yield self.send(driver, "c", "direct", toId="a", id="w-direct")
        yield self.refused(driver, "c", "message:recall", {"messageId": "w-direct"}, "FORBIDDEN")
        group = yield self.create(driver, "a", "window", ["b", "c"])
        gid = group["id"]
        yield self.ask(driver, "a", "group:set_role", {"groupId": gid, "userId": "b", "role": "admin"})
        yield self.send(driver, "c", "in group", groupId=gid, id="w-group")
        yield self.send(driver, "c", "in group too", groupId=gid, id="w-group-2")
        yield self.send(driver, "b", "admin's own", groupId=gid, id="w-admin")
        yield self.refused(driver, "c", "message:recall", {"messageId": "w-group"}, "FORBIDDEN")
        ack = yield self.ask(driver, "b", "message:recall", {"messageId": "w-group"})
        self.assertEqual(ack, {"messageId": "w-group", "recalled": True})
        ack = yield self.ask(driver, "a", "message:recall", {"messageId": "w-group-2"})
        self.assertEqual(ack, {"messageId": "w-group-2", "recalled": True})
        ack = yield self.ask(driver, "b", "message:recall", {"messageId": "w-admin"})
        self.assertEqual(ack, {"messageId": "w-admin", "recalled": True})
        (recalled,) = yield driver.waitFor("c", "message:recalled", predicate=withId("w-group"))
        self.assertEqual((recalled["by"], recalled["fromId"]), ("b", "c"))
        yield self.ask(driver, "a", "room:create", {"name": "r", "id": "w-room"})
        yield self.ask(driver, "c", "room:join", {"roomId": "w-room"})
        yield self.send(driver, "c", "in room", roomId="w-room", id="w-room-msg")
        yield self.refused(driver, "c", "message:recall", {"messageId": "w-room-msg"}, "FORBIDDEN")
        (page,) = yield driver.emit("a", "get_history", {"friendId": "c"}, ack=True)
        self.assertEqual([(m["content"], bool(m.get("recalled"))) for m in page["messages"]],
                         [("direct", False)])
        (page,) = yield driver.emit("c", "get_history", {"roomId": "w-room"}, ack=True)
        self.assertEqual([m["content"] for m in page["messages"]], ["in room"])


class RecallWindowNodeTests(RecallWindowScenario, TestCase):
    """
    A 0 s recall window with Node's socket.io-client over WebSocket.
    """

    kind = "node"
    transports = ["websocket"]


class RecallWindowPythonTests(RecallWindowScenario, TestCase):
    """
    A 0 s recall window with python-socketio.
    """

    kind = "python"
    ordered = False
