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
import re
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
#: The largest integer a 64-bit column (SQLite INTEGER, PostgreSQL BIGINT)
#: holds: every client number that is stored is bounded by it.
MAX_INT64 = 2**63 - 1


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
    if "\x1f" in value or "\x00" in value:
        # U+001F joins user ids in conversation keys (crm_im.storage).
        raise _invalid(f"{field} must not contain U+0000 or U+001F")
    return value


def text(value: Any, field: str, maxLength: int, minLength: int = 0) -> str:
    """
    A string of bounded length.
    """
    if not isinstance(value, str):
        raise _invalid(f"{field} must be a string")
    if not minLength <= len(value) <= maxLength:
        raise _invalid(f"{field} must be {minLength}..{maxLength} characters")
    if "\x00" in value:
        # Stored text: a PostgreSQL text value cannot hold NUL.
        raise _invalid(f"{field} must not contain U+0000")
    return value


def conversationName(value: Any) -> str:
    """
    A group's or room's name: 1..L{MAX_NAME} characters, not all blank (a
    name lists show nothing for would name nothing). Kept as given.
    """
    name = text(value, "name", MAX_NAME, 1)
    if not name.strip():
        raise _invalid("name must not be blank")
    return name


def clientTimestamp(value: Any) -> int | float | None:
    """
    A message's client C{timestamp}: kept as sent, so any number a 64-bit
    integer column holds (ms, s, a fraction), or absent. (JSON integers
    past that parse, and would fail the store's write.)
    """
    if value is None:
        return None
    if type(value) is int and -MAX_INT64 <= value <= MAX_INT64:
        # the usual case (Date.now()), first: this runs for every message
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _invalid("timestamp must be a number")
    if not -MAX_INT64 <= value <= MAX_INT64:
        raise _invalid("timestamp must be between -(2**63 - 1) and 2**63 - 1")
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
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_INT64:
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
        # Not sent (or null): "", the original server's type (a string).
        avatar=optionalText(data.get("avatar"), "avatar", MAX_AVATAR) or "",
        token=optionalText(data.get("token"), "token", MAX_TOKEN),
    )


@attrs.frozen
class MessageRequest:
    """
    A valid C{message}.
    """

    id: str
    toId: str | None
    topic: str | None
    type: str
    content: str
    fileUrl: str | None
    fileName: str | None
    timestamp: int | float | None
    groupId: str | None = None
    roomId: str | None = None
    #: users a group message mentions (a muted group still notifies them)
    mentions: tuple[str, ...] = ()
    #: an uploaded file a C{file} message carries (FILES.md)
    fileId: str | None = None
    #: a C{type: 'encrypted'} message's ciphertext, as sent (ENCRYPTION.md)
    ciphertext: str | dict[str, str] | None = None
    #: an encrypted message's algorithm
    algorithm: str | None = None


#: Users one message may mention.
MAX_MENTIONS = 100


def mentions(value: Any) -> tuple[str, ...]:
    """
    The C{mentions} of a group message: at most L{MAX_MENTIONS} user ids.
    """
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > MAX_MENTIONS:
        raise _invalid(f"mentions must be a list of at most {MAX_MENTIONS} user ids")
    return tuple(dict.fromkeys(userId(item, "mentions[]") for item in value))


@attrs.frozen
class Target:
    """
    The conversation a payload names: exactly one of a user (1:1), a
    group or a room.
    """

    toId: str | None
    groupId: str | None
    roomId: str | None


def target(data: dict[str, Any], userField: str = "toId") -> Target:
    """
    Exactly one of C{userField} (C{toId}, or C{friendId} for history),
    C{groupId} and C{roomId} (GROUPS.md: any other combination is
    C{INVALID_PAYLOAD}).
    """
    user = data.get(userField)
    group = data.get("groupId")
    room = data.get("roomId")
    if (user is not None) + (group is not None) + (room is not None) != 1:
        raise _invalid(f"name exactly one of {userField}, groupId and roomId")
    return Target(
        toId=None if user is None else userId(user, userField),
        groupId=None if group is None else clientId(group, "groupId"),
        roomId=None if room is None else clientId(room, "roomId"),
    )


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


#: The longest C{algorithm} of an encrypted message.
MAX_ALGORITHM = 64
#: Device ids one encrypted message may address (its ciphertext object).
MAX_CIPHERTEXT_DEVICES = 1000
#: The default bound of an encrypted message's ciphertext, in characters
#: of its strings and device ids together (the server's maxPayload).
MAX_CIPHERTEXT = 1_000_000


