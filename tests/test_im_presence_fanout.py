"""
Unit tests of how L{Sessions} announces users going offline.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from crm_im._json import loads
from crm_im.engineio.packet import Frame, FrameBatch
from crm_im.gateway.socketio import SocketIOGateway
from crm_im.im.core import IMCore
from crm_im.presence import Presence
from crm_im.routing.local import LocalRouter
from crm_im.socketio.server import SocketIOServer
from crm_im.storage.memory import MemoryMessageStore


class RecordingSocket:
    """
    Stands in for a connected L{Socket}: records the frames sent to it.
    """

    def __init__(self, sid: str) -> None:
        self.sid = sid
        self.frames: list[Frame] = []
        self.writes = 0

    def sendFrames(self, frames: list[Frame]) -> None:
        self.writes += 1
        for frame in frames:
            self.frames.extend(frame.parts if isinstance(frame, FrameBatch) else [frame])

    def events(self) -> list[tuple[str, Any]]:
        result = []
        for frame in self.frames:
            name, payload = loads(frame.data[2:])
            result.append((name, payload))
        return result


class OfflineAnnouncementTests(SynchronousTestCase):
    """
    Offline changes are announced at the end of the reactor turn, to the
    devices still there.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.sio = SocketIOServer(self.clock)
        self.presence = Presence(self.clock)
        router = LocalRouter(self.sio.namespace("/").sockets, self.presence, self.clock)
        self.core = IMCore(MemoryMessageStore(), None, self.presence, router, self.clock)  # type: ignore[arg-type]
        self.app = SocketIOGateway(self.sio, self.core, self.clock)
        self.sockets: dict[str, RecordingSocket] = {}
        for userId in ("a", "b", "c", "d"):
            sid = "sid-" + userId
            socket = self.sockets[sid] = RecordingSocket(sid)
            self.sio.namespace("/").sockets[sid] = socket  # type: ignore[assignment]
            self.presence.login(userId, sid, userId.upper(), None)

    def offlineSeenBy(self, sid: str) -> list[str]:
        return [p["userId"] for name, p in self.sockets[sid].events() if name == "status_change" and p["status"] == "offline"]

    def test_massDisconnect(self) -> None:
        """
        Users disconnecting in the same turn are announced once each, only
        to the devices still logged in, after the turn, in one write per
        device: nothing is written to the devices that left with them.
        """
        self.clock.advance(1.5)
        for sid in ("sid-a", "sid-b", "sid-c"):
            self.app._disconnected(sid, "transport close")
        self.assertEqual([socket.frames for socket in self.sockets.values()], [[], [], [], []])
        self.clock.advance(0)
        self.assertEqual(self.offlineSeenBy("sid-d"), ["a", "b", "c"])
        self.assertEqual(self.sockets["sid-d"].writes, 1)
        for sid in ("sid-a", "sid-b", "sid-c"):
            self.assertEqual(self.sockets[sid].frames, [])
        (_, first), *_ = self.sockets["sid-d"].events()
        self.assertEqual(first, {"userId": "a", "status": "offline", "timestamp": 1500})

    def test_backWithinTheTurn(self) -> None:
        """
        A user who leaves and logs in again within one turn is not
        announced offline.
        """
        self.app._disconnected("sid-a", "transport close")
        self.presence.login("a", "sid-a2", "A", None)
        self.clock.advance(0)
        self.assertEqual(self.offlineSeenBy("sid-d"), [])

    def test_shutdownAnnouncesNothing(self) -> None:
        """
        Once C{server:shutdown} went out, the users leaving are not
        announced, even those queued before it in the same turn.
        """
        self.app._disconnected("sid-a", "transport close")
        self.core.sessions.shuttingDown = True
        self.clock.advance(0)
        self.assertEqual(self.offlineSeenBy("sid-d"), [])
