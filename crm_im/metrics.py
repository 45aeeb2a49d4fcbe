# -*- test-case-name: tests.integration.test_ops -*-
"""
Prometheus metrics (prometheus-client), cheap on the hot path.

L{IMMetrics} owns one L{CollectorRegistry} per server (never the global
one: several servers may live in one test process). Every labelled child
the application touches per event is bound once here, at start-up, so an
increment is a dict lookup and C{inc()} — no label tuple built per
message. What the server already counts (sessions by transport, users
online, the Engine.IO counters) is read at scrape time by
L{ServerCollector}, costing nothing per packet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .im.errors import (
    ALREADY_LOGGED_IN,
    FORBIDDEN,
    INTERNAL,
    INVALID_PAYLOAD,
    NOT_LOGGED_IN,
    RATE_LIMITED,
    TOO_LARGE,
    UNAUTHORIZED,
)

if TYPE_CHECKING:
    from .engineio.server import EngineIOServer
    from .presence import Presence

#: The client events counted under their own name; others count as C{other}.
EVENTS = (
    "user:login",
    "user:logout",
    "message",
    "status_change",
    "typing",
    "file_transfer",
    "get_history",
    "message:read",
    "auth:refresh",
)
MESSAGE_TYPES = ("text", "file", "file_transfer")
RECEIPT_STATUSES = ("delivered", "offline")
ERROR_CODES = (
    NOT_LOGGED_IN,
    INVALID_PAYLOAD,
    UNAUTHORIZED,
    FORBIDDEN,
    TOO_LARGE,
    RATE_LIMITED,
    ALREADY_LOGGED_IN,
    INTERNAL,
)
STORE_OPERATIONS = ("store", "history", "read", "pending")
#: Store latency buckets, in seconds (a durable SQLite commit is ~1-20 ms).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class ServerCollector:
    """
    Reads the server's own state at scrape time.
    """

    def __init__(self, engine: "EngineIOServer", presence: "Presence") -> None:
        self.engine = engine
        self.presence = presence

    def collect(self) -> Iterator[Metric]:
        """
        Connections by transport, users online, Engine.IO counters.
        """
        byTransport = {"polling": 0, "websocket": 0}
        for session in list(self.engine.sessions.values()):
            byTransport[session.transportName] = byTransport.get(session.transportName, 0) + 1
        connections = GaugeMetricFamily(
            "crm_im_connections", "Open Engine.IO sessions, by transport.", labels=["transport"]
        )
        for transport, count in sorted(byTransport.items()):
            connections.add_metric([transport], count)
        yield connections
        yield GaugeMetricFamily(
            "crm_im_users_online", "Users with at least one logged-in device.", value=self.presence.onlineCount()
        )
        stats = self.engine.stats
        for name, value, text in (
            ("crm_im_sessions_opened", stats.opened, "Engine.IO sessions opened."),
            ("crm_im_sessions_closed", stats.closed, "Engine.IO sessions closed."),
            ("crm_im_upgrades", stats.upgrades, "Polling sessions upgraded to WebSocket."),
            ("crm_im_ping_timeouts", stats.pingTimeouts, "Sessions closed for not answering PING."),
            ("crm_im_buffer_overflows", stats.bufferOverflows, "Sessions closed for a full outgoing buffer."),
        ):
            yield CounterMetricFamily(name, text, value=value)


class IMMetrics:
    """
    The application's counters, with their labelled children bound once.

    @ivar events: event name -> counter child.
    @ivar messages: message type -> counter child (C{text}, C{file}: stored;
        C{file_transfer}: files relayed live).
    @ivar receipts: receipt status -> counter child.
    @ivar errors: error code -> counter child.
    @ivar store: store operation -> latency histogram child.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        events = Counter("crm_im_events", "Client events received, by event.", ["event"], registry=r)
        self.events = {name: events.labels(name) for name in EVENTS}
        self.otherEvents = events.labels("other")
        messages = Counter("crm_im_messages", "Messages accepted, by type.", ["type"], registry=r)
        self.messages = {name: messages.labels(name) for name in MESSAGE_TYPES}
        receipts = Counter("crm_im_receipts", "Receipts sent to senders, by status.", ["status"], registry=r)
        self.receipts = {name: receipts.labels(name) for name in RECEIPT_STATUSES}
        errors = Counter("crm_im_errors", "Refusals sent to clients, by code.", ["code"], registry=r)
        self.errors = {code: errors.labels(code) for code in ERROR_CODES}
        store = Histogram(
            "crm_im_store_latency_seconds",
            "Message store operation latency.",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.store = {name: store.labels(name) for name in STORE_OPERATIONS}
        self.authFailures = Counter("crm_im_auth_failures", "Tokens refused.", registry=r)
        self.abuseDisconnects = Counter(
            "crm_im_abuse_disconnects", "Sockets disconnected for ignoring rate limits.", registry=r
        )
        self.tokenExpiries = Counter(
            "crm_im_token_expiries", "Sockets disconnected because their token expired.", registry=r
        )

    def event(self, name: str) -> None:
        """
        Count one client event.
        """
        self.events.get(name, self.otherEvents).inc()

    def error(self, code: str) -> None:
        """
        Count one refusal.
        """
        child = self.errors.get(code)
        if child is not None:
            child.inc()

    def watch(self, engine: "EngineIOServer", presence: "Presence") -> None:
        """
        Export the server's own state too.
        """
        self.registry.register(ServerCollector(engine, presence))

    def families(self) -> Iterable[Metric]:
        """
        Every metric family, as a scrape would see them.
        """
        return self.registry.collect()