def ciphertext(value: Any, maxSize: int) -> str | dict[str, str]:
    """
    An encrypted message's C{ciphertext}: a non-empty string, or an object
    of non-empty strings keyed by recipient device id; at most C{maxSize}
    characters in all (device ids counted). Kept exactly as sent.
    """
    if isinstance(value, str):
        if not value:
            raise _invalid("ciphertext must not be empty")
        if len(value) > maxSize:
            raise IMError(TOO_LARGE, f"ciphertext is longer than {maxSize} characters")
        return value
    if not isinstance(value, dict) or not value:
        raise _invalid("ciphertext must be a string or an object of strings keyed by device id")
    if len(value) > MAX_CIPHERTEXT_DEVICES:
        raise _invalid(f"ciphertext may address at most {MAX_CIPHERTEXT_DEVICES} devices")
    size = 0
    for deviceId, part in value.items():
        if not isinstance(deviceId, str) or not deviceId or len(deviceId) > MAX_ID:
            raise _invalid(f"ciphertext keys must be device ids of 1..{MAX_ID} characters")
        if not isinstance(part, str) or not part:
            raise _invalid("ciphertext must be a string or an object of strings keyed by device id")
        size += len(deviceId) + len(part)
    if size > maxSize:
        raise IMError(TOO_LARGE, f"ciphertext is longer than {maxSize} characters")
    return value


def _encrypted(data: dict[str, Any], id: str, maxCiphertext: int) -> MessageRequest:
    """
    The rest of a C{type: 'encrypted'} message (ENCRYPTION.md): C{toId} or
    C{groupId}, C{ciphertext} and C{algorithm}, no C{content} (the server
    holds no plaintext), no file.
    """
    if data.get("content") is not None:
        raise _invalid("an encrypted message has no content (send ciphertext)")
    for field in ("fileUrl", "fileName", "fileId"):
        if data.get(field) is not None:
            raise _invalid(f"an encrypted message has no {field}")
    where = target(data)
    if where.roomId is not None:
        raise _invalid("encrypted messages go to a user (toId) or a group (groupId), not a room")
    algorithm = text(data.get("algorithm"), "algorithm", MAX_ALGORITHM, 1)
    timestamp = clientTimestamp(data.get("timestamp"))
    return MessageRequest(
        id=id,
        toId=where.toId,
        topic=optionalText(data.get("topic"), "topic", MAX_TOPIC),
        type="encrypted",
        content="",
        fileUrl=None,
        fileName=None,
        timestamp=timestamp,
        groupId=where.groupId,
        mentions=mentions(data.get("mentions")) if where.groupId is not None else (),
        ciphertext=ciphertext(data.get("ciphertext"), maxCiphertext),
        algorithm=algorithm,
    )


#: What a browser drops from a URL before reading its scheme (WHATWG URL:
#: leading and trailing C0 controls and spaces, and every tab and newline),
#: so that C{"java\tscript:"} is seen as the C{javascript:} it runs as.
_URL_IGNORED = re.compile(r"^[\x00-\x20]+|[\x00-\x20]+$|[\t\n\r]")
_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


def linkURL(value: str, name: str) -> str:
    """
    A link a client shows to another user (a file message's C{fileUrl}):
    http, https, or a reference with no scheme (a path on this server, as
    C{/api/files/...}), as given.

    @raise IMError: C{INVALID_PAYLOAD} for any other scheme: C{javascript:}
        (or C{data:}, C{vbscript:}, C{file:}) would put a script or a local
        file behind a link in the recipient's web client.
    """
    scheme = _URL_SCHEME.match(_URL_IGNORED.sub("", value))
    if scheme is not None and scheme.group(1).lower() not in ("http", "https"):
        raise _invalid(f"{name} must be an http(s) URL or a path on this server")
    return value


