# -*- test-case-name: tests.test_cluster_connection -*-
"""
The node's link to Redis, on txredisapi (the client Synapse uses): one
connection for commands and one for publish/subscribe, kept up by us.

txredisapi speaks RESP, pipelines, parses replies and delivers pub/sub
messages; what a node needs beyond that is ours, here:

  - B{reconnecting, with a capped and jittered backoff, on the injected
    clock}. txredisapi's own reconnection (its C{ReconnectingClientFactory}
    pool slots) schedules on the global reactor and cannot be tested with
    a L{Clock}; so its protocols (C{RedisProtocol}, C{SubscriberProtocol})
    are connected by us through an endpoint and their reply timeout is
    put on our clock (the protocol's C{callLater} attribute).
  - B{subscribing again after a reconnection}: txredisapi's subscriber,
    like the official Node adapter, forgets its subscriptions with the
    connection; the link remembers its channels and patterns and
    subscribes to all of them on every new connection before it says it
    is up (L{RedisLink.ready} listeners then re-register presence).
  - B{saying why it is down} (L{RedisLink.reason}), for C{/health}.
  - AUTH and SELECT on each new connection (txredisapi does them through
    its factory, which we do not use).

Values are bytes both ways (C{charset=None}, no number conversion):
the node stores msgpack.
"""

from __future__ import annotations

import random
from typing import Any, Callable
from urllib.parse import unquote, urlsplit

import attrs
import txredisapi
from twisted.internet.defer import Deferred, DeferredList, fail
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

#: Seconds a command may wait for its reply before the connection is
#: dropped (and made again).
REPLY_TIMEOUT = 5.0
#: Seconds after a reply timer expired before the timeout is believed
#: (L{_SecondLook}).
SECOND_LOOK = 0.1
#: A reply timer that fires this many seconds late or more was held up by
#: this process's own long reactor turns: it starts over (L{_SecondLook}).
LATE = 0.5
#: How many times a reply timer may start over (so that a Redis that hangs
#: while this process is overloaded is still noticed, after at most this
#: many more reply timeouts).
MAX_RESTARTS = 5
#: Seconds a TCP connection attempt may take.
CONNECT_TIMEOUT = 5.0
#: The first and the largest delay between two connection attempts.
BACKOFF_START = 0.2
BACKOFF_MAX = 5.0


class RedisUnavailable(Exception):
    """
    No connection to Redis (down, unreachable, or reconnecting).
    """


@attrs.frozen
class RedisAddress:
    """
    Where Redis is: parsed from C{redis://[[user]:password@]host[:port][/db]}.
    """

    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    password: str | None = attrs.field(default=None, repr=False)
    username: str | None = None

    @classmethod
    def parse(cls, url: str) -> "RedisAddress":
        """
        Parse a C{redis://} URL.

        @raise ValueError: for anything else.
        """
        parts = urlsplit(url)
        if parts.scheme != "redis":
            raise ValueError(f"not a redis:// URL: {url!r}")
        path = parts.path.strip("/")
        try:
            db = int(path) if path else 0
            port = parts.port or 6379
        except ValueError:
            raise ValueError(f"bad port or database number in {url!r}")
        if db < 0:
            raise ValueError(f"bad database number in {url!r}")
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=port,
            db=db,
            password=unquote(parts.password) if parts.password else None,
            username=unquote(parts.username) if parts.username else None,
        )

    def __str__(self) -> str:
        return f"redis://{self.host}:{self.port}/{self.db}"


def backoffDelay(attempt: int, start: float = BACKOFF_START, cap: float = BACKOFF_MAX, rand: float | None = None) -> float:
    """
    Seconds before connection attempt number C{attempt} (1 after the first
    failure): doubling from C{start} up to C{cap}, then between half and
    all of it (jitter, so that N nodes do not reconnect in step).
    """
    base = min(cap, start * (2 ** max(0, attempt - 1)))
    r = random.random() if rand is None else rand
    return base * (0.5 + r / 2)


