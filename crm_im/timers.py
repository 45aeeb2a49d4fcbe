# -*- test-case-name: tests.test_timers -*-
"""
Deadlines for many keys (sessions, users, sockets) on one timer.

A server with tens of thousands of sessions must not keep one
C{IDelayedCall} per session per timer. L{DeadlineHeap} keeps every deadline
in one binary heap and arms exactly one C{IDelayedCall} on the injected
clock, for the earliest deadline: a deadline fires when it is due (never
early, and late only by the reactor's own latency or, when many deadlines
crowd together, by at most C{precision}), whatever the delays in use.

This module is neutral: the Engine.IO layer, presence and the token checks
all use it, and it knows none of them.
"""

from __future__ import annotations

import heapq
from itertools import count
from typing import Callable, Hashable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

#: One heap entry: C{(deadline, sequence, key)}; the sequence keeps equal
#: deadlines in the order they were set and spares comparing keys. An entry
#: is live while it is the one its key maps to (replaced and cancelled ones
#: are dropped lazily when they reach the top of the heap).
_Entry = tuple[float, int, Hashable]


class DeadlineHeap:
    """
    A set of keyed deadlines on one clock.

    Each key has at most one deadline; setting it again replaces it. When a
    deadline passes, C{callback(key)} is called once.

    Setting a deadline arms the timer: there is nothing to start. L{stop}
    (when the owner shuts down) keeps the deadlines but fires none until
    L{start}.

    @ivar precision: when the next deadline is closer than this to the end
        of a sweep, the timer waits this long instead (deadlines then fire
        together, at most this late): a bound on wake-ups per second when
        many deadlines crowd together.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        callback: Callable[[Hashable], object],
        precision: float = 0.002,
    ) -> None:
        """
        @param clock: the time source and scheduler.
        @param callback: called with each key whose deadline has passed.
        @param precision: see L{precision}.
        """
        self._clock = clock
        self._callback = callback
        self.precision = precision
        self._heap: list[_Entry] = []
        self._entryOf: dict[Hashable, _Entry] = {}
        self._sequence = count()
        self._call: IDelayedCall | None = None
        self._armedFor = 0.0
        self._stopped = False
        self._sweeping = False

    def __len__(self) -> int:
        return len(self._entryOf)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._entryOf

    def start(self) -> None:
        """
        Fire deadlines again after L{stop} (deadlines that passed meanwhile
        fire at once). A new heap is already running.
        """
        self._stopped = False
        self._arm()

    def stop(self) -> None:
        """
        Fire nothing until L{start}; deadlines are kept.
        """
        self._stopped = True
        self._disarm()

    def deadline(self, key: Hashable) -> float | None:
        """
        When C{key} fires (on the clock's scale), or C{None}.
        """
        entry = self._entryOf.get(key)
        return None if entry is None else entry[0]

    def set(self, key: Hashable, delay: float) -> None:
        """
        Make C{key} fire C{delay} seconds from now (replacing any deadline
        it had).
        """
        when = self._clock.seconds() + delay
        entry = (when, next(self._sequence), key)
        self._entryOf[key] = entry
        heap = self._heap
        heapq.heappush(heap, entry)
        # Replaced and cancelled entries stay in the heap until they reach
        # its top; rebuild it before they outnumber the live ones.
        if len(heap) > 2 * len(self._entryOf) + 64:
            self._compact()
        if not self._sweeping and (self._call is None or when < self._armedFor):
            self._arm()

    def cancel(self, key: Hashable) -> None:
        """
        Forget C{key}'s deadline, if it has one.
        """
        if self._entryOf.pop(key, None) is not None and not self._entryOf:
            self._heap.clear()
            self._disarm()

    def _compact(self) -> None:
        heap = list(self._entryOf.values())
        heapq.heapify(heap)
        self._heap = heap

    def _disarm(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()

    def _arm(self) -> None:
        """
        Point the one delayed call at the earliest live deadline.
        """
        if self._stopped:
            return
        heap = self._heap
        entryOf = self._entryOf
        while heap and entryOf.get(heap[0][2]) is not heap[0]:
            heapq.heappop(heap)
        if not heap:
            self._disarm()
            return
        when = heap[0][0]
        now = self._clock.seconds()
        delay = max(0.0, when - now)
        call = self._call
        if call is not None and call.active():
            if when == self._armedFor:
                return
            call.reset(delay)
        else:
            self._call = self._clock.callLater(delay, self._sweep)
        self._armedFor = when

    def _sweep(self) -> None:
        # Fire every key due now; keys set again from a callback with no
        # delay wait for the next sweep (a callback cannot loop forever).
        self._call = None
        now = self._clock.seconds()
        heap = self._heap
        entryOf = self._entryOf
        due = []
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            key = entry[2]
            if entryOf.get(key) is entry:
                due.append((key, entry))
        self._sweeping = True
        try:
            for key, entry in due:
                # An earlier callback of this sweep may have cancelled or
                # replaced it.
                if entryOf.get(key) is not entry:
                    continue
                del entryOf[key]
                try:
                    self._callback(key)
                except Exception:
                    self.log.failure("deadline callback for {key!r}", key=key)
        finally:
            self._sweeping = False
        if not entryOf:
            heap.clear()
            return
        if self._stopped:
            return
        # Re-arm, no sooner than precision from now.
        while heap and entryOf.get(heap[0][2]) is not heap[0]:
            heapq.heappop(heap)
        if not heap:
            return
        when = heap[0][0]
        # (one reading of the clock: another thread may hold the GIL
        # between two, and a second, later reading past the deadline would
        # make a negative delay, which the reactor refuses: no sweep would
        # be armed and every deadline of this heap would stall)
        now = self._clock.seconds()
        self._armedFor = max(when, now + self.precision)
        self._call = self._clock.callLater(self._armedFor - now, self._sweep)


#: The name the earlier fixed-step wheel had, kept for its callers.
DeadlineWheel = DeadlineHeap
