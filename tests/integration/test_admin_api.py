"""
The admin HTTP API (C{shared/spec/ADMIN.md}) and C{POST /api/publish}
(C{CLUSTER.md}) end to end: the real L{CRMIMService} on a loopback port,
requests through its real C{Site} with treq, and Node socket.io-client
clients (one driver process per test) to see what the API did to them.

  - L{RefusalTests}: 404 with no admin credential configured, 401, the
    C{WWW-Authenticate} header, 429 after more than 10 failures a minute
    from one address (loopback included), 403 for a JWT without the admin
    role, an admin JWT named in the audit log, C{--admin-listen};
  - L{APITests}: every endpoint, its refusals (400, 404), paging of every
    list, and the audit entries each change writes;
  - L{ClientTests}: what clients see: C{server:kick} and the disconnect, a
    ban (kicked now, C{FORBIDDEN} at the next login, lifted by C{DELETE}),
    C{system:notice}, dissolve, close, admin recall, and publish (live, to
    a group, to a room, kept for an offline user with C{store: true}).

Nothing here sleeps: a client's events are waited on, and that one did
I{not} arrive is shown with a barrier (a later event through the same
server to the same socket).
"""

from __future__ import annotations

import time
from typing import Any, Dict, Generator, List, Optional, Tuple

import jwt
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from crm_im.server import CRMIMService
from tests.integration.test_im import serveIM
from tests.support.clients import ClientDriver, DriverTestMixin

Inline = Generator[Deferred[Any], Any, Any]

TOKEN = "s3cret-admin-token"
JWT_SECRET = "jwt-secret-for-tests-0123456789abcdef"
#: the fields of an audit entry
AUDIT_FIELDS = {"id", "at", "actor", "action", "target", "detail", "address"}


@inlineCallbacks
def call(base: str, method: str, path: str, body: Any = None,
         token: Optional[str] = TOKEN, raw: Optional[bytes] = None) -> Inline:
    """
    One request to C{base + path}; return C{(status, headers, decoded JSON
    body or None)}.
    """
    headers: Dict[bytes, List[bytes]] = {}
    if token is not None:
        headers[b"authorization"] = [b"Bearer " + token.encode("utf-8")]
    kwargs: Dict[str, Any] = {"headers": headers, "persistent": False}
    if body is not None:
        kwargs["json"] = body
    elif raw is not None:
        kwargs["data"] = raw
        headers[b"content-type"] = [b"application/json"]
    response = yield treq.request(method, base + path, **kwargs)
    content = yield response.content()
    decoded = None
    if content and response.headers.getRawHeaders(b"content-type", [b""])[0].startswith(b"application/json"):
        import json
        decoded = json.loads(content)
    return response.code, response.headers, decoded


def adminJWT(subject: str, **claims: Any) -> str:
    """
    An HS256 token for the test's JWT secret.
    """
    payload = dict(sub=subject, exp=int(time.time()) + 600, **claims)
    return jwt.encode(payload, JWT_SECRET, algorithm="HS256")


