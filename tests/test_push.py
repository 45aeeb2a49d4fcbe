"""
Unit tests of offline push (PUSH.md): the pure rules
(L{crm_im.notify.rules}), the push handlers (L{crm_im.im.push}), the
message path's decision and the sender (L{crm_im.notify.sender}) on the
memory store, a L{Presence}, a L{Clock} and a gateway whose answers each
test gives: who is notified, when, how often, with what count; retries,
give-up, refusals, rejected pushkeys, the bounded outbox, the bounded
concurrency, restart, and the signed request on the wire (treq's
L{StubTreq} over a real L{twisted.web} resource).
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import os
from typing import Any, Callable

import orjson
from prometheus_client import CollectorRegistry
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request

from crm_im.im.core import IMCore, IMSettings
from crm_im.im.errors import FORBIDDEN, INVALID_PAYLOAD, NOT_FOUND, IMError
from crm_im.im.interfaces import Caller
from crm_im.notify.metrics import PushMetrics
from crm_im.notify.rules import (
    CONTENT_NONE,
    CONTENT_PREVIEW,
    DROP,
    MAX_RETRY_DELAY,
    RETRY,
    SENT,
    PushSettings,
    classify,
    groupRecipients,
    notificationBody,
    retryDelay,
    signature,
)
from crm_im.notify.sender import GatewayAnswer, GatewayClient, PushSender, rejectedPushkeys
from crm_im.presence import Presence
from crm_im.storage.interface import StoredMessage, groupConversation
from crm_im.storage.memory import MemoryMessageStore
from crm_im.storage.outbox import Pushkey, PushPlan

from .test_im_handlers import START, RecordingRouter

GATEWAY = "http://gateway.invalid/_matrix/push/v1/notify"


def stored(seq: int, type: str = "text", content: str = "hello", groupId: str | None = None, **extra: Any) -> StoredMessage:
    """
    A stored message from alice (to bob unless in a group).
    """
    return StoredMessage(
        seq=seq,
        id=f"m{seq}",
        fromId="alice",
        fromName="Alice",
        toId=None if groupId else "bob",
        topic=None,
        type=type,
        content=content,
        fileUrl=extra.pop("fileUrl", None),
        fileName=extra.pop("fileName", None),
        clientTimestamp=None,
        serverTimestamp=START * 1000,
        delivered=False,
        groupId=groupId,
        **extra,
    )


def plan(*messages: StoredMessage, unread: int = 1, names: dict[str, str] | None = None) -> PushPlan:
    """
    A plan for bob with one pushkey.
    """
    return PushPlan(
        userId="bob",
        upToSeq=messages[-1].seq,
        rows=len(messages),
        oldestAt=START * 1000,
        messages=list(messages),
        unread=unread,
        pushkeys=[Pushkey("pk-bob", "bob", "com.example.app", "android", "en", {"url": "x"}, 1_700_000_123_456)],
        groupNames=names or {},
    )


class RetryScheduleTests(SynchronousTestCase):
    """
    L{retryDelay} and L{classify}: what is retried, and when.
    """

    def test_exponential(self) -> None:
        """
        Without jitter the delays are 1 s doubling: 1, 2, 4, ... up to
        10 min, where they stay.
        """
        self.assertEqual([retryDelay(n, 0.0) for n in range(1, 7)], [1.0, 2.0, 4.0, 8.0, 16.0, 32.0])
        self.assertEqual(retryDelay(10, 0.0), 512.0)
        self.assertEqual(retryDelay(11, 0.0), MAX_RETRY_DELAY)
        self.assertEqual(retryDelay(60, 0.0), MAX_RETRY_DELAY)

    def test_jitter(self) -> None:
        """
        The jitter shortens a delay by up to a quarter, never lengthens it.
        """
        self.assertEqual(retryDelay(3, 0.5), 4.0 * 0.875)
        self.assertAlmostEqual(retryDelay(3, 0.999999), 3.0, places=4)
        self.assertTrue(all(3.0 <= retryDelay(3, r / 10) <= 4.0 for r in range(10)))

    def test_classify(self) -> None:
        """
        2xx is sent; 5xx and 429 are retried; any other code is dropped.
        """
        self.assertEqual(
            {code: classify(code) for code in (200, 202, 400, 401, 404, 413, 429, 500, 502, 503)},
            {200: SENT, 202: SENT, 400: DROP, 401: DROP, 404: DROP, 413: DROP,
             429: RETRY, 500: RETRY, 502: RETRY, 503: RETRY},
        )

    def test_rejectedPushkeys(self) -> None:
        """
        The C{rejected} list of a gateway's answer; nothing from an answer
        that is not JSON or has no such list, and no non-string entries.
        """
        self.assertEqual(rejectedPushkeys(b'{"rejected": ["a", 3, "b"]}'), ["a", "b"])
        self.assertEqual(rejectedPushkeys(b'{"rejected": "a"}'), [])
        self.assertEqual(rejectedPushkeys(b"<html>"), [])
        self.assertEqual(rejectedPushkeys(b"[1]"), [])
        self.assertEqual(rejectedPushkeys(b""), [])


class RulesTests(SynchronousTestCase):
    """
    Who of a group is notified, and what the gateway is told.
    """

    def test_groupRecipients(self) -> None:
        """
        Group members are notified when they are not the sender, have a
        pushkey, have no connected device, and did not mute the group
        unless mentioned.
        """
        members = ["alice", "bob", "carol", "dave", "erin", "frank"]
        pushUsers = {"alice", "bob", "carol", "dave", "frank"}
        online = {"carol"}
        mutes = {("dave", "g1"), ("frank", "g1"), ("bob", "other")}
        self.assertEqual(
            groupRecipients(members, "g1", "alice", pushUsers, online.__contains__, mutes, set()),
            ("bob",),
        )
        self.assertEqual(
            groupRecipients(members, "g1", "alice", pushUsers, online.__contains__, mutes, {"dave", "carol", "erin"}),
            ("bob", "dave"),
        )

    def test_directBody(self) -> None:
        """
        A 1:1 notification: the message's id, the peer as room, the
        sender, the count, each device with its pushkey_ts in seconds and
        its data; no content by default.
        """
        body = notificationBody(plan(stored(7)), CONTENT_NONE)
        self.assertEqual(
            body,
            {
                "notification": {
                    "event_id": "m7",
                    "room_id": "alice",
                    "type": "crm_im.message",
                    "sender": "alice",
                    "sender_display_name": "Alice",
                    "prio": "high",
                    "counts": {"unread": 1},
                    "devices": [
                        {"app_id": "com.example.app", "pushkey": "pk-bob", "pushkey_ts": 1_700_000_123, "data": {"url": "x"}}
                    ],
                }
            },
        )

    def test_groupBody(self) -> None:
        """
        A group notification names the group and its name; with several
        messages it is about the latest, the count covering all.
        """
        body = notificationBody(plan(stored(3, groupId="g1"), stored(9, groupId="g1"), unread=5, names={"g1": "Team"}), CONTENT_NONE)
        notification = body["notification"]
        self.assertEqual(
            (notification["event_id"], notification["room_id"], notification["room_name"], notification["counts"]),
            ("m9", "g1", "Team", {"unread": 5}),
        )

    def test_preview(self) -> None:
        """
        With C{preview} a text carries its first 100 characters and a file
        its name; system messages (and any other kind, such as an
        encrypted one) carry none. Without it, nothing does.
        """
        text = "前" * 150
        body = notificationBody(plan(stored(1, content=text)), CONTENT_PREVIEW)
        self.assertEqual(body["notification"]["content"], {"msgtype": "text", "body": "前" * 100})
        body = notificationBody(plan(stored(1, type="file", content="a.pdf", fileName="a.pdf")), CONTENT_PREVIEW)
        self.assertEqual(body["notification"]["content"], {"msgtype": "file", "body": "a.pdf"})
        for kind in ("system", "encrypted"):
            self.assertNotIn("content", notificationBody(plan(stored(1, type=kind)), CONTENT_PREVIEW)["notification"])
        self.assertNotIn("content", notificationBody(plan(stored(1, content=text)), CONTENT_NONE)["notification"])

    def test_signature(self) -> None:
        """
        The signature header is C{sha256=} and the hex HMAC-SHA256 of the
        body under the secret.
        """
        body = b'{"notification":{}}'
        expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
        self.assertEqual(signature(b"s3cret", body), b"sha256=" + expected.encode())

    def test_settingsHideSecret(self) -> None:
        """
        The secret is kept out of the settings' C{repr} (logs).
        """
        self.assertNotIn("s3cret", repr(PushSettings(GATEWAY, secret=b"s3cret")))


class FakeGateway:
    """
    An L{IGatewayClient} whose requests wait until the test answers them.

    @ivar requests: C{(body, Deferred)} of every request, in order.
    """

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, Any], Deferred[GatewayAnswer]]] = []
        self.closed = 0

    def post(self, body: bytes) -> Deferred[GatewayAnswer]:
        """
        Keep the request; the test answers it.
        """
        d: Deferred[GatewayAnswer] = Deferred()
        self.requests.append((orjson.loads(body), d))
        return d

    def close(self) -> Deferred[None]:
        """
        Count closes.
        """
        self.closed += 1
        done: Deferred[None] = Deferred()
        done.callback(None)
        return done

    @property
    def pending(self) -> list[tuple[dict[str, Any], Deferred[GatewayAnswer]]]:
        """
        Requests not answered yet.
        """
        return [(body, d) for body, d in self.requests if not d.called]

    def answer(self, code: int = 200, body: bytes = b"{}", retryAfter: float | None = None) -> dict[str, Any]:
        """
        Answer the oldest pending request.

        @return: its body.
        """
        notification, d = self.pending[0]
        d.callback(GatewayAnswer(code, body, retryAfter))
        return notification

    def fail(self) -> dict[str, Any]:
        """
        Fail the oldest pending request like a refused connection.
        """
        notification, d = self.pending[0]
        d.errback(ConnectionRefusedError())
        return notification


class PushTestCase(SynchronousTestCase):
    """
    An L{IMCore} with push enabled on a memory store, a L{Presence} and a
    L{Clock}; a L{PushSender} to a L{FakeGateway}. Online: alice on a1,
    carol on c1; bob, dave and erin are offline. bob, carol and dave have
    pushkeys (bob two); erin none.
    """

    grace = 0.0
    coalesce = 1.0
    settings: dict[str, Any] = {}

    def setUp(self) -> None:
        """
        Build the core and the sender; register the pushkeys.
        """
        self.clock = Clock()
        self.clock.advance(START)
        self.store = MemoryMessageStore()
        self.presence = Presence(self.clock, grace=self.grace)
        self.presence.start()
        self.addCleanup(self.presence.stop)
        self.router = RecordingRouter(self.presence)
        self.core = IMCore(self.store, None, self.presence, self.router, self.clock, IMSettings(logEvents=False))  # type: ignore[arg-type]
        self.gateway = FakeGateway()
        self.registry = CollectorRegistry()
        self.metrics = PushMetrics(self.registry)
        self.random = 0.0
        self.sender = self.makeSender()
        self.core.enablePush(self.sender)
        self.answer(self.sender.start())
        for userId, device in (("alice", "a1"), ("carol", "c1"), ("bob", "b1"), ("dave", "d1"), ("erin", "e1")):
            self.presence.login(userId, device, userId.title(), None)
        for userId, device, pushkey in (("bob", "b1", "pk-bob-1"), ("bob", "b1", "pk-bob-2"), ("carol", "c1", "pk-carol"), ("dave", "d1", "pk-dave")):
            self.answer(self.core.push.register(self.caller(device), {"pushkey": pushkey, "appId": "com.example.app", "data": {"format": "event_id_only"}}))
            self.clock.advance(1)
        for device in ("b1", "d1", "e1"):
            self.presence.logout(device)
        self.clock.advance(self.grace)

    def makeSender(self) -> PushSender:
        """
        A sender on the test's store, presence, clock, gateway and metrics.
        """
        return PushSender(
            self.store,
            self.presence,
            self.core.pushDirectory,
            self.clock,
            PushSettings(GATEWAY, coalesce=self.coalesce, grace=self.grace, **self.settings),
            self.gateway,
            self.metrics,
            random=lambda: self.random,
        )

    def caller(self, device: str) -> Caller:
        """
        The caller logged in on C{device}.
        """
        return self.core.sessions.caller(device)

    def answer(self, result: Any) -> Any:
        """
        The result of a handler or coroutine that must have finished.
        """
        if inspect.iscoroutine(result):
            result = Deferred.fromCoroutine(result)
        if isinstance(result, Deferred):
            return self.successResultOf(result)
        return result

    def send(self, content: str = "hi", device: str = "a1", **where: Any) -> dict[str, Any]:
        """
        Send a message as the user of C{device}; return the receipt.
        """
        return self.answer(self.core.messaging.send(self.caller(device), dict(where, content=content)))

    def makeGroup(self, memberIds: list[str], id: str = "g1") -> None:
        """
        alice creates a group.
        """
        self.answer(self.core.groups.create(self.caller("a1"), {"name": "Team", "memberIds": memberIds, "id": id}))

    def outbox(self) -> list[tuple[str, int]]:
        """
        The outbox rows, sorted.
        """
        return sorted(self.store.outbox)

    def sample(self, name: str, **labels: str) -> float | None:
        """
        A metric's value from the registry.
        """
        return self.registry.get_sample_value(name, labels)


class RegistrationTests(PushTestCase):
    """
    C{push:register}, C{push:unregister} and C{group:mute}.
    """

    def test_register(self) -> None:
        """
        A registration is acknowledged with its pushkey, durable, and
        makes its user one to notify.
        """
        self.assertEqual(self.core.push.store.pushkeys["pk-carol"].userId, "carol")  # type: ignore[union-attr]
        self.assertEqual(self.core.pushDirectory.users, {"bob", "carol", "dave"})
        self.assertIs(self.core.messaging.pushUsers, self.core.pushDirectory.users)

    def test_invalid(self) -> None:
        """
        A registration without pushkey or appId, with a pushkey too long or
        data that is no object or too big, is refused with
        C{INVALID_PAYLOAD}.
        """
        caller = self.caller("a1")
        for bad in (
            {"appId": "x"},
            {"pushkey": "k"},
            {"pushkey": "", "appId": "x"},
            {"pushkey": "k" * 513, "appId": "x"},
            {"pushkey": "k", "appId": "x", "data": [1]},
            {"pushkey": "k", "appId": "x", "data": {"big": "x" * 3000}},
            "k",
        ):
            failure = self.failureResultOf(Deferred.fromCoroutine(self.core.push.register(caller, bad)), IMError)
            self.assertEqual(failure.value.code, INVALID_PAYLOAD, bad)
        self.assertNotIn("alice", self.core.pushDirectory.users)

    def test_movesAndUnregister(self) -> None:
        """
        A pushkey registered by another user moves to them (a phone
        changed hands); unregistering the last pushkey makes the user one
        not to notify.
        """
        self.answer(self.core.push.register(self.caller("a1"), {"pushkey": "pk-dave", "appId": "com.example.app"}))
        self.assertEqual(self.core.pushDirectory.users, {"alice", "bob", "carol"})
        self.assertEqual(self.answer(self.core.push.unregister(self.caller("c1"), {"pushkey": "pk-carol"})), {"pushkey": "pk-carol"})
        self.assertEqual(self.core.pushDirectory.users, {"alice", "bob"})
        # someone else's pushkey is not theirs to unregister
        self.answer(self.core.push.unregister(self.caller("c1"), {"pushkey": "pk-bob-1"}))
        self.assertIn("pk-bob-1", self.store.pushkeys)

    def test_limit(self) -> None:
        """
        Past 10 pushkeys a user's oldest are dropped.
        """
        for n in range(12):
            self.answer(self.core.push.register(self.caller("c1"), {"pushkey": f"k{n}", "appId": "a"}))
            self.clock.advance(1)
        keys = sorted(k.pushkey for k in self.store.pushkeys.values() if k.userId == "carol")
        self.assertEqual(keys, sorted(f"k{n}" for n in range(2, 12)))

    def test_mute(self) -> None:
        """
        A member mutes and unmutes a group; a stranger cannot, and an
        unknown group is not found.
        """
        self.makeGroup(["carol"])
        self.assertEqual(self.answer(self.core.push.mute(self.caller("c1"), {"groupId": "g1", "muted": True})), {"groupId": "g1", "muted": True})
        self.assertIn(("carol", "g1"), self.core.messaging.pushMutes)
        self.assertEqual(self.store.mutes, {("carol", "g1")})
        self.answer(self.core.push.mute(self.caller("c1"), {"groupId": "g1", "muted": False}))
        self.assertEqual(self.store.mutes, set())
        self.presence.login("zed", "z1", "Zed", None)
        codes = []
        for device, data in (("z1", {"groupId": "g1"}), ("c1", {"groupId": "nope"}), ("c1", {"groupId": "g1", "muted": "yes"})):
            codes.append(self.failureResultOf(Deferred.fromCoroutine(self.core.push.mute(self.caller(device), data)), IMError).value.code)
        self.assertIn(codes[0], (FORBIDDEN, NOT_FOUND))
        self.assertEqual(codes[1:], [NOT_FOUND, INVALID_PAYLOAD])

    def test_muteGoesWithMembership(self) -> None:
        """
        A member's mute of a group goes, in memory and in the store, when
        they leave it, are removed from it, or it is dissolved; others'
        mutes stay until then. Someone who joins again starts unmuted.
        """
        self.makeGroup(["bob", "carol", "dave"])
        for userId, device in (("bob", "b1"), ("dave", "d1")):
            self.presence.login(userId, device, userId.title(), None)
        for device in ("a1", "b1", "c1", "d1"):
            self.answer(self.core.push.mute(self.caller(device), {"groupId": "g1"}))
        self.answer(self.core.groups.leave(self.caller("b1"), {"groupId": "g1"}))
        self.answer(self.core.groups.removeMembers(self.caller("a1"), {"groupId": "g1", "userIds": ["carol"]}))
        expected = {("alice", "g1"), ("dave", "g1")}
        self.assertEqual(self.store.mutes, expected)
        self.assertEqual(set(self.core.pushDirectory.mutes), expected)
        self.answer(self.core.groups.addMembers(self.caller("a1"), {"groupId": "g1", "userIds": ["carol"]}))
        self.assertNotIn(("carol", "g1"), self.core.messaging.pushMutes)
        self.answer(self.core.groups.dissolve(self.caller("a1"), {"groupId": "g1"}))
        self.assertEqual(self.store.mutes, set())
        self.assertEqual(set(self.core.pushDirectory.mutes), set())

    def test_mutesOfAnEarlierRunGo(self) -> None:
        """
        With push off the directory is not loaded at start, so it does not
        know the mutes an earlier run stored: those of members who go are
        deleted in the store all the same (dissolving deletes every
        member's), and nobody else's.
        """
        self.makeGroup(["bob", "carol", "dave"])
        self.presence.login("bob", "b1", "Bob", None)
        self.core.pushDirectory.loaded = False
        self.store.mutes.update({("bob", "g1"), ("carol", "g1"), ("carol", "other"), ("dave", "g1")})
        self.answer(self.core.groups.leave(self.caller("b1"), {"groupId": "g1"}))
        self.assertEqual(self.store.mutes, {("carol", "g1"), ("carol", "other"), ("dave", "g1")})
        self.answer(self.core.groups.dissolve(self.caller("a1"), {"groupId": "g1"}))
        self.assertEqual(self.store.mutes, {("carol", "other")})

    def test_lastMemberLeaves(self) -> None:
        """
        The last member leaving dissolves the group: their mute goes too.
        """
        self.makeGroup([])
        self.answer(self.core.push.mute(self.caller("a1"), {"groupId": "g1"}))
        self.answer(self.core.groups.leave(self.caller("a1"), {"groupId": "g1"}))
        self.assertEqual(self.store.mutes, set())
        self.assertEqual(set(self.core.pushDirectory.mutes), set())


class DecisionTests(PushTestCase):
    """
    Who is notified, when, and with what count.
    """

    def test_offlineNotifiedOnce(self) -> None:
        """
        A message to an offline user with pushkeys writes an outbox row
        with it; once the coalescing window is over the user is notified
        once, on every pushkey, with the unread count; the row goes.
        """
        receipt = self.send(toId="bob")
        self.assertEqual(receipt["status"], "offline")
        self.assertEqual(len(self.outbox()), 1)
        self.clock.advance(0.999)
        self.assertEqual(self.gateway.requests, [])
        self.clock.advance(0.001)
        notification = self.gateway.answer()["notification"]
        self.assertEqual([d["pushkey"] for d in notification["devices"]], ["pk-bob-1", "pk-bob-2"])
        self.assertEqual((notification["counts"], notification["sender"], notification["room_id"]), ({"unread": 1}, "alice", "alice"))
        self.assertEqual(self.outbox(), [])
        self.clock.advance(3600)
        self.assertEqual(len(self.gateway.requests), 1)
        self.assertEqual(self.sample("crm_im_push_sent_total"), 1.0)
        self.assertEqual(self.sample("crm_im_push_outbox_depth"), 0.0)

    def test_onlineNotNotified(self) -> None:
        """
        A user with a connected device is not notified, and nothing is
        written for them; nor is an offline user without pushkeys, nor the
        sender writing to themself.
        """
        self.send(toId="carol")
        self.send(toId="erin")
        self.send(toId="alice")
        self.assertEqual(self.outbox(), [])
        self.clock.advance(10)
        self.assertEqual(self.gateway.requests, [])

    def test_coalescing(self) -> None:
        """
        Messages within the window make one notification about the
        latest, counting them all; one after it makes another.
        """
        for n in range(3):
            self.send(f"#{n}", toId="bob")
            self.clock.advance(0.3)
        self.clock.advance(0.2)
        notification = self.gateway.answer()["notification"]
        self.assertEqual(notification["counts"], {"unread": 3})
        self.assertEqual(len(self.gateway.requests), 1)
        self.send("#3", toId="bob")
        self.clock.advance(1)
        self.assertEqual(self.gateway.answer()["notification"]["counts"], {"unread": 4})
        self.assertEqual(self.sample("crm_im_push_sent_total"), 2.0)

    def test_coalescingPerUser(self) -> None:
        """
        Each user gets a notification of their own.
        """
        self.send(toId="bob")
        self.send(toId="dave")
        self.send(toId="bob")
        self.clock.advance(1)
        bodies = [self.gateway.answer()["notification"] for _ in range(2)]
        self.assertEqual(
            sorted((n["devices"][0]["pushkey"], n["counts"]["unread"]) for n in bodies),
            [("pk-bob-1", 2), ("pk-dave", 1)],
        )

    def test_arrivesDuringRequest(self) -> None:
        """
        A message arriving while a user's request is in flight makes one
        more notification after it, not a second request at once.
        """
        self.send(toId="bob")
        self.clock.advance(1)
        self.send(toId="bob")
        self.clock.advance(5)
        self.assertEqual(len(self.gateway.requests), 1)
        self.gateway.answer()
        self.clock.advance(1)
        self.assertEqual(self.gateway.answer()["notification"]["counts"], {"unread": 2})

    def test_reconnectedNotNotified(self) -> None:
        """
        A user whose device connects within the window is not notified
        (the offline queue tells them); their rows go, counted as skipped.
        """
        self.send(toId="bob")
        self.send(toId="bob")
        self.presence.login("bob", "b1", "Bob", None)
        self.clock.advance(1)
        self.assertEqual(self.gateway.requests, [])
        self.assertEqual(self.outbox(), [])
        self.assertEqual(self.sample("crm_im_push_skipped_total", reason="online"), 2.0)

    def test_readMeanwhile(self) -> None:
        """
        Messages delivered to another device (which went away again) before
        the window ended are not notified.
        """
        receipt = self.send(toId="bob", id="x1")
        self.assertEqual(receipt["status"], "offline")
        (seq,) = [seq for _, seq in self.outbox()]
        self.answer(self.store.markDelivered([seq]))
        self.clock.advance(1)
        self.assertEqual(self.gateway.requests, [])
        self.assertEqual(self.outbox(), [])
        self.assertEqual(self.sample("crm_im_push_skipped_total", reason="read"), 1.0)

    def test_recalledMeanwhile(self) -> None:
        """
        A message recalled before the window ended is not notified.
        """
        receipt = self.send(toId="bob", id="x1")
        self.assertEqual(receipt["status"], "offline")
        self.answer(self.core.messaging.recall(self.caller("a1"), {"messageId": "x1"}))
        self.clock.advance(1)
        self.assertEqual(self.gateway.requests, [])

    def test_unreadCounts(self) -> None:
        """
        The count is the 1:1 offline queue plus, in every group, the
        messages of others past the user's read cursor.
        """
        self.makeGroup(["bob", "carol"])
        self.makeGroup(["bob"], id="g2")
        self.send(toId="bob")
        self.send(toId="bob")
        for n in range(3):
            self.send(f"g{n}", groupId="g1")
        receipt = self.send("g2", groupId="g2")
        self.answer(self.store.moveReadCursor(groupConversation("g1"), "bob", 0))
        self.clock.advance(1)
        notification = self.gateway.answer()["notification"]
        self.assertEqual((notification["counts"], notification["room_id"], notification["room_name"]), ({"unread": 6}, "g2", "Team"))
        # a read cursor moved past the first two group messages lowers it
        self.send(toId="bob")
        page = self.successResultOf(self.store.conversationHistory(groupConversation("g1"), 100, None, None))
        texts = [m for m in page.messages if m.type == "text"]
        self.answer(self.store.moveReadCursor(groupConversation("g1"), "bob", texts[1].seq))
        self.assertTrue(receipt["seq"] > texts[1].seq)
        self.clock.advance(1)
        self.assertEqual(self.gateway.answer()["notification"]["counts"], {"unread": 5})

    def test_groupMembers(self) -> None:
        """
        A group message notifies its offline members with pushkeys, not
        the online one, not the sender, not one without pushkeys.
        """
        self.makeGroup(["bob", "carol", "dave", "erin"])
        self.send(groupId="g1")
        self.assertEqual(sorted(user for user, _ in self.outbox()), ["bob", "dave"])
        self.clock.advance(1)
        pushkeys = sorted(self.gateway.answer()["notification"]["devices"][0]["pushkey"] for _ in range(2))
        self.assertEqual(pushkeys, ["pk-bob-1", "pk-dave"])

    def test_groupReadMeanwhile(self) -> None:
        """
        A group message the member read (their cursor passed it) before
        the window ended is not notified.
        """
        self.makeGroup(["bob"])
        receipt = self.send(groupId="g1")
        self.answer(self.store.moveReadCursor(groupConversation("g1"), "bob", receipt["seq"]))
        self.clock.advance(1)
        self.assertEqual(self.gateway.requests, [])
        self.assertEqual(self.sample("crm_im_push_skipped_total", reason="read"), 1.0)

    def test_mutedGroup(self) -> None:
        """
        A member who muted a group is notified only of messages that
        mention them.
        """
        self.makeGroup(["bob", "dave"])
        self.presence.login("dave", "d1", "Dave", None)
        self.answer(self.core.push.mute(self.caller("d1"), {"groupId": "g1", "muted": True}))
        self.presence.logout("d1")
        self.send("to all", groupId="g1")
        self.assertEqual([user for user, _ in self.outbox()], ["bob"])
        self.send("dave, look", groupId="g1", mentions=["dave"])
        self.assertEqual(sorted(user for user, _ in self.outbox()), ["bob", "bob", "dave"])
        self.clock.advance(1)
        bodies = {n["notification"]["devices"][0]["pushkey"]: n["notification"] for n in [self.gateway.answer(), self.gateway.answer()]}
        self.assertEqual(bodies["pk-dave"]["counts"], {"unread": 2})
        self.assertEqual(bodies["pk-bob-1"]["counts"], {"unread": 2})

    def test_leftGroupMeanwhile(self) -> None:
        """
        A member who left the group before the window ended is not
        notified of its messages.
        """
        self.makeGroup(["bob"])
        self.send(groupId="g1")
        self.presence.login("bob", "b9", "Bob", None)
        self.answer(self.core.groups.leave(self.caller("b9"), {"groupId": "g1"}))
        self.presence.logout("b9")
        self.clock.advance(1)
        self.assertEqual(self.gateway.requests, [])


class GraceTests(PushTestCase):
    """
    With a presence grace period, a user is notified only once it is over.
    """

    grace = 5.0

    def test_afterGrace(self) -> None:
        """
        A message for a user whose last device went within the grace
        period is notified once the grace period is over, not before.
        """
        self.presence.login("bob", "b1", "Bob", None)
        self.presence.logout("b1")
        self.clock.advance(1)
        self.send(toId="bob")
        self.clock.advance(4.5)
        self.assertEqual(self.gateway.requests, [])
        self.clock.advance(5)
        self.assertEqual(self.gateway.answer()["notification"]["counts"], {"unread": 1})

    def test_heldForRecovery(self) -> None:
        """
        A user held online for a connection recovery (120 s) past the
        grace period, with no device, is notified once the grace is over:
        a phone whose socket was cut as it went to sleep is who a push is
        for. (It was held back for the whole recovery window.)
        """
        self.presence.login("bob", "b1", "Bob", None)
        self.presence.logout("b1", hold=120)
        self.send(toId="bob")
        self.clock.advance(4.9)
        self.assertEqual(self.gateway.requests, [])
        self.clock.advance(0.2)
        self.assertEqual(self.gateway.answer()["notification"]["counts"], {"unread": 1})
        self.assertIsNotNone(self.presence.user("bob"))

    def test_backWithinGrace(self) -> None:
        """
        A user back within the grace period is not notified.
        """
        self.presence.login("bob", "b1", "Bob", None)
        self.presence.logout("b1")
        self.send(toId="bob")
        self.clock.advance(2)
        self.presence.login("bob", "b2", "Bob", None)
        self.clock.advance(20)
        self.assertEqual(self.gateway.requests, [])
        self.assertEqual(self.outbox(), [])


class RecoveryHoldTests(PushTestCase):
    """
    Without a presence grace, a user held only for a connection recovery.
    """

    def test_notifiedAfterWindow(self) -> None:
        """
        Notified after the coalescing window, as an offline user (the
        sender put the decision off by a millisecond at a time for the
        whole hold, waking up a thousand times a second).
        """
        self.presence.login("bob", "b1", "Bob", None)
        self.presence.logout("b1", hold=120)
        self.send(toId="bob")
        self.clock.advance(1)
        self.assertEqual(self.gateway.answer()["notification"]["counts"], {"unread": 1})


class ContentTests(PushTestCase):
    """
    C{--push-content preview}.
    """

    settings = {"content": CONTENT_PREVIEW}

    def test_preview(self) -> None:
        """
        The notification carries the first 100 characters of the latest
        text.
        """
        self.send("x" * 300, toId="bob")
        self.clock.advance(1)
        self.assertEqual(self.gateway.answer()["notification"]["content"], {"msgtype": "text", "body": "x" * 100})


class RetryTests(PushTestCase):
    """
    How the sender takes gateway failures.
    """

    def notifyBob(self) -> None:
        """
        A message to bob, and the window's end: the first request is out.
        """
        self.send(toId="bob")
        self.clock.advance(1)
        self.assertEqual(len(self.gateway.pending), 1)

    def test_backoff(self) -> None:
        """
        5xx, 429 and network errors are retried after 1, 2, 4, 8 s (no
        jitter drawn here); the row stays until a request succeeds.
        """
        self.notifyBob()
        for failure, delay in ((lambda: self.gateway.answer(500)), 1.0), ((lambda: self.gateway.answer(429)), 2.0), (self.gateway.fail, 4.0), ((lambda: self.gateway.answer(503)), 8.0):
            failure()
            self.clock.advance(delay - 0.01)
            self.assertEqual(self.gateway.pending, [])
            self.clock.advance(0.01)
            self.assertEqual(len(self.gateway.pending), 1)
        self.assertEqual(len(self.outbox()), 1)
        self.gateway.answer(200)
        self.assertEqual(self.outbox(), [])
        self.assertEqual(len(self.gateway.requests), 5)
        self.assertEqual((self.sample("crm_im_push_retried_total"), self.sample("crm_im_push_sent_total")), (4.0, 1.0))
        # a later failure starts the schedule again from 1 s
        self.notifyBob()
        self.gateway.answer(500)
        self.clock.advance(1)
        self.assertEqual(len(self.gateway.pending), 1)

    def test_jitter(self) -> None:
        """
        The drawn jitter shortens the delay.
        """
        self.random = 0.8
        self.notifyBob()
        self.gateway.answer(500)
        self.clock.advance(0.79)
        self.assertEqual(self.gateway.pending, [])
        self.clock.advance(0.01)
        self.assertEqual(len(self.gateway.pending), 1)

    def test_retryAfter(self) -> None:
        """
        A 429 with C{Retry-After} waits that long (at most 10 minutes).
        """
        self.notifyBob()
        self.gateway.answer(429, retryAfter=30)
        self.clock.advance(29)
        self.assertEqual(self.gateway.pending, [])
        self.clock.advance(1)
        self.gateway.answer(429, retryAfter=10**6)
        self.clock.advance(MAX_RETRY_DELAY - 1)
        self.assertEqual(self.gateway.pending, [])
        self.clock.advance(1)
        self.assertEqual(len(self.gateway.pending), 1)

    def test_retryCoalesces(self) -> None:
        """
        Messages arriving while a retry waits ride with it: one request,
        the count covering them.
        """
        self.notifyBob()
        self.gateway.answer(502)
        self.send(toId="bob")
        self.send(toId="bob")
        self.clock.advance(1)
        self.assertEqual(self.gateway.answer()["notification"]["counts"], {"unread": 3})
        self.clock.advance(60)
        self.assertEqual(self.gateway.pending, [])

    def test_giveUp(self) -> None:
        """
        A notification still failing 24 h after its message is given up:
        its rows are deleted and counted as dropped (expired).
        """
        self.notifyBob()
        attempts = 1
        while self.gateway.pending:
            self.gateway.answer(500)
            self.clock.advance(MAX_RETRY_DELAY)
            attempts += 1
        self.assertTrue(24 * 3600 / MAX_RETRY_DELAY <= attempts <= 24 * 3600 / MAX_RETRY_DELAY + 12, attempts)
        self.assertEqual(self.outbox(), [])
        self.assertEqual(self.sample("crm_im_push_dropped_total", reason="expired"), 1.0)
        self.assertEqual(self.sample("crm_im_push_sent_total"), 0.0)

    def test_refused(self) -> None:
        """
        A 4xx other than 429 is not retried: the rows are dropped and
        counted (refused).
        """
        self.notifyBob()
        self.gateway.answer(400, b'{"error": "bad"}')
        self.clock.advance(3600)
        self.assertEqual(len(self.gateway.requests), 1)
        self.assertEqual(self.outbox(), [])
        self.assertEqual(self.sample("crm_im_push_dropped_total", reason="refused"), 1.0)

    def test_rejectedPushkeys(self) -> None:
        """
        The pushkeys a gateway rejects are deleted (only the user's own);
        a user left with none is not notified again, nor written for.
        """
        self.notifyBob()
        self.gateway.answer(200, b'{"rejected": ["pk-bob-1", "pk-dave"]}')
        self.assertEqual(sorted(self.store.pushkeys), ["pk-bob-2", "pk-carol", "pk-dave"])
        self.assertEqual(self.sample("crm_im_push_rejected_pushkeys_total"), 1.0)
        self.notifyBob()
        self.assertEqual([d["pushkey"] for d in self.gateway.pending[0][0]["notification"]["devices"]], ["pk-bob-2"])
        self.gateway.answer(200, b'{"rejected": ["pk-bob-2"]}')
        self.assertNotIn("bob", self.core.pushDirectory.users)
        self.send(toId="bob")
        self.assertEqual(self.outbox(), [])

    def test_timeoutNeverBlocks(self) -> None:
        """
        While the gateway never answers, messages keep being stored and
        receipted at once; the rows wait in the outbox.
        """
        self.notifyBob()
        for n in range(50):
            self.assertEqual(self.send(f"#{n}", toId="bob")["status"], "offline")
            self.assertEqual(self.send(f"#{n}", toId="carol")["status"], "delivered")
        self.assertEqual(len(self.outbox()), 51)
        self.assertEqual(len(self.gateway.requests), 1)
        self.assertEqual(self.sample("crm_im_push_outbox_depth"), 51.0)


class BoundsTests(PushTestCase):
    """
    The outbox and the requests in flight are bounded.
    """

    settings = {"maxOutbox": 3, "concurrency": 2}

    def test_overflow(self) -> None:
        """
        Past the bound the outbox loses its oldest rows, counted as
        dropped (overflow).
        """
        for n in range(5):
            self.send(f"#{n}", toId="bob")
        self.assertEqual(len(self.outbox()), 3)
        self.assertEqual([seq for _, seq in self.outbox()], sorted(seq for _, seq in self.outbox()))
        self.assertEqual(self.sample("crm_im_push_dropped_total", reason="overflow"), 2.0)
        self.assertEqual(self.sample("crm_im_push_outbox_depth"), 3.0)

    def test_concurrency(self) -> None:
        """
        At most C{concurrency} requests are in flight; the next goes when
        one finishes.
        """
        for userId in ("bob", "dave"):
            self.send(toId=userId)
        self.presence.login("zed", "z1", "Zed", None)
        self.answer(self.core.push.register(self.caller("z1"), {"pushkey": "pk-zed", "appId": "a"}))
        self.presence.logout("z1")
        self.send(toId="zed")
        self.clock.advance(1)
        self.assertEqual(len(self.gateway.pending), 2)
        self.gateway.answer()
        self.assertEqual(len(self.gateway.pending), 2)
        self.gateway.answer()
        self.gateway.answer()
        self.assertEqual(len(self.gateway.requests), 3)


class LifecycleTests(PushTestCase):
    """
    Restart and stop.
    """

    def test_restartSendsPending(self) -> None:
        """
        Rows left by a run that stopped (or crashed) are sent by the next
        sender once the window is over.
        """
        self.send(toId="bob")
        self.send(toId="dave")
        self.answer(self.sender.stop())
        self.assertEqual(self.gateway.closed, 1)
        self.clock.advance(10)
        self.assertEqual(self.gateway.requests, [])
        self.assertEqual(len(self.outbox()), 2)
        self.metrics = PushMetrics()
        sender = self.makeSender()
        self.answer(sender.start())
        self.assertEqual(sender.depth, 2)
        self.clock.advance(1)
        self.gateway.answer()
        self.gateway.answer()
        self.assertEqual(self.outbox(), [])
        self.assertEqual(sender.depth, 0)

    def test_stopCancels(self) -> None:
        """
        Stopping cancels the requests in flight; their rows stay.
        """
        self.send(toId="bob")
        self.clock.advance(1)
        (_, request), = self.gateway.pending
        self.answer(self.sender.stop())
        self.assertTrue(request.called)
        self.assertEqual(self.sender._attempts, set())
        self.assertEqual(len(self.outbox()), 1)
        self.clock.advance(3600)
        self.assertEqual(len(self.gateway.requests), 1)

    def test_stoppedWhileLoading(self) -> None:
        """
        A sender stopped while its start still reads the outbox schedules
        nothing once the read comes back: no timer outlives the stop, and
        the rows stay for the next start.
        """
        self.send(toId="bob")
        self.answer(self.sender.stop())
        self.metrics = PushMetrics()
        sender = self.makeSender()
        loading: Deferred[Any] = Deferred()
        loadPush = self.store.loadPush
        self.patch(self.store, "loadPush", lambda: loading)
        started = Deferred.fromCoroutine(sender.start())
        calls = len(self.clock.getDelayedCalls())
        self.answer(sender.stop())
        loadPush().chainDeferred(loading)
        self.answer(started)
        self.assertEqual(len(self.clock.getDelayedCalls()), calls)
        self.assertEqual(sender.depth, 0)
        self.assertEqual(len(self.outbox()), 1)


class SignedRequestTests(SynchronousTestCase):
    """
    L{GatewayClient} on the wire, through treq's L{StubTreq} and a real
    L{twisted.web} resource.
    """

    def client(
        self, code: int, headers: dict[bytes, bytes], secret: bytes | None
    ) -> tuple[GatewayClient, list[tuple[Request, bytes]]]:
        """
        A client whose requests reach a resource answering C{code}.
        """
        from treq.testing import StubTreq

        seen: list[tuple[Request, bytes]] = []

        class Gateway(Resource):
            isLeaf = True

            def render_POST(self, request: Request) -> bytes:
                assert request.content is not None
                seen.append((request, request.content.read()))
                request.setResponseCode(code)
                for name, value in headers.items():
                    request.setHeader(name, value)
                return b'{"rejected": []}'

        client = GatewayClient(Clock(), GATEWAY, secret, 10.0, 2)
        client.http = StubTreq(Gateway())  # type: ignore[assignment]
        return client, seen

    def test_signed(self) -> None:
        """
        With a secret the request carries C{X-CRM-IM-Signature}, the HMAC
        of the exact body; it is JSON.
        """
        client, seen = self.client(200, {}, b"s3cret")
        body = b'{"notification": {"devices": []}}'
        answer = self.successResultOf(client.post(body))
        self.assertEqual((answer.code, answer.body), (200, b'{"rejected": []}'))
        ((request, received),) = seen
        self.assertEqual(received, body)
        self.assertEqual(request.getHeader(b"x-crm-im-signature"), signature(b"s3cret", body))
        self.assertEqual(request.getHeader(b"content-type"), b"application/json")

    def test_unsigned(self) -> None:
        """
        Without a secret there is no signature header.
        """
        client, seen = self.client(200, {}, None)
        self.successResultOf(client.post(b"{}"))
        self.assertIsNone(seen[0][0].getHeader(b"x-crm-im-signature"))

    def test_retryAfter(self) -> None:
        """
        C{Retry-After} in seconds is read; a date or garbage is ignored.
        """
        for value, expected in ((b"12", 12.0), (b"Wed, 21 Oct 2015 07:28:00 GMT", None)):
            client, _ = self.client(429, {b"Retry-After": value}, None)
            answer = self.successResultOf(client.post(b"{}"))
            self.assertEqual((answer.code, answer.retryAfter), (429, expected))

    def test_timeout(self) -> None:
        """
        A gateway that never answers fails the request after the timeout.
        """
        from twisted.internet.defer import TimeoutError as DeferTimeout

        clock = Clock()
        client = GatewayClient(clock, GATEWAY, None, 10.0, 2)
        never: Deferred[Any] = Deferred()
        client.http = type("Never", (), {"post": lambda self, *a, **k: never})()
        d = client.post(b"{}")
        clock.advance(9.9)
        self.assertNoResult(d)
        clock.advance(0.1)
        self.failureResultOf(d, DeferTimeout)


class PublishTests(PushTestCase):
    """
    Events a back end stores with C{POST /api/publish} notify too, named
    by the event.
    """

    def setUp(self) -> None:
        """
        The admin handlers on the test's core.
        """
        from crm_im.im.admin import Actor, AdminHandlers
        from crm_im.storage.admin import MemoryAdminStore

        super().setUp()
        self.admin = AdminHandlers(self.core, MemoryAdminStore(self.store), self.clock, node="n1")
        self.actor = Actor("token", "127.0.0.1")

    def test_toUsers(self) -> None:
        """
        A stored event to users notifies the offline ones with pushkeys;
        the notification's type is the event's name, its sender the admin.
        """
        answer = self.answer(self.admin.publish(self.actor, {
            "event": "crm:order_paid", "data": {"orderId": 7}, "userIds": ["bob", "carol", "erin"], "store": True}))
        self.assertEqual(answer["delivered"], 1)
        self.assertEqual([user for user, _ in self.outbox()], ["bob"])
        self.clock.advance(1)
        notification = self.gateway.answer()["notification"]
        self.assertEqual((notification["type"], notification["counts"]), ("crm:order_paid", {"unread": 1}))
        self.assertNotIn("content", notification)

    def test_notStored(self) -> None:
        """
        An event not stored notifies nobody (nothing would be unread).
        """
        self.answer(self.admin.publish(self.actor, {"event": "crm:ping", "userIds": ["bob"]}))
        self.assertEqual(self.outbox(), [])

    def test_toGroup(self) -> None:
        """
        A stored event to a group notifies its offline members with
        pushkeys who did not mute it.
        """
        self.makeGroup(["bob", "carol", "dave"])
        self.presence.login("dave", "d1", "Dave", None)
        self.answer(self.core.push.mute(self.caller("d1"), {"groupId": "g1", "muted": True}))
        self.presence.logout("d1")
        self.answer(self.admin.publish(self.actor, {"event": "crm:deal_won", "groupId": "g1", "store": True}))
        self.assertEqual([user for user, _ in self.outbox()], ["bob"])
        self.clock.advance(1)
        notification = self.gateway.answer()["notification"]
        self.assertEqual((notification["type"], notification["room_id"]), ("crm:deal_won", "g1"))


class StartOverBoundTests(PushTestCase):
    """
    A sender started with a smaller bound than the outbox holds.
    """

    def test_trimmedAtStart(self) -> None:
        """
        Rows left past the new bound are dropped at start, oldest first,
        counted as overflow.
        """
        for n in range(5):
            self.send(f"#{n}", toId="bob")
        self.answer(self.sender.stop())
        self.settings = {"maxOutbox": 2}
        sender = self.makeSender()
        self.answer(sender.start())
        self.assertEqual(len(self.outbox()), 2)
        self.assertEqual((sender.depth, self.sample("crm_im_push_dropped_total", reason="overflow")), (2, 3.0))


class OptionsTests(SynchronousTestCase):
    """
    The C{--push-*} options of C{twistd crm_im}.
    """

    def parse(self, *args: str) -> Any:
        """
        The L{Config} of these options.
        """
        from crm_im.tap import Options

        options = Options()
        options.parseOptions(list(args))
        return options.config

    def test_off(self) -> None:
        """
        Without C{--push-gateway} push is off (the defaults of PUSH.md
        stand ready).
        """
        config = self.parse()
        self.assertEqual(
            (config.pushGateway, config.pushSecret, config.pushCoalesce, config.pushContent, config.pushMaxOutbox),
            (None, None, 1.0, "none", 100_000),
        )

    def test_on(self) -> None:
        """
        Every option reaches the config; the secret may come from
        C{$CRM_IM_PUSH_SECRET} instead.
        """
        config = self.parse(
            "--push-gateway", "https://sygnal.example/_matrix/push/v1/notify", "--push-coalesce-ms", "250",
            "--push-content", "preview", "--push-concurrency", "4", "--push-timeout", "3", "--push-max-outbox", "50",
            "--push-secret", "s3cret",
        )
        self.assertEqual(
            (config.pushGateway, config.pushSecret, config.pushCoalesce, config.pushContent,
             config.pushConcurrency, config.pushTimeout, config.pushMaxOutbox),
            ("https://sygnal.example/_matrix/push/v1/notify", "s3cret", 0.25, "preview", 4, 3.0, 50),
        )
        self.patch(os, "environ", dict(os.environ, CRM_IM_PUSH_SECRET="from-env"))
        self.assertEqual(self.parse("--push-gateway", "http://g/").pushSecret, "from-env")

    def test_refused(self) -> None:
        """
        A gateway that is no http(s) URL, an unknown content mode and a
        bound that is not positive are refused.
        """
        from twisted.python.usage import UsageError

        for args in (
            ("--push-gateway", "sygnal:5000"),
            ("--push-content", "full"),
            ("--push-max-outbox", "0"),
            ("--push-concurrency", "-1"),
        ):
            self.assertRaises(UsageError, self.parse, *args)
