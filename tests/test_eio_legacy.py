"""
Tests for Engine.IO v3 (socket.io-client 2.x) served with C{allowEIO3}: the
v3 payload codec in L{crm_im.engineio.packet}, the v3 session (client-sent
PINGs, v3 polling framing) and the implicit Socket.IO v4-protocol connect of
L{crm_im.socketio.server}, driven by fakes and a L{Clock}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from crm_im.engineio import packet
from crm_im.engineio.config import EngineIOConfig
from crm_im.engineio.packet import Frame, PacketError, binaryFrame, decodePayloadV3, encodePayloadV3, messageFrame
from crm_im.engineio.server import EngineIOError, EngineIOServer
from crm_im.engineio.session import CLOSED, OPEN
from crm_im.socketio import ConnectionRefused, SocketIOServer

from .test_eio_session import FakeChannel, FakePoll, RecordingApp, sequentialSids


class PayloadV3Tests(SynchronousTestCase):
    """
    The Engine.IO v3 long-polling payload, with the vectors of
    engine.io-parser 2.x.
    """

    def test_encodeText(self) -> None:
        """
        Each packet is C{<length>:<packet>}, the length in UTF-16 units (a
        character outside the BMP counts two).
        """
        self.assertEqual(encodePayloadV3([messageFrame(b"hello"), Frame(b"2")]), b"6:4hello1:2")
        self.assertEqual(encodePayloadV3([messageFrame("é😀".encode())]), "4:4é😀".encode())

    def test_encodeBinary(self) -> None:
        """
        A binary packet is C{b4} + base64 in the text payload.
        """
        self.assertEqual(encodePayloadV3([binaryFrame(b"\x00\x01\x02")]), b"6:b4AAEC")

    def test_decodeText(self) -> None:
        """
        Text payloads decode to C{(type, data, binary)}, lengths in UTF-16
        units, base64 packets to binary messages.
        """
        body = "6:4hello1:24:4é😀6:b4AAEC".encode()
        self.assertEqual(
            list(decodePayloadV3(body)),
            [(4, b"hello", False), (2, b"", False), (4, "é😀".encode(), False), (4, b"\x00\x01\x02", True)],
        )

    def test_decodeBinaryForm(self) -> None:
        """
        The binary form (C{0}/C{1}, one byte per length digit, C{0xff})
        decodes text and binary packets; a binary one starts with its type
        byte.
        """
        text = "4é".encode()
        body = b"\x00" + bytes([len(text)]) + b"\xff" + text + b"\x01\x04\xff\x04\x00\x01\xff"
        self.assertEqual(list(decodePayloadV3(body)), [(4, "é".encode(), False), (4, b"\x00\x01\xff", True)])

    def test_malformed(self) -> None:
        """
        Malformed payloads raise L{PacketError}.
        """
        for body in [
            b"",
            b"5:4hello",
            b"6:4hello1",
            b"x:4",
            b"2:9x",
            b"1:",
            "2:4😀".encode()[:-1] + b"x",
            "2:4😀".encode(),
            b"6:b4!!!!",
            b"\x00\x0a\xff4",
            b"\x01\x02\xff\x02x",
            b"\x00\xff",
            b"\x02\x01\xff4",
        ]:
            with self.subTest(body=body):
                self.assertRaises(PacketError, lambda: list(decodePayloadV3(body)))


class SessionV3Tests(SynchronousTestCase):
    """
    An Engine.IO v3 session: the client pings, the server pongs.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.app = RecordingApp()
        self.config = EngineIOConfig(pingInterval=300, pingTimeout=200, allowEIO3=True)
        self.server = EngineIOServer(self.app, self.clock, self.config, newSid=sequentialSids())

    def test_refusedUnlessAllowed(self) -> None:
        """
        C{EIO=3} is refused with "Unsupported protocol version" unless
        allowEIO3 is set; JSONP polling is never served; a sid cannot
        change protocol.
        """
        strict = EngineIOServer(self.app, self.clock, EngineIOConfig())
        error = self.assertRaises(
            EngineIOError, strict.checkRequest, b"GET", {"EIO": "3", "transport": "polling"}, False, None
        )
        self.assertEqual((error.status, error.code), (400, 5))
        self.assertEqual(
            self.server.checkRequest(b"GET", {"EIO": "3", "transport": "polling"}, False, None), ("polling", None)
        )
        error = self.assertRaises(
            EngineIOError, self.server.checkRequest, b"GET", {"EIO": "3", "transport": "polling", "j": "0"}, False, None
        )
        self.assertEqual(error.code, 3)
        session = self.server.handshake("polling", protocol=3)
        error = self.assertRaises(
            EngineIOError,
            self.server.checkRequest,
            b"GET",
            {"EIO": "4", "transport": "polling", "sid": session.sid},
            False,
            None,
        )
        self.assertEqual(error.code, 3)

    def test_pollingFraming(self) -> None:
        """
        The OPEN packet and what follows go out in v3 framing; a v3 POST is
        decoded as such.
        """
        session = self.server.handshake("polling", protocol=3)
        poll = FakePoll()
        session.pollArrived(poll)
        body = poll.bodies[0]
        length, _, openPacket = body.partition(b":")
        self.assertEqual(int(length), len(openPacket))
        self.assertTrue(openPacket.startswith(b'0{"sid":"sid1"'), openPacket)
        session.send("hé")
        session.send(b"\x01")
        poll = FakePoll()
        session.pollArrived(poll)
        self.clock.advance(0)
        self.assertEqual(poll.bodies, ["3:4hé6:b4AQ==".encode()])
        self.assertTrue(session.payloadReceived(b"6:4hello"))
        self.assertEqual(self.app.messages, [(session, b"hello", False)])

    def test_clientPingsServerPongs(self) -> None:
        """
        A PING from the client gets a PONG with the same data and postpones
        the deadline; the server never pings; a client silent for
        pingInterval + pingTimeout is closed with "ping timeout".
        """
        channel = FakeChannel()
        session = self.server.handshake("websocket", channel=channel, protocol=3)
        for _ in range(5):
            self.clock.advance(0.45)
            session.packetReceived(packet.PING, b"")
        self.assertEqual(channel.data()[1:], [b"3"] * 5)
        session.packetReceived(packet.PING, b"probe")
        self.assertEqual(channel.data()[-1], b"3probe")
        self.clock.advance(0.499)
        self.assertEqual(session.state, OPEN)
        self.clock.advance(0.002)
        self.assertEqual(session.state, CLOSED)
        self.assertEqual(self.app.closed, [(session, "ping timeout")])


