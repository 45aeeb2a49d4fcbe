"""
The IM application end to end: every event, error code and ack of the wire
contract (C{shared/spec/PROTOCOL.md}, sections 2 to 9), with the real
L{CRMIMService} on a loopback port.

L{IMScenario} is written once and run by both client kinds: Node's
socket.io-client over WebSocket only (the PC client) and python-socketio
with its default transports, long-polling upgraded to WebSocket (the mobile
client).  One driver process holds every named client of a scenario.

Nothing here sleeps.  That an event did I{not} arrive is shown with a
barrier: a later message through the same server to the same socket
(L{IMScenario.barrier}); a socket's events arrive in the order the server
sent them, so once the barrier arrived, the event would have too.

L{HTTPTests} cover C{GET /} and C{/api/online-users} with treq, and
L{ConcurrencyTests} run 200 Node clients at once.
"""

from __future__ import annotations

import base64
import json
import re
from typing import Any, Dict, Generator, List, Optional, Tuple

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase

from crm_im import __version__
from crm_im.config import Config
from crm_im.server import CRMIMService
from crm_im.storage import MemoryMessageStore
from tests.support.clients import ClientDriver, DriverTestMixin

Inline = Generator[Deferred[Any], Any, Any]

#: the longest message content the scenario's server accepts
MAX_LENGTH = 1000
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
BLOB = bytes(range(256)) * 8
JSON_TYPE = [b"application/json; charset=utf-8"]


@inlineCallbacks
def serveIM(testCase: TestCase, store: Any = None, **overrides: Any) -> Inline:
    """
    Start a L{CRMIMService} on a loopback port with a fresh data directory,
    stopped at cleanup.

    @param store: the service's message store (default: its SQLite store).
    @param overrides: L{Config} fields.
    @return: a L{Deferred} firing with C{(service, "http://127.0.0.1:PORT")}.
    """
    settings: Dict[str, Any] = dict(
        listen=("tcp:0:interface=127.0.0.1",),
        dataDir=testCase.mktemp(),
        logEvents=False,
        shutdownGrace=0.5,
    )
    settings.update(overrides)
    service = CRMIMService(Config(**settings), reactor, store=store)
    service.startService()
    testCase.addCleanup(service.stopService)
    ports = yield service.ready
    return service, f"http://127.0.0.1:{ports[0].getHost().port}"


@inlineCallbacks
def getJSON(url: str) -> Inline:
    """
    GET C{url}; return C{(response, decoded JSON body)}.
    """
    response = yield treq.get(url, persistent=False)
    body = yield response.json()
    return response, body


def user(userId: str, name: str, avatar: str = "",
         status: str = "online") -> Dict[str, Any]:
    """
    The contract's User (an avatar not sent is C{""}, the original
    server's type, never C{null}).
    """
    return {"id": userId, "name": name, "avatar": avatar, "status": status}


