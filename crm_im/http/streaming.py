# -*- test-case-name: tests.test_uploads_resource -*-
"""
Request bodies handed to the application as they arrive, instead of being
buffered whole before C{render}.

twisted.web collects a body in memory or a temporary file and calls the
resource once it is complete; an upload of hundreds of megabytes must
instead go to its own file chunk by chunk, be refused at its first byte
too many, and keep what arrived when the connection drops.
L{StreamingRequestMixin}, mixed into a site's request class, asks a
L{BodyRouter} once the headers are in whether a request's body has a
L{IBodySink}; if so every chunk goes there (not to C{request.content}, and
past any body bound of the base class), the sink may pause the connection
while it writes (memory stays bounded by what one read delivers), may
answer at once and close (L{StreamingRequestMixin.answerEarly}), and hears
of a dropped connection. The resource finds the sink as C{request.bodySink}.

Nothing here knows what an upload is.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any, Callable, Optional

from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from zope.interface import Interface


class IBodySink(Interface):
    """
    Where one request's body goes.
    """

    def write(data: bytes) -> None:
        """
        The next chunk of the body (never more than one read of the
        connection at a time, while not paused).
        """

    def bodyDone() -> None:
        """
        The body is complete; C{render} follows.
        """

    def connectionLost(reason: Failure) -> None:
        """
        The connection dropped before the body was complete (or before the
        answer went out).
        """


#: C{(method, path, headers, length, request)} -> a sink, or L{None} for a
#: request whose body is read as usual. C{path} is the raw request target
#: (with its query); C{length} the C{Content-Length}, L{None} if chunked.
BodyRouter = Callable[[bytes, bytes, Headers, Optional[int], Any], Optional[IBodySink]]


class StreamingRequestMixin:
    """
    Mix into a L{twisted.web.server.Request} subclass, before it; set
    C{bodyRouter} on the subclass.
    """

    bodyRouter: Optional[BodyRouter] = None
    bodySink: Optional[IBodySink] = None
    _answeredEarly = False

    channel: Any
    requestHeaders: Headers
    content: Any

    def gotLength(self, length: Optional[int]) -> None:
        router = type(self).bodyRouter
        if router is not None:
            # The request line is parsed by the channel but only given to
            # the request once the body is complete: read it from there.
            method = getattr(self.channel, "_command", b"")
            path = getattr(self.channel, "_path", b"")
            sink = router(method, path, self.requestHeaders, length, self)
            if sink is not None:
                self.bodySink = sink
                self.content = BytesIO()
                return
        super().gotLength(length)  # type: ignore[misc]

    def handleContentChunk(self, data: bytes) -> None:
        if self._answeredEarly:
            return
        sink = self.bodySink
        if sink is not None:
            sink.write(data)
            return
        super().handleContentChunk(data)  # type: ignore[misc]

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._answeredEarly:
            return
        if self.bodySink is not None:
            self.bodySink.bodyDone()
        super().requestReceived(command, path, version)  # type: ignore[misc]

    def connectionLost(self, reason: Failure) -> None:
        sink = self.bodySink
        if sink is not None:
            sink.connectionLost(reason)
        super().connectionLost(reason)  # type: ignore[misc]

    def pauseReading(self) -> None:
        """
        Stop reading the connection (the sink is busy).
        """
        transport = self.channel.transport if self.channel is not None else None
        if transport is not None:
            transport.pauseProducing()

    def resumeReading(self) -> None:
        """
        Read the connection again.
        """
        transport = self.channel.transport if self.channel is not None else None
        if transport is not None:
            transport.resumeProducing()

    def answerEarly(self, status: int, reason: bytes, headers: dict[bytes, bytes], body: bytes) -> None:
        """
        Answer now, before the body is complete, and close the connection
        (the rest of the body is never read).
        """
        if self._answeredEarly:
            return
        self._answeredEarly = True
        transport = self.channel.transport if self.channel is not None else None
        if transport is None:
            return
        lines = [b"HTTP/1.1 %d %s" % (status, reason)]
        for name, value in headers.items():
            lines.append(name + b": " + value)
        lines.append(b"Content-Length: %d" % len(body))
        lines.append(b"Connection: close")
        transport.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
        transport.resumeProducing()
        transport.loseConnection()


def streamingRequests(requestFactory: Any, router: BodyRouter) -> Any:
    """
    A subclass of a site's C{requestFactory} whose bodies go to the sinks
    C{router} gives.
    """
    return type(
        "Streaming" + requestFactory.__name__,
        (StreamingRequestMixin, requestFactory),
        {"bodyRouter": staticmethod(router)},
    )
