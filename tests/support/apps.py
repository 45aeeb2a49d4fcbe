"""
Small applications on crm_im's engine for the end-to-end tests, served on
a real loopback port.

  - L{InteropApp}: a L{SocketIOServer} with handlers that exercise the
    engine (echo with acks, rooms, server-initiated acks and disconnects,
    numbered bursts, a second namespace), recording what the server side
    saw in a L{Recorder} the tests wait on;
  - L{RawEchoApp}: a raw L{IEngineIOApplication} that echoes every message,
    for C{/engine.io/};
  - L{serve}: listen on C{127.0.0.1:0} and, at cleanup, stop the
    application, stop listening, and drop and wait for every connection the
    port accepted, so trial finds a clean reactor.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import TimeoutError
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from zope.interface import implementer

from crm_im.engineio.config import EngineIOConfig
from crm_im.engineio.interfaces import IEngineIOApplication
from crm_im.engineio.packet import binaryFrame, messageFrame
from crm_im.engineio.resource import EngineIOResource
from crm_im.engineio.server import EngineIOServer
from crm_im.engineio.session import EngineIOSession
from crm_im.engineio.site import EngineIOSite
from crm_im.socketio import ConnectionRefused, SocketIOServer

Record = Tuple[Any, ...]

#: seconds a server-side wait may take
SERVER_TIMEOUT = 10.0


class Recorder:
    """
    What the server side saw, as named records, with waits on them.

    Like the client driver's events, each record is consumed by at most one
    L{waitFor}; L{all} returns every record of a name, consumed or not.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._log: List[Tuple[str, Record]] = []
        self._unconsumed: List[Tuple[str, Record]] = []
        self._waiters: List[Tuple[str, Callable[[Record], bool],
                                  Deferred[Record]]] = []

    def record(self, name: str, *values: Any) -> None:
        """
        Record C{values} under C{name}; hand them to the first matching wait.
        """
        self._log.append((name, values))
        for entry in self._waiters:
            wanted, predicate, d = entry
            if wanted == name and predicate(values):
                self._waiters.remove(entry)
                d.callback(values)
                return
        self._unconsumed.append((name, values))

    def all(self, name: str) -> List[Record]:
        """
        Every record of C{name} so far.
        """
        return [values for n, values in self._log if n == name]

    def waitFor(self, name: str,
                predicate: Optional[Callable[[Record], bool]] = None,
                timeout: float = SERVER_TIMEOUT) -> Deferred[Record]:
        """
        Fire with the first unconsumed record of C{name} matching
        C{predicate}, waiting up to C{timeout} seconds for one.
        """
        test = predicate if predicate is not None else (lambda values: True)
        for entry in self._unconsumed:
            if entry[0] == name and test(entry[1]):
                self._unconsumed.remove(entry)
                return succeed(entry[1])
        d: Deferred[Record] = Deferred()
        waiter = (name, test, d)
        self._waiters.append(waiter)

        def timedOut(result: Any, seconds: float) -> Failure:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            return Failure(TimeoutError(
                f"server saw no {name!r} within {seconds}s "
                f"(had: {[n for n, _ in self._log]})"))

        d.addTimeout(timeout, self._reactor, onTimeoutCancel=timedOut)
        return d


