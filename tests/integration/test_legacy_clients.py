"""
The real socket.io-client 2.x (Engine.IO v3, Socket.IO protocol v4) against
a L{SocketIOServer} with C{allowEIO3} on a loopback port: default transports
(polling upgraded to WebSocket), WebSocket only and polling only, with
heartbeats of 300/200 ms that the client drives.

The client side is C{tests/interop/legacy_v2.js} (npm alias
C{socket.io-client-v2}); see its header for the scenario.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.resource import Resource

from crm_im.engineio import EngineIOConfig, EngineIOSite
from crm_im.socketio import SocketIOServer

INTEROP = Path(__file__).resolve().parent.parent / "interop"
SCRIPT = INTEROP / "legacy_v2.js"


class _Collect(ProcessProtocol):
    """
    Collects a child's output; C{ended} fires with it when the child exits.
    """

    def __init__(self) -> None:
        self.out = b""
        self.err = b""
        self.ended: Deferred[tuple[bytes, bytes]] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.out += data

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback((self.out, self.err))


class LegacyClientTests(TestCase):
    """
    Every step of the scenario works for each transport choice.
    """

    timeout = 40

    def setUp(self) -> None:
        if shutil.which("node") is None or not (INTEROP / "node_modules" / "socket.io-client-v2").exists():
            message = "node or socket.io-client-v2 missing: run `npm ci --prefix tests/interop`"
            if os.environ.get("CI") == "true":
                raise RuntimeError(message)
            raise SkipTest(message)
        config = EngineIOConfig(pingInterval=300, pingTimeout=200, allowEIO3=True)
        sio = self.sio = SocketIOServer(reactor, config, connectTimeout=1.0)

        @sio.on("echo")
        def echo(sid: str, *args: Any) -> tuple[Any, ...]:
            sio.emit("echoed", *args, to=sid)
            return args

        @sio.on("connect", namespace="/custom")
        def custom(sid: str, auth: Any) -> None:
            sio.emit("welcome", "/custom", to=sid, namespace="/custom")

        root = Resource()
        root.putChild(b"socket.io", sio.resource())
        sio.start()
        d = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(EngineIOSite(root, config))

        def listening(port: Any) -> None:
            self.port = port
            self.url = "http://127.0.0.1:%d" % (port.getHost().port,)

        return d.addCallback(listening)  # type: ignore[return-value]

    def tearDown(self) -> Any:
        self.sio.stop()
        return self.port.stopListening()

    @inlineCallbacks
    def scenario(self, mode: str) -> Any:
        """
        Run the scenario with C{mode}; the reports by step.
        """
        protocol = _Collect()
        node = shutil.which("node") or "node"
        reactor.spawnProcess(  # type: ignore[attr-defined]
            protocol, node, [node, str(SCRIPT), self.url, mode], env=dict(os.environ), path=str(INTEROP)
        )
        out, err = yield protocol.ended
        reports = {}
        for line in out.decode("utf-8").splitlines():
            report = json.loads(line)
            reports[report.pop("step")] = report
        self.assertNotIn("error", reports, (reports.get("error"), err))
        self.assertIn("done", reports, (out, err))
        self.assertTrue(reports["version"]["version"].startswith("2."))
        self.assertEqual(reports["ack"]["args"], ["hello", {"a": [1, "é😀"]}])
        self.assertEqual(reports["ack"]["echoed"], ["hello", {"a": [1, "é😀"]}])
        self.assertEqual(reports["binaryAck"], {"isBuffer": True, "bytes": [0, 1, 2, 255], "tail": "tail"})
        self.assertEqual(reports["custom"], {"welcome": "/custom"})
        self.assertEqual(reports["nope"], {"error": "Invalid namespace"})
        self.assertEqual(reports["heartbeat"]["disconnected"], [])
        self.assertEqual(reports["heartbeat"]["late"], ["still"])
        return reports

    @inlineCallbacks
    def test_default(self) -> Any:
        """
        Default transports: the session starts on polling and upgrades to
        WebSocket (C{3probe}), and every step works across the upgrade.
        """
        reports = yield self.scenario("default")
        self.assertEqual(reports["connect"]["transport"], "polling")
        self.assertEqual(reports["heartbeat"]["transport"], "websocket")

    @inlineCallbacks
    def test_webSocketOnly(self) -> Any:
        """
        WebSocket only: v3 binary frames carry their type byte.
        """
        reports = yield self.scenario("websocket")
        self.assertEqual(reports["heartbeat"]["transport"], "websocket")

    @inlineCallbacks
    def test_pollingOnly(self) -> Any:
        """
        Polling only: v3 length-prefixed payloads both ways, binary as
        C{b4} base64 or in the binary payload form.
        """
        reports = yield self.scenario("polling")
        self.assertEqual(reports["heartbeat"]["transport"], "polling")
