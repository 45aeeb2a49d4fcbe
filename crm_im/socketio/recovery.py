# -*- test-case-name: tests.test_sio_recovery -*-
"""
Connection state recovery (Socket.IO 4.6+), the bookkeeping half.

With recovery on, the server gives each socket a private session id
(C{pid}) in its CONNECT answer and appends an offset to every event it
emits without an acknowledgement; socket.io-client remembers both and, when
it reconnects, sends them in its CONNECT. L{RecoveryLog} keeps what that
needs for C{window} seconds: the events emitted (once per emit, whatever
the number of recipients, with whom they were for) and the state of each
socket that went away for a reason worth recovering from (its sid, rooms
and application data). L{SocketIOServer} asks it, on such a CONNECT, for
the socket to restore and the events it missed.

It is data on an injected clock, with no I/O. Expired entries are dropped
as new ones come in and when looked up, and by one timer of its own, due a
quarter of the window after the oldest entry ends: without it, a server
gone quiet would keep the last window's events (their encoded frames) and
detached sockets until the next event, however long that takes
(bench/README.md, "Churn"). The quarter window of slack makes a busy
server's timer fire at most four times a window, not once per event.
"""

from __future__ import annotations

import secrets
from collections import deque
from typing import Any, Iterable

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from zope.interface import Attribute, Interface, implementer

#: The disconnect reasons a client can recover from: the connection broke
#: or the server went away; not a deliberate disconnect by either side.
RECOVERABLE_REASONS = frozenset(
    ["transport error", "transport close", "forced close", "ping timeout", "server shutting down"]
)


@attrs.frozen
class DetachedSocket:
    """
    A socket that went away and may come back.

    @ivar firstOffset: the last offset issued before it connected: with no
        offset from the client, it missed everything logged after this.
    """

    pid: str
    sid: str
    namespace: str
    rooms: frozenset[str]
    data: Any
    firstOffset: int
    detachedAt: float


@attrs.frozen
class Restored:
    """
    What L{RecoveryLog.restore} gives back: the socket and, in order, the
    frames of the events it missed.
    """

    socket: DetachedSocket
    missed: list[Any]


class IConnectionRecovery(Interface):
    """
    Where L{SocketIOServer} keeps what connection state recovery needs.
    L{RecoveryLog} keeps it in memory; an application that can rebuild
    missed events from its own storage (so that recovery survives a
    restart, or spans the nodes of a cluster) may provide its own.
    """

    lastOffset = Attribute("The offset of the latest event issued (an C{int}).")

    def newPid() -> str:
        """
        A new private session id for a socket.
        """

    def nextOffset() -> int:
        """
        Reserve the offset of the next event.
        """

    def record(offset: int, namespace: str, to: Any, skipSid: str | None, frames: Any) -> None:
        """
        Keep the event C{offset} (its encoded C{frames}) emitted to C{to}
        (C{None}: everyone; a sid or room; several) in C{namespace}.
        """

    def detach(pid: str, sid: str, namespace: str, rooms: Iterable[str], data: Any, firstOffset: int) -> None:
        """
        Keep the state of a socket that went away for a recoverable reason.
        """

    def restore(pid: str, namespace: str, offset: str | None) -> "Restored | None | Deferred[Restored | None]":
        """
        The socket C{pid} to restore and the frames it missed after
        C{offset}, or C{None}; or a L{Deferred} firing with either, for
        state kept in storage (the CONNECT waits for it).
        """


class _Entry:
    __slots__ = ("offset", "at", "namespace", "to", "skipSid", "frames")

    def __init__(
        self, offset: int, at: float, namespace: str, to: Any, skipSid: str | None, frames: Any
    ) -> None:
        self.offset = offset
        self.at = at
        self.namespace = namespace
        self.to = to
        self.skipSid = skipSid
        self.frames = frames

    def reaches(self, namespace: str, sid: str, rooms: frozenset[str]) -> bool:
        if namespace != self.namespace or sid == self.skipSid:
            return False
        to = self.to
        if to is None:
            return True
        if isinstance(to, str):
            return to == sid or to in rooms
        return any(name == sid or name in rooms for name in to)


