# -*- test-case-name: tests.test_push -*-
"""
L{PushDirectory}: which users have pushkeys and which groups they muted,
in memory, so that the message path decides whom to notify without a
read: a 1:1 message to a user with no pushkey costs one set look-up.
Loaded from the store at start, kept up to date by the push handlers and
the sender (a pushkey the gateway rejected).
"""

from __future__ import annotations

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
        if remaining > 0:
            self.users.add(userId)
        else:
            self.users.discard(userId)

    def setMuted(self, userId: str, groupId: str, muted: bool) -> None:
        """
        Record a C{group:mute}.
        """
        if muted:
            self.mutes.add((userId, groupId))
        else:
            self.mutes.discard((userId, groupId))
