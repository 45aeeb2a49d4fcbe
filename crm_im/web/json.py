"""
JSON responses with the contract's content type and CORS.
"""

from __future__ import annotations

from typing import Any

from twisted.web.iweb import IRequest
from twisted.web.resource import Resource

from .._json import dumps
from ..http.cors import CORSPolicy

JSON_TYPE = b"application/json; charset=utf-8"


def jsonResponse(request: IRequest, value: Any, code: int = 200) -> bytes:
    """
    Set status and headers on C{request} and return the JSON body (empty
    for a HEAD request, whose C{Content-Length} still gives the body's
    length: twisted.web logs a warning for every HEAD answered with a
    body, and health checkers send HEAD).
    """
    body = dumps(value)
    request.setResponseCode(code)
    request.setHeader(b"content-type", JSON_TYPE)
    request.setHeader(b"content-length", b"%d" % (len(body),))
    if request.method == b"HEAD":
        return b""
    return body


class JSONResource(Resource):
    """
    A leaf answering GET (and HEAD) with JSON, OPTIONS with a CORS
    preflight, anything else with 405.
    """

    isLeaf = True

    def __init__(self, cors: CORSPolicy) -> None:
        super().__init__()
        self.cors = cors

    def render(self, request: IRequest) -> bytes:
        if request.method == b"OPTIONS":
            return self.cors.preflight(request)
        self.cors.apply(request)
        if request.postpath not in ([], [b""]):
            return jsonResponse(request, {"error": "not found"}, 404)
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD, OPTIONS")
            return jsonResponse(request, {"error": "method not allowed"}, 405)
        return jsonResponse(request, self.value(request))

    def value(self, request: IRequest) -> Any:
        """
        The JSON value to answer a GET with.
        """
        raise NotImplementedError()


class NotFoundResource(JSONResource):
    """
    The JSON 404 of every unknown path.
    """

    def render(self, request: IRequest) -> bytes:
        if request.method == b"OPTIONS":
            return self.cors.preflight(request)
        self.cors.apply(request)
        return jsonResponse(request, {"error": "not found"}, 404)
