# -*- test-case-name: tests.test_http -*-
"""
Cross-origin resource sharing, shared by the Engine.IO endpoint and the HTTP
status resources: one policy object, configured once.
"""

from __future__ import annotations

from twisted.web.iweb import IRequest


class CORSPolicy:
    """
    Which origins may call this server from a browser.

    With no explicit list every origin is allowed (C{*}, no credentials,
    like the original server); with a list, an allowed C{Origin} is
    reflected with C{Access-Control-Allow-Credentials: true}.
    """

    methods = b"GET, POST, OPTIONS"
    maxAge = b"86400"

    def __init__(self, origins: tuple[str, ...] | None = None) -> None:
        self.origins = origins
        self._allowed = frozenset(o.encode("ascii") for o in origins) if origins else None

    def allows(self, origin: bytes | None) -> bool:
        """
        Whether a request from C{origin} may read the response.
        """
        return self._allowed is None or (origin is not None and origin in self._allowed)

    def headersFor(self, origin: bytes | None) -> dict[bytes, bytes]:
        """
        The CORS response headers for a request from C{origin} (for
        callers that answer without a L{IRequest}'s header methods).
        """
        if self._allowed is None:
            return {b"access-control-allow-origin": b"*"}
        if origin is not None and origin in self._allowed:
            return {
                b"vary": b"Origin",
                b"access-control-allow-origin": origin,
                b"access-control-allow-credentials": b"true",
            }
        return {b"vary": b"Origin"}

    def apply(self, request: IRequest) -> None:
        """
        Set the CORS response headers for C{request}.
        """
        for name, value in self.headersFor(request.getHeader(b"origin")).items():
            request.setHeader(name, value)

    def preflight(self, request: IRequest) -> bytes:
        """
        Answer an C{OPTIONS} preflight: 204 with the allowed methods and
        the requested headers.
        """
        self.apply(request)
        request.setResponseCode(204)
        request.setHeader(b"access-control-allow-methods", self.methods)
        requested = request.getHeader(b"access-control-request-headers")
        if requested:
            request.setHeader(b"access-control-allow-headers", requested)
        request.setHeader(b"access-control-max-age", self.maxAge)
        request.setHeader(b"content-length", b"0")
        return b""
