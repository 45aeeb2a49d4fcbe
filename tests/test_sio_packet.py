"""
Tests for L{crm_im.socketio.packet}: the Socket.IO v5 encoder and the strict
L{Decoder}.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from crm_im.engineio.packet import Frame
from crm_im.socketio import packet as sio
from crm_im.socketio.packet import (
    DecodeError,
    Decoder,
    SocketIOPacket,
    decodeText,
    encode,
    encodeAck,
    encodeEvent,
)


def wire(frames: list[Frame]) -> list[tuple[bytes, bool]]:
    """
    The Engine.IO messages of encoded frames: the text packet without its
    Engine.IO type digit, then the raw attachments.
    """
    result = []
    for frame in frames:
        if frame.binary:
            result.append((frame.data, True))
        else:
            assert frame.data[:1] == b"4", frame
            result.append((frame.data[1:], False))
    return result


def decodeAll(messages: list[tuple[bytes, bool]], decoder: Decoder | None = None) -> list[SocketIOPacket]:
    """
    Feed Engine.IO messages to a decoder; the packets it completes.
    """
    if decoder is None:
        decoder = Decoder()
    packets = []
    for data, binary in messages:
        result = decoder.feed(data, binary)
        if result is not None:
            packets.append(result)
    return packets


class EncodeTests(SynchronousTestCase):
    """
    Tests for L{encode}, L{encodeEvent} and L{encodeAck}: vectors from the
    Socket.IO v5 protocol document.
    """

    def assertEncodes(self, packet: SocketIOPacket, *expected: tuple[bytes, bool]) -> None:
        """
        C{packet} encodes as the Engine.IO messages C{expected}.
        """
        self.assertEqual(wire(encode(packet)), list(expected))

    def test_connect(self) -> None:
        """
        CONNECT, with and without namespace and payload.
        """
        self.assertEncodes(SocketIOPacket(sio.CONNECT), (b"0", False))
        self.assertEncodes(
            SocketIOPacket(sio.CONNECT, "/admin", {"token": "123"}), (b'0/admin,{"token":"123"}', False)
        )
        self.assertEncodes(SocketIOPacket(sio.CONNECT, "/", {"sid": "oSO0OpakMV_3jnilAAAA"}),
                           (b'0{"sid":"oSO0OpakMV_3jnilAAAA"}', False))

    def test_disconnect(self) -> None:
        """
        DISCONNECT has no payload.
        """
        self.assertEncodes(SocketIOPacket(sio.DISCONNECT), (b"1", False))
        self.assertEncodes(SocketIOPacket(sio.DISCONNECT, "/admin"), (b"1/admin,", False))

    def test_event(self) -> None:
        """
        EVENT with namespace and ack id.
        """
        self.assertEqual(wire(encodeEvent("/", "hello", [1])), [(b'2["hello",1]', False)])
        self.assertEqual(wire(encodeEvent("/admin", "bye", [])), [(b'2/admin,["bye"]', False)])
        self.assertEqual(wire(encodeEvent("/", "hello", ["world"], 12)), [(b'212["hello","world"]', False)])
        self.assertEqual(
            wire(encodeEvent("/admin", "project:delete", [123], 456)),
            [(b'2/admin,456["project:delete",123]', False)],
        )

    def test_ack(self) -> None:
        """
        ACK carries its id and a list of arguments.
        """
        self.assertEqual(wire(encodeAck("/", 1, ["hi"])), [(b'31["hi"]', False)])
        self.assertEqual(wire(encodeAck("/admin", 456, [])), [(b"3/admin,456[]", False)])

    def test_connectError(self) -> None:
        """
        CONNECT_ERROR carries an object.
        """
        self.assertEncodes(
            SocketIOPacket(sio.CONNECT_ERROR, "/", {"message": "Not authorized"}),
            (b'4{"message":"Not authorized"}', False),
        )

    def test_binaryEvent(self) -> None:
        """
        An event with bytes becomes BINARY_EVENT: the attachment count, a
        placeholder in place of each buffer, and the buffers after.
        """
        self.assertEqual(
            wire(encodeEvent("/", "hello", [b"\x01\x02\x03"])),
            [(b'51-["hello",{"_placeholder":true,"num":0}]', False), (b"\x01\x02\x03", True)],
        )
        self.assertEqual(
            wire(encodeEvent("/admin", "f", [{"a": bytearray(b"x"), "b": [memoryview(b"yz")]}], 4)),
            [
                (b'52-/admin,4["f",{"a":{"_placeholder":true,"num":0},"b":[{"_placeholder":true,"num":1}]}]', False),
                (b"x", True),
                (b"yz", True),
            ],
        )

    def test_binaryAck(self) -> None:
        """
        An ack with bytes becomes BINARY_ACK.
        """
        self.assertEqual(
            wire(encodeAck("/admin", 456, [b"\x03"])),
            [(b'61-/admin,456[{"_placeholder":true,"num":0}]', False), (b"\x03", True)],
        )

    def test_tupleArguments(self) -> None:
        """
        Tuples in the data are encoded as JSON arrays.
        """
        self.assertEqual(wire(encodeEvent("/", "t", [(1, 2)])), [(b'2["t",[1,2]]', False)])


class DecodeVectorTests(SynchronousTestCase):
    """
    The vectors of the Socket.IO v5 protocol document decode to the packets
    they describe.
    """

    VECTORS: list[tuple[bytes, SocketIOPacket]] = [
        (b"0", SocketIOPacket(sio.CONNECT)),
        (b'0/admin,{"token":"123"}', SocketIOPacket(sio.CONNECT, "/admin", {"token": "123"})),
        (b"0/admin,", SocketIOPacket(sio.CONNECT, "/admin")),
        (b"0/admin", SocketIOPacket(sio.CONNECT, "/admin")),
        (b"1", SocketIOPacket(sio.DISCONNECT)),
        (b"1/admin,", SocketIOPacket(sio.DISCONNECT, "/admin")),
        (b'2["hello",1]', SocketIOPacket(sio.EVENT, "/", ["hello", 1])),
        (b'2/admin,["bye"]', SocketIOPacket(sio.EVENT, "/admin", ["bye"])),
        (b'212["hello","world"]', SocketIOPacket(sio.EVENT, "/", ["hello", "world"], 12)),
        (b'2/admin,456["project:delete",123]', SocketIOPacket(sio.EVENT, "/admin", ["project:delete", 123], 456)),
        (b'31["hi"]', SocketIOPacket(sio.ACK, "/", ["hi"], 1)),
        (b"3/admin,456[]", SocketIOPacket(sio.ACK, "/admin", [], 456)),
        (b'4{"message":"Not authorized"}', SocketIOPacket(sio.CONNECT_ERROR, "/", {"message": "Not authorized"})),
        (b'4"Not authorized"', SocketIOPacket(sio.CONNECT_ERROR, "/", "Not authorized")),
        (b'2["\xe4\xbd\xa0\xe5\xa5\xbd",{"a":[null,true,1.5]}]', SocketIOPacket(sio.EVENT, "/", ["你好", {"a": [None, True, 1.5]}])),
        (b'2' + str(2**53 - 1).encode() + b'["x"]', SocketIOPacket(sio.EVENT, "/", ["x"], 2**53 - 1)),
    ]

    def test_vectors(self) -> None:
        """
        Each vector decodes to its packet, with no attachments.
        """
        for text, expected in self.VECTORS:
            with self.subTest(text=text):
                self.assertEqual(decodeText(text), (expected, 0))
                self.assertEqual(Decoder().feed(text, False), expected)

    def test_binaryEvent(self) -> None:
        """
        C{51-["hello",{"_placeholder":true,"num":0}]} and one attachment
        decode to an event whose argument is the attachment.
        """
        decoder = Decoder()
        self.assertIsNone(decoder.feed(b'51-["hello",{"_placeholder":true,"num":0}]', False))
        self.assertEqual(
            decoder.feed(b"\x01\x02\x03", True),
            SocketIOPacket(sio.BINARY_EVENT, "/", ["hello", b"\x01\x02\x03"]),
        )

    def test_binaryAck(self) -> None:
        """
        C{61-/admin,456[{"_placeholder":true,"num":0}]} and one attachment
        decode to a BINARY_ACK.
        """
        packets = decodeAll([(b'61-/admin,456[{"_placeholder":true,"num":0}]', False), (b"\x03", True)])
        self.assertEqual(packets, [SocketIOPacket(sio.BINARY_ACK, "/admin", [b"\x03"], 456)])

    def test_binaryWithoutAttachments(self) -> None:
        """
        A binary packet announcing zero attachments decodes at once.
        """
        self.assertEqual(
            Decoder().feed(b'50-["x",1]', False), SocketIOPacket(sio.BINARY_EVENT, "/", ["x", 1])
        )

    def test_placeholdersOutOfOrder(self) -> None:
        """
        Placeholders may reference attachments in any order, and the same
        attachment twice.
        """
        packets = decodeAll(
            [
                (
                    b'52-["e",{"_placeholder":true,"num":1},[{"_placeholder":true,"num":0}],'
                    b'{"_placeholder":true,"num":1}]',
                    False,
                ),
                (b"zero", True),
                (b"one", True),
            ]
        )
        self.assertEqual(packets[0].data, ["e", b"one", [b"zero"], b"one"])

    def test_decoderReusable(self) -> None:
        """
        After a binary packet completes, the decoder decodes the next
        packet from a clean state.
        """
        decoder = Decoder()
        packets = decodeAll(
            [
                (b'51-["a",{"_placeholder":true,"num":0}]', False),
                (b"A", True),
                (b'2["b"]', False),
                (b'51-["c",{"_placeholder":true,"num":0}]', False),
                (b"C", True),
            ],
            decoder,
        )
        self.assertEqual([p.data for p in packets], [["a", b"A"], ["b"], ["c", b"C"]])


class RoundTripTests(SynchronousTestCase):
    """
    Every packet type survives L{encode} then L{Decoder}.
    """

    PACKETS = [
        SocketIOPacket(sio.CONNECT),
        SocketIOPacket(sio.CONNECT, "/admin", {"token": "123"}),
        SocketIOPacket(sio.DISCONNECT),
        SocketIOPacket(sio.DISCONNECT, "/chat"),
        SocketIOPacket(sio.EVENT, "/", ["hello", 1, "two", {"three": [3]}]),
        SocketIOPacket(sio.EVENT, "/admin", ["bye"], 0),
        SocketIOPacket(sio.EVENT, "/", ["x"], 2**53 - 1),
        SocketIOPacket(sio.ACK, "/", [], 7),
        SocketIOPacket(sio.ACK, "/admin", ["hi", None, 1.5], 99),
        SocketIOPacket(sio.CONNECT_ERROR, "/", {"message": "Not authorized", "data": {"x": 1}}),
        SocketIOPacket(sio.CONNECT_ERROR, "/admin", "refused"),
    ]

    BINARY = [
        (SocketIOPacket(sio.EVENT, "/", ["file", {"data": b"\x00\xff", "name": "a"}]), sio.BINARY_EVENT),
        (SocketIOPacket(sio.EVENT, "/admin", ["two", b"1", [b"2", b""]], 5), sio.BINARY_EVENT),
        (SocketIOPacket(sio.ACK, "/", [b"ack"], 3), sio.BINARY_ACK),
        (SocketIOPacket(sio.ACK, "/ns", [{"nested": {"deep": [b"\x1e"]}}], 0), sio.BINARY_ACK),
    ]

    def test_text(self) -> None:
        """
        Packets without bytes round-trip as one text message.
        """
        for original in self.PACKETS:
            with self.subTest(packet=original):
                frames = encode(original)
                self.assertEqual(len(frames), 1)
                self.assertEqual(decodeAll(wire(frames)), [original])

    def test_binary(self) -> None:
        """
        Packets with bytes become BINARY_EVENT / BINARY_ACK with one binary
        message per buffer, and decode back to the same data.
        """
        for original, binaryType in self.BINARY:
            with self.subTest(packet=original):
                frames = encode(original)
                self.assertEqual(len(frames), 1 + sum(f.binary for f in frames))
                (decoded,) = decodeAll(wire(frames))
                self.assertEqual(
                    decoded, SocketIOPacket(binaryType, original.namespace, original.data, original.id)
                )


def _nested(depth: int, inner: bytes = b"1") -> bytes:
    return b"[" * depth + inner + b"]" * depth


#: Malformed input: a name, then the Engine.IO messages fed in order; the
#: last one must raise DecodeError (the ones before it must be accepted).
MALFORMED: list[tuple[str, list[tuple[bytes, bool]]]] = [
    ("empty", [(b"", False)]),
    ("unknown type 7", [(b"7", False)]),
    ("unknown type 9", [(b'9["x"]', False)]),
    ("type not a digit", [(b'a["x"]', False)]),
    ("attachments missing", [(b'5-["x",{"_placeholder":true,"num":0}]', False)]),
    ("attachments not a number", [(b'5a-["x",{"_placeholder":true,"num":0}]', False)]),
    ("attachments without dash", [(b'51["x",{"_placeholder":true,"num":0}]', False)]),
    ("attachments negative", [(b'5-1-["x"]', False)]),
    ("attachments huge", [(b'59999999999-["x"]', False)]),
    ("binary ack attachments missing", [(b"6-1[]", False)]),
    ("invalid JSON", [(b'2["hello",', False)]),
    ("invalid JSON object", [(b"0{token}", False)]),
    ("trailing garbage", [(b'2["hello"]x', False)]),
    ("invalid UTF-8", [(b'2["\xff"]', False)]),
    ("invalid UTF-8 namespace", [(b'2/\xff,["x"]', False)]),
    ("event empty array", [(b"2[]", False)]),
    ("event not an array", [(b'2{"a":1}', False)]),
    ("event string", [(b'2"hello"', False)]),
    ("event without payload", [(b"2", False)]),
    ("event name number", [(b"2[1]", False)]),
    ("event name object", [(b'2[{"a":1}]', False)]),
    ("event name null", [(b"2[null]", False)]),
    ("event name array", [(b'2[["x"]]', False)]),
    ("reserved connect", [(b'2["connect"]', False)]),
    ("reserved connect_error", [(b'2["connect_error"]', False)]),
    ("reserved disconnect", [(b'2["disconnect"]', False)]),
    ("reserved disconnecting", [(b'2["disconnecting"]', False)]),
    ("reserved newListener", [(b'2["newListener"]', False)]),
    ("reserved removeListener", [(b'2["removeListener"]', False)]),
    ("reserved binary", [(b'50-["disconnect"]', False)]),
    ("connect with array", [(b'0["x"]', False)]),
    ("connect with string", [(b'0"token"', False)]),
    ("connect_error with array", [(b"4[1]", False)]),
    ("connect_error without payload", [(b"4", False)]),
    ("ack not an array", [(b'31{"a":1}', False)]),
    ("ack without id", [(b'3["hi"]', False)]),
    ("ack without id or payload", [(b"3", False)]),
    ("ack without payload", [(b"31", False)]),
    ("binary ack without id", [(b'61-[{"_placeholder":true,"num":0}]', False)]),
    ("ack id too large", [(b"3" + str(2**53).encode() + b"[]", False)]),
    ("ack id too many digits", [(b"3" + b"1" * 17 + b"[]", False)]),
    ("event ack id too large", [(b"2" + b"9" * 16 + b'["x"]', False)]),
    ("disconnect with payload", [(b'1{"reason":"x"}', False)]),
    ("disconnect with array", [(b"1[]", False)]),
    ("disconnect with namespace and payload", [(b"1/admin,{}", False)]),
    ("deeply nested 10000", [(b'2["x",' + _nested(10000) + b"]", False)]),
    ("deeply nested objects", [(b'0' + b'{"a":' * 10000 + b"1" + b"}" * 10000, False)]),
    ("binary when not reconstructing", [(b"\x01\x02", True)]),
    ("binary after a complete packet", [(b'2["x"]', False), (b"\x01", True)]),
    (
        "text while reconstructing",
        [(b'51-["x",{"_placeholder":true,"num":0}]', False), (b'2["y"]', False)],
    ),
    (
        "text while reconstructing the second of two",
        [(b'52-["x",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]', False), (b"a", True), (b"2", False)],
    ),
    ("too many attachments", [(b'517-["x"]', False)]),
    (
        "attachments over the byte bound",
        [(b'52-["x",{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}]', False), (b"a" * 60, True), (b"b" * 41, True)],
    ),
    ("placeholder num string", [(b'51-["x",{"_placeholder":true,"num":"0"}]', False), (b"a", True)]),
    ("placeholder num bool", [(b'51-["x",{"_placeholder":true,"num":true}]', False), (b"a", True)]),
    ("placeholder num false", [(b'51-["x",{"_placeholder":true,"num":false}]', False), (b"a", True)]),
    ("placeholder num float", [(b'51-["x",{"_placeholder":true,"num":0.0}]', False), (b"a", True)]),
    ("placeholder num negative", [(b'51-["x",{"_placeholder":true,"num":-1}]', False), (b"a", True)]),
    ("placeholder num out of range", [(b'51-["x",{"_placeholder":true,"num":1}]', False), (b"a", True)]),
    ("placeholder num null", [(b'51-["x",{"_placeholder":true,"num":null}]', False), (b"a", True)]),
    ("placeholder num missing", [(b'51-["x",{"_placeholder":true}]', False), (b"a", True)]),
    ("placeholder num huge", [(b'51-["x",{"_placeholder":true,"num":99999999999999999999}]', False), (b"a", True)]),
    ("placeholder with no attachments", [(b'50-["x",{"_placeholder":true,"num":0}]', False)]),
    ("placeholder in binary ack", [(b'61-1[{"_placeholder":true,"num":3}]', False), (b"a", True)]),
    (
        "placeholder deeply nested",
        [(b'51-["x",' + _nested(1000, b'{"_placeholder":true,"num":0}') + b"]", False)],
    ),
    ("nested past MAX_DEPTH", [(b"2" + _nested(sio.MAX_DEPTH + 1, b'"x"'), False)]),
    ("nested 300, past what orjson can encode", [(b'2["x",' + _nested(300) + b"]", False)]),
]


class MalformedTests(SynchronousTestCase):
    """
    The decoder refuses malformed input with L{DecodeError}, never another
    exception.
    """

    def feed(self, decoder: Decoder, messages: list[tuple[bytes, bool]]) -> None:
        """
        Feed all but the last message (they must be accepted) and return;
        the caller feeds the last one.
        """
        for data, binary in messages[:-1]:
            decoder.feed(data, binary)

    def test_table(self) -> None:
        """
        Each malformed input, fed whole, raises L{DecodeError} on its last
        message.
        """
        for name, messages in MALFORMED:
            with self.subTest(name=name):
                decoder = Decoder(maxAttachments=16, maxAttachmentBytes=100)
                self.feed(decoder, messages)
                data, binary = messages[-1]
                self.assertRaises(DecodeError, decoder.feed, data, binary)

    def test_prefixes(self) -> None:
        """
        Every prefix of every malformed text message, fed to a fresh decoder,
        either decodes or raises L{DecodeError}.
        """
        for name, messages in MALFORMED:
            for data, binary in messages:
                if binary or len(data) > 200:
                    continue
                for end in range(len(data) + 1):
                    with self.subTest(name=name, prefix=data[:end]):
                        try:
                            Decoder().feed(data[:end], False)
                        except DecodeError:
                            pass

    def test_nestedWithinBounds(self) -> None:
        """
        Nesting up to L{sio.MAX_DEPTH} levels decodes, placeholders
        included, as do packets with many brackets that are not nested.
        """
        depth = sio.MAX_DEPTH - 1
        decoder = Decoder()
        self.assertEqual(decoder.feed(b'2["x",' + _nested(depth) + b"]", False).data[0], "x")
        # The placeholder object is one level more.
        self.assertIsNone(
            decoder.feed(b'51-["x",' + _nested(depth - 1, b'{"_placeholder":true,"num":0}') + b"]", False)
        )
        packet = decoder.feed(b"a", True)
        value = packet.data[1]
        for _ in range(depth - 1):
            value = value[0]
        self.assertEqual(value, b"a")
        flat = b'2["x",' + b",".join([b"[{}]"] * 1000) + b',"[[[[{{{{"]'
        self.assertEqual(len(decoder.feed(flat, False).data), 1002)


class ValidPrefixTests(SynchronousTestCase):
    """
    Every prefix of a valid packet either decodes or raises L{DecodeError}.
    """

    VALID = [text for text, _ in DecodeVectorTests.VECTORS] + [
        b'51-["hello",{"_placeholder":true,"num":0}]',
        b'61-/admin,456[{"_placeholder":true,"num":0}]',
        b'52-/admin,4["f",{"a":{"_placeholder":true,"num":0},"b":[{"_placeholder":true,"num":1}]}]',
    ]

    def test_prefixes(self) -> None:
        """
        Feeding each byte-prefix of a valid packet to a fresh decoder never
        raises anything but L{DecodeError}; the whole packet decodes.
        """
        for text in self.VALID:
            for end in range(len(text) + 1):
                with self.subTest(prefix=text[:end]):
                    try:
                        Decoder().feed(text[:end], False)
                    except DecodeError:
                        pass
            decoder = Decoder()
            result: Any = decoder.feed(text, False)
            if result is None:
                for _ in range(text.count(b"_placeholder")):
                    result = decoder.feed(b"\x00", True)
            self.assertIsInstance(result, SocketIOPacket)

    def test_truncatedPacketsRefused(self) -> None:
        """
        Truncated events and acks are refused rather than decoded to
        something else.
        """
        for text in [b'2["hello",1', b"2[", b'2/admin,["by', b'31["hi"', b"31", b"51-", b'51-["hello"']:
            with self.subTest(text=text):
                self.assertRaises(DecodeError, Decoder().feed, text, False)


class LoneSurrogateTests(SynchronousTestCase):
    """
    JSON that C{JSON.parse} accepts and orjson refuses, above all a lone
    UTF-16 surrogate escape (half of an emoji cut by a mobile keyboard):
    the packet is accepted, the surrogate becomes U+FFFD, and the value can
    be encoded again; it never closes the connection.
    """

    def test_eventPayload(self) -> None:
        """
        A lone surrogate in a payload string, high or low, becomes U+FFFD;
        a proper pair stays the character it encodes.
        """
        packet = Decoder().feed(
            b'2["message",{"toId":"b","content":"x\\ud83d","tail":"\\ude00y","ok":"\\ud83d\\ude00"}]', False
        )
        assert packet is not None
        self.assertEqual(
            packet.data, ["message", {"toId": "b", "content": "x\ufffd", "tail": "\ufffdy", "ok": "\U0001f600"}]
        )
        self.assertEqual(
            sio.encodeEvent("/", "message", packet.data[1:])[0].data,
            '42["message",{"toId":"b","content":"x\ufffd","tail":"\ufffdy","ok":"\U0001f600"}]'.encode(),
        )

    def test_eventNameKeysAndAck(self) -> None:
        """
        The same holds for event names, object keys, ack arguments and
        binary packets' JSON.
        """
        decoder = Decoder()
        event = decoder.feed(b'21["ev\\udc00",{"k\\ud800":["\\ud800"]}]', False)
        assert event is not None
        self.assertEqual((event.id, event.data), (1, ["ev\ufffd", {"k\ufffd": ["\ufffd"]}]))
        ack = decoder.feed(b'37["\\ud83d"]', False)
        assert ack is not None
        self.assertEqual(ack.data, ["\ufffd"])
        self.assertIsNone(decoder.feed(b'51-["up\\ud83d",{"_placeholder":true,"num":0}]', False))
        binary = decoder.feed(b"\x01", True)
        assert binary is not None
        self.assertEqual(binary.data, ["up\ufffd", b"\x01"])

    def test_bigIntegers(self) -> None:
        """
        An integer past 64 bits (a double for C{JSON.parse}) is read as a
        float rather than refused.
        """
        packet = Decoder().feed(b'2["n",18446744073709551616,"\\ud800"]', False)
        assert packet is not None
        self.assertEqual(packet.data, ["n", 18446744073709551616.0, "\ufffd"])

    def test_stillRefused(self) -> None:
        """
        What C{JSON.parse} refuses is still refused on the lenient path:
        NaN and Infinity, trailing garbage, bad escapes, too deep nesting.
        """
        for data in [
            b'2["x",NaN,"\\ud800"]',
            b'2["x",Infinity,"\\ud800"]',
            b'2["x","\\ud800"]]',
            b'2["x","\\ud80"]',
            b'2["x",' + b"[" * 200 + b'"\\ud800"' + b"]" * 200 + b"]",
        ]:
            with self.subTest(data=data):
                self.assertRaises(DecodeError, Decoder().feed, data, False)
