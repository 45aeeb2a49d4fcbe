"""
JWT mode end to end (contract section 2): real Node socket.io-client and
python-socketio clients against L{CRMIMService} with C{auth="jwt"}.

Tokens come with the Socket.IO CONNECT (C{auth: {token}}) or with
C{user:login}; refusals carry code C{UNAUTHORIZED}; a token that expires
during the connection disconnects it unless C{auth:refresh} brought a
fresh one first; a client can never read another user's history or file.

Nothing sleeps: expiry is awaited as the C{disconnect} it causes, and that
a refreshed socket was I{not} disconnected is shown by a second socket
whose identical short token expired (it was disconnected later than the
first one's old deadline).
"""

from __future__ import annotations

import json
import time
from typing import Any, Dict, Generator, Optional

import jwt
import treq
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.integration.test_im import serveIM
from tests.integration.test_ops import LogCapture
from tests.support.clients import ClientDriver, ConnectError, DriverTestMixin

Inline = Generator[Deferred[Any], Any, Any]

SECRET = "e2e-secret-that-is-long-enough-for-hs256-0123456789"
AUDIENCE = "crm-im"


def token(sub: str, lifetime: Optional[float] = 3600, secret: str = SECRET, aud: Optional[str] = AUDIENCE,
          **claims: Any) -> str:
    """
    An HS256 token for C{sub}, expiring C{lifetime} seconds from now.
    """
    payload: Dict[str, Any] = {"sub": sub}
    if lifetime is not None:
        payload["exp"] = time.time() + lifetime
    if aud is not None:
        payload["aud"] = aud
    payload.update(claims)
    return jwt.encode(payload, secret, algorithm="HS256")


