"""
Several nodes as operators run them (issue 12, CLUSTER.md): real
C{twistd crm_im} processes on one PostgreSQL database and one Redis
(L{tests.support.cluster}), a round-robin TCP proxy in the test process,
real Node C{socket.io-client} and python-socketio clients, and
C{@socket.io/redis-emitter} from Node.

  - L{DeliveryTests}: 1:1 and group messages across nodes with their
    receipts, the offline queue across nodes, the order of 100 messages
    from one sender, and of two senders on two nodes into one group;
  - L{PresenceTests}: C{online_users}, C{GET /}, C{/api/online-users} and
    C{status_change} agree on every node; a user on two nodes does not
    flap offline when one device leaves or moves to a third node;
  - L{BalancerTests}: long-polling (python-socketio; Node) and Node's
    polling -> WebSocket upgrade through a round-robin balancer (an
    upgrade reaching another node is spliced to the session's);
  - L{PublishTests}: C{@socket.io/redis-emitter} reaching a user's devices
    on two nodes, a group, everyone, and an IM event name refused;
    C{POST /api/publish} counting devices on every node;
  - L{FailureTests}: C{kill -9} of a node (its users offline on the others
    within the bound, nothing acked lost) and Redis stopped and started
    again (a C{redis-server} of the test's own).

PostgreSQL, Redis, Node or python-socketio missing: skipped with the
reason, or failed when C{CI=true}. Nothing sleeps: clients' events are
waited on; that an event did I{not} come is shown with a barrier (a later
event through the same node to the same socket); what is only eventually
true across nodes (an HTTP view, C{/health}) is polled with a bound.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence, Set

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.python import log
from twisted.trial.unittest import SkipTest
from twisted.web.http_headers import Headers

from crm_im.cluster.node import nodeTag
from tests.integration.test_ops import scrape, value
from tests.integration.test_twistd import Inline, ProcessTestCase
from tests.support.clients import ClientDriver, requireKind
from tests.support.cluster import (
    ADMIN_TOKEN, Cluster, DelayedRedis, RedisServer, RoundRobinProxy, keysOf, requireRedis, runEmitter)
from tests.support.postgres import newDatabaseURL

#: seconds what is eventually true on every node has to become true
AGREE_TIMEOUT = 10.0
#: --node-ttl of the kill -9 test, and the settling delay of a user left
#: without devices (ClusterPresence's default)
KILL_TTL = 2.0
SETTLE = 1.0


def isStatus(userId: str, status: str) -> Callable[[List[Any]], bool]:
    """
    A C{waitFor} predicate: C{status_change} of C{userId} to C{status}.
    """
    return lambda args: bool(args and args[0].get("userId") == userId and args[0].get("status") == status)


def hasId(messageId: str) -> Callable[[List[Any]], bool]:
    """
    A C{waitFor} predicate: the event's payload has this C{id}.
    """
    return lambda args: bool(args and isinstance(args[0], dict) and args[0].get("id") == messageId)


@inlineCallbacks
def getJSON(url: str, token: Optional[str] = None) -> Inline:
    """
    C{GET url}; return C{(status, decoded body)}.
    """
    headers = Headers({b"authorization": [b"Bearer " + token.encode()]} if token else {})
    response = yield treq.get(url, headers=headers, persistent=False, timeout=10)
    body = yield response.json()
    return response.code, body


@inlineCallbacks
def publish(base: str, body: Dict[str, Any], token: str = ADMIN_TOKEN) -> Inline:
    """
    C{POST /api/publish}; return C{(status, decoded body)}.
    """
    response = yield treq.post(base + "/api/publish", json=body, persistent=False, timeout=10,
                               headers=Headers({b"authorization": [b"Bearer " + token.encode()]}))
    answer = yield response.json()
    return response.code, answer


@inlineCallbacks
def onlineIds(base: str) -> Inline:
    """
    The ids C{GET /api/online-users} lists, and C{GET /}'s C{onlineUsers}.
    """
    _, listed = yield getJSON(base + "/api/online-users")
    _, status = yield getJSON(base + "/")
    return {user["id"] for user in listed["users"]}, status["onlineUsers"]


class ClusterTestCase(ProcessTestCase):
    """
    Starts a cluster and the client drivers; keeps each node's output in
    the test's directory (C{<node>.log}) for whoever reads a failure.
    """

    timeout = 120

    @inlineCallbacks
    def startCluster(self, size: int = 3, nodeTTL: float = 3.0, redis: Optional[str] = None,
                     options: Sequence[str] = (), cleanKeys: bool = True,
                     redisDelays: Optional[Dict[int, float]] = None) -> Inline:
        """
        Start C{size} nodes on a database of the test's own and the
        machine's Redis (or C{redis}); fire with the L{Cluster} once every
        node joined.

        @param redisDelays: for a node's index, the seconds by which what
            it sends to Redis is delayed (L{DelayedRedis}).
        """
        requireKind("node")
        requireKind("python")
        redisURL = redis if redis is not None else requireRedis()
        store = newDatabaseURL(self)
        cluster = Cluster(self, size, store, redisURL, options, nodeTTL, cleanKeys=cleanKeys)
        for index, delay in (redisDelays or {}).items():
            nodeOptions = cluster.nodes[index].options
            nodeOptions[nodeOptions.index("--redis") + 1] = DelayedRedis(redisURL, delay).listen(self)
        logs = os.path.abspath(self.mktemp())
        os.makedirs(logs)

        def keepLogs() -> None:
            for node in cluster.nodes:
                with open(os.path.join(logs, f"{node.name}.log"), "w") as log:
                    log.write(node.text)

        self.addCleanup(keepLogs)
        yield cluster.start()
        return cluster

    @inlineCallbacks
    def drivers(self) -> Inline:
        """
        A Node and a python-socketio driver, started at once.
        """
        node, python = yield gatherResults([self.driver("node"), self.driver("python")])
        return node, python

    @inlineCallbacks
    def login(self, driver: ClientDriver, client: str, url: str, userId: str,
              **opts: Any) -> Inline:
        """
        Connect C{client} to C{url} (WebSocket unless C{transports} is
        given) and log in as C{userId}; return the ack (the User).
        """
        opts.setdefault("transports", ["websocket"])
        yield driver.connect(client, url, **opts)
        (user,) = yield driver.emit(client, "user:login", {"id": userId, "name": userId.title()}, ack=True)
        self.assertEqual(user.get("id"), userId, user)
        return user

    @inlineCallbacks
    def send(self, driver: ClientDriver, client: str, message: Dict[str, Any]) -> Inline:
        """
        Emit C{message} from C{client}; return its ack (a receipt).
        """
        (receipt,) = yield driver.emit(client, "message", message, ack=True, timeout=30)
        self.assertNotIn("error", receipt, f"{message!r} refused: {receipt!r}")
        return receipt

    @inlineCallbacks
    def barrier(self, driver: ClientDriver, client: str) -> Inline:
        """
        A round trip of C{client} to its node: everything its node wrote
        to it before has been received once this fires.
        """
        yield driver.emit(client, "status_change", {"status": "online"}, ack=True)

    @inlineCallbacks
    def waitUntil(self, check: Callable[[], Deferred[Any]], what: str,
                  timeout: float = AGREE_TIMEOUT) -> Inline:
        """
        Call C{check} every 0.1 s until it fires with a true value (that
        value is returned); fail with C{what} after C{timeout}.
        """
        deadline = reactor.seconds() + timeout
        last: Any = None
        while True:
            last = yield check()
            if last:
                return last
            if reactor.seconds() > deadline:
                self.fail(f"{what} not true within {timeout}s (last: {last!r})")
            yield deferLater(reactor, 0.1, lambda: None)

    @inlineCallbacks
    def agreeOnline(self, cluster: Cluster, expected: Set[str]) -> Inline:
        """
        Wait until every node lists exactly C{expected} online, in
        C{/api/online-users} and C{GET /}.
        """
        @inlineCallbacks
        def agree() -> Inline:
            views = yield gatherResults([onlineIds(node.url) for node in cluster.nodes
                                         if node.process is not None and node.process.reason is None])
            if all(ids == expected and count == len(expected) for ids, count in views):
                return views
            return False

        yield self.waitUntil(agree, f"every node listing {sorted(expected)} online")


class DeliveryTests(ClusterTestCase):
    """
    Messages between users on different nodes.
    """

    @inlineCallbacks
    def test_directAndGroup(self) -> Inline:
        """
        1:1 across nodes is delivered with a C{delivered} receipt (both
        ways, Node and python clients); a group with members on three
        nodes gets every member's message on every other member's device.
        """
        cluster = yield self.startCluster()
        node, python = yield self.drivers()
        a, b, c = cluster.urls
        yield self.login(node, "alice", a, "alice")
        yield self.login(python, "bob", b, "bob")
        yield self.login(node, "carol", c, "carol", transports=["polling"])
        yield node.waitFor("alice", "status_change", predicate=isStatus("carol", "online"))
        yield python.waitFor("bob", "status_change", predicate=isStatus("carol", "online"))

        receipt = yield self.send(node, "alice", {"id": "ab1", "toId": "bob", "content": "A to B 你好"})
        self.assertEqual(receipt["status"], "delivered")
        (got,) = yield python.waitFor("bob", "message", predicate=hasId("ab1"))
        self.assertEqual((got["fromId"], got["toId"], got["content"]), ("alice", "bob", "A to B 你好"))
        (sent,) = yield node.waitFor("alice", "message:sent", predicate=lambda args: args[0]["messageId"] == "ab1")
        self.assertEqual(sent["status"], "delivered")

        receipt = yield self.send(python, "bob", {"id": "bc1", "toId": "carol", "content": "B to C"})
        self.assertEqual(receipt["status"], "delivered")
        (got,) = yield node.waitFor("carol", "message", predicate=hasId("bc1"))
        self.assertEqual(got["fromId"], "bob")

        (group,) = yield node.emit("alice", "group:create", {"name": "deals", "memberIds": ["bob", "carol"]},
                                   ack=True)
        groupId = group["id"]
        yield python.waitFor("bob", "group:joined", predicate=lambda args: args[0]["group"]["id"] == groupId)
        yield node.waitFor("carol", "group:joined", predicate=lambda args: args[0]["group"]["id"] == groupId)
        first = yield self.send(node, "alice", {"id": "g1", "groupId": groupId, "content": "from A"})
        self.assertEqual(first["status"], "sent")
        second = yield self.send(python, "bob", {"id": "g2", "groupId": groupId, "content": "from B"})
        self.assertGreater(second["seq"], first["seq"])
        for driver, client, messageId in [(python, "bob", "g1"), (node, "carol", "g1"),
                                          (node, "alice", "g2"), (node, "carol", "g2")]:
            (got,) = yield driver.waitFor(client, "message", predicate=hasId(messageId))
            self.assertEqual(got["groupId"], groupId)
        self.assertEqual([args[0]["id"] for args in node.events("alice", "message")
                          if args[0].get("groupId") == groupId and args[0].get("type") != "system"], ["g2"])

    @inlineCallbacks
    def test_offlineQueueAndOrder(self) -> Inline:
        """
        Messages to an offline user are queued and delivered in order at
        its login on another node, and the sender on the first node gets
        C{delivered} receipts; 100 messages sent at once from one node
        reach the recipient's devices on two other nodes in the order
        sent, in C{seq} order.

        Order is checked on Node clients: python-socketio runs each
        received event's handler in a thread of its own, so its driver
        may report two events the other way round.
        """
        cluster = yield self.startCluster()
        node, python = yield self.drivers()
        a, b, c = cluster.urls
        yield self.login(node, "alice", a, "alice")
        receipts = yield gatherResults([
            self.send(node, "alice", {"id": f"q{i}", "toId": "olga", "content": f"queued {i}"})
            for i in range(5)])
        self.assertEqual([r["status"] for r in receipts], ["offline"] * 5)
        yield self.login(node, "olga", b, "olga")
        yield node.waitFor("olga", "message", predicate=hasId("q4"))
        self.assertEqual([args[0]["id"] for args in node.events("olga", "message")],
                         [f"q{i}" for i in range(5)])
        for i in range(5):
            # (the first message:sent of each said offline, when it was sent)
            yield node.waitFor("alice", "message:sent", predicate=lambda args, i=i: args[0] == {
                "messageId": f"q{i}", "status": "delivered", "timestamp": receipts[i]["timestamp"]})

        yield self.login(node, "bob-b", b, "bob")
        yield self.login(node, "bob-c", c, "bob")
        yield self.login(python, "bob-py", c, "bob")
        yield node.waitFor("alice", "status_change", predicate=isStatus("bob", "online"))
        count = 100
        receipts = yield gatherResults([
            self.send(node, "alice", {"id": f"o{i}", "toId": "bob", "content": f"#{i}"})
            for i in range(count)])
        self.assertEqual({r["status"] for r in receipts}, {"delivered"})
        for driver, client, ordered in [(node, "bob-b", True), (node, "bob-c", True), (python, "bob-py", False)]:
            yield driver.waitFor(client, "message", predicate=hasId(f"o{count - 1}"), timeout=30)
            got = [args[0] for args in driver.events(client, "message") if args[0]["id"].startswith("o")]
            self.assertEqual(sorted(m["id"] for m in got), sorted(f"o{i}" for i in range(count)), client)
            if ordered:
                seqs = [m["seq"] for m in got]
                self.assertEqual(seqs, sorted(set(seqs)), f"{client} saw a lower seq after a higher one")
                self.assertEqual([m["id"] for m in got], [f"o{i}" for i in range(count)],
                                 f"{client}: not in the order sent")

    @inlineCallbacks
    def test_queueBeforeAnotherNodesMessage(self) -> Inline:
        """
        A message stored on another node while a user's offline queue is
        being delivered comes after the whole queue. The queue (100
        messages of 100,000 characters against C{--max-buffered-bytes
        500000}) goes as the client reads; the other node's sender sends
        once the first queued message has arrived. Without the hold of the
        router, that message overtook most of the queue.
        """
        count = 100
        cluster = yield self.startCluster(size=2, options=[
            "--max-message-length", "100000", "--max-payload", "200000", "--max-buffered-bytes", "500000"])
        node, _ = yield self.drivers()
        a, b = cluster.urls
        yield self.login(node, "alice", a, "alice")
        yield self.login(node, "carol", b, "carol")
        for i in range(count):
            receipt = yield self.send(node, "alice", {"id": f"q{i}", "toId": "olga",
                                                      "content": f"{i:02d}" + "x" * 99_998})
            self.assertEqual(receipt["status"], "offline")
        yield self.login(node, "olga", a, "olga")
        yield node.waitFor("olga", "message", predicate=hasId("q0"), timeout=30)
        yield self.send(node, "carol", {"id": "live", "toId": "olga", "content": "from the other node"})
        yield node.waitFor("olga", "message", predicate=hasId("live"), timeout=30)
        got = [args[0]["id"] for args in node.events("olga", "message")]
        self.assertEqual(got, [f"q{i}" for i in range(count)] + ["live"])
        self.assertEqual([r for r in node.reports if r.get("type") == "disconnect"], [])

    @inlineCallbacks
    def test_twoSendersOneGroup(self) -> Inline:
        """
        Two senders on two nodes writing into one group at once (30
        messages each), the first node's traffic to Redis 150 ms late:
        every member's device, on three nodes, gets all 60, and no device
        sees a lower C{seq} after a higher one (each node's order gate
        holds its own sender's message until the other node's earlier one
        has crossed Redis; without it, the second node's devices see its
        own sender's messages before the first node's earlier ones). Order
        is checked on Node clients, see L{test_offlineQueueAndOrder}.
        """
        cluster = yield self.startCluster(redisDelays={0: 0.15})
        node, python = yield self.drivers()
        a, b, c = cluster.urls
        yield self.login(node, "alice", a, "alice")
        yield self.login(node, "olga", b, "olga")
        yield self.login(node, "bob-b", b, "bob")
        yield self.login(node, "bob-c", c, "bob")
        yield self.login(python, "bob-py", c, "bob")
        (group,) = yield node.emit("alice", "group:create", {"name": "race", "memberIds": ["bob", "olga"]},
                                   ack=True)
        groupId = group["id"]
        yield node.waitFor("olga", "group:joined", predicate=lambda args: args[0]["group"]["id"] == groupId)
        yield node.waitFor("bob-c", "group:joined", predicate=lambda args: args[0]["group"]["id"] == groupId)
        yield python.waitFor("bob-py", "group:joined", predicate=lambda args: args[0]["group"]["id"] == groupId)
        each = 30
        yield gatherResults(
            [self.send(node, "alice", {"id": f"ga{i}", "groupId": groupId, "content": "a"}) for i in range(each)]
            + [self.send(node, "olga", {"id": f"gb{i}", "groupId": groupId, "content": "o"})
               for i in range(each)])
        for driver, client, lastIds in [(node, "bob-b", ("ga", "gb")), (node, "bob-c", ("ga", "gb")),
                                        (node, "alice", ("gb",)), (node, "olga", ("ga",)),
                                        (python, "bob-py", ("ga", "gb"))]:
            # (every id, not only the last ones: python-engineio handles
            # each incoming packet on a thread of its own, so a python
            # client may record a message after a later one)
            for prefix in lastIds:
                for i in range(each):
                    yield driver.waitFor(client, "message", predicate=hasId(f"{prefix}{i}"), timeout=30)
            seqs = [args[0]["seq"] for args in driver.events(client, "message")
                    if args[0].get("groupId") == groupId and args[0].get("type") != "system"]
            self.assertEqual(len(seqs), each * len(lastIds), client)
            if driver is node:
                self.assertEqual(seqs, sorted(set(seqs)), f"{client} saw a lower seq after a higher one")


class PresenceTests(ClusterTestCase):
    """
    Presence is cluster-wide.
    """

    @inlineCallbacks
    def test_agreement(self) -> Inline:
        """
        With users on three nodes, every node lists all of them
        (C{/api/online-users}, C{GET /}), a login on any node gets them
        all in C{online_users}, a status change reaches the other nodes'
        devices, a logout makes the user offline everywhere; a node that
        stops leaves no registration behind in Redis.
        """
        cluster = yield self.startCluster()
        node, python = yield self.drivers()
        a, b, c = cluster.urls
        yield self.login(node, "alice", a, "alice")
        yield self.login(python, "bob", b, "bob")
        yield self.login(node, "carol", c, "carol")
        yield node.waitFor("alice", "status_change", predicate=isStatus("bob", "online"))
        yield node.waitFor("alice", "status_change", predicate=isStatus("carol", "online"))
        yield self.agreeOnline(cluster, {"alice", "bob", "carol"})
        for index, url in enumerate(cluster.urls):
            yield self.login(node, f"late{index}", url, f"late{index}")
            (online,) = yield node.waitFor(f"late{index}", "online_users")
            self.assertLessEqual({"alice", "bob", "carol"}, {user["id"] for user in online}, url)
            yield node.emit(f"late{index}", "user:logout", ack=True)
        yield self.agreeOnline(cluster, {"alice", "bob", "carol"})

        yield node.emit("carol", "status_change", {"status": "busy"}, ack=True)
        (busy,) = yield node.waitFor("alice", "status_change", predicate=isStatus("carol", "busy"))
        self.assertEqual(busy["name"], "Carol")
        yield python.waitFor("bob", "status_change", predicate=isStatus("carol", "busy"))

        yield python.emit("bob", "user:logout", ack=True)
        yield node.waitFor("alice", "status_change", predicate=isStatus("bob", "offline"))
        yield node.waitFor("carol", "status_change", predicate=isStatus("bob", "offline"))
        yield self.agreeOnline(cluster, {"alice", "carol"})

        keys = yield keysOf(cluster.redis, cluster.prefix)
        self.assertIn(f"crm_im:{cluster.prefix}:alive:node2", keys)
        yield cluster.stop()
        keys = yield keysOf(cluster.redis, cluster.prefix)
        self.assertEqual([key for key in keys if ":alive:" in key or ":devices:" in key], [])

    @inlineCallbacks
    def test_twoNodesNoFlap(self) -> Inline:
        """
        A user with devices on two nodes stays online for the others when
        one device leaves, and when a device moves to a third node (the
        phone leaves node 3 as the PC logs in on node 1); only the last
        device leaving makes them offline.
        """
        cluster = yield self.startCluster()
        # Node clients only: a device leaving must be seen leaving at once
        # (a python-socketio client's close may reach the server as a
        # transport close, which connection state recovery holds for its
        # window), and the barrier needs events reported in order.
        node = yield self.driver("node")
        a, b, c = cluster.urls
        yield self.login(node, "alice", a, "alice")
        yield self.login(node, "bob-b", b, "bob")
        yield self.login(node, "bob-c", c, "bob")
        yield node.waitFor("alice", "status_change", predicate=isStatus("bob", "online"))
        yield self.agreeOnline(cluster, {"alice", "bob"})

        @inlineCallbacks
        def probe(name: str, url: str) -> Inline:
            # A user who logs in and leaves on a node: their offline
            # reaches alice one settling delay after they left, i.e.
            # after bob's, whose device left earlier; then a round trip.
            yield self.login(node, name, url, name)
            yield node.close(name)
            yield node.waitFor("alice", "status_change", predicate=isStatus(name, "offline"), timeout=15)
            yield self.barrier(node, "alice")

        yield node.close("bob-b")
        yield probe("probe1", b)
        self.assertEqual([args for args in node.events("alice", "status_change") if isStatus("bob", "offline")(args)],
                         [])
        yield self.agreeOnline(cluster, {"alice", "bob"})

        yield gatherResults([node.close("bob-c"), self.login(node, "bob-a", a, "bob")])
        yield probe("probe2", c)
        self.assertEqual([args for args in node.events("alice", "status_change") if isStatus("bob", "offline")(args)],
                         [])
        yield self.agreeOnline(cluster, {"alice", "bob"})

        yield node.close("bob-a")
        yield node.waitFor("alice", "status_change", predicate=isStatus("bob", "offline"), timeout=15)
        yield self.agreeOnline(cluster, {"alice"})


class BalancerTests(ClusterTestCase):
    """
    A round-robin balancer in front of the nodes, no sticky sessions.
    """

    @inlineCallbacks
    def test_pollingRoundRobin(self) -> Inline:
        """
        Long-polling clients (python-socketio, Node) through a balancer
        that sends each TCP connection to the next node: one session's
        requests reach several nodes, and messages flow both ways.
        """
        cluster = yield self.startCluster()
        proxy = RoundRobinProxy(cluster.urls)
        balanced = proxy.listen(self)
        node, python = yield self.drivers()
        yield self.login(node, "desk", cluster[0].url, "desk")

        @inlineCallbacks
        def converse(driver: ClientDriver, client: str, userId: str) -> Inline:
            before = set(proxy.sids)
            yield self.login(driver, client, balanced, userId, transports=["polling"])
            yield node.waitFor("desk", "status_change", predicate=isStatus(userId, "online"))
            for i in range(3):
                receipt = yield self.send(node, "desk", {"id": f"to-{userId}-{i}", "toId": userId,
                                                        "content": f"{i}"})
                self.assertEqual(receipt["status"], "delivered")
                yield driver.waitFor(client, "message", predicate=hasId(f"to-{userId}-{i}"))
                receipt = yield self.send(driver, client, {"id": f"from-{userId}-{i}", "toId": "desk",
                                                          "content": f"{i}"})
                self.assertEqual(receipt["status"], "delivered")
                yield node.waitFor("desk", "message", predicate=hasId(f"from-{userId}-{i}"))
            mine = {sid: backends for sid, backends in proxy.sids.items() if sid not in before}
            self.assertEqual(len(mine), 1, mine)
            ((sid, backends),) = mine.items()
            self.assertGreater(len(backends), 1, f"{client}'s requests all reached one node: {proxy.sids}")
            return sid

        yield converse(python, "py-poll", "pat")
        yield converse(node, "node-poll", "nora")
        self.assertEqual(node.errors, [])
        self.assertEqual([r for r in node.reports + python.reports if r["type"] == "disconnect"], [])

    @inlineCallbacks
    def test_upgradeRoundRobin(self) -> Inline:
        """
        Node clients with the default transports (polling, then the
        WebSocket upgrade) through the round-robin balancer: each ends on
        WebSocket with messages flowing both ways, including those whose
        upgrade reached another node than the session's (spliced to the
        owner, L{crm_im.cluster.splice}); the nodes' C{/metrics} count
        exactly those splices.
        """
        cluster = yield self.startCluster()
        proxy = RoundRobinProxy(cluster.urls)
        balanced = proxy.listen(self)
        node = yield self.driver("node")
        yield self.login(node, "desk", cluster[0].url, "desk")
        transports = []
        for i in range(3):
            client, userId = f"node-up{i}", f"uma{i}"
            before = set(proxy.sids)
            yield self.login(node, client, balanced, userId, transports=["polling", "websocket"])
            yield node.waitFor("desk", "status_change", predicate=isStatus(userId, "online"))
            sid, _, backend = yield proxy.whenRequest(
                lambda sid, transport, backend: transport == "websocket" and sid not in before)
            for j in range(3):
                receipt = yield self.send(node, "desk", {"id": f"u{i}-{j}", "toId": userId, "content": "x"})
                self.assertEqual(receipt["status"], "delivered")
                yield node.waitFor(client, "message", predicate=hasId(f"u{i}-{j}"))
                receipt = yield self.send(node, client, {"id": f"u{i}-{j}-back", "toId": "desk", "content": "y"})
                self.assertEqual(receipt["status"], "delivered")
                yield node.waitFor("desk", "message", predicate=hasId(f"u{i}-{j}-back"))
            transport = yield node.transport(client)
            (owner,) = [index for index, n in enumerate(cluster.nodes) if sid.endswith("." + nodeTag(n.name))]
            transports.append((transport, owner, backend))
        log.msg(f"[cluster] upgrade through round-robin: (transport, session's node, websocket's node) "
                f"{transports}")
        self.assertEqual(node.errors, [])
        self.assertEqual([r for r in node.reports if r["type"] == "disconnect"], [])
        self.assertEqual([t for t, _, _ in transports], ["websocket"] * 3, transports)
        elsewhere = len([1 for _, owner, backend in transports if owner != backend])
        # With three nodes and one new connection per request, the
        # balancer has sent every upgrade elsewhere in every run so far;
        # the test is about those.
        self.assertGreater(elsewhere, 0, f"no upgrade reached another node than its session's: {transports}")
        spliced = 0.0
        for url in cluster.urls:
            samples = yield scrape(url)
            spliced += value(samples, "crm_im_cluster_spliced_total")
        self.assertEqual(spliced, elsewhere)


class PublishTests(ClusterTestCase):
    """
    A CRM back end notifying users: Redis emitter and C{/api/publish}.
    """

    @inlineCallbacks
    def test_publishing(self) -> Inline:
        """
        C{@socket.io/redis-emitter} to C{user:<id>} reaches the user's
        devices on two nodes, to C{group:<id>} the members on three nodes,
        to everyone every socket, C{except} honoured; an IM event name is
        refused. C{POST /api/publish} to any node reaches the devices on
        every node and counts them all; C{store: true} keeps it for an
        offline user, who gets it at login on another node.
        """
        cluster = yield self.startCluster()
        node, python = yield self.drivers()
        a, b, c = cluster.urls
        yield self.login(node, "u-a", a, "ursula")
        yield self.login(python, "u-b", b, "ursula")
        yield self.login(node, "v-c", c, "victor")
        yield node.waitFor("u-a", "status_change", predicate=isStatus("victor", "online"))
        yield self.agreeOnline(cluster, {"ursula", "victor"})
        (group,) = yield node.emit("v-c", "group:create", {"name": "leads", "memberIds": ["ursula"]}, ack=True)
        groupId = group["id"]
        yield python.waitFor("u-b", "group:joined", predicate=lambda args: args[0]["group"]["id"] == groupId)

        results = yield runEmitter(self, cluster.redis, cluster.prefix, [
            {"to": ["user:ursula"], "event": "message",
             "args": [{"id": "forged", "fromId": "victor", "toId": "ursula", "content": "forged"}]},
            {"to": ["user:ursula"], "event": "group:joined", "args": [{"group": {"id": "forged"}}]},
            {"to": ["user:ursula"], "event": "crm:notify", "args": [{"leadId": 42}, "second arg"]},
            {"to": [f"group:{groupId}"], "event": "crm:group", "args": ["g"]},
            {"to": ["user:ursula", "user:victor"], "except": ["user:victor"], "event": "crm:some", "args": []},
            {"event": "crm:everyone", "args": [1]},
        ])
        self.assertEqual([r["receivers"] for r in results], [3] * 6, results)
        for driver, client in [(node, "u-a"), (python, "u-b")]:
            args = yield driver.waitFor(client, "crm:notify")
            self.assertEqual(args, [{"leadId": 42}, "second arg"])
        for driver, client in [(node, "u-a"), (python, "u-b"), (node, "v-c")]:
            yield driver.waitFor(client, "crm:group")
            yield driver.waitFor(client, "crm:everyone")
        for driver, client in [(node, "u-a"), (python, "u-b")]:
            yield driver.waitFor(client, "crm:some")
        # crm:everyone came after crm:some on the same channel
        self.assertEqual(node.events("v-c", "crm:some"), [])
        for driver, client in [(node, "u-a"), (python, "u-b")]:
            self.assertEqual([args for args in driver.events(client, "message") if args[0].get("id") == "forged"],
                             [])
            self.assertEqual([args for args in driver.events(client, "group:joined")
                              if args[0]["group"]["id"] == "forged"], [])

        for base in (a, c):
            code, answer = yield publish(base, {"event": "crm:lead", "data": {"via": base}, "userIds": ["ursula"]})
            self.assertEqual((code, answer), (200, {"delivered": 2}), base)
            for driver, client in [(node, "u-a"), (python, "u-b")]:
                yield driver.waitFor(client, "crm:lead", predicate=lambda args, base=base: args[0]["via"] == base)
        code, answer = yield publish(b, {"event": "crm:ticket", "data": "t-1", "groupId": groupId})
        self.assertEqual((code, answer), (200, {"delivered": 3}))
        for driver, client in [(node, "u-a"), (python, "u-b"), (node, "v-c")]:
            yield driver.waitFor(client, "crm:ticket")
        code, answer = yield publish(a, {"event": "message", "data": {}, "userIds": ["ursula"]})
        self.assertEqual(code, 403, answer)

        (room,) = yield node.emit("v-c", "room:create", {"name": "floor"}, ack=True)
        yield node.emit("v-c", "room:join", {"roomId": room["id"]}, ack=True)
        yield node.emit("u-a", "room:join", {"roomId": room["id"]}, ack=True)

        @inlineCallbacks
        def seenOnNode2() -> Inline:
            (listed,) = yield python.emit("u-b", "room:list", ack=True)
            return [r["onlineCount"] for r in listed["rooms"] if r["id"] == room["id"]] == [2]

        yield self.waitUntil(seenOnNode2, "node 2 counting both users in the room")
        code, answer = yield publish(b, {"event": "crm:room", "data": None, "roomId": room["id"]})
        self.assertEqual((code, answer), (200, {"delivered": 2}))
        for client in ("u-a", "v-c"):
            yield node.waitFor(client, "crm:room")

        code, answer = yield publish(a, {"event": "crm:kept", "data": {"n": 1}, "userIds": ["olivia"],
                                         "store": True})
        self.assertEqual((code, answer), (200, {"delivered": 0}))
        yield self.login(python, "olivia", c, "olivia")
        (kept,) = yield python.waitFor("olivia", "message", predicate=lambda args: args[0].get("type") == "system")
        self.assertEqual(kept["content"], "crm:kept")


class FailureTests(ClusterTestCase):
    """
    A node killed, Redis gone.
    """

    @inlineCallbacks
    def test_nodeKilled(self) -> Inline:
        """
        C{kill -9} of a node: its user goes offline on the other nodes
        within the bound (C{--node-ttl} plus the settling delay), the
        survivors drop its registration; every message acked to the
        sender, before and after the kill, is in the store: the user,
        reconnected to another node, gets them (offline queue and
        history), none twice. Those sent after the kill get C{delivered}
        while the killed node is still listed, but no device was sent
        them: they stay queued, and the user's next login gets every one
        (before, the storing node marked them delivered as it routed
        them, and they were only in history).
        """
        cluster = yield self.startCluster(nodeTTL=KILL_TTL)
        node, python = yield self.drivers()
        a, b, c = cluster.urls
        yield self.login(node, "sender", a, "sam")
        yield self.login(python, "watcher", b, "walt")
        yield self.login(node, "victim", c, "vera")
        yield node.waitFor("sender", "status_change", predicate=isStatus("vera", "online"))
        yield python.waitFor("watcher", "status_change", predicate=isStatus("vera", "online"))
        acked: Dict[str, str] = {}
        for i in range(5):
            receipt = yield self.send(node, "sender", {"id": f"k{i}", "toId": "vera", "content": f"before {i}"})
            acked[f"k{i}"] = receipt["status"]
        yield node.waitFor("victim", "message", predicate=hasId("k4"))
        self.assertEqual(set(acked.values()), {"delivered"})

        killed = cluster[2].process
        assert killed is not None
        killedAt = reactor.seconds()
        killed.signal("KILL")
        receipts = yield gatherResults([
            self.send(node, "sender", {"id": f"d{i}", "toId": "vera", "content": f"after {i}"})
            for i in range(5)])
        for i, receipt in enumerate(receipts):
            acked[f"d{i}"] = receipt["status"]
        bound = 2 * KILL_TTL + SETTLE + 2.0
        yield gatherResults([
            node.waitFor("sender", "status_change", predicate=isStatus("vera", "offline"), timeout=bound),
            python.waitFor("watcher", "status_change", predicate=isStatus("vera", "offline"), timeout=bound)])
        noticed = reactor.seconds() - killedAt
        yield self.waitForExit(killed)
        yield self.agreeOnline(cluster, {"sam", "walt"})
        keys = yield keysOf(cluster.redis, cluster.prefix)
        self.assertEqual([key for key in keys if key.endswith(":node3")], [])

        yield self.login(node, "victim-again", a, "vera")
        yield node.waitFor("sender", "status_change", predicate=isStatus("vera", "online"))
        for i in range(5):
            yield node.waitFor("victim-again", "message", predicate=hasId(f"d{i}"))
        (history,) = yield node.emit("victim-again", "get_history", {"friendId": "sam", "limit": 200}, ack=True)
        ids = [m["id"] for m in history["messages"]]
        self.assertEqual(sorted(ids), sorted(acked), "an acked message is missing from history")
        self.assertEqual(len(ids), len(set(ids)))
        receipt = yield self.send(node, "sender", {"id": "later", "toId": "vera", "content": "carry on"})
        self.assertEqual(receipt["status"], "delivered")
        yield node.waitFor("victim-again", "message", predicate=hasId("later"))
        log.msg(f"[cluster] kill -9 noticed in {noticed:.2f}s (--node-ttl {KILL_TTL}); "
                f"receipts after the kill: {[acked[f'd{i}'] for i in range(5)]}")

    @inlineCallbacks
    def test_redisOutage(self) -> Inline:
        """
        Redis stopped: each node answers C{/health} 503 with the reason,
        keeps serving its own devices (delivered), stores messages to
        users on the other node (C{offline} receipts); Redis started again
        (empty): C{/health} 200, presence re-announced on every node,
        deliveries across nodes again, and the recipient on the other node
        gets what it missed from history. Nobody who stayed connected is
        shown leaving: no C{room:left}, no C{status_change} offline (the
        first node back used to drop the other's devices before it could
        register again).
        """
        requireKind("node")
        redis = RedisServer(self)
        yield redis.start()
        self.addCleanup(lambda: redis.stop() if redis.process is not None else None)
        cluster = yield self.startCluster(size=2, redis=redis.url, cleanKeys=False)
        node, python = yield self.drivers()
        a, b = cluster.urls
        yield self.login(node, "a1", a, "amy")
        yield self.login(node, "a2", a, "abe")
        yield self.login(python, "b1", b, "ben")
        yield node.waitFor("a1", "status_change", predicate=isStatus("ben", "online"))
        receipt = yield self.send(node, "a1", {"id": "m-before", "toId": "ben", "content": "before"})
        self.assertEqual(receipt["status"], "delivered")
        yield python.waitFor("b1", "message", predicate=hasId("m-before"))
        yield node.emit("a1", "room:create", {"name": "outage", "id": "r-outage"}, ack=True)
        yield node.emit("a1", "room:join", {"roomId": "r-outage"}, ack=True)
        yield python.emit("b1", "room:join", {"roomId": "r-outage"}, ack=True)
        yield node.waitFor("a1", "room:joined", predicate=lambda args: args[0]["user"]["id"] == "ben")

        yield redis.stop()

        @inlineCallbacks
        def health(base: str, code: int) -> Inline:
            status, body = yield getJSON(base + "/health")
            return body if status == code else False

        for base in (a, b):
            body = yield self.waitUntil(partial(health, base, 503), f"{base}/health 503")
            self.assertIn("redis", repr(body).lower(), body)
        receipt = yield self.send(node, "a1", {"id": "m-local", "toId": "abe", "content": "local"})
        self.assertEqual(receipt["status"], "delivered")
        yield node.waitFor("a2", "message", predicate=hasId("m-local"))
        receipt = yield self.send(node, "a1", {"id": "m-during", "toId": "ben", "content": "during"})
        self.assertEqual(receipt["status"], "offline")
        receipt = yield self.send(python, "b1", {"id": "m-back", "toId": "amy", "content": "from ben"})
        self.assertEqual(receipt["status"], "offline")

        yield redis.start()
        restartedAt = reactor.seconds()
        for base in (a, b):
            yield self.waitUntil(partial(health, base, 200), f"{base}/health 200", timeout=20)
        healthy = reactor.seconds() - restartedAt
        yield self.agreeOnline(cluster, {"amy", "abe", "ben"})
        log.msg(f"[cluster] Redis back: /health 200 on both nodes after {healthy:.2f}s, presence agreed after "
                f"{reactor.seconds() - restartedAt:.2f}s; /health while down: {body}")
        yield self.login(node, "c1", a, "cal")
        yield python.waitFor("b1", "status_change", predicate=isStatus("cal", "online"))
        self.assertEqual(node.events("a1", "room:left") + python.events("b1", "room:left"), [])
        self.assertEqual([args for args in node.events("a1", "status_change") if args[0]["status"] == "offline"], [])
        self.assertEqual([args for args in python.events("b1", "status_change") if args[0]["status"] == "offline"], [])
        receipt = yield self.send(node, "a1", {"id": "m-after", "toId": "ben", "content": "after"})
        self.assertEqual(receipt["status"], "delivered")
        yield python.waitFor("b1", "message", predicate=hasId("m-after"))
        (history,) = yield python.emit("b1", "get_history", {"friendId": "amy"}, ack=True)
        self.assertEqual([m["id"] for m in history["messages"]], ["m-before", "m-during", "m-back", "m-after"])
        # the offline queue has it too: logged in again, ben gets it, and
        # amy, on the other node, the receipt
        yield python.emit("b1", "user:logout", ack=True)
        yield python.emit("b1", "user:login", {"id": "ben", "name": "Ben"}, ack=True)
        (queued,) = yield python.waitFor("b1", "message", predicate=hasId("m-during"))
        self.assertEqual(queued["content"], "during")
        yield node.waitFor("a1", "message:sent", predicate=lambda args: args[0]["messageId"] == "m-during"
                           and args[0]["status"] == "delivered")
