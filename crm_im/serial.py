# -*- test-case-name: tests.test_serial -*-
"""
One change at a time per key: a group's changes (L{crm_im.im.groups}), a
user's admission of a file against their quota (L{crm_im.uploads}), a
blob's references and bytes (L{crm_im.storage.files}); and one run at a
time per key whose outcome every caller meanwhile shares (L{KeyedOnce}:
an upload's state loaded from disk, an image's thumbnail made); and what
is being written per key, for bounds checked against what is stored
(L{InFlight}: a user's groups joined, rooms created).

A handler that decides on state it read and then writes its decision
(a group's members, roles, owner) is a check-then-write: two such changes
to one group that interleave at their awaits each decide on the state
from before the other, and both are written (two owners, a member past
the group's bound, a member added by an admin removed meanwhile). Run
through L{KeyedSerializer} under the group's id, each change reads the
state the previous one left.
"""

from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from typing import Any, Awaitable, Callable, Generic, Iterable, Iterator, TypeVar

from twisted.internet.defer import Deferred, DeferredLock
from twisted.python.failure import Failure

T = TypeVar("T")


class KeyedSerializer:
    """
    Runs coroutines one at a time per key, in the order they asked; the
    lock of a key lives only while a run holds it or waits for it, so the
    serializer holds as many locks as keys in use.
    """

    def __init__(self) -> None:
        self._locks: dict[str, DeferredLock] = {}

    def __len__(self) -> int:
        """
        The keys in use.
        """
        return len(self._locks)

    async def run(self, key: str, call: Callable[[], Awaitable[T]]) -> T:
        """
        Await C{call()} once every earlier run under C{key} is over.
        """
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = DeferredLock()
        await lock.acquire()
        try:
            return await call()
        finally:
            # (release hands the lock to the next waiter, if any, whose run
            # may go on and end in this call)
            lock.release()
            if not lock.locked and self._locks.get(key) is lock:
                del self._locks[key]


class KeyedOnce(Generic[T]):
    """
    Runs a coroutine once per key at a time: a caller that asks while the
    key's run is under way gets that run's outcome (its result or its
    failure, every caller alike) rather than a run of its own.
    """

    def __init__(self) -> None:
        self._waiting: dict[str, list[Deferred[T]]] = {}

    def __len__(self) -> int:
        """
        The keys whose run is under way.
        """
        return len(self._waiting)

    def run(self, key: str, call: Callable[[], Awaitable[T]]) -> Deferred[T]:
        """
        The outcome of C{call()}, or of the run under C{key} already under
        way (C{call} is then not called).
        """
        result: Deferred[T] = Deferred()
        waiting = self._waiting.get(key)
        if waiting is not None:
            waiting.append(result)
            return result
        self._waiting[key] = [result]

        async def once() -> T:
            return await call()

        Deferred.fromCoroutine(once()).addBoth(self._done, key)
        return result

    def _done(self, outcome: Any, key: str) -> None:
        for waiter in self._waiting.pop(key):
            if isinstance(outcome, Failure):
                waiter.errback(outcome)
            else:
                waiter.callback(outcome)


class InFlight:
    """
    How many things are being written per key: a bound checked against a
    stored count (a user's groups, rooms) counts these too, or requests at
    once each read the count from before the others and all pass it.
    """

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()

    def __getitem__(self, key: str) -> int:
        return self._counts[key]

    def __len__(self) -> int:
        """
        The keys with something in flight.
        """
        return len(self._counts)

    @contextmanager
    def holding(self, keys: Iterable[str]) -> Iterator[None]:
        """
        Count one more in flight for each of C{keys} while the block runs.
        """
        held = list(keys)
        counts = self._counts
        counts.update(held)
        try:
            yield
        finally:
            counts.subtract(held)
            for key in held:
                if counts[key] <= 0:
                    del counts[key]
