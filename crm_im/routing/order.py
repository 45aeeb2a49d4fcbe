# -*- test-case-name: tests.test_routing_order -*-
"""
L{ConversationOrder}: where a cluster node puts the messages of one
conversation back in C{seq} order before its devices see them.

Two senders on two nodes write into one group at once. The database
commits their messages one after the other (PostgreSQL, under the write
lock: commit order is seq order), but each node delivers its own sender's
message to its local devices as soon as it is committed, while the other
node's earlier message is still crossing Redis. Without a gate a device
on the second node would see seq 10 and then seq 9 (CLUSTER.md: a device
never sees a lower seq after a higher one).

A global sequence has gaps (other conversations, other nodes), so a node
cannot tell from seqs alone that something is missing. The store tells it
instead: each message is stored with its predecessor in its conversation
(C{prevSeq}) and that predecessor's server time (C{prevAt}), read under
the same write lock. A node delivers a message at once when it has
already passed its predecessor here, or when the predecessor is older than
L{HOLD} (it reached this node long ago, or it was never for this node:
no recipient here then); otherwise it holds it until the predecessor
arrives, and never longer than until C{prevAt + HOLD}. Held messages are
released in seq order. A predecessor that arrives after its successor
was released at the deadline is still delivered (late, counted): losing
a message is worse than showing it out of order, and clients sort by
seq.

State is bounded: the last seq passed per conversation is remembered for
L{MAX_CONVERSATIONS} conversations (the least recently used forgotten,
which only makes the next message rely on C{prevAt}), and at most
L{MAX_HELD} messages are held (beyond that the oldest conversation's are
released at once).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

from ..storage.interface import MessageOrder

__all__ = ["ConversationOrder", "MessageOrder", "HOLD"]

#: Seconds a message may wait for its predecessor, counted from the
#: predecessor's server time (a commit interval and a Redis hop take
#: milliseconds; this bounds what a lost or untargeted one costs).
HOLD = 0.5
#: Conversations whose last seq is remembered.
MAX_CONVERSATIONS = 100_000
#: Messages held at once, all conversations together.
MAX_HELD = 10_000


class _Held:
    """
    The messages of one conversation waiting for a predecessor, and the
    timer that releases them.
    """

    __slots__ = ("waiting", "timer")

    def __init__(self) -> None:
        self.waiting: list[tuple[int, int, int, Callable[[], object]]] = []
        self.timer: IDelayedCall | None = None


class ConversationOrder:
    """
    The gate of one node (see the module docstring).

    @ivar late: predecessors delivered after a successor (for metrics).
    @ivar held: messages held so far (for metrics).
    """

    def __init__(
        self,
        clock: IReactorTime,
        hold: float = HOLD,
        maxConversations: int = MAX_CONVERSATIONS,
        maxHeld: int = MAX_HELD,
    ) -> None:
        self.clock = clock
        self.holdMs = int(hold * 1000)
        self.maxConversations = maxConversations
        self.maxHeld = maxHeld
        self._last: OrderedDict[str, int] = OrderedDict()
        self._held: OrderedDict[str, _Held] = OrderedDict()
        self._heldCount = 0
        self._stopped = False
        self.late = 0
        self.held = 0

    def admit(self, order: MessageOrder, deliver: Callable[[], object]) -> bool:
        """
        Deliver a stored message now, or once its predecessor has passed.

        @param deliver: writes the message to this node's devices.
        @return: whether it was delivered now.
        """
        if self._stopped:
            # (a message still arriving while the node leaves: no timer
            # may outlive the stop)
            deliver()
            return True
        conversation = order.conversation
        last = self._last.get(conversation)
        if last is not None and order.seq <= last:
            # Its successor went first (released at the deadline).
            self.late += 1
            deliver()
            return True
        held = self._held.get(conversation)
        now = self._now()
        # Due when the predecessor is HOLD old, by this node's clock; never
        # later than HOLD from now (the other node's clock may be ahead).
        due = min(order.prevAt, now) + self.holdMs
        if held is None and self._ready(last, order.prevSeq, due, now):
            self._pass(conversation, order.seq)
            deliver()
            return True
        if held is None:
            held = self._held[conversation] = _Held()
        held.waiting.append((order.seq, order.prevSeq, due, deliver))
        held.waiting.sort(key=lambda item: item[0])
        self._heldCount += 1
        self._drain(conversation, held)
        while self._heldCount > self.maxHeld and self._held:
            self._releaseAll(next(iter(self._held)))
        waiting = self._held.get(conversation)
        if waiting is None or all(item[0] != order.seq for item in waiting.waiting):
            return True
        self.held += 1
        return False

    def _now(self) -> int:
        return int(self.clock.seconds() * 1000)

    @staticmethod
    def _ready(last: int | None, prevSeq: int, due: int, now: int) -> bool:
        """
        Whether a message may go: it has no predecessor, its predecessor
        passed here, or that predecessor is too old to be still on its way.
        """
        return prevSeq == 0 or (last is not None and last >= prevSeq) or now >= due

    def _pass(self, conversation: str, seq: int) -> None:
        """
        Remember that C{seq} went to this node's devices.
        """
        last = self._last.pop(conversation, 0)
        self._last[conversation] = max(last, seq)
        if len(self._last) > self.maxConversations:
            self._last.popitem(last=False)

    def _drain(self, conversation: str, held: _Held) -> None:
        """
        Release the held messages that may go, in seq order, and set the
        timer for the first one that may not.
        """
        waiting = held.waiting
        now = self._now()
        while waiting:
            seq, prevSeq, due, deliver = waiting[0]
            if not self._ready(self._last.get(conversation), prevSeq, due, now):
                deadline = (due - now) / 1000
                if held.timer is None:
                    held.timer = self.clock.callLater(deadline, self._expire, conversation)
                else:
                    held.timer.reset(deadline)
                return
            waiting.pop(0)
            self._heldCount -= 1
            self._pass(conversation, seq)
            deliver()
        if held.timer is not None:
            held.timer.cancel()
        held.timer = None
        del self._held[conversation]

    def _expire(self, conversation: str) -> None:
        """
        The first held message's predecessor did not come in time: release
        it and whatever may follow it.
        """
        held = self._held.get(conversation)
        if held is None:
            return
        held.timer = None
        self._drain(conversation, held)

    def _releaseAll(self, conversation: str) -> None:
        held = self._held.pop(conversation)
        if held.timer is not None:
            held.timer.cancel()
        for seq, _, _, deliver in held.waiting:
            self._heldCount -= 1
            self._pass(conversation, seq)
            deliver()

    def start(self) -> None:
        """
        Hold messages again (after L{stop}).
        """
        self._stopped = False

    def stop(self) -> None:
        """
        Release everything held (the node is stopping); until L{start},
        every message goes at once.
        """
        self._stopped = True
        for conversation in list(self._held):
            self._releaseAll(conversation)