class IMScenario(DriverTestMixin):
    """
    The contract, for one client kind.

    @cvar transports: the clients' C{transports} option (L{None}: the
        client's default).
    """

    transports: Optional[List[str]] = None
    #: whether the client emits events in the order they arrived
    #: (python-engineio runs each message's handler in its own thread, so
    #: python clients order by C{seq} instead)
    ordered = True
    serverSettings: Dict[str, Any] = {"maxMessageLength": MAX_LENGTH}

    @inlineCallbacks
    def setUp(self) -> Inline:
        """
        Serve crm_im with a small C{maxMessageLength}.
        """
        yield self.serve(**self.serverSettings)

    @inlineCallbacks
    def serve(self, **overrides: Any) -> Inline:
        """
        Start a server; keep it as C{self.service} and its URL as
        C{self.url}.
        """
        self.service, self.url = yield serveIM(self, **overrides)

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
              name: Optional[str] = None, avatar: Optional[str] = None,
              connect: bool = True) -> Inline:
        """
        Connect C{client} (unless told not to) and log it in as C{userId};
        consume its C{user:login:success} and C{online_users}.

        @return: the C{online_users} list.
        """
        if connect:
            yield self.connect(driver, client)
        payload: Dict[str, Any] = {"id": userId, "name": name or f"User {userId}"}
        if avatar is not None:
            payload["avatar"] = avatar
        (ack,) = yield driver.emit(client, "user:login", payload, ack=True)
        self.assertEqual(ack["id"], str(userId))
        yield driver.waitFor(client, "user:login:success")
        (online,) = yield driver.waitFor(client, "online_users")
        return online

    @inlineCallbacks
    def send(self, driver: ClientDriver, client: str, toId: str, content: str,
             **fields: Any) -> Inline:
        """
        Send a text message with an ack; return the receipt.
        """
        (receipt,) = yield driver.emit(
            client, "message", dict({"type": "text"}, toId=toId, content=content, **fields),
            ack=True)
        return receipt

    @inlineCallbacks
    def barrier(self, driver: ClientDriver, sender: str, observers: List[Tuple[str, str]]) -> Inline:
        """
        Send a message from C{sender} to each observer and wait until it
        arrived: every event the server sent to that observer before is in
        by then.

        @param observers: C{(client, userId)} pairs; the observer's other
            devices get the barrier too (and leave it unconsumed).
        """
        for client, userId in observers:
            token = f"barrier-{id(self)}-{client}-{len(driver.reports)}"
            yield self.send(driver, sender, userId, token)
            yield driver.waitFor(client, "message",
                                 predicate=lambda args, token=token: args[0]["content"] == token)

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
                                        predicate=lambda a: a[0].get("event") == event)
        self.assertEqual(error["code"], code)
        self.assertEqual(error["event"], event)
        self.assertIsInstance(error["message"], str)
        self.assertTrue(error["message"])
        if withAck:
            self.assertEqual(ack, [{"error": {"message": error["message"], "code": code}}])
        return error

    # ---- user:login

    @inlineCallbacks
    def test_login(self) -> Inline:
        """
        C{user:login} answers C{user:login:success} with the User, then
        C{online_users} (the caller included), and acks the User; an
        integer id is kept as a string.
        """
        driver = yield self.startDriver()
        yield self.connect(driver, "a")
        ack = yield driver.emit("a", "user:login",
                                {"id": 42, "name": "张三", "avatar": "https://x/a.png"}, ack=True)
        expected = user("42", "张三", "https://x/a.png")
        self.assertEqual(ack, [expected])
        self.assertEqual((yield driver.waitFor("a", "user:login:success")), [expected])
        self.assertEqual((yield driver.waitFor("a", "online_users")), [[expected]])
        names = [r["event"] for r in driver.reports
                 if r.get("type") == "event" and r["client"] == "a"]
        self.assertEqual(names, ["user:login:success", "online_users"])

    @inlineCallbacks
    def test_onlineUsersAndAnnouncement(self) -> Inline:
        """
        C{online_users} lists users in login order; each first login sends
        C{status_change} online with name and avatar to every other
        logged-in socket, not to the new one.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "a", "a", "A")
        yield self.login(driver, "b", "b", "B", avatar="b.png")
        (change,) = yield driver.waitFor("a", "status_change")
        self.assertEqual(set(change), {"userId", "status", "timestamp", "name", "avatar"})
        self.assertEqual((change["userId"], change["status"], change["name"], change["avatar"]),
                         ("b", "online", "B", "b.png"))
        self.assertIsInstance(change["timestamp"], int)
        online = yield self.login(driver, "c", "c", "C")
        self.assertEqual(online, [user("a", "A"), user("b", "B", "b.png"), user("c", "C")])
        for client in ("a", "b"):
            (change,) = yield driver.waitFor(client, "status_change")
            self.assertEqual(change["userId"], "c")
        yield self.barrier(driver, "a", [("c", "c")])
        self.assertEqual(driver.events("c", "status_change"), [])

    @inlineCallbacks
    def test_loginAgainSameId(self) -> Inline:
        """
        Logging in again as the same id succeeds again and announces
        nothing to the others.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "a", "a", "A")
        yield self.login(driver, "b", "b", "B")
        yield driver.waitFor("a", "status_change")
        online = yield self.login(driver, "b", "b", "B", connect=False)
        self.assertEqual(online, [user("a", "A"), user("b", "B")])
        yield self.barrier(driver, "b", [("a", "a")])
        self.assertEqual(len(driver.events("a", "status_change")), 1)

    @inlineCallbacks
    def test_loginAnotherId(self) -> Inline:
        """
        Logging in as another id without C{user:logout} is
        C{ALREADY_LOGGED_IN}; the socket stays the first user.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "a", "a", "A")
        yield self.refused(driver, "a", "user:login", {"id": "z", "name": "Z"},
                           "ALREADY_LOGGED_IN")
        (ack,) = yield driver.emit("a", "status_change", {"status": "busy"}, ack=True)
        self.assertEqual(ack["userId"], "a")

    @inlineCallbacks
    def test_invalidLogin(self) -> Inline:
        """
        A missing id, an id over 128 characters, an empty name, an avatar
        over 2048 characters and a payload that is not an object are
        C{INVALID_PAYLOAD}; the socket stays anonymous.
        """
        driver = yield self.startDriver()
        yield self.connect(driver, "a")
        for payload in [{"name": "A"}, {"id": "x" * 129, "name": "A"}, {"id": "", "name": "A"},
                        {"id": "a", "name": ""}, {"id": "a"},
                        {"id": "a", "name": "A", "avatar": "x" * 2049},
                        "a", [1, 2], 7]:
            yield self.refused(driver, "a", "user:login", payload, "INVALID_PAYLOAD")
        yield self.refused(driver, "a", "user:login", None, "INVALID_PAYLOAD")
        yield self.refused(driver, "a", "message", {"toId": "b", "content": "x"}, "NOT_LOGGED_IN")
        yield self.login(driver, "a", "x" * 128, "N" * 128, avatar="v" * 2048, connect=False)

    @inlineCallbacks
    def test_notLoggedIn(self) -> Inline:
        """
        Every event but C{user:login} is C{NOT_LOGGED_IN} before login,
        with the ack and without.
        """
        driver = yield self.startDriver()
        yield self.connect(driver, "a")
        for event, payload in [("user:logout", None),
                               ("message", {"toId": "b", "content": "hi"}),
                               ("status_change", {"status": "away"}),
                               ("typing", {"toId": "b", "isTyping": True}),
                               ("file_transfer", {"toId": "b", "fileName": "f", "data": b"x"}),
                               ("get_history", {"friendId": "b"}),
                               ("message:read", {"friendId": "b", "upToSeq": 1})]:
            yield self.refused(driver, "a", event, payload, "NOT_LOGGED_IN")
        yield self.refused(driver, "a", "message", {"toId": "b", "content": "hi"},
                           "NOT_LOGGED_IN", withAck=False)

    # ---- message

    @inlineCallbacks
    def test_messageDelivered(self) -> Inline:
        """
        A message to an online user is stored with C{fromId}, C{fromName},
        C{serverTimestamp} and an increasing C{seq}, emitted to the
        recipient, and answered with C{message:sent} delivered and the same
        receipt as ack.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "a", "a", "Alice")
        yield self.login(driver, "b", "b", "Bob")
        receipt = yield self.send(driver, "a", "b", "你好 🌏", id="m1", topic="deal-7",
                                  timestamp=1700000000000, fromName="Mallory")
        (sent,) = yield driver.waitFor("a", "message:sent")
        self.assertEqual(sent, receipt)
        self.assertEqual(set(receipt), {"messageId", "status", "timestamp"})
        self.assertEqual((receipt["messageId"], receipt["status"]), ("m1", "delivered"))
        # One argument, as the old server sent it, connection state recovery
        # or not (its offset goes in an event of its own).
        (message,) = yield driver.waitFor("b", "message")
        self.assertEqual(message, {
            "id": "m1", "fromId": "a", "fromName": "Alice", "toId": "b",
            "content": "你好 🌏", "type": "text", "topic": "deal-7",
            "timestamp": 1700000000000, "serverTimestamp": receipt["timestamp"],
            "seq": message["seq"]})
        self.assertIsInstance(message["seq"], int)
        yield self.send(driver, "b", "a", "second", fromId="b")
        (reply,) = yield driver.waitFor("a", "message")
        self.assertGreater(reply["seq"], message["seq"])
        self.assertGreaterEqual(reply["serverTimestamp"], message["serverTimestamp"])
        self.assertEqual(driver.events("a", "message"), [[reply]])

    @inlineCallbacks
    def test_messageOffline(self) -> Inline:
        """
        A message to a user with no device is stored and the receipt says
        C{offline}.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "a", "a", "A")
        receipt = yield self.send(driver, "a", "nobody", "later", id="m-off")
        self.assertEqual((receipt["messageId"], receipt["status"]), ("m-off", "offline"))
        self.assertEqual((yield driver.waitFor("a", "message:sent")), [receipt])

    @inlineCallbacks
    def test_fromIdSpoofing(self) -> Inline:
        """
        A C{fromId} other than the logged-in id is C{FORBIDDEN} (with the
        message id in the error), and nothing is delivered.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "a", "a", "A")
        yield self.login(driver, "b", "b", "B")
        error = yield self.refused(driver, "a", "message",
                                   {"id": "spoof", "toId": "b", "fromId": "b", "content": "x"},
                                   "FORBIDDEN")
        self.assertEqual(error["id"], "spoof")
        yield self.barrier(driver, "a", [("b", "b")])
        self.assertEqual(len(driver.events("b", "message")), 1)

    @inlineCallbacks
    def test_invalidMessages(self) -> Inline:
        """
        Content over C{maxMessageLength} is C{TOO_LARGE}; content of exactly
        that length is accepted; a missing C{toId}, non-string content, an
        unknown type, a C{file} without C{fileUrl} or whose C{fileUrl} is
        neither http(s) nor a path (C{javascript:}), and a C{timestamp} that
        is not a number or that no 64-bit integer column holds (it failed
        the store's write: C{INTERNAL}) are C{INVALID_PAYLOAD}.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "a", "a", "A")
        error = yield self.refused(driver, "a", "message",
                                   {"id": "big", "toId": "b", "content": "x" * (MAX_LENGTH + 1)},
                                   "TOO_LARGE")
        self.assertEqual(error["id"], "big")
        receipt = yield self.send(driver, "a", "b", "x" * MAX_LENGTH)
        self.assertEqual(receipt["status"], "offline")
        for payload in [{"content": "x"}, {"toId": "b", "content": 5},
                        {"toId": "b", "content": "x", "type": "video"},
                        {"toId": "b", "type": "file", "fileName": "a.pdf"},
                        {"toId": "b", "content": "x", "timestamp": "1700000000000"},
                        {"toId": "b", "content": "x", "timestamp": True},
                        {"toId": "b", "content": "x", "timestamp": 2**64 - 1},
                        {"toId": "b", "content": "x", "timestamp": -2**63},
                        {"groupId": "g", "content": "x", "timestamp": 2**64 - 1},
                        # a link to a script (or a local file) in the
                        # recipient's client, however a browser spells it
                        {"toId": "b", "type": "file", "fileName": "a.pdf", "fileUrl": "javascript:alert(1)"},
                        {"toId": "b", "type": "file", "fileName": "a.pdf", "fileUrl": " Java\tScript:alert(1)"},
                        {"toId": "b", "type": "file", "fileName": "a.pdf", "fileUrl": "data:text/html,<script>"},
                        "text"]:
            yield self.refused(driver, "a", "message", payload, "INVALID_PAYLOAD")
        for fileUrl in ("https://cdn.example/a.pdf", "/api/files/f1/a.pdf"):
            receipt = yield self.send(driver, "a", "b", "", type="file", fileUrl=fileUrl, fileName="a.pdf")
            self.assertEqual(receipt["status"], "offline")
        for timestamp in (2**53, 1700000000000.5):
            receipt = yield self.send(driver, "a", "b", "x", timestamp=timestamp)
            self.assertEqual(receipt["status"], "offline")

    @inlineCallbacks
    def test_resend(self) -> Inline:
        """
        Sending an id again creates no duplicate and no second delivery; it
        gets the same receipt again.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "a", "a", "A")
        yield self.login(driver, "b", "b", "B")
        first = yield self.send(driver, "a", "b", "once", id="dup")
        again = yield self.send(driver, "a", "b", "once", id="dup")
        self.assertEqual(again, first)
        self.assertEqual(first["status"], "delivered")
        yield self.barrier(driver, "a", [("b", "b")])
        self.assertEqual([args[0]["id"] for args in driver.events("b", "message")][:1], ["dup"])
        self.assertEqual(len(driver.events("b", "message")), 2)
        offline = yield self.send(driver, "a", "c", "later", id="dup-off")
        self.assertEqual(offline["status"], "offline")
        self.assertEqual((yield self.send(driver, "a", "c", "later", id="dup-off")), offline)
        # the same id for a message to someone else is no resend: refused,
        # not answered with the first one's receipt and dropped
        error = yield self.refused(driver, "a", "message", {"toId": "c", "content": "other", "id": "dup"},
                                   "INVALID_PAYLOAD")
        self.assertEqual(error["id"], "dup")
        self.assertIn("another conversation", error["message"])
        page = yield driver.emit("a", "get_history", {"friendId": "c"}, ack=True)
        self.assertEqual([m["id"] for m in page[0]["messages"]], ["dup-off"])

    @inlineCallbacks
    def test_serverMadeId(self) -> Inline:
        """
        Without an C{id} the server makes a UUID; two such messages get two
        ids.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "a", "a", "A")
        yield self.login(driver, "b", "b", "B")
        first = yield self.send(driver, "a", "b", "one")
        second = yield self.send(driver, "a", "b", "two")
        self.assertRegex(first["messageId"], UUID)
        self.assertNotEqual(first["messageId"], second["messageId"])
        (message,) = yield driver.waitFor(
            "b", "message", predicate=lambda args: args[0]["content"] == "one")
        self.assertEqual(message["id"], first["messageId"])

    @inlineCallbacks
    def test_fileMessage(self) -> Inline:
        """
        A C{type: file} message carries C{fileUrl} and C{fileName} to the
        recipient.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "a", "a", "A")
        yield self.login(driver, "b", "b", "B")
        yield self.send(driver, "a", "b", "", type="file", fileUrl="https://cdn/x.pdf",
                        fileName="报价.pdf")
        (message,) = yield driver.waitFor("b", "message")
        self.assertEqual((message["type"], message["fileUrl"], message["fileName"]),
                         ("file", "https://cdn/x.pdf", "报价.pdf"))

    # ---- several devices

    @inlineCallbacks
    def test_multiDevice(self) -> Inline:
        """
        Every device of the recipient gets a message; the sender's other
        devices get what it sent, the sending device does not; a device
        that logs in later catches up with C{get_history} C{after}.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "pc", "a", "A")
        yield self.login(driver, "phone", "a", "A")
        yield self.login(driver, "b", "b", "B")
        yield self.send(driver, "b", "a", "to both")
        for device in ("pc", "phone"):
            (message,) = yield driver.waitFor(device, "message")
            self.assertEqual(message["content"], "to both")
        receipt = yield self.send(driver, "pc", "b", "from pc")
        self.assertEqual(receipt["status"], "delivered")
        (synced,) = yield driver.waitFor("phone", "message")
        (got,) = yield driver.waitFor("b", "message")
        self.assertEqual(synced, got)
        self.assertEqual((synced["fromId"], synced["content"]), ("a", "from pc"))
        yield self.barrier(driver, "b", [("pc", "a")])
        contents = [args[0]["content"] for args in driver.events("pc", "message")]
        self.assertEqual(len(contents), 2)
        self.assertEqual(contents[0], "to both")
        self.assertNotIn("from pc", contents)
        lastSeen = synced["seq"]
        yield self.send(driver, "b", "a", "while tablet was off")
        yield self.login(driver, "tablet", "a", "A")
        (page,) = yield driver.emit("tablet", "get_history",
                                    {"friendId": "b", "after": lastSeen}, ack=True)
        contents = [m["content"] for m in page["messages"]]
        self.assertEqual(contents[-1], "while tablet was off")
        self.assertNotIn("from pc", contents)
        self.assertFalse(page["hasMore"])

    # ---- offline queue

    @inlineCallbacks
    def test_offlineQueue(self) -> Inline:
        """
        Messages for an offline user come, in C{seq} order, right after
        C{online_users} on the next login; each online sender then gets
        C{message:sent} delivered again; a second device gets no queue.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "a", "a", "A")
        yield self.login(driver, "c", "c", "C")
        receipts = []
        for i, sender in enumerate(["a", "c", "a"]):
            receipt = yield self.send(driver, sender, "b", f"queued {i}")
            self.assertEqual(receipt["status"], "offline")
            receipts.append(receipt)
        for sender in ("a", "c"):
            yield driver.waitFor(sender, "message:sent")
        yield self.login(driver, "b1", "b", "B")
        for i in range(3):
            yield driver.waitFor("b1", "message")
        # (each message is followed by its recovery offset: an event of its
        # own, which clients without a handler ignore)
        names = [(r["event"], r["args"][0]) for r in driver.reports
                 if r.get("type") == "event" and r["client"] == "b1" and r["event"] != "recovery:offset"]
        expected = ["user:login:success", "online_users", "message", "message", "message"]
        if self.ordered:
            self.assertEqual([name for name, _ in names], expected)
        else:
            self.assertEqual(sorted(name for name, _ in names), sorted(expected))
        messages = [payload for name, payload in names if name == "message"]
        if not self.ordered:
            messages.sort(key=lambda m: m["seq"])
        self.assertEqual([m["content"] for m in messages], ["queued 0", "queued 1", "queued 2"])
        self.assertEqual([m["seq"] for m in messages], sorted(m["seq"] for m in messages))
        for sender, receipt in [("a", receipts[0]), ("c", receipts[1]), ("a", receipts[2])]:
            (again,) = yield driver.waitFor(
                sender, "message:sent",
                predicate=lambda args, id=receipt["messageId"]: (
                    args[0]["messageId"] == id and args[0]["status"] == "delivered"))
            self.assertEqual(again, dict(receipt, status="delivered"))
        yield self.login(driver, "b2", "b", "B")
        yield self.barrier(driver, "a", [("b2", "b")])
        self.assertEqual(len(driver.events("b2", "message")), 1)

    @inlineCallbacks
    def test_offlineQueueHeavierThanBuffer(self) -> Inline:
        """
        An offline queue heavier than the connection's buffer bound and
        than what loopback's kernel buffers take (100 messages of 100,000
        characters, 10 MB, against C{--max-buffered-bytes 500000}) comes whole at the next login, in order and each once, on
        a connection that stays open: the catch-up sends as the client
        reads. Sent at once, the queue would pass the bound and the server
        would close the connection.
        """
        COUNT = 100
        yield self.serve(maxMessageLength=100_000, maxPayload=200_000, maxBufferedBytes=500_000)
        driver = yield self.startDriver()
        yield self.login(driver, "a", "a", "A")
        for i in range(COUNT):
            receipt = yield self.send(driver, "a", "b", f"{i:02d}" + "x" * 99_998)
            self.assertEqual(receipt["status"], "offline")
        yield self.login(driver, "b", "b", "B")
        got = []
        for i in range(COUNT):
            (message,) = yield driver.waitFor("b", "message")
            got.append(message)
        if not self.ordered:
            got.sort(key=lambda m: m["seq"])
        self.assertEqual([m["content"][:2] for m in got], [f"{i:02d}" for i in range(COUNT)])
        self.assertEqual([m["seq"] for m in got], sorted({m["seq"] for m in got}))
        for i in range(COUNT):
            yield driver.waitFor("a", "message:sent", predicate=lambda args: args[0]["status"] == "delivered")
        # (each receipt "delivered" follows the commit of its mark)
        pending = yield self.service.store.pendingFor("b", 10)
        self.assertEqual(pending, [])
        yield self.barrier(driver, "a", [("b", "b")])
        self.assertEqual(len(driver.events("b", "message")), COUNT + 1)
        self.assertEqual([r for r in driver.reports if r.get("type") == "disconnect"], [])

    # ---- status_change

    @inlineCallbacks
    def test_statusChange(self) -> Inline:
        """
        C{status_change} is broadcast as C{{userId, status, timestamp}} to
        every other logged-in socket, the user's own other devices
        included, and acked with it; an unknown status is
        C{INVALID_PAYLOAD}.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "a1", "a", "A")
        yield self.login(driver, "a2", "a", "A")
        yield self.login(driver, "b", "b", "B")
        yield driver.waitFor("a1", "status_change")
        yield driver.waitFor("a2", "status_change")
        for status in ("away", "busy", "online"):
            (ack,) = yield driver.emit("a1", "status_change", {"status": status}, ack=True)
            self.assertEqual(set(ack), {"userId", "status", "timestamp"})
            self.assertEqual((ack["userId"], ack["status"]), ("a", status))
            for client in ("a2", "b"):
                (change,) = yield driver.waitFor(
                    client, "status_change",
                    predicate=lambda args, status=status: args[0]["status"] == status)
                self.assertEqual((change["userId"], change["status"], change["timestamp"]),
                                 ("a", status, ack["timestamp"]))
        for payload in [{"status": "gone"}, {}, "away"]:
            yield self.refused(driver, "a1", "status_change", payload, "INVALID_PAYLOAD")
        yield self.barrier(driver, "b", [("a1", "a")])
        self.assertEqual([args[0]["userId"] for args in driver.events("a1", "status_change")],
                         ["b"])

    @inlineCallbacks
    def test_invisible(self) -> Inline:
        """
        Status C{offline} (invisible) is announced as offline, leaves the
        user out of C{online_users} and C{/api/online-users}, and the user
        still receives messages; disconnecting then announces nothing.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "a", "a", "A")
        yield self.login(driver, "b", "b", "B")
        yield driver.emit("a", "status_change", {"status": "offline"}, ack=True)
        (change,) = yield driver.waitFor("b", "status_change",
                                         predicate=lambda args: args[0]["userId"] == "a")
        self.assertEqual(change["status"], "offline")
        online = yield self.login(driver, "c", "c", "C")
        self.assertEqual([u["id"] for u in online], ["b", "c"])
        _, body = yield getJSON(self.url + "/api/online-users")
        self.assertEqual([u["id"] for u in body["users"]], ["b", "c"])
        receipt = yield self.send(driver, "b", "a", "still there?")
        self.assertEqual(receipt["status"], "delivered")
        (message,) = yield driver.waitFor("a", "message")
        self.assertEqual(message["content"], "still there?")
        yield driver.close("a")
        yield self.barrier(driver, "c", [("b", "b")])
        self.assertEqual([args[0]["status"] for args in driver.events("b", "status_change")
                          if args[0]["userId"] == "a"], ["offline"])

    # ---- typing

    @inlineCallbacks
    def test_typing(self) -> Inline:
        """
        C{typing} reaches every device of C{toId} as C{{fromId, fromName,
        isTyping, topic}} and nobody else; the ack is C{{toId, delivered}};
        for an offline C{toId} it is dropped (C{delivered: false}).
        """
        driver = yield self.startDriver()
        yield self.login(driver, "a1", "a", "A")
        yield self.login(driver, "a2", "a", "A")
        yield self.login(driver, "b", "b", "Bob")
        yield self.login(driver, "c", "c", "C")
        ack = yield driver.emit("b", "typing", {"toId": "a", "isTyping": True, "topic": "t1",
                                                "fromName": "ignored"}, ack=True)
        self.assertEqual(ack, [{"toId": "a", "delivered": True}])
        for device in ("a1", "a2"):
            (typing,) = yield driver.waitFor(device, "typing")
            self.assertEqual(typing, {"fromId": "b", "fromName": "Bob", "isTyping": True,
                                      "topic": "t1"})
        yield driver.emit("b", "typing", {"toId": "a", "isTyping": False})
        (stopped,) = yield driver.waitFor("a1", "typing")
        self.assertEqual(stopped, {"fromId": "b", "fromName": "Bob", "isTyping": False})
        ack = yield driver.emit("b", "typing", {"toId": "nobody", "isTyping": True}, ack=True)
        self.assertEqual(ack, [{"toId": "nobody", "delivered": False}])
        yield self.refused(driver, "b", "typing", {"toId": "a", "fromId": "c"}, "FORBIDDEN")
        yield self.refused(driver, "b", "typing", {"isTyping": True}, "INVALID_PAYLOAD")
        yield self.barrier(driver, "b", [("c", "c"), ("b", "b")])
        self.assertEqual(driver.events("c", "typing"), [])
        self.assertEqual(driver.events("b", "typing"), [])

    # ---- file_transfer

    @inlineCallbacks
    def test_fileTransferBinary(self) -> Inline:
        """
        A binary C{file_transfer} reaches the recipient's devices and the
        sender's other devices as binary, with C{fromId}, C{fromName} and
        C{serverTimestamp}; the receipt is a message's.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "a", "a", "A")
        yield self.login(driver, "a2", "a", "A")
        yield self.login(driver, "b", "b", "B")
        (receipt,) = yield driver.emit("a", "file_transfer", {
            "id": "f1", "toId": "b", "fileName": "图.png", "fileSize": len(BLOB),
            "mimeType": "image/png", "data": BLOB, "topic": "t"}, ack=True)
        self.assertEqual((receipt["messageId"], receipt["status"]), ("f1", "delivered"))
        self.assertEqual((yield driver.waitFor("a", "message:sent")), [receipt])
        for client in ("b", "a2"):
            (relayed,) = yield driver.waitFor(client, "file_transfer")
            # FILES.md: the transfer is stored too; the relay names the file
            stored = {key: relayed.pop(key) for key in ("fileId", "fileUrl", "seq")}
            self.assertTrue(stored["fileUrl"].startswith("/api/files/" + stored["fileId"] + "/"))
            self.assertEqual(relayed, {
                "id": "f1", "toId": "b", "fileName": "图.png", "fileSize": len(BLOB),
                "mimeType": "image/png", "data": BLOB, "topic": "t", "fromId": "a",
                "fromName": "A", "serverTimestamp": receipt["timestamp"]})
            self.assertIsInstance(relayed["data"], bytes)

    @inlineCallbacks
    def test_fileTransferBase64(self) -> Inline:
        """
        A base64 C{file_transfer} is relayed as the same string; data that
        is neither binary nor base64 is C{INVALID_PAYLOAD}.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "a", "a", "A")
        yield self.login(driver, "b", "b", "B")
        encoded = base64.b64encode(BLOB).decode("ascii")
        (receipt,) = yield driver.emit("a", "file_transfer", {
            "toId": "b", "fileName": "a.bin", "data": encoded}, ack=True)
        self.assertEqual(receipt["status"], "delivered")
        self.assertRegex(receipt["messageId"], UUID)
        (relayed,) = yield driver.waitFor("b", "file_transfer")
        self.assertEqual(relayed["data"], encoded)
        self.assertEqual((relayed["fromId"], relayed["fromName"], relayed["id"]),
                         ("a", "A", receipt["messageId"]))
        yield self.refused(driver, "a", "file_transfer",
                           {"toId": "b", "fileName": "a.bin", "data": "not base64!"},
                           "INVALID_PAYLOAD")
        yield self.refused(driver, "a", "file_transfer",
                           {"toId": "b", "fileName": "a.bin", "data": BLOB, "fromId": "b"},
                           "FORBIDDEN")

    @inlineCallbacks
    def test_fileTransferRelayedAsKept(self) -> Inline:
        """
        The live C{file_transfer} carries the name, size and type history
        has (the name without its path, the bytes' true size, the plain
        lower-case type), not the client's claims; every other field is
        relayed as it came, to the recipient and the sender's other device.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "a", "a", "A")
        yield self.login(driver, "a2", "a", "A")
        yield self.login(driver, "b", "b", "B")
        encoded = base64.b64encode(b"7 bytes").decode("ascii")
        (receipt,) = yield driver.emit("a", "file_transfer", {
            "id": "f-path", "toId": "b", "fileName": "dir/../a.txt", "fileSize": 12345,
            "mimeType": "Text/Plain; charset=utf-8", "data": encoded, "topic": "t"}, ack=True)
        self.assertEqual(receipt["status"], "delivered", receipt)
        (history,) = (yield driver.emit("b", "get_history", {"friendId": "a"}, ack=True))[0]["messages"]
        self.assertEqual((history["fileName"], history["fileSize"], history["mimeType"]), ("a.txt", 7, "text/plain"))
        for client in ("b", "a2"):
            (relayed,) = yield driver.waitFor(client, "file_transfer")
            for key in ("fileUrl", "fileId", "seq"):
                relayed.pop(key)
            self.assertEqual(relayed, {
                "id": "f-path", "toId": "b", "fileName": "a.txt", "fileSize": 7, "mimeType": "text/plain",
                "data": encoded, "topic": "t", "fromId": "a", "fromName": "A",
                "serverTimestamp": receipt["timestamp"]})
        yield driver.emit("a", "file_transfer", {"id": "f-bare", "toId": "b", "fileName": "..", "data": encoded}, ack=True)
        (bare,) = yield driver.waitFor("b", "file_transfer")
        self.assertEqual((bare["fileName"], bare["fileSize"], bare["mimeType"]), ("file", 7, "application/octet-stream"))

    @inlineCallbacks
    def test_fileTransferOffline(self) -> Inline:
        """
        A file for an offline user is kept and queued as a C{file} message
        whose C{fileUrl} serves the bytes. Its C{mimeType} is the declared
        one as an upload's is (C{type/subtype}, lower case), else
        C{application/octet-stream}, never null.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "a", "a", "A")
        (receipt,) = yield driver.emit("a", "file_transfer", {
            "id": "f-off", "toId": "b", "fileName": "合同 v2.pdf", "mimeType": "application/pdf",
            "data": BLOB}, ack=True)
        self.assertEqual((receipt["messageId"], receipt["status"]), ("f-off", "offline"))
        yield driver.emit("a", "file_transfer", {"id": "f-none", "toId": "b", "fileName": "x", "data": BLOB}, ack=True)
        yield driver.emit("a", "file_transfer", {"id": "f-text", "toId": "b", "fileName": "y.txt", "data": BLOB,
                                                 "mimeType": "Text/Plain; charset=utf-8"}, ack=True)
        yield self.login(driver, "b", "b", "B")
        # (by id: python-socketio's client runs each event's handler on a
        # thread of its own, so the driver may see them out of order)
        queued = {}
        for _ in range(3):
            (one,) = yield driver.waitFor("b", "message")
            queued[one["id"]] = one
        message, none, plain = queued["f-off"], queued["f-none"], queued["f-text"]
        self.assertEqual((message["id"], message["type"], message["fileName"], message["fromId"], message["mimeType"]),
                         ("f-off", "file", "合同 v2.pdf", "a", "application/pdf"))
        self.assertEqual((none["id"], none["mimeType"], plain["id"], plain["mimeType"]),
                         ("f-none", "application/octet-stream", "f-text", "text/plain"))
        response = yield treq.get(self.url + none["fileUrl"], persistent=False)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/octet-stream"])
        yield response.content()
        self.assertTrue(message["fileUrl"].startswith("/api/files/"))
        response = yield treq.get(self.url + message["fileUrl"], persistent=False)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/pdf"])
        self.assertEqual((yield response.content()), BLOB)
        (again,) = yield driver.waitFor("a", "message:sent",
                                        predicate=lambda a: a[0]["status"] == "delivered")
        self.assertEqual(again["messageId"], "f-off")

    # ---- get_history

    @inlineCallbacks
    def test_history(self) -> Inline:
        """
        C{get_history} pages oldest first with C{limit}, C{before},
        C{after} and C{hasMore}, filters by C{topic}, and answers as the
        C{history} event when no ack is asked for.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "a", "a", "A")
        yield self.login(driver, "b", "b", "B")
        for i in range(7):
            yield self.send(driver, "a" if i % 2 == 0 else "b", "b" if i % 2 == 0 else "a",
                            f"m{i}", topic="deal" if i in (1, 4, 5) else None)
        yield self.send(driver, "a", "c", "other conversation")

        @inlineCallbacks
        def page(**query: Any) -> Inline:
            (answer,) = yield driver.emit("a", "get_history", dict(friendId="b", **query), ack=True)
            return answer

        everything = yield page()
        self.assertEqual(set(everything), {"friendId", "topic", "messages", "hasMore"})
        self.assertEqual((everything["friendId"], everything["topic"], everything["hasMore"]),
                         ("b", None, False))
        self.assertEqual([m["content"] for m in everything["messages"]],
                         [f"m{i}" for i in range(7)])
        seqs = [m["seq"] for m in everything["messages"]]
        latest = yield page(limit=3)
        self.assertEqual([m["content"] for m in latest["messages"]], ["m4", "m5", "m6"])
        self.assertTrue(latest["hasMore"])
        older = yield page(limit=3, before=seqs[4])
        self.assertEqual([m["content"] for m in older["messages"]], ["m1", "m2", "m3"])
        self.assertTrue(older["hasMore"])
        oldest = yield page(limit=3, before=seqs[1])
        self.assertEqual([m["content"] for m in oldest["messages"]], ["m0"])
        self.assertFalse(oldest["hasMore"])
        newer = yield page(limit=2, after=seqs[2])
        self.assertEqual([m["content"] for m in newer["messages"]], ["m3", "m4"])
        self.assertTrue(newer["hasMore"])
        newest = yield page(limit=5, after=seqs[4])
        self.assertEqual([m["content"] for m in newest["messages"]], ["m5", "m6"])
        self.assertFalse(newest["hasMore"])
        topic = yield page(topic="deal")
        self.assertEqual(topic["topic"], "deal")
        self.assertEqual([m["content"] for m in topic["messages"]], ["m1", "m4", "m5"])
        (fromB,) = yield driver.emit("b", "get_history", {"friendId": "a", "limit": 1}, ack=True)
        self.assertEqual([m["content"] for m in fromB["messages"]], ["m6"])
        yield driver.emit("a", "get_history", {"friendId": "c"})
        (event,) = yield driver.waitFor("a", "history")
        self.assertEqual([m["content"] for m in event["messages"]], ["other conversation"])
        self.assertEqual(event["friendId"], "c")
        yield self.refused(driver, "a", "get_history", {"friendId": "b", "limit": 0},
                           "INVALID_PAYLOAD")
        yield self.refused(driver, "a", "get_history", {"limit": 5}, "INVALID_PAYLOAD")

    @inlineCallbacks
    def test_historyBytes(self) -> Inline:
        """
        A history page weighs at most C{--max-payload} encoded: heavy
        messages come a few at a time with C{hasMore}, and paging back with
        C{before} gets every one once, in order.
        """
        yield self.serve(maxMessageLength=MAX_LENGTH, maxPayload=3000)
        driver = yield self.startDriver()
        yield self.login(driver, "a", "a", "A")
        yield self.login(driver, "b", "b", "B")
        for i in range(6):
            yield self.send(driver, "a", "b", str(i) * MAX_LENGTH)
        got: List[str] = []
        query: Dict[str, Any] = {"friendId": "a"}
        pages = 0
        while True:
            (answer,) = yield driver.emit("b", "get_history", query, ack=True)
            pages += 1
            self.assertLessEqual(len(json.dumps(answer["messages"], separators=(",", ":"))), 3000)
            got = [m["content"][0] for m in answer["messages"]] + got
            if not answer["hasMore"]:
                break
            query = {"friendId": "a", "before": answer["messages"][0]["seq"]}
        self.assertEqual(got, [str(i) for i in range(6)])
        self.assertEqual(pages, 3)

    @inlineCallbacks
    def test_historyIsPrivate(self) -> Inline:
        """
        A third user asking for the history with one of a pair gets only
        their own conversation with that user, never the pair's.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "a", "a", "A")
        yield self.login(driver, "b", "b", "B")
        yield self.login(driver, "c", "c", "C")
        yield self.send(driver, "a", "b", "secret")
        yield self.send(driver, "b", "a", "secret reply")
        yield self.send(driver, "c", "a", "hello a")
        (fromC,) = yield driver.emit("c", "get_history", {"friendId": "a"}, ack=True)
        self.assertEqual([m["content"] for m in fromC["messages"]], ["hello a"])
        (toB,) = yield driver.emit("c", "get_history", {"friendId": "b"}, ack=True)
        self.assertEqual(toB["messages"], [])

    # ---- message:read

    @inlineCallbacks
    def test_messageRead(self) -> Inline:
        """
        C{message:read} with C{{friendId, upToSeq}} or C{{friendId,
        messageIds}} moves the reader's cursor in the conversation and
        sends C{message:read} C{{readerId, messageIds, timestamp}} to every
        device of the friend, naming the messages newly read: reading one
        reads the earlier ones too, and nothing is read twice. The reader's
        other devices (not the reading socket) get C{message:read} with
        C{friendId} and C{upToSeq} too, to clear the same unread messages.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "a1", "a", "A")
        yield self.login(driver, "a2", "a", "A")
        yield self.login(driver, "b", "b", "B")
        yield self.login(driver, "b2", "b", "B")
        for i in range(4):
            yield self.send(driver, "a1", "b", f"r{i}", id=f"r{i}")
        messages = []
        for i in range(4):
            (message,) = yield driver.waitFor("b", "message")
            messages.append(message)
        messages.sort(key=lambda m: m["seq"])
        (ack,) = yield driver.emit("b", "message:read",
                                   {"friendId": "a", "upToSeq": messages[1]["seq"]}, ack=True)
        self.assertEqual(ack["messageIds"], ["r0", "r1"])
        for device in ("a1", "a2"):
            (read,) = yield driver.waitFor(device, "message:read")
            self.assertEqual(read, {"readerId": "b", "messageIds": ["r0", "r1"],
                                    "timestamp": ack["timestamp"]})
        (synced,) = yield driver.waitFor("b2", "message:read")
        self.assertEqual(synced, {"readerId": "b", "friendId": "a", "messageIds": ["r0", "r1"],
                                  "upToSeq": messages[1]["seq"], "timestamp": ack["timestamp"]})
        yield driver.emit("b", "message:read", {"friendId": "a", "messageIds": ["r3"]})
        (read,) = yield driver.waitFor("a1", "message:read")
        self.assertEqual((read["readerId"], read["messageIds"]), ("b", ["r2", "r3"]))
        (synced,) = yield driver.waitFor("b2", "message:read")
        self.assertEqual((synced["friendId"], synced["messageIds"], synced["upToSeq"]), ("a", ["r2", "r3"], messages[3]["seq"]))
        self.assertIsInstance(read["timestamp"], int)
        (again,) = yield driver.emit("b", "message:read", {"friendId": "a", "messageIds": ["r1", "r3"]}, ack=True)
        self.assertEqual(again["messageIds"], [])
        yield self.refused(driver, "b", "message:read", {"friendId": "a"}, "INVALID_PAYLOAD")
        yield self.refused(driver, "b", "message:read", {"messageIds": []}, "INVALID_PAYLOAD")
        yield self.refused(driver, "b", "message:read", {"messageIds": ["r3"]}, "INVALID_PAYLOAD")
        self.assertEqual(len(driver.events("a1", "message:read")), 2)
        self.assertEqual(len(driver.events("b2", "message:read")), 2)
        self.assertEqual(driver.events("b", "message:read"), [])

    # ---- logout, disconnect, grace

    @inlineCallbacks
    def test_logout(self) -> Inline:
        """
        C{user:logout} acks C{{userId, status: "offline"}}, announces the
        user offline when it was the last device, and leaves the socket
        connected and anonymous: it may log in as someone else.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "a", "a", "A")
        yield self.login(driver, "b", "b", "B")
        ack = yield driver.emit("a", "user:logout", ack=True)
        self.assertEqual(ack, [{"userId": "a", "status": "offline"}])
        (change,) = yield driver.waitFor("b", "status_change",
                                         predicate=lambda args: args[0]["status"] == "offline")
        self.assertEqual(set(change), {"userId", "status", "timestamp"})
        self.assertEqual(change["userId"], "a")
        yield self.refused(driver, "a", "message", {"toId": "b", "content": "x"}, "NOT_LOGGED_IN")
        online = yield self.login(driver, "a", "z", "Z", connect=False)
        self.assertEqual([u["id"] for u in online], ["b", "z"])

    @inlineCallbacks
    def test_lastDeviceDisconnects(self) -> Inline:
        """
        Only the disconnect of a user's last device announces it offline.
        """
        # (without connection state recovery: a python client's close may
        # reach the server as a transport close, held for the window)
        yield self.serve(recoveryWindow=0, **self.serverSettings)
        driver = yield self.startDriver()
        yield self.login(driver, "a1", "a", "A")
        yield self.login(driver, "a2", "a", "A")
        yield self.login(driver, "b", "b", "B")
        yield driver.close("a1")
        yield self.barrier(driver, "a2", [("b", "b")])
        self.assertEqual(driver.events("b", "status_change"), [])
        yield driver.close("a2")
        (change,) = yield driver.waitFor("b", "status_change")
        self.assertEqual((change["userId"], change["status"]), ("a", "offline"))
        _, body = yield getJSON(self.url + "/api/online-users")
        self.assertEqual(body, {"users": [user("b", "B")]})

    @inlineCallbacks
    def test_presenceGrace(self) -> Inline:
        """
        With a grace period, a device that comes back within it causes no
        offline and no online announcement; when it goes for good, offline
        is announced once, after the grace period.
        """
        # (without connection state recovery: a python client's close is a
        # transport close, which recovery would hold for its window)
        yield self.serve(presenceGrace=1.0, recoveryWindow=0)
        driver = yield self.startDriver()
        yield self.login(driver, "b", "b", "B")
        yield self.login(driver, "a", "a", "A")
        yield driver.waitFor("b", "status_change")
        yield driver.close("a")
        online = yield self.login(driver, "a", "a", "A")
        self.assertEqual([u["id"] for u in online], ["b", "a"])
        yield driver.close("a")
        gone = reactor.seconds()
        (change,) = yield driver.waitFor("b", "status_change",
                                         predicate=lambda args: args[0]["status"] == "offline")
        self.assertGreaterEqual(reactor.seconds() - gone, 0.9)
        self.assertEqual(change["userId"], "a")
        self.assertEqual([args[0]["status"] for args in driver.events("b", "status_change")],
                         ["online", "offline"])


