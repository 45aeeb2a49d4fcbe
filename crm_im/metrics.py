# -*- test-case-name: tests.integration.test_ops -*-
"""
Prometheus metrics (exposed with prometheus-client), free on the hot path.

The neutral pieces: L{Count}, L{LatencyHistogram}, L{LabelledCounts} and
L{ServerCollector}; the IM's own names and counts are registered by the IM
(L{crm_im.im.metrics}), so this module knows no event name.

Every count the application keeps is a plain integer on an object bound
once at start-up (L{Count}, L{LatencyHistogram}): counting a message is an
attribute increment. prometheus-client's own C{Counter} and C{Histogram}
take a lock and walk their buckets in Python on every call, which showed
up as several percent of the reactor's time per message; the counts are
only ever touched on the reactor thread, so they need no lock.
The IM's collector turns them into metric families when C{/metrics} is
scraped, as L{ServerCollector} does with what the server already counts
(sessions by transport, users online, the Engine.IO counters). One
L{CollectorRegistry} per server (never the global one: several servers may
live in one test process).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.utils import floatToGoString


if TYPE_CHECKING:
    from .engineio.server import EngineIOServer
    from .presence import Presence

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
        Connections by transport, users online, the bytes waiting in the
        sessions' queues, the reactor's pending timers (read through the
        engine's injected clock), Engine.IO counters.

        The last two gauges are what a leak shows up in from outside:
        after every client left (and recovery holds expired) both must be
        back where they were (C{bench/churn.py}). Summing the queues walks
        the sessions, which counting them by transport does already.
        """
        byTransport = {"polling": 0, "websocket": 0}
        buffered = 0
        for session in list(self.engine.sessions.values()):
            byTransport[session.transportName] = byTransport.get(session.transportName, 0) + 1
            buffered += session.queuedBytes
        connections = GaugeMetricFamily(
            "crm_im_connections", "Open Engine.IO sessions, by transport.", labels=["transport"]
        )
        for transport, count in sorted(byTransport.items()):
            connections.add_metric([transport], count)
        yield connections
        yield GaugeMetricFamily(
            "crm_im_users_online", "Users with at least one logged-in device.", value=self.presence.onlineCount()
        )
        yield GaugeMetricFamily(
            "crm_im_buffered_bytes",
            "Bytes queued in Engine.IO sessions that their transport has not taken yet.",
            value=buffered,
        )
        yield GaugeMetricFamily(
            "crm_im_reactor_delayed_calls",
            "Timers pending in the reactor (a count that keeps growing is a timer leak).",
            value=len(self.engine.clock.getDelayedCalls()),
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


class Count:
    """
    A counter: an integer only the reactor thread increments.
    """

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def inc(self, amount: int = 1) -> None:
        """
        Add C{amount}.
        """
        self.value += amount


class LatencyHistogram:
    """
    A histogram of durations: a count per bucket, the sum and the count.

    @ivar bounds: the buckets' upper bounds, ascending (C{+Inf} implied).
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        """
        Count one duration.
        """
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    def buckets(self) -> list[tuple[str, int]]:
        """
        Cumulative counts per upper bound, as Prometheus exposes them.
        """
        result = []
        total = 0
        for bound, count in zip([*map(floatToGoString, self.bounds), "+Inf"], self.counts):
            total += count
            result.append((bound, total))
        return result


class LabelledCounts:
    """
    A labelled family of L{Count}s, one per known label value.
    """

    def __init__(self, name: str, documentation: str, label: str, values: Iterable[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.label = label
        self.children = {value: Count() for value in values}

    def collect(self) -> CounterMetricFamily:
        family = CounterMetricFamily(self.name, self.documentation, labels=[self.label])
        for value, count in self.children.items():
            family.add_metric([value], count.value)
        return family


class ReadCounter:
    """
    One counter read from its owner at scrape time (a count a service keeps
    as a plain attribute, such as L{crm_im.idlerelease}'s releases).
    """

    def __init__(self, name: str, documentation: str, read: Callable[[], int]) -> None:
        self.name = name
        self.documentation = documentation
        self.read = read

    def collect(self) -> Iterator[Metric]:
        """
        The counter's one sample.
        """
        yield CounterMetricFamily(self.name, self.documentation, value=self.read())
