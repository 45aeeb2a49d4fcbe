"""
Tests for L{crm_im.auth} (token verification) and L{crm_im.im.tokens}
(tokens during a connection), on a L{task.Clock}.
"""

from __future__ import annotations

import os
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from crm_im.auth import (
    AuthenticationError,
    Claims,
    IAuthenticator,
    JWTAuthenticator,
    OpenAuthenticator,
    authenticatorFor,
    tokenFromAuth,
)
from crm_im.config import Config
from crm_im.im.errors import RATE_LIMITED, UNAUTHORIZED, IMError
from crm_im.im.tokens import TokenGate
from crm_im.limits import FailureLimiter
from crm_im.tap import Options

SECRET = "test-secret-0123456789-0123456789-abcdef"
NOW = 1_700_000_000.0


def hsToken(secret: str = SECRET, **claims: Any) -> str:
    """
    An HS256 token with C{claims} (C{sub} "alice", C{exp} an hour on, unless
    given).
    """
    payload: dict[str, Any] = {"sub": "alice", "exp": int(NOW) + 3600}
    payload.update(claims)
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, secret, algorithm="HS256")


def publicPem(key: Any) -> bytes:
    """
    The PEM of C{key}'s public half.
    """
    return bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


class JWTAuthenticatorTests(SynchronousTestCase):
    """
    L{JWTAuthenticator} checks signature, algorithm, claims and time.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.auth = JWTAuthenticator.withSecret(self.clock, SECRET)

    def refused(self, token: Any, auth: JWTAuthenticator | None = None) -> str:
        """
        Verify C{token}, expecting a refusal; return its message.
        """
        error = self.assertRaises(AuthenticationError, (auth or self.auth).verify, token)
        return error.message

    def test_provides(self) -> None:
        """
        Both authenticators provide L{IAuthenticator}; only JWT requires a
        token.
        """
        self.assertTrue(IAuthenticator.providedBy(self.auth))
        self.assertTrue(IAuthenticator.providedBy(OpenAuthenticator()))
        self.assertTrue(self.auth.required)
        self.assertFalse(OpenAuthenticator().required)

    def test_valid(self) -> None:
        """
        A valid HS256 token gives its subject and expiry.
        """
        self.assertEqual(self.auth.verify(hsToken()), Claims("alice", NOW + 3600))

    def test_integerSubject(self) -> None:
        """
        An integer C{sub} (not allowed by RFC 7519, sent anyway) is kept as a
        string, as user ids are.
        """
        token = jwt.encode({"sub": 42}, SECRET, algorithm="HS256")
        self.assertEqual(self.auth.verify(token).subject, "42")

    def test_refusals(self) -> None:
        """
        Missing, malformed, forged, subject-less, expired, not-yet-valid and
        alg=none tokens are refused with a message naming why.
        """
        self.assertIn("required", self.refused(""))
        self.assertIn("required", self.refused(None))
        self.assertIn("malformed", self.refused("not.a.token"))
        self.assertIn("signature", self.refused(hsToken(secret="another-secret-of-enough-length-xyz")))
        self.assertIn("'sub'", self.refused(hsToken(sub=None)))
        self.assertIn("expired", self.refused(hsToken(exp=int(NOW) - 1)))
        self.assertIn("not valid yet", self.refused(hsToken(nbf=int(NOW) + 60)))
        none = jwt.encode({"sub": "alice"}, None, algorithm="none")
        self.assertIn("algorithm", self.refused(none))
        self.assertIn("too long", self.refused("a" * 9000))

    def test_expiryFollowsClock(self) -> None:
        """
        Expiry is judged by the injected clock, with the leeway.
        """
        token = hsToken(exp=int(NOW) + 10)
        self.clock.advance(10)
        self.assertIn("expired", self.refused(token))
        lenient = JWTAuthenticator.withSecret(self.clock, SECRET, leeway=5)
        self.assertEqual(lenient.verify(token).subject, "alice")

    def test_requireExp(self) -> None:
        """
        A token without C{exp} never expires, unless C{exp} is required
        (C{--jwt-require-exp}): then it is refused, saying why.
        """
        forever = jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256")
        self.assertEqual(self.auth.verify(forever), Claims("alice", None))
        strict = JWTAuthenticator.withSecret(self.clock, SECRET, requireExp=True)
        with self.assertRaises(AuthenticationError) as caught:
            strict.verify(forever)
        self.assertEqual(str(caught.exception), "invalid token: no 'exp' claim")
        self.assertEqual(strict.verify(hsToken()), Claims("alice", NOW + 3600))

    def test_audienceAndIssuer(self) -> None:
        """
        With an audience or issuer configured, a token must carry it.
        """
        auth = JWTAuthenticator.withSecret(self.clock, SECRET, audience="crm", issuer="https://sso")
        self.assertEqual(auth.verify(hsToken(aud="crm", iss="https://sso")).subject, "alice")
        self.assertIn("audience", self.refused(hsToken(aud="other", iss="https://sso"), auth))
        self.assertIn("issuer", self.refused(hsToken(aud="crm", iss="https://evil"), auth))

    def test_rs256AndEs256(self) -> None:
        """
        A public key verifies RS256 and ES256 tokens; an HS256 token signed
        with the public key as secret (algorithm confusion) is refused.
        """
        rsaKey = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        rsaAuth = JWTAuthenticator.withPublicKey(self.clock, publicPem(rsaKey))
        token = jwt.encode({"sub": "bob", "exp": int(NOW) + 60}, rsaKey, algorithm="RS256")
        self.assertEqual(rsaAuth.verify(token), Claims("bob", NOW + 60))
        ecKey = ec.generate_private_key(ec.SECP256R1())
        ecAuth = JWTAuthenticator.withPublicKey(self.clock, publicPem(ecKey))
        self.assertEqual(ecAuth.verify(jwt.encode({"sub": "carol"}, ecKey, algorithm="ES256")).subject, "carol")
        self.assertIn("algorithm", self.refused(token, ecAuth))
        self.assertIn("algorithm", self.refused(hsToken(), rsaAuth))

    def test_badPublicKey(self) -> None:
        """
        A file that is no public key is refused when the authenticator is
        built.
        """
        self.assertRaises(ValueError, JWTAuthenticator.withPublicKey, self.clock, b"not a key")

    def test_tokenFromAuth(self) -> None:
        """
        The CONNECT auth object's C{token}, if any, must be a string.
        """
        self.assertEqual(tokenFromAuth({"token": "t"}), "t")
        self.assertIsNone(tokenFromAuth({}))
        self.assertIsNone(tokenFromAuth(None))
        self.assertIsNone(tokenFromAuth(["token"]))
        self.assertRaises(AuthenticationError, tokenFromAuth, {"token": {"toString": "x"}})

    def test_authenticatorFor(self) -> None:
        """
        The configuration picks the mode; JWT without a key is an error.
        """
        self.assertIsInstance(authenticatorFor(Config(), self.clock), OpenAuthenticator)
        auth = authenticatorFor(Config(auth="jwt", jwtSecret=SECRET, jwtAudience="crm"), self.clock)
        self.assertIsInstance(auth, JWTAuthenticator)
        self.assertRaises(ValueError, authenticatorFor, Config(auth="jwt"), self.clock)
        self.assertRaises(ValueError, authenticatorFor, Config(auth="nope"), self.clock)

    def test_secretNotInRepr(self) -> None:
        """
        The secret never appears in the configuration's repr (logs).
        """
        self.assertNotIn(SECRET, repr(Config(auth="jwt", jwtSecret=SECRET)))


class OptionsTests(SynchronousTestCase):
    """
    The C{twistd crm_im} authentication and limit options.
    """

    def parse(self, *argv: str) -> Config:
        """
        Parse C{argv}; return the configuration.
        """
        options = Options()
        options.parseOptions(list(argv))
        config: Config = options.config
        return config

    def test_default(self) -> None:
        """
        Open mode by default.
        """
        self.assertEqual(self.parse().auth, "open")

    def test_secretFromEnvironment(self) -> None:
        """
        C{$CRM_IM_JWT_SECRET} gives the secret, so it stays out of C{ps}.
        """
        os.environ["CRM_IM_JWT_SECRET"] = SECRET
        self.addCleanup(os.environ.pop, "CRM_IM_JWT_SECRET", None)
        config = self.parse("--auth", "jwt", "--jwt-audience", "crm")
        self.assertEqual((config.auth, config.jwtSecret, config.jwtAudience), ("jwt", SECRET, "crm"))
        self.assertFalse(config.jwtRequireExp)
        config = self.parse("--auth", "jwt", "--jwt-require-exp")
        self.assertTrue(config.jwtRequireExp)
        self.assertTrue(authenticatorFor(config, Clock()).requireExp)  # type: ignore[attr-defined]

    def test_publicKeyFile(self) -> None:
        """
        C{--jwt-public-key} reads a PEM file.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(publicPem(key))
        config = self.parse("--auth", "jwt", "--jwt-public-key", path)
        self.assertEqual(config.jwtPublicKey, publicPem(key))

    def test_jwtNeedsKey(self) -> None:
        """
        JWT mode without a key, with both, or with an unreadable or unusable
        key file is a usage error.
        """
        self.assertRaises(usage.UsageError, self.parse, "--auth", "jwt")
        self.assertRaises(usage.UsageError, self.parse, "--auth", "jwt", "--jwt-public-key", "/nonexistent")
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(b"garbage")
        self.assertRaises(usage.UsageError, self.parse, "--auth", "jwt", "--jwt-public-key", path)
        self.assertRaises(usage.UsageError, self.parse, "--auth", "ldap")

    def test_limits(self) -> None:
        """
        The limit options land in L{Config.limits} and the Engine.IO
        configuration.
        """
        config = self.parse(
            "--rate-messages", "5", "--burst-messages", "7", "--max-connections-per-ip", "3",
            "--limit-loopback", "--max-devices-per-user", "2", "--max-sessions", "99",
        )
        self.assertEqual(config.limits.messagesPerSecond, 5.0)
        self.assertEqual(config.limits.messageBurst, 7)
        self.assertEqual(config.limits.devicesPerUser, 2)
        engine = config.engineConfig()
        self.assertEqual((engine.maxSessionsPerAddress, engine.exemptAddresses, engine.maxSessions), (3, (), 99))
        self.assertRaises(usage.UsageError, self.parse, "--rate-events", "-1")


