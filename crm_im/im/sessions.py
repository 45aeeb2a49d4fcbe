# -*- test-case-name: tests.test_im_presence_fanout -*-
"""
Devices coming and going: C{user:login}, C{user:logout}, C{status_change},
C{auth:refresh}, a socket's connect and disconnect, as transport-free
handlers. L{Presence} holds the state (pure transitions); this module is
where presence changes are announced.

Offline changes are announced at the end of the reactor turn: when many
connections drop together (a proxy restarts, a network fails) their ends
arrive in the same turns, and announcing each at once would write N frames
for each of N users, mostly to sockets that are closing too.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from ..safelog import Logger
from ..storage.interface import StoreClosedError
from ..presence import INVISIBLE, ONLINE, Presence, UserPresence
from ..timers import DeadlineHeap
from . import validation
from .errors import ALREADY_LOGGED_IN, NOT_LOGGED_IN, RATE_LIMITED, IMError
from .groups import GroupHandlers
from .recovery import StoreRecovery
from .interfaces import Caller, IRouter
from .messaging import Messaging
from .rooms import RoomHandlers
from .tokens import TokenGate


class SessionWatcher(Protocol):
    """
    Told of devices coming and going (the admin API's users seen and
    devices, the Socket.IO Admin UI). Called on the reactor thread, in
    the handler's turn: keep it cheap.
    """

    def deviceConnected(self, device: str, remote: str) -> None:
        """
        A socket connected.
        """

    def deviceLoggedIn(self, device: str, user: UserPresence) -> None:
        """
        C{device} logged in as C{user}.
        """

    def deviceLoggedOut(self, device: str, user: UserPresence) -> None:
        """
        C{device} of C{user} logged out or disconnected.
        """

    def deviceDisconnected(self, device: str, reason: str) -> None:
        """
        A socket is gone.
        """


@attrs.frozen
class SessionSettings:
    """
    @ivar maxDevicesPerUser: devices logged in as one user at once (0: no
        limit).
    @ivar shutdownMessage: the text of C{server:shutdown}.
    @ivar logEvents: log the original's C{[登录]}-style lines.
    """

    maxDevicesPerUser: int = 16
    shutdownMessage: str = "服务器正在关闭"
    logEvents: bool = True


class Sessions:
    """
    Login, logout, status and the lifecycle of devices.
    """

    log = Logger()

    def __init__(
        self,
        presence: Presence,
        router: IRouter,
        tokens: TokenGate,
        messaging: Messaging,
        groups: GroupHandlers,
        rooms: RoomHandlers,
        clock: IReactorTime,
        settings: SessionSettings | None = None,
    ) -> None:
        self.presence = presence
        self.router = router
        self.tokens = tokens
        self.messaging = messaging
        self.groups = groups
        self.rooms = rooms
        self.clock = clock
        self.settings = settings if settings is not None else SessionSettings()
        # Users gone offline this turn, announced at its end: (id, when).
        self._goneOffline: list[tuple[str, int]] = []
        # Once server:shutdown went out, the sessions closing announce
        # nothing (N closing sockets would broadcast N offline changes).
        self.shuttingDown = False
        presence.userLeft = self._userLeft
        # Sockets that may come back (connection state recovery): their
        # identity (id, name, avatar) until their deadline.
        self._resumable: dict[str, tuple[str, str, str | None]] = {}
        self._resumeDeadlines = DeadlineHeap(clock, self._resumeExpired)
        #: Refuses a login by raising L{IMError} (a ban, C{FORBIDDEN});
        #: set by the admin wiring.
        self.admission: Callable[[str], None] | None = None
        self.watchers: list[SessionWatcher] = []
        #: The transport's id of a device's connection (the Engine.IO sid,
        #: which the protocol's own log lines name), for the log; set by
        #: the gateway.
        self.connectionOf: Callable[[str], str | None] = lambda device: None
        #: Connection state recovery from the store (L{enableRecovery}):
        #: told of logins, of sockets that may come back and of those
        #: that may not.
        self.recovery: StoreRecovery | None = None

    def now(self) -> int:
        """
        Milliseconds since the epoch, from the injected clock.
        """
        return int(self.clock.seconds() * 1000)

    def caller(self, device: str) -> Caller:
        """
        The logged-in user of C{device}.

        @raise IMError: C{NOT_LOGGED_IN}.
        """
        user = self.presence.userOfDevice(device)
        if user is None:
            raise IMError(NOT_LOGGED_IN, "log in first (user:login)")
        return Caller(device, user.id, user.name, user.avatar)

    # ---- connect and disconnect

    def connected(self, device: str, auth: Any, remote: str) -> None:
        """
        A socket connected (its CONNECT's auth token, if any, is checked).
        """
        self.tokens.connected(device, auth, remote)
        for watcher in self.watchers:
            watcher.deviceConnected(device, remote)
        if self.settings.logEvents:
            self.log.info("[连接] {sid} {remote} conn={conn}", sid=device, remote=remote, conn=self.connectionOf(device))

    def disconnected(self, device: str, reason: str, resumeWithin: float = 0.0) -> None:
        """
        A socket is gone.

        @param resumeWithin: seconds within which the socket may come back
            (connection state recovery, L{resume}): meanwhile its user
            stays online for the others (unless the hold ends) and it
            stays in its chat rooms, while new 1:1 messages for it wait in
            the store's offline queue, as for a user with no device.
        """
        self.tokens.forget(device)
        user = self.presence.userOfDevice(device) if resumeWithin > 0 else None
        recovery = self.recovery
        if user is not None:
            self._resumable[device] = (user.id, user.name, user.avatar)
            self._resumeDeadlines.set(device, resumeWithin)
            if recovery is not None:
                recovery.gone(device, self.rooms.rooms.roomsOf(device))
        else:
            self.rooms.deviceGone(device)
            if recovery is not None:
                recovery.forget(device)
        outcome = self.presence.logout(device, hold=resumeWithin)
        userId = outcome.user.id if outcome is not None else ""
        for watcher in self.watchers:
            if outcome is not None:
                watcher.deviceLoggedOut(device, outcome.user)
            watcher.deviceDisconnected(device, reason)
        if self.settings.logEvents:
            self.log.info(
                "[断开] {sid} {userId} {reason} conn={conn}",
                sid=device,
                userId=userId,
                reason=reason,
                conn=self.connectionOf(device),
            )
        if outcome is not None and outcome.lastDevice and outcome.wasVisible:
            self._announceOffline(outcome.user)

    def resume(self, device: str, remote: str) -> bool:
        """
        The socket C{device} that went away (L{disconnected} with
        C{resumeWithin}) is back with its sid (connection state recovery):
        it is logged in again as the same user without a login (no online
        change for the others if its user was held), keeps its rooms, and
        gets C{online_users}, then from the store the 1:1 messages that
        waited meanwhile, then the C{groups} summary, as after
        C{user:login}. With tokens
        required, its CONNECT must carry a valid token for that user.

        @return: whether the device was logged in again (not if it had no
            login to come back to).
        @raise IMError: C{UNAUTHORIZED} if tokens are required and its
            CONNECT carried none for its user; C{FORBIDDEN} for a ban. Its
            recovery is over then.
        """
        identity = self._resumable.pop(device, None)
        recovery = self.recovery
        fromStore = recovery is not None and recovery.comingBack(device)
        if identity is None and recovery is not None:
            # (back after a restart, or from another node: its record)
            identity = recovery.identity(device)
        if identity is None:
            return False
        self._resumeDeadlines.cancel(device)
        userId, name, avatar = identity
        try:
            self.tokens.login(device, userId, None, remote)
            if self.admission is not None:
                self.admission(userId)
        except IMError:
            # Refused (with tokens required, its CONNECT carried none for
            # that user; or a ban): gone for good, and told so.
            self.rooms.deviceGone(device)
            if recovery is not None:
                recovery.forget(device)
            self.presence.endHold(userId)
            raise
        result = self.presence.login(userId, device, name, avatar)
        user = result.user
        for watcher in self.watchers:
            watcher.deviceLoggedIn(device, user)
        if result.firstDevice:
            self.router.toEveryone(
                "status_change",
                {"userId": user.id, "status": ONLINE, "timestamp": self.now(), "name": user.name, "avatar": user.avatar},
                exceptDevice=device,
            )
        # Who came and went while it was away was told to the others only
        # (presence changes are not kept for replay): the list again, as
        # at a login, which a client takes as the whole list.
        self.router.toDevices((device,), "online_users", self.presence.onlineUsersJSON())
        if self.settings.logEvents:
            self.log.info("[恢复] {name}({userId}) {sid}", name=user.name, userId=user.id, sid=device)
        if fromStore and recovery is not None:
            # What it missed comes from the store, in seq order, before
            # the live messages; then the groups summary.
            recovery.resumed(device, user).addBoth(self._sendGroups, user.id, device)
        elif self.messaging.holding(user.id):
            self._sendGroups(None, user.id, device)
        else:
            self.messaging.catchUp(user.id, device).addCallback(self._sendGroups, user.id, device)
        return True

    def start(self) -> None:
        """
        Run the recovery deadlines again after L{stop}; the store's
        recovery records of a previous run get their expiry.
        """
        self._resumeDeadlines.start()
        if self.recovery is not None:
            self.recovery.start()

    def endSessionsOf(self, userId: str) -> None:
        """
        C{userId} was kicked or banned: none of its sockets that went away
        may come back (here, after a restart, or on another node).
        """
        for device in [d for d, identity in self._resumable.items() if identity[0] == userId]:
            del self._resumable[device]
            self._resumeDeadlines.cancel(device)
            self.rooms.deviceGone(device)
        if self.recovery is not None:
            self.recovery.forgetUser(userId)
        # Nothing of it may come back: it is offline now, not at the end of
        # the window it was held online for.
        self.presence.endHold(userId)

    def stop(self) -> None:
        """
        The server stops: no deadline of a socket that may come back
        outlives it (its heap's timer is disarmed; a process that exits
        forgets the held sockets, the store keeps what recovery needs).
        """
        self._resumeDeadlines.stop()
        if self.recovery is not None:
            self.recovery.stop()

    def _resumeExpired(self, device: object) -> None:
        """
        A socket that could have come back did not: it leaves its rooms.
        Unless it came back on another node of the cluster (recovered from
        the store there: logged in again with its sid): its rooms are that
        node's now, and leaving them here took it out of this node's view
        of them (no room message from here reached it any more) and told
        every member it had left.
        """
        assert isinstance(device, str)
        if self._resumable.pop(device, None) is not None and self.presence.userOfDevice(device) is None:
            self.rooms.deviceGone(device)

    def _announceOffline(self, user: UserPresence) -> None:
        if self.shuttingDown:
            return
        if not self._goneOffline:
            self.clock.callLater(0, self._announceGone)
        self._goneOffline.append((user.id, self.now()))

    def _announceGone(self) -> None:
        gone, self._goneOffline = self._goneOffline, []
        if self.shuttingDown:
            return
        for userId, timestamp in gone:
            if self.presence.user(userId) is not None:
                # Back (or leaving again) within the turn: nothing changed.
                continue
            # (every node sees the user leave and tells its own devices;
            # a mass disconnect's notices go out batched per device)
            self.router.toEveryoneHere("status_change", {"userId": userId, "status": INVISIBLE, "timestamp": timestamp})

    def _userLeft(self, user: UserPresence) -> None:
        if user.visible:
            self._announceOffline(user)

    # ---- the events

    def login(self, device: str, remote: str, data: Any) -> dict[str, Any]:
        """
        C{user:login}: bind the device to a user; then the online list, the
        offline queue (first device) and the group summaries.
        """
        request = validation.login(data)
        current = self.presence.userOfDevice(device)
        if current is not None and current.id != request.id:
            raise IMError(ALREADY_LOGGED_IN, "this socket is logged in as another user; user:logout first")
        try:
            self.tokens.login(device, request.id, request.token, remote)
        except IMError as error:
            # Logged as a refused CONNECT is (never the token): a bad or
            # expired token is what an operator looks for after a key
            # rotation, whichever way the client sent it.
            self.log.info(
                "[拒绝] {sid} {remote} conn={conn}: user:login {userId} {code} {reason}",
                sid=device,
                remote=remote,
                conn=self.connectionOf(device),
                userId=request.id,
                code=error.code,
                reason=error.message,
            )
            raise
        if self.admission is not None:
            self.admission(request.id)
        maxDevices = self.settings.maxDevicesPerUser
        if maxDevices and current is None:
            devices = self.presence.devicesOf(request.id)
            if len(devices) >= maxDevices and device not in devices:
                raise IMError(RATE_LIMITED, f"this user already has {maxDevices} devices logged in")
        result = self.presence.login(request.id, device, request.name, request.avatar)
        user = result.user
        for watcher in self.watchers:
            watcher.deviceLoggedIn(device, user)
        if current is None and self.recovery is not None:
            self.recovery.loggedIn(device, user)
        wire = user.toWire()
        self.router.toDevices((device,), "user:login:success", wire)
        self.router.toDevices((device,), "online_users", self.presence.onlineUsersJSON())
        if result.firstDevice:
            self.router.toEveryone(
                "status_change",
                {"userId": user.id, "status": ONLINE, "timestamp": self.now(), "name": user.name, "avatar": user.avatar},
                exceptDevice=device,
            )
        if self.settings.logEvents:
            self.log.info("[登录] {name}({userId}) {sid}", name=user.name, userId=user.id, sid=device)
        if current is None:
            if self.messaging.holding(user.id):
                self._sendGroups(None, user.id, device)
            else:
                self.messaging.catchUp(user.id, device).addCallback(self._sendGroups, user.id, device)
        return wire

    def _sendGroups(self, _: object, userId: str, device: str) -> Deferred[Any]:
        """
        After the 1:1 offline messages: the C{groups} summary.
        """
        d: Deferred[Any] = Deferred.fromCoroutine(self.groups.summaries(userId))

        def send(groups: list[dict[str, Any]]) -> None:
            user = self.presence.userOfDevice(device)
            if user is not None and user.id == userId:
                self.router.toDevices((device,), "groups", {"groups": groups})

        def failed(failure: Failure) -> None:
            if not failure.check(StoreClosedError):  # the server is stopping
                self.log.failure("group summaries of {userId}", failure, userId=userId)

        d.addCallback(send)
        d.addErrback(failed)
        return d

    def logout(self, caller: Caller, data: Any) -> dict[str, Any]:
        """
        C{user:logout}: unbind the device; it stays connected.
        """
        assert caller.device is not None
        self.rooms.deviceGone(caller.device)
        if self.recovery is not None:
            self.recovery.forget(caller.device)
        outcome = self.presence.logout(caller.device)
        if outcome is not None:
            for watcher in self.watchers:
                watcher.deviceLoggedOut(caller.device, outcome.user)
        if outcome is not None and outcome.lastDevice and outcome.wasVisible:
            self._announceOffline(outcome.user)
        if self.settings.logEvents:
            self.log.info("[登出] {userId} {sid}", userId=caller.userId, sid=caller.device)
        return {"userId": caller.userId, "status": INVISIBLE}

    def refresh(self, device: str, remote: str, data: Any) -> dict[str, Any]:
        """
        C{auth:refresh} C{{token}}: a fresh token for the same user.
        """
        token = validation.payloadObject(data, "auth:refresh").get("token")
        if token is not None:
            token = validation.text(token, "token", validation.MAX_TOKEN, 1)
        user = self.presence.userOfDevice(device)
        return self.tokens.refresh(device, token, user.id if user is not None else None, remote)

    def statusChange(self, caller: Caller, data: Any) -> dict[str, Any]:
        """
        C{status_change}: set the user's status and tell everyone else.
        """
        status = validation.status(data)
        self.presence.setStatus(caller.userId, status)
        payload = {"userId": caller.userId, "status": status, "timestamp": self.now()}
        self.router.toEveryone(
            "status_change", dict(payload, name=caller.name, avatar=caller.avatar), exceptDevice=caller.device
        )
        if self.settings.logEvents:
            self.log.info("[状态] {userId} -> {status}", userId=caller.userId, status=status)
        return payload

    def announceShutdown(self) -> None:
        """
        Send C{server:shutdown} to every connected socket.
        """
        self.shuttingDown = True
        self.router.toConnected("server:shutdown", {"message": self.settings.shutdownMessage, "timestamp": self.now()})
