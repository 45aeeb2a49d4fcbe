# -*- test-case-name: tests.test_cluster -*-
"""
A WebSocket upgrade for another node's Engine.IO session, spliced through
to the node that owns it.

Why a splice and not a forward like the long-polling requests'
(L{crm_im.cluster.forward}): a WebSocket is not a request with an answer
but the rest of the TCP connection, and its handshake
(C{Sec-WebSocket-Key} -> C{Sec-WebSocket-Accept}), its frames and the
Engine.IO upgrade (C{2probe}, C{5}) all belong to the owner, where the
session lives. So this node parses none of it: it connects to the owner's
internal address, takes the client's connection from twisted.web the way
Autobahn's C{WebSocketResource.render} does, replays the request head
(plus C{X-CRM-IM-Forwarded}, so the owner never forwards it again) and
from then on copies bytes both ways. Each end is registered as the other's
producer, as in L{twisted.protocols.portforward}: when one side's write
buffer fills, reading from the other side stops, so what this node holds
per spliced connection is bounded by the two transports' write buffers.

The owner is connected to first and the client's connection taken over
only then: an owner that cannot be reached (refused, or no answer within
L{CONNECT_TIMEOUT}) gets the client the same 502 "Session ID unknown" as a
failed polling forward, and its Engine.IO client gives up the upgrade and
stays on long-polling. Once spliced, either end closing closes the other.
"""

from __future__ import annotations

from typing import Any, Callable
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

#: Seconds to wait for the owner's TCP connection before answering 502.
CONNECT_TIMEOUT = 5.0

#: Request headers not replayed as received: the body (if any) is replayed
#: already decoded, with a C{Content-Length} of its own.
_BODY_HEADERS = {b"content-length", b"transfer-encoding"}


def isWebSocketUpgrade(request: IRequest) -> bool:
    """
    Whether C{request} asks for a WebSocket (C{GET} with C{Upgrade: websocket}).
    """
    upgrade = request.getHeader(b"upgrade")
    return request.method == b"GET" and upgrade is not None and upgrade.strip().lower() == b"websocket"


def requestHead(request: Any, forwarded: bytes, body: bytes = b"") -> bytes:
    """
    The request head to replay to the owner: the method, the original
    URI, every header the client sent (one line per value) and the
    forwarding mark C{forwarded: 1}.

    @param body: the body that follows (a C{Content-Length} is set for it
        if it is not empty).
    """
    lines = [request.method + b" " + request.uri + b" HTTP/1.1"]
    for name, values in request.requestHeaders.getAllRawHeaders():
        if name.lower() in _BODY_HEADERS:
            continue
        lines.extend(name + b": " + value for value in values)
    if body:
        lines.append(b"Content-Length: %d" % (len(body),))
    lines.append(forwarded + b": 1")
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _hostAndPort(address: str) -> tuple[str, int]:
    parts = urlsplit(address)
    if parts.hostname is None:
        raise ValueError(f"no host in {address!r}")
    return parts.hostname, parts.port or 80


def _readingSide(transport: Any) -> Any:
    """
    The push producer that stops reading from C{transport}: itself, or
    under TLS (a L{ProtocolWrapper}, not a producer) the connection it
    wraps.
    """
    while not IPushProducer.providedBy(transport) and getattr(transport, "transport", None) is not None:
        transport = transport.transport
    return transport