class InteropApp:
    """
    A Socket.IO server whose handlers exercise the engine end to end.

    Namespace C{/}:
      - C{connect(sid, auth)}: refuses with
        C{ConnectionRefused("msg", {"k": 1})} when C{auth["refuse"]};
        otherwise emits C{"auth"} with the auth payload, and starts a
        numbered C{"n"} stream when C{auth["stream"]} is a count;
      - C{"echo"}: emits C{"echoed"} with the same args back and acks them;
      - C{"join"}/C{"leave"} (room): enter/leave a room; acks the rooms;
      - C{"toRoom"} (room, payload, skipSelf): emits C{"room"} to the room;
      - C{"toAll"} (payload): emits C{"all"} to everyone;
      - C{"ask"} (payload...): emits C{"question"} to the sender with a
        callback that records C{"answer"};
      - C{"kickMe"}: the server disconnects the sender;
      - C{disconnect}: records C{"disconnect"} C{(sid, reason)}.
    Namespace C{/second}: C{"echo"} acks C{("second", *args)}.

    @ivar recorder: what the server saw.
    """

    def __init__(self, reactor: Any,
                 config: Optional[EngineIOConfig] = None) -> None:
        self.reactor = reactor
        self.recorder = Recorder(reactor)
        self.sio = SocketIOServer(reactor, engineConfig=config,
                                  connectTimeout=10)
        sio = self.sio
        sio.on("connect", self.connect)
        sio.on("disconnect", self.disconnect)
        sio.on("echo", self.echo)
        sio.on("join", self.join)
        sio.on("leave", self.leave)
        sio.on("toRoom", self.toRoom)
        sio.on("toAll", self.toAll)
        sio.on("ask", self.ask)
        sio.on("kickMe", self.kickMe)
        sio.on("connect", self.connectSecond, namespace="/second")
        sio.on("disconnect", self.disconnectSecond, namespace="/second")
        sio.on("echo", self.echoSecond, namespace="/second")

    def connect(self, sid: str, auth: Any) -> None:
        """
        Refuse, or accept and echo the auth payload.
        """
        self.recorder.record("connect", sid, auth)
        if isinstance(auth, dict) and auth.get("refuse"):
            raise ConnectionRefused("msg", {"k": 1})
        self.sio.emit("auth", auth, to=sid)
        if isinstance(auth, dict) and isinstance(auth.get("stream"), int):
            self.stream(sid, auth["stream"])

    def stream(self, sid: str, count: int, batch: int = 4) -> None:
        """
        Emit C{"n"} with 0, 1, 2, ... to C{sid}: C{batch} at a time, one
        batch per millisecond, until C{count} were sent and the session has
        left polling (so the stream spans the upgrade) or 20 times
        C{count} were sent.  Records C{"streamed"}
        C{(sid, total, sentBeforeUpgrade)}.
        """
        sent = 0
        beforeUpgrade: Optional[int] = None

        def step() -> None:
            nonlocal sent, beforeUpgrade
            socket = self.sio.getSocket(sid)
            if socket is None:
                return
            upgraded = socket.session.transportName == "websocket"
            if upgraded and beforeUpgrade is None:
                beforeUpgrade = sent
            if sent >= count and (upgraded or sent >= 20 * count):
                self.sio.emit("streamEnd", sent, to=sid)
                self.recorder.record("streamed", sid, sent, beforeUpgrade)
                return
            for _ in range(batch):
                self.sio.emit("n", sent, to=sid)
                sent += 1
            self.reactor.callLater(0.001, step)

        step()

    def disconnect(self, sid: str, reason: str) -> None:
        """
        Record a disconnect from C{/}.
        """
        self.recorder.record("disconnect", sid, reason)

    def echo(self, sid: str, *args: Any) -> Tuple[Any, ...]:
        """
        Send the args back as C{"echoed"} and ack them.
        """
        self.recorder.record("echo", sid, args)
        self.sio.emit("echoed", *args, to=sid)
        return args

    def join(self, sid: str, room: str) -> List[str]:
        """
        Enter C{room}; ack the sender's rooms.
        """
        self.sio.enterRoom(sid, room)
        return sorted(self.sio.rooms(sid) - {sid})

    def leave(self, sid: str, room: str) -> List[str]:
        """
        Leave C{room}; ack the sender's rooms.
        """
        self.sio.leaveRoom(sid, room)
        return sorted(self.sio.rooms(sid) - {sid})

    def toRoom(self, sid: str, room: str, payload: Any,
               skipSelf: bool = False) -> bool:
        """
        Emit C{"room"} with C{payload} to C{room}, maybe not to the sender.
        """
        self.sio.emit("room", payload, to=room,
                      skipSid=sid if skipSelf else None)
        return True

    def toAll(self, sid: str, payload: Any) -> bool:
        """
        Emit C{"all"} with C{payload} to everyone in C{/}.
        """
        self.sio.emit("all", payload)
        return True

    def ask(self, sid: str, *args: Any) -> bool:
        """
        Emit C{"question"} to the sender with a callback recording its
        answer as C{"answer"} C{(sid, *ackArgs)}.
        """
        self.sio.emit("question", *args, to=sid,
                      callback=lambda *answer: self.recorder.record(
                          "answer", sid, *answer))
        return True

    def kickMe(self, sid: str) -> None:
        """
        Disconnect the sender from C{/}.
        """
        self.sio.disconnect(sid)

    def connectSecond(self, sid: str, auth: Any) -> None:
        """
        Record a connect to C{/second}.
        """
        self.recorder.record("connectSecond", sid, auth)

    def disconnectSecond(self, sid: str, reason: str) -> None:
        """
        Record a disconnect from C{/second}.
        """
        self.recorder.record("disconnectSecond", sid, reason)

    def echoSecond(self, sid: str, *args: Any) -> Tuple[Any, ...]:
        """
        Ack C{("second", *args)}.
        """
        return ("second",) + args

    def resource(self) -> Resource:
        """
        The root resource, with the server at C{/socket.io/}.
        """
        root = Resource()
        root.putChild(b"socket.io", self.sio.resource())
        return root


