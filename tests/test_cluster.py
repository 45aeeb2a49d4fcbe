"""
Unit tests of the cluster's decisions on a L{Clock}: the Redis link's
backoff and address parsing, cluster presence (no flap, a dead node's
users leave after the settling delay) and targeted routing.
"""

from __future__ import annotations

from typing import Any

import msgpack
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from crm_im.cluster.connection import RedisAddress, backoffDelay
from crm_im.cluster.node import nodeTag, tagOfSid
from crm_im.cluster.presence import ClusterPresence, DeviceRecord
from crm_im.routing.local import LocalRouter
from crm_im.routing.redis import TO_USERS, RedisRouter


class _Socket:
    def __init__(self) -> None:
        self.frames: list[Any] = []

    def sendFrames(self, frames: Any) -> None:
        self.frames.append(frames)


class LinkTests(TestCase):
    def test_backoff(self) -> None:
        """
        The delay doubles from the start up to the cap, jittered between
        half and all of it.
        """
        self.assertEqual(backoffDelay(1, 0.2, 5.0, rand=1.0), 0.2)
        self.assertEqual(backoffDelay(3, 0.2, 5.0, rand=1.0), 0.8)
        self.assertEqual(backoffDelay(30, 0.2, 5.0, rand=1.0), 5.0)
        self.assertEqual(backoffDelay(30, 0.2, 5.0, rand=0.0), 2.5)

    def test_address(self) -> None:
        """
        redis:// URLs give host, port, database and password; others are
        refused.
        """
        a = RedisAddress.parse("redis://:s%40cret@example:6380/2")
        self.assertEqual((a.host, a.port, a.db, a.password), ("example", 6380, 2, "s@cret"))
        self.assertNotIn("cret", repr(a))
        self.assertRaises(ValueError, RedisAddress.parse, "http://x")

    def test_sidTag(self) -> None:
        """
        An Engine.IO sid names its node by tag.
        """
        self.assertEqual(tagOfSid("abc." + nodeTag("n1")), nodeTag("n1"))
        self.assertIsNone(tagOfSid("abc"))


class PresenceTests(TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.left: list[str] = []
        self.presence = ClusterPresence(self.clock, "A", settle=1.0, userLeft=lambda u: self.left.append(u.id))
        self.presence.start()
        self.addCleanup(self.presence.stop)

    def test_noFlapAcrossNodes(self) -> None:
        """
        A phone on A goes and a PC on B logs in half a second later: the
        user never leaves.
        """
        self.presence.login("u", "phone", "U", None)
        self.presence.logout("phone")
        self.clock.advance(0.5)
        self.presence.remoteLogin("B", "pc", DeviceRecord("u", "U", None, "online"), announce=False)
        self.clock.advance(5)
        self.assertEqual(self.left, [])
        self.assertEqual(self.presence.nodesOf("u"), {"B": ["pc"]})

    def test_deadNode(self) -> None:
        """
        A dead node's devices are dropped; its users leave after the
        settling delay, not before.
        """
        self.presence.remoteLogin("B", "d1", DeviceRecord("u", "U", None, "online"))
        self.presence.replaceNode("B", {})
        self.clock.advance(0.5)
        self.assertEqual(self.left, [])
        self.clock.advance(1)
        self.assertEqual(self.left, ["u"])

    def test_unreachablePeers(self) -> None:
        """
        While Redis is down only this node's devices count.
        """
        self.presence.login("u", "a1", "U", None)
        self.presence.remoteLogin("B", "b1", DeviceRecord("u", "U", None, "online"))
        self.presence.peersReachable = False
        self.assertEqual(self.presence.devicesOf("u"), {"a1"})
        self.assertEqual(list(self.presence.allDevices()), ["a1"])


class RouterTests(TestCase):
    def test_targeted(self) -> None:
        """
        A message to users on two other nodes is published once to each of
        those nodes, never to a node without recipients; local devices are
        written at once.
        """
        presence = ClusterPresence(Clock(), "A")
        sockets = {"a1": _Socket()}
        presence.login("x", "a1", "X", None)
        presence.remoteLogin("B", "b1", DeviceRecord("x", "X", None, "online"))
        presence.remoteLogin("B", "b2", DeviceRecord("y", "Y", None, "online"))
        presence.remoteLogin("C", "c1", DeviceRecord("y", "Y", None, "online"))
        presence.remoteLogin("D", "d1", DeviceRecord("z", "Z", None, "online"))
        sent: list[tuple[str, bytes]] = []
        router = RedisRouter(LocalRouter(sockets, presence), presence, sockets, lambda n, m: sent.append((n, m)))
        count = router.toUsers(["x", "y"], "message", {"k": 1})
        self.assertEqual(count, 4)
        self.assertEqual(len(sockets["a1"].frames), 1)
        self.assertEqual(sorted(n for n, _ in sent), ["B", "C"])
        kind, targets, _, _ = msgpack.unpackb(dict(sent)["B"])
        self.assertEqual((kind, sorted(targets)), (TO_USERS, ["x", "y"]))
