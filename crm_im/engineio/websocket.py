# -*- test-case-name: tests.test_eio_websocket -*-
"""
The WebSocket transport: thin glue between Autobahn's Twisted protocol and
L{EngineIOSession}.

Autobahn does the WebSocket framing, UTF-8 validation (accelerated by
wsaccel) and size limits; this module maps frames onto Engine.IO packets,
honours the transport's back-pressure (a push producer that pauses the
session's writes) and frames each outgoing packet once with
L{webSocketFrame} (cached on the frame), so a broadcast is framed once for
all recipients.
"""

from __future__ import annotations

import inspect
import struct
from collections import deque
from typing import Any

import txaio
from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import TrafficStats
from autobahn.websocket.types import ConnectionDeny
from wsaccel.utf8validator import Utf8Validator
from wsaccel.xormask import XorMaskerSimple
from twisted.internet.defer import succeed
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from zope.interface import implementer

from . import packet
from .interfaces import IWebSocketChannel
from .packet import Frame, FrameBatch
from .server import EngineIOError, EngineIOServer
from .session import EngineIOSession
from .turnwriter import TurnWriter


#: Attributes Autobahn keeps after the opening handshake and never reads
#: again.
_HANDSHAKE_LEFTOVERS = (
    "http_request_data",
    "http_response_data",
    "http_request_params",
    "http_headers",
    "http_status_line",
    "http_request_uri",
    "http_request_path",
    "http_request_host",
    "_wskey",
    "websocket_origin",
    "websocket_protocols",
    "websocket_extensions",
)

#: Per-connection state Autobahn initialises to the same value for every
#: connection; as class attributes they need no slot in each instance.
_SHARED_DEFAULTS: dict[str, object] = {
    name: False
    for name in (
        "triggered",
        "wasMaxFramePayloadSizeExceeded",
        "wasMaxMessagePayloadSizeExceeded",
        "closedByMe",
        "failedByMe",
        "droppedByMe",
        "wasClean",
        "wasServerConnectionDropTimeout",
        "wasOpenHandshakeTimeout",
        "wasCloseHandshakeTimeout",
        "wasServingFlashSocketPolicyFile",
        "inside_message",
    )
}
_SHARED_DEFAULTS.update(
    {
        name: None
        for name in (
            "_perMessageCompress",
            "trackedTimings",
            "wasNotCleanReason",
            "localCloseCode",
            "localCloseReason",
            "remoteCloseCode",
            "remoteCloseReason",
            "openHandshakeTimeoutCall",
            "closeHandshakeTimeoutCall",
            "autoPingTimeoutCall",
            "autoPingPending",
            "autoPingPendingCall",
            "autoPingPendingSent",
            "websocket_protocol_in_use",
            "current_frame",
            "_probing",
            "_transport_details",
        )
    }
)
_SHARED_DEFAULTS.update({"send_state": 0, "autoPingPendingSeq": 0, "data": b"", "websocket_version": 13})

_MISSING = object()


def preparedFrames(frame: Frame) -> bytes:
    """
    What L{EngineIOWebSocketProtocol.writeFrame} writes for C{frame}: its
    WebSocket frame, or for a L{FrameBatch} the frames of its packets
    joined (each packet its own WebSocket message, as if written apart).
    Each packet's frame is kept on it: a packet in several batches (the
    same announcements from different starts) is framed once.
    """
    if type(frame) is FrameBatch:
        return b"".join([preparedFrames(part) for part in frame.parts])
    data = frame.prepared
    if data is None:
        data = frame.prepared = webSocketFrame(frame.data, frame.binary)
    return data

#: The events Autobahn's protocol lets listeners register for.
_EVENTS = ("message",)

#: One UTF-8 validator for every connection of the fast path: it is reset
#: before each message and only used on the reactor thread.
_UTF8 = Utf8Validator()


def webSocketFrame(payload: bytes, binary: bool) -> bytes:
    """
    One unfragmented, unmasked (server to client), uncompressed WebSocket
    data frame (RFC 6455, section 5.2).

    What Autobahn's C{PreparedMessage} builds for this case, without the
    object and its per-call bookkeeping: it runs for every frame sent.
    """
    first = 0x82 if binary else 0x81
    length = len(payload)
    if length < 126:
        return bytes((first, length)) + payload
    if length < 0x10000:
        return struct.pack("!BBH", first, 126, length) + payload
    return struct.pack("!BBQ", first, 127, length) + payload


@implementer(IPushProducer)
class _SessionProducer:
    """
    Passes the TCP transport's back-pressure on to the session.
    """

    __slots__ = ("protocol",)

    def __init__(self, protocol: "EngineIOWebSocketProtocol") -> None:
        self.protocol = protocol

    def pauseProducing(self) -> None:
        session = self.protocol.session
        if session is not None:
            session.pauseWriting()

    def resumeProducing(self) -> None:
        session = self.protocol.session
        if session is not None:
            session.resumeWriting()

    def stopProducing(self) -> None:
        pass


