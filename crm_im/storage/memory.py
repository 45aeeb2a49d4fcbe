# -*- test-case-name: tests.test_storage -*-
"""
L{MemoryMessageStore}: the message store as a fake, in memory, for unit tests
of the application. Same semantics as the SQL store; every L{Deferred} it
returns has already fired.
"""

from __future__ import annotations

from typing import Sequence

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from .interface import (
    FileRecord,
    HistoryPage,
    IConversationStore,
    IFileMetadata,
    IMessageStore,
    NewMessage,
    StoreClosedError,
    StoredMessage,
    StoreOutcome,
    boundedMessages,
    directConversation,
)
from .memoryconversations import MemoryConversationStore
from .messages import MAX_READ_MESSAGES
from .keys import IKeyStore
from .memorykeys import MemoryKeyStore
from .memorypush import MemoryPushStore
from .outbox import IPushStore


@implementer(IMessageStore, IConversationStore, IFileMetadata, IPushStore, IKeyStore)
class MemoryMessageStore(MemoryConversationStore, MemoryPushStore, MemoryKeyStore):
    """
    Messages and file records in dicts.

    @ivar messages: every stored message by seq, in seq order.
    @ivar files: every file record by id.
    """

    def __init__(self) -> None:
        """
        An empty store.
        """
        self.messages: dict[int, StoredMessage] = {}
        self.files: dict[str, FileRecord] = {}
        self._bySenderId: dict[tuple[str, str], int] = {}
        self._lastSeq = 0
        #: each conversation's last message (seq, server time): new
        #: messages are linked to it, as PostgreSQL links them
        self._lastOf: dict[str, tuple[int, int]] = {}
        self._closed = False
        MemoryConversationStore.__init__(self)
        MemoryPushStore.__init__(self)
        MemoryKeyStore.__init__(self)

    def _check(self, desc: str) -> None:
        """
        Refuse use after L{close}. (Unlike the SQL store, the fake needs no
        L{open}, so that application tests can use it as it is.)
        """
        if self._closed:
            raise StoreClosedError(f"{desc}: the store is not open")

    def open(self) -> Deferred[None]:
        """
        See L{IMessageStore.open}.
        """
        return succeed(None)

    def close(self) -> Deferred[None]:
        """
        See L{IMessageStore.close}.
        """
        self._closed = True
        return succeed(None)

    def releaseCaches(self) -> Deferred[None]:
        """
        See L{IMessageStore.releaseCaches}: nothing is cached.
        """
        try:
            self._check("releaseCaches")
        except StoreClosedError:
            return fail()
        return succeed(None)

    def storeMessage(self, msg: NewMessage) -> Deferred[StoreOutcome]:
        """
        See L{IMessageStore.storeMessage}.
        """
        try:
            self._check("storeMessage")
        except StoreClosedError:
            return fail()
        existing = self._bySenderId.get((msg.fromId, msg.id))
        if existing is not None:
            return succeed(StoreOutcome(self.messages[existing], created=False))
        stored = self._insert(msg)
        if msg.notify:
            self._enqueueStored(stored, msg.notify)
        return succeed(StoreOutcome(stored, created=True))

    def _insert(self, msg: NewMessage) -> StoredMessage:
        self._lastSeq += 1
        conversation = msg.conversation
        prevSeq, prevAt = self._lastOf.get(conversation, (0, 0))
        stored = StoredMessage.fromNew(msg, self._lastSeq)
        self._lastOf[conversation] = (stored.seq, stored.serverTimestamp)
        self.messages[stored.seq] = stored
        self._bySenderId[(msg.fromId, msg.id)] = stored.seq
        return attrs.evolve(stored, prevSeq=prevSeq, prevAt=prevAt)

    def requeue(self, userId: str, seqs: Sequence[int]) -> Deferred[None]:
        """
        See L{IMessageStore.requeue}.
        """
        return self._setDelivered("requeue", seqs, False, userId)

    def markDelivered(self, seqs: Sequence[int]) -> Deferred[None]:
        """
        See L{IMessageStore.markDelivered}.
        """
        return self._setDelivered("markDelivered", seqs, True)

    def _setDelivered(self, operation: str, seqs: Sequence[int], delivered: bool, toId: str | None = None) -> Deferred[None]:
        try:
            self._check(operation)
        except StoreClosedError:
            return fail()
        for seq in seqs:
            message = self.messages.get(seq)
            if message is not None and (toId is None or message.toId == toId):
                self.messages[seq] = attrs.evolve(message, delivered=delivered)
        return succeed(None)

    def pendingFor(
        self, userId: str, limit: int, maxBytes: int | None = None, after: int = 0
    ) -> Deferred[list[StoredMessage]]:
        """
        See L{IMessageStore.pendingFor}.
        """
        try:
            self._check("pendingFor")
        except StoreClosedError:
            return fail()
        pending = (
            message
            for message in self.messages.values()
            if message.toId == userId and not message.delivered and message.seq > after
        )
        return succeed(boundedMessages(pending, limit, maxBytes))

    def history(
        self,
        userId: str,
        friendId: str,
        topic: str | None,
        limit: int,
        before: int | None,
        after: int | None,
    ) -> Deferred[HistoryPage]:
        """
        See L{IMessageStore.history}.
        """
        try:
            self._check("history")
        except StoreClosedError:
            return fail()
        return self._page(directConversation(userId, friendId), topic, limit, before, after)

    def _page(
        self, key: str, topic: str | None, limit: int, before: int | None, after: int | None
    ) -> Deferred[HistoryPage]:
        limit = max(limit, 0)
        matching = [
            message
            for message in self.messages.values()
            if message.conversation == key
            and (topic is None or message.topic == topic)
            and (before is None or message.seq < before)
            and (after is None or message.seq > after)
        ]
        if after is None:
            page = matching[-limit:] if limit else []
        else:
            page = matching[:limit]
        return succeed(HistoryPage(messages=page, hasMore=len(matching) > limit))

    def markRead(
        self,
        readerId: str,
        friendId: str,
        upToSeq: int | None = None,
        messageIds: Sequence[str] | None = None,
    ) -> Deferred[list[StoredMessage]]:
        """
        See L{IMessageStore.markRead}.
        """
        try:
            self._check("markRead")
        except StoreClosedError:
            return fail()
        if messageIds is not None:
            seqs = [self._bySenderId.get((friendId, messageId)) for messageId in messageIds]
            upToSeq = max((seq for seq in seqs if seq is not None and self.messages[seq].toId == readerId), default=None)
            if upToSeq is None:
                return succeed([])
        elif upToSeq is None:
            return fail(ValueError("markRead needs upToSeq or messageIds"))
        conversation = directConversation(readerId, friendId)
        cursors = self._cursors.setdefault(conversation, {})
        current = cursors.get(readerId, 0)
        found = [
            message
            for seq, message in self.messages.items()
            if current < seq <= upToSeq and message.toId == readerId and message.conversation == conversation
        ]
        if len(found) > MAX_READ_MESSAGES:
            del found[MAX_READ_MESSAGES:]
            target = found[-1].seq
        else:
            target = min(upToSeq, max((m.seq for m in self.messages.values() if m.conversation == conversation), default=0))
        if target > current:
            cursors[readerId] = target
        marked = [attrs.evolve(message, delivered=True) for message in found]
        for message in marked:
            self.messages[message.seq] = message
        return succeed(marked)

    def conversationHistory(
        self, conversation: str, limit: int, before: int | None, after: int | None
    ) -> Deferred[HistoryPage]:
        """
        See L{IMessageStore.conversationHistory}.
        """
        try:
            self._check("history")
        except StoreClosedError:
            return fail()
        return self._page(conversation, None, limit, before, after)

    def findMessage(self, fromId: str, messageId: str) -> Deferred[StoredMessage | None]:
        """
        See L{IMessageStore.findMessage}.
        """
        seq = self._bySenderId.get((fromId, messageId))
        return succeed(None if seq is None else self.messages[seq])

    def findSharedMessages(self, messageId: str) -> Deferred[list[StoredMessage]]:
        """
        See L{IMessageStore.findSharedMessages}.
        """
        return succeed([m for m in self.messages.values() if m.toId is None and m.id == messageId])

    def recall(self, seq: int, by: str, now: int) -> Deferred[StoredMessage | None]:
        """
        See L{IMessageStore.recall}.
        """
        try:
            self._check("recall")
        except StoreClosedError:
            return fail()
        message = self.messages.get(seq)
        if message is None or message.recalledBy is not None:
            return succeed(None)
        stub = attrs.evolve(
            message,
            content="",
            fileUrl=None,
            fileName=None,
            fileId=None,
            fileSize=None,
            mimeType=None,
            ciphertext=None,
            mentions=(),
            recalledBy=by,
        )
        self.messages[seq] = stub
        return succeed(stub)

    def ping(self) -> Deferred[None]:
        """
        See L{IMessageStore.ping}.
        """
        try:
            self._check("ping")
        except StoreClosedError:
            return fail()
        return succeed(None)

    def recordFile(self, record: FileRecord) -> Deferred[None]:
        """
        See L{IFileMetadata.recordFile}.
        """
        try:
            self._check("recordFile")
        except StoreClosedError:
            return fail()
        if record.fileId in self.files:
            return fail(ValueError(f"file {record.fileId} recorded already"))
        self.files[record.fileId] = record
        return succeed(None)

    def fileRecord(self, fileId: str) -> Deferred[FileRecord | None]:
        """
        See L{IFileMetadata.fileRecord}.
        """
        try:
            self._check("fileRecord")
        except StoreClosedError:
            return fail()
        return succeed(self.files.get(fileId))
