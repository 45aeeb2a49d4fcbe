# -*- test-case-name: tests.test_admin_store -*-
"""
The back office's storage (ADMIN.md): the audit log, bans, the users seen,
and the operator's views of groups, rooms and messages (listing, export,
counts) that no client event needs.

L{IAdminStore} is kept apart from the message store's interfaces: the
C{*_txn} functions below run on the pool thread of the store they are given
(writes join its group commit, reads go straight to the pool), and
L{MemoryAdminStore} is the same over the in-memory fake.
L{adminStoreFor} picks one for a message store. The SQL is portable
(SQLite and PostgreSQL, C{?} placeholders converted by the engine).
"""

from __future__ import annotations

import uuid
from typing import Any, Callable, Sequence, TypeVar

import attrs
import orjson
from twisted.internet.defer import Deferred, succeed
from zope.interface import Interface, implementer

from .database import Transaction
from .interface import (
    GROUP_PREFIX,
    ROOM_PREFIX,
    GroupRecord,
    HistoryPage,
    RoomRecord,
    StoredMessage,
)
from .messages import _MESSAGE_COLUMNS, _messageFromRow

_R = TypeVar("_R")


@attrs.frozen
class AuditEntry:
    """
    One admin action that changed something.

    @ivar id: made by the application (a UUID).
    @ivar at: when, in ms since the epoch.
    @ivar actor: who (C{token}, or the C{sub} of an admin JWT).
    @ivar action: what, e.g. C{user.ban}.
    @ivar target: the user, group, room or message acted on, if any.
    @ivar detail: the request's parameters worth keeping (never secrets).
    @ivar address: the client address the request came from.
    """

    id: str
    at: int
    actor: str
    action: str
    target: str | None
    detail: dict[str, Any] | None
    address: str

    def toWire(self) -> dict[str, Any]:
        """
        The API's audit entry.
        """
        return {
            "id": self.id,
            "at": self.at,
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "detail": self.detail,
            "address": self.address,
        }


def newAuditId() -> str:
    """
    A fresh audit entry id.
    """
    return str(uuid.uuid4())


@attrs.frozen
class BanRecord:
    """
    A banned user.

    @ivar until: when the ban ends (ms since the epoch), or L{None}: until
        unbanned.
    """

    userId: str
    until: int | None
    reason: str | None
    at: int
    by: str

    def active(self, now: int) -> bool:
        """
        Whether the ban holds at C{now}.
        """
        return self.until is None or now < self.until

    def toWire(self) -> dict[str, Any]:
        """
        The API's ban.
        """
        return {"userId": self.userId, "until": self.until, "reason": self.reason, "at": self.at, "by": self.by}


@attrs.frozen
class SeenUser:
    """
    A user who logged in at least once.

    @ivar lastSeen: the last login or the last device gone, in ms.
    """

    userId: str
    name: str
    avatar: str | None
    firstSeen: int
    lastSeen: int


@attrs.frozen
class StoreCounts:
    """
    How much the store holds.

    @ivar messages: messages stored (the highest C{seq}: nothing is deleted).
    """

    messages: int
    groups: int
    rooms: int
    usersSeen: int


