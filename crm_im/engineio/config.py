"""
The settings of an Engine.IO server, as one frozen value.
"""

from __future__ import annotations

import attrs


@attrs.frozen
class EngineIOConfig:
    """
    Engine.IO server settings; times in milliseconds, as the protocol
    carries them, sizes in bytes.

    @ivar pingInterval: how often the server sends PING.
    @ivar pingTimeout: how long the server waits for the PONG.
    @ivar maxPayload: the largest packet or polling body accepted, and the
        largest WebSocket frame and message.
    @ivar upgradeTimeout: how long a WebSocket probe may take to complete the
        upgrade of a polling session.
    @ivar closeTimeout: how long a closed polling session waits for the next
        GET that collects its last packets.
    @ivar maxBufferedBytes: bound on the bytes queued for one session that
        its transport has not taken yet; past it the session is closed.
    @ivar maxBufferedPackets: the same bound, in packets.
    @ivar corsOrigins: C{None} for C{*} (any origin, no credentials), or the
        explicit list of allowed origins (reflected, with credentials).
    @ivar checkWebSocketOrigin: refuse WebSocket upgrades whose C{Origin} is
        not allowed by C{corsOrigins} (browsers only send it; native clients
        send none and are let through).
    @ivar allowEIO3: also serve Engine.IO v3 clients (C{EIO=3}:
        socket.io-client 2.x), like the official server's C{allowEIO3}.
    @ivar transports: the transports offered.
    @ivar maxSessions: the most concurrent sessions; handshakes past it get
        HTTP 503.
    @ivar maxSessionsPerAddress: the most concurrent sessions from one
        remote address (C{0}: no limit); handshakes past it get HTTP 429.
    @ivar exemptAddresses: addresses without that limit.
    """

    allowEIO3: bool = False
    pingInterval: int = 25000
    pingTimeout: int = 20000
    maxPayload: int = 1_000_000
    upgradeTimeout: int = 10000
    closeTimeout: int = 30000
    maxBufferedBytes: int = 16 * 1024 * 1024
    maxBufferedPackets: int = 20000
    corsOrigins: tuple[str, ...] | None = None
    checkWebSocketOrigin: bool = False
    transports: tuple[str, ...] = ("polling", "websocket")
    maxSessions: int = 100_000
    maxSessionsPerAddress: int = 0
    exemptAddresses: tuple[str, ...] = ()

    def __attrs_post_init__(self) -> None:
        for name in ("pingInterval", "pingTimeout", "maxPayload", "upgradeTimeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for transport in self.transports:
            if transport not in ("polling", "websocket"):
                raise ValueError(f"unknown transport {transport!r}")
