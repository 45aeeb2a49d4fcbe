# -*- test-case-name: tests.test_recovery_storage -*-
"""
The records of connection state recovery (issue 17) in the store: one row
per private session id (C{pid}) of a logged-in socket, so that a client
that reconnects within the window to a restarted node, or to another node
sharing the database, gets its identity back without a login, and the
query of the messages it missed meanwhile.

Rows live in C{recovery_sessions} (schema 011): written at login with no
expiry (the socket is connected), given one when the socket goes away for
a reason worth recovering from, deleted at logout, at a deliberate
disconnect (kick, ban, abuse, expired token), once used, and once expired.
C{*_txn} functions run on the pool thread; L{SQLRecoveryStore} runs them
through the message store's group commit; L{MemoryRecoveryStore} is the
fake beside a L{crm_im.storage.memory.MemoryMessageStore}. Portable SQL
(SQLite and PostgreSQL).
"""

from __future__ import annotations

from typing import Any, Iterator, Sequence

import attrs
import orjson
from twisted.internet.defer import Deferred, succeed
from zope.interface import Interface, implementer

from .database import Transaction, placeholders
from .interface import GROUP_PREFIX, ROOM_PREFIX, StoredMessage, boundedMessages, roomConversation
from .messages import _MESSAGE_COLUMNS, boundedMessages_txn
from .section import StoreSection


#: The most chat rooms kept in one record (a socket may be in
#: C{--max-rooms-per-user}; more is not remembered).
MAX_ROOMS = 1000


@attrs.frozen
class RecoveryRecord:
    """
    What a socket needs to come back.

    @ivar pid: its private session id (the key; only its client knows it).
    @ivar sid: its Socket.IO id, which it gets back.
    @ivar userId: the user it was logged in as; with C{name} and
        C{avatar}, its identity.
    @ivar rooms: the chat rooms it was in.
    @ivar lastSeq: the highest message seq when it logged in: group and
        room messages up to it were history to it, not missed.
    @ivar expiresAt: ms since the epoch after which it may not come back;
        L{None} while it is connected (not recoverable yet).
    @ivar node: the cluster node its socket is connected to (C{--node-id});
        C{""} on a single node.
    """

    pid: str
    sid: str
    userId: str
    name: str
    avatar: str | None
    rooms: tuple[str, ...]
    lastSeq: int
    expiresAt: int | None = None
    node: str = ""


class IRecoveryStore(Interface):
    """
    Recovery records and the missed-message query. Every method returns a
    L{Deferred}; writes are applied in the order they were called.
    """

    def keepRecovery(record: RecoveryRecord) -> Deferred[RecoveryRecord]:
        """
        Write C{record} (replacing the one of its pid). With
        C{lastSeq < 0}, its C{lastSeq} is the highest seq stored now.

        @return: the record as written.
        """

    def recoveryRecord(pid: str, now: int) -> Deferred[RecoveryRecord | None]:
        """
        The record of C{pid} if it may come back at C{now} (it has an
        expiry, not passed), else L{None}.
        """

    def dropRecovery(pid: str) -> Deferred[None]:
        """
        Forget C{pid}.
        """

    def dropRecoveriesOf(userId: str) -> Deferred[int]:
        """
        Forget every record of C{userId} (a kick or a ban ends its
        sessions for good). @return: how many.
        """

    def expireRecoveries(now: int, orphansUntil: int | None = None, node: str = "") -> Deferred[int]:
        """
        Delete the records expired at C{now}; with C{orphansUntil}, give
        the records of C{node} (and those written with no node) with no
        expiry (sockets that were connected when their node stopped
        without telling) that one; those of the other nodes' sockets are
        connected. @return: how many deleted.
        """

    def missedMessages(
        userId: str,
        rooms: Sequence[str],
        after: int,
        since: int,
        limit: int,
        maxBytes: int | None = None,
        ownAfter: int | None = None,
    ) -> Deferred[list[StoredMessage]]:
        """
        The messages with a seq above C{after}, seq ascending, at most
        C{limit}: the 1:1 messages to C{userId}, and the messages of its
        groups and of C{rooms} above C{since} too; of those C{userId}
        sent, only the ones stored after C{ownAfter} (ms since the epoch:
        when the socket went away, so they came from the user's other
        devices; none if L{None}). With C{maxBytes}, bounded in bytes as
        L{IMessageStore.pendingFor} is.
        """


def _row(record: RecoveryRecord) -> tuple[Any, ...]:
    return (
        record.pid,
        record.sid,
        record.userId,
        record.name,
        record.avatar,
        orjson.dumps(list(record.rooms[:MAX_ROOMS])).decode(),
        record.lastSeq,
        record.expiresAt,
        record.node,
    )


def _record(row: Sequence[Any]) -> RecoveryRecord:
    rooms = orjson.loads(row[5])
    return RecoveryRecord(
        pid=row[0],
        sid=row[1],
        userId=row[2],
        name=row[3],
        avatar=row[4],
        rooms=tuple(r for r in rooms if isinstance(r, str)) if isinstance(rooms, list) else (),
        lastSeq=int(row[6]),
        expiresAt=None if row[7] is None else int(row[7]),
        node=row[8],
    )


