"""
The SQL store on each engine, for store tests written once: a test class
mixes one of L{SQLiteStores} and L{PostgresStores} with its tests, which
make stores with L{newStore}, look at the database behind the store's back
with L{rows}, and name the driver's constraint error L{integrityError}.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Sequence

from twisted.internet import reactor

from crm_im.storage import PostgresMessageStore, SQLiteMessageStore, SQLMessageStore

from .postgres import newSchemaURL


class SQLiteStores:
    """
    Stores in a temporary SQLite file of the test's own.
    """

    engineName = "sqlite"
    integrityError: type[Exception] = sqlite3.IntegrityError
    path: str
    mktemp: Any

    def newStore(self) -> SQLMessageStore:
        """
        A new, unopened store on the test's database (made on first use).
        """
        if not hasattr(self, "path"):
            self.path = self.mktemp()
        return SQLiteMessageStore(self.path, reactor)

    def rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """
        The rows of a query, on a connection of its own (blocking).
        """
        other = sqlite3.connect(self.path)
        try:
            return [tuple(row) for row in other.execute(sql, args).fetchall()]
        finally:
            other.close()


class PostgresStores:
    """
    Stores in a PostgreSQL schema of the test's own, dropped after it (the
    test is skipped, or fails under C{CI=true}, without PostgreSQL).
    """

    engineName = "postgres"
    url: str

    @property
    def integrityError(self) -> type[Exception]:
        """
        psycopg's.
        """
        import psycopg

        return psycopg.IntegrityError

    def newStore(self) -> SQLMessageStore:
        """
        A new, unopened store on the test's schema (made on first use,
        before the store's cleanup is registered, so dropped after it).
        """
        if not hasattr(self, "url"):
            self.url = newSchemaURL(self)
        return PostgresMessageStore(self.url, reactor)

    def rows(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """
        The rows of a query (written with C{?}), on a connection of its own
        (blocking).
        """
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            return [tuple(row) for row in conn.execute(sql.replace("?", "%s"), args).fetchall()]
