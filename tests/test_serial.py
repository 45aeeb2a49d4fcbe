"""
Tests for L{crm_im.serial}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from crm_im.serial import KeyedOnce, KeyedSerializer


class KeyedSerializerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.serial = KeyedSerializer()
        self.log: list[str] = []
        self.gates: dict[str, Deferred[Any]] = {}

    def start(self, key: str, name: str) -> Deferred[str]:
        """
        A run under C{key} that logs its start and waits for its gate.
        """

        async def call() -> str:
            self.log.append(f"start {name}")
            gate: Deferred[Any] = Deferred()
            self.gates[name] = gate
            await gate
            self.log.append(f"end {name}")
            return name

        return Deferred.fromCoroutine(self.serial.run(key, call))

    def test_oneAtATimePerKey(self) -> None:
        """
        Runs under one key start in the order they asked, each once the
        previous one is over; another key's run is not held up.
        """
        first, second, third = self.start("g", "1"), self.start("g", "2"), self.start("g", "3")
        other = self.start("h", "x")
        self.assertEqual(self.log, ["start 1", "start x"])
        self.gates["1"].callback(None)
        self.assertEqual(self.successResultOf(first), "1")
        self.assertEqual(self.log[-1], "start 2")
        self.gates["2"].callback(None)
        self.gates["3"].callback(None)
        self.gates["x"].callback(None)
        self.assertEqual([self.successResultOf(d) for d in (second, third, other)], ["2", "3", "x"])
        self.assertEqual(self.log, ["start 1", "start x", "end 1", "start 2", "end 2", "start 3", "end 3", "end x"])
        self.assertEqual(len(self.serial), 0)

    def test_failureReleases(self) -> None:
        """
        A run that fails gives its failure to its caller and lets the next
        one start; no lock is kept once none runs or waits.
        """
        failing = self.start("g", "1")
        after = self.start("g", "2")
        self.assertEqual(len(self.serial), 1)
        self.gates["1"].errback(ValueError("no"))
        self.failureResultOf(failing, ValueError)
        self.gates["2"].callback(None)
        self.assertEqual(self.successResultOf(after), "2")
        self.assertEqual(len(self.serial), 0)


class KeyedOnceTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.once: KeyedOnce[str] = KeyedOnce()
        self.calls: list[str] = []
        self.gate: Deferred[str] = Deferred()

    def start(self, key: str) -> Deferred[str]:
        """
        A run under C{key} that counts its calls and ends with the gate.
        """

        async def call() -> str:
            self.calls.append(key)
            return await self.gate

        return self.once.run(key, call)

    def test_sharedResult(self) -> None:
        """
        Callers while a key's run is under way share its result; the run is
        called once; a caller after it is over starts another.
        """
        first, second = self.start("k"), self.start("k")
        self.assertEqual((self.calls, len(self.once)), (["k"], 1))
        self.gate.callback("done")
        self.assertEqual([self.successResultOf(d) for d in (first, second)], ["done", "done"])
        self.assertEqual(len(self.once), 0)
        self.gate = Deferred()
        self.start("k")
        self.assertEqual(self.calls, ["k", "k"])

    def test_sharedFailure(self) -> None:
        """
        Every caller of a run that fails gets its failure (not C{None}, as
        the second of two loads of one upload did).
        """
        first, second, third = self.start("k"), self.start("k"), self.start("k")
        self.gate.errback(ValueError("no"))
        for d in (first, second, third):
            self.failureResultOf(d, ValueError)
        self.assertEqual(len(self.once), 0)
