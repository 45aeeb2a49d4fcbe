# -*- test-case-name: tests.test_rest_admin -*-
"""
The admin HTTP surface (ADMIN.md): the JSON API under C{/admin/api/},
C{POST /api/publish} (CLUSTER.md), and the single-page back office at
C{/admin/}, served from files shipped in the package (no build step,
nothing fetched from outside).

Thin callers of L{crm_im.im.admin.AdminHandlers}: each request is
authenticated (L{AdminAuthenticator}), its path and query parsed, one
handler called, and its answer or refusal written as JSON.
"""

from __future__ import annotations

from importlib import resources
from typing import Any, Awaitable, Callable, Mapping

import orjson
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from .._json import dumps
from ..http.query import QueryError, parseQuery
from ..im.admin import Actor, AdminHandlers, Page
from ..im.errors import CONFLICT, FORBIDDEN, INVALID_PAYLOAD, NOT_FOUND, RATE_LIMITED, TOO_LARGE, IMError
from ..im.validation import MAX_INT64
from .auth import AdminAuthenticator, AdminRefused, bearerToken

JSON_TYPE = b"application/json; charset=utf-8"

#: IM refusal code -> HTTP status.
STATUS = {INVALID_PAYLOAD: 400, FORBIDDEN: 403, NOT_FOUND: 404, CONFLICT: 409, TOO_LARGE: 413, RATE_LIMITED: 429}

#: The largest request body, in bytes.
MAX_BODY = 1_000_000

_CODES = {401: "UNAUTHORIZED", 403: "FORBIDDEN", 429: "RATE_LIMITED"}

#: The refusal of a method an endpoint does not answer (405).
METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"

#: The page's files: name -> content type.
PAGE_FILES = {
    "index.html": b"text/html; charset=utf-8",
    "app.js": b"text/javascript; charset=utf-8",
    "app.css": b"text/css; charset=utf-8",
    "i18n.js": b"text/javascript; charset=utf-8",
    "favicon.svg": b"image/svg+xml",
}

#: No framing, no sniffing, nothing from elsewhere.
PAGE_HEADERS = {
    b"content-security-policy": b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self';"
    b" connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"DENY",
    b"referrer-policy": b"no-referrer",
}


def writeJSON(request: IRequest, value: Any, code: int = 200) -> bytes:
    """
    Set status and headers; the JSON body (empty for HEAD, whose
    C{Content-Length} still gives the body's length: twisted.web logs a
    warning for every HEAD answered with a body).
    """
    body = dumps(value)
    request.setResponseCode(code)
    request.setHeader(b"content-type", JSON_TYPE)
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"content-length", b"%d" % (len(body),))
    if request.method == b"HEAD":
        return b""
    return body


def errorBody(code: str, message: str) -> dict[str, Any]:
    """
    The API's refusal.
    """
    return {"error": {"code": code, "message": message}}


#: The refusal of a body over L{MAX_BODY}, in the API's shape.
_TOO_LARGE_MESSAGE = "the body is too large"


def tooLargeBody(target: bytes) -> bytes | None:
    """
    The 413 body for a request to C{target} (path and query) refused by
    the site before it was routed, because of its body's size: the API's
    own refusal for the admin paths and C{/api/publish}, L{None} (the
    site's default) for other paths.
    """
    path = target.split(b"?", 1)[0]
    if path == b"/admin" or path.startswith(b"/admin/") or path.rstrip(b"/") == b"/api/publish":
        return dumps(errorBody(TOO_LARGE, _TOO_LARGE_MESSAGE))
    return None


def _address(request: IRequest) -> str:
    client = request.getClientAddress()
    return str(getattr(client, "host", "") or "")


