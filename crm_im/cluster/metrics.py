# -*- test-case-name: tests.test_cluster_service -*-
"""
The cluster's part of C{/metrics}: whether Redis is reachable, the nodes
this one knows, and what crossed between nodes, read at scrape time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

if TYPE_CHECKING:
    from .service import ClusterService


class ClusterCollector:
    """
    Reads a L{ClusterService} at scrape time.
    """

    def __init__(self, cluster: "ClusterService") -> None:
        self.cluster = cluster

    def collect(self) -> Iterator[Metric]:
        cluster = self.cluster
        yield GaugeMetricFamily(
            "crm_im_cluster_redis_up", "1 while this node is connected to Redis and subscribed.", value=int(cluster.link.up)
        )
        yield GaugeMetricFamily(
            "crm_im_cluster_redis_attempts", "Failed Redis connection attempts since it was last up.", value=cluster.link.attempts
        )
        devices = GaugeMetricFamily(
            "crm_im_cluster_devices", "Logged-in devices by node, as this node sees them.", labels=["node"]
        )
        presence = cluster.presence
        for node in sorted(presence.nodes()):
            devices.add_metric([node], len(presence.devicesOn(node)))
        yield devices
        yield GaugeMetricFamily(
            "crm_im_cluster_nodes", "Live nodes this node knows (itself included).", value=len(cluster.node.addresses)
        )
        router, forwarder, adapter = cluster.router, cluster.forwarder, cluster.adapter
        for name, value, text in (
            ("crm_im_cluster_node_messages", router.sentToNodes if router else 0, "Messages published to other nodes' channels."),
            ("crm_im_cluster_forwarded", forwarder.forwarded if forwarder else 0, "Long-polling requests forwarded to their node."),
            ("crm_im_cluster_spliced", forwarder.spliced if forwarder else 0, "WebSocket upgrades spliced to their node."),
            ("crm_im_cluster_published_delivered", adapter.delivered if adapter else 0, "Sockets written to by Redis adapter broadcasts."),
            ("crm_im_cluster_published_refused", adapter.refused if adapter else 0, "Redis adapter broadcasts refused (IM event names)."),
            (
                "crm_im_cluster_order_held",
                router.order.held if router else 0,
                "Messages held until their predecessor in the conversation reached this node.",
            ),
            (
                "crm_im_cluster_order_late",
                router.order.late if router else 0,
                "Messages that reached this node after a successor released at the hold deadline.",
            ),
        ):
            yield CounterMetricFamily(name, text, value=value)
        yield GaugeMetricFamily(
            "crm_im_cluster_splices",
            "Spliced WebSocket connections open through this node (or connecting).",
            value=len(forwarder.splices) if forwarder else 0,
        )
