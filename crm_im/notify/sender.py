# -*- test-case-name: tests.test_push -*-
"""
L{PushSender}: drains the durable push outbox to a Matrix Push Gateway API
endpoint (Sygnal, or any webhook reading the same JSON).

The message path writes a user's outbox row with the message and tells
the sender (L{PushSender.enqueued}); the sender waits for the coalescing
window (and the presence grace) with one deadline per user on one
L{DeadlineHeap}, then decides again: a user who has a connected device
now is not notified (they reconnected, or read on another device), and
L{crm_im.storage.outbox.pushPlan_txn} keeps only what is still unread.
One request per user carries the unread count and every pushkey.

Nothing here is on the message path: requests run concurrently up to a
bound, each with a timeout; a failed one (network error, 5xx, 429) is
tried again after L{crm_im.notify.rules.retryDelay}, until 24 h after its
message; rows are deleted only once their notification is settled, so a
crash resends (at least once; the gateway dedups on C{event_id}).
"""

from __future__ import annotations

import random as _random
from collections import deque
from typing import Any, Callable, Hashable, Protocol

import attrs
import orjson
from twisted.internet.defer import CancelledError, Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from ..presence import Presence
from ..safelog import Logger
from ..storage.outbox import PLAN_ROWS, IPushStore
from ..timers import DeadlineHeap
from .directory import PushDirectory
from .metrics import PushMetrics
from .rules import DROP, RETRY, SENT, MAX_RETRY_DELAY, PushSettings, classify, notificationBody, retryDelay, signature

#: Deletes every outbox row of a user, whatever its seq.
ALL_ROWS = 2**62


@attrs.frozen
class GatewayAnswer:
    """
    A gateway's HTTP answer.

    @ivar retryAfter: seconds from C{Retry-After}, if it said.
    """

    code: int
    body: bytes
    retryAfter: float | None = None


class IGatewayClient(Protocol):
    """
    Posts notification bodies to the gateway.
    """

    def post(self, body: bytes) -> Deferred[GatewayAnswer]:
        """
        POST C{body} (JSON); fires with the answer, fails on a network
        error or timeout.
        """

    def close(self) -> Deferred[None]:
        """
        Drop kept-alive connections.
        """


class GatewayClient:
    """
    L{IGatewayClient} with treq, on a persistent connection pool.
    """

    def __init__(self, reactor: Any, url: str, secret: bytes | None, timeout: float, connections: int) -> None:
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool

        self.reactor = reactor
        self.url = url.encode("utf-8")
        self.secret = secret
        self.timeout = timeout
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.pool.maxPersistentPerHost = max(connections, 1)
        self.http = HTTPClient(Agent(reactor, connectTimeout=timeout, pool=self.pool))

    async def _post(self, body: bytes) -> GatewayAnswer:
        headers = Headers({b"Content-Type": [b"application/json"], b"User-Agent": [b"crm_im"]})
        if self.secret is not None:
            headers.setRawHeaders(b"X-CRM-IM-Signature", [signature(self.secret, body)])
        response = await self.http.post(self.url, data=body, headers=headers)
        content = await response.content()
        retryAfter = None
        values = response.headers.getRawHeaders(b"retry-after")
        if values:
            try:
                retryAfter = float(values[0])
            except ValueError:
                retryAfter = None
        return GatewayAnswer(response.code, content, retryAfter)

    def post(self, body: bytes) -> Deferred[GatewayAnswer]:
        """
        See L{IGatewayClient.post}; the whole exchange within C{timeout}.
        """
        return Deferred.fromCoroutine(self._post(body)).addTimeout(self.timeout, self.reactor)

    def close(self) -> Deferred[None]:
        """
        See L{IGatewayClient.close}.
        """
        return self.pool.closeCachedConnections()


@attrs.define
class _UserState:
    attempts: int = 0
    inFlight: bool = False
    #: rows arrived while a request was in flight: schedule again after it
    dirty: bool = False


def rejectedPushkeys(body: bytes) -> list[str]:
    """
    The C{rejected} pushkeys of a gateway's answer (none if unreadable).
    """
    try:
        answer = orjson.loads(body) if body else {}
    except orjson.JSONDecodeError:
        return []
    rejected = answer.get("rejected") if isinstance(answer, dict) else None
    if not isinstance(rejected, list):
        return []
    return [key for key in rejected if isinstance(key, str)]


