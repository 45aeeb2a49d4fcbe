# -*- test-case-name: tests.integration.test_im -*-
"""
The chat application: every client event of the contract (sections 4 to 8).

L{IMApplication} registers one handler per event on the Socket.IO root
namespace. Each handler validates its payload (L{crm_im.im.validation}),
acts through L{Presence} and the L{IMessageStore}, and answers with exactly
one ack (if asked for) — the success payload or C{{"error": ...}} — plus the
C{error} event on refusal. Identity always comes from presence, never from
the payload.

Delivery order: a message is emitted only after its commit, and the
receipt follows. While a user's offline queue is being delivered to their
first device, live messages for them are held and emitted after it, so a
conversation never arrives out of C{seq} order.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable
from urllib.parse import quote

import attrs
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..auth import IAuthenticator, OpenAuthenticator
from ..engineio.backpressure import ReadGate
from ..engineio.packet import Frame
from ..limits import DISCONNECT, FailureLimiter, LimitSettings, SocketRateLimiter
from ..metrics import IMMetrics
from ..presence import INVISIBLE, ONLINE, Presence, UserPresence
from ..socketio.packet import encodeEvent
from ..socketio.server import Socket, SocketIOServer
from ..storage import IFileStore, IMessageStore, NewMessage, StoredMessage, StoreOutcome
from . import validation
from .errors import ALREADY_LOGGED_IN, INTERNAL, NOT_LOGGED_IN, RATE_LIMITED, UNAUTHORIZED, IMError
from .tokens import TokenGate

#: How many offline messages are fetched and sent per round.
PENDING_BATCH = 200

Ack = Callable[..., None]

#: The events charged to the message bucket as well as the event bucket.
_MESSAGE_EVENTS = frozenset(["message", "file_transfer"])


@attrs.frozen
class IMSettings:
    """
    The application's own limits.

    @ivar maxMessageLength: the longest C{content} of a text message.
    @ivar shutdownMessage: the text of C{server:shutdown}.
    @ivar logEvents: log a line per message, typing and status event (the
        original's C{[消息]} lines); off under load.
    """

    maxMessageLength: int = 65536
    shutdownMessage: str = "服务器正在关闭"
    logEvents: bool = True


def _frames(event: str, payload: Any) -> list[Frame]:
    return encodeEvent("/", event, (payload,))


class IMApplication:
    """
    The IM events on one L{SocketIOServer}'s root namespace.
    """

    log = Logger()

    def __init__(
        self,
        sio: SocketIOServer,
        presence: Presence,
        store: IMessageStore,
        files: IFileStore,
        clock: IReactorTime,
        settings: IMSettings | None = None,
        authenticator: IAuthenticator | None = None,
        limits: LimitSettings | None = None,
        metrics: IMMetrics | None = None,
        gate: ReadGate | None = None,
    ) -> None:
        self.sio = sio
        self.gate = gate if gate is not None else ReadGate()
        self.presence = presence
        self.store = store
        self.files = files
        self.clock = clock
        self.settings = settings if settings is not None else IMSettings()
        self._namespace = sio.namespace("/")
        self._sockets = self._namespace.sockets
        # Users whose offline queue is being delivered -> live messages held.
        self._catchingUp: dict[str, list[StoredMessage]] = {}
        # Messages emitted live whose "delivered" flag is not committed yet.
        self._unflushed: set[int] = set()
        # Users gone offline this turn, announced at its end: (id, when).
        self._goneOffline: list[tuple[str, int]] = []
        # Delivered this turn, to be marked in one write at its end.
        self._toMark: list[int] = []
        # Once server:shutdown went out, the sessions closing announce
        # nothing (N closing sockets would broadcast N offline changes to
        # each other).
        self._shuttingDown = False
        self.limits = limits if limits is not None else LimitSettings()
        self.metrics = metrics if metrics is not None else IMMetrics()
        self.rates = SocketRateLimiter(self.limits)
        self.tokens = TokenGate(
            authenticator if authenticator is not None else OpenAuthenticator(),
            clock,
            self._tokenExpired,
            FailureLimiter(self.limits.loginFailuresPerMinute, self.limits.loginFailureBurst),
            self.metrics.authFailures.inc,
        )
        presence.userLeft = self._userLeft
        sio.on("connect", self._connected)
        sio.on("disconnect", self._disconnected)
        self._route("user:login", self.login)
        self._route("user:logout", self.logout)
        self._route("message", self.message)
        self._route("status_change", self.statusChange)
        self._route("typing", self.typing)
        self._route("file_transfer", self.fileTransfer)
        self._route("get_history", self.getHistory, replyEvent="history")
        self._route("message:read", self.messageRead)
        self._route("auth:refresh", self.refreshToken)

    # ---- plumbing

    def now(self) -> int:
        """
        Milliseconds since the epoch, from the injected clock.
        """
        return int(self.clock.seconds() * 1000)

    def _route(
        self,
        event: str,
        method: Callable[[Socket, Any], Any],
        replyEvent: str | None = None,
    ) -> None:
        metrics = self.metrics
        rates = self.rates
        clock = self.clock
        isMessage = event in _MESSAGE_EVENTS

        def handler(sid: str, ack: Ack | None, *args: Any) -> None:
            socket = self._sockets.get(sid)
            if socket is None:
                return
            metrics.event(event)
            verdict = rates.check(sid, isMessage, clock.seconds())
            if verdict:
                self._rateLimited(socket, ack, event, args, verdict)
                return
            try:
                result = method(socket, args[0] if args else None)
            except IMError as error:
                self._refuse(socket, ack, event, error)
                return
            except Exception:
                self.log.failure("handling {event}", event=event)
                self._refuse(socket, ack, event, IMError(INTERNAL, "internal error"))
                return
            if isinstance(result, Deferred):
                result.addCallbacks(
                    self._reply,
                    self._failed,
                    callbackArgs=(socket, ack, replyEvent),
                    errbackArgs=(socket, ack, event),
                )
            else:
                self._reply(result, socket, ack, replyEvent)

        self.sio.on(event, handler, wantsAck=True)

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
        if verdict == DISCONNECT:
            self.log.warn(
                "disconnecting {sid} from {remote}: it kept sending past its rate limit",
                sid=socket.sid,
                remote=socket.session.remoteAddress,
            )
            self.metrics.abuseDisconnects.inc()
            self.sio.disconnect(socket.sid, closeConnection=True)

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

    def start(self) -> None:
        """
        Start the application's sweeps (token expiry).
        """
        self.tokens.start()

    def stop(self) -> None:
        """
        Stop the application's sweeps.
        """
        self.tokens.stop()

    def _storeFinished(self, started: float) -> None:
        """
        A message write began at C{started} is over: it no longer counts as
        work in flight for the L{ReadGate}, and its time is observed.
        """
        self.gate.end()
        self.metrics.store["store"].observe(self.clock.seconds() - started)

    def _timed(self, d: "Deferred[Any]", operation: str) -> "Deferred[Any]":
        """
        Observe how long the store took for C{d} (success or failure).
        """
        histogram = self.metrics.store[operation]
        started = self.clock.seconds()

        def observe(result: object) -> object:
            histogram.observe(self.clock.seconds() - started)
            return result

        return d.addBoth(observe)

    def _user(self, socket: Socket) -> UserPresence:
        user = self.presence.userOfDevice(socket.sid)
        if user is None:
            raise IMError(NOT_LOGGED_IN, "log in first (user:login)")
        return user

    def _send(self, sids: Iterable[str], frames: list[Frame], skip: str | None = None) -> int:
        """
        Write C{frames} to each connected socket of C{sids}.

        @return: how many sockets were written to.
        """
        sockets = self._sockets
        count = 0
        for sid in sids:
            if sid == skip:
                continue
            socket = sockets.get(sid)
            if socket is not None:
                socket.sendFrames(frames)
                count += 1
        return count

    def _broadcast(self, payload: dict[str, Any], event: str = "status_change", skip: str | None = None) -> None:
        """
        Send one event to every logged-in socket (encoded once).
        """
        self._send(list(self.presence.allDevices()), _frames(event, payload), skip)

    # ---- connection lifecycle

    def _connected(self, sid: str, auth: Any) -> None:
        socket = self._sockets.get(sid)
        remote = socket.session.remoteAddress if socket is not None else ""
        self.tokens.connected(sid, auth, remote)
        if self.settings.logEvents:
            self.log.info("[连接] {sid} {remote}", sid=sid, remote=remote)

    def _disconnected(self, sid: str, reason: str) -> None:
        self.rates.forget(sid)
        self.tokens.forget(sid)
        outcome = self.presence.logout(sid)
        userId = outcome.user.id if outcome is not None else ""
        if self.settings.logEvents:
            self.log.info("[断开] {sid} {userId} {reason}", sid=sid, userId=userId, reason=reason)
        if outcome is not None and outcome.lastDevice and outcome.wasVisible:
            self._announceOffline(outcome.user)

    def _announceOffline(self, user: UserPresence) -> None:
        """
        Tell everyone C{user} went offline, at the end of this reactor turn.

        Why not at once: when many connections drop together (a proxy
        restarts, a network fails, a load test ends) their ends arrive in
        the same turns, and announcing each at once would write N frames
        for each of N users, mostly to sockets that are closing too. At the
        end of the turn the users that left in it are out of presence, so
        each announcement goes only to those still there.
        """
        if self._shuttingDown:
            return
        if not self._goneOffline:
            self.clock.callLater(0, self._announceGone)
        self._goneOffline.append((user.id, self.now()))

    def _announceGone(self) -> None:
        gone, self._goneOffline = self._goneOffline, []
        if self._shuttingDown:
            return
        devices = list(self.presence.allDevices())
        for userId, timestamp in gone:
            if self.presence.user(userId) is not None:
                # Back (or leaving again) within the turn: nothing changed
                # for the others.
                continue
            self._send(devices, _frames("status_change", {"userId": userId, "status": INVISIBLE, "timestamp": timestamp}))

    def _userLeft(self, user: UserPresence) -> None:
        if user.visible:
            self._announceOffline(user)

    # ---- user:login / user:logout

    def login(self, socket: Socket, data: Any) -> dict[str, Any]:
        """
        C{user:login}: bind the socket to a user.
        """
        request = validation.login(data)
        current = self.presence.userOfDevice(socket.sid)
        if current is not None and current.id != request.id:
            raise IMError(ALREADY_LOGGED_IN, f"this socket is logged in as another user; user:logout first")
        self.tokens.login(socket.sid, request.id, request.token, socket.session.remoteAddress)
        maxDevices = self.limits.devicesPerUser
        if maxDevices and current is None:
            devices = self.presence.devicesOf(request.id)
            if len(devices) >= maxDevices and socket.sid not in devices:
                raise IMError(RATE_LIMITED, f"this user already has {maxDevices} devices logged in")
        result = self.presence.login(request.id, socket.sid, request.name, request.avatar)
        user = result.user
        wire = user.toWire()
        socket.sendFrames(_frames("user:login:success", wire))
        socket.sendFrames(_frames("online_users", self.presence.onlineUsersJSON()))
        if result.firstDevice:
            self._broadcast(
                {
                    "userId": user.id,
                    "status": ONLINE,
                    "timestamp": self.now(),
                    "name": user.name,
                    "avatar": user.avatar,
                },
                skip=socket.sid,
            )
        if self.settings.logEvents:
            self.log.info("[登录] {name}({userId}) {sid}", name=user.name, userId=user.id, sid=socket.sid)
        if current is None and user.id not in self._catchingUp:
            self._startCatchUp(user.id, socket)
        return wire

    def logout(self, socket: Socket, data: Any) -> dict[str, Any]:
        """
        C{user:logout}: unbind the socket; it stays connected.
        """
        user = self._user(socket)
        outcome = self.presence.logout(socket.sid)
        if outcome is not None and outcome.lastDevice and outcome.wasVisible:
            self._announceOffline(outcome.user)
        if self.settings.logEvents:
            self.log.info("[登出] {userId} {sid}", userId=user.id, sid=socket.sid)
        return {"userId": user.id, "status": INVISIBLE}

    def refreshToken(self, socket: Socket, data: Any) -> dict[str, Any]:
        """
        C{auth:refresh} C{{token}}: a fresh token for the same user, before
        the current one expires. Ack payload: C{{userId, expiresAt}}.
        """
        token = validation.payloadObject(data, "auth:refresh").get("token")
        if token is not None:
            token = validation.text(token, "token", validation.MAX_TOKEN, 1)
        user = self.presence.userOfDevice(socket.sid)
        return self.tokens.refresh(socket.sid, token, user.id if user is not None else None, socket.session.remoteAddress)

    # ---- offline queue

    def _startCatchUp(self, userId: str, socket: Socket) -> None:
        self._catchingUp[userId] = []
        d = ensureDeferred(self._deliverPending(userId, socket))
        d.addErrback(lambda failure: self.log.failure("offline delivery to {userId}", failure, userId=userId))
        d.addBoth(lambda _: self._endCatchUp(userId))

    async def _deliverPending(self, userId: str, socket: Socket) -> None:
        delivered: set[int] = set()
        while True:
            batch = await self._timed(self.store.pendingFor(userId, PENDING_BATCH), "pending")
            fresh = [m for m in batch if m.seq not in self._unflushed and m.seq not in delivered]
            if not fresh:
                return
            user = self.presence.userOfDevice(socket.sid)
            if user is None or user.id != userId or socket.sid not in self._sockets:
                # That device went; the rest waits for the next login.
                return
            for stored in fresh:
                socket.sendFrames(_frames("message", stored.toWire()))
                delivered.add(stored.seq)
            await self.store.markDelivered([m.seq for m in fresh])
            self.metrics.receipts["delivered"].inc(len(fresh))
            for stored in fresh:
                self._send(
                    self.presence.devicesOf(stored.fromId),
                    _frames(
                        "message:sent",
                        {"messageId": stored.id, "status": "delivered", "timestamp": stored.serverTimestamp},
                    ),
                )
            if len(batch) < PENDING_BATCH:
                return

    def _endCatchUp(self, userId: str) -> None:
        held = self._catchingUp.pop(userId, [])
        for stored in sorted(held, key=lambda m: m.seq):
            self._send(self.presence.devicesOf(userId), _frames("message", stored.toWire()))

    # ---- messages

    def message(self, socket: Socket, data: Any) -> Deferred[dict[str, Any]]:
        """
        C{message}: store durably, deliver, then answer with the receipt.
        """
        user = self._user(socket)
        request = validation.message(data, user.id, self.settings.maxMessageLength)
        stored = self.store.storeMessage(
            NewMessage(
                fromId=user.id,
                fromName=user.name,
                toId=request.toId,
                id=request.id,
                topic=request.topic,
                type=request.type,
                content=request.content,
                fileUrl=request.fileUrl,
                fileName=request.fileName,
                clientTimestamp=request.timestamp,
                serverTimestamp=self.now(),
            )
        )
        # Counted as work in flight (past its mark the ReadGate stops
        # reading from clients) until the write is over.
        self.gate.begin(socket.session)
        started = self.clock.seconds()
        return stored.addCallbacks(
            self._messageWritten,
            self._storeFailed,
            callbackArgs=(socket, started),
            errbackArgs=(request.id, started),
        )

    def _storeFailed(self, failure: Failure, messageId: str, started: float) -> Failure:
        self._storeFinished(started)
        if failure.check(IMError):
            return failure
        self.log.failure("storing message {id}", failure, id=messageId)
        raise IMError(INTERNAL, "the message could not be stored; send it again", messageId)

    def _messageWritten(self, outcome: StoreOutcome, socket: Socket, started: float) -> dict[str, Any]:
        self._storeFinished(started)
        return self._messageStored(outcome, socket)

    def _messageStored(self, outcome: StoreOutcome, socket: Socket) -> dict[str, Any]:
        stored = outcome.message
        if outcome.created:
            self.metrics.messages[stored.type if stored.type == "file" else "text"].inc()
            delivered = self._deliver(stored, socket.sid)
            if self.settings.logEvents:
                self.log.info("[消息] {fromId} -> {toId} seq={seq}", fromId=stored.fromId, toId=stored.toId, seq=stored.seq)
        else:
            delivered = stored.delivered or stored.seq in self._unflushed
        status = "delivered" if delivered else "offline"
        self.metrics.receipts[status].inc()
        receipt = {
            "messageId": stored.id,
            "status": status,
            "timestamp": stored.serverTimestamp,
        }
        socket.sendFrames(_frames("message:sent", receipt))
        return receipt

    def _deliver(self, stored: StoredMessage, senderSid: str) -> bool:
        """
        Emit a newly stored message to the recipient's devices and the
        sender's other devices.

        @return: whether a device of the recipient got it (or will, right
            after its offline queue).
        """
        frames = _frames("message", stored.toWire())
        held = self._catchingUp.get(stored.toId)
        if held is not None:
            held.append(stored)
            delivered = True
        else:
            delivered = self._send(self.presence.devicesOf(stored.toId), frames) > 0
        if stored.fromId != stored.toId:
            self._send(self.presence.devicesOf(stored.fromId), frames, skip=senderSid)
        if delivered:
            seq = stored.seq
            self._unflushed.add(seq)
            # One markDelivered per reactor turn for every message delivered
            # in it (a commit's batch is delivered in one turn).
            if not self._toMark:
                self.clock.callLater(0, self._markDelivered)
            self._toMark.append(seq)
        return delivered

    def _markDelivered(self) -> None:
        seqs, self._toMark = self._toMark, []
        self.store.markDelivered(seqs).addBoth(self._flushed, seqs)

    def _flushed(self, result: object, seqs: list[int]) -> None:
        self._unflushed.difference_update(seqs)
        if isinstance(result, Failure):
            self.log.failure("marking {count} messages delivered", result, count=len(seqs))

    # ---- status, typing

    def statusChange(self, socket: Socket, data: Any) -> dict[str, Any]:
        """
        C{status_change}: set the user's status and tell everyone else.
        """
        user = self._user(socket)
        status = validation.status(data)
        self.presence.setStatus(user.id, status)
        payload = {"userId": user.id, "status": status, "timestamp": self.now()}
        self._broadcast(dict(payload, name=user.name, avatar=user.avatar), skip=socket.sid)
        if self.settings.logEvents:
            self.log.info("[状态] {userId} -> {status}", userId=user.id, status=status)
        return payload

    def typing(self, socket: Socket, data: Any) -> dict[str, Any]:
        """
        C{typing}: forward to the recipient's devices; never stored.
        """
        user = self._user(socket)
        request = validation.typing(data, user.id)
        payload: dict[str, Any] = {"fromId": user.id, "fromName": user.name, "isTyping": request.isTyping}
        if request.topic is not None:
            payload["topic"] = request.topic
        sent = self._send(self.presence.devicesOf(request.toId), _frames("typing", payload))
        return {"toId": request.toId, "delivered": sent > 0}

    # ---- files

    def fileTransfer(self, socket: Socket, data: Any) -> Any:
        """
        C{file_transfer}: relay to online devices as it came, or keep the
        file and queue a C{file} message for an offline recipient.
        """
        user = self._user(socket)
        request = validation.fileTransfer(data, user.id)
        now = self.now()
        if self.presence.devicesOf(request.toId) or request.toId in self._catchingUp:
            payload: dict[str, Any] = {
                "id": request.id,
                "toId": request.toId,
                "fileName": request.fileName,
                "data": request.raw["data"],
                "fromId": user.id,
                "fromName": user.name,
                "serverTimestamp": now,
            }
            for key in ("fileSize", "mimeType", "topic"):
                value = getattr(request, key)
                if value is not None:
                    payload[key] = value
            frames = encodeEvent("/", "file_transfer", (payload,))
            self._send(self.presence.devicesOf(request.toId), frames)
            self._send(self.presence.devicesOf(user.id), frames, skip=socket.sid)
            if self.settings.logEvents:
                self.log.info("[文件] {fromId} -> {toId} {size} bytes", fromId=user.id, toId=request.toId, size=len(request.data))
            self.metrics.messages["file_transfer"].inc()
            self.metrics.receipts["delivered"].inc()
            receipt = {"messageId": request.id, "status": "delivered", "timestamp": now}
            socket.sendFrames(_frames("message:sent", receipt))
            return receipt
        return ensureDeferred(self._keepFile(socket, user, request, now))

    async def _keepFile(
        self, socket: Socket, user: UserPresence, request: validation.FileRequest, now: int
    ) -> dict[str, Any]:
        try:
            record = await self.files.save(user.id, request.toId, request.fileName, request.mimeType, request.data, now)
        except Exception:
            self.log.failure("keeping file {id}", id=request.id)
            raise IMError(INTERNAL, "the file could not be stored; send it again", request.id)
        url = "/files/%s/%s" % (record.fileId, quote(request.fileName, safe=""))
        outcome = await self.store.storeMessage(
            NewMessage(
                fromId=user.id,
                fromName=user.name,
                toId=request.toId,
                id=request.id,
                topic=request.topic,
                type="file",
                content=request.fileName,
                fileUrl=url,
                fileName=request.fileName,
                clientTimestamp=None,
                serverTimestamp=now,
            )
        )
        if self.settings.logEvents:
            self.log.info("[文件] {fromId} -> {toId} kept for later", fromId=user.id, toId=request.toId)
        return self._messageStored(outcome, socket)

    # ---- history and read state

    def getHistory(self, socket: Socket, data: Any) -> Deferred[dict[str, Any]]:
        """
        C{get_history}: a page of the caller's own conversation.
        """
        user = self._user(socket)
        request = validation.history(data)
        d = self._timed(
            self.store.history(user.id, request.friendId, request.topic, request.limit, request.before, request.after),
            "history",
        )
        return d.addCallback(
            lambda page: {
                "friendId": request.friendId,
                "topic": request.topic,
                "messages": [m.toWire() for m in page.messages],
                "hasMore": page.hasMore,
            }
        )

    def messageRead(self, socket: Socket, data: Any) -> Deferred[dict[str, Any]]:
        """
        C{message:read}: mark received messages read and tell their
        senders.
        """
        user = self._user(socket)
        request = validation.read(data)
        now = self.now()
        d = self._timed(
            self.store.markRead(
                user.id, now, friendId=request.friendId, upToSeq=request.upToSeq, messageIds=request.messageIds
            ),
            "read",
        )

        def notify(newlyRead: list[StoredMessage]) -> dict[str, Any]:
            bySender: dict[str, list[str]] = {}
            for stored in newlyRead:
                bySender.setdefault(stored.fromId, []).append(stored.id)
            for senderId, ids in bySender.items():
                self._send(
                    self.presence.devicesOf(senderId),
                    _frames("message:read", {"readerId": user.id, "messageIds": ids, "timestamp": now}),
                )
            return {"readerId": user.id, "messageIds": [m.id for m in newlyRead], "timestamp": now}

        return d.addCallback(notify)

    # ---- shutdown

    def announceShutdown(self) -> None:
        """
        Send C{server:shutdown} to every connected socket.
        """
        self._shuttingDown = True
        self.sio.emit("server:shutdown", {"message": self.settings.shutdownMessage, "timestamp": self.now()})
