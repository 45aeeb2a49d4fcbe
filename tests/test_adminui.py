"""
Unit tests of L{AdminUINamespace}'s own state on a L{Clock}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from crm_im.gateway.adminui import NAMESPACE, AdminUINamespace
from crm_im.presence import Presence
from crm_im.socketio.server import SocketIOServer

from .test_im_presence_fanout import RecordingSocket


class EventCountTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.sio = SocketIOServer(self.clock)
        self.ui = AdminUINamespace(self.sio, None, self.clock, Presence(self.clock), None)  # type: ignore[arg-type]

    def churn(self, seconds: int) -> None:
        for second in range(seconds):
            self.clock.advance(1)
            self.ui.deviceConnected(f"d{second}", "127.0.0.1")
            self.ui.deviceDisconnected(f"d{second}", "transport close")

    def test_nothingKeptWithoutUI(self) -> None:
        """
        With no UI connected, connections and disconnections leave no
        per-second counts behind: nobody would ever collect them.
        """
        self.churn(1000)
        self.assertEqual(self.ui._events, {})

    def test_countedForUI(self) -> None:
        """
        With a UI connected, they are counted for its next C{server_stats}.
        """
        ui: Any = RecordingSocket("ui")
        self.sio.namespace(NAMESPACE).sockets["ui"] = ui
        self.churn(3)
        self.assertEqual(sum(self.ui._events.values()), 6)
        self.assertEqual({kind for _, kind in self.ui._events}, {"rawConnection", "rawDisconnection"})
        self.assertEqual(len(ui.frames), 3)  # the three socket_disconnected
