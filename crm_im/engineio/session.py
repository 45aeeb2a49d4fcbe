# -*- test-case-name: tests.test_eio_session -*-
"""
The Engine.IO session state machine.

One L{EngineIOSession} per handshake: it owns the outgoing queue, the
heartbeat state, the transport in use (long-polling or WebSocket) and the
upgrade from one to the other. It knows nothing of HTTP or Autobahn: it
writes through L{IPollRequest} and L{IWebSocketChannel} providers, and its
timers are deadlines on the server's L{DeadlineHeap}, so every transition
can be driven in a unit test with a L{task.Clock}.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, Iterable

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from . import packet
from .interfaces import IPollRequest, IWebSocketChannel
from .packet import Frame

if TYPE_CHECKING:
    from .server import EngineIOServer

POLLING = "polling"
WEBSOCKET = "websocket"

#: Seconds between the NOOPs that end a held GET while an upgrade is
#: pending.
NOOP_INTERVAL = 0.1

OPEN = "open"
CLOSING = "closing"
CLOSED = "closed"

#: Characters of the sid that name a session in logs (L{EngineIOSession.publicId}).
PUBLIC_ID_LENGTH = 12

#: The longest C{User-Agent} a session keeps.
MAX_USER_AGENT = 256


class EngineIOSession:
    """
    One Engine.IO v4 session.

    @ivar sid: the session id, as given in the handshake. It is the
        session's only credential (a long-polling request with it reads
        and sends as its user): never logged or shown, see L{publicId}.
    @ivar transportName: C{"polling"} or C{"websocket"}.
    @ivar remoteAddress: the peer's address, for logs and per-IP limits.
    @ivar userAgent: the handshake's C{User-Agent} (at most
        L{MAX_USER_AGENT} characters, interned: clients share a few), for
        the admin API's device list.
    @ivar protocol: the Engine.IO protocol revision, C{4}, or C{3} for a
        legacy client (socket.io-client 2.x) served with C{allowEIO3}: its
        polling payloads are framed differently, and it sends the PINGs.
    @ivar state: C{"open"}, C{"closing"} (a polling session whose last
        packets wait for the next GET) or C{"closed"}.
    @ivar appState: a slot for the application (Socket.IO keeps its
        connection object here).
    """

    log = Logger()

    __slots__ = (
        "sid",
        "server",
        "transportName",
        "remoteAddress",
        "userAgent",
        "protocol",
        "state",
        "appState",
        "_queue",
        "_queuedBytes",
        "_poll",
        "_channel",
        "_upgrading",
        "_paused",
        "_awaitingPong",
        "_flushScheduled",
        "_writers",
        "__weakref__",
    )

    def __init__(
        self,
        server: "EngineIOServer",
        sid: str,
        transportName: str,
        remoteAddress: str = "",
        protocol: int = 4,
        userAgent: str = "",
    ) -> None:
        self.server = server
        self.userAgent = sys.intern(userAgent[:MAX_USER_AGENT])
        self.protocol = protocol
        self.sid = sid
        self.transportName = transportName
        self.remoteAddress = remoteAddress
        self.state = OPEN
        self.appState: Any = None
        # A list, not a deque: an empty deque costs 600 bytes per idle
        # session, and the queue is only ever drained whole or from the front
        # in one pass.
        self._queue: list[Frame] = []
        self._queuedBytes = 0
        self._poll: IPollRequest | None = None
        self._channel: IWebSocketChannel | None = None
        self._upgrading: IWebSocketChannel | None = None
        self._paused = False
        self._awaitingPong = False
        self._flushScheduled = False
        self._writers: list[Deferred[bool]] | None = None

    def __repr__(self) -> str:
        return f"<EngineIOSession {self.publicId} {self.transportName} {self.state}>"

    @property
    def publicId(self) -> str:
        """
        The name of this session in logs and the Admin UI (its
        C{clientId}): the first L{PUBLIC_ID_LENGTH} characters of the sid.
        The rest of the sid (48 random bits) stays secret, so whoever reads
        the logs cannot poll or post as the session's user.
        """
        return self.sid[:PUBLIC_ID_LENGTH]

    @property
    def upgrading(self) -> bool:
        """
        Whether a WebSocket is probing to take over this polling session.
        """
        return self._upgrading is not None

    @property
    def queuedBytes(self) -> int:
        """
        The bytes queued and not yet taken by a transport.
        """
        return self._queuedBytes

    @property
    def queuedPackets(self) -> int:
        """
        The packets queued and not yet taken by a transport.
        """
        return len(self._queue)

    # ---- sending

    def whenWritable(self) -> Deferred[bool]:
        """
        Pace a long run of packets (an offline queue, a replay) on the
        client's reading: their sender writes while this fires at once and
        waits when it does not. Writing them all in one go would pass the
        queue's bounds and close the session (see L{_enqueue}) as soon as
        the client reads slower than the server reads the store.

        @return: a L{Deferred} that fires with C{True} when the packets
            queued and not yet taken by a transport are back to a quarter
            of the session's bounds (at once if they are), or with C{False}
            when the session closes first.
        """
        if self.state is not OPEN:
            return succeed(False)
        if self._roomy():
            return succeed(True)
        writers = self._writers
        if writers is None:
            writers = self._writers = []
        d: Deferred[bool] = Deferred()
        writers.append(d)
        return d

    def _roomy(self) -> bool:
        config = self.server.config
        return (
            self._queuedBytes <= config.maxBufferedBytes // 4
            and len(self._queue) <= config.maxBufferedPackets // 4
        )

    def _wakeWriters(self) -> None:
        """
        Fire the L{whenWritable} waiters if the queue has room again or the
        session closed; called once a transport took packets, or at a close,
        after the session's own state is settled.
        """
        writers = self._writers
        if writers is None:
            return
        isOpen = self.state is OPEN
        if isOpen and not self._roomy():
            return
        self._writers = None
        for d in writers:
            d.callback(isOpen)

    def send(self, data: Frame | str | bytes) -> None:
        """
        Send one MESSAGE: C{str} as a text message, C{bytes} as a binary
        one, a L{Frame} (any packet, already encoded) as it is. A closed
        session drops it; a session whose queue would pass its bounds is
        closed instead of growing.
        """
        if isinstance(data, Frame):
            self.sendFrame(data)
        elif isinstance(data, str):
            self.sendFrame(packet.messageFrame(data.encode("utf-8")))
        else:
            self.sendFrame(packet.binaryFrame(data))

    def sendFrame(self, frame: Frame) -> None:
        """
        Send one encoded packet (the fast path of L{send}).
        """
        if self.state is not OPEN:
            return
        channel = self._channel
        if channel is not None and not self._paused and not self._queue:
            channel.writeFrame(frame)
            return
        if type(frame) is packet.FrameBatch:
            for part in frame.parts:
                self._enqueue(part)
                if self.state is not OPEN:
                    return
            return
        self._enqueue(frame)

    def sendMany(self, frames: Iterable[Frame]) -> None:
        """
        Send several packets in order.
        """
        for frame in frames:
            self.sendFrame(frame)

    def flushTransport(self) -> None:
        """
        Hand what was written to the WebSocket this turn to the network
        now rather than at the end of the turn (long-polling answers the
        held GET on the next turn anyway).
        """
        channel = self._channel
        if channel is not None:
            channel.flushWrites()

    def _enqueue(self, frame: Frame) -> None:
        config = self.server.config
        self._queue.append(frame)
        self._queuedBytes += len(frame.data)
        if (
            self._queuedBytes > config.maxBufferedBytes
            or len(self._queue) > config.maxBufferedPackets
        ):
            self.server.bufferOverflow(self)
            self.close("transport error", flush=False)
            return
        if self._poll is not None and not self._flushScheduled and self._upgrading is None:
            # Batch everything sent in this reactor turn into one response.
            self._flushScheduled = True
            self.server.clock.callLater(0, self._flushPoll)

    def _encodePayload(self, frames: list[Frame]) -> bytes:
        if self.protocol == 3:
            return packet.encodePayloadV3(frames)
        return packet.encodePayload(frames)

    def _takeQueue(self) -> list[Frame]:
        frames = self._queue
        self._queue = []
        self._queuedBytes = 0
        return frames

    def _flushPoll(self) -> None:
        self._flushScheduled = False
        poll = self._poll
        if poll is None or not self._queue:
            return
        self._poll = None
        poll.respond(self._encodePayload(self._takeQueue()))
        self._wakeWriters()

    def _flushChannel(self) -> None:
        channel = self._channel
        if channel is None:
            return
        queue = self._queue
        sent = 0
        # writeFrame may pause us (the transport's buffer filled): stop there.
        while sent < len(queue) and not self._paused:
            frame = queue[sent]
            sent += 1
            self._queuedBytes -= len(frame.data)
            channel.writeFrame(frame)
        del queue[:sent]

    # ---- long-polling

    def pollArrived(self, poll: IPollRequest) -> bool:
        """
        A GET arrived for this polling session.

        @return: C{False} if another GET is already pending (the caller
            answers this one with 400 and the session is closed), else
            C{True}: C{poll} is answered now or later.
        """
        if self._poll is not None:
            self.close("transport error")
            return False
        if self.state is CLOSING:
            self._poll = None
            if self._queue:
                poll.respond(self._encodePayload(self._takeQueue()))
                return True
            poll.respond(self._encodePayload([packet.CLOSE_FRAME]))
            self._finishClosing()
            return True
        if self._queue and self._upgrading is None:
            poll.respond(self._encodePayload(self._takeQueue()))
            self._wakeWriters()
        else:
            self._poll = poll
        return True

    def pollGone(self, poll: IPollRequest) -> None:
        """
        A held GET was aborted by the client or the network.
        """
        if self._poll is poll:
            self._poll = None

    def payloadReceived(self, body: bytes) -> bool:
        """
        A POST body arrived.

        @return: C{False} if it was malformed (the session is closed with
            C{"parse error"}).
        """
        try:
            if self.protocol == 3:
                packets = packet.decodePayloadV3(body)
            else:
                packets = packet.decodePayload(body)
        except packet.PacketError:
            self.close("parse error")
            return False
        for packetType, data, binary in packets:
            if self.state is not OPEN:
                break
            self.packetReceived(packetType, data, binary)
        return True

    # ---- WebSocket

    def attachWebSocket(self, channel: IWebSocketChannel) -> None:
        """
        Use C{channel} as this session's transport from its handshake on
        (a session opened directly over WebSocket).
        """
        self._channel = channel
        self.transportName = WEBSOCKET

    def startUpgrade(self, channel: IWebSocketChannel) -> bool:
        """
        A WebSocket arrived with this polling session's sid.

        @return: C{False} if the session cannot be upgraded (not open, not
            on polling, or already being upgraded).
        """
        if self.state is not OPEN or self._channel is not None or self._upgrading is not None:
            return False
        self._upgrading = channel
        self.server.wheel.set(("upgrade", self), self.server.config.upgradeTimeout / 1000)
        return True

    def upgradePacketReceived(self, channel: IWebSocketChannel, packetType: int, data: bytes) -> None:
        """
        A packet arrived on the WebSocket that is probing this session.
        """
        if channel is not self._upgrading:
            channel.closeChannel()
            return
        if packetType == packet.PING and data == b"probe":
            channel.writeFrame(packet.PONG_PROBE_FRAME)
            # Let the client's pending poll return so it can pause polling;
            # a GET that comes meanwhile gets a NOOP too, at the next of
            # these checks (every 100 ms while upgrading, as the official
            # server does).
            self._answerPollWithNoop()
            self.server.wheel.set(("noop", self), NOOP_INTERVAL)
        elif packetType == packet.UPGRADE:
            self.server.wheel.cancel(("upgrade", self))
            self.server.wheel.cancel(("noop", self))
            self._upgrading = None
            poll, self._poll = self._poll, None
            if poll is not None:
                poll.respond(self._encodePayload([packet.NOOP_FRAME]))
            self._channel = channel
            self.transportName = WEBSOCKET
            self._flushChannel()
            self.server.sessionUpgraded(self)
            self._wakeWriters()
        else:
            self.abortUpgrade(channel)

    def _answerPollWithNoop(self) -> None:
        poll, self._poll = self._poll, None
        if poll is not None:
            poll.respond(self._encodePayload([packet.NOOP_FRAME]))

    def upgradeNoopDue(self) -> None:
        """
        While a probed upgrade is pending, answer a held GET with NOOP so
        that the client can pause polling and finish the upgrade.
        """
        if self._upgrading is not None and self.state is OPEN:
            self._answerPollWithNoop()
            self.server.wheel.set(("noop", self), NOOP_INTERVAL)

    def abortUpgrade(self, channel: IWebSocketChannel) -> None:
        """
        The probing WebSocket failed or closed: stay on polling.
        """
        if channel is self._upgrading:
            self._upgrading = None
            self.server.wheel.cancel(("upgrade", self))
            self.server.wheel.cancel(("noop", self))
            channel.closeChannel()
            if self._queue and self._poll is not None:
                self._flushPoll()

    def upgradeExpired(self) -> None:
        """
        The upgrade did not complete within upgradeTimeout.
        """
        if self._upgrading is not None:
            self.abortUpgrade(self._upgrading)

    def channelClosed(self, channel: IWebSocketChannel) -> None:
        """
        A WebSocket of this session closed.
        """
        if channel is self._upgrading:
            self.abortUpgrade(channel)
        elif channel is self._channel:
            self._channel = None
            self.close("transport close", flush=False)

    def pauseWriting(self) -> None:
        """
        The WebSocket's transport buffer is full: queue (bounded) instead.
        """
        self._paused = True

    def resumeWriting(self) -> None:
        """
        The WebSocket's transport buffer drained: write what was queued.
        """
        self._paused = False
        self._flushChannel()
        self._wakeWriters()

    def pauseReading(self) -> None:
        """
        Stop reading from the client for now (admission control; see
        L{crm_im.engineio.backpressure}). Long-polling POSTs are not paused.
        """
        if self._channel is not None:
            self._channel.pauseReading()

    def resumeReading(self) -> None:
        """
        Read from the client again.
        """
        if self._channel is not None:
            self._channel.resumeReading()

    # ---- incoming packets and heartbeat

    def packetReceived(self, packetType: int, data: bytes, binary: bool = False) -> None:
        """
        Handle one incoming packet of the session's transport; a closed
        session ignores it (a frame may already be in flight).
        """
        if self.state is not OPEN:
            return
        if packetType == packet.MESSAGE:
            self.server.app.messageReceived(self, data, binary)
        elif packetType == packet.PONG:
            if self._awaitingPong:
                self._awaitingPong = False
                self.server.wheel.set(self, self.server.config.pingInterval / 1000)
        elif packetType == packet.CLOSE:
            # A GET held meanwhile ends with a NOOP, as with the official
            # server (the client asked to close: no CLOSE back).
            self._answerPollWithNoop()
            self.close("transport close", flush=False)
        elif packetType == packet.PING and self.protocol == 3:
            # An Engine.IO v3 client pings; its silence for pingInterval +
            # pingTimeout closes the session.
            self.server.wheel.set(self, self.server.heartbeatTimeout(self))
            self.sendFrame(packet.textFrame(packet.PONG, data))
        elif packetType == packet.PING or packetType == packet.NOOP:
            # Engine.IO v4 clients do not ping; a stray ping or noop is harmless.
            pass
        else:
            # OPEN or UPGRADE on an established transport.
            self.close("parse error")

    def heartbeatDue(self) -> None:
        """
        The heartbeat deadline passed: send PING, or give up on a PONG that
        did not come.
        """
        if self.state is not OPEN:
            return
        if self._awaitingPong or self.protocol == 3:
            self.server.pingTimedOut(self)
            self.close("ping timeout", flush=False)
            return
        self._awaitingPong = True
        self.server.wheel.set(self, self.server.config.pingTimeout / 1000)
        self.sendFrame(packet.PING_FRAME)

    # ---- closing

    def close(self, reason: str = "forced close", flush: bool = True) -> None:
        """
        Close the session.

        @param reason: the reason given to the application.
        @param flush: deliver what is queued first (over polling, with the
            next GET if none is pending).
        """
        if self.state is not OPEN:
            return
        self.state = CLOSED
        wheel = self.server.wheel
        wheel.cancel(self)
        wheel.cancel(("upgrade", self))
        wheel.cancel(("noop", self))
        upgrading, self._upgrading = self._upgrading, None
        if upgrading is not None:
            upgrading.closeChannel()
        channel, self._channel = self._channel, None
        if channel is not None:
            if flush:
                self._paused = False
                for frame in self._takeQueue():
                    channel.writeFrame(frame)
            self._takeQueue()
            channel.closeChannel()
        elif flush and self._queue and self.transportName == POLLING:
            # The client collects the last packets (with the pending GET, if
            # any) and then the CLOSE with its next GET; the sid stays known
            # until then (bounded by closeTimeout). Never both in one
            # payload: socket.io-client handles the CLOSE before it emits
            # the events decoded with it, and so loses them.
            self.state = CLOSING
            wheel.set(("close", self), self.server.config.closeTimeout / 1000)
            if self._poll is not None:
                poll, self._poll = self._poll, None
                poll.respond(self._encodePayload(self._takeQueue()))
        elif self._poll is not None:
            poll, self._poll = self._poll, None
            self._takeQueue()
            poll.respond(self._encodePayload([packet.CLOSE_FRAME]))
        else:
            self._takeQueue()
        if self.state is CLOSED:
            self.server.sessionClosed(self)
        self.server.app.sessionClosed(self, reason)
        self._wakeWriters()

    def _finishClosing(self) -> None:
        self.state = CLOSED
        self.server.wheel.cancel(("close", self))
        self.server.sessionClosed(self)

    def closeExpired(self) -> None:
        """
        The client never came back for the last packets of a closed
        polling session.
        """
        if self.state is CLOSING:
            self._takeQueue()
            self._finishClosing()
