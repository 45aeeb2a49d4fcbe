# -*- test-case-name: tests.test_push -*-
"""
L{PushDirectory}: which users have pushkeys and which groups they muted,
in memory, so that the message path decides whom to notify without a
read: a 1:1 message to a user with no pushkey costs one set look-up.
Loaded from the store at start, kept up to date by the push handlers and
the sender (a pushkey the gateway rejected).
"""

from __future__ import annotations

from typing import Callable

from ..storage.outbox import PushLoad


class PushDirectory:
    """
    @ivar users: every user with at least one pushkey.
    @ivar mutes: C{(userId, groupId)} of every muted group.
    @ivar loaded: whether L{load} ran (before it the sets are partial).
    """

    def __init__(self) -> None:
        self.users: set[str] = set()
        self.mutes: set[tuple[str, str]] = set()
        self.loaded = False
        #: told of each change made in this process (a cluster node tells
        #: the other nodes, which L{apply} it)
        self.changeListeners: list[Callable[[list[object]], object]] = []

    def load(self, loaded: PushLoad) -> None:
        """
        Take the state read at start (added to what registrations made
        meanwhile).
        """
        self.users.update(loaded.users)
        self.mutes.update(loaded.mutes)
        self.loaded = True

    def keysLeft(self, userId: str, remaining: int) -> None:
        """
        C{userId} has C{remaining} pushkeys now.
        """
        self.apply(["keys", userId, remaining])
        for listener in self.changeListeners:
            listener(["keys", userId, remaining])

    def setMuted(self, userId: str, groupId: str, muted: bool) -> None:
        """
        Record a C{group:mute}.
        """
        self.apply(["mute", userId, groupId, muted])
        for listener in self.changeListeners:
            listener(["mute", userId, groupId, muted])

    def apply(self, change: list[object]) -> None:
        """
        Apply a change (made here, or told by another node) without
        telling the listeners: C{["keys", userId, remaining]} or
        C{["mute", userId, groupId, muted]}.
        """
        if change[0] == "keys" and len(change) == 3:
            _, userId, remaining = change
            if isinstance(remaining, int) and remaining > 0:
                self.users.add(str(userId))
            else:
                self.users.discard(str(userId))
        elif change[0] == "mute" and len(change) == 4:
            _, userId, groupId, muted = change
            if muted:
                self.mutes.add((str(userId), str(groupId)))
            else:
                self.mutes.discard((str(userId), str(groupId)))
