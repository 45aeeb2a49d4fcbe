# -*- test-case-name: tests.test_storage -*-
"""
The SQL message store: L{IMessageStore} and L{IFileMetadata} on a
L{Database}, with group commit.

Every write (store, delivered, read, file record) joins one queue. While a
write transaction is in flight, new writes wait; when it commits, all the
waiting writes (up to L{SQLMessageStore.maxBatch}) go into the next single
transaction. An idle store thus commits a write at once, and a busy one pays
one commit (one fsync) for many writes. Each write runs in its own savepoint,
so one failing write fails alone; a failed commit fails the whole batch. A
write's L{Deferred} fires only after its transaction committed.

Reads go straight to the pool; with its single connection, a read issued after
a write's L{Deferred} fired sees that write.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence, TypeVar

import attrs
import orjson
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .conversations import SQLConversationStore
from .database import Database, Transaction, chunks, placeholders
from .interface import (
    GROUP_PREFIX,
    ROOM_PREFIX,
    FileRecord,
    HistoryPage,
    IConversationStore,
    IFileMetadata,
    IMessageStore,
    NewMessage,
    StoreClosedError,
    StoredMessage,
    StoreOutcome,
    directConversation,
)

_R = TypeVar("_R")

_PENDING = object()

_MESSAGE_COLUMNS = (
    "seq, message_id, from_id, from_name, to_id, topic, type, content,"
    " file_url, file_name, client_timestamp, server_timestamp, delivered, read_at,"
    " conversation, system, recalled_by"
)
_FILE_COLUMNS = "file_id, from_id, to_id, file_name, mime_type, size, created_at"


def _messageFromRow(row: Sequence[Any]) -> StoredMessage:
    """
    A L{StoredMessage} from a row of C{_MESSAGE_COLUMNS}.
    """
    toId = row[4]
    groupId = roomId = None
    if not toId:
        toId = None
        conversation: str = row[14]
        if conversation.startswith(GROUP_PREFIX):
            groupId = conversation[len(GROUP_PREFIX) :]
        else:
            roomId = conversation[len(ROOM_PREFIX) :]
    system = row[15]
    return StoredMessage(
        seq=row[0],
        id=row[1],
        fromId=row[2],
        fromName=row[3],
        toId=toId,
        topic=row[5],
        type=row[6],
        content=row[7],
        fileUrl=row[8],
        fileName=row[9],
        clientTimestamp=row[10],
        serverTimestamp=row[11],
        delivered=bool(row[12]),
        readAt=row[13],
        groupId=groupId,
        roomId=roomId,
        system=None if system is None else orjson.loads(system),
        recalledBy=row[16],
    )


_INSERT_COLUMNS = (
    "INSERT INTO messages (message_id, from_id, from_name, to_id,"
    " conversation, topic, type, content, file_url, file_name,"
    " client_timestamp, server_timestamp, delivered, read_at, system) VALUES "
)
_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_ON_CONFLICT_RETURNING = " ON CONFLICT (from_id, message_id) DO NOTHING RETURNING seq"

#: Rows per multi-row INSERT (15 parameters each; SQLite allows 32766).
INSERT_CHUNK = 250


def _insertRow(msg: NewMessage) -> tuple[Any, ...]:
    # Group and room messages are stored delivered and read: they never
    # enter the 1:1 offline queue or unread indexes (see 004_conversations).
    shared = msg.toId is None
    return (
        msg.id,
        msg.fromId,
        msg.fromName,
        "" if shared else msg.toId,
        msg.conversation,
        msg.topic,
        msg.type,
        msg.content,
        msg.fileUrl,
        msg.fileName,
        msg.clientTimestamp,
        msg.serverTimestamp,
        1 if shared else 0,
        msg.serverTimestamp if shared else None,
        None if msg.system is None else orjson.dumps(msg.system).decode(),
    )


_newStored = StoredMessage.fromNew


def storeMessage_txn(txn: Transaction, msg: NewMessage) -> StoreOutcome:
    """
    Insert C{msg} unless its C{(fromId, id)} exists (then return the
    stored one).

    One statement in the common case: a single statement is atomic in
    SQLite and PostgreSQL, so this write needs no savepoint of its own.
    """
    txn.execute(_INSERT_COLUMNS + _ROW + _ON_CONFLICT_RETURNING, _insertRow(msg))
    row = txn.fetchone()
    if row is None:
        txn.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages"
            " WHERE from_id = ? AND message_id = ?",
            (msg.fromId, msg.id),
        )
        existing = txn.fetchone()
        assert existing is not None
        return StoreOutcome(message=_messageFromRow(existing), created=False)
    return StoreOutcome(message=_newStored(msg, row[0]), created=True)


def storeMessages_txn(txn: Transaction, msgs: Sequence[NewMessage]) -> list[tuple[bool, Any]]:
    """
    Insert many messages with a handful of statements, whatever their
    number: one look-up of the keys that already exist, then multi-row
    C{INSERT}s.

    Why: the pool thread releases and re-takes the GIL around every
    statement step, and under load each re-take waits for the reactor
    thread to let go of it; a statement per message made the database
    thread crawl exactly when the batches grew. Consecutive rows of one
    C{INSERT} get consecutive C{seq}s (one connection writes, and
    C{AUTOINCREMENT} allocates in order); the row count is checked, and any
    surprise falls back to one statement per message.

    @return: per message, C{(True, StoreOutcome)} or C{(False, Failure)}.
    """
    results: list[tuple[bool, Any]] = [(True, None)] * len(msgs)
    existing: dict[tuple[str, str], StoredMessage] = {}
    keys = list({(msg.fromId, msg.id) for msg in msgs})
    for keyChunk in chunks(keys, INSERT_CHUNK):
        txn.execute(
            f"WITH k(f, m) AS (VALUES {', '.join(['(?, ?)'] * len(keyChunk))})"
            f" SELECT {', '.join('messages.' + c.strip() for c in _MESSAGE_COLUMNS.split(','))}"
            " FROM k JOIN messages ON messages.from_id = k.f AND messages.message_id = k.m",
            [value for key in keyChunk for value in key],
        )
        for row in txn.fetchall():
            stored = _messageFromRow(row)
            existing[(stored.fromId, stored.id)] = stored
    fresh: list[int] = []
    firstOf: dict[tuple[str, str], int] = {}
    repeats: list[tuple[int, int]] = []
    for index, msg in enumerate(msgs):
        key = (msg.fromId, msg.id)
        found = existing.get(key)
        if found is not None:
            results[index] = (True, StoreOutcome(message=found, created=False))
        elif key in firstOf:
            repeats.append((index, firstOf[key]))
        else:
            firstOf[key] = index
            fresh.append(index)
    for chunk in chunks(fresh, INSERT_CHUNK):
        try:
            txn.execute(
                _INSERT_COLUMNS + ", ".join([_ROW] * len(chunk)),
                [value for index in chunk for value in _insertRow(msgs[index])],
            )
            if txn.rowcount != len(chunk):
                raise RuntimeError("multi-row insert changed an unexpected number of rows")
            last = txn.lastInsertedId()
        except Exception:
            # One bad row must not fail the others: one statement each.
            for index in chunk:
                try:
                    results[index] = (True, storeMessage_txn(txn, msgs[index]))
                except Exception:
                    results[index] = (False, Failure())
            continue
        first = last - len(chunk) + 1
        for offset, index in enumerate(chunk):
            results[index] = (True, StoreOutcome(message=_newStored(msgs[index], first + offset), created=True))
    for index, original in repeats:
        ok, outcome = results[original]
        results[index] = (True, StoreOutcome(message=outcome.message, created=False)) if ok else (ok, outcome)
    return results


def markDelivered_txn(txn: Transaction, seqs: Sequence[int]) -> None:
    """
    Mark the messages with these seqs delivered.
    """
    for chunk in chunks(sorted(set(seqs))):
        txn.execute(
            "UPDATE messages SET delivered = 1"
            f" WHERE delivered = 0 AND seq IN ({placeholders(len(chunk))})",
            chunk,
        )


def markRead_txn(
    txn: Transaction,
    readerId: str,
    now: int,
    friendId: str | None,
    upToSeq: int | None,
    messageIds: Sequence[str] | None,
) -> list[StoredMessage]:
    """
    Mark unread messages to C{readerId} read (and delivered): from
    C{friendId} up to C{upToSeq}, or those with an id in C{messageIds}.

    @return: the messages marked now, seq ascending.
    """
    found: list[StoredMessage] = []
    if friendId is not None and upToSeq is not None:
        txn.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages"
            " WHERE to_id = ? AND from_id = ? AND seq <= ? AND read_at IS NULL"
            " ORDER BY seq",
            (readerId, friendId, upToSeq),
        )
        found = [_messageFromRow(row) for row in txn.fetchall()]
    elif messageIds is not None:
        for chunk in chunks(sorted(set(messageIds))):
            txn.execute(
                f"SELECT {_MESSAGE_COLUMNS} FROM messages"
                f" WHERE to_id = ? AND message_id IN ({placeholders(len(chunk))})"
                " AND read_at IS NULL",
                (readerId, *chunk),
            )
            found.extend(_messageFromRow(row) for row in txn.fetchall())
        found.sort(key=lambda message: message.seq)
    else:
        raise ValueError("markRead needs friendId and upToSeq, or messageIds")
    for seqChunk in chunks([message.seq for message in found]):
        txn.execute(
            "UPDATE messages SET read_at = ?, delivered = 1"
            f" WHERE seq IN ({placeholders(len(seqChunk))})",
            (now, *seqChunk),
        )
    return [attrs.evolve(message, readAt=now, delivered=True) for message in found]


def pendingFor_txn(txn: Transaction, userId: str, limit: int) -> list[StoredMessage]:
    """
    The undelivered messages to C{userId}, seq ascending.
    """
    txn.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages"
        " WHERE to_id = ? AND delivered = 0 ORDER BY seq LIMIT ?",
        (userId, max(limit, 0)),
    )
    return [_messageFromRow(row) for row in txn.fetchall()]


def history_txn(
    txn: Transaction,
    userId: str,
    friendId: str,
    topic: str | None,
    limit: int,
    before: int | None,
    after: int | None,
) -> HistoryPage:
    """
    One page of a 1:1 conversation; see L{IMessageStore.history}.
    """
    return conversationHistory_txn(txn, directConversation(userId, friendId), topic, limit, before, after)


def conversationHistory_txn(
    txn: Transaction,
    conversation: str,
    topic: str | None,
    limit: int,
    before: int | None,
    after: int | None,
) -> HistoryPage:
    """
    One page of any conversation, by key; see L{IMessageStore.history}.
    """
    limit = max(limit, 0)
    conditions = ["conversation = ?"]
    args: list[Any] = [conversation]
    if topic is not None:
        conditions.append("topic = ?")
        args.append(topic)
    if before is not None:
        conditions.append("seq < ?")
        args.append(before)
    if after is not None:
        conditions.append("seq > ?")
        args.append(after)
    newestFirst = after is None
    args.append(limit + 1)
    txn.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages"
        f" WHERE {' AND '.join(conditions)}"
        f" ORDER BY seq {'DESC' if newestFirst else 'ASC'} LIMIT ?",
        args,
    )
    messages = [_messageFromRow(row) for row in txn.fetchall()]
    hasMore = len(messages) > limit
    del messages[limit:]
    if newestFirst:
        messages.reverse()
    return HistoryPage(messages=messages, hasMore=hasMore)


def findMessage_txn(txn: Transaction, fromId: str, messageId: str) -> StoredMessage | None:
    """
    The message C{fromId} sent as C{messageId}, if any.
    """
    txn.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE from_id = ? AND message_id = ?",
        (fromId, messageId),
    )
    row = txn.fetchone()
    return None if row is None else _messageFromRow(row)


def findReceived_txn(txn: Transaction, toId: str, messageId: str) -> list[StoredMessage]:
    """
    The messages to C{toId} with id C{messageId}; with C{toId} C{''}, the
    group and room messages with that id (the recipient index finds both).
    """
    txn.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE to_id = ? AND message_id = ? ORDER BY seq LIMIT 100",
        (toId, messageId),
    )
    return [_messageFromRow(row) for row in txn.fetchall()]


def recall_txn(txn: Transaction, seq: int, by: str, now: int) -> StoredMessage | None:
    """
    Erase the content (and file) of message C{seq}, keeping its place.
    """
    txn.execute(
        "UPDATE messages SET content = '', file_url = NULL, file_name = NULL,"
        " recalled_by = ?, recalled_at = ? WHERE seq = ? AND recalled_by IS NULL",
        (by, now, seq),
    )
    if txn.rowcount != 1:
        return None
    txn.execute(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE seq = ?", (seq,))
    row = txn.fetchone()
    return None if row is None else _messageFromRow(row)


def recordFile_txn(txn: Transaction, record: FileRecord) -> None:
    """
    Insert a file record.
    """
    txn.execute(
        f"INSERT INTO files ({_FILE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
        attrs.astuple(record),
    )


def fileRecord_txn(txn: Transaction, fileId: str) -> FileRecord | None:
    """
    The record of C{fileId}, if any.
    """
    txn.execute(f"SELECT {_FILE_COLUMNS} FROM files WHERE file_id = ?", (fileId,))
    row = txn.fetchone()
    return None if row is None else FileRecord(*row)


def ping_txn(txn: Transaction) -> None:
    """
    A query that touches the schema.
    """
    txn.execute("SELECT version FROM schema_version LIMIT 1")
    txn.fetchall()


def _writeBatch_txn(txn: Transaction, batch: Sequence["_Write"]) -> list[tuple[bool, Any]]:
    """
    Run the writes of one group commit.

    Single-statement writes (message inserts) run as they are: a failed
    statement is undone by the database alone. Every C{markDelivered} of
    the batch becomes one C{UPDATE}. Other writes run in order, each in
    its own savepoint, so one failing write fails alone.

    @return: per write, C{(True, result)} or C{(False, Failure)}.
    """
    results: list[tuple[bool, Any]] = [(True, None)] * len(batch)
    # Marks queued before the batch's first message (the lazy ones waiting
    # for a write) go first, as queued: a resend in the batch reads its
    # row's delivered flag. Marks queued after it go last.
    first = next((i for i, write in enumerate(batch) if write.message is not None), len(batch))
    early = [seq for write in batch[:first] if write.seqs is not None for seq in write.seqs]
    delivered = [seq for write in batch[first:] if write.seqs is not None for seq in write.seqs]
    if early:
        markDelivered_txn(txn, early)
    messages = [(index, write.message) for index, write in enumerate(batch) if write.message is not None]
    if messages:
        stored = storeMessages_txn(txn, [msg for _, msg in messages])
        for (index, _), result in zip(messages, stored):
            results[index] = result
    for index, write in enumerate(batch):
        if write.message is not None:
            continue
        if write.seqs is not None:
            continue
        if write.atomic:
            try:
                results[index] = (True, write.func(txn))
            except Exception:
                results[index] = (False, Failure())
            continue
        txn.execute("SAVEPOINT write")
        try:
            result = write.func(txn)
        except Exception:
            failure = Failure()
            txn.execute("ROLLBACK TO SAVEPOINT write")
            txn.execute("RELEASE SAVEPOINT write")
            results[index] = (False, failure)
        else:
            txn.execute("RELEASE SAVEPOINT write")
            results[index] = (True, result)
    if delivered:
        markDelivered_txn(txn, delivered)
    return results


@attrs.define
class _Write:
    """
    A write waiting in the group-commit queue.
    """

    desc: str
    func: Callable[[Transaction], Any]
    deferred: Deferred[Any]
    #: one statement: needs no savepoint
    atomic: bool = False
    #: a markDelivered write: merged with the others of its batch
    seqs: Sequence[int] | None = None
    #: a storeMessage write: inserted with the others of its batch
    message: NewMessage | None = None


@implementer(IMessageStore, IConversationStore, IFileMetadata)
class SQLMessageStore(SQLConversationStore):
    """
    L{IMessageStore} and L{IFileMetadata} on a L{Database}, with group
    commit.

    @ivar maxBatch: at most this many writes go into one transaction.
    """

    log = Logger()
    maxBatch = 1000
    #: seconds delivered marks may wait for a write to ride along with
    lazyDelay = 0.5
    #: seconds at least between the starts of two write transactions;
    #: writes arriving meanwhile share the next. A commit costs far more
    #: than its fsync: SQLite appends every page the transaction changed to
    #: the WAL, and each message changes a page in each of its indexes, most
    #: of them at random places; messages of one commit share pages, and the
    #: fsync and thread hand-offs are paid once. Measured with the relay
    #: bench at 4,000 msg/s: 0.87 of a core at 2 ms, 0.68 at 10 ms (see
    #: bench/README.md). A lone write after a quiet spell does not wait.
    commitInterval = 0.010

    def __init__(self, database: Database) -> None:
        """
        @param database: not yet started; L{open} starts it.
        """
        self.database = database
        self._opened = False
        self._closed = False
        self._queue: list[_Write] = []
        # Queued writes other than delivered marks (which may wait).
        self._urgent = 0
        self._lazyCall: Any = None
        self._intervalCall: Any = None
        # The lazy delay of the waiting delivered marks is over.
        self._marksDue = False
        self._lastCommitStart = float("-inf")
        self._inFlight = False
        self._drainWaiters: list[Deferred[None]] = []
        self._closeResult: object = _PENDING
        self._closeObservers: list[Deferred[None]] = []

    @property
    def transactionCount(self) -> int:
        """
        How many transactions the store has run (for tests and metrics).
        """
        return self.database.transactionCount

    def open(self) -> Deferred[None]:
        """
        Start the database and apply the schema.
        """
        if self._opened:
            return fail(StoreClosedError("the store was opened already"))
        self._opened = True
        return self.database.start()

    async def _close(self) -> None:
        self._flush()
        if self._inFlight or self._queue:
            drained: Deferred[None] = Deferred()
            self._drainWaiters.append(drained)
            await drained
        self.database.close()

    def _closeFinished(self, result: None | Failure) -> None:
        """
        Tell every caller of L{close} that the store is closed.
        """
        self._closeResult = result
        observers, self._closeObservers = self._closeObservers, []
        for observer in observers:
            if result is None:
                observer.callback(None)
            else:
                observer.errback(result)

    def close(self) -> Deferred[None]:
        """
        Refuse new writes, commit the queued ones, then close the database.
        Calling it again returns a L{Deferred} for the same completion.
        """
        if not self._closed:
            self._closed = True
            Deferred.fromCoroutine(self._close()).addBoth(self._closeFinished)
        if self._closeResult is _PENDING:
            observer: Deferred[None] = Deferred()
            self._closeObservers.append(observer)
            return observer
        if isinstance(self._closeResult, Failure):
            return fail(self._closeResult)
        return succeed(None)

    # writes

    def _write(
        self,
        desc: str,
        func: Callable[[Transaction], _R],
        atomic: bool = False,
        seqs: Sequence[int] | None = None,
        message: NewMessage | None = None,
    ) -> Deferred[_R]:
        """
        Queue a write for the next group commit.
        """
        if not self._opened or self._closed:
            return fail(StoreClosedError(f"{desc}: the store is not open"))
        d: Deferred[_R] = Deferred()
        self._queue.append(_Write(desc, func, d, atomic, seqs, message))
        if seqs is None:
            self._urgent += 1
        self._flush()
        return d

    def _flush(self) -> None:
        """
        Start a transaction with the queued writes, unless one is in flight.
        """
        if self._inFlight:
            return
        if not self._queue:
            waiters, self._drainWaiters = self._drainWaiters, []
            for waiter in waiters:
                waiter.callback(None)
            return
        if not self._urgent and not self._marksDue and not self._closed:
            # Only delivered marks: nothing waits on them (a crash before
            # they commit repeats a delivery, it never loses one), so they
            # ride along with the next write instead of costing a
            # transaction each; at the latest after lazyDelay.
            if self._lazyCall is None:
                self._lazyCall = self.database.clock.callLater(self.lazyDelay, self._lazyFlush)
            return
        clock = self.database.clock
        now = clock.seconds()
        wait = self._lastCommitStart + self.commitInterval - now
        if wait > 0:
            if self._intervalCall is None:
                self._intervalCall = clock.callLater(wait, self._intervalFlush)
            return
        self._lastCommitStart = now
        self._marksDue = False
        if self._lazyCall is not None:
            self._lazyCall.cancel()
            self._lazyCall = None
        batch = self._queue[: self.maxBatch]
        del self._queue[: self.maxBatch]
        self._urgent -= sum(1 for write in batch if write.seqs is None)
        self._inFlight = True
        try:
            d = self.database.runInteraction(
                "writeBatch", _writeBatch_txn, batch
            )
        except Exception:
            d = fail()
        d.addCallbacks(
            self._batchCommitted,
            self._batchFailed,
            callbackArgs=(batch,),
            errbackArgs=(batch,),
        )

    def _intervalFlush(self) -> None:
        self._intervalCall = None
        self._flush()

    def _lazyFlush(self) -> None:
        self._lazyCall = None
        self._marksDue = True  # let the waiting marks go now
        self._flush()

    def _batchCommitted(
        self, results: list[tuple[bool, Any]], batch: list[_Write]
    ) -> None:
        """
        Fire the writes of a committed batch, then start the next one.
        """
        for write, (ok, result) in zip(batch, results):
            if ok:
                write.deferred.callback(result)
            else:
                write.deferred.errback(result)
        self._inFlight = False
        self._flush()

    def _batchFailed(self, failure: Failure, batch: list[_Write]) -> None:
        """
        Fail every write of a batch whose transaction failed, then start the
        next one.
        """
        self.log.failure(
            "Write transaction of {count} writes failed",
            failure=failure,
            count=len(batch),
        )
        for write in batch:
            write.deferred.errback(failure)
        self._inFlight = False
        self._flush()

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

    def markRead(
        self,
        readerId: str,
        now: int,
        friendId: str | None = None,
        upToSeq: int | None = None,
        messageIds: Sequence[str] | None = None,
    ) -> Deferred[list[StoredMessage]]:
        """
        See L{IMessageStore.markRead}.
        """
        if (friendId is None or upToSeq is None) and messageIds is None:
            return fail(
                ValueError("markRead needs friendId and upToSeq, or messageIds")
            )
        ids = None if messageIds is None else list(messageIds)
        return self._write(
            "markRead",
            lambda txn: markRead_txn(txn, readerId, now, friendId, upToSeq, ids),
        )

    def recordFile(self, record: FileRecord) -> Deferred[None]:
        """
        See L{IFileMetadata.recordFile}.
        """
        return self._write("recordFile", lambda txn: recordFile_txn(txn, record))

    # reads

    def _read(self, desc: str, func: Callable[[Transaction], _R]) -> Deferred[_R]:
        """
        Run a read transaction now.
        """
        if not self._opened:
            return fail(StoreClosedError(f"{desc}: the store is not open"))
        try:
            return self.database.runInteraction(desc, func)
        except Exception:
            return fail()

    def pendingFor(self, userId: str, limit: int) -> Deferred[list[StoredMessage]]:
        """
        See L{IMessageStore.pendingFor}.
        """
        return self._read("pendingFor", lambda txn: pendingFor_txn(txn, userId, limit))

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
        return self._read("findSharedMessages", lambda txn: findReceived_txn(txn, "", messageId))

    def findReceived(self, toId: str, messageId: str) -> Deferred[list[StoredMessage]]:
        """
        See L{IMessageStore.findReceived}.
        """
        return self._read("findReceived", lambda txn: findReceived_txn(txn, toId, messageId))

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
