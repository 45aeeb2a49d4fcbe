"""
Tests for L{crm_im.socketio.server.SocketIOServer}: namespaces, the connect
handshake, events, acknowledgements, rooms and disconnection, driven
through its L{EngineIOServer} with fake WebSocket channels on a
L{task.Clock}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from crm_im._json import loads
from crm_im.engineio import packet as eio
from crm_im.engineio.packet import Frame
from crm_im.engineio.session import CLOSED, OPEN, EngineIOSession
from crm_im.socketio import ConnectionRefused, SocketIOServer
from crm_im.socketio.server import HELD_RELEASE_DELAY

from .test_eio_session import FakeChannel


class Client:
    """
    One Engine.IO session over a fake WebSocket, seen from the client side.
    """

    def __init__(self, sio: SocketIOServer) -> None:
        self.channel = FakeChannel()
        self.session: EngineIOSession = sio.engine.handshake("websocket", "127.0.0.1", channel=self.channel)
        self.read = 1  # the OPEN packet

    def send(self, data: bytes, binary: bool = False) -> None:
        """
        Send one Engine.IO MESSAGE (a Socket.IO packet or an attachment).
        """
        self.session.packetReceived(eio.MESSAGE, data, binary)

    def received(self) -> list[bytes]:
        """
        The Socket.IO packets (and raw attachments) received since last
        asked, text without the Engine.IO type digit.
        """
        frames = self.channel.frames[self.read :]
        self.read = len(self.channel.frames)
        result = []
        for frame in frames:
            if frame.binary:
                result.append(frame.data)
            else:
                assert frame.data[:1] == b"4", frame
                result.append(frame.data[1:])
        return result

    def connect(self, namespace: str = "/", auth: bytes = b"") -> str:
        """
        Connect to C{namespace}; the socket id the server gave.
        """
        prefix = b"0" if namespace == "/" else b"0" + namespace.encode() + b","
        self.send(prefix + auth)
        (answer,) = self.received()
        assert answer.startswith(prefix + b"{"), answer
        return loads(answer[len(prefix) :])["sid"]

    @property
    def open(self) -> bool:
        """
        Whether the Engine.IO session is open.
        """
        return self.session.state == OPEN


class ServerTestMixin:
    """
    A started L{SocketIOServer} on a L{Clock}, with handlers that record.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.sio = SocketIOServer(self.clock, connectTimeout=45.0)
        self.sio.start()
        self.calls: list[tuple[Any, ...]] = []

    def tearDown(self) -> None:
        self.sio.stop()

    def record(self, name: str, result: Any = None) -> Any:
        """
        A handler that records its call and returns C{result}.
        """

        def handler(*args: Any) -> Any:
            self.calls.append((name, *args))
            return result

        return handler

    def client(self) -> Client:
        """
        A new client session.
        """
        return Client(self.sio)


