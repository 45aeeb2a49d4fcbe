# -*- test-case-name: tests.test_eio_session -*-
"""
The Engine.IO server: the table of sessions, the handshake, the heartbeat
sweep, and the request checks every transport shares.

It is transport-neutral: L{crm_im.engineio.polling} and
L{crm_im.engineio.websocket} call into it, and it calls the
L{IEngineIOApplication} it serves.
"""

from __future__ import annotations

import secrets
from typing import Callable, Hashable, Mapping, cast

import attrs
from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from . import packet
from .._json import dumps
from ..limits import AddressCounter
from .config import EngineIOConfig
from .interfaces import IEngineIOApplication, IWebSocketChannel
from .session import POLLING, WEBSOCKET, EngineIOSession
from ..timers import DeadlineHeap


@attrs.frozen
class EngineIOError(Exception):
    """
    A request refused at the HTTP layer, answered as the official server
    does: HTTP C{status} with C{{"code": code, "message": message}}.
    """

    code: int
    message: str
    status: int = 400

    def body(self) -> bytes:
        """
        The JSON body of the refusal.
        """
        return dumps({"code": self.code, "message": self.message})

    def fresh(self) -> "EngineIOError":
        """
        A new refusal like this one, to raise.

        The module's refusals (L{BAD_REQUEST}, ...) are templates, never
        raised themselves: raising one exception object again chains the
        new traceback onto the one it kept from the last raise, so every
        refused request's frames (the request, its channel, its body) would
        stay alive for the life of the process (found by fuzz/polling.py:
        about 20 KB per refused request).
        """
        return EngineIOError(self.code, self.message, self.status)


#: The refusals of L{EngineIOServer.checkRequest} (raise their
#: L{EngineIOError.fresh} copies, never these objects).
UNKNOWN_TRANSPORT = EngineIOError(0, "Transport unknown")
UNKNOWN_SID = EngineIOError(1, "Session ID unknown")
BAD_HANDSHAKE_METHOD = EngineIOError(2, "Bad handshake method")
BAD_REQUEST = EngineIOError(3, "Bad request")
FORBIDDEN = EngineIOError(4, "Forbidden", status=403)
UNSUPPORTED_PROTOCOL_VERSION = EngineIOError(5, "Unsupported protocol version")
SERVICE_UNAVAILABLE = EngineIOError(3, "Server at capacity", status=503)
TOO_MANY_SESSIONS = EngineIOError(3, "Too many sessions from this address", status=429)


def newSessionId() -> str:
    """
    A random, URL-safe session id of 20 characters, like the official
    server's.
    """
    return secrets.token_urlsafe(15)


@attrs.define
class EngineIOStats:
    """
    Counters the operator can read (exported as metrics by the app).
    """

    opened: int = 0
    closed: int = 0
    upgrades: int = 0
    pingTimeouts: int = 0
    bufferOverflows: int = 0


