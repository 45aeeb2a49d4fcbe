"""
Unit tests of the back office's transport-free parts: L{AdminHandlers} on
the in-memory store, a L{Presence}, a L{Clock} and the recording router of
L{tests.test_im_handlers} (bans and their end, the login refusal, kick,
publish through the L{IRouter} and C{store: true}, the per-minute counts,
the users seen, the audit log's paging), and L{AdminAuthenticator}'s
answers and rate limit. The HTTP API, the page and the Admin UI are tested
end to end in C{tests/integration/test_admin_*.py}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from crm_im.auth import AuthenticationError, Claims
from crm_im.im.admin import Actor, AdminHandlers
from crm_im.im.reserved import reservedEvent
from crm_im.im.core import IMCore, IMSettings
from crm_im.im.errors import FORBIDDEN, INVALID_PAYLOAD, NOT_FOUND, IMError
from crm_im.presence import Presence
from crm_im.rest.auth import AdminAuthenticator, AdminRefused, bearerToken
from crm_im.storage.admin import MemoryAdminStore
from crm_im.storage.memory import MemoryMessageStore
from tests.test_im_handlers import START, RecordingRouter

ACTOR = Actor("token", "10.0.0.1")


def done(result: Any) -> Any:
    """
    The value of a coroutine or L{Deferred} that must have finished (the
    memory store answers at once).
    """
    from twisted.internet.defer import Deferred, ensureDeferred

    d = ensureDeferred(result) if not isinstance(result, Deferred) else result
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, f"{result!r} did not finish"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]


class HandlerTests(SynchronousTestCase):
    """
    L{AdminHandlers} on the memory store.
    """

    def setUp(self) -> None:
        """
        A core with alice on two devices and bob on one, the admin
        handlers wired as the server does (admission and watcher).
        """
        self.clock = Clock()
        self.clock.advance(START)
        self.store = MemoryMessageStore()
        self.presence = Presence(self.clock)
        self.router = RecordingRouter(self.presence)
        self.core = IMCore(self.store, None, self.presence, self.router, self.clock,  # type: ignore[arg-type]
                           IMSettings(logEvents=False))
        self.adminStore = MemoryAdminStore(self.store)
        self.admin = AdminHandlers(self.core, self.adminStore, self.clock, node="n1")
        self.core.sessions.admission = self.admin.admission
        self.core.sessions.watchers.append(self.admin)
        done(self.admin.start())
        self.addCleanup(self.admin.stop)
        for userId, device in (("alice", "a1"), ("alice", "a2"), ("bob", "b1")):
            self.login(device, userId)

    def login(self, device: str, userId: str) -> Any:
        """
        C{user:login} on C{device}, through the session handlers.
        """
        self.core.sessions.connected(device, None, "127.0.0.1")
        return self.core.sessions.login(device, "127.0.0.1", {"id": userId, "name": userId.title()})

    def test_banRefusesAndKicks(self) -> None:
        """
        A ban kicks every device of the user now (C{server:kick} with the
        reason, then disconnect) and refuses their next login with
        C{FORBIDDEN}; an unban lets them in; both are audited.
        """
        answer = done(self.admin.ban(ACTOR, "alice", {"reason": "spam"}))
        self.assertEqual(answer["devices"], 2)
        (kick,) = self.router.events("server:kick")
        self.assertEqual((kick.devices, kick.payload["reason"]), (frozenset({"a1", "a2"}), "spam"))
        self.assertEqual(sorted(self.router.closed), ["a1", "a2"])
        for device in ("a1", "a2"):
            self.core.sessions.disconnected(device, "server namespace disconnect")
        error = self.assertRaises(IMError, self.login, "a3", "alice")
        self.assertEqual(error.code, FORBIDDEN)
        self.assertIsNone(self.presence.user("alice"))
        done(self.admin.unban(ACTOR, "alice"))
        self.login("a3", "alice")
        self.assertEqual(self.presence.devicesOf("alice"), {"a3"})
        self.assertEqual([e.action for e in self.adminStore.audit], ["user.ban", "user.unban"])
        self.assertEqual(self.adminStore.banned, {})

    def test_banUntil(self) -> None:
        """
        A ban with C{until} holds until then, and not a millisecond
        after; C{until} in the past is refused.
        """
        now = int(START * 1000)
        done(self.admin.ban(ACTOR, "carol", {"until": now + 60_000}))
        self.assertRaises(IMError, self.login, "c1", "carol")
        self.clock.advance(59.999)
        self.assertRaises(IMError, self.login, "c1", "carol")
        self.clock.advance(0.001)
        self.login("c1", "carol")
        error = self.assertRaises(IMError, done, self.admin.ban(ACTOR, "carol", {"until": now}))
        self.assertEqual(error.code, INVALID_PAYLOAD)

    def test_bansLoadedAtStart(self) -> None:
        """
        Bans are kept in the store: a new L{AdminHandlers} on it refuses
        the same users once started.
        """
        done(self.admin.ban(ACTOR, "carol", None))
        again = AdminHandlers(self.core, self.adminStore, self.clock)
        self.assertIsNone(again.activeBan("carol"))
        done(again.start())
        self.addCleanup(again.stop)
        self.assertRaises(IMError, again.admission, "carol")

    def test_disconnect(self) -> None:
        """
        A kick reaches every device of the user and closes them; the
        default reason says who did it.
        """
        answer = done(self.admin.disconnect(ACTOR, "alice", None))
        self.assertEqual(answer, {"userId": "alice", "devices": 2})
        (kick,) = self.router.events("server:kick")
        self.assertEqual(kick.payload["reason"], "disconnected by an administrator")
        self.assertEqual(sorted(self.router.closed), ["a1", "a2"])
        (entry,) = self.adminStore.audit
        self.assertEqual((entry.actor, entry.action, entry.target, entry.address),
                         ("token", "user.disconnect", "alice", "10.0.0.1"))

    def test_broadcast(self) -> None:
        """
        A broadcast goes to everyone through the router, or to the listed
        users (duplicates dropped, integer ids made strings).
        """
        answer = done(self.admin.broadcast(ACTOR, {"message": "hello"}))
        self.assertEqual(answer["delivered"], 3)
        (notice,) = self.router.events("system:notice")
        self.assertEqual((notice.method, notice.payload), ("toEveryone", {"message": "hello",
                                                                          "timestamp": int(START * 1000)}))
        self.router.sent.clear()
        answer = done(self.admin.broadcast(ACTOR, {"message": "hi", "userIds": ["bob", "bob", 7]}))
        self.assertEqual(answer["delivered"], 1)
        (notice,) = self.router.events("system:notice")
        self.assertEqual((notice.method, notice.recipients), ("toUsers", ("bob", "7")))

    def test_auditLine(self) -> None:
        """
        Each audited action leaves a C{[管理]} line; an action without a
        target (a broadcast to everyone) shows C{-}, not C{None}.
        """
        from twisted.logger import Logger, formatEvent

        events: list[dict[str, Any]] = []
        self.admin.log = Logger(observer=events.append)
        done(self.admin.broadcast(ACTOR, {"message": "hello"}))
        done(self.admin.disconnect(ACTOR, "alice", {}))
        self.assertEqual([formatEvent(event) for event in events],
                         ["[管理] token@10.0.0.1 broadcast -", "[管理] token@10.0.0.1 user.disconnect alice"])

    def test_publish(self) -> None:
        """
        Publish goes through the router to users; with C{store: true} each
        user gets a C{system} message: delivered for those online, pending
        (the offline queue) for the others.
        """
        answer = done(self.admin.publish(ACTOR, {"event": "crm:lead", "data": {"id": 1},
                                                 "userIds": ["alice", "zoe"], "store": True}))
        self.assertEqual(answer, {"delivered": 2})
        (sent,) = self.router.events("crm:lead")
        self.assertEqual((sent.method, sent.recipients, sent.payload), ("toUsers", ("alice", "zoe"), {"id": 1}))
        pending = done(self.store.pendingFor("zoe", 10))
        self.assertEqual([(m.type, m.content, m.fromId, m.toId) for m in pending],
                         [("system", "crm:lead", "admin", "zoe")])
        self.assertEqual(pending[0].system, {"action": "publish", "by": "admin", "event": "crm:lead",
                                             "data": {"id": 1}})
        self.assertEqual(done(self.store.pendingFor("alice", 10)), [])
        (entry,) = self.adminStore.audit
        self.assertEqual((entry.action, entry.target, entry.detail),
                         ("publish", "alice,zoe", {"event": "crm:lead", "store": True, "delivered": 2}))

    def test_publishRefusals(self) -> None:
        """
        The IM's own events are refused (C{FORBIDDEN}); zero or two
        targets, a bad C{store} (C{INVALID_PAYLOAD}); an unknown group or
        room (C{NOT_FOUND}); nothing is sent or audited.
        """
        for body, code in [
            ({"event": "message", "userIds": ["bob"]}, FORBIDDEN),
            ({"event": "message:sent", "userIds": ["bob"]}, FORBIDDEN),
            ({"event": "online_users", "userIds": ["bob"]}, FORBIDDEN),
            ({"event": "x"}, INVALID_PAYLOAD),
            ({"event": "x", "userIds": ["bob"], "roomId": "r"}, INVALID_PAYLOAD),
            ({"event": "x", "userIds": ["bob"], "store": 1}, INVALID_PAYLOAD),
            ({"event": 3, "userIds": ["bob"]}, INVALID_PAYLOAD),
            ({"event": "x", "groupId": "g"}, NOT_FOUND),
            ({"event": "x", "roomId": "r"}, NOT_FOUND),
        ]:
            error = self.assertRaises(IMError, done, self.admin.publish(ACTOR, body))
            self.assertEqual(error.code, code, body)
        self.assertEqual(self.router.events("x"), [])
        self.assertEqual(self.adminStore.audit, [])

    def test_reservedEvents(self) -> None:
        """
        Every server -> client event name of the contracts is reserved; a
        back end's own names are not.
        """
        for name in ("message", "message:sent", "message:recalled", "status_change", "online_users", "groups",
                     "group:joined", "room:left", "user:login:success", "server:kick", "system:notice",
                     "typing", "history", "error", "connect", "disconnect", "auth:expired", "file:ready"):
            self.assertTrue(reservedEvent(name), name)
        for name in ("crm:lead", "ticket.changed", "notify", "messages", "grouping"):
            self.assertFalse(reservedEvent(name), name)

    def test_perMinute(self) -> None:
        """
        Messages accepted are counted per minute from the start, one
        looping call; C{stop} leaves no timer behind.
        """
        counter = next(iter(self.core.metrics.messages.values()))
        counter.inc(3)
        self.clock.advance(60)
        counter.inc(2)
        stats = done(self.admin.stats())
        self.assertEqual([m["count"] for m in stats["messages"]["perMinute"]], [3, 2])
        self.assertEqual(stats["messages"]["accepted"], 5)
        self.assertEqual(stats["messages"]["perMinute"][-1]["at"], int((START + 60) * 1000))
        self.assertEqual((stats["usersOnline"], stats["devicesLoggedIn"], stats["node"]), (2, 3, "n1"))
        self.assertEqual(stats["uptime"], 60_000)
        self.admin.stop()
        self.clock.advance(0)
        self.assertEqual([c for c in self.clock.getDelayedCalls() if "sampleMinute" in repr(c)], [])

    def test_usersOfOtherNodes(self) -> None:
        """
        In a cluster, a user logged in only on another node is online in
        the lists and counts of this node's back office, as in C{GET /}:
        in C{users?online=true}, not in C{online=false}; the node's own
        entry counts its own devices.
        """
        from crm_im.cluster.presence import ClusterPresence, DeviceRecord

        presence = ClusterPresence(self.clock, "n1")
        core = IMCore(self.store, None, presence, RecordingRouter(presence), self.clock,  # type: ignore[arg-type]
                      IMSettings(logEvents=False))
        admin = AdminHandlers(core, self.adminStore, self.clock, node="n1")
        done(admin.start())
        self.addCleanup(admin.stop)
        core.sessions.connected("a1", None, "127.0.0.1")
        core.sessions.login("a1", "127.0.0.1", {"id": "alice", "name": "Alice"})
        presence.remoteLogin("n2", "c1", DeviceRecord("carol", "Carol", None, "online"), announce=False)
        online = done(admin.users(True, None, None, None))
        self.assertEqual([(u["id"], u["online"]) for u in online.items], [("alice", True), ("carol", True)])
        offline = done(admin.users(False, None, None, None))
        self.assertNotIn("carol", [u["id"] for u in offline.items])
        stats = done(admin.stats())
        self.assertEqual((stats["usersOnline"], stats["usersLoggedIn"], stats["devicesLoggedIn"]), (2, 2, 2))
        self.assertEqual(stats["nodes"][0]["devices"], 1)

    def test_groupsLastSeq(self) -> None:
        """
        C{groups} (the list) gives each group's last seq as C{group} (one
        group) does, not 0.
        """
        caller = self.core.sessions.caller("a1")
        created = done(self.core.groups.create(caller, {"name": "G", "memberIds": ["bob"], "id": "g"}))
        self.assertGreater(created["lastSeq"], 0)
        page = done(self.admin.groups(None, None, None))
        one = done(self.admin.group("g"))
        self.assertEqual([(g["id"], g["lastSeq"]) for g in page.items], [("g", one["lastSeq"])])
        self.assertEqual(one["lastSeq"], created["lastSeq"])

    def test_usersSeen(self) -> None:
        """
        Logins are recorded once per reactor turn (batched); C{lastSeen}
        moves when the last device goes; C{firstSeen} stays.
        """
        self.assertEqual(self.adminStore.seen, {})
        self.clock.advance(0)
        self.assertEqual(sorted(self.adminStore.seen), ["alice", "bob"])
        first = self.adminStore.seen["bob"]
        self.clock.advance(30)
        self.core.sessions.disconnected("b1", "transport close")
        self.clock.advance(0)
        seen = self.adminStore.seen["bob"]
        self.assertEqual((seen.firstSeen, seen.lastSeen), (first.firstSeen, int((START + 30) * 1000)))
        page = done(self.admin.users(False, None, None, None))
        self.assertEqual([(u["id"], u["online"], u["lastSeen"]) for u in page.items],
                         [("bob", False, int((START + 30) * 1000))])

    def test_auditPaging(self) -> None:
        """
        The audit log pages newest first with an C{at:id} cursor, entries
        at the same millisecond included once each.
        """
        for index in range(5):
            done(self.admin.broadcast(ACTOR, {"message": f"m{index}"}))
            if index % 2:
                self.clock.advance(0.001)
        seen = []
        cursor = None
        while True:
            page = done(self.admin.auditLog(cursor, 2))
            seen.extend(e["detail"]["message"] for e in page.items)
            cursor = page.nextCursor
            if cursor is None:
                break
        newestFirst = sorted(self.adminStore.audit, key=lambda e: (e.at, e.id), reverse=True)
        self.assertEqual(seen, [e.detail["message"] for e in newestFirst if e.detail is not None])
        self.assertEqual(sorted(seen), [f"m{i}" for i in range(5)])


class FakeJWT:
    """
    An L{crm_im.auth.IAuthenticator} stand-in: C{admin-*} tokens hold the
    admin role, C{user-*} tokens do not, anything else is invalid.
    """

    mode = "jwt"

    def verify(self, token: str) -> Claims:
        """
        See L{crm_im.auth.IAuthenticator.verify}.
        """
        if token.startswith("admin-"):
            return Claims(subject=token[6:], expiresAt=None, roles=frozenset({"admin"}))
        if token.startswith("user-"):
            return Claims(subject=token[5:], expiresAt=None, roles=frozenset())
        raise AuthenticationError("invalid")


class AuthenticatorTests(SynchronousTestCase):
    """
    L{AdminAuthenticator}.
    """

    def test_notConfigured(self) -> None:
        """
        With neither a token nor JWT, nothing is configured.
        """
        self.assertFalse(AdminAuthenticator(Clock()).configured)
        self.assertTrue(AdminAuthenticator(Clock(), token="t").configured)
        self.assertTrue(AdminAuthenticator(Clock(), jwt=FakeJWT()).configured)  # type: ignore[arg-type]

    def test_answers(self) -> None:
        """
        The token: actor C{token}; an admin JWT: its C{sub}; a JWT without
        the role: 403; wrong or missing: 401.
        """
        auth = AdminAuthenticator(Clock(), token="t", jwt=FakeJWT())  # type: ignore[arg-type]
        self.assertEqual(auth.check("t", "1.2.3.4"), Actor("token", "1.2.3.4"))
        self.assertEqual(auth.check("admin-ann", "1.2.3.4"), Actor("ann", "1.2.3.4"))
        for token, status in (("user-bob", 403), ("nope", 401), (None, 401), ("", 401)):
            refused = self.assertRaises(AdminRefused, auth.check, token, "1.2.3.4")
            self.assertEqual(refused.status, status, token)

    def test_rateLimit(self) -> None:
        """
        The 11th failure within a minute from one address is 429, even
        with the right token; other addresses are not affected; the budget
        refills at 10 a minute.
        """
        clock = Clock()
        auth = AdminAuthenticator(clock, token="t")
        for _ in range(10):
            self.assertEqual(self.assertRaises(AdminRefused, auth.check, "x", "9.9.9.9").status, 401)
        self.assertEqual(self.assertRaises(AdminRefused, auth.check, "t", "9.9.9.9").status, 429)
        self.assertEqual(auth.check("t", "8.8.8.8").name, "token")
        clock.advance(6)
        self.assertEqual(auth.check("t", "9.9.9.9").name, "token")

    def test_bearer(self) -> None:
        """
        Only C{Bearer} headers give a token.
        """
        self.assertEqual(bearerToken(b"Bearer abc "), "abc")
        self.assertEqual(bearerToken(b"bearer abc"), "abc")
        self.assertIsNone(bearerToken(b"Basic abc"))
        self.assertIsNone(bearerToken(b"Bearer "))
        self.assertIsNone(bearerToken(None))
