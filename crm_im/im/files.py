# -*- test-case-name: tests.test_uploads_handlers -*-
"""
The file events of FILES.md as transport-free handlers: C{file:upload}
(an upload for a conversation the caller may send to), C{file:url} (a
fresh link for whoever may read a message carrying the file), and what a
C{message {type: 'file', fileId}} takes from the file's record.

Who may read a file is decided by the conversation rules
(L{crm_im.im.conversations}): its uploader, and whoever may read a
conversation where a message (not recalled) carries it.
The bytes, the tus protocol and the links are the business of an
L{UploadDesk} (L{crm_im.uploads.service.UploadService}).
"""

from __future__ import annotations

import re
from typing import Any, Awaitable, Callable, Protocol, TypeVar
from urllib.parse import quote

import attrs

from ..safelog import Logger
from ..storage.files import newFileId
from ..storage.interface import (
    COMPLETE,
    EXPIRED,
    GROUP_PREFIX,
    KEY_SEPARATOR,
    ROOM_PREFIX,
    FileRecord,
    IFileRecords,
    directConversation,
    groupConversation,
    roomConversation,
)
from . import conversations as rules
from . import validation
from .errors import FORBIDDEN, INVALID_PAYLOAD, NOT_FOUND, RATE_LIMITED, TOO_LARGE, IMError
from .groups import GroupDirectory
from .interfaces import Caller
from .rooms import RoomHandlers

_SHA256 = re.compile(r"\A[0-9a-fA-F]{64}\Z")
#: The largest fileSize a request may name at all (the configured limit is
#: checked by the desk); past it the number is not even a size.
_MAX_SIZE = 2**53

_T = TypeVar("_T")

_MIME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}\Z")


def cleanMimeType(mimeType: str | None) -> str:
    """
    A declared MIME type if it is a plain C{type/subtype} (lower-cased),
    else C{application/octet-stream}: nothing a client declares ends up as
    parameters or header syntax.
    """
    if mimeType is None:
        return "application/octet-stream"
    mimeType = mimeType.split(";", 1)[0].strip()
    if not _MIME.match(mimeType):
        return "application/octet-stream"
    return mimeType.lower()


#: Where files are served (L{crm_im.uploads.resource}).
FILES_PATH = "/api/files/"


def filePath(fileId: str, fileName: str) -> str:
    """
    The unsigned path of a file, as a message stores it (signed when sent).
    """
    return f"{FILES_PATH}{fileId}/{quote(fileName, safe='')}"


class UploadRefused(Exception):
    """
    An upload asked for more than C{--max-file-size} or the user's quota.
    """


class TooManyUploads(UploadRefused):
    """
    The user has as many unfinished uploads as they may.
    """


class UploadDesk(Protocol):
    """
    What the handlers need of the upload service.
    """

    def create(
        self,
        fromId: str,
        toId: str,
        conversation: str,
        fileName: str,
        fileSize: int,
        mimeType: str | None,
        sha256: str | None,
        fileId: str,
    ) -> Awaitable[dict[str, Any]]:
        """
        Record an upload; raise C{UploadRefused} past the limits.
        """

    def admit(self, fromId: str, fileSize: int, record: Callable[[], Awaitable[_T]]) -> Awaitable[_T]:
        """
        Run C{record} (it records a file of C{fileSize} bytes for
        C{fromId}) if the file is within the limits an upload is held to;
        raise C{UploadRefused} past them.
        """

    def filePath(self, fileId: str, fileName: str) -> str:
        """
        The unsigned path a file message stores.
        """

    def fileUrl(self, fileId: str, fileName: str) -> str:
        """
        A fresh signed download URL.
        """

    def thumbnailUrl(self, fileId: str, mimeType: str | None) -> str | None:
        """
        A fresh signed thumbnail URL, for images.
        """


def plainFileName(value: Any, field: str = "fileName") -> str:
    """
    A file name: 1 to 255 characters, no path (no C{/} or C{\\}, not C{.}
    or C{..}) and no control characters. It is only ever shown and put in
    headers, never used as a path; refusing paths says so clearly.
    """
    name = validation.text(value, field, validation.MAX_FILE_NAME, 1)
    if "/" in name or "\\" in name or name in (".", "..") or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise IMError(INVALID_PAYLOAD, f"{field} must be a plain file name, without a path or control characters")
    return name


def baseFileName(name: str) -> str:
    """
    The last part of a name that may carry a path (inline transfers of
    old clients), with control characters removed.
    """
    base = re.split(r"[/\\]", name)[-1]
    base = "".join(c for c in base if ord(c) >= 32 and ord(c) != 127)
    return base if base not in ("", ".", "..") else "file"


@attrs.frozen
class UploadRequest:
    """
    A valid C{file:upload}.
    """

    fileName: str
    fileSize: int
    mimeType: str | None
    sha256: str | None
    target: validation.Target


def uploadRequest(data: Any) -> UploadRequest:
    """
    Validate C{file:upload}.
    """
    data = validation.payloadObject(data, "file:upload")
    size = data.get("fileSize")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise IMError(INVALID_PAYLOAD, "fileSize must be a non-negative integer (bytes)")
    if size > _MAX_SIZE:
        raise IMError(TOO_LARGE, "fileSize is larger than any file this server keeps")
    sha256 = data.get("sha256")
    if sha256 is not None and (not isinstance(sha256, str) or not _SHA256.match(sha256)):
        raise IMError(INVALID_PAYLOAD, "sha256 must be 64 hex digits")
    return UploadRequest(
        fileName=plainFileName(data.get("fileName")),
        fileSize=size,
        mimeType=validation.optionalText(data.get("mimeType"), "mimeType", validation.MAX_MIME),
        sha256=None if sha256 is None else sha256.lower(),
        target=validation.target(data),
    )


