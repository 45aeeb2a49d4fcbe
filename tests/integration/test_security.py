"""
Abuse control and known Socket.IO / Engine.IO attack inputs against a real
L{CRMIMService} on loopback.

L{RateLimitTests} drive real Node clients: rate limits answer
C{RATE_LIMITED} and never lose an accepted message; persistent abuse is
disconnected; sessions per address, devices per user and failed logins per
address are bounded.

L{AttackReplayTests} speak raw Engine.IO over HTTP (treq) and raw
WebSocket frames over TCP, replaying inputs known to have hurt Socket.IO
servers; each is refused, the offending session alone is closed, and a
bystander session keeps working (shown by a full message round trip after
the attack).
"""

from __future__ import annotations

import base64
import gc
import json
import os
import struct
import time
import weakref
from typing import Any, Generator, List, Optional, Tuple

import jwt
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

import attrs

from crm_im.engineio.packet import messageFrame
from crm_im.limits import LimitSettings
from tests.integration.test_im import serveIM
from tests.support.clients import ConnectError, DriverTestMixin
from tests.support.markers import MarkedBytes

Inline = Generator[Deferred[Any], Any, Any]

SECRET = "security-secret-long-enough-for-hs256-0123456789"


class SessionChanges:
    """
    Wait for a condition on the engine's sessions, re-checked right after
    each time a session closes or is forgotten (no polling).
    """

    def __init__(self, testCase: TestCase, engine: Any) -> None:
        self._waiters: List[Tuple[Any, Deferred[None]]] = []
        for owner, name in ((engine, "sessionClosed"), (engine.app, "sessionClosed")):
            original = getattr(owner, name)

            def notified(*args: Any, _original: Any = original) -> Any:
                result = _original(*args)
                # Check once the close that called us has finished (the
                # engine forgets a session before the application cleans up).
                reactor.callLater(0, self._check)
                return result

            testCase.patch(owner, name, notified)

    def _check(self) -> None:
        waiting = []
        for condition, waiter in self._waiters:
            if condition():
                waiter.callback(None)
            else:
                waiting.append((condition, waiter))
        self._waiters = waiting

    def until(self, condition: Any, timeout: float = 10.0) -> Deferred[None]:
        """
        Fire once C{condition()} holds; fail after C{timeout} seconds.
        """
        d: Deferred[None] = Deferred()
        if condition():
            d.callback(None)
        else:
            self._waiters.append((condition, d))
        return d.addTimeout(timeout, reactor)


