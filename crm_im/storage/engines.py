# -*- test-case-name: tests.test_storage -*-
"""
Database engines: what differs between database backends, kept out of the
store so that its SQL is written once, with C{?} placeholders.

L{SQLiteEngine} (the standard library's C{sqlite3}, one connection) and
L{PostgresEngine} (psycopg 3, a pool of connections with C{cp_reconnect}).
What differs is said here as data and small hooks: the placeholder style,
how a transaction starts, whether a failed statement aborts its whole
transaction (PostgreSQL) or only itself (SQLite), the locks that keep seqs
in commit order and schema upgrades one at a time across nodes, and which
per-engine variant of a schema file applies (C{.sql.sqlite},
C{.sql.postgres}; see L{crm_im.storage.database}).
"""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from twisted.enterprise.adbapi import ConnectionPool
from twisted.internet.interfaces import IReactorCore
from twisted.python.threadpool import ThreadPool

from ..threadpool import AcyclicThreadPool

SYNCHRONOUS_MODES = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})

#: The advisory locks crm_im takes on PostgreSQL, in the two-key form
#: (class, object): the class is "crm" in ASCII then 0 (schema upgrades) or
#: 1 (write transactions); the object is the hash of the schema the tables
#: are in, so that deployments sharing a database in different schemas
#: (C{options=-csearch_path=...}) do not wait on each other.
_SCHEMA_LOCK = 0x63726D00
_WRITE_LOCK = 0x63726D01


class StoreConnectionPool(ConnectionPool):
    """
    adbapi's L{ConnectionPool}, its transactions run on an
    L{AcyclicThreadPool} of the same size, so that they leave no cyclic
    garbage (see L{crm_im.threadpool}).

    The pool builds its L{ThreadPool} in its C{__init__} and, if the
    reactor is already running, starts it there too; the assignment is
    where the other pool is put in its place.
    """

    _threads: AcyclicThreadPool

    @property
    def threadpool(self) -> AcyclicThreadPool:
        return self._threads

    @threadpool.setter
    def threadpool(self, pool: ThreadPool) -> None:
        self._threads = AcyclicThreadPool(pool.min, pool.max, name="crm_im-store")


