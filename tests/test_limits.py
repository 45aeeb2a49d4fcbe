"""
Tests for L{crm_im.limits}: buckets and counters with an explicit C{now}.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from crm_im.engineio.config import EngineIOConfig
from crm_im.engineio.server import TOO_MANY_SESSIONS, EngineIOError, EngineIOServer
from crm_im.limits import (
    ALLOW,
    DISCONNECT,
    REFUSE,
    AddressCounter,
    FailureLimiter,
    LimitSettings,
    SocketRateLimiter,
    TokenBucket,
)
from tests.test_eio_session import RecordingApp


class TokenBucketTests(SynchronousTestCase):
    """
    L{TokenBucket}.
    """

    def test_burstThenRate(self) -> None:
        """
        A full bucket gives C{burst} tokens at once, then C{rate} a second,
        never more than C{burst}.
        """
        bucket = TokenBucket(rate=2, burst=3, now=0)
        self.assertEqual([bucket.take(0) for _ in range(4)], [True, True, True, False])
        self.assertTrue(bucket.take(0.5))
        self.assertFalse(bucket.take(0.5))
        self.assertTrue(bucket.full(100))
        self.assertEqual(bucket.available(200), 3)

    def test_clockBackwards(self) -> None:
        """
        A clock that steps back adds no tokens.
        """
        bucket = TokenBucket(rate=1, burst=1, now=10)
        self.assertTrue(bucket.take(10))
        self.assertFalse(bucket.take(5))
        self.assertFalse(bucket.take(5.5))


class SocketRateLimiterTests(SynchronousTestCase):
    """
    L{SocketRateLimiter}.
    """

    def test_messages(self) -> None:
        """
        Messages are refused past their own bucket while other events go
        on; a refused message costs no event token.
        """
        limiter = SocketRateLimiter(
            LimitSettings(eventsPerSecond=10, eventBurst=3, messagesPerSecond=1, messageBurst=1, abuseRefusals=10)
        )
        self.assertEqual(limiter.check("s", True, 0), ALLOW)
        self.assertEqual(limiter.check("s", True, 0), REFUSE)
        self.assertEqual([limiter.check("s", False, 0) for _ in range(3)], [ALLOW, ALLOW, REFUSE])
        self.assertEqual(limiter.check("t", True, 0), ALLOW)
        self.assertEqual(limiter.check("s", True, 1.0), ALLOW)

    def test_abuse(self) -> None:
        """
        A socket that keeps sending after C{abuseRefusals} refusals is told
        to go; one that slows down is not.
        """
        limiter = SocketRateLimiter(LimitSettings(eventsPerSecond=1, eventBurst=1, abuseRefusals=3))
        verdicts = [limiter.check("s", False, 0) for _ in range(5)]
        self.assertEqual(verdicts, [ALLOW, REFUSE, REFUSE, REFUSE, DISCONNECT])
        limiter.forget("s")
        self.assertEqual(len(limiter), 0)
        polite = [limiter.check("p", False, t * 0.6) for t in range(20)]
        self.assertNotIn(DISCONNECT, polite)

    def test_off(self) -> None:
        """
        Zero rates turn the limits off.
        """
        limiter = SocketRateLimiter(LimitSettings(eventsPerSecond=0, messagesPerSecond=0))
        self.assertEqual({limiter.check("s", True, 0) for _ in range(10000)}, {ALLOW})


class FailureLimiterTests(SynchronousTestCase):
    """
    L{FailureLimiter}.
    """

    def test_failuresOnly(self) -> None:
        """
        Only failures drain a key's bucket; it refills with time.
        """
        limiter = FailureLimiter(perMinute=60, burst=2)
        self.assertTrue(limiter.allowed("a", 0))
        limiter.failed("a", 0)
        limiter.failed("a", 0)
        self.assertFalse(limiter.allowed("a", 0))
        self.assertTrue(limiter.allowed("b", 0))
        self.assertTrue(limiter.allowed("a", 1.0))

    def test_bounded(self) -> None:
        """
        The table of keys stays bounded when addresses rotate.
        """
        limiter = FailureLimiter(perMinute=60, burst=2, maxKeys=100)
        for i in range(10000):
            limiter.failed(f"10.0.{i // 256}.{i % 256}", 0)
        self.assertLessEqual(len(limiter), 100)


class AddressCounterTests(SynchronousTestCase):
    """
    L{AddressCounter} and its use by L{EngineIOServer.checkRequest}.
    """

    def test_counter(self) -> None:
        """
        An address is full at the limit; exempt addresses never are; counts
        go back to nothing.
        """
        counter = AddressCounter(2, exempt=["127.0.0.1"])
        for address in ("a", "a", "127.0.0.1", "127.0.0.1", "127.0.0.1"):
            counter.add(address)
        self.assertTrue(counter.full("a"))
        self.assertFalse(counter.full("127.0.0.1"))
        self.assertFalse(counter.full("b"))
        for address in ("a", "a", "127.0.0.1", "127.0.0.1", "127.0.0.1"):
            counter.remove(address)
        self.assertEqual(counter.counts, {})

    def test_engineHandshakes(self) -> None:
        """
        The Engine.IO server refuses a handshake from an address at its
        limit with HTTP 429, and accepts it again once a session closed.
        """
        engine = EngineIOServer(RecordingApp(), Clock(), EngineIOConfig(maxSessionsPerAddress=2))
        query = {"EIO": "4", "transport": "polling"}
        first = engine.handshake("polling", "9.9.9.9")
        engine.handshake("polling", "9.9.9.9")
        error = self.assertRaises(EngineIOError, engine.checkRequest, b"GET", query, False, None, "9.9.9.9")
        self.assertEqual((error.code, error.message, error.status), (TOO_MANY_SESSIONS.code, TOO_MANY_SESSIONS.message, TOO_MANY_SESSIONS.status))
        self.assertEqual(error.status, 429)
        engine.checkRequest(b"GET", query, False, None, "8.8.8.8")
        first.close("forced close", flush=False)
        engine.sessionClosed(first)
        engine.checkRequest(b"GET", query, False, None, "9.9.9.9")