def fileIdOf(data: Any, event: str) -> str:
    """
    The C{fileId} of a payload.
    """
    data = validation.payloadObject(data, event)
    value = data.get("fileId")
    if not isinstance(value, str) or not value or len(value) > validation.MAX_ID:
        raise IMError(INVALID_PAYLOAD, "fileId must be the id file:upload answered")
    return value


class FileHandlers:
    """
    C{file:upload}, C{file:url} and the file of a file message.
    """

    log = Logger()

    def __init__(
        self, records: IFileRecords, desk: UploadDesk, groups: GroupDirectory, rooms: RoomHandlers
    ) -> None:
        self.records = records
        self.desk = desk
        self.groups = groups
        self.rooms = rooms

    async def _sendable(self, caller: Caller, target: validation.Target) -> str:
        """
        The conversation key of C{target} if the caller may send to it.

        @raise IMError: as sending a message there would be refused.
        """
        if target.toId is not None:
            return directConversation(caller.userId, target.toId)
        if target.groupId is not None:
            state = self.groups.cached(target.groupId) or await self.groups.get(target.groupId)
            rules.authorize(state, caller.userId, rules.SEND)
            return groupConversation(target.groupId)
        roomId = target.roomId
        assert roomId is not None
        if await self.rooms.record(roomId) is None:
            raise IMError(NOT_FOUND, "no such room")
        if caller.device is None or not self.rooms.rooms.contains(roomId, caller.device):
            raise IMError(FORBIDDEN, "join the room first (room:join)")
        return roomConversation(roomId)

    async def upload(self, caller: Caller, data: Any) -> dict[str, Any]:
        """
        C{file:upload}: C{{fileId, uploadUrl, expiresAt}}.
        """
        request = uploadRequest(data)
        conversation = await self._sendable(caller, request.target)
        try:
            return await self.desk.create(
                caller.userId,
                request.target.toId or "",
                conversation,
                request.fileName,
                request.fileSize,
                request.mimeType,
                request.sha256,
                newFileId(),
            )
        except TooManyUploads as error:
            raise IMError(RATE_LIMITED, str(error))
        except UploadRefused as error:
            raise IMError(TOO_LARGE, str(error))

    async def keepInline(
        self, caller: Caller, fileSize: int, messageId: str, save: Callable[[], Awaitable[FileRecord]]
    ) -> FileRecord:
        """
        Keep the bytes of an inline transfer (C{save}) if they are within
        C{--max-file-size} and the caller's quota, as an upload of that
        size would have to be: C{file_transfer} is no way around them.

        @raise IMError: C{TOO_LARGE}, naming the message, and nothing saved.
        """
        try:
            return await self.desk.admit(caller.userId, fileSize, save)
        except UploadRefused as error:
            raise IMError(TOO_LARGE, str(error), messageId)

    async def _readable(self, caller: Caller, conversation: str) -> bool:
        if conversation.startswith(GROUP_PREFIX):
            state = await self.groups.get(conversation[len(GROUP_PREFIX):])
            try:
                rules.authorize(state, caller.userId, rules.READ)
            except IMError:
                return False
            return True
        if conversation.startswith(ROOM_PREFIX):
            roomId = conversation[len(ROOM_PREFIX):]
            room = await self.rooms.record(roomId)
            inside = caller.device is not None and self.rooms.rooms.contains(roomId, caller.device)
            return room is not None and (room.public or inside)
        return caller.userId in conversation.split(KEY_SEPARATOR)

    async def mayRead(self, caller: Caller, record: FileRecord) -> bool:
        """
        May the caller read this file? Its uploader (who may send it
        again); whoever may read a conversation where a message carries it.
        The conversation it was uploaded (or sent inline) for is not
        enough: a recalled message carries no file, and the file is gone
        for its other participants (its links already handed out are
        signed, not checked against this, and work until they expire).
        """
        if caller.userId == record.fromId:
            return True
        if record.conversation is None:
            # kept for an offline recipient before uploads existed (its
            # message names no fileId)
            return caller.userId == record.toId
        for conversation in await self.records.fileConversations(record.fileId):
            if await self._readable(caller, conversation):
                return True
        return False

    async def url(self, caller: Caller, data: Any) -> dict[str, Any]:
        """
        C{file:url}: a fresh C{{fileId, fileUrl, thumbnailUrl?}}.
        """
        fileId = fileIdOf(data, "file:url")
        record = await self.records.fileRecord(fileId)
        if record is None or record.state not in (COMPLETE, EXPIRED) or not await self.mayRead(caller, record):
            raise IMError(NOT_FOUND, "no such file")
        answer: dict[str, Any] = {"fileId": fileId, "fileUrl": self.desk.fileUrl(fileId, record.fileName)}
        if record.state == EXPIRED:
            answer["expired"] = True
        thumbnail = self.desk.thumbnailUrl(fileId, record.mimeType)
        if thumbnail is not None and record.state == COMPLETE:
            answer["thumbnailUrl"] = thumbnail
        return answer

    async def ownFile(self, caller: Caller, fileId: str, messageId: str | None = None) -> FileRecord:
        """
        The complete file C{fileId} the caller uploaded (for a file message).

        @raise IMError: C{NOT_FOUND} if unknown, unfinished or someone
            else's.
        """
        record = await self.records.fileRecord(fileId) if len(fileId) <= validation.MAX_ID else None
        if record is None or record.state != COMPLETE or record.fromId != caller.userId:
            raise IMError(NOT_FOUND, "no such file: upload it first (file:upload), to the end", messageId)
        return record