class _SecondLook:
    """
    A reply timer that does not blame Redis for this process's own stalls.

    Why: a reactor turn that takes seconds (a login storm fanning presence
    out to thousands of sockets, on a starved CPU) delays everything the
    reply timer measures: the command may wait in the transport's buffer
    until the next turn writes it, and the reply in the socket until the
    turn after reads it, while the timer runs. Dropping the link then
    (txredisapi aborts the connection) makes the node re-register
    everything in the middle of the storm and tell its peers it was gone.
    The same holds when the reactor is not stalled but behind: the
    subscriber connection's C{PING} is answered after every message
    published before it, and in a login storm each presence message fans
    out to every local socket, so its C{PONG} can wait seconds behind them
    in the socket while bytes keep coming.
    So: a timer that fires L{LATE} seconds late or more (the reactor was
    busy, not waiting), or while the connection has received bytes since
    the timer started (Redis is there; this process is behind), starts
    over, at most L{MAX_RESTARTS} times; one that fires on time on a
    silent connection looks again L{SECOND_LOOK} seconds later, after the
    reactor has read its sockets, and only then declares the reply lost.
    """

    __slots__ = ("clock", "delay", "func", "received", "started", "due", "restarts", "call")

    def __init__(
        self, clock: IReactorTime, delay: float, func: Callable[[], object], received: Callable[[], float]
    ) -> None:
        """
        @param received: when the connection last received bytes.
        """
        self.clock = clock
        self.delay = delay
        self.func = func
        self.received = received
        self.restarts = 0
        self.started = clock.seconds()
        self.due = self.started + delay
        self.call = clock.callLater(delay, self._expired)

    def _expired(self) -> None:
        now = self.clock.seconds()
        behind = now - self.due >= LATE or self.received() > self.started
        if behind and self.restarts < MAX_RESTARTS:
            self.restarts += 1
            self.started = now
            self.due = now + self.delay
            self.call = self.clock.callLater(self.delay, self._expired)
            return
        self.call = self.clock.callLater(SECOND_LOOK, self.func)

    def active(self) -> bool:
        return bool(self.call.active())

    def cancel(self) -> None:
        self.call.cancel()


def _replyTimers(clock: IReactorTime, received: Callable[[], float]) -> Callable[..., Any]:
    """
    The C{callLater} for a txredisapi protocol: its reply timers (the only
    calls it makes with a delay) take a second look (L{_SecondLook}); its
    immediate calls go to C{clock} as they are.
    """

    def callLater(delay: float, func: Callable[..., object], *args: Any, **kw: Any) -> Any:
        if delay > 0 and not args and not kw:
            return _SecondLook(clock, delay, func, received)
        return clock.callLater(delay, func, *args, **kw)

    return callLater


class _OneConnection(Factory):
    """
    The factory of one connection attempt (as C{connectProtocol}'s), not
    noisy: a node retrying a Redis that is down would log "Starting
    factory" and "Stopping factory" for each of its two connections at
    every attempt.
    """

    noisy = False

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> Any:
        return self._protocol


class _LinkProtocol(txredisapi.BaseRedisProtocol):
    """
    What both of a link's connections share: reply timers that take a
    second look (L{_SecondLook}), fed with when bytes last came from Redis,
    and loss reported to the link.
    """

    def __init__(self, link: "RedisLink") -> None:
        super().__init__(charset=None, replyTimeout=link.replyTimeout, convertNumbers=False)
        self.callLater = _replyTimers(link.clock, lambda: self.lastReceived)
        self.link = link
        #: when bytes last came from Redis (see L{_SecondLook})
        self.lastReceived = -1.0

    def dataReceived(self, data: bytes, unpause: bool = False) -> Any:
        self.lastReceived = self.link.clock.seconds()
        return super().dataReceived(data, unpause)

    def connectionLost(self, why: Failure) -> None:
        super().connectionLost(why)
        self.link._lost(self, why)


class _Subscriber(_LinkProtocol, txredisapi.SubscriberProtocol):
    """
    txredisapi's subscriber, reporting messages and loss to the link.
    """

    def messageReceived(self, pattern: bytes | None, channel: bytes, message: bytes) -> None:
        if self is self.link._subscriber:  # (not one the link gave up)
            self.link._message(channel, message, pattern)


class _Commands(_LinkProtocol):
    """
    txredisapi's command protocol, reporting loss to the link.
    """


OnMessage = Callable[[bytes, bytes, "bytes | None"], object]


