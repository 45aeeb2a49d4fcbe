"""
The server the official compliance suites expect, on crm_im's public engine
API: a raw Engine.IO echo at C{/engine.io/} (for socketio/engine.io-protocol)
and a Socket.IO server at C{/socket.io/} (for socketio/socket.io-protocol),
with pingInterval 300 ms, pingTimeout 200 ms, connectTimeout 1000 ms and
CORS C{*}, as their "Test suite" sections configure the reference servers.

Run it with C{python examples/compliance.py [PORT]} (default 3000), then
C{npm ci && npm test} in either suite's C{test-suite/} directory. With
C{--allow-eio3} it also serves Engine.IO v3 (socket.io-client 2.x) clients.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import reactor
from twisted.web.resource import Resource
from zope.interface import implementer

from crm_im.engineio import (
    EngineIOConfig,
    EngineIOResource,
    EngineIOServer,
    EngineIOSession,
    EngineIOSite,
    IEngineIOApplication,
)
from crm_im.socketio import SocketIOServer


@implementer(IEngineIOApplication)
class Echo:
    """
    Sends every message back as it came (text as text, binary as binary).
    """

    def sessionOpened(self, session: EngineIOSession) -> None:
        pass

    def messageReceived(self, session: EngineIOSession, data: bytes, binary: bool) -> None:
        session.send(data if binary else data.decode("utf-8"))

    def sessionClosed(self, session: EngineIOSession, reason: str) -> None:
        pass


def build(clock: Any, allowEIO3: bool = False) -> tuple[Resource, EngineIOConfig, list[Any]]:
    """
    The resource tree, its config and the servers to start and stop.
    """
    config = EngineIOConfig(pingInterval=300, pingTimeout=200, maxPayload=1_000_000, allowEIO3=allowEIO3)
    engine = EngineIOServer(Echo(), clock, config)
    sio = SocketIOServer(clock, config, connectTimeout=1.0)

    @sio.on("connect")
    def connect(sid: str, auth: Any) -> None:
        sio.emit("auth", auth, to=sid)

    @sio.on("message")
    def message(sid: str, *args: Any) -> None:
        sio.emit("message-back", *args, to=sid)

    @sio.on("message-with-ack")
    def messageWithAck(sid: str, *args: Any) -> tuple[Any, ...]:
        return args

    @sio.on("connect", namespace="/custom")
    def connectCustom(sid: str, auth: Any) -> None:
        sio.emit("auth", auth, to=sid, namespace="/custom")

    root = Resource()
    root.putChild(b"engine.io", EngineIOResource(engine, clock))
    root.putChild(b"socket.io", sio.resource())
    return root, config, [engine, sio]


def main(argv: list[str]) -> None:
    """
    Serve on the port given (default 3000) until interrupted.
    """
    allowEIO3 = "--allow-eio3" in argv
    args = [a for a in argv if not a.startswith("--")]
    port = int(args[0]) if args else 3000
    root, config, servers = build(reactor, allowEIO3)
    for server in servers:
        server.start()
    reactor.listenTCP(port, EngineIOSite(root, config))  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(sys.argv[1:])