_COLUMNS = "pid, sid, user_id, user_name, avatar, rooms, last_seq, expires_at, node"


def keepRecovery_txn(txn: Transaction, record: RecoveryRecord) -> RecoveryRecord:
    """
    See L{IRecoveryStore.keepRecovery}.
    """
    if record.lastSeq < 0:
        txn.execute("SELECT COALESCE(MAX(seq), 0) FROM messages")
        row = txn.fetchone()
        record = attrs.evolve(record, lastSeq=int(row[0]) if row is not None else 0)
    txn.execute(
        f"INSERT INTO recovery_sessions ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (pid) DO UPDATE SET sid = excluded.sid, user_id = excluded.user_id,"
        " user_name = excluded.user_name, avatar = excluded.avatar, rooms = excluded.rooms,"
        " last_seq = excluded.last_seq, expires_at = excluded.expires_at, node = excluded.node",
        _row(record),
    )
    return record


def recoveryRecord_txn(txn: Transaction, pid: str, now: int) -> RecoveryRecord | None:
    """
    See L{IRecoveryStore.recoveryRecord}.
    """
    txn.execute(
        f"SELECT {_COLUMNS} FROM recovery_sessions WHERE pid = ? AND expires_at IS NOT NULL AND expires_at > ?",
        (pid, now),
    )
    row = txn.fetchone()
    return None if row is None else _record(row)


def dropRecovery_txn(txn: Transaction, pid: str) -> None:
    """
    See L{IRecoveryStore.dropRecovery}.
    """
    txn.execute("DELETE FROM recovery_sessions WHERE pid = ?", (pid,))


def dropRecoveriesOf_txn(txn: Transaction, userId: str) -> int:
    """
    See L{IRecoveryStore.dropRecoveriesOf}.
    """
    txn.execute("DELETE FROM recovery_sessions WHERE user_id = ?", (userId,))
    return max(0, txn.rowcount)


def expireRecoveries_txn(txn: Transaction, now: int, orphansUntil: int | None, node: str = "") -> int:
    """
    See L{IRecoveryStore.expireRecoveries}.
    """
    txn.execute("DELETE FROM recovery_sessions WHERE expires_at <= ?", (now,))
    deleted = max(0, txn.rowcount)
    if orphansUntil is not None:
        txn.execute(
            "UPDATE recovery_sessions SET expires_at = ? WHERE expires_at IS NULL AND node IN ('', ?)",
            (orphansUntil, node),
        )
    return deleted


def missedMessages_txn(
    txn: Transaction,
    userId: str,
    rooms: Sequence[str],
    after: int,
    since: int,
    limit: int,
    maxBytes: int | None = None,
    ownAfter: int | None = None,
) -> list[StoredMessage]:
    """
    See L{IRecoveryStore.missedMessages}: a range of the primary key (the
    seq) above C{after}, which is recent (within the recovery window).
    """
    roomKeys = [roomConversation(r) for r in rooms[:MAX_ROOMS]]
    shared = (
        "conversation IN (SELECT ? || m.group_id FROM group_members m JOIN groups g ON g.group_id = m.group_id"
        " WHERE m.user_id = ? AND m.left_at IS NULL AND g.dissolved_at IS NULL)"
    )
    sharedArgs: list[Any] = [GROUP_PREFIX, userId]
    if roomKeys:
        shared = f"({shared} OR conversation IN ({placeholders(len(roomKeys))}))"
        sharedArgs.extend(roomKeys)
    args: list[Any] = [userId, userId, since, *sharedArgs]
    ownSent = ""
    if ownAfter is not None:
        # What the user sent from another device while this socket was
        # away: its 1:1 messages (to anyone) and those of its shared
        # conversations. (Sent before, they went to this socket live; this
        # socket's own sends never come back to it.)
        ownSent = f" OR (from_id = ? AND server_timestamp > ? AND (to_id <> '' OR (seq > ? AND {shared})))"
        args.extend([userId, ownAfter, since, *sharedArgs])
    sql = (
        f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE seq > ?"
        f" AND ((from_id <> ? AND (to_id = ? OR (seq > ? AND {shared}))){ownSent}) ORDER BY seq LIMIT ?"
    )
    return boundedMessages_txn(txn, lambda above, count: txn.execute(sql, (above, *args, count)), after, limit, maxBytes)


