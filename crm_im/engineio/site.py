# -*- test-case-name: tests.test_eio_resource -*-
"""
The twisted.web L{Site} that serves an Engine.IO endpoint well.

Three things differ from a stock Site: request bodies are bounded before
they are buffered (L{BoundedRequest}); the per-request access log is off
(a long-polling client makes two requests per packet exchange); and the
idle timeout is longer than a held poll (C{pingInterval}) so twisted.web
never cuts a GET the session is still holding.
"""

from __future__ import annotations

from typing import Any

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
    ) -> None:
        limit = maxBody if maxBody is not None else config.maxPayload + 4096

        class _Request(BoundedRequest):
            maxBody = limit

        timeout = max(60, (config.pingInterval + config.pingTimeout) // 1000 + 15)
        kwargs: dict[str, Any] = {"requestFactory": _Request, "timeout": timeout}
        if reactor is not None:
            kwargs["reactor"] = reactor
        super().__init__(root, **kwargs)

    def log(self, request: Any) -> None:
        """
        No access log: per-request logging is per-packet on long-polling.
        """
