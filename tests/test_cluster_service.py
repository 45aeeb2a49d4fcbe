"""
L{crm_im.cluster.service}: one node's part in a cluster, wired to a real
IM core.

The first tests are pure (a L{Clock}, fakes): the rooms mirror, the
cluster-wide failed-login counter, the settings from the options,
C{/health} with a cluster reason. L{TwoNodeTests} runs two nodes in this
process on the machine's Redis (a key prefix of the test's own), each
with its own IM core, presence and sockets, both on one store (as two
nodes share one PostgreSQL): what crosses from one node to the other is
what a client on each would see. Skipped without Redis (failed when
C{CI=true}).
"""

from __future__ import annotations

import uuid
from typing import Any, Callable

import msgpack
from twisted.internet import reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock, LoopingCall
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.test.requesthelper import DummyRequest

from crm_im._json import loads
from crm_im.cluster.connection import RedisAddress, RedisLink
from crm_im.cluster.limits import ClusterFailureLimiter
from crm_im.cluster.presence import DeviceRecord
from crm_im.cluster.rooms import ClusterRoomPresence
from crm_im.cluster.service import ClusterService, ClusterSettings
from crm_im.config import Config
from crm_im.engineio.packet import Frame, FrameBatch
from crm_im.im.core import IMCore, IMSettings
from crm_im.im.errors import RATE_LIMITED, IMError
from crm_im.im.interfaces import Caller
from crm_im.limits import LimitSettings
from crm_im.routing.local import LocalRouter
from crm_im.storage.interface import MessageOrder
from crm_im.storage.memory import MemoryMessageStore
from crm_im.web.health import HealthResource
from tests.test_cluster_node import _requireRedis

REDIS = "redis://127.0.0.1:6379/0"


class RoomMirrorTests(SynchronousTestCase):
    """
    L{ClusterRoomPresence}: local changes published once, remote ones
    applied silently.
    """

    def setUp(self) -> None:
        self.local = {"a1", "a2"}
        self.rooms = ClusterRoomPresence(lambda sid: sid in self.local)
        self.published: list[str] = []
        self.rooms.published = self.published.append

    def test_localPublished(self) -> None:
        self.assertTrue(self.rooms.enter("r", "a1", "alice"))
        self.rooms.enter("s", "a1", "alice")
        self.rooms.leave("r", "a1")
        self.assertEqual(self.published, ["a1", "a1", "a1"])
        self.rooms.enter("r", "a1", "alice")
        del self.published[:]
        self.rooms.leaveAll("a1")
        self.assertEqual(self.published, ["a1"])

    def test_remoteSilent(self) -> None:
        """
        Another node's socket enters and leaves rooms without a
        publication; its node going drops it with what is left to say.
        """
        self.rooms.enter("r", "a1", "alice")
        del self.published[:]
        self.assertEqual(self.rooms.remoteSet("b1", "bob", ["r", "s"]), [])
        self.assertEqual(self.rooms.users("r"), ["alice", "bob"])
        self.assertEqual(self.rooms.remoteSet("b1", "bob", ["r"]), [("s", "bob", True)])
        self.assertEqual(self.rooms.localDevices("r"), ["a1"])
        self.assertEqual(self.rooms.remoteGone("b1"), [("r", "bob", True)])
        self.assertEqual(self.rooms.users("r"), ["alice"])
        self.assertEqual(self.published, [])

    def test_recordCarriesRooms(self) -> None:
        """
        A device record carries its rooms; an earlier version's record
        (without them) still reads.
        """
        record = DeviceRecord("u", "U", None, "online", ("r",))
        self.assertEqual(DeviceRecord.unpack(msgpack.unpackb(msgpack.packb(record.pack()))), record)
        self.assertEqual(DeviceRecord.unpack(["u", "U", None, "online"]), DeviceRecord("u", "U", None, "online"))
        self.assertIsNone(DeviceRecord.unpack(["u", "U", None, "online", [1]]))


class _FakeLink:
    """
    The part of L{RedisLink} the failure limiter uses: counters in a dict.
    """

    def __init__(self) -> None:
        self.up = True
        self.counters: dict[str, int] = {}
        self.sent: list[tuple[Any, ...]] = []

    def execute(self, *args: Any) -> Deferred[Any]:
        if not self.up:
            return fail(ConnectionError("down"))
        assert args[0] == "INCR"
        self.counters[args[1]] = self.counters.get(args[1], 0) + 1
        return succeed(self.counters[args[1]])

    def send(self, *args: Any) -> None:
        self.sent.append(args)


