# -*- test-case-name: tests.integration.test_ops -*-
"""
C{GET /metrics}: the server's metrics in the Prometheus text format.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from .json import jsonResponse


class MetricsResource(Resource):
    """
    Renders one L{CollectorRegistry} for Prometheus.

    The classic text format (0.0.4) is what every Prometheus scrapes and
    what C{prometheus_client.parser} reads.
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def render(self, request: IRequest) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return jsonResponse(request, {"error": "method not allowed"}, 405)
        body = generate_latest(self.registry)
        request.setHeader(b"content-type", CONTENT_TYPE_PLAIN_0_0_4.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        if request.method == b"HEAD":
            # the length, without the body twisted.web would warn about
            request.setHeader(b"content-length", b"%d" % (len(body),))
            return b""
        return body
