"""
Fuzz target: the validation of every client payload
(L{crm_im.im.validation}).

The first byte picks a validator; the payload is either the rest parsed as
the Socket.IO decoder parses an event's argument (JSON, leniently), or a
value built from the input's bytes (objects with the fields the validators
look for, of every JSON type: type confusion is the point). Bugs: any
exception but L{IMError}; an accepted value outside its documented bounds.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from crm_im.im import validation as v
from crm_im.im.errors import IMError
from crm_im.socketio.packet import DecodeError, decodeText

from . import Input

#: Field names the validators read (so built objects hit them).
FIELDS = (
    "id", "name", "avatar", "token", "toId", "fromId", "content", "type", "fileUrl", "fileName",
    "timestamp", "topic", "groupId", "roomId", "mentions", "isTyping", "status", "limit", "before",
    "after", "friendId", "upToSeq", "messageIds", "data", "fileSize", "mimeType", "memberIds",
    "userIds", "userId", "role", "messageId", "public",
)
STRINGS = ("", "a", "me", "text", "file", "online", "owner", "member", "\x00", "\x1f", "x" * 129,
           "data:;base64,QQ==", "QQ==", "@@", "\ud800", "1" * 200)
NUMBERS = (0, 1, -1, 2**53, 2**63 - 1, 2**63, 2**64 - 1, -(2**63), 0.5, -0.0, 1e308)


def value(source: Input, depth: int = 0) -> Any:
    """
    A JSON-like value (what the decoder can produce, plus bytes for
    binary attachments).
    """
    kind = source.byte() % (9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return bool(source.byte() & 1)
    if kind == 2:
        return source.choice(NUMBERS) if source.byte() & 1 else source.integer(source.byte() % 9 or 1)
    if kind == 3:
        return source.choice(STRINGS)
    if kind == 4:
        return source.text(200)
    if kind == 5:
        return source.blob(64)
    if kind == 6:
        return [value(source, depth + 1) for _ in range(source.byte() % 6)]
    if kind == 7:
        # long lists, to reach the count bounds
        return [value(source, 3) for _ in range(source.byte() * 5)]
    return {str(source.choice(FIELDS)): value(source, depth + 1) for _ in range(source.byte() % 10)}


def _message(data: Any) -> None:
    request = v.message(data, "me", 1000)
    assert len(request.content) <= 1000
    assert sum(x is not None for x in (request.toId, request.groupId, request.roomId)) == 1
    assert len(request.mentions) <= v.MAX_MENTIONS


def _history(data: Any) -> None:
    request = v.history(data)
    assert 1 <= request.limit <= v.MAX_HISTORY


def _read(data: Any) -> None:
    request = v.read(data)
    assert request.messageIds is None or 1 <= len(request.messageIds) <= v.MAX_READ_IDS


def _ids(*values: str) -> None:
    for item in values:
        assert isinstance(item, str) and 1 <= len(item) <= v.MAX_ID and "\x00" not in item


VALIDATORS: tuple[Callable[[Any], Any], ...] = (
    lambda d: _ids(v.login(d).id),
    _message,
    lambda d: v.typing(d, "me"),
    v.status,
    _history,
    _read,
    lambda d: _ids(v.fileTransfer(d, "me").toId),
    lambda d: _ids(*v.groupCreate(d).memberIds),
    lambda d: _ids(v.groupId(d, "group:info")),
    v.groupUpdate,
    lambda d: _ids(*v.groupMembers(d, "group:add_members")[1]),
    v.groupRole,
    v.readReceipts,
    v.roomCreate,
    lambda d: _ids(v.roomId(d, "room:join")),
    v.recall,
)


def checkOne(
    data: bytes, validators: Sequence[Callable[[Any], Any]], build: Callable[[Input], Any]
) -> None:
    """
    Run one of C{validators} (the input's first byte picks it) on a payload
    decoded as the Socket.IO decoder would, or built by C{build}: anything
    but a refusal with one of the contract's codes is a bug. (Shared by the
    targets of validators: this one and C{fuzz.keys}.)
    """
    source = Input(data)
    check = validators[source.byte() % len(validators)]
    if source.byte() & 1:
        try:
            packet, _ = decodeText(b'2["e",' + source.rest() + b"]")
        except DecodeError:
            return
        args = packet.data[1:]
        if not args:
            return
        payload = args[0]
    else:
        payload = build(source)
    try:
        check(payload)
    except IMError as error:
        assert error.code in ("INVALID_PAYLOAD", "TOO_LARGE", "FORBIDDEN"), error.code


def TestOneInput(data: bytes) -> None:
    checkOne(data, VALIDATORS, value)
