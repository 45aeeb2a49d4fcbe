# -*- test-case-name: tests.test_storage_conversations,tests.test_storage -*-
"""
Where read state is kept: a read cursor per reader and conversation (1:1,
group or room), the highest seq the reader has read there, never moving
back. C{*_txn} functions on the pool thread, shared by the conversation
store (groups) and the message store (1:1 C{message:read}).
"""

from __future__ import annotations

from .database import Transaction


def lastSeq_txn(txn: Transaction, conversation: str) -> int:
    """
    The seq of the latest message in C{conversation}, 0 if none: a cursor
    never moves past it (a client cannot read messages not sent yet).
    """
    txn.execute("SELECT MAX(seq) FROM messages WHERE conversation = ?", (conversation,))
    row = txn.fetchone()
    return 0 if row is None or row[0] is None else int(row[0])


def readSeq_txn(txn: Transaction, conversation: str, userId: str) -> int:
    """
    C{userId}'s read cursor in C{conversation}, 0 if it has none.
    """
    txn.execute("SELECT read_seq FROM read_cursors WHERE conversation = ? AND user_id = ?", (conversation, userId))
    row = txn.fetchone()
    return 0 if row is None else int(row[0])


def setReadSeq_txn(txn: Transaction, conversation: str, userId: str, seq: int) -> None:
    """
    Set C{userId}'s read cursor in C{conversation} to C{seq} (the caller
    decided it moves forward).
    """
    txn.execute(
        "INSERT INTO read_cursors (conversation, user_id, read_seq) VALUES (?, ?, ?)"
        " ON CONFLICT (conversation, user_id) DO UPDATE SET read_seq = excluded.read_seq",
        (conversation, userId, seq),
    )
