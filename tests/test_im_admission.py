"""
Unit tests of how the Socket.IO gateway accounts for message writes in flight:
the L{ReadGate} and the store latency histogram.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from crm_im.engineio.backpressure import ReadGate
from crm_im.gateway.socketio import SocketIOGateway
from crm_im.im.core import IMCore
from crm_im.presence import Presence
from crm_im.routing.local import LocalRouter
from crm_im.socketio.server import SocketIOServer
from crm_im.storage import NewMessage, StoreOutcome
from crm_im.storage.memory import MemoryMessageStore

from .test_im_presence_fanout import RecordingSocket


class HeldStore(MemoryMessageStore):
    """
    A memory store whose message writes finish when the test says so.
    """

    def __init__(self) -> None:
        super().__init__()
        self.held: list[tuple[NewMessage, Deferred[StoreOutcome]]] = []

    def storeMessage(self, msg: NewMessage) -> Deferred[StoreOutcome]:
        d: Deferred[StoreOutcome] = Deferred()
        self.held.append((msg, d))
        return d

    def finish(self) -> None:
        msg, d = self.held.pop(0)
        super().storeMessage(msg).chainDeferred(d)

    def fail(self, failure: Failure) -> None:
        self.held.pop(0)[1].errback(failure)


class SessionStub:
    """
    What the gate needs of a session.
    """

    paused = False

    def pauseReading(self) -> None:
        self.paused = True

    def resumeReading(self) -> None:
        self.paused = False


class MessageAdmissionTests(SynchronousTestCase):
    """
    A message write counts as work in flight from its start until it is
    stored or has failed, and its time is observed either way.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.store = HeldStore()
        self.presence = Presence(self.clock)
        self.gate = ReadGate(high=1, low=0)
        self.sio = SocketIOServer(self.clock)
        sockets = self.sio.namespace("/").sockets
        self.core = IMCore(self.store, None, self.presence, LocalRouter(sockets, self.presence, self.clock), self.clock)  # type: ignore[arg-type]
        self.app = SocketIOGateway(self.sio, self.core, self.clock, gate=self.gate)
        self.socket = RecordingSocket("sid-a")
        self.socket.session = SessionStub()  # type: ignore[attr-defined]
        sockets["sid-a"] = self.socket  # type: ignore[assignment]
        self.presence.login("a", "sid-a", "A", None)
        self.results: list[Any] = []

    def send(self, id: str) -> Deferred[Any]:
        """
        Send a message through the gateway's C{message} handler, as the
        Socket.IO server would, and return a L{Deferred} of its ack.
        """
        d: Deferred[Any] = Deferred()
        handler = self.sio.namespace("/").handlers["message"]
        handler("sid-a", d.callback, {"id": id, "toId": "b", "content": "hi"})
        return d

    def observed(self) -> int:
        return sum(self.app.metrics.store["store"].counts)

    def test_inFlightUntilStored(self) -> None:
        """
        Each write is in flight until its commit; past the gate's mark the
        sender's session stops being read, and is read again once the
        writes are stored. The receipt follows.
        """
        first, second = self.send("m1"), self.send("m2")
        self.assertEqual(self.gate.inFlight, 2)
        self.assertTrue(self.socket.session.paused)  # type: ignore[attr-defined]
        self.clock.advance(0.25)
        self.store.finish()
        self.store.finish()
        self.assertEqual(self.gate.inFlight, 0)
        self.assertFalse(self.socket.session.paused)  # type: ignore[attr-defined]
        self.assertEqual(self.observed(), 2)
        self.assertEqual(self.app.metrics.store["store"].sum, 0.5)
        self.assertEqual(self.successResultOf(first)["messageId"], "m1")
        self.assertEqual(self.successResultOf(second)["status"], "offline")
        self.assertEqual([name for name, _ in self.socket.events()], ["message:sent", "message:sent"])

    def test_inFlightUntilFailed(self) -> None:
        """
        A write that fails leaves the gate too and is observed; the sender
        is told to send again.
        """
        result = self.send("m1")
        self.assertEqual(self.gate.inFlight, 1)
        self.clock.advance(0.1)
        self.store.fail(Failure(RuntimeError("disk on fire")))
        self.assertEqual(self.gate.inFlight, 0)
        self.assertEqual(self.observed(), 1)
        self.assertEqual(self.successResultOf(result), {"error": {"message": "the message could not be stored; send it again", "code": "INTERNAL"}})
        (name, refusal), = self.socket.events()
        self.assertEqual((name, refusal["code"], refusal["id"]), ("error", "INTERNAL", "m1"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
