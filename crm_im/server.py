# -*- test-case-name: tests.integration.test_im -*-
"""
The one object that wires a crm_im server: clock, store, file store,
presence, the Socket.IO server and the IM application on it, the resource
tree and the listening ports. It only builds: each part's start and stop is
a stage of a L{StagedService} (L{crm_im.lifecycle}), in the order the
server needs (the store open before anything uses it, listening last;
clients drained before the ports close, the store closed last).
"""

from __future__ import annotations

import gc
import os
import sys
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IReactorFromThreads
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.filepath import FilePath
from twisted.web.resource import Resource
from twisted.web.server import Site

from . import __version__
from .auth import JWT, OPEN, authenticatorFor
from .cluster.service import ClusterService, ClusterSettings
from .config import Config
from .crypto import atRestFor
from .http.cors import CORSPolicy
from .engineio.resource import EngineIOResource
from .engineio.session import CLOSING
from .engineio.site import EngineIOSite
from .gateway.adminui import AdminUINamespace
from .gateway.socketio import SocketIOGateway
from .heap import fixMmapThreshold, trimHeap
from .idlerelease import IdleMemoryRelease
from .im.admin import AdminHandlers
from .im.core import IMCore, IMSettings
from .im.groups import GroupLimits
from .im.recovery import enableRecovery, recoveryStoreFor
from .im.rooms import RoomLimits
from .im.metrics import IMMetrics
from .lifecycle import ListeningPorts, Stage, StagedService
from .metrics import ReadCounter
from .notify import GatewayClient, PushMetrics, PushSender, PushSettings
from .presence import Presence
from .rest.admin import MAX_BODY as ADMIN_MAX_BODY, mountAdmin, tooLargeBody
from .rest.auth import AdminAuthenticator
from .routing.local import LocalRouter
from .routing.redis import RedisRouter
from .threadpool import AcyclicThreadPool
from .startup import hostPort, logStartFailure, stopAndExit, warnAboutJWTKey
from .socketio.server import SocketIOConfig, SocketIOServer
from .storage import DiskFileStore, MemoryMessageStore, SQLMessageStore, storeFor
from .storage.admin import adminStoreFor
from .web.files import FilesResource
from .web.health import HealthResource
from .web.metrics import MetricsResource
from .web.json import NotFoundResource
from .web.root import RootResource, buildRoot
from .http.streaming import streamingRequests
from .storage.filerecords import SQLFileRecords
from .storage.interface import IFileRecords
from .storage.memoryfiles import MemoryFileRecords
from .uploads.resource import FilesAPIResource, ThumbnailsResource
from .uploads.service import UploadService, UploadSettings
from .uploads.signing import URLSigner, loadSecret
from .web.status import OnlineUsersResource, ServerStatusResource


#: The interpreter's thread switch interval, in seconds (CPython's default
#: is 0.005). The store's pool thread takes the GIL back after every
#: statement; while the reactor thread is busy each take waits up to one
#: interval, so a long interval stretches every group commit under load.
#: Measured with the shared relay bench at 4,000 msg/s: p99 364 ms at
#: 0.005 s, 271 ms at 0.002 s, 127 ms at 0.0005 s.
SWITCH_INTERVAL = 0.0005


def tuneInterpreter() -> None:
    """
    Tune CPython for a long-running server once start-up is done.

    Everything allocated during start-up is moved out of the collector's
    sight and young collections made rarer: a server holds many long-lived
    objects (sessions, protocols, presence); CPython's default thresholds
    make it re-scan them often, and a full collection of a large heap
    pauses the reactor for tens of ms, which sets the p99 latency at
    moderate load. The thread switch interval is shortened (see
    L{SWITCH_INTERVAL}). The C allocator's mmap threshold is fixed so that
    the large frames of a login storm do not stay resident as heap holes
    (see L{crm_im.heap}).
    """
    fixMmapThreshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    sys.setswitchinterval(SWITCH_INTERVAL)


