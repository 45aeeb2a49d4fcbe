# -*- test-case-name: tests.test_storage_conversations -*-
"""
Groups, their members, chat rooms and read cursors in SQL: the C{*_txn}
functions that run on the pool thread, and L{SQLConversationStore}, the
L{IConversationStore} methods of the SQL store (writes join its group
commit, reads go straight to the pool).

A group's membership change and the system message that records it are
written in one transaction, so history never shows a change that did not
happen, nor misses one that did.
"""

from __future__ import annotations

import uuid
from typing import Any, Callable, Sequence, TypeVar

import attrs
from twisted.internet.defer import Deferred

from .cursors import lastSeq_txn, readSeq_txn, setReadSeq_txn
from .database import Transaction, paddedChunks, placeholders
from .interface import (
    GROUP_PREFIX,
    GroupChange,
    GroupRecord,
    GroupState,
    GroupSummary,
    MemberRecord,
    NewMessage,
    RoomRecord,
    StoredMessage,
    groupConversation,
    roomConversation,
)

_R = TypeVar("_R")

#: Unread counts stop at this many (a badge shows "9999+").
MAX_UNREAD = 9999

_GROUP_COLUMNS = "group_id, name, avatar, owner_id, created_by, client_id, created_at"
_ROOM_COLUMNS = "room_id, name, topic, public, created_by, client_id, created_at"


def _storeSystem_txn(txn: Transaction, system: NewMessage) -> StoredMessage:
    from .messages import storeMessage_txn

    return storeMessage_txn(txn, system).message


def groupState_txn(txn: Transaction, groupId: str) -> GroupState | None:
    """
    A group that is not dissolved, with its current and former members.
    """
    txn.execute(f"SELECT {_GROUP_COLUMNS} FROM groups WHERE group_id = ? AND dissolved_at IS NULL", (groupId,))
    row = txn.fetchone()
    if row is None:
        return None
    group = GroupRecord(*row)
    txn.execute(
        "SELECT user_id, role, joined_at, ordinal, left_at FROM group_members WHERE group_id = ? ORDER BY ordinal",
        (groupId,),
    )
    members: dict[str, MemberRecord] = {}
    former: set[str] = set()
    for userId, role, joinedAt, ordinal, leftAt in txn.fetchall():
        if leftAt is None:
            members[userId] = MemberRecord(userId, role, joinedAt, ordinal)
        else:
            former.add(userId)
    return GroupState(group, members, frozenset(former), lastSeq_txn(txn, GROUP_PREFIX + groupId))


def createGroup_txn(
    txn: Transaction, group: GroupRecord, members: Sequence[MemberRecord], system: NewMessage
) -> tuple[GroupState, bool, StoredMessage | None]:
    """
    See L{IConversationStore.createGroup}. A requested id another group
    already has is replaced by a new UUID.
    """
    if group.clientId is not None:
        txn.execute(
            "SELECT group_id FROM groups WHERE created_by = ? AND client_id = ?",
            (group.createdBy, group.clientId),
        )
        row = txn.fetchone()
        if row is not None:
            existing = groupState_txn(txn, row[0])
            if existing is not None:
                return existing, False, None
    txn.execute("SELECT 1 FROM groups WHERE group_id = ?", (group.id,))
    if txn.fetchone() is not None:
        group = attrs.evolve(group, id=str(uuid.uuid4()))
    txn.execute(f"INSERT INTO groups ({_GROUP_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)", attrs.astuple(group))
    records = {}
    for ordinal, member in enumerate(members, 1):
        member = attrs.evolve(member, order=ordinal)
        records[member.userId] = member
        txn.execute(
            "INSERT INTO group_members (group_id, user_id, role, joined_at, ordinal) VALUES (?, ?, ?, ?, ?)",
            (group.id, member.userId, member.role, member.joinedAt, ordinal),
        )
    stored = _storeSystem_txn(txn, attrs.evolve(system, groupId=group.id))
    return GroupState(group, records, frozenset(), stored.seq), True, stored