class FailureLimiterTests(SynchronousTestCase):
    def test_acrossNodes(self) -> None:
        """
        Failures from one address on two nodes count together: once the
        cluster count reached the burst, the node hearing so refuses,
        though its own bucket is not empty.
        """
        link = _FakeLink()
        a = ClusterFailureLimiter(10, 4, link, "crm_im:t")  # type: ignore[arg-type]
        b = ClusterFailureLimiter(10, 4, link, "crm_im:t")  # type: ignore[arg-type]
        now = 6000.0
        a.failed("1.2.3.4", now)
        a.failed("1.2.3.4", now)
        b.failed("1.2.3.4", now)
        self.assertTrue(b.allowed("1.2.3.4", now))
        b.failed("1.2.3.4", now)
        self.assertFalse(b.allowed("1.2.3.4", now))
        self.assertTrue(a.allowed("1.2.3.4", now))  # has not heard yet
        a.failed("1.2.3.4", now)
        self.assertFalse(a.allowed("1.2.3.4", now))
        self.assertTrue(b.allowed("5.6.7.8", now))
        self.assertTrue(b.allowed("1.2.3.4", now + 60))  # the next minute
        self.assertEqual([args[0] for args in link.sent], ["EXPIRE"])

    def test_redisDown(self) -> None:
        """
        Without Redis each node's own bucket limits.
        """
        link = _FakeLink()
        link.up = False
        limiter = ClusterFailureLimiter(60, 2, link, "crm_im:t")  # type: ignore[arg-type]
        limiter.failed("k", 0)
        self.assertTrue(limiter.allowed("k", 0))
        limiter.failed("k", 0)
        self.assertFalse(limiter.allowed("k", 0))
        self.assertEqual(link.counters, {})


class SettingsTests(SynchronousTestCase):
    def test_fromConfig(self) -> None:
        config = Config(listen=("tcp:8085:backlog=1024",), redis="redis://r:6380/1", redisPrefix="crm", nodeTTL=6.0)
        settings = ClusterSettings.fromConfig(config)
        self.assertEqual(settings.redis, RedisAddress("r", 6380, 1))
        self.assertTrue(settings.nodeId.endswith(":8085"))
        self.assertEqual((settings.ttl, settings.prefix, settings.address), (6.0, "crm", "http://127.0.0.1:8085"))

    def test_portZero(self) -> None:
        """
        Listening on port 0, the address is known once listening.
        """
        config = Config(listen=("tcp:0",), redis=REDIS, nodeId="n1")
        settings = ClusterSettings.fromConfig(config)
        self.assertEqual((settings.nodeId, settings.address), ("n1", None))
        service = ClusterService(Clock(), settings)
        service.listening(40123)
        self.assertEqual(service.node.address, "http://127.0.0.1:40123")
        self.assertEqual(service.node.addresses[service.node.tag], "http://127.0.0.1:40123")

    def test_metrics(self) -> None:
        """
        C{/metrics} says whether Redis is up and how many devices each
        node has.
        """
        service = ClusterService(Clock(), ClusterSettings(RedisAddress(), "n1"))
        service.presence.login("u", "s1", "U", None)
        service.presence.remoteLogin("n2", "s2", DeviceRecord("v", "V", None, "online"))
        families = {family.name: family for family in service.collector().collect()}
        self.assertEqual(families["crm_im_cluster_redis_up"].samples[0].value, 0)
        self.assertEqual(
            sorted((s.labels["node"], s.value) for s in families["crm_im_cluster_devices"].samples), [("n1", 1), ("n2", 1)]
        )
        self.assertIn("crm_im_cluster_forwarded", families)
        self.assertIn("crm_im_cluster_spliced", families)
        self.assertEqual(families["crm_im_cluster_splices"].samples[0].value, 0)
        router = service.makeRouter(LocalRouter({}, service.presence, Clock()), {})
        router.order.admit(MessageOrder("g:1", 10, 9, 0), lambda: None)
        families = {family.name: family for family in service.collector().collect()}
        self.assertEqual(families["crm_im_cluster_order_held"].samples[0].value, 1)
        self.assertEqual(families["crm_im_cluster_order_late"].samples[0].value, 0)

    def test_startWithoutRedis(self) -> None:
        """
        With Redis unreachable, C{start} waits for the first registration
        at most C{wait} seconds on the injected clock, then goes on (the
        node serves its own devices meanwhile).
        """
        clock = MemoryReactorClock()
        service = ClusterService(clock, ClusterSettings(RedisAddress(), "n1"))
        started = Deferred.fromCoroutine(service.start(wait=5.0))
        self.assertTrue(clock.tcpClients)  # it is trying to connect
        clock.advance(4.9)
        self.assertNoResult(started)
        clock.advance(0.1)
        self.successResultOf(started)
        self.assertIsNotNone(service.reason())
        self.flushLoggedErrors()

    def test_sidNamesNode(self) -> None:
        service = ClusterService(Clock(), ClusterSettings(RedisAddress(), "n1"))
        sid = service.newEngineSid()
        self.assertTrue(sid.endswith("." + service.node.tag))


