# -*- test-case-name: tests.test_push_storage -*-
"""
Offline push storage (PUSH.md): pushkeys per user, group mutes and the
durable outbox of notifications, as C{*_txn} functions run on the pool
thread, and L{SQLPushStore}, their methods on the SQL store.

The outbox is written in the same transaction as the message it notifies
of: L{crm_im.storage.messages.writeBatch_txn} calls L{enqueue_txn} for
every created message whose L{NewMessage.notify} names recipients, so a
receipt (the message is durable) implies its notification is durable too.
The sender (L{crm_im.notify.sender}) reads a user's rows with
L{pushPlan_txn}, which decides again from the store what is still unread,
and deletes them with L{finishPush_txn}.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import attrs
import orjson
from twisted.internet.defer import Deferred
from zope.interface import Interface

from .database import Transaction, paddedChunks, placeholders
from .interface import GROUP_PREFIX, StoredMessage

#: Outbox rows read for one notification (the rest wait for the next).
PLAN_ROWS = 1000
#: Unread counts stop at this (a badge does not need more).
MAX_UNREAD = 9999


@attrs.frozen
class Pushkey:
    """
    A device's push registration.

    @ivar pushkey: the push service's token for the device (FCM token, APNs
        device token, Web Push endpoint...).
    @ivar appId: which app (and push service) the gateway routes it to.
    @ivar data: passed to the gateway as the device's C{data}.
    @ivar createdAt: ms since the epoch (the gateway's C{pushkey_ts}).
    """

    pushkey: str
    userId: str
    appId: str
    platform: str | None
    lang: str | None
    data: dict[str, Any] | None
    createdAt: int


@attrs.frozen
class Registered:
    """
    The outcome of L{IPushStore.registerPushkey}.

    @ivar movedFrom: the user who had the pushkey before, if another one.
    @ivar movedFromRemaining: how many pushkeys that user has left.
    @ivar evicted: this user's oldest pushkeys dropped to stay in the limit.
    """

    movedFrom: str | None
    movedFromRemaining: int
    evicted: int


@attrs.frozen
class PushLoad:
    """
    What the sender needs at start.

    @ivar users: every user with at least one pushkey.
    @ivar mutes: C{(userId, groupId)} of every muted group.
    @ivar outbox: per user with rows: C{(userId, oldest createdAt, rows)}.
    """

    users: frozenset[str]
    mutes: frozenset[tuple[str, str]]
    outbox: list[tuple[str, int, int]]


@attrs.frozen
class PushPlan:
    """
    What a notification to one user would say now.

    @ivar upToSeq: the last outbox row read (the rows up to it are done
        once this plan is sent, skipped or given up).
    @ivar rows: how many outbox rows were read.
    @ivar oldestAt: when the oldest of them was written (ms).
    @ivar messages: the messages still worth notifying (unread, not
        recalled, the user still in the group), seq ascending.
    @ivar unread: the user's unread count: the 1:1 offline queue and every
        group's messages past the user's read cursor.
    @ivar pushkeys: the user's registrations.
    @ivar groupNames: the names of the groups of C{messages}.
    """

    userId: str
    upToSeq: int
    rows: int
    oldestAt: int
    messages: list[StoredMessage]
    unread: int
    pushkeys: list[Pushkey]
    groupNames: dict[str, str]


class IPushStore(Interface):
    """
    Pushkeys, mutes and the push outbox. Every method returns a L{Deferred};
    writes share the message store's group commit.
    """

    def registerPushkey(key: Pushkey, maxPerUser: int) -> Deferred[Registered]:
        """
        Keep C{key} for its user (taking it from another user if needed),
        dropping the user's oldest pushkeys past C{maxPerUser}.
        """

    def unregisterPushkey(userId: str, pushkey: str) -> Deferred[int]:
        """
        Forget C{userId}'s C{pushkey}; fires with how many the user has left.
        """

    def setMute(userId: str, groupId: str, muted: bool) -> Deferred[None]:
        """
        Mute or unmute a group for a user.
        """

    def forgetMutes(groupId: str, userIds: Sequence[str]) -> Deferred[None]:
        """
        Forget C{userIds}' mutes of C{groupId} (they are no longer
        members), in one write.
        """

    def loadPush() -> Deferred[PushLoad]:
        """
        Users with pushkeys, mutes and the outbox, read at start.
        """

    def enqueuePush(userId: str, seq: int, createdAt: int) -> Deferred[None]:
        """
        Add one outbox row (for a message already stored).
        """

    def pushPlan(userId: str) -> Deferred[PushPlan | None]:
        """
        What to notify C{userId} of now; L{None} if the user has no rows.
        """

    def finishPush(userId: str, upToSeq: int, rejected: Sequence[str]) -> Deferred[tuple[int, int]]:
        """
        Delete C{userId}'s outbox rows up to C{upToSeq} and the C{rejected}
        pushkeys of the user.

        @return: rows deleted, pushkeys the user has left.
        """

    def trimOutbox(maxRows: int) -> Deferred[int]:
        """
        Delete the oldest rows past C{maxRows}; fires with how many.
        """


# ---- pushkeys and mutes


def _keyFromRow(row: Sequence[Any]) -> Pushkey:
    return Pushkey(row[0], row[1], row[2], row[3], row[4], None if row[5] is None else orjson.loads(row[5]), row[6])


_KEY_COLUMNS = "pushkey, user_id, app_id, platform, lang, data, created_at"


def _keyCount_txn(txn: Transaction, userId: str) -> int:
    txn.execute("SELECT COUNT(*) FROM push_keys WHERE user_id = ?", (userId,))
    row = txn.fetchone()
    return 0 if row is None else int(row[0])


def registerPushkey_txn(txn: Transaction, key: Pushkey, maxPerUser: int) -> Registered:
    """
    See L{IPushStore.registerPushkey}.
    """
    txn.execute("SELECT user_id FROM push_keys WHERE pushkey = ?", (key.pushkey,))
    row = txn.fetchone()
    previous = None if row is None else str(row[0])
    txn.execute("DELETE FROM push_keys WHERE pushkey = ?", (key.pushkey,))
    txn.execute(
        f"INSERT INTO push_keys ({_KEY_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            key.pushkey,
            key.userId,
            key.appId,
            key.platform,
            key.lang,
            None if key.data is None else orjson.dumps(key.data).decode(),
            key.createdAt,
        ),
    )
    evicted = 0
    count = _keyCount_txn(txn, key.userId)
    if maxPerUser and count > maxPerUser:
        txn.execute(
            "SELECT pushkey FROM push_keys WHERE user_id = ? AND pushkey <> ? ORDER BY created_at, pushkey LIMIT ?",
            (key.userId, key.pushkey, count - maxPerUser),
        )
        oldest = [str(r[0]) for r in txn.fetchall()]
        for chunk in paddedChunks(oldest):
            txn.execute(f"DELETE FROM push_keys WHERE pushkey IN ({placeholders(len(chunk))})", chunk)
        evicted = len(oldest)
    movedFrom = previous if previous is not None and previous != key.userId else None
    remaining = _keyCount_txn(txn, movedFrom) if movedFrom is not None else 0
    return Registered(movedFrom, remaining, evicted)


def unregisterPushkey_txn(txn: Transaction, userId: str, pushkey: str) -> int:
    """
    See L{IPushStore.unregisterPushkey}.
    """
    txn.execute("DELETE FROM push_keys WHERE user_id = ? AND pushkey = ?", (userId, pushkey))
    return _keyCount_txn(txn, userId)


def setMute_txn(txn: Transaction, userId: str, groupId: str, muted: bool) -> None:
    """
    See L{IPushStore.setMute}.
    """
    if muted:
        txn.execute(
            "INSERT INTO push_mutes (user_id, group_id) VALUES (?, ?) ON CONFLICT DO NOTHING", (userId, groupId)
        )
    else:
        txn.execute("DELETE FROM push_mutes WHERE user_id = ? AND group_id = ?", (userId, groupId))


def forgetMutes_txn(txn: Transaction, groupId: str, userIds: Sequence[str]) -> None:
    """
    See L{IPushStore.forgetMutes}.
    """
    for chunk in paddedChunks(list(userIds)):
        txn.execute(
            f"DELETE FROM push_mutes WHERE group_id = ? AND user_id IN ({placeholders(len(chunk))})", (groupId, *chunk)
        )


def loadPush_txn(txn: Transaction) -> PushLoad:
    """
    See L{IPushStore.loadPush}.
    """
    txn.execute("SELECT DISTINCT user_id FROM push_keys")
    users = frozenset(str(row[0]) for row in txn.fetchall())
    txn.execute("SELECT user_id, group_id FROM push_mutes")
    mutes = frozenset((str(row[0]), str(row[1])) for row in txn.fetchall())
    txn.execute("SELECT user_id, MIN(created_at), COUNT(*) FROM push_outbox GROUP BY user_id")
    outbox = [(str(row[0]), int(row[1]), int(row[2])) for row in txn.fetchall()]
    return PushLoad(users, mutes, outbox)


# ---- the outbox


def enqueue_txn(txn: Transaction, rows: Sequence[tuple[str, int, int]]) -> None:
    """
    Add outbox rows C{(userId, seq, createdAt)}, in the caller's
    transaction (the message's own, from L{writeBatch_txn}).
    """
    for chunk in paddedChunks(rows, 256):
        txn.execute(
            "INSERT INTO push_outbox (user_id, seq, created_at) VALUES "
            + ", ".join(["(?, ?, ?)"] * len(chunk))
            + " ON CONFLICT DO NOTHING",
            [value for row in chunk for value in row],
        )


def enqueueStored_txn(txn: Transaction, created: Sequence[tuple[StoredMessage, Sequence[str]]]) -> None:
    """
    The outbox rows of messages just stored: one per recipient named.
    """
    enqueue_txn(
        txn, [(userId, stored.seq, stored.serverTimestamp) for stored, userIds in created for userId in userIds]
    )


def _unreadCount_txn(txn: Transaction, userId: str) -> int:
    """
    The 1:1 offline queue of C{userId} plus, in every group they are a
    member of, the messages of others past their read cursor; capped.
    """
    txn.execute(
        "SELECT COUNT(*) FROM (SELECT 1 FROM messages WHERE to_id = ? AND delivered = 0 LIMIT ?) AS q",
        (userId, MAX_UNREAD),
    )
    row = txn.fetchone()
    direct = 0 if row is None else int(row[0])
    txn.execute(
        "SELECT COUNT(*) FROM (SELECT 1 FROM group_members m"
        " JOIN messages x ON x.conversation = ? || m.group_id"
        " LEFT JOIN read_cursors c ON c.conversation = x.conversation AND c.user_id = m.user_id"
        " WHERE m.user_id = ? AND m.left_at IS NULL AND x.seq > COALESCE(c.read_seq, 0)"
        " AND x.from_id <> ? AND x.type <> 'system' LIMIT ?) AS q",
        (GROUP_PREFIX, userId, userId, MAX_UNREAD),
    )
    row = txn.fetchone()
    groups = 0 if row is None else int(row[0])
    return min(direct + groups, MAX_UNREAD)


def pushPlan_txn(txn: Transaction, userId: str, limit: int = PLAN_ROWS) -> PushPlan | None:
    """
    See L{IPushStore.pushPlan}: what is still worth notifying is decided
    here again, from the store: a 1:1 message delivered or read meanwhile
    (another device, a reconnection) is not; a group message is not once
    the user's read cursor passed it or the user left the group.
    """
    from .messages import _MESSAGE_COLUMNS, _messageFromRow

    txn.execute(
        "SELECT seq, created_at FROM push_outbox WHERE user_id = ? ORDER BY seq LIMIT ?", (userId, max(limit, 1))
    )
    rows = txn.fetchall()
    if not rows:
        return None
    seqs = [int(row[0]) for row in rows]
    oldestAt = min(int(row[1]) for row in rows)
    messages: list[StoredMessage] = []
    for chunk in paddedChunks(seqs):
        txn.execute(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE seq IN ({placeholders(len(chunk))})", chunk)
        messages.extend(_messageFromRow(row, txn.cipher) for row in txn.fetchall())
    messages.sort(key=lambda m: m.seq)
    groupIds = sorted({m.groupId for m in messages if m.groupId is not None})
    cursors: dict[str, int] = {}
    names: dict[str, str] = {}
    for groupChunk in paddedChunks(groupIds):
        txn.execute(
            "SELECT g.group_id, g.name, COALESCE(c.read_seq, 0) FROM group_members m"
            " JOIN groups g ON g.group_id = m.group_id"
            " LEFT JOIN read_cursors c ON c.conversation = ? || m.group_id AND c.user_id = m.user_id"
            f" WHERE m.user_id = ? AND m.left_at IS NULL AND g.dissolved_at IS NULL"
            f" AND m.group_id IN ({placeholders(len(groupChunk))})",
            (GROUP_PREFIX, userId, *groupChunk),
        )
        for groupId, name, readSeq in txn.fetchall():
            cursors[str(groupId)] = int(readSeq)
            names[str(groupId)] = str(name)
    notifiable = [m for m in messages if stillUnread(m, userId, cursors)]
    txn.execute(f"SELECT {_KEY_COLUMNS} FROM push_keys WHERE user_id = ? ORDER BY created_at, pushkey", (userId,))
    pushkeys = [_keyFromRow(row) for row in txn.fetchall()]
    unread = _unreadCount_txn(txn, userId) if notifiable and pushkeys else 0
    return PushPlan(
        userId=userId,
        upToSeq=seqs[-1],
        rows=len(seqs),
        oldestAt=oldestAt,
        messages=notifiable,
        unread=unread,
        pushkeys=pushkeys,
        groupNames={groupId: names[groupId] for groupId in {m.groupId for m in notifiable} if groupId in names},
    )


def stillUnread(message: StoredMessage, userId: str, groupCursors: dict[str, int]) -> bool:
    """
    Is C{message} still worth a notification to C{userId}?

    @param groupCursors: the user's read cursor in each group they are a
        member of (a group missing here: the user left it, or it is gone).
    """
    if message.recalledBy is not None or message.fromId == userId:
        return False
    if message.toId is not None:
        # (reading a message marks it delivered too)
        return message.toId == userId and not message.delivered
    if message.groupId is not None:
        cursor = groupCursors.get(message.groupId)
        return cursor is not None and message.seq > cursor
    return False


def finishPush_txn(txn: Transaction, userId: str, upToSeq: int, rejected: Sequence[str]) -> tuple[int, int]:
    """
    See L{IPushStore.finishPush}.
    """
    txn.execute("DELETE FROM push_outbox WHERE user_id = ? AND seq <= ?", (userId, upToSeq))
    deleted = max(txn.rowcount, 0)
    for chunk in paddedChunks(list(rejected)):
        txn.execute(
            f"DELETE FROM push_keys WHERE user_id = ? AND pushkey IN ({placeholders(len(chunk))})", (userId, *chunk)
        )
    return deleted, _keyCount_txn(txn, userId)


def trimOutbox_txn(txn: Transaction, maxRows: int) -> int:
    """
    See L{IPushStore.trimOutbox}: the rows of the oldest messages go.
    """
    txn.execute("SELECT COUNT(*) FROM push_outbox")
    row = txn.fetchone()
    excess = (0 if row is None else int(row[0])) - maxRows
    if excess <= 0:
        return 0
    txn.execute("SELECT seq FROM push_outbox ORDER BY seq LIMIT 1 OFFSET ?", (excess - 1,))
    row = txn.fetchone()
    assert row is not None
    txn.execute("DELETE FROM push_outbox WHERE seq <= ?", (int(row[0]),))
    return max(txn.rowcount, 0)


class SQLPushStore:
    """
    The L{IPushStore} methods of the SQL store, over its write queue
    (C{_write}) and its reads (C{_read}).
    """

    _write: Callable[..., Deferred[Any]]
    _read: Callable[..., Deferred[Any]]

    def registerPushkey(self, key: Pushkey, maxPerUser: int) -> Deferred[Registered]:
        """
        See L{IPushStore.registerPushkey}.
        """
        return self._write("registerPushkey", lambda txn: registerPushkey_txn(txn, key, maxPerUser))

    def unregisterPushkey(self, userId: str, pushkey: str) -> Deferred[int]:
        """
        See L{IPushStore.unregisterPushkey}.
        """
        return self._write("unregisterPushkey", lambda txn: unregisterPushkey_txn(txn, userId, pushkey))

    def setMute(self, userId: str, groupId: str, muted: bool) -> Deferred[None]:
        """
        See L{IPushStore.setMute}.
        """
        return self._write("setMute", lambda txn: setMute_txn(txn, userId, groupId, muted), atomic=True)

    def forgetMutes(self, groupId: str, userIds: Sequence[str]) -> Deferred[None]:
        """
        See L{IPushStore.forgetMutes}.
        """
        return self._write("forgetMutes", lambda txn: forgetMutes_txn(txn, groupId, userIds), atomic=True)

    def loadPush(self) -> Deferred[PushLoad]:
        """
        See L{IPushStore.loadPush}.
        """
        return self._read("loadPush", loadPush_txn)

    def enqueuePush(self, userId: str, seq: int, createdAt: int) -> Deferred[None]:
        """
        See L{IPushStore.enqueuePush}.
        """
        return self._write("enqueuePush", lambda txn: enqueue_txn(txn, [(userId, seq, createdAt)]), atomic=True)

    def pushPlan(self, userId: str) -> Deferred[PushPlan | None]:
        """
        See L{IPushStore.pushPlan}.
        """
        return self._read("pushPlan", lambda txn: pushPlan_txn(txn, userId))

    def finishPush(self, userId: str, upToSeq: int, rejected: Sequence[str]) -> Deferred[tuple[int, int]]:
        """
        See L{IPushStore.finishPush}.
        """
        keys = list(rejected)
        return self._write("finishPush", lambda txn: finishPush_txn(txn, userId, upToSeq, keys))

    def trimOutbox(self, maxRows: int) -> Deferred[int]:
        """
        See L{IPushStore.trimOutbox}.
        """
        return self._write("trimOutbox", lambda txn: trimOutbox_txn(txn, maxRows))