class JWTScenario(DriverTestMixin):
    """
    JWT mode, for one client kind.
    """

    @inlineCallbacks
    def setUp(self) -> Inline:
        """
        Serve crm_im in JWT mode with an audience, tokens without C{exp}
        refused.
        """
        self.service, self.url = yield serveIM(
            self, auth="jwt", jwtSecret=SECRET, jwtAudience=AUDIENCE, jwtRequireExp=True)

    def connect(self, driver: ClientDriver, client: str, bearer: Optional[str] = None) -> Deferred[Any]:
        """
        Connect C{client} over WebSocket, with C{bearer} in the auth object.
        """
        opts: Dict[str, Any] = {"transports": ["websocket"]}
        if bearer is not None:
            opts["auth"] = {"token": bearer}
        return driver.connect(client, self.url, **opts)

    @inlineCallbacks
    def login(self, driver: ClientDriver, client: str, userId: str, bearer: Optional[str] = None,
              loginToken: Optional[str] = None) -> Inline:
        """
        Connect (with C{bearer}) and log in as C{userId} (with
        C{loginToken}); return the ack.
        """
        yield self.connect(driver, client, bearer)
        payload: Dict[str, Any] = {"id": userId, "name": userId.upper()}
        if loginToken is not None:
            payload["token"] = loginToken
        (ack,) = yield driver.emit(client, "user:login", payload, ack=True)
        return ack

    @inlineCallbacks
    def refusedConnect(self, driver: ClientDriver, client: str, bearer: str) -> Inline:
        """
        Connect C{client} with C{bearer}, expecting CONNECT_ERROR; return it.
        """
        try:
            yield self.connect(driver, client, bearer)
        except ConnectError as error:
            return error
        self.fail("the connection was accepted")

    @inlineCallbacks
    def refusedLogin(self, driver: ClientDriver, client: str, payload: Dict[str, Any], code: str) -> Inline:
        """
        Emit C{user:login}, expecting the C{error} event and error ack with
        C{code}; return the error event.
        """
        (ack,) = yield driver.emit(client, "user:login", payload, ack=True)
        (error,) = yield driver.waitFor(client, "error", predicate=lambda a: a[0]["event"] == "user:login")
        self.assertEqual((error["code"], ack["error"]["code"]), (code, code))
        return error

    @inlineCallbacks
    def test_validToken(self) -> Inline:
        """
        A valid token in the CONNECT auth object lets the socket log in as
        its subject without sending it again.
        """
        driver = yield self.startDriver()
        ack = yield self.login(driver, "a", "alice", bearer=token("alice"))
        self.assertEqual(ack["id"], "alice")
        yield driver.waitFor("a", "user:login:success")

    @inlineCallbacks
    def test_loginToken(self) -> Inline:
        """
        A token may come with C{user:login} instead.
        """
        driver = yield self.startDriver()
        ack = yield self.login(driver, "a", "alice", loginToken=token("alice"))
        self.assertEqual(ack["id"], "alice")

    @inlineCallbacks
    def test_missingToken(self) -> Inline:
        """
        Without any token the socket connects but cannot log in:
        C{UNAUTHORIZED}.
        """
        driver = yield self.startDriver()
        yield self.connect(driver, "a")
        error = yield self.refusedLogin(driver, "a", {"id": "alice", "name": "A"}, "UNAUTHORIZED")
        self.assertIn("token is required", error["message"])

    @inlineCallbacks
    def test_refusedAtConnect(self) -> Inline:
        """
        A bad signature, an expired token, a token without C{exp} (with
        C{--jwt-require-exp}) and a wrong audience in the CONNECT auth
        object are refused with CONNECT_ERROR naming why, with
        C{data.code} C{UNAUTHORIZED}.
        """
        driver = yield self.startDriver()
        for index, (bearer, reason) in enumerate([
            (token("alice", secret="not-the-server-secret-0123456789-abcdef"), "bad signature"),
            (token("alice", lifetime=-10), "token expired"),
            (token("alice", lifetime=None), "no 'exp' claim"),
            (token("alice", aud="another-app"), "wrong audience"),
            ("garbage", "malformed"),
        ]):
            error = yield self.refusedConnect(driver, f"x{index}", bearer)
            self.assertIn(reason, error.message)
            self.assertEqual(error.data, {"code": "UNAUTHORIZED"})

    @inlineCallbacks
    def test_refusedAtLogin(self) -> Inline:
        """
        At C{user:login}, a token for another C{sub}, a bad signature, an
        expired token and a wrong audience are C{UNAUTHORIZED}; a socket
        whose CONNECT token names alice cannot log in as bob.
        """
        driver = yield self.startDriver()
        yield self.connect(driver, "a", token("alice"))
        error = yield self.refusedLogin(driver, "a", {"id": "bob", "name": "B"}, "UNAUTHORIZED")
        self.assertIn("another user", error["message"])
        for bearer in (
            token("bob", secret="not-the-server-secret-0123456789-abcdef"),
            token("bob", lifetime=-10),
            token("bob", aud="another-app"),
            token("alice"),
        ):
            yield self.refusedLogin(driver, "a", {"id": "bob", "name": "B", "token": bearer}, "UNAUTHORIZED")

    @inlineCallbacks
    def test_refusedLoginLogged(self) -> Inline:
        """
        A C{user:login} refused for its token (none, another user's, a bad
        signature, expired) leaves a line as a refused CONNECT does: the
        socket, the claimed user, the reason; never the token. (It left
        none.)
        """
        log = LogCapture(self)
        driver = yield self.startDriver()
        yield self.connect(driver, "a")
        refusals = [
            (None, "token is required"),
            (token("alice"), "another user"),
            (token("bob", secret="not-the-server-secret-0123456789-abcdef"), "bad signature"),
            (token("bob", lifetime=-10), "token expired"),
        ]
        for bearer, _ in refusals:
            payload: Dict[str, Any] = {"id": "bob", "name": "B"}
            if bearer is not None:
                payload["token"] = bearer
            yield self.refusedLogin(driver, "a", payload, "UNAUTHORIZED")
        lines = log.lines("[拒绝]")
        self.assertEqual(len(lines), len(refusals), lines)
        sids = {line.split("[拒绝] ", 1)[1].split()[0] for line in lines}
        self.assertEqual(len(sids), 1, lines)
        for line, (bearer, reason) in zip(lines, refusals):
            self.assertIn(" 127.0.0.1 conn=", line)
            self.assertIn(": user:login bob UNAUTHORIZED", line)
            self.assertIn(reason, line)
            if bearer is not None:
                self.assertFalse([event for event in log.events if bearer in json.dumps(event, default=repr)])

    @inlineCallbacks
    def test_expiryDisconnects(self) -> Inline:
        """
        A token that expires during the connection gets C{error}
        C{UNAUTHORIZED} and the socket is disconnected by the server.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "a", "alice", bearer=token("alice", lifetime=1.0))
        (error,) = yield driver.waitFor("a", "error")
        self.assertEqual((error["code"], error["event"]), ("UNAUTHORIZED", "auth:refresh"))
        reason = yield driver.waitForDisconnect("a")
        self.assertEqual(reason, "io server disconnect")
        self.assertEqual(self.service.core.tokens.claims, {})

    @inlineCallbacks
    def test_refreshKeepsSession(self) -> Inline:
        """
        C{auth:refresh} with a fresh token before expiry keeps the session:
        a second socket with the same short token is disconnected, the
        refreshed one still sends and receives.
        """
        driver = yield self.startDriver()
        short = token("alice", lifetime=1.5)
        yield self.login(driver, "a", "alice", bearer=short)
        yield self.login(driver, "a2", "alice", bearer=short)
        yield self.login(driver, "b", "bob", bearer=token("bob"))
        fresh = token("alice", lifetime=3600)
        (ack,) = yield driver.emit("a", "auth:refresh", {"token": fresh}, ack=True)
        self.assertEqual(ack["userId"], "alice")
        self.assertGreater(ack["expiresAt"], (time.time() + 3000) * 1000)
        yield driver.waitForDisconnect("a2")
        (receipt,) = yield driver.emit("a", "message", {"toId": "bob", "content": "still here"}, ack=True)
        self.assertEqual(receipt["status"], "delivered")
        (message,) = yield driver.waitFor("b", "message")
        self.assertEqual(message["fromId"], "alice")
        self.assertEqual(driver.events("a", "error"), [])

    @inlineCallbacks
    def test_refreshForAnotherUser(self) -> Inline:
        """
        A refresh with someone else's token is refused and changes nothing.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "a", "alice", bearer=token("alice"))
        (ack,) = yield driver.emit("a", "auth:refresh", {"token": token("bob")}, ack=True)
        self.assertEqual(ack["error"]["code"], "UNAUTHORIZED")
        self.assertEqual(self.service.core.tokens.claims[next(iter(self.service.core.tokens.claims))].subject,
                         "alice")

    @inlineCallbacks
    def test_historyIsolation(self) -> Inline:
        """
        Mallory, with her own valid token, cannot log in as alice and reads
        nothing of alice's conversation with bob through C{get_history}.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "a", "alice", bearer=token("alice"))
        yield self.login(driver, "b", "bob", bearer=token("bob"))
        yield driver.emit("a", "message", {"toId": "bob", "content": "secret"}, ack=True)
        yield self.connect(driver, "m", token("mallory"))
        yield self.refusedLogin(driver, "m", {"id": "alice", "name": "A"}, "UNAUTHORIZED")
        yield self.refusedLogin(driver, "m", {"id": "alice", "name": "A", "token": token("mallory")},
                                "UNAUTHORIZED")
        (ack,) = yield driver.emit("m", "get_history", {"friendId": "bob"}, ack=True)
        self.assertEqual(ack["error"]["code"], "NOT_LOGGED_IN")
        (ack,) = yield driver.emit("m", "user:login", {"id": "mallory", "name": "M"}, ack=True)
        self.assertEqual(ack["id"], "mallory")
        for friend in ("alice", "bob"):
            (page,) = yield driver.emit("m", "get_history", {"friendId": friend}, ack=True)
            self.assertEqual(page["messages"], [])
        (page,) = yield driver.emit("b", "get_history", {"friendId": "alice"}, ack=True)
        self.assertEqual([m["content"] for m in page["messages"]], ["secret"])

    @inlineCallbacks
    def test_fileAccess(self) -> Inline:
        """
        A file kept for an offline recipient has a signed link (FILES.md):
        it is its own credential (an C{<img src>} sends no token), a link
        with a forged signature is 403, and only its sender and recipient
        get a fresh link with C{file:url} (anyone else: C{NOT_FOUND}).
        """
        driver = yield self.startDriver()
        yield self.login(driver, "a", "alice", bearer=token("alice"))
        blob = bytes(range(256))
        yield driver.emit("a", "file_transfer",
                          {"toId": "bob", "fileName": "plan.bin", "data": blob}, ack=True)
        (page,) = yield driver.emit("a", "get_history", {"friendId": "bob"}, ack=True)
        url = self.url + page["messages"][0]["fileUrl"]

        @inlineCallbacks
        def fetch(headers: Optional[Dict[str, str]] = None, query: str = "") -> Inline:
            response = yield treq.get(url + query, headers=headers, persistent=False)
            body = yield response.content()
            return response.code, body

        self.assertEqual((yield fetch()), (200, blob))
        forged = url.rsplit("sig=", 1)[0] + "sig=" + "A" * 43
        response = yield treq.get(forged, persistent=False)
        yield response.content()
        self.assertEqual(response.code, 403)
        fileId = page["messages"][0]["fileId"]
        (answer,) = yield driver.emit("a", "file:url", {"fileId": fileId}, ack=True)
        self.assertIn("sig=", answer["fileUrl"])
        yield self.login(driver, "m", "mallory", bearer=token("mallory"))
        (refusal,) = yield driver.emit("m", "file:url", {"fileId": fileId}, ack=True)
        self.assertEqual(refusal["error"]["code"], "NOT_FOUND")


class JWTNodeTests(JWTScenario, TestCase):
    """
    JWT mode with Node's socket.io-client.
    """

    kind = "node"

    def cut(self, sid: str) -> None:
        """
        Break the TCP connection under WebSocket socket C{sid}.
        """
        socket = self.service.sio.getSocket(sid)
        assert socket is not None
        socket.session._channel.transport.abortConnection()

    @inlineCallbacks
    def test_recoveryNeedsConnectToken(self) -> Inline:
        """
        Connection state recovery (socket.io-client 4.6+) gives a cut
        socket its login back only if the reconnect's CONNECT carries a
        token for its user: with one, C{recovered} and still logged in;
        with the token only in C{user:login}, the reconnect is refused
        (C{connect_error} C{UNAUTHORIZED}) and the user goes offline.
        Before, that reconnect was answered C{recovered} without the login:
        a client that trusts C{recovered} went on logged out, untold.
        """
        driver = yield self.startDriver()
        yield self.login(driver, "b", "bob", bearer=token("bob"))
        reconnect = {"transports": ["websocket"], "reconnection": True, "reconnectionDelay": 100,
                     "reconnectionDelayMax": 100, "randomizationFactor": 0}
        carol = yield driver.connect("c", self.url, auth={"token": token("carol")}, **reconnect)
        yield driver.emit("c", "user:login", {"id": "carol", "name": "C"}, ack=True)
        self.cut(carol["id"])
        again = yield driver.waitForConnect("c")
        self.assertEqual((again["id"], again["recovered"]), (carol["id"], True))
        (ack,) = yield driver.emit("c", "message", {"toId": "bob", "content": "still carol"}, ack=True)
        self.assertEqual(ack["status"], "delivered", ack)

        alice = yield driver.connect("a", self.url, **reconnect)
        (ack,) = yield driver.emit("a", "user:login", {"id": "alice", "name": "A", "token": token("alice")},
                                   ack=True)
        self.assertEqual(ack["id"], "alice")
        yield driver.waitFor("b", "status_change", predicate=lambda a: a[0]["userId"] == "alice")
        self.cut(alice["id"])
        refused = yield driver.waitForReport(
            lambda r: r.get("type") == "connect_error" and r.get("client") == "a", 10, "no connect_error")
        self.assertEqual(refused["data"], {"code": "UNAUTHORIZED"})
        yield driver.waitFor("b", "status_change",
                             predicate=lambda a: a[0]["userId"] == "alice" and a[0]["status"] == "offline")


class JWTPythonTests(JWTScenario, TestCase):
    """
    JWT mode with python-socketio.
    """

    kind = "python"
