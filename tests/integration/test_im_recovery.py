"""
Connection state recovery of IM clients end to end, with the real
socket.io-client 4.8 (reconnection on, as apps run it): the transport is
cut under a logged-in client while 1:1 and group messages are sent to it;
it comes back with C{recovered === true}, the same socket id, still logged
in, and gets every message it missed once, in order, then the live ones; a
watcher never sees it go offline. Over WebSocket and long-polling, on the
server in process; and across a restart of a real C{twistd} process (its
SQLite data directory kept). A kicked user is not recovered.
"""

from __future__ import annotations

from typing import Any, Dict, Generator, List

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from crm_im.engineio import EngineIOSession
from tests.integration.test_im import serveIM
from tests.integration.test_twistd import ProcessTestCase
from tests.support.clients import ClientDriver, DriverTestMixin, requireKind
from tests.support.markers import heldPoll

Inline = Generator[Deferred[Any], Any, Any]

TOKEN = "recovery-admin-token"

#: socket.io-client's reconnection: one attempt a second, no jitter, so
#: that the messages sent right after a cut are sent while it is away
RECONNECT = {"reconnection": True, "reconnectionDelay": 1000, "reconnectionDelayMax": 1000,
             "randomizationFactor": 0}


def contents(driver: ClientDriver, client: str) -> List[str]:
    """
    The contents of the messages (not the system ones) C{client} got, in
    order.
    """
    return [args[0]["content"] for args in driver.events(client, "message") if args[0]["type"] != "system"]


@inlineCallbacks
def waitForMessage(driver: ClientDriver, client: str, content: str, timeout: float = 10) -> Inline:
    """
    Wait until C{client} got the message C{content}.
    """
    while True:
        args = yield driver.waitFor(client, "message", timeout=timeout)
        if args[0]["content"] == content:
            return args


class RecoveryScenario(DriverTestMixin):
    """
    The IM state of a cut client comes back, for one transport.
    """

    timeout = 60
    transports: List[str] = []

    @inlineCallbacks
    def setUp(self) -> Inline:  # type: ignore[override]
        self.service, self.url = yield serveIM(self, adminToken=TOKEN)
        self.driver = yield self.startDriver()

    @inlineCallbacks
    def login(self, client: str, userId: str, reconnect: bool = False) -> Inline:
        """
        Connect C{client} and log it in as C{userId}; its connect report.
        """
        opts: Dict[str, Any] = {"transports": self.transports}
        if reconnect:
            opts.update(RECONNECT)
        report = yield self.driver.connect(client, self.url, **opts)
        ack = yield self.driver.emit(client, "user:login", {"id": userId, "name": userId.title()}, ack=True)
        self.assertEqual(ack[0]["id"], userId)
        yield self.driver.waitFor(client, "groups")
        return report

    @inlineCallbacks
    def cut(self, sid: str) -> Inline:
        """
        Break the TCP connection under socket C{sid}: its WebSocket, or
        its held long-polling GET.
        """
        socket = self.service.sio.getSocket(sid)
        assert socket is not None
        session: EngineIOSession = socket.session
        channel: Any = session._channel
        if channel is not None:
            channel.transport.abortConnection()
            return
        poll: Any = yield heldPoll(session)
        poll.request.channel.transport.abortConnection()

    @inlineCallbacks
    def send(self, client: str, **payload: Any) -> Inline:
        ack = yield self.driver.emit(client, "message", payload, ack=True)
        self.assertNotIn("error", ack[0])
        return ack[0]

    def contents(self, client: str) -> List[str]:
        """
        The contents of the messages (not the system ones) C{client} got,
        in order.
        """
        return contents(self.driver, client)

    @inlineCallbacks
    def test_recovered(self) -> Inline:
        """
        Cut off while 1:1 and group messages are sent to it, the client
        comes back recovered with its socket id and login, gets each
        missed message once, in seq order, each followed by its offset, then the
        live ones; the watcher never saw it offline.
        """
        alice = yield self.login("a", "alice", reconnect=True)
        yield self.login("a2", "alice")
        yield self.login("b", "bob")
        yield self.login("c", "carol")
        group = yield self.driver.emit("b", "group:create", {"name": "team", "memberIds": ["alice", "carol"]},
                                       ack=True)
        groupId = group[0]["id"]
        yield self.driver.waitFor("a", "group:joined")
        yield self.driver.waitFor("a2", "group:joined")
        yield self.send("b", toId="alice", content="before")
        yield waitForMessage(self.driver, "a", "before")
        yield self.cut(alice["id"])
        yield self.send("b", toId="alice", content="direct 1")
        yield self.send("c", groupId=groupId, content="group 1")
        yield self.send("c", toId="alice", content="direct 2")
        yield self.send("b", groupId=groupId, content="group 2")
        # alice's other device sends meanwhile: it would have got them live
        # (was: nothing the user sent was replayed)
        yield self.send("a2", toId="bob", content="mine 1")
        yield self.send("a2", groupId=groupId, content="mine 2")
        # someone comes online while it is away: its status_change is not
        # replayed, so the list comes again (was: only at the login)
        yield self.login("d", "dave")
        again = yield self.driver.waitForConnect("a")
        self.assertEqual((again["id"], again["recovered"]), (alice["id"], True))
        (online,) = yield self.driver.waitFor("a", "online_users",
                                              predicate=lambda args: "dave" in [u["id"] for u in args[0]])
        self.assertEqual(sorted(u["id"] for u in online), ["alice", "bob", "carol", "dave"])
        yield waitForMessage(self.driver, "a", "mine 2")
        yield self.send("b", toId="alice", content="after")
        after = yield waitForMessage(self.driver, "a", "after")
        # (its offset follows it in a frame of its own)
        yield self.driver.waitFor("a", "recovery:offset", predicate=lambda args: args == [f"m{after[0]['seq']}"])
        self.assertEqual(self.contents("a"),
                         ["before", "direct 1", "group 1", "direct 2", "group 2", "mine 1", "mine 2", "after"])
        messages = self.driver.events("a", "message")
        seqs = [args[0]["seq"] for args in messages]
        self.assertEqual(seqs, sorted(seqs))
        # Each message keeps its one argument; its offset follows it in an
        # event of its own, which socket.io-client remembers to recover from.
        self.assertEqual({len(args) for args in messages}, {1})
        offsets = [args for args in self.driver.events("a", "recovery:offset")]
        self.assertEqual(offsets, [[f"m{seq}"] for seq in seqs])
        # Still logged in as alice, without a login.
        self.assertEqual(len(self.driver.events("a", "user:login:success")), 1)
        ack = yield self.driver.emit("a", "message", {"toId": "bob", "content": "still me"}, ack=True)
        self.assertNotIn("error", ack[0])
        got = yield waitForMessage(self.driver, "b", "still me")
        self.assertEqual(got[0]["fromId"], "alice")
        offline = [args[0] for args in self.driver.events("c", "status_change")
                   if args[0]["userId"] == "alice" and args[0]["status"] == "offline"]
        self.assertEqual(offline, [])

    @inlineCallbacks
    def test_kickedNotRecovered(self) -> Inline:
        """
        A user an administrator disconnected is not recovered when its
        client connects again with its pid: a new socket, not logged in.
        """
        alice = yield self.login("a", "alice", reconnect=True)
        headers: Dict[bytes | str, bytes | str] = {b"authorization": b"Bearer " + TOKEN.encode()}
        response = yield treq.post(self.url + "/admin/api/users/alice/disconnect", json={"reason": "bye"},
                                   headers=headers, persistent=False)
        self.assertEqual(response.code, 200)
        yield response.content()
        yield self.driver.waitForDisconnect("a")
        again = yield self.driver.connect("a", self.url, transports=self.transports, **RECONNECT)
        self.assertNotEqual(again["id"], alice["id"])
        self.assertFalse(again["recovered"])
        ack = yield self.driver.emit("a", "message", {"toId": "bob", "content": "x"}, ack=True)
        self.assertEqual(ack[0]["error"]["code"], "NOT_LOGGED_IN")