@implementer(IWebSocketChannel)
class EngineIOWebSocketProtocol(WebSocketServerProtocol):
    """
    One WebSocket connection: either a whole session (opened directly over
    WebSocket) or the probe that upgrades a polling session.
    """

    name = "websocket"
    factory: "EngineIOWebSocketFactory"

    session: EngineIOSession | None = None
    _probing: EngineIOSession | None = None
    _maxPayload = 0
    #: 3 for an Engine.IO v3 client, whose binary messages carry their
    #: packet type in their first byte.
    _protocol = 4
    _userAgent = ""
    #: the factory's L{TurnWriter} (a class attribute of its subclass)
    _writer: TurnWriter

    def connectionMade(self) -> None:
        """
        Set up the fast path's per-connection state.
        """
        super().connectionMade()
        self._maxPayload = self.factory.engine.config.maxPayload

    def _compact(self) -> None:
        """
        Shrink this connection's footprint once it is open.

        Autobahn copies its ~40 options from the factory into every
        connection and keeps the handshake's request and headers for the
        connection's life: several KiB per idle client. The options live
        on a per-factory subclass (L{EngineIOWebSocketFactory}) and the
        shared defaults on this class, so the instance copies are dropped,
        the handshake leftovers too, and the instance dictionary rebuilt at
        its new size (CPython never shrinks a dict in place).
        """
        state = self.__dict__
        for name in _HANDSHAKE_LEFTOVERS:
            state.pop(name, None)
        # Autobahn objects this server never uses once the connection is
        # open (about 1.4 KiB): the queue of sync or chopped writes (an
        # empty deque is 760 bytes; sendData makes one if ever needed),
        # the traffic counters (nobody reads them: one object per factory
        # counts for all), WAMP's transport details (read before onOpen
        # only) and the table of event results (kept for listeners, of
        # which there are none; on() brings it back).
        if not state.get("send_queue", True):
            del state["send_queue"]
        state.pop("trafficStats", None)
        state.pop("_transport_details", None)
        if state.get("_valid_events") == list(_EVENTS) and "_listeners" not in state:
            del state["_valid_events"]
            state.pop("_results", None)
        # Assigned again, never changed, by a new handshake.
        if state.get("websocket_extensions_in_use") == []:
            del state["websocket_extensions_in_use"]
        cls = type(self)
        for name in list(state):
            if getattr(cls, name, _MISSING) is state[name]:
                del state[name]
        self.__dict__ = dict(state)

    def on(self, event: str, handler: Any) -> None:
        """
        Autobahn's, with the event table that L{_compact} dropped restored
        first.
        """
        if "_valid_events" not in self.__dict__:
            self.set_valid_events(list(_EVENTS))
        super().on(event, handler)

    def onConnect(self, request: Any) -> None:
        """
        Check the request again (the session may have changed since the
        HTTP layer looked) and remember which session it upgrades.
        """
        query = {key: values[0] for key, values in request.params.items() if values}
        origin = request.headers.get("origin")
        try:
            _, session = self.factory.engine.checkRequest(b"GET", query, True, origin)
        except EngineIOError as error:
            raise ConnectionDeny(error.status, error.message)
        if query.get("EIO") == "3":
            self._protocol = 3
        if session is None:
            # Kept for the session's device list (admin API); an upgrade
            # keeps the polling handshake's.
            self._userAgent = str(request.headers.get("user-agent", ""))[:256]
        self._probing = session

    def onOpen(self) -> None:
        """
        Start the session, or begin probing the polling session.
        """
        transport: Any = self.transport
        # The HTTP channel that accepted the request registered itself as
        # the transport's producer; the session takes its place.
        if getattr(transport, "producer", None) is not None:
            transport.unregisterProducer()
        transport.registerProducer(_SessionProducer(self), True)
        self._compact()
        engine = self.factory.engine
        if self._probing is not None:
            if not self._probing.startUpgrade(self):
                self._probing = None
                self.closeChannel()
            return
        peer = transport.getPeer()
        self.session = engine.handshake(
            "websocket", getattr(peer, "host", ""), channel=self, protocol=self._protocol, userAgent=self._userAgent
        )
        self.__dict__.pop("_userAgent", None)

    def dataReceived(self, data: bytes) -> None:
        """
        Take complete, small, unfragmented data frames off the wire here;
        hand everything else (handshake, control frames, fragments, large
        or partial frames) to Autobahn.

        Autobahn's general frame machine costs several Python calls, a
        masker object and a debug-log call per frame; a chat server's
        traffic is almost entirely single-frame messages of a few hundred
        bytes, and this path handles exactly those and nothing else, so
        every protocol decision (limits, closing, control frames) stays
        Autobahn's. Unmasking and UTF-8 validation are wsaccel's.
        """
        if (
            self.state != WebSocketServerProtocol.STATE_OPEN
            or self.data
            or self.current_frame is not None
            or self.inside_message
        ):
            self._dataReceived(data)
            return
        size = len(data)
        limit = self._maxPayload
        pos = 0
        while size - pos >= 6:
            first = data[pos]
            opcode = first & 0x0F
            second = data[pos + 1]
            # FIN set, no RSV bits, text or binary, masked.
            if first & 0xF0 != 0x80 or not 1 <= opcode <= 2 or not second & 0x80:
                break
            length = second & 0x7F
            start = pos + 2
            if length == 126:
                if size - pos < 8:
                    break
                length = (data[start] << 8) | data[start + 1]
                start += 2
            elif length == 127:
                break
            end = start + 4 + length
            if length > limit or end > size:
                break
            payload = XorMaskerSimple(data[start : start + 4]).process(data[start + 4 : end])
            if opcode == 1:
                validator = _UTF8
                validator.reset()
                valid, complete, _, _ = validator.validate(payload)
                if not (valid and complete):
                    # Let Autobahn fail the connection (1007) as it would.
                    break
            pos = end
            self.onMessage(payload, opcode == 2)
            if self.state != WebSocketServerProtocol.STATE_OPEN:
                # Closing: Autobahn takes the rest (it ignores data frames
                # then, but must stay aligned on frame boundaries).
                break
        if pos < size:
            self._dataReceived(data[pos:] if pos else data)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        """
        One WebSocket message is one Engine.IO packet.
        """
        session = self.session
        if session is not None:
            if isBinary:
                if self._protocol == 3:
                    if payload[:1] != b"\x04":
                        session.close("parse error")
                        return
                    payload = payload[1:]
                session.packetReceived(packet.MESSAGE, payload, True)
                return
            try:
                packetType, data = packet.decodeText(payload)
            except packet.PacketError:
                session.close("parse error")
                return
            session.packetReceived(packetType, data)
            return
        probing = self._probing
        if probing is None:
            return
        if isBinary:
            probing.abortUpgrade(self)
            return
        try:
            packetType, data = packet.decodeText(payload)
        except packet.PacketError:
            probing.abortUpgrade(self)
            return
        probing.upgradePacketReceived(self, packetType, data)
        if probing.transportName == "websocket" and not probing.upgrading:
            self.session = probing
            self._probing = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        Autobahn's, then the reference cycle it leaves dropped: it resolves
        C{is_closed} with the protocol itself, so the connection (its
        buffers, its transport) would wait for the cycle collector, which
        the server's tuning makes rare (C{bench/churn.py}). Nothing waits
        on C{is_closed} here.
        """
        try:
            super().connectionLost(reason)
        finally:
            closed = self.__dict__.get("is_closed")
            if closed is not None and closed.called:
                self.is_closed = succeed(None)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        """
        Tell the session its WebSocket is gone.
        """
        self._writer.discard(self.transport)
        # Autobahn leaves the close-handshake timer of a connection that
        # was lost before the peer answered our close pending (it keeps the
        # protocol alive for closeHandshakeTimeout seconds): cancel it.
        timer, self.closeHandshakeTimeoutCall = self.closeHandshakeTimeoutCall, None
        if timer is not None:
            timer.cancel()
        session, self.session = self.session, None
        if session is not None:
            session.channelClosed(self)
        probing, self._probing = self._probing, None
        if probing is not None:
            probing.channelClosed(self)

    # IWebSocketChannel

    def writeFrame(self, frame: Frame) -> None:
        """
        Write one packet as one WebSocket message.
        """
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            # What sendPreparedMessage does without compression, minus its
            # per-call debug formatting: the frame is already built
            # (preparedMessage, inlined: this runs for every frame sent).
            data = frame.prepared
            if self._protocol == 3 and frame.binary:
                # Not cached: the frame may go to v4 clients too.
                data = webSocketFrame(b"\x04" + frame.data, True)
            elif data is None:
                data = frame.prepared = preparedFrames(frame)
            if self.send_queue:
                self.sendData(data)
            else:
                self._writer.write(self.transport, data)

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        """
        Autobahn writes (handshake, control frames, close) go out after the
        frames this turn has gathered for the connection.
        """
        self._writer.flush(self.transport)
        if (sync or chopsize) and "send_queue" not in self.__dict__:
            # Dropped by _compact: Autobahn queues these writes.
            self.send_queue = deque()
        super().sendData(data, sync, chopsize)

    def flushWrites(self) -> None:
        """
        Send the frames gathered this turn for this connection now.
        """
        if self.transport is not None:
            self._writer.flush(self.transport)

    def pauseReading(self) -> None:
        """
        Stop reading from the TCP connection.
        """
        if self.transport is not None:
            self.transport.pauseProducing()  # type: ignore[attr-defined]

    def resumeReading(self) -> None:
        """
        Read from the TCP connection again.
        """
        if self.transport is not None and self.state != WebSocketServerProtocol.STATE_CLOSED:
            self.transport.resumeProducing()  # type: ignore[attr-defined]

    def closeChannel(self) -> None:
        """
        Close the connection with a normal closure.
        """
        if self.state == WebSocketServerProtocol.STATE_OPEN:
            self.sendClose(1000)
        elif self.state != WebSocketServerProtocol.STATE_CLOSED:
            self.dropConnection(abort=True)


for _name, _value in _SHARED_DEFAULTS.items():
    setattr(EngineIOWebSocketProtocol, _name, _value)
#: What an open connection reads in place of the objects _compact drops.
EngineIOWebSocketProtocol.send_queue = ()  # type: ignore[assignment]
EngineIOWebSocketProtocol._valid_events = _EVENTS  # type: ignore[assignment]
EngineIOWebSocketProtocol.websocket_extensions_in_use = ()  # type: ignore[assignment]
EngineIOWebSocketProtocol.trafficStats = TrafficStats()


def _asClassAttribute(value: object) -> object:
    """
    An option value as a class attribute that reads back as itself: a
    plain function would become a bound method (Autobahn calls its
    C{perMessageCompressionAccept} with the offers only).
    """
    if inspect.isfunction(value):
        return staticmethod(value)
    return value


class EngineIOWebSocketFactory(WebSocketServerFactory):
    """
    Builds L{EngineIOWebSocketProtocol}s for one L{EngineIOServer}, with
    Autobahn's unlimited defaults replaced by the server's bounds.
    """

    protocol = EngineIOWebSocketProtocol  # type: ignore[assignment]

    def __init__(self, engine: EngineIOServer, reactor: IReactorTime) -> None:
        # Autobahn's timers (open/close handshake timeouts) go through
        # txaio's loop: make it the injected reactor.
        txaio.use_twisted()
        txaio.config.loop = reactor  # type: ignore[attr-defined]
        # Autobahn logs every frame at debug level; twisted.logger builds an
        # event for each whatever the observer wants. Keep its loggers quiet.
        txaio.set_global_log_level("warn")  # type: ignore[attr-defined]
        super().__init__(reactor=reactor, server="crm_im")
        self.engine = engine
        self.writer = TurnWriter(reactor)
        maxPayload = engine.config.maxPayload
        self._setOptions(maxPayload)
        # The options as class attributes of a subclass of its own: every
        # connection of this factory shares them (see _compact).
        self.protocol = type(  # type: ignore[assignment]
            "EngineIOWebSocketProtocol",
            (EngineIOWebSocketProtocol,),
            {
                "_writer": self.writer,
                # Each connection's own factory and maxPayload (set by
                # buildProtocol and connectionMade) are these objects.
                "factory": self,
                "_maxPayload": maxPayload,
                "trafficStats": TrafficStats(),
                # Autobahn's _connectionMade copies each option missing on
                # the connection from the factory and pretty-prints the
                # list of all ~40 (pformat, for a debug line that is never
                # shown): ~440 µs of every connection's ~920 (measured on a
                # memory transport). Here each is a class attribute
                # already, so there is nothing to copy and nothing to list.
                "CONFIG_ATTRS": (),
                **{
                    name: _asClassAttribute(getattr(self, name))
                    for name in EngineIOWebSocketProtocol.CONFIG_ATTRS
                    if hasattr(self, name)
                },
            },
        )

    def _setOptions(self, maxPayload: int) -> None:
        self.setProtocolOptions(
            maxFramePayloadSize=maxPayload,
            maxMessagePayloadSize=maxPayload,
            openHandshakeTimeout=10,
            closeHandshakeTimeout=5,
            autoPingInterval=0,
            failByDrop=True,
            webStatus=False,
            perMessageCompressionAccept=lambda offers: None,
        )


class EngineIOWebSocketResource(WebSocketResource):
    """
    Autobahn's resource, plus the fix for a known trap: the HTTP channel's
    idle timeout must not kill the connection once it is a WebSocket.
    """

    def render(self, request: IRequest) -> Any:
        channel = request.channel  # type: ignore[attr-defined]
        result = super().render(request)
        if channel.transport is None:
            # Taken over: the HTTP channel no longer owns the connection.
            channel.setTimeout(None)
            # Nor the request, which it would keep (and which keeps it) in
            # a reference cycle, never finished: garbage only the cycle
            # collector frees, rarely with the server's tuning.
            if request in channel.requests:
                channel.requests.remove(request)
        return result