class IMNodeTests(IMScenario, TestCase):
    """
    The contract with Node's socket.io-client over WebSocket (the PC
    client).
    """

    kind = "node"
    transports = ["websocket"]


class IMPythonTests(IMScenario, TestCase):
    """
    The contract with python-socketio, long-polling upgraded to WebSocket
    (the mobile client).
    """

    kind = "python"
    ordered = False


class HTTPTests(DriverTestMixin, TestCase):
    """
    C{GET /}, C{/api/online-users} and the JSON 404 (contract section 9).
    """

    @inlineCallbacks
    def test_commitInterval(self) -> Inline:
        """
        The configured commit interval is the store's.
        """
        service, _ = yield serveIM(self, commitInterval=0.004)
        self.assertEqual(service.store.commitInterval, 0.004)

    @inlineCallbacks
    def test_injectedStore(self) -> Inline:
        """
        A store given to the service is the one messages go to (the bench's
        in-memory comparison runs on this); no SQLite database is made.
        """
        store = MemoryMessageStore()
        service, url = yield serveIM(self, store=store)
        self.assertIs(service.store, store)
        driver = yield self.startDriver()
        for name in ("a", "b"):
            yield driver.connect(name, url, transports=["websocket"])
            yield driver.emit(name, "user:login", {"id": name, "name": name}, ack=True)
        (receipt,) = yield driver.emit("b", "message", {"toId": "a", "content": "hi", "type": "text"}, ack=True)
        self.assertEqual(receipt["status"], "delivered")
        (stored,) = store.messages.values()
        self.assertEqual((stored.fromId, stored.toId, stored.id), ("b", "a", receipt["messageId"]))
        self.assertFalse(FilePath(service.config.dataDir).child("crm_im.sqlite3").exists())

    @inlineCallbacks
    def setUp(self) -> Inline:
        """
        Serve crm_im.
        """
        self.service, self.url = yield serveIM(self)

    def assertJSONHeaders(self, response: Any) -> None:
        """
        The contract's content type and CORS header.
        """
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), JSON_TYPE)
        self.assertEqual(response.headers.getRawHeaders(b"access-control-allow-origin"), [b"*"])

    @inlineCallbacks
    def test_status(self) -> Inline:
        """
        C{GET /} says the server is running, its version, how many users
        (not sockets) are online and an ISO-8601 UTC time with
        milliseconds.
        """
        response, body = yield getJSON(self.url + "/")
        self.assertEqual(response.code, 200)
        self.assertJSONHeaders(response)
        self.assertEqual(set(body), {"status", "message", "version", "onlineUsers", "timestamp"})
        self.assertEqual((body["status"], body["message"], body["version"], body["onlineUsers"]),
                         ("running", "CRM IM WebSocket Server", __version__, 0))
        self.assertRegex(body["timestamp"], ISO)
        driver = yield self.startDriver()
        for client, userId in [("a1", "a"), ("a2", "a"), ("b", "b")]:
            yield driver.connect(client, self.url, transports=["websocket"])
            yield driver.emit(client, "user:login", {"id": userId, "name": userId}, ack=True)
        _, body = yield getJSON(self.url)
        self.assertEqual(body["onlineUsers"], 2)

    @inlineCallbacks
    def test_onlineUsers(self) -> Inline:
        """
        C{GET /api/online-users} lists the Users online.
        """
        response, body = yield getJSON(self.url + "/api/online-users")
        self.assertEqual((response.code, body), (200, {"users": []}))
        self.assertJSONHeaders(response)
        driver = yield self.startDriver()
        yield driver.connect("a", self.url, transports=["websocket"])
        yield driver.emit("a", "user:login", {"id": 1, "name": "A", "avatar": "a.png"}, ack=True)
        yield driver.emit("a", "status_change", {"status": "busy"}, ack=True)
        _, body = yield getJSON(self.url + "/api/online-users")
        self.assertEqual(body, {"users": [user("1", "A", "a.png", "busy")]})

    @inlineCallbacks
    def test_notFound(self) -> Inline:
        """
        Unknown paths answer 404 with JSON C{{"error": "not found"}}.
        """
        for path in ("/nope", "/api/nope", "/api", "/files/unknown/x.txt"):
            response, body = yield getJSON(self.url + path)
            self.assertEqual((response.code, body), (404, {"error": "not found"}), path)
            self.assertJSONHeaders(response)


