# -*- test-case-name: tests.test_storage -*-
"""
The storage seam: the interfaces the application codes against and the frozen
values that cross them.

L{IMessageStore} keeps 1:1 messages durably (section 5 and 6 of the wire
contract), L{IFileMetadata} keeps the records of stored files and
L{IFileStore} keeps the files themselves (section 7).
"""

from __future__ import annotations

from typing import Any, Sequence

import attrs
from twisted.internet.defer import Deferred
from twisted.python.filepath import FilePath
from zope.interface import Interface


class StoreClosedError(Exception):
    """
    The store was used before L{IMessageStore.open} or after
    L{IMessageStore.close}.
    """


@attrs.frozen
class NewMessage:
    """
    A message accepted from a client and about to be stored.

    @ivar fromId: the logged-in sender.
    @ivar fromName: the sender's display name.
    @ivar toId: the recipient.
    @ivar id: the message id, client-chosen or made by the server; unique per
        sender.
    @ivar topic: the conversation topic, if any.
    @ivar type: C{'text'} or C{'file'}.
    @ivar content: the text (or a description for a file).
    @ivar fileUrl: where a C{file} message's bytes can be fetched.
    @ivar fileName: a C{file} message's file name.
    @ivar clientTimestamp: the client's C{timestamp}, if it sent one.
    @ivar serverTimestamp: when the server accepted it, ms since the epoch.
    """

    fromId: str
    fromName: str
    toId: str
    id: str
    topic: str | None
    type: str
    content: str
    fileUrl: str | None
    fileName: str | None
    clientTimestamp: int | float | None
    serverTimestamp: int


@attrs.frozen
class StoredMessage:
    """
    A message as stored, with its place in the global order and its state.

    @ivar seq: increases with every stored message.
    @ivar delivered: whether a device of the recipient was sent it (or the
        recipient read it).
    @ivar readAt: when the recipient marked it read (ms since the epoch), or
        L{None}.
    """

    seq: int
    id: str
    fromId: str
    fromName: str
    toId: str
    topic: str | None
    type: str
    content: str
    fileUrl: str | None
    fileName: str | None
    clientTimestamp: int | float | None
    serverTimestamp: int
    delivered: bool
    readAt: int | None

    def toWire(self) -> dict[str, Any]:
        """
        The contract's Message object for this stored message.

        @return: a dict with C{id}, C{fromId}, C{fromName}, C{toId},
            C{content}, C{type}, C{serverTimestamp} and C{seq}, plus C{topic},
            C{timestamp} (the client's), C{fileUrl} and C{fileName} when they
            are not L{None}.
        """
        wire: dict[str, Any] = {
            "id": self.id,
            "fromId": self.fromId,
            "fromName": self.fromName,
            "toId": self.toId,
            "content": self.content,
            "type": self.type,
            "serverTimestamp": self.serverTimestamp,
            "seq": self.seq,
        }
        if self.topic is not None:
            wire["topic"] = self.topic
        if self.clientTimestamp is not None:
            wire["timestamp"] = self.clientTimestamp
        if self.fileUrl is not None:
            wire["fileUrl"] = self.fileUrl
        if self.fileName is not None:
            wire["fileName"] = self.fileName
        return wire


@attrs.frozen
class StoreOutcome:
    """
    The result of L{IMessageStore.storeMessage}.

    @ivar message: the stored row: the new one, or for a duplicate the one
        stored earlier, with its current delivered/read state.
    @ivar created: C{False} if C{(fromId, id)} was already stored.
    """

    message: StoredMessage
    created: bool


@attrs.frozen
class HistoryPage:
    """
    One page of a conversation.

    @ivar messages: oldest first.
    @ivar hasMore: whether more messages exist in the direction paged.
    """

    messages: list[StoredMessage]
    hasMore: bool


@attrs.frozen
class FileRecord:
    """
    The metadata of a stored file.

    @ivar fileId: random and url-safe; names the file in URLs and on disk.
    @ivar mimeType: as the sender declared it, if it did.
    @ivar size: in bytes.
    @ivar createdAt: ms since the epoch.
    """

    fileId: str
    fromId: str
    toId: str
    fileName: str
    mimeType: str | None
    size: int
    createdAt: int


