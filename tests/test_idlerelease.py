"""
Tests for L{crm_im.idlerelease}: memory given back once per quiet spell,
on a L{task.Clock}.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from crm_im.idlerelease import IdleMemoryRelease

QUIET = 10.0


class Harness:
    """
    An L{IdleMemoryRelease} on a clock, with an activity count the test
    moves and release steps it records.
    """

    def __init__(self) -> None:
        self.clock = Clock()
        self.count = 0
        self.calls: list[str] = []
        self.cachesResult: Deferred[None] | None = None
        self.settled = True
        self.release = IdleMemoryRelease(
            self.clock, lambda: self.count, self.releaseCaches, self.trimHeap, QUIET, lambda: self.settled
        )

    def releaseCaches(self) -> Deferred[None]:
        self.calls.append("caches")
        # The store's release is a transaction: activity, as far as the
        # count can tell.
        self.count += 1
        if self.cachesResult is not None:
            return self.cachesResult
        return succeed(None)

    def trimHeap(self) -> Deferred[object]:
        self.calls.append("trim")
        return succeed(True)

    def busy(self, ticks: int) -> None:
        """
        Activity in each of C{ticks} intervals.
        """
        for _ in range(ticks):
            self.count += 3
            self.clock.advance(QUIET)


class IdleMemoryReleaseTests(SynchronousTestCase):
    """
    L{IdleMemoryRelease}.
    """

    def setUp(self) -> None:
        self.harness = Harness()
        self.release = self.harness.release
        self.release.startService()
        self.addCleanup(self._stop)

    def _stop(self) -> None:
        if self.release.running:
            self.release.stopService()

    def test_notWhileBusy(self) -> None:
        """
        While every interval has activity, nothing is released.
        """
        self.harness.busy(20)
        self.assertEqual(self.harness.calls, [])
        self.assertEqual(self.release.releases, 0)

    def test_afterQuietInterval(self) -> None:
        """
        A whole quiet interval after activity releases the store's caches,
        then the heap, once.
        """
        self.harness.busy(3)
        # The tick that ends the last busy interval saw the activity; the
        # next one sees none.
        self.harness.clock.advance(QUIET)
        self.assertEqual(self.harness.calls, ["caches", "trim"])
        self.assertEqual(self.release.releases, 1)

    def test_oncePerQuietSpell(self) -> None:
        """
        A server that stays quiet is not released again and again (its
        own transaction does not count as activity); new activity and
        quiet again release again.
        """
        self.harness.busy(1)
        self.harness.clock.advance(QUIET * 10)
        self.assertEqual(self.release.releases, 1)
        self.assertEqual(self.harness.calls, ["caches", "trim"])
        self.harness.busy(2)
        self.harness.clock.advance(QUIET)
        self.assertEqual(self.release.releases, 2)

    def test_waitsUntilSettled(self) -> None:
        """
        While what the spell left still waits for its own timer (the
        recovery log's last events), quiet intervals release nothing; the
        first tick after it is gone does.
        """
        self.harness.settled = False
        self.harness.busy(1)
        self.harness.clock.advance(QUIET * 5)
        self.assertEqual(self.harness.calls, [])
        self.harness.settled = True
        self.harness.clock.advance(QUIET)
        self.assertEqual(self.harness.calls, ["caches", "trim"])
        self.assertEqual(self.release.releases, 1)

    def test_neverBusy(self) -> None:
        """
        A server that never did anything since it started has nothing to
        give back.
        """
        self.harness.clock.advance(QUIET * 10)
        self.assertEqual(self.harness.calls, [])

    def test_oneAtATime(self) -> None:
        """
        While a release waits on the store, ticks start no other, and it
        counts once it finished.
        """
        self.harness.cachesResult = Deferred()
        self.harness.busy(1)
        self.harness.clock.advance(QUIET)
        self.harness.clock.advance(QUIET * 5)
        self.assertEqual(self.harness.calls, ["caches"])
        self.assertEqual(self.release.releases, 0)
        self.harness.cachesResult.callback(None)
        self.assertEqual(self.harness.calls, ["caches", "trim"])
        self.assertEqual(self.release.releases, 1)

    def test_failureLogged(self) -> None:
        """
        A release that fails (the store closing) is logged, not counted,
        and the next quiet spell tries again.
        """
        self.harness.cachesResult = fail(RuntimeError("store closed"))
        self.harness.busy(1)
        self.harness.clock.advance(QUIET)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.release.releases, 0)
        self.harness.cachesResult = None
        self.harness.busy(1)
        self.harness.clock.advance(QUIET)
        self.assertEqual(self.release.releases, 1)

    def test_failureAfterStopNotLogged(self) -> None:
        """
        A release that fails because the server stopped under it (the store
        closed) is not an error to log.
        """
        self.harness.cachesResult = Deferred()
        self.harness.busy(1)
        self.harness.clock.advance(QUIET)
        self.release.stopService()
        self.harness.cachesResult.errback(RuntimeError("store closed"))
        self.assertEqual(self.flushLoggedErrors(RuntimeError), [])
        self.assertEqual(self.release.releases, 0)

    def test_stopLeavesNoTimer(self) -> None:
        """
        Stopping the service cancels its timer.
        """
        self.assertEqual(len(self.harness.clock.getDelayedCalls()), 1)
        self.release.stopService()
        self.assertEqual(self.harness.clock.getDelayedCalls(), [])
