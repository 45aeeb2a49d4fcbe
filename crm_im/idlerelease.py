# -*- test-case-name: tests.test_idlerelease -*-
"""
Give back, once the server has gone quiet, the memory a busy spell took.

A burst of connections (a reconnect storm, the morning's logins, a churn of
short-lived clients) leaves memory that nothing live uses any more but that
stays in the process: SQLite's page cache, filled by the spell's writes up
to the store's C{cache_size}, and free space inside glibc's heaps, which it
keeps (L{crm_im.heap} raises its trim threshold so that a busy turn does not
hand memory back only to take it again in the next). A server that must
live in a container with a memory limit, or beside other services, should
shrink back after the spell, as jemalloc-based servers do once their pages
have been idle for a while.

L{IdleMemoryRelease} watches an activity count (sessions opened and closed,
store transactions) on the injected clock. When a whole C{quiet} interval
went by without activity after some activity, and once the recovery log
has let go of the spell's last events (its own timer, a window later;
what it frees is then given back too), it runs one release: the
store's cache release (SQLite's C{PRAGMA shrink_memory}, on the store's own
thread), then C{malloc_trim} on a pool thread; the reactor thread only
waits for them. Each costs about a millisecond (measured after 10,000
churn cycles: the shrink 0.1-0.5 ms, the trim 0.7-2 ms). Nothing is
released while the server is busy, and a quiet server is not trimmed again
and again: one release per quiet spell. A full garbage collection is not
part of it: with L{crm_im.threadpool}, the message path leaves no cyclic
garbage, and a collection of a server holding thousands of connections
would pause the reactor for tens of milliseconds.

Measured with C{bench/churn.py} (10,000 cycles after a 500-cycle warm-up):
RSS +21.5 % with neither, +10.3 % with this release alone, +3.5 to 4.5 %
with L{crm_im.threadpool} too (bench/README.md, "Churn").
"""

from __future__ import annotations

from typing import Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from .heap import residentBytes

#: seconds without activity after which memory is released
QUIET = 10.0


class IdleMemoryRelease(Service):
    """
    Release caches and free heap once per quiet spell (see the module
    docstring).

    @ivar releases: how many releases finished (a metric, and what the
        churn harness waits for before it reads the RSS).
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        activity: Callable[[], int],
        releaseCaches: Callable[[], Deferred[None]],
        trimHeap: Callable[[], Deferred[object]],
        quiet: float = QUIET,
        settled: Callable[[], bool] = lambda: True,
    ) -> None:
        """
        @param activity: a count that grows with the server's work.
        @param releaseCaches: drops the store's caches.
        @param trimHeap: gives the C allocator's free memory back to the
            system, off the reactor thread.
        @param quiet: seconds without activity that make a quiet spell.
        @param settled: whether what the spell left to expire on its own
            timer (the recovery log's events and detached sockets) is gone:
            the release waits for it, so that what that frees is given back
            too.
        """
        self.clock = clock
        self.activity = activity
        self.releaseCaches = releaseCaches
        self.trimHeap = trimHeap
        self.quiet = quiet
        self.settled = settled
        self.releases = 0
        self._seen = 0
        self._busySinceRelease = False
        self._releasing = False
        self._loop = LoopingCall(self._tick)
        self._loop.clock = clock

    def startService(self) -> None:
        super().startService()
        self._seen = self.activity()
        self._loop.start(self.quiet, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self._loop.running:
            self._loop.stop()

    def _tick(self) -> None:
        count = self.activity()
        if count != self._seen:
            self._seen = count
            self._busySinceRelease = True
        elif self._busySinceRelease and not self._releasing and self.settled():
            self._releasing = True
            ensureDeferred(self._release())

    async def _release(self) -> None:
        before = residentBytes()
        try:
            await self.releaseCaches()
            await self.trimHeap()
            self.releases += 1
            after = residentBytes()
            rss = "" if before is None or after is None else f", RSS {before / 2**20:.1f} -> {after / 2**20:.1f} MiB"
            self.log.info(
                "[内存] quiet for {quiet:g} s (release {n}): caches and free heap released{rss}",
                quiet=self.quiet,
                n=self.releases,
                rss=rss,
            )
        except Exception:
            if self.running:
                self.log.failure("releasing memory after a quiet spell")
        finally:
            self._releasing = False
            self._busySinceRelease = False
            # The release's own transaction is not activity.
            self._seen = self.activity()
