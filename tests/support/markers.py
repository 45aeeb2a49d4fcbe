"""
Bytes received from a peer (a socket, a child process), and L{Deferred}s
that fire once a marker is among them: how the end-to-end tests wait for
output without sleeping.
"""

from __future__ import annotations

from typing import Any, List, Tuple

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure


class MarkedBytes:
    """
    Everything received so far, with waiters for markers in it.

    @ivar data: the bytes received, in order (one object for its whole
        life: holders may keep a reference to it).
    """

    def __init__(self) -> None:
        self.data = bytearray()
        self._waiters: List[Tuple[bytes, Deferred[None]]] = []

    def feed(self, data: bytes) -> None:
        """
        Keep C{data}; fire the waiters whose marker has arrived.
        """
        self.data += data
        waiting = []
        for marker, waiter in self._waiters:
            if marker in self.data:
                waiter.callback(None)
            else:
                waiting.append((marker, waiter))
        self._waiters = waiting

    def whenContains(self, marker: bytes) -> Deferred[None]:
        """
        A new L{Deferred} that fires once C{marker} has been received.
        """
        d: Deferred[None] = Deferred()
        if marker in self.data:
            d.callback(None)
        else:
            self._waiters.append((marker, d))
        return d

    def failWaiting(self, reason: Failure) -> None:
        """
        Fail the waiters still waiting (nothing more will arrive).
        """
        waiters, self._waiters = self._waiters, []
        for _, waiter in waiters:
            waiter.errback(reason)


def heldPoll(session: Any, timeout: float = 10.0) -> Deferred[Any]:
    """
    Fire with the long-polling GET the server holds for C{session} (an
    L{crm_im.engineio.session.EngineIOSession}): at once if it holds one,
    else as soon as the client's next GET is held (C{pollArrived} is
    watched for it while waiting: the class's, since sessions have slots),
    never by looking again and again.
    """
    from twisted.internet import reactor

    if session._poll is not None:
        return succeed(session._poll)
    held: Deferred[Any] = Deferred()
    cls = type(session)
    arrived = cls.pollArrived

    def watch(self: Any, poll: Any) -> bool:
        result: bool = arrived(self, poll)
        if self is session and session._poll is not None and not held.called:
            held.callback(session._poll)
        return result

    def restore(result: Any) -> Any:
        cls.pollArrived = arrived
        return result

    cls.pollArrived = watch
    return held.addTimeout(timeout, reactor).addBoth(restore)