class _Store:
    def ping(self) -> Deferred[None]:
        return succeed(None)


class HealthTests(SynchronousTestCase):
    def check(self, reason: str | None) -> tuple[int, dict[str, Any]]:
        resource = HealthResource(_Store(), Clock(), cluster=lambda: reason)  # type: ignore[arg-type]
        request = DummyRequest([b""])
        request.method = b"GET"
        resource.render(request)
        return request.responseCode or 200, loads(b"".join(request.written))

    def test_redisDown(self) -> None:
        """
        A node cut off from Redis answers 503 with the reason.
        """
        code, body = self.check("redis redis://127.0.0.1:6379/0: connection lost")
        self.assertEqual(code, 503)
        self.assertEqual(body["status"], "unavailable")
        self.assertIn("connection lost", body["cluster"])

    def test_ok(self) -> None:
        self.assertEqual(self.check(None), (200, {"status": "ok", "store": "ok", "cluster": "ok"}))


# ---- two nodes on the machine's Redis


class RecordingSocket:
    def __init__(self, sid: str) -> None:
        self.sid = sid
        self.frames: list[Frame] = []
        self.writes = 0

    def sendFrames(self, frames: list[Frame]) -> None:
        self.writes += 1
        for frame in frames:
            self.frames.extend(frame.parts if isinstance(frame, FrameBatch) else [frame])

    @property
    def session(self) -> RecordingSocket:
        """
        Stands in for its Engine.IO session too (L{whenWritable}).
        """
        return self

    def whenWritable(self) -> Deferred[bool]:
        """
        Always room.
        """
        return succeed(True)

    def events(self, name: str | None = None) -> list[tuple[str, Any]]:
        result = []
        for frame in self.frames:
            event, *args = loads(frame.data[2:])
            if name is None or event == name:
                result.append((event, args[0] if args else None))
        return result


class _Namespace:
    def __init__(self) -> None:
        self.sockets: dict[str, Any] = {}
        self.rooms: dict[str, set[Any]] = {}


class _Node:
    def __init__(self, name: str, prefix: str, store: MemoryMessageStore, limits: LimitSettings) -> None:
        settings = ClusterSettings(
            RedisAddress.parse(REDIS), name, ttl=3.0, prefix=prefix, address=f"http://{name}.invalid", settle=0.2
        )
        self.cluster = ClusterService(reactor, settings)
        self.namespace = _Namespace()
        local = LocalRouter(self.namespace.sockets, self.cluster.presence, reactor)
        router = self.cluster.makeRouter(local, self.namespace.sockets)
        self.core = IMCore(
            store, None, self.cluster.presence, router, reactor,  # type: ignore[arg-type]
            IMSettings(logEvents=False), limits=limits, roomPresence=self.cluster.rooms,
        )
        self.cluster.attach(self.core, self.namespace)

    def connect(self, sid: str, userId: str) -> RecordingSocket:
        socket = RecordingSocket(sid)
        self.namespace.sockets[sid] = socket
        self.core.sessions.login(sid, "127.0.0.1", {"id": userId, "name": userId.title()})
        return socket

    def caller(self, sid: str) -> Caller:
        return self.core.sessions.caller(sid)


