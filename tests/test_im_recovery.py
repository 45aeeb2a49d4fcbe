"""
Tests of connection state recovery for IM clients: a logged-in socket that
lost its connection and comes back within the window with its pid gets its
sid, login and chat rooms back with no presence change seen by others, and
the 1:1 messages sent meanwhile come from the store's offline queue. Driven
through the real L{SocketIOServer}, L{SocketIOGateway} and L{IMCore} with
fake WebSockets, a memory store and a L{Clock}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from crm_im._json import dumps, loads
from crm_im.engineio import EngineIOConfig
from crm_im.gateway.socketio import SocketIOGateway
from crm_im.im.core import IMCore
from crm_im.presence import Presence
from crm_im.routing.local import LocalRouter
from crm_im.socketio import SocketIOConfig, SocketIOServer
from crm_im.socketio.server import HELD_RELEASE_DELAY
from crm_im.storage.memory import MemoryMessageStore

from .test_sio_server import Client

WINDOW = 30_000


class IMRecoveryTests(SynchronousTestCase):
    """
    Recovery of the IM state of a socket: identity, rooms, presence and the
    messages it missed.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        # Heartbeats far apart: the clock jumps past the window.
        engine = EngineIOConfig(pingInterval=3_600_000, pingTimeout=3_600_000)
        self.sio = SocketIOServer(self.clock, engine, config=SocketIOConfig(recoveryWindow=WINDOW))
        self.store = MemoryMessageStore()
        self.presence = Presence(self.clock)
        sockets = self.sio.namespace("/").sockets
        self.core = IMCore(
            self.store, None, self.presence, LocalRouter(sockets, self.presence), self.clock  # type: ignore[arg-type]
        )
        self.gateway = SocketIOGateway(self.sio, self.core, self.clock)

    def tearDown(self) -> None:
        self.sio.stop()

    def connect(self, auth: dict[str, Any] | None = None) -> tuple[Client, dict[str, Any]]:
        """
        A client session connected to C{/}; the CONNECT answer.
        """
        client = Client(self.sio)
        client.send(b"0" + (dumps(auth) if auth is not None else b""))
        answer = client.received()[0]
        self.assertTrue(answer.startswith(b"0{"), answer)
        return client, loads(answer[1:])

    def emit(self, client: Client, event: str, payload: Any, ackId: int = 1) -> None:
        """
        Emit C{event} with an ack id.
        """
        client.send(b"2" + str(ackId).encode() + dumps([event, payload]))

    def events(self, client: Client) -> list[tuple[str, Any]]:
        """
        The events (not acks) received since last asked.
        """
        result = []
        for data in client.received():
            if data.startswith(b"2"):
                name, *args = loads(data[1:])
                result.append((name, args[0] if args else None))
        return result

    def login(self, userId: str) -> tuple[Client, str, str]:
        """
        A client logged in as C{userId}: it, its sid and its pid.
        """
        client, answer = self.connect()
        self.emit(client, "user:login", {"id": userId, "name": userId.upper()})
        self.clock.advance(0)
        client.received()
        return client, answer["sid"], answer["pid"]

    def cut(self, client: Client) -> None:
        """
        The client's transport breaks.
        """
        client.session.channelClosed(client.channel)

    def test_resumed(self) -> None:
        """
        Back within the window with its pid: the same sid, logged in as
        before without a login, still in its chat room; the others saw no
        status change; the 1:1 messages sent meanwhile arrive from the
        store, in order, and the sender was told they were stored for an
        offline user.
        """
        alice, aliceSid, alicePid = self.login("alice")
        bob, _, _ = self.login("bob")
        self.events(alice)
        self.successResultOf(self.store.createRoom(_room("r1")))
        self.emit(alice, "room:join", {"roomId": "r1"})
        self.clock.advance(0)
        self.events(alice)
        self.cut(alice)
        self.clock.advance(1)
        for n in range(3):
            self.emit(bob, "message", {"id": f"m{n}", "toId": "alice", "content": f"hello {n}"}, ackId=10 + n)
        self.clock.advance(1)
        acks = [loads(data[3:])[0] for data in bob.received() if data.startswith(b"31")]
        self.assertEqual([ack["status"] for ack in acks], ["offline"] * 3)
        back, answer = self.connect({"pid": alicePid})
        self.assertEqual(answer, {"sid": aliceSid, "pid": alicePid})
        self.clock.advance(HELD_RELEASE_DELAY)
        self.clock.advance(0)
        received = self.events(back)
        messages = [payload["content"] for name, payload in received if name == "message"]
        self.assertEqual(messages, ["hello 0", "hello 1", "hello 2"])
        self.assertIn("groups", [name for name, _ in received])
        self.assertNotIn("user:login:success", [name for name, _ in received])
        user = self.presence.userOfDevice(aliceSid)
        assert user is not None
        self.assertEqual(user.id, "alice")
        self.assertTrue(self.core.rooms.rooms.contains("r1", aliceSid))
        self.clock.advance(WINDOW / 1000 + 1)
        self.assertEqual([name for name, _ in self.events(bob) if name == "status_change"], [])
        self.assertTrue(self.core.rooms.rooms.contains("r1", aliceSid))

    def test_notBack(self) -> None:
        """
        A socket that does not come back within the window: its user goes
        offline for the others at the window's end (not before), and it
        leaves its rooms.
        """
        alice, aliceSid, _ = self.login("alice")
        bob, _, _ = self.login("bob")
        self.successResultOf(self.store.createRoom(_room("r1")))
        self.emit(alice, "room:join", {"roomId": "r1"})
        self.clock.advance(0)
        self.events(bob)
        self.cut(alice)
        self.clock.advance(WINDOW / 1000 - 1)
        self.assertEqual(self.events(bob), [])
        self.assertIsNotNone(self.presence.user("alice"))
        self.clock.advance(2)
        self.assertEqual(
            [(name, payload["userId"], payload["status"]) for name, payload in self.events(bob)],
            [("status_change", "alice", "offline")],
        )
        self.assertFalse(self.core.rooms.rooms.contains("r1", aliceSid))
        back = Client(self.sio)
        back.send(b"0" + dumps({"pid": "whatever"}))
        answer = loads(back.received()[0][1:])
        self.assertNotEqual(answer["sid"], aliceSid)
        self.assertIsNone(self.presence.userOfDevice(answer["sid"]))

    def test_deliberateDisconnect(self) -> None:
        """
        A client that disconnects on purpose is gone at once: offline for
        the others at the end of the turn, as without recovery.
        """
        alice, _, _ = self.login("alice")
        bob, _, _ = self.login("bob")
        self.events(bob)
        alice.send(b"1")
        self.clock.advance(0)
        self.assertEqual(
            [(name, payload["status"]) for name, payload in self.events(bob)], [("status_change", "offline")]
        )

    def test_offWithoutWindow(self) -> None:
        """
        With recovery off, a cut connection is a logout at once.
        """
        self.sio = SocketIOServer(self.clock)
        self.presence = Presence(self.clock)
        sockets = self.sio.namespace("/").sockets
        self.core = IMCore(
            self.store, None, self.presence, LocalRouter(sockets, self.presence), self.clock  # type: ignore[arg-type]
        )
        self.gateway = SocketIOGateway(self.sio, self.core, self.clock)
        client = Client(self.sio)
        client.send(b"0")
        sid = loads(client.received()[0][1:])["sid"]
        self.emit(client, "user:login", {"id": "alice", "name": "A"})
        self.cut(client)
        self.assertIsNone(self.presence.userOfDevice(sid))
        self.clock.advance(0)
        self.assertIsNone(self.presence.user("alice"))


def _room(roomId: str) -> Any:
    from crm_im.storage.interface import RoomRecord

    return RoomRecord(id=roomId, name=roomId, topic="", public=True, createdBy="x", clientId=None, createdAt=0)
