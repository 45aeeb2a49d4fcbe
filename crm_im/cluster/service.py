# -*- test-case-name: tests.test_cluster_service -*-
"""
One node of a cluster, built and owned as one Twisted service: the Redis
link, the node's registration and channels, the cluster presence and
rooms, the delivery router, the Socket.IO adapter listener, the polling
forwarder and the cluster-wide failed-login counter.

The server builds it before the IM core (the core is given its presence,
rooms and router), L{ClusterService.attach}es it to the core and the
Socket.IO namespace once they exist, wraps its Engine.IO resource in
L{ClusterService.forwarding}, starts it after the store opened and before
listening (L{ClusterService.start}: clients arriving then are tagged and
registered), tells it the listening port (L{ClusterService.listening}),
and stops it after the sessions closed and before the store closes.

Redis being down never stops a node: it serves its own devices, stores
every message, answers C{/health} 503 with L{ClusterService.reason}, and
registers again once Redis is back (L{crm_im.cluster.connection}).
"""

from __future__ import annotations

import os
import socket as _socket
from typing import Any, Iterable

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.web.resource import Resource

from ..config import Config, firstTCPPort
from ..engineio.server import newSessionId
from ..im.rooms import RoomHandlers
from ..presence import UserPresence
from ..routing.local import LocalRouter
from ..routing.order import ConversationOrder
from ..routing.redis import RedisRouter
from .adapter import AdapterListener
from .connection import CONNECT_TIMEOUT, RedisAddress, RedisLink
from .forward import ForwardingResource
from .limits import ClusterFailureLimiter
from .metrics import ClusterCollector
from .node import DEFAULT_NODE_TTL, ClusterNode
from .presence import DEFAULT_SETTLE, ClusterPresence, DeviceRecord
from .rooms import ClusterRoomPresence


@attrs.frozen
class ClusterSettings:
    """
    What a node needs to join a cluster.

    @ivar address: the internal C{http://host:port} other nodes forward
        polling requests to; L{None}: C{http://127.0.0.1:<port>} once
        listening (L{ClusterService.listening}).
    @ivar settle: seconds a user without devices stays listed (the time
        presence events take to cross Redis).
    """

    redis: RedisAddress
    nodeId: str
    ttl: float = DEFAULT_NODE_TTL
    prefix: str = "socket.io"
    address: str | None = None
    settle: float = DEFAULT_SETTLE

    @classmethod
    def fromConfig(cls, config: Config) -> "ClusterSettings":
        """
        From C{--redis} and the options next to it.
        """
        assert config.redis is not None
        port = firstTCPPort(config.listen)
        if config.nodeId is None and not port:
            # (the options refuse this; a Config built by hand may not)
            nodeId = f"{_socket.gethostname()}:pid{os.getpid()}"
        else:
            nodeId = config.clusterNodeId()
        address = config.nodeAddress
        if address is None and port:
            address = f"http://127.0.0.1:{port}"
        return cls(
            redis=RedisAddress.parse(config.redis),
            nodeId=nodeId,
            ttl=config.nodeTTL,
            prefix=config.redisPrefix,
            address=address,
        )


#: Milliseconds a node holds the right to deliver a user's offline queue
#: after an outage (L{ClusterService._catchUpLocalUsers}).
CATCH_UP_LOCK_MS = 10_000


