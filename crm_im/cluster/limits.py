# -*- test-case-name: tests.test_cluster_service -*-
"""
Failed logins counted across the cluster (CLUSTER.md: per-user and
per-address limits count across nodes).

Each node keeps its own L{FailureLimiter} (a token bucket per client
address) and, in Redis, a counter per address and minute
(C{INCR} with a TTL) that every node increments on a failure. The check
itself never waits for Redis: a node remembers the cluster count each
C{INCR} answered (its own failures) and, for the other nodes' failures,
the count Redis answers the next time this node charges the address; an
address that reached the burst in the current minute anywhere in the
cluster is refused on every node that has heard so. An attacker spreading
attempts over N nodes gets the burst per minute, not N bursts, once the
counter is seen; while Redis is down each node limits on its own.

(Devices per user need no counter: the cluster presence's device sets
span every node, L{crm_im.cluster.presence.ClusterPresence.devicesOf}.)
"""

from __future__ import annotations

from typing import Any

from ..limits import FailureLimiter
from .connection import RedisLink

#: The counting window, in seconds.
WINDOW = 60


class ClusterFailureLimiter(FailureLimiter):
    """
    A L{FailureLimiter} that also counts failures in Redis.

    @ivar seen: the cluster count last heard per address, with its
        window (bounded like the buckets).
    """

    def __init__(self, perMinute: float, burst: int, link: RedisLink, keyBase: str, maxKeys: int = 10000) -> None:
        """
        @param keyBase: the cluster's key prefix (C{crm_im:<prefix>}).
        """
        super().__init__(perMinute, burst, maxKeys)
        self.link = link
        self.keyBase = keyBase
        self.seen: dict[str, tuple[int, int]] = {}

    def allowed(self, key: str, now: float) -> bool:
        """
        Refused if this node's bucket is empty or the cluster counted a
        burst of failures from C{key} in this minute.
        """
        if not super().allowed(key, now):
            return False
        if not self.enabled:
            return True
        known = self.seen.get(key)
        return known is None or known[0] != int(now // WINDOW) or known[1] < self.burst

    def failed(self, key: str, now: float) -> None:
        """
        Charge C{key} here and in Redis.
        """
        super().failed(key, now)
        if not self.enabled or not self.link.up:
            return
        window = int(now // WINDOW)
        name = f"{self.keyBase}:fail:{window}:{key}"
        d = self.link.execute("INCR", name)
        d.addCallback(self._counted, key, window, name)
        d.addErrback(lambda _: None)  # Redis down: this node's bucket limits alone

    def _counted(self, count: Any, key: str, window: int, name: str) -> None:
        if int(count) == 1:
            self.link.send("EXPIRE", name, WINDOW * 2)
        if key not in self.seen and len(self.seen) >= self.maxKeys:
            for old in [k for k, (w, _) in self.seen.items() if w != window] or list(self.seen)[: len(self.seen) // 2]:
                del self.seen[old]
        self.seen[key] = (window, int(count))