class RedisLink:
    """
    Two connections to one Redis, made again whenever either is lost.

    @ivar up: both connections are made, authenticated and subscribed.
    @ivar reason: why not, while not up (for C{/health}).
    @ivar ready: told (no argument) each time the link comes up.
    @ivar lost: told (the reason, a string) each time it goes down.
    @ivar attempts: failed attempts since the link was last up.
    """

    log = Logger()

    def __init__(
        self,
        reactor: Any,
        address: RedisAddress,
        onMessage: OnMessage,
        replyTimeout: float = REPLY_TIMEOUT,
        connectTimeout: float = CONNECT_TIMEOUT,
        backoffStart: float = BACKOFF_START,
        backoffMax: float = BACKOFF_MAX,
        connect: Callable[[Any], Deferred[Any]] | None = None,
    ) -> None:
        """
        @param reactor: provides C{IReactorTCP} and L{IReactorTime}.
        @param onMessage: C{onMessage(channel, message, pattern)} for every
            pub/sub message (C{pattern} L{None} for plain subscriptions).
        @param connect: connects a protocol, returning a L{Deferred} of it
            (tests pass one over in-memory transports); by default TCP to
            C{address}.
        """
        self.clock: IReactorTime = reactor
        self.address = address
        self.onMessage = onMessage
        self.replyTimeout = replyTimeout
        self.backoffStart = backoffStart
        self.backoffMax = backoffMax
        if connect is None:
            endpoint = TCP4ClientEndpoint(reactor, address.host, address.port, timeout=connectTimeout)

            def connect(protocol: Any) -> Deferred[Any]:
                return endpoint.connect(_OneConnection(protocol))

        self._connectProtocol = connect
        self.channels: list[bytes] = []
        self.patterns: list[bytes] = []
        self.up = False
        self.reason: str | None = "not connected yet"
        self.ready: list[Callable[[], object]] = []
        self.lost: list[Callable[[str], object]] = []
        self.attempts = 0
        self._running = False
        self._commands: Any = None
        self._subscriber: Any = None
        self._retry: IDelayedCall | None = None
        self._generation = 0

    # ---- life

    def start(self) -> None:
        """
        Connect (and keep connecting).
        """
        self._running = True
        self._connect()

    def stop(self) -> Deferred[Any]:
        """
        Disconnect and stop reconnecting; fires once both connections are
        closed.
        """
        self._running = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        waits = []
        protocols = (self._commands, self._subscriber)
        self._commands = self._subscriber = None
        self._generation += 1
        for protocol in protocols:
            if protocol is not None and protocol.transport is not None and protocol.connected:
                waits.append(protocol.whenDisconnected())
                protocol.transport.loseConnection()
        self.up = False
        self.reason = "stopped"
        return DeferredList(waits)

    def subscribe(self, channel: str | bytes) -> None:
        """
        Subscribe to C{channel}, now (if up) and after every reconnection.
        """
        data = channel.encode("utf-8") if isinstance(channel, str) else channel
        if data not in self.channels:
            self.channels.append(data)
            if self.up:
                self._subscriber.subscribe([data])

    def psubscribe(self, pattern: str | bytes) -> None:
        """
        Subscribe to the channels matching C{pattern}, now and after every
        reconnection.
        """
        data = pattern.encode("utf-8") if isinstance(pattern, str) else pattern
        if data not in self.patterns:
            self.patterns.append(data)
            if self.up:
                self._subscriber.psubscribe([data])

    # ---- commands

    def execute(self, *args: bytes | str | int | float) -> Deferred[Any]:
        """
        Run one command; fails with L{RedisUnavailable} at once while the
        link is down, with an error reply as txredisapi's C{ResponseError}.
        """
        if not self.up:
            return fail(RedisUnavailable(self.reason or "down"))
        try:
            d: Deferred[Any] = self._commands.execute_command(*args)
        except txredisapi.ConnectionError as error:
            return fail(RedisUnavailable(str(error)))
        return d

    def publish(self, channel: str | bytes, message: bytes) -> Deferred[Any]:
        """
        C{PUBLISH}; fire-and-forget callers use L{send}.
        """
        return self.execute("PUBLISH", channel, message)

    def send(self, *args: bytes | str | int | float) -> None:
        """
        Run a command whose answer nobody waits for (a failure is logged,
        once the link is up; while it is down nothing is sent: what
        matters is registered again at reconnection).
        """
        if not self.up:
            return
        self.execute(*args).addErrback(self._sendFailed, args[0])

    def _sendFailed(self, failure: Failure, command: object) -> None:
        if not failure.check(RedisUnavailable, txredisapi.ConnectionError):
            self.log.warn("redis {command!r} failed: {error}", command=command, error=failure.getErrorMessage())

    def ping(self) -> Deferred[Any]:
        """
        PING on both connections (a half-open subscriber connection is
        found this way: it times out and is dropped).
        """
        if not self.up:
            return fail(RedisUnavailable(self.reason or "down"))
        return DeferredList(
            [self._commands.execute_command("PING"), self._subscriber.execute_command("PING")],
            fireOnOneErrback=True,
            consumeErrors=True,
        )

    # ---- connecting

    def _connect(self) -> None:
        self._retry = None
        if not self._running:
            return
        self._generation += 1
        generation = self._generation
        commands, subscriber = _Commands(self), _Subscriber(self)
        self._commands, self._subscriber = commands, subscriber
        d = DeferredList(
            [
                self._connectProtocol(commands).addCallback(self._connected),
                self._connectProtocol(subscriber).addCallback(self._connected),
            ],
            fireOnOneErrback=True,
            consumeErrors=True,
        )
        d.addCallback(lambda _: self._setUpCurrent(commands, subscriber, generation))
        d.addCallbacks(lambda _: self._isUp(generation), lambda f: self._failed(f, generation))

    def _connected(self, protocol: Any) -> Any:
        """
        A connection made after its attempt was given up (the link was
        stopped, or the other connection failed, while it was being made)
        is closed at once: nothing else would ever close it, and its
        subscriptions would go on hearing the cluster.
        """
        if protocol is not self._commands and protocol is not self._subscriber:
            if protocol.transport is not None:
                protocol.transport.abortConnection()
        return protocol

    def _setUpCurrent(self, commands: Any, subscriber: Any, generation: int) -> Deferred[None] | None:
        if generation != self._generation or not self._running:
            return None
        return Deferred.fromCoroutine(self._setUp(commands, subscriber))

    async def _setUp(self, commands: Any, subscriber: Any) -> None:
        address = self.address
        for protocol in (commands, subscriber):
            if address.password is not None:
                args = ["AUTH", address.password] if address.username is None else ["AUTH", address.username, address.password]
                await protocol.execute_command(*args)
        if address.db:
            await commands.execute_command("SELECT", address.db)
        if self.channels:
            await subscriber.subscribe(list(self.channels))
        if self.patterns:
            await subscriber.psubscribe(list(self.patterns))

    def _isUp(self, generation: int) -> None:
        if generation != self._generation or not self._running:
            return
        self.up = True
        self.reason = None
        if self.attempts:
            self.log.info("redis {address} reachable again after {n} attempts", address=str(self.address), n=self.attempts)
        self.attempts = 0
        for listener in list(self.ready):
            try:
                listener()
            except Exception:
                self.log.failure("redis ready listener")

    def _failed(self, failure: Failure, generation: int) -> None:
        if generation != self._generation:
            return
        error = failure.value
        if hasattr(error, "subFailure"):
            error = error.subFailure.value
        self._down(f"{type(error).__name__}: {error}")

    def _lost(self, protocol: Any, why: Failure) -> None:
        if protocol is not self._commands and protocol is not self._subscriber:
            return
        self._down(f"connection lost: {why.getErrorMessage()}")

    def _down(self, reason: str) -> None:
        self._generation += 1
        wasUp = self.up
        self.up = False
        self.reason = f"redis {self.address}: {reason}"
        protocols = (self._commands, self._subscriber)
        self._commands = self._subscriber = None
        for protocol in protocols:
            if protocol is not None and protocol.transport is not None:
                protocol.transport.abortConnection()
        if wasUp:
            self.log.warn("redis unreachable: {reason}", reason=reason)
            for listener in list(self.lost):
                try:
                    listener(self.reason)
                except Exception:
                    self.log.failure("redis lost listener")
        if self._running and self._retry is None:
            self.attempts += 1
            delay = backoffDelay(self.attempts, self.backoffStart, self.backoffMax)
            self._retry = self.clock.callLater(delay, self._connect)

    def _message(self, channel: bytes, message: bytes, pattern: bytes | None) -> None:
        try:
            self.onMessage(channel, message, pattern)
        except Exception:
            self.log.failure("handling a redis message on {channel!r}", channel=channel)
