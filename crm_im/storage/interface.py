# -*- test-case-name: tests.test_storage -*-
"""
The storage seam: the interfaces the application codes against and the frozen
values that cross them.

L{IMessageStore} keeps messages durably (sections 5 and 6 of the wire
contract; GROUPS.md for group and room messages and recall),
L{IConversationStore} keeps groups, their members, chat rooms and read
cursors, L{IFileMetadata} keeps the records of stored files and
L{IFileStore} keeps the files themselves (section 7).

The message record is defined once, here: L{NewMessage} is what a handler
asks to store, L{StoredMessage} what the store gives back, and
L{StoredMessage.toWire} the contract's Message object.

A message belongs to exactly one conversation, named by a I{conversation
key} (L{directConversation}, L{groupConversation}, L{roomConversation}):
history, read cursors and recall are all per key.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import attrs
from twisted.internet.defer import Deferred
from twisted.python.filepath import FilePath
from zope.interface import Interface


class StoreClosedError(Exception):
    """
    The store was used before L{IMessageStore.open} or after
    L{IMessageStore.close}.
    """


#: Joins the parts of a conversation key: the unit separator U+001F, which
#: no user id contains (L{crm_im.im.validation} refuses it) and which, unlike
#: NUL, a PostgreSQL C{text} can hold.
KEY_SEPARATOR = "\x1f"

#: Conversation keys of groups and rooms start with these; a 1:1 key never
#: starts with the separator (user ids are not empty and never contain it),
#: so the three kinds never meet. (Keys used NUL before schema version 5.)
GROUP_PREFIX = KEY_SEPARATOR + "g" + KEY_SEPARATOR
ROOM_PREFIX = KEY_SEPARATOR + "r" + KEY_SEPARATOR

DIRECT = "direct"
GROUP = "group"
ROOM = "room"


def directConversation(userA: str, userB: str) -> str:
    """
    The key shared by both directions of the conversation between two users.

    @return: the two ids sorted and joined with L{KEY_SEPARATOR}, which no
        user id contains.
    """
    first, second = sorted((userA, userB))
    return first + KEY_SEPARATOR + second


#: The name the 1:1 key had before groups existed.
conversationKey = directConversation


def groupConversation(groupId: str) -> str:
    """
    The conversation key of a group.
    """
    return GROUP_PREFIX + groupId


def roomConversation(roomId: str) -> str:
    """
    The conversation key of a chat room.
    """
    return ROOM_PREFIX + roomId


@attrs.frozen
class NewMessage:
    """
    A message accepted from a client and about to be stored.

    Exactly one of C{toId}, C{groupId} and C{roomId} is set.

    @ivar fromId: the logged-in sender.
    @ivar fromName: the sender's display name.
    @ivar toId: the recipient of a 1:1 message.
    @ivar id: the message id, client-chosen or made by the server; unique per
        sender.
    @ivar topic: the conversation topic, if any.
    @ivar type: C{'text'} or C{'file'}.
    @ivar content: the text (or a description for a file).
    @ivar fileUrl: where a C{file} message's bytes can be fetched.
    @ivar fileName: a C{file} message's file name.
    @ivar clientTimestamp: the client's C{timestamp}, if it sent one.
    @ivar serverTimestamp: when the server accepted it, ms since the epoch.
    @ivar groupId: the group of a group message.
    @ivar roomId: the room of a room message.
    @ivar system: for C{type: 'system'} (membership changes), what
        happened: C{{action, by, userIds?, ...}}.
    @ivar notify: the recipients to notify by push (PUSH.md), decided by
        the handler: their outbox rows are written in the message's own
        transaction (L{crm_im.storage.outbox}). Not stored with the message.
    @ivar fileId: a C{file} message's stored file (FILES.md); its
        C{fileUrl} is then the unsigned path, signed when sent.
    @ivar fileSize: the stored file's size in bytes.
    @ivar mimeType: the stored file's MIME type.
    @ivar ciphertext: a C{type: 'encrypted'} message's ciphertext, as the
        client sent it (a string, or an object of strings keyed by device
        id); its C{content} is C{''}. Stored and relayed untouched
        (ENCRYPTION.md).
    @ivar algorithm: an encrypted message's algorithm name.
    @ivar mentions: the users a group message mentions (validated ids, at
        most L{crm_im.im.validation.MAX_MENTIONS}); who a muted group
        notifies, and what clients show as "@you".
    """

    fromId: str
    fromName: str
    toId: str | None
    id: str
    topic: str | None
    type: str
    content: str
    fileUrl: str | None
    fileName: str | None
    clientTimestamp: int | float | None
    serverTimestamp: int
    groupId: str | None = None
    roomId: str | None = None
    system: dict[str, Any] | None = None
    notify: tuple[str, ...] = ()
    fileId: str | None = None
    fileSize: int | None = None
    mimeType: str | None = None
    ciphertext: str | dict[str, str] | None = None
    algorithm: str | None = None
    mentions: tuple[str, ...] = ()

    @property
    def conversation(self) -> str:
        """
        The key of the conversation this message belongs to.
        """
        if self.groupId is not None:
            return GROUP_PREFIX + self.groupId
        if self.roomId is not None:
            return ROOM_PREFIX + self.roomId
        assert self.toId is not None
        return directConversation(self.fromId, self.toId)


@attrs.frozen
class MessageOrder:
    """
    Where a stored message sits in its conversation, as a store that links
    messages read it under its write lock (the cluster's order gate,
    L{crm_im.routing.order}, puts messages back in this order).

    @ivar conversation: the conversation's key.
    @ivar seq: the message's seq.
    @ivar prevSeq: the seq of the message before it in the conversation,
        0 if none.
    @ivar prevAt: that message's server time (ms since the epoch), 0 if
        none.
    """

    conversation: str
    seq: int
    prevSeq: int
    prevAt: int

    def toList(self) -> list[object]:
        """
        The form that crosses between nodes (msgpack).
        """
        return [self.conversation, self.seq, self.prevSeq, self.prevAt]

    @classmethod
    def fromList(cls, value: object) -> "MessageOrder":
        """
        The inverse of L{toList}.

        @raise ValueError: if malformed.
        """
        if not isinstance(value, (list, tuple)) or len(value) != 4:
            raise ValueError("order must be [conversation, seq, prevSeq, prevAt]")
        conversation, seq, prevSeq, prevAt = value
        if not isinstance(conversation, str) or not all(type(v) is int for v in (seq, prevSeq, prevAt)):
            raise ValueError("order must be [str, int, int, int]")
        return cls(conversation, seq, prevSeq, prevAt)


@attrs.frozen
class StoredMessage:
    """
    A message as stored, with its place in the global order and its state.

    @ivar seq: increases with every stored message.
    @ivar delivered: whether a device of the recipient was sent it (or the
        recipient read it); always true for group and room messages, which
        have no offline queue (members catch up from read cursors).
    @ivar recalledBy: who recalled it (its content and file are gone), or
        L{None}.
    @ivar ciphertext: see L{NewMessage.ciphertext} (gone once recalled).
    @ivar algorithm: see L{NewMessage.algorithm}.
    @ivar mentions: see L{NewMessage.mentions} (gone once recalled).
    @ivar prevSeq: when the store links messages and this one was just
        stored: the seq of the message before it in its conversation (0 if
        none); else L{None}.
    @ivar prevAt: that message's server time (0 if none or unknown).
    """

    seq: int
    id: str
    fromId: str
    fromName: str
    toId: str | None
    topic: str | None
    type: str
    content: str
    fileUrl: str | None
    fileName: str | None
    clientTimestamp: int | float | None
    serverTimestamp: int
    delivered: bool
    groupId: str | None = None
    roomId: str | None = None
    system: dict[str, Any] | None = None
    recalledBy: str | None = None
    fileId: str | None = None
    fileSize: int | None = None
    mimeType: str | None = None
    ciphertext: str | dict[str, str] | None = None
    algorithm: str | None = None
    mentions: tuple[str, ...] = ()
    # Transient: what the store knew as it stored the message, not part of
    # the message (a message read back has no link and equals its stored self).
    prevSeq: int | None = attrs.field(default=None, eq=False)
    prevAt: int = attrs.field(default=0, eq=False)

    @property
    def order(self) -> MessageOrder | None:
        """
        Its place in its conversation, if the store linked it (only a new
        message from a store that links: PostgreSQL, the cluster's).
        """
        if self.prevSeq is None:
            return None
        return MessageOrder(self.conversation, self.seq, self.prevSeq, self.prevAt)

    @property
    def conversation(self) -> str:
        """
        The key of the conversation this message belongs to.
        """
        if self.groupId is not None:
            return GROUP_PREFIX + self.groupId
        if self.roomId is not None:
            return ROOM_PREFIX + self.roomId
        assert self.toId is not None
        return directConversation(self.fromId, self.toId)

    @classmethod
    def fromNew(cls, msg: NewMessage, seq: int) -> "StoredMessage":
        """
        The stored form of C{msg}, just inserted as C{seq}.
        """
        shared = msg.toId is None
        return cls(
            seq=seq,
            id=msg.id,
            fromId=msg.fromId,
            fromName=msg.fromName,
            toId=msg.toId,
            topic=msg.topic,
            type=msg.type,
            content=msg.content,
            fileUrl=msg.fileUrl,
            fileName=msg.fileName,
            clientTimestamp=msg.clientTimestamp,
            serverTimestamp=msg.serverTimestamp,
            delivered=shared,
            groupId=msg.groupId,
            roomId=msg.roomId,
            system=msg.system,
            fileId=msg.fileId,
            fileSize=msg.fileSize,
            mimeType=msg.mimeType,
            ciphertext=msg.ciphertext,
            algorithm=msg.algorithm,
            mentions=msg.mentions,
        )

    def toWire(self) -> dict[str, Any]:
        """
        The contract's Message object for this stored message.

        @return: a dict with C{id}, C{fromId}, C{fromName}, one of
            C{toId}/C{groupId}/C{roomId}, C{content}, C{type},
            C{serverTimestamp} and C{seq} (an encrypted message:
            C{algorithm} and C{ciphertext} instead of C{content}), plus C{topic}, C{timestamp} (the
            client's), C{fileUrl}, C{fileName}, C{system}, C{mentions} and
            C{recalled}/C{recalledBy} when they apply.
        """
        wire: dict[str, Any] = {
            "id": self.id,
            "fromId": self.fromId,
            "fromName": self.fromName,
        }
        if self.toId is not None:
            wire["toId"] = self.toId
        elif self.groupId is not None:
            wire["groupId"] = self.groupId
        else:
            wire["roomId"] = self.roomId
        if self.algorithm is None:
            wire["content"] = self.content
        else:
            # type 'encrypted' (ENCRYPTION.md): no content, the ciphertext
            # as it came (none left once recalled)
            wire["algorithm"] = self.algorithm
            if self.ciphertext is not None:
                wire["ciphertext"] = self.ciphertext
        wire["type"] = self.type
        wire["serverTimestamp"] = self.serverTimestamp
        wire["seq"] = self.seq
        if self.system is not None:
            wire["system"] = self.system
        if self.recalledBy is not None:
            wire["recalled"] = True
            wire["recalledBy"] = self.recalledBy
        if self.topic is not None:
            wire["topic"] = self.topic
        if self.clientTimestamp is not None:
            wire["timestamp"] = self.clientTimestamp
        if self.fileUrl is not None:
            wire["fileUrl"] = self.fileUrl
        if self.fileName is not None:
            wire["fileName"] = self.fileName
        if self.fileId is not None:
            wire["fileId"] = self.fileId
            wire["fileSize"] = self.fileSize
            wire["mimeType"] = self.mimeType
        if self.mentions:
            wire["mentions"] = list(self.mentions)
        return wire


#: What L{messageWeight} adds for a message's fixed fields (ids, names,
#: times): a rough figure, the bound is on the variable-length ones.
MESSAGE_OVERHEAD = 200


def messageWeight(message: StoredMessage) -> int:
    """
    About how many bytes C{message} takes in memory and on the wire: its
    text, ciphertext, file fields, system record and mentions, plus
    L{MESSAGE_OVERHEAD}. What the byte-bounded reads
    (C{pendingFor}, C{missedMessages}) count, since a count alone lets 200
    messages near C{--max-payload} each make one 200 MB read.
    """
    weight = MESSAGE_OVERHEAD + len(message.content)
    ciphertext = message.ciphertext
    if isinstance(ciphertext, str):
        weight += len(ciphertext)
    elif ciphertext is not None:
        weight += sum(len(k) + len(v) for k, v in ciphertext.items())
    if message.fileUrl is not None:
        weight += len(message.fileUrl)
    if message.fileName is not None:
        weight += len(message.fileName)
    if message.system is not None:
        weight += len(repr(message.system))
    if message.mentions:
        weight += sum(len(userId) + 4 for userId in message.mentions)
    return weight


def boundedMessages(messages: Iterable[StoredMessage], limit: int, maxBytes: int | None) -> list[StoredMessage]:
    """
    The first of C{messages}, at most C{limit}; with C{maxBytes}, only
    until their L{messageWeight}s pass it, the message that passes it
    included. C{messages} is consumed no further than that.
    """
    found: list[StoredMessage] = []
    if limit <= 0:
        return found
    total = 0
    for message in messages:
        found.append(message)
        if len(found) >= limit:
            break
        if maxBytes is not None:
            total += messageWeight(message)
            if total > maxBytes:
                break
    return found


@attrs.frozen
class StoreOutcome:
    """
    The result of L{IMessageStore.storeMessage}.

    @ivar message: the stored row: the new one, or for a duplicate the one
        stored earlier, with its current delivered state.
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


#: File record states (FILES.md): bytes arriving, stored, given up (a
#: C{DELETE} or an upload abandoned past its expiry), removed by retention.
UPLOADING = "uploading"
COMPLETE = "complete"
ABORTED = "aborted"
EXPIRED = "expired"


@attrs.frozen
class FileRecord:
    """
    The metadata of a stored file.

    @ivar fileId: random and url-safe; names the file in URLs and on disk.
    @ivar fromId: who sent (uploaded) it.
    @ivar toId: the recipient of a 1:1 file; C{''} for a group's or room's.
    @ivar mimeType: as the sender declared it, if it did.
    @ivar size: in bytes (for an upload: the size announced).
    @ivar createdAt: ms since the epoch.
    @ivar conversation: the conversation key it was uploaded for; L{None}
        for a file kept for an offline recipient before uploads existed
        (readable by C{fromId} and C{toId}, bytes at its own path).
    @ivar state: L{UPLOADING}, L{COMPLETE}, L{ABORTED} or L{EXPIRED}.
    @ivar sha256: the content address (hex) once complete; L{None} for the
        files kept before content addressing.
    @ivar expectedSha256: the checksum the uploader announced, if any.
    @ivar expiresAt: while uploading, when the upload is abandoned (ms).
    @ivar completedAt: when its last byte arrived (ms).
    """

    fileId: str
    fromId: str
    toId: str
    fileName: str
    mimeType: str | None
    size: int
    createdAt: int
    conversation: str | None = None
    state: str = COMPLETE
    sha256: str | None = None
    expectedSha256: str | None = None
    expiresAt: int | None = None
    completedAt: int | None = None



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

    def releaseCaches() -> Deferred[None]:
        """
        Free what the store caches in this process (SQLite's page cache),
        to be read again as needed: called when the server has gone quiet
        (L{crm_im.idlerelease}).
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

    def requeue(userId: str, seqs: Sequence[int]) -> Deferred[None]:
        """
        Put the messages to C{userId} with these C{seq}s back in their
        offline queue: marked delivered (by the node that routed them), they
        were held for a device that went before they were sent to it.
        """

    def pendingFor(
        userId: str, limit: int, maxBytes: int | None = None, after: int = 0
    ) -> Deferred[list[StoredMessage]]:
        """
        The undelivered messages to C{userId} with a C{seq} above C{after},
        C{seq} ascending, at most C{limit}; with C{maxBytes}, also no more
        than until their L{messageWeight}s pass it (the message that passes
        it included, so that a caller given more than C{maxBytes} knows
        more may wait).
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
        friendId: str,
        upToSeq: int | None = None,
        messageIds: Sequence[str] | None = None,
    ) -> Deferred[list[StoredMessage]]:
        """
        Move C{readerId}'s read cursor in the conversation with C{friendId}
        forward (never back, never past its latest message): to C{upToSeq},
        or to the latest of the messages from C{friendId} whose id is in
        C{messageIds}. Reading a message reads every earlier one of the
        conversation. The messages newly covered are marked delivered too.

        @return: the messages to C{readerId} newly covered, seq ascending
            (at most a bounded number: the cursor stops at the last), so
            that their senders can be told.
        @raise ValueError: (in the L{Deferred}) with neither C{upToSeq} nor
            C{messageIds}.
        """

    def conversationHistory(
        conversation: str,
        limit: int,
        before: int | None,
        after: int | None,
    ) -> Deferred[HistoryPage]:
        """
        One page of the conversation with key C{conversation} (a group's or
        a room's), paged as L{history}.
        """

    def findMessage(fromId: str, messageId: str) -> Deferred[StoredMessage | None]:
        """
        The message C{fromId} sent with id C{messageId}, if any.
        """

    def findSharedMessages(messageId: str) -> Deferred[list[StoredMessage]]:
        """
        The group and room messages whose id is C{messageId} (ids are
        unique per sender only, so there may be several).
        """

    def recall(seq: int, by: str, now: int) -> Deferred[StoredMessage | None]:
        """
        Recall the message C{seq}: its content, file name and URL are
        erased, C{recalledBy} is set. A write.

        @return: the stub, or L{None} if there is no such message or it was
            recalled already.
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
        conversation: str | None = None,
    ) -> Deferred[FileRecord]:
        """
        Store C{data} durably under a new random id (its bytes kept once
        however many files carry them), for C{conversation}.

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

    def resourceFor(path: FilePath[str], mimeType: str) -> Any:
        """
        A static resource (L{twisted.web.static.File}: C{Range}, C{HEAD})
        serving the bytes at C{path} as C{mimeType}, decrypted as they are
        sent if they are sealed at rest.
        """


class IFileBytes(IFileStore):
    """
    Where the bytes of uploaded files live (FILES.md): uploads while they
    arrive, content-addressed blobs, thumbnails. L{DiskFileStore} keeps
    them under a directory; a cluster can put them on shared storage
    behind the same methods. Every method that touches bytes returns a
    L{Deferred} (blocking I/O is never on the reactor thread).
    """

    def openPart(fileId: str, hasher: Any = None) -> Deferred[Any]:
        """
        Open an upload's bytes for appending: a writer with C{size},
        C{write(data)} and C{close(size=None)} (each a L{Deferred}; a
        C{size} given to C{close} cuts the bytes back to it); C{hasher}, if
        given, is fed every byte written.
        """

    def partSize(fileId: str) -> Deferred[int]:
        """
        How many bytes of an upload are stored (where it resumes).
        """

    def hashPart(fileId: str) -> Deferred[str]:
        """
        The SHA-256 of an upload's stored bytes.
        """

    def commitPart(fileId: str, sha256: str) -> Deferred[None]:
        """
        Make a finished upload's bytes the blob C{sha256} (inside
        L{withBlob}).
        """

    def removePart(fileId: str) -> Deferred[None]:
        """
        Delete an abandoned upload's bytes.
        """

    def withBlob(sha256: str, action: Any) -> Any:
        """
        Run C{action} (a coroutine function) while no other reference
        change or deletion of blob C{sha256} runs.
        """

    def removeBlob(sha256: str) -> Deferred[None]:
        """
        Delete a blob nobody refers to (inside L{withBlob}).
        """

    def removeLegacy(record: FileRecord) -> Deferred[None]:
        """
        Delete the bytes of a file kept before content addressing.
        """

    def thumbnailPath(sha256: str) -> FilePath[str]:
        """
        Where the thumbnail of blob C{sha256} is.
        """

    def openBytes(path: FilePath[str]) -> Any:
        """
        The plaintext bytes at C{path} as a binary file object, decrypted as
        read if sealed at rest (blocking: call it through L{run}).
        """

    def writeBytes(path: FilePath[str], data: bytes) -> None:
        """
        Write C{data} to C{path} atomically, sealed if encryption at rest is
        on (blocking: call it through L{run}).
        """

    def run(func: Any, *args: Any) -> Deferred[Any]:
        """
        Run blocking C{func} near the bytes (off the reactor thread).
        """


OWNER = "owner"
ADMIN = "admin"
MEMBER = "member"


@attrs.frozen
class GroupRecord:
    """
    A group as stored.

    @ivar createdBy: who created it (with C{clientId}, what makes a retried
        C{group:create} find it again).
    @ivar clientId: the C{id} its creator asked for, if any.
    """

    id: str
    name: str
    avatar: str | None
    ownerId: str
    createdBy: str
    clientId: str | None
    createdAt: int


@attrs.frozen
class MemberRecord:
    """
    A member of a group.

    @ivar role: L{OWNER}, L{ADMIN} or L{MEMBER}.
    @ivar joinedAt: ms since the epoch; the longest-serving member has the
        smallest (ties broken by C{order}).
    @ivar order: increases with every member added to the group.
    """

    userId: str
    role: str
    joinedAt: int
    order: int = 0


@attrs.frozen
class GroupState:
    """
    A group with its current members and the users who were members once.

    @ivar lastSeq: the seq of its last message when read, 0 if none.
    """

    group: GroupRecord
    members: dict[str, MemberRecord]
    former: frozenset[str]
    lastSeq: int = 0


@attrs.frozen
class GroupChange:
    """
    One change of a group, applied in one transaction with its system
    message.

    @ivar add: members to add (re-adding a former member makes them current).
    @ivar remove: user ids to remove (they become former members).
    @ivar roles: new roles of current members.
    @ivar ownerId: the new owner, if ownership moves.
    @ivar name: a new name. @ivar avatar: a new avatar (C{""} clears it).
    @ivar dissolve: dissolve the group (it is gone for everyone).
    @ivar system: the system message recording the change, if any.
    """

    groupId: str
    now: int
    add: tuple[MemberRecord, ...] = ()
    remove: tuple[str, ...] = ()
    roles: tuple[tuple[str, str], ...] = ()
    ownerId: str | None = None
    name: str | None = None
    avatar: str | None = None
    dissolve: bool = False
    system: NewMessage | None = None


@attrs.frozen
class GroupSummary:
    """
    One line of a user's group list.

    @ivar lastSeq: the seq of the group's last message, 0 if none.
    @ivar readSeq: the user's read cursor in the group.
    @ivar unreadCount: messages after the cursor that others sent.
    """

    group: GroupRecord
    memberCount: int
    lastSeq: int
    readSeq: int
    unreadCount: int
    lastMessage: StoredMessage | None


@attrs.frozen
class RoomRecord:
    """
    A chat room as stored (who is in it is live state, not stored).
    """

    id: str
    name: str
    topic: str | None
    public: bool
    createdBy: str
    clientId: str | None
    createdAt: int


class IConversationStore(Interface):
    """
    Durable groups, members, rooms and read cursors. Every method returns a
    L{Deferred}; writes share the message store's group commit.
    """

    def createGroup(
        group: GroupRecord, members: Sequence[MemberRecord], system: NewMessage
    ) -> Deferred[tuple[GroupState, bool, StoredMessage | None]]:
        """
        Create C{group} with C{members} and store C{system} in it, unless
        its creator already made a group with the same C{clientId}. An id
        another group has already is replaced by a new UUID.

        @return: the group's state, whether it was created now, and the
            stored system message (L{None} if not created now).
        """

    def group(groupId: str) -> Deferred[GroupState | None]:
        """
        The state of a group, or L{None} if there is none or it was
        dissolved.
        """

    def changeGroup(change: GroupChange) -> Deferred[StoredMessage | None]:
        """
        Apply C{change} (and store its system message) in one transaction;
        to a group that is dissolved or unknown, nothing.

        @return: the stored system message, if there was one and it was
            stored.
        """

    def groupCounts(userIds: Sequence[str]) -> Deferred[dict[str, int]]:
        """
        How many groups each of C{userIds} is a member of.
        """

    def groupSummaries(userId: str) -> Deferred[list[GroupSummary]]:
        """
        The groups C{userId} is a member of, most recent activity first.
        """

    def readCursors(conversation: str) -> Deferred[dict[str, int]]:
        """
        Every read cursor of a conversation, by user.
        """

    def moveReadCursor(conversation: str, userId: str, upToSeq: int) -> Deferred[tuple[int, bool]]:
        """
        Move C{userId}'s cursor forward to C{upToSeq}, never back and never
        past the conversation's last message.

        @return: the cursor now and whether it moved.
        """

    def createRoom(room: RoomRecord) -> Deferred[tuple[RoomRecord, bool]]:
        """
        Create C{room} unless its creator already made one with the same
        C{clientId}. An id another room has already, or a closed room had
        (its messages stay, for the export), is replaced by a new UUID: a
        new room never shows an old one's history.

        @return: the room and whether it was created now.
        """

    def room(roomId: str) -> Deferred[RoomRecord | None]:
        """
        The room C{roomId}, if any.
        """

    def publicRooms(limit: int) -> Deferred[list[RoomRecord]]:
        """
        The public rooms, oldest first, at most C{limit}.
        """

    def roomCount(createdBy: str) -> Deferred[int]:
        """
        How many rooms C{createdBy} created.
        """


class IFileRecords(IFileMetadata):
    """
    The records of uploaded files and of their content-addressed bytes
    (FILES.md), kept by the message store's database. Every method returns a
    L{Deferred}; writes go through the store's group commit.
    """

    def quotaUsed(userId: str) -> Deferred[int]:
        """
        The bytes C{userId}'s uploading and complete files take (announced
        sizes; identical bytes count for each upload).
        """

    def touchUpload(fileId: str, expiresAt: int) -> Deferred[None]:
        """
        Move an uploading file's expiry (bytes arrived).
        """

    def completeUpload(fileId: str, sha256: str, now: int) -> Deferred[FileRecord | None]:
        """
        Mark an uploading file complete with its content address and take a
        reference on that blob (created with one reference if new).

        @return: the completed record, or L{None} if it was not uploading.
        """

    def abortUpload(fileId: str, now: int) -> Deferred[bool]:
        """
        Mark an uploading file L{ABORTED}. @return: whether it was uploading.
        """

    def expiredUploads(now: int, limit: int) -> Deferred[list[FileRecord]]:
        """
        Uploading files whose expiry is past, at most C{limit}.
        """

    def retentionCandidates(cutoff: int, limit: int) -> Deferred[list[FileRecord]]:
        """
        Complete files created before C{cutoff} (ms) that no message at or
        after C{cutoff} refers to, at most C{limit}.
        """

    def expireFile(fileId: str) -> Deferred[tuple[str | None, bool]]:
        """
        Mark a complete file L{EXPIRED} and drop its blob reference.

        @return: its content address and whether that blob has no reference
            left (its bytes may go).
        """

    def blobReferenced(sha256: str) -> Deferred[bool]:
        """
        Whether any complete file refers to the blob C{sha256}.
        """

    def fileConversations(fileId: str) -> Deferred[list[str]]:
        """
        The conversation keys of the messages carrying C{fileId} (at most
        100; recalled messages carry nothing).
        """