class WebSocketIMRecoveryTests(RecoveryScenario, TestCase):
    """
    socket.io-client over WebSocket only.
    """

    transports = ["websocket"]


class PollingIMRecoveryTests(RecoveryScenario, TestCase):
    """
    socket.io-client over long-polling only.
    """

    transports = ["polling"]


class RestartRecoveryTests(ProcessTestCase):
    """
    Recovery across a restart of a real C{twistd crm_im} process.
    """

    @inlineCallbacks
    def test_restart(self) -> Inline:
        """
        The server stops (SIGTERM) under a logged-in client and starts
        again on the same port and data directory; messages are sent to
        the client before it is back: it comes back recovered, with its
        socket id and login, and gets them in order, once.
        """
        requireKind("node")
        dataDir = self.mktemp()
        server = self.spawnTwistd(dataDir)
        port = server.port
        yield self.waitUntilServing(server)
        url = f"http://127.0.0.1:{port}"
        driver: ClientDriver = yield self.driver("node")
        # Back 4 s after the stop (no jitter): time for the server to start
        # again and for bob to send.
        alice = yield driver.connect("a", url, transports=["websocket"], reconnection=True,
                                     reconnectionDelay=4000, reconnectionDelayMax=4000, randomizationFactor=0)
        yield driver.emit("a", "user:login", {"id": "alice", "name": "Alice"}, ack=True)
        yield driver.connect("b", url, transports=["websocket"])
        yield driver.emit("b", "user:login", {"id": "bob", "name": "Bob"}, ack=True)
        group = yield driver.emit("b", "group:create", {"name": "team", "memberIds": ["alice"]}, ack=True)
        groupId = group[0]["id"]
        yield driver.emit("b", "message", {"toId": "alice", "content": "before"}, ack=True)
        yield waitForMessage(driver, "a", "before")
        server.signal("TERM")
        code = yield self.waitForExit(server)
        self.assertEqual(code, 0, server.text)
        yield driver.waitForDisconnect("a")
        server = self.spawnTwistd(dataDir, port=port)
        yield self.waitUntilServing(server)
        yield driver.connect("b2", url, transports=["websocket"])
        yield driver.emit("b2", "user:login", {"id": "bob", "name": "Bob"}, ack=True)
        yield driver.emit("b2", "message", {"toId": "alice", "content": "direct"}, ack=True)
        yield driver.emit("b2", "message", {"groupId": groupId, "content": "group"}, ack=True)
        early = [r for r in driver._unconsumed if r.get("type") == "connect" and r.get("client") == "a"]
        self.assertEqual(early, [], "alice came back before bob sent: no replay was tested")
        again = yield driver.waitForConnect("a", timeout=20)
        self.assertEqual((again["id"], again["recovered"]), (alice["id"], True))
        yield waitForMessage(driver, "a", "group")
        self.assertEqual(contents(driver, "a"), ["before", "direct", "group"])
        ack = yield driver.emit("a", "message", {"toId": "bob", "content": "still me"}, ack=True)
        self.assertNotIn("error", ack[0])
        server.signal("TERM")
        yield self.waitForExit(server)
