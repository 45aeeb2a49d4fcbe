"""
Operations: C{GET /metrics} read by prometheus-client's own parser with its
counters moving with real traffic, C{GET /health} turning 503 when the store
is gone, JSON log lines, and the systemd deployment (socket activation,
graceful stop, JSON logs) with a real C{twistd} process.
"""

from __future__ import annotations

import io
import json
import os
import sys
from typing import Any, Dict, Generator, Iterable, List, Tuple, cast

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks
from twisted.logger import ILogObserver, Logger, LogLevel, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from crm_im.limits import LimitSettings
from crm_im.logging import eventAsJSON, jsonLineObserver
from tests.integration.test_im import serveIM
from twisted.internet import reactor

from tests.integration.test_twistd import REPO, TWISTD, ProcessTestCase
from tests.support.clients import DriverTestMixin

Inline = Generator[Deferred[Any], Any, Any]
Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


@inlineCallbacks
def scrape(url: str) -> Inline:
    """
    GET C{url}/metrics and parse it with prometheus-client's parser.

    @return: C{{(sample name, sorted labels): value}}.
    """
    response = yield treq.get(url + "/metrics", persistent=False)
    assert response.code == 200, response.code
    assert response.headers.getRawHeaders("content-type")[0].startswith("text/plain; version=0.0.4")
    text = yield response.text("utf-8")
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """
    One sample's value (0 if absent).
    """
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


class MetricsTests(DriverTestMixin, TestCase):
    """
    C{/metrics} with Node clients on both transports.
    """

    kind = "node"

    @inlineCallbacks
    def test_countersFollowTraffic(self) -> Inline:
        """
        Connections by transport, users online, events and messages by
        type, receipts by status, errors by code and store latency all move
        with the traffic; Engine.IO counters are exported.
        """
        service, url = yield serveIM(self)
        before = yield scrape(url)
        self.assertEqual(value(before, "crm_im_users_online"), 0)
        self.assertIn(("crm_im_ping_timeouts_total", ()), before)
        self.assertIn(("crm_im_buffer_overflows_total", ()), before)
        driver = yield self.startDriver()
        yield driver.connect("a", url, transports=["websocket"])
        yield driver.connect("b", url, transports=["polling"])
        for client in ("a", "b"):
            yield driver.emit(client, "user:login", {"id": client, "name": client}, ack=True)
        yield driver.emit("a", "message", {"toId": "b", "content": "hi"}, ack=True)
        yield driver.emit("a", "message", {"toId": "nobody", "content": "later"}, ack=True)
        yield driver.emit("a", "message", {"toId": "b", "content": 42}, ack=True)
        yield driver.emit("a", "get_history", {"friendId": "b"}, ack=True)
        after = yield scrape(url)

        def delta(name: str, **labels: str) -> float:
            return value(after, name, **labels) - value(before, name, **labels)

        self.assertEqual(value(after, "crm_im_connections", transport="websocket"), 1)
        self.assertEqual(value(after, "crm_im_connections", transport="polling"), 1)
        self.assertEqual(value(after, "crm_im_users_online"), 2)
        self.assertEqual(delta("crm_im_events_total", event="user:login"), 2)
        self.assertEqual(delta("crm_im_events_total", event="message"), 3)
        self.assertEqual(delta("crm_im_events_total", event="get_history"), 1)
        self.assertEqual(delta("crm_im_messages_total", type="text"), 2)
        self.assertEqual(delta("crm_im_receipts_total", status="delivered"), 1)
        self.assertEqual(delta("crm_im_receipts_total", status="offline"), 1)
        self.assertEqual(delta("crm_im_errors_total", code="INVALID_PAYLOAD"), 1)
        self.assertEqual(delta("crm_im_store_latency_seconds_count", operation="store"), 2)
        self.assertEqual(delta("crm_im_store_latency_seconds_count", operation="history"), 1)
        self.assertGreaterEqual(value(after, "crm_im_sessions_opened_total"), 2)


