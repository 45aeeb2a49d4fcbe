"""
Tests for L{crm_im.metrics}: the plain counts and their exposition.
"""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import SynchronousTestCase

from crm_im.engineio import packet
from crm_im.im.metrics import IMMetrics
from crm_im.metrics import LatencyHistogram
from crm_im.presence import Presence

from .test_eio_session import EngineTestMixin


def samples(metrics: IMMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """
    What a scrape of C{metrics} shows, parsed by prometheus-client.
    """
    text = generate_latest(metrics.registry).decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class LatencyHistogramTests(SynchronousTestCase):
    """
    L{LatencyHistogram} counts as Prometheus' C{le} buckets do.
    """

    def test_buckets(self) -> None:
        """
        A duration counts in every bucket whose bound is at least it (a
        value on a bound counts in that bound's bucket); the buckets are
        cumulative and end with C{+Inf}.
        """
        histogram = LatencyHistogram((0.1, 1.0))
        for seconds in (0.05, 0.1, 0.5, 3.0):
            histogram.observe(seconds)
        self.assertEqual(histogram.buckets(), [("0.1", 2), ("1.0", 3), ("+Inf", 4)])
        self.assertAlmostEqual(histogram.sum, 3.65)


class IMMetricsTests(SynchronousTestCase):
    """
    L{IMMetrics}' counts appear in a scrape under the names and labels
    operators query.
    """

    def test_scrape(self) -> None:
        """
        Events (unknown ones as C{other}), messages, receipts, errors, the
        plain counters and the store latency histogram.
        """
        metrics = IMMetrics()
        metrics.event("message")
        metrics.event("message")
        metrics.event("no such event")
        metrics.messages["text"].inc()
        metrics.receipts["offline"].inc(3)
        metrics.error("INVALID_PAYLOAD")
        metrics.error("NOT A CODE")
        metrics.abuseDisconnects.inc()
        metrics.store["store"].observe(0.003)
        seen = samples(metrics)
        self.assertEqual(seen[("crm_im_events_total", (("event", "message"),))], 2)
        self.assertEqual(seen[("crm_im_events_total", (("event", "other"),))], 1)
        self.assertEqual(seen[("crm_im_events_total", (("event", "typing"),))], 0)
        self.assertEqual(seen[("crm_im_messages_total", (("type", "text"),))], 1)
        self.assertEqual(seen[("crm_im_receipts_total", (("status", "offline"),))], 3)
        self.assertEqual(seen[("crm_im_errors_total", (("code", "INVALID_PAYLOAD"),))], 1)
        self.assertEqual(seen[("crm_im_abuse_disconnects_total", ())], 1)
        self.assertEqual(seen[("crm_im_token_expiries_total", ())], 0)
        store = (("operation", "store"),)
        self.assertEqual(seen[("crm_im_store_latency_seconds_count", store)], 1)
        self.assertEqual(seen[("crm_im_store_latency_seconds_bucket", (("le", "0.0025"), *store))], 0)
        self.assertEqual(seen[("crm_im_store_latency_seconds_bucket", (("le", "0.005"), *store))], 1)


    def test_everyRoutedEventLabelled(self) -> None:
        """
        Every event the Socket.IO gateway answers is counted under its own
        name, not lumped into C{other} (C{file:upload} and C{file:url}
        were).
        """
        from twisted.internet.task import Clock

        from crm_im.gateway.socketio import SocketIOGateway
        from crm_im.im.core import IMCore
        from crm_im.im.metrics import EVENTS
        from crm_im.routing.local import LocalRouter
        from crm_im.socketio.server import SocketIOServer
        from crm_im.storage.memory import MemoryMessageStore

        clock = Clock()
        sio = SocketIOServer(clock)
        presence = Presence(clock)
        router = LocalRouter(sio.namespace("/").sockets, presence, clock)
        core = IMCore(MemoryMessageStore(), None, presence, router, clock)  # type: ignore[arg-type]
        SocketIOGateway(sio, core, clock)
        routed = set(sio.namespace("/").handlers) - {"connect", "disconnect"}
        self.assertIn("file:upload", routed)
        self.assertEqual(routed - set(EVENTS), set())


class ServerCollectorTests(EngineTestMixin, SynchronousTestCase):
    """
    The server's own gauges, read at scrape time: what a leak of sessions,
    timers or buffers shows up in from outside (C{bench/churn.py}).
    """

    def scrape(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """
        A scrape of an L{IMMetrics} watching this test's engine.
        """
        metrics = IMMetrics()
        metrics.watch(self.server, Presence(self.clock))
        return samples(metrics)

    def test_bufferedBytes(self) -> None:
        """
        C{crm_im_buffered_bytes} sums the bytes queued in every session
        (a WebSocket session whose transport paused it, a polling session
        without a pending GET), and is back to 0 once they are closed.
        """
        self.assertEqual(self.scrape()[("crm_im_buffered_bytes", ())], 0)
        webSocket, _ = self.webSocketSession()
        webSocket.pauseWriting()
        polling = self.pollingSession()
        webSocket.send("a" * 100)
        webSocket.send(b"b" * 30)
        polling.send("c" * 7)
        expected = webSocket.queuedBytes + polling.queuedBytes
        self.assertEqual(
            expected,
            sum(len(frame.data) for frame in (packet.messageFrame(b"a" * 100), packet.binaryFrame(b"b" * 30)))
            + len(packet.messageFrame(b"c" * 7).data),
        )
        self.assertEqual(self.scrape()[("crm_im_buffered_bytes", ())], expected)
        webSocket.close(flush=False)
        polling.close(flush=False)
        self.assertEqual(self.scrape()[("crm_im_buffered_bytes", ())], 0)

    def test_reactorDelayedCalls(self) -> None:
        """
        C{crm_im_reactor_delayed_calls} is the number of calls pending in
        the engine's injected clock, whoever scheduled them.
        """
        before = self.scrape()[("crm_im_reactor_delayed_calls", ())]
        self.assertEqual(before, len(self.clock.getDelayedCalls()))
        calls = [self.clock.callLater(5, lambda: None) for _ in range(3)]
        self.assertEqual(self.scrape()[("crm_im_reactor_delayed_calls", ())], before + 3)
        for call in calls:
            call.cancel()
        self.assertEqual(self.scrape()[("crm_im_reactor_delayed_calls", ())], before)