class RateLimitTests(DriverTestMixin, TestCase):
    """
    Limits with real Node clients (over long-polling: every limit sits
    above the transport, and a polling client is the one that sends many
    packets per HTTP request).
    """

    kind = "node"

    @inlineCallbacks
    def serve(self, **limits: Any) -> Inline:
        """
        Serve with C{limits} (loopback not exempt); return the URL.
        """
        self.service, url = yield serveIM(self, limits=LimitSettings(exemptAddresses=(), **limits))
        return url

    @inlineCallbacks
    def test_messagesRateLimited(self) -> Inline:
        """
        Past its burst a socket's messages are refused with C{RATE_LIMITED}
        naming the message id; every accepted message is delivered and
        stored, none twice, and the refused ones can be sent again later.
        """
        url = yield self.serve(messagesPerSecond=5, messageBurst=5)
        driver = yield self.startDriver()
        for client in ("a", "b"):
            yield driver.connect(client, url, transports=["polling"])
            yield driver.emit(client, "user:login", {"id": client, "name": client}, ack=True)
        acks = yield gatherResults([
            driver.emit("a", "message", {"id": f"m{i}", "toId": "b", "content": f"#{i}"}, ack=True)
            for i in range(20)])
        accepted = [f"m{i}" for i, (ack,) in enumerate(acks) if "status" in ack]
        refused = [f"m{i}" for i, (ack,) in enumerate(acks) if "error" in ack]
        self.assertGreaterEqual(len(accepted), 5)
        self.assertTrue(refused)
        self.assertEqual(sorted(accepted + refused), sorted(f"m{i}" for i in range(20)))
        self.assertEqual({ack["error"]["code"] for (ack,) in acks if "error" in ack}, {"RATE_LIMITED"})
        errors = driver.events("a", "error")
        self.assertEqual(sorted(e[0]["id"] for e in errors), sorted(refused))
        yield driver.waitFor("b", "message", predicate=lambda args: args[0]["id"] == accepted[-1])
        got = [args[0]["id"] for args in driver.events("b", "message")]
        self.assertEqual(got, accepted)
        (page,) = yield driver.emit("b", "get_history", {"friendId": "a", "limit": 200}, ack=True)
        self.assertEqual([m["id"] for m in page["messages"]], accepted)
        # A second later (on the limiter's clock) each refused message
        # goes through: a second refills 5 tokens at 5 per second.
        rates = self.service.app.rates
        check = rates.check
        later = [0.0]
        self.patch(rates, "check", lambda sid, isMessage, now: check(sid, isMessage, now + later[0]))
        for messageId in refused:
            later[0] += 1.0
            (ack,) = yield driver.emit("a", "message", {"id": messageId, "toId": "b", "content": "again"},
                                       ack=True)
            self.assertIn("status", ack)
        (page,) = yield driver.emit("b", "get_history", {"friendId": "a", "limit": 200}, ack=True)
        self.assertEqual(sorted(m["id"] for m in page["messages"]), sorted(f"m{i}" for i in range(20)))

    @inlineCallbacks
    def test_abuseDisconnected(self) -> Inline:
        """
        A socket that keeps sending after being refused is disconnected;
        another socket is not affected.
        """
        url = yield self.serve(eventsPerSecond=1, eventBurst=2, abuseRefusals=3)
        driver = yield self.startDriver()
        for client in ("a", "b"):
            yield driver.connect(client, url, transports=["polling"])
        yield driver.emit("a", "user:login", {"id": "a", "name": "A"}, ack=True)
        for _ in range(10):
            yield driver.emit("a", "typing", {"toId": "b", "isTyping": True})
        self.assertEqual((yield driver.waitForDisconnect("a")), "io server disconnect")
        errors = [args[0]["code"] for args in driver.events("a", "error")]
        self.assertEqual(set(errors), {"RATE_LIMITED"})
        (ack,) = yield driver.emit("b", "user:login", {"id": "b", "name": "B"}, ack=True)
        self.assertEqual(ack["id"], "b")
        self.assertEqual(self.service.metrics.registry.get_sample_value("crm_im_abuse_disconnects_total"), 1)

    @inlineCallbacks
    def test_sessionsPerAddress(self) -> Inline:
        """
        Past C{connectionsPerAddress} sessions from one address, a handshake
        is refused (HTTP 429); the open sessions are unaffected.
        """
        url = yield self.serve(connectionsPerAddress=2)
        driver = yield self.startDriver()
        yield driver.connect("a", url, transports=["polling"])
        yield driver.connect("b", url, transports=["polling"])
        yield self.assertFailure(driver.connect("c", url, transports=["polling"], timeout=5), ConnectError)
        response = yield treq.get(url + "/socket.io/?EIO=4&transport=polling", persistent=False)
        self.assertEqual(response.code, 429)
        yield response.content()
        (ack,) = yield driver.emit("a", "user:login", {"id": "a", "name": "A"}, ack=True)
        self.assertEqual(ack["id"], "a")

    @inlineCallbacks
    def test_devicesPerUser(self) -> Inline:
        """
        Past C{devicesPerUser} sockets, logging in as that user is
        C{RATE_LIMITED}.
        """
        url = yield self.serve(devicesPerUser=2)
        driver = yield self.startDriver()
        for index, client in enumerate(("a1", "a2", "a3")):
            yield driver.connect(client, url, transports=["polling"])
            (ack,) = yield driver.emit(client, "user:login", {"id": "a", "name": "A"}, ack=True)
            if index < 2:
                self.assertEqual(ack["id"], "a")
            else:
                self.assertEqual(ack["error"]["code"], "RATE_LIMITED")

    @inlineCallbacks
    def test_loginFailuresPerAddress(self) -> Inline:
        """
        In JWT mode, after C{loginFailureBurst} bad tokens from an address,
        even a good token from it is refused (C{RATE_LIMITED}) for a while.
        """
        self.service, url = yield serveIM(
            self, auth="jwt", jwtSecret=SECRET,
            limits=LimitSettings(loginFailuresPerMinute=1, loginFailureBurst=2))
        driver = yield self.startDriver()
        good = jwt.encode({"sub": "a", "exp": time.time() + 60}, SECRET, algorithm="HS256")
        for index in range(2):
            error = yield self.assertFailure(
                driver.connect(f"x{index}", url, transports=["polling"], auth={"token": "forged"}),
                ConnectError)
            self.assertEqual(error.data, {"code": "UNAUTHORIZED"})
        error = yield self.assertFailure(
            driver.connect("y", url, transports=["polling"], auth={"token": good}), ConnectError)
        self.assertEqual(error.data, {"code": "RATE_LIMITED"})