@implementer(IRecoveryStore)
class SQLRecoveryStore(StoreSection):
    """
    L{IRecoveryStore} on a SQL message store: reads on its pool, writes in
    its group commit.
    """

    def keepRecovery(self, record: RecoveryRecord) -> Deferred[RecoveryRecord]:
        """
        See L{IRecoveryStore.keepRecovery}.
        """
        return self._writeTxn("keepRecovery", lambda txn: keepRecovery_txn(txn, record))

    def recoveryRecord(self, pid: str, now: int) -> Deferred[RecoveryRecord | None]:
        """
        See L{IRecoveryStore.recoveryRecord}.
        """
        return self._readTxn("recoveryRecord", lambda txn: recoveryRecord_txn(txn, pid, now))

    def dropRecovery(self, pid: str) -> Deferred[None]:
        """
        See L{IRecoveryStore.dropRecovery}.
        """
        return self._writeTxn("dropRecovery", lambda txn: dropRecovery_txn(txn, pid))

    def dropRecoveriesOf(self, userId: str) -> Deferred[int]:
        """
        See L{IRecoveryStore.dropRecoveriesOf}.
        """
        return self._writeTxn("dropRecoveriesOf", lambda txn: dropRecoveriesOf_txn(txn, userId))

    def expireRecoveries(self, now: int, orphansUntil: int | None = None, node: str = "") -> Deferred[int]:
        """
        See L{IRecoveryStore.expireRecoveries}.
        """
        return self._writeTxn("expireRecoveries", lambda txn: expireRecoveries_txn(txn, now, orphansUntil, node))

    def missedMessages(
        self,
        userId: str,
        rooms: Sequence[str],
        after: int,
        since: int,
        limit: int,
        maxBytes: int | None = None,
        ownAfter: int | None = None,
    ) -> Deferred[list[StoredMessage]]:
        """
        See L{IRecoveryStore.missedMessages}.
        """
        return self._readTxn(
            "missedMessages",
            lambda txn: missedMessages_txn(txn, userId, list(rooms), after, since, limit, maxBytes, ownAfter),
        )


@implementer(IRecoveryStore)
class MemoryRecoveryStore:
    """
    L{IRecoveryStore} in a dict, beside a L{MemoryMessageStore} (whose
    messages and groups it reads). Every L{Deferred} it returns has
    already fired.
    """

    def __init__(self, store: Any) -> None:
        self._store = store
        self.records: dict[str, RecoveryRecord] = {}

    def keepRecovery(self, record: RecoveryRecord) -> Deferred[RecoveryRecord]:
        """
        See L{IRecoveryStore.keepRecovery}.
        """
        if record.lastSeq < 0:
            record = attrs.evolve(record, lastSeq=max(self._store.messages, default=0))
        record = attrs.evolve(record, rooms=record.rooms[:MAX_ROOMS])
        self.records[record.pid] = record
        return succeed(record)

    def recoveryRecord(self, pid: str, now: int) -> Deferred[RecoveryRecord | None]:
        """
        See L{IRecoveryStore.recoveryRecord}.
        """
        record = self.records.get(pid)
        if record is None or record.expiresAt is None or record.expiresAt <= now:
            return succeed(None)
        return succeed(record)

    def dropRecovery(self, pid: str) -> Deferred[None]:
        """
        See L{IRecoveryStore.dropRecovery}.
        """
        self.records.pop(pid, None)
        return succeed(None)

    def dropRecoveriesOf(self, userId: str) -> Deferred[int]:
        """
        See L{IRecoveryStore.dropRecoveriesOf}.
        """
        pids = [pid for pid, record in self.records.items() if record.userId == userId]
        for pid in pids:
            del self.records[pid]
        return succeed(len(pids))

    def expireRecoveries(self, now: int, orphansUntil: int | None = None, node: str = "") -> Deferred[int]:
        """
        See L{IRecoveryStore.expireRecoveries}.
        """
        expired = [p for p, r in self.records.items() if r.expiresAt is not None and r.expiresAt <= now]
        for pid in expired:
            del self.records[pid]
        if orphansUntil is not None:
            for pid, record in list(self.records.items()):
                if record.expiresAt is None and record.node in ("", node):
                    self.records[pid] = attrs.evolve(record, expiresAt=orphansUntil)
        return succeed(len(expired))

    def missedMessages(
        self,
        userId: str,
        rooms: Sequence[str],
        after: int,
        since: int,
        limit: int,
        maxBytes: int | None = None,
        ownAfter: int | None = None,
    ) -> Deferred[list[StoredMessage]]:
        """
        See L{IRecoveryStore.missedMessages}.
        """
        groups = getattr(self._store, "_groups", {})
        shared = {
            GROUP_PREFIX + groupId
            for groupId, kept in groups.items()
            if userId in kept.members and not kept.dissolved
        }
        shared.update(ROOM_PREFIX + r for r in rooms)
        messages = self._store.messages

        def missed() -> Iterator[StoredMessage]:
            for seq in sorted(messages):
                message = messages[seq]
                if seq <= after:
                    continue
                if message.fromId == userId:
                    if ownAfter is None or message.serverTimestamp <= ownAfter:
                        continue
                    if message.toId is not None or (seq > since and message.conversation in shared):
                        yield message
                elif message.toId == userId or (seq > since and message.conversation in shared):
                    yield message

        return succeed(boundedMessages(missed(), limit, maxBytes))
