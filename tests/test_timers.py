"""
Tests for L{crm_im.timers.DeadlineHeap}.
"""

from __future__ import annotations

from typing import Any, Hashable

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from crm_im.timers import DeadlineHeap

PRECISION = 0.002


class DeadlineHeapTests(SynchronousTestCase):
    """
    Tests for L{DeadlineHeap} on a L{Clock}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.fired: list[tuple[Hashable, float]] = []
        self.heap = DeadlineHeap(self.clock, self.record, PRECISION)

    def record(self, key: Hashable) -> None:
        """
        The heap's callback: remember which key fired when.
        """
        self.fired.append((key, self.clock.seconds()))

    def firedKeys(self) -> list[Hashable]:
        """
        The keys fired so far, in order.
        """
        return [key for key, _ in self.fired]

    def runUntil(self, target: float) -> None:
        """
        Advance the clock the way a reactor does: straight to each delayed
        call that is due before C{target}, then to C{target}.
        """
        while True:
            calls = [c.getTime() for c in self.clock.getDelayedCalls() if c.active()]
            upcoming = [when for when in calls if when <= target]
            if not upcoming:
                break
            self.clock.advance(max(0.0, min(upcoming) - self.clock.seconds()))
        self.clock.advance(max(0.0, target - self.clock.seconds()))

    def test_exactlyOnTime(self) -> None:
        """
        A deadline fires exactly when it is due, whatever the delay and
        whenever it was set: there is no fixed tick to wait for (the old
        wheel fired up to 250 ms late, so a 300 ms heartbeat came at
        500 ms).
        """
        for setAt in [0.0, 0.1, 0.13, 0.249, 7.001]:
            for delay in [0.001, 0.1, 0.2, 0.3, 0.76, 20.0]:
                self.setUp()
                self.clock.advance(setAt)
                self.heap.set("k", delay)
                self.runUntil(setAt + delay - 0.0005)
                self.assertEqual(self.fired, [], (setAt, delay))
                self.runUntil(setAt + delay + 0.0001)
                self.assertEqual(self.firedKeys(), ["k"], (setAt, delay))
                self.assertAlmostEqual(self.fired[0][1], setAt + delay, delta=1e-6)

    def test_heartbeatCadence(self) -> None:
        """
        A key re-armed from its own callback every 300 ms fires every
        300 ms, without drifting.
        """

        def beat(key: Hashable) -> None:
            self.record(key)
            self.heap.set(key, 0.3)

        self.heap = DeadlineHeap(self.clock, beat, PRECISION)
        self.heap.set("session", 0.3)
        self.runUntil(3.0)
        times = [when for _, when in self.fired]
        self.assertEqual(len(times), 10)
        for i, when in enumerate(times, 1):
            self.assertAlmostEqual(when, 0.3 * i, delta=1e-6)

    def test_oneTimerForMany(self) -> None:
        """
        Ten thousand deadlines share one delayed call, armed for the
        earliest of them; they fire in deadline order.
        """
        for i in range(10000):
            self.heap.set(i, 10 + (i * 7919 % 10000) / 1000)
        calls = self.clock.getDelayedCalls()
        self.assertEqual(len(calls), 1)
        self.assertAlmostEqual(calls[0].getTime(), 10.0)
        self.runUntil(30)
        self.assertEqual(len(self.fired), 10000)
        times = [when for _, when in self.fired]
        self.assertEqual(times, sorted(times))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_crowdedDeadlinesBounded(self) -> None:
        """
        Deadlines closer together than the precision are fired together,
        at most one precision late: the wake-ups are bounded.
        """
        for i in range(100):
            self.heap.set(i, 1 + i * 0.0001)
        wakeUps = 0
        while self.clock.getDelayedCalls():
            wakeUps += 1
            call = self.clock.getDelayedCalls()[0]
            self.clock.advance(call.getTime() - self.clock.seconds())
        self.assertLessEqual(wakeUps, 7)
        self.assertEqual(len(self.fired), 100)
        for key, when in self.fired:
            deadline = 1 + key * 0.0001  # type: ignore[operator]
            self.assertGreaterEqual(when, deadline - 1e-9)
            self.assertLessEqual(when, deadline + PRECISION + 1e-9)

    def test_earlierDeadlineRearms(self) -> None:
        """
        A deadline sooner than the armed one moves the timer forward; the
        delayed call is still one.
        """
        self.heap.set("late", 5.0)
        self.heap.set("soon", 0.5)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0.5)
        self.assertEqual(self.firedKeys(), ["soon"])
        self.runUntil(5.0)
        self.assertEqual(self.firedKeys(), ["soon", "late"])

    def test_firesOnce(self) -> None:
        """
        A deadline fires once; its key is then forgotten and no timer is
        left behind.
        """
        self.heap.set("k", 0.5)
        self.runUntil(10)
        self.assertEqual(self.firedKeys(), ["k"])
        self.assertEqual(len(self.heap), 0)
        self.assertNotIn("k", self.heap)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_replace(self) -> None:
        """
        Setting a key again replaces its deadline: later or earlier.
        """
        self.heap.set("later", 1.0)
        self.heap.set("sooner", 5.0)
        self.heap.set("later", 3.0)
        self.heap.set("sooner", 0.5)
        self.assertEqual(len(self.heap), 2)
        self.assertEqual(self.heap.deadline("later"), 3.0)
        self.runUntil(2)
        self.assertEqual(self.fired, [("sooner", 0.5)])
        self.runUntil(4)
        self.assertEqual(self.fired, [("sooner", 0.5), ("later", 3.0)])

    def test_replaceOftenStaysSmall(self) -> None:
        """
        Replacing deadlines over and over (a PONG re-arms a session's
        heartbeat each time) does not grow the heap without bound.
        """
        for round in range(100):
            for key in range(10):
                self.heap.set(key, 100 + round)
        self.assertEqual(len(self.heap), 10)
        self.assertLessEqual(len(self.heap._heap), 2 * 10 + 64 + 1)

    def test_cancel(self) -> None:
        """
        A cancelled deadline does not fire; cancelling an unknown key does
        nothing; cancelling the last one leaves no timer.
        """
        self.heap.set("a", 1.0)
        self.heap.set("b", 1.0)
        self.heap.cancel("a")
        self.heap.cancel("unknown")
        self.assertNotIn("a", self.heap)
        self.assertIsNone(self.heap.deadline("a"))
        self.runUntil(2)
        self.assertEqual(self.firedKeys(), ["b"])
        self.heap.set("c", 1.0)
        self.heap.cancel("c")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancelFromCallback(self) -> None:
        """
        A callback may cancel another key due in the same sweep (which then
        does not fire) or in a later one.
        """
        fired = []

        def callback(key: Hashable) -> None:
            fired.append(key)
            for other in ["first", "second", "later"]:
                self.heap.cancel(other)

        heap = self.heap = DeadlineHeap(self.clock, callback)
        heap.set("first", 1.0)
        heap.set("second", 1.0)
        heap.set("later", 2.0)
        self.runUntil(5)
        self.assertEqual(fired, ["first"])
        self.assertEqual(len(heap), 0)

    def test_failureDoesNotStopOthers(self) -> None:
        """
        A callback that raises is logged; the other keys of the sweep and
        later ones still fire.
        """
        fired = []

        def callback(key: Hashable) -> None:
            fired.append(key)
            if key == "bad":
                raise RuntimeError("boom")

        self.heap = DeadlineHeap(self.clock, callback)
        for key in ["bad", "good1", "good2"]:
            self.heap.set(key, 1.0)
        self.heap.set("later", 2.0)
        self.runUntil(5)
        self.assertEqual(fired, ["bad", "good1", "good2", "later"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_stopAndStart(self) -> None:
        """
        A stopped heap fires nothing and holds no timer; its deadlines are
        kept, and those that passed fire as soon as it starts again.
        """
        self.heap.set("k", 0.5)
        self.heap.stop()
        self.heap.stop()
        self.heap.set("j", 0.6)
        self.clock.advance(10)
        self.assertEqual(self.fired, [])
        self.assertIn("k", self.heap)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.heap.start()
        self.heap.start()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(0)
        self.assertEqual(self.firedKeys(), ["k", "j"])

    def test_noStartNeeded(self) -> None:
        """
        A new heap fires without being started: an owner cannot forget to.
        """
        self.heap.set("k", 1.0)
        self.clock.advance(1.0)
        self.assertEqual(self.firedKeys(), ["k"])

    def test_bigJump(self) -> None:
        """
        When the clock jumps past many deadlines at once (a busy reactor),
        one sweep fires every deadline that passed, in order.
        """
        for i in range(1, 6):
            self.heap.set(i, i)
        self.clock.advance(100)
        self.assertEqual(self.firedKeys(), [1, 2, 3, 4, 5])

    def test_zeroDelayFromCallback(self) -> None:
        """
        A key set again from its own callback with no delay fires again, at
        the next sweep, one precision later: a callback cannot loop forever
        in one reactor turn.
        """
        fired = []

        def callback(key: Hashable) -> None:
            fired.append(self.clock.seconds())
            self.heap.set(key, 0)

        self.heap = DeadlineHeap(self.clock, callback, PRECISION)
        self.heap.set("k", 0)
        self.clock.advance(0)
        self.assertEqual(fired, [0.0])
        self.clock.advance(PRECISION)
        self.assertEqual(len(fired), 2)
        self.heap.cancel("k")


class _SlowReadingClock(Clock):
    """
    A L{Clock} whose every reading comes L{step} after the one before (as
    the reactor's does when another thread holds the GIL between two
    readings), and which refuses a negative delay, as the reactor does.
    """

    step = 0.0

    def seconds(self) -> float:
        self.rightNow += self.step
        return self.rightNow

    def callLater(self, delay: float, callable: Any, *args: object, **kw: object) -> Any:
        assert delay >= 0, f"{delay} is not greater than or equal to 0 seconds"
        return super().callLater(delay, callable, *args, **kw)


class SlowClockTests(SynchronousTestCase):
    """
    L{DeadlineHeap} on a clock that moves between two readings.
    """

    def test_rearmedAfterSlowSweep(self) -> None:
        """
        A sweep whose clock moves on by more than the precision between
        two readings still arms the next sweep: the later deadline fires.
        Reading the clock twice, the heap asked the reactor for a negative
        delay, which raised; no sweep was armed again and every later
        deadline stalled (seen with the push sender's timers).
        """
        clock = _SlowReadingClock()
        fired: list[Hashable] = []

        def callback(key: Hashable) -> None:
            fired.append(key)
            if key == "a":
                # (due at once: the next sweep, one precision later)
                heap.set("b", 0)

        heap = DeadlineHeap(clock, callback, PRECISION)
        heap.set("a", 1.0)
        heap.set("c", 5.0)
        clock.step = PRECISION * 3
        for _ in range(10):
            clock.advance(1.0)
        self.assertEqual(fired, ["a", "b", "c"])
