# -*- test-case-name: tests.test_push_storage -*-
"""
L{MemoryPushStore}: pushkeys, mutes and the push outbox in dicts, the fake
behind L{crm_im.storage.memory.MemoryMessageStore}'s L{IPushStore}
methods. Same semantics as L{crm_im.storage.outbox}; every L{Deferred} has
already fired.
"""

from __future__ import annotations

from typing import Sequence

from twisted.internet.defer import Deferred, succeed

from .interface import StoredMessage, groupConversation
from .outbox import MAX_UNREAD, PLAN_ROWS, Pushkey, PushLoad, PushPlan, Registered, stillUnread


class MemoryPushStore:
    """
    Pushkeys, mutes and the outbox in dicts.
    """

    messages: dict[int, StoredMessage]

    def __init__(self) -> None:
        self.pushkeys: dict[str, Pushkey] = {}
        self.mutes: set[tuple[str, str]] = set()
        #: C{(userId, seq) -> createdAt}
        self.outbox: dict[tuple[str, int], int] = {}

    def _groupCursors(self, userId: str) -> tuple[dict[str, int], dict[str, str]]:
        """
        The user's read cursor and the name of each group they are in.
        """
        cursors: dict[str, int] = {}
        names: dict[str, str] = {}
        for groupId, kept in getattr(self, "_groups", {}).items():
            if userId in kept.members and not kept.dissolved:
                cursors[groupId] = getattr(self, "_cursors", {}).get(groupConversation(groupId), {}).get(userId, 0)
                names[groupId] = kept.record.name
        return cursors, names

    def _keysOf(self, userId: str) -> list[Pushkey]:
        return sorted((k for k in self.pushkeys.values() if k.userId == userId), key=lambda k: (k.createdAt, k.pushkey))

    def registerPushkey(self, key: Pushkey, maxPerUser: int) -> Deferred[Registered]:
        """
        See L{IPushStore.registerPushkey}.
        """
        previous = self.pushkeys.pop(key.pushkey, None)
        self.pushkeys[key.pushkey] = key
        keys = self._keysOf(key.userId)
        evicted = 0
        if maxPerUser and len(keys) > maxPerUser:
            for old in [k for k in keys if k.pushkey != key.pushkey][: len(keys) - maxPerUser]:
                del self.pushkeys[old.pushkey]
                evicted += 1
        movedFrom = previous.userId if previous is not None and previous.userId != key.userId else None
        remaining = len(self._keysOf(movedFrom)) if movedFrom is not None else 0
        return succeed(Registered(movedFrom, remaining, evicted))

    def unregisterPushkey(self, userId: str, pushkey: str) -> Deferred[int]:
        """
        See L{IPushStore.unregisterPushkey}.
        """
        key = self.pushkeys.get(pushkey)
        if key is not None and key.userId == userId:
            del self.pushkeys[pushkey]
        return succeed(len(self._keysOf(userId)))

    def setMute(self, userId: str, groupId: str, muted: bool) -> Deferred[None]:
        """
        See L{IPushStore.setMute}.
        """
        if muted:
            self.mutes.add((userId, groupId))
        else:
            self.mutes.discard((userId, groupId))
        return succeed(None)

    def forgetMutes(self, groupId: str, userIds: Sequence[str]) -> Deferred[None]:
        """
        See L{IPushStore.forgetMutes}.
        """
        self.mutes.difference_update((userId, groupId) for userId in userIds)
        return succeed(None)

    def loadPush(self) -> Deferred[PushLoad]:
        """
        See L{IPushStore.loadPush}.
        """
        byUser: dict[str, tuple[int, int]] = {}
        for (userId, _), createdAt in self.outbox.items():
            oldest, rows = byUser.get(userId, (createdAt, 0))
            byUser[userId] = (min(oldest, createdAt), rows + 1)
        return succeed(
            PushLoad(
                frozenset(k.userId for k in self.pushkeys.values()),
                frozenset(self.mutes),
                [(userId, oldest, rows) for userId, (oldest, rows) in sorted(byUser.items())],
            )
        )

    def enqueuePush(self, userId: str, seq: int, createdAt: int) -> Deferred[None]:
        """
        See L{IPushStore.enqueuePush}.
        """
        self.outbox.setdefault((userId, seq), createdAt)
        return succeed(None)

    def _enqueueStored(self, stored: StoredMessage, userIds: Sequence[str]) -> None:
        """
        The outbox rows of a message just stored (the memory store's
        "same transaction").
        """
        for userId in userIds:
            self.outbox.setdefault((userId, stored.seq), stored.serverTimestamp)

    def pushPlan(self, userId: str) -> Deferred[PushPlan | None]:
        """
        See L{IPushStore.pushPlan}.
        """
        rows = sorted((seq, at) for (user, seq), at in self.outbox.items() if user == userId)[:PLAN_ROWS]
        if not rows:
            return succeed(None)
        cursors, names = self._groupCursors(userId)
        messages = [self.messages[seq] for seq, _ in rows if seq in self.messages]
        notifiable = [m for m in messages if stillUnread(m, userId, cursors)]
        keys = self._keysOf(userId)
        unread = 0
        if notifiable and keys:
            unread = sum(1 for m in self.messages.values() if m.toId == userId and not m.delivered)
            for groupId, cursor in cursors.items():
                conversation = groupConversation(groupId)
                unread += sum(
                    1
                    for m in self.messages.values()
                    if m.conversation == conversation and m.seq > cursor and m.fromId != userId and m.type != "system"
                )
        return succeed(
            PushPlan(
                userId=userId,
                upToSeq=rows[-1][0],
                rows=len(rows),
                oldestAt=min(at for _, at in rows),
                messages=notifiable,
                unread=min(unread, MAX_UNREAD),
                pushkeys=keys,
                groupNames={m.groupId: names[m.groupId] for m in notifiable if m.groupId in names},
            )
        )

    def finishPush(self, userId: str, upToSeq: int, rejected: Sequence[str]) -> Deferred[tuple[int, int]]:
        """
        See L{IPushStore.finishPush}.
        """
        done = [key for key in self.outbox if key[0] == userId and key[1] <= upToSeq]
        for key in done:
            del self.outbox[key]
        for pushkey in rejected:
            found = self.pushkeys.get(pushkey)
            if found is not None and found.userId == userId:
                del self.pushkeys[pushkey]
        return succeed((len(done), len(self._keysOf(userId))))

    def trimOutbox(self, maxRows: int) -> Deferred[int]:
        """
        See L{IPushStore.trimOutbox}.
        """
        excess = len(self.outbox) - maxRows
        if excess <= 0:
            return succeed(0)
        cutoff = sorted(seq for _, seq in self.outbox)[excess - 1]
        gone = [key for key in self.outbox if key[1] <= cutoff]
        for key in gone:
            del self.outbox[key]
        return succeed(len(gone))
