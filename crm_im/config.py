# -*- test-case-name: tests.test_tap -*-
"""
The configuration of one crm_im process, as one frozen value built once
from the command line and the environment (L{crm_im.tap}).
"""

from __future__ import annotations

import os
import socket

import attrs

from .engineio.config import EngineIOConfig
from .limits import LimitSettings


@attrs.frozen
class Config:
    """
    Everything an operator can set.

    @ivar listen: Twisted endpoint strings to serve on.
    @ivar dataDir: the directory of the SQLite database and the file store.
    @ivar corsOrigins: explicit allowed origins, or C{None} for C{*}.
    @ivar pingInterval: ms between server PINGs.
    @ivar pingTimeout: ms to wait for a PONG.
    @ivar maxPayload: the largest packet or body, in bytes.
    @ivar connectTimeout: ms a session may take to send its Socket.IO CONNECT.
    @ivar maxMessageLength: the longest text message C{content}.
    @ivar presenceGrace: seconds a user stays online after the last device.
    @ivar store: where the messages are: C{sqlite:PATH} or a PostgreSQL
        URL (C{postgresql://user@host/db}); L{None}, the default, is
        C{crm_im.sqlite3} in C{dataDir} (L{storeURL}).
    @ivar sqliteSynchronous: SQLite's C{synchronous} pragma (C{FULL} survives
        power loss; C{NORMAL} survives a killed process).
    @ivar commitInterval: seconds at least between the starts of two write
        transactions of the message store (group commit).
    @ivar releaseMemoryAfter: seconds without activity after which the
        memory a busy spell took is given back (L{crm_im.idlerelease};
        C{0}: never).
    @ivar logEvents: log one line per event (C{[消息]} and the like).
    @ivar shutdownGrace: seconds to wait on stop for polling clients to
        collect C{server:shutdown}.
    @ivar auth: the authentication mode, C{open} or C{jwt}.
    @ivar jwtSecret: the HS256 secret (JWT mode), kept out of C{repr}.
    @ivar jwtPublicKey: the PEM public key for RS256/ES256 (JWT mode).
    @ivar jwtIssuer: the required C{iss}, if any.
    @ivar jwtAudience: the required C{aud}, if any.
    @ivar jwtLeeway: seconds of clock skew tolerated on C{exp}/C{nbf}.
    @ivar jwtRequireExp: refuse tokens without C{exp} (which never expire).
    @ivar limits: rate and abuse limits.
    @ivar maxSessions: the most concurrent Engine.IO sessions.
    @ivar maxBufferedBytes: bytes queued for one session and not yet taken
        by its transport, past which the session is closed (a client that
        stops reading); L{EngineIOConfig.maxBufferedBytes}.
    @ivar maxBufferedPackets: the same bound, in packets.
    @ivar maxGroupMembers: members per group, the owner included.
    @ivar maxGroupsPerUser: groups one user may be a member of.
    @ivar maxRoomSockets: sockets in one chat room at once.
    @ivar maxRoomsPerUser: chat rooms one user may create (0: no limit).
    @ivar roomCreators: when not empty, only these users may create rooms.
    @ivar recallWindow: seconds after sending during which a sender may
        recall a message.
    @ivar pushGateway: the Push Gateway API URL offline push notifications
        go to, or L{None} (no push).
    @ivar pushSecret: the HMAC key of C{X-CRM-IM-Signature}, if any.
    @ivar pushCoalesce: seconds during which a user's notifications merge.
    @ivar pushContent: C{none} or C{preview}.
    @ivar pushConcurrency: gateway requests in flight at most.
    @ivar pushTimeout: seconds a gateway request may take.
    @ivar pushMaxOutbox: notifications waiting at most (oldest dropped).
    @ivar adminToken: the admin API's shared token (ADMIN.md), kept out of
        C{repr}; with neither it nor C{auth="jwt"} the admin API is 404.
    @ivar adminListen: endpoints serving the admin API and page instead of
        the main port.
    @ivar adminUI: serve the C{/admin} namespace of the Socket.IO Admin UI.
    @ivar maxFileSize: the largest uploaded file, bytes (FILES.md).
    @ivar fileQuota: bytes one user's files may take (0: no quota).
    @ivar fileRetentionDays: days file bytes are kept (0: forever).
    @ivar fileLinkDays: days a signed download link is valid.
    @ivar uploadExpiry: seconds an unfinished upload stays open after its
        last byte.
    @ivar urlSecret: the secret of upload tokens and download links, kept
        out of C{repr}; L{None}: a key kept in the data directory.
    @ivar allowEIO3: also serve Engine.IO v3 clients (socket.io-client
        2.x), like the official server's C{allowEIO3}.
    @ivar recoveryWindow: seconds within which a Socket.IO 4.6+ client
        that lost its connection gets its socket back (connection state
        recovery); C{0}: off.
    @ivar encryptionKeys: the key file of encryption at rest
        (ENCRYPTION.md, L{crm_im.crypto}), or L{None}: stored in clear.
    """

    listen: tuple[str, ...] = ("tcp:8080",)
    dataDir: str = "crm_im-data"
    corsOrigins: tuple[str, ...] | None = None
    pingInterval: int = 25000
    pingTimeout: int = 20000
    maxPayload: int = 1_000_000
    connectTimeout: int = 45000
    maxMessageLength: int = 65536
    presenceGrace: float = 0.0
    store: str | None = attrs.field(default=None, repr=False)
    sqliteSynchronous: str = "FULL"
    commitInterval: float = 0.010
    releaseMemoryAfter: float = 10.0
    logEvents: bool = True
    shutdownGrace: float = 2.0
    auth: str = "open"
    jwtSecret: str | None = attrs.field(default=None, repr=False)
    jwtPublicKey: bytes | None = attrs.field(default=None, repr=False)
    jwtIssuer: str | None = None
    jwtAudience: str | None = None
    jwtLeeway: float = 0.0
    jwtRequireExp: bool = False
    limits: LimitSettings = LimitSettings()
    maxSessions: int = 100_000
    maxBufferedBytes: int = 16 * 1024 * 1024
    maxBufferedPackets: int = 20000
    maxGroupMembers: int = 2000
    maxGroupsPerUser: int = 500
    maxRoomSockets: int = 10_000
    maxRoomsPerUser: int = 100
    roomCreators: tuple[str, ...] = ()
    recallWindow: float = 120.0
    pushGateway: str | None = None
    pushSecret: str | None = attrs.field(default=None, repr=False)
    pushCoalesce: float = 1.0
    pushContent: str = "none"
    pushConcurrency: int = 16
    pushTimeout: float = 10.0
    pushMaxOutbox: int = 100_000
    adminToken: str | None = attrs.field(default=None, repr=False)
    adminListen: tuple[str, ...] = ()
    adminUI: bool = False
    maxFileSize: int = 100 * 1024 * 1024
    fileQuota: int = 1024 * 1024 * 1024
    fileRetentionDays: float = 0.0
    fileLinkDays: float = 7.0
    uploadExpiry: float = 3600.0
    urlSecret: str | None = attrs.field(default=None, repr=False)
    allowEIO3: bool = False
    recoveryWindow: float = 120.0
    encryptionKeys: str | None = None
    redis: str | None = attrs.field(default=None, repr=False)
    nodeId: str | None = None
    nodeTTL: float = 15.0
    redisPrefix: str = "socket.io"
    nodeAddress: str | None = None

    def storeURL(self) -> str:
        """
        The message store's C{--store} value, the default made explicit
        (C{repr=False} on L{store}: a PostgreSQL URL may hold a password).
        """
        if self.store is not None:
            return self.store
        return "sqlite:" + os.path.join(self.dataDir, "crm_im.sqlite3")

    def clusterNodeId(self, port: int | None = None) -> str:
        """
        This node's id: C{--node-id}, else the host name and the port
        (C{port}, else the first C{tcp:} listening port).
        """
        if self.nodeId is not None:
            return self.nodeId
        if port is None:
            port = firstTCPPort(self.listen)
        return f"{socket.gethostname()}:{port}"

    def engineConfig(self) -> EngineIOConfig:
        """
        The Engine.IO part of the configuration.
        """
        return EngineIOConfig(
            allowEIO3=self.allowEIO3,
            pingInterval=self.pingInterval,
            pingTimeout=self.pingTimeout,
            maxPayload=self.maxPayload,
            corsOrigins=self.corsOrigins,
            maxSessions=self.maxSessions,
            maxBufferedBytes=self.maxBufferedBytes,
            maxBufferedPackets=self.maxBufferedPackets,
            maxSessionsPerAddress=self.limits.connectionsPerAddress,
            exemptAddresses=self.limits.exemptAddresses,
        )


def firstTCPPort(listen: tuple[str, ...]) -> int | None:
    """
    The port of the first C{tcp:PORT[:...]} (or C{ssl:}) endpoint in
    C{listen}; L{None} if there is none (C{systemd:}, C{unix:}).
    """
    for description in listen:
        kind, _, rest = description.partition(":")
        if kind in ("tcp", "ssl", "tcp6"):
            head = rest.split(":", 1)[0]
            if head.startswith("port="):
                head = head[5:]
            if head.isdigit():
                return int(head)
    return None
