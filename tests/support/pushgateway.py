"""
A push gateway for end-to-end tests: a real L{twisted.web} server on
loopback speaking the Matrix Push Gateway API
(C{POST /_matrix/push/v1/notify}), which checks every request body against
the API's schema (and, with a secret, crm_im's C{X-CRM-IM-Signature}),
keeps what it received, and answers as the test scripts it: C{200} with
C{rejected} pushkeys, a 5xx or 429, or never.

Tests wait on it with L{PushGateway.waitFor} (a L{Deferred} per wait, no
polling).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Callable, Iterable

import attrs
import orjson
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

PATH = b"/_matrix/push/v1/notify"

#: The Push Gateway API's C{notification} fields and their JSON types
#: (C{devices} and C{counts} are checked below).
NOTIFICATION_FIELDS: dict[str, type | tuple[type, ...]] = {
    "event_id": str,
    "room_id": str,
    "type": str,
    "sender": str,
    "sender_display_name": str,
    "room_name": str,
    "room_alias": str,
    "user_is_target": bool,
    "prio": str,
    "content": dict,
    "counts": dict,
    "devices": list,
}
#: What crm_im always sends (PUSH.md) beyond the API's required C{devices}.
CRM_IM_REQUIRED = ("event_id", "room_id", "type", "sender", "sender_display_name", "prio", "counts")
DEVICE_FIELDS: dict[str, type | tuple[type, ...]] = {
    "app_id": str,
    "pushkey": str,
    "pushkey_ts": int,
    "data": dict,
    "tweaks": dict,
}


def schemaErrors(body: bytes) -> list[str]:
    """
    What is wrong with a request body, by the Push Gateway API's schema
    and crm_im's contract (an empty list: nothing).
    """
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        return [f"not JSON: {error}"]
    if not isinstance(document, dict) or set(document) != {"notification"}:
        return ["the body must be an object with exactly one key, notification"]
    notification = document["notification"]
    if not isinstance(notification, dict):
        return ["notification must be an object"]
    errors = []
    for key, value in notification.items():
        expected = NOTIFICATION_FIELDS.get(key)
        if expected is None:
            errors.append(f"unknown notification field {key!r}")
        elif not isinstance(value, expected) or (expected is not bool and isinstance(value, bool)):
            errors.append(f"notification.{key} has the wrong type: {value!r}")
    for key in ("devices", *CRM_IM_REQUIRED):
        if key not in notification:
            errors.append(f"notification.{key} is missing")
    if notification.get("prio", "high") not in ("high", "low"):
        errors.append(f"prio must be high or low, not {notification['prio']!r}")
    counts = notification.get("counts", {})
    if isinstance(counts, dict):
        for key, value in counts.items():
            if key not in ("unread", "missed_calls") or not isinstance(value, int) or isinstance(value, bool) or value < 0:
                errors.append(f"counts.{key} must be a non-negative integer: {value!r}")
    devices = notification.get("devices", [])
    if isinstance(devices, list):
        if not devices:
            errors.append("devices is empty")
        for index, device in enumerate(devices):
            if not isinstance(device, dict):
                errors.append(f"devices[{index}] must be an object")
                continue
            for key in ("app_id", "pushkey"):
                if not isinstance(device.get(key), str) or not device[key]:
                    errors.append(f"devices[{index}].{key} must be a non-empty string")
            for key, value in device.items():
                expected = DEVICE_FIELDS.get(key)
                if expected is None:
                    errors.append(f"unknown device field {key!r}")
                elif not isinstance(value, expected) or isinstance(value, bool):
                    errors.append(f"devices[{index}].{key} has the wrong type: {value!r}")
    return errors


@attrs.define
class Received:
    """
    One request the gateway took.

    @ivar notification: the body's C{notification}.
    @ivar code: what the gateway answered (L{None}: it never did).
    @ivar signature: the C{X-CRM-IM-Signature} header, if any.
    """

    notification: dict[str, Any]
    body: bytes
    signature: bytes | None
    code: int | None = None

    @property
    def pushkeys(self) -> list[str]:
        """
        The pushkeys of its devices.
        """
        return [device["pushkey"] for device in self.notification["devices"]]

    @property
    def unread(self) -> int:
        """
        Its unread count.
        """
        return int(self.notification["counts"]["unread"])


#: An answer the test scripts: an HTTP code and headers, or L{HANG}.
HANG = -1


class PushGateway(Resource):
    """
    The gateway's one resource.

    @ivar received: every schema-valid request, in order.
    @ivar invalid: the schema errors of every request that had some.
    @ivar script: answers to give next (HTTP codes, or L{HANG}); when
        empty, 200.
    @ivar hang: never answer any request (until L{release}).
    @ivar rejecting: pushkeys answered as C{rejected}.
    """

    isLeaf = True

    def __init__(self, secret: bytes | None = None) -> None:
        super().__init__()
        self.secret = secret
        self.received: list[Received] = []
        self.invalid: list[list[str]] = []
        self.script: list[int] = []
        self.hang = False
        self.rejecting: set[str] = set()
        self.retryAfter: str | None = None
        self.hung: list[Request] = []
        self._waiters: list[tuple[Callable[[list[Received]], bool], Deferred[list[Received]]]] = []
        self.port: IListeningPort | None = None

    def render_POST(self, request: Request) -> bytes | int:
        """
        Check, keep and answer one notification.
        """
        if request.path != PATH:
            request.setResponseCode(404)
            return b'{"error": "not found"}'
        assert request.content is not None
        body = request.content.read()
        request.setHeader(b"content-type", b"application/json")
        errors = schemaErrors(body)
        signature = request.getHeader(b"x-crm-im-signature")
        if self.secret is not None:
            expected = b"sha256=" + hmac.new(self.secret, body, hashlib.sha256).hexdigest().encode()
            if signature is None or not hmac.compare_digest(signature, expected):
                errors.append(f"bad signature {signature!r}")
        if errors:
            self.invalid.append(errors)
            request.setResponseCode(400)
            return orjson.dumps({"error": errors})
        received = Received(orjson.loads(body)["notification"], body, signature)
        self.received.append(received)
        answer = self.script.pop(0) if self.script else (HANG if self.hang else 200)
        try:
            if answer == HANG:
                self.hung.append(request)
                return NOT_DONE_YET
            received.code = answer
            request.setResponseCode(answer)
            if answer == 429 and self.retryAfter is not None:
                request.setHeader(b"retry-after", self.retryAfter.encode())
            if answer != 200:
                return b'{"error": "try later"}'
            rejected = [key for key in received.pushkeys if key in self.rejecting]
            return orjson.dumps({"rejected": rejected})
        finally:
            self._fire()

    def _fire(self) -> None:
        waiting = []
        for predicate, d in self._waiters:
            if predicate(self.received):
                d.callback(list(self.received))
            else:
                waiting.append((predicate, d))
        self._waiters = waiting

    def waitFor(self, predicate: Callable[[list[Received]], bool], timeout: float, reactor: Any) -> Deferred[list[Received]]:
        """
        Fire with every request received once C{predicate} holds for them;
        fail after C{timeout} seconds.
        """
        d: Deferred[list[Received]] = Deferred()
        if predicate(self.received):
            d.callback(list(self.received))
            return d
        self._waiters.append((predicate, d))
        return d.addTimeout(timeout, reactor)

    def forUser(self, pushkey: str) -> list[Received]:
        """
        The requests naming C{pushkey}.
        """
        return [r for r in self.received if pushkey in r.pushkeys]

    def waitForKey(self, pushkey: str, count: int = 1, timeout: float = 20.0, reactor: Any = None) -> Deferred[list[Received]]:
        """
        Fire with the requests naming C{pushkey} once there are C{count}.
        """
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        return self.waitFor(lambda _: len(self.forUser(pushkey)) >= count, timeout, reactor).addCallback(
            lambda _: self.forUser(pushkey)
        )

    def release(self) -> None:
        """
        Answer the hung requests (200) and stop hanging.
        """
        self.hang = False
        hung, self.hung = self.hung, []
        for request in hung:
            if not request.finished and not getattr(request, "_disconnected", False):
                request.setResponseCode(200)
                request.write(b'{"rejected": []}')
                request.finish()

    def listen(self, reactor: Any, port: int = 0) -> int:
        """
        Listen on C{127.0.0.1:port}; return the port.
        """
        self.port = reactor.listenTCP(port, Site(self), interface="127.0.0.1")
        return int(self.port.getHost().port)

    def stop(self) -> Deferred[None] | None:
        """
        Drop hung requests and stop listening.
        """
        hung, self.hung = self.hung, []
        for request in hung:
            if request.channel is not None and request.channel.transport is not None:
                request.channel.transport.abortConnection()
        if self.port is None:
            return None
        port, self.port = self.port, None
        return port.stopListening()  # type: ignore[no-any-return]


def url(port: int) -> str:
    """
    The gateway URL crm_im is given.
    """
    return f"http://127.0.0.1:{port}{PATH.decode()}"


def keys(received: Iterable[Received]) -> list[list[str]]:
    """
    The pushkeys of each request.
    """
    return [r.pushkeys for r in received]