class HealthTests(TestCase):
    """
    C{/health}.
    """

    @inlineCallbacks
    def test_storeUnavailable(self) -> Inline:
        """
        200 while the store answers; 503 once it is closed.
        """
        service, url = yield serveIM(self)
        response = yield treq.get(url + "/health", persistent=False)
        self.assertEqual((response.code, (yield response.json())), (200, {"status": "ok", "store": "ok"}))
        yield service.store.close()
        response = yield treq.get(url + "/health", persistent=False)
        body = yield response.json()
        self.assertEqual((response.code, body["status"]), (503, "unavailable"))

    @inlineCallbacks
    def test_method(self) -> Inline:
        """
        Only GET and HEAD.
        """
        service, url = yield serveIM(self)
        response = yield treq.post(url + "/health", persistent=False)
        self.assertEqual(response.code, 405)
        yield response.content()


class JSONLogTests(SynchronousTestCase):
    """
    L{crm_im.logging}.
    """

    def test_event(self) -> None:
        """
        An event is one line of JSON with time, level, namespace, the
        formatted message and its plain keyword fields.
        """
        stream = io.StringIO()
        observer = jsonLineObserver(stream)
        log = Logger(namespace="crm_im.test", observer=observer)
        log.info("[登录] {name}({userId})", name="张三", userId="42", obj=object())
        (line,) = stream.getvalue().splitlines()
        record = json.loads(line)
        self.assertEqual(record["level"], "info")
        self.assertEqual(record["namespace"], "crm_im.test")
        self.assertEqual(record["message"], "[登录] 张三(42)")
        self.assertEqual((record["name"], record["userId"]), ("张三", "42"))
        self.assertNotIn("obj", record)
        self.assertRegex(record["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")

    def test_failure(self) -> None:
        """
        A failure's traceback is in the record, still one line.
        """
        stream = io.StringIO()
        log = Logger(namespace="crm_im.test", observer=jsonLineObserver(stream))
        try:
            1 / 0
        except ZeroDivisionError:
            log.failure("oops {what}", what="x")
        (line,) = stream.getvalue().splitlines()
        record = json.loads(line)
        self.assertEqual(record["level"], "critical")
        self.assertIn("ZeroDivisionError", record["traceback"])

    def test_levelDefault(self) -> None:
        """
        An event without level or time (a legacy one) still serialises.
        """
        record = json.loads(eventAsJSON({"log_format": "plain", "log_level": LogLevel.warn}))
        self.assertEqual((record["level"], record["message"]), ("warn", "plain"))


#: Runs twistd as systemd would with socket activation: the listening
#: socket on fd 3, LISTEN_FDS=1, LISTEN_FDNAMES (systemd 227+ always sets
#: it; Twisted wants both) and LISTEN_PID = the pid of the exec'd process.
ACTIVATE = """
import os, socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(128)
if s.fileno() != 3:
    os.dup2(s.fileno(), 3)
os.set_inheritable(3, True)
os.environ.update(LISTEN_FDS="1", LISTEN_FDNAMES="crm_im.socket", LISTEN_PID=str(os.getpid()))
os.execv(sys.executable, [sys.executable, "-c", sys.argv[2]] + sys.argv[3:])
"""


class SystemdTests(ProcessTestCase):
    """
    The unit files in C{deploy/}, and C{twistd} started as they start it.
    """

    def test_unitFiles(self) -> None:
        """
        The service uses socket activation, the JSON logger, SIGTERM and a
        stop timeout longer than the shutdown grace; the socket listens.
        """
        service = (REPO / "deploy" / "crm_im.service").read_text()
        self.assertIn("--listen systemd:domain=INET:index=0", service)
        self.assertIn("--logger crm_im.logging.logger", service)
        self.assertIn("KillSignal=SIGTERM", service)
        self.assertIn("TimeoutStopSec=30", service)
        self.assertIn("--shutdown-grace 2", service)
        self.assertIn("Requires=crm_im.socket", service)
        self.assertIn("ListenStream=8080", (REPO / "deploy" / "crm_im.socket").read_text())

    @inlineCallbacks
    def test_socketActivation(self) -> Inline:
        """
        twistd serves on the inherited socket, logs JSON lines, and a
        SIGTERM stops it gracefully with exit code 0.
        """
        from tests.integration.test_twistd import freePort

        port = freePort()
        dataDir = os.path.abspath(self.mktemp())
        process = self.spawn([
            sys.executable, "-c", ACTIVATE, str(port), TWISTD, "-n", "--pidfile=",
            "--logger", "crm_im.logging.logger", "crm_im",
            "--listen", "systemd:domain=INET:index=0", "--data-dir", dataDir, "--shutdown-grace", "0.5",
        ])
        process.port = port
        yield self.waitUntilServing(process)
        response = yield treq.get(f"http://127.0.0.1:{port}/health", persistent=False)
        self.assertEqual(response.code, 200)
        yield response.content()
        process.signal("TERM")
        self.assertEqual((yield self.waitForExit(process)), 0, process.text)
        records = [json.loads(line) for line in process.text.splitlines() if line.startswith("{")]
        messages = [record["message"] for record in records]
        self.assertTrue(any("listening on" in m for m in messages), process.text)
        self.assertTrue(any("authentication mode is 'open'" in m for m in messages), process.text)
        self.assertTrue(any("[关闭]" in m for m in messages), process.text)
        self.assertEqual({r["level"] for r in records} - {"debug", "info", "warn", "error", "critical"}, set())


# ---- what an operator and a client see (issue 18)


class LogCapture:
    """
    Every log event of the process while a test runs, formatted.
    """

    def __init__(self, testCase: TestCase) -> None:
        from twisted.logger import globalLogPublisher

        self.events: List[Dict[str, Any]] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        testCase.addCleanup(globalLogPublisher.removeObserver, observer)

    def lines(self, containing: str = "") -> List[str]:
        texts = [formatEvent(event) for event in self.events]
        return [text for text in texts if containing in text]


@inlineCallbacks
def pollingConnect(url: str, auth: Any = None) -> Inline:
    """
    A raw Engine.IO polling session that sends a Socket.IO CONNECT.

    @return: C{(Engine.IO sid, the CONNECT's answer as bytes)}.
    """
    response = yield treq.get(url + "/socket.io/?EIO=4&transport=polling", persistent=False)
    body = yield response.content()
    sid = json.loads(body[1:])["sid"]
    where = f"{url}/socket.io/?EIO=4&transport=polling&sid={sid}"
    packet = b"40" + (json.dumps(auth).encode() if auth is not None else b"")
    response = yield treq.post(where, data=packet, persistent=False)
    yield response.content()
    response = yield treq.get(where, persistent=False)
    answer = yield response.content()
    return sid, answer


class HeadTests(TestCase):
    """
    C{HEAD} (what health checkers send) is answered like C{GET}, without a
    body and without twisted.web's warning about one.
    """

    @inlineCallbacks
    def test_head(self) -> Inline:
        log = LogCapture(self)
        service, url = yield serveIM(self)
        yield self.headsLikeGets(url, ("/", "/api/online-users", "/health", "/metrics", "/no/such/thing"))
        self.assertEqual(log.lines("HEAD request"), [])

    @inlineCallbacks
    def headsLikeGets(self, url: str, paths: Iterable[str]) -> Inline:
        """
        C{HEAD} of each of C{paths} answers as C{GET} does (code, type,
        length) without a body.
        """
        for path in paths:
            response = yield treq.get(url + path, persistent=False)
            body = yield response.content()
            head = yield treq.head(url + path, persistent=False)
            empty = yield head.content()
            self.assertEqual(head.code, response.code, path)
            self.assertEqual(empty, b"", path)
            self.assertEqual(head.headers.getRawHeaders("content-length"), [str(len(body))], path)
            self.assertEqual(head.headers.getRawHeaders("content-type"), response.headers.getRawHeaders("content-type"))

    @inlineCallbacks
    def test_headAdmin(self) -> Inline:
        """
        The same for the back office's page, its files, its 404 and its
        API's refusal (C{HEAD /admin/} logged the warning).
        """
        log = LogCapture(self)
        service, url = yield serveIM(self, adminToken="s3cret-admin-token")
        yield self.headsLikeGets(url, ("/admin/", "/admin/app.js", "/admin/nope", "/admin/api/stats"))
        self.assertEqual(log.lines("HEAD request"), [])


class LogLineTests(DriverTestMixin, TestCase):
    """
    The event log lines an operator reads: one connection id across the
    protocol's and the IM's lines, what became of a message, refused
    connects.
    """

    kind = "node"

    @inlineCallbacks
    def test_messageOutcome(self) -> Inline:
        """
        C{[消息]} says whether the message was forwarded (已转发给 ...) or
        kept for an offline recipient.
        """
        log = LogCapture(self)
        service, url = yield serveIM(self, logEvents=True)
        driver = yield self.startDriver()
        for client in ("a", "b"):
            yield driver.connect(client, url, transports=["websocket"])
            yield driver.emit(client, "user:login", {"id": client, "name": client}, ack=True)
        yield driver.emit("a", "message", {"toId": "b", "content": "hi"}, ack=True)
        yield driver.emit("a", "message", {"toId": "c", "content": "later"}, ack=True)
        lines = log.lines("[消息]")
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("a -> b", lines[0])
        self.assertIn("已转发给 b", lines[0])
        self.assertIn("a -> c", lines[1])
        self.assertIn("c 不在线，已存为离线消息", lines[1])
        delivered = [event["delivered"] for event in log.events if "[消息]" in formatEvent(event)]
        self.assertEqual(delivered, [True, False])

    @inlineCallbacks
    def test_clientTextCannotForgeLines(self) -> Inline:
        """
        What a client chose (a login's name, a message's C{toId}) reaches the log with its control characters
        escaped: no newline, carriage return or terminal escape of a
        client's starts or rewrites a line.
        """
        log = LogCapture(self)
        service, url = yield serveIM(self, logEvents=True)
        driver = yield self.startDriver()
        forged = "2026-01-01T00:00:00+0000 [crm_im.server.CRMIMService#info] forged"
        yield driver.connect("a", url, transports=["websocket"])
        yield driver.emit("a", "user:login", {"id": "a", "name": f"Ann\n{forged}\r\x1b[2K"}, ack=True)
        yield driver.emit("a", "message", {"toId": f"b\u2028{forged}", "content": "hi"}, ack=True)
        lines = log.lines()
        (login,) = log.lines("[登录]")
        self.assertIn("Ann\\n2026-01-01", login)
        self.assertIn("\\r\\x1b[2K(a)", login)
        (message,) = log.lines("[消息]")
        self.assertIn("a -> b\\u20282026-01-01", message)
        for line in lines:
            self.assertEqual(line.splitlines(), [line], line)
            self.assertNotIn("\x1b", line)

    @inlineCallbacks
    def test_oneConnectionId(self) -> Inline:
        """
        The Engine.IO session that the protocol's lines name is the
        C{conn} of the C{[连接]} and C{[断开]} lines of the socket on it:
        by its public id, never by its sid, which is the credential of a
        long-polling request (whoever read the log could send as its user).
        """
        log = LogCapture(self)
        service, url = yield serveIM(self, logEvents=True)
        sid, answer = yield pollingConnect(url)
        self.assertTrue(answer.startswith(b"40{"), answer)
        response = yield treq.post(f"{url}/socket.io/?EIO=4&transport=polling&sid={sid}", data=b"4garbage",
                                   persistent=False)
        yield response.content()
        public = sid[:12]
        (protocol,) = log.lines("closing session")
        self.assertIn(public, protocol)
        (connected,) = log.lines("[连接]")
        (gone,) = log.lines("[断开]")
        self.assertIn(f"conn={public} ", connected + " ")
        self.assertIn(f"conn={public} ", gone + " ")
        self.assertFalse([event for event in log.events if sid in json.dumps(event, default=repr)])
        socketId = json.loads(answer[2:])["sid"]
        self.assertIn(socketId, connected)

    @inlineCallbacks
    def test_refusedConnectLogged(self) -> Inline:
        """
        A CONNECT refused for its token leaves a line (with the reason and
        the connection, never the token).
        """
        import jwt

        log = LogCapture(self)
        secret = "s" * 40
        service, url = yield serveIM(self, auth="jwt", jwtSecret=secret)
        bad = jwt.encode({"sub": "u1"}, "another secret that is long enough", algorithm="HS256")
        sid, answer = yield pollingConnect(url, {"token": bad})
        self.assertTrue(answer.startswith(b"44"), answer)
        (line,) = log.lines("[拒绝]")
        self.assertIn(f"conn={sid[:12]}:", line)
        self.assertNotIn(sid, line)
        self.assertIn("UNAUTHORIZED", line)
        self.assertIn("bad signature", line)
        self.assertNotIn(bad, line)
        self.assertFalse([event for event in log.events if bad in json.dumps(event, default=repr)])


class FloodTests(DriverTestMixin, TestCase):
    """
    A client that floods is rate limited and then disconnected; the
    receipts of what was accepted and stored reach it first.
    """

    kind = "node"

    @inlineCallbacks
    def test_receiptsBeforeDisconnect(self) -> Inline:
        service, url = yield serveIM(
            self,
            limits=LimitSettings(
                exemptAddresses=(), messagesPerSecond=1, messageBurst=40, eventsPerSecond=10_000, eventBurst=10_000,
                abuseRefusals=5,
            ),
        )
        driver = yield self.startDriver()
        for client in ("a", "b"):
            yield driver.connect(client, url, transports=["websocket"])
            yield driver.emit(client, "user:login", {"id": client, "name": client}, ack=True)
        yield driver.disconnect("b")
        count = 200
        results = yield DeferredList(
            [driver.emit("a", "message", {"id": f"m{i}", "toId": "b", "content": f"#{i}"}, ack=True, timeout=8)
             for i in range(count)],
            consumeErrors=True,
        )
        self.assertEqual((yield driver.waitForDisconnect("a")), "io server disconnect")
        receipts = {f"m{i}" for i, (ok, args) in enumerate(results) if ok and "status" in args[0]}
        refused = {f"m{i}" for i, (ok, args) in enumerate(results) if ok and "error" in args[0]}
        self.assertTrue(refused)
        page = yield service.store.history("a", "b", None, 500, None, None)
        stored = {message.id for message in page.messages}
        self.assertTrue(stored)
        self.assertEqual(stored - receipts, set(), f"{len(stored - receipts)} of {len(stored)} stored without a receipt")
        self.assertEqual(receipts - stored, set())


class StartupTests(ProcessTestCase):
    """
    C{twistd crm_im} as an operator starts it: failures to start are one
    line and exit status 1; the start-up line says what and where.
    """

    def twistd(self, *options: str) -> Any:
        return self.spawn([sys.executable, "-c", TWISTD, "-n", "--pidfile=", "crm_im", *options])

    @inlineCallbacks
    def assertCouldNotStart(self, process: Any, reason: str) -> Inline:
        self.assertEqual((yield self.waitForExit(process, timeout=45)), 1, process.text)
        lines = [line for line in process.text.splitlines() if "could not start" in line]
        self.assertEqual(len(lines), 1, process.text)
        self.assertIn(reason, lines[0])
        self.assertNotIn("Traceback", process.text)
        self.assertNotIn("[关闭]", process.text)

    @inlineCallbacks
    def test_dataDirUnusable(self) -> Inline:
        """
        A data directory that is a file, or under /proc: exit 1.
        """
        afile = os.path.abspath(self.mktemp())
        with open(afile, "w"):
            pass
        process = self.twistd("--port", "0", "--data-dir", afile)
        yield self.assertCouldNotStart(process, "not a directory")
        process = self.twistd("--port", "0", "--data-dir", "/proc/crm_im-test")
        yield self.assertCouldNotStart(process, "/proc/crm_im-test is not usable")

    @inlineCallbacks
    def test_storeUnusable(self) -> Inline:
        """
        A store that cannot be opened (a SQLite path that is no database, or
        under a file; a PostgreSQL server nobody listens for) or that a
        newer crm_im upgraded: one line naming it, exit 1.
        """
        import socket
        import sqlite3

        notADatabase = os.path.abspath(self.mktemp())
        with open(notADatabase, "w") as f:
            f.write("not a database\n" * 100)
        dataDir = os.path.abspath(self.mktemp())
        process = self.twistd("--port", "0", "--data-dir", dataDir, "--store", "sqlite:" + notADatabase)
        yield self.assertCouldNotStart(process, f"cannot open the store sqlite:{notADatabase}: file is not a database")
        process = self.twistd("--port", "0", "--data-dir", dataDir, "--store", f"sqlite:{notADatabase}/x.sqlite3")
        yield self.assertCouldNotStart(process, "unable to open database file")
        unused = socket.socket()
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
        unused.close()  # nobody listens there now
        url = f"postgresql://crm_im:secret@127.0.0.1:{port}/crm_im"
        process = self.twistd("--port", "0", "--data-dir", dataDir, "--store", url)
        yield self.assertCouldNotStart(process, f"cannot open the store postgresql://crm_im:***@127.0.0.1:{port}/crm_im")
        self.assertNotIn("secret", process.text)
        newer = os.path.join(dataDir, "newer.sqlite3")
        connection = sqlite3.connect(newer)
        connection.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY NOT NULL, name TEXT NOT NULL)")
        connection.execute("INSERT INTO schema_version VALUES (999, 'from_the_future')")
        connection.commit()
        connection.close()
        process = self.twistd("--port", "0", "--data-dir", dataDir, "--store", "sqlite:" + newer)
        yield self.assertCouldNotStart(process, "the database has schema version 999, newer than this crm_im knows")

    @inlineCallbacks
    def test_portTaken(self) -> Inline:
        """
        A taken port: one line saying so, exit 1.
        """
        import socket

        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        process = self.twistd("--listen", f"tcp:{port}:interface=127.0.0.1", "--data-dir", os.path.abspath(self.mktemp()))
        yield self.assertCouldNotStart(process, "already in use")

    @inlineCallbacks
    def test_portZeroAndStartLine(self) -> Inline:
        """
        C{--port 0} listens on a free port, which the start-up line gives
        as host:port with the version and data directory; a short JWT
        secret is said at start.
        """
        import re

        dataDir = os.path.abspath(self.mktemp())
        process = self.twistd("--port", "0", "--data-dir", dataDir, "--auth", "jwt", "--jwt-secret", "short")
        yield process.whenOutputContains(b"JWT key too short").addTimeout(30, reactor)
        match = re.search(r"crm_im listening on 0\.0\.0\.0:(\d+) \(version ([\d.]+), data directory (.+)\)",
                          process.text)
        self.assertIsNotNone(match, process.text)
        assert match is not None
        self.assertEqual(match.group(3), dataDir)
        self.assertNotIn("IPv4Address", process.text)
        self.assertNotIn("object at 0x", process.text)
        response = yield treq.get(f"http://127.0.0.1:{match.group(1)}/", persistent=False)
        self.assertEqual(response.code, 200)
        yield response.content()
        process.signal("TERM")
        yield self.waitForExit(process)