def message(data: Any, loggedInId: str, maxLength: int, maxCiphertext: int = MAX_CIPHERTEXT) -> MessageRequest:
    """
    Validate C{message}.

    @param maxCiphertext: the bound of an encrypted message's ciphertext.
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
            if kind == "encrypted":
                return _encrypted(data, id, maxCiphertext)
            raise _invalid("type must be 'text', 'file' or 'encrypted'")
        content = data.get("content", "" if kind == "file" else None)
        if not isinstance(content, str):
            raise _invalid("content must be a string")
        if len(content) > maxLength:
            raise IMError(TOO_LARGE, f"content is longer than {maxLength} characters")
        if "\x00" in content:
            # Stored text: a PostgreSQL text value cannot hold NUL.
            raise _invalid("content must not contain U+0000")
        fileUrl = fileName = fileId = None
        if kind == "file":
            if data.get("fileId") is not None:
                # an uploaded file (FILES.md): the server fills the rest
                fileId = text(data.get("fileId"), "fileId", MAX_ID, 1)
            else:
                fileUrl = linkURL(text(data.get("fileUrl"), "fileUrl", MAX_URL, 1), "fileUrl")
                fileName = text(data.get("fileName"), "fileName", MAX_FILE_NAME, 1)
        timestamp = clientTimestamp(data.get("timestamp"))
        toId = data.get("toId")
        if toId is not None and data.get("groupId") is None and data.get("roomId") is None:
            # the 1:1 message, the hot path: no Target object
            return MessageRequest(
                id=id,
                toId=userId(toId, "toId"),
                topic=optionalText(data.get("topic"), "topic", MAX_TOPIC),
                type=kind,
                content=content,
                fileUrl=fileUrl,
                fileName=fileName,
                timestamp=timestamp,
                fileId=fileId,
            )
        where = target(data)
        return MessageRequest(
            id=id,
            toId=None,
            topic=optionalText(data.get("topic"), "topic", MAX_TOPIC),
            type=kind,
            content=content,
            fileUrl=fileUrl,
            fileName=fileName,
            timestamp=timestamp,
            groupId=where.groupId,
            roomId=where.roomId,
            mentions=mentions(data.get("mentions")) if where.groupId is not None else (),
            fileId=fileId,
        )
    except IMError as error:
        _nameRefusal(error, raw, id)
        raise


@attrs.frozen
class TypingRequest:
    """
    A valid C{typing}.
    """

    toId: str | None
    isTyping: bool
    topic: str | None
    groupId: str | None = None
    roomId: str | None = None


def typing(data: Any, loggedInId: str) -> TypingRequest:
    """
    Validate C{typing}.
    """
    data = payloadObject(data, "typing")
    checkSender(data, loggedInId)
    isTyping = data.get("isTyping", False)
    if not isinstance(isTyping, bool):
        raise _invalid("isTyping must be a boolean")
    where = target(data)
    return TypingRequest(
        toId=where.toId,
        isTyping=isTyping,
        topic=optionalText(data.get("topic"), "topic", MAX_TOPIC),
        groupId=where.groupId,
        roomId=where.roomId,
    )


def status(data: Any) -> str:
    """
    Validate C{status_change}.
    """
    from ..presence import STATUSES

    data = payloadObject(data, "status_change")
    value = data.get("status")
    # (an object or a list is unhashable: found by fuzz/validation.py)
    if not isinstance(value, str) or value not in STATUSES:
        raise _invalid("status must be one of online, away, busy, offline")
    return str(value)


@attrs.frozen
class HistoryRequest:
    """
    A valid C{get_history}.
    """

    friendId: str | None
    topic: str | None
    limit: int
    before: int | None
    after: int | None
    groupId: str | None = None
    roomId: str | None = None


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
    where = target(data, "friendId")
    return HistoryRequest(
        friendId=where.toId,
        topic=optionalText(data.get("topic"), "topic", MAX_TOPIC),
        limit=min(limit, MAX_HISTORY),
        before=None if before is None else sequenceNumber(before, "before"),
        after=None if after is None else sequenceNumber(after, "after"),
        groupId=where.groupId,
        roomId=where.roomId,
    )


@attrs.frozen
class ReadRequest:
    """
    A valid C{message:read}: C{friendId} with C{upToSeq} or with
    C{messageIds} (a 1:1 conversation), or C{groupId} or C{roomId} with
    C{upToSeq}.
    """

    friendId: str | None
    upToSeq: int | None
    messageIds: tuple[str, ...] | None
    groupId: str | None = None
    roomId: str | None = None


def read(data: Any) -> ReadRequest:
    """
    Validate C{message:read}.
    """
    data = payloadObject(data, "message:read")
    ids = data.get("messageIds")
    if ids is not None:
        if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_READ_IDS:
            raise _invalid(f"messageIds must be a list of 1..{MAX_READ_IDS} ids")
        if data.get("friendId") is None:
            # Read state is a cursor per conversation, and a message is
            # found by its sender and id: the ids name the friend's messages.
            raise _invalid("message:read {messageIds} needs the friendId who sent them")
        return ReadRequest(userId(data["friendId"], "friendId"), None, tuple(clientId(i, "messageIds[]") for i in ids))
    for field in ("groupId", "roomId"):
        if data.get(field) is not None:
            # (one conversation per request, as for every event: GROUPS.md)
            others = [other for other in ("friendId", "groupId", "roomId") if other != field]
            if any(data.get(other) is not None for other in others) or data.get("upToSeq") is None:
                raise _invalid(f"message:read expects {{{field}, upToSeq}}")
            seq = sequenceNumber(data["upToSeq"], "upToSeq")
            where = clientId(data[field], field)
            if field == "groupId":
                return ReadRequest(None, seq, None, groupId=where)
            return ReadRequest(None, seq, None, roomId=where)
    if data.get("friendId") is None or data.get("upToSeq") is None:
        raise _invalid(
            "message:read expects {friendId, upToSeq}, {friendId, messageIds}, {groupId, upToSeq} or {roomId, upToSeq}"
        )
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


#: The most user ids one group request may name (the configured group size
#: is checked by the handler).
MAX_USER_IDS = 10_000
ROLES = ("owner", "admin", "member")


def userIds(value: Any, field: str) -> tuple[str, ...]:
    """
    A list of user ids, duplicates dropped (first kept).
    """
    if not isinstance(value, list) or len(value) > MAX_USER_IDS:
        raise _invalid(f"{field} must be a list of at most {MAX_USER_IDS} user ids")
    return tuple(dict.fromkeys(userId(item, field + "[]") for item in value))


@attrs.frozen
class GroupCreateRequest:
    """
    A valid C{group:create}.
    """

    name: str
    memberIds: tuple[str, ...]
    avatar: str | None
    clientId: str | None


def groupCreate(data: Any) -> GroupCreateRequest:
    """
    Validate C{group:create}.
    """
    data = payloadObject(data, "group:create")
    members = data.get("memberIds", [])
    return GroupCreateRequest(
        name=conversationName(data.get("name")),
        memberIds=userIds(members, "memberIds"),
        avatar=optionalText(data.get("avatar"), "avatar", MAX_AVATAR),
        clientId=None if data.get("id") is None else clientId(data.get("id"), "id"),
    )


def groupId(data: Any, event: str) -> str:
    """
    The C{groupId} of a group event.
    """
    return clientId(payloadObject(data, event).get("groupId"), "groupId")


@attrs.frozen
class GroupUpdateRequest:
    """
    A valid C{group:update}.
    """

    groupId: str
    name: str | None
    avatar: str | None


def groupUpdate(data: Any) -> GroupUpdateRequest:
    """
    Validate C{group:update}: at least one of C{name}, C{avatar}.
    """
    data = payloadObject(data, "group:update")
    name = data.get("name")
    avatar = data.get("avatar")
    if name is None and "avatar" not in data:
        raise _invalid("group:update expects name or avatar")
    return GroupUpdateRequest(
        groupId=groupId(data, "group:update"),
        name=None if name is None else conversationName(name),
        avatar=None if "avatar" not in data else ("" if avatar is None else text(avatar, "avatar", MAX_AVATAR)),
    )


def groupMembers(data: Any, event: str) -> tuple[str, tuple[str, ...]]:
    """
    C{{groupId, userIds}} of C{group:add_members} and
    C{group:remove_members}: 1 or more user ids.
    """
    data = payloadObject(data, event)
    ids = userIds(data.get("userIds"), "userIds")
    if not ids:
        raise _invalid("userIds must name at least one user")
    return groupId(data, event), ids


def groupRole(data: Any) -> tuple[str, str, str]:
    """
    C{{groupId, userId, role}} of C{group:set_role}.
    """
    data = payloadObject(data, "group:set_role")
    role = data.get("role")
    if role not in ROLES:
        raise _invalid("role must be owner, admin or member")
    return groupId(data, "group:set_role"), userId(data.get("userId"), "userId"), str(role)


def readReceipts(data: Any) -> tuple[str, str]:
    """
    C{{groupId, messageId}} of C{group:read_receipts}.
    """
    data = payloadObject(data, "group:read_receipts")
    return groupId(data, "group:read_receipts"), clientId(data.get("messageId"), "messageId")


@attrs.frozen
class RoomCreateRequest:
    """
    A valid C{room:create}.
    """

    name: str
    clientId: str | None
    topic: str | None
    public: bool


def roomCreate(data: Any) -> RoomCreateRequest:
    """
    Validate C{room:create}.
    """
    data = payloadObject(data, "room:create")
    public = data.get("public", True)
    if not isinstance(public, bool):
        raise _invalid("public must be a boolean")
    return RoomCreateRequest(
        name=conversationName(data.get("name")),
        clientId=None if data.get("id") is None else clientId(data.get("id"), "id"),
        topic=optionalText(data.get("topic"), "topic", MAX_TOPIC),
        public=public,
    )


def roomId(data: Any, event: str) -> str:
    """
    The C{roomId} of a room event.
    """
    return clientId(payloadObject(data, event).get("roomId"), "roomId")


@attrs.frozen
class RecallRequest:
    """
    A valid C{message:recall}; the conversation is an optional hint.
    """

    messageId: str
    toId: str | None
    groupId: str | None
    roomId: str | None


def recall(data: Any) -> RecallRequest:
    """
    Validate C{message:recall}.
    """
    data = payloadObject(data, "message:recall")
    messageId = clientId(data.get("messageId"), "messageId")
    named = [key for key in ("toId", "groupId", "roomId") if data.get(key) is not None]
    if len(named) > 1:
        raise _invalid("name at most one of toId, groupId and roomId")
    where = target(data) if named else Target(None, None, None)
    return RecallRequest(messageId, where.toId, where.groupId, where.roomId)
