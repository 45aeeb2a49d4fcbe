# -*- test-case-name: tests.test_sio_packet -*-
"""
Socket.IO v5 packets: the encoder and the strict decoder.

This is the one place where a Socket.IO packet is parsed. A packet travels
as one Engine.IO MESSAGE: C{<type>[<attachments>-][<namespace>,][<id>][json]};
binary attachments follow as binary MESSAGEs, referenced from the JSON by
C{{"_placeholder": true, "num": N}}. The decoder refuses exactly what the
official parser refuses (unknown type, bad attachment count, bad JSON, a
payload of the wrong shape, a reserved or non-string event name, a
placeholder that is malformed or out of range) and a little more that a
server must bound (attachment count and total size, ack ids past 2**53).
"""

from __future__ import annotations

import json
import re
from typing import Any, Sequence

from .._json import JSONDecodeError, dumps, loads
from ..engineio.packet import Frame, binaryFrame, messageFrame

CONNECT = 0
DISCONNECT = 1
EVENT = 2
ACK = 3
CONNECT_ERROR = 4
BINARY_EVENT = 5
BINARY_ACK = 6

#: Event names a client may not emit (they name the socket's own lifecycle).
RESERVED_EVENTS = frozenset(
    ["connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"]
)

_MAX_ACK_ID = 2**53 - 1

#: The deepest JSON nesting accepted. orjson parses up to 1024 levels, but
#: the codec's own walks recurse in Python (whose limit is 1000 frames) and
#: orjson serialises at most 254 levels: anything deeper could be decoded
#: but neither reconstructed nor relayed.
MAX_DEPTH = 128
_BINARY_TYPES = (bytes, bytearray, memoryview)


class DecodeError(ValueError):
    """
    Input that is not a valid Socket.IO v5 packet.
    """


class SocketIOPacket:
    """
    One decoded or to-be-encoded Socket.IO packet.

    @ivar type: the packet type (C{CONNECT} ... C{BINARY_ACK}).
    @ivar namespace: the namespace, C{"/"} by default.
    @ivar data: the JSON payload (with attachments put back in place), or
        C{None} when the packet has none.
    @ivar id: the acknowledgement id, or C{None}.
    """

    __slots__ = ("type", "namespace", "data", "id")

    def __init__(self, type: int, namespace: str = "/", data: Any = None, id: int | None = None) -> None:
        self.type = type
        self.namespace = namespace
        self.data = data
        self.id = id

    def __repr__(self) -> str:
        return f"SocketIOPacket({self.type}, {self.namespace!r}, {self.data!r}, id={self.id})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SocketIOPacket):
            return NotImplemented
        return (self.type, self.namespace, self.data, self.id) == (
            other.type,
            other.namespace,
            other.data,
            other.id,
        )


# ---- encoding


def hasBinary(value: Any) -> bool:
    """
    Whether C{value} contains bytes anywhere (and so needs attachments).
    """
    if isinstance(value, _BINARY_TYPES):
        return True
    if isinstance(value, (list, tuple)):
        return any(hasBinary(item) for item in value)
    if isinstance(value, dict):
        return any(hasBinary(item) for item in value.values())
    return False


def _deconstruct(value: Any, buffers: list[bytes]) -> Any:
    if isinstance(value, _BINARY_TYPES):
        buffers.append(bytes(value))
        return {"_placeholder": True, "num": len(buffers) - 1}
    if isinstance(value, (list, tuple)):
        return [_deconstruct(item, buffers) for item in value]
    if isinstance(value, dict):
        return {key: _deconstruct(item, buffers) for key, item in value.items()}
    return value


_PLAIN = {BINARY_EVENT: EVENT, BINARY_ACK: ACK}


