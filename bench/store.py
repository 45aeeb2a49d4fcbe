#!/usr/bin/env python3
"""
The message store alone: CPU per message of group commits, on the real
schema and the real batch functions, without the reactor.

    python bench/store.py                          # batches of 40 on 100,000 stored messages
    python bench/store.py --batch 200 --runs 3
    python bench/store.py --drop-index messages_conversation_topic_seq
    python bench/store.py --page-size 1024 --pragma mmap_size=268435456

Each commit is what the server's group commit runs: the delivered marks of
the previous batch, then a batch of new messages (1,000 users in 500 pairs,
120-character texts, client-made UUID ids), in one transaction on a
C{synchronous=FULL} WAL database, with the server's pragmas. It prints the
thread CPU time (user + system: SQLite's page writes and C{fsync}s count) per
message, split by statement, after C{--preload} messages are stored.

Why: the relay bench shows the database thread's share of the server's core,
not what it is made of. Here the schema can be changed one index at a time
(C{--drop-index}), the batch size varied and pragmas tried (C{--page-size},
C{--pragma}), each in a fresh database. Run it
pinned to one core (C{taskset -c 0}) on a quiet machine, several times: a
shared machine varies by ±20 % from run to run.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from crm_im.storage import store  # noqa: E402
from crm_im.storage.database import Transaction, schemaFiles, splitStatements  # noqa: E402
from crm_im.storage.engines import SQLiteEngine  # noqa: E402
from crm_im.storage.interface import NewMessage  # noqa: E402

USERS = [f"user{i}" for i in range(1000)]


class _TimedCursor:
    """
    A DB-API cursor that adds each statement's thread CPU time to a counter
    under the statement's first keyword.
    """

    def __init__(self, cursor: Any, spent: Counter[str]) -> None:
        # (not "_cursor": Transaction unwraps an attribute of that name)
        self._timed = cursor
        self._spent = spent

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        started = time.thread_time()
        try:
            return self._timed.execute(sql, args)
        finally:
            kind = "SELECT" if sql.startswith("WITH") else sql.split(None, 1)[0].upper()
            self._spent[kind] += time.thread_time() - started

    def __getattr__(self, name: str) -> Any:
        return getattr(self._timed, name)


def messages(count: int, start: int) -> list[NewMessage]:
    result = []
    for i in range(start, start + count):
        a = random.randrange(500)
        b = a + 500
        if random.random() < 0.5:
            a, b = b, a
        result.append(
            NewMessage(
                fromId=USERS[a],
                fromName="User",
                toId=USERS[b],
                id=str(uuid.uuid4()),
                topic=None,
                type="text",
                content="x" * 120,
                fileUrl=None,
                fileName=None,
                clientTimestamp=1_700_000_000_000 + i,
                serverTimestamp=1_700_000_000_000 + i,
            )
        )
    return result


def run(args: argparse.Namespace, directory: str) -> tuple[float, Counter[str]]:
    path = os.path.join(directory, "store.sqlite3")
    engine = SQLiteEngine(path, "FULL")
    import sqlite3

    connection = sqlite3.connect(path, check_same_thread=False)
    if args.page_size:
        # (only before the first write: WAL mode fixes the page size)
        connection.execute(f"PRAGMA page_size={args.page_size}")
    engine.onNewConnection(connection)
    for pragma in args.pragma:
        connection.execute(f"PRAGMA {pragma}")
    spent: Counter[str] = Counter()
    txn = Transaction(_TimedCursor(connection.cursor(), spent), engine)
    txn.execute("BEGIN")
    for _, _, sql in schemaFiles():
        for statement in splitStatements(sql):
            txn.execute(statement)
    for index in args.drop_index:
        txn.execute(f"DROP INDEX {index}")
    txn.execute("COMMIT")

    def commits(batch: list[NewMessage], marks: list[int]) -> list[int]:
        txn.execute("BEGIN")
        store.markDelivered_txn(txn, marks)
        results = store.storeMessages_txn(txn, batch)
        txn.execute("COMMIT")
        return [outcome.message.seq for ok, outcome in results if ok]

    marks: list[int] = []
    for start in range(0, args.preload, 1000):
        marks = commits(messages(min(1000, args.preload - start), start), marks)
    todo = messages(args.messages, args.preload)
    spent.clear()
    started = time.thread_time()
    for start in range(0, len(todo), args.batch):
        marks = commits(todo[start : start + args.batch], marks)
    total = time.thread_time() - started
    connection.close()
    return total, spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--batch", type=int, default=40, help="messages per commit")
    parser.add_argument("--preload", type=int, default=100_000, help="messages stored before measuring")
    parser.add_argument("--messages", type=int, default=20_000, help="messages measured")
    parser.add_argument("--drop-index", action="append", default=[], help="drop this index of the schema (repeatable)")
    parser.add_argument("--page-size", type=int, default=0, help="page size of the fresh database (0: SQLite's default)")
    parser.add_argument("--pragma", action="append", default=[], metavar="NAME=VALUE",
                        help="a PRAGMA run after the server's own, e.g. wal_autocheckpoint=50000 (repeatable)")
    parser.add_argument("--runs", type=int, default=1, help="fresh databases, one after the other")
    parser.add_argument("--dir", default=None, help="where the databases go (default: a temporary directory)")
    args = parser.parse_args()
    for number in range(1, args.runs + 1):
        with tempfile.TemporaryDirectory(dir=args.dir) as directory:
            total, spent = run(args, directory)
        perMessage = {kind: round(seconds / args.messages * 1e6, 1) for kind, seconds in sorted(spent.items())}
        print(
            f"run {number}: batch {args.batch}, {args.preload:,} stored before, dropped {args.drop_index or 'none'}: "
            f"{total / args.messages * 1e6:.1f} µs CPU per message; by statement (µs): {perMessage}",
            flush=True,
        )


if __name__ == "__main__":
    main()
