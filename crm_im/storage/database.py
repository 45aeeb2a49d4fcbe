# -*- test-case-name: tests.test_storage -*-
"""
The database: an C{adbapi} connection pool behind one engine, transactions
counted, and the versioned schema applied at start.

Schema files are C{crm_im/storage/schema/NNN_name.sql}, applied in order of
C{NNN}, each in the same transaction as its row in C{schema_version}; files
already recorded there are skipped, so applying twice is a no-op. Statements
in a file are separated by a C{;} at the end of a line (no triggers).

A file is written once, in the SQL both engines accept, and runs on both.
Where a statement must differ (C{AUTOINCREMENT} against C{BIGSERIAL}, a
rewrite only old SQLite data needs), the version has one variant per engine
instead, C{NNN_name.sql.sqlite} and C{NNN_name.sql.postgres} (the suffix is
L{BaseEngine.name}): one numbering for every engine, and a version has a
shared file, a variant for each engine, or both (an engine's variant then
wins over the shared file). Variants of a version bear its one name. A database whose schema is newer
than the files this code ships is refused (L{SchemaTooNewError}).
"""

from __future__ import annotations

import hmac
import re
from importlib import resources
from importlib.resources.abc import Traversable
from typing import TYPE_CHECKING, Any, Callable, Concatenate, Iterator, ParamSpec, Sequence, TypeVar

from twisted.enterprise.adbapi import ConnectionPool
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..crypto.records import RecordCipher
from .engines import BaseEngine
from .interface import StoreClosedError

if TYPE_CHECKING:
    from ..crypto import AtRest

_P = ParamSpec("_P")
_R = TypeVar("_R")
_T = TypeVar("_T")

_SCHEMA_FILE = re.compile(r"^(\d{3})_([A-Za-z0-9_]+)\.sql(?:\.([a-z]+))?$")

#: The engines schema variants may name (L{BaseEngine.name}).
ENGINE_NAMES = ("sqlite", "postgres")


class SchemaTooNewError(RuntimeError):
    """
    The database was upgraded by a newer crm_im than this one: starting on
    it could misread or damage what the newer version wrote.
    """

#: At most this many values in one SQL C{IN (...)} list (a power of two:
#: see L{paddedChunks}).
MAX_IN_LIST = 512


class Transaction:
    """
    A cursor in an open transaction, taking SQL written with C{?}
    placeholders. Only used on the pool thread.
    """

    def __init__(self, cursor: Any, engine: BaseEngine, cipher: RecordCipher | None = None) -> None:
        """
        @param cursor: the C{adbapi} transaction (a DB-API cursor).
        @param engine: converts the SQL for its backend.
        @param cipher: seals user text at rest (C{--encryption-keys}), or
            L{None}: the C{*_txn} functions read it as C{txn.cipher}.
        """
        # adbapi hands us its Transaction wrapper, whose __getattr__ costs
        # on every call; use the DB-API cursor it wraps.
        self._cursor = getattr(cursor, "_cursor", cursor)
        self._convert = engine.paramStyle != "qmark"
        self.engine = engine
        self.cipher = cipher

    def execute(self, sql: str, args: Sequence[Any] = ()) -> None:
        """
        Execute one statement.
        """
        if not args:
            # No parameters: the SQL goes as written (psycopg reads no
            # placeholders, so a literal % stays one).
            self._cursor.execute(sql)
            return
        if self._convert:
            sql = self.engine.convertParamStyle(sql)
        self._cursor.execute(sql, args)

    def fetchone(self) -> tuple[Any, ...] | None:
        """
        The next row of the last query, or L{None}.
        """
        row = self._cursor.fetchone()
        return None if row is None else tuple(row)

    def fetchall(self) -> list[tuple[Any, ...]]:
        """
        The remaining rows of the last query.
        """
        return [tuple(row) for row in self._cursor.fetchall()]

    @property
    def rowcount(self) -> int:
        """
        The number of rows the last statement changed.
        """
        count = self._cursor.rowcount
        assert isinstance(count, int)
        return count

    def lastInsertedId(self) -> int:
        """
        The primary key of the row the last C{INSERT} made.
        """
        return self.engine.lastInsertedId(self._cursor)


