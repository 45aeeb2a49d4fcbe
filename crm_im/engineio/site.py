# -*- test-case-name: tests.test_eio_resource -*-
"""
The twisted.web L{Site} that serves an Engine.IO endpoint well.

Four things differ from a stock Site: request bodies are bounded before
they are buffered (L{BoundedRequest}) and never parsed as forms; the
per-request access log is off (a long-polling client makes two requests
per packet exchange); and the idle timeout is longer than a held poll
(C{pingInterval}) so twisted.web never cuts a GET the session is still
holding.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import IResource
from twisted.web.server import Site

from .config import EngineIOConfig
from .resource import BoundedRequest


class EngineIOSite(Site):
    """
    A Site for a resource tree that contains an Engine.IO endpoint.
    """

    def __init__(
        self,
        root: IResource,
        config: EngineIOConfig,
        reactor: IReactorTime | None = None,
        maxBody: int | None = None,
        tooLarge: Callable[[bytes], bytes | None] | None = None,
    ) -> None:
        """
        @param maxBody: the largest request body (default: Engine.IO's
            C{maxPayload} and some room).
        @param tooLarge: the JSON body of the 413 for a request target, or
            L{None} for Engine.IO's (see L{BoundedRequest.tooLarge}).
        """
        limit = maxBody if maxBody is not None else config.maxPayload + 4096

        class _Request(BoundedRequest):
            maxBody = limit

        if tooLarge is not None:
            _Request.tooLarge = staticmethod(tooLarge)

        timeout = max(60, (config.pingInterval + config.pingTimeout) // 1000 + 15)
        # Bodies are never parsed as forms: twisted.web would parse the
        # Content-Type of every POST with the email package (~170 us and a
        # new class each: every long-polling POST); nothing here reads
        # form fields from request.args.
        kwargs: dict[str, Any] = {"requestFactory": _Request, "timeout": timeout, "parsePOSTFormSubmission": False}
        if reactor is not None:
            kwargs["reactor"] = reactor
        super().__init__(root, **kwargs)

    def log(self, request: Any) -> None:
        """
        No access log: per-request logging is per-packet on long-polling.
        """