class BaseEngine:
    """
    What a store needs to know about a database backend.

    @ivar name: names the engine, and the suffix of its schema variants
        (C{NNN_name.sql.<name>}).
    @ivar paramStyle: C{"qmark"} or C{"format"}.
    @ivar beginSQL: the statement opening a transaction, or L{None} if the
        driver opens one implicitly.
    @ivar failedStatementAbortsTransaction: after a failed statement the
        transaction refuses every other one until it is rolled back (to a
        savepoint): PostgreSQL. SQLite undoes the failed statement alone.
    @ivar schemaLockSQL: run before the schema is read and upgraded, so that
        nodes starting together upgrade it once; or L{None}.
    @ivar writeLockSQL: run first in every write transaction of the group
        commit, so that seqs are allocated in commit order across nodes (a
        reader never sees seq 11 before seq 10 commits); or L{None}.
    @ivar integrityErrors: what the driver raises for a violated constraint.
    @ivar returningKeys: a multi-row C{INSERT} reports the keys it made with
        C{RETURNING} (PostgreSQL: a sequence hands out values to concurrent
        transactions too, so "the last id minus the row count" would be a
        guess); otherwise through L{lastInsertedId} (SQLite, one writer).
    @ivar linksMessages: a new message is stored with the seq and time of
        the one before it in its conversation (L{StoredMessage.prevSeq}),
        read under L{writeLockSQL}: the nodes of a cluster, which share
        this engine, put messages crossing Redis back in order with it
        (L{crm_im.routing.order}). One small read per batch; SQLite, one
        node, has no use for it.
    @ivar releaseMemorySQL: frees the connection's cache when the server
        is quiet (L{crm_im.idlerelease}); or L{None}, where the cache is
        another process's (PostgreSQL's shared buffers).
    """

    #: how many times a transaction whose connection broke under it is run
    #: again on another (see L{connectionBroken})
    retriesOnBrokenConnection = 0

    name = "base"
    paramStyle = "qmark"
    beginSQL: str | None = None
    failedStatementAbortsTransaction = False
    returningKeys = False
    linksMessages = False
    schemaLockSQL: str | None = None
    writeLockSQL: str | None = None
    releaseMemorySQL: str | None = None
    integrityErrors: tuple[type[Exception], ...] = ()

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

    def describe(self) -> str:
        """
        Where the data is, for logs: never a password.
        """
        return self.name

    def connectionBroken(self, cursor: Any) -> bool:
        """
        Whether the connection of C{cursor} is lost (a failed statement on
        it then says nothing about the statement: its transaction, never
        committed, may run again on another connection).
        """
        return False


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

    name = "sqlite"
    beginSQL = "BEGIN"
    integrityErrors = (sqlite3.IntegrityError,)
    #: the page cache of the connection, KiB: filled again from the
    #: system's file cache after L{releaseMemorySQL} empties it
    cacheKiB = 65536
    releaseMemorySQL = "PRAGMA shrink_memory"
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
        return StoreConnectionPool(
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

    def describe(self) -> str:
        """
        C{sqlite:PATH}.
        """
        return "sqlite:" + self.path


def redactURL(url: str) -> str:
    """
    C{url} with any password replaced by C{***}: in the user info of a URL
    and in a C{password} query parameter.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable store URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userInfo, _, hostPart = netloc.rpartition("@")
        if ":" in userInfo:
            userInfo = userInfo.split(":", 1)[0] + ":***"
        netloc = userInfo + "@" + hostPart
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(key, "***" if key == "password" else value) for key, value in pairs], safe="*/:")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _loadNumeric(text: str) -> int | float:
    """
    A C{NUMERIC} as SQLite gives it back: an integer stays an C{int}, a
    fraction is a C{float} (the message's C{client_timestamp}).
    """
    value = Decimal(text)
    if value == value.to_integral_value():
        return int(value)
    return float(value)


def setUpConnection(conn: Any) -> None:
    """
    Make a psycopg connection read and write numbers as crm_im expects
    (see L{PostgresEngine.onNewConnection}); the copy tool's too.
    """
    import psycopg
    from psycopg.adapt import Dumper, Loader

    class NumericLoader(Loader):
        def load(self, data: Any) -> int | float:
            return _loadNumeric(bytes(data).decode("ascii"))

    class FloatDumper(Dumper):
        oid = psycopg.adapters.types["numeric"].oid

        def dump(self, obj: Any) -> bytes:
            return repr(float(obj)).encode("ascii")

    conn.adapters.register_loader("numeric", NumericLoader)
    conn.adapters.register_dumper(float, FloatDumper)


class PostgresEngine(BaseEngine):
    """
    PostgreSQL through psycopg 3 (its DB-API module, C{psycopg}), a pool of
    connections that reconnects after a lost one (C{cp_reconnect}).

    psycopg opens a transaction implicitly on the first statement; adbapi
    commits or rolls it back. C{seq} comes from a sequence (C{BIGSERIAL}),
    allocated under L{writeLockSQL} so that commit order is seq order.

    Writes go through one group commit (one write transaction in flight per
    node), so the pool's other connections serve reads.
    """

    name = "postgres"
    paramStyle = "format"
    failedStatementAbortsTransaction = True
    returningKeys = True
    linksMessages = True
    schemaLockSQL = f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK}, hashtext(current_schema()))"
    writeLockSQL = f"SELECT pg_advisory_xact_lock({_WRITE_LOCK}, hashtext(current_schema()))"
    #: seconds libpq waits for a connection unless the URL says otherwise
    connectTimeout = 10
    #: libpq's TCP keepalive settings, unless the URL says otherwise
    keepalives = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}

    def __init__(self, url: str, minConnections: int = 2, maxConnections: int = 8) -> None:
        """
        @param url: a libpq connection string, C{postgresql://user@host/db}.
        @param minConnections: connections the pool opens at start.
        @param maxConnections: connections at most (one for the group
            commit's writes, the others for reads).
        """
        import psycopg

        self.url = url
        self.minConnections = minConnections
        self.maxConnections = maxConnections
        self.integrityErrors = (psycopg.IntegrityError,)

    def onNewConnection(self, conn: Any) -> None:
        """
        Set up a new connection (on a pool thread): C{NUMERIC} comes back as
        C{int} or C{float}, as from SQLite; a C{float} goes as C{NUMERIC}
        in its shortest exact form (as C{float8}, PostgreSQL would round it
        to 15 digits storing it in a C{NUMERIC} column: a client's
        C{timestamp} 1701234567890.123 would come back ...890.12).
        """
        setUpConnection(conn)

    def connectArguments(self) -> dict[str, Any]:
        """
        The keyword arguments of C{psycopg.connect} besides the URL.
        """
        from psycopg.conninfo import conninfo_to_dict

        given = conninfo_to_dict(self.url)
        extra: dict[str, Any] = {}
        if "connect_timeout" not in given:
            extra["connect_timeout"] = self.connectTimeout
        if "application_name" not in given:
            extra["application_name"] = "crm_im"
        # A connection cut without a reset (a failover, a dead network)
        # is found out in about a minute, not after the kernel's two hours,
        # and the transaction waiting on it fails instead of holding the
        # group commit.
        for key, value in self.keepalives.items():
            if key not in given:
                extra[key] = value
        return extra

    @property
    def retriesOnBrokenConnection(self) -> int:  # type: ignore[override]
        """
        One per pooled connection: after a restart of the server (or a
        network cut) every connection of the pool is broken, and each is
        found out, dropped and replaced (C{cp_reconnect}) by one failure.
        """
        return self.maxConnections

    def connectionBroken(self, cursor: Any) -> bool:
        """
        psycopg's C{broken}: the server went away (restart, failover,
        C{pg_terminate_backend}, a network cut).
        """
        return bool(getattr(getattr(cursor, "connection", None), "broken", False))

    def lastInsertedId(self, cursor: Any) -> int:
        """
        Not available: PostgreSQL reports keys with C{RETURNING}
        (L{returningKeys}).
        """
        raise NotImplementedError("use INSERT ... RETURNING on PostgreSQL")

    def makePool(self, reactor: IReactorCore) -> ConnectionPool:
        """
        A pool of C{minConnections} to C{maxConnections} connections.
        """
        return StoreConnectionPool(
            "psycopg",
            self.url,
            cp_min=self.minConnections,
            cp_max=self.maxConnections,
            cp_reconnect=True,
            cp_reactor=reactor,
            cp_openfun=self.onNewConnection,
            **self.connectArguments(),
        )

    def describe(self) -> str:
        """
        The URL without its password.
        """
        return redactURL(self.url)


#: The schemes L{engineFor} reads as PostgreSQL.
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def engineFor(store: str, synchronous: str = "FULL") -> BaseEngine:
    """
    The engine a C{--store} value names: C{sqlite:PATH} (or a bare path) or
    a PostgreSQL URL (C{postgresql://user@host/db?options}, libpq syntax).

    @param synchronous: SQLite's C{PRAGMA synchronous} (ignored by
        PostgreSQL, whose durability is the server's C{synchronous_commit}).
    @raise ValueError: for an empty SQLite path or an unknown scheme.
    """
    if store.startswith(POSTGRES_SCHEMES):
        return PostgresEngine(store)
    if store.startswith("sqlite:"):
        path = store[len("sqlite:") :]
        if path.startswith("//"):
            # sqlite:///abs/path or sqlite://rel/path, as SQLAlchemy writes them
            path = path[2:]
    elif "://" in store:
        raise ValueError(f"unknown store scheme in {redactURL(store)!r}: use sqlite:PATH or postgresql://...")
    else:
        path = store
    if not path:
        raise ValueError("the SQLite store needs a path: sqlite:PATH")
    return SQLiteEngine(path, synchronous)