def attempt_txn(
    txn: Transaction, func: Callable[[Transaction], _R], savepoint: bool = True
) -> tuple[bool, _R | Failure]:
    """
    Run C{func(txn)} so that its failure fails it alone, not the rest of
    the transaction: in a savepoint, rolled back to if C{func} raises.

    @param savepoint: whether one is needed; without, C{func} must be a
        single statement on an engine where a failed statement undoes only
        itself (not PostgreSQL, where it aborts the whole transaction: see
        L{BaseEngine.failedStatementAbortsTransaction}).
    @return: C{(True, result)} or C{(False, Failure)}.
    """
    if not savepoint and not txn.engine.failedStatementAbortsTransaction:
        try:
            return True, func(txn)
        except Exception:
            return False, Failure()
    txn.execute("SAVEPOINT write")
    try:
        result = func(txn)
    except Exception:
        failure = Failure()
        txn.execute("ROLLBACK TO SAVEPOINT write")
        txn.execute("RELEASE SAVEPOINT write")
        return False, failure
    txn.execute("RELEASE SAVEPOINT write")
    return True, result


def chunks(values: Sequence[_T], size: int = MAX_IN_LIST) -> Iterator[Sequence[_T]]:
    """
    C{values} in slices of at most C{size}, for bounded C{IN} lists.
    """
    for start in range(0, len(values), size):
        yield values[start : start + size]


def binaryChunks(values: Sequence[_T], size: int = MAX_IN_LIST) -> Iterator[Sequence[_T]]:
    """
    C{values} in slices whose lengths are powers of two, the longest
    first, none longer than C{size} (a power of two): for multi-row
    statements that cannot repeat a row (see L{paddedChunks} for why).
    """
    start, count = 0, len(values)
    while start < count:
        step = min(size, 1 << ((count - start).bit_length() - 1))
        yield values[start : start + step]
        start += step


def paddedChunks(values: Sequence[_T], size: int = MAX_IN_LIST) -> Iterator[Sequence[_T]]:
    """
    C{values} in slices of at most C{size} (a power of two), each padded
    to a power-of-two length by repeating its last value: for C{IN}
    lists, key look-ups and inserts that ignore conflicts, where a
    repeated value changes nothing.

    Why: every length is another statement text, which the database
    prepares and keeps (Python's C{sqlite3} caches 128 statements per
    connection, psycopg prepares those run five times and keeps 100). A
    group commit's batches have any size up to hundreds: their statements
    filled SQLite's memory with multi-KiB prepared statements (SQLite's
    memory went 2.2 to 7.6 MiB over a 10,000-cycle churn, 1.3 to 3.9
    with this) and a batch of a new size prepared its statements again.
    Powers of two make at most ten lengths of each statement.
    """
    for chunk in chunks(values, size):
        missing = (1 << (len(chunk) - 1).bit_length()) - len(chunk)
        yield chunk if not missing else [*chunk, *([chunk[-1]] * missing)]


def placeholders(count: int) -> str:
    """
    C{?, ?, ...} with C{count} placeholders, for an C{IN} list.
    """
    return ", ".join("?" * count)


def schemaFiles(engine: str = "sqlite", directory: Traversable | None = None) -> list[tuple[int, str, str]]:
    """
    Read the schema files shipped in the package for one engine (blocking:
    call it on the pool thread).

    @param engine: an engine's L{BaseEngine.name}: its variant of a version
        (C{NNN_name.sql.<engine>}) is taken over the shared file.
    @param directory: where the files are; by default the package's
        C{schema} directory.
    @return: C{(version, name, sql)} sorted by version.
    @raise RuntimeError: for two names or two files of one version, or a
        version with neither a shared file nor a variant for C{engine}.
    """
    if engine not in ENGINE_NAMES:
        raise ValueError(f"unknown engine {engine!r}")
    byVersion: dict[int, dict[str | None, tuple[str, str]]] = {}
    if directory is None:
        directory = resources.files("crm_im.storage") / "schema"
    for entry in directory.iterdir():
        match = _SCHEMA_FILE.match(entry.name)
        if match is None:
            continue
        version, name, variant = int(match.group(1)), match.group(2), match.group(3)
        if variant is not None and variant not in ENGINE_NAMES:
            raise RuntimeError(f"schema file {entry.name}: unknown engine {variant!r}")
        files = byVersion.setdefault(version, {})
        if variant in files:
            raise RuntimeError(f"duplicate schema version {version} ({entry.name})")
        files[variant] = (name, entry.read_text("utf-8"))
    found = []
    for version, files in sorted(byVersion.items()):
        names = {name for name, _ in files.values()}
        if len(names) != 1:
            raise RuntimeError(f"duplicate schema versions in {version}: {sorted(names)}")
        chosen = files.get(engine) or files.get(None)
        if chosen is None:
            raise RuntimeError(f"schema version {version} has no file for {engine}")
        found.append((version, chosen[0], chosen[1]))
    return found