class EngineIOServer(Service):
    """
    Sessions of one Engine.IO endpoint.

    Heartbeats and the other deadlines run from construction: a server
    nobody started still pings and times out its sessions. It is a
    Twisted L{Service}, so that putting it under the application
    (C{server.setServiceParent(application)}) is all a raw Engine.IO app
    does for its lifecycle: stopping the service closes every session.

    @ivar sessions: open (and closing) sessions by sid.
    """

    log = Logger()

    def __init__(
        self,
        app: IEngineIOApplication,
        clock: IReactorTime,
        config: EngineIOConfig | None = None,
        newSid: Callable[[], str] = newSessionId,
    ) -> None:
        self.app = app
        self.clock = clock
        self.config = config if config is not None else EngineIOConfig()
        self.sessions: dict[str, EngineIOSession] = {}
        self.stats = EngineIOStats()
        self.stopping = False
        self.addresses = AddressCounter(self.config.maxSessionsPerAddress, self.config.exemptAddresses)
        self.wheel = DeadlineHeap(clock, self._deadlinePassed)
        self._newSid = newSid

    def start(self) -> None:
        """
        Accept sessions again after L{stop} and fire the deadlines kept
        meanwhile. A new server is already running: calling this is
        optional.
        """
        self.stopping = False
        self.wheel.start()

    def stop(self, reason: str = "server shutting down") -> None:
        """
        Close every session (what was queued is flushed first), refuse new
        ones and stop the sweep.
        """
        self.stopping = True
        for session in list(self.sessions.values()):
            session.close(reason)
        self.wheel.stop()

    def startService(self) -> None:
        """
        L{IService}: L{start}.
        """
        super().startService()
        self.start()

    def stopService(self) -> None:
        """
        L{IService}: L{stop}.
        """
        super().stopService()
        self.stop()

    # ---- request checks

    def checkRequest(
        self,
        method: bytes,
        query: Mapping[str, str],
        isWebSocket: bool,
        origin: str | None,
        remoteAddress: str | None = None,
    ) -> tuple[str, EngineIOSession | None]:
        """
        Check an Engine.IO request the way the official server does.

        @param method: the HTTP method.
        @param query: the query arguments (first value of each).
        @param isWebSocket: whether this is a WebSocket upgrade request.
        @param origin: the C{Origin} header, if any.
        @param remoteAddress: the client's address, checked against the
            per-address limit on a handshake (C{None}: not checked).
        @return: the transport name and the session named by C{sid} (C{None}
            for a handshake).
        @raise EngineIOError: the refusal to send.
        """
        eio = query.get("EIO")
        if eio != "4" and not (eio == "3" and self.config.allowEIO3):
            raise UNSUPPORTED_PROTOCOL_VERSION.fresh()
        if "j" in query:
            # JSONP polling (Engine.IO v3 in old browsers) is not served.
            raise BAD_REQUEST.fresh()
        transport = query.get("transport")
        if transport not in self.config.transports:
            raise UNKNOWN_TRANSPORT.fresh()
        if origin is not None and not _validOriginHeader(origin):
            raise BAD_REQUEST.fresh()
        if isWebSocket and self.config.checkWebSocketOrigin and origin is not None:
            allowed = self.config.corsOrigins
            if allowed is not None and origin not in allowed:
                raise FORBIDDEN.fresh()
        sid = query.get("sid")
        if sid is not None:
            session = self.sessions.get(sid)
            if session is None:
                raise UNKNOWN_SID.fresh()
            if session.protocol != int(eio):
                raise BAD_REQUEST.fresh()
            if transport == WEBSOCKET:
                # A WebSocket for a session already on (or moving to)
                # WebSocket completes its handshake and is then closed
                # (L{EngineIOSession.startUpgrade} refuses it), as the
                # official server does.
                if not isWebSocket:
                    raise BAD_REQUEST.fresh()
            elif session.transportName != transport:
                raise BAD_REQUEST.fresh()
            return transport, session
        if method != b"GET":
            raise BAD_HANDSHAKE_METHOD.fresh()
        if self.stopping:
            # Closed sessions may still collect their last packets; no new
            # ones while the server shuts down.
            raise SERVICE_UNAVAILABLE.fresh()
        if transport == WEBSOCKET and not isWebSocket:
            raise BAD_REQUEST.fresh()
        if len(self.sessions) >= self.config.maxSessions:
            raise SERVICE_UNAVAILABLE.fresh()
        if remoteAddress is not None and self.addresses.full(remoteAddress):
            raise TOO_MANY_SESSIONS.fresh()
        return transport, None

    # ---- sessions

    def openPacket(self, upgrades: list[str]) -> dict[str, object]:
        """
        The fields of the OPEN packet, without the sid.
        """
        return {
            "upgrades": upgrades,
            "pingInterval": self.config.pingInterval,
            "pingTimeout": self.config.pingTimeout,
            "maxPayload": self.config.maxPayload,
        }

    def handshake(
        self,
        transportName: str,
        remoteAddress: str = "",
        channel: IWebSocketChannel | None = None,
        protocol: int = 4,
        userAgent: str = "",
    ) -> EngineIOSession:
        """
        Open a session: queue (or write) its OPEN packet, start its
        heartbeat and hand it to the application.

        @param userAgent: the request's C{User-Agent}, kept for the admin
            API.
        """
        sid = self._newSid()
        while sid in self.sessions:
            sid = self._newSid()
        session = EngineIOSession(self, sid, transportName, remoteAddress, protocol, userAgent)
        self.sessions[sid] = session
        self.stats.opened += 1
        self.addresses.add(remoteAddress)
        upgrades = [WEBSOCKET] if transportName == POLLING and WEBSOCKET in self.config.transports else []
        fields: dict[str, object] = {"sid": sid}
        fields.update(self.openPacket(upgrades))
        if channel is not None:
            session.attachWebSocket(channel)
        session.sendFrame(packet.textFrame(packet.OPEN, dumps(fields)))
        self.wheel.set(session, self.heartbeatTimeout(session))
        self.app.sessionOpened(session)
        return session

    def heartbeatTimeout(self, session: EngineIOSession) -> float:
        """
        Seconds until the session's next heartbeat deadline: the PING for
        Engine.IO v4; for v3, whose clients ping, how long the server waits
        for their next PING.
        """
        if session.protocol == 3:
            return (self.config.pingInterval + self.config.pingTimeout) / 1000
        return self.config.pingInterval / 1000

    def sessionClosed(self, session: EngineIOSession) -> None:
        """
        Forget a session that finished closing.
        """
        if self.sessions.get(session.sid) is session:
            del self.sessions[session.sid]
            self.stats.closed += 1
            self.addresses.remove(session.remoteAddress)

    def sessionUpgraded(self, session: EngineIOSession) -> None:
        """
        Count a completed upgrade.
        """
        self.stats.upgrades += 1

    def pingTimedOut(self, session: EngineIOSession) -> None:
        """
        Count a heartbeat timeout.
        """
        self.stats.pingTimeouts += 1

    def bufferOverflow(self, session: EngineIOSession) -> None:
        """
        Count (and log) a session closed for not reading.
        """
        self.stats.bufferOverflows += 1
        self.log.warn(
            "closing session {sid} from {remote}: outgoing buffer full",
            sid=session.publicId,
            remote=session.remoteAddress,
        )

    def _deadlinePassed(self, key: Hashable) -> None:
        if isinstance(key, EngineIOSession):
            key.heartbeatDue()
            return
        kind, session = cast("tuple[str, EngineIOSession]", key)
        if kind == "upgrade":
            session.upgradeExpired()
        elif kind == "close":
            session.closeExpired()
        elif kind == "noop":
            session.upgradeNoopDue()


def _validOriginHeader(origin: str) -> bool:
    # The official server refuses header values with control characters
    # (they could split headers when reflected).
    return all(31 < ord(c) < 127 or c == "\t" for c in origin)
