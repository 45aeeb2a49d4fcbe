# -*- test-case-name: tests.test_storage_conversations -*-
"""
L{MemoryConversationStore}: groups, rooms and read cursors in dicts, the
fake behind L{crm_im.storage.memory.MemoryMessageStore}'s
L{IConversationStore} methods. Same semantics as
L{crm_im.storage.conversations}; every L{Deferred} has already fired.
"""

from __future__ import annotations

import uuid
from typing import Sequence

import attrs
from twisted.internet.defer import Deferred, succeed

from .interface import (
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


@attrs.define
class _Group:
    record: GroupRecord
    members: dict[str, MemberRecord]
    former: set[str]
    dissolved: bool = False
    ordinal: int = 0


class MemoryConversationStore:
    """
    Groups, rooms and read cursors in dicts.
    """

    messages: dict[int, StoredMessage]

    def __init__(self) -> None:
        self._groups: dict[str, _Group] = {}
        self._groupByClientId: dict[tuple[str, str], str] = {}
        self._cursors: dict[str, dict[str, int]] = {}
        self._rooms: dict[str, RoomRecord] = {}
        self._roomByClientId: dict[tuple[str, str], str] = {}

    def _insert(self, msg: NewMessage) -> StoredMessage:
        raise NotImplementedError()

    def _conversationLastSeq(self, conversation: str) -> int:
        return max((seq for seq, m in self.messages.items() if m.conversation == conversation), default=0)

    def _state(self, group: _Group) -> GroupState:
        return GroupState(
            group.record,
            dict(group.members),
            frozenset(group.former),
            self._conversationLastSeq(groupConversation(group.record.id)),
        )

    def createGroup(
        self, group: GroupRecord, members: Sequence[MemberRecord], system: NewMessage
    ) -> Deferred[tuple[GroupState, bool, StoredMessage | None]]:
        """
        See L{IConversationStore.createGroup}.
        """
        if group.clientId is not None:
            existing = self._groupByClientId.get((group.createdBy, group.clientId))
            if existing is not None and not self._groups[existing].dissolved:
                return succeed((self._state(self._groups[existing]), False, None))
        if group.id in self._groups:
            group = attrs.evolve(group, id=str(uuid.uuid4()))
        kept = _Group(group, {}, set())
        for member in members:
            kept.ordinal += 1
            kept.members[member.userId] = attrs.evolve(member, order=kept.ordinal)
        self._groups[group.id] = kept
        if group.clientId is not None:
            self._groupByClientId[(group.createdBy, group.clientId)] = group.id
        stored = self._insert(attrs.evolve(system, groupId=group.id))
        return succeed((self._state(kept), True, stored))

    def group(self, groupId: str) -> Deferred[GroupState | None]:
        """
        See L{IConversationStore.group}.
        """
        kept = self._groups.get(groupId)
        return succeed(None if kept is None or kept.dissolved else self._state(kept))

    def changeGroup(self, change: GroupChange) -> Deferred[StoredMessage | None]:
        """
        See L{IConversationStore.changeGroup}.
        """
        kept = self._groups.get(change.groupId)
        if kept is None or kept.dissolved:
            return succeed(None)
        record = kept.record
        if change.name is not None:
            record = attrs.evolve(record, name=change.name)
        if change.avatar is not None:
            record = attrs.evolve(record, avatar=change.avatar or None)
        if change.ownerId is not None:
            record = attrs.evolve(record, ownerId=change.ownerId)
        kept.record = record
        if change.dissolve:
            kept.dissolved = True
            kept.former.update(kept.members)
            kept.members.clear()
            self._groupByClientId = {k: v for k, v in self._groupByClientId.items() if v != change.groupId}
        conversation = groupConversation(change.groupId)
        lastSeq = self._conversationLastSeq(conversation)
        for member in change.add:
            kept.ordinal += 1
            kept.members[member.userId] = attrs.evolve(member, order=kept.ordinal)
            kept.former.discard(member.userId)
            self._cursors.setdefault(conversation, {})[member.userId] = lastSeq
        for userId in change.remove:
            if kept.members.pop(userId, None) is not None:
                kept.former.add(userId)
        for userId, role in change.roles:
            if userId in kept.members:
                kept.members[userId] = attrs.evolve(kept.members[userId], role=role)
        return succeed(None if change.system is None else self._insert(change.system))

    def groupCounts(self, userIds: Sequence[str]) -> Deferred[dict[str, int]]:
        """
        See L{IConversationStore.groupCounts}.
        """
        counts = {userId: 0 for userId in userIds}
        for kept in self._groups.values():
            for userId in kept.members:
                if userId in counts:
                    counts[userId] += 1
        return succeed(counts)

    def groupSummaries(self, userId: str) -> Deferred[list[GroupSummary]]:
        """
        See L{IConversationStore.groupSummaries}.
        """
        from .conversations import MAX_UNREAD

        summaries = []
        for kept in self._groups.values():
            if userId not in kept.members:
                continue
            conversation = groupConversation(kept.record.id)
            messages = [m for m in self.messages.values() if m.conversation == conversation]
            readSeq = self._cursors.get(conversation, {}).get(userId, 0)
            unread = sum(1 for m in messages if m.seq > readSeq and m.fromId != userId)
            last = messages[-1] if messages else None
            summaries.append(
                GroupSummary(
                    kept.record,
                    len(kept.members),
                    0 if last is None else last.seq,
                    readSeq,
                    min(unread, MAX_UNREAD),
                    last,
                )
            )
        summaries.sort(key=lambda s: (s.lastSeq, s.group.createdAt), reverse=True)
        return succeed(summaries)

    def readCursors(self, conversation: str) -> Deferred[dict[str, int]]:
        """
        See L{IConversationStore.readCursors}.
        """
        return succeed(dict(self._cursors.get(conversation, {})))

    def moveReadCursor(self, conversation: str, userId: str, upToSeq: int) -> Deferred[tuple[int, bool]]:
        """
        See L{IConversationStore.moveReadCursor}.
        """
        cursors = self._cursors.setdefault(conversation, {})
        target = min(upToSeq, self._conversationLastSeq(conversation))
        current = cursors.get(userId, 0)
        if target <= current:
            return succeed((current, False))
        cursors[userId] = target
        return succeed((target, True))

    def createRoom(self, room: RoomRecord) -> Deferred[tuple[RoomRecord, bool]]:
        """
        See L{IConversationStore.createRoom}.
        """
        if room.clientId is not None:
            existing = self._roomByClientId.get((room.createdBy, room.clientId))
            if existing is not None:
                return succeed((self._rooms[existing], False))
        if room.id in self._rooms or self._conversationLastSeq(roomConversation(room.id)):
            # (a closed room's messages stay: see conversations.createRoom_txn)
            room = attrs.evolve(room, id=str(uuid.uuid4()))
        self._rooms[room.id] = room
        if room.clientId is not None:
            self._roomByClientId[(room.createdBy, room.clientId)] = room.id
        return succeed((room, True))

    def room(self, roomId: str) -> Deferred[RoomRecord | None]:
        """
        See L{IConversationStore.room}.
        """
        return succeed(self._rooms.get(roomId))

    def publicRooms(self, limit: int) -> Deferred[list[RoomRecord]]:
        """
        See L{IConversationStore.publicRooms}.
        """
        rooms = sorted((r for r in self._rooms.values() if r.public), key=lambda r: r.createdAt)
        return succeed(rooms[:limit])

    def roomCount(self, createdBy: str) -> Deferred[int]:
        """
        See L{IConversationStore.roomCount}.
        """
        return succeed(sum(1 for r in self._rooms.values() if r.createdBy == createdBy))
