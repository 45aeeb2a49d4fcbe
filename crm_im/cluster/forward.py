# -*- test-case-name: tests.test_cluster -*-
"""
No sticky sessions: a request for an Engine.IO session of another node
is sent on to that node.

Every Engine.IO sid of a cluster node ends with the node's tag
(L{crm_im.cluster.node.nodeTag}); each node registers its internal HTTP
address in Redis under that tag. A request whose sid is not one of this
node's sessions but carries another live node's tag goes to that address,
once (it carries C{X-CRM-IM-Forwarded} there and is never forwarded
again):

  - a long-polling GET or POST is forwarded as a request, through a pool
    of persistent connections, and the owner's answer copied back;
  - a WebSocket upgrade (a C{GET} with C{Upgrade: websocket}, the
    Engine.IO upgrade of a polling session) is spliced: the client's
    connection is handed to the owner byte for byte for the rest of its
    life (L{crm_im.cluster.splice}).

A WebSocket that opens a session needs neither: it opens on whichever node
it reaches. So a round-robin balancer works for polling, WebSocket and the
upgrade between them; sticky sessions only save the extra hop. An owner
that cannot be reached gets the client Engine.IO's "Session ID unknown"
(502), as if the session were gone.
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
from .splice import UpgradeSplice, isWebSocketUpgrade

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
    C{inner}, other nodes' polling requests forwarded and WebSocket
    upgrades spliced to them.

    @ivar forwarded: polling requests forwarded (for tests and metrics).
    @ivar spliced: WebSocket upgrades spliced to another node.
    @ivar splices: the splices not over yet (connecting, or open).
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
        self.reactor = reactor
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = 16
        self.agent = Agent(reactor, pool=self.pool)
        self.forwarded = 0
        self.spliced = 0
        self.splices: set[UpgradeSplice] = set()

    def render(self, request: IRequest) -> Any:
        address = self._owner(request)
        if address is None:
            return self.inner.render(request)
        if isWebSocketUpgrade(request):
            self.spliced += 1
            splice = UpgradeSplice(request, FORWARDED, self._failed, self.splices.discard)
            self.splices.add(splice)
            splice.connect(self.reactor, address)
            return NOT_DONE_YET
        self.forwarded += 1
        d = Deferred.fromCoroutine(self._forward(request, address))
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    def _owner(self, request: IRequest) -> str | None:
        """
        The internal address of the live node that owns the session of
        C{request}, if it is another node's polling request or WebSocket
        upgrade not forwarded yet.
        """
        if request.method not in (b"GET", b"POST") or request.getHeader(FORWARDED) is not None:
            return None
        if request.getHeader(b"upgrade") is not None and not isWebSocketUpgrade(request):
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
        self.log.warn("forwarding a request to its node: {error}", error=failure.getErrorMessage())
        request.setResponseCode(502)
        request.setHeader(b"content-type", b"application/json")
        request.write(b'{"code":1,"message":"Session ID unknown"}')
        request.finish()

    def close(self) -> Deferred[Any]:
        """
        Drop the spliced connections and the pool's (the node is
        stopping).
        """
        for splice in list(self.splices):
            splice.close()
        return self.pool.closeCachedConnections()