class IAdminStore(Interface):
    """
    What the back office reads and writes.
    """

    def recordAudit(entry: AuditEntry) -> Deferred[None]:
        """
        Keep an audit entry.
        """

    def auditPage(limit: int, before: tuple[int, str] | None) -> Deferred[list[AuditEntry]]:
        """
        Up to C{limit} entries, newest first, older than C{before}
        (C{(at, id)} of the last entry of the previous page).
        """

    def saveBan(ban: BanRecord) -> Deferred[None]:
        """
        Ban a user (replacing an earlier ban).
        """

    def removeBan(userId: str) -> Deferred[bool]:
        """
        Lift a ban. @return: whether there was one.
        """

    def bans() -> Deferred[list[BanRecord]]:
        """
        Every ban.
        """

    def sawUsers(users: Sequence[SeenUser]) -> Deferred[None]:
        """
        Record logins and departures: insert new users, update the name,
        avatar and C{lastSeen} of known ones (their C{firstSeen} stays).
        """

    def seenUsers(q: str | None, after: str | None, limit: int) -> Deferred[list[SeenUser]]:
        """
        Users seen, by id, after C{after}, whose id or name contains C{q}
        (case-insensitive).
        """

    def seenUsersByIds(userIds: Sequence[str]) -> Deferred[dict[str, SeenUser]]:
        """
        The users seen among C{userIds}.
        """

    def listGroups(q: str | None, after: str | None, limit: int) -> Deferred[list[tuple[GroupRecord, int, int]]]:
        """
        Groups not dissolved, by id, after C{after}, whose name or id
        contains C{q}; with their member counts and the seq of their last
        message (0 if none), as C{group:info} gives it.
        """

    def listRooms(after: str | None, limit: int) -> Deferred[list[RoomRecord]]:
        """
        Every room (public or not), by id, after C{after}.
        """

    def deleteRoom(roomId: str) -> Deferred[bool]:
        """
        Close a room: it is gone (its messages stay). @return: whether it
        existed.
        """

    def exportMessages(
        conversation: str | None, userId: str | None, limit: int, before: int | None, after: int | None
    ) -> Deferred[HistoryPage]:
        """
        A page of one conversation (by key) or of every 1:1 message to or
        from C{userId}, oldest first: with C{before} the latest older than
        it, else the earliest newer than C{after} (default: from the start).
        """

    def messagesById(messageId: str) -> Deferred[list[StoredMessage]]:
        """
        Every message with this id (ids are unique per sender only).
        """

    def counts() -> Deferred[StoreCounts]:
        """
        See L{StoreCounts}.
        """


# ---- SQL


def _likePattern(q: str) -> str:
    escaped = q.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def recordAudit_txn(txn: Transaction, entry: AuditEntry) -> None:
    """
    See L{IAdminStore.recordAudit}.
    """
    txn.execute(
        "INSERT INTO admin_audit (audit_id, at, actor, action, target, detail, address) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            entry.id,
            entry.at,
            entry.actor,
            entry.action,
            entry.target,
            None if entry.detail is None else orjson.dumps(entry.detail).decode("utf-8"),
            entry.address,
        ),
    )


def auditPage_txn(txn: Transaction, limit: int, before: tuple[int, str] | None) -> list[AuditEntry]:
    """
    See L{IAdminStore.auditPage}.
    """
    columns = "SELECT audit_id, at, actor, action, target, detail, address FROM admin_audit"
    if before is None:
        txn.execute(f"{columns} ORDER BY at DESC, audit_id DESC LIMIT ?", (limit,))
    else:
        at, auditId = before
        txn.execute(
            f"{columns} WHERE at < ? OR (at = ? AND audit_id < ?) ORDER BY at DESC, audit_id DESC LIMIT ?",
            (at, at, auditId, limit),
        )
    return [
        AuditEntry(row[0], row[1], row[2], row[3], row[4], None if row[5] is None else orjson.loads(row[5]), row[6])
        for row in txn.fetchall()
    ]


def saveBan_txn(txn: Transaction, ban: BanRecord) -> None:
    """
    See L{IAdminStore.saveBan}.
    """
    txn.execute(
        "INSERT INTO admin_bans (user_id, until_at, reason, banned_at, banned_by) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (user_id) DO UPDATE SET until_at = excluded.until_at, reason = excluded.reason,"
        " banned_at = excluded.banned_at, banned_by = excluded.banned_by",
        (ban.userId, ban.until, ban.reason, ban.at, ban.by),
    )


def removeBan_txn(txn: Transaction, userId: str) -> bool:
    """
    See L{IAdminStore.removeBan}.
    """
    txn.execute("DELETE FROM admin_bans WHERE user_id = ?", (userId,))
    return txn.rowcount > 0


def bans_txn(txn: Transaction) -> list[BanRecord]:
    """
    See L{IAdminStore.bans}.
    """
    txn.execute("SELECT user_id, until_at, reason, banned_at, banned_by FROM admin_bans ORDER BY user_id")
    return [BanRecord(*row) for row in txn.fetchall()]


