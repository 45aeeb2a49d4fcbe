# -*- test-case-name: tests.test_tap -*-
"""
C{twistd crm_im}: the command-line options and L{makeService}, shared by the
twistd plugin and C{crm_im.tac}.
"""

from __future__ import annotations

import math
import os
import re
import signal
from typing import Any
from urllib.parse import urlsplit

import attrs
from twisted.application.service import IService
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.python.filepath import FilePath

from .auth import JWT, MODES, OPEN
from .config import Config, firstTCPPort
from .limits import LimitSettings
from .startup import DataDirError, FailedStart, checkDataDir

_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")

#: The accept queue of the default listener (Node's default is 511).
LISTEN_BACKLOG = 1024


def _number(name: str, value: Any, kind: type = int) -> Any:
    """
    A non-negative number option (C{0} turns a limit off).
    """
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise usage.UsageError(f"--{name} must be a number, not {value!r}")
    if number < 0:
        raise usage.UsageError(f"--{name} must not be negative")
    return number


def _endpoint(name: str, description: str) -> str:
    """
    A server endpoint description, checked now by building its endpoint
    against a reactor that listens nowhere: a bad one is refused with the
    option's name, not by a traceback once the store is open.
    """
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    try:
        serverFromString(MemoryReactor(), description)
    except Exception as error:  # each parser raises its own (ValueError, KeyError, OSError, ...)
        raise usage.UsageError(f"--{name}: bad endpoint {description!r} ({error})")
    return description


def _limits(options: "Options") -> LimitSettings:
    defaults = LimitSettings()
    return LimitSettings(
        eventsPerSecond=_number("rate-events", options["rate-events"], float),
        eventBurst=_number("burst-events", options["burst-events"]),
        messagesPerSecond=_number("rate-messages", options["rate-messages"], float),
        messageBurst=_number("burst-messages", options["burst-messages"]),
        abuseRefusals=_number("abuse-refusals", options["abuse-refusals"]),
        connectionsPerAddress=_number("max-connections-per-ip", options["max-connections-per-ip"]),
        exemptAddresses=() if options["limit-loopback"] else defaults.exemptAddresses,
        devicesPerUser=_number("max-devices-per-user", options["max-devices-per-user"]),
        loginFailuresPerMinute=_number("login-failures-per-minute", options["login-failures-per-minute"], float),
        loginFailureBurst=_number("login-failure-burst", options["login-failure-burst"]),
    )


