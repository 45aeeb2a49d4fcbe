# -*- test-case-name: tests.test_cluster -*-
"""
A small Redis client for Twisted: RESP2, pipelined commands, publish and
subscribe, and reconnection with a capped, jittered backoff on an injected
clock.

Why not txredisapi (the client Synapse uses): its reconnection and reply
timeouts run on the global reactor (our rule: every timer on an injected
clock, so that outages are tested with a L{Clock}), its subscriber does
not subscribe again after a reconnection (the very bug of the official
Node adapter that the contract asks us not to have), and it has no type
annotations. What a node needs is small: a dozen commands, binary-safe
values (msgpack), and pub/sub with patterns; this module is that.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Sequence
from urllib.parse import unquote, urlsplit

import attrs
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.interfaces import IDelayedCall, IReactorTCP, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

#: Seconds a command may wait for its reply before the connection is
#: considered dead and dropped.
REPLY_TIMEOUT = 5.0
#: The first and the largest delay between two connection attempts.
BACKOFF_START = 0.1
BACKOFF_MAX = 5.0
#: The most replies a connection may wait for at once (a bound on memory
#: while Redis is slow); further commands fail at once.
MAX_PENDING = 100_000
#: The largest reply accepted (Redis's own limit for one bulk string).
MAX_BULK = 512 * 1024 * 1024


class RedisError(Exception):
    """
    Redis answered with an error reply.
    """


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


def encodeCommand(args: Sequence[bytes | str | int | float]) -> bytes:
    """
    One command in RESP: an array of bulk strings.
    """
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode("utf-8")
        else:
            data = str(arg).encode("ascii")
        out.append(b"$%d\r\n" % len(data))
        out.append(data)
        out.append(b"\r\n")
    return b"".join(out)


class _Incomplete(Exception):
    pass


class ReplyParser:
    """
    Incremental RESP2 parser: feed bytes, take the complete replies.
    Error replies are returned as L{RedisError} instances.
    """

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[Any]:
        """
        Add C{data}; return every reply now complete, in order.
        """
        buffer = self._buffer + data if self._buffer else data
        replies = []
        pos = 0
        while pos < len(buffer):
            try:
                reply, pos = self._parse(buffer, pos)
            except _Incomplete:
                break
            replies.append(reply)
        self._buffer = buffer[pos:]
        return replies

    def _line(self, buffer: bytes, pos: int) -> tuple[bytes, int]:
        end = buffer.find(b"\r\n", pos)
        if end < 0:
            raise _Incomplete()
        return buffer[pos:end], end + 2

    def _parse(self, buffer: bytes, pos: int) -> tuple[Any, int]:
        kind = buffer[pos : pos + 1]
        line, pos = self._line(buffer, pos + 1)
        if kind == b"+":
            return line, pos
        if kind == b"-":
            return RedisError(line.decode("utf-8", "replace")), pos
        if kind == b":":
            return int(line), pos
        if kind == b"$":
            length = int(line)
            if length < 0:
                return None, pos
            if length > MAX_BULK:
                raise ValueError("bulk reply too large")
            if len(buffer) < pos + length + 2:
                raise _Incomplete()
            return buffer[pos : pos + length], pos + length + 2
        if kind == b"*":
            count = int(line)
            if count < 0:
                return None, pos
            items = []
            for _ in range(count):
                item, pos = self._parse(buffer, pos)
                items.append(item)
            return items, pos
        raise ValueError(f"bad RESP reply type {kind!r}")


class RedisProtocol(Protocol):
    """
    One connection: commands answered in order; on a subscribed connection,
    C{message} and C{pmessage} pushes go to C{onMessage(channel, data)}.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, onMessage: Callable[[bytes, bytes], object] | None = None) -> None:
        self.clock = clock
        self.onMessage = onMessage
        self._parser = ReplyParser()
        self._pending: list[tuple[Deferred[Any], IDelayedCall | None]] = []
        self._head = 0
        self.lostWaiters: list[Deferred[None]] = []
        self.lost = False

    def execute(self, *args: bytes | str | int | float, timeout: float = REPLY_TIMEOUT) -> Deferred[Any]:
        """
        Send one command; fire with its reply (fail with L{RedisError} for an
        error reply, L{RedisUnavailable} if the connection goes).
        """
        if self.lost or self.transport is None:
            return fail(RedisUnavailable("not connected"))
        if len(self._pending) - self._head >= MAX_PENDING:
            return fail(RedisUnavailable("too many commands waiting"))
        d: Deferred[Any] = Deferred()
        call = self.clock.callLater(timeout, self._timedOut) if timeout else None
        self._pending.append((d, call))
        self.transport.write(encodeCommand(args))
        return d

    def send(self, *args: bytes | str | int | float) -> None:
        """
        Send a command whose replies arrive as pushes (SUBSCRIBE, PSUBSCRIBE).
        """
        if not self.lost and self.transport is not None:
            self.transport.write(encodeCommand(args))

    def _timedOut(self) -> None:
        self.log.warn("redis: no reply within {timeout}s; dropping the connection", timeout=REPLY_TIMEOUT)
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        try:
            replies = self._parser.feed(data)
        except ValueError as error:
            self.log.error("redis: {error}; dropping the connection", error=str(error))
            if self.transport is not None:
                self.transport.abortConnection()  # type: ignore[attr-defined]
            return
        for reply in replies:
            if self.onMessage is not None and isinstance(reply, list) and reply:
                kind = reply[0]
                if kind == b"message" and len(reply) == 3:
                    self.onMessage(reply[1], reply[2])
                    continue
                if kind == b"pmessage" and len(reply) == 4:
                    self.onMessage(reply[2], reply[3])
                    continue
                if kind in (b"subscribe", b"psubscribe", b"unsubscribe", b"punsubscribe"):
                    continue
            if self._head >= len(self._pending):
                continue
            d, call = self._pending[self._head]
            self._head += 1
            if self._head > 1024 and self._head * 2 > len(self._pending):
                del self._pending[: self._head]
                self._head = 0
            if call is not None and call.active():
                call.cancel()
            if isinstance(reply, RedisError):
                d.errback(reply)
            else:
                d.callback(reply)

    def connectionLost(self, reason: Failure = Failure(Exception("lost"))) -> None:
        self.lost = True
        pending, self._pending = self._pending[self._head :], []
        self._head = 0
        for d, call in pending:
            if call is not None and call.active():
                call.cancel()
            d.errback(RedisUnavailable("connection lost"))
        waiters, self.lostWaiters = self.lostWaiters, []
        for waiter in waiters:
            waiter.callback(None)