class ConcurrencyTests(DriverTestMixin, TestCase):
    """
    Many Node clients at once over WebSocket.
    """

    kind = "node"
    clients = 200
    pairs = 50
    perSender = 20

    @inlineCallbacks
    def test_manyClients(self) -> Inline:
        """
        200 clients log in at once; then in 50 pairs both sides send 20
        messages to each other at once: every message arrives exactly once
        and each conversation keeps its order.
        """
        service, url = yield serveIM(self, maxPayload=1_000_000)
        marks: List[List[int]] = []
        markDelivered = service.store.markDelivered

        def spyMarks(seqs: Any) -> Any:
            marks.append(list(seqs))
            return markDelivered(seqs)

        service.store.markDelivered = spyMarks
        driver = yield self.startDriver()
        names = [f"u{i}" for i in range(self.clients)]
        yield gatherResults([driver.connect(name, url, transports=["websocket"], timeout=30)
                             for name in names])
        acks = yield gatherResults([
            driver.emit(name, "user:login", {"id": name, "name": name}, ack=True, timeout=30)
            for name in names])
        self.assertEqual(sorted(ack[0]["id"] for ack in acks), sorted(names))
        _, body = yield getJSON(url)
        self.assertEqual(body["onlineUsers"], self.clients)
        sends = []
        conversations = []
        for p in range(self.pairs):
            a, b = names[2 * p], names[2 * p + 1]
            for sender, receiver in ((a, b), (b, a)):
                conversations.append((sender, receiver))
                for i in range(self.perSender):
                    sends.append(driver.emit(sender, "message",
                                             {"toId": receiver, "content": f"{sender}>{i}",
                                              "id": f"{sender}-{i}"}, ack=True, timeout=30))
        receipts = yield gatherResults(sends)
        self.assertEqual({r[0]["status"] for r in receipts}, {"delivered"})
        last = self.perSender - 1
        yield gatherResults([
            driver.waitFor(receiver, "message", timeout=30,
                           predicate=lambda args, s=sender: args[0]["content"] == f"{s}>{last}")
            for sender, receiver in conversations])
        for sender, receiver in conversations:
            got = [args[0]["content"] for args in driver.events(receiver, "message")
                   if args[0]["fromId"] == sender]
            self.assertEqual(got, [f"{sender}>{i}" for i in range(self.perSender)])
        # The logins' announcements (batched per reactor turn): each of
        # the receivers, whose messages came after every login, heard of
        # each other user exactly once, in its online_users if that user
        # was in before it, else by status_change, and never of itself.
        for receiver in {receiver for _, receiver in conversations}:
            ((listed,),) = driver.events(receiver, "online_users")
            announced = [args[0]["userId"] for args in driver.events(receiver, "status_change")]
            self.assertNotIn(receiver, announced)
            heard = [entry["id"] for entry in listed] + announced
            self.assertEqual(sorted(heard), sorted(names), receiver)
        # Every live delivery was marked, in one write per reactor turn
        # rather than one per message; one more message carries the marks
        # still waiting into its commit.
        self.assertEqual(sum(len(seqs) for seqs in marks), len(sends))
        self.assertLess(len(marks), len(sends) // 4)
        yield driver.emit(names[0], "message", {"toId": names[1], "content": "last"}, ack=True)
        for name in names:
            pending = yield service.store.pendingFor(name, 10)
            self.assertEqual([m.content for m in pending if m.content != "last"], [], name)
