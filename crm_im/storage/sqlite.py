# -*- test-case-name: tests.test_storage -*-
"""
The SQLite message store: L{SQLMessageStore} on a L{SQLiteEngine}.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.interfaces import IReactorCore

from .database import Database
from .engines import SQLiteEngine
from .store import SQLMessageStore

if TYPE_CHECKING:
    from ..crypto import AtRest


class SQLiteMessageStore(SQLMessageStore):
    """
    Messages (and file records) in one SQLite file, in WAL mode.
    """

    def __init__(
        self, path: str, reactor: IReactorCore, synchronous: str = "FULL", atRest: "AtRest | None" = None
    ) -> None:
        """
        @param path: the database file; created if missing.
        @param reactor: runs the connection pool's callbacks.
        @param synchronous: SQLite's C{PRAGMA synchronous}: C{FULL} (durable
            across power loss, the default), C{NORMAL}, C{EXTRA} or C{OFF}.
        @param atRest: the keys of encryption at rest (C{--encryption-keys}).
        @raise ValueError: for an unknown C{synchronous} mode.
        """
        SQLMessageStore.__init__(
            self, Database(SQLiteEngine(path, synchronous), reactor, atRest)
        )
        self.path = path