class RedisConnection:
    """
    A connection to Redis kept open: reconnects after a loss with a
    jittered exponential backoff (L{BACKOFF_START} to L{BACKOFF_MAX}),
    authenticates and selects the database on each connection, then calls
    C{onConnect(protocol)} (which resubscribes, re-registers, ...). While
    down, commands fail at once with L{RedisUnavailable}.

    @ivar connected: whether a connection is up and ready.
    @ivar lastError: why the last attempt failed or the connection went.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorTCP,
        clock: IReactorTime,
        address: RedisAddress,
        name: str = "redis",
        onConnect: Callable[["RedisProtocol"], object] | None = None,
        onDisconnect: Callable[[str], object] | None = None,
        onMessage: Callable[[bytes, bytes], object] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.reactor = reactor
        self.clock = clock
        self.address = address
        self.name = name
        self.onConnect = onConnect
        self.onDisconnect = onDisconnect
        self.onMessage = onMessage
        self.protocol: RedisProtocol | None = None
        self.connected = False
        self.lastError = "not connected yet"
        self._delay = BACKOFF_START
        self._retry: IDelayedCall | None = None
        self._stopped = True
        self._attempt: Deferred[Any] | None = None
        self._rng = rng if rng is not None else random.Random()

    def start(self) -> None:
        """
        Connect, and keep connecting.
        """
        self._stopped = False
        self._connect()

    def stop(self) -> Deferred[None]:
        """
        Close and stop reconnecting; fires once the connection is closed.
        """
        self._stopped = True
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._attempt is not None:
            self._attempt.cancel()
        protocol = self.protocol
        d: Deferred[None] = Deferred()
        if protocol is None or protocol.lost or protocol.transport is None:
            d.callback(None)
            return d
        protocol.lostWaiters.append(d)
        protocol.transport.loseConnection()
        return d

    def execute(self, *args: bytes | str | int | float) -> Deferred[Any]:
        """
        One command on the current connection.
        """
        protocol = self.protocol
        if protocol is None or not self.connected:
            return fail(RedisUnavailable(f"{self.name}: {self.lastError}"))
        return protocol.execute(*args)

    def _connect(self) -> None:
        self._retry = None
        if self._stopped:
            return
        protocol = RedisProtocol(self.clock, self.onMessage)
        endpoint = TCP4ClientEndpoint(self.reactor, self.address.host, self.address.port, timeout=5)
        self._attempt = connectProtocol(endpoint, protocol)
        self._attempt.addCallbacks(self._made, self._failed)

    def _made(self, protocol: RedisProtocol) -> None:
        self._attempt = None
        self.protocol = protocol
        original = protocol.connectionLost

        def lost(reason: Failure = Failure(Exception("lost"))) -> None:
            original(reason)
            self._lost(protocol, reason)

        protocol.connectionLost = lost  # type: ignore[method-assign]
        d: Deferred[Any] = Deferred()
        d.callback(None)
        address = self.address
        if address.password is not None:
            if address.username is not None:
                d.addCallback(lambda _: protocol.execute("AUTH", address.username or "", address.password or ""))
            else:
                d.addCallback(lambda _: protocol.execute("AUTH", address.password or ""))
        if address.db:
            d.addCallback(lambda _: protocol.execute("SELECT", address.db))
        d.addCallbacks(self._ready, self._setupFailed, callbackArgs=(protocol,), errbackArgs=(protocol,))

    def _ready(self, _: object, protocol: RedisProtocol) -> None:
        if protocol.lost:
            return
        if self._stopped:
            if protocol.transport is not None:
                protocol.transport.loseConnection()
            return
        self.connected = True
        self._delay = BACKOFF_START
        self.log.info("{name}: connected to {address}", name=self.name, address=str(self.address))
        if self.onConnect is not None:
            try:
                self.onConnect(protocol)
            except Exception:
                self.log.failure("{name}: after connecting", name=self.name)

    def _setupFailed(self, failure: Failure, protocol: RedisProtocol) -> None:
        self.lastError = failure.getErrorMessage()
        self.log.error("{name}: {error}", name=self.name, error=self.lastError)
        if protocol.transport is not None:
            protocol.transport.loseConnection()

    def _failed(self, failure: Failure) -> None:
        self._attempt = None
        self.lastError = f"cannot connect to {self.address}: {failure.getErrorMessage()}"
        self._schedule()

    def _lost(self, protocol: RedisProtocol, reason: Failure) -> None:
        if protocol is not self.protocol:
            return
        wasConnected = self.connected
        self.connected = False
        self.protocol = None
        self.lastError = f"connection to {self.address} lost"
        if wasConnected:
            self.log.warn("{name}: {error}", name=self.name, error=self.lastError)
            if self.onDisconnect is not None:
                self.onDisconnect(self.lastError)
        self._schedule()

    def _schedule(self) -> None:
        if self._stopped or self._retry is not None:
            return
        delay = self._delay * (0.5 + self._rng.random() / 2)
        self._delay = min(self._delay * 2, BACKOFF_MAX)
        self._retry = self.clock.callLater(delay, self._connect)