class LegacySocketIOTests(SynchronousTestCase):
    """
    Socket.IO protocol v4 for Engine.IO v3 sessions.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.sio = SocketIOServer(self.clock, EngineIOConfig(allowEIO3=True))
        self.connected: list[Any] = []
        self.sio.on("connect", lambda sid, auth: self.connected.append(auth))

    def session(self) -> tuple[Any, FakeChannel]:
        """
        A v3 session over a fake WebSocket.
        """
        channel = FakeChannel()
        session = self.sio.engine.handshake("websocket", channel=channel, protocol=3)
        return session, channel

    def test_implicitConnect(self) -> None:
        """
        The main namespace is connected without a CONNECT from the client,
        with an empty auth, and answered with a bare C{40}.
        """
        session, channel = self.session()
        self.assertEqual(self.connected, [{}])
        self.assertEqual(channel.data()[1:], [b"40"])
        self.clock.advance(40)
        self.assertEqual(session.state, OPEN)

    def test_namespaceWithQuery(self) -> None:
        """
        A CONNECT to C{/ns?query} connects C{/ns}, answered C{40/ns,}; an
        unknown namespace gets the v4 error, a string.
        """
        self.sio.namespace("/ns")
        session, channel = self.session()
        session.packetReceived(packet.MESSAGE, b"0/ns?token=x,")
        session.packetReceived(packet.MESSAGE, b"0/nope,")
        self.assertEqual(channel.data()[2:], [b"40/ns,", b'44/nope,"Invalid namespace"'])

    def test_refusal(self) -> None:
        """
        A refusal carries its data, or else its message, as the v4 error.
        """

        def refuse(sid: str, auth: Any) -> None:
            raise ConnectionRefused("no", {"why": 1})

        self.sio.on("connect", refuse)
        session, channel = self.session()
        self.assertEqual(channel.data()[1:], [b'44{"why":1}'])
