# -*- test-case-name: tests.test_adminui -*-
"""
C{--admin-ui}: the C{/admin} namespace that the official Socket.IO Admin UI
(C{@socket.io/admin-ui}, its C{ui/dist} build or https://admin.socket.io)
speaks, so that operators who know that tool can watch crm_im's sockets
and rooms with it.

The protocol is the one of the package's server side (C{instrument()} in
development mode): on connect the UI gets C{session} (a session id it may
reconnect with), C{config} C{{supportedFeatures}} and C{all_sockets};
then C{server_stats} every 2 s, C{socket_connected},
C{socket_disconnected}, C{socket_updated}, C{room_joined} and
C{room_left} as they happen. It sends the commands C{emit} (C{nsp, filter,
event, ...args}), C{join} and C{leave} (C{nsp, room, filter}) and
C{_disconnect} (C{nsp, close, filter}), where C{filter} is a socket id or
a room (v4 semantics: C{MJOIN}, C{MLEAVE}, C{MDISCONNECT}).

A socket's rooms are its sid, its Socket.IO rooms, C{user:<id>} while it
is logged in and C{room:<id>} for the chat rooms it is in (CLUSTER.md's
names). Credentials: the UI's basic auth with any user name and the admin
token (or an admin JWT) as password; failures are rate limited with the
admin API's. The UI sends them cross-origin with credentials: its origin
must be in C{--cors-origin}.
"""

from __future__ import annotations

import os
import secrets
import socket as _socket
from datetime import datetime, timezone
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from ..im.admin import Actor, AdminHandlers
from ..im.reserved import reservedEvent
from ..im.rooms import RoomPresence
from ..presence import Presence, UserPresence
from ..rest.auth import AdminAuthenticator, AdminRefused
from ..socketio.server import ConnectionRefused, Socket, SocketIOServer

NAMESPACE = "/admin"

#: Seconds between two C{server_stats}, as the package's server.
STATS_INTERVAL = 2.0

#: How long a UI session id stays valid (seconds).
SESSION_LIFETIME = 12 * 3600

#: Session ids kept at most (the oldest are forgotten past it).
MAX_SESSIONS = 1000

#: What the UI may offer. Not ALL_EVENTS: the UI would show every event
#: with its arguments, and crm_im shows no message content to anyone but
#: its recipients (the conversation export is the audited way).
FEATURES = ["EMIT", "JOIN", "LEAVE", "DISCONNECT", "MJOIN", "MLEAVE", "MDISCONNECT", "AGGREGATED_EVENTS"]