class ConnectTests(ServerTestMixin, SynchronousTestCase):
    """
    CONNECT and CONNECT_ERROR.
    """

    def test_connect(self) -> None:
        """
        CONNECT is answered with C{0{"sid":...}}; the connect handler gets
        the sid and the auth object (empty without one).
        """
        self.sio.on("connect", self.record("connect"))
        client = self.client()
        client.send(b"0")
        (answer,) = client.received()
        self.assertEqual(answer[:1], b"0")
        sid = loads(answer[1:])["sid"]
        self.assertEqual(len(sid), 20)
        self.assertEqual(self.calls, [("connect", sid, {})])
        self.assertIsNotNone(self.sio.getSocket(sid))
        self.assertEqual(self.sio.rooms(sid), {sid})

    def test_serviceLifecycle(self) -> None:
        """
        The server is a Twisted service: stopping the application it
        belongs to disconnects every socket ("server shutting down").
        """
        from twisted.application.service import MultiService

        self.sio.on("disconnect", self.record("disconnect"))
        application = MultiService()
        self.sio.setServiceParent(application)
        application.startService()
        client = self.client()
        sid = client.connect()
        application.stopService()
        self.assertEqual(self.calls, [("disconnect", sid, "server shutting down")])
        self.assertFalse(client.open)

    def test_connectWithAuth(self) -> None:
        """
        The CONNECT payload is the auth object.
        """
        self.sio.on("connect", self.record("connect"))
        self.client().connect(auth=b'{"token":"123"}')
        self.assertEqual(self.calls[0][2], {"token": "123"})

    def test_refused(self) -> None:
        """
        A connect handler raising L{ConnectionRefused} gets
        C{4{"message":...,"data":...}}; the socket is not connected.
        """

        def connect(sid: str, auth: Any) -> None:
            raise ConnectionRefused("Not authorized", {"code": "UNAUTHORIZED"})

        self.sio.on("connect", connect)
        self.sio.on("hello", self.record("hello"))
        client = self.client()
        client.send(b"0")
        self.assertEqual(
            client.received(), [b'4{"message":"Not authorized","data":{"code":"UNAUTHORIZED"}}']
        )
        self.assertEqual(self.sio.namespaces["/"].sockets, {})
        self.assertTrue(client.open)

    def test_refusedWithoutData(self) -> None:
        """
        L{ConnectionRefused} without data sends only the message.
        """

        def connect(sid: str, auth: Any) -> None:
            raise ConnectionRefused("nope")

        self.sio.on("connect", connect)
        client = self.client()
        client.send(b"0")
        self.assertEqual(client.received(), [b'4{"message":"nope"}'])

    def test_returnsFalse(self) -> None:
        """
        A connect handler returning C{False} refuses with the default
        message.
        """
        self.sio.on("connect", self.record("connect", False))
        client = self.client()
        client.send(b"0")
        self.assertEqual(client.received(), [b'4{"message":"Connection rejected by server"}'])

    def test_handlerFails(self) -> None:
        """
        A connect handler that fails refuses the connection; the failure is
        logged.
        """

        def connect(sid: str, auth: Any) -> None:
            raise RuntimeError("bug")

        self.sio.on("connect", connect)
        client = self.client()
        client.send(b"0")
        self.assertEqual(client.received(), [b'4{"message":"Connection rejected by server"}'])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_retryAfterRefusal(self) -> None:
        """
        A client refused once may try CONNECT again on the same session.
        """
        answers = [False, True]
        self.sio.on("connect", lambda sid, auth: answers.pop(0))
        client = self.client()
        client.send(b"0")
        client.received()
        client.connect()

    def test_deferredHandler(self) -> None:
        """
        A connect handler returning a L{Deferred} is answered when it
        fires; events the server sends meanwhile follow the CONNECT.
        """
        pending: list[Deferred[Any]] = []

        def connect(sid: str, auth: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            pending.append(d)
            self.sio.enterRoom(sid, "lobby")
            self.sio.emit("welcome", sid, to=sid)
            return d

        self.sio.on("connect", connect)
        client = self.client()
        client.send(b"0")
        self.assertEqual(client.received(), [])
        pending[0].callback(True)
        (answer,) = client.received()
        self.clock.advance(HELD_RELEASE_DELAY)
        (welcome,) = client.received()
        sid = loads(answer[1:])["sid"]
        self.assertEqual(welcome, b'2["welcome","%s"]' % (sid.encode(),))
        self.assertEqual(self.sio.rooms(sid), {sid, "lobby"})

    def test_emitsOfConnectHandlerOnALaterTurn(self) -> None:
        """
        What the connect handler emits follows the CONNECT on a later
        reactor turn, and the CONNECT is pushed to the network first: a
        client reads them as two messages (the official server's order,
        which the socket.io-protocol suite relies on). Emits made before
        that turn queue behind, in order.
        """

        def connect(sid: str, auth: Any) -> None:
            self.sio.emit("auth", auth, to=sid)

        self.sio.on("connect", connect)
        client = self.client()
        client.send(b'0{"token":"123"}')
        (answer,) = client.received()
        self.assertTrue(answer.startswith(b"0{"), answer)
        self.assertEqual(client.channel.flushes, 1)
        sid = loads(answer[1:])["sid"]
        self.sio.emit("second", to=sid)
        self.assertEqual(client.received(), [])
        self.clock.advance(HELD_RELEASE_DELAY)
        self.assertEqual(client.received(), [b'2["auth",{"token":"123"}]', b'2["second"]'])
        self.sio.emit("third", to=sid)
        self.assertEqual(client.received(), [b'2["third"]'])

    def test_deferredRefusal(self) -> None:
        """
        A L{Deferred} failing with L{ConnectionRefused} refuses; rooms
        joined meanwhile are left.
        """
        pending: list[Deferred[Any]] = []

        def connect(sid: str, auth: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            pending.append(d)
            self.sio.enterRoom(sid, "lobby")
            return d

        self.sio.on("connect", connect)
        client = self.client()
        client.send(b"0")
        pending[0].errback(ConnectionRefused("later", 1))
        self.assertEqual(client.received(), [b'4{"message":"later","data":1}'])
        self.assertEqual(self.sio.namespaces["/"].rooms, {})
        self.assertEqual(self.sio.namespaces["/"].sockets, {})

    def test_coroutineHandler(self) -> None:
        """
        A coroutine connect handler may await, accept or refuse.
        """
        gate: Deferred[bool] = Deferred()

        async def connect(sid: str, auth: Any) -> bool:
            return await gate

        self.sio.on("connect", connect)
        client = self.client()
        client.send(b"0")
        self.assertEqual(client.received(), [])
        gate.callback(True)
        (answer,) = client.received()
        self.assertEqual(answer[:2], b"0{")

        async def refuse(sid: str, auth: Any) -> None:
            raise ConnectionRefused("async no")

        self.sio.on("connect", refuse, namespace="/other")
        client.send(b"0/other,")
        self.assertEqual(client.received(), [b'4/other,{"message":"async no"}'])

    def test_sessionClosedWhilePending(self) -> None:
        """
        A session that closes while its connect handler is pending is not
        connected when the handler accepts, and nothing is sent.
        """
        gate: Deferred[bool] = Deferred()
        self.sio.on("connect", lambda sid, auth: gate)
        self.sio.on("disconnect", self.record("disconnect"))
        client = self.client()
        client.send(b"0")
        client.session.close()
        gate.callback(True)
        self.assertEqual(self.sio.namespaces["/"].sockets, {})
        self.assertEqual(self.calls, [])

    def test_closedSessionLeavesNoCycle(self) -> None:
        """
        A closed session no longer refers to its Socket.IO connection
        (which refers to it): with the cycle collector off, both are freed
        as soon as nobody holds them. (The server raises the collector's
        thresholds; every closed connection's cycle piled up in the oldest
        generation, seen by C{bench/churn.py}.)
        """
        import gc
        import weakref

        self.sio.on("connect", self.record("connect"))
        client = self.client()
        client.connect()
        connection = weakref.ref(client.session.appState)
        session = weakref.ref(client.session)
        client.session.close()
        self.assertIsNone(client.session.appState)
        gc.disable()
        try:
            del client
            self.calls.clear()
            self.assertIsNone(connection())
            self.assertIsNone(session())
        finally:
            gc.enable()

    def test_unknownNamespace(self) -> None:
        """
        CONNECT to a namespace nobody registered gets
        C{4/x,{"message":"Invalid namespace"}}; the session stays open.
        """
        client = self.client()
        client.send(b"0/x,")
        self.assertEqual(client.received(), [b'4/x,{"message":"Invalid namespace"}'])
        self.assertTrue(client.open)
        client.connect()

    def test_twoNamespaces(self) -> None:
        """
        One session may connect to two namespaces; each gets its own sid
        and its own events.
        """
        self.sio.on("ping", self.record("root"))
        self.sio.on("ping", self.record("admin"), namespace="/admin")
        client = self.client()
        rootSid = client.connect()
        adminSid = client.connect("/admin", b'{"token":"t"}')
        self.assertNotEqual(rootSid, adminSid)
        client.send(b'2["ping",1]')
        client.send(b'2/admin,["ping",2]')
        self.assertEqual(self.calls, [("root", rootSid, 1), ("admin", adminSid, 2)])
        self.sio.emit("news", namespace="/admin")
        self.assertEqual(client.received(), [b'2/admin,["news"]'])

    def test_connectTimeout(self) -> None:
        """
        A session that never connects to a namespace is closed after
        connectTimeout; one that connects is not.
        """
        idle = self.client()
        busy = self.client()
        busy.connect()
        self.clock.pump([0.25] * 120)
        busy.session.packetReceived(eio.PONG, b"")
        self.clock.pump([0.25] * 59)
        self.assertTrue(idle.open)
        self.clock.pump([0.25] * 2)
        self.assertFalse(idle.open)
        self.assertTrue(idle.channel.closed)
        self.assertTrue(busy.open)

    def test_connectTimeoutAfterRefusal(self) -> None:
        """
        A session whose connection was refused is still subject to the
        connect timeout.
        """
        self.sio.on("connect", self.record("connect", False))
        client = self.client()
        client.send(b"0")
        self.clock.pump([0.25] * 181)
        self.assertFalse(client.open)

    def test_secondConnect(self) -> None:
        """
        A second CONNECT to a namespace already connected closes the
        session.
        """
        client = self.client()
        client.connect()
        client.send(b"0")
        self.assertFalse(client.open)


class EventTests(ServerTestMixin, SynchronousTestCase):
    """
    Events and acknowledgements.
    """

    def test_event(self) -> None:
        """
        An event reaches its handler with the sid and its arguments;
        without an ack id nothing is sent back.
        """
        self.sio.on("hello", self.record("hello", "ignored"))
        client = self.client()
        sid = client.connect()
        client.send(b'2["hello",1,{"a":[true]}]')
        self.assertEqual(self.calls, [("hello", sid, 1, {"a": [True]})])
        self.assertEqual(client.received(), [])

    def test_unhandledEvent(self) -> None:
        """
        An event without a handler is ignored.
        """
        client = self.client()
        client.connect()
        client.send(b'213["nobody"]')
        self.assertEqual(client.received(), [])
        self.assertTrue(client.open)

    def test_ack(self) -> None:
        """
        An event with an ack id is answered with C{3<id>[...]}: the return
        value, a tuple as several arguments, C{None} as none.
        """
        self.sio.on("one", self.record("one", "x"))
        self.sio.on("many", self.record("many", (1, "two", [3])))
        self.sio.on("none", self.record("none", None))
        client = self.client()
        client.connect()
        client.send(b'212["one"]')
        client.send(b'213["many"]')
        client.send(b'214["none"]')
        self.assertEqual(client.received(), [b'312["x"]', b'313[1,"two",[3]]', b"314[]"])

    def test_ackNamespace(self) -> None:
        """
        An ack in another namespace carries it.
        """
        self.sio.on("q", self.record("q", "a"), namespace="/admin")
        client = self.client()
        client.connect("/admin")
        client.send(b'2/admin,7["q"]')
        self.assertEqual(client.received(), [b'3/admin,7["a"]'])

    def test_binaryAck(self) -> None:
        """
        An ack with bytes is a BINARY_ACK followed by its attachment.
        """
        self.sio.on("file", self.record("file", {"data": b"\x00\x01"}))
        client = self.client()
        client.connect()
        client.send(b'25["file"]')
        self.assertEqual(
            client.received(), [b'61-5[{"data":{"_placeholder":true,"num":0}}]', b"\x00\x01"]
        )

    def test_binaryEvent(self) -> None:
        """
        A BINARY_EVENT reaches the handler with its attachments in place.
        """
        self.sio.on("upload", self.record("upload", "ok"))
        client = self.client()
        sid = client.connect()
        client.send(b'51-9["upload",{"name":"a","data":{"_placeholder":true,"num":0}}]')
        self.assertEqual(self.calls, [])
        client.send(b"\xde\xad", binary=True)
        self.assertEqual(self.calls, [("upload", sid, {"name": "a", "data": b"\xde\xad"})])
        self.assertEqual(client.received(), [b'39["ok"]'])

    def test_deferredAck(self) -> None:
        """
        A handler returning a L{Deferred} (or a coroutine) is acked when it
        fires.
        """
        gate: Deferred[str] = Deferred()
        self.sio.on("slow", lambda sid: gate)

        async def coro(sid: str, n: int) -> int:
            return n * 2

        self.sio.on("coro", coro)
        client = self.client()
        client.connect()
        client.send(b'21["slow"]')
        client.send(b'22["coro",21]')
        self.assertEqual(client.received(), [b"32[42]"])
        gate.callback("done")
        self.assertEqual(client.received(), [b'31["done"]'])

    def test_handlerFails(self) -> None:
        """
        A failing handler is logged; no ack is sent and the session stays
        open.
        """

        def bad(sid: str) -> None:
            raise ValueError("bug")

        self.sio.on("bad", bad)
        client = self.client()
        client.connect()
        client.send(b'21["bad"]')
        self.assertEqual(client.received(), [])
        self.assertTrue(client.open)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)

    def test_emitWithCallback(self) -> None:
        """
        A server emit with a callback carries an ack id; the client's ACK
        calls the callback with its arguments, once.
        """
        client = self.client()
        sid = client.connect()
        got: list[tuple[Any, ...]] = []
        self.sio.emit("question", 1, to=sid, callback=lambda *args: got.append(args))
        self.sio.emit("question", 2, to=sid, callback=lambda *args: got.append(("second", *args)))
        self.assertEqual(client.received(), [b'20["question",1]', b'21["question",2]'])
        client.send(b'31["b"]')
        client.send(b'30["a",{"x":1}]')
        client.send(b'30["again"]')
        client.send(b'399["unknown"]')
        self.assertEqual(got, [("second", "b"), ("a", {"x": 1})])
        self.assertTrue(client.open)

    def test_binaryAckFromClient(self) -> None:
        """
        A client's BINARY_ACK gives the callback the bytes.
        """
        client = self.client()
        sid = client.connect()
        got: list[Any] = []
        self.sio.emit("give", to=sid, callback=lambda data: got.append(data))
        client.send(b'61-0[{"_placeholder":true,"num":0}]')
        client.send(b"\x07", binary=True)
        self.assertEqual(got, [b"\x07"])

    def test_emitCallbackNeedsOneSid(self) -> None:
        """
        A callback is refused for a broadcast or an unknown sid.
        """
        self.assertRaises(ValueError, self.sio.emit, "x", callback=lambda: None)
        self.assertRaises(ValueError, self.sio.emit, "x", to="nobody", callback=lambda: None)

    def test_binaryEmit(self) -> None:
        """
        A server emit with bytes is a BINARY_EVENT and its attachments.
        """
        client = self.client()
        sid = client.connect()
        self.sio.emit("file", {"data": b"\x01\x02"}, to=sid)
        self.assertEqual(
            client.received(), [b'51-["file",{"data":{"_placeholder":true,"num":0}}]', b"\x01\x02"]
        )


class RoomTests(ServerTestMixin, SynchronousTestCase):
    """
    Rooms and broadcasts.
    """

    def test_rooms(self) -> None:
        """
        An emit to a room reaches its members only; leaving a room stops
        that; C{skipSid} leaves out the sender.
        """
        a, b, c = self.client(), self.client(), self.client()
        sa, sb, sc = a.connect(), b.connect(), c.connect()
        self.sio.enterRoom(sa, "team")
        self.sio.enterRoom(sb, "team")
        self.assertEqual(self.sio.rooms(sa), {sa, "team"})
        self.sio.emit("hi", to="team")
        self.assertEqual([a.received(), b.received(), c.received()], [[b'2["hi"]'], [b'2["hi"]'], []])
        self.sio.emit("hi", to="team", skipSid=sa)
        self.assertEqual([a.received(), b.received(), c.received()], [[], [b'2["hi"]'], []])
        self.sio.leaveRoom(sb, "team")
        self.sio.emit("hi", to="team")
        self.assertEqual([a.received(), b.received(), c.received()], [[b'2["hi"]'], [], []])
        self.sio.leaveRoom(sa, "team")
        self.assertEqual(self.sio.namespaces["/"].rooms, {})

    def test_noRoomsShared(self) -> None:
        """
        Sockets that joined no room share one empty set of rooms; joining
        gives a socket its own, and leaving a room it is not in changes
        nothing.
        """
        a, b = self.client(), self.client()
        sa, sb = a.connect(), b.connect()
        socketA, socketB = self.sio.getSocket(sa), self.sio.getSocket(sb)
        assert socketA is not None and socketB is not None
        self.assertIs(socketA.rooms, socketB.rooms)
        self.sio.leaveRoom(sa, "team")
        self.assertEqual(self.sio.rooms(sa), {sa})
        self.sio.enterRoom(sa, "team")
        self.assertEqual((socketA.rooms, socketB.rooms), ({"team"}, frozenset()))
        self.assertEqual(self.sio.rooms(sb), {sb})

    def test_everyoneAndSeveral(self) -> None:
        """
        An emit to nobody in particular reaches everyone; to several rooms
        and sids, each socket once.
        """
        a, b, c = self.client(), self.client(), self.client()
        sa, sb, sc = a.connect(), b.connect(), c.connect()
        self.sio.enterRoom(sa, "r1")
        self.sio.enterRoom(sa, "r2")
        self.sio.enterRoom(sb, "r2")
        self.sio.emit("all")
        self.sio.emit("some", to=["r1", "r2", sc, sa])
        for client in (a, b, c):
            self.assertEqual(client.received(), [b'2["all"]', b'2["some"]'])

    def test_broadcastEncodesOnce(self) -> None:
        """
        A broadcast sends the very same L{Frame} objects to every
        recipient.
        """
        clients = [self.client() for _ in range(3)]
        for client in clients:
            self.sio.enterRoom(client.connect(), "room")
        self.sio.emit("blob", b"\x00" * 10, to="room")
        sent: list[list[Frame]] = [client.channel.frames[-2:] for client in clients]
        for frames in sent[1:]:
            self.assertIs(frames[0], sent[0][0])
            self.assertIs(frames[1], sent[0][1])

    def test_broadcastSkipsClosed(self) -> None:
        """
        A member whose session closed is out of its rooms; the others still
        get the broadcast.
        """
        a, b = self.client(), self.client()
        sa, sb = a.connect(), b.connect()
        self.sio.enterRoom(sa, "room")
        self.sio.enterRoom(sb, "room")
        a.session.close()
        self.sio.emit("x", to="room")
        self.assertEqual(b.received(), [b'2["x"]'])
        self.assertEqual(self.sio.namespaces["/"].rooms["room"], {self.sio.getSocket(sb)})

    def test_unknownSid(self) -> None:
        """
        Room operations on an unknown sid do nothing.
        """
        self.sio.enterRoom("nobody", "room")
        self.sio.leaveRoom("nobody", "room")
        self.assertEqual(self.sio.rooms("nobody"), set())
        self.sio.emit("x", to="nobody")
        self.sio.emit("x", namespace="/unregistered")


class DisconnectTests(ServerTestMixin, SynchronousTestCase):
    """
    Disconnection from either side, and bad input.
    """

    def setUp(self) -> None:
        super().setUp()
        self.sio.on("disconnect", self.record("disconnect"))

    def test_serverDisconnect(self) -> None:
        """
        The server disconnecting a socket sends C{1} and calls the
        disconnect handler with "server namespace disconnect"; the session
        stays open.
        """
        client = self.client()
        sid = client.connect()
        self.sio.enterRoom(sid, "room")
        self.sio.disconnect(sid)
        self.assertEqual(client.received(), [b"1"])
        self.assertEqual(self.calls, [("disconnect", sid, "server namespace disconnect")])
        self.assertIsNone(self.sio.getSocket(sid))
        self.assertEqual(self.sio.namespaces["/"].rooms, {})
        self.assertTrue(client.open)

    def test_serverDisconnectClosingConnection(self) -> None:
        """
        With closeConnection, the whole session is closed too.
        """
        client = self.client()
        sid = client.connect()
        self.sio.disconnect(sid, closeConnection=True)
        self.assertEqual(client.received(), [b"1"])
        self.assertFalse(client.open)
        self.assertEqual(len(self.calls), 1)

    def test_serverDisconnectNamespace(self) -> None:
        """
        A DISCONNECT in another namespace names it.
        """
        self.sio.namespace("/admin")
        client = self.client()
        sid = client.connect("/admin")
        self.sio.disconnect(sid, namespace="/admin")
        self.assertEqual(client.received(), [b"1/admin,"])

    def test_clientDisconnect(self) -> None:
        """
        A client DISCONNECT calls the handler with "client namespace
        disconnect"; the session stays open and may connect again.
        """
        client = self.client()
        sid = client.connect()
        client.send(b"1")
        self.assertEqual(self.calls, [("disconnect", sid, "client namespace disconnect")])
        self.assertIsNone(self.sio.getSocket(sid))
        self.assertTrue(client.open)
        client.connect()

    def test_transportClose(self) -> None:
        """
        The session closing disconnects every socket with its reason.
        """
        self.sio.on("disconnect", self.record("admin-disconnect"), namespace="/admin")
        client = self.client()
        sid = client.connect()
        adminSid = client.connect("/admin")
        client.session.channelClosed(client.channel)
        self.assertEqual(
            sorted(self.calls),
            [("admin-disconnect", adminSid, "transport close"), ("disconnect", sid, "transport close")],
        )

    def test_malformedClosesOnlyThatSession(self) -> None:
        """
        A malformed packet closes its session ("parse error"), disconnecting
        its sockets; another session is unaffected.
        """
        bad, good = self.client(), self.client()
        badSid, goodSid = bad.connect(), good.connect()
        bad.send(b'2["unterminated"')
        self.assertFalse(bad.open)
        self.assertEqual(self.calls, [("disconnect", badSid, "parse error")])
        self.assertTrue(good.open)
        self.sio.emit("still", to=goodSid)
        self.assertEqual(good.received(), [b'2["still"]'])

    def test_malformedTable(self) -> None:
        """
        Each kind of bad input closes the session.
        """
        for data, binary in [
            (b"9", False),
            (b'2["connect"]', False),
            (b"\x00", True),
            (b'1{"x":1}', False),
            (b'4{"message":"x"}', False),
            (b'51-["x",{"_placeholder":true,"num":"0"}]', False),
        ]:
            with self.subTest(data=data):
                client = self.client()
                client.connect()
                client.send(data, binary)
                if client.open:
                    client.send(b"\x00", binary=True)
                self.assertFalse(client.open)

    def test_eventForNamespaceNotConnected(self) -> None:
        """
        An event for a namespace the session is not connected to closes
        the session.
        """
        self.sio.namespace("/admin")
        client = self.client()
        client.connect()
        client.send(b'2/admin,["x"]')
        self.assertFalse(client.open)
        self.assertEqual(client.session.state, CLOSED)

    def test_eventBeforeConnect(self) -> None:
        """
        An event before any CONNECT closes the session.
        """
        client = self.client()
        client.send(b'2["x"]')
        self.assertFalse(client.open)

    def test_stop(self) -> None:
        """
        Stopping the server closes every session with "server shutting
        down".
        """
        client = self.client()
        sid = client.connect()
        self.sio.stop()
        self.assertEqual(self.calls, [("disconnect", sid, "server shutting down")])
        self.assertTrue(client.channel.closed)
