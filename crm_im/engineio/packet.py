# -*- test-case-name: tests.test_eio_packet -*-
"""
Engine.IO v4 packets and the long-polling payload, as pure functions.

This is the one place where an Engine.IO packet is parsed. A packet is a
type digit followed by its data; over WebSocket a text frame carries one
packet and a binary frame carries one binary MESSAGE with no type digit; over
long-polling a body carries several packets separated by C{\\x1e}, binary ones
written as C{b} + base64.

Outgoing packets are kept as L{Frame}s: the bytes of one encoded packet, built
once and written to any number of transports (a broadcast encodes once).
"""

from __future__ import annotations

import binascii
from base64 import b64decode, b64encode
from typing import Iterator, Sequence

OPEN = 0
CLOSE = 1
PING = 2
PONG = 3
MESSAGE = 4
UPGRADE = 5
NOOP = 6

#: The record separator between packets of a long-polling payload.
SEPARATOR = b"\x1e"

_TYPE_DIGITS = frozenset(b"0123456")


class PacketError(ValueError):
    """
    Input that is not a valid Engine.IO v4 packet or payload.
    """


class Frame:
    """
    One encoded outgoing Engine.IO packet.

    @ivar data: for a text packet, its type digit and data (C{b"4..."}); for a
        binary MESSAGE, the raw bytes.
    @ivar binary: whether this is a binary MESSAGE.
    @ivar prepared: a cache slot for the WebSocket glue, which may keep the
        complete WebSocket frame here so that a broadcast frames it once.
    """

    __slots__ = ("data", "binary", "prepared")

    def __init__(self, data: bytes, binary: bool = False) -> None:
        self.data = data
        self.binary = binary
        self.prepared: bytes | None = None

    def __repr__(self) -> str:
        return f"Frame({self.data!r}, binary={self.binary})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frame):
            return NotImplemented
        return self.data == other.data and self.binary == other.binary

    def __hash__(self) -> int:
        return hash((self.data, self.binary))

    def __len__(self) -> int:
        return len(self.data)


class FrameBatch(Frame):
    """
    Several text packets sent together, in order: what a reactor turn's
    announcements to everyone come to for one session.

    Why: a login storm makes each login an announcement to every logged-in
    device; sent one by one, a turn of K logins costs K writes per device,
    batched one. Over WebSocket the batch is written at once, each packet
    its own WebSocket message (the glue joins their frames, once for all
    the sessions it goes to); a session that queues instead (long-polling,
    paused, upgrading) queues the packets one by one, as if sent apart.

    @ivar parts: the packets.
    """

    __slots__ = ("parts",)

    def __init__(self, parts: Sequence[Frame]) -> None:
        """
        @raise ValueError: if a part is binary or a batch itself.
        """
        super().__init__(b"")
        for part in parts:
            if part.binary or isinstance(part, FrameBatch):
                raise ValueError("a batch holds text packets only")
        self.parts = tuple(parts)

    def __repr__(self) -> str:
        return f"FrameBatch({list(self.parts)!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FrameBatch):
            return NotImplemented
        return self.parts == other.parts

    def __hash__(self) -> int:
        return hash(self.parts)

    def __len__(self) -> int:
        return sum(len(part.data) for part in self.parts)


def textFrame(packetType: int, data: bytes = b"") -> Frame:
    """
    Encode a text packet of the given type.
    """
    return Frame(b"%d" % (packetType,) + data)


def messageFrame(data: bytes) -> Frame:
    """
    Encode a text MESSAGE packet (what carries every Socket.IO packet).
    """
    return Frame(b"4" + data)


def binaryFrame(data: bytes) -> Frame:
    """
    Encode a binary MESSAGE packet.
    """
    return Frame(bytes(data), binary=True)


PING_FRAME = textFrame(PING)
PONG_PROBE_FRAME = textFrame(PONG, b"probe")
NOOP_FRAME = textFrame(NOOP)
CLOSE_FRAME = textFrame(CLOSE)


def decodeText(data: bytes) -> tuple[int, bytes]:
    """
    Decode one text packet (a WebSocket text frame or one payload segment).

    @return: the packet type and its data.
    @raise PacketError: on an empty packet or an unknown type.
    """
    if not data or data[0] not in _TYPE_DIGITS:
        raise PacketError("unknown packet type")
    return data[0] - 48, data[1:]


def encodePayload(frames: list[Frame]) -> bytes:
    """
    Encode frames as one long-polling response body.
    """
    parts = []
    for frame in frames:
        if frame.binary:
            parts.append(b"b" + b64encode(frame.data))
        else:
            parts.append(frame.data)
    return SEPARATOR.join(parts)