def _until(condition: Callable[[], object], timeout: float = 10.0) -> Deferred[Any]:
    """
    Fire once C{condition()} holds, checked every 10 ms; fail after
    C{timeout} seconds.
    """
    def check() -> None:
        if condition():
            loop.stop()

    loop = LoopingCall(check)
    d = loop.start(0.01)
    d.addTimeout(timeout, reactor)
    return d


class TwoNodeTests(TestCase):
    async def nodes(self, limits: LimitSettings = LimitSettings()) -> tuple[_Node, _Node]:
        _requireRedis()
        prefix = "test-" + uuid.uuid4().hex
        store = MemoryMessageStore()
        nodes = []
        for name in ("A", "B"):
            node = _Node(name, prefix, store, limits)
            node.cluster.presence.start()
            self.addCleanup(node.cluster.presence.stop)
            await node.cluster.start()
            self.addCleanup(lambda node=node: Deferred.fromCoroutine(node.cluster.stop()))
            nodes.append(node)
        a, b = nodes
        # A registered before B: it learns of B through B's "node" event.
        await _until(lambda: b.cluster.node.tag in a.cluster.node.addresses)
        return a, b

    async def test_directMessage(self) -> None:
        """
        A message from a user on A to a user on B reaches B's device, and
        the receipt says delivered; each node lists both users online.
        """
        a, b = await self.nodes()
        alice = a.connect("a1", "alice")
        await _until(lambda: b.cluster.presence.devicesOf("alice"))
        bob = b.connect("b1", "bob")
        online = [user["id"] for user in bob.events("online_users")[0][1]]
        self.assertEqual(sorted(online), ["alice", "bob"])
        await _until(lambda: alice.events("status_change"))
        self.assertEqual(alice.events("status_change")[0][1]["userId"], "bob")
        receipt = await a.core.messaging.send(a.caller("a1"), {"id": "m1", "toId": "bob", "content": "hi"})
        self.assertEqual(receipt["status"], "delivered")
        await _until(lambda: bob.events("message"))
        self.assertEqual(bob.events("message")[0][1]["content"], "hi")
        self.assertEqual(sorted(u["id"] for u in a.cluster.presence.onlineUsers()), ["alice", "bob"])

    async def test_deviceLimitAcrossNodes(self) -> None:
        """
        C{--max-devices-per-user} counts the user's devices on every node.
        """
        a, b = await self.nodes(LimitSettings(devicesPerUser=1))
        a.connect("a1", "alice")
        await _until(lambda: b.cluster.presence.devicesOf("alice"))
        error = self.assertRaises(IMError, b.connect, "b1", "alice")
        self.assertEqual(error.code, RATE_LIMITED)

    async def test_rooms(self) -> None:
        """
        A chat room spans the nodes: a join on B is announced on A, a
        room message from B reaches A's socket, and when B leaves the
        cluster A tells its socket that B's user left.
        """
        a, b = await self.nodes()
        alice = a.connect("a1", "alice")
        bob = b.connect("b1", "bob")
        await _until(lambda: a.cluster.presence.devicesOf("bob") and b.cluster.presence.devicesOf("alice"))
        room = await a.core.rooms.create(a.caller("a1"), {"name": "Lobby"})
        await a.core.rooms.join(a.caller("a1"), {"roomId": room["id"]})
        await _until(lambda: b.cluster.rooms.users(room["id"]) == ["alice"])
        joined = await b.core.rooms.join(b.caller("b1"), {"roomId": room["id"]})
        self.assertEqual([m["id"] for m in joined["members"]], ["alice", "bob"])
        await _until(lambda: alice.events("room:joined"))
        self.assertEqual(alice.events("room:joined")[0][1]["user"]["id"], "bob")
        await b.core.messaging.send(b.caller("b1"), {"id": "r1", "roomId": room["id"], "content": "hello room"})
        await _until(lambda: alice.events("message"))
        self.assertEqual(alice.events("message")[0][1]["content"], "hello room")
        self.assertEqual(len(bob.events("message")), 0)  # not echoed to the sending socket
        await b.cluster.stop()
        await _until(lambda: alice.events("room:left"))
        self.assertEqual(alice.events("room:left")[0][1], {"roomId": room["id"], "userId": "bob"})

    async def test_adapterBroadcast(self) -> None:
        """
        A broadcast in the Socket.IO Redis emitter's format to
        C{user:bob} reaches bob's device on B only; one named like an IM
        event is refused.
        """
        a, b = await self.nodes()
        alice = a.connect("a1", "alice")
        bob = b.connect("b1", "bob")
        prefix = a.cluster.settings.prefix
        for event in ("message", "crm:notify"):
            packet = {"type": 2, "data": [event, {"lead": 7}], "nsp": "/"}
            body = msgpack.packb(["emitter", packet, {"rooms": ["user:bob"], "except": [], "flags": {}}])
            await a.cluster.link.publish(f"{prefix}#/#user:bob#", body)
        await _until(lambda: bob.events("crm:notify"))
        self.assertEqual(bob.events("crm:notify"), [("crm:notify", {"lead": 7})])
        self.assertEqual(bob.events("message"), [])
        self.assertEqual(alice.events("crm:notify"), [])
        assert b.cluster.adapter is not None
        self.assertEqual(b.cluster.adapter.refused, 1)

    async def test_groupChangeCrossesNodes(self) -> None:
        """
        A group changed on A is read again by B (its cached state is
        dropped), so B's members see the new member's messages.
        """
        a, b = await self.nodes()
        a.connect("a1", "alice")
        b.connect("b1", "bob")
        await _until(lambda: a.cluster.presence.devicesOf("bob"))
        group = await a.core.groups.create(a.caller("a1"), {"name": "Team", "memberIds": ["bob"], "id": "g1"})
        state = await b.core.directory.get(group["id"])
        self.assertEqual(sorted(state.members), ["alice", "bob"])
        await a.core.groups.addMembers(a.caller("a1"), {"groupId": "g1", "userIds": ["carol"]})
        await _until(lambda: b.core.directory.cached("g1") is None)
        state = await b.core.directory.get("g1")
        self.assertEqual(sorted(state.members), ["alice", "bob", "carol"])

    async def test_pushAndBansCrossNodes(self) -> None:
        """
        A pushkey registered or a group muted through A is known to B's
        message path; a ban made on A makes B read the bans again.
        """
        a, b = await self.nodes()
        a.core.pushDirectory.keysLeft("alice", 1)
        a.core.pushDirectory.setMuted("alice", "g1", True)
        await _until(lambda: "alice" in b.core.pushDirectory.users and ("alice", "g1") in b.core.pushDirectory.mutes)
        a.core.pushDirectory.keysLeft("alice", 0)
        await _until(lambda: "alice" not in b.core.pushDirectory.users)

        class _Admin:
            def __init__(self) -> None:
                self.banListeners: list[Callable[[str], object]] = []
                self.reloads = 0

            def reloadBans(self) -> Deferred[None]:
                self.reloads += 1
                return succeed(None)

        adminA, adminB = _Admin(), _Admin()
        a.cluster.attachAdmin(adminA)
        b.cluster.attachAdmin(adminB)
        for listener in adminA.banListeners:
            listener("mallory")
        await _until(lambda: adminB.reloads == 1)
        self.assertEqual(adminA.reloads, 0)


