"""
Tests for L{crm_im.serial}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from crm_im.serial import KeyedSerializer


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