def changeGroup_txn(txn: Transaction, change: GroupChange) -> StoredMessage | None:
    """
    See L{IConversationStore.changeGroup}.
    """
    groupId = change.groupId
    txn.execute("SELECT 1 FROM groups WHERE group_id = ? AND dissolved_at IS NULL", (groupId,))
    if txn.fetchone() is None:
        # Dissolved meanwhile (by another node, or a change decided before
        # the dissolve): nothing is written into it.
        return None
    updates: list[str] = []
    args: list[Any] = []
    if change.name is not None:
        updates.append("name = ?")
        args.append(change.name)
    if change.avatar is not None:
        updates.append("avatar = ?")
        args.append(change.avatar or None)
    if change.ownerId is not None:
        updates.append("owner_id = ?")
        args.append(change.ownerId)
    if change.dissolve:
        # The creator may make a new group with the same client id.
        updates.append("dissolved_at = ?, client_id = NULL")
        args.append(change.now)
    if updates:
        txn.execute(f"UPDATE groups SET {', '.join(updates)} WHERE group_id = ?", (*args, groupId))
    if change.dissolve:
        txn.execute(
            "UPDATE group_members SET left_at = ? WHERE group_id = ? AND left_at IS NULL", (change.now, groupId)
        )
    if change.add:
        conversation = groupConversation(groupId)
        lastSeq = lastSeq_txn(txn, conversation)
        txn.execute("SELECT COALESCE(MAX(ordinal), 0) FROM group_members WHERE group_id = ?", (groupId,))
        row = txn.fetchone()
        ordinal = int(row[0]) if row is not None else 0
        for member in change.add:
            ordinal += 1
            txn.execute(
                "INSERT INTO group_members (group_id, user_id, role, joined_at, ordinal) VALUES (?, ?, ?, ?, ?)"
                " ON CONFLICT (group_id, user_id) DO UPDATE SET role = excluded.role,"
                " joined_at = excluded.joined_at, ordinal = excluded.ordinal, left_at = NULL",
                (groupId, member.userId, member.role, member.joinedAt, ordinal),
            )
            # A new member's unread count starts at their arrival.
            setReadSeq_txn(txn, conversation, member.userId, lastSeq)
    for chunk in paddedChunks(list(change.remove)):
        txn.execute(
            f"UPDATE group_members SET left_at = ? WHERE group_id = ? AND user_id IN ({placeholders(len(chunk))})",
            (change.now, groupId, *chunk),
        )
    for userId, role in change.roles:
        txn.execute("UPDATE group_members SET role = ? WHERE group_id = ? AND user_id = ?", (role, groupId, userId))
    if change.system is None:
        return None
    return _storeSystem_txn(txn, change.system)


def groupCounts_txn(txn: Transaction, userIds: Sequence[str]) -> dict[str, int]:
    """
    See L{IConversationStore.groupCounts}.
    """
    counts = {userId: 0 for userId in userIds}
    for chunk in paddedChunks(list(counts)):
        # (the groups a dissolve left members in, which an earlier version
        # could write when a change raced the dissolve, are not counted)
        txn.execute(
            "SELECT m.user_id, COUNT(*) FROM group_members m JOIN groups g ON g.group_id = m.group_id"
            f" WHERE m.left_at IS NULL AND g.dissolved_at IS NULL AND m.user_id IN ({placeholders(len(chunk))})"
            " GROUP BY m.user_id",
            chunk,
        )
        for userId, count in txn.fetchall():
            counts[userId] = int(count)
    return counts


