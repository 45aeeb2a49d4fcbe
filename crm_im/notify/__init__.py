"""
Offline push notifications (PUSH.md): who is notified (L{rules}), the
in-memory view of pushkeys and mutes the message path reads
(L{directory}), the sender service that drains the durable outbox to a
Matrix Push Gateway API endpoint with treq (L{sender}), and its counts
(L{metrics}). The outbox itself is storage: L{crm_im.storage.outbox}.
"""

from .directory import PushDirectory
from .metrics import PushMetrics
from .rules import PushSettings, groupRecipients, notificationBody, retryDelay
from .sender import GatewayAnswer, GatewayClient, PushSender

__all__ = [
    "GatewayAnswer",
    "GatewayClient",
    "PushDirectory",
    "PushMetrics",
    "PushSender",
    "PushSettings",
    "groupRecipients",
    "notificationBody",
    "retryDelay",
]
