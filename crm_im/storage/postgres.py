# -*- test-case-name: tests.test_storage -*-
"""
The PostgreSQL message store: L{SQLMessageStore} on a L{PostgresEngine}, and
L{storeFor}, the store a C{--store} value names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.interfaces import IReactorCore

from .database import Database
from .engines import PostgresEngine, SQLiteEngine, engineFor
from .store import SQLMessageStore

if TYPE_CHECKING:
    from ..crypto import AtRest


class PostgresMessageStore(SQLMessageStore):
    """
    Messages (and everything else the SQL store keeps) in a PostgreSQL
    database, which several nodes may share.
    """

    def __init__(self, url: str, reactor: IReactorCore, atRest: "AtRest | None" = None) -> None:
        """
        @param url: a libpq URL, C{postgresql://user@host/db?...}.
        @param reactor: runs the connection pool's callbacks.
        @param atRest: the keys of encryption at rest (C{--encryption-keys}).
        """
        SQLMessageStore.__init__(self, Database(PostgresEngine(url), reactor, atRest))
        self.url = url


def storeFor(
    store: str, reactor: IReactorCore, synchronous: str = "FULL", atRest: "AtRest | None" = None
) -> SQLMessageStore:
    """
    The (unopened) store a C{--store} value names: C{sqlite:PATH} or a
    PostgreSQL URL; see L{engineFor}.

    @raise ValueError: for a value naming no store.
    """
    from .sqlite import SQLiteMessageStore

    engine = engineFor(store, synchronous)
    if isinstance(engine, SQLiteEngine):
        return SQLiteMessageStore(engine.path, reactor, engine.synchronous, atRest)
    assert isinstance(engine, PostgresEngine)
    return PostgresMessageStore(engine.url, reactor, atRest)