def _positive(name: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise usage.UsageError(f"--{name} must be an integer, not {value!r}")
    if number <= 0:
        raise usage.UsageError(f"--{name} must be positive")
    return number


def _duration(name: str, value: Any, unit: str) -> float:
    """
    A length of time more than 0: here 0 is no "off" (a link valid for no
    time, an upload closed at once), so it is refused, not taken as the
    default.
    """
    number = _number(name, value, float)
    if not (number > 0 and math.isfinite(number)):
        raise usage.UsageError(f"--{name} must be more than 0 (a finite number of {unit})")
    return float(number)


class Options(usage.Options):
    """
    Options of C{twistd crm_im}.
    """

    synopsis = "[options]"
    longdesc = (
        "Serve the CRM IM Socket.IO server (Engine.IO v4 / Socket.IO v5, "
        "long-polling and WebSocket) with a durable SQLite message store."
    )
    optFlags = [
        ["quiet", "q", "Do not log a line per event (also: QUIET=1 in the environment)."],
        ["limit-loopback", None, "Apply --max-connections-per-ip to loopback clients too (default: exempt)."],
        ["allow-eio3", None, "Also serve Engine.IO v3 clients (socket.io-client 2.x, old mobile apps), like the "
         "official server's allowEIO3."],
        ["admin-ui", None, "Serve the /admin namespace of the Socket.IO Admin UI (@socket.io/admin-ui), with the "
         "admin credentials; add the UI's origin to --cors-origin."],
        ["jwt-require-exp", None, "Refuse JWTs without an 'exp' claim (by default such a token never expires)."],
    ]
    optParameters = [
        ["port", "p", None, "TCP port to listen on (default: $PORT or 8080).", str],
        ["data-dir", "d", "crm_im-data", "Directory for the SQLite database and the file store."],
        ["ping-interval", None, 25000, "Milliseconds between server PINGs."],
        ["ping-timeout", None, 20000, "Milliseconds to wait for a PONG."],
        ["max-payload", None, 1_000_000, "Largest packet or HTTP body, in bytes."],
        ["connect-timeout", None, 45000, "Milliseconds a client may take to connect to a namespace."],
        ["max-message-length", None, 65536, "Longest text message content, in characters."],
        ["recovery-window", None, 120, "Seconds within which a Socket.IO 4.6+ client that lost its connection "
         "gets its socket, login, rooms and missed messages back (connection state recovery; 0: off)."],
        ["presence-grace", None, 0, "Seconds a user stays online after the last device disconnects."],
        ["store", None, None, "Where messages are stored: sqlite:PATH (default: crm_im.sqlite3 in --data-dir) or "
         "a PostgreSQL URL postgresql://user@host/db (also: $CRM_IM_STORE; prefer it for a password)."],
        ["sqlite-synchronous", None, "FULL", "SQLite synchronous pragma: FULL (survives power loss) or NORMAL."],
        ["commit-interval", None, 10, "Milliseconds at least between two message-store commits under load "
         "(4,000 writes/s and more; less in proportion below): writes arriving meanwhile share the next one "
         "(0: commit as soon as the previous one is done)."],
        ["release-memory-after", None, 10, "Seconds without activity (no connection opened or closed, no store "
         "transaction) after which the caches and free heap a busy spell left are given back to the system "
         "(0: never)."],
        ["shutdown-grace", None, 2, "Seconds to wait on stop for clients to collect server:shutdown."],
        ["auth", None, None, "Authentication mode: open (default; clients say who they are) or jwt "
         "(also: $CRM_IM_AUTH)."],
        ["jwt-secret", None, None, "HS256 secret for --auth jwt; prefer $CRM_IM_JWT_SECRET (not shown by ps)."],
        ["jwt-public-key", None, None, "PEM public key file for RS256/ES256 tokens (--auth jwt)."],
        ["jwt-issuer", None, None, "Require this 'iss' claim."],
        ["jwt-audience", None, None, "Require this 'aud' claim."],
        ["jwt-leeway", None, 0, "Seconds of clock skew tolerated on 'exp' and 'nbf'."],
        ["rate-events", None, 100, "Sustained events per second per socket (0: no limit)."],
        ["burst-events", None, 500, "Events a socket may send at once."],
        ["rate-messages", None, 50, "Sustained messages and files per second per socket (0: no limit)."],
        ["burst-messages", None, 250, "Messages a socket may send at once."],
        ["abuse-refusals", None, 200, "Rate-limit refusals (beyond 1/s) after which a socket is disconnected (0: never)."],
        ["max-connections-per-ip", None, 1000, "Concurrent sessions per client address (0: no limit)."],
        ["max-devices-per-user", None, 16, "Sockets logged in as one user at once (0: no limit)."],
        ["max-sessions", None, 100_000, "Concurrent sessions in total."],
        ["max-buffered-bytes", None, 16 * 1024 * 1024, "Bytes queued for one session that its client has not "
         "read yet; past it the session is closed (a client that stops reading)."],
        ["max-buffered-packets", None, 20000, "The same bound, in packets."],
        ["login-failures-per-minute", None, 10, "Failed token checks per client address per minute (JWT mode)."],
        ["login-failure-burst", None, 20, "Failed token checks per client address at once (JWT mode)."],
        ["max-group-members", None, 2000, "Members per group, the owner included."],
        ["max-groups-per-user", None, 500, "Groups one user may be a member of."],
        ["max-room-sockets", None, 10_000, "Sockets in one chat room at once."],
        ["max-rooms-per-user", None, 100, "Chat rooms one user may create (0: no limit)."],
        ["recall-window", None, 120, "Seconds after sending during which a sender may recall a message."],
        ["push-gateway", None, None, "Offline push: the Matrix Push Gateway API URL to notify "
         "(e.g. http://sygnal:5000/_matrix/push/v1/notify); without it, no push."],
        ["push-secret", None, None, "Sign push requests (X-CRM-IM-Signature: sha256=HMAC of the body); "
         "prefer $CRM_IM_PUSH_SECRET (not shown by ps)."],
        ["push-coalesce-ms", None, 1000, "Milliseconds during which a user's push notifications merge into one."],
        ["push-content", None, "none", "Message text in push notifications: none (default) or preview (first 100 characters)."],
        ["push-concurrency", None, 16, "Push gateway requests in flight at most."],
        ["push-timeout", None, 10, "Seconds a push gateway request may take."],
        ["push-max-outbox", None, 100_000, "Push notifications waiting at most; past it the oldest are dropped."],
        ["max-file-size", None, 100 * 1024 * 1024, "Largest uploaded file, in bytes (FILES.md)."],
        ["file-quota", None, 1024 * 1024 * 1024, "Bytes one user's uploaded files may take (0: no quota)."],
        ["file-retention-days", None, 0, "Delete file bytes older than this many days that no newer message "
         "refers to (0: keep forever)."],
        ["file-link-days", None, 7, "Days a signed download link (fileUrl) is valid."],
        ["upload-expiry", None, 3600, "Seconds an unfinished upload stays open after its last byte."],
        ["encryption-keys", None, None, "Encrypt message text, file names and file bytes at rest with the keys "
         "of this file (lines keyId:base64(32 bytes), the first is current; also: $CRM_IM_ENCRYPTION_KEYS). "
         "crm_im-rekey moves old data to the current key."],
        ["url-secret", None, None, "Secret signing upload tokens and download links; prefer $CRM_IM_URL_SECRET. "
         "Default: a random key kept in the data directory (url-secret)."],
        ["redis", None, None, "Cluster mode: the Redis URL redis://[:password@]host:6379/0 shared by every node "
         "(also: $CRM_IM_REDIS; prefer it for a password). Needs a store shared by the nodes (--store postgresql://...)."],
        ["node-id", None, None, "This node's name in the cluster (letters, digits, . _ : @ -; default: the host name "
         "and the port, e.g. crm1:8080). A node restarted with the same id drops its previous life's devices."],
        ["node-ttl", None, None, "Seconds without a heartbeat after which the other nodes drop this node's devices "
         "(default 15, at least 1)."],
        ["redis-prefix", None, None, "Channel prefix of the Socket.IO Redis adapter/emitter broadcasts crm_im listens to "
         "(default socket.io, the emitter's); several clusters sharing one Redis use their own."],
        ["node-address", None, None, "The internal http://host:port the other nodes forward long-polling requests and "
         "WebSocket upgrades to "
         "(default: http://127.0.0.1:<first listening port>, right for nodes on one machine only)."],
        ["admin-token", None, None, "Token of the admin API and page at /admin/ (Authorization: Bearer); prefer "
         "$CRM_IM_ADMIN_TOKEN (not shown by ps). Without it (or --auth jwt) the admin API answers 404."],
    ]

    def __init__(self) -> None:
        super().__init__()
        # The help of an opt_ method is its docstring, wrapped by --help
        # with its line breaks and indentation kept as runs of spaces.
        self.docs = {name: " ".join(doc.split()) if doc else doc for name, doc in self.docs.items()}
        self["listen"] = []
        self["cors-origin"] = []
        self["room-creator"] = []
        self["admin-listen"] = []

    def opt_admin_listen(self, description: str) -> None:
        """
        Serve the admin API and page on this Twisted endpoint (repeatable)
        instead of the main port, e.g. tcp:9090:interface=127.0.0.1.
        """
        self["admin-listen"].append(description)

    def opt_room_creator(self, userId: str) -> None:
        """
        Only this user may create chat rooms (repeatable); without any,
        every logged-in user may.
        """
        self["room-creator"].append(userId)

    def opt_listen(self, description: str) -> None:
        """
        Listen on this Twisted endpoint (repeatable), e.g. tcp:8080,
        ssl:8443:privateKey=server.pem (key and certificate),
        systemd:domain=INET:index=0. Overrides --port.
        """
        self["listen"].append(description)

    def opt_cors_origin(self, origin: str) -> None:
        """
        Allow this browser origin (repeatable); without any, every origin
        is allowed (*), without credentials.
        """
        self["cors-origin"].append(origin)

    def postOptions(self) -> None:
        port = self["port"] if self["port"] is not None else os.environ.get("PORT")
        listen = [_endpoint("listen", description) for description in self["listen"]]
        for description in self["admin-listen"]:
            _endpoint("admin-listen", description)
        if not listen:
            # 0: any free port (tests, tooling); the start-up line says which.
            number = _number("port", port) if port is not None else 8080
            if number > 65535:
                raise usage.UsageError("--port must be at most 65535")
            # Twisted listens with a backlog of 50; a reconnect storm of
            # thousands of clients needs a deeper accept queue.
            listen = [f"tcp:{number}:backlog={LISTEN_BACKLOG}"]
        try:
            grace = float(self["presence-grace"])
            shutdownGrace = float(self["shutdown-grace"])
        except ValueError:
            raise usage.UsageError("--presence-grace and --shutdown-grace must be numbers")
        if grace < 0 or shutdownGrace < 0:
            raise usage.UsageError("--presence-grace and --shutdown-grace must not be negative")
        commitInterval = _number("commit-interval", self["commit-interval"], float)
        if not 0 <= commitInterval <= 1000:
            raise usage.UsageError("--commit-interval must be between 0 and 1000 ms")
        releaseMemoryAfter = _number("release-memory-after", self["release-memory-after"], float)
        if not 0 <= releaseMemoryAfter <= 86400:
            raise usage.UsageError("--release-memory-after must be between 0 and 86400 seconds")
        synchronous = str(self["sqlite-synchronous"]).upper()
        if synchronous not in _SYNCHRONOUS:
            raise usage.UsageError(f"--sqlite-synchronous must be one of {', '.join(_SYNCHRONOUS)}")
        store = self["store"] or os.environ.get("CRM_IM_STORE") or None
        if store is not None:
            from .storage.engines import engineFor

            try:
                engineFor(store, synchronous)
            except ValueError as error:
                raise usage.UsageError(f"--store: {error}")
        quiet = self["quiet"] or os.environ.get("QUIET") == "1"
        auth = self["auth"] or os.environ.get("CRM_IM_AUTH") or OPEN
        if auth not in MODES:
            raise usage.UsageError(f"--auth must be one of {', '.join(MODES)}")
        secret = self["jwt-secret"] or os.environ.get("CRM_IM_JWT_SECRET") or None
        publicKey = None
        if self["jwt-public-key"] is not None:
            try:
                publicKey = FilePath(self["jwt-public-key"]).getContent()
            except OSError as error:
                raise usage.UsageError(f"--jwt-public-key: cannot read {self['jwt-public-key']}: {error.strerror}")
        if auth == JWT:
            if (secret is None) == (publicKey is None):
                raise usage.UsageError(
                    "--auth jwt needs exactly one of --jwt-secret (or $CRM_IM_JWT_SECRET) and --jwt-public-key"
                )
        else:
            secret = publicKey = None
        adminToken = self["admin-token"] or os.environ.get("CRM_IM_ADMIN_TOKEN") or None
        if (self["admin-listen"] or self["admin-ui"]) and adminToken is None and auth != JWT:
            raise usage.UsageError("--admin-listen and --admin-ui need --admin-token (or $CRM_IM_ADMIN_TOKEN) or --auth jwt")
        self.config = Config(
            listen=tuple(listen),
            dataDir=self["data-dir"],
            corsOrigins=tuple(self["cors-origin"]) or None,
            pingInterval=_positive("ping-interval", self["ping-interval"]),
            pingTimeout=_positive("ping-timeout", self["ping-timeout"]),
            maxPayload=_positive("max-payload", self["max-payload"]),
            connectTimeout=_positive("connect-timeout", self["connect-timeout"]),
            maxMessageLength=_positive("max-message-length", self["max-message-length"]),
            presenceGrace=grace,
            store=store,
            sqliteSynchronous=synchronous,
            commitInterval=commitInterval / 1000,
            releaseMemoryAfter=releaseMemoryAfter,
            logEvents=not quiet,
            shutdownGrace=shutdownGrace,
            auth=auth,
            jwtSecret=secret,
            jwtPublicKey=publicKey,
            jwtIssuer=self["jwt-issuer"],
            jwtAudience=self["jwt-audience"],
            jwtLeeway=_number("jwt-leeway", self["jwt-leeway"], float),
            jwtRequireExp=bool(self["jwt-require-exp"]),
            limits=_limits(self),
            maxSessions=_positive("max-sessions", self["max-sessions"]),
            maxBufferedBytes=_positive("max-buffered-bytes", self["max-buffered-bytes"]),
            maxBufferedPackets=_positive("max-buffered-packets", self["max-buffered-packets"]),
            maxGroupMembers=_positive("max-group-members", self["max-group-members"]),
            maxGroupsPerUser=_positive("max-groups-per-user", self["max-groups-per-user"]),
            maxRoomSockets=_positive("max-room-sockets", self["max-room-sockets"]),
            maxRoomsPerUser=_number("max-rooms-per-user", self["max-rooms-per-user"], int),
            roomCreators=tuple(self["room-creator"]),
            recallWindow=_number("recall-window", self["recall-window"], float),
            adminToken=adminToken,
            adminListen=tuple(self["admin-listen"]),
            adminUI=bool(self["admin-ui"]),
            allowEIO3=bool(self["allow-eio3"]),
            recoveryWindow=_number("recovery-window", self["recovery-window"], float),
        )
        self.config = attrs.evolve(self.config, **_push(self))
        self.config = attrs.evolve(self.config, **_files(self))
        self.config = attrs.evolve(self.config, **_encryption(self))
        self.config = attrs.evolve(self.config, **_cluster(self, self.config))
        if not 0 <= self.config.recoveryWindow <= 86400:
            raise usage.UsageError("--recovery-window must be between 0 and 86400 seconds")
        if self.config.maxRoomsPerUser < 0 or self.config.recallWindow < 0:
            raise usage.UsageError("--max-rooms-per-user and --recall-window must not be negative")
        if auth == JWT:
            from twisted.internet.task import Clock

            from .auth import authenticatorFor

            try:
                # Only to refuse an unusable key now, not at start-up.
                authenticatorFor(self.config, Clock())
            except ValueError as error:
                raise usage.UsageError(str(error))


def _push(options: "Options") -> dict[str, Any]:
    """
    The push notification settings (PUSH.md).
    """
    gateway = options["push-gateway"] or None
    if gateway is not None and not gateway.startswith(("http://", "https://")):
        raise usage.UsageError("--push-gateway must be an http:// or https:// URL")
    content = str(options["push-content"])
    if content not in ("none", "preview"):
        raise usage.UsageError("--push-content must be one of none, preview")
    return dict(
        pushGateway=gateway,
        pushSecret=options["push-secret"] or os.environ.get("CRM_IM_PUSH_SECRET") or None,
        pushCoalesce=_number("push-coalesce-ms", options["push-coalesce-ms"], float) / 1000,
        pushContent=content,
        pushConcurrency=_positive("push-concurrency", options["push-concurrency"]),
        pushTimeout=_number("push-timeout", options["push-timeout"], float) or 10.0,
        pushMaxOutbox=_positive("push-max-outbox", options["push-max-outbox"]),
    )


def _encryption(options: "Options") -> dict[str, Any]:
    """
    Encryption at rest (ENCRYPTION.md): the key file, read now so that a
    bad one is refused with the option's name before anything starts.
    """
    path = options["encryption-keys"] or os.environ.get("CRM_IM_ENCRYPTION_KEYS") or None
    if path is None:
        return {}
    from .crypto.keys import KeyFileError, loadKeyFile

    try:
        loadKeyFile(path)
    except KeyFileError as error:
        raise usage.UsageError(f"--encryption-keys: {error}")
    return dict(encryptionKeys=os.path.abspath(path))


def _files(options: "Options") -> dict[str, Any]:
    """
    The file upload settings (FILES.md).
    """
    secret = options["url-secret"] or os.environ.get("CRM_IM_URL_SECRET") or None
    if secret is not None and len(secret.encode("utf-8")) < 16:
        raise usage.UsageError("--url-secret must be at least 16 bytes")
    return dict(
        maxFileSize=_positive("max-file-size", options["max-file-size"]),
        fileQuota=_number("file-quota", options["file-quota"], int),
        fileRetentionDays=_number("file-retention-days", options["file-retention-days"], float),
        fileLinkDays=_duration("file-link-days", options["file-link-days"], "days"),
        uploadExpiry=_duration("upload-expiry", options["upload-expiry"], "seconds"),
        urlSecret=secret,
    )


#: What a node id may be made of (it names Redis keys and channels).
_NODE_ID = re.compile(r"[A-Za-z0-9._:@-]{1,128}")


def _cluster(options: "Options", config: Config) -> dict[str, Any]:
    """
    The cluster settings (CLUSTER.md): C{--redis} turns clustering on; the
    other options need it.
    """
    from .cluster.connection import RedisAddress

    url = options["redis"] or os.environ.get("CRM_IM_REDIS") or None
    given = [name for name in ("node-id", "node-ttl", "redis-prefix", "node-address") if options[name] is not None]
    if url is None:
        if given:
            raise usage.UsageError(f"--{given[0]} needs --redis (or $CRM_IM_REDIS): without it there is one node")
        return {}
    try:
        RedisAddress.parse(url)
    except ValueError as error:
        raise usage.UsageError(f"--redis: {error}")
    nodeId = options["node-id"]
    if nodeId is not None and not _NODE_ID.fullmatch(nodeId):
        raise usage.UsageError("--node-id must be 1 to 128 letters, digits or . _ : @ -")
    if nodeId is None:
        port = firstTCPPort(config.listen)
        if not port:
            raise usage.UsageError(
                "--redis needs --node-id when the port is 0 or no --listen endpoint is tcp:PORT "
                "(the default node id is the host name and the port)"
            )
    ttl = 15.0 if options["node-ttl"] is None else _number("node-ttl", options["node-ttl"], float)
    if not 1 <= ttl <= 3600:
        raise usage.UsageError("--node-ttl must be between 1 and 3600 seconds")
    prefix = "socket.io" if options["redis-prefix"] is None else str(options["redis-prefix"])
    if not prefix or len(prefix) > 100 or "#" in prefix or any(c.isspace() for c in prefix):
        raise usage.UsageError("--redis-prefix must be 1 to 100 characters, without '#' or spaces")
    address = options["node-address"]
    if address is not None:
        parts = urlsplit(address)
        try:
            parts.port
        except ValueError:
            raise usage.UsageError(f"--node-address: bad port in {address!r}")
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") or parts.query:
            raise usage.UsageError("--node-address must be an http:// or https:// URL of host and port, e.g. http://10.0.0.5:8080")
        address = f"{parts.scheme}://{parts.netloc}"
    from .storage.engines import POSTGRES_SCHEMES

    if config.store is None or not config.store.startswith(POSTGRES_SCHEMES):
        raise usage.UsageError(
            "--redis needs a store every node shares: --store postgresql://... (or $CRM_IM_STORE); "
            "crm_im-migrate copies a SQLite store there"
        )
    return dict(redis=url, nodeId=nodeId, nodeTTL=ttl, redisPrefix=prefix, nodeAddress=address)


def _exitZeroAfterShutdown(reactor: Any) -> None:
    """
    Make a clean stop exit 0 (contract section 10).

    Since Twisted 20.3, twistd kills itself again with the signal that
    stopped the reactor (C{reactor._exitSignal}), so a server stopped by
    SIGTERM after a clean shutdown would end "killed by SIGTERM".  The
    shutdown triggers have run (the service stopped) when this clears it.
    """

    def clear() -> None:
        if getattr(reactor, "_exitSignal", None) is not None:
            setattr(reactor, "_exitSignal", None)

    reactor.addSystemEventTrigger("after", "shutdown", clear)


def _stopOnHangup(reactor: Any) -> None:
    """
    Make SIGHUP stop the server as SIGTERM does (C{reactor.stop}: the
    services stop, clients get C{server:shutdown}, exit 0), once the
    reactor runs. Nothing handled it: the default action killed the
    process at once (exit 129), say when the terminal of a server started
    by hand closed.
    """
    log = Logger()

    def hangup(number: int, frame: Any) -> None:
        log.info("Received SIGHUP, shutting down.")
        reactor.callFromThread(reactor.stop)

    def install() -> None:
        signal.signal(signal.SIGHUP, hangup)

    reactor.callWhenRunning(install)


def makeService(options: Options) -> IService:
    """
    Build the crm_im service from parsed options.
    """
    from twisted.internet import reactor

    from .server import CRMIMService

    _exitZeroAfterShutdown(reactor)
    _stopOnHangup(reactor)
    try:
        # Checked before anything is built on it: the file store, the
        # upload secret and SQLite would each fail in their own way.
        checkDataDir(options.config.dataDir)
    except DataDirError:
        return FailedStart(reactor, Failure())
    service = CRMIMService(options.config, reactor)
    service.exitOnStartFailure = True
    return service
