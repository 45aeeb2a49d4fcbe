"""
The smallest real cluster: two C{twistd crm_im} processes with
C{--redis} and their own C{--node-id}, on one PostgreSQL database (a
schema of the test's own) and the machine's Redis (a key prefix of the
test's own), a python-socketio client on each. A 1:1 message crosses from
one node to the other with a C{delivered} receipt; C{/health} says the
node is in the cluster. (The full multi-node suite, with a round-robin
balancer, kills and a Redis outage, is L{tests.integration.test_cluster}.)

Skipped without PostgreSQL or Redis, failed when C{CI=true}.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks

from tests.integration.test_twistd import Inline, ProcessTestCase
from tests.support.postgres import newSchemaURL
from tests.test_cluster_node import _requireRedis

REDIS = "redis://127.0.0.1:6379/0"
#: seconds a node has to start and register in the cluster
JOIN_TIMEOUT = 45.0


class ClusterSmokeTests(ProcessTestCase):
    @inlineCallbacks
    def deleteKeys(self, prefix: str) -> Inline:
        import txredisapi

        connection = yield txredisapi.Connection("127.0.0.1", 6379, reconnect=False, charset=None)
        try:
            keys = yield connection.execute_command("KEYS", f"crm_im:{prefix}:*")
            if keys:
                yield connection.execute_command("DEL", *keys)
        finally:
            yield connection.disconnect()

    @inlineCallbacks
    def test_messageAcrossNodes(self) -> Inline:
        """
        alice on node a sends bob on node b a message: bob gets it, alice
        gets the receipt C{delivered}; each node's C{online_users} lists
        both.
        """
        _requireRedis()
        store = newSchemaURL(self)
        prefix = "smoke-" + uuid.uuid4().hex[:12]
        self.addCleanup(self.deleteKeys, prefix)
        nodes = {}
        for name in ("a", "b"):
            process = self.spawnTwistd(
                os.path.abspath(self.mktemp()), "--store", store, "--redis", REDIS, "--node-id", name,
                "--redis-prefix", prefix, "--node-ttl", "3",
            )
            nodes[name] = process
            try:
                yield process.whenOutputContains(f"cluster node {name} registered (".encode()).addTimeout(
                    JOIN_TIMEOUT, reactor
                )
                yield process.whenOutputContains(b"crm_im listening on").addTimeout(JOIN_TIMEOUT, reactor)
            except Exception:
                self.fail(f"node {name} did not start and join the cluster:\n{process.text}")
        for name, process in nodes.items():
            response = yield treq.get(f"http://127.0.0.1:{process.port}/health", persistent=False, timeout=10)
            body: Any = yield response.json()
            self.assertEqual((response.code, body.get("cluster")), (200, "ok"), f"{name}: {body}")

        driver = yield self.driver("python")
        yield driver.connect("alice", f"http://127.0.0.1:{nodes['a'].port}", transports=["websocket"])
        yield driver.connect("bob", f"http://127.0.0.1:{nodes['b'].port}", transports=["websocket"])
        yield driver.emit("alice", "user:login", {"id": "alice", "name": "Alice"}, ack=True)
        yield driver.emit("bob", "user:login", {"id": "bob", "name": "Bob"}, ack=True)
        (users,) = yield driver.waitFor("bob", "online_users")
        # alice's registration may reach b just after bob's login: then
        # bob hears status_change online for her instead
        if "alice" not in [user["id"] for user in users]:
            yield driver.waitFor("bob", "status_change", predicate=lambda args: args[0]["userId"] == "alice")
        ack = yield driver.emit(
            "alice", "message", {"id": "m-1", "toId": "bob", "content": "across nodes"}, ack=True, timeout=15
        )
        self.assertEqual(ack[0]["status"], "delivered", ack)
        (message,) = yield driver.waitFor("bob", "message", timeout=15)
        self.assertEqual((message["fromId"], message["content"]), ("alice", "across nodes"))
        (receipt,) = yield driver.waitFor("alice", "message:sent")
        self.assertEqual(receipt["status"], "delivered")
        for name, process in nodes.items():
            response = yield treq.get(f"http://127.0.0.1:{process.port}/api/online-users", persistent=False, timeout=10)
            body = yield response.json()
            ids = sorted(user["id"] for user in (body["users"] if isinstance(body, dict) else body))
            self.assertEqual(ids, ["alice", "bob"], f"{name}: {body}")