def groupSummaries_txn(txn: Transaction, userId: str) -> list[GroupSummary]:
    """
    See L{IConversationStore.groupSummaries}: a handful of index look-ups
    per group, whatever its history holds.
    """
    from .messages import _MESSAGE_COLUMNS, _messageFromRow

    txn.execute(
        f"SELECT {', '.join('g.' + c.strip() for c in _GROUP_COLUMNS.split(','))}"
        " FROM group_members m JOIN groups g ON g.group_id = m.group_id"
        " WHERE m.user_id = ? AND m.left_at IS NULL AND g.dissolved_at IS NULL",
        (userId,),
    )
    groups = [GroupRecord(*row) for row in txn.fetchall()]
    summaries = []
    for group in groups:
        conversation = GROUP_PREFIX + group.id
        txn.execute("SELECT COUNT(*) FROM group_members WHERE group_id = ? AND left_at IS NULL", (group.id,))
        row = txn.fetchone()
        memberCount = int(row[0]) if row is not None else 0
        readSeq = readSeq_txn(txn, conversation, userId)
        txn.execute(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE conversation = ? ORDER BY seq DESC LIMIT 1",
            (conversation,),
        )
        row = txn.fetchone()
        lastMessage = None if row is None else _messageFromRow(row, txn.cipher)
        lastSeq = 0 if lastMessage is None else lastMessage.seq
        unread = 0
        if lastSeq > readSeq:
            txn.execute(
                "SELECT COUNT(*) FROM (SELECT 1 FROM messages WHERE conversation = ? AND seq > ?"
                " AND from_id <> ? LIMIT ?) AS unread",
                (conversation, readSeq, userId, MAX_UNREAD),
            )
            row = txn.fetchone()
            unread = int(row[0]) if row is not None else 0
        summaries.append(GroupSummary(group, memberCount, lastSeq, readSeq, unread, lastMessage))
    summaries.sort(key=lambda s: (s.lastSeq, s.group.createdAt), reverse=True)
    return summaries


def readCursors_txn(txn: Transaction, conversation: str) -> dict[str, int]:
    """
    See L{IConversationStore.readCursors}.
    """
    txn.execute("SELECT user_id, read_seq FROM read_cursors WHERE conversation = ?", (conversation,))
    return {userId: int(seq) for userId, seq in txn.fetchall()}


def moveReadCursor_txn(txn: Transaction, conversation: str, userId: str, upToSeq: int) -> tuple[int, bool]:
    """
    See L{IConversationStore.moveReadCursor}.
    """
    target = min(upToSeq, lastSeq_txn(txn, conversation))
    current = readSeq_txn(txn, conversation, userId)
    if target <= current:
        return current, False
    setReadSeq_txn(txn, conversation, userId, target)
    return target, True


def _room(row: Sequence[Any]) -> RoomRecord:
    return RoomRecord(row[0], row[1], row[2], bool(row[3]), row[4], row[5], row[6])


def room_txn(txn: Transaction, roomId: str) -> RoomRecord | None:
    """
    See L{IConversationStore.room}.
    """
    txn.execute(f"SELECT {_ROOM_COLUMNS} FROM rooms WHERE room_id = ?", (roomId,))
    row = txn.fetchone()
    return None if row is None else _room(row)


def createRoom_txn(txn: Transaction, room: RoomRecord) -> tuple[RoomRecord, bool]:
    """
    See L{IConversationStore.createRoom}. A requested id another room
    already has, or a closed room had, is replaced by a new UUID.
    """
    if room.clientId is not None:
        txn.execute(
            f"SELECT {_ROOM_COLUMNS} FROM rooms WHERE created_by = ? AND client_id = ?",
            (room.createdBy, room.clientId),
        )
        row = txn.fetchone()
        if row is not None:
            return _room(row), False
    # A closed room's row is gone but its messages stay (for the export):
    # a new room of its id would show them to whoever joins it. Its last
    # seq is one probe of the (conversation, seq) index.
    if room_txn(txn, room.id) is not None or lastSeq_txn(txn, roomConversation(room.id)) > 0:
        room = attrs.evolve(room, id=str(uuid.uuid4()))
    txn.execute(
        f"INSERT INTO rooms ({_ROOM_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (room.id, room.name, room.topic, 1 if room.public else 0, room.createdBy, room.clientId, room.createdAt),
    )
    return room, True