def splitStatements(sql: str) -> list[str]:
    """
    The statements of a schema file: C{--} comments dropped, split at a C{;}
    that ends a line.
    """
    lines = [line for line in sql.splitlines() if not line.strip().startswith("--")]
    statements = re.split(r";[ \t]*(?:\n|$)", "\n".join(lines) + "\n")
    return [statement.strip() for statement in statements if statement.strip()]


def prepareSchema_txn(
    txn: Transaction, files: Sequence[tuple[int, str, str]]
) -> list[int]:
    """
    Apply the schema files not yet recorded in C{schema_version}.

    @param files: C{(version, name, sql)} as from L{schemaFiles}.
    @return: the versions applied now.
    """
    if txn.engine.schemaLockSQL is not None:
        txn.execute(txn.engine.schemaLockSQL)
    txn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version ("
        " version INTEGER PRIMARY KEY NOT NULL,"
        " name TEXT NOT NULL)"
    )
    txn.execute("SELECT version FROM schema_version")
    applied = {row[0] for row in txn.fetchall()}
    known = max((version for version, _, _ in files), default=0)
    if applied and max(applied) > known:
        raise SchemaTooNewError(
            f"the database has schema version {max(applied)}, newer than this"
            f" crm_im knows ({known}): run the crm_im that upgraded it, or a newer one"
        )
    appliedNow = []
    for version, name, sql in files:
        if version in applied:
            continue
        for statement in splitStatements(sql):
            txn.execute(statement)
        txn.execute(
            "INSERT INTO schema_version (version, name) VALUES (?, ?)",
            (version, name),
        )
        appliedNow.append(version)
    return appliedNow


def _prepareSchemaFromPackage_txn(txn: Transaction) -> list[int]:
    """
    L{prepareSchema_txn} with the schema files of the package.
    """
    return prepareSchema_txn(txn, schemaFiles(txn.engine.name))


def checkKeys_txn(txn: Transaction, atRest: AtRest | None, now: int) -> None:
    """
    Refuse to run on a database whose rows or files were encrypted with a
    key not in the key file, or with no key file at all (the server would
    serve errors for every old message), or with a key whose bytes differ
    from the file's key of that id (it would also seal new rows under a
    second key of the same id); record the current key as used, with its
    check value.

    The keys ever used are the few rows of C{encryption_keys} (a rekey
    that finished drops the ones no row or file needs any more), so this
    costs nothing however large the database. A key recorded before check
    values existed is verified once against a message sealed under it, if
    there is one, and its check recorded.

    @raise KeysMissingError: if a key is missing or not the one used.
    """
    txn.execute("SELECT key_id, key_check FROM encryption_keys ORDER BY key_id")
    used = {str(row[0]): None if row[1] is None else str(row[1]) for row in txn.fetchall()}
    if atRest is None:
        if used:
            raise KeysMissingError(
                f"this database holds data encrypted at rest (keys {', '.join(used)}):"
                " start crm_im with --encryption-keys FILE holding those keys"
            )
        return
    ring = atRest.ring
    missing = [keyId for keyId in used if ring.byId(keyId) is None]
    if missing:
        raise KeysMissingError(
            f"this database holds data encrypted at rest with keys {', '.join(missing)},"
            f" which {ring.source} does not hold: add them back (after the current key)"
        )
    from .messages import opensSealedSample_txn

    for keyId, check in used.items():
        key = ring.byId(keyId)
        assert key is not None
        if check is None:
            right = opensSealedSample_txn(txn, keyId, atRest.records) is not False
            if right:
                txn.execute("UPDATE encryption_keys SET key_check = ? WHERE key_id = ?", (key.check, keyId))
        else:
            right = hmac.compare_digest(check, key.check)
        if not right:
            raise KeysMissingError(
                f"the key {keyId} of {ring.source} is not the key {keyId} this database was encrypted with"
                " (same id, other bytes): put the right key back under that id"
            )
    if atRest.currentId not in used:
        txn.execute(
            "INSERT INTO encryption_keys (key_id, first_used, key_check) VALUES (?, ?, ?) ON CONFLICT (key_id) DO NOTHING",
            (atRest.currentId, now, ring.current.check),
        )


class StoreUnavailableError(RuntimeError):
    """
    The store cannot be opened at start: a SQLite file that cannot be
    created or is not a database, a PostgreSQL server that is unreachable
    or refuses the login or the database. Something for the operator to
    fix, said in one line (a traceback of the pool thread tells them
    nothing more).
    """


class KeysMissingError(RuntimeError):
    """
    The key file lacks a key the database was written with (or there is
    no key file): starting would serve errors instead of messages.
    """


