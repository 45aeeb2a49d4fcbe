"""
Unit tests of L{ConversationOrder}, the cluster's per-conversation order
gate, on a L{Clock}.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from crm_im.routing.order import HOLD, ConversationOrder, MessageOrder

#: the clock's start, in seconds (server times are in ms)
START = 1_700_000_000.0
NOW_MS = int(START * 1000)


class OrderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.gate = ConversationOrder(self.clock)
        self.delivered: list[tuple[str, int]] = []

    def admit(self, seq: int, prevSeq: int, prevAt: int = NOW_MS, conversation: str = "g:1") -> bool:
        return self.gate.admit(
            MessageOrder(conversation, seq, prevSeq, prevAt), lambda: self.delivered.append((conversation, seq))
        )

    def seqs(self, conversation: str = "g:1") -> list[int]:
        return [seq for c, seq in self.delivered if c == conversation]

    def test_firstAndFollowing(self) -> None:
        """
        A conversation's first message, and each one whose predecessor
        passed here, go at once.
        """
        self.assertTrue(self.admit(3, 0, 0))
        self.assertTrue(self.admit(7, 3))
        self.assertTrue(self.admit(8, 7))
        self.assertEqual(self.seqs(), [3, 7, 8])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_heldUntilPredecessor(self) -> None:
        """
        A message whose predecessor has not passed yet (it is crossing from
        another node) waits for it, and both go in seq order, the timer
        cancelled.
        """
        self.admit(5, 0, 0)
        self.assertFalse(self.admit(10, 9))
        self.assertEqual(self.seqs(), [5])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.assertFalse(self.admit(11, 10))
        self.assertTrue(self.admit(9, 5))
        self.assertEqual(self.seqs(), [5, 9, 10, 11])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual((self.gate.held, self.gate.late), (2, 0))

    def test_unknownConversation(self) -> None:
        """
        A node that has seen nothing of a conversation waits for a recent
        predecessor too (it may be the first of the two to arrive).
        """
        self.assertFalse(self.admit(10, 9))
        self.admit(9, 4, NOW_MS - 60_000)
        self.assertEqual(self.seqs(), [9, 10])

    def test_oldPredecessor(self) -> None:
        """
        A predecessor older than L{HOLD} is not waited for: it passed long
        ago, or was never for this node.
        """
        self.admit(2, 0, 0)
        self.assertTrue(self.admit(10, 9, NOW_MS - int(HOLD * 1000)))
        self.assertEqual(self.seqs(), [2, 10])

    def test_deadline(self) -> None:
        """
        A predecessor that does not come within L{HOLD} of its own server
        time is given up: what waited goes, in order; if it comes after
        all, it is delivered late (counted), not dropped.
        """
        self.admit(2, 0, 0)
        self.admit(10, 9, NOW_MS - 200)
        self.admit(12, 10)
        self.clock.advance(HOLD - 0.2 - 0.001)
        self.assertEqual(self.seqs(), [2])
        self.clock.advance(0.001)
        self.assertEqual(self.seqs(), [2, 10, 12])
        self.assertTrue(self.admit(9, 2))
        self.assertEqual(self.seqs(), [2, 10, 12, 9])
        self.assertEqual(self.gate.late, 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_secondGapAfterDeadline(self) -> None:
        """
        After the first waiting message is given up, one behind it that
        waits for another predecessor keeps its own deadline.
        """
        self.admit(2, 0, 0)
        self.admit(10, 9, NOW_MS - 400)
        self.admit(20, 19, NOW_MS)
        self.clock.advance(0.1)
        self.assertEqual(self.seqs(), [2, 10])
        self.clock.advance(HOLD - 0.1 - 0.001)
        self.assertEqual(self.seqs(), [2, 10])
        self.admit(19, 10, NOW_MS)
        self.assertEqual(self.seqs(), [2, 10, 19, 20])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_otherNodeClockAhead(self) -> None:
        """
        A predecessor stamped in the future (the other node's clock is
        ahead) holds a message no longer than L{HOLD} from now.
        """
        self.admit(2, 0, 0)
        self.admit(10, 9, NOW_MS + 60_000)
        self.clock.advance(HOLD)
        self.assertEqual(self.seqs(), [2, 10])

    def test_conversationsIndependent(self) -> None:
        """
        A conversation waiting holds nothing of another.
        """
        self.admit(10, 9, conversation="g:1")
        self.assertTrue(self.admit(11, 0, 0, conversation="g:2"))
        self.assertEqual(self.delivered, [("g:2", 11)])

    def test_heldBounded(self) -> None:
        """
        Beyond C{maxHeld} messages held, the conversation waiting longest
        is released at once.
        """
        self.gate = ConversationOrder(self.clock, maxHeld=2)
        self.admit(10, 9, conversation="a")
        self.admit(20, 19, conversation="b")
        self.assertEqual(self.delivered, [])
        self.admit(30, 29, conversation="c")
        self.assertEqual(self.delivered, [("a", 10)])

    def test_conversationsBounded(self) -> None:
        """
        Only C{maxConversations} conversations are remembered, the least
        recently used forgotten (its next message then relies on the
        predecessor's time).
        """
        self.gate = ConversationOrder(self.clock, maxConversations=2)
        self.admit(1, 0, 0, conversation="a")
        self.admit(2, 0, 0, conversation="b")
        self.admit(3, 1, conversation="a")
        self.admit(4, 0, 0, conversation="c")
        self.assertTrue(self.admit(5, 3, conversation="a"))
        self.assertFalse(self.admit(6, 2, conversation="b"))

    def test_stop(self) -> None:
        """
        Stopping releases everything held and leaves no timer.
        """
        self.admit(10, 9)
        self.gate.stop()
        self.assertEqual(self.seqs(), [10])
        self.assertEqual(self.clock.getDelayedCalls(), [])


    def test_afterStop(self) -> None:
        """
        A message that arrives after the gate stopped goes at once and
        leaves no timer; once started again, the gate holds as before.
        """
        self.gate.stop()
        self.assertTrue(self.admit(11, 10))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.gate.start()
        self.assertFalse(self.admit(13, 12))
        self.assertEqual(self.seqs(), [11])


class MessageOrderTests(SynchronousTestCase):
    def test_roundTrip(self) -> None:
        order = MessageOrder("g:1", 10, 9, NOW_MS)
        self.assertEqual(MessageOrder.fromList(order.toList()), order)

    def test_malformed(self) -> None:
        for value in (None, [], ["g", 1, 2], ["g", 1, 2, "x"], [1, 1, 2, 3], ["g", 1.5, 2, 3], ["g", True, 2, 3]):
            self.assertRaises(ValueError, MessageOrder.fromList, value)
