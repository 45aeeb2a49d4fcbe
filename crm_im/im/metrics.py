# -*- test-case-name: tests.test_metrics -*-
"""
The IM's counts for C{/metrics}: events by name, messages by type, receipts
by status, refusals by code, store latency; bound once at start-up so that
counting is an attribute increment (see L{crm_im.metrics}).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from ..metrics import LATENCY_BUCKETS, Count, LabelledCounts, LatencyHistogram, ServerCollector
from .errors import (
    ALREADY_LOGGED_IN,
    FORBIDDEN,
    INTERNAL,
    INVALID_PAYLOAD,
    NOT_FOUND,
    NOT_LOGGED_IN,
    RATE_LIMITED,
    TOO_LARGE,
    UNAUTHORIZED,
)

if TYPE_CHECKING:
    from ..engineio.server import EngineIOServer
    from ..presence import Presence

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
    "message:recall",
    "group:create",
    "group:update",
    "group:add_members",
    "group:remove_members",
    "group:leave",
    "group:set_role",
    "group:dissolve",
    "group:list",
    "group:info",
    "group:read_receipts",
    "room:create",
    "room:list",
    "room:join",
    "room:leave",
    "push:register",
    "push:unregister",
    "group:mute",
    "keys:upload",
    "keys:query",
    "keys:claim",
    "file:upload",
    "file:url",
)
MESSAGE_TYPES = ("text", "file", "file_transfer", "encrypted")
RECEIPT_STATUSES = ("delivered", "offline", "sent")
ERROR_CODES = (
    NOT_LOGGED_IN,
    INVALID_PAYLOAD,
    UNAUTHORIZED,
    FORBIDDEN,
    TOO_LARGE,
    RATE_LIMITED,
    ALREADY_LOGGED_IN,
    INTERNAL,
    NOT_FOUND,
)
STORE_OPERATIONS = ("store", "history", "read", "pending")

class IMCollector:
    """
    Exposes L{IMMetrics}' counts at scrape time.
    """

    def __init__(self, metrics: "IMMetrics") -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        """
        Every family of the application's counts.
        """
        metrics = self.metrics
        for family in metrics._families:
            yield family.collect()
        store = HistogramMetricFamily(
            "crm_im_store_latency_seconds", "Message store operation latency.", labels=["operation"]
        )
        for operation, histogram in metrics.store.items():
            store.add_metric([operation], histogram.buckets(), histogram.sum)
        yield store
        for name, text, count in (
            ("crm_im_auth_failures", "Tokens refused.", metrics.authFailures),
            ("crm_im_abuse_disconnects", "Sockets disconnected for ignoring rate limits.", metrics.abuseDisconnects),
            ("crm_im_token_expiries", "Sockets disconnected because their token expired.", metrics.tokenExpiries),
        ):
            yield CounterMetricFamily(name, text, value=count.value)


class IMMetrics:
    """
    The application's counts, each bound once.

    @ivar events: event name -> count.
    @ivar messages: message type -> count (C{text}, C{file}: stored;
        C{file_transfer}: files relayed live).
    @ivar receipts: receipt status -> count.
    @ivar errors: error code -> count.
    @ivar store: store operation -> latency histogram.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        events = LabelledCounts("crm_im_events", "Client events received, by event.", "event", [*EVENTS, "other"])
        self.events = events.children
        self.otherEvents = events.children["other"]
        messages = LabelledCounts("crm_im_messages", "Messages accepted, by type.", "type", MESSAGE_TYPES)
        self.messages = messages.children
        receipts = LabelledCounts("crm_im_receipts", "Receipts sent to senders, by status.", "status", RECEIPT_STATUSES)
        self.receipts = receipts.children
        errors = LabelledCounts("crm_im_errors", "Refusals sent to clients, by code.", "code", ERROR_CODES)
        self.errors = errors.children
        self._families = (events, messages, receipts, errors)
        self.store = {name: LatencyHistogram(LATENCY_BUCKETS) for name in STORE_OPERATIONS}
        self.authFailures = Count()
        self.abuseDisconnects = Count()
        self.tokenExpiries = Count()
        self.registry.register(IMCollector(self))

    def event(self, name: str) -> None:
        """
        Count one client event.
        """
        self.events.get(name, self.otherEvents).value += 1

    def error(self, code: str) -> None:
        """
        Count one refusal.
        """
        child = self.errors.get(code)
        if child is not None:
            child.value += 1

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
