# -*- test-case-name: tests.test_im_admission -*-
"""
The Socket.IO gateway: the IM events of the root namespace mapped onto the
transport-free handlers of L{crm_im.im}.

It owns what belongs to the transport: the event table, per-socket rate
limits, exactly one ack per event (the success payload or
C{{"error": ...}}), the C{error} event on refusal, the read gate (a message
write is work in flight until it is stored or failed), and disconnecting a
socket whose token expired or that abuses its rate limit. It decides
nothing about IM: each handler gets a L{Caller} (or, for login, the device
and its address) and the payload.
"""

from __future__ import annotations

from types import CoroutineType
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from ..engineio.backpressure import ReadGate
from ..im import validation
from ..im.core import IMCore
from ..im.errors import INTERNAL, RATE_LIMITED, UNAUTHORIZED, IMError
from ..limits import DISCONNECT, SocketRateLimiter
from ..safelog import Logger
from ..socketio.packet import encodeEvent
from ..socketio.recovery import RECOVERABLE_REASONS
from ..socketio.server import ConnectionRefused, Socket, SocketIOServer

Ack = Callable[..., None]

#: Seconds a socket disconnected for abuse has for its stored messages'
#: receipts (writes in flight) before it is dropped anyway.
DRAIN_TIMEOUT = 10.0

#: The events charged to the message bucket as well as the event bucket.
_MESSAGE_EVENTS = frozenset(["message", "file_transfer"])

#: Events whose handler takes the device and its address, not a Caller:
#: they are allowed before a login.
_ANONYMOUS = frozenset(["user:login", "auth:refresh"])


def _frames(event: str, payload: Any) -> list[Any]:
    return encodeEvent("/", event, (payload,))


