# -*- test-case-name: tests.test_eio_turnwriter -*-
"""
Writes to TCP connections, gathered per reactor turn and sent straight to
the socket.

Why: Twisted's C{transport.write} appends to a buffer and registers the
socket for writability; the bytes leave on the next poll through
C{doWrite}, which then unregisters the socket again. For every frame that
is two C{epoll_ctl} calls, an epoll event and several layers of Python,
and an IM server writes small frames to many sockets in every turn (each
message goes to its recipient and a receipt to its sender; each login
goes to every user). libuv, under Node.js, tries the write at once and
only polls when the kernel will not take more; L{TurnWriter} does the
same, once per connection per turn: what is written to a connection during
a turn is joined and handed to C{send()} when the turn ends. Whatever the
kernel does not take goes to the transport's own buffer, and from there
Twisted's machinery — writability polling, the producer's back-pressure,
errors and closing — works as it always does.

Only plain TCP connections (L{twisted.internet.tcp.Connection} without
TLS) are written directly; any other transport (TLS, test transports) is
written through C{transport.write} at once, exactly as before.

Back-pressure is kept: once a turn has gathered C{flushSize} bytes for a
connection they are sent at once, so a connection that does not read
fills the kernel's buffer, then Twisted's (which pauses the session's
producer past its C{bufferSize}), then the session's bounded queue, as
without the writer, instead of gathering a whole turn's output unbounded.
"""

from __future__ import annotations

from errno import ENOBUFS, EWOULDBLOCK
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IDelayedCall, IReactorTime


def directlyWritable(transport: object) -> bool:
    """
    Whether C{transport} is a plain TCP connection whose socket may be
    written to directly.
    """
    return isinstance(transport, tcp.Connection) and not transport.TLS


class TurnWriter:
    """
    Gathers the writes of one reactor turn per connection and sends each
    connection's bytes with one C{send()} at the end of the turn.

    @ivar sendLimit: a gathered write larger than this goes through the
        transport's buffer (as Twisted's own C{SEND_LIMIT}).
    @ivar flushSize: bytes gathered for one connection that are sent at
        once rather than at the end of the turn (Twisted's C{bufferSize}:
        what it buffers before it pauses the producer).
    """

    sendLimit = 128 * 1024
    flushSize = 64 * 1024

    def __init__(self, clock: IReactorTime, isDirect: Any = directlyWritable) -> None:
        """
        @param clock: schedules the end-of-turn flush (C{callLater(0)}).
        @param isDirect: tells whether a transport's socket may be written
            to directly (tests give their own).
        """
        self._clock = clock
        self._isDirect = isDirect
        self._pending: dict[Any, list[bytes]] = {}
        # Bytes gathered per connection, for those past a first write.
        self._sizes: dict[Any, int] = {}
        self._call: IDelayedCall | None = None

    @property
    def pendingConnections(self) -> int:
        """
        How many connections have bytes waiting for the end of the turn.
        """
        return len(self._pending)

    def write(self, transport: Any, data: bytes) -> None:
        """
        Write C{data} to C{transport}: at the end of this turn, together
        with everything else written to it in this turn.
        """
        pending = self._pending.get(transport)
        if pending is not None:
            pending.append(data)
            sizes = self._sizes
            size = sizes.get(transport, len(pending[0])) + len(data)
            if size >= self.flushSize:
                self.flush(transport)
            else:
                sizes[transport] = size
            return
        if not self._isDirect(transport):
            transport.write(data)
            return
        if len(data) >= self.flushSize:
            self._send(transport, data)
            return
        self._pending[transport] = [data]
        if self._call is None:
            self._call = self._clock.callLater(0, self._flushAll)

    def flush(self, transport: Any) -> None:
        """
        Send what is waiting for C{transport} now: before another writer
        (Autobahn's control frames, a close) uses the transport directly.
        """
        self._sizes.pop(transport, None)
        chunks = self._pending.pop(transport, None)
        if chunks:
            self._send(transport, b"".join(chunks))

    def discard(self, transport: Any) -> None:
        """
        Forget what is waiting for C{transport} (its connection is gone).
        """
        self._sizes.pop(transport, None)
        self._pending.pop(transport, None)

    def _flushAll(self) -> None:
        self._call = None
        self._sizes = {}
        pending, self._pending = self._pending, {}
        for transport, chunks in pending.items():
            # (joining one chunk returns it as it is: no copy)
            self._send(transport, b"".join(chunks))

    def _send(self, transport: Any, data: bytes) -> None:
        """
        Give C{data} to the socket if nothing is buffered ahead of it, and
        the rest, if any, to the transport's buffer.
        """
        if (
            transport.dataBuffer
            or transport._tempDataBuffer
            or not transport.connected
            or transport.disconnecting
            or len(data) > self.sendLimit
        ):
            transport.write(data)
            return
        try:
            sent = transport.socket.send(data)
        except OSError as error:
            if error.errno not in (EWOULDBLOCK, ENOBUFS):
                # Twisted meets the same error on its next attempt and
                # closes the connection the way it always does.
                transport.write(data)
                return
            sent = 0
        if sent < len(data):
            transport.write(data[sent:])