def conversationKey(userA: str, userB: str) -> str:
    """
    The key shared by both directions of the conversation between two users.

    @return: the two ids sorted and joined with C{NUL}, which no user id
        contains.
    """
    first, second = sorted((userA, userB))
    return first + "\x00" + second


class IMessageStore(Interface):
    """
    Durable storage of 1:1 messages. Every method returns a L{Deferred}.

    Writes (L{storeMessage}, L{markDelivered}, L{markRead}) are applied in
    the order they were called. A write's L{Deferred} fires only once the
    write is committed.
    """

    def open() -> Deferred[None]:
        """
        Open the store and bring its schema up to date.
        """

    def close() -> Deferred[None]:
        """
        Finish every write already requested, then release the database. Later
        calls fail with L{StoreClosedError}.
        """

    def storeMessage(msg: NewMessage) -> Deferred[StoreOutcome]:
        """
        Store C{msg} unless its C{(fromId, id)} is stored already.

        @return: a L{Deferred} firing after the commit with the outcome.
        """

    def markDelivered(seqs: Sequence[int]) -> Deferred[None]:
        """
        Record that the messages with these C{seq}s were sent to a device of
        their recipient.
        """

    def pendingFor(userId: str, limit: int) -> Deferred[list[StoredMessage]]:
        """
        The undelivered messages to C{userId}, C{seq} ascending, at most
        C{limit}.
        """

    def history(
        userId: str,
        friendId: str,
        topic: str | None,
        limit: int,
        before: int | None,
        after: int | None,
    ) -> Deferred[HistoryPage]:
        """
        One page of the conversation between C{userId} and C{friendId} (both
        directions; only C{topic} if given), oldest first.

        Without C{before} and C{after}: the latest C{limit}. With C{before}:
        the latest C{limit} whose seq is below it. With C{after}: the earliest
        C{limit} whose seq is above it. With both: the earliest C{limit}
        strictly between them. C{hasMore} says whether more exist in the
        direction paged (older for the first two, newer for the others).
        """

    def markRead(
        readerId: str,
        now: int,
        friendId: str | None = None,
        upToSeq: int | None = None,
        messageIds: Sequence[str] | None = None,
    ) -> Deferred[list[StoredMessage]]:
        """
        Mark messages to C{readerId} that are not read yet as read at C{now}
        (and as delivered): either those from C{friendId} with seq up to
        C{upToSeq}, or those whose id is in C{messageIds} (from any sender).

        @return: the messages newly marked, seq ascending, with C{readAt}
            set, so that their senders can be told.
        @raise ValueError: (in the L{Deferred}) if neither form is given
            completely.
        """

    def ping() -> Deferred[None]:
        """
        Run a cheap query; fails if the database is unusable.
        """


class IFileMetadata(Interface):
    """
    Durable records of stored files, kept by the message store's database.
    """

    def recordFile(record: FileRecord) -> Deferred[None]:
        """
        Store C{record}; fires after the commit.
        """

    def fileRecord(fileId: str) -> Deferred[FileRecord | None]:
        """
        The record stored for C{fileId}, or L{None}.
        """


class IFileStore(Interface):
    """
    Storage of transferred files: the bytes and their metadata.
    """

    def save(
        fromId: str,
        toId: str,
        fileName: str,
        mimeType: str | None,
        data: bytes,
        now: int,
    ) -> Deferred[FileRecord]:
        """
        Store C{data} durably under a new random id.

        @return: a L{Deferred} firing with the record once both the bytes and
            the record are durable.
        """

    def get(fileId: str) -> Deferred[FileRecord | None]:
        """
        The record of C{fileId}, or L{None} if there is none or C{fileId} is
        not a well-formed id.
        """

    def pathFor(record: FileRecord) -> FilePath[str]:
        """
        Where the bytes of C{record} are.
        """
