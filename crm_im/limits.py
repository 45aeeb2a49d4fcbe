# -*- test-case-name: tests.test_limits -*-
"""
Abuse control: token buckets and counters, as pure state driven by an
explicit C{now} (the caller passes its injected clock's C{seconds()}).

  - L{TokenBucket}: C{rate} tokens per second up to C{burst}.
  - L{SocketRateLimiter}: per socket, one bucket for every event and one
    for messages and files; refusals are charged to a third bucket, and a
    socket that keeps sending after being refused is disconnected.
  - L{FailureLimiter}: per key (an IP address), failed attempts (bad
    tokens); once its bucket is empty further attempts are refused until
    it refills.
  - L{AddressCounter}: concurrent sessions per IP address.

Nothing here drops an accepted message: a limit refuses an event before
the application acts on it, and the client is told (C{RATE_LIMITED}).
"""

from __future__ import annotations

from typing import Iterable

import attrs

ALLOW = 0
REFUSE = 1
DISCONNECT = 2


@attrs.frozen
class LimitSettings:
    """
    The limits an operator can set; C{0} turns a limit off.

    @ivar eventsPerSecond: sustained events per socket.
    @ivar eventBurst: events a socket may send at once.
    @ivar messagesPerSecond: sustained C{message} and C{file_transfer}
        events per socket.
    @ivar messageBurst: messages a socket may send at once.
    @ivar abuseRefusals: refusals (beyond one a second) after which a
        socket that goes on sending is disconnected.
    @ivar connectionsPerAddress: concurrent sessions per IP address.
    @ivar exemptAddresses: addresses without a per-address limit: by
        default loopback, where a local reverse proxy would make every
        client look like one address (limit per client at the proxy).
    @ivar devicesPerUser: sockets logged in as one user at once.
    @ivar loginFailuresPerMinute: failed token checks per IP address and
        minute, sustained (JWT mode).
    @ivar loginFailureBurst: failed token checks per IP address at once.
    """

    eventsPerSecond: float = 100.0
    eventBurst: int = 500
    messagesPerSecond: float = 50.0
    messageBurst: int = 250
    abuseRefusals: int = 200
    connectionsPerAddress: int = 1000
    exemptAddresses: tuple[str, ...] = ("127.0.0.1", "::1")
    devicesPerUser: int = 16
    loginFailuresPerMinute: float = 10.0
    loginFailureBurst: int = 20


class TokenBucket:
    """
    C{rate} tokens a second, at most C{burst}; starts full.
    """

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def _refill(self, now: float) -> None:
        elapsed = now - self.stamp
        if elapsed > 0:
            tokens = self.tokens + elapsed * self.rate
            self.tokens = tokens if tokens < self.burst else self.burst
        self.stamp = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """
        Take C{cost} tokens if there are that many.

        @return: whether they were taken.
        """
        # _refill, inlined: this runs twice for every message.
        elapsed = now - self.stamp
        tokens = self.tokens
        if elapsed > 0:
            tokens += elapsed * self.rate
            if tokens > self.burst:
                tokens = self.burst
        self.stamp = now
        if tokens >= cost:
            self.tokens = tokens - cost
            return True
        self.tokens = tokens
        return False

    def available(self, now: float) -> float:
        """
        The tokens there are at C{now}.
        """
        self._refill(now)
        return self.tokens

    def full(self, now: float) -> bool:
        """
        Whether the bucket refilled completely (its state says nothing).
        """
        return self.available(now) >= self.burst


class _SocketBuckets:
    __slots__ = ("events", "messages", "refusals")

    def __init__(self, settings: LimitSettings, now: float) -> None:
        self.events = (
            TokenBucket(settings.eventsPerSecond, settings.eventBurst, now) if settings.eventsPerSecond > 0 else None
        )
        self.messages = (
            TokenBucket(settings.messagesPerSecond, settings.messageBurst, now)
            if settings.messagesPerSecond > 0
            else None
        )
        self.refusals = TokenBucket(1.0, settings.abuseRefusals, now) if settings.abuseRefusals > 0 else None


class SocketRateLimiter:
    """
    The event and message rates of every socket.
    """

    def __init__(self, settings: LimitSettings) -> None:
        self.settings = settings
        self._buckets: dict[str, _SocketBuckets] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def check(self, sid: str, isMessage: bool, now: float) -> int:
        """
        Charge one event (and one message if C{isMessage}) to C{sid}.

        @return: L{ALLOW}, L{REFUSE} (answer C{RATE_LIMITED}) or
            L{DISCONNECT} (persistent abuse).
        """
        buckets = self._buckets.get(sid)
        if buckets is None:
            buckets = self._buckets[sid] = _SocketBuckets(self.settings, now)
        events = buckets.events
        if events is None or events.take(now):
            messages = buckets.messages
            if not isMessage or messages is None or messages.take(now):
                return ALLOW
            # A refused message gives its event token back: the client may
            # still read, type and ack while its messages wait.
            if events is not None:
                events.tokens += 1
        refusals = buckets.refusals
        if refusals is None or refusals.take(now):
            return REFUSE
        return DISCONNECT

    def forget(self, sid: str) -> None:
        """
        Drop the state of a socket that went.
        """
        self._buckets.pop(sid, None)


class FailureLimiter:
    """
    Failed attempts per key, as a bucket per key that only failures drain.

    Keys whose bucket refilled are pruned when the table grows, so an
    attacker rotating addresses cannot grow it without bound.
    """

    def __init__(self, perMinute: float, burst: int, maxKeys: int = 10000) -> None:
        self.rate = perMinute / 60.0
        self.burst = burst
        self.maxKeys = maxKeys
        self._buckets: dict[str, TokenBucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    @property
    def enabled(self) -> bool:
        """
        Whether a limit is set.
        """
        return self.rate > 0 and self.burst > 0

    def allowed(self, key: str, now: float) -> bool:
        """
        Whether C{key} may make an attempt now.
        """
        bucket = self._buckets.get(key)
        return not self.enabled or bucket is None or bucket.available(now) >= 1

    def failed(self, key: str, now: float) -> None:
        """
        Charge a failed attempt to C{key}.
        """
        if not self.enabled:
            return
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.maxKeys:
                self._prune(now)
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
        bucket.take(now)

    def _prune(self, now: float) -> None:
        for key in [key for key, bucket in self._buckets.items() if bucket.full(now)]:
            del self._buckets[key]
        if len(self._buckets) >= self.maxKeys:
            # Everyone is failing: forget the oldest half rather than grow.
            for key in list(self._buckets)[: len(self._buckets) // 2]:
                del self._buckets[key]


class AddressCounter:
    """
    Concurrent sessions per address, with a limit.
    """

    def __init__(self, limit: int, exempt: Iterable[str] = ()) -> None:
        self.limit = limit
        self.exempt = frozenset(exempt)
        self.counts: dict[str, int] = {}

    def full(self, address: str) -> bool:
        """
        Whether C{address} is at its limit.
        """
        return self.limit > 0 and address not in self.exempt and self.counts.get(address, 0) >= self.limit

    def add(self, address: str) -> None:
        """
        Count one more session from C{address}.
        """
        self.counts[address] = self.counts.get(address, 0) + 1

    def remove(self, address: str) -> None:
        """
        Count one session fewer from C{address}.
        """
        count = self.counts.get(address, 0) - 1
        if count > 0:
            self.counts[address] = count
        else:
            self.counts.pop(address, None)