class SpliceEnd(Protocol):
    """
    One end of a splice: what it receives is written to the other end,
    and its connection lost closes the other.

    @ivar peer: the other end, once spliced.
    @ivar lost: whether this end's connection is gone.
    """

    peer: SpliceEnd | None = None
    lost = False

    def __init__(self, onLost: Callable[[], None] = lambda: None) -> None:
        """
        @param onLost: called when this end's connection is gone.
        """
        self.onLost = onLost

    def dataReceived(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and not peer.lost:
            peer.transport.write(data)  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.lost = True
        peer = self.peer
        if peer is not None and not peer.lost:
            transport: Any = peer.transport
            # This end was the peer's producer, and a TLS transport does not
            # close while a producer is registered.
            transport.unregisterProducer()
            transport.loseConnection()
        self.onLost()


class UpgradeSplice:
    """
    One WebSocket upgrade on its way to the owner of its session, then
    spliced to it.

    @ivar client: the client's end, once taken over.
    @ivar owner: the owner's end.
    """

    log = Logger()

    def __init__(
        self,
        request: Any,
        forwarded: bytes,
        refuse: Callable[[Failure, Any], None],
        ended: Callable[[UpgradeSplice], None] = lambda splice: None,
    ) -> None:
        """
        @param forwarded: the name of the header marking a forwarded request.
        @param refuse: answers the client (C{refuse(failure, request)}) when
            the owner cannot be reached.
        @param ended: called once when the splice is over (both ends
            closed, or the owner never reached).
        """
        self.request = request
        self.forwarded = forwarded
        self.refuse = refuse
        self.ended = ended
        self.owner = SpliceEnd(self._endLost)
        self.client: SpliceEnd | None = None
        self._connecting: Deferred[Any] | None = None
        self._over = False

    def connect(self, reactor: Any, address: str, timeout: float = CONNECT_TIMEOUT) -> Deferred[None]:
        """
        Connect to the owner at C{address} (C{http://host:port}) and splice
        the client's connection to it; if the owner cannot be reached,
        C{refuse} answers the client. A client gone while connecting
        cancels the attempt.
        """
        d: Deferred[Any]
        try:
            host, port = _hostAndPort(address)
        except ValueError:
            d = fail()
        else:
            d = self._connecting = connectProtocol(TCP4ClientEndpoint(reactor, host, port, timeout=timeout), self.owner)
            self.request.notifyFinish().addErrback(lambda _: d.cancel())
        return d.addCallback(lambda _: self._splice()).addErrback(self._failed)

    def close(self) -> None:
        """
        Drop both connections now (this node is stopping), or give up
        connecting.
        """
        if self._connecting is not None:
            self._connecting.cancel()
        for end in (self.client, self.owner):
            if end is not None and end.transport is not None and not end.lost:
                end.transport.abortConnection()  # type: ignore[attr-defined]

    def _failed(self, failure: Failure) -> None:
        if self.client is None:
            self.refuse(failure, self.request)
            self._end()
            return
        # Taken over: twisted.web can no longer answer; close both ends.
        self.log.failure("splicing a WebSocket upgrade", failure)
        for end in (self.client, self.owner):
            transport: Any = end.transport
            if transport is not None and not end.lost:
                transport.unregisterProducer()
                transport.loseConnection()

    def _endLost(self) -> None:
        if self.owner.lost and (self.client is None or self.client.lost):
            self._end()

    def _end(self) -> None:
        if not self._over:
            self._over = True
            self.ended(self)

    def _splice(self) -> None:
        self._connecting = None
        request = self.request
        channel = request.channel
        transport = channel.transport
        owner: Any = self.owner.transport
        if transport is None or getattr(request, "_disconnected", False):
            owner.loseConnection()
            return
        # Take the connection over from twisted.web (as Autobahn does): the
        # HTTP channel no longer owns it, times it out or reads from it.
        channel.transport = None
        channel.setTimeout(None)
        transport.unregisterProducer()
        client = self.client = SpliceEnd(self._endLost)
        if isinstance(transport, ProtocolWrapper):
            transport.wrappedProtocol = client
        elif isinstance(getattr(transport, "protocol", None), ProtocolWrapper):
            transport.protocol.wrappedProtocol = client
        else:
            transport.protocol = client
        client.makeConnection(transport)
        # The request's body (none, for an upgrade, in practice) and what
        # the client sent after it, kept by the channel for the next request.
        body = b""
        if request.content is not None:
            request.content.seek(0)
            body = request.content.read()
        early = b"".join(getattr(channel, "_dataBuffer", []))
        owner.write(requestHead(request, self.forwarded, body) + body + early)
        client.peer, self.owner.peer = self.owner, client
        # The channel may have paused reading while the request was served;
        # from now on only the owner's write buffer pauses it.
        _readingSide(transport).resumeProducing()
        transport.registerProducer(_readingSide(owner), True)
        owner.registerProducer(_readingSide(transport), True)

