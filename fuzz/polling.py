"""
Fuzz target: the long-polling endpoint (L{crm_im.engineio.resource},
L{crm_im.engineio.polling}, the session behind them and the Socket.IO
server on it), driven with raw HTTP/1.1 requests through
L{EngineIOSite} on in-memory transports and a L{MemoryReactorClock}.

Each input is a short conversation: a real handshake, then requests whose
method, query (protocol, transport, this session's sid or another),
headers and body come from the input, with the clock moved between them
(heartbeats, timeouts). Bugs: an exception logged by twisted.web or the
engine (what a 500 would hide), a 5xx answer, a request left unanswered
that is not a held poll, or a session the engine forgets to close.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.resource import Resource

from crm_im._json import loads
from crm_im.engineio.config import EngineIOConfig
from crm_im.engineio.site import EngineIOSite
from crm_im.socketio.server import SocketIOServer

from . import Input

CONFIG = EngineIOConfig(maxPayload=2000, pingInterval=25000, pingTimeout=20000)
METHODS = (b"GET", b"POST", b"OPTIONS", b"HEAD", b"PUT", b"GET", b"POST")
VERSIONS = (b"4", b"3", b"5", b"", b"04")
TRANSPORTS = (b"polling", b"websocket", b"", b"flashsocket")
ORIGINS = (None, b"http://example.com", b"null", b"\x00", b"http://a b")
BODIES = (
    b"40", b"40{\"token\":1}", b"42[\"echo\",1]", b"421[\"echo\",{\"a\":[1,2]}]", b"2", b"3", b"1", b"6",
    b"5", b"451-[\"echo\",{\"_placeholder\":true,\"num\":0}]\x1ebAQID", b"41", b"4", b"",
    b"2probe", b"3probe", b"bAA==", b"b!!", b"\x1e\x1e",
)
DELAYS = (0.0, 0.0, 0.001, 1.0, 25.0, 45.0, 46.0)

_failures: list[Any] = []


def _observe(event: dict[str, Any]) -> None:
    level = event.get("log_level")
    if event.get("log_failure") is not None or (level is not None and level >= LogLevel.error):
        _failures.append(event)


def setUp() -> None:
    """
    Watch the log for failures (called once by C{python -m fuzz}).
    """
    globalLogPublisher.addObserver(cast(ILogObserver, _observe))


class Server:
    """
    A Socket.IO server with an echo handler behind an L{EngineIOSite}.
    """

    def __init__(self) -> None:
        self.reactor = MemoryReactorClock()
        self.sio = SocketIOServer(self.reactor, CONFIG, connectTimeout=10)
        self.sio.on("echo", lambda sid, *args: args)
        self.sio.start()
        root = Resource()
        root.putChild(b"socket.io", self.sio.resource())
        self.site = EngineIOSite(root, CONFIG, reactor=self.reactor)
        self.open: list[tuple[StringTransport, Any]] = []

    def request(self, raw: bytes) -> tuple[StringTransport, Any]:
        peer = IPv4Address("TCP", "127.0.0.1", 40000)
        protocol = self.site.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer)
        protocol.makeConnection(transport)
        protocol.dataReceived(raw)
        self.open.append((transport, protocol))
        self.closeFinished()
        return transport, protocol

    def closeFinished(self, everything: bool = False) -> None:
        """
        Deliver C{connectionLost} to the connections the server closed (a
        L{StringTransport} only records the wish), or to all of them.
        """
        for entry in list(self.open):
            transport, protocol = entry
            if everything or transport.disconnecting:
                self.open.remove(entry)
                protocol.connectionLost(Failure(ConnectionDone()))


def _status(response: bytes) -> int | None:
    if not response.startswith(b"HTTP/1.1 "):
        return None
    return int(response[9:12])


def _build(source: Input, sid: bytes) -> bytes:
    method = source.choice(METHODS)
    transport = source.choice(TRANSPORTS)
    upgrade = source.byte() & 7 == 0
    if upgrade and transport == b"websocket":
        # A WebSocket handshake that passes the checks goes to Autobahn,
        # which needs a real transport: not this target's business.
        transport = b"polling"
    query = [b"EIO=" + source.choice(VERSIONS), b"transport=" + transport]  # type: ignore[operator]
    which = source.byte() % 4
    if which == 0:
        query.append(b"sid=" + sid)
    elif which == 1:
        query.append(b"sid=" + source.blob(24).replace(b" ", b"%20").replace(b"\r", b"").replace(b"\n", b""))
    if source.byte() & 1:
        query.append(b"t=" + bytes(c for c in source.blob(16) if 0x21 <= c < 0x7F))
    if source.byte() & 3 == 0:
        query.reverse()
    headers = [b"Host: example.com"]
    origin = source.choice(ORIGINS)
    if origin is not None:
        headers.append(b"Origin: " + origin)  # type: ignore[operator]
    if upgrade:
        headers += [b"Upgrade: websocket", b"Connection: Upgrade"]
    body = b""
    if method in (b"POST", b"PUT"):
        body = source.choice(BODIES) if source.byte() & 1 else source.blob(255) * (1 + source.byte() % 10)  # type: ignore[assignment]
    headers.append(b"Content-Length: %d" % len(body))
    return b"%s /socket.io/?%s HTTP/1.1\r\n%s\r\n\r\n%s" % (method, b"&".join(query), b"\r\n".join(headers), body)


_server: Server | None = None


def TestOneInput(data: bytes) -> None:
    del _failures[:]
    source = Input(data)
    global _server
    if _server is None:
        # One server for every input (building one costs as much as an
        # input): each input ends with every session forgotten.
        _server = Server()
    server = _server
    transport, _ = server.request(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n\r\n")
    response = transport.value()
    assert _status(response) == 200, response
    sid = loads(response.split(b"\r\n\r\n", 1)[1][1:])["sid"].encode()
    held = []
    for _ in range(1 + source.byte() % 6):
        if source.remaining() == 0:
            break
        raw = _build(source, sid)
        transport, _ = server.request(raw)
        response = transport.value()
        status = _status(response)
        if status is None:
            # Held GET (answered later), or a WebSocket handshake that the
            # in-memory transport cannot complete.
            held.append(transport)
        else:
            assert status < 500, (raw, response)
        server.reactor.advance(source.choice(DELAYS))  # type: ignore[arg-type]
        server.closeFinished()
    assert not _failures, _failures
    # Clients gone: heartbeats and close timeouts must forget every session.
    server.closeFinished(everything=True)
    for _ in range(4):
        server.reactor.advance(30)
    assert not server.sio.engine.sessions, list(server.sio.engine.sessions)
    for transport in held:
        status = _status(transport.value())
        assert status is None or status < 500, transport.value()
    assert not _failures, _failures
