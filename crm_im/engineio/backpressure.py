# -*- test-case-name: tests.test_eio_backpressure -*-
"""
Admission control: stop reading from clients while too much of their work
is in flight.

Without it a server past its capacity keeps reading and parsing new
packets (each costs CPU) ahead of finishing the ones it already accepted,
so the more is offered the less is delivered (receive livelock). A
L{ReadGate} counts work in flight; past C{high} it pauses reading from the
session that adds more, and once the count is back to C{low} it resumes
every paused session. TCP then pushes back on the clients, latency stays
bounded by C{high}, and throughput stays at capacity.
"""

from __future__ import annotations

from .session import EngineIOSession


class ReadGate:
    """
    A count of work in flight, with sessions paused past a high mark.

    @ivar inFlight: work begun and not yet ended.
    """

    def __init__(self, high: int = 2000, low: int = 500) -> None:
        if not 0 <= low < high:
            raise ValueError("need 0 <= low < high")
        self.high = high
        self.low = low
        self.inFlight = 0
        self._paused: set[EngineIOSession] = set()

    @property
    def pausedSessions(self) -> int:
        """
        How many sessions are paused now.
        """
        return len(self._paused)

    def begin(self, session: EngineIOSession) -> None:
        """
        C{session} started a piece of work.
        """
        self.inFlight += 1
        if self.inFlight > self.high and session not in self._paused:
            self._paused.add(session)
            session.pauseReading()

    def end(self) -> None:
        """
        A piece of work finished.
        """
        self.inFlight -= 1
        if self._paused and self.inFlight <= self.low:
            paused, self._paused = self._paused, set()
            for session in paused:
                session.resumeReading()
