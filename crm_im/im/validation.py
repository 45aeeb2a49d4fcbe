# -*- test-case-name: tests.test_im_validation -*-
"""
Validation of every client payload, in one place.

Each function takes the raw JSON value a client sent and returns a clean,
bounded value, or raises L{IMError} with C{INVALID_PAYLOAD} (or
C{TOO_LARGE}) and a message a client developer can act on. Nothing here
trusts a type, a length or a count.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from typing import Any

import attrs

from .errors import FORBIDDEN, INVALID_PAYLOAD, TOO_LARGE, IMError

MAX_ID = 128
MAX_NAME = 128
MAX_AVATAR = 2048
MAX_TOPIC = 128
MAX_URL = 2048
MAX_FILE_NAME = 255
MAX_MIME = 255
MAX_READ_IDS = 500
MAX_HISTORY = 200
DEFAULT_HISTORY = 50
MAX_TOKEN = 8192
_MAX_SEQ = 2**63 - 1


def _invalid(message: str, id: str | None = None) -> IMError:
    return IMError(INVALID_PAYLOAD, message, id)


def _nameRefusal(error: IMError, raw: Any, id: str) -> None:
    """
    A refusal of a message names it by C{id}, but only when the client
    chose it (an id the server made up means nothing to the client).

    (A plain C{try}/C{except} at each caller rather than a context manager:
    this runs for every message.)
    """
    if raw is not None:
        error.id = id


def payloadObject(data: Any, event: str) -> dict[str, Any]:
    """
    The payload must be a JSON object.
    """
    if not isinstance(data, dict):
        raise _invalid(f"{event} expects an object")
    return data


def userId(value: Any, field: str) -> str:
    """
    A user id: a non-empty string or an integer, kept as a string, at most
    128 characters.
    """
    if isinstance(value, bool) or value is None:
        raise _invalid(f"{field} must be a non-empty string or an integer")
    if isinstance(value, int):
        value = str(value)
    if not isinstance(value, str) or not value or len(value) > MAX_ID:
        raise _invalid(f"{field} must be a non-empty string or an integer of at most {MAX_ID} characters")
    return value


def text(value: Any, field: str, maxLength: int, minLength: int = 0) -> str:
    """
    A string of bounded length.
    """
    if not isinstance(value, str):
        raise _invalid(f"{field} must be a string")
    if not minLength <= len(value) <= maxLength:
        raise _invalid(f"{field} must be {minLength}..{maxLength} characters")
    return value


def optionalText(value: Any, field: str, maxLength: int) -> str | None:
    """
    A bounded string, or C{None} when absent or null.
    """
    return None if value is None else text(value, field, maxLength)


def sequenceNumber(value: Any, field: str) -> int:
    """
    A message C{seq}: a non-negative integer.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _MAX_SEQ:
        raise _invalid(f"{field} must be a non-negative integer")
    return value


def checkSender(data: dict[str, Any], loggedInId: str) -> None:
    """
    A payload may repeat the sender's id, never claim another.
    """
    claimed = data.get("fromId")
    if claimed is not None and str(claimed) != loggedInId:
        raise IMError(FORBIDDEN, "fromId does not match the logged-in user")


@attrs.frozen
class LoginRequest:
    """
    A valid C{user:login}.
    """

    id: str
    name: str
    avatar: str | None
    token: str | None


def login(data: Any) -> LoginRequest:
    """
    Validate C{user:login}.
    """
    data = payloadObject(data, "user:login")
    return LoginRequest(
        id=userId(data.get("id"), "id"),
        name=text(data.get("name"), "name", MAX_NAME, 1),
        avatar=optionalText(data.get("avatar"), "avatar", MAX_AVATAR),
        token=optionalText(data.get("token"), "token", MAX_TOKEN),
    )


@attrs.frozen
class MessageRequest:
    """
    A valid C{message}.
    """

    id: str
    toId: str
    topic: str | None
    type: str
    content: str
    fileUrl: str | None
    fileName: str | None
    timestamp: int | float | None