def sawUsers_txn(txn: Transaction, users: Sequence[SeenUser]) -> None:
    """
    See L{IAdminStore.sawUsers}.
    """
    for user in users:
        txn.execute(
            "INSERT INTO users_seen (user_id, name, avatar, first_seen, last_seen) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (user_id) DO UPDATE SET name = excluded.name, avatar = excluded.avatar,"
            " last_seen = excluded.last_seen",
            (user.userId, user.name, user.avatar, user.firstSeen, user.lastSeen),
        )


_SEEN_COLUMNS = "SELECT user_id, name, avatar, first_seen, last_seen FROM users_seen"


def seenUsers_txn(txn: Transaction, q: str | None, after: str | None, limit: int) -> list[SeenUser]:
    """
    See L{IAdminStore.seenUsers}.
    """
    conditions: list[str] = []
    args: list[Any] = []
    if after is not None:
        conditions.append("user_id > ?")
        args.append(after)
    if q:
        conditions.append("(LOWER(user_id) LIKE ? ESCAPE '\\' OR LOWER(name) LIKE ? ESCAPE '\\')")
        args.extend([_likePattern(q)] * 2)
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    args.append(limit)
    txn.execute(f"{_SEEN_COLUMNS}{where} ORDER BY user_id LIMIT ?", args)
    return [SeenUser(*row) for row in txn.fetchall()]


def seenUsersByIds_txn(txn: Transaction, userIds: Sequence[str]) -> dict[str, SeenUser]:
    """
    See L{IAdminStore.seenUsersByIds}.
    """
    from .database import paddedChunks, placeholders

    found: dict[str, SeenUser] = {}
    for chunk in paddedChunks(list(userIds)):
        txn.execute(f"{_SEEN_COLUMNS} WHERE user_id IN ({placeholders(len(chunk))})", list(chunk))
        for row in txn.fetchall():
            found[row[0]] = SeenUser(*row)
    return found


_GROUP_COLUMNS = "g.group_id, g.name, g.avatar, g.owner_id, g.created_by, g.client_id, g.created_at"


def listGroups_txn(txn: Transaction, q: str | None, after: str | None, limit: int) -> list[tuple[GroupRecord, int, int]]:
    """
    See L{IAdminStore.listGroups}.
    """
    conditions = ["g.dissolved_at IS NULL"]
    args: list[Any] = [GROUP_PREFIX]
    if after is not None:
        conditions.append("g.group_id > ?")
        args.append(after)
    if q:
        conditions.append("(LOWER(g.group_id) LIKE ? ESCAPE '\\' OR LOWER(g.name) LIKE ? ESCAPE '\\')")
        args.extend([_likePattern(q)] * 2)
    args.append(limit)
    txn.execute(
        f"SELECT {_GROUP_COLUMNS}, (SELECT COUNT(*) FROM group_members m"
        " WHERE m.group_id = g.group_id AND m.left_at IS NULL),"
        " (SELECT MAX(seq) FROM messages WHERE conversation = ? || g.group_id)"
        f" FROM groups g WHERE {' AND '.join(conditions)} ORDER BY g.group_id LIMIT ?",
        args,
    )
    return [(GroupRecord(*row[:7]), int(row[7]), int(row[8] or 0)) for row in txn.fetchall()]


def listRooms_txn(txn: Transaction, after: str | None, limit: int) -> list[RoomRecord]:
    """
    See L{IAdminStore.listRooms}.
    """
    columns = "SELECT room_id, name, topic, public, created_by, client_id, created_at FROM rooms"
    if after is None:
        txn.execute(f"{columns} ORDER BY room_id LIMIT ?", (limit,))
    else:
        txn.execute(f"{columns} WHERE room_id > ? ORDER BY room_id LIMIT ?", (after, limit))
    return [
        RoomRecord(id=r[0], name=r[1], topic=r[2], public=bool(r[3]), createdBy=r[4], clientId=r[5], createdAt=r[6])
        for r in txn.fetchall()
    ]


