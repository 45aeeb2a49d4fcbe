"""
Tests for L{crm_im.engineio.websocket}: the Autobahn glue, driven through a
real L{EngineIOSite} over a L{StringTransport}, with a real WebSocket
client handshake and masked frames written by hand, on a
L{MemoryReactorClock} (which also runs Autobahn's timers through txaio).
"""

from __future__ import annotations

import struct
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransportWithDisconnection
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from crm_im._json import loads
from crm_im.engineio.config import EngineIOConfig
from crm_im.engineio.packet import FrameBatch, binaryFrame, messageFrame
from crm_im.engineio.resource import EngineIOResource
from crm_im.engineio.server import EngineIOServer
from crm_im.engineio.session import CLOSED, OPEN
from crm_im.engineio.site import EngineIOSite
from crm_im.engineio import websocket
from crm_im.engineio.websocket import EngineIOWebSocketProtocol, webSocketFrame

from .test_eio_session import RecordingApp, sequentialSids

TEXT, BINARY, CLOSE, PING, PONG = 1, 2, 8, 9, 10


def clientFrame(payload: bytes, opcode: int = TEXT, mask: bytes = b"\x37\xfa\x21\x3d") -> bytes:
    """
    One masked, final WebSocket frame, as a client sends it.
    """
    length = len(payload)
    head = bytes([0x80 | opcode])
    if length < 126:
        head += bytes([0x80 | length])
    elif length < 2**16:
        head += bytes([0x80 | 126]) + struct.pack("!H", length)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", length)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def parseFrames(data: bytes) -> list[tuple[int, bytes]]:
    """
    The (unmasked, unfragmented) frames a server wrote.
    """
    frames = []
    while data:
        opcode = data[0] & 0x0F
        length = data[1] & 0x7F
        i = 2
        if length == 126:
            (length,) = struct.unpack("!H", data[2:4])
            i = 4
        elif length == 127:
            (length,) = struct.unpack("!Q", data[2:10])
            i = 10
        assert not data[1] & 0x80, "server frames are not masked"
        frames.append((opcode, data[i : i + length]))
        data = data[i + length :]
    return frames


class Connection:
    """
    One client connection to the site over a string transport.
    """

    def __init__(self, site: EngineIOSite, port: int = 40000) -> None:
        address = IPv4Address("TCP", "127.0.0.1", port)
        self.transport = StringTransportWithDisconnection(peerAddress=address)
        protocol = site.buildProtocol(address)
        # Like a real TCP transport, the transport knows its protocol;
        # Autobahn's resource swaps it when it takes the connection over.
        self.transport.protocol = protocol
        self.httpProtocol = protocol
        protocol.makeConnection(self.transport)
        self.response = b""
        self.buffer = b""

    def send(self, data: bytes) -> None:
        """
        Deliver bytes to whatever protocol owns the connection now.
        """
        self.transport.protocol.dataReceived(data)

    def upgrade(self, query: str, extraHeaders: bytes = b"") -> bytes:
        """
        Send a WebSocket handshake for C{query}; the HTTP response head.
        """
        self.send(
            b"GET /engine.io/?" + query.encode() + b" HTTP/1.1\r\n"
            b"Host: example.com\r\n"
            b"Upgrade: websocket\r\n"
            b"Connection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n" + extraHeaders + b"\r\n"
        )
        data = self.transport.value()
        self.transport.clear()
        head, _, rest = data.partition(b"\r\n\r\n")
        self.response = head
        self.buffer = rest
        return head

    def frames(self) -> list[tuple[int, bytes]]:
        """
        The frames the server wrote since last asked.
        """
        data = self.buffer + self.transport.value()
        self.buffer = b""
        self.transport.clear()
        return parseFrames(data)

    @property
    def protocol(self) -> Any:
        """
        The protocol that owns the connection.
        """
        return self.transport.protocol