class RouterWireTests(SynchronousTestCase):
    """
    What crosses between nodes: the event and payload, delivered by the
    receiving node's local router; encoded frames when msgpack cannot
    carry the payload.
    """

    def pair(self) -> tuple[Any, Any, dict[str, RecordingSocket]]:
        from crm_im.cluster.presence import ClusterPresence
        from crm_im.routing.order import ConversationOrder
        from crm_im.routing.redis import RedisRouter

        clock = self.clock = Clock()
        sent: list[tuple[str, bytes]] = []
        a, b = ClusterPresence(clock, "A"), ClusterPresence(clock, "B")
        socketsB = {"b1": RecordingSocket("b1"), "b2": RecordingSocket("b2")}
        for sid in socketsB:
            b.login("bob", sid, "Bob", None)
            a.remoteLogin("B", sid, DeviceRecord("bob", "Bob", None, "online"))
        routerA = RedisRouter(
            LocalRouter({}, a, clock), a, {}, lambda node, message: sent.append((node, message)), ConversationOrder(clock)
        )
        routerB = RedisRouter(
            LocalRouter(socketsB, b, clock), b, socketsB, lambda node, message: None, ConversationOrder(clock)  # type: ignore[arg-type]
        )
        return routerA, (routerB, sent), socketsB

    def test_eventCrosses(self) -> None:
        routerA, (routerB, sent), sockets = self.pair()
        self.assertEqual(routerA.toUsers(["bob"], "message", {"content": "hi", "seq": 3}, exceptDevice="b2"), 1)
        (node, message), = sent
        self.assertEqual(node, "B")
        self.assertEqual(routerB.received(message), 1)
        self.assertEqual(sockets["b1"].events(), [("message", {"content": "hi", "seq": 3})])
        self.assertEqual(sockets["b2"].events(), [])

    def test_directDeliveredWhereWritten(self) -> None:
        """
        A stored 1:1 message routed to another node is marked delivered by
        that node once written to a device of its recipient (its
        C{directDelivered}, in order); not by the node that stored it, and
        not when only the sender's devices were there, or for other events.
        """
        routerA, (routerB, sent), sockets = self.pair()
        told: list[dict[str, Any]] = []
        routerB.directDelivered = told.append
        routerA.directDelivered = told.append
        payloads = [
            ("message", {"toId": "bob", "fromId": "amy", "seq": 3}),
            ("file_transfer", {"toId": "bob", "fromId": "amy", "seq": 4}),
            ("message", {"toId": "amy", "fromId": "bob", "seq": 5}),
            ("status_change", {"toId": "bob", "seq": 6}),
        ]
        routerA.toUsers(["bob"], *payloads[0], order=MessageOrder("d:1", 3, 0, 0))
        routerA.toUsers(["bob"], *payloads[1])
        routerA.toUsers(["amy", "bob"], *payloads[2])
        routerA.toUsers(["bob"], *payloads[3])
        self.assertEqual(told, [])
        for _, message in sent:
            routerB.received(message)
        self.assertEqual(told, [payloads[0][1], payloads[1][1]])
        self.assertEqual([payload["seq"] for _, payload in sockets["b1"].events()], [3, 4, 5, 6])

    def test_framesWhenNotPackable(self) -> None:
        """
        A payload holding pre-encoded JSON (an orjson fragment) crosses as
        frames.
        """
        import orjson

        routerA, (routerB, sent), sockets = self.pair()
        routerA.toDevices(["b2"], "online_users", [orjson.Fragment(b'{"id":"x"}')])
        self.assertEqual(routerB.received(sent[0][1]), 1)
        self.assertEqual(sockets["b2"].events(), [("online_users", [{"id": "x"}])])

    def test_announcementsBatched(self) -> None:
        """
        Announcements to everyone from another node join this node's
        announcements of the turn: each device gets them in one write at
        the turn's end, but the one it made itself.
        """
        routerA, (routerB, sent), sockets = self.pair()
        routerA.toEveryone("status_change", {"userId": "x", "status": "online"})
        routerA.toEveryone("status_change", {"userId": "y", "status": "online"})
        self.assertEqual([routerB.received(message) for _, message in sent], [2, 2])
        self.assertEqual(routerB.toEveryone("status_change", {"userId": "bob", "status": "busy"}, exceptDevice="b1"), 1)
        self.assertEqual(sockets["b1"].frames, [])
        self.clock.advance(0)
        self.assertEqual([socket.writes for socket in sockets.values()], [1, 1])
        self.assertEqual([payload["userId"] for _, payload in sockets["b1"].events()], ["x", "y"])
        self.assertEqual([payload["userId"] for _, payload in sockets["b2"].events()], ["x", "y", "bob"])

    def test_framesAfterAnnouncements(self) -> None:
        """
        Encoded frames from another node go after the announcements that
        wait for the end of the turn, not before them.
        """
        import orjson

        routerA, (routerB, sent), sockets = self.pair()
        routerA.toEveryone("status_change", {"userId": "x", "status": "online"})
        routerA.toDevices(["b2"], "online_users", [orjson.Fragment(b'{"id":"x"}')])
        for _, message in sent:
            routerB.received(message)
        self.assertEqual([event for event, _ in sockets["b2"].events()], ["status_change", "online_users"])
        self.assertEqual([event for event, _ in sockets["b1"].events()], ["status_change"])

    def test_malformed(self) -> None:
        _, (routerB, _), _ = self.pair()
        self.assertRaises(ValueError, routerB.received, b"\xc1")
        self.assertRaises(ValueError, routerB.received, msgpack.packb(["u", ["bob"], None, 7]))

    def test_orderAcrossNodes(self) -> None:
        """
        Two senders on two nodes write into one conversation: node B's own
        message (seq 10, linked to seq 9) waits for node A's seq 9, still
        crossing; the order crosses with the message, and B's devices get
        9 then 10. Malformed order is refused.
        """
        routerA, (routerB, sent), sockets = self.pair()
        self.clock.advance(100)
        now = int(self.clock.seconds() * 1000)
        self.assertEqual(routerB.toUsers(["bob"], "message", {"seq": 10}, order=MessageOrder("g:1", 10, 9, now)), 2)
        self.assertEqual(sockets["b1"].events(), [])
        routerA.toUsers(["bob"], "message", {"seq": 9}, order=MessageOrder("g:1", 9, 0, 0))
        ((node, message),) = sent
        self.assertEqual(msgpack.unpackb(message)[4], ["g:1", 9, 0, 0])
        self.assertEqual(routerB.received(message), 2)
        for sid in ("b1", "b2"):
            self.assertEqual(sockets[sid].events(), [("message", {"seq": 9}), ("message", {"seq": 10})])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        bad = msgpack.unpackb(message)
        bad[4] = ["g:1", "9", 0, 0]
        self.assertRaises(ValueError, routerB.received, msgpack.packb(bad))

    def test_recoveryThroughLocal(self) -> None:
        """
        A recovered socket's messages from another node are held while
        its missed ones are replayed, like local ones (the local router
        does it for both).
        """
        routerA, (routerB, sent), sockets = self.pair()
        routerB.hold("b1")
        self.assertTrue(routerB.offsets is False)
        routerA.toDevices(["b1"], "message", {"content": "live", "seq": 9})
        routerB.received(sent[0][1])
        self.assertEqual(sockets["b1"].events(), [])
        self.assertEqual(routerB.release("b1"), [("message", {"content": "live", "seq": 9})])