def deleteRoom_txn(txn: Transaction, roomId: str) -> bool:
    """
    See L{IAdminStore.deleteRoom}.
    """
    txn.execute("DELETE FROM rooms WHERE room_id = ?", (roomId,))
    return txn.rowcount > 0


def exportMessages_txn(
    txn: Transaction, conversation: str | None, userId: str | None, limit: int, before: int | None, after: int | None
) -> HistoryPage:
    """
    See L{IAdminStore.exportMessages}.
    """
    conditions: list[str] = []
    args: list[Any] = []
    if conversation is not None:
        conditions.append("conversation = ?")
        args.append(conversation)
    if userId is not None:
        conditions.append("(from_id = ? OR to_id = ?) AND to_id <> ''")
        args.extend([userId, userId])
    backwards = before is not None
    if before is not None:
        conditions.append("seq < ?")
        args.append(before)
    elif after is not None:
        conditions.append("seq > ?")
        args.append(after)
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    args.append(limit + 1)
    txn.execute(
        f"SELECT {_MESSAGE_COLUMNS} FROM messages{where} ORDER BY seq {'DESC' if backwards else 'ASC'} LIMIT ?", args
    )
    messages = [_messageFromRow(row, txn.cipher) for row in txn.fetchall()]
    hasMore = len(messages) > limit
    del messages[limit:]
    if backwards:
        messages.reverse()
    return HistoryPage(messages=messages, hasMore=hasMore)