class ClusterService(Service):
    """
    This node's part in the cluster.

    @ivar presence: the cluster presence (the server's presence).
    @ivar rooms: the cluster's chat room membership (the IM core's).
    @ivar router: the delivery router, once L{makeRouter} was called.
    @ivar adapter: the Socket.IO adapter listener, once L{attach}ed.
    """

    log = Logger()

    def __init__(self, reactor: Any, settings: ClusterSettings, grace: float = 0.0, link: RedisLink | None = None) -> None:
        """
        @param grace: C{--presence-grace} (the settling delay is at least
            L{ClusterSettings.settle}).
        @param link: the Redis link (tests); by default one to
            C{settings.redis}.
        """
        self.reactor = reactor
        self.settings = settings
        self.nodeId = settings.nodeId
        self.presence = ClusterPresence(reactor, settings.nodeId, grace=grace, settle=settings.settle)
        self.link = link if link is not None else RedisLink(reactor, settings.redis, lambda *a: None)
        self.node = ClusterNode(reactor, self.link, self.presence, settings.prefix, settings.address or "", settings.ttl)
        if settings.address is not None:
            self.node.addresses[self.node.tag] = settings.address
        self._sockets: dict[str, Any] = {}
        self._local: LocalRouter | None = None
        self.rooms = ClusterRoomPresence(self._isLocal)
        self.presence.roomsOf = self.rooms.roomsOf
        self.presence.remoteDevice = self._remoteDevice
        self.presence.appeared = self._appeared
        self.rooms.published = self.node.deviceChanged
        self.node.handlers["rooms"] = self._roomsEvent
        self.node.handlers["catchup"] = lambda node, event: self._catchUpLocalUsers()
        self.router: RedisRouter | None = None
        self.adapter: AdapterListener | None = None
        self.forwarder: ForwardingResource | None = None
        self._roomHandlers: RoomHandlers | None = None
        self._messaging: Any = None
        self._directory: Any = None
        self._firstRegistration: Deferred[None] = Deferred()
        self.node.registered.append(self._registered)

    # ---- building

    def newEngineSid(self) -> str:
        """
        An Engine.IO session id naming this node (the forwarder reads it).
        """
        return self.node.newSid(newSessionId())

    def makeRouter(self, local: LocalRouter, sockets: dict[str, Any]) -> RedisRouter:
        """
        The cluster's delivery router over C{local} (this node's sockets,
        the Socket.IO namespace's table C{sockets}).
        """
        self._sockets = sockets
        self._local = local
        self.router = RedisRouter(local, self.presence, sockets, self.node.sendTo, ConversationOrder(self.reactor))
        self.node.received = self._nodeMessage
        return self.router

    def attach(self, core: Any, namespace: Any) -> None:
        """
        Wire the IM core (L{crm_im.im.core.IMCore}, built on L{presence},
        L{rooms} and L{router}) and the Socket.IO namespace into the
        cluster: group and room changes told to the other nodes, failed
        logins counted in Redis, adapter broadcasts delivered to the
        namespace's sockets.
        """
        self._directory = core.directory
        self._roomHandlers = core.rooms
        self._messaging = core.messaging
        # a 1:1 message routed here is marked delivered here, as written
        assert self.router is not None, "attach after makeRouter"
        self.router.directDelivered = core.messaging.routedHere
        core.directory.changeListeners.append(self._groupChanged)
        core.rooms.closedListeners.append(self._roomClosed)
        self.node.handlers["group"] = self._groupEvent
        self.node.handlers["roomClosed"] = self._roomClosedEvent
        # pushkeys and mutes: the message path of every node decides whom
        # to notify from its own in-memory directory
        core.pushDirectory.changeListeners.append(lambda change: self.node.announce("push", change))
        self.node.handlers["push"] = lambda node, event: core.pushDirectory.apply(list(event[2]))
        tokens = core.tokens
        limits = core.limits
        tokens.failures = ClusterFailureLimiter(
            limits.loginFailuresPerMinute, limits.loginFailureBurst, self.link, self.node.keyBase
        )
        self.adapter = AdapterListener(
            namespace.sockets,
            namespace.rooms,
            self._localDevicesOf,
            self._groupMembers,
            self.rooms.localDevices,
        )
        self.node.adapterMessage = self._adapterMessage

    def attachAdmin(self, admin: Any) -> None:
        """
        The back office (L{crm_im.im.admin.AdminHandlers}): a ban or unban
        on one node is read again from the store by every other node, so
        that a banned user cannot log in through another node.
        """
        admin.banListeners.append(lambda userId: self.node.announce("bans", userId))
        self.node.handlers["bans"] = lambda node, event: self._reloadBans(admin)

    def _reloadBans(self, admin: Any) -> None:
        admin.reloadBans().addErrback(lambda f: self.log.failure("reading the bans again", f))

    def forwarding(self, inner: Resource, engine: Any) -> ForwardingResource:
        """
        The Engine.IO resource of this node: its own sessions served by
        C{inner}, long-polling requests for other nodes' sessions
        forwarded to them.

        @param engine: the L{crm_im.engineio.server.EngineIOServer} whose
            sessions are this node's.
        """
        node = self.node
        self.forwarder = ForwardingResource(
            inner, self.reactor, lambda sid: sid in engine.sessions, node.tag, lambda tag: node.addresses.get(tag) or None
        )
        return self.forwarder

    def collector(self) -> ClusterCollector:
        """
        The cluster's metrics, for the server's registry.
        """
        return ClusterCollector(self)

    # ---- life

    def reason(self) -> str | None:
        """
        Why this node is cut off from the cluster (C{/health} answers 503
        with it), or L{None}.
        """
        return self.node.reason()

    async def start(self, wait: float = CONNECT_TIMEOUT) -> None:
        """
        Connect to Redis and join the cluster; wait up to C{wait} seconds
        for the first registration (other nodes' devices known before
        clients arrive), then go on anyway: a node without Redis serves
        its own devices and joins once Redis answers.
        """
        if self.router is not None:
            self.router.order.start()
        self.node.start()
        first = self._firstRegistration
        if first.called:
            return
        # (a Deferred of our own to time out: cancelling the registration
        # itself would tell its other waiters it failed)
        waiting: Deferred[None] = Deferred()
        first.addCallback(lambda _: None if waiting.called else waiting.callback(None))
        waiting.addTimeout(wait, self.reactor, onTimeoutCancel=lambda result, timeout: None)
        await waiting
        if not first.called:
            self.log.warn(
                "cluster node {node}: not registered yet ({reason}); serving local devices meanwhile",
                node=self.nodeId,
                reason=self.reason(),
            )

    def listening(self, port: int) -> None:
        """
        The server listens on C{port} now: without C{--node-address} the
        node's internal address is C{http://127.0.0.1:<port>}.
        """
        if self.settings.address is None and not self.node.address:
            self.node.setAddress(f"http://127.0.0.1:{port}")

    async def stop(self) -> None:
        """
        Leave the cluster (the other nodes drop our devices at once) and
        disconnect.
        """
        if self.router is not None:
            # what waits for a predecessor goes now (no timer left behind)
            self.router.order.stop()
        await self.node.stop()
        if self.forwarder is not None:
            await self.forwarder.close()

    def startService(self) -> None:
        super().startService()
        ensureDeferred(self.start()).addErrback(lambda f: self.log.failure("cluster start", f))

    def stopService(self) -> Deferred[None]:
        super().stopService()
        return ensureDeferred(self.stop())

    # ---- presence and rooms

    def _registered(self) -> None:
        if not self._firstRegistration.called:
            self._firstRegistration.callback(None)
            return
        # Registered again after an outage: what was sent meanwhile between
        # this node's users and the others' was stored as offline for its
        # recipients; every node delivers its users' queues now.
        self.node.announce("catchup")
        self._catchUpLocalUsers()

    def _catchUpLocalUsers(self) -> None:
        """
        Deliver each local user's offline queue to one of their devices
        here, as a login would. A user with devices on several nodes gets
        it from one node only: the first to take a short lock in Redis.
        """
        messaging = self._messaging
        if messaging is None:
            return
        firstDevice: dict[str, str] = {}
        for sid in self.presence.localDevices():
            user = self.presence.userOfDevice(sid)
            if user is not None:
                firstDevice.setdefault(user.id, sid)
        for userId, sid in firstDevice.items():
            key = f"{self.node.keyBase}:catchup:{userId}"
            d = self.link.execute("SET", key, self.nodeId, "NX", "PX", CATCH_UP_LOCK_MS)
            d.addCallback(self._caughtUpLock, userId, sid)
            d.addErrback(lambda f: None)  # Redis gone again: the next registration tries again

    def _caughtUpLock(self, taken: Any, userId: str, sid: str) -> None:
        user = self.presence.userOfDevice(sid)
        if taken is not None and user is not None and user.id == userId:
            self._messaging.catchUp(userId, sid)

    def _isLocal(self, device: str) -> bool:
        node = self.presence.nodeOf(device)
        return node == self.nodeId or (node is None and device in self._sockets)

    def _localDevicesOf(self, userId: str) -> list[str]:
        nodeOf, me = self.presence.nodeOf, self.nodeId
        return [sid for sid in self.presence.devicesOf(userId) if nodeOf(sid) == me]

    def _appeared(self, user: UserPresence) -> None:
        """
        A user found in another node's registrations (read after an
        outage): this node tells its own devices, as a login would.
        """
        local = self._local
        if local is None:
            return
        payload = {
            "userId": user.id,
            "status": user.status,
            "timestamp": int(self.reactor.seconds() * 1000),
            "name": user.name,
            "avatar": user.avatar,
        }
        # (batched with the turn's other announcements: an outage's end
        # brings many at once)
        local.toEveryone("status_change", payload)

    def _remoteDevice(self, sid: str, record: DeviceRecord | None) -> None:
        if record is None:
            # Its node said nothing (it died, or we missed its rooms
            # event): tell our sockets in each room of a user now gone.
            for roomId, userId, last in self.rooms.remoteGone(sid):
                if last and self._local is not None:
                    self._local.toDevices(self.rooms.localDevices(roomId), "room:left", {"roomId": roomId, "userId": userId})
        else:
            self.rooms.remoteSet(sid, record.userId, record.rooms)

    def _roomsEvent(self, node: str, event: list[Any]) -> None:
        sid, rooms = event[2], event[3]
        user = self.presence.userOfDevice(sid)
        if user is not None and self.presence.nodeOf(sid) == node and isinstance(rooms, list):
            self.rooms.remoteSet(sid, user.id, [str(room) for room in rooms])

    def _groupChanged(self, groupId: str) -> None:
        self.node.announce("group", groupId)

    def _groupEvent(self, node: str, event: list[Any]) -> None:
        if self._directory is not None:
            self._directory.forget(str(event[2]))

    def _roomClosed(self, roomId: str) -> None:
        self.node.announce("roomClosed", roomId)

    def _roomClosedEvent(self, node: str, event: list[Any]) -> None:
        """
        Another node closed a room (its sockets, ours included, were told
        C{room:left} by it): forget it and take our sockets out.
        """
        roomId = str(event[2])
        if self._roomHandlers is not None:
            self._roomHandlers.forgetRoom(roomId)
        for device in self.rooms.localDevices(roomId):
            self.rooms.leave(roomId, device)

    # ---- messages from Redis

    def _nodeMessage(self, message: bytes) -> None:
        assert self.router is not None
        try:
            self.router.received(message)
        except ValueError as error:
            self.log.warn("ignoring a malformed message on the node channel: {error}", error=str(error))

    async def _groupMembers(self, groupId: str) -> Iterable[str] | None:
        if self._directory is None:
            return None
        state = await self._directory.get(groupId)
        return None if state is None else list(state.members)

    def _adapterMessage(self, data: bytes) -> None:
        if self.adapter is None:
            return
        d = Deferred.fromCoroutine(self.adapter.handle(data))
        d.addErrback(lambda f: self.log.failure("delivering an adapter broadcast", f))