def publicRooms_txn(txn: Transaction, limit: int) -> list[RoomRecord]:
    """
    See L{IConversationStore.publicRooms}.
    """
    txn.execute(f"SELECT {_ROOM_COLUMNS} FROM rooms WHERE public = 1 ORDER BY created_at LIMIT ?", (limit,))
    return [_room(row) for row in txn.fetchall()]


def roomCount_txn(txn: Transaction, createdBy: str) -> int:
    """
    See L{IConversationStore.roomCount}.
    """
    txn.execute("SELECT COUNT(*) FROM rooms WHERE created_by = ?", (createdBy,))
    row = txn.fetchone()
    return 0 if row is None else int(row[0])


class SQLConversationStore:
    """
    The L{IConversationStore} methods of the SQL store, over its write
    queue (C{_write}) and its reads (C{_read}).
    """

    _write: Callable[..., Deferred[Any]]
    _read: Callable[..., Deferred[Any]]

    def createGroup(
        self, group: GroupRecord, members: Sequence[MemberRecord], system: NewMessage
    ) -> Deferred[tuple[GroupState, bool, StoredMessage | None]]:
        """
        See L{IConversationStore.createGroup}.
        """
        members = list(members)
        return self._write("createGroup", lambda txn: createGroup_txn(txn, group, members, system))

    def group(self, groupId: str) -> Deferred[GroupState | None]:
        """
        See L{IConversationStore.group}.
        """
        return self._read("group", lambda txn: groupState_txn(txn, groupId))

    def changeGroup(self, change: GroupChange) -> Deferred[StoredMessage | None]:
        """
        See L{IConversationStore.changeGroup}.
        """
        return self._write("changeGroup", lambda txn: changeGroup_txn(txn, change))

    def groupCounts(self, userIds: Sequence[str]) -> Deferred[dict[str, int]]:
        """
        See L{IConversationStore.groupCounts}.
        """
        ids = list(userIds)
        return self._read("groupCounts", lambda txn: groupCounts_txn(txn, ids))

    def groupSummaries(self, userId: str) -> Deferred[list[GroupSummary]]:
        """
        See L{IConversationStore.groupSummaries}.
        """
        return self._read("groupSummaries", lambda txn: groupSummaries_txn(txn, userId))

    def readCursors(self, conversation: str) -> Deferred[dict[str, int]]:
        """
        See L{IConversationStore.readCursors}.
        """
        return self._read("readCursors", lambda txn: readCursors_txn(txn, conversation))

    def moveReadCursor(self, conversation: str, userId: str, upToSeq: int) -> Deferred[tuple[int, bool]]:
        """
        See L{IConversationStore.moveReadCursor}.
        """
        return self._write("moveReadCursor", lambda txn: moveReadCursor_txn(txn, conversation, userId, upToSeq))

    def createRoom(self, room: RoomRecord) -> Deferred[tuple[RoomRecord, bool]]:
        """
        See L{IConversationStore.createRoom}.
        """
        return self._write("createRoom", lambda txn: createRoom_txn(txn, room))

    def room(self, roomId: str) -> Deferred[RoomRecord | None]:
        """
        See L{IConversationStore.room}.
        """
        return self._read("room", lambda txn: room_txn(txn, roomId))

    def publicRooms(self, limit: int) -> Deferred[list[RoomRecord]]:
        """
        See L{IConversationStore.publicRooms}.
        """
        return self._read("publicRooms", lambda txn: publicRooms_txn(txn, limit))

    def roomCount(self, createdBy: str) -> Deferred[int]:
        """
        See L{IConversationStore.roomCount}.
        """
        return self._read("roomCount", lambda txn: roomCount_txn(txn, createdBy))