class OutageTests(TestCase):
    nodes = TwoNodeTests.nodes

    async def cutOff(self) -> tuple[Any, Any, RecordingSocket, RecordingSocket]:
        """
        Two nodes, alice on A and bob on B, each seen by the other; then
        A's Redis connection is killed (A is back within half a second).

        @return: the nodes and the two sockets.
        """
        a, b = await self.nodes()
        alice = a.connect("a1", "alice")
        bob = b.connect("b1", "bob")
        await _until(lambda: a.cluster.presence.devicesOf("bob") and b.cluster.presence.devicesOf("alice"))
        link = a.cluster.link
        link.backoffStart = link.backoffMax = 0.5  # back within half a second
        clientId = await link.execute("CLIENT", "ID")
        await b.cluster.link.execute("CLIENT", "KILL", "ID", clientId)
        await _until(lambda: not link.up)
        return a, b, alice, bob

    async def test_catchUpAfterOutage(self) -> None:
        """
        A message sent from a node cut off from Redis to a user on another
        node is stored as offline; once the node is back, the recipient's
        node delivers it (offline queue) and the sender hears delivered.
        """
        a, b, alice, bob = await self.cutOff()
        self.assertIn("connection lost", a.cluster.reason() or "")
        receipt = await a.core.messaging.send(a.caller("a1"), {"id": "m-out", "toId": "bob", "content": "while cut off"})
        self.assertEqual(receipt["status"], "offline")
        await _until(lambda: bob.events("message"), timeout=15)
        self.assertEqual(bob.events("message")[0][1]["content"], "while cut off")
        await _until(lambda: [r for _, r in alice.events("message:sent") if r["status"] == "delivered"])
        self.assertIsNone(a.cluster.reason())

    async def test_appearedAfterOutage(self) -> None:
        """
        A user who logged in on another node while this one was cut off
        from Redis is announced to this node's devices once it is back
        (read from the other node's registrations), once.
        """
        a, b, alice, _ = await self.cutOff()
        b.connect("b2", "carol")
        await _until(lambda: [p for _, p in alice.events("status_change") if p["userId"] == "carol"], timeout=15)
        (change,) = [p for _, p in alice.events("status_change") if p["userId"] == "carol"]
        self.assertEqual((change["status"], change["name"]), ("online", "Carol"))