class WebSocketProbe(Protocol):
    """
    A raw WebSocket client: sends what it is told, records what comes back.
    """

    def __init__(self) -> None:
        self._marked = MarkedBytes()
        self.received = self._marked.data
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        """
        Keep everything; fire the waiters whose bytes have arrived.
        """
        self._marked.feed(data)

    def whenReceived(self, marker: bytes) -> Deferred[None]:
        """
        A L{Deferred} that fires once C{marker} has been received.
        """
        return self._marked.whenContains(marker)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        """
        Fire L{lost}.
        """
        self.lost.callback(None)


def wsFrame(opcode: int, payload: bytes, fin: bool) -> bytes:
    """
    One masked client frame.
    """
    mask = os.urandom(4)
    head = bytes([(0x80 if fin else 0) | opcode])
    length = len(payload)
    if length < 126:
        head += bytes([0x80 | length])
    elif length < 65536:
        head += bytes([0x80 | 126]) + struct.pack("!H", length)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", length)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


class AttackReplayTests(TestCase):
    """
    Known attack inputs, raw.
    """

    timeout = 120
    maxPayload = 100_000

    @inlineCallbacks
    def setUp(self) -> Inline:
        """
        Serve with a small maxPayload and a short heartbeat; log a
        bystander in over raw polling.
        """
        self.service, self.url = yield serveIM(
            self, maxPayload=self.maxPayload, pingInterval=300, pingTimeout=300)
        self.engine = self.service.sio.engine
        self.changes = SessionChanges(self, self.engine)
        self.bystander = yield self.open("bystander")

    @inlineCallbacks
    def post(self, sid: str, body: bytes) -> Inline:
        """
        POST C{body} to polling session C{sid}; return C{(code, body)}.
        """
        response = yield treq.post(f"{self.url}/socket.io/?EIO=4&transport=polling&sid={sid}",
                                   data=body, persistent=False)
        content = yield response.content()
        return response.code, content

    @inlineCallbacks
    def get(self, sid: str) -> Inline:
        """
        GET (poll) session C{sid}; return C{(code, body)}.
        """
        response = yield treq.get(f"{self.url}/socket.io/?EIO=4&transport=polling&sid={sid}",
                                  persistent=False)
        content = yield response.content()
        return response.code, content

    @inlineCallbacks
    def open(self, userId: Optional[str] = None) -> Inline:
        """
        A raw polling session connected to C{/}, logged in as C{userId}.

        @return: its Engine.IO sid.
        """
        response = yield treq.get(f"{self.url}/socket.io/?EIO=4&transport=polling", persistent=False)
        body = yield response.content()
        sid = json.loads(body[1:])["sid"]
        yield self.post(sid, b"40")
        code, body = yield self.get(sid)
        self.assertTrue(body.startswith(b"40{"), body)
        if userId is not None:
            yield self.post(sid, b'42["user:login",' + json.dumps({"id": userId, "name": userId}).encode() + b"]")
            events = yield self.collect(sid, b"online_users")
            self.assertIn(b"user:login:success", events)
        return sid

    @inlineCallbacks
    def collect(self, sid: str, until: bytes) -> Inline:
        """
        Poll C{sid} until a packet containing C{until} arrived; return all
        the bytes received (answering PINGs).
        """
        received = b""
        while until not in received:
            code, body = yield self.get(sid)
            self.assertEqual(code, 200, body)
            received += body + b"\x1e"
            if b"2" in body.split(b"\x1e"):
                yield self.post(sid, b"3")
        return received

    @inlineCallbacks
    def assertClosed(self, sid: str) -> Inline:
        """
        The session C{sid} is gone (or answers its last GET with CLOSE).
        """
        yield self.changes.until(lambda: sid not in self.engine.sessions or self.engine.sessions[sid].state != "open")
        code, body = yield self.get(sid)
        self.assertTrue(code == 400 or body.endswith(b"1"), (code, body))

    @inlineCallbacks
    def assertBystanderFine(self) -> Inline:
        """
        The bystander still sends a message and gets its receipt.
        """
        yield self.post(self.bystander, b'42["message",{"toId":"bystander","content":"ok","id":"'
                        + os.urandom(6).hex().encode() + b'"}]')
        received = yield self.collect(self.bystander, b"message:sent")
        self.assertIn(b'"content":"ok"', received)

    @inlineCallbacks
    def test_placeholderTypeConfusion(self) -> Inline:
        """
        A placeholder object in a plain (non-binary) event stays an object:
        C{file_transfer} refuses it as C{INVALID_PAYLOAD}; in a binary event
        a placeholder whose C{num} is a string, a boolean, negative or out
        of range closes the session.
        """
        sid = yield self.open("mallory")
        yield self.post(sid, b'42["file_transfer",{"toId":"bystander","fileName":"x",'
                             b'"data":{"_placeholder":true,"num":0}}]')
        received = yield self.collect(sid, b'"error"')
        self.assertIn(b'"INVALID_PAYLOAD"', received)
        for num in (b'"0"', b"true", b"-1", b"1", b"1e0"):
            sid = yield self.open("mallory")
            body = (b'451-["file_transfer",{"toId":"bystander","fileName":"x",'
                    b'"data":{"_placeholder":true,"num":' + num + b"}}]\x1ebAAEC")
            yield self.post(sid, body)
            yield self.assertClosed(sid)
        yield self.assertBystanderFine()

    @inlineCallbacks
    def test_eventNameNotString(self) -> Inline:
        """
        An event name that is an object (with C{toString}), a number, an
        array or missing closes the session.
        """
        for payload in (b'42[{"toString":"message"},{}]', b"42[123]", b'42[["message"]]', b"42[]",
                        b'42{"0":"message"}'):
            sid = yield self.open()
            yield self.post(sid, payload)
            yield self.assertClosed(sid)
        yield self.assertBystanderFine()

    @inlineCallbacks
    def test_deeplyNestedJSON(self) -> Inline:
        """
        JSON nested far deeper than anything legitimate closes the session
        quickly, without recursion errors.
        """
        for depth in (200, 40_000):
            sid = yield self.open("mallory")
            started = time.monotonic()
            code, _ = yield self.post(sid, b'42["message",' + b"[" * depth + b"]" * depth + b"]")
            self.assertLess(time.monotonic() - started, 5)
            yield self.assertClosed(sid)
        yield self.assertBystanderFine()

    @inlineCallbacks
    def test_oversizePollingBodies(self) -> Inline:
        """
        A POST a little over maxPayload gets 413 and closes its session; a
        huge one is refused from its Content-Length, before it is read.
        """
        sid = yield self.open()
        code, body = yield self.post(sid, b"4" + b"x" * (self.maxPayload + 10))
        self.assertEqual(code, 413)
        yield self.assertClosed(sid)
        sid = yield self.open()
        code, body = yield self.post(sid, b"4" + b"x" * (self.maxPayload * 20))
        self.assertEqual(code, 413)
        self.assertEqual(json.loads(body)["message"], "Payload too large")
        yield self.assertBystanderFine()

    @inlineCallbacks
    def test_tinyWebSocketFragments(self) -> Inline:
        """
        Continuation frames of a few bytes each, adding up past maxPayload,
        get the connection closed (1009) and the session dropped.
        """
        port = self.service.ports[0].getHost().port
        probe = WebSocketProbe()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), probe)
        key = base64.b64encode(os.urandom(16))
        probe.transport.write(
            b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key
            + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
        yield probe.whenReceived(b'"sid"').addTimeout(10, reactor)
        self.assertTrue(probe.received.startswith(b"HTTP/1.1 101"))
        self.assertEqual(len(self.engine.sessions), 2)
        chunk = b"x" * 16
        frames = [wsFrame(0x1, b"4", fin=False)]
        frames += [wsFrame(0x0, chunk, fin=False) for _ in range(self.maxPayload // len(chunk) + 10)]
        probe.transport.write(b"".join(frames))
        yield probe.lost.addTimeout(10, reactor)
        # Autobahn fails the connection by dropping it (failByDrop): the
        # client got nothing after the OPEN packet but the heartbeat's pings
        # (every 300 ms here: a loaded machine may take that long).
        received = bytes(probe.received)
        afterOpen = received[received.index(b"\"maxPayload\":100000}") + len(b"\"maxPayload\":100000}"):]
        self.assertEqual(afterOpen.replace(b"\x81\x012", b""), b"", received[-200:])
        yield self.changes.until(lambda: len(self.engine.sessions) == 1)
        yield self.assertBystanderFine()

    @inlineCallbacks
    def test_clientThatNeverReads(self) -> Inline:
        """
        A WebSocket client that stops reading while the server floods it
        costs the server a bounded amount: the kernel's buffer fills, then
        the transport's, which pauses the session, then the session's
        queue, and past its bound the session is closed. Nothing else
        suffers.
        """
        self.engine.config = attrs.evolve(self.engine.config, maxBufferedBytes=1_000_000)
        port = self.service.ports[0].getHost().port
        probe = WebSocketProbe()
        yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), probe)
        probe.transport.write(
            b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: "
            + base64.b64encode(os.urandom(16)) + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
        yield probe.whenReceived(b'"sid"').addTimeout(10, reactor)
        (session,) = [s for s in self.engine.sessions.values() if s.transportName == "websocket"]
        probe.transport.pauseProducing()
        overflows = self.engine.stats.bufferOverflows
        frame = messageFrame(b"x" * 60_000)
        # 24 MB in one reactor turn: far more than the kernel holds.
        for _ in range(400):
            session.send(frame)
            if session.state != "open":
                break
        self.assertEqual(self.engine.stats.bufferOverflows, overflows + 1)
        self.assertEqual(session.state, "closed")
        yield self.changes.until(lambda: len(self.engine.sessions) == 1)
        probe.transport.abortConnection()
        yield self.assertBystanderFine()

    @inlineCallbacks
    def test_abandonedPollingSessions(self) -> Inline:
        """
        Thousands of polling sessions opened and abandoned expire by the
        heartbeat; their memory goes back (no session, deadline, address
        count or Socket.IO connection is left).
        """
        count = 2000
        sids: List[str] = []
        refs: List[weakref.ref[Any]] = []
        sio = self.service.sio
        opened = sio.sessionOpened

        def sessionOpened(session: Any) -> None:
            refs.append(weakref.ref(session))
            opened(session)

        self.patch(sio, "sessionOpened", sessionOpened)
        for start in range(0, count, 200):
            bodies = yield gatherResults([
                treq.get(f"{self.url}/socket.io/?EIO=4&transport=polling", persistent=False)
                .addCallback(treq.content)
                for _ in range(200)])
            sids += [json.loads(body[1:])["sid"] for body in bodies]
        self.assertEqual((len(set(sids)), len(refs)), (count, count))
        # Nobody answers PINGs (the bystander neither, busy opening): every
        # session goes within pingInterval + pingTimeout of its last PONG.
        yield self.changes.until(lambda: not self.engine.sessions, timeout=30)
        self.assertEqual(len(self.engine.wheel), 0)
        self.assertEqual(len(self.service.sio._connectWheel), 0)
        self.assertEqual(self.engine.addresses.counts, {})
        self.assertEqual(len(self.service.app.rates), 0)
        gc.collect()
        self.assertEqual([ref for ref in refs if ref() is not None], [])
        self.assertEqual(self.engine.stats.pingTimeouts, count + 1)
        self.bystander = yield self.open("bystander")
        yield self.assertBystanderFine()
