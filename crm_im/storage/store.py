# -*- test-case-name: tests.test_storage -*-
"""
The SQL store: L{IMessageStore}, L{IConversationStore} and L{IFileMetadata}
on one L{Database}, every write through one L{GroupCommit}. The SQL is in
the domain modules: L{crm_im.storage.messages},
L{crm_im.storage.conversations}, L{crm_im.storage.filerecords}.
"""

from __future__ import annotations

from typing import Any, Sequence

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from .commit import GroupCommit, Write
from .conversations import SQLConversationStore
from .database import Transaction
from .filerecords import fileRecord_txn, recordFile_txn
from .keys import IKeyStore, SQLKeyStore
from .outbox import IPushStore, SQLPushStore
from .interface import (
    FileRecord,
    HistoryPage,
    IConversationStore,
    IFileMetadata,
    IMessageStore,
    NewMessage,
    StoredMessage,
    StoreOutcome,
)
from .messages import (
    INSERT_CHUNK,
    conversationHistory_txn,
    findMessage_txn,
    findShared_txn,
    history_txn,
    markDelivered_txn,
    requeue_txn,
    markRead_txn,
    pendingFor_txn,
    ping_txn,
    recall_txn,
    storeMessage_txn,
    storeMessages_txn,
    writeBatch_txn,
)

__all__ = ["INSERT_CHUNK", "SQLMessageStore", "markDelivered_txn", "storeMessages_txn"]


@implementer(IMessageStore, IConversationStore, IFileMetadata, IPushStore, IKeyStore)
class SQLMessageStore(GroupCommit, SQLConversationStore, SQLPushStore, SQLKeyStore):
    """
    Messages, conversations, file records, push registrations and the
    end-to-end key directory on a L{Database}, with group commit.
    """

    def runBatch_txn(self, txn: Transaction, batch: Sequence[Write]) -> list[tuple[bool, Any]]:
        """
        See L{GroupCommit.runBatch_txn}: L{writeBatch_txn}.
        """
        return writeBatch_txn(txn, batch)

    def storeMessage(self, msg: NewMessage) -> Deferred[StoreOutcome]:
        """
        See L{IMessageStore.storeMessage}.
        """
        return self._write("storeMessage", lambda txn: storeMessage_txn(txn, msg), message=msg)

    def markDelivered(self, seqs: Sequence[int]) -> Deferred[None]:
        """
        See L{IMessageStore.markDelivered}.
        """
        seqs = list(seqs)
        return self._write("markDelivered", lambda txn: markDelivered_txn(txn, seqs), seqs=seqs)

    def requeue(self, userId: str, seqs: Sequence[int]) -> Deferred[None]:
        """
        See L{IMessageStore.requeue}.
        """
        seqs = list(seqs)
        return self._write("requeue", lambda txn: requeue_txn(txn, userId, seqs), atomic=True)

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
        if upToSeq is None and messageIds is None:
            return fail(ValueError("markRead needs upToSeq or messageIds"))
        ids = None if messageIds is None else list(messageIds)
        return self._write(
            "markRead",
            lambda txn: markRead_txn(txn, readerId, friendId, upToSeq, ids),
        )

    def recordFile(self, record: FileRecord) -> Deferred[None]:
        """
        See L{IFileMetadata.recordFile}.
        """
        return self._write("recordFile", lambda txn: recordFile_txn(txn, record))

    def releaseCaches(self) -> Deferred[None]:
        """
        See L{IMessageStore.releaseCaches}: the engine's
        C{releaseMemorySQL}, on the store's thread.
        """
        sql = self.database.engine.releaseMemorySQL
        if sql is None:
            return succeed(None)
        return self._read("releaseCaches", lambda txn: txn.execute(sql))

    # reads

    def pendingFor(
        self, userId: str, limit: int, maxBytes: int | None = None, after: int = 0
    ) -> Deferred[list[StoredMessage]]:
        """
        See L{IMessageStore.pendingFor}.
        """
        return self._read("pendingFor", lambda txn: pendingFor_txn(txn, userId, limit, maxBytes, after))

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
        return self._read(
            "history",
            lambda txn: history_txn(
                txn, userId, friendId, topic, limit, before, after
            ),
        )

    def conversationHistory(
        self, conversation: str, limit: int, before: int | None, after: int | None
    ) -> Deferred[HistoryPage]:
        """
        See L{IMessageStore.conversationHistory}.
        """
        return self._read(
            "history", lambda txn: conversationHistory_txn(txn, conversation, None, limit, before, after)
        )

    def findMessage(self, fromId: str, messageId: str) -> Deferred[StoredMessage | None]:
        """
        See L{IMessageStore.findMessage}.
        """
        return self._read("findMessage", lambda txn: findMessage_txn(txn, fromId, messageId))

    def findSharedMessages(self, messageId: str) -> Deferred[list[StoredMessage]]:
        """
        See L{IMessageStore.findSharedMessages}.
        """
        return self._read("findSharedMessages", lambda txn: findShared_txn(txn, messageId))

    def recall(self, seq: int, by: str, now: int) -> Deferred[StoredMessage | None]:
        """
        See L{IMessageStore.recall}.
        """
        return self._write("recall", lambda txn: recall_txn(txn, seq, by, now))

    def fileRecord(self, fileId: str) -> Deferred[FileRecord | None]:
        """
        See L{IFileMetadata.fileRecord}.
        """
        return self._read("fileRecord", lambda txn: fileRecord_txn(txn, fileId))

    def ping(self) -> Deferred[None]:
        """
        See L{IMessageStore.ping}.
        """
        return self._read("ping", ping_txn)
