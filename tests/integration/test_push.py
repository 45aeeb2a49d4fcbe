"""
Offline push end to end (PUSH.md): crm_im with C{--push-gateway} pointed
at a real HTTP gateway on loopback (L{tests.support.pushgateway}: a
L{twisted.web} server checking every body against the Matrix Push Gateway
API schema and the HMAC signature), driven by real Node
C{socket.io-client} clients.

  - who is notified: an offline user once, with the right count, on every
    pushkey; an online user never; several messages coalesced; the preview
    content rule; rejected pushkeys deleted; 500 and 429 retried; group
    members notified, a muted member only when mentioned;
  - a gateway down, then up: the notification arrives once it listens;
  - a gateway that never answers while messages keep flowing: every
    receipt on time;
  - C{kill -9} of a real C{twistd} process while notifications are
    pending: the restarted server sends them.

That a notification did I{not} go out is shown with a barrier: a
notification for another user, caused after the one that would have been
and due after it (same coalescing window); once it arrived, the other
would have too. Nothing sleeps.
"""

from __future__ import annotations

import time
from typing import Any, Dict, Generator, List

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.trial.unittest import TestCase
from zope.interface import provider

from tests.integration.test_im import serveIM
from tests.integration.test_twistd import ProcessTestCase, freePort
from tests.support.clients import ClientDriver, DriverTestMixin, requireKind
from tests.support.pushgateway import PushGateway, url

Inline = Generator[Deferred[Any], Any, Any]

SECRET = "gateway-shared-secret"
APP = "com.example.crm"


def metrics(text: str) -> Dict[str, float]:
    """
    The samples of a Prometheus text exposition, C{name{labels}} -> value.
    """
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


class PushScenario(DriverTestMixin):
    """
    A gateway and a crm_im server per test, and the clients' moves.
    """

    timeout = 90
    gateway: PushGateway
    driver: ClientDriver
    url: str
    service: Any
    assertEqual: Any
    assertTrue: Any
    addCleanup: Any

    @inlineCallbacks
    def serve(self, secret: str | None = SECRET, gatewayPort: int | None = None, listen: bool = True,
              **settings: Any) -> Inline:
        """
        Start the gateway (on C{gatewayPort}, unless C{listen} is false)
        and a server notifying it, with a 200 ms coalescing window; start
        the driver and log alice in (the sender, who watches presence).
        """
        requireKind("node")
        self.gateway = PushGateway(None if secret is None else secret.encode())
        self.gatewayPort = gatewayPort if gatewayPort is not None else freePort()
        if listen:
            self.gateway.listen(reactor, self.gatewayPort)
        self.addCleanup(self.gateway.stop)
        config: Dict[str, Any] = dict(pushGateway=url(self.gatewayPort), pushSecret=secret, pushCoalesce=0.2)
        config.update(settings)
        self.service, self.url = yield serveIM(self, **config)  # type: ignore[misc]
        self.driver = yield self.startDriver()
        yield self.login("alice")

    @inlineCallbacks
    def login(self, userId: str, client: str | None = None) -> Inline:
        """
        Connect C{client} (default: C{userId}) over WebSocket and log it in.
        """
        client = client or userId
        yield self.driver.connect(client, self.url, transports=["websocket"])
        (ack,) = yield self.driver.emit(client, "user:login", {"id": userId, "name": userId.title()}, ack=True)
        self.assertEqual(ack["id"], userId)

    @inlineCallbacks
    def ask(self, client: str, event: str, payload: Any, timeout: float = 10) -> Inline:
        """
        Emit C{event} with an ack; fail unless it succeeded.
        """
        (ack,) = yield self.driver.emit(client, event, payload, ack=True, timeout=timeout)
        self.assertTrue(not (isinstance(ack, dict) and "error" in ack), f"{event} {payload!r}: {ack!r}")
        return ack

    @inlineCallbacks
    def offlineWithPushkeys(self, userId: str, *pushkeys: str, mute: str | None = None) -> Inline:
        """
        Log C{userId} in, register C{pushkeys} (and mute a group), log out:
        once alice saw them go offline, they are a user to notify.
        """
        client = f"{userId}-phone"
        yield self.login(userId, client)
        for pushkey in pushkeys:
            ack = yield self.ask(client, "push:register", {
                "pushkey": pushkey, "appId": APP, "platform": "android", "lang": "zh-CN",
                "data": {"format": "event_id_only"}})
            self.assertEqual(ack, {"pushkey": pushkey})
        if mute is not None:
            ack = yield self.ask(client, "group:mute", {"groupId": mute, "muted": True})
            self.assertEqual(ack, {"groupId": mute, "muted": True})
        offline = self.driver.waitFor("alice", "status_change", predicate=lambda args: (
            args[0]["userId"] == userId and args[0]["status"] == "offline"))
        yield self.driver.close(client)
        yield offline

    @inlineCallbacks
    def send(self, payload: Dict[str, Any], client: str = "alice") -> Inline:
        """
        alice sends a message; return the receipt.
        """
        receipt = yield self.ask(client, "message", payload)
        return receipt

    @inlineCallbacks
    def metrics(self) -> Inline:
        """
        The server's C{/metrics} samples.
        """
        response = yield treq.get(self.url + "/metrics", persistent=False)
        text = yield response.text()
        return metrics(text)

    def settled(self, predicate: Any, timeout: float = 20) -> Deferred[None]:
        """
        Fire once C{predicate(sender.metrics)} holds, checked after each of
        the sender's attempts (what the gateway saw is counted only once
        crm_im read the answer and settled the outbox).
        """
        sender = self.service.pushSender
        d: Deferred[None] = Deferred()
        if predicate(sender.metrics):
            d.callback(None)
            return d

        def check(_: str) -> None:
            if not d.called and predicate(sender.metrics):
                sender.attemptEnded.remove(check)
                d.callback(None)

        sender.attemptEnded.append(check)
        return d.addTimeout(timeout, reactor)

    def checkSchema(self) -> None:
        """
        Every request the gateway received was valid and signed.
        """
        self.assertEqual(self.gateway.invalid, [])