@implementer(IEngineIOApplication)
class RawEchoApp:
    """
    A raw Engine.IO application: echoes every message on its session and
    records opens, messages and closes.
    """

    def __init__(self, reactor: Any) -> None:
        self.recorder = Recorder(reactor)

    def sessionOpened(self, session: EngineIOSession) -> None:
        """
        Record the open.
        """
        self.recorder.record("open", session.sid, session.transportName)

    def messageReceived(self, session: EngineIOSession, data: bytes,
                        binary: bool) -> None:
        """
        Send the message back as it came.
        """
        self.recorder.record("message", session.sid, data, binary)
        if binary:
            session.send(binaryFrame(data))
        else:
            session.send(messageFrame(data))

    def sessionClosed(self, session: EngineIOSession, reason: str) -> None:
        """
        Record the close.
        """
        self.recorder.record("close", session.sid, reason)


class ConnectionTracker:
    """
    Remembers the TCP transports a site accepted, to drop and wait for them
    at cleanup (an upgraded WebSocket leaves the HTTP channel, so the
    transport is what is followed).
    """

    def __init__(self) -> None:
        self.transports: List[Any] = []
        self._lost: Dict[int, Deferred[None]] = {}

    def track(self, site: EngineIOSite) -> None:
        """
        Wrap C{site.buildProtocol} to see each accepted transport.
        """
        build = site.buildProtocol

        def buildProtocol(addr: Any) -> Any:
            channel = build(addr)
            if channel is None:
                return None
            makeConnection = channel.makeConnection

            def tracked(transport: Any) -> None:
                self._watch(transport)
                makeConnection(transport)

            channel.makeConnection = tracked
            return channel

        site.buildProtocol = buildProtocol  # type: ignore[method-assign]

    def _watch(self, transport: Any) -> None:
        lost: Deferred[None] = Deferred()
        self.transports.append(transport)
        self._lost[id(transport)] = lost
        connectionLost = transport.connectionLost

        def tracked(reason: Failure) -> None:
            try:
                connectionLost(reason)
            finally:
                if not lost.called:
                    lost.callback(None)

        transport.connectionLost = tracked

    def dropAll(self, reactor: Any, timeout: float = 5.0) -> Deferred[Any]:
        """
        Abort every transport still connected; fire once all are gone.
        """
        from twisted.internet.defer import gatherResults

        waits = []
        for transport in self.transports:
            lost = self._lost[id(transport)]
            if not lost.called:
                transport.abortConnection()
                waits.append(lost)
        d = gatherResults(waits)
        d.addTimeout(timeout, reactor)
        return d


def serve(testCase: TestCase, reactor: Any, root: Resource,
          config: EngineIOConfig, stop: Callable[[], None]) -> str:
    """
    Serve C{root} with an L{EngineIOSite} on C{127.0.0.1:0} until the end
    of C{testCase}.

    @param stop: stops the application (called first at cleanup).
    @return: C{"http://127.0.0.1:PORT"}.
    """
    site = EngineIOSite(root, config, reactor)
    tracker = ConnectionTracker()
    tracker.track(site)
    port = reactor.listenTCP(0, site, interface="127.0.0.1")

    def cleanup() -> Deferred[Any]:
        stop()
        d = port.stopListening()
        d = Deferred.fromCoroutine(_afterStop(d, tracker, reactor))
        return d

    testCase.addCleanup(cleanup)
    return f"http://127.0.0.1:{port.getHost().port}"


async def _afterStop(stopped: Any, tracker: ConnectionTracker,
                     reactor: Any) -> None:
    if stopped is not None:
        await stopped
    await tracker.dropAll(reactor)


def serveInterop(testCase: TestCase, reactor: Any,
                 config: Optional[EngineIOConfig] = None
                 ) -> Tuple[InteropApp, str]:
    """
    Start an L{InteropApp} on a loopback port for C{testCase}.

    @return: the app and its URL.
    """
    config = config if config is not None else EngineIOConfig()
    app = InteropApp(reactor, config)
    app.sio.start()
    url = serve(testCase, reactor, app.resource(), config, app.sio.stop)
    return app, url


def serveRawEcho(testCase: TestCase, reactor: Any,
                 config: Optional[EngineIOConfig] = None
                 ) -> Tuple[RawEchoApp, EngineIOServer, str]:
    """
    Start a L{RawEchoApp} at C{/engine.io/} on a loopback port.

    @return: the app, its engine and the URL.
    """
    config = config if config is not None else EngineIOConfig()
    app = RawEchoApp(reactor)
    engine = EngineIOServer(app, reactor, config)
    engine.start()
    root = Resource()
    root.putChild(b"engine.io", EngineIOResource(engine, reactor))
    url = serve(testCase, reactor, root, config, engine.stop)
    return app, engine, url
