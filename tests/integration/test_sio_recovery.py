"""
Connection state recovery end to end: the real socket.io-client 4.8 with
reconnection on, its transport cut under it by the server, comes back with
the same socket id, C{socket.recovered === true}, its rooms and data, and
the events emitted meanwhile, over WebSocket and over long-polling.
"""

from __future__ import annotations

from typing import Any, Generator

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource

from crm_im.engineio import EngineIOConfig, EngineIOSession
from crm_im.socketio import SocketIOConfig, SocketIOServer
from tests.support.apps import serve
from tests.support.clients import DriverTestMixin
from tests.support.markers import heldPoll

Inline = Generator[Deferred[Any], Any, None]


class RecoveryScenario(DriverTestMixin):
    """
    One client, one cut, everything back.
    """

    timeout = 30
    transports: list[str] = []

    def setUp(self) -> None:
        config = EngineIOConfig()
        self.sio = SocketIOServer(reactor, config, config=SocketIOConfig(recoveryWindow=120_000))
        root = Resource()
        root.putChild(b"socket.io", self.sio.resource())
        self.sio.start()
        self.url = serve(self, reactor, root, config, self.sio.stop)  # type: ignore[arg-type]

    @inlineCallbacks
    def cut(self, session: EngineIOSession) -> Inline:
        """
        Break the TCP connection under C{session}: its WebSocket, or its
        held long-polling GET (waiting for the client to send the next one).
        """
        channel: Any = session._channel
        if channel is not None:
            channel.transport.abortConnection()
            return
        poll: Any = yield heldPoll(session)
        poll.request.channel.transport.abortConnection()

    @inlineCallbacks
    def test_recovered(self) -> Inline:
        """
        The socket comes back recovered, with its sid, rooms and data, and
        receives what was emitted to it and to its room while it was cut
        off, in order.
        """
        driver = yield self.startDriver()
        report = yield driver.connect(
            "a", self.url, transports=self.transports, reconnection=True,
            reconnectionDelay=50, reconnectionDelayMax=100)
        sid = report["id"]
        self.assertFalse(report["recovered"])
        socket = self.sio.getSocket(sid)
        assert socket is not None
        socket.data = {"user": "1001"}
        self.sio.enterRoom(sid, "room")
        self.sio.emit("before", 1, to=sid)
        args = yield driver.waitFor("a", "before")
        self.assertEqual(args[0], 1)
        yield self.cut(socket.session)
        self.sio.emit("missed", 2, to="room")
        self.sio.emit("missed", 3, to=sid)
        again = yield driver.waitForConnect("a")
        self.assertEqual((again["id"], again["recovered"]), (sid, True))
        first = yield driver.waitFor("a", "missed")
        second = yield driver.waitFor("a", "missed")
        self.assertEqual([first[0], second[0]], [2, 3])
        restored = self.sio.getSocket(sid)
        assert restored is not None
        self.assertTrue(restored.recovered)
        self.assertEqual(restored.data, {"user": "1001"})
        self.assertEqual(self.sio.rooms(sid), {sid, "room"})
        self.sio.emit("after", 4, to="room")
        args = yield driver.waitFor("a", "after")
        self.assertEqual(args[0], 4)


class WebSocketRecoveryTests(RecoveryScenario, TestCase):
    """
    socket.io-client over WebSocket only.
    """

    transports = ["websocket"]


class PollingRecoveryTests(RecoveryScenario, TestCase):
    """
    socket.io-client over long-polling only.
    """

    transports = ["polling"]