def encode(packet: SocketIOPacket) -> list[Frame]:
    """
    Encode C{packet} as Engine.IO frames: the text packet, then one binary
    frame per attachment.
    """
    # The wire type follows the data: a BINARY_EVENT or BINARY_ACK whose
    # data holds no bytes (one decoded from "50-...", say, and relayed) is
    # written as a plain EVENT or ACK, since "5" without an attachment count
    # is not a packet any decoder accepts.
    packetType = _PLAIN.get(packet.type, packet.type)
    data = packet.data
    buffers: list[bytes] = []
    body = b""
    if data is not None:
        try:
            # The common case: no bytes anywhere, and orjson says so by
            # refusing them, which is cheaper than walking the value first.
            body = dumps(data)
        except TypeError:
            if packetType not in (EVENT, ACK) or not hasBinary(data):
                raise
            packetType = BINARY_EVENT if packetType == EVENT else BINARY_ACK
            body = dumps(_deconstruct(data, buffers))
    head = b"%d" % (packetType,)
    if buffers:
        head += b"%d-" % (len(buffers),)
    if packet.namespace != "/":
        head += packet.namespace.encode("utf-8") + b","
    if packet.id is not None:
        head += b"%d" % (packet.id,)
    frames = [messageFrame(head + body)]
    for buffer in buffers:
        frames.append(binaryFrame(buffer))
    return frames


def encodeEvent(namespace: str, event: str, args: Sequence[Any], id: int | None = None) -> list[Frame]:
    """
    Encode an EVENT (or BINARY_EVENT) C{event} with C{args}.
    """
    if namespace == "/" and id is None:
        # What nearly every emit is: one text frame, C{42[...]}, built
        # without the packet object (orjson refuses bytes: then the general
        # path makes attachments).
        try:
            return [Frame(b"42" + dumps([event, *args]))]
        except TypeError:
            pass
    return encode(SocketIOPacket(EVENT, namespace, [event, *args], id))


def encodeAck(namespace: str, id: int, args: Sequence[Any]) -> list[Frame]:
    """
    Encode an ACK (or BINARY_ACK) for C{id} with C{args}.
    """
    return encode(SocketIOPacket(ACK, namespace, list(args), id))


# ---- decoding


def _validPayload(packetType: int, payload: Any) -> bool:
    if packetType == CONNECT:
        return isinstance(payload, dict)
    if packetType == DISCONNECT:
        return False
    if packetType == CONNECT_ERROR:
        return isinstance(payload, (str, dict))
    if packetType in (EVENT, BINARY_EVENT):
        return (
            isinstance(payload, list)
            and len(payload) > 0
            and isinstance(payload[0], str)
            and payload[0] not in RESERVED_EVENTS
        )
    return isinstance(payload, list)


def _tooDeep(value: Any, limit: int) -> bool:
    # Iterative, so that it cannot itself run out of stack.
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        for child in children:
            if isinstance(child, (list, dict)):
                stack.append((child, depth + 1))
    return False


_SURROGATE = re.compile("[\ud800-\udfff]")
_MAX_INT64 = 2**63


def _noConstants(name: str) -> Any:
    raise ValueError(name)


def _parseInt(digits: str) -> int | float:
    # JSON.parse reads every number as a double; orjson cannot write
    # integers past 64 bits.
    value = int(digits)
    return value if -_MAX_INT64 <= value < _MAX_INT64 else float(value)


def _replaceSurrogates(value: Any) -> Any:
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_replaceSurrogates(item) for item in value]
    if isinstance(value, dict):
        return {_replaceSurrogates(key): _replaceSurrogates(item) for key, item in value.items()}
    return value


def _loadsLenient(text: bytes) -> Any:
    """
    Parse JSON that orjson refused but C{JSON.parse} accepts: the case
    that matters is a lone UTF-16 surrogate escape (C{"\\ud83d"}, half of
    a cut emoji), which becomes U+FFFD, so that the value can be handled
    and relayed. Only the refused packets pay for this.

    @raise DecodeError: if it is not valid JSON for C{JSON.parse} either.
    """
    try:
        value = json.loads(text.decode("utf-8"), parse_constant=_noConstants, parse_int=_parseInt)
    except (ValueError, RecursionError):
        raise DecodeError("invalid payload")
    if isinstance(value, (list, dict)) and _tooDeep(value, MAX_DEPTH):
        raise DecodeError("payload nested too deeply")
    return _replaceSurrogates(value)


