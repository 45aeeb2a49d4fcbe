"""
Fuzz target: the Engine.IO packet and payload decoders
(L{crm_im.engineio.packet}), v4 and v3.

Bugs: any exception but L{PacketError}; a payload that decodes but does
not survive encode → decode unchanged.
"""

from __future__ import annotations

from crm_im.engineio.packet import (
    PacketError,
    Frame,
    binaryFrame,
    decodePayload,
    decodePayloadV3,
    decodeText,
    encodePayload,
    encodePayloadV3,
)


def _frames(packets: list[tuple[int, bytes, bool]]) -> list[Frame]:
    return [binaryFrame(data) if binary else Frame(b"%d" % (kind,) + data) for kind, data, binary in packets]


def TestOneInput(data: bytes) -> None:
    try:
        kind, rest = decodeText(data)
    except PacketError:
        pass
    else:
        assert 0 <= kind <= 6 and rest == data[1:]
    try:
        packets = list(decodePayload(data))
    except PacketError:
        pass
    else:
        again = list(decodePayload(encodePayload(_frames(packets))))
        assert again == packets, (packets, again)
    try:
        packets = list(decodePayloadV3(data))
    except PacketError:
        pass
    else:
        if packets:
            again = list(decodePayloadV3(encodePayloadV3(_frames(packets))))
            assert again == packets, (packets, again)