class _AdminLeaf(Resource):
    """
    An authenticated JSON leaf: subclasses map C{(method, path)} to a
    handler call.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, handlers: AdminHandlers, auth: AdminAuthenticator) -> None:
        super().__init__()
        self.handlers = handlers
        self.auth = auth

    def render(self, request: IRequest) -> Any:
        if request.method == b"OPTIONS":
            return self._options(request)
        try:
            actor = self.auth.check(bearerToken(request.getHeader(b"authorization")), _address(request))
        except AdminRefused as refused:
            if refused.status == 401:
                request.setHeader(b"www-authenticate", b'Bearer realm="crm_im admin"')
            if refused.status == 429:
                request.setHeader(b"retry-after", b"60")
            return writeJSON(request, errorBody(_CODES[refused.status], refused.message), refused.status)
        try:
            call = self.route(request, actor)
        except IMError as error:
            return writeJSON(request, errorBody(error.code, error.message), STATUS.get(error.code, 400))
        except MethodNotAllowed as refused:
            allowed = b", ".join(refused.allowed)
            request.setHeader(b"allow", allowed)
            message = f"this endpoint answers {allowed.decode('ascii')}"
            return writeJSON(request, errorBody(METHOD_NOT_ALLOWED, message), 405)
        if call is None:
            return writeJSON(request, errorBody(NOT_FOUND, "no such admin endpoint"), 404)
        d = Deferred.fromCoroutine(_awaited(call))
        finished: list[bool] = []
        notifyFinish = getattr(request, "notifyFinish")  # twisted.web's Request, not in IRequest
        notifyFinish().addBoth(lambda _: finished.append(True))
        d.addCallbacks(self._answer, self._failed, callbackArgs=(request, finished), errbackArgs=(request, finished))
        return NOT_DONE_YET

    def _options(self, request: IRequest) -> bytes:
        """
        C{OPTIONS} (a browser's CORS preflight carries no credentials): 204
        without any C{Access-Control-Allow-*}, so no other origin may call
        the API, and without checking credentials, so that preflights are
        not failed logins that would lock the address out (429).
        """
        request.setResponseCode(204)
        request.setHeader(b"cache-control", b"no-store")
        return b""

    def route(self, request: IRequest, actor: Actor) -> Awaitable[Any] | None:
        """
        The handler call for C{request}, or L{None} for an unknown path.
        """
        raise NotImplementedError()

    def _answer(self, value: Any, request: IRequest, finished: list[bool]) -> None:
        if finished:
            return
        if isinstance(value, Page):
            value = value.toWire()
        request.write(writeJSON(request, value))
        request.finish()

    def _failed(self, failure: Failure, request: IRequest, finished: list[bool]) -> None:
        if failure.check(IMError):
            error = failure.value
            body, code = errorBody(error.code, error.message), STATUS.get(error.code, 400)
        else:
            self.log.failure("admin request {method} {path}", failure, method=request.method, path=request.path)
            body, code = errorBody("INTERNAL", "internal error"), 500
        if finished:
            return
        request.write(writeJSON(request, body, code))
        request.finish()


class MethodNotAllowed(Exception):
    """
    The path names an endpoint, which does not answer the request's
    method: 405, with the methods it does answer in C{Allow}.
    """

    def __init__(self, allowed: list[bytes]) -> None:
        super().__init__(allowed)
        self.allowed = allowed


def _called(request: IRequest, calls: Mapping[bytes, Callable[[], Awaitable[Any]]]) -> Awaitable[Any]:
    """
    Call the handler of C{calls} (method -> call) for the request's
    method (C{HEAD} as C{GET}: the same answer without its body).

    @raise MethodNotAllowed: none for this method.
    """
    method = b"GET" if request.method == b"HEAD" else request.method
    call = calls.get(method)
    if call is None:
        raise MethodNotAllowed(sorted(calls))
    return call()


async def _awaited(call: Awaitable[Any]) -> Any:
    return await call


def readBody(request: IRequest) -> Any:
    """
    The request's JSON body (L{None} when empty).

    @raise IMError: C{INVALID_PAYLOAD} or C{TOO_LARGE}.
    """
    content = request.content
    if content is None:
        return None
    raw = content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise IMError(TOO_LARGE, _TOO_LARGE_MESSAGE)
    if not raw.strip():
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise IMError(INVALID_PAYLOAD, "the body is not JSON")


def _query(request: IRequest) -> dict[str, str]:
    try:
        return parseQuery(request.uri)
    except QueryError as error:
        raise IMError(INVALID_PAYLOAD, str(error))


def _int(query: dict[str, str], name: str) -> int | None:
    value = query.get(name)
    if value is None or value == "":
        return None
    try:
        number = int(value)
    except ValueError:
        raise IMError(INVALID_PAYLOAD, f"{name} must be an integer")
    if not -MAX_INT64 <= number <= MAX_INT64:
        # past what the store's columns hold: its query would fail
        raise IMError(INVALID_PAYLOAD, f"{name} is out of range")
    return number


def _str(query: dict[str, str], name: str) -> str | None:
    value = query.get(name)
    return value if value else None


def _bool(query: dict[str, str], name: str) -> bool | None:
    value = query.get(name)
    if value is None or value == "":
        return None
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise IMError(INVALID_PAYLOAD, f"{name} must be true or false")


class AdminAPIResource(_AdminLeaf):
    """
    C{/admin/api/...}: every endpoint of ADMIN.md.
    """

    def route(self, request: IRequest, actor: Actor) -> Awaitable[Any] | None:
        """
        See L{_AdminLeaf.route}.
        """
        h = self.handlers
        path = [segment.decode("utf-8", "replace") for segment in request.postpath]
        while path and path[-1] == "":
            path.pop()
        query = _query(request)
        limit = _int(query, "limit")
        cursor = _str(query, "cursor")
        calls: dict[bytes, Callable[[], Awaitable[Any]]]
        match path:
            case ["stats"]:
                calls = {b"GET": lambda: h.stats()}
            case ["users"]:
                calls = {b"GET": lambda: h.users(_bool(query, "online"), _str(query, "q"), cursor, limit)}
            case ["users", userId]:
                calls = {b"GET": lambda: h.user(userId)}
            case ["users", userId, "disconnect"]:
                calls = {b"POST": lambda: h.disconnect(actor, userId, readBody(request))}
            case ["users", userId, "ban"]:
                calls = {b"POST": lambda: h.ban(actor, userId, readBody(request)), b"DELETE": lambda: h.unban(actor, userId)}
            case ["broadcast"]:
                calls = {b"POST": lambda: h.broadcast(actor, readBody(request))}
            case ["publish"]:
                calls = {b"POST": lambda: h.publish(actor, readBody(request))}
            case ["groups"]:
                calls = {b"GET": lambda: h.groups(_str(query, "q"), cursor, limit)}
            case ["groups", groupId]:
                calls = {b"GET": lambda: h.group(groupId), b"DELETE": lambda: h.dissolveGroup(actor, groupId)}
            case ["rooms"]:
                calls = {b"GET": lambda: h.rooms(cursor, limit), b"POST": lambda: h.createRoom(actor, readBody(request))}
            case ["rooms", roomId]:
                calls = {b"DELETE": lambda: h.closeRoom(actor, roomId)}
            case ["messages"]:
                calls = {b"GET": lambda: self._messages(query, cursor, limit)}
            case ["messages", messageId, "recall"]:
                calls = {b"POST": lambda: h.recall(actor, messageId, readBody(request))}
            case ["audit"]:
                calls = {b"GET": lambda: h.auditLog(cursor, limit)}
            case _:
                return None
        return _called(request, calls)

    def _messages(self, query: dict[str, str], cursor: str | None, limit: int | None) -> Awaitable[Any]:
        """
        C{GET messages}: C{cursor} continues in the direction the first
        page was asked for (C{before}: backwards).
        """
        after = _int(query, "after")
        before = _int(query, "before")
        if after is not None and before is not None:
            raise IMError(INVALID_PAYLOAD, "give after or before, not both")
        if cursor is not None:
            value = _int(query, "cursor")
            if before is not None:
                before = value
            else:
                after = value
        return self.handlers.messages(
            _str(query, "userId"),
            _str(query, "peerId"),
            _str(query, "groupId"),
            _str(query, "roomId"),
            before,
            after,
            limit,
        )


class PublishResource(_AdminLeaf):
    """
    C{POST /api/publish} (CLUSTER.md), with admin credentials.
    """

    def route(self, request: IRequest, actor: Actor) -> Awaitable[Any] | None:
        """
        See L{_AdminLeaf.route}.
        """
        if request.postpath not in ([], [b""]):
            return None
        return _called(request, {b"POST": lambda: self.handlers.publish(actor, readBody(request))})


def _pageFile(name: str) -> bytes:
    return (resources.files("crm_im.rest") / "static" / name).read_bytes()


class StaticBytesResource(Resource):
    """
    One file of the page, read once from the package.
    """

    isLeaf = True

    def __init__(self, body: bytes, contentType: bytes) -> None:
        super().__init__()
        self.body = body
        self.contentType = contentType

    def render_GET(self, request: IRequest) -> bytes:
        """
        The file, with the page's security headers (for HEAD, the headers
        only).
        """
        if request.postpath not in ([], [b""]):
            return writeJSON(request, errorBody(NOT_FOUND, "not found"), 404)
        request.setHeader(b"content-type", self.contentType)
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"content-length", b"%d" % (len(self.body),))
        for header, value in PAGE_HEADERS.items():
            request.setHeader(header, value)
        # (HEAD: no body, or twisted.web logs a warning about it)
        return b"" if request.method == b"HEAD" else self.body

    render_HEAD = render_GET


class AdminRootResource(Resource):
    """
    C{/admin}: a redirect to C{/admin/}, the page, its files and the API.
    """

    def __init__(self, handlers: AdminHandlers, auth: AdminAuthenticator) -> None:
        super().__init__()
        self.api = AdminAPIResource(handlers, auth)
        self.putChild(b"api", self.api)
        self.files: dict[bytes, IResource] = {
            name.encode("ascii"): StaticBytesResource(_pageFile(name), contentType) for name, contentType in PAGE_FILES.items()
        }
        for name, resource in self.files.items():
            self.putChild(name, resource)
        self.putChild(b"", self.files[b"index.html"])

    def getChild(self, path: bytes, request: IRequest) -> IResource:
        """
        Unknown names: a JSON 404.
        """
        return _NotFound()

    def render(self, request: IRequest) -> bytes:
        """
        C{/admin} without its slash: to C{/admin/}.
        """
        request.setResponseCode(301)
        request.setHeader(b"location", b"/admin/")
        request.setHeader(b"content-length", b"0")
        return b""


class _NotFound(Resource):
    isLeaf = True

    def render(self, request: IRequest) -> bytes:
        return writeJSON(request, errorBody(NOT_FOUND, "not found"), 404)


def mountAdmin(root: Resource, handlers: AdminHandlers, auth: AdminAuthenticator, api: Resource | None = None) -> None:
    """
    Put C{/admin} under C{root} and C{publish} under C{api} (the C{/api}
    node of the tree), when admin credentials are configured; else
    nothing is mounted and both stay the tree's JSON 404.
    """
    if not auth.configured:
        return
    root.putChild(b"admin", AdminRootResource(handlers, auth))
    if api is None:
        api = Resource()
        root.putChild(b"api", api)
    api.putChild(b"publish", PublishResource(handlers, auth))