def decodeText(text: bytes) -> tuple[SocketIOPacket, int]:
    """
    Decode the text part of a packet.

    @return: the packet (placeholders still in its data) and the number of
        binary attachments that follow.
    @raise DecodeError: on malformed input.
    """
    length = len(text)
    if length == 0 or not 48 <= text[0] <= 54:
        raise DecodeError("unknown packet type")
    packetType = text[0] - 48
    i = 1
    attachments = 0
    if packetType in (BINARY_EVENT, BINARY_ACK):
        dash = text.find(b"-", 1)
        count = text[1:dash]
        if dash < 0 or not count.isdigit() or len(count) > 6:
            raise DecodeError("illegal attachments")
        attachments = int(count)
        i = dash + 1
    namespace = "/"
    if i < length and text[i] == 47:  # "/"
        comma = text.find(b",", i)
        end = length if comma < 0 else comma
        try:
            namespace = text[i:end].decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError("invalid namespace")
        i = end + 1 if comma >= 0 else end
    ackId = None
    start = i
    while i < length and 48 <= text[i] <= 57:
        i += 1
    if i > start:
        if i - start > 16:
            raise DecodeError("invalid ack id")
        ackId = int(text[start:i])
        if ackId > _MAX_ACK_ID:
            raise DecodeError("invalid ack id")
    data = None
    if i < length:
        try:
            data = loads(text[i:])
        except JSONDecodeError:
            data = _loadsLenient(text[i:])
        # Counting brackets is cheap and bounds the depth from above; only
        # a packet with many of them pays for the walk.
        if text.count(b"[", i) + text.count(b"{", i) > MAX_DEPTH and isinstance(data, (list, dict)):
            if _tooDeep(data, MAX_DEPTH):
                raise DecodeError("payload nested too deeply")
        if not _validPayload(packetType, data):
            raise DecodeError("invalid payload")
    elif packetType in (EVENT, BINARY_EVENT, ACK, BINARY_ACK, CONNECT_ERROR):
        raise DecodeError("invalid payload")
    if packetType in (ACK, BINARY_ACK) and ackId is None:
        raise DecodeError("invalid ack id")
    return SocketIOPacket(packetType, namespace, data, ackId), attachments


def _reconstruct(value: Any, buffers: list[bytes]) -> Any:
    if isinstance(value, dict):
        if value.get("_placeholder") is True:
            num = value.get("num")
            # bool is an int in Python; JSON true is not a valid index.
            if type(num) is not int or not 0 <= num < len(buffers):
                raise DecodeError("illegal attachments")
            return buffers[num]
        return {key: _reconstruct(item, buffers) for key, item in value.items()}
    if isinstance(value, list):
        return [_reconstruct(item, buffers) for item in value]
    return value


class Decoder:
    """
    Decodes the stream of Engine.IO messages of one connection into
    Socket.IO packets, collecting binary attachments.

    @ivar maxAttachments: the most attachments one packet may announce.
    @ivar maxAttachmentBytes: the most bytes all attachments of one packet
        may add up to.
    """

    __slots__ = ("maxAttachments", "maxAttachmentBytes", "_pending", "_expected", "_buffers", "_bytes")

    def __init__(self, maxAttachments: int = 16, maxAttachmentBytes: int = 1_000_000) -> None:
        self.maxAttachments = maxAttachments
        self.maxAttachmentBytes = maxAttachmentBytes
        self._pending: SocketIOPacket | None = None
        self._expected = 0
        self._buffers: list[bytes] = []
        self._bytes = 0

    def feed(self, data: bytes, binary: bool) -> SocketIOPacket | None:
        """
        Feed one Engine.IO message.

        @return: a complete packet, or C{None} while attachments are still
            expected.
        @raise DecodeError: on malformed input; the decoder must not be used
            after that (the connection is closed).
        """
        if binary:
            if self._pending is None:
                raise DecodeError("got binary data when not reconstructing a packet")
            self._bytes += len(data)
            if self._bytes > self.maxAttachmentBytes:
                raise DecodeError("attachments too large")
            self._buffers.append(bytes(data))
            if len(self._buffers) < self._expected:
                return None
            packet = self._pending
            buffers = self._buffers
            self._pending = None
            self._buffers = []
            self._bytes = 0
            packet.data = _reconstruct(packet.data, buffers)
            return packet
        if self._pending is not None:
            raise DecodeError("got plaintext data when reconstructing a packet")
        packet, attachments = decodeText(data)
        if packet.type in (BINARY_EVENT, BINARY_ACK):
            if attachments > self.maxAttachments:
                raise DecodeError("too many attachments")
            if attachments > 0:
                self._pending = packet
                self._expected = attachments
                return None
            packet.data = _reconstruct(packet.data, [])
        return packet
