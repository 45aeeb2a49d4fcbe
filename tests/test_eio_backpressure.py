"""
Tests for L{crm_im.engineio.backpressure.ReadGate}: sessions that add work
past the high mark stop being read until the work in flight is back to the
low mark.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from crm_im.engineio.backpressure import ReadGate

from .test_eio_session import EngineTestMixin


class ReadGateTests(EngineTestMixin, SynchronousTestCase):
    """
    The gate pauses and resumes real sessions (with fake channels).
    """

    def test_pausePastHighResumeAtLow(self) -> None:
        """
        Up to C{high} pieces of work nobody is paused; the sessions adding
        more are paused (once each); they all resume when the count falls
        to C{low}, not before.
        """
        gate = ReadGate(high=3, low=1)
        (a, channelA), (b, channelB) = self.webSocketSession(), self.webSocketSession()
        for _ in range(3):
            gate.begin(a)
        self.assertTrue(channelA.reading)
        gate.begin(a)
        gate.begin(a)
        gate.begin(b)
        self.assertFalse(channelA.reading)
        self.assertFalse(channelB.reading)
        self.assertEqual(gate.pausedSessions, 2)
        for _ in range(4):
            gate.end()
        self.assertFalse(channelA.reading)
        gate.end()
        self.assertTrue(channelA.reading)
        self.assertTrue(channelB.reading)
        self.assertEqual((gate.inFlight, gate.pausedSessions), (1, 0))

    def test_closedSessionResumeHarmless(self) -> None:
        """
        A session that closed while paused is simply forgotten on resume.
        """
        gate = ReadGate(high=1, low=0)
        session, channel = self.webSocketSession()
        gate.begin(session)
        gate.begin(session)
        self.assertFalse(channel.reading)
        session.close("transport close")
        gate.end()
        gate.end()
        self.assertEqual(gate.pausedSessions, 0)

    def test_pollingSessionsNotPaused(self) -> None:
        """
        A long-polling session has no connection to stop reading; the gate
        counts its work all the same.
        """
        gate = ReadGate(high=1, low=0)
        session = self.pollingSession()
        gate.begin(session)
        gate.begin(session)
        self.assertEqual(gate.inFlight, 2)
        gate.end()
        gate.end()
        self.assertEqual((gate.inFlight, gate.pausedSessions), (0, 0))

    def test_badMarks(self) -> None:
        """
        The low mark must be below the high mark.
        """
        self.assertRaises(ValueError, ReadGate, 5, 5)
        self.assertRaises(ValueError, ReadGate, 5, -1)