def messagesById_txn(txn: Transaction, messageId: str) -> list[StoredMessage]:
    """
    See L{IAdminStore.messagesById}.
    """
    # messages_sender_message_id (from_id, message_id) cannot serve this
    # without the sender, and the 1:1 messages have no index by id alone
    # (schema 012: it cost every insert a page); an admin recall is rare
    # enough for a scan.
    txn.execute(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE message_id = ? ORDER BY seq", (messageId,))
    return [_messageFromRow(row, txn.cipher) for row in txn.fetchall()]


def counts_txn(txn: Transaction) -> StoreCounts:
    """
    See L{IAdminStore.counts}.
    """
    values = []
    for sql in (
        "SELECT MAX(seq) FROM messages",
        "SELECT COUNT(*) FROM groups WHERE dissolved_at IS NULL",
        "SELECT COUNT(*) FROM rooms",
        "SELECT COUNT(*) FROM users_seen",
    ):
        txn.execute(sql)
        row = txn.fetchone()
        values.append(0 if row is None or row[0] is None else int(row[0]))
    return StoreCounts(*values)


@implementer(IAdminStore)
class SQLAdminStore:
    """
    L{IAdminStore} on a SQL message store's write queue and pool.
    """

    def __init__(self, store: Any) -> None:
        """
        @param store: a L{crm_im.storage.store.SQLMessageStore} (any
            L{crm_im.storage.commit.GroupCommit}).
        """
        self._write: Callable[..., Deferred[Any]] = store._write
        self._read: Callable[..., Deferred[Any]] = store._read

    def recordAudit(self, entry: AuditEntry) -> Deferred[None]:
        """
        See L{IAdminStore.recordAudit}.
        """
        return self._write("recordAudit", lambda txn: recordAudit_txn(txn, entry))

    def auditPage(self, limit: int, before: tuple[int, str] | None) -> Deferred[list[AuditEntry]]:
        """
        See L{IAdminStore.auditPage}.
        """
        return self._read("auditPage", lambda txn: auditPage_txn(txn, limit, before))

    def saveBan(self, ban: BanRecord) -> Deferred[None]:
        """
        See L{IAdminStore.saveBan}.
        """
        return self._write("saveBan", lambda txn: saveBan_txn(txn, ban))

    def removeBan(self, userId: str) -> Deferred[bool]:
        """
        See L{IAdminStore.removeBan}.
        """
        return self._write("removeBan", lambda txn: removeBan_txn(txn, userId))

    def bans(self) -> Deferred[list[BanRecord]]:
        """
        See L{IAdminStore.bans}.
        """
        return self._read("bans", bans_txn)

    def sawUsers(self, users: Sequence[SeenUser]) -> Deferred[None]:
        """
        See L{IAdminStore.sawUsers}.
        """
        users = list(users)
        return self._write("sawUsers", lambda txn: sawUsers_txn(txn, users))

    def seenUsers(self, q: str | None, after: str | None, limit: int) -> Deferred[list[SeenUser]]:
        """
        See L{IAdminStore.seenUsers}.
        """
        return self._read("seenUsers", lambda txn: seenUsers_txn(txn, q, after, limit))

    def seenUsersByIds(self, userIds: Sequence[str]) -> Deferred[dict[str, SeenUser]]:
        """
        See L{IAdminStore.seenUsersByIds}.
        """
        ids = list(userIds)
        return self._read("seenUsersByIds", lambda txn: seenUsersByIds_txn(txn, ids))

    def listGroups(self, q: str | None, after: str | None, limit: int) -> Deferred[list[tuple[GroupRecord, int, int]]]:
        """
        See L{IAdminStore.listGroups}.
        """
        return self._read("listGroups", lambda txn: listGroups_txn(txn, q, after, limit))

    def listRooms(self, after: str | None, limit: int) -> Deferred[list[RoomRecord]]:
        """
        See L{IAdminStore.listRooms}.
        """
        return self._read("listRooms", lambda txn: listRooms_txn(txn, after, limit))

    def deleteRoom(self, roomId: str) -> Deferred[bool]:
        """
        See L{IAdminStore.deleteRoom}.
        """
        return self._write("deleteRoom", lambda txn: deleteRoom_txn(txn, roomId))

    def exportMessages(
        self, conversation: str | None, userId: str | None, limit: int, before: int | None, after: int | None
    ) -> Deferred[HistoryPage]:
        """
        See L{IAdminStore.exportMessages}.
        """
        return self._read(
            "exportMessages", lambda txn: exportMessages_txn(txn, conversation, userId, limit, before, after)
        )

    def messagesById(self, messageId: str) -> Deferred[list[StoredMessage]]:
        """
        See L{IAdminStore.messagesById}.
        """
        return self._read("messagesById", lambda txn: messagesById_txn(txn, messageId))

    def counts(self) -> Deferred[StoreCounts]:
        """
        See L{IAdminStore.counts}.
        """
        return self._read("counts", counts_txn)


# ---- memory


@implementer(IAdminStore)
class MemoryAdminStore:
    """
    L{IAdminStore} over a L{crm_im.storage.memory.MemoryMessageStore}: its
    messages, groups and rooms, and dicts of its own.
    """

    def __init__(self, store: Any) -> None:
        self.store = store
        self.audit: list[AuditEntry] = []
        self.banned: dict[str, BanRecord] = {}
        self.seen: dict[str, SeenUser] = {}

    def recordAudit(self, entry: AuditEntry) -> Deferred[None]:
        """
        See L{IAdminStore.recordAudit}.
        """
        self.audit.append(entry)
        return succeed(None)

    def auditPage(self, limit: int, before: tuple[int, str] | None) -> Deferred[list[AuditEntry]]:
        """
        See L{IAdminStore.auditPage}.
        """
        ordered = sorted(self.audit, key=lambda e: (e.at, e.id), reverse=True)
        if before is not None:
            ordered = [e for e in ordered if (e.at, e.id) < before]
        return succeed(ordered[:limit])

    def saveBan(self, ban: BanRecord) -> Deferred[None]:
        """
        See L{IAdminStore.saveBan}.
        """
        self.banned[ban.userId] = ban
        return succeed(None)

    def removeBan(self, userId: str) -> Deferred[bool]:
        """
        See L{IAdminStore.removeBan}.
        """
        return succeed(self.banned.pop(userId, None) is not None)

    def bans(self) -> Deferred[list[BanRecord]]:
        """
        See L{IAdminStore.bans}.
        """
        return succeed(sorted(self.banned.values(), key=lambda b: b.userId))

    def sawUsers(self, users: Sequence[SeenUser]) -> Deferred[None]:
        """
        See L{IAdminStore.sawUsers}.
        """
        for user in users:
            known = self.seen.get(user.userId)
            if known is not None:
                user = attrs.evolve(user, firstSeen=known.firstSeen)
            self.seen[user.userId] = user
        return succeed(None)

    def seenUsers(self, q: str | None, after: str | None, limit: int) -> Deferred[list[SeenUser]]:
        """
        See L{IAdminStore.seenUsers}.
        """
        found = [
            u
            for _, u in sorted(self.seen.items())
            if (after is None or u.userId > after)
            and (not q or q.lower() in u.userId.lower() or q.lower() in u.name.lower())
        ]
        return succeed(found[:limit])

    def seenUsersByIds(self, userIds: Sequence[str]) -> Deferred[dict[str, SeenUser]]:
        """
        See L{IAdminStore.seenUsersByIds}.
        """
        return succeed({u: self.seen[u] for u in userIds if u in self.seen})

    def listGroups(self, q: str | None, after: str | None, limit: int) -> Deferred[list[tuple[GroupRecord, int, int]]]:
        """
        See L{IAdminStore.listGroups}.
        """
        found = []
        for groupId, group in sorted(self.store._groups.items()):
            record = group.record
            if group.dissolved or (after is not None and groupId <= after):
                continue
            if q and q.lower() not in groupId.lower() and q.lower() not in record.name.lower():
                continue
            found.append((record, len(group.members), self.store._conversationLastSeq(GROUP_PREFIX + groupId)))
        return succeed(found[:limit])

    def listRooms(self, after: str | None, limit: int) -> Deferred[list[RoomRecord]]:
        """
        See L{IAdminStore.listRooms}.
        """
        rooms = [room for roomId, room in sorted(self.store._rooms.items()) if after is None or roomId > after]
        return succeed(rooms[:limit])

    def deleteRoom(self, roomId: str) -> Deferred[bool]:
        """
        See L{IAdminStore.deleteRoom}.
        """
        room = self.store._rooms.pop(roomId, None)
        if room is not None and room.clientId is not None:
            self.store._roomByClientId.pop((room.createdBy, room.clientId), None)
        return succeed(room is not None)

    def exportMessages(
        self, conversation: str | None, userId: str | None, limit: int, before: int | None, after: int | None
    ) -> Deferred[HistoryPage]:
        """
        See L{IAdminStore.exportMessages}.
        """
        chosen = [
            m
            for _, m in sorted(self.store.messages.items())
            if (conversation is None or m.conversation == conversation)
            and (userId is None or (m.toId is not None and userId in (m.fromId, m.toId)))
        ]
        if before is not None:
            older = [m for m in chosen if m.seq < before]
            page = older[-limit:] if limit else []
            return succeed(HistoryPage(messages=page, hasMore=len(older) > limit))
        newer = [m for m in chosen if after is None or m.seq > after]
        return succeed(HistoryPage(messages=newer[:limit], hasMore=len(newer) > limit))

    def messagesById(self, messageId: str) -> Deferred[list[StoredMessage]]:
        """
        See L{IAdminStore.messagesById}.
        """
        return succeed([m for _, m in sorted(self.store.messages.items()) if m.id == messageId])

    def counts(self) -> Deferred[StoreCounts]:
        """
        See L{IAdminStore.counts}.
        """
        groups = sum(1 for g in self.store._groups.values() if not g.dissolved)
        return succeed(StoreCounts(max(self.store.messages, default=0), groups, len(self.store._rooms), len(self.seen)))


def adminStoreFor(store: object) -> IAdminStore:
    """
    The L{IAdminStore} of a message store: SQL on its pool, or the memory
    fake beside the memory store.
    """
    from .memory import MemoryMessageStore

    if isinstance(store, MemoryMessageStore):
        return MemoryAdminStore(store)
    return SQLAdminStore(store)


__all__ = [
    "AuditEntry",
    "BanRecord",
    "GROUP_PREFIX",
    "IAdminStore",
    "MemoryAdminStore",
    "ROOM_PREFIX",
    "SQLAdminStore",
    "SeenUser",
    "StoreCounts",
    "adminStoreFor",
    "newAuditId",
]
