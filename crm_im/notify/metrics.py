# -*- test-case-name: tests.test_push -*-
"""
The push counts for C{/metrics}: notifications sent, retried, dropped (by
reason) and skipped (by reason), pushkeys the gateway rejected, and the
outbox depth; plain integers bound once, exposed by a collector at scrape
time (as L{crm_im.im.metrics}).
"""

from __future__ import annotations

from typing import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from ..metrics import Count, LabelledCounts

#: Why outbox rows were dropped without a notification: the gateway
#: refused it (a 4xx other than 429), it failed for 24 h, or the outbox was
#: full.
DROP_REASONS = ("refused", "expired", "overflow")
#: Why outbox rows needed no notification: the user was online, had read
#: them (or they were recalled, or the user left the group), or had no
#: pushkey left.
SKIP_REASONS = ("online", "read", "no_pushkey")


class PushMetrics:
    """
    @ivar sent: notifications the gateway accepted.
    @ivar retried: gateway requests that failed and will be tried again.
    @ivar dropped: reason -> outbox rows dropped.
    @ivar skipped: reason -> outbox rows not needing a notification.
    @ivar rejected: pushkeys the gateway rejected (deleted).
    @ivar depth: reads the outbox depth at scrape time.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.sent = Count()
        self.retried = Count()
        self.rejected = Count()
        self._dropped = LabelledCounts(
            "crm_im_push_dropped", "Push outbox rows dropped unsent, by reason.", "reason", DROP_REASONS
        )
        self.dropped = self._dropped.children
        self._skipped = LabelledCounts(
            "crm_im_push_skipped", "Push outbox rows that needed no notification, by reason.", "reason", SKIP_REASONS
        )
        self.skipped = self._skipped.children
        self.depth: Callable[[], int] = lambda: 0
        if registry is not None:
            registry.register(self)

    def collect(self) -> Iterator[Metric]:
        """
        Every push family.
        """
        for name, text, count in (
            ("crm_im_push_sent", "Push notifications the gateway accepted.", self.sent),
            ("crm_im_push_retried", "Push gateway requests failed and retried.", self.retried),
            ("crm_im_push_rejected_pushkeys", "Pushkeys the gateway rejected (deleted).", self.rejected),
        ):
            yield CounterMetricFamily(name, text, value=count.value)
        yield self._dropped.collect()
        yield self._skipped.collect()
        yield GaugeMetricFamily("crm_im_push_outbox_depth", "Push notifications waiting in the outbox.", value=self.depth())
