# -*- test-case-name: tests.test_cluster -*-
"""
No sticky sessions: a long-polling request for an Engine.IO session of
another node is forwarded to that node.

Every Engine.IO sid of a cluster node ends with the node's tag
(L{crm_im.cluster.node.nodeTag}); each node registers its internal HTTP
address in Redis under that tag. A polling GET or POST whose sid is not
one of this node's sessions but carries another live node's tag is sent
on, unchanged, to that address (once: a forwarded request carries
C{X-CRM-IM-Forwarded} and is never forwarded again), and the owner's
answer is copied back. A WebSocket needs no forwarding when it opens a
session, and the owner of a session answers the upgrade only if the
balancer sends it there: a WebSocket upgrade landing on another node is
refused with the Engine.IO "Session ID unknown" answer, and the client
stays on long-polling (forwarded) -- it keeps working. Sticky sessions in
the balancer make the upgrade succeed every time (deploy/haproxy.cfg).
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.client import Agent, HTTPConnectionPool, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from ..http.query import QueryError, parseQuery
from .node import tagOfSid

FORWARDED = b"x-crm-im-forwarded"

#: Request headers copied to the owner.
_REQUEST_HEADERS = (b"content-type", b"origin", b"user-agent", b"cookie", b"accept")
#: Response headers not copied back (hop by hop, or set by our own site).
_SKIPPED = {b"connection", b"keep-alive", b"transfer-encoding", b"content-length", b"date", b"server"}
#: The largest answer copied back (an Engine.IO payload is bounded by the
#: owner's maxPayload; this is a safety net).
MAX_ANSWER = 16 * 1024 * 1024


class ForwardingResource(Resource):
    """
    The Engine.IO endpoint of a cluster node: its own sessions served by
    C{inner}, other nodes' polling requests forwarded.

    @ivar forwarded: requests forwarded (for tests and metrics).
    """

    isLeaf = True
    log = Logger()

    def __init__(
        self,
        inner: Resource,
        reactor: Any,
        isLocal: Callable[[str], bool],
        myTag: str,
        addressOf: Callable[[str], str | None],
    ) -> None:
        """
        @param isLocal: whether an Engine.IO sid is one of this node's.
        @param addressOf: a node tag's internal address
            (C{http://host:port}), if that node is alive.
        """
        super().__init__()
        self.inner = inner
        self.isLocal = isLocal
        self.myTag = myTag
        self.addressOf = addressOf
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 16
        self.agent = Agent(reactor, pool=self.pool)
        self.forwarded = 0

    def render(self, request: IRequest) -> Any:
        address = self._owner(request)
        if address is None:
            return self.inner.render(request)
        self.forwarded += 1
        d = Deferred.fromCoroutine(self._forward(request, address))
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    def _owner(self, request: IRequest) -> str | None:
        if request.method not in (b"GET", b"POST") or request.getHeader(FORWARDED) is not None:
            return None
        upgrade = request.getHeader(b"upgrade")
        if upgrade is not None:
            return None
        try:
            sid = parseQuery(request.uri).get("sid")
        except QueryError:
            return None
        if sid is None or self.isLocal(sid):
            return None
        tag = tagOfSid(sid)
        if tag is None or tag == self.myTag:
            return None
        return self.addressOf(tag)

    async def _forward(self, request: Any, address: str) -> None:
        headers = Headers({FORWARDED: [b"1"]})
        for name in _REQUEST_HEADERS:
            value = request.getHeader(name)
            if value is not None:
                headers.setRawHeaders(name, [value])
        body = None
        if request.method == b"POST":
            from twisted.web.client import FileBodyProducer

            request.content.seek(0)
            body = FileBodyProducer(request.content)
        d = self.agent.request(request.method, address.encode("ascii") + request.uri, headers, body)
        request.notifyFinish().addErrback(lambda _: d.cancel())
        response = await d
        data = await readBody(response)
        if request.finished or getattr(request, "_disconnected", False):
            return
        if len(data) > MAX_ANSWER:
            raise ValueError("answer too large")
        request.setResponseCode(response.code)
        for name, values in response.headers.getAllRawHeaders():
            if name.lower() not in _SKIPPED:
                request.responseHeaders.setRawHeaders(name, values)
        request.write(data)
        request.finish()

    def _failed(self, failure: Any, request: Any) -> None:
        if request.finished or getattr(request, "_disconnected", False):
            return
        self.log.warn("forwarding a polling request: {error}", error=failure.getErrorMessage())
        request.setResponseCode(502)
        request.setHeader(b"content-type", b"application/json")
        request.write(b'{"code":1,"message":"Session ID unknown"}')
        request.finish()

    def close(self) -> Deferred[Any]:
        return self.pool.closeCachedConnections()
