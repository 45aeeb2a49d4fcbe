# -*- test-case-name: tests.test_eio_timers -*-
"""
Deadlines for many sessions, swept by one looping call.

A server with tens of thousands of sessions must not keep one
C{IDelayedCall} per session per timer: each costs memory and a heap entry.
Instead every deadline is a key in a bucket of a coarse wheel (one bucket
per C{resolution} milliseconds) and a single L{LoopingCall} on the injected
clock fires the buckets that are due. A deadline may fire up to one
resolution late, never early.
"""

from __future__ import annotations

from typing import Callable, Hashable

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger


class DeadlineWheel:
    """
    A set of keyed deadlines on one clock.

    Each key has at most one deadline; setting it again replaces it. When a
    deadline passes, C{callback(key)} is called once.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        callback: Callable[[Hashable], object],
        resolution: float = 0.25,
    ) -> None:
        """
        @param clock: the time source and scheduler.
        @param callback: called with each key whose deadline has passed.
        @param resolution: the bucket width in seconds.
        """
        self._clock = clock
        self._callback = callback
        self._resolution = resolution
        self._buckets: dict[int, set[Hashable]] = {}
        self._slotOf: dict[Hashable, int] = {}
        self._deadlineOf: dict[Hashable, float] = {}
        self._loop = LoopingCall(self._sweep)
        self._loop.clock = clock
        self._nextSlot = self._slot(clock.seconds())

    def _slot(self, when: float) -> int:
        return int(when / self._resolution)

    def start(self) -> None:
        """
        Start sweeping.
        """
        if not self._loop.running:
            self._loop.start(self._resolution, now=False)

    def stop(self) -> None:
        """
        Stop sweeping; deadlines are kept but no longer fire.
        """
        if self._loop.running:
            self._loop.stop()

    def __len__(self) -> int:
        return len(self._slotOf)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._slotOf

    def set(self, key: Hashable, delay: float) -> None:
        """
        Make C{key} fire C{delay} seconds from now (replacing any deadline
        it had).
        """
        deadline = self._clock.seconds() + delay
        # A bucket already swept would never be looked at again.
        slot = max(self._slot(deadline), self._nextSlot)
        self._deadlineOf[key] = deadline
        old = self._slotOf.get(key)
        if old == slot:
            return
        if old is not None:
            self._discardFromBucket(key, old)
        self._slotOf[key] = slot
        bucket = self._buckets.get(slot)
        if bucket is None:
            self._buckets[slot] = {key}
        else:
            bucket.add(key)

    def cancel(self, key: Hashable) -> None:
        """
        Forget C{key}'s deadline, if it has one.
        """
        old = self._slotOf.pop(key, None)
        if old is not None:
            del self._deadlineOf[key]
            self._discardFromBucket(key, old)

    def _discardFromBucket(self, key: Hashable, slot: int) -> None:
        bucket = self._buckets.get(slot)
        if bucket is not None:
            bucket.discard(key)
            if not bucket:
                del self._buckets[slot]

    def _sweep(self) -> None:
        # Each key is compared with its exact deadline, so the sweep (which
        # runs every resolution, in whatever phase the loop started) fires
        # it at the first sweep at or after it: never early, and at most one
        # resolution late. The current bucket is swept again next time for
        # the keys not yet due.
        seconds = self._clock.seconds()
        now = self._slot(seconds)
        slot = self._nextSlot
        while slot <= now:
            bucket = self._buckets.get(slot)
            if bucket:
                for key in list(bucket):
                    if self._slotOf.get(key) != slot or self._deadlineOf[key] > seconds:
                        continue
                    self.cancel(key)
                    try:
                        self._callback(key)
                    except Exception:
                        self.log.failure("deadline callback for {key!r}", key=key)
            if slot == now and self._buckets.get(slot):
                break
            slot += 1
        self._nextSlot = slot