@implementer(IConnectionRecovery)
class RecoveryLog:
    """
    The events and detached sockets of the last C{window} seconds.

    @ivar window: seconds a detached socket may come back within, and
        events are kept for.
    @ivar maxEntries: the most events kept (the oldest go first); a client
        whose offset is older than the oldest kept is not recovered.
    """

    def __init__(self, clock: Any, window: float, maxEntries: int = 100_000) -> None:
        self._clock = clock
        self.window = window
        self.maxEntries = maxEntries
        self._entries: deque[_Entry] = deque()
        self._lastOffset = 0
        # Every offset up to this one may have been dropped.
        self._droppedUpTo = 0
        self._detached: dict[str, DetachedSocket] = {}
        self._detachedOrder: deque[DetachedSocket] = deque()
        # Due a quarter window after the oldest entry or detached socket
        # ends (None: nothing kept, or stopped).
        self._expiry: IDelayedCall | None = None
        self._stopped = False

    def start(self) -> None:
        """
        Expire entries on time again after L{stop} (a new log needs no
        start: keeping an entry arms the timer).
        """
        self._stopped = False
        self._armExpiry()

    def stop(self) -> None:
        """
        The server stops: no timer outlives it (the entries stay).
        """
        self._stopped = True
        if self._expiry is not None:
            if self._expiry.active():
                self._expiry.cancel()
            self._expiry = None

    @property
    def lastOffset(self) -> int:
        """
        The offset of the latest event logged (0 before any).
        """
        return self._lastOffset

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def isEmpty(self) -> bool:
        """
        Nothing is kept: no event, no detached socket (so no timer either).
        """
        return not self._entries and not self._detachedOrder

    @staticmethod
    def newPid() -> str:
        """
        A new private session id (never shown to other clients).
        """
        return secrets.token_urlsafe(15)

    def nextOffset(self) -> int:
        """
        Reserve the offset of the next event.
        """
        self._lastOffset += 1
        return self._lastOffset

    def record(
        self, offset: int, namespace: str, to: str | Iterable[str] | None, skipSid: str | None, frames: Any
    ) -> None:
        """
        Log the event C{offset} (its encoded C{frames}) emitted to C{to} in
        C{namespace}.
        """
        if to is not None and not isinstance(to, str):
            to = frozenset(to)
        now = self._clock.seconds()
        self._entries.append(_Entry(offset, now, namespace, to, skipSid, frames))
        self._expire(now)

    def detach(self, pid: str, sid: str, namespace: str, rooms: Iterable[str], data: Any, firstOffset: int) -> None:
        """
        Keep the state of a socket that went away for a recoverable reason.
        """
        now = self._clock.seconds()
        socket = DetachedSocket(pid, sid, namespace, frozenset(rooms), data, firstOffset, now)
        self._detached[pid] = socket
        self._detachedOrder.append(socket)
        self._expire(now)

    def restore(self, pid: str, namespace: str, offset: str | None) -> Restored | None:
        """
        The detached socket C{pid} of C{namespace} and the events it missed
        after C{offset} (the last one the client got; C{None} if it got
        none), or C{None} if it cannot be recovered: unknown, expired, or
        some events it may have missed are no longer kept. A socket is
        restored once.
        """
        self._expire(self._clock.seconds())
        socket = self._detached.get(pid)
        if socket is None or socket.namespace != namespace:
            return None
        if offset is None:
            since = socket.firstOffset
        elif offset.isdigit() and len(offset) < 16 and int(offset) <= self._lastOffset:
            since = int(offset)
        else:
            return None
        if since < self._droppedUpTo:
            return None
        del self._detached[pid]
        missed = [
            entry.frames
            for entry in self._entries
            if entry.offset > since and entry.reaches(namespace, socket.sid, socket.rooms)
        ]
        return Restored(socket, missed)

    def discard(self, pid: str) -> None:
        """
        The detached socket C{pid} may not come back (its user was kicked
        or banned meanwhile).
        """
        self._detached.pop(pid, None)

    def _expire(self, now: float) -> None:
        horizon = now - self.window
        entries = self._entries
        while entries and (entries[0].at <= horizon or len(entries) > self.maxEntries):
            self._droppedUpTo = entries.popleft().offset
        order = self._detachedOrder
        while order and order[0].detachedAt <= horizon:
            socket = order.popleft()
            if self._detached.get(socket.pid) is socket:
                del self._detached[socket.pid]
        # Restored ones stay in the order until they age out; bound it.
        if len(order) > 2 * len(self._detached) + 1024:
            self._detachedOrder = deque(s for s in order if self._detached.get(s.pid) is s)
        if self._expiry is None and not self._stopped:
            self._armExpiry()

    def _armExpiry(self) -> None:
        """
        Set the timer for a quarter window after the end of the oldest entry
        or detached socket, if any is kept.
        """
        if self._expiry is not None or self._stopped:
            return
        oldest: float | None = self._entries[0].at if self._entries else None
        if self._detachedOrder:
            detachedAt = self._detachedOrder[0].detachedAt
            oldest = detachedAt if oldest is None else min(oldest, detachedAt)
        if oldest is None:
            return
        delay = max(0.0, oldest + self.window - self._clock.seconds()) + self.window / 4
        self._expiry = self._clock.callLater(delay, self._expiryDue)

    def _expiryDue(self) -> None:
        self._expiry = None
        self._expire(self._clock.seconds())