def clientId(value: Any, field: str) -> str:
    """
    A message id a client names: a non-empty string or an integer (kept as
    a string), at most 128 characters.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    return text(value, field, MAX_ID, 1)


def messageId(value: Any) -> str:
    """
    A client-chosen message id (or a new UUID when absent).
    """
    if value is None:
        return str(uuid.uuid4())
    return clientId(value, "id")


def message(data: Any, loggedInId: str, maxLength: int) -> MessageRequest:
    """
    Validate C{message}.
    """
    data = payloadObject(data, "message")
    raw = data.get("id")
    id = messageId(raw)
    try:
        checkSender(data, loggedInId)
        kind = data.get("type", "text")
        if kind is None:
            kind = "text"
        if kind not in ("text", "file"):
            raise _invalid("type must be 'text' or 'file'")
        content = data.get("content", "" if kind == "file" else None)
        if not isinstance(content, str):
            raise _invalid("content must be a string")
        if len(content) > maxLength:
            raise IMError(TOO_LARGE, f"content is longer than {maxLength} characters")
        fileUrl = fileName = None
        if kind == "file":
            fileUrl = text(data.get("fileUrl"), "fileUrl", MAX_URL, 1)
            fileName = text(data.get("fileName"), "fileName", MAX_FILE_NAME, 1)
        timestamp = data.get("timestamp")
        if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float, type(None))):
            raise _invalid("timestamp must be a number")
        return MessageRequest(
            id=id,
            toId=userId(data.get("toId"), "toId"),
            topic=optionalText(data.get("topic"), "topic", MAX_TOPIC),
            type=kind,
            content=content,
            fileUrl=fileUrl,
            fileName=fileName,
            timestamp=timestamp,
        )
    except IMError as error:
        _nameRefusal(error, raw, id)
        raise


@attrs.frozen
class TypingRequest:
    """
    A valid C{typing}.
    """

    toId: str
    isTyping: bool
    topic: str | None


def typing(data: Any, loggedInId: str) -> TypingRequest:
    """
    Validate C{typing}.
    """
    data = payloadObject(data, "typing")
    checkSender(data, loggedInId)
    isTyping = data.get("isTyping", False)
    if not isinstance(isTyping, bool):
        raise _invalid("isTyping must be a boolean")
    return TypingRequest(
        toId=userId(data.get("toId"), "toId"),
        isTyping=isTyping,
        topic=optionalText(data.get("topic"), "topic", MAX_TOPIC),
    )


def status(data: Any) -> str:
    """
    Validate C{status_change}.
    """
    from ..presence import STATUSES

    data = payloadObject(data, "status_change")
    value = data.get("status")
    if value not in STATUSES:
        raise _invalid("status must be one of online, away, busy, offline")
    return str(value)


@attrs.frozen
class HistoryRequest:
    """
    A valid C{get_history}.
    """

    friendId: str
    topic: str | None
    limit: int
    before: int | None
    after: int | None


def history(data: Any) -> HistoryRequest:
    """
    Validate C{get_history}.
    """
    data = payloadObject(data, "get_history")
    limit = data.get("limit")
    if limit is None:
        limit = DEFAULT_HISTORY
    elif isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise _invalid("limit must be a positive integer")
    before = data.get("before")
    after = data.get("after")
    return HistoryRequest(
        friendId=userId(data.get("friendId"), "friendId"),
        topic=optionalText(data.get("topic"), "topic", MAX_TOPIC),
        limit=min(limit, MAX_HISTORY),
        before=None if before is None else sequenceNumber(before, "before"),
        after=None if after is None else sequenceNumber(after, "after"),
    )


@attrs.frozen
class ReadRequest:
    """
    A valid C{message:read}: either C{friendId} and C{upToSeq}, or
    C{messageIds}.
    """

    friendId: str | None
    upToSeq: int | None
    messageIds: tuple[str, ...] | None


def read(data: Any) -> ReadRequest:
    """
    Validate C{message:read}.
    """
    data = payloadObject(data, "message:read")
    ids = data.get("messageIds")
    if ids is not None:
        if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_READ_IDS:
            raise _invalid(f"messageIds must be a list of 1..{MAX_READ_IDS} ids")
        return ReadRequest(None, None, tuple(clientId(i, "messageIds[]") for i in ids))
    if data.get("friendId") is None or data.get("upToSeq") is None:
        raise _invalid("message:read expects {friendId, upToSeq} or {messageIds}")
    return ReadRequest(userId(data["friendId"], "friendId"), sequenceNumber(data["upToSeq"], "upToSeq"), None)


@attrs.frozen
class FileRequest:
    """
    A valid C{file_transfer}.

    @ivar raw: the client's payload, relayed in the form it came.
    @ivar data: the file's bytes (decoded from base64 if it came as text).
    """

    id: str
    toId: str
    fileName: str
    fileSize: int | None
    mimeType: str | None
    topic: str | None
    raw: dict[str, Any]
    data: bytes


def fileTransfer(data: Any, loggedInId: str) -> FileRequest:
    """
    Validate C{file_transfer}.
    """
    data = payloadObject(data, "file_transfer")
    raw = data.get("id")
    id = messageId(raw)
    try:
        checkSender(data, loggedInId)
        content = data.get("data")
        if isinstance(content, bytes):
            blob = content
        elif isinstance(content, str):
            try:
                blob = base64.b64decode(content.split(",", 1)[-1] if content.startswith("data:") else content, validate=True)
            except (binascii.Error, ValueError):
                raise _invalid("data must be binary or a base64 string")
        else:
            raise _invalid("data must be binary or a base64 string")
        size = data.get("fileSize")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise _invalid("fileSize must be a non-negative integer")
        return FileRequest(
            id=id,
            toId=userId(data.get("toId"), "toId"),
            fileName=text(data.get("fileName"), "fileName", MAX_FILE_NAME, 1),
            fileSize=size,
            mimeType=optionalText(data.get("mimeType"), "mimeType", MAX_MIME),
            topic=optionalText(data.get("topic"), "topic", MAX_TOPIC),
            raw=data,
            data=blob,
        )
    except IMError as error:
        _nameRefusal(error, raw, id)
        raise
