"""
crm_im on PostgreSQL as operators run it: a real C{twistd crm_im} process
with C{--store postgresql://...} (a database of the test's own, dropped
after), real Node C{socket.io-client} clients, C{kill -9}, a restart.

Skipped when PostgreSQL is unreachable, failed under C{CI=true}
(L{tests.support.postgres}).
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import gatherResults, inlineCallbacks

from tests.integration.test_twistd import Inline, ProcessTestCase
from tests.support.clients import requireKind
from tests.support.postgres import newDatabaseURL


class PostgresNodeTests(ProcessTestCase):
    """
    A node whose store is PostgreSQL.
    """

    @inlineCallbacks
    def test_durableAfterSIGKILL(self) -> Inline:
        """
        Messages to an offline user whose receipts came, and a group with
        its history, survive a SIGKILL: a node started again on the same
        database (and another data directory: nothing of it is on disk)
        delivers the offline messages in seq order, none twice, and serves
        the group and its history.
        """
        requireKind("node")
        store = newDatabaseURL(self)
        process = self.spawnTwistd(self.mktemp(), env={"CRM_IM_STORE": store})
        yield self.waitUntilServing(process)
        self.assertIn(b"Message store: postgresql://", process.output)
        driver = yield self.driver("node")
        url = f"http://127.0.0.1:{process.port}"
        yield driver.connect("sender", url, transports=["websocket"])
        yield driver.emit("sender", "user:login", {"id": "s", "name": "S"}, ack=True)
        count = 100
        receipts = yield gatherResults([
            driver.emit("sender", "message", {"id": f"m{i}", "toId": "r", "content": f"#{i} 100%"},
                        ack=True, timeout=30)
            for i in range(count)])
        self.assertEqual([r[0]["status"] for r in receipts], ["offline"] * count)
        (group,) = yield driver.emit("sender", "group:create", {"name": "deals", "memberIds": ["r"]},
                                     ack=True)
        groupReceipt = yield driver.emit(
            "sender", "message", {"groupId": group["id"], "content": "to the group"}, ack=True)
        self.assertIn("seq", groupReceipt[0])
        process.signal("KILL")
        yield self.waitForExit(process)
        yield driver.waitForDisconnect("sender")

        restarted = self.spawnTwistd(self.mktemp(), "--store", store)
        yield self.waitUntilServing(restarted)
        self.assertNotIn(b"Applied storage schema", restarted.output)
        url = f"http://127.0.0.1:{restarted.port}"
        yield driver.connect("recipient", url, transports=["websocket"])
        yield driver.emit("recipient", "user:login", {"id": "r", "name": "R"}, ack=True)
        yield driver.waitFor("recipient", "message", timeout=30,
                             predicate=lambda args: args[0]["id"] == f"m{count - 1}")
        got = [args[0] for args in driver.events("recipient", "message")]
        self.assertEqual([m["id"] for m in got], [f"m{i}" for i in range(count)])
        self.assertEqual(got[7]["content"], "#7 100%")
        seqs = [m["seq"] for m in got]
        self.assertEqual(seqs, sorted(set(seqs)))
        (history,) = yield driver.emit("recipient", "get_history", {"groupId": group["id"]}, ack=True)
        messages: list[dict[str, Any]] = history["messages"]
        self.assertEqual([m.get("content") for m in messages if m.get("type") != "system"], ["to the group"])
        self.assertEqual(messages[-1]["seq"], groupReceipt[0]["seq"])
        self.assertTrue(all(m["seq"] > seqs[-1] for m in messages))
        restarted.signal("TERM")
        self.assertEqual((yield self.waitForExit(restarted)), 0, restarted.text)