class PushNodeTests(PushScenario, TestCase):
    """
    The scenarios with Node's socket.io-client.
    """

    @inlineCallbacks
    def test_notifications(self) -> Inline:
        """
        An offline user is notified once, on both pushkeys, of three
        messages with one coalesced notification counting them, about the
        latest (its preview cut at 100 characters), signed; an online user
        is not notified; a rejected pushkey is deleted; a notification
        answered 500 then 429 is retried until accepted; /metrics counts
        it all.
        """
        yield self.serve(pushContent="preview")
        yield self.login("carol")
        yield self.offlineWithPushkeys("bob", "pk-bob-phone", "pk-bob-tablet")
        yield self.offlineWithPushkeys("dave", "pk-dave")
        carolRegistered = yield self.ask("carol", "push:register", {"pushkey": "pk-carol", "appId": APP})
        self.assertEqual(carolRegistered, {"pushkey": "pk-carol"})

        longText = "长" * 150
        receipts = yield gatherResults([
            self.send({"toId": "bob", "content": "first", "id": "b-1"}),
            self.send({"toId": "bob", "content": "second", "id": "b-2"}),
        ])
        last = yield self.send({"toId": "bob", "content": longText, "id": "b-3"})
        self.assertEqual([r["status"] for r in [*receipts, last]], ["offline"] * 3)
        toCarol = yield self.send({"toId": "carol", "content": "you are online", "id": "c-1"})
        self.assertEqual(toCarol["status"], "delivered")
        (bob,) = yield self.gateway.waitForKey("pk-bob-phone")
        self.assertEqual(bob.pushkeys, ["pk-bob-phone", "pk-bob-tablet"])
        notification = bob.notification
        self.assertEqual(
            {key: notification[key] for key in ("event_id", "room_id", "type", "sender", "sender_display_name", "prio", "counts")},
            {"event_id": "b-3", "room_id": "alice", "type": "crm_im.message", "sender": "alice",
             "sender_display_name": "Alice", "prio": "high", "counts": {"unread": 3}},
        )
        self.assertEqual(notification["content"], {"msgtype": "text", "body": "长" * 100})
        self.assertEqual(notification["devices"][0]["data"], {"format": "event_id_only"})
        self.assertTrue(isinstance(notification["devices"][0]["pushkey_ts"], int))

        # barrier: dave's notification, caused after, due after
        yield self.send({"toId": "dave", "content": "barrier", "id": "d-1"})
        (dave,) = yield self.gateway.waitForKey("pk-dave")
        self.assertEqual(dave.unread, 1)
        self.assertEqual(len(self.gateway.forUser("pk-bob-phone")), 1)
        self.assertEqual(self.gateway.forUser("pk-carol"), [])

        # the gateway rejects one of bob's pushkeys: it is deleted
        self.gateway.rejecting = {"pk-bob-phone"}
        yield self.send({"toId": "bob", "content": "fourth", "id": "b-4"})
        yield self.gateway.waitForKey("pk-bob-phone", 2)
        yield self.send({"toId": "bob", "content": "fifth", "id": "b-5"})
        received = yield self.gateway.waitForKey("pk-bob-tablet", 3)
        self.assertEqual((received[-1].pushkeys, received[-1].unread), (["pk-bob-tablet"], 5))

        # 500, then 429, then accepted: three requests for one notification
        self.gateway.script = [500, 429]
        yield self.send({"toId": "dave", "content": "again", "id": "d-2"})
        received = yield self.gateway.waitForKey("pk-dave", 4, timeout=30)
        self.assertEqual([r.code for r in received[1:]], [500, 429, 200])
        self.assertEqual({r.notification["event_id"] for r in received[1:]}, {"d-2"})
        self.checkSchema()

        yield self.settled(lambda m: m.sent.value == 5)
        samples = yield self.metrics()
        self.assertEqual(
            {name: samples[name] for name in (
                "crm_im_push_sent_total", "crm_im_push_retried_total", "crm_im_push_rejected_pushkeys_total",
                "crm_im_push_outbox_depth")},
            {"crm_im_push_sent_total": 5.0, "crm_im_push_retried_total": 2.0,
             "crm_im_push_rejected_pushkeys_total": 1.0, "crm_im_push_outbox_depth": 0.0},
        )
        self.assertEqual(samples['crm_im_push_dropped_total{reason="overflow"}'], 0.0)

    @inlineCallbacks
    def test_connectionCut(self) -> Inline:
        """
        A phone whose connection is cut (no Socket.IO disconnect: the app
        went to sleep) keeps its user online for the connection recovery
        window (120 s), but no device has the messages sent to it: it is
        notified after the coalescing window, not once the window is over.
        """
        yield self.serve()
        report = yield self.driver.connect("bob-phone", self.url, transports=["websocket"])
        yield self.driver.emit("bob-phone", "user:login", {"id": "bob", "name": "Bob"}, ack=True)
        yield self.ask("bob-phone", "push:register", {"pushkey": "pk-bob", "appId": APP})
        socket = self.service.sio.getSocket(report["id"])
        socket.session._channel.transport.abortConnection()
        while self.service.presence.devicesOf("bob"):
            # (a round trip through the server until it saw the cut)
            yield self.driver.emit("alice", "typing", {"toId": "bob", "isTyping": True}, ack=True)
        user = self.service.presence.user("bob")
        self.assertTrue(user is not None and user.leaving, "bob is held for the recovery window")
        receipt = yield self.send({"toId": "bob", "content": "wake up", "id": "w-1"})
        self.assertEqual(receipt["status"], "offline")
        (bob,) = yield self.gateway.waitForKey("pk-bob", timeout=10)
        self.assertEqual((bob.unread, bob.notification["event_id"]), (1, "w-1"))
        self.checkSchema()

    @inlineCallbacks
    def test_groupMembersAndMutes(self) -> Inline:
        """
        A group message notifies its offline members with pushkeys (the
        group's id and name in it), not the online member; a member who
        muted the group is notified only of the message mentioning them,
        counting both unread messages; no content by default.
        """
        yield self.serve()
        yield self.login("carol")
        group = yield self.ask("alice", "group:create", {"name": "Deals", "memberIds": ["bob", "carol", "dave"]})
        groupId = group["id"]
        yield self.offlineWithPushkeys("bob", "pk-bob")
        yield self.offlineWithPushkeys("dave", "pk-dave", mute=groupId)
        yield self.ask("carol", "push:register", {"pushkey": "pk-carol", "appId": APP})

        yield self.send({"groupId": groupId, "content": "to everyone", "id": "g-1"})
        (bob,) = yield self.gateway.waitForKey("pk-bob")
        self.assertEqual(
            (bob.notification["room_id"], bob.notification["room_name"], bob.notification["event_id"], bob.unread),
            (groupId, "Deals", "g-1", 1),
        )
        self.assertNotIn("content", bob.notification)
        yield self.send({"groupId": groupId, "content": "dave, see this", "id": "g-2", "mentions": ["dave"]})
        (dave,) = yield self.gateway.waitForKey("pk-dave")
        self.assertEqual((dave.notification["event_id"], dave.unread), ("g-2", 2))
        yield self.gateway.waitForKey("pk-bob", 2)
        self.assertEqual(self.gateway.forUser("pk-carol"), [])
        self.checkSchema()

    @inlineCallbacks
    def test_muteEndsWithMembership(self) -> Inline:
        """
        A member who muted a group and then left it is, once added again,
        notified of its messages: the mute went with the membership, from
        the store too.
        """
        yield self.serve()
        group = yield self.ask("alice", "group:create", {"name": "Deals", "memberIds": ["dave"]})
        groupId = group["id"]
        yield self.login("dave")
        yield self.ask("dave", "group:mute", {"groupId": groupId, "muted": True})
        loaded = yield self.service.store.loadPush()
        self.assertIn(("dave", groupId), loaded.mutes)
        yield self.ask("dave", "group:leave", {"groupId": groupId})
        loaded = yield self.service.store.loadPush()
        self.assertNotIn(("dave", groupId), loaded.mutes)
        offline = self.driver.waitFor("alice", "status_change", predicate=lambda args: (
            args[0]["userId"] == "dave" and args[0]["status"] == "offline"))
        yield self.driver.close("dave")
        yield offline
        yield self.offlineWithPushkeys("dave", "pk-dave")
        yield self.ask("alice", "group:add_members", {"groupId": groupId, "userIds": ["dave"]})
        yield self.send({"groupId": groupId, "content": "welcome back", "id": "g-1"})
        (dave,) = yield self.gateway.waitForKey("pk-dave")
        self.assertEqual(dave.notification["event_id"], "g-1")
        self.checkSchema()

    @inlineCallbacks
    def test_gatewayDownThenUp(self) -> Inline:
        """
        While nothing listens at the gateway's address the notification
        waits (retried); once the gateway listens it arrives.
        """
        failures: List[Deferred[None]] = [Deferred()]

        @provider(ILogObserver)
        def watch(event: Dict[str, Any]) -> None:
            if "gateway request failed" in str(event.get("log_format", "")) and not failures[0].called:
                failures[0].callback(None)

        globalLogPublisher.addObserver(watch)
        self.addCleanup(globalLogPublisher.removeObserver, watch)
        yield self.serve(listen=False)
        yield self.offlineWithPushkeys("bob", "pk-bob")
        yield self.send({"toId": "bob", "content": "are you there?", "id": "x-1"})
        yield failures[0].addTimeout(20, reactor)
        self.assertEqual(self.gateway.received, [])
        self.gateway.listen(reactor, self.gatewayPort)
        (bob,) = yield self.gateway.waitForKey("pk-bob", timeout=30)
        self.assertEqual((bob.notification["event_id"], bob.unread), ("x-1", 1))
        yield self.settled(lambda m: m.sent.value == 1)
        samples = yield self.metrics()
        self.assertTrue(samples["crm_im_push_retried_total"] >= 1)
        self.assertEqual(samples["crm_im_push_sent_total"], 1.0)

    @inlineCallbacks
    def test_deadGatewayNeverDelays(self) -> Inline:
        """
        A gateway that takes every request and never answers: messages to
        offline users with pushkeys and to an online user keep flowing,
        each receipt on time, while the gateway's requests hang.
        """
        yield self.serve(secret=None, pushTimeout=60.0, pushConcurrency=4, pushCoalesce=0.05)
        self.gateway.hang = True
        yield self.login("carol")
        users = [f"u{n}" for n in range(6)]
        for userId in users:
            yield self.offlineWithPushkeys(userId, f"pk-{userId}")
        yield self.send({"toId": users[0], "content": "first"})
        yield self.gateway.waitFor(lambda received: len(received) >= 1, 20, reactor)
        slowest = 0.0
        count = 0
        for round in range(8):
            started = time.monotonic()
            receipts = yield gatherResults([
                self.send({"toId": target, "content": f"round {round} #{n}"})
                for n, target in enumerate([*users, "carol", "carol"])
            ])
            slowest = max(slowest, time.monotonic() - started)
            count += len(receipts)
            self.assertEqual([r["status"] for r in receipts], ["offline"] * len(users) + ["delivered"] * 2)
        self.assertTrue(slowest < 2.0, f"a round of receipts took {slowest:.2f}s")
        got = yield self.driver.waitFor("carol", "message", predicate=lambda args: args[0]["content"] == f"round 7 #{len(users) + 1}")
        self.assertTrue(got)
        self.assertEqual(len(self.driver.events("carol", "message")), 16)
        # the gateway took the concurrency (once each user's coalescing
        # window is over), no more, and answered none
        yield self.gateway.waitFor(lambda received: len(received) >= 4, 20, reactor)
        self.assertEqual(len(self.gateway.received), 4)
        self.assertEqual([r.code for r in self.gateway.received], [None] * 4)
        samples = yield self.metrics()
        self.assertEqual(samples["crm_im_push_outbox_depth"], 1.0 + len(users) * 8)
        self.assertEqual(count, 64)


