# -*- test-case-name: tests.test_eio_resource -*-
"""
The Engine.IO endpoint as one twisted.web resource.

L{EngineIOResource} checks every request (protocol version, transport,
sid, method, origin) and dispatches it: a WebSocket upgrade goes to
Autobahn, a GET or POST to the long-polling transport. It can be mounted at
any path (C{/socket.io/} for Socket.IO, C{/engine.io/} for a raw Engine.IO
application). L{BoundedRequest} refuses oversize bodies before they are
buffered, which a plain twisted.web Site would not do.
"""

from __future__ import annotations

from typing import Callable, Optional

from twisted.internet.interfaces import IReactorTime
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import Request

from ..http.cors import CORSPolicy
from ..http.query import QueryError, parseQuery
from .polling import refuse, renderPoll, renderPost
from .server import BAD_REQUEST, EngineIOError, EngineIOServer
from .websocket import EngineIOWebSocketFactory, EngineIOWebSocketResource

#: Engine.IO's "payload too large" answer.
PAYLOAD_TOO_LARGE = EngineIOError(3, "Payload too large", status=413)


class EngineIOResource(Resource):
    """
    The Engine.IO endpoint (both transports) of one L{EngineIOServer}.
    """

    isLeaf = True

    def __init__(
        self,
        engine: EngineIOServer,
        reactor: IReactorTime,
        cors: CORSPolicy | None = None,
    ) -> None:
        super().__init__()
        self.engine = engine
        self.cors = cors if cors is not None else CORSPolicy(engine.config.corsOrigins)
        self.webSocketFactory = EngineIOWebSocketFactory(engine, reactor)
        self._webSocket = EngineIOWebSocketResource(self.webSocketFactory)

    def render(self, request: IRequest) -> bytes | int:
        """
        Check and dispatch one Engine.IO request.
        """
        method = request.method
        if method == b"OPTIONS":
            return self.cors.preflight(request)
        self.cors.apply(request)
        upgrade = request.getHeader(b"upgrade")
        isWebSocket = upgrade is not None and upgrade.lower() == b"websocket"
        origin = request.getHeader(b"origin")
        try:
            try:
                query = parseQuery(request.uri)
            except QueryError:
                raise BAD_REQUEST.fresh()
            transport, session = self.engine.checkRequest(
                method,
                query,
                isWebSocket,
                origin.decode("latin-1") if origin is not None else None,
                getattr(request.getClientAddress(), "host", ""),
            )
        except EngineIOError as error:
            return refuse(request, error)
        if transport == "websocket":
            result: bytes | int = self._webSocket.render(request)
            return result
        if session is None:
            peer = request.getClientAddress()
            session = self.engine.handshake(
                "polling",
                getattr(peer, "host", ""),
                protocol=3 if query.get("EIO") == "3" else 4,
                userAgent=(request.getHeader(b"user-agent") or b"")[:256].decode("utf-8", "replace"),
            )
            return renderPoll(session, request)
        if method == b"GET":
            return renderPoll(session, request)
        if method == b"POST":
            assert request.content is not None
            body = request.content.read()
            if len(body) > self.engine.config.maxPayload:
                session.close("transport error")
                return refuse(request, PAYLOAD_TOO_LARGE)
            return renderPost(session, request, body)
        return refuse(request, BAD_REQUEST)


class BoundedRequest(Request):
    """
    A request that refuses a body larger than C{maxBody} as soon as its
    length is known (or as soon as a chunked body passes it), answering 413
    and closing the connection, instead of buffering it.
    """

    #: Set by the site factory: the largest request body accepted.
    maxBody = 1_000_000 + 4096

    #: Set by the site factory: the JSON body of the 413 for a request
    #: target (other APIs on the site refuse in their own shape), or
    #: L{None} for Engine.IO's.
    tooLarge: Optional[Callable[[bytes], Optional[bytes]]] = None

    _received = 0
    _refused = False

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.maxBody:
            self._refuse()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > self.maxBody:
            self._refuse()
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            return
        super().requestReceived(command, path, version)

    def _refuse(self) -> None:
        self._refused = True
        # The request line is parsed by the channel but only given to the
        # request once the body is complete: read it from there.
        tooLarge = type(self).tooLarge
        body = tooLarge(getattr(self.channel, "_path", b"")) if tooLarge is not None else None
        if body is None:
            body = PAYLOAD_TOO_LARGE.body()
        transport = self.channel.transport
        if transport is not None:
            transport.write(
                b"HTTP/1.1 413 Payload Too Large\r\n"
                b"Content-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
            )
            transport.loseConnection()