class PushSender:
    """
    The push outbox's sender, started after the store opened and stopped
    before it closes.
    """

    log = Logger()

    def __init__(
        self,
        store: IPushStore,
        presence: Presence,
        directory: PushDirectory,
        clock: IReactorTime,
        settings: PushSettings,
        client: IGatewayClient,
        metrics: PushMetrics | None = None,
        random: Callable[[], float] = _random.random,
    ) -> None:
        self.store = store
        self.presence = presence
        self.directory = directory
        self.clock = clock
        self.settings = settings
        self.client = client
        self.metrics = metrics if metrics is not None else PushMetrics()
        self.metrics.depth = lambda: self.depth
        self.random = random
        #: outbox rows, as far as this process knows (exact after start)
        self.depth = 0
        self._states: dict[str, _UserState] = {}
        self._heap = DeadlineHeap(clock, self._due)
        #: users due while C{concurrency} requests were in flight, in order
        self._ready: deque[str] = deque()
        self._readySet: set[str] = set()
        self._active = 0
        self._attempts: set[Deferred[None]] = set()
        self._trimming = False
        self._stopping = False
        #: called with the user's id after each decision or request is
        #: over (its outcome counted in L{metrics}): for watchers such as
        #: tests, which wait on it instead of polling C{/metrics}
        self.attemptEnded: list[Callable[[str], object]] = []

    @property
    def users(self) -> set[str]:
        """
        The users with pushkeys (the message path's set).
        """
        return self.directory.users

    @property
    def firstDelay(self) -> float:
        """
        Seconds between a user's first pending message and the decision.
        """
        return max(self.settings.coalesce, self.settings.grace)

    def now(self) -> int:
        """
        Milliseconds since the epoch, from the injected clock.
        """
        return int(self.clock.seconds() * 1000)

    # ---- lifecycle

    async def start(self) -> None:
        """
        Load pushkeys, mutes and the outbox left by the last run (sent
        once the coalescing window and the grace are over: devices
        reconnecting after a restart are not notified).
        """
        self._stopping = False
        loaded = await self.store.loadPush()
        if self._stopping:
            # stopped while loading (the server's start was cut short):
            # schedule nothing, the rows stay for the next start
            return
        self.directory.load(loaded)
        self.depth += sum(rows for _, _, rows in loaded.outbox)
        for userId, _, _ in loaded.outbox:
            self._schedule(userId, self.firstDelay)
        self._heap.start()
        if self.depth > self.settings.maxOutbox:
            # left by a run with a larger bound: keep to this one
            self._trim()
        if loaded.outbox:
            self.log.info(
                "[推送] {rows} pending notifications for {users} users", rows=self.depth, users=len(loaded.outbox)
            )

    async def stop(self) -> None:
        """
        Stop sending: requests in flight are cancelled (their rows stay
        for the next start).
        """
        self._stopping = True
        self._heap.stop()
        self._ready.clear()
        self._readySet.clear()
        attempts = list(self._attempts)
        for attempt in attempts:
            attempt.cancel()
        await DeferredList(attempts, consumeErrors=True)
        await self.client.close()

    # ---- the message path's side

    def enqueued(self, userId: str, seq: int, createdAt: int, durable: bool = True) -> None:
        """
        A message C{seq} for C{userId} was stored; its outbox row is
        durable already unless C{durable} is false (then it is written
        now).
        """
        if self._stopping:
            return
        self.depth += 1
        if durable:
            self._schedule(userId, self.firstDelay)
        else:
            self.store.enqueuePush(userId, seq, createdAt).addCallbacks(
                lambda _: self._schedule(userId, self.firstDelay),
                lambda failure: self.log.failure("writing a push notification for {userId}", failure, userId=userId),
            )
        if self.depth > self.settings.maxOutbox and not self._trimming:
            self._trim()

    def _trim(self) -> None:
        self._trimming = True

        def trimmed(dropped: int) -> None:
            if dropped:
                self.depth -= dropped
                self.metrics.dropped["overflow"].inc(dropped)
                self.log.warn("[推送] outbox full: dropped the {count} oldest notifications", count=dropped)

        def over(result: object) -> None:
            self._trimming = False
            if isinstance(result, Failure):
                self.log.failure("trimming the push outbox", result)

        self.store.trimOutbox(self.settings.maxOutbox).addCallback(trimmed).addBoth(over)

    # ---- scheduling

    def _schedule(self, userId: str, delay: float) -> None:
        """
        Decide for C{userId} in C{delay} seconds, unless a decision is
        pending (the coalescing window, a retry) or under way.
        """
        state = self._states.get(userId)
        if state is None:
            state = self._states[userId] = _UserState()
        if state.inFlight:
            state.dirty = True
            return
        if userId in self._heap or userId in self._readySet:
            return
        self._heap.set(userId, delay)

    def _due(self, key: Hashable) -> None:
        userId = str(key)
        if self._stopping:
            return
        if self._active >= self.settings.concurrency:
            if userId not in self._readySet:
                self._ready.append(userId)
                self._readySet.add(userId)
            return
        self._launch(userId)

    def _launch(self, userId: str) -> None:
        state = self._states.setdefault(userId, _UserState())
        state.inFlight = True
        self._active += 1
        attempt = Deferred.fromCoroutine(self._attempt(userId, state))
        self._attempts.add(attempt)
        attempt.addErrback(self._attemptFailed, userId)
        attempt.addBoth(self._attemptOver, userId, state, attempt)

    def _attemptFailed(self, failure: Failure, userId: str) -> None:
        if failure.check(CancelledError):
            return
        self.log.failure("push notification for {userId}", failure, userId=userId)

    def _attemptOver(self, _: object, userId: str, state: _UserState, attempt: Deferred[None]) -> None:
        self._attempts.discard(attempt)
        self._active -= 1
        state.inFlight = False
        if not self._stopping:
            if state.dirty:
                state.dirty = False
                self._schedule(userId, self.settings.coalesce)
            elif state.attempts == 0 and userId not in self._heap:
                del self._states[userId]
            while self._ready and self._active < self.settings.concurrency:
                ready = self._ready.popleft()
                self._readySet.discard(ready)
                self._launch(ready)
        for watcher in list(self.attemptEnded):
            watcher(userId)

    # ---- one decision and request

    async def _settle(self, userId: str, upToSeq: int, rejected: list[str] = []) -> int:
        """
        Delete the user's rows up to C{upToSeq} (and C{rejected} pushkeys).

        @return: rows deleted.
        """
        deleted, remaining = await self.store.finishPush(userId, upToSeq, rejected)
        self.depth = max(self.depth - deleted, 0)
        if rejected:
            self.directory.keysLeft(userId, remaining)
        return deleted

    async def _attempt(self, userId: str, state: _UserState) -> None:
        user = self.presence.user(userId)
        if user is not None:
            if user.devices:
                # Online again: the offline queue and the group list tell them.
                state.attempts = 0
                self.metrics.skipped["online"].inc(await self._settle(userId, ALL_ROWS))
                return
            graceLeft = self.presence.graceLeft(user)
            if graceLeft > 0:
                # Within the presence grace: decide once it is over.
                self._heap.set(userId, graceLeft)
                return
            # Held online past the grace only for a connection recovery
            # (a phone's socket cut as it went to sleep): no device has
            # the message, which is what a push is for.
        plan = await self.store.pushPlan(userId)
        if plan is None:
            state.attempts = 0
            return
        if plan.rows >= PLAN_ROWS:
            state.dirty = True
        if self.now() - plan.oldestAt >= self.settings.giveUpAfter * 1000:
            state.attempts = 0
            self.metrics.dropped["expired"].inc(await self._settle(userId, plan.upToSeq))
            self.log.warn("[推送] gave up notifying {userId}: the gateway failed for too long", userId=userId)
            return
        if not plan.pushkeys or not plan.messages:
            state.attempts = 0
            reason = "no_pushkey" if not plan.pushkeys else "read"
            self.metrics.skipped[reason].inc(await self._settle(userId, plan.upToSeq))
            if not plan.pushkeys:
                self.directory.keysLeft(userId, 0)
            return
        body = orjson.dumps(notificationBody(plan, self.settings.content))
        try:
            answer = await self.client.post(body)
        except CancelledError:
            if self._stopping:
                raise
            answer = None
        except Exception as error:
            self.log.info("[推送] gateway request failed: {error}", error=error.__class__.__name__)
            answer = None
        verdict = RETRY if answer is None else classify(answer.code)
        if verdict == SENT:
            assert answer is not None
            keys = {key.pushkey for key in plan.pushkeys}
            rejected = [key for key in rejectedPushkeys(answer.body) if key in keys]
            state.attempts = 0
            await self._settle(userId, plan.upToSeq, rejected)
            self.metrics.sent.inc()
            if rejected:
                self.metrics.rejected.inc(len(rejected))
                self.log.info("[推送] gateway rejected {count} pushkeys of {userId}", count=len(rejected), userId=userId)
        elif verdict == DROP:
            assert answer is not None
            state.attempts = 0
            self.metrics.dropped["refused"].inc(await self._settle(userId, plan.upToSeq))
            self.log.warn("[推送] gateway refused a notification for {userId}: HTTP {code}", userId=userId, code=answer.code)
        else:
            state.attempts += 1
            delay = retryDelay(state.attempts, self.random())
            if answer is not None and answer.retryAfter is not None:
                delay = max(delay, min(answer.retryAfter, MAX_RETRY_DELAY))
            self.metrics.retried.inc()
            if not self._stopping:
                self._heap.set(userId, delay)