class SocketIOGateway:
    """
    The IM events on one L{SocketIOServer}'s root namespace.
    """

    log = Logger()

    def __init__(self, sio: SocketIOServer, core: IMCore, clock: IReactorTime, gate: ReadGate | None = None) -> None:
        self.sio = sio
        self.core = core
        self.clock = clock
        self.gate = gate if gate is not None else ReadGate()
        self.metrics = core.metrics
        self.rates = SocketRateLimiter(core.limits)
        self._namespace = sio.namespace("/")
        self._sockets = self._namespace.sockets
        # socket id -> its Engine.IO session's public id, for the log lines
        # (one connection id; never the sid itself, a credential)
        self._connections: dict[str, str] = {}
        # message writes in flight per socket, and the sockets to drop once
        # theirs are over (their receipts sent first): socket id -> timeout
        self._writing: dict[str, int] = {}
        self._dropping: dict[str, IDelayedCall] = {}
        core.sessions.connectionOf = self._connections.get
        core.tokens.expired = self._tokenExpired
        sio.on("connect", self._connected)
        sio.on("disconnect", self._disconnected)
        sessions = core.sessions
        messaging = core.messaging
        groups = core.groups
        rooms = core.rooms
        self._anonymous("user:login", sessions.login)
        self._anonymous("auth:refresh", sessions.refresh)
        self.route("user:logout", sessions.logout)
        self.route("status_change", sessions.statusChange)
        self.route("message", messaging.send)
        self.route("typing", messaging.typing)
        self.route("file_transfer", messaging.fileTransfer)
        self.route("get_history", messaging.history, replyEvent="history")
        self.route("message:read", messaging.read)
        self.route("message:recall", messaging.recall)
        self.route("group:create", groups.create)
        self.route("group:update", groups.update)
        self.route("group:add_members", groups.addMembers)
        self.route("group:remove_members", groups.removeMembers)
        self.route("group:leave", groups.leave)
        self.route("group:set_role", groups.setRole)
        self.route("group:dissolve", groups.dissolve)
        self.route("group:list", groups.listGroups)
        self.route("group:info", groups.info)
        self.route(
            "group:read_receipts", lambda caller, data: groups.readReceipts(caller, data, messaging.findSharedMessages)
        )
        self.route("room:create", rooms.create)
        self.route("room:list", rooms.listRooms)
        self.route("room:join", rooms.join)
        self.route("room:leave", rooms.leave)
        self.route("push:register", core.push.register)
        self.route("push:unregister", core.push.unregister)
        self.route("group:mute", core.push.mute)
        self.route("keys:upload", core.keys.upload)
        self.route("keys:query", core.keys.query)
        self.route("keys:claim", core.keys.claim)
        self.route("file:upload", lambda caller, data: core.fileHandlers().upload(caller, data))
        self.route("file:url", lambda caller, data: core.fileHandlers().url(caller, data))

    # ---- plumbing

    def _anonymous(self, event: str, method: Callable[[str, str, Any], Any]) -> None:
        self.route(event, lambda device, data: method(device, self._remote(device), data), anonymous=True)

    def _remote(self, device: str) -> str:
        socket = self._sockets.get(device)
        return socket.session.remoteAddress if socket is not None else ""

    def route(
        self,
        event: str,
        method: Callable[[Any, Any], Any],
        replyEvent: str | None = None,
        anonymous: bool = False,
    ) -> None:
        """
        Serve C{event} with C{method(caller, payload)} (for anonymous
        events, C{method(device, payload)}).
        """
        metrics = self.metrics
        rates = self.rates
        clock = self.clock
        isMessage = event in _MESSAGE_EVENTS
        callerOf = self.core.sessions.caller
        gate = self.gate

        def handler(sid: str, ack: Ack | None, *args: Any) -> None:
            socket = self._sockets.get(sid)
            if socket is None or sid in self._dropping:
                # (a socket being dropped for abuse: only its receipts go out)
                return
            metrics.event(event)
            verdict = rates.check(sid, isMessage, clock.seconds())
            if verdict:
                self._rateLimited(socket, ack, event, args, verdict)
                return
            data = args[0] if args else None
            started = 0.0
            try:
                who: Any = sid if anonymous else callerOf(sid)
                if isMessage:
                    # Counted as work in flight (past its mark the ReadGate
                    # stops reading from clients) until the write is over.
                    gate.begin(socket.session)
                    started = clock.seconds()
                    try:
                        result = method(who, data)
                    except BaseException:
                        gate.end()
                        raise
                else:
                    result = method(who, data)
            except IMError as error:
                self._refuse(socket, ack, event, error)
                return
            except Exception:
                self.log.failure("handling {event}", event=event)
                self._refuse(socket, ack, event, IMError(INTERNAL, "internal error"))
                return
            if type(result) is CoroutineType:
                result = Deferred.fromCoroutine(result)
            if isinstance(result, Deferred):
                if isMessage:
                    result.addBoth(self._writeOver, started)
                    self._writing[sid] = self._writing.get(sid, 0) + 1
                result.addCallbacks(
                    self._reply,
                    self._failed,
                    callbackArgs=(socket, ack, replyEvent),
                    errbackArgs=(socket, ack, event),
                )
                if isMessage:
                    result.addBoth(self._replied, sid)
            else:
                if isMessage:
                    gate.end()
                self._reply(result, socket, ack, replyEvent)

        self.sio.on(event, handler, wantsAck=True)

    def _writeOver(self, result: object, started: float) -> object:
        """
        A message write begun at C{started} is over: it leaves the gate,
        and its time is observed.
        """
        self.gate.end()
        self.metrics.store["store"].observe(self.clock.seconds() - started)
        return result

    def _replied(self, result: object, sid: str) -> object:
        """
        The receipt (or refusal) of a message write of C{sid} went out; a
        socket waiting to be dropped goes once its last one did.
        """
        left = self._writing.get(sid, 0) - 1
        if left > 0:
            self._writing[sid] = left
        else:
            self._writing.pop(sid, None)
            if sid in self._dropping:
                self._drop(sid)
        return result

    def _reply(self, value: Any, socket: Socket, ack: Ack | None, replyEvent: str | None) -> None:
        if ack is not None:
            ack(value)
        elif replyEvent is not None:
            socket.sendFrames(_frames(replyEvent, value))

    def _refuse(self, socket: Socket, ack: Ack | None, event: str, error: IMError) -> None:
        self.metrics.error(error.code)
        socket.sendFrames(_frames("error", error.event(event)))
        if ack is not None:
            ack(error.ack())

    def _failed(self, failure: Failure, socket: Socket, ack: Ack | None, event: str) -> None:
        if failure.check(IMError):
            self._refuse(socket, ack, event, failure.value)
            return
        self.log.failure("handling {event}", failure, event=event)
        self._refuse(socket, ack, event, IMError(INTERNAL, "internal error"))

    def _rateLimited(self, socket: Socket, ack: Ack | None, event: str, args: tuple[Any, ...], verdict: int) -> None:
        data = args[0] if args else None
        id = data.get("id") if isinstance(data, dict) else None
        if not isinstance(id, str) or len(id) > validation.MAX_ID:
            id = None
        self._refuse(socket, ack, event, IMError(RATE_LIMITED, "too many events; slow down and send again", id))
        if verdict == DISCONNECT and socket.sid not in self._dropping:
            self.log.warn(
                "disconnecting {sid} from {remote} conn={conn}: it kept sending past its rate limit",
                sid=socket.sid,
                remote=socket.session.remoteAddress,
                conn=socket.session.publicId,
            )
            self.metrics.abuseDisconnects.inc()
            # The messages it sent before were accepted: their receipts
            # (sent once stored) must reach it before the disconnect.
            # Meanwhile its events are ignored.
            sid = socket.sid
            self._dropping[sid] = self.clock.callLater(DRAIN_TIMEOUT, self._drop, sid)
            if not self._writing.get(sid):
                self._drop(sid)

    def _drop(self, sid: str) -> None:
        """
        Disconnect a socket dropped for abuse (after its receipts).
        """
        timeout = self._dropping.pop(sid, None)
        if timeout is not None and timeout.active():
            timeout.cancel()
        self.sio.disconnect(sid, closeConnection=True)

    def _tokenExpired(self, sid: str) -> None:
        socket = self._sockets.get(sid)
        if socket is None:
            return
        self.metrics.tokenExpiries.inc()
        self.metrics.error(UNAUTHORIZED)
        socket.sendFrames(
            _frames(
                "error",
                IMError(UNAUTHORIZED, "token expired; send auth:refresh {token} before it expires").event(
                    "auth:refresh"
                ),
            )
        )
        self.sio.disconnect(sid, closeConnection=True)

    def _connected(self, sid: str, auth: Any) -> None:
        remote = self._remote(sid)
        socket = self._sockets.get(sid)
        if socket is not None:
            self._connections[sid] = socket.session.publicId
        try:
            self.core.sessions.connected(sid, auth, remote)
            socket = self._sockets.get(sid)
            if socket is not None and socket.recovered:
                # Connection state recovery: the same sid is back; it is
                # logged in again as it was, with what it missed from the
                # store (or refused: a client that trusts `recovered` and
                # does not log in again must not go on logged out).
                self.core.sessions.resume(sid, remote)
        except IMError as error:
            # Refusals are logged (never the token): bad or expired tokens
            # are what an operator looks for after a key rotation.
            self.core.tokens.forget(sid)
            self.log.info(
                "[拒绝] {sid} {remote} conn={conn}: {code} {reason}",
                sid=sid,
                remote=remote,
                conn=self._connections.pop(sid, None),
                code=error.code,
                reason=error.message,
            )
            raise ConnectionRefused(error.message, {"code": error.code})

    def _disconnected(self, sid: str, reason: str) -> None:
        self.rates.forget(sid)
        window = 0.0
        if self.sio.recovery is not None and reason in RECOVERABLE_REASONS:
            window = self.sio.config.recoveryWindow / 1000
        self.core.sessions.disconnected(sid, reason, resumeWithin=window)
        self._connections.pop(sid, None)
        self._writing.pop(sid, None)
        timeout = self._dropping.pop(sid, None)
        if timeout is not None and timeout.active():
            timeout.cancel()

    def start(self) -> None:
        """
        Start the sweeps (token expiry, recovery deadlines).
        """
        self.core.tokens.start()
        self.core.sessions.start()

    def stop(self) -> None:
        """
        Stop the sweeps and the drop timeouts: no timer outlives the
        server.
        """
        self.core.tokens.stop()
        self.core.sessions.stop()
        dropping, self._dropping = self._dropping, {}
        for timeout in dropping.values():
            if timeout.active():
                timeout.cancel()

    def announceShutdown(self) -> None:
        """
        Send C{server:shutdown} to every connected socket.
        """
        self.core.sessions.announceShutdown()