class KilledServerTests(ProcessTestCase):
    """
    A real C{twistd} process killed while notifications are pending.
    """

    @inlineCallbacks
    def test_pendingAfterSIGKILL(self) -> Inline:
        """
        Messages to an offline user whose receipts came, with a coalescing
        window too long to have notified, survive C{kill -9} in the outbox:
        the server started again sends one notification counting them.
        """
        requireKind("node")
        gateway = PushGateway(SECRET.encode())
        port = gateway.listen(reactor)
        self.addCleanup(gateway.stop)
        dataDir = self.mktemp()
        options = ("--push-gateway", url(port), "--push-secret", SECRET)
        process = self.spawnTwistd(dataDir, *options, "--push-coalesce-ms", "600000")
        yield self.waitUntilServing(process)
        driver = yield self.driver("node")
        server = f"http://127.0.0.1:{process.port}"
        yield driver.connect("bob", server, transports=["websocket"])
        yield driver.emit("bob", "user:login", {"id": "bob", "name": "Bob"}, ack=True)
        (ack,) = yield driver.emit("bob", "push:register", {"pushkey": "pk-bob", "appId": APP}, ack=True)
        self.assertEqual(ack, {"pushkey": "pk-bob"})
        yield driver.emit("bob", "user:logout", ack=True)
        yield driver.connect("alice", server, transports=["websocket"])
        yield driver.emit("alice", "user:login", {"id": "alice", "name": "Alice"}, ack=True)
        receipts = yield gatherResults([
            driver.emit("alice", "message", {"toId": "bob", "content": f"#{n}", "id": f"k-{n}"}, ack=True)
            for n in range(5)
        ])
        self.assertEqual([r[0]["status"] for r in receipts], ["offline"] * 5)
        process.signal("KILL")
        yield self.waitForExit(process)
        self.assertEqual(gateway.received, [])

        restarted = self.spawnTwistd(dataDir, *options, "--push-coalesce-ms", "200")
        yield self.waitUntilServing(restarted)
        (bob,) = yield gateway.waitForKey("pk-bob", timeout=30)
        self.assertEqual((bob.unread, bob.notification["event_id"]), (5, "k-4"))
        self.assertEqual(gateway.invalid, [])
        restarted.signal("TERM")
        self.assertEqual((yield self.waitForExit(restarted)), 0, restarted.text)
        self.assertEqual(len(gateway.received), 1)