class TokenGateTests(SynchronousTestCase):
    """
    L{TokenGate}: tokens per socket, expiry on one wheel, failures per
    address.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        self.expired: list[str] = []
        self.failures = FailureLimiter(perMinute=6, burst=3)
        self.gate = TokenGate(
            JWTAuthenticator.withSecret(self.clock, SECRET), self.clock, self.expired.append, self.failures
        )
        self.gate.start()
        self.addCleanup(self.gate.stop)

    def test_connectToken(self) -> None:
        """
        A CONNECT token is kept and lets the socket log in as its subject
        without sending it again; another id is refused.
        """
        self.gate.connected("s1", {"token": hsToken()}, "1.2.3.4")
        self.gate.login("s1", "alice", None, "1.2.3.4")
        error = self.assertRaises(IMError, self.gate.login, "s1", "mallory", None, "1.2.3.4")
        self.assertEqual(error.code, UNAUTHORIZED)

    def test_connectRefused(self) -> None:
        """
        A bad CONNECT token is refused with CONNECT_ERROR data carrying the
        code; a CONNECT without one is let through to log in with one.
        """
        refusal = self.assertRaises(
            IMError, self.gate.connected, "s1", {"token": hsToken(exp=int(NOW) - 5)}, "1.2.3.4"
        )
        self.assertEqual((refusal.code, refusal.message), (UNAUTHORIZED, "token expired"))
        self.gate.connected("s2", {}, "1.2.3.4")
        error = self.assertRaises(IMError, self.gate.login, "s2", "alice", None, "1.2.3.4")
        self.assertEqual(error.code, UNAUTHORIZED)
        self.gate.login("s2", "alice", hsToken(), "1.2.3.4")

    def test_expiry(self) -> None:
        """
        A socket whose token expires is reported once, at most one sweep
        late; a refresh before then moves its deadline.
        """
        self.gate.login("s1", "alice", hsToken(exp=int(NOW) + 10), "a")
        self.gate.login("s2", "alice", hsToken(exp=int(NOW) + 10), "a")
        self.clock.advance(9)
        ack = self.gate.refresh("s2", hsToken(exp=int(NOW) + 100), "alice", "a")
        self.assertEqual(ack, {"userId": "alice", "expiresAt": (int(NOW) + 100) * 1000})
        self.clock.pump([0.25] * 8)
        self.assertEqual(self.expired, ["s1"])
        self.assertNotIn("s1", self.gate.claims)
        self.clock.pump([1] * 100)
        self.assertEqual(self.expired, ["s1", "s2"])
        self.assertEqual(self.gate.pendingExpiries(), 0)

    def test_refreshOtherUser(self) -> None:
        """
        A refresh with a token for someone else is refused and the old
        deadline stands.
        """
        self.gate.login("s1", "alice", hsToken(exp=int(NOW) + 10), "a")
        error = self.assertRaises(IMError, self.gate.refresh, "s1", hsToken(sub="bob"), "alice", "a")
        self.assertEqual(error.code, UNAUTHORIZED)
        self.clock.pump([1] * 12)
        self.assertEqual(self.expired, ["s1"])

    def test_forget(self) -> None:
        """
        A socket that went has no deadline left.
        """
        self.gate.login("s1", "alice", hsToken(), "a")
        self.gate.forget("s1")
        self.assertEqual((self.gate.pendingExpiries(), self.gate.claims), (0, {}))

    def test_failuresPerAddress(self) -> None:
        """
        After C{burst} failures from one address, even a good token from it
        is refused with C{RATE_LIMITED} until the bucket refills; other
        addresses are unaffected.
        """
        for _ in range(3):
            error = self.assertRaises(IMError, self.gate.login, "s", "alice", "bad", "6.6.6.6")
            self.assertEqual(error.code, UNAUTHORIZED)
        error = self.assertRaises(IMError, self.gate.login, "s", "alice", hsToken(), "6.6.6.6")
        self.assertEqual(error.code, RATE_LIMITED)
        refusal = self.assertRaises(IMError, self.gate.connected, "t", {"token": hsToken()}, "6.6.6.6")
        self.assertEqual(refusal.code, RATE_LIMITED)
        self.gate.login("s", "alice", hsToken(), "7.7.7.7")
        self.clock.advance(10)
        self.gate.login("s", "alice", hsToken(), "6.6.6.6")

    def test_openMode(self) -> None:
        """
        In open mode the gate checks and keeps nothing.
        """
        gate = TokenGate(OpenAuthenticator(), self.clock, self.expired.append, self.failures)
        gate.connected("s", {"token": "whatever"}, "a")
        gate.login("s", "anyone", None, "a")
        self.assertEqual(gate.refresh("s", "x", "anyone", "a"), {"userId": "anyone", "expiresAt": None})
        self.assertEqual(gate.claims, {})