class CRMIMService(StagedService):
    """
    A complete crm_im server: its parts, and the stages that start and stop
    them.

    Stages, in start order (stopped in the reverse one): C{files-threads}
    (the file store's thread pool), C{store} (opened), C{push} (the outbox
    sender, with C{--push-gateway}), C{admin} (the back office), C{presence}
    (grace sweeps), C{uploads} (expiry and retention sweeps), C{socketio}
    (heartbeats, connect timeouts, token expiry), C{listen} and
    C{admin-listen} (the ports), C{drain} (at stop only: C{server:shutdown}
    to every client, sessions closed after their last packets while the
    ports still answer the polling clients collecting them), C{tuning}
    (the interpreter tuned for a long run, once everything is up) and
    C{idle-release} (memory given back after busy spells, with
    C{--release-memory-after}).

    @ivar ports: the listening ports, once started.
    @ivar ready: fires with C{ports} once the store is open and every
        endpoint listens (errbacks if start-up failed).
    """

    log = Logger()

    #: When start-up fails, end the process with status 1 once the reactor
    #: has stopped (twistd would exit 0, and systemd would not restart us).
    #: Set by L{crm_im.tap.makeService}; off for services run inside tests.
    exitOnStartFailure = False

    #: Whether start-up failed (set by L{_startFailed}).
    startFailed = False

    def __init__(self, config: Config, reactor: Any, store: MemoryMessageStore | None = None) -> None:
        """
        @param store: the message store (it also keeps the file records);
            by default the durable store C{config.storeURL()} names (SQLite
            in the data directory, or PostgreSQL). The
            in-memory fake is accepted for measurements of the rest of the
            server (C{bench/memory_store.tac}), never for service: it
            forgets everything at exit.
        """
        super().__init__()
        self.config = config
        self.reactor = reactor
        dataDir = FilePath(config.dataDir)
        self.dataDir = dataDir
        # encryption at rest (--encryption-keys): the store and the file
        # store seal with it; the store refuses to open without a key
        # the database was written with
        self.atRest = atRestFor(config.encryptionKeys)
        self.store: SQLMessageStore | MemoryMessageStore
        if store is None:
            self.store = storeFor(config.storeURL(), reactor, config.sqliteSynchronous, self.atRest)
            self.store.commitInterval = config.commitInterval
        else:
            self.store = store
        self.threadpool = AcyclicThreadPool(minthreads=0, maxthreads=4, name="crm_im-files")
        self.fileRecords: IFileRecords = (
            MemoryFileRecords(self.store) if isinstance(self.store, MemoryMessageStore) else SQLFileRecords(self.store)
        )
        self.files = DiskFileStore(
            dataDir.child("files"),
            IReactorFromThreads(reactor),
            self.threadpool,
            self.fileRecords,
            None if self.atRest is None else self.atRest.files,
        )
        self.uploads = UploadService(
            self.files,
            self.fileRecords,
            URLSigner(loadSecret(dataDir, config.urlSecret), reactor),
            reactor,
            UploadSettings(
                maxFileSize=config.maxFileSize,
                quota=config.fileQuota,
                uploadIdle=config.uploadExpiry,
                linkLifetime=config.fileLinkDays * 86400,
                retentionDays=config.fileRetentionDays,
            ),
        )
        # A cluster node (--redis, CLUSTER.md): presence, chat rooms and
        # delivery span the nodes; Engine.IO sids name this node.
        self.cluster: ClusterService | None = None
        if config.redis is not None:
            self.cluster = ClusterService(reactor, ClusterSettings.fromConfig(config), config.presenceGrace)
        self.presence = Presence(reactor, config.presenceGrace) if self.cluster is None else self.cluster.presence
        engineConfig = config.engineConfig()
        self.sio = SocketIOServer(
            reactor,
            engineConfig,
            config=SocketIOConfig(
                connectTimeout=config.connectTimeout, recoveryWindow=round(config.recoveryWindow * 1000)
            ),
            newSid=None if self.cluster is None else self.cluster.newEngineSid,
        )
        self.authenticator = authenticatorFor(config, reactor)
        self.metrics = IMMetrics()
        self.metrics.watch(self.sio.engine, self.presence)
        if self.cluster is not None:
            self.metrics.registry.register(self.cluster.collector())
        namespace = self.sio.namespace("/")
        local = LocalRouter(namespace.sockets, self.presence, reactor)
        local.disconnector = lambda sid: self.sio.disconnect(sid, closeConnection=True)
        self.router: LocalRouter | RedisRouter = (
            local if self.cluster is None else self.cluster.makeRouter(local, namespace.sockets)
        )
        self.core = IMCore(
            self.store,
            self.files,
            self.presence,
            self.router,
            reactor,
            IMSettings(
                maxMessageLength=config.maxMessageLength,
                maxCiphertext=config.maxPayload,
                maxHistoryBytes=config.maxPayload,
                logEvents=config.logEvents,
                recallWindow=config.recallWindow,
                groups=GroupLimits(config.maxGroupMembers, config.maxGroupsPerUser),
                rooms=RoomLimits(config.maxRoomSockets, config.maxRoomsPerUser, config.roomCreators),
            ),
            authenticator=self.authenticator,
            limits=config.limits,
            metrics=self.metrics,
            roomPresence=None if self.cluster is None else self.cluster.rooms,
        )
        if self.cluster is not None:
            self.cluster.attach(self.core, namespace)
        self.app = SocketIOGateway(self.sio, self.core, reactor)
        # Connection state recovery from the store (survives a restart).
        self.recovery = enableRecovery(
            self.sio,
            self.core.sessions,
            self.router,
            recoveryStoreFor(self.store),
            reactor,
            node="" if self.cluster is None else self.cluster.nodeId,
        )
        if self.cluster is not None and self.recovery is not None:
            self.cluster.node.died.append(self.recovery.nodeDied)
            self.cluster.node.revived.append(self.recovery.rejoined)
        self.pushSender = self._buildPush(config, reactor)
        cors = CORSPolicy(config.corsOrigins)
        root = buildRoot(
            index=ServerStatusResource(self.presence, reactor, cors),
            onlineUsers=OnlineUsersResource(self.presence, cors),
            files=FilesResource(self.files, cors, self.authenticator),
            engine=self._engineResource(reactor, cors),
            cors=cors,
        )
        root.putChild(b"metrics", MetricsResource(self.metrics.registry))
        root.putChild(
            b"health",
            HealthResource(
                self.store, reactor, lambda: bool(self.running), cluster=None if self.cluster is None else self.cluster.reason
            ),
        )
        self._buildAdmin(config, reactor, root, cors)
        if self.cluster is not None:
            self.cluster.attachAdmin(self.admin)
        api = root.children[b"api"]
        self.uploads.cors = cors
        api.putChild(b"files", FilesAPIResource(self.uploads, cors))
        api.putChild(b"thumbnails", ThumbnailsResource(self.uploads, cors))
        self.core.enableUploads(self.fileRecords, self.uploads, self.uploads.signWire)
        # A body over the limit is refused before routing: in the admin
        # API's shape on its paths when they are served here.
        adminHere = self.adminAuth.configured and not config.adminListen
        self.site = EngineIOSite(root, engineConfig, reactor, tooLarge=tooLargeBody if adminHere else None)
        self.site.noisy = False  # no "Starting factory <... object at 0x...>"
        self.site.requestFactory = streamingRequests(self.site.requestFactory, self.uploads.sink)
        self.listeners = ListeningPorts("listen", reactor, config.listen, self.site, self._listening)
        self.adminListeners = ListeningPorts(
            "admin-listen",
            reactor,
            config.adminListen if self.adminSite is not None else [],
            self.adminSite if self.adminSite is not None else self.site,
            self._adminListening,
        )
        self.idleRelease: IdleMemoryRelease | None = None
        if config.releaseMemoryAfter > 0:
            self.idleRelease = IdleMemoryRelease(
                reactor,
                self._activity,
                self.store.releaseCaches,
                lambda: deferToThreadPool(reactor, self.threadpool, trimHeap),
                config.releaseMemoryAfter,
                lambda: self.sio.recoveryLog is None or self.sio.recoveryLog.isEmpty,
            )
            release = self.idleRelease
            self.metrics.registry.register(
                ReadCounter(
                    "crm_im_memory_releases",
                    "Memory given back after a busy spell once the server went quiet (--release-memory-after).",
                    lambda: release.releases,
                )
            )
        self.ready: Deferred[list[IListeningPort]] = Deferred()
        self._addStages()

    def _activity(self) -> int:
        """
        A count that grows with the server's work, for L{IdleMemoryRelease}:
        Engine.IO sessions opened and closed, and store transactions (every
        message, login's offline queue, read and recovery record is one).
        """
        stats = self.sio.engine.stats
        transactions = self.store.transactionCount if isinstance(self.store, SQLMessageStore) else 0
        return stats.opened + stats.closed + transactions

    def _addStages(self) -> None:
        """
        The stages of the server, in start order (see the class docstring).
        """
        for stage in (
            Stage("files-threads", self.threadpool.start, self._stopThreadpool),
            Stage("store", self._openStore, self.store.close),
            Stage("push", None if self.pushSender is None else self.pushSender.start,
                  None if self.pushSender is None else self.pushSender.stop),
            Stage("admin", self.admin.start if self.adminAuth.configured else None, self._stopAdmin),
            Stage("presence", self.presence.start, self.presence.stop),
            Stage("uploads", self.uploads.start, self.uploads.stop),
            Stage("socketio", self._startSockets, self._stopSockets),
            # (after the store opened, before listening; stopped once the
            # clients were drained and the ports closed)
            Stage("cluster", None if self.cluster is None else self.cluster.start,
                  None if self.cluster is None else self.cluster.stop),
            self.listeners,
            self.adminListeners,
            Stage("drain", None, self._drain),
            Stage("tuning", self._tune, None),
            *([] if self.idleRelease is None else [self.idleRelease]),
        ):
            stage.setServiceParent(self)

    @property
    def ports(self) -> list[IListeningPort]:
        """
        The ports listening now: the main ones, then the admin ones.
        """
        return self.listeners.ports + self.adminListeners.ports

    def _buildAdmin(self, config: Config, reactor: Any, root: RootResource, cors: CORSPolicy) -> None:
        """
        The back office (ADMIN.md), when admin credentials are configured:
        its handlers (watching the sessions, refusing banned logins), the
        API and page on the main port or on C{--admin-listen}, and the
        Admin UI's namespace with C{--admin-ui}.
        """
        self.adminAuth = AdminAuthenticator(
            reactor, config.adminToken, self.authenticator if config.auth == JWT else None
        )
        self.admin = AdminHandlers(
            self.core,
            adminStoreFor(self.store),
            reactor,
            deviceInfo=self._deviceInfo,
            sessionsByTransport=self._sessionsByTransport,
            storeSize=self._storeSize,
            outboxDepth=lambda: None if self.pushSender is None else self.pushSender.depth,
            # (in a cluster, the --node-id the other nodes know it by)
            node=None if self.cluster is None else self.cluster.nodeId,
        )
        self.adminUI: AdminUINamespace | None = None
        self.adminSite: Site | None = None
        if not self.adminAuth.configured:
            return
        sessions = self.core.sessions
        sessions.admission = self.admin.admission
        sessions.watchers.append(self.admin)
        if config.adminListen:
            adminRoot = RootResource(NotFoundResource(cors), cors)
            mountAdmin(adminRoot, self.admin, self.adminAuth)
            # Bounded bodies like the main port's (not the Engine.IO limit:
            # the admin API's own).
            self.adminSite = EngineIOSite(
                adminRoot, config.engineConfig(), reactor, maxBody=ADMIN_MAX_BODY + 4096, tooLarge=tooLargeBody
            )
        else:
            mountAdmin(root, self.admin, self.adminAuth, root.children.get(b"api"))
        if config.adminUI:
            self.adminUI = AdminUINamespace(
                self.sio, self.adminAuth, reactor, self.presence, self.core.roomPresence, self.admin
            )
            sessions.watchers.append(self.adminUI)

    def _deviceInfo(self, device: str) -> dict[str, Any]:
        socket = self.sio.getSocket(device)
        if socket is None:
            return {}
        session = socket.session
        return {
            "transport": session.transportName,
            "address": session.remoteAddress,
            "userAgent": session.userAgent or None,
        }

    def _sessionsByTransport(self) -> dict[str, int]:
        counts = {"polling": 0, "websocket": 0}
        for session in self.sio.engine.sessions.values():
            counts[session.transportName] = counts.get(session.transportName, 0) + 1
        return counts

    def _storeSize(self) -> int | None:
        path = getattr(self.store, "path", None)
        if not isinstance(path, str):
            return None
        total = 0
        for name in (path, path + "-wal"):
            try:
                total += os.stat(name).st_size
            except OSError:
                pass
        return total

    def _buildPush(self, config: Config, reactor: Any) -> PushSender | None:
        """
        The offline push sender (PUSH.md), when C{--push-gateway} is set.
        """
        if config.pushGateway is None:
            return None
        settings = PushSettings(
            gateway=config.pushGateway,
            secret=None if config.pushSecret is None else config.pushSecret.encode("utf-8"),
            coalesce=config.pushCoalesce,
            content=config.pushContent,
            concurrency=config.pushConcurrency,
            timeout=config.pushTimeout,
            maxOutbox=config.pushMaxOutbox,
            grace=config.presenceGrace,
        )
        client = GatewayClient(reactor, settings.gateway, settings.secret, settings.timeout, settings.concurrency)
        sender = PushSender(
            self.store,
            self.presence,
            self.core.pushDirectory,
            reactor,
            settings,
            client,
            PushMetrics(self.metrics.registry),
        )
        self.core.enablePush(sender)
        return sender

    def startService(self) -> None:
        """
        Start the stages in order; a failure stops the reactor (the
        operator sees why in the log and systemd restarts us).
        """
        super().startService()
        self.started.addCallbacks(lambda _: self.ready.callback(self.ports), self._startFailed)

    # ---- the stages' steps

    async def _openStore(self) -> None:
        self.dataDir.makedirs(ignoreExistingDirectory=True)
        await self.store.open()

    def _stopThreadpool(self) -> None:
        if self.threadpool.started:
            self.threadpool.stop()

    def _stopAdmin(self) -> None:
        self.admin.stop()
        if self.adminUI is not None:
            self.adminUI.stop()

    def _startSockets(self) -> None:
        self.sio.start()
        self.app.start()

    def _stopSockets(self) -> None:
        # (normally done by the drain already; after a failed start, here)
        self.sio.stop()
        self.app.stop()

    def _engineResource(self, reactor: Any, cors: CORSPolicy) -> Resource:
        """
        The Engine.IO endpoint; a cluster node forwards long-polling
        requests for other nodes' sessions to them.
        """
        resource = EngineIOResource(self.sio.engine, reactor, cors)
        if self.cluster is None:
            return resource
        return self.cluster.forwarding(resource, self.sio.engine)

    def _listening(self, port: IListeningPort) -> None:
        if self.cluster is not None:
            self.cluster.listening(getattr(port.getHost(), "port", 0))
        self.log.info(
            "crm_im listening on {address} (version {version}, data directory {dataDir})",
            address=hostPort(port.getHost()),
            version=__version__,
            dataDir=self.dataDir.path,
        )

    def _adminListening(self, port: IListeningPort) -> None:
        self.log.info("crm_im admin API and page on {address}", address=hostPort(port.getHost()))

    def _tune(self) -> None:
        tuneInterpreter()
        if self.authenticator.mode == OPEN:
            self.log.warn(
                "authentication mode is 'open': clients say who they are; do not expose this server to untrusted networks"
            )
        else:
            self.log.info("authentication mode is {mode}", mode=self.authenticator.mode)
            warnAboutJWTKey(self.authenticator)

    def _startFailed(self, failure: Any) -> None:
        # One line for what the operator fixes (a taken port, an unusable
        # data directory), the traceback for anything else.
        self.startFailed = True
        logStartFailure(failure)
        self.ready.errback(failure)
        if self.exitOnStartFailure:
            # Before the reactor runs (twistd starts services first), as
            # soon as it does: a server that failed must not stay alive.
            stopAndExit(self.reactor)

    async def _drain(self) -> None:
        """
        Tell every client (C{server:shutdown}) and close the sessions after
        their last packets, while the ports still listen.
        """
        if not self.startFailed:
            # (after a failed start there is nothing to announce)
            self.log.info("[关闭] crm_im stopping: {n} sessions", n=len(self.sio.engine.sessions))
        self.app.announceShutdown()
        self.sio.stop()
        # Polling clients collect server:shutdown and CLOSE with their next
        # GET, often on a new connection: keep listening for a moment.
        deadline = self.reactor.seconds() + self.config.shutdownGrace
        while self.reactor.seconds() < deadline and any(
            session.state == CLOSING for session in self.sio.engine.sessions.values()
        ):
            await deferLater(self.reactor, 0.05, lambda: None)