class AdminServer(TestCase):
    """
    A server with an admin token, and the API's base URL.
    """

    serverSettings: Dict[str, Any] = {"adminToken": TOKEN}

    @inlineCallbacks
    def setUp(self) -> Inline:
        """
        Serve crm_im with this case's settings.
        """
        self.service, self.url = yield serveIM(self, **self.serverSettings)
        self.api = self.url + "/admin/api/"

    def request(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Deferred[Tuple[int, Any, Any]]:
        """
        A request to the admin API.
        """
        return call(self.api, method, path, body, **kwargs)

    @inlineCallbacks
    def ok(self, method: str, path: str, body: Any = None, **kwargs: Any) -> Inline:
        """
        A request that must answer 200; its JSON body.
        """
        code, headers, answer = yield self.request(method, path, body, **kwargs)
        self.assertEqual(code, 200, f"{method} {path}: {answer!r}")
        self.assertEqual(headers.getRawHeaders(b"cache-control"), [b"no-store"])
        return answer

    @inlineCallbacks
    def refused(self, method: str, path: str, body: Any = None, status: int = 400,
                code: Optional[str] = None, **kwargs: Any) -> Inline:
        """
        A request that must be refused with C{status} (and C{code}); the
        error's message.
        """
        got, _, answer = yield self.request(method, path, body, **kwargs)
        self.assertEqual(got, status, f"{method} {path}: {answer!r}")
        self.assertEqual(set(answer), {"error"})
        if code is not None:
            self.assertEqual(answer["error"]["code"], code)
        self.assertTrue(answer["error"]["message"])
        return answer["error"]["message"]

    @inlineCallbacks
    def auditActions(self) -> Inline:
        """
        The actions of the whole audit log, newest first.
        """
        page = yield self.ok("GET", "audit?limit=500")
        return [entry["action"] for entry in page["items"]]


class UnconfiguredTests(TestCase):
    """
    With neither an admin token nor C{--auth jwt}, nothing is exposed.
    """

    @inlineCallbacks
    def test_notFound(self) -> Inline:
        """
        The API, the page and C{/api/publish} answer 404, with or without
        a token.
        """
        service, url = yield serveIM(self)
        for method, path in [("GET", "/admin/api/stats"), ("GET", "/admin/"), ("GET", "/admin"),
                             ("POST", "/api/publish"), ("GET", "/admin/api/users")]:
            for token in (None, TOKEN):
                code, _, _ = yield call(url, method, path, {"event": "x", "data": 1, "userIds": ["a"]}
                                        if method == "POST" else None, token=token)
                self.assertEqual(code, 404, f"{method} {path} {token}")
        # /api itself still serves the status API.
        code, _, users = yield call(url, "GET", "/api/online-users", token=None)
        self.assertEqual(code, 200)


class RefusalTests(AdminServer):
    """
    Who may use the API.
    """

    @inlineCallbacks
    def test_missingOrWrong(self) -> Inline:
        """
        No token, a wrong one or another scheme: 401 JSON with
        C{WWW-Authenticate}; the right one: 200.
        """
        for token in (None, "wrong", TOKEN + "x", ""):
            code, headers, answer = yield self.request("GET", "stats", token=token)
            self.assertEqual(code, 401)
            self.assertEqual(answer["error"]["code"], "UNAUTHORIZED")
            self.assertEqual(headers.getRawHeaders(b"www-authenticate"), [b'Bearer realm="crm_im admin"'])
        response = yield treq.get(self.api + "stats", headers={b"authorization": [b"Basic " + TOKEN.encode()]},
                                  persistent=False)
        self.assertEqual(response.code, 401)
        yield response.content()
        stats = yield self.ok("GET", "stats")
        self.assertEqual(stats["usersOnline"], 0)

    @inlineCallbacks
    def test_rateLimited(self) -> Inline:
        """
        More than 10 failures a minute from one address (loopback too): 429
        with C{Retry-After}, even for the right token, and for
        C{/api/publish} (one budget per address).
        """
        for attempt in range(10):
            code, _, _ = yield self.request("GET", "stats", token=f"guess-{attempt}")
            self.assertEqual(code, 401, f"attempt {attempt}")
        code, headers, answer = yield self.request("GET", "stats", token="guess-11")
        self.assertEqual((code, answer["error"]["code"]), (429, "RATE_LIMITED"))
        self.assertEqual(headers.getRawHeaders(b"retry-after"), [b"60"])
        code, _, _ = yield self.request("GET", "stats")
        self.assertEqual(code, 429)
        code, _, _ = yield call(self.url, "POST", "/api/publish", {"event": "x", "userIds": ["a"]})
        self.assertEqual(code, 429)

    @inlineCallbacks
    def test_preflight(self) -> Inline:
        """
        A CORS preflight (C{OPTIONS} with C{Origin}, no credentials) to the
        API and to C{/api/publish}: 204 without C{Access-Control-Allow-*}
        (the API stays same-origin), and not a failed login: more than 10
        of them do not lock the address out (they were 401s that did).
        """
        preflight = {b"origin": [b"https://elsewhere.example"],
                     b"access-control-request-method": [b"POST"],
                     b"access-control-request-headers": [b"authorization, content-type"]}
        for attempt in range(12):
            for url in (self.api + "stats", self.api + "users/a/ban", self.url + "/api/publish"):
                response = yield treq.request("OPTIONS", url, headers=preflight, persistent=False)
                yield response.content()
                self.assertEqual(response.code, 204, f"{url} attempt {attempt}")
                allowed = [name for name, _ in response.headers.getAllRawHeaders()
                           if name.lower().startswith(b"access-control-allow-")]
                self.assertEqual(allowed, [], url)
        stats = yield self.ok("GET", "stats")
        self.assertEqual(stats["usersOnline"], 0)

    @inlineCallbacks
    def test_unknownEndpoint(self) -> Inline:
        """
        An unknown path under C{/admin/api/}: 404 JSON; a known one asked
        with a method it does not answer: 405 JSON, with the methods it
        answers in C{Allow} (after authentication: no probing without a
        token). C{HEAD} is answered as C{GET}.
        """
        yield self.refused("GET", "nothing", status=404, code="NOT_FOUND")
        yield self.refused("GET", "users/a/b/c", status=404, code="NOT_FOUND")
        for method, path, allowed in (("PUT", "stats", [b"GET"]), ("POST", "users/a", [b"GET"]),
                                      ("GET", "users/a/ban", [b"DELETE, POST"]), ("PATCH", "rooms", [b"GET, POST"]),
                                      ("GET", "broadcast", [b"POST"]), ("POST", "groups/g", [b"DELETE, GET"])):
            got, headers, answer = yield self.request(method, path)
            self.assertEqual((got, answer["error"]["code"]), (405, "METHOD_NOT_ALLOWED"), f"{method} {path}")
            self.assertEqual(headers.getRawHeaders(b"allow"), allowed)
        code, headers, _ = yield self.request("HEAD", "stats")
        self.assertEqual(code, 200)
        code, _, _ = yield self.request("GET", "nothing", token=None)
        self.assertEqual(code, 401)
        code, _, _ = yield self.request("PUT", "stats", token=None)
        self.assertEqual(code, 401)
        code, headers, answer = yield call(self.url + "/api/", "GET", "publish")
        self.assertEqual((code, headers.getRawHeaders(b"allow")), (405, [b"POST"]))

    @inlineCallbacks
    def test_page(self) -> Inline:
        """
        C{/admin/} serves the page (no token needed: it asks for one) with
        a strict CSP; its files are there; C{/admin} redirects; an unknown
        file is 404.
        """
        response = yield treq.get(self.url + "/admin/", persistent=False)
        html = yield response.text()
        self.assertEqual(response.code, 200)
        self.assertIn("text/html", response.headers.getRawHeaders(b"content-type")[0].decode())
        csp = response.headers.getRawHeaders(b"content-security-policy")[0].decode()
        self.assertIn("default-src 'self'", csp)
        self.assertIn("frame-ancestors 'none'", csp)
        self.assertIn('src="app.js"', html)
        self.assertNotIn("http://", html.replace("http://www.w3.org", ""))
        self.assertNotIn("https://", html)
        for name, kind in [("app.js", "javascript"), ("app.css", "css"), ("i18n.js", "javascript"),
                           ("favicon.svg", "svg")]:
            response = yield treq.get(self.url + "/admin/" + name, persistent=False)
            body = yield response.content()
            self.assertEqual(response.code, 200, name)
            self.assertIn(kind, response.headers.getRawHeaders(b"content-type")[0].decode())
            self.assertTrue(body)
        response = yield treq.get(self.url + "/admin", persistent=False, allow_redirects=False)
        yield response.content()
        self.assertEqual((response.code, response.headers.getRawHeaders(b"location")), (301, [b"/admin/"]))
        response = yield treq.get(self.url + "/admin/missing.js", persistent=False)
        yield response.content()
        self.assertEqual(response.code, 404)


class JWTTests(AdminServer):
    """
    In C{--auth jwt} mode, an admin JWT works; other tokens do not.
    """

    serverSettings = {"auth": "jwt", "jwtSecret": JWT_SECRET}

    @inlineCallbacks
    def test_roles(self) -> Inline:
        """
        C{role: admin} or C{roles: [..., admin]}: 200, and the audit log
        names the token's C{sub}; a valid JWT without the role: 403 (not
        counted as a failure); a forged one: 401.
        """
        stats = yield self.ok("GET", "stats", token=adminJWT("alice", role="admin"))
        self.assertIn("version", stats)
        yield self.ok("GET", "stats", token=adminJWT("bob", roles=["sales", "admin"]))
        for _ in range(12):
            yield self.refused("GET", "stats", status=403, code="FORBIDDEN", token=adminJWT("carol", role="sales"))
        forged = jwt.encode({"sub": "mallory", "role": "admin", "exp": int(time.time()) + 60}, "x" * 32,
                            algorithm="HS256")
        yield self.refused("GET", "stats", status=401, code="UNAUTHORIZED", token=forged)
        yield self.ok("POST", "broadcast", {"message": "hello"}, token=adminJWT("alice", role="admin"))
        page = yield self.ok("GET", "audit", token=adminJWT("alice", role="admin"))
        (entry,) = page["items"]
        self.assertEqual((entry["actor"], entry["action"], entry["address"]), ("alice", "broadcast", "127.0.0.1"))


class AdminListenTests(AdminServer):
    """
    C{--admin-listen}: the API and page on their own port only.
    """

    serverSettings = {"adminToken": TOKEN, "adminListen": ("tcp:0:interface=127.0.0.1",)}

    @inlineCallbacks
    def test_ownPort(self) -> Inline:
        """
        The main port answers 404 for the admin paths; the admin port
        serves them (and C{/api/publish}), and nothing else.
        """
        code, _, _ = yield call(self.url, "GET", "/admin/api/stats")
        self.assertEqual(code, 404)
        code, _, _ = yield call(self.url, "POST", "/api/publish", {"event": "x", "userIds": ["a"]})
        self.assertEqual(code, 404)
        adminPort = self.service.ports[-1].getHost().port
        admin = f"http://127.0.0.1:{adminPort}"
        code, _, stats = yield call(admin, "GET", "/admin/api/stats")
        self.assertEqual(code, 200)
        self.assertIn("uptime", stats)
        code, _, answer = yield call(admin, "POST", "/api/publish", {"event": "crm:x", "data": 1, "userIds": ["a"]})
        self.assertEqual((code, answer), (200, {"delivered": 0}))
        response = yield treq.get(admin + "/admin/", persistent=False)
        yield response.content()
        self.assertEqual(response.code, 200)
        code, _, answer = yield call(admin, "POST", "/admin/api/broadcast", raw=b"x" * 1_100_000)
        self.assertEqual((code, answer["error"]["code"]), (413, "TOO_LARGE"))
        for path in ("/socket.io/?EIO=4&transport=polling", "/api/online-users", "/metrics"):
            code, _, _ = yield call(admin, "GET", path)
            self.assertEqual(code, 404, path)


class WithClients(DriverTestMixin, AdminServer):
    """
    An admin server and a Node driver for its clients.
    """

    @inlineCallbacks
    def setUp(self) -> Inline:
        """
        Serve crm_im; start a Node driver.
        """
        yield AdminServer.setUp(self)
        self.driver: ClientDriver = yield self.startDriver()

    @inlineCallbacks
    def login(self, client: str, userId: str, name: Optional[str] = None, **opts: Any) -> Inline:
        """
        Connect C{client} and log it in.
        """
        yield self.driver.connect(client, self.url, transports=["websocket"], **opts)
        (ack,) = yield self.driver.emit(client, "user:login", {"id": userId, "name": name or f"User {userId}"},
                                        ack=True)
        self.assertEqual(ack.get("id"), userId, repr(ack))
        yield self.driver.waitFor(client, "groups")

    @inlineCallbacks
    def ask(self, client: str, event: str, payload: Any) -> Inline:
        """
        Emit with an ack that must be a success.
        """
        (ack,) = yield self.driver.emit(client, event, payload, ack=True)
        self.assertFalse(isinstance(ack, dict) and "error" in ack, f"{event}: {ack!r}")
        return ack


class APITests(WithClients):
    """
    Every endpoint, with clients to make the numbers move.
    """

    @inlineCallbacks
    def test_stats(self) -> Inline:
        """
        C{GET stats}: version, uptime, node, sessions by transport, users
        online, messages stored and per minute, groups, rooms, store size,
        push outbox depth.
        """
        yield self.login("a", "a", "Alice")
        yield self.login("b", "b", "Bob")
        yield self.ask("a", "message", {"toId": "b", "content": "hi", "type": "text"})
        yield self.ask("a", "group:create", {"name": "G", "memberIds": ["b"]})
        yield self.ok("POST", "rooms", {"name": "Lobby"})
        stats = yield self.ok("GET", "stats")
        from crm_im import __version__
        self.assertEqual(stats["version"], __version__)
        self.assertIsInstance(stats["uptime"], int)
        self.assertGreaterEqual(stats["uptime"], 0)
        self.assertEqual(stats["nodes"][0]["id"], stats["node"])
        self.assertEqual(stats["sessions"]["total"], 2)
        self.assertEqual(stats["sessions"]["byTransport"], {"polling": 0, "websocket": 2})
        self.assertEqual((stats["usersOnline"], stats["usersLoggedIn"], stats["devicesLoggedIn"]), (2, 2, 2))
        self.assertGreaterEqual(stats["messages"]["stored"], 2)  # the message and the group's system message
        self.assertEqual(stats["messages"]["accepted"], 1)
        self.assertEqual(stats["messages"]["perMinute"][-1]["count"], 1)
        self.assertEqual((stats["groups"], stats["rooms"]), (1, 1))
        self.assertGreater(stats["storeSize"], 0)
        self.assertIn("pushOutbox", stats)
        self.assertEqual(stats["bans"], 0)

    @inlineCallbacks
    def test_users(self) -> Inline:
        """
        C{GET users}: users seen, online ones with their devices; C{online}
        and C{q} filter; paged by id with C{limit} and C{cursor}; C{GET
        users/<id>}; an unknown user is 404.
        """
        yield self.login("a1", "a", "Alice")
        yield self.login("a2", "a", "Alice", extraHeaders={"user-agent": "crm-test/1.0"})
        for userId in ("b", "c", "d"):
            yield self.login(userId, userId, f"Name {userId.upper()}")
        yield self.driver.close("d")
        # d left: seen, offline (once b heard of it, the server knows)
        yield self.driver.waitFor("b", "status_change",
                                  predicate=lambda a: a[0]["userId"] == "d" and a[0]["status"] == "offline")
        online = yield self.ok("GET", "users?online=true")
        self.assertEqual([u["id"] for u in online["items"]], ["a", "b", "c"])
        self.assertIsNone(online["nextCursor"])
        alice = online["items"][0]
        self.assertEqual((alice["name"], alice["status"], alice["online"]), ("Alice", "online", True))
        self.assertEqual(len(alice["devices"]), 2)
        for device in alice["devices"]:
            self.assertEqual(device["transport"], "websocket")
            self.assertEqual(device["address"], "127.0.0.1")
            self.assertIsInstance(device["connectedAt"], int)
        self.assertIn("crm-test/1.0", [d["userAgent"] for d in alice["devices"]])
        everyone = yield self.ok("GET", "users")
        self.assertEqual([u["id"] for u in everyone["items"]], ["a", "b", "c", "d"])
        gone = everyone["items"][3]
        self.assertEqual((gone["online"], gone["status"], gone["devices"]), (False, "offline", []))
        self.assertIsInstance(gone["lastSeen"], int)
        offline = yield self.ok("GET", "users?online=false")
        self.assertEqual([u["id"] for u in offline["items"]], ["d"])
        search = yield self.ok("GET", "users?q=name%20c")
        self.assertEqual([u["id"] for u in search["items"]], ["c"])
        # paging: two at a time, online and all
        for query in ("online=true&", "", "q=&"):
            ids: List[str] = []
            cursor: Optional[str] = None
            while True:
                page = yield self.ok("GET", f"users?{query}limit=2" + (f"&cursor={cursor}" if cursor else ""))
                self.assertLessEqual(len(page["items"]), 2)
                ids.extend(u["id"] for u in page["items"])
                cursor = page["nextCursor"]
                if cursor is None:
                    break
            self.assertEqual(ids, ["a", "b", "c"] if query.startswith("online") else ["a", "b", "c", "d"], query)
        one = yield self.ok("GET", "users/d")
        self.assertEqual((one["id"], one["name"]), ("d", "Name D"))
        yield self.refused("GET", "users/nobody", status=404, code="NOT_FOUND")
        yield self.refused("GET", "users?online=maybe", status=400, code="INVALID_PAYLOAD")
        yield self.refused("GET", "users?limit=x", status=400, code="INVALID_PAYLOAD")
        # (limit was clamped: 0 and -1 gave a page of 1, 501 a page of 500)
        for limit in (0, -1, 501):
            message = yield self.refused("GET", f"users?limit={limit}", status=400, code="INVALID_PAYLOAD")
            self.assertEqual(message, "limit must be 1..500")
        page = yield self.ok("GET", "users?limit=500")
        self.assertEqual(len(page["items"]), 4)

    @inlineCallbacks
    def test_groupsAndRooms(self) -> Inline:
        """
        C{GET groups} (paged, C{q}), C{GET groups/<id>} with members,
        C{DELETE groups/<id>}; C{GET rooms} (paged), C{POST rooms},
        C{DELETE rooms/<id>}; 404 for unknown ones, 400 for a bad room;
        each change in the audit log. A listed group's C{lastSeq} is its
        last message's, as C{GET groups/<id>} and C{group:info} say (the
        list gave 0 for every group).
        """
        yield self.login("a", "a", "Alice")
        yield self.login("b", "b", "Bob")
        for index in range(5):
            yield self.ask("a", "group:create", {"name": f"Team {index}", "memberIds": ["b"], "id": f"g{index}"})
        page = yield self.ok("GET", "groups?limit=2")
        self.assertEqual([g["id"] for g in page["items"]], ["g0", "g1"])
        self.assertEqual(page["nextCursor"], "g1")
        page = yield self.ok("GET", "groups?limit=2&cursor=g1")
        self.assertEqual([g["id"] for g in page["items"]], ["g2", "g3"])
        page = yield self.ok("GET", "groups?limit=2&cursor=g3")
        self.assertEqual(([g["id"] for g in page["items"]], page["nextCursor"]), (["g4"], None))
        sent = yield self.ask("b", "message", {"groupId": "g3", "content": "hi", "type": "text"})
        page = yield self.ok("GET", "groups?q=TEAM%203")
        self.assertEqual([g["id"] for g in page["items"]], ["g3"])
        self.assertEqual(page["items"][0]["memberCount"], 2)
        info = yield self.ask("a", "group:info", {"groupId": "g3"})
        single = yield self.ok("GET", "groups/g3")
        self.assertEqual(page["items"][0]["lastSeq"], sent["seq"])
        self.assertEqual((info["lastSeq"], single["lastSeq"]), (sent["seq"], sent["seq"]))
        page = yield self.ok("GET", "groups?q=TEAM%201")
        self.assertGreater(page["items"][0]["lastSeq"], 0)
        group = yield self.ok("GET", "groups/g2")
        self.assertEqual((group["name"], group["ownerId"]), ("Team 2", "a"))
        self.assertEqual([(m["userId"], m["role"], m["online"]) for m in group["members"]],
                         [("a", "owner", True), ("b", "member", True)])
        yield self.refused("GET", "groups/nope", status=404, code="NOT_FOUND")
        answer = yield self.ok("DELETE", "groups/g2")
        self.assertIsInstance(answer, dict)
        for client in ("a", "b"):
            (left,) = yield self.driver.waitFor(client, "group:left", predicate=lambda a: a[0]["groupId"] == "g2")
        yield self.refused("GET", "groups/g2", status=404, code="NOT_FOUND")
        yield self.refused("DELETE", "groups/g2", status=404, code="NOT_FOUND")
        page = yield self.ok("GET", "groups")
        self.assertEqual([g["id"] for g in page["items"]], ["g0", "g1", "g3", "g4"])

        rooms = yield self.ok("GET", "rooms")
        self.assertEqual(rooms, {"items": [], "nextCursor": None})
        created = []
        for index in range(3):
            room = yield self.ok("POST", "rooms", {"name": f"Room {index}", "topic": "t", "public": index != 1})
            self.assertEqual((room["name"], room["createdBy"]), (f"Room {index}", "admin"))
            created.append(room["id"])
        yield self.refused("POST", "rooms", {"name": ""}, status=400, code="INVALID_PAYLOAD")
        yield self.refused("POST", "rooms", raw=b"{not json", status=400, code="INVALID_PAYLOAD")
        yield self.refused("POST", "rooms", raw=b"[1]", status=400, code="INVALID_PAYLOAD")
        yield self.ask("b", "room:join", {"roomId": created[0]})
        ids: List[str] = []
        cursor: Optional[str] = None
        while True:
            page = yield self.ok("GET", "rooms?limit=2" + (f"&cursor={cursor}" if cursor else ""))
            ids.extend(r["id"] for r in page["items"])
            for room in page["items"]:
                if room["id"] == created[0]:
                    self.assertEqual(room["onlineCount"], 1)
                    self.assertEqual([m["id"] for m in room["members"]], ["b"])
            cursor = page["nextCursor"]
            if cursor is None:
                break
        self.assertEqual(sorted(ids), sorted(created))
        answer = yield self.ok("DELETE", f"rooms/{created[0]}")
        self.assertEqual((answer["closed"], answer["sockets"]), (True, 1))
        (left,) = yield self.driver.waitFor("b", "room:left")
        self.assertEqual(left["roomId"], created[0])
        yield self.refused("DELETE", f"rooms/{created[0]}", status=404, code="NOT_FOUND")
        actions = yield self.auditActions()
        self.assertEqual(actions, ["room.close", "room.create", "room.create", "room.create", "group.dissolve"])

    @inlineCallbacks
    def test_closedRoomIdNotReused(self) -> Inline:
        """
        A closed room's messages stay for the export, so its id is not
        given again: a user's C{room:create} with it, and C{POST rooms}
        with it, get a new UUID, as for a live room's id; nobody joins the
        old id, and the new room's join and history show none of the old
        room's messages (they showed its confidential message).
        """
        yield self.login("a", "a", "Alice")
        yield self.login("b", "b", "Bob")
        room = yield self.ask("a", "room:create", {"name": "Planning", "id": "planning", "public": False})
        self.assertEqual(room["id"], "planning")
        yield self.ask("a", "room:join", {"roomId": "planning"})
        yield self.ask("a", "message", {"roomId": "planning", "content": "confidential", "type": "text"})
        yield self.ok("DELETE", "rooms/planning")
        yield self.driver.waitFor("a", "room:left")

        again = yield self.ask("b", "room:create", {"name": "Planning", "id": "planning"})
        self.assertNotEqual(again["id"], "planning")
        (ack,) = yield self.driver.emit("b", "room:join", {"roomId": "planning"}, ack=True)
        self.assertEqual(ack["error"]["code"], "NOT_FOUND")
        joined = yield self.ask("b", "room:join", {"roomId": again["id"]})
        self.assertEqual((joined["room"]["id"], joined["messages"]), (again["id"], []))
        history = yield self.ask("b", "get_history", {"roomId": again["id"]})
        self.assertEqual(history["messages"], [])
        (ack,) = yield self.driver.emit("b", "get_history", {"roomId": "planning"}, ack=True)
        self.assertEqual(ack["error"]["code"], "NOT_FOUND")
        byAdmin = yield self.ok("POST", "rooms", {"name": "Planning", "id": "planning"})
        self.assertNotIn(byAdmin["id"], ("planning", again["id"]))
        # kept for compliance, under the old id
        page = yield self.ok("GET", "messages?roomId=planning")
        self.assertEqual([m["content"] for m in page["items"]], ["confidential"])

    @inlineCallbacks
    def test_messages(self) -> Inline:
        """
        C{GET messages}: a 1:1 conversation, every 1:1 message of a user, a
        group, a room; forwards (C{after}, C{cursor}) and backwards
        (C{before}); 400 for a request naming no or two conversations.
        """
        yield self.login("a", "a", "Alice")
        yield self.login("b", "b", "Bob")
        yield self.login("c", "c", "Carol")
        for index in range(5):
            yield self.ask("a", "message", {"toId": "b", "content": f"ab{index}", "type": "text"})
        yield self.ask("c", "message", {"toId": "a", "content": "ca", "type": "text"})
        yield self.ask("b", "message", {"toId": "c", "content": "bc", "type": "text"})
        yield self.ask("a", "group:create", {"name": "G", "memberIds": ["b"], "id": "g"})
        yield self.ask("b", "message", {"groupId": "g", "content": "in g", "type": "text"})
        room = yield self.ok("POST", "rooms", {"name": "R"})
        yield self.ask("c", "room:join", {"roomId": room["id"]})
        yield self.ask("c", "message", {"roomId": room["id"], "content": "in r", "type": "text"})

        # a 1:1 conversation, forwards two at a time with the cursor
        contents: List[str] = []
        seqs: List[int] = []
        cursor = None
        while True:
            page = yield self.ok("GET", "messages?userId=b&peerId=a&limit=2" + (f"&cursor={cursor}" if cursor else ""))
            self.assertEqual(page["direction"], "forward")
            contents.extend(m["content"] for m in page["items"])
            seqs.extend(m["seq"] for m in page["items"])
            cursor = page["nextCursor"]
            if cursor is None:
                break
        self.assertEqual(contents, [f"ab{i}" for i in range(5)])
        self.assertEqual(seqs, sorted(seqs))
        first = (yield self.ok("GET", "messages?userId=a&peerId=b"))["items"][0]
        self.assertEqual((first["fromId"], first["toId"], first["type"]), ("a", "b", "text"))
        self.assertIsInstance(first["serverTimestamp"], int)
        # after and before
        page = yield self.ok("GET", f"messages?userId=a&peerId=b&after={seqs[2]}")
        self.assertEqual([m["content"] for m in page["items"]], ["ab3", "ab4"])
        page = yield self.ok("GET", f"messages?userId=a&peerId=b&before={seqs[3]}&limit=2")
        self.assertEqual(([m["content"] for m in page["items"]], page["direction"]), (["ab1", "ab2"], "backward"))
        self.assertEqual(page["nextCursor"], str(seqs[1]))
        page = yield self.ok("GET", f"messages?userId=a&peerId=b&before={seqs[3]}&limit=2&cursor={page['nextCursor']}")
        self.assertEqual(([m["content"] for m in page["items"]], page["nextCursor"]), (["ab0"], None))
        # every 1:1 message of a user
        page = yield self.ok("GET", "messages?userId=a")
        self.assertEqual([m["content"] for m in page["items"]], [f"ab{i}" for i in range(5)] + ["ca"])
        # a group (with its system message), a room
        page = yield self.ok("GET", "messages?groupId=g")
        self.assertEqual([m["content"] for m in page["items"] if m["type"] == "text"], ["in g"])
        self.assertEqual({m["groupId"] for m in page["items"]}, {"g"})
        page = yield self.ok("GET", f"messages?roomId={room['id']}")
        self.assertEqual([m["content"] for m in page["items"]], ["in r"])
        page = yield self.ok("GET", "messages?groupId=unknown")
        self.assertEqual(page["items"], [])
        # (numbers past a 64-bit column's were a 500 from the store's query)
        for query in ("", "peerId=a", "userId=a&groupId=g", "groupId=g&roomId=r", "userId=a&before=x",
                      f"userId=a&after={2**63}", f"groupId=g&cursor={-2**63}&before=1", f"userId=a&limit={2**64}",
                      # (both were taken, and after ignored)
                      f"userId=a&after={seqs[0]}&before={seqs[3]}"):
            yield self.refused("GET", "messages?" + query, status=400, code="INVALID_PAYLOAD")

    @inlineCallbacks
    def test_auditPaging(self) -> Inline:
        """
        C{GET audit}: newest first, paged by C{cursor}; each entry says
        who, what, when, from where; reads are not recorded.
        """
        before = int(time.time() * 1000)
        for index in range(5):
            yield self.ok("POST", "broadcast", {"message": f"notice {index}"})
        yield self.ok("GET", "stats")
        yield self.ok("GET", "users")
        entries: List[Dict[str, Any]] = []
        cursor = None
        while True:
            page = yield self.ok("GET", "audit?limit=2" + (f"&cursor={cursor}" if cursor else ""))
            self.assertLessEqual(len(page["items"]), 2)
            entries.extend(page["items"])
            cursor = page["nextCursor"]
            if cursor is None:
                break
        self.assertEqual([e["detail"]["message"] for e in entries], [f"notice {i}" for i in reversed(range(5))])
        for entry in entries:
            self.assertEqual(set(entry), AUDIT_FIELDS)
            self.assertEqual((entry["actor"], entry["action"], entry["target"], entry["address"]),
                             ("token", "broadcast", None, "127.0.0.1"))
            self.assertGreaterEqual(entry["at"], before)
        self.assertEqual(len({e["id"] for e in entries}), 5)
        yield self.refused("GET", "audit?cursor=garbage", status=400, code="INVALID_PAYLOAD")
        yield self.refused("GET", f"audit?cursor={2**63}:x", status=400, code="INVALID_PAYLOAD")

    @inlineCallbacks
    def test_badBodies(self) -> Inline:
        """
        Bodies that are not JSON objects, wrong field types, a body over
        1 MB: 400 or 413, nothing done, nothing audited. The 413 is the
        API's refusal (it was Engine.IO's C{{"code":3,...}}), on the API
        and on C{/api/publish}, the main port's other paths keep
        Engine.IO's.
        """
        yield self.refused("POST", "broadcast", raw=b"nope", status=400, code="INVALID_PAYLOAD")
        yield self.refused("POST", "broadcast", {}, status=400, code="INVALID_PAYLOAD")
        yield self.refused("POST", "broadcast", {"message": 5}, status=400, code="INVALID_PAYLOAD")
        yield self.refused("POST", "broadcast", {"message": "x" * 5000}, status=400, code="INVALID_PAYLOAD")
        yield self.refused("POST", "broadcast", {"message": "x", "userIds": "a"}, status=400, code="INVALID_PAYLOAD")
        yield self.refused("POST", "broadcast", {"message": "x", "userIds": []}, status=400, code="INVALID_PAYLOAD")
        huge = b'{"message": "' + b"x" * 1_100_000 + b'"}'
        yield self.refused("POST", "broadcast", raw=huge, status=413, code="TOO_LARGE")
        # (just past the API's own bound, within the site's: refused by the API)
        yield self.refused("POST", "broadcast", raw=b'{"message": "' + b"x" * 1_000_100 + b'"}', status=413,
                           code="TOO_LARGE")
        code, _, answer = yield call(self.url, "POST", "/api/publish", raw=huge)
        self.assertEqual((code, answer["error"]["code"]), (413, "TOO_LARGE"))
        code, _, answer = yield call(self.url, "POST", "/socket.io/?EIO=4&transport=polling&sid=x", raw=huge)
        self.assertEqual((code, answer), (413, {"code": 3, "message": "Payload too large"}))
        yield self.refused("POST", "users/a/ban", {"until": 5}, status=400, code="INVALID_PAYLOAD")
        yield self.refused("POST", "users/a/ban", {"until": "tomorrow"}, status=400, code="INVALID_PAYLOAD")
        # past what the store's column holds (was a 500 from the write)
        yield self.refused("POST", "users/a/ban", {"until": 2**63}, status=400, code="INVALID_PAYLOAD")
        yield self.refused("POST", "users/a/disconnect", {"reason": ["x"]}, status=400, code="INVALID_PAYLOAD")
        yield self.refused("POST", "messages/nope/recall", status=404, code="NOT_FOUND")
        actions = yield self.auditActions()
        self.assertEqual(actions, [])


class ClientTests(WithClients):
    """
    What the API does to connected clients.
    """

    @inlineCallbacks
    def barrier(self, client: str, userId: str) -> Inline:
        """
        A notice to C{userId} only, through the server, and wait for it:
        every event sent to C{client} before is in by then.
        """
        marker = f"barrier-{len(self.driver.reports)}"
        yield self.ok("POST", "broadcast", {"message": marker, "userIds": [userId]})
        yield self.driver.waitFor(client, "system:notice", predicate=lambda a: a[0]["message"] == marker)
        return marker

    @inlineCallbacks
    def test_disconnect(self) -> Inline:
        """
        C{POST users/<id>/disconnect}: every device of the user gets
        C{server:kick {reason}} and is disconnected; others stay; the user
        may log in again; audited with the device count.
        """
        yield self.login("a1", "a", "Alice")
        yield self.login("a2", "a", "Alice")
        yield self.login("b", "b", "Bob")
        answer = yield self.ok("POST", "users/a/disconnect", {"reason": "maintenance"})
        self.assertEqual(answer, {"userId": "a", "devices": 2})
        for client in ("a1", "a2"):
            (kick,) = yield self.driver.waitFor(client, "server:kick")
            self.assertEqual(kick["reason"], "maintenance")
            yield self.driver.waitForDisconnect(client)
        (change,) = yield self.driver.waitFor("b", "status_change", predicate=lambda a: a[0]["userId"] == "a")
        self.assertEqual(change["status"], "offline")
        stats = yield self.ok("GET", "stats")
        self.assertEqual(stats["usersOnline"], 1)
        yield self.driver.close("a1")
        yield self.login("a1", "a", "Alice")
        answer = yield self.ok("POST", "users/nobody/disconnect")
        self.assertEqual(answer["devices"], 0)
        page = yield self.ok("GET", "audit")
        self.assertEqual([(e["action"], e["target"], e["detail"]["devices"]) for e in page["items"]],
                         [("user.disconnect", "nobody", 0), ("user.disconnect", "a", 2)])
        self.assertEqual(page["items"][1]["detail"]["reason"], "maintenance")

    @inlineCallbacks
    def test_ban(self) -> Inline:
        """
        C{POST users/<id>/ban}: kicked now, refused at login with
        C{FORBIDDEN} (on every socket, a new one too) while banned, listed
        with the ban; C{DELETE} lifts it; a ban whose C{until} passed no
        longer holds; bans survive a restart (they are in the store).
        """
        yield self.login("a", "a", "Alice")
        yield self.login("b", "b", "Bob")
        answer = yield self.ok("POST", "users/a/ban", {"reason": "spam"})
        self.assertEqual((answer["userId"], answer["devices"], answer["ban"]["reason"], answer["ban"]["until"]),
                         ("a", 1, "spam", None))
        (kick,) = yield self.driver.waitFor("a", "server:kick")
        self.assertEqual(kick["reason"], "spam")
        yield self.driver.waitForDisconnect("a")
        yield self.driver.close("a")
        yield self.driver.connect("a", self.url, transports=["websocket"])
        (ack,) = yield self.driver.emit("a", "user:login", {"id": "a", "name": "Alice"}, ack=True)
        self.assertEqual(ack["error"]["code"], "FORBIDDEN")
        (error,) = yield self.driver.waitFor("a", "error")
        self.assertEqual((error["code"], error["event"]), ("FORBIDDEN", "user:login"))
        # b may not log in as a either
        (ack,) = yield self.driver.emit("b", "user:login", {"id": "a", "name": "Alice"}, ack=True)
        self.assertIn("error", ack)
        user = yield self.ok("GET", "users/a")
        self.assertEqual((user["online"], user["ban"]["reason"]), (False, "spam"))
        stats = yield self.ok("GET", "stats")
        self.assertEqual(stats["bans"], 1)
        answer = yield self.ok("DELETE", "users/a/ban")
        self.assertEqual(answer, {"userId": "a", "unbanned": True})
        (ack,) = yield self.driver.emit("a", "user:login", {"id": "a", "name": "Alice"}, ack=True)
        self.assertEqual(ack["id"], "a")
        answer = yield self.ok("DELETE", "users/a/ban")
        self.assertEqual(answer["unbanned"], False)
        # a ban with an end
        until = int(time.time() * 1000) + 600_000
        answer = yield self.ok("POST", "users/c/ban", {"until": until})
        self.assertEqual((answer["devices"], answer["ban"]["until"]), (0, until))
        actions = yield self.auditActions()
        self.assertEqual(actions, ["user.ban", "user.unban", "user.unban", "user.ban"])
        # the store keeps the bans: a restarted server still refuses c
        dataDir = self.service.config.dataDir
        yield self.driver.close("a")
        yield self.driver.close("b")
        yield self.service.stopService()
        service, url = yield serveIM(self, adminToken=TOKEN, dataDir=dataDir)
        self.url = url
        yield self.driver.connect("c", url, transports=["websocket"])
        (ack,) = yield self.driver.emit("c", "user:login", {"id": "c", "name": "C"}, ack=True)
        self.assertEqual(ack["error"]["code"], "FORBIDDEN")
        (ack,) = yield self.driver.emit("c", "user:login", {"id": "a", "name": "Alice"}, ack=True)
        self.assertEqual(ack["id"], "a")
        code, _, page = yield call(url + "/admin/api/", "GET", "audit")
        self.assertEqual(len(page["items"]), 4)

    @inlineCallbacks
    def test_broadcast(self) -> Inline:
        """
        C{POST broadcast}: C{system:notice {message, timestamp}} to every
        logged-in socket (not to connected ones that did not log in), or
        only to the devices of the listed users.
        """
        yield self.login("a1", "a", "Alice")
        yield self.login("a2", "a", "Alice")
        yield self.login("b", "b", "Bob")
        yield self.driver.connect("anon", self.url, transports=["websocket"])
        answer = yield self.ok("POST", "broadcast", {"message": "维护通知：22:00 重启"})
        self.assertEqual(answer["delivered"], 3)
        for client in ("a1", "a2", "b"):
            (notice,) = yield self.driver.waitFor(client, "system:notice")
            self.assertEqual(notice, {"message": "维护通知：22:00 重启", "timestamp": answer["timestamp"]})
        answer = yield self.ok("POST", "broadcast", {"message": "only b", "userIds": ["b", "nobody"]})
        self.assertEqual(answer["delivered"], 1)
        (notice,) = yield self.driver.waitFor("b", "system:notice")
        self.assertEqual(notice["message"], "only b")
        marker = yield self.barrier("a1", "a")
        self.assertEqual([args[0]["message"] for args in self.driver.events("a1", "system:notice")],
                         ["维护通知：22:00 重启", marker])
        self.assertEqual(self.driver.events("anon", "system:notice"), [])
        page = yield self.ok("GET", "audit")
        self.assertEqual([(e["action"], e["detail"]["delivered"]) for e in page["items"]][1:],
                         [("broadcast", 1), ("broadcast", 3)])

    @inlineCallbacks
    def test_recall(self) -> Inline:
        """
        C{POST messages/<id>/recall}: both sides get C{message:recalled}
        with C{by: "admin"}; the export shows it recalled; a second recall
        changes nothing.
        """
        yield self.login("a", "a", "Alice")
        yield self.login("b", "b", "Bob")
        yield self.ask("a", "message", {"toId": "b", "content": "oops", "type": "text", "id": "m-1"})
        (sent,) = yield self.driver.waitFor("b", "message")
        answer = yield self.ok("POST", "messages/m-1/recall")
        self.assertEqual(answer, {"messageId": "m-1", "recalled": True, "seq": sent["seq"], "fromId": "a"})
        for client in ("a", "b"):
            (recalled,) = yield self.driver.waitFor(client, "message:recalled")
            self.assertEqual((recalled["messageId"], recalled["by"], recalled["seq"]),
                             ("m-1", "admin", sent["seq"]))
        page = yield self.ok("GET", "messages?userId=a&peerId=b")
        (message,) = page["items"]
        self.assertEqual(message["recalledBy"], "admin")
        self.assertNotEqual(message.get("content"), "oops")
        actions = yield self.auditActions()
        self.assertEqual(actions, ["message.recall"])

    @inlineCallbacks
    def test_recallSharedId(self) -> Inline:
        """
        A message id is unique per sender only: three users' messages with
        one id (a 1:1 message, a group message, a room message). The id
        alone is refused with 409 C{CONFLICT} listing their seqs, nothing
        recalled; C{seq} recalls that one only (its group's members get
        C{message:recalled}, the others nothing, the export shows the
        others intact); C{fromId} picks one too; a C{seq} or C{fromId}
        that is not the id's is 404; a group's system message is refused
        with 403 as C{message:recall} refuses it.
        """
        for client in "abcde":
            yield self.login(client, client)
        yield self.ask("c", "group:create", {"name": "G", "memberIds": ["d"], "id": "g"})
        yield self.ok("POST", "rooms", {"name": "R", "id": "r"})
        yield self.ask("e", "room:join", {"roomId": "r"})
        yield self.ask("a", "message", {"toId": "b", "content": "private", "type": "text", "id": "1-xyz"})
        yield self.ask("c", "message", {"groupId": "g", "content": "spam", "type": "text", "id": "1-xyz"})
        yield self.ask("e", "message", {"roomId": "r", "content": "room talk", "type": "text", "id": "1-xyz"})
        # (the export shows each one's seq, as the page does)
        (direct,) = (yield self.ok("GET", "messages?userId=a&peerId=b"))["items"]
        spam = (yield self.ok("GET", "messages?groupId=g"))["items"][-1]
        (room,) = (yield self.ok("GET", "messages?roomId=r"))["items"]
        self.assertEqual([m["id"] for m in (direct, spam, room)], ["1-xyz"] * 3)
        message = yield self.refused("POST", "messages/1-xyz/recall", status=409, code="CONFLICT")
        self.assertIn("give seq or fromId", message)
        for sent in (direct, spam, room):
            self.assertIn(f"seq {sent['seq']} ", message)
        yield self.refused("POST", "messages/1-xyz/recall", {"seq": "1"}, status=400, code="INVALID_PAYLOAD")
        yield self.refused("POST", "messages/1-xyz/recall", {"seq": True}, status=400, code="INVALID_PAYLOAD")
        yield self.refused("POST", "messages/1-xyz/recall", {"fromId": 5}, status=400, code="INVALID_PAYLOAD")
        yield self.refused("POST", "messages/1-xyz/recall", {"seq": room["seq"], "fromId": "c"}, status=404,
                           code="NOT_FOUND")
        yield self.refused("POST", "messages/1-xyz/recall", {"fromId": "nobody"}, status=404, code="NOT_FOUND")
        yield self.refused("POST", "messages/other/recall", {"seq": spam["seq"]}, status=404, code="NOT_FOUND")

        answer = yield self.ok("POST", "messages/1-xyz/recall", {"seq": spam["seq"]})
        self.assertEqual(answer, {"messageId": "1-xyz", "recalled": True, "seq": spam["seq"], "fromId": "c"})
        for client in ("c", "d"):
            (recalled,) = yield self.driver.waitFor(client, "message:recalled")
            self.assertEqual((recalled["seq"], recalled["conversation"], recalled["by"]),
                             (spam["seq"], {"groupId": "g"}, "admin"))
        for client in ("a", "b", "e"):
            yield self.barrier(client, client)
            self.assertEqual(self.driver.events(client, "message:recalled"), [], client)
        (kept,) = (yield self.ok("GET", "messages?userId=a&peerId=b"))["items"]
        self.assertEqual((kept["content"], kept.get("recalledBy")), ("private", None))
        (kept,) = (yield self.ok("GET", "messages?roomId=r"))["items"]
        self.assertEqual((kept["content"], kept.get("recalledBy")), ("room talk", None))
        group = (yield self.ok("GET", "messages?groupId=g"))["items"]
        (gone,) = [m for m in group if m["seq"] == spam["seq"]]
        self.assertEqual(gone["recalledBy"], "admin")
        self.assertNotEqual(gone.get("content"), "spam")

        # the sender picks one as well (the recalled one still shares the id)
        answer = yield self.ok("POST", "messages/1-xyz/recall", {"fromId": "a"})
        self.assertEqual((answer["seq"], answer["fromId"]), (direct["seq"], "a"))
        for client in ("a", "b"):
            (recalled,) = yield self.driver.waitFor(client, "message:recalled")
            self.assertEqual(recalled["seq"], direct["seq"])
        yield self.barrier("e", "e")
        self.assertEqual(self.driver.events("e", "message:recalled"), [])

        # a group's system message (who created it) is recalled by nobody
        (created,) = [m for m in group if m["type"] == "system"]
        yield self.refused("POST", f"messages/{created['id']}/recall", {"seq": created["seq"]}, status=403,
                           code="FORBIDDEN")
        group = (yield self.ok("GET", "messages?groupId=g"))["items"]
        (created,) = [m for m in group if m["type"] == "system"]
        self.assertIsNone(created.get("recalledBy"))
        page = yield self.ok("GET", "audit?limit=500")
        self.assertEqual([(e["action"], e["target"], e["detail"]) for e in page["items"]
                          if e["action"] == "message.recall"],
                         [("message.recall", "1-xyz", {"seq": direct["seq"], "fromId": "a"}),
                          ("message.recall", "1-xyz", {"seq": spam["seq"], "fromId": "c"})])

    @inlineCallbacks
    def test_publish(self) -> Inline:
        """
        C{POST /api/publish}: to users (every device), to a group's
        members, to a room's sockets, with C{delivered}; the IM's own event
        names are refused, and so are zero or two targets; C{store: true}
        keeps a C{system} message that an offline user gets at login.
        """
        publish = self.url + "/api/publish"
        yield self.login("a1", "a", "Alice")
        yield self.login("a2", "a", "Alice")
        yield self.login("b", "b", "Bob")
        code, _, answer = yield call(publish, "POST", "", {"event": "crm:lead", "data": {"leadId": 7},
                                                           "userIds": ["a", "offline"]})
        self.assertEqual((code, answer), (200, {"delivered": 2}))
        for client in ("a1", "a2"):
            (lead,) = yield self.driver.waitFor(client, "crm:lead")
            self.assertEqual(lead, {"leadId": 7})
        yield self.ask("a1", "group:create", {"name": "G", "memberIds": ["b", "c"], "id": "g"})
        code, _, answer = yield call(publish, "POST", "", {"event": "crm:ticket", "data": "t-1", "groupId": "g"})
        self.assertEqual((code, answer), (200, {"delivered": 3}))
        (ticket,) = yield self.driver.waitFor("b", "crm:ticket")
        self.assertEqual(ticket, "t-1")
        room = yield self.ok("POST", "rooms", {"name": "R"})
        yield self.ask("b", "room:join", {"roomId": room["id"]})
        code, _, answer = yield call(publish, "POST", "", {"event": "crm:room", "data": None, "roomId": room["id"]})
        self.assertEqual((code, answer), (200, {"delivered": 1}))
        yield self.driver.waitFor("b", "crm:room")
        for body, status in [
            ({"event": "message", "data": {}, "userIds": ["a"]}, 403),
            ({"event": "group:joined", "data": {}, "userIds": ["a"]}, 403),
            ({"event": "system:notice", "data": {}, "userIds": ["a"]}, 403),
            ({"event": "status_change", "data": {}, "userIds": ["a"]}, 403),
            ({"event": "crm:x", "data": {}}, 400),
            ({"event": "crm:x", "data": {}, "userIds": ["a"], "groupId": "g"}, 400),
            ({"event": "", "data": {}, "userIds": ["a"]}, 400),
            ({"event": "crm:x", "data": {}, "groupId": "nope"}, 404),
            ({"event": "crm:x", "data": {}, "roomId": "nope"}, 404),
            ({"event": "crm:x", "userIds": ["a"], "store": "yes"}, 400),
        ]:
            code, _, answer = yield call(publish, "POST", "", body)
            self.assertEqual(code, status, f"{body!r}: {answer!r}")
        code, _, _ = yield call(publish, "GET", "")
        self.assertEqual(code, 405)
        code, _, _ = yield call(publish, "POST", "", {"event": "crm:x", "userIds": ["a"]}, token="wrong")
        self.assertEqual(code, 401)
        # kept for an offline user
        code, _, answer = yield call(publish, "POST", "", {"event": "crm:assigned", "data": {"leadId": 9},
                                                           "userIds": ["d", "b"], "store": True})
        self.assertEqual((code, answer), (200, {"delivered": 1}))
        (live,) = yield self.driver.waitFor("b", "crm:assigned")
        self.assertEqual(live, {"leadId": 9})
        yield self.login("d", "d", "Dan")
        (queued,) = yield self.driver.waitFor("d", "message", predicate=lambda a: a[0].get("type") == "system")
        self.assertEqual((queued["toId"], queued["content"], queued["system"]["event"], queued["system"]["data"]),
                         ("d", "crm:assigned", "crm:assigned", {"leadId": 9}))
        # b had it live: not queued again at b's next login
        yield self.driver.close("b")
        yield self.login("b", "b", "Bob")
        yield self.barrier("b", "b")
        self.assertEqual([a for a in self.driver.events("b", "message") if a[0].get("type") == "system"
                          and a[0].get("content") == "crm:assigned"], [])
        page = yield self.ok("GET", "audit?limit=10")
        self.assertEqual([(e["action"], e["target"]) for e in page["items"] if e["action"] == "publish"],
                         [("publish", "d,b"), ("publish", f"room:{room['id']}"), ("publish", "group:g"),
                          ("publish", "a,offline")])



class AdminUINamespaceTests(WithClients):
    """
    C{--admin-ui}: the C{/admin} namespace of the Socket.IO Admin UI's
    protocol, driven by a socket.io-client as the UI would (the UI itself
    runs in L{tests.integration.test_admin_browser.AdminUITests}).
    """

    serverSettings = {"adminToken": TOKEN, "adminUI": True}

    @inlineCallbacks
    def test_protocol(self) -> Inline:
        """
        A wrong password is refused; the token signs in: C{session},
        C{config}, C{all_sockets} with the logged-in socket and its
        C{user:} room, C{server_stats}; C{emit} to a user's room reaches
        their socket but never as one of the IM's own events; C{_disconnect}
        closes a socket; the commands are audited.
        """
        from tests.support.clients import ConnectError

        yield self.login("alice", "alice", "Alice")
        (sid,) = self.service.presence.devicesOf("alice")
        failure = yield self.assertFailure(
            self.driver.connect("ui-bad", self.url, namespace="/admin", transports=["websocket"],
                                auth={"username": "admin", "password": "wrong"}),
            ConnectError)
        self.assertIn("invalid credentials", str(failure))
        yield self.driver.connect("ui", self.url, namespace="/admin", transports=["websocket"],
                                  auth={"username": "admin", "password": TOKEN})
        # args[0]: the server may add a recovery offset after an event's args
        session = (yield self.driver.waitFor("ui", "session", namespace="/admin"))[0]
        self.assertIsInstance(session, str)
        config = (yield self.driver.waitFor("ui", "config", namespace="/admin"))[0]
        self.assertIn("MDISCONNECT", config["supportedFeatures"])
        self.assertNotIn("ALL_EVENTS", config["supportedFeatures"])
        sockets = (yield self.driver.waitFor("ui", "all_sockets", namespace="/admin"))[0]
        (mine,) = [s for s in sockets if s["id"] == sid]
        self.assertEqual((mine["nsp"], mine["transport"], mine["data"]["userId"]), ("/", "websocket", "alice"))
        self.assertIn("user:alice", mine["rooms"])
        stats = (yield self.driver.waitFor("ui", "server_stats", namespace="/admin"))[0]
        self.assertGreaterEqual(stats["clientsCount"], 2)
        yield self.driver.emit("ui", "emit", "/", "user:alice", "message", {"content": "forged"}, namespace="/admin")
        yield self.driver.emit("ui", "emit", "/", "user:alice", "crm:hello", 1, namespace="/admin")
        hello = (yield self.driver.waitFor("alice", "crm:hello"))[0]
        self.assertEqual(hello, 1)
        self.assertEqual(self.driver.events("alice", "message"), [])
        yield self.driver.emit("ui", "_disconnect", "/", False, sid, namespace="/admin")
        yield self.driver.waitForDisconnect("alice")
        # The UI's commands are audited without waiting for the write; the
        # store writes in order, so once an API action (which waits) is
        # done, they are in.
        yield self.ok("POST", "broadcast", {"message": "after"})
        actions = yield self.auditActions()
        self.assertEqual(actions, ["broadcast", "adminui.disconnect", "adminui.emit"])
