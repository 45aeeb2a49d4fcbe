# -*- test-case-name: tests.test_storage -*-
"""
Database engines: what differs between database backends, kept out of the
store so that its SQL is written once, with C{?} placeholders.

Only SQLite is implemented. A PostgreSQL engine would set C{paramStyle =
"format"} (so L{convertParamStyle} turns C{?} into C{%s}), make its pool with
C{psycopg2} and C{cp_reconnect=True}, and open transactions implicitly.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from twisted.enterprise.adbapi import ConnectionPool
from twisted.internet.interfaces import IReactorCore

SYNCHRONOUS_MODES = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})


class BaseEngine:
    """
    What a store needs to know about a database backend.

    @ivar paramStyle: C{"qmark"} or C{"format"}.
    @ivar beginSQL: the statement opening a transaction, or L{None} if the
        driver opens one implicitly.
    """

    paramStyle = "qmark"
    beginSQL: str | None = None

    def convertParamStyle(self, sql: str) -> str:
        """
        Rewrite C{sql}, written with C{?} placeholders, for this backend.
        """
        if self.paramStyle == "format":
            return sql.replace("%", "%%").replace("?", "%s")
        return sql

    def makePool(self, reactor: IReactorCore) -> ConnectionPool:
        """
        Make (but do not start) the connection pool.
        """
        raise NotImplementedError()

    def lastInsertedId(self, cursor: Any) -> int:
        """
        The primary key of the row the last C{INSERT} on C{cursor} made.
        """
        raise NotImplementedError()


class SQLiteEngine(BaseEngine):
    """
    SQLite through the standard library's C{sqlite3}: one connection (SQLite
    has one writer anyway), WAL, and a conscious C{synchronous} setting.

    C{synchronous=FULL} (the default) makes every commit durable across power
    loss: a message receipt promises that. C{NORMAL} survives a killed process
    but may lose the last commits on power loss.

    Connections run in autocommit mode and every interaction opens its
    transaction with C{BEGIN}, so that schema changes are transactional too.
    """

    beginSQL = "BEGIN"
    #: the page cache of the connection, KiB
    cacheKiB = 65536
    #: WAL pages between automatic checkpoints
    walAutocheckpoint = 10000

    def __init__(self, path: str, synchronous: str = "FULL") -> None:
        """
        @param path: the database file.
        @param synchronous: the C{PRAGMA synchronous} mode.
        @raise ValueError: for an unknown C{synchronous} mode.
        """
        synchronous = synchronous.upper()
        if synchronous not in SYNCHRONOUS_MODES:
            raise ValueError(f"unknown SQLite synchronous mode {synchronous!r}")
        self.path = path
        self.synchronous = synchronous

    def onNewConnection(self, conn: sqlite3.Connection) -> None:
        """
        Set up a new connection (called on the pool thread).
        """
        conn.isolation_level = None
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={self.synchronous}")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=5000")
        # A multi-row INSERT keeps a statement journal, by default a new
        # temporary file per transaction with every page it changes written
        # to it: in memory instead, it roughly halves the kernel time of a
        # group commit.
        conn.execute("PRAGMA temp_store=MEMORY")
        # The index pages a write touches stay cached (the default is 2 MiB).
        conn.execute(f"PRAGMA cache_size=-{self.cacheKiB}")
        # Checkpoint every ~40 MiB of WAL rather than 4 MiB: a page written
        # by many commits is copied into the database once per checkpoint.
        conn.execute(f"PRAGMA wal_autocheckpoint={self.walAutocheckpoint}")

    def makePool(self, reactor: IReactorCore) -> ConnectionPool:
        """
        A pool of one connection to the database file.
        """
        return ConnectionPool(
            "sqlite3",
            self.path,
            check_same_thread=False,
            cp_min=1,
            cp_max=1,
            cp_reactor=reactor,
            cp_openfun=self.onNewConnection,
        )

    def lastInsertedId(self, cursor: Any) -> int:
        """
        SQLite's C{lastrowid}.
        """
        rowId = cursor.lastrowid
        assert isinstance(rowId, int)
        return rowId
