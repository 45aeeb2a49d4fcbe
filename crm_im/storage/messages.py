# -*- test-case-name: tests.test_storage -*-
"""
Where a message is stored: the message table's SQL, as C{*_txn} functions
run on the pool thread. One row per message whatever the conversation
(1:1, group, room). The 1:1 offline queue is a flag on the row (its
partial index holds only what is still undelivered, so it stays small);
read state, of 1:1 conversations as of groups and rooms, is a read cursor
per reader and conversation (L{crm_im.storage.cursors}).

L{writeBatch_txn} is how one group commit (L{crm_im.storage.commit}) runs
its writes: the messages of the batch in a few multi-row statements, the
delivered marks merged, every other write in its own savepoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import attrs
import orjson

from ..crypto.records import DecryptionError, RecordCipher, UnknownKeyError, fieldAAD, identityAAD
from .database import Transaction, attempt_txn, binaryChunks, chunks, paddedChunks, placeholders
from .interface import (
    GROUP_PREFIX,
    ROOM_PREFIX,
    HistoryPage,
    NewMessage,
    StoredMessage,
    StoreOutcome,
    boundedMessages,
    directConversation,
)

from .cursors import lastSeq_txn, readSeq_txn, setReadSeq_txn
from .outbox import enqueueStored_txn

if TYPE_CHECKING:
    from .commit import Write


_MESSAGE_COLUMNS = (
    "seq, message_id, from_id, from_name, to_id, topic, type, content,"
    " file_url, file_name, client_timestamp, server_timestamp, delivered,"
    " conversation, system, recalled_by, file_id, file_size, mime_type,"
    " ciphertext, algorithm, mentions, key_id"
)

#: The type of end-to-end encrypted messages: already ciphertext, stored as
#: they are even with encryption at rest.
E2E_TYPE = "encrypted"


#: The associated data of each sealed column, before the row's identity.
_CONTENT, _FILE_URL, _FILE_NAME, _SYSTEM = (
    fieldAAD("messages", column) for column in ("content", "file_url", "file_name", "system")
)


def _aad(column: str, fromId: str, messageId: str) -> bytes:
    """
    The associated data of a message's column sealed at rest: its
    C{(fromId, id)}, which no other row has and which neither the copy tool
    nor a rekey changes (its seq and conversation key may: schema 008
    rewrote conversation keys).
    """
    return fieldAAD("messages", column, fromId, messageId)


def _openRow(row: Sequence[Any], cipher: RecordCipher | None) -> tuple[Any, Any, Any, Any]:
    """
    The content, file URL (it may end with the file's name), file name and
    system text of a row sealed at rest (its key id is the last column), in
    clear.

    @raise DecryptionError: without the key, or for an altered or moved
        ciphertext.
    """
    keyId = row[-1]
    if cipher is None:
        raise UnknownKeyError(
            f"message {row[1]!r} is encrypted at rest (key {keyId!r}) and no --encryption-keys file was given"
        )
    identity = identityAAD(row[2], row[1])
    content, fileUrl, fileName, system = row[7], row[8], row[9], row[14]
    # '' is a recalled message's content, never a sealed one
    if content:
        content = cipher.open(keyId, content, _CONTENT + identity)
    if fileUrl is not None:
        fileUrl = cipher.open(keyId, fileUrl, _FILE_URL + identity)
    if fileName is not None:
        fileName = cipher.open(keyId, fileName, _FILE_NAME + identity)
    if system is not None:
        system = cipher.open(keyId, system, _SYSTEM + identity)
    return content, fileUrl, fileName, system


def _messageFromRow(row: Sequence[Any], cipher: RecordCipher | None = None) -> StoredMessage:
    """
    A L{StoredMessage} from a row of C{_MESSAGE_COLUMNS}, decrypted with
    C{cipher} (the transaction's, C{txn.cipher}) if sealed at rest.
    """
    if row[-1] is None:
        content, fileUrl, fileName, system = row[7], row[8], row[9], row[14]
    else:
        content, fileUrl, fileName, system = _openRow(row, cipher)
    toId = row[4]
    groupId = roomId = None
    if not toId:
        toId = None
        conversation: str = row[13]
        if conversation.startswith(GROUP_PREFIX):
            groupId = conversation[len(GROUP_PREFIX) :]
        else:
            roomId = conversation[len(ROOM_PREFIX) :]
    ciphertext = row[19]
    return StoredMessage(
        seq=row[0],
        id=row[1],
        fromId=row[2],
        fromName=row[3],
        toId=toId,
        topic=row[5],
        type=row[6],
        content=content,
        fileUrl=fileUrl,
        fileName=fileName,
        clientTimestamp=row[10],
        serverTimestamp=row[11],
        delivered=bool(row[12]),
        groupId=groupId,
        roomId=roomId,
        system=None if system is None else orjson.loads(system),
        recalledBy=row[15],
        fileId=row[16],
        fileSize=row[17],
        mimeType=row[18],
        ciphertext=None if ciphertext is None else orjson.loads(ciphertext),
        algorithm=row[20],
        mentions=() if row[21] is None else tuple(orjson.loads(row[21])),
    )


_INSERT_COLUMNS = (
    "INSERT INTO messages (message_id, from_id, from_name, to_id,"
    " conversation, topic, type, content, file_url, file_name,"
    " client_timestamp, server_timestamp, delivered, system,"
    " file_id, file_size, mime_type, ciphertext, algorithm, mentions, key_id) VALUES "
)
_ROW = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_ON_CONFLICT_RETURNING = " ON CONFLICT (from_id, message_id) DO NOTHING RETURNING seq"

#: Rows per multi-row INSERT (21 parameters each; SQLite allows 32766), a
#: power of two (L{paddedChunks}).
INSERT_CHUNK = 256


def _insertRow(msg: NewMessage, cipher: RecordCipher | None = None) -> tuple[Any, ...]:
    # Group and room messages are stored delivered: they never enter the
    # 1:1 offline queue (see 004_conversations).
    shared = msg.toId is None
    system = None if msg.system is None else orjson.dumps(msg.system).decode()
    content = msg.content
    fileUrl = msg.fileUrl
    fileName = msg.fileName
    keyId = None
    if cipher is not None and msg.type != E2E_TYPE:
        # Sealed at rest here, on the pool thread: the reactor pays nothing.
        keyId = cipher.currentId
        identity = identityAAD(msg.fromId, msg.id)
        content = cipher.seal(content, _CONTENT + identity)
        if fileUrl is not None:
            fileUrl = cipher.seal(fileUrl, _FILE_URL + identity)
        if fileName is not None:
            fileName = cipher.seal(fileName, _FILE_NAME + identity)
        if system is not None:
            system = cipher.seal(system, _SYSTEM + identity)
    return (
        msg.id,
        msg.fromId,
        msg.fromName,
        "" if shared else msg.toId,
        msg.conversation,
        msg.topic,
        msg.type,
        content,
        fileUrl,
        fileName,
        msg.clientTimestamp,
        msg.serverTimestamp,
        1 if shared else 0,
        system,
        msg.fileId,
        msg.fileSize,
        msg.mimeType,
        # an encrypted message's ciphertext as JSON text, untouched
        None if msg.ciphertext is None else orjson.dumps(msg.ciphertext).decode(),
        msg.algorithm,
        orjson.dumps(msg.mentions).decode() if msg.mentions else None,
        keyId,
    )


_newStored = StoredMessage.fromNew


def storeMessage_txn(txn: Transaction, msg: NewMessage) -> StoreOutcome:
    """
    Insert C{msg} unless its C{(fromId, id)} exists (then return the
    stored one).

    One statement in the common case: a single statement is atomic in
    SQLite and PostgreSQL, so this write needs no savepoint of its own.
    """
    previous = _lastOfConversations_txn(txn, [msg.conversation]) if txn.engine.linksMessages else None
    txn.execute(_INSERT_COLUMNS + _ROW + _ON_CONFLICT_RETURNING, _insertRow(msg, txn.cipher))
    row = txn.fetchone()
    if row is None:
        (existing,) = _findMessages_txn(txn, [(msg.fromId, msg.id)])
        assert existing is not None
        return StoreOutcome(message=existing, created=False)
    stored = _newStored(msg, row[0])
    if previous is not None:
        prevSeq, prevAt = previous.get(msg.conversation, (0, 0))
        stored = attrs.evolve(stored, prevSeq=prevSeq, prevAt=prevAt)
    return StoreOutcome(message=stored, created=True)


def _lastOfConversations_txn(txn: Transaction, conversations: Sequence[str]) -> dict[str, tuple[int, int]]:
    """
    The seq and server time of the last message of each of
    C{conversations} that has one (the predecessor of the next, see
    L{BaseEngine.linksMessages}): one index probe per conversation.
    """
    last: dict[str, tuple[int, int]] = {}
    for chunk in paddedChunks(list(conversations), INSERT_CHUNK):
        txn.execute(
            f"WITH k(c) AS (VALUES {', '.join(['(?)'] * len(chunk))})"
            " SELECT conversation, seq, server_timestamp FROM messages"
            " WHERE seq IN (SELECT (SELECT max(seq) FROM messages WHERE conversation = k.c) FROM k)",
            chunk,
        )
        for conversation, seq, at in txn.fetchall():
            last[conversation] = (int(seq), int(at))
    return last


def _link(results: list[tuple[bool, Any]], indexes: Sequence[int], previous: dict[str, tuple[int, int]]) -> None:
    """
    Give each message just stored at C{indexes} its predecessor in its
    conversation: the last one before the batch, then each other.
    """
    created = [
        (results[index][1].message.seq, index)
        for index in indexes
        if results[index][0] and results[index][1].created
    ]
    created.sort()
    for _, index in created:
        outcome = results[index][1]
        message = outcome.message
        conversation = message.conversation
        prevSeq, prevAt = previous.get(conversation, (0, 0))
        results[index] = (True, StoreOutcome(attrs.evolve(message, prevSeq=prevSeq, prevAt=prevAt), created=True))
        previous[conversation] = (message.seq, message.serverTimestamp)


def storeMessages_txn(txn: Transaction, msgs: Sequence[NewMessage]) -> list[tuple[bool, Any]]:
    """
    Insert many messages with a handful of statements, whatever their
    number: multi-row C{INSERT}s of them all; only if that fails (a resend
    among them: its C{(fromId, id)} is stored already), one look-up of the
    keys that exist, then multi-row C{INSERT}s of the others.

    Why: the pool thread releases and re-takes the GIL around every
    statement step, and under load each re-take waits for the reactor
    thread to let go of it; a statement per message made the database
    thread crawl exactly when the batches grew. Resends are rare (a client
    retrying after a reconnect), so a batch is first inserted as if it had
    none: a batch of one message costs one statement, not two (the
    look-up of keys that are not there was ~17 of the ~260 µs of CPU a
    lone message's transaction took, bench/README.md finding 25); a batch
    with a resend pays for a failed attempt instead. Not C{ON CONFLICT DO
    NOTHING RETURNING}: measured with
    C{bench/store.py}, it costs SQLite more than the look-up it saves. The
    seqs of the new rows come back with C{RETURNING} (PostgreSQL) or from
    the last row id (SQLite: consecutive rows of one C{INSERT} get
    consecutive seqs, one connection writing and C{AUTOINCREMENT}
    allocating in order; the row count is checked). A failing multi-row
    C{INSERT} (a resend, or a row the database refuses) is undone, with the
    rest of its attempt (L{_insertAll_txn}), and a refused row's messages
    are then stored one statement each, so that the bad one fails alone.

    @return: per message, C{(True, StoreOutcome)} or C{(False, Failure)}.
    """
    results: list[tuple[bool, Any]] = [(True, None)] * len(msgs)
    candidates: list[int] = []
    firstOf: dict[tuple[str, str], int] = {}
    repeats: list[tuple[int, int]] = []
    for index, msg in enumerate(msgs):
        key = (msg.fromId, msg.id)
        if key in firstOf:
            repeats.append((index, firstOf[key]))
        else:
            firstOf[key] = index
            candidates.append(index)
    previous = None
    if candidates and txn.engine.linksMessages:
        previous = _lastOfConversations_txn(txn, list({msgs[index].conversation for index in candidates}))
    if not _insertAll_txn(txn, msgs, candidates, results):
        existing = _findMessages_txn(txn, [(msgs[index].fromId, msgs[index].id) for index in candidates])
        fresh: list[int] = []
        for index, found in zip(candidates, existing):
            if found is None:
                fresh.append(index)
            else:
                results[index] = (True, StoreOutcome(message=found, created=False))
        for chunk in chunks(fresh, INSERT_CHUNK):
            if not _insertAll_txn(txn, msgs, chunk, results):
                # One bad row must not fail the others: one statement each.
                for index in chunk:
                    msg = msgs[index]
                    results[index] = attempt_txn(txn, lambda txn: storeMessage_txn(txn, msg), False)
    if previous is not None:
        _link(results, candidates, previous)
    for index, original in repeats:
        ok, outcome = results[original]
        results[index] = (True, StoreOutcome(message=outcome.message, created=False)) if ok else (ok, outcome)
    return results


def _insertAll_txn(
    txn: Transaction, msgs: Sequence[NewMessage], indexes: Sequence[int], results: list[tuple[bool, Any]]
) -> bool:
    """
    Insert the messages of C{msgs} at C{indexes} (none of them stored
    yet, as far as the caller knows) and set their C{results}; or, if any
    of them fails, none of them.

    @return: whether they were inserted.
    """
    if not indexes:
        return True
    parts = list(binaryChunks([msgs[index] for index in indexes], INSERT_CHUNK))
    # More than one statement needs a savepoint to be undone as a whole
    # (SQLite undoes a failed statement alone).
    ok, made = attempt_txn(txn, lambda txn: _insertRows_txn(txn, parts), len(parts) > 1)
    if not ok:
        return False
    assert isinstance(made, list)
    for seq, index in zip(made, indexes):
        results[index] = (True, StoreOutcome(message=_newStored(msgs[index], seq), created=True))
    return True


def _findMessages_txn(txn: Transaction, keys: Sequence[tuple[str, str]]) -> list[StoredMessage | None]:
    """
    The stored messages with these C{(fromId, id)} keys, in their order
    (L{None} for a key not stored).
    """
    found: dict[tuple[str, str], StoredMessage] = {}
    for keyChunk in paddedChunks(list(keys), INSERT_CHUNK):
        txn.execute(
            f"WITH k(f, m) AS (VALUES {', '.join(['(?, ?)'] * len(keyChunk))})"
            f" SELECT {', '.join('messages.' + c.strip() for c in _MESSAGE_COLUMNS.split(','))}"
            " FROM k JOIN messages ON messages.from_id = k.f AND messages.message_id = k.m",
            [value for key in keyChunk for value in key],
        )
        for row in txn.fetchall():
            stored = _messageFromRow(row, txn.cipher)
            found[(stored.fromId, stored.id)] = stored
    return [found.get(key) for key in keys]


def _insertRows_txn(txn: Transaction, parts: Sequence[Sequence[NewMessage]]) -> list[int]:
    """
    Insert messages none of which is stored yet, a statement per part (of
    L{binaryChunks}).

    @return: their seqs, in order.
    @raise RuntimeError: if the database did not insert them all.
    """
    seqs: list[int] = []
    cipher = txn.cipher
    for part in parts:
        sql = _INSERT_COLUMNS + ", ".join([_ROW] * len(part))
        args = [value for msg in part for value in _insertRow(msg, cipher)]
        if txn.engine.returningKeys:
            # Other transactions draw from the sequence too (other nodes'):
            # ask for the keys rather than deduce them.
            txn.execute(sql + " RETURNING seq, from_id, message_id", args)
            made = {(row[1], row[2]): int(row[0]) for row in txn.fetchall()}
            if len(made) != len(part):
                raise RuntimeError("multi-row insert made an unexpected number of rows")
            seqs.extend(made[(msg.fromId, msg.id)] for msg in part)
            continue
        txn.execute(sql, args)
        if txn.rowcount != len(part):
            raise RuntimeError("multi-row insert changed an unexpected number of rows")
        # One connection writes and AUTOINCREMENT allocates in order.
        last = txn.lastInsertedId()
        seqs.extend(range(last - len(part) + 1, last + 1))
    return seqs


def markDelivered_txn(txn: Transaction, seqs: Sequence[int]) -> None:
    """
    Mark the messages with these seqs delivered.
    """
    for chunk in paddedChunks(sorted(set(seqs))):
        txn.execute(
            "UPDATE messages SET delivered = 1"
            f" WHERE delivered = 0 AND seq IN ({placeholders(len(chunk))})",
            chunk,
        )


def requeue_txn(txn: Transaction, userId: str, seqs: Sequence[int]) -> None:
    """
    See L{IMessageStore.requeue}.
    """
    for chunk in paddedChunks(sorted(set(seqs))):
        txn.execute(
            "UPDATE messages SET delivered = 0"
            f" WHERE to_id = ? AND delivered = 1 AND seq IN ({placeholders(len(chunk))})",
            (userId, *chunk),
        )


#: At most this many messages are newly read by one C{message:read}: the
#: cursor stops at the last of them, and the client reads on from there.
MAX_READ_MESSAGES = 1000


def markRead_txn(
    txn: Transaction,
    readerId: str,
    friendId: str,
    upToSeq: int | None,
    messageIds: Sequence[str] | None,
) -> list[StoredMessage]:
    """
    Move C{readerId}'s read cursor in the conversation with C{friendId} to
    C{upToSeq}, or to the latest of the messages from C{friendId} whose id
    is in C{messageIds}, and mark what it newly covers delivered too.

    A cursor, not a flag per message: reading a message reads every earlier
    one of the conversation, as in Slack or Matrix, and storing a message
    costs no unread-index page (schema 012).

    @return: the messages to C{readerId} newly covered, seq ascending (at
        most L{MAX_READ_MESSAGES}), so that their senders can be told.
    """
    conversation = directConversation(readerId, friendId)
    if messageIds is not None:
        seqs: list[int] = []
        for chunk in paddedChunks(sorted(set(messageIds))):
            txn.execute(
                "SELECT seq FROM messages"
                f" WHERE from_id = ? AND message_id IN ({placeholders(len(chunk))}) AND to_id = ?",
                (friendId, *chunk, readerId),
            )
            seqs.extend(int(row[0]) for row in txn.fetchall())
        if not seqs:
            return []
        upToSeq = max(seqs)
    elif upToSeq is None:
        raise ValueError("markRead needs upToSeq or messageIds")
    current = readSeq_txn(txn, conversation, readerId)
    if upToSeq <= current:
        return []
    txn.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages"
        " WHERE conversation = ? AND seq > ? AND seq <= ? AND to_id = ?"
        " ORDER BY seq LIMIT ?",
        (conversation, current, upToSeq, readerId, MAX_READ_MESSAGES + 1),
    )
    found = [_messageFromRow(row, txn.cipher) for row in txn.fetchall()]
    if len(found) > MAX_READ_MESSAGES:
        del found[MAX_READ_MESSAGES:]
        target = found[-1].seq
    else:
        target = min(upToSeq, lastSeq_txn(txn, conversation))
    if target > current:
        setReadSeq_txn(txn, conversation, readerId, target)
    markDelivered_txn(txn, [message.seq for message in found if not message.delivered])
    return [message if message.delivered else attrs.evolve(message, delivered=True) for message in found]


#: Rows per query of a byte-bounded read (L{boundedMessages_txn}): what
#: a driver that holds a whole result in memory (psycopg does) holds at
#: once, and what such a read fetches past its bound at most.
READ_PAGE = 32


def boundedMessages_txn(
    txn: Transaction, query: Callable[[int, int], object], after: int, limit: int, maxBytes: int | None
) -> list[StoredMessage]:
    """
    Messages in seq order, as L{boundedMessages} takes them: at most
    C{limit}, and with C{maxBytes} read L{READ_PAGE} at a time, each page
    only if the bound is not passed yet.

    @param query: executes the read of C{_MESSAGE_COLUMNS} ordered by seq,
        given the seq to read above and how many rows.
    @param after: the seq to read above first.
    """
    cipher = getattr(txn, "cipher", None)

    def pages() -> Iterator[StoredMessage]:
        above = after
        left = max(limit, 0)
        page = left if maxBytes is None else READ_PAGE
        while left > 0:
            count = min(page, left)
            query(above, count)
            rows = txn.fetchall()
            for row in rows:
                yield _messageFromRow(row, cipher)
            if len(rows) < count:
                return
            left -= count
            above = int(rows[-1][0])

    return boundedMessages(pages(), limit, maxBytes)


def pendingFor_txn(
    txn: Transaction, userId: str, limit: int, maxBytes: int | None = None, after: int = 0
) -> list[StoredMessage]:
    """
    The undelivered messages to C{userId}, seq ascending; see
    L{IMessageStore.pendingFor}.
    """
    sql = f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE to_id = ? AND delivered = 0 AND seq > ? ORDER BY seq LIMIT ?"
    return boundedMessages_txn(
        txn, lambda above, count: txn.execute(sql, (userId, above, count)), after, limit, maxBytes
    )


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
    messages = [_messageFromRow(row, txn.cipher) for row in txn.fetchall()]
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
    return None if row is None else _messageFromRow(row, txn.cipher)


def findShared_txn(txn: Transaction, messageId: str) -> list[StoredMessage]:
    """
    The group and room messages with id C{messageId}.
    """
    txn.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE to_id = '' AND message_id = ? ORDER BY seq LIMIT 100",
        (messageId,),
    )
    return [_messageFromRow(row, txn.cipher) for row in txn.fetchall()]


def recall_txn(txn: Transaction, seq: int, by: str, now: int) -> StoredMessage | None:
    """
    Erase the content (and file, or ciphertext) of message C{seq},
    keeping its place.
    """
    txn.execute(
        "UPDATE messages SET content = '', file_url = NULL, file_name = NULL, ciphertext = NULL,"
        " file_id = NULL, file_size = NULL, mime_type = NULL, mentions = NULL,"
        " recalled_by = ?, recalled_at = ? WHERE seq = ? AND recalled_by IS NULL",
        (by, now, seq),
    )
    if txn.rowcount != 1:
        return None
    txn.execute(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE seq = ?", (seq,))
    row = txn.fetchone()
    return None if row is None else _messageFromRow(row, txn.cipher)


def opensSealedSample_txn(txn: Transaction, keyId: str, cipher: RecordCipher) -> bool | None:
    """
    Does C{cipher} open a message sealed at rest under C{keyId}? L{None}
    if no message is (the key sealed only files, or a rekey moved them).
    Run once per key recorded without a check value (schema 014), so a
    scan of C{messages} (no index on C{key_id}) is paid once.
    """
    # (a recalled message's content is '', sealed by nothing)
    txn.execute(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE key_id = ? AND content <> '' LIMIT 1", (keyId,))
    row = txn.fetchone()
    if row is None:
        return None
    try:
        _openRow(row, cipher)
    except DecryptionError:
        return False
    return True


def ping_txn(txn: Transaction) -> None:
    """
    A query that touches the schema.
    """
    txn.execute("SELECT version FROM schema_version LIMIT 1")
    txn.fetchall()


def writeBatch_txn(txn: Transaction, batch: Sequence["Write"]) -> list[tuple[bool, Any]]:
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
        notify: list[tuple[StoredMessage, Sequence[str]]] = []
        for (index, msg), result in zip(messages, stored):
            results[index] = result
            if msg.notify and result[0] and result[1].created:
                notify.append((result[1].message, msg.notify))
        if notify:
            # Push notifications: durable with their messages (PUSH.md).
            enqueueStored_txn(txn, notify)
    for index, write in enumerate(batch):
        if write.message is not None:
            continue
        if write.seqs is not None:
            continue
        results[index] = attempt_txn(txn, write.func, savepoint=not write.atomic)
    if delivered:
        markDelivered_txn(txn, delivered)
    return results