def decodePayload(body: bytes) -> Iterator[tuple[int, bytes, bool]]:
    """
    Decode a long-polling request body.

    @return: an iterator of C{(type, data, binary)}; the whole body is checked
        before the first packet is produced, so a malformed body yields
        nothing at all.
    @raise PacketError: if any segment is malformed.
    """
    packets = []
    for segment in body.split(SEPARATOR):
        if segment[:1] == b"b":
            try:
                packets.append((MESSAGE, b64decode(segment[1:], validate=True), True))
            except (binascii.Error, ValueError):
                raise PacketError("invalid base64 in binary packet")
        else:
            packetType, data = decodeText(segment)
            packets.append((packetType, data, False))
    return iter(packets)


# ---- Engine.IO v3 (socket.io-client 2.x), served with allowEIO3


def _utf16Length(text: bytes) -> int:
    # The payload's lengths count JavaScript string units (UTF-16).
    if text.isascii():
        return len(text)
    return len(text.decode("utf-8").encode("utf-16-le")) // 2


def encodePayloadV3(frames: list[Frame]) -> bytes:
    """
    Encode frames as one Engine.IO v3 long-polling response body: each
    packet as C{<length>:<packet>}, the length in UTF-16 units, binary ones
    as C{b4} + base64 (every v3 client decodes those in a text payload).
    """
    parts = []
    for frame in frames:
        if frame.binary:
            data = b"b4" + b64encode(frame.data)
            parts.append(b"%d:%s" % (len(data), data))
        else:
            parts.append(b"%d:%s" % (_utf16Length(frame.data), frame.data))
    return b"".join(parts)


def decodePayloadV3(body: bytes) -> Iterator[tuple[int, bytes, bool]]:
    """
    Decode an Engine.IO v3 long-polling request body: the text form
    (C{<length>:<packet>}..., lengths in UTF-16 units, C{b4}+base64 for
    binary) or the binary form a client with binary support sends when a
    packet is binary (per packet: C{0} for text or C{1} for binary, the
    length as one byte per decimal digit, C{0xff}, then the packet; a
    binary packet starts with its type byte).

    @return: an iterator of C{(type, data, binary)}, as L{decodePayload}.
    @raise PacketError: if anything is malformed.
    """
    if body[:1] in (b"\x00", b"\x01"):
        return iter(_decodeBinaryPayloadV3(body))
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise PacketError("payload is not UTF-8")
    units = text.encode("utf-16-le")
    packets = []
    pos = 0
    end = len(units)
    if end == 0:
        raise PacketError("empty payload")
    while pos < end:
        colon = units.find(b":\x00", pos)
        while colon >= 0 and (colon - pos) % 2:
            colon = units.find(b":\x00", colon + 1)
        if colon < 0:
            raise PacketError("missing length")
        digits = units[pos:colon].decode("utf-16-le")
        if not digits.isdigit() or len(digits) > 10:
            raise PacketError("invalid length")
        length = int(digits)
        start = colon + 2
        stop = start + 2 * length
        if stop > end:
            raise PacketError("truncated packet")
        segment = units[start:stop].decode("utf-16-le", "surrogatepass")
        try:
            data = segment.encode("utf-8")
        except UnicodeEncodeError:
            raise PacketError("packet cut inside a character")
        pos = stop
        if not data:
            continue
        if data[:2] == b"b4":
            try:
                packets.append((MESSAGE, b64decode(data[2:], validate=True), True))
            except (binascii.Error, ValueError):
                raise PacketError("invalid base64 in binary packet")
        else:
            packetType, payload = decodeText(data)
            packets.append((packetType, payload, False))
    return iter(packets)


def _decodeBinaryPayloadV3(body: bytes) -> list[tuple[int, bytes, bool]]:
    packets = []
    pos = 0
    end = len(body)
    while pos < end:
        isText = body[pos] == 0
        if body[pos] not in (0, 1):
            raise PacketError("invalid binary payload")
        stop = body.find(b"\xff", pos + 1)
        if stop < 0 or stop - pos - 1 > 10 or stop == pos + 1:
            raise PacketError("invalid length")
        length = 0
        for digit in body[pos + 1 : stop]:
            if digit > 9:
                raise PacketError("invalid length")
            length = length * 10 + digit
        start = stop + 1
        pos = start + length
        if pos > end or length == 0:
            raise PacketError("truncated packet")
        data = body[start:pos]
        if isText:
            # engine.io-parser 2 decodes a text packet as UTF-8 and refuses
            # it if it is not (found by fuzz/eio_packet.py).
            try:
                data.decode("utf-8")
            except UnicodeDecodeError:
                raise PacketError("text packet is not UTF-8")
            packetType, payload = decodeText(data)
            packets.append((packetType, payload, False))
        else:
            if data[0] != MESSAGE:
                raise PacketError("binary packet that is not a message")
            packets.append((MESSAGE, data[1:], True))
    return packets
