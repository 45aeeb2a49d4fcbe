"""
Two L{ClusterNode}s in one process on the machine's Redis (a key prefix
of the test's own): a login on one reaches the other's presence; a node
that leaves is dropped. Skipped without Redis (failed under CI=true).
"""

from __future__ import annotations

import os
import socket
import uuid
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock, LoopingCall
from twisted.trial.unittest import SkipTest, TestCase

from crm_im.cluster.connection import RedisAddress, RedisLink
from crm_im.cluster.node import ClusterNode
from crm_im.cluster.presence import ClusterPresence


def _requireRedis() -> None:
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
    except OSError as error:
        if os.environ.get("CI") == "true":
            raise AssertionError(f"Redis at 127.0.0.1:6379 is unreachable: {error}")
        raise SkipTest(f"Redis at 127.0.0.1:6379 is unreachable: {error}")


def _until(condition: Callable[[], bool], timeout: float = 10.0) -> Deferred[Any]:
    """
    Fire once C{condition()} holds (checked on every reactor tick of 10
    ms), fail after C{timeout}.
    """
    done: Deferred[Any] = Deferred()

    def check() -> None:
        if condition():
            loop.stop()

    loop = LoopingCall(check)
    d = loop.start(0.01)
    d.addTimeout(timeout, reactor)
    d.chainDeferred(done)
    return done


class NodeTests(TestCase):
    def node(self, name: str, prefix: str) -> ClusterNode:
        presence = ClusterPresence(reactor, name, settle=0.2)
        presence.start()
        self.addCleanup(presence.stop)
        link = RedisLink(reactor, RedisAddress.parse("redis://127.0.0.1:6379/0"), lambda *a: None)
        node = ClusterNode(reactor, link, presence, prefix=prefix, address=f"http://{name}", ttl=3.0)
        node.start()
        self.addCleanup(lambda: Deferred.fromCoroutine(node.stop()))
        return node

    async def test_presenceAcrossNodes(self) -> None:
        """
        A device logged in on A is seen by B with its node; after A
        leaves, B has no device of the user and A's keys are gone.
        """
        _requireRedis()
        prefix = "test-" + uuid.uuid4().hex
        a, b = self.node("A", prefix), self.node("B", prefix)
        await _until(lambda: a.presence.peersReachable and b.presence.peersReachable)
        a.presence.login("u", "s1", "U", None)
        await _until(lambda: b.presence.nodesOf("u") == {"A": ["s1"]})
        self.assertEqual(b.addresses.get(a.tag), "http://A")
        await a.stop()
        await _until(lambda: not b.presence.devicesOf("u"))
        self.assertEqual(await b.link.execute("EXISTS", a.devicesKey("A")), 0)


class _FakeLink:
    """
    The commands a L{ClusterNode} sends, in order; each answered at once
    (C{None}, or an empty list for the reads of many), except C{PING}s,
    which wait for the test.
    """

    def __init__(self) -> None:
        self.up = True
        self.reason: str | None = None
        self.commands: list[tuple[Any, ...]] = []
        self.pings: list[Deferred[Any]] = []
        self.ready: list[Callable[[], object]] = []
        self.lost: list[Callable[[str], object]] = []
        self.onMessage: Any = None

    def subscribe(self, channel: bytes) -> None:
        pass

    def psubscribe(self, pattern: bytes) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> Deferred[Any]:
        self.up = False
        return succeed(None)

    def execute(self, *args: Any) -> Deferred[Any]:
        self.commands.append(args)
        if args[0] in ("HGETALL", "MGET"):
            return succeed([])
        return succeed(b"1" if args[0] == "SET" else None)

    def publish(self, channel: Any, message: bytes) -> Deferred[Any]:
        return self.execute("PUBLISH", channel, message)

    def send(self, *args: Any) -> None:
        self.commands.append(args)

    def ping(self) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pings.append(d)
        return d


