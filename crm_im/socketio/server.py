# -*- test-case-name: tests.test_sio_server -*-
"""
The Socket.IO v5 server: namespaces, sockets, rooms, acknowledgements and
the handler API, on top of L{EngineIOServer}.

The API follows python-socketio's::

    sio = SocketIOServer(reactor)

    @sio.on("connect")
    def connect(sid, auth):          # return False or raise ConnectionRefused to refuse
        ...

    @sio.on("echo")
    def echo(sid, *args):            # the return value is the ack
        return args

    sio.emit("news", {"a": 1}, to=room_or_sid)
    sio.enterRoom(sid, "room")

Handlers may be plain functions, return Deferreds, or be coroutines.
A broadcast is encoded once and the same frames are written to every
recipient.
"""

from __future__ import annotations

import inspect
import secrets
from typing import Any, Callable, Iterable, Sequence

import attrs

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.resource import IResource
from zope.interface import implementer

from ..engineio.config import EngineIOConfig
from ..engineio.interfaces import IEngineIOApplication
from ..engineio.packet import Frame
from ..engineio.server import EngineIOServer
from ..engineio.session import EngineIOSession
from ..safelog import Logger
from ..timers import DeadlineHeap
from . import packet as sio
from .packet import Decoder, DecodeError, SocketIOPacket
from .recovery import RECOVERABLE_REASONS, IConnectionRecovery, RecoveryLog, Restored

Handler = Callable[..., Any]

#: Seconds between a CONNECT answer and what its connect handler emitted:
#: long enough that a client reads them as separate messages.
HELD_RELEASE_DELAY = 0.001

_CONNECT_REFUSED = {"message": "Connection rejected by server"}
_INVALID_NAMESPACE = {"message": "Invalid namespace"}


@attrs.frozen
class SocketIOConfig:
    """
    Socket.IO server settings; times in milliseconds, like
    L{EngineIOConfig}.

    @ivar connectTimeout: how long a new session may take to connect to a
        namespace before it is closed.
    @ivar maxAttachments: the most binary attachments one packet may have.
    @ivar recoveryWindow: connection state recovery (Socket.IO 4.6+
        clients), like the official server's C{connectionStateRecovery}
        with this C{maxDisconnectionDuration}: a socket that lost its
        connection and comes back within this time gets its sid, rooms and
        data back and the events it missed. C{0}: off. With it on, every
        event emitted without an acknowledgement carries an offset as its
        last argument (as with the official server).
    @ivar recoveryMaxEvents: the most events kept for recovery.
    """

    connectTimeout: int = 45000
    maxAttachments: int = 16
    recoveryWindow: int = 0
    recoveryMaxEvents: int = 100_000

    def __attrs_post_init__(self) -> None:
        if self.connectTimeout <= 0:
            raise ValueError("connectTimeout must be positive")
        if self.recoveryWindow < 0:
            raise ValueError("recoveryWindow must not be negative")