def _isoDate(seconds: float) -> str:
    moment = datetime.fromtimestamp(seconds, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + "%03dZ" % (moment.microsecond // 1000)


class AdminUINamespace:
    """
    The Admin UI's namespace on one L{SocketIOServer}; a
    L{crm_im.im.sessions.SessionWatcher} of the IM's sessions.
    """

    log = Logger()

    def __init__(
        self,
        sio: SocketIOServer,
        auth: AdminAuthenticator,
        clock: IReactorTime,
        presence: Presence,
        rooms: RoomPresence,
        admin: AdminHandlers | None = None,
    ) -> None:
        self.sio = sio
        self.auth = auth
        self.clock = clock
        self.presence = presence
        self.rooms = rooms
        self.admin = admin
        self.namespace = sio.namespace(NAMESPACE)
        self.serverId = f"{_socket.gethostname()}#{os.getpid()}"
        self.startedAt = clock.seconds()
        # session id -> (valid until, who signed in with it)
        self._sessions: dict[str, tuple[float, str]] = {}
        # UI socket -> who, for the audit log
        self._actors: dict[str, Actor] = {}
        self._connectedAt: dict[tuple[str, str], float] = {}
        # (second, type) -> count, emptied by every server_stats
        self._events: dict[tuple[int, str], int] = {}
        self._stats = LoopingCall(self._emitStats)
        self._stats.clock = clock
        sio.on("connect", self._connected, namespace=NAMESPACE)
        sio.on("disconnect", self._disconnected, namespace=NAMESPACE)
        sio.on("emit", self._emit, namespace=NAMESPACE)
        sio.on("join", self._join, namespace=NAMESPACE)
        sio.on("leave", self._leave, namespace=NAMESPACE)
        sio.on("_disconnect", self._disconnect, namespace=NAMESPACE)

    def stop(self) -> None:
        """
        Stop the stats.
        """
        if self._stats.running:
            self._stats.stop()

    # ---- the UI's sockets

    def _connected(self, sid: str, auth: Any) -> None:
        socket = self.namespace.sockets.get(sid)
        address = socket.session.remoteAddress if socket is not None else ""
        auth = auth if isinstance(auth, dict) else {}
        sessionId = auth.get("sessionId")
        now = self.clock.seconds()
        known = self._sessions.get(sessionId) if isinstance(sessionId, str) else None
        if known is not None and known[0] > now:
            actor = Actor(known[1], address)
        else:
            password = auth.get("password")
            try:
                actor = self.auth.check(password if isinstance(password, str) else None, address)
            except AdminRefused:
                raise ConnectionRefused("invalid credentials")
            sessionId = secrets.token_hex(8)
            if len(self._sessions) >= MAX_SESSIONS:
                for old in list(self._sessions)[: MAX_SESSIONS // 2]:
                    del self._sessions[old]
            self._sessions[sessionId] = (now + SESSION_LIFETIME, actor.name)
            self.log.info("[管理] Admin UI signed in: {actor}@{address}", actor=actor.name, address=address)
            self.sio.emit("session", sessionId, to=sid, namespace=NAMESPACE)
        self._connectedAt[(NAMESPACE, sid)] = now
        self._actors[sid] = actor
        self.sio.emit("config", {"supportedFeatures": FEATURES}, to=sid, namespace=NAMESPACE)
        self.sio.emit("all_sockets", self.allSockets(), to=sid, namespace=NAMESPACE)
        self._socketConnected(NAMESPACE, sid)
        if not self._stats.running:
            self._stats.start(STATS_INTERVAL, now=False)
        self.clock.callLater(0, self._emitStats)

    def _disconnected(self, sid: str, reason: str) -> None:
        self._actors.pop(sid, None)
        self._socketDisconnected(NAMESPACE, sid, reason)
        if not self.namespace.sockets and self._stats.running:
            self._stats.stop()

    # ---- what the UI shows

    def serialize(self, socket: Socket, nsp: str) -> dict[str, Any]:
        """
        A socket as the UI's C{all_sockets} and C{socket_connected} carry it.
        """
        session = socket.session
        connectedAt = self._connectedAt.get((nsp, socket.sid), self.clock.seconds())
        data: dict[str, Any] = {}
        user = self.presence.userOfDevice(socket.sid) if nsp == "/" else None
        if user is not None:
            data = {"userId": user.id, "name": user.name, "status": user.status}
        return {
            "id": socket.sid,
            "clientId": session.publicId,
            "transport": session.transportName,
            "nsp": nsp,
            "data": data,
            "handshake": {
                "address": session.remoteAddress,
                "headers": {},
                "query": {},
                "issued": int(connectedAt * 1000),
                "secure": False,
                "time": _isoDate(connectedAt),
                "url": "/socket.io/",
                "xdomain": False,
            },
            "rooms": self.roomsOf(socket, nsp),
        }

    def roomsOf(self, socket: Socket, nsp: str) -> list[str]:
        """
        The rooms the UI shows for C{socket}.
        """
        rooms = [socket.sid, *sorted(socket.rooms - {socket.sid})]
        if nsp == "/":
            user = self.presence.userOfDevice(socket.sid)
            if user is not None:
                rooms.append(f"user:{user.id}")
            rooms.extend(f"room:{roomId}" for roomId in sorted(self.rooms.roomsOf(socket.sid)))
        return rooms

    def allSockets(self) -> list[dict[str, Any]]:
        """
        Every connected socket of every namespace.
        """
        return [
            self.serialize(socket, name)
            for name, namespace in self.sio.namespaces.items()
            for socket in list(namespace.sockets.values())
            if socket.connected or name == NAMESPACE
        ]

    def _toUI(self, event: str, *args: Any) -> None:
        if self.namespace.sockets:
            self.sio.emit(event, *args, namespace=NAMESPACE)

    def _count(self, kind: str) -> None:
        if not self.namespace.sockets:
            # No UI to send them to: the counts would pile up, one key a
            # second, until one connects (the stats then start afresh).
            return
        key = (int(self.clock.seconds()), kind)
        self._events[key] = self._events.get(key, 0) + 1

    def _socketConnected(self, nsp: str, sid: str) -> None:
        socket = self.sio.namespaces[nsp].sockets.get(sid)
        if socket is not None:
            self._toUI("socket_connected", self.serialize(socket, nsp), _isoDate(self.clock.seconds()))

    def _socketDisconnected(self, nsp: str, sid: str, reason: str) -> None:
        self._connectedAt.pop((nsp, sid), None)
        self._toUI("socket_disconnected", nsp, sid, reason, _isoDate(self.clock.seconds()))

    def _emitStats(self) -> None:
        if not self.namespace.sockets:
            return
        engine = self.sio.engine
        sessions = list(engine.sessions.values())
        events, self._events = self._events, {}
        now = self.clock.seconds()
        self._toUI(
            "server_stats",
            {
                "serverId": self.serverId,
                "hostname": _socket.gethostname(),
                "pid": os.getpid(),
                "uptime": now - self.startedAt,
                "clientsCount": len(sessions),
                "pollingClientsCount": sum(1 for s in sessions if s.transportName == "polling"),
                "aggregatedEvents": [
                    {"timestamp": second * 1000, "type": kind, "count": count} for (second, kind), count in events.items()
                ],
                "namespaces": [
                    {"name": name, "socketsCount": len(namespace.sockets)} for name, namespace in self.sio.namespaces.items()
                ],
            },
        )

    # ---- SessionWatcher (the IM's sockets on "/")

    def deviceConnected(self, device: str, remote: str) -> None:
        """
        An IM socket connected.
        """
        self._connectedAt[("/", device)] = self.clock.seconds()
        self._count("rawConnection")
        if self.namespace.sockets:
            # Accepted once the handler returns: announce it then.
            self.clock.callLater(0, self._socketConnected, "/", device)

    def deviceLoggedIn(self, device: str, user: UserPresence) -> None:
        """
        An IM socket logged in: it is in C{user:<id>} now.
        """
        if self.namespace.sockets:
            self._toUI("socket_updated", {"id": device, "nsp": "/", "data": {"userId": user.id, "name": user.name, "status": user.status}})
            self._toUI("room_joined", "/", f"user:{user.id}", device, _isoDate(self.clock.seconds()))

    def deviceLoggedOut(self, device: str, user: UserPresence) -> None:
        """
        An IM socket logged out or went.
        """
        if self.namespace.sockets:
            self._toUI("room_left", "/", f"user:{user.id}", device, _isoDate(self.clock.seconds()))

    def deviceDisconnected(self, device: str, reason: str) -> None:
        """
        An IM socket is gone.
        """
        self._count("rawDisconnection")
        self._socketDisconnected("/", device, reason)

    # ---- the UI's commands

    def _targets(self, nsp: Any, filter: Any) -> list[Socket]:
        if not isinstance(nsp, str) or nsp not in self.sio.namespaces:
            return []
        namespace = self.sio.namespaces[nsp]
        if not filter:
            return list(namespace.sockets.values())
        if not isinstance(filter, str):
            return []
        if filter.startswith("user:") and nsp == "/":
            devices = self.presence.devicesOf(filter[5:])
            return [s for s in (namespace.sockets.get(d) for d in devices) if s is not None]
        if filter.startswith("room:") and nsp == "/" and filter not in namespace.rooms:
            inRoom = list(self.rooms.devices(filter[5:]))
            return [s for s in (namespace.sockets.get(d) for d in inRoom) if s is not None]
        return list(namespace.targets(filter))

    def _audit(self, sid: str, action: str, target: Any, detail: dict[str, Any]) -> None:
        """
        Write a command to the audit log (as the admin API's actions).
        """
        actor = self._actors.get(sid)
        if self.admin is None or actor is None:
            return
        d = self.admin.audit(actor, action, target if isinstance(target, str) else None, detail)
        d.addErrback(lambda failure: self.log.failure("admin UI audit entry", failure))

    def _emit(self, sid: str, nsp: Any = None, filter: Any = None, event: Any = None, *args: Any) -> None:
        if not isinstance(event, str):
            return
        if reservedEvent(event):
            # The publish API's rule: the IM's own events cannot be forged.
            self.log.warn("[管理] Admin UI may not emit the IM's own event {event}", event=event)
            return
        targets = self._targets(nsp, filter)
        self.log.info("[管理] Admin UI emit {event} to {n} sockets", event=event, n=len(targets))
        self._audit(sid, "adminui.emit", filter, {"nsp": nsp, "event": event, "sockets": len(targets)})
        for socket in targets:
            self.sio.emit(event, *args, to=socket.sid, namespace=socket.namespace.name)

    def _join(self, sid: str, nsp: Any = None, room: Any = None, filter: Any = None) -> None:
        if not isinstance(room, str) or not room:
            return
        targets = self._targets(nsp, filter)
        self._audit(sid, "adminui.join", filter, {"nsp": nsp, "room": room, "sockets": len(targets)})
        for socket in targets:
            if room not in socket.rooms:
                self.sio.enterRoom(socket.sid, room, socket.namespace.name)
                self._toUI("room_joined", socket.namespace.name, room, socket.sid, _isoDate(self.clock.seconds()))

    def _leave(self, sid: str, nsp: Any = None, room: Any = None, filter: Any = None) -> None:
        if not isinstance(room, str) or not room:
            return
        targets = self._targets(nsp, filter)
        self._audit(sid, "adminui.leave", filter, {"nsp": nsp, "room": room, "sockets": len(targets)})
        for socket in targets:
            if room in socket.rooms:
                self.sio.leaveRoom(socket.sid, room, socket.namespace.name)
                self._toUI("room_left", socket.namespace.name, room, socket.sid, _isoDate(self.clock.seconds()))

    def _disconnect(self, sid: str, nsp: Any = None, close: Any = False, filter: Any = None) -> None:
        targets = self._targets(nsp, filter)
        self.log.info("[管理] Admin UI disconnects {n} sockets", n=len(targets))
        self._audit(sid, "adminui.disconnect", filter, {"nsp": nsp, "close": bool(close), "sockets": len(targets)})
        for socket in targets:
            self.sio.disconnect(socket.sid, socket.namespace.name, closeConnection=bool(close))
