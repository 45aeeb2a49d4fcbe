"""
Fuzz target: the Socket.IO v5 decoder (L{crm_im.socketio.packet.Decoder})
fed a stream of Engine.IO messages, text and binary.

The input is split at C{0x1e}; a part starting with C{0xff} is a binary
message (the rest of the part), any other a text message. Bugs: any
exception but L{DecodeError}; a decoded packet that cannot be encoded again
(the server relays what it decoded), or that does not decode back to
itself.
"""

from __future__ import annotations

import math
from typing import Any

from crm_im.socketio.packet import ACK, BINARY_ACK, BINARY_EVENT, EVENT, DecodeError, Decoder, SocketIOPacket, encode

_PLAIN = {BINARY_EVENT: EVENT, BINARY_ACK: ACK}


def _finite(value: Any) -> bool:
    # JSON.parse("1e999") is Infinity, which JSON.stringify writes as null:
    # such a value does not survive a round trip, in Node either.
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_finite(item) for item in value)
    if isinstance(value, dict):
        return all(_finite(item) for item in value.values())
    return True


def _roundTrip(packet: SocketIOPacket) -> None:
    frames = encode(packet)
    decoder = Decoder(maxAttachments=len(frames), maxAttachmentBytes=10**9)
    result = None
    for frame in frames:
        assert result is None, "a packet ended before its attachments"
        result = decoder.feed(frame.data[1:] if not frame.binary else frame.data, frame.binary)
    assert result is not None, "attachments missing"
    if _finite(packet.data):
        # (a BINARY_EVENT/ACK without bytes comes back as a plain EVENT/ACK:
        # the wire type follows the data)
        expected = SocketIOPacket(_PLAIN.get(packet.type, packet.type), packet.namespace, packet.data, packet.id)
        assert result == expected or result == packet, (packet, result)


def TestOneInput(data: bytes) -> None:
    decoder = Decoder(maxAttachments=4, maxAttachmentBytes=4096)
    for part in data.split(b"\x1e"):
        binary = part[:1] == b"\xff"
        try:
            packet = decoder.feed(part[1:] if binary else part, binary)
        except DecodeError:
            return
        if packet is not None:
            _roundTrip(packet)
