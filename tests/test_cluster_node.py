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
from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
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
