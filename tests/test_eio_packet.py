"""
Tests for L{crm_im.engineio.packet}: the Engine.IO v4 packet and
long-polling payload codec.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from crm_im.engineio import packet
from crm_im.engineio.packet import (
    Frame,
    PacketError,
    binaryFrame,
    decodePayload,
    decodeText,
    encodePayload,
    messageFrame,
    textFrame,
)


class FrameTests(SynchronousTestCase):
    """
    Tests for L{Frame} and the frame constructors.
    """

    def test_textFrame(self) -> None:
        """
        L{textFrame} puts the type digit before the data.
        """
        self.assertEqual(textFrame(packet.PING).data, b"2")
        self.assertEqual(textFrame(packet.PONG, b"probe").data, b"3probe")
        self.assertFalse(textFrame(packet.OPEN, b"{}").binary)

    def test_messageFrame(self) -> None:
        """
        L{messageFrame} is a text MESSAGE: C{4} and the data.
        """
        frame = messageFrame(b"hello")
        self.assertEqual((frame.data, frame.binary), (b"4hello", False))

    def test_binaryFrame(self) -> None:
        """
        L{binaryFrame} keeps the raw bytes, with no type digit, and copies
        a mutable buffer.
        """
        buffer = bytearray(b"\x01\x02")
        frame = binaryFrame(buffer)
        buffer[0] = 9
        self.assertEqual((frame.data, frame.binary), (b"\x01\x02", True))
        self.assertIsInstance(frame.data, bytes)

    def test_equality(self) -> None:
        """
        Frames are equal when their bytes and binary flag are, and hash
        alike then.
        """
        self.assertEqual(Frame(b"4a"), Frame(b"4a"))
        self.assertEqual(hash(Frame(b"4a")), hash(Frame(b"4a")))
        self.assertNotEqual(Frame(b"4a"), Frame(b"4a", binary=True))
        self.assertNotEqual(Frame(b"4a"), b"4a")

    def test_len(self) -> None:
        """
        The length of a frame is the length of its data.
        """
        self.assertEqual(len(Frame(b"4abc")), 4)

    def test_constants(self) -> None:
        """
        The shared frames are the packets their names say.
        """
        self.assertEqual(packet.PING_FRAME.data, b"2")
        self.assertEqual(packet.PONG_PROBE_FRAME.data, b"3probe")
        self.assertEqual(packet.NOOP_FRAME.data, b"6")
        self.assertEqual(packet.CLOSE_FRAME.data, b"1")


class DecodeTextTests(SynchronousTestCase):
    """
    Tests for L{decodeText}.
    """

    def test_everyType(self) -> None:
        """
        Every type digit from 0 to 6 decodes to its type and the rest of
        the packet.
        """
        for digit in range(7):
            self.assertEqual(decodeText(b"%dxyz" % (digit,)), (digit, b"xyz"))

    def test_vectors(self) -> None:
        """
        The examples of the Engine.IO v4 protocol document decode.
        """
        self.assertEqual(decodeText(b"4hello"), (packet.MESSAGE, b"hello"))
        self.assertEqual(decodeText(b"2probe"), (packet.PING, b"probe"))
        self.assertEqual(decodeText(b"3probe"), (packet.PONG, b"probe"))
        self.assertEqual(decodeText(b"5"), (packet.UPGRADE, b""))
        self.assertEqual(decodeText(b"6"), (packet.NOOP, b""))
        self.assertEqual(decodeText("4€".encode()), (packet.MESSAGE, "€".encode()))

    def test_malformed(self) -> None:
        """
        An empty packet or an unknown type is a L{PacketError}.
        """
        for data in [b"", b"7", b"9hello", b"x", b"b", b"-1", b" 4a", b"\x00"]:
            with self.subTest(data=data):
                self.assertRaises(PacketError, decodeText, data)

    def test_packetErrorIsValueError(self) -> None:
        """
        L{PacketError} is a L{ValueError}.
        """
        self.assertTrue(issubclass(PacketError, ValueError))


class PayloadTests(SynchronousTestCase):
    """
    Tests for L{encodePayload} and L{decodePayload}.
    """

    def test_encodeVectors(self) -> None:
        """
        The payload examples of the Engine.IO v4 protocol document encode as
        written there: packets separated by C{\\x1e}, binary as C{b} and
        base64.
        """
        self.assertEqual(
            encodePayload([messageFrame(b"hello"), messageFrame("€".encode())]),
            "4hello\x1e4€".encode(),
        )
        self.assertEqual(
            encodePayload([binaryFrame(b"\x01\x02\x03\x04"), messageFrame(b"hello")]),
            b"bAQIDBA==\x1e4hello",
        )
        self.assertEqual(encodePayload([textFrame(packet.PING)]), b"2")
        self.assertEqual(encodePayload([]), b"")

    def test_decodeVectors(self) -> None:
        """
        The payload examples of the protocol document decode.
        """
        self.assertEqual(
            list(decodePayload("4hello\x1e4€".encode())),
            [(packet.MESSAGE, b"hello", False), (packet.MESSAGE, "€".encode(), False)],
        )
        self.assertEqual(
            list(decodePayload(b"bAQIDBA==\x1e4hello")),
            [(packet.MESSAGE, b"\x01\x02\x03\x04", True), (packet.MESSAGE, b"hello", False)],
        )
        self.assertEqual(list(decodePayload(b"3")), [(packet.PONG, b"", False)])
        self.assertEqual(list(decodePayload(b"1")), [(packet.CLOSE, b"", False)])

    def test_roundTrip(self) -> None:
        """
        Any mix of text and binary packets survives encoding and decoding,
        including binary data that looks like separators or type digits.
        """
        frames = [
            textFrame(packet.PONG),
            messageFrame(b'2["hello",1]'),
            binaryFrame(b"\x1e\x1eb4"),
            binaryFrame(b""),
            binaryFrame(bytes(range(256))),
            messageFrame("你好".encode()),
            textFrame(packet.NOOP),
        ]
        decoded = list(decodePayload(encodePayload(frames)))
        self.assertEqual(
            decoded,
            [
                (packet.PONG, b"", False),
                (packet.MESSAGE, b'2["hello",1]', False),
                (packet.MESSAGE, b"\x1e\x1eb4", True),
                (packet.MESSAGE, b"", True),
                (packet.MESSAGE, bytes(range(256)), True),
                (packet.MESSAGE, "你好".encode(), False),
                (packet.NOOP, b"", False),
            ],
        )
        again = [
            binaryFrame(data) if binary else textFrame(packetType, data)
            for packetType, data, binary in decoded
        ]
        self.assertEqual(again, frames)

    #: Bodies a client may not POST.
    MALFORMED = [
        b"",
        b"\x1e",
        b"4hello\x1e",
        b"\x1e4hello",
        b"4a\x1e\x1e4b",
        b"7",
        b"x",
        b"4hello\x1e9",
        b"b!!!!",
        b"bAQI",
        b"bAQIDBA=",
        b"bAQID BA==",
        b"4hello\x1ebAQI",
        b"\xff\xfe",
    ]

    def test_malformed(self) -> None:
        """
        Every malformed body raises L{PacketError} before producing any
        packet, even when its first segments are valid.
        """
        for body in self.MALFORMED:
            with self.subTest(body=body):
                self.assertRaises(PacketError, decodePayload, body)