class LeavingTests(TestCase):
    def beating(self) -> tuple[Clock, _FakeLink, ClusterNode]:
        """
        A node on a fake link whose first heartbeat waits on C{PING}.
        """
        clock = Clock()
        presence = ClusterPresence(clock, "A", settle=0.2)
        link = _FakeLink()
        node = ClusterNode(clock, link, presence, prefix="p", address="http://A", ttl=3.0)  # type: ignore[arg-type]
        node.start()
        clock.advance(1.0)
        return clock, link, node

    def test_heartbeatUnderWayBeforeLeaving(self) -> None:
        """
        A node that stops while a heartbeat waits for Redis removes its
        C{alive} key after that heartbeat has refreshed it, not before:
        no node that has left stays listed as alive until the key's TTL.
        """
        clock, link, node = self.beating()
        self.assertEqual(len(link.pings), 1)
        stopped = Deferred.fromCoroutine(node.stop())
        self.assertNoResult(stopped)
        link.pings[0].callback(b"PONG")
        self.successResultOf(stopped)
        alive = node.aliveKey("A")
        writes = [i for i, command in enumerate(link.commands) if alive in command]
        self.assertEqual([link.commands[i][0] for i in writes], ["SET", "DEL"])
        clock.advance(10.0)
        self.assertEqual(link.pings[1:], [])

    def test_noRegistrationWhileLeaving(self) -> None:
        """
        The link coming up again while the node leaves registers nothing.
        """
        clock, link, node = self.beating()
        stopped = Deferred.fromCoroutine(node.stop())
        for listener in link.ready:
            listener()
        link.pings[0].callback(b"PONG")
        self.successResultOf(stopped)
        self.assertEqual([command[0] for command in link.commands if command[0] == "HSET"], [])

    def test_deadNodeTold(self) -> None:
        """
        A node whose heartbeat key is gone is dropped, and L{ClusterNode.died}
        is told its id (connection recovery gives its sockets' records the
        window, so that its clients come back on a live node).
        """
        from crm_im.cluster.presence import DeviceRecord

        clock, link, node = self.beating()
        died: list[str] = []
        node.died.append(died.append)
        node.presence.replaceNode("B", {"s1": DeviceRecord("u", "U", None, "online")})
        execute = link.execute
        link.execute = lambda *args: succeed([None]) if args[0] == "MGET" else execute(*args)  # type: ignore[method-assign]
        link.pings[0].callback(b"PONG")
        self.assertEqual(died, ["B"])
        self.assertEqual(node.presence.devicesOn("B"), set())

    def test_revivedOnlyWhenDropped(self) -> None:
        """
        L{ClusterNode.revived} is told when the node registers again after
        the others dropped it (its entry gone from the list of nodes), not
        at its first registration nor at a reconnection the others did not
        take for a death (connection recovery then writes every connected
        socket's record again: not at each Redis blip).
        """
        clock, link, node = self.beating()
        revived: list[bool] = []
        node.revived.append(lambda: revived.append(True))
        listed: list[int] = []
        execute = link.execute
        link.execute = lambda *args: succeed(listed[-1]) if args[0] == "HEXISTS" else execute(*args)  # type: ignore[method-assign]

        def reconnect(stillListed: int) -> None:
            listed.append(stillListed)
            for listener in link.ready:
                listener()

        reconnect(1)  # the first registration
        self.assertEqual(revived, [])
        reconnect(1)
        self.assertEqual(revived, [])
        reconnect(0)
        self.assertEqual(revived, [True])

    def test_logoutHoldPublished(self) -> None:
        """
        A local socket that may be recovered goes: its hold travels with
        its logout, and the other nodes hold its user as long.
        """
        import msgpack

        from crm_im.cluster.presence import DeviceRecord

        clock, link, node = self.beating()
        node.presence.login("u", "s1", "U", None)
        node.presence.logout("s1", hold=30.0)
        published = [msgpack.unpackb(c[2]) for c in link.commands if c[0] == "PUBLISH" and c[1] == node.presenceChannel]
        self.assertEqual(published[-1], ["logout", "A", "s1", 30.0])
        node.presence.remoteLogin("B", "s2", DeviceRecord("v", "V", None, "online"), announce=False)
        node.presenceEvent(msgpack.packb(["logout", "B", "s2", 30.0]))
        clock.advance(29)
        self.assertIsNotNone(node.presence.user("v"))
        node.presence.remoteLogin("B", "s3", DeviceRecord("w", "W", None, "online"), announce=False)
        node.presenceEvent(msgpack.packb(["logout", "B", "s3"]))
        clock.advance(2)
        self.assertIsNone(node.presence.user("v"))
        self.assertIsNone(node.presence.user("w"))
