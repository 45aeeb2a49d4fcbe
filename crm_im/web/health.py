# -*- test-case-name: tests.integration.test_ops -*-
"""
C{GET /health}: is this process serving, and is its store usable?

200 C{{"status": "ok", "store": "ok"}} when a cheap query on the store
answers within C{timeout} seconds; 503 with C{"status": "unavailable"}
otherwise, or while the server is stopping (so a load balancer drains it).
A cluster node (C{--redis}) also says C{"cluster": "ok"}, or 503 with the
reason while Redis is unreachable (CLUSTER.md).
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from ..storage import IMessageStore
from .json import jsonResponse


class HealthResource(Resource):
    """
    The health check.
    """

    isLeaf = True
    log = Logger()

    def __init__(
        self,
        store: IMessageStore,
        clock: IReactorTime,
        serving: Callable[[], bool] = lambda: True,
        timeout: float = 2.0,
        cluster: Callable[[], str | None] | None = None,
    ) -> None:
        """
        @param serving: whether the server is running (false while it stops).
        @param timeout: seconds the store has to answer.
        @param cluster: why a cluster node is cut off from Redis (L{None}:
            it is not); not given for a single node.
        """
        super().__init__()
        self.store = store
        self.clock = clock
        self.serving = serving
        self.timeout = timeout
        self.cluster = cluster

    def render(self, request: IRequest) -> Any:
        request.setHeader(b"cache-control", b"no-store")
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return jsonResponse(request, {"error": "method not allowed"}, 405)
        if not self.serving():
            return jsonResponse(request, {"status": "unavailable", "store": "stopping"}, 503)
        try:
            d: Deferred[None] = self.store.ping()
        except Exception as error:
            return jsonResponse(request, {"status": "unavailable", "store": type(error).__name__}, 503)
        d.addTimeout(self.timeout, self.clock)
        d.addCallbacks(self._healthy, self._unhealthy, callbackArgs=(request,), errbackArgs=(request,))
        return NOT_DONE_YET

    def _healthy(self, _: object, request: Any) -> None:
        body: dict[str, Any] = {"status": "ok", "store": "ok"}
        if self.cluster is not None:
            reason = self.cluster()
            body["cluster"] = "ok" if reason is None else reason
            if reason is not None:
                body["status"] = "unavailable"
                self._finish(request, jsonResponse(request, body, 503))
                return
        self._finish(request, jsonResponse(request, body))

    def _unhealthy(self, failure: Any, request: Any) -> None:
        self.log.warn("health check: store unavailable: {error}", error=failure.getErrorMessage())
        body: dict[str, Any] = {"status": "unavailable", "store": failure.type.__name__}
        if self.cluster is not None:
            body["cluster"] = self.cluster() or "ok"
        self._finish(request, jsonResponse(request, body, 503))

    def _finish(self, request: Any, body: bytes) -> None:
        if request.finished or getattr(request, "_disconnected", False):
            return
        request.write(body)
        request.finish()
