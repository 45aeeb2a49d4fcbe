"""
Tests for L{crm_im.engineio.timers.DeadlineWheel}.
"""

from __future__ import annotations

from typing import Hashable

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from crm_im.engineio.timers import DeadlineWheel

RESOLUTION = 0.25


class DeadlineWheelTests(SynchronousTestCase):
    """
    Tests for L{DeadlineWheel} on a L{Clock}.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.fired: list[tuple[Hashable, float]] = []
        self.wheel = DeadlineWheel(self.clock, self.record, RESOLUTION)

    def record(self, key: Hashable) -> None:
        """
        The wheel's callback: remember which key fired when.
        """
        self.fired.append((key, self.clock.seconds()))

    def firedKeys(self) -> list[Hashable]:
        """
        The keys fired so far, in order.
        """
        return [key for key, _ in self.fired]

    def advanceBy(self, seconds: float, step: float = 0.01) -> None:
        """
        Advance the clock in small steps (a real reactor runs the sweep
        whenever it is due, not in one jump).
        """
        target = self.clock.seconds() + seconds
        while self.clock.seconds() + step < target:
            self.clock.advance(step)
        self.clock.advance(target - self.clock.seconds())

    def assertFiresWithinOneResolution(self, startAt: float, setAt: float, delay: float) -> None:
        """
        A deadline of C{delay} set at C{setAt} on a wheel started at
        C{startAt} fires not before its time and at most one resolution
        late.
        """
        self.clock.advance(startAt)
        self.wheel.start()
        self.clock.advance(setAt - startAt)
        self.wheel.set("k", delay)
        deadline = setAt + delay
        self.advanceBy(delay + 3 * RESOLUTION)
        self.assertEqual(self.firedKeys(), ["k"], (startAt, setAt, delay))
        firedAt = self.fired[0][1]
        self.assertGreaterEqual(firedAt, deadline - 1e-9, (startAt, setAt, delay))
        self.assertLessEqual(firedAt, deadline + RESOLUTION + 1e-9, (startAt, setAt, delay))

    def test_notBeforeItsTime(self) -> None:
        """
        A deadline does not fire before its time.
        """
        self.wheel.start()
        self.wheel.set("k", 1.0)
        self.advanceBy(0.99)
        self.assertEqual(self.fired, [])
        self.assertIn("k", self.wheel)
        self.advanceBy(RESOLUTION + 0.02)
        self.assertEqual(self.firedKeys(), ["k"])
        self.assertNotIn("k", self.wheel)

    def test_atMostOneResolutionLate(self) -> None:
        """
        Wherever the wheel was started and the deadline set relative to the
        sweep, it fires in M{[deadline, deadline + resolution]}.
        """
        for startAt in [0.0, 0.1, 0.13, 0.2, 0.249]:
            for offset in [0.0, 0.05, 0.12, 0.24]:
                for delay in [0.1, 0.25, 0.5, 0.76, 1.0, 20.0]:
                    self.setUp()
                    self.assertFiresWithinOneResolution(startAt, startAt + offset, delay)

    def test_firesOnce(self) -> None:
        """
        A deadline fires once; its key is then forgotten.
        """
        self.wheel.start()
        self.wheel.set("k", 0.5)
        self.clock.pump([RESOLUTION] * 20)
        self.assertEqual(self.firedKeys(), ["k"])
        self.assertEqual(len(self.wheel), 0)

    def test_many(self) -> None:
        """
        Many keys fire, each at its own time, in deadline order across
        buckets.
        """
        self.wheel.start()
        for i in range(10):
            self.wheel.set(i, 10 - i)
        self.assertEqual(len(self.wheel), 10)
        self.clock.pump([RESOLUTION] * 50)
        self.assertEqual(self.firedKeys(), list(range(9, -1, -1)))

    def test_replace(self) -> None:
        """
        Setting a key again replaces its deadline: later or earlier.
        """
        self.wheel.start()
        self.wheel.set("later", 1.0)
        self.wheel.set("sooner", 5.0)
        self.wheel.set("later", 3.0)
        self.wheel.set("sooner", 0.5)
        self.assertEqual(len(self.wheel), 2)
        self.clock.pump([RESOLUTION] * 8)
        self.assertEqual(self.firedKeys(), ["sooner"])
        self.clock.pump([RESOLUTION] * 8)
        self.assertEqual(self.firedKeys(), ["sooner", "later"])
        self.assertGreaterEqual(self.fired[1][1], 3.0)

    def test_replaceSameSlot(self) -> None:
        """
        Setting a key to a deadline in the same bucket keeps one entry.
        """
        self.wheel.start()
        self.wheel.set("k", 1.0)
        self.wheel.set("k", 1.01)
        self.clock.pump([RESOLUTION] * 10)
        self.assertEqual(self.firedKeys(), ["k"])

    def test_cancel(self) -> None:
        """
        A cancelled deadline does not fire; cancelling an unknown key does
        nothing.
        """
        self.wheel.start()
        self.wheel.set("a", 1.0)
        self.wheel.set("b", 1.0)
        self.wheel.cancel("a")
        self.wheel.cancel("unknown")
        self.assertNotIn("a", self.wheel)
        self.clock.pump([RESOLUTION] * 10)
        self.assertEqual(self.firedKeys(), ["b"])

    def test_cancelFromCallback(self) -> None:
        """
        A callback may cancel another key due in the same sweep (which then
        does not fire) or in a later one.
        """
        fired = []

        def callback(key: Hashable) -> None:
            fired.append(key)
            for other in ["first", "second", "later"]:
                self.wheel.cancel(other)

        wheel = self.wheel = DeadlineWheel(self.clock, callback, RESOLUTION)
        wheel.start()
        wheel.set("first", 1.0)
        wheel.set("second", 1.0)
        wheel.set("later", 2.0)
        self.clock.pump([RESOLUTION] * 20)
        self.assertEqual(len(fired), 1)
        self.assertEqual(len(wheel), 0)

    def test_cancelSelfAndResetFromCallback(self) -> None:
        """
        A callback may set its own key again (a heartbeat re-arming itself)
        and cancel it.
        """
        fired = []

        def callback(key: Hashable) -> None:
            fired.append(self.clock.seconds())
            if len(fired) < 3:
                self.wheel.set(key, 1.0)
            self.wheel.cancel("other")

        self.wheel = DeadlineWheel(self.clock, callback, RESOLUTION)
        self.wheel.start()
        self.wheel.set("beat", 1.0)
        self.wheel.set("other", 2.5)
        self.clock.pump([RESOLUTION] * 40)
        self.assertEqual(len(fired), 3)
        self.assertEqual(len(self.wheel), 0)

    def test_failureDoesNotStopOthers(self) -> None:
        """
        A callback that raises is logged; the other keys of the sweep and
        later sweeps still fire.
        """
        fired = []

        def callback(key: Hashable) -> None:
            fired.append(key)
            if key == "bad":
                raise RuntimeError("boom")

        self.wheel = DeadlineWheel(self.clock, callback, RESOLUTION)
        self.wheel.start()
        for key in ["bad", "good1", "good2"]:
            self.wheel.set(key, 1.0)
        self.wheel.set("later", 2.0)
        self.clock.pump([RESOLUTION] * 20)
        self.assertEqual(sorted(fired), ["bad", "good1", "good2", "later"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertTrue(self.wheel._loop.running)

    def test_stop(self) -> None:
        """
        A stopped wheel fires nothing; its deadlines are kept.
        """
        self.wheel.start()
        self.wheel.set("k", 0.5)
        self.wheel.stop()
        self.wheel.stop()
        self.clock.pump([RESOLUTION] * 10)
        self.assertEqual(self.fired, [])
        self.assertIn("k", self.wheel)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_bigJump(self) -> None:
        """
        When the clock jumps past many buckets at once (a busy reactor),
        one sweep fires every deadline that passed.
        """
        self.wheel.start()
        for i in range(1, 6):
            self.wheel.set(i, i)
        self.clock.advance(100)
        self.assertEqual(sorted(self.firedKeys()), [1, 2, 3, 4, 5])  # type: ignore[type-var]

    def test_startTwice(self) -> None:
        """
        Starting a running wheel does nothing (one looping call).
        """
        self.wheel.start()
        self.wheel.start()
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)

    def test_setBeforeStart(self) -> None:
        """
        Deadlines set before the wheel starts, and already passed when it
        does, fire at its first sweep.
        """
        self.wheel.set("early", 1.0)
        self.clock.advance(5)
        self.wheel.start()
        self.clock.advance(RESOLUTION)
        self.assertEqual(self.firedKeys(), ["early"])

    def test_zeroDelayFromCallback(self) -> None:
        """
        A key set again from its own callback with no delay is due at once;
        it fires again, but a sweep ends (a callback cannot loop forever).
        """
        fired = []

        def callback(key: Hashable) -> None:
            fired.append(self.clock.seconds())
            self.wheel.set(key, 0)

        self.wheel = DeadlineWheel(self.clock, callback, RESOLUTION)
        self.wheel.start()
        self.wheel.set("k", 0)
        self.clock.pump([RESOLUTION] * 3)
        self.assertTrue(3 <= len(fired) <= 6, fired)
        self.assertEqual(sorted(set(fired)), [0.25, 0.5, 0.75])