class ConnectionRefused(Exception):
    """
    Raised by a connect handler to refuse a namespace connection; the
    client gets CONNECT_ERROR C{{message, data?}}.
    """

    def __init__(self, message: str = "Connection rejected by server", data: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.data = data

    def payload(self) -> dict[str, Any]:
        """
        The CONNECT_ERROR payload.
        """
        if self.data is None:
            return {"message": self.message}
        return {"message": self.message, "data": self.data}


def _callHandler(handler: Handler, *args: Any) -> Any:
    """
    Call a handler; a coroutine result becomes a Deferred.
    """
    result = handler(*args)
    if inspect.iscoroutine(result):
        return ensureDeferred(result)
    return result


class _AckSender:
    """
    The ack callable given to C{wantsAck} handlers: sends one ACK.
    """

    __slots__ = ("server", "socket", "ackId")

    def __init__(self, server: "SocketIOServer", socket: "Socket", ackId: int) -> None:
        self.server = server
        self.socket = socket
        self.ackId: int | None = ackId

    def __call__(self, *args: Any) -> None:
        ackId, self.ackId = self.ackId, None
        if ackId is not None:
            self.server._sendAck(self.socket, ackId, args)


#: The rooms of a socket that joined none.
_NO_ROOMS: frozenset[str] = frozenset()


class Socket:
    """
    One client's connection to one namespace.

    @ivar sid: the Socket.IO id (not the Engine.IO session id).
    @ivar rooms: the rooms it joined (its own sid is implicit): a shared
        empty C{frozenset} until it joins one, then a C{set} of its own (an
        empty set is 216 bytes, and most sockets never join a room).
    @ivar data: a slot for the application.
    @ivar recovered: whether this socket is one that lost its connection
        and came back (connection state recovery): same sid, rooms and
        data, and the events it missed were sent again.
    @ivar pid: its private session id when recovery is on, else C{None}.
    """

    __slots__ = (
        "sid",
        "namespace",
        "connection",
        "rooms",
        "data",
        "connected",
        "_acks",
        "_nextAckId",
        "_held",
        "recovered",
        "pid",
        "firstOffset",
    )

    def __init__(self, sid: str, namespace: "Namespace", connection: "Connection") -> None:
        self.sid = sid
        self.namespace = namespace
        self.connection = connection
        self.rooms: set[str] | frozenset[str] = _NO_ROOMS
        self.data: Any = None
        self.connected = False
        self._acks: dict[int, Callable[..., Any]] | None = None
        self._nextAckId = 0
        self._held: list[Frame] | None = None
        self.recovered = False
        self.pid: str | None = None
        self.firstOffset = 0

    def __repr__(self) -> str:
        return f"<Socket {self.sid} {self.namespace.name}>"

    def _addRoom(self, room: str) -> None:
        rooms = self.rooms
        if not isinstance(rooms, set):
            rooms = self.rooms = set()
        rooms.add(room)

    @property
    def session(self) -> EngineIOSession:
        """
        The Engine.IO session carrying this socket.
        """
        return self.connection.session

    def sendFrames(self, frames: Sequence[Frame]) -> None:
        """
        Write already-encoded packets (held until CONNECT is sent, and
        while the packets held meanwhile wait for their turn).
        """
        held = self._held
        if held is not None:
            held.extend(frames)
        elif self.connected:
            session = self.connection.session
            for frame in frames:
                session.sendFrame(frame)

    def emit(self, event: str, *args: Any, callback: Callable[..., Any] | None = None) -> None:
        """
        Emit C{event} to this socket; C{callback} receives the client's ack
        arguments.
        """
        ackId = None
        if callback is None:
            server = self.namespace.server
            if server.recovery is not None:
                self.sendFrames(server.eventFrames(event, *args, to=self.sid, namespace=self.namespace.name))
                return
        else:
            ackId = self._nextAckId
            self._nextAckId += 1
            if self._acks is None:
                self._acks = {}
            self._acks[ackId] = callback
        self.sendFrames(sio.encodeEvent(self.namespace.name, event, args, ackId))

    def _ackReceived(self, ackId: int, args: list[Any]) -> None:
        callback = self._acks.pop(ackId, None) if self._acks else None
        if callback is None:
            return
        try:
            result = _callHandler(callback, *args)
            if isinstance(result, Deferred):
                result.addErrback(self.namespace.server._logFailure, "ack callback")
        except Exception:
            self.namespace.server.log.failure("ack callback")


class Namespace:
    """
    A namespace: its handlers, its connected sockets and its rooms.
    """

    def __init__(self, server: "SocketIOServer", name: str) -> None:
        self.server = server
        self.name = name
        self.handlers: dict[str, Handler] = {}
        self.ackAware: set[str] = set()
        self.sockets: dict[str, Socket] = {}
        self.rooms: dict[str, set[Socket]] = {}

    def targets(self, to: str | Iterable[str] | None) -> Iterable[Socket]:
        """
        The sockets addressed by C{to}: everyone (C{None}), a sid, a room,
        or several of those (each socket once).
        """
        if to is None:
            return list(self.sockets.values())
        if isinstance(to, str):
            socket = self.sockets.get(to)
            if socket is not None:
                return (socket,)
            return list(self.rooms.get(to, ()))
        seen: dict[Socket, None] = {}
        for name in to:
            for socket in self.targets(name):
                seen[socket] = None
        return seen.keys()


class Connection:
    """
    The Socket.IO side of one Engine.IO session: its decoder and its
    sockets by namespace.
    """

    __slots__ = ("session", "decoder", "sockets", "__weakref__")

    def __init__(self, session: EngineIOSession, decoder: Decoder) -> None:
        self.session = session
        self.decoder = decoder
        self.sockets: dict[str, Socket] = {}

    def sendPacket(self, packet: SocketIOPacket) -> None:
        """
        Encode and send one packet.
        """
        self.session.sendMany(sio.encode(packet))


@implementer(IEngineIOApplication)
class SocketIOServer(Service):
    """
    A Socket.IO v5 server.

    Its heartbeats and connect timeouts run from construction; as a
    Twisted L{Service} it closes every session when the application
    stops (C{server.setServiceParent(application)}).

    @ivar engine: the L{EngineIOServer} underneath.
    @ivar config: its settings.
    @ivar connectTimeout: seconds a session may wait before connecting to
        a namespace (C{config.connectTimeout} / 1000).
    @ivar recovery: the connection state recovery log, or C{None} when
        recovery is off.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        engineConfig: EngineIOConfig | None = None,
        connectTimeout: float | None = None,
        maxAttachments: int | None = None,
        config: SocketIOConfig | None = None,
        recovery: IConnectionRecovery | None = None,
        newSid: Callable[[], str] | None = None,
    ) -> None:
        """
        @param clock: the reactor's time and scheduling.
        @param newSid: makes Engine.IO session ids (a cluster node's name
            the node); by default random ones.
        @param engineConfig: the Engine.IO settings.
        @param config: the Socket.IO settings (milliseconds).
        @param connectTimeout: deprecated, in seconds: use
            C{config=SocketIOConfig(connectTimeout=MS)}; overrides it.
        @param maxAttachments: overrides C{config.maxAttachments}.
        @param recovery: where connection state recovery keeps its state;
            by default a L{RecoveryLog} when C{config.recoveryWindow} is
            set, else recovery is off.
        """
        config = config if config is not None else SocketIOConfig()
        if connectTimeout is not None:
            config = attrs.evolve(config, connectTimeout=max(1, round(connectTimeout * 1000)))
        if maxAttachments is not None:
            config = attrs.evolve(config, maxAttachments=maxAttachments)
        self.config = config
        self.clock = clock
        self.engine = (
            EngineIOServer(self, clock, engineConfig)
            if newSid is None
            else EngineIOServer(self, clock, engineConfig, newSid=newSid)
        )
        self.connectTimeout = config.connectTimeout / 1000
        self.maxAttachments = config.maxAttachments
        #: The log this server made (an application's own recovery, or the
        #: IM's store around this log, may replace self.recovery): started
        #: and stopped with the server.
        self.recoveryLog: RecoveryLog | None = None
        if recovery is None and config.recoveryWindow > 0:
            recovery = self.recoveryLog = RecoveryLog(clock, config.recoveryWindow / 1000, config.recoveryMaxEvents)
        self.recovery = recovery
        # Connected sockets by pid, for a client that comes back before the
        # server noticed its connection was gone.
        self._byPid: dict[str, Socket] = {}
        self.namespaces: dict[str, Namespace] = {"/": Namespace(self, "/")}
        self._connectWheel = DeadlineHeap(clock, self._connectTimedOut)

    # ---- API

    def namespace(self, name: str = "/") -> Namespace:
        """
        The namespace C{name}, registered if new (only registered
        namespaces accept connections).
        """
        namespace = self.namespaces.get(name)
        if namespace is None:
            namespace = self.namespaces[name] = Namespace(self, name)
        return namespace

    def on(
        self,
        event: str,
        handler: Handler | None = None,
        namespace: str = "/",
        wantsAck: bool = False,
    ) -> Any:
        """
        Register C{handler} for C{event} in C{namespace}; usable as a
        decorator. C{"connect"} handlers get C{(sid, auth)},
        C{"disconnect"} handlers C{(sid, reason)}, event handlers
        C{(sid, *args)} and their return value is the ack.

        With C{wantsAck}, an event handler gets C{(sid, ack, *args)} instead,
        where C{ack} is C{None} if the client asked for no acknowledgement,
        else a callable taking the ack arguments (call it at most once); its
        return value is then ignored.
        """

        def register(handler: Handler) -> Handler:
            ns = self.namespace(namespace)
            ns.handlers[event] = handler
            if wantsAck:
                ns.ackAware.add(event)
            else:
                ns.ackAware.discard(event)
            return handler

        if handler is None:
            return register
        return register(handler)

    def emit(
        self,
        event: str,
        *args: Any,
        to: str | Iterable[str] | None = None,
        namespace: str = "/",
        callback: Callable[..., Any] | None = None,
        skipSid: str | None = None,
    ) -> None:
        """
        Emit C{event} to one socket, a room, several, or everyone in
        C{namespace}. The packet is encoded once for all recipients.
        C{callback} (an ack) is only allowed when C{to} is one sid.
        """
        ns = self.namespaces.get(namespace)
        if ns is None:
            return
        if callback is not None:
            if not isinstance(to, str) or to not in ns.sockets:
                raise ValueError("an emit with a callback needs one connected sid in 'to'")
            ns.sockets[to].emit(event, *args, callback=callback)
            return
        frames = self.eventFrames(event, *args, to=to, namespace=namespace, skipSid=skipSid)
        for socket in ns.targets(to):
            if socket.sid != skipSid:
                socket.sendFrames(frames)

    def eventFrames(
        self,
        event: str,
        *args: Any,
        to: str | Iterable[str] | None = None,
        namespace: str = "/",
        skipSid: str | None = None,
    ) -> list[Frame]:
        """
        Encode C{event} once for the sockets C{to} (as L{emit} names them),
        for an application that writes the frames itself with
        L{Socket.sendFrames}. With recovery on, the event gets its offset
        and is logged for them, so that those of them that are cut off get
        it when they come back.
        """
        recovery = self.recovery
        if recovery is None:
            return sio.encodeEvent(namespace, event, args)
        offset = recovery.nextOffset()
        frames = sio.encodeEvent(namespace, event, (*args, str(offset)))
        recovery.record(offset, namespace, to, skipSid, frames)
        return frames

    def getSocket(self, sid: str, namespace: str = "/") -> Socket | None:
        """
        The connected socket C{sid} of C{namespace}, if any.
        """
        ns = self.namespaces.get(namespace)
        return ns.sockets.get(sid) if ns is not None else None

    def enterRoom(self, sid: str, room: str, namespace: str = "/") -> None:
        """
        Put socket C{sid} in C{room}.
        """
        socket = self.getSocket(sid, namespace)
        if socket is None:
            return
        socket._addRoom(room)
        socket.namespace.rooms.setdefault(room, set()).add(socket)

    def leaveRoom(self, sid: str, room: str, namespace: str = "/") -> None:
        """
        Take socket C{sid} out of C{room}.
        """
        socket = self.getSocket(sid, namespace)
        if socket is not None:
            self._leave(socket, room)

    def rooms(self, sid: str, namespace: str = "/") -> set[str]:
        """
        The rooms of socket C{sid}, its own sid included.
        """
        socket = self.getSocket(sid, namespace)
        return set() if socket is None else {sid} | socket.rooms

    def disconnect(self, sid: str, namespace: str = "/", closeConnection: bool = False) -> None:
        """
        Disconnect socket C{sid} from C{namespace} (DISCONNECT is sent; the
        disconnect handler gets C{"server namespace disconnect"}); with
        C{closeConnection}, close its whole Engine.IO session too.
        """
        socket = self.getSocket(sid, namespace)
        if socket is None:
            return
        socket.connection.sendPacket(SocketIOPacket(sio.DISCONNECT, namespace))
        self._removeSocket(socket, "server namespace disconnect")
        if closeConnection:
            socket.connection.session.close("forced close")

    def start(self) -> None:
        """
        Start the heartbeat and connect-timeout sweeps (and the recovery
        log's expiry).
        """
        self.engine.start()
        self._connectWheel.start()
        if self.recoveryLog is not None:
            self.recoveryLog.start()

    def stop(self) -> None:
        """
        Close every session (what was queued is flushed first) and stop.
        """
        self.engine.stop("server shutting down")
        self._connectWheel.stop()
        if self.recoveryLog is not None:
            self.recoveryLog.stop()

    def startService(self) -> None:
        """
        L{IService}: L{start}.
        """
        super().startService()
        self.start()

    def stopService(self) -> None:
        """
        L{IService}: L{stop}.
        """
        super().stopService()
        self.stop()

    def resource(self) -> IResource:
        """
        A twisted.web resource serving this server (mount it at
        C{b"socket.io"}).
        """
        from ..engineio.resource import EngineIOResource

        return EngineIOResource(self.engine, self.clock)

    # ---- IEngineIOApplication

    def sessionOpened(self, session: EngineIOSession) -> None:
        """
        Start the connect timeout of a new session.
        """
        connection = session.appState = Connection(
            session, Decoder(self.maxAttachments, self.engine.config.maxPayload)
        )
        self._connectWheel.set(session, self.connectTimeout)
        if session.protocol == 3:
            # Socket.IO protocol v4 (socket.io-client 2.x): the main
            # namespace is connected implicitly, without a CONNECT.
            self._connect(connection, SocketIOPacket(sio.CONNECT, "/"))

    def messageReceived(self, session: EngineIOSession, data: bytes, binary: bool) -> None:
        """
        Decode and dispatch one Engine.IO message.
        """
        connection: Connection = session.appState
        try:
            packet = connection.decoder.feed(data, binary)
        except DecodeError as error:
            self.log.info(
                "closing session {sid} from {remote}: {error}",
                sid=session.publicId,
                remote=session.remoteAddress,
                error=str(error),
            )
            session.close("parse error", flush=False)
            return
        if packet is None:
            return
        socket = connection.sockets.get(packet.namespace)
        packetType = packet.type
        if socket is None:
            if packetType == sio.CONNECT:
                self._connect(connection, packet)
            else:
                session.close("parse error", flush=False)
        elif packetType == sio.EVENT or packetType == sio.BINARY_EVENT:
            if socket.connected:
                self._event(socket, packet)
        elif packetType == sio.ACK or packetType == sio.BINARY_ACK:
            assert packet.id is not None
            socket._ackReceived(packet.id, packet.data)
        elif packetType == sio.DISCONNECT:
            self._removeSocket(socket, "client namespace disconnect")
        else:
            # A second CONNECT, or a CONNECT_ERROR from a client.
            session.close("parse error", flush=False)

    def sessionClosed(self, session: EngineIOSession, reason: str) -> None:
        """
        Disconnect every socket of a closed session.
        """
        self._connectWheel.cancel(session)
        connection: Connection | None = session.appState
        if connection is None:
            return
        for socket in list(connection.sockets.values()):
            self._removeSocket(socket, reason)
        # The session and its connection refer to each other: without
        # this, every closed session is garbage only the cycle collector
        # frees, which the server's tuning makes rare (bench/churn.py).
        session.appState = None

    # ---- internals

    def _connect(self, connection: Connection, packet: SocketIOPacket) -> None:
        name = packet.namespace
        legacy = connection.session.protocol == 3
        if legacy:
            # A v4-protocol CONNECT carries the namespace's query after it
            # (C{/admin?token=x}); the namespace is what precedes it.
            name = name.partition("?")[0]
            if name in connection.sockets:
                return
        ns = self.namespaces.get(name)
        if ns is None:
            error: Any = _INVALID_NAMESPACE["message"] if legacy else _INVALID_NAMESPACE
            connection.sendPacket(SocketIOPacket(sio.CONNECT_ERROR, name, error))
            return
        auth = packet.data if packet.data is not None else {}
        recovery = self.recovery if not legacy else None
        if recovery is not None and isinstance(auth, dict) and "pid" in auth:
            # A client that lost its connection asks for its socket back;
            # the application sees the rest of its auth.
            auth = dict(auth)
            pid = auth.pop("pid")
            offset = auth.pop("offset", None)
            if isinstance(pid, str) and len(pid) <= 64 and (offset is None or (isinstance(offset, str) and len(offset) <= 64)):
                restoring = self._restore(connection, ns, recovery, pid, offset)
                if isinstance(restoring, Deferred):
                    # Its state is in the application's storage: the
                    # CONNECT waits for it (the client sends nothing else
                    # on this namespace meanwhile).
                    restoring.addErrback(self._restoreFailed)
                    restoring.addCallback(lambda socket: self._connectAs(connection, ns, auth, socket))
                    return
                self._connectAs(connection, ns, auth, restoring)
                return
        self._connectAs(connection, ns, auth, None)

    def _restoreFailed(self, failure: Failure) -> None:
        self.log.failure("connection state recovery", failure)
        return None

    def _connectAs(self, connection: Connection, ns: Namespace, auth: Any, socket: Socket | None) -> None:
        """
        Connect C{connection} to C{ns} as C{socket} (a restored one) or as
        a new socket, and run the connect handler.
        """
        name = ns.name
        if connection.session.state != "open" or name in connection.sockets:
            return
        recovery = self.recovery if connection.session.protocol != 3 else None
        if socket is None:
            socket = Socket(secrets.token_urlsafe(15), ns, connection)
            socket._held = []
            if recovery is not None:
                socket.pid = recovery.newPid()
                socket.firstOffset = recovery.lastOffset
        connection.sockets[name] = socket
        # Known by its sid while the handler decides, so that the handler
        # can put it in rooms and emit to it (held until CONNECT is sent).
        ns.sockets[socket.sid] = socket
        handler = ns.handlers.get("connect")
        if handler is None:
            self._accept(socket)
            return
        try:
            result = _callHandler(handler, socket.sid, auth)
        except ConnectionRefused as refusal:
            self._refuse(socket, refusal)
            return
        except Exception:
            self.log.failure("connect handler of {namespace}", namespace=name)
            self._refuse(socket, ConnectionRefused())
            return
        if isinstance(result, Deferred):
            result.addCallbacks(
                lambda accepted: self._connectDecided(socket, accepted),
                lambda failure: self._connectFailed(socket, failure),
            )
        else:
            self._connectDecided(socket, result)

    def _restore(
        self, connection: Connection, ns: Namespace, recovery: IConnectionRecovery, pid: str, offset: str | None
    ) -> "Socket | None | Deferred[Socket | None]":
        stale = self._byPid.get(pid)
        if stale is not None and stale.namespace is ns and stale.connection is not connection:
            # The client is back on a new connection while its old one
            # still looks open (a cut the heartbeat has not caught yet, a
            # polling GET that failed on the client's side): only that
            # client knows the pid, so its old session is closed now, and
            # the socket detached to be restored.
            stale.connection.session.close("transport close", flush=False)
        restored = recovery.restore(pid, ns.name, offset)
        if isinstance(restored, Deferred):
            return restored.addCallback(lambda found: self._restoredSocket(connection, ns, found))
        return self._restoredSocket(connection, ns, restored)

    def _restoredSocket(self, connection: Connection, ns: Namespace, restored: Restored | None) -> Socket | None:
        """
        The socket C{restored} describes, on C{connection}, or L{None}.
        """
        if restored is None:
            return None
        state = restored.socket
        if state.sid in ns.sockets:
            return None
        socket = Socket(state.sid, ns, connection)
        socket.pid = state.pid
        socket.firstOffset = state.firstOffset
        socket.recovered = True
        socket.data = state.data
        # The events it missed follow the CONNECT, before anything new.
        socket._held = [frame for frames in restored.missed for frame in frames]
        for room in state.rooms:
            socket._addRoom(room)
            ns.rooms.setdefault(room, set()).add(socket)
        return socket

    def _connectDecided(self, socket: Socket, accepted: Any) -> None:
        if accepted is False:
            self._refuse(socket, ConnectionRefused())
        else:
            self._accept(socket)

    def _connectFailed(self, socket: Socket, failure: Failure) -> None:
        if failure.check(ConnectionRefused):
            self._refuse(socket, failure.value)
        else:
            self.log.failure("connect handler", failure)
            self._refuse(socket, ConnectionRefused())

    def _accept(self, socket: Socket) -> None:
        connection = socket.connection
        if connection.sockets.get(socket.namespace.name) is not socket or connection.session.state != "open":
            return
        self._connectWheel.cancel(connection.session)
        socket.connected = True
        socket.namespace.sockets[socket.sid] = socket
        if socket.pid is not None:
            self._byPid[socket.pid] = socket
        if connection.session.protocol == 3:
            answer = None
        elif socket.pid is not None:
            answer = {"sid": socket.sid, "pid": socket.pid}
        else:
            answer = {"sid": socket.sid}
        connection.sendPacket(SocketIOPacket(sio.CONNECT, socket.namespace.name, answer))
        if socket._held:
            # What the connect handler emitted follows the CONNECT a moment
            # later, as with the official server (whose connection handler
            # runs after the CONNECT's write completed): a client that
            # waits for one message at a time (the socket.io-protocol
            # suite does) reads them separately. The CONNECT leaves now.
            connection.session.flushTransport()
            self.clock.callLater(HELD_RELEASE_DELAY, self._releaseHeld, socket)
        else:
            socket._held = None

    def _releaseHeld(self, socket: Socket) -> None:
        held, socket._held = socket._held, None
        if held and socket.connected:
            socket.sendFrames(held)

    def _refuse(self, socket: Socket, refusal: ConnectionRefused) -> None:
        connection = socket.connection
        ns = socket.namespace
        if connection.sockets.get(ns.name) is socket:
            del connection.sockets[ns.name]
        if ns.sockets.get(socket.sid) is socket:
            del ns.sockets[socket.sid]
        for room in list(socket.rooms):
            self._leave(socket, room)
        socket._held = None
        if connection.session.protocol == 3:
            # Socket.IO protocol v4: the error is the data, or the message.
            payload: Any = refusal.data if refusal.data is not None else refusal.message
        else:
            payload = refusal.payload()
        connection.sendPacket(SocketIOPacket(sio.CONNECT_ERROR, socket.namespace.name, payload))

    def _event(self, socket: Socket, packet: SocketIOPacket) -> None:
        data = packet.data
        ns = socket.namespace
        handler = ns.handlers.get(data[0])
        if handler is None:
            return
        ackId = packet.id
        if data[0] in ns.ackAware:
            ack = None if ackId is None else _AckSender(self, socket, ackId)
            try:
                result = _callHandler(handler, socket.sid, ack, *data[1:])
            except Exception:
                self.log.failure("handler of {event!r}", event=data[0])
                return
            if isinstance(result, Deferred):
                result.addErrback(self._logFailure, data[0])
            return
        try:
            result = _callHandler(handler, socket.sid, *data[1:])
        except Exception:
            self.log.failure("handler of {event!r}", event=data[0])
            return
        if ackId is None:
            if isinstance(result, Deferred):
                result.addErrback(self._logFailure, data[0])
            return
        if isinstance(result, Deferred):
            result.addCallback(lambda value: self._sendAck(socket, ackId, value))
            result.addErrback(self._logFailure, data[0])
        else:
            self._sendAck(socket, ackId, result)

    def _sendAck(self, socket: Socket, ackId: int, value: Any) -> None:
        if value is None:
            args: list[Any] = []
        elif isinstance(value, tuple):
            args = list(value)
        else:
            args = [value]
        if socket.connected:
            socket.sendFrames(sio.encodeAck(socket.namespace.name, ackId, args))

    def _logFailure(self, failure: Failure, what: str) -> None:
        self.log.failure("handler of {what!r}", failure, what=what)

    def _leave(self, socket: Socket, room: str) -> None:
        rooms = socket.rooms
        if isinstance(rooms, set):
            rooms.discard(room)
        members = socket.namespace.rooms.get(room)
        if members is not None:
            members.discard(socket)
            if not members:
                del socket.namespace.rooms[room]

    def _removeSocket(self, socket: Socket, reason: str) -> None:
        connection = socket.connection
        ns = socket.namespace
        if connection.sockets.get(ns.name) is socket:
            del connection.sockets[ns.name]
        wasConnected = socket.connected
        socket.connected = False
        socket._held = None
        ns.sockets.pop(socket.sid, None)
        recovery = self.recovery
        if socket.pid is not None and self._byPid.get(socket.pid) is socket:
            del self._byPid[socket.pid]
        if recovery is not None and socket.pid is not None and wasConnected and reason in RECOVERABLE_REASONS:
            recovery.detach(socket.pid, socket.sid, ns.name, socket.rooms, socket.data, socket.firstOffset)
        for room in list(socket.rooms):
            self._leave(socket, room)
        if not wasConnected:
            return
        handler = ns.handlers.get("disconnect")
        if handler is None:
            return
        try:
            result = _callHandler(handler, socket.sid, reason)
            if isinstance(result, Deferred):
                result.addErrback(self._logFailure, "disconnect")
        except Exception:
            self.log.failure("disconnect handler of {namespace}", namespace=ns.name)

    def _connectTimedOut(self, session: Any) -> None:
        connection: Connection | None = session.appState
        if connection is not None and not any(s.connected for s in connection.sockets.values()):
            session.close("forced close", flush=False)
