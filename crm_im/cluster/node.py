# -*- test-case-name: tests.test_cluster -*-
"""
One node of a cluster: what it registers in Redis, what it hears there.

Keys (C{K} is C{crm_im:<prefix>}):

  - C{K:nodes}, a hash: node id -> msgpack C{[address, tag]} (the
    internal HTTP address polling requests are forwarded to; the tag
    every Engine.IO sid of the node ends with);
  - C{K:alive:<node>}: set with a TTL (C{--node-ttl}) by each heartbeat;
    a node whose key expired is dead;
  - C{K:devices:<node>}, a hash: sid -> msgpack L{DeviceRecord}, the
    node's logged-in devices, with the same TTL (a dead node's devices
    expire with it). The user's node set is the set of nodes whose hash
    holds one of the user's devices; every node mirrors it in its
    L{ClusterPresence} (the router reads the mirror, never Redis, on the
    message path).

Channels: C{K:node:<node>} (targeted deliveries to that node only, see
L{crm_im.routing.redis}), C{K:presence} (device transitions, heard by
every node: presence is cluster-wide by definition), and the Socket.IO
adapter's C{<prefix>#/#*} (L{crm_im.cluster.adapter}).

Lifecycle: at each (re)connection the node drops what an earlier life
with its id registered (first connection only), writes its own devices
again, says so on the presence channel (other nodes then read its hash),
and reads every live node's hash (L{ClusterPresence.replaceNode}). The
heartbeat (a L{LoopingCall} on the injected clock every third of the TTL)
refreshes both keys, looks for nodes whose key expired (their devices
are dropped: users left without a device go offline after the settling
delay) and reads every hash again now and then (a mirror that missed an
event heals). While Redis is down the node serves its own devices only
(L{ClusterPresence.peersReachable}).
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Coroutine

import msgpack
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from .connection import RedisLink
from .presence import ClusterPresence, DeviceRecord

#: Default seconds without a heartbeat after which a node is dead.
DEFAULT_NODE_TTL = 15.0
#: Heartbeats between two full reads of every node's devices.
RESYNC_EVERY = 6


def nodeTag(nodeId: str) -> str:
    """
    The short tag that ends every Engine.IO sid of C{nodeId} (URL-safe).
    """
    return hashlib.sha1(nodeId.encode("utf-8")).hexdigest()[:8]


def tagOfSid(sid: str) -> str | None:
    """
    The node tag of an Engine.IO sid made by L{ClusterNode.newSid}.
    """
    _, dot, tag = sid.rpartition(".")
    return tag if dot else None


class ClusterNode:
    """
    This node's registration, heartbeat and channels.

    @ivar addresses: the internal address of each live node, by tag.
    @ivar received: told of each message on this node's own channel.
    @ivar adapterMessage: told of each adapter broadcast.
    """

    log = Logger()

    def __init__(
        self,
        clock: Any,
        link: RedisLink,
        presence: ClusterPresence,
        prefix: str = "socket.io",
        address: str = "",
        ttl: float = DEFAULT_NODE_TTL,
    ) -> None:
        self.clock = clock
        self.link = link
        self.presence = presence
        self.nodeId = presence.nodeId
        self.tag = nodeTag(self.nodeId)
        self.address = address
        self.ttl = ttl
        # The heartbeat runs every third of the TTL and its key lives two
        # thirds: a dead node is noticed within the TTL (the key expires,
        # then the next check of a peer sees it), with a third of it as
        # slack for a late heartbeat.
        self.aliveMs = int(ttl * 2000 / 3)
        self.prefix = prefix
        base = self.keyBase = f"crm_im:{prefix}"
        self.nodesKey = f"{base}:nodes"
        self.presenceChannel = f"{base}:presence".encode("utf-8")
        self._aliveBase = f"{base}:alive:"
        self._devicesBase = f"{base}:devices:"
        self._nodeChannelBase = f"{base}:node:"
        self.ownChannel = self.nodeChannel(self.nodeId).encode("utf-8")
        self.adapterPattern = f"{prefix}#/#*".encode("utf-8")
        self.addresses: dict[str, str] = {}
        self.received: Callable[[bytes], object] | None = None
        self.adapterMessage: Callable[[bytes], object] | None = None
        #: handlers of the other kinds of presence-channel events (rooms,
        #: group and room invalidations), by kind: C{handler(node, event)}
        self.handlers: dict[str, Callable[[str, list[Any]], object]] = {}
        #: told each time this node has (re)joined the cluster
        self.registered: list[Callable[[], object]] = []
        #: told when this node registers again after the others dropped it
        #: for want of a heartbeat (cut off from Redis past the TTL), as
        #: they told their L{died}: not at every reconnection
        self.revived: list[Callable[[], object]] = []
        #: told of each other node dropped for want of a heartbeat (its id)
        self.died: list[Callable[[str], object]] = []
        self._heartbeat = LoopingCall(self.beat)
        self._heartbeat.clock = clock
        self._beats = 0
        self._cleared = False
        #: when this node last registered again (Redis came back, or had
        #: lost our keys); L{None} before that
        self._rejoinedAt: float | None = None
        #: registrations, joins and heartbeats under way: L{stop} waits
        #: for them, so none writes our keys again after we removed them
        self._working: set[Deferred[Any]] = set()
        self._leaving = False
        presence.published = self._published
        link.onMessage = self._message
        link.subscribe(self.ownChannel)
        link.subscribe(self.presenceChannel)
        link.psubscribe(self.adapterPattern)
        link.ready.append(self._linkUp)
        link.lost.append(self._linkDown)

    # ---- names

    def aliveKey(self, node: str) -> str:
        return self._aliveBase + node

    def devicesKey(self, node: str) -> str:
        return self._devicesBase + node

    def nodeChannel(self, node: str) -> str:
        return self._nodeChannelBase + node

    def newSid(self, random: str) -> str:
        """
        An Engine.IO sid naming this node.
        """
        return f"{random}.{self.tag}"

    def reason(self) -> str | None:
        """
        Why this node is cut off from the cluster (for C{/health}), or
        L{None}.
        """
        return None if self.link.up else self.link.reason

    # ---- life

    def start(self) -> None:
        self._leaving = False
        self.presence.peersReachable = False
        self.link.start()
        self._heartbeat.start(self.ttl / 3, now=False)

    async def stop(self) -> None:
        """
        Leave the cluster: remove our registration (the others drop our
        devices at once instead of after the TTL), then disconnect.

        A heartbeat or registration still under way is waited for first
        (each command has the link's reply timeout): one that went on
        after our C{DEL} would write our C{alive} key again, and the
        others would list a node that is gone until that key expired.
        """
        self._leaving = True
        if self._heartbeat.running:
            self._heartbeat.stop()
        while self._working:
            await DeferredList(list(self._working))
        if self.link.up:
            try:
                await self.link.execute("DEL", self.aliveKey(self.nodeId), self.devicesKey(self.nodeId))
                await self.link.execute("HDEL", self.nodesKey, self.nodeId)
                await self.link.publish(self.presenceChannel, msgpack.packb(["reset", self.nodeId]))
            except Exception as error:
                self.log.warn("leaving the cluster: {error}", error=str(error))
        await self.link.stop()

    # ---- publishing our transitions

    def _published(self, event: tuple[object, ...]) -> None:
        link = self.link
        if not link.up:
            return  # registered again in full at reconnection
        me = self.nodeId
        devicesKey = self.devicesKey(me)
        kind = event[0]
        if kind == "login":
            _, sid, record = event
            assert isinstance(sid, str) and isinstance(record, DeviceRecord)
            packed = msgpack.packb(record.pack())
            link.send("HSET", devicesKey, sid, packed)
            link.send("PUBLISH", self.presenceChannel, msgpack.packb(["login", me, sid, record.pack()]))
        elif kind == "logout":
            _, sid, hold = event
            assert isinstance(sid, str) and isinstance(hold, (int, float))
            link.send("HDEL", devicesKey, sid)
            link.send("PUBLISH", self.presenceChannel, msgpack.packb(["logout", me, sid, hold]))
        elif kind == "status":
            _, userId, status, sids = event
            assert isinstance(userId, str) and isinstance(sids, list)
            for sid in sids:
                record = self.presence.record(sid)
                if record is not None:
                    link.send("HSET", devicesKey, sid, msgpack.packb(record.pack()))
            link.send("PUBLISH", self.presenceChannel, msgpack.packb(["status", me, userId, status]))

    def announce(self, kind: str, *args: Any) -> None:
        """
        Tell every other node C{[kind, thisNode, *args]} on the presence
        channel (a L{handlers} entry there handles it); nothing while
        Redis is down.
        """
        self.link.send("PUBLISH", self.presenceChannel, msgpack.packb([kind, self.nodeId, *args]))

    def deviceChanged(self, sid: str) -> None:
        """
        A local device's registration changed (its rooms): register it
        again and tell the others C{["rooms", node, sid, rooms]}.
        """
        record = self.presence.record(sid)
        if record is None or not self.link.up:
            return
        self.link.send("HSET", self.devicesKey(self.nodeId), sid, msgpack.packb(record.pack()))
        self.announce("rooms", sid, list(record.rooms))

    def setAddress(self, address: str) -> None:
        """
        This node's internal address is known now (after listening on a
        port chosen by the system): register it again.
        """
        self.address = address
        self.addresses[self.tag] = address
        if self.link.up:
            self.link.send("HSET", self.nodesKey, self.nodeId, msgpack.packb([self.address, self.tag]))
            self.announce("node")

    def sendTo(self, node: str, message: bytes) -> None:
        """
        Publish C{message} on C{node}'s own channel (the router's
        C{publish}).
        """
        self.link.send("PUBLISH", self.nodeChannel(node), message)

    # ---- what Redis tells us

    def _message(self, channel: bytes, message: bytes, pattern: bytes | None) -> None:
        if pattern is not None:
            if self.adapterMessage is not None:
                self.adapterMessage(message)
        elif channel == self.ownChannel:
            if self.received is not None:
                self.received(message)
        elif channel == self.presenceChannel:
            self.presenceEvent(message)

    def presenceEvent(self, message: bytes) -> None:
        """
        Apply another node's transition.
        """
        try:
            event = msgpack.unpackb(message)
            kind, node = event[0], event[1]
        except Exception:
            self.log.warn("ignoring a malformed presence event")
            return
        if node == self.nodeId:
            return
        if kind == "login":
            record = DeviceRecord.unpack(event[3])
            if record is not None:
                self.presence.remoteLogin(node, event[2], record, announce=False)
        elif kind == "logout":
            # (the hold of a socket that may be recovered; none from a
            # node of an earlier version)
            hold = event[3] if len(event) > 3 and type(event[3]) in (int, float) else 0.0
            self.presence.remoteLogout(node, event[2], max(0.0, min(float(hold), 86400.0)))
        elif kind == "status":
            self.presence.remoteStatus(event[2], event[3])
        elif kind == "reset":
            self.presence.replaceNode(node, {})
            self.addresses = {tag: a for tag, a in self.addresses.items() if tag != nodeTag(node)}
        elif kind == "node":
            self._track(self._joined(node))
        else:
            handler = self.handlers.get(kind)
            if handler is not None:
                try:
                    handler(node, event)
                except Exception:
                    self.log.failure("presence event {kind!r} from {node}", kind=kind, node=node)

    # ---- (re)connection and heartbeat

    def _linkUp(self) -> None:
        self._track(self.register())

    def _linkDown(self, reason: str) -> None:
        self.presence.peersReachable = False

    def _track(self, work: Coroutine[Any, Any, None]) -> Deferred[Any] | None:
        """
        Run C{work}, a coroutine of Redis commands, unless we are leaving;
        a failure is logged, and L{stop} waits for it to end.
        """
        if self._leaving:
            work.close()
            return None
        d = Deferred.fromCoroutine(work).addErrback(self._failed)
        if not d.called:
            self._working.add(d)
            d.addBoth(self._done, d)
        return d

    def _done(self, result: object, d: Deferred[Any]) -> object:
        self._working.discard(d)
        return result

    def _failed(self, failure: Failure) -> None:
        self.log.warn("cluster registration: {error}", error=failure.getErrorMessage())

    async def register(self) -> None:
        """
        (Re)join the cluster: drop an earlier life's registrations (first
        time only), write ours, tell the others, read theirs.
        """
        link, me = self.link, self.nodeId
        devicesKey = self.devicesKey(me)
        first = not self._cleared
        if first:
            await link.execute("DEL", devicesKey)
            await link.publish(self.presenceChannel, msgpack.packb(["reset", me]))
            self._cleared = True
        revived = False
        if not first:
            self._rejoinedAt = self.clock.seconds()
            # (dropped by the others: its entry is gone from the list)
            revived = not await link.execute("HEXISTS", self.nodesKey, me)
        # Alive before listed: a node resyncing between the two would
        # otherwise find us listed without a heartbeat and delete us.
        await link.execute("SET", self.aliveKey(me), b"1", "PX", self.aliveMs)
        await link.execute("HSET", self.nodesKey, me, msgpack.packb([self.address, self.tag]))
        await link.execute("DEL", devicesKey)
        args: list[Any] = []
        for sid in list(self.presence.localDevices()):
            record = self.presence.record(sid)
            if record is not None:
                args += [sid, msgpack.packb(record.pack())]
        if args:
            await link.execute("HSET", devicesKey, *args)
            await link.execute("PEXPIRE", devicesKey, int(self.ttl * 1000))
        await link.publish(self.presenceChannel, msgpack.packb(["node", me]))
        await self.resync()
        self.presence.peersReachable = True
        self.log.info("cluster node {node} registered ({n} local devices)", node=me, n=len(args) // 2)
        for listener in list(self.registered):
            listener()
        if revived:
            for listener in list(self.revived):
                listener()

    async def _joined(self, node: str) -> None:
        info = await self.link.execute("HGET", self.nodesKey, node)
        if info is not None:
            address, tag = msgpack.unpackb(info)
            self.addresses[str(tag)] = str(address)
        await self.readNode(node)

    async def readNode(self, node: str) -> None:
        """
        Make our mirror of C{node}'s devices its hash in Redis.
        """
        flat = await self.link.execute("HGETALL", self.devicesKey(node))
        devices: dict[str, DeviceRecord] = {}
        for i in range(0, len(flat) - 1, 2):
            record = DeviceRecord.unpack(msgpack.unpackb(flat[i + 1]))
            if record is not None:
                devices[flat[i].decode("utf-8")] = record
        self.presence.replaceNode(node, devices, announce=True)

    def settling(self) -> bool:
        """
        Whether this node registered again less than a TTL ago. Redis may
        have come back empty: the other nodes register again as they
        reconnect, each in its own time, so one missing its registration
        or heartbeat then is not taken for dead (its users would be told
        that everyone on it left their rooms and went offline, then came
        back). Once the TTL is over, a node still missing is dropped by
        the next heartbeat.
        """
        return self._rejoinedAt is not None and self.clock.seconds() - self._rejoinedAt < self.ttl

    async def resync(self) -> None:
        """
        Read every node's registration: live ones' devices, dead ones
        dropped (and their keys removed); while L{settling}, the ones we
        know are kept until they register again.
        """
        flat = await self.link.execute("HGETALL", self.nodesKey)
        nodes: dict[str, tuple[str, str]] = {}
        for i in range(0, len(flat) - 1, 2):
            try:
                address, tag = msgpack.unpackb(flat[i + 1])
                nodes[flat[i].decode("utf-8")] = (str(address), str(tag))
            except Exception:
                continue
        others = [node for node in nodes if node != self.nodeId]
        alive = await self.link.execute("MGET", *[self.aliveKey(node) for node in others]) if others else []
        live = {self.nodeId}
        addresses: dict[str, str] = {}
        settling = self.settling()
        for node, flag in zip(others, alive):
            if flag is None:
                if settling:
                    live.add(node)
                    continue
                await self._drop(node)
                continue
            live.add(node)
            addresses[nodes[node][1]] = nodes[node][0]
            await self.readNode(node)
        addresses[self.tag] = self.address
        if settling:
            # (their addresses, for forwarding, until they say them again)
            addresses = {**self.addresses, **addresses}
            live.update(self.presence.nodes())
        self.addresses = addresses
        self.presence.forgetNodes(live)

    async def _drop(self, node: str) -> None:
        """
        C{node} has no heartbeat: its devices leave presence, its keys go,
        and L{died} is told.
        """
        self.log.info("cluster node {node} is gone (no heartbeat)", node=node)
        self.presence.replaceNode(node, {})
        await self.link.execute("HDEL", self.nodesKey, node)
        await self.link.execute("DEL", self.devicesKey(node))
        for listener in self.died:
            listener(node)

    def beat(self) -> Deferred[Any] | None:
        """
        One heartbeat: refresh our keys; find dead nodes; now and then
        read everything again.
        """
        if not self.link.up:
            return None
        self._beats += 1
        return self._track(self._beat())

    async def _beat(self) -> None:
        link, me = self.link, self.nodeId
        await link.ping()
        previous = await link.execute("SET", self.aliveKey(me), b"1", "PX", self.aliveMs, "GET")
        if previous is None:
            # Our key had expired (a heartbeat came too late, or Redis lost
            # its data): the others dropped us; join again.
            self.log.warn("cluster node {node}: heartbeat key had expired; registering again", node=me)
            await self.register()
            return
        await link.execute("PEXPIRE", self.devicesKey(me), int(self.ttl * 1000))
        if self._beats % RESYNC_EVERY == 0:
            await self.resync()
            return
        known = [node for node in self.presence.nodes() if node != me]
        if not known or self.settling():
            return
        alive = await link.execute("MGET", *[self.aliveKey(node) for node in known])
        for node, flag in zip(known, alive):
            if flag is None:
                await self._drop(node)