class WebSocketTestMixin:
    """
    An L{EngineIOSite} serving an Engine.IO endpoint on a memory reactor.
    """

    config = EngineIOConfig(maxPayload=1000)

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.app = RecordingApp()
        self.engine = EngineIOServer(self.app, self.reactor, self.config, newSid=sequentialSids())
        self.engine.start()
        root = Resource()
        root.putChild(b"engine.io", EngineIOResource(self.engine, self.reactor))
        self.site = EngineIOSite(root, self.config, reactor=self.reactor)

    def advance(self, seconds: float) -> None:
        """
        Advance the reactor in quarter seconds.
        """
        for _ in range(int(seconds * 4)):
            self.reactor.advance(0.25)

    def openWebSocket(self) -> Connection:
        """
        A session opened directly over WebSocket; its OPEN packet read.
        """
        connection = Connection(self.site)
        head = connection.upgrade("EIO=4&transport=websocket")
        assert head.startswith(b"HTTP/1.1 101 "), head
        frames = connection.frames()
        assert len(frames) == 1 and frames[0][1][:1] == b"0", frames
        return connection


class DirectWebSocketTests(WebSocketTestMixin, SynchronousTestCase):
    """
    Sessions opened directly over WebSocket.
    """

    def test_openPacket(self) -> None:
        """
        The upgrade answers 101, then the OPEN packet comes as a text frame,
        without upgrades.
        """
        connection = Connection(self.site)
        head = connection.upgrade("EIO=4&transport=websocket")
        self.assertTrue(head.startswith(b"HTTP/1.1 101 "), head)
        self.assertIn(b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", head)
        ((opcode, payload),) = connection.frames()
        self.assertEqual(opcode, TEXT)
        self.assertEqual(payload[:1], b"0")
        fields = loads(payload[1:])
        self.assertEqual(fields["sid"], "sid1")
        self.assertEqual(fields["upgrades"], [])
        self.assertEqual(fields["maxPayload"], 1000)
        session = self.engine.sessions["sid1"]
        self.assertEqual(session.transportName, "websocket")
        self.assertEqual(session.remoteAddress, "127.0.0.1")
        self.assertEqual(self.app.opened, [session])

    def test_compressionOfferDeclined(self) -> None:
        """
        A client offering permessage-deflate (every browser, Node's C{ws})
        is accepted without compression, on every connection (the options
        are shared by a per-factory class: a function option must stay a
        plain function there).
        """
        for port in (40001, 40002):
            connection = Connection(self.site, port)
            head = connection.upgrade(
                "EIO=4&transport=websocket",
                b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
            )
            self.assertTrue(head.startswith(b"HTTP/1.1 101 "), head)
            self.assertNotIn(b"permessage-deflate", head)
            self.assertEqual(connection.frames()[0][1][:1], b"0")

    def test_pingOnSchedule(self) -> None:
        """
        PING comes every pingInterval while the client answers PONG.
        """
        connection = self.openWebSocket()
        self.advance(24.75)
        self.assertEqual(connection.frames(), [])
        self.advance(0.5)
        self.assertEqual(connection.frames(), [(TEXT, b"2")])
        connection.send(clientFrame(b"3"))
        self.advance(25)
        self.assertEqual(connection.frames(), [(TEXT, b"2")])

    def test_pingTimeout(self) -> None:
        """
        A client that does not PONG is disconnected with "ping timeout".
        """
        connection = self.openWebSocket()
        self.advance(25.25 + 20.25)
        frames = connection.frames()
        self.assertEqual(frames[0], (TEXT, b"2"))
        self.assertEqual(frames[1][0], CLOSE)
        self.assertEqual(self.app.closed[0][1], "ping timeout")

    def test_messageReachesApp(self) -> None:
        """
        Text and binary message frames reach the application.
        """
        connection = self.openWebSocket()
        connection.send(clientFrame('4hello €'.encode()))
        connection.send(clientFrame(b"\x00\x01\x02", BINARY))
        self.assertEqual(
            [(data, binary) for _, data, binary in self.app.messages],
            [("hello €".encode(), False), (b"\x00\x01\x02", True)],
        )

    def test_appSends(self) -> None:
        """
        What the application sends is written as one frame per packet,
        text or binary.
        """
        connection = self.openWebSocket()
        session = self.app.opened[0]
        session.send(messageFrame(b"hi"))
        session.send(binaryFrame(b"\xff\x00"))
        self.assertEqual(connection.frames(), [(TEXT, b"4hi"), (BINARY, b"\xff\x00")])

    def countFraming(self) -> list[bytes]:
        """
        Record every payload framed from now on.

        @return: the list the payloads go to.
        """
        framed: list[bytes] = []

        def countingFrame(payload: bytes, binary: bool) -> bytes:
            framed.append(payload)
            return webSocketFrame(payload, binary)

        self.patch(websocket, "webSocketFrame", countingFrame)
        return framed

    def test_preparedOnce(self) -> None:
        """
        A frame sent to several sessions is framed once.
        """
        connections = [self.openWebSocket() for _ in range(3)]
        framed = self.countFraming()
        frame = messageFrame(b"broadcast")
        for session in self.app.opened:
            session.send(frame)
        for connection in connections:
            self.assertEqual(connection.frames(), [(TEXT, b"4broadcast")])
        self.assertEqual(framed, [b"4broadcast"])
        self.assertEqual(frame.prepared, webSocketFrame(b"4broadcast", False))

    def test_batchAsSeparateMessages(self) -> None:
        """
        A L{FrameBatch} is written at once, each of its packets its own
        WebSocket message, framed once for all the sessions it goes to and
        with the parts' cached frames reused.
        """
        connections = [self.openWebSocket() for _ in range(3)]
        framed = self.countFraming()
        first = messageFrame(b"first")
        first.prepared = webSocketFrame(b"4first", False)
        batch = FrameBatch([first, messageFrame(b"second"), messageFrame(b"third")])
        for session in self.app.opened:
            session.send(batch)
        for connection in connections:
            self.assertEqual(connection.frames(), [(TEXT, b"4first"), (TEXT, b"4second"), (TEXT, b"4third")])
        self.assertEqual(framed, [b"4second", b"4third"])

    def test_openConnectionCompact(self) -> None:
        """
        An open connection keeps none of the Autobahn objects it never
        uses; a sync write still gets Autobahn's queue (after what the
        session wrote), and listeners can still be registered for
        Autobahn's events only.
        """
        connection = self.openWebSocket()
        protocol = connection.protocol
        for name in ("send_queue", "trafficStats", "_transport_details", "_valid_events", "_results"):
            self.assertNotIn(name, protocol.__dict__)
        self.assertLessEqual(len(protocol.__dict__), 10, sorted(protocol.__dict__))
        self.app.opened[0].send(messageFrame(b"first"))
        protocol.sendData(webSocketFrame(b"4second", False), sync=True)
        self.reactor.advance(1)
        self.assertEqual(connection.frames(), [(TEXT, b"4first"), (TEXT, b"4second")])
        protocol.on("message", lambda *args: None)
        self.assertRaises(RuntimeError, protocol.on, "nonsense", lambda *args: None)

    def test_optionsNotListedPerConnection(self) -> None:
        """
        A connection reads Autobahn's options from its class: Autobahn
        neither copies them into it nor pretty-prints their list (which
        was half the CPU of a connection's set-up), and the server's
        bounds still apply to it.
        """
        from autobahn.websocket import protocol as autobahnProtocol

        listed: list[object] = []

        def pformat(value: object) -> str:
            listed.append(value)
            return ""

        self.patch(autobahnProtocol, "pformat", pformat)
        protocol = self.openWebSocket().protocol
        self.assertEqual([value for value in listed if value], [])
        self.assertEqual(protocol.maxMessagePayloadSize, self.config.maxPayload)
        self.assertEqual(protocol.openHandshakeTimeout, 10)
        self.assertNotIn("maxMessagePayloadSize", protocol.__dict__)

    def test_webSocketFrameMatchesAutobahn(self) -> None:
        """
        L{webSocketFrame} builds the frame Autobahn's C{PreparedMessage}
        builds, for each of the three length encodings, text and binary.
        """
        from autobahn.websocket.protocol import PreparedMessage

        for size in (0, 1, 125, 126, 127, 65535, 65536, 70000):
            payload = bytes(range(256)) * (size // 256) + bytes(range(size % 256))
            for binary in (False, True):
                self.assertEqual(
                    webSocketFrame(payload, binary),
                    PreparedMessage(payload, binary, False, True).payloadHybi,
                    (size, binary),
                )

    def test_httpTimeoutDoesNotCloseWebSocket(self) -> None:
        """
        The HTTP channel's idle timeout (the Site's) does not close an
        upgraded connection: after far longer than it, with the client
        answering PINGs, the connection is still open.
        """
        connection = self.openWebSocket()
        timeout = self.site.timeOut
        for _ in range(int(timeout * 3 / 25) + 2):
            self.advance(25.25)
            connection.frames()
            connection.send(clientFrame(b"3"))
        self.assertTrue(connection.transport.connected)
        self.assertFalse(connection.transport.disconnecting)
        self.assertEqual(self.app.opened[0].state, OPEN)
        self.assertEqual(self.app.closed, [])
        # Nothing is left that could time the HTTP channel out later.
        self.assertIsNone(connection.httpProtocol._channel.timeOut)

    def test_frameOverMaxPayload(self) -> None:
        """
        A frame larger than maxPayload drops the connection and closes the
        session.
        """
        connection = self.openWebSocket()
        connection.send(clientFrame(b"4" + b"x" * 1000))
        self.assertFalse(connection.transport.connected)
        self.assertEqual(self.app.messages, [])
        self.assertEqual(self.app.opened[0].state, CLOSED)
        self.assertEqual(self.app.closed[0][1], "transport close")

    def test_frameAtMaxPayload(self) -> None:
        """
        A frame of exactly maxPayload bytes is accepted.
        """
        connection = self.openWebSocket()
        connection.send(clientFrame(b"4" + b"x" * 999))
        self.assertEqual(len(self.app.messages[0][1]), 999)

    def test_malformedPacket(self) -> None:
        """
        A text frame that is not an Engine.IO packet closes the session
        with "parse error".
        """
        connection = self.openWebSocket()
        connection.send(clientFrame(b"9what"))
        self.assertEqual(self.app.closed[0][1], "parse error")
        self.assertEqual(connection.frames()[-1][0], CLOSE)

    def test_clientCloses(self) -> None:
        """
        The connection going away closes the session with "transport
        close".
        """
        connection = self.openWebSocket()
        connection.transport.loseConnection()
        self.assertEqual(self.app.closed[0][1], "transport close")
        self.assertEqual(self.engine.sessions, {})

    def test_noCycleLeft(self) -> None:
        """
        Nothing of a finished WebSocket connection waits for the cycle
        collector: the HTTP channel that accepted the upgrade does not keep
        its request (which keeps the channel), and the protocol's
        C{is_closed} does not hold the protocol. (The server raises the
        collector's thresholds; every closed connection's cycles piled up
        in the oldest generation, seen by C{bench/churn.py}.)
        """
        connection = self.openWebSocket()
        self.assertEqual(connection.httpProtocol._channel.requests, [])
        protocol = connection.protocol
        connection.transport.loseConnection()
        self.assertEqual(self.app.closed[0][1], "transport close")
        self.assertIsNone(self.successResultOf(protocol.is_closed))

    def test_serverCloses(self) -> None:
        """
        Closing the session sends a normal WebSocket close.
        """
        connection = self.openWebSocket()
        self.app.opened[0].close()
        ((opcode, payload),) = connection.frames()
        self.assertEqual((opcode, payload[:2]), (CLOSE, b"\x03\xe8"))

    def test_backPressure(self) -> None:
        """
        The transport's back-pressure pauses the session's writes (queued,
        bounded) and resuming writes them in order.
        """
        connection = self.openWebSocket()
        session = self.app.opened[0]
        producer = connection.transport.producer
        self.assertIsNotNone(producer)
        producer.pauseProducing()
        session.send(messageFrame(b"a"))
        session.send(messageFrame(b"b"))
        self.assertEqual(connection.frames(), [])
        self.assertEqual(session.queuedPackets, 2)
        producer.resumeProducing()
        self.assertEqual(connection.frames(), [(TEXT, b"4a"), (TEXT, b"4b")])

    def test_refusedUpgrade(self) -> None:
        """
        A WebSocket upgrade with a bad query is refused at the HTTP layer.
        """
        connection = Connection(self.site)
        head = connection.upgrade("EIO=3&transport=websocket")
        self.assertTrue(head.startswith(b"HTTP/1.1 400 "), head)
        self.assertEqual(loads(connection.buffer), {"code": 5, "message": "Unsupported protocol version"})


class UpgradeOverWebSocketTests(WebSocketTestMixin, SynchronousTestCase):
    """
    Upgrading a polling session over a real WebSocket connection.
    """

    def test_upgrade(self) -> None:
        """
        C{2probe}/C{3probe} then C{5} moves the session to the WebSocket;
        what was sent meanwhile comes first on it.
        """
        session = self.engine.handshake("polling")
        session._takeQueue()
        connection = Connection(self.site)
        head = connection.upgrade("EIO=4&transport=websocket&sid=" + session.sid)
        self.assertTrue(head.startswith(b"HTTP/1.1 101 "), head)
        self.assertEqual(connection.frames(), [])
        self.assertTrue(session.upgrading)
        connection.send(clientFrame(b"2probe"))
        self.assertEqual(connection.frames(), [(TEXT, b"3probe")])
        session.send(messageFrame(b"during"))
        connection.send(clientFrame(b"5"))
        self.assertEqual(connection.frames(), [(TEXT, b"4during")])
        self.assertEqual(session.transportName, "websocket")
        connection.send(clientFrame(b"4up"))
        self.assertEqual(self.app.messages[-1][1], b"up")

    def test_alreadyUpgraded(self) -> None:
        """
        A WebSocket with the sid of an already-upgraded session completes
        its handshake and is then closed (what the official server does and
        the compliance suites check), leaving the session alone.
        """
        session = self.engine.handshake("polling")
        first = Connection(self.site)
        first.upgrade("EIO=4&transport=websocket&sid=" + session.sid)
        first.send(clientFrame(b"2probe"))
        first.send(clientFrame(b"5"))
        self.assertEqual(session.transportName, "websocket")
        second = Connection(self.site, 40001)
        head = second.upgrade("EIO=4&transport=websocket&sid=" + session.sid)
        self.assertTrue(head.startswith(b"HTTP/1.1 101 "), head)
        self.assertEqual(second.frames(), [(CLOSE, struct.pack("!H", 1000))])
        self.assertEqual(session.state, OPEN)
        first.send(clientFrame(b"4still"))
        self.assertEqual(self.app.messages[-1][1], b"still")

    def test_probeClosed(self) -> None:
        """
        A probing WebSocket that goes away leaves the session on polling.
        """
        session = self.engine.handshake("polling")
        connection = Connection(self.site)
        connection.upgrade("EIO=4&transport=websocket&sid=" + session.sid)
        connection.send(clientFrame(b"2probe"))
        connection.transport.loseConnection()
        self.assertFalse(session.upgrading)
        self.assertEqual((session.state, session.transportName), (OPEN, "polling"))

    def test_upgradeTimeout(self) -> None:
        """
        A probe that never sends C{5} is closed after upgradeTimeout.
        """
        session = self.engine.handshake("polling")
        connection = Connection(self.site)
        connection.upgrade("EIO=4&transport=websocket&sid=" + session.sid)
        connection.send(clientFrame(b"2probe"))
        connection.frames()
        self.advance(10.5)
        self.assertFalse(session.upgrading)
        self.assertEqual(connection.frames()[0][0], CLOSE)
        self.assertEqual(session.state, OPEN)

    def test_binaryDuringProbe(self) -> None:
        """
        A binary frame on the probing WebSocket aborts the upgrade.
        """
        session = self.engine.handshake("polling")
        connection = Connection(self.site)
        connection.upgrade("EIO=4&transport=websocket&sid=" + session.sid)
        connection.send(clientFrame(b"\x01", BINARY))
        self.assertFalse(session.upgrading)
        self.assertEqual(self.app.messages, [])

    def test_protocolClass(self) -> None:
        """
        The connection is served by L{EngineIOWebSocketProtocol}.
        """
        connection = self.openWebSocket()
        self.assertIsInstance(connection.protocol, EngineIOWebSocketProtocol)


class FastPathTests(WebSocketTestMixin, SynchronousTestCase):
    """
    L{EngineIOWebSocketProtocol.dataReceived} takes complete small data
    frames itself and hands everything else to Autobahn; the two must stay
    aligned on frame boundaries whatever the TCP segmentation.
    """

    def messages(self) -> list[tuple[bytes, bool]]:
        """
        What the application received so far.
        """
        return [(data, binary) for _, data, binary in self.app.messages]

    def test_manyFramesInOneSegment(self) -> None:
        """
        Several frames (short and 16-bit lengths, text and binary) arriving
        in one segment are each delivered, in order.
        """
        connection = self.openWebSocket()
        long = b"4" + b"x" * 300
        connection.send(
            clientFrame(b"4a") + clientFrame(long) + clientFrame(b"\x00\xff", BINARY) + clientFrame(b"4b")
        )
        self.assertEqual(
            self.messages(), [(b"a", False), (long[1:], False), (b"\x00\xff", True), (b"b", False)]
        )

    def test_everySegmentation(self) -> None:
        """
        The same stream split at every byte offset, with a control frame
        (PING) in the middle, gives the same messages and the PONG.
        """
        stream = clientFrame(b"4one") + clientFrame(b"ping!", PING) + clientFrame(b"4" + b"y" * 200) + clientFrame(b"4three")
        expected = [(b"one", False), (b"y" * 200, False), (b"three", False)]
        for cut in range(1, len(stream)):
            self.app.messages.clear()
            connection = self.openWebSocket()
            connection.send(stream[:cut])
            connection.send(stream[cut:])
            self.assertEqual(self.messages(), expected, f"split at {cut}")
            self.assertIn((PONG, b"ping!"), connection.frames())

    def test_fragmentedMessage(self) -> None:
        """
        A message in two fragments (not FIN, then continuation) is left to
        Autobahn and reassembled; a whole frame after it takes the fast
        path again.
        """
        connection = self.openWebSocket()
        mask = b"\x01\x02\x03\x04"
        first = bytes([0x01, 0x80 | 3]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(b"4he"))
        last = bytes([0x80, 0x80 | 3]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(b"llo"))
        connection.send(first + last + clientFrame(b"4next"))
        self.assertEqual(self.messages(), [(b"hello", False), (b"next", False)])

    def test_invalidUTF8(self) -> None:
        """
        A text frame that is not UTF-8 fails the connection, as Autobahn
        does (it drops it: failByDrop), and reaches no one.
        """
        connection = self.openWebSocket()
        connection.send(clientFrame(b"4ok") + clientFrame(b"4\xff\xfe"))
        self.assertEqual(self.messages(), [(b"ok", False)])
        self.assertFalse(connection.transport.connected)

    def test_closedMidSegment(self) -> None:
        """
        When a message makes the session close, the frames after it in the
        same segment are not delivered and the connection does not misparse
        them (no protocol error).
        """
        connection = self.openWebSocket()
        session = self.engine.sessions["sid1"]
        original = self.app.messageReceived

        def closeOnFirst(s: Any, data: bytes, binary: bool) -> None:
            original(s, data, binary)
            s.close("forced close")

        self.app.messageReceived = closeOnFirst  # type: ignore[method-assign]
        connection.send(clientFrame(b"4first") + clientFrame(b"4second"))
        connection.send(clientFrame(b"4third", mask=b"\x00\x00\x00\x00"))
        self.assertEqual(self.messages(), [(b"first", False)])
        self.assertEqual(session.state, CLOSED)
        codes = [struct.unpack("!H", p[:2])[0] for op, p in connection.frames() if op == CLOSE]
        self.assertEqual(codes, [1000])

    def test_oversizeFrame(self) -> None:
        """
        A frame over maxPayload is not taken by the fast path: Autobahn
        refuses it.
        """
        connection = self.openWebSocket()
        connection.send(clientFrame(b"4" + b"z" * 1200))
        self.assertEqual(self.messages(), [])
        self.assertFalse(connection.transport.connected)