class Database:
    """
    A connection pool for one engine, run through L{runInteraction}.

    @ivar transactionCount: how many transactions L{runInteraction} started
        (for tests and metrics).
    @ivar schemaApplied: the schema versions the last L{start} applied.
    """

    log = Logger()

    def __init__(self, engine: BaseEngine, reactor: IReactorCore, atRest: AtRest | None = None) -> None:
        """
        @param engine: the backend.
        @param reactor: runs the pool's callbacks.
        @param atRest: the keys of encryption at rest, or L{None}; checked
            at L{start} against the keys the database was written with.
        """
        self.engine = engine
        self.atRest = atRest
        self.cipher = None if atRest is None else atRest.records
        self._reactor = reactor
        #: schedules the store's timers (the same reactor)
        self.clock: IReactorTime = reactor  # type: ignore[assignment]
        self._pool: ConnectionPool | None = None
        self.transactionCount = 0
        self.schemaApplied: list[int] = []

    async def _start(self) -> None:
        self._pool = self.engine.makePool(self._reactor)
        self._pool.start()
        self.log.info("Message store: {store}", store=self.engine.describe())
        try:
            # one connection first (the engine's set-up included): failing
            # here is the store's address or file, not a statement
            await self._pool.runWithConnection(lambda connection: None)
        except Exception as error:
            self.close()
            reason = " ".join(str(error).split()) or type(error).__name__
            raise StoreUnavailableError(f"cannot open the store {self.engine.describe()}: {reason}") from error
        self.schemaApplied = await self.runInteraction(
            "prepareSchema", _prepareSchemaFromPackage_txn
        )
        if self.schemaApplied:
            self.log.info(
                "Applied storage schema versions {versions}",
                versions=self.schemaApplied,
            )
        try:
            await self.runInteraction("checkKeys", checkKeys_txn, self.atRest, int(self.clock.seconds() * 1000))
        except BaseException:
            # refused (a key missing): nothing is served, nothing stays open
            self.close()
            raise

    def start(self) -> Deferred[None]:
        """
        Start the pool and bring the schema up to date.
        """
        return Deferred.fromCoroutine(self._start())

    def runInteraction(
        self,
        desc: str,
        func: Callable[Concatenate[Transaction, _P], _R],
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> Deferred[_R]:
        """
        Run C{func(txn, *args, **kwargs)} in one transaction on the pool
        thread: committed if it returns, rolled back if it raises.

        @param desc: names the transaction in logs.
        """
        pool = self._pool
        if pool is None or not pool.running:
            raise StoreClosedError(f"{desc}: the database is not open")
        engine = self.engine
        cipher = self.cipher
        self.transactionCount += 1
        retries = engine.retriesOnBrokenConnection
        if not retries:

            def interaction(cursor: Any) -> _R:
                txn = Transaction(cursor, engine, cipher)
                if engine.beginSQL is not None:
                    txn.execute(engine.beginSQL)
                return func(txn, *args, **kwargs)

            d: Deferred[_R] = pool.runInteraction(interaction)
            return d
        broken: list[bool] = []

        def retriable(cursor: Any) -> _R:
            txn = Transaction(cursor, engine, cipher)
            if engine.beginSQL is not None:
                txn.execute(engine.beginSQL)
            try:
                return func(txn, *args, **kwargs)
            except Exception:
                if engine.connectionBroken(txn._cursor):
                    broken.append(True)
                raise

        d = pool.runInteraction(retriable)
        d.addErrback(self._retryOnBroken, desc, retriable, broken, retries)
        return d

    def _retryOnBroken(
        self, failure: Failure, desc: str, interaction: Callable[[Any], _R], broken: list[bool], retries: int
    ) -> Deferred[_R] | Failure:
        """
        Run a transaction again on another connection when the connection
        broke under it before it was committed (so it was not: the server
        rolls back what a lost connection left open). A failure at commit
        is not retried: whether it committed is unknown.
        """
        pool = self._pool
        if not broken or retries <= 0 or pool is None or not pool.running:
            return failure
        del broken[:]
        self.log.warn(
            "{desc}: the database connection was lost ({error}); running the transaction again",
            desc=desc,
            error=failure.getErrorMessage(),
        )
        self.transactionCount += 1
        d: Deferred[_R] = pool.runInteraction(interaction)
        d.addErrback(self._retryOnBroken, desc, interaction, broken, retries - 1)
        return d

    def close(self) -> None:
        """
        Stop the pool and close its connection. Transactions already started
        are finished first.
        """
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
