"""
crm_im on PostgreSQL as operators run it: a real C{twistd crm_im} process
with C{--store postgresql://...} (a database of the test's own, dropped
after), real Node C{socket.io-client} clients, C{kill -9}, a restart.

Skipped when PostgreSQL is unreachable, failed under C{CI=true}
(L{tests.support.postgres}).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit, urlunsplit

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.protocols.portforward import ProxyFactory

from tests.integration.test_twistd import Inline, ProcessTestCase, freePort
from tests.support.clients import requireKind
from tests.support.postgres import newDatabaseURL

#: seconds a node has to notice the database gone or back
NOTICE_TIMEOUT = 30.0


class CuttableProxy(ProxyFactory):
    """
    A TCP proxy to PostgreSQL that the test can cut (every connection
    reset, nothing listening: the database is gone for the node) and
    restore.
    """

    def __init__(self, host: str, port: int) -> None:
        ProxyFactory.__init__(self, host, port)
        self.servers: list[Any] = []
        self.listening: Any = None

    def buildProtocol(self, addr: Any) -> Any:
        server = ProxyFactory.buildProtocol(self, addr)
        self.servers.append(server)
        return server

    def listen(self, port: int) -> None:
        self.listening = reactor.listenTCP(port, self, interface="127.0.0.1")  # type: ignore[arg-type]

    def cut(self) -> Deferred[None]:
        servers, self.servers = self.servers, []
        for server in servers:
            if server.peer is not None:
                server.peer.transport.abortConnection()
            server.transport.abortConnection()
        listening, self.listening = self.listening, None
        stopped: Deferred[None] = listening.stopListening()
        return stopped


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

    @inlineCallbacks
    def waitForHealth(self, port: Any, status: int) -> Inline:
        """
        Poll C{GET /health} (every 0.2 s, bounded) until it answers
        C{status}; return its body.
        """
        deadline = reactor.seconds() + NOTICE_TIMEOUT
        while True:
            response = yield treq.get(f"http://127.0.0.1:{port}/health", persistent=False, timeout=10)
            body = yield response.json()
            if response.code == status:
                return body
            if reactor.seconds() > deadline:
                self.fail(f"/health still {response.code} {body} after {NOTICE_TIMEOUT}s")
            yield deferLater(reactor, 0.2, lambda: None)

    @inlineCallbacks
    def test_databaseOutage(self) -> Inline:
        """
        PostgreSQL gone (every connection reset, nothing listening): the
        node keeps its clients, refuses a message with C{INTERNAL} (it was
        not stored, so no receipt), answers C{/health} 503; back, it
        reconnects on its own: C{/health} 200, messages stored and
        delivered, the refused one never.
        """
        requireKind("node")
        store = urlsplit(newDatabaseURL(self))
        proxy = CuttableProxy(store.hostname or "127.0.0.1", store.port or 5432)
        proxyPort = freePort()
        proxy.listen(proxyPort)
        self.addCleanup(lambda: proxy.cut() if proxy.listening is not None else None)
        user = store.username or "postgres"
        url = urlunsplit((store.scheme, f"{user}@127.0.0.1:{proxyPort}", store.path, "", ""))
        process = self.spawnTwistd(self.mktemp(), "--store", url)
        yield self.waitUntilServing(process)
        driver = yield self.driver("node")
        base = f"http://127.0.0.1:{process.port}"
        yield driver.connect("sender", base, transports=["websocket"])
        yield driver.emit("sender", "user:login", {"id": "s", "name": "S"}, ack=True)
        (before,) = yield driver.emit("sender", "message", {"id": "before", "toId": "r", "content": "1"}, ack=True)
        self.assertEqual(before["status"], "offline")

        yield proxy.cut()
        body = yield self.waitForHealth(process.port, 503)
        self.assertEqual(body["status"], "unavailable")
        (refused,) = yield driver.emit("sender", "message", {"id": "during", "toId": "r", "content": "2"},
                                       ack=True, timeout=30)
        self.assertEqual(refused["error"]["code"], "INTERNAL")

        proxy.listen(proxyPort)
        yield self.waitForHealth(process.port, 200)
        (after,) = yield driver.emit("sender", "message", {"id": "after", "toId": "r", "content": "3"}, ack=True)
        self.assertEqual(after["status"], "offline")
        yield driver.connect("recipient", base, transports=["websocket"])
        yield driver.emit("recipient", "user:login", {"id": "r", "name": "R"}, ack=True)
        yield driver.waitFor("recipient", "message", predicate=lambda args: args[0]["id"] == "after")
        got = [args[0] for args in driver.events("recipient", "message")]
        self.assertEqual([m["id"] for m in got], ["before", "after"])
        self.assertTrue(got[0]["seq"] < got[1]["seq"])
        self.assertEqual([r for r in driver.reports if r.get("client") == "sender" and r["type"] == "disconnect"], [])
        process.signal("TERM")
        self.assertEqual((yield self.waitForExit(process)), 0, process.text)
