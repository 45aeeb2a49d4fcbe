# -*- test-case-name: tests.test_storage_copy -*-
"""
C{crm_im-migrate}: copy a single node's SQLite database into PostgreSQL, the
upgrade path from one node to several.

    crm_im-migrate --from sqlite:/var/lib/crm_im/crm_im.sqlite3 \\
                   --to postgresql://crm_im@db.example/crm_im

(also C{python -m crm_im.storage.copy}). Stop the node first: the SQLite
file is opened read-only and copied as it is.

What it does, in order:
  1. Checks that the SQLite file has the schema this crm_im ships (a file
     of an older crm_im is upgraded by starting this one on it once).
  2. Brings the PostgreSQL schema up to date (the same versioned files the
     server applies), and refuses a database that already holds data it
     did not put there.
  3. Copies every table of the file (found in the file itself, so tables
     added by later schema versions come along), in primary-key order, in
     batches of C{--batch-size} rows with C{COPY}; each batch commits with
     its progress in the table C{crm_im_copy_progress}, so a copy that was
     interrupted (Ctrl-C, a lost connection) resumes where it stopped when
     run again with the same arguments.
  4. Moves the PostgreSQL sequences past the highest ids copied (a C{seq}
     is never handed out twice, not even one SQLite had given to a message
     since deleted).
  5. Verifies: per table, the row counts and a checksum of every row (the
     sum of the rows' SHA-256, so that it does not depend on the order
     either engine returns them in) must be equal on both sides; prints
     them, drops the progress table and exits 0. A mismatch exits 1 and
     keeps the progress table.

Text PostgreSQL cannot store (U+0000, which crm_im refuses today but older
versions accepted) stops the copy with the table and row; C{--replace-nul}
stores U+FFFD instead, counted in the report (and in the checksums).

This is a command-line tool, not part of the server: it uses C{sqlite3} and
psycopg directly, blocking, with no reactor.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sqlite3
import sys
from typing import Any, Callable, Iterable, Sequence, TextIO
from urllib.request import pathname2url

import attrs

from .database import Transaction, prepareSchema_txn, schemaFiles
from .engines import POSTGRES_SCHEMES, PostgresEngine, redactURL, setUpConnection

#: Where the target keeps how far each table was copied.
PROGRESS_TABLE = "crm_im_copy_progress"
DEFAULT_BATCH = 5000
#: What replaces U+0000 with C{--replace-nul}.
NUL_REPLACEMENT = "\ufffd"
_MODULUS = 1 << 256


class CopyError(Exception):
    """
    The copy cannot go on: the message says why and what to do.
    """


@attrs.frozen
class TablePlan:
    """
    One table to copy.

    @ivar key: the primary key's columns, in order; empty: the C{rowid}.
    """

    name: str
    columns: tuple[str, ...]
    key: tuple[str, ...]


@attrs.frozen
class TableReport:
    """
    The verification of one table.
    """

    name: str
    sourceRows: int
    targetRows: int
    sourceChecksum: str
    targetChecksum: str

    @property
    def ok(self) -> bool:
        """
        Both sides hold the same rows.
        """
        return self.sourceRows == self.targetRows and self.sourceChecksum == self.targetChecksum


@attrs.define
class CopyReport:
    """
    What a run did.

    @ivar copied: rows copied by this run, per table.
    @ivar resumed: tables this run resumed (a previous run copied a part).
    @ivar replacedNul: text values whose U+0000 became U+FFFD.
    """

    tables: list[TableReport] = attrs.Factory(list)
    copied: dict[str, int] = attrs.Factory(dict)
    resumed: list[str] = attrs.Factory(list)
    replacedNul: int = 0

    @property
    def ok(self) -> bool:
        """
        Every table verified.
        """
        return all(table.ok for table in self.tables)


def _quote(name: str) -> str:
    """
    An identifier, quoted for both engines.
    """
    return '"' + name.replace('"', '""') + '"'


def sqlitePath(source: str) -> str:
    """
    The file a C{--from} value names (C{sqlite:PATH} or a path).
    """
    if source.startswith("sqlite:"):
        source = source[len("sqlite:") :]
        if source.startswith("//"):
            source = source[2:]
    if not source:
        raise CopyError("--from needs a SQLite file: sqlite:PATH")
    return source


def openSource(path: str) -> sqlite3.Connection:
    """
    Open the SQLite file read-only.
    """
    if not os.path.isfile(path):
        raise CopyError(f"no SQLite database at {path}")
    conn = sqlite3.connect(f"file:{pathname2url(os.path.abspath(path))}?mode=ro", uri=True)
    conn.execute("PRAGMA query_only=ON")
    return conn


def openTarget(url: str) -> Any:
    """
    Connect to PostgreSQL, numbers set up as the server reads them.
    """
    import psycopg

    if not url.startswith(POSTGRES_SCHEMES):
        raise CopyError("--to must be a PostgreSQL URL: postgresql://user@host/db")
    try:
        conn = psycopg.connect(url, application_name="crm_im-migrate", connect_timeout=10)
    except psycopg.Error as error:
        raise CopyError(f"cannot connect to {redactURL(url)}: {error}")
    setUpConnection(conn)
    return conn


def _versions(rows: Iterable[Sequence[Any]]) -> set[int]:
    return {int(row[0]) for row in rows}


def checkSourceSchema(source: sqlite3.Connection) -> set[int]:
    """
    The schema versions of the file, which must be those this crm_im ships.
    """
    try:
        versions = _versions(source.execute("SELECT version FROM schema_version"))
    except sqlite3.DatabaseError as error:
        raise CopyError(f"the source is not a crm_im database: {error}")
    shipped = {version for version, _, _ in schemaFiles("sqlite")}
    if versions - shipped:
        raise CopyError(
            f"the SQLite file has schema version {max(versions)}, newer than this crm_im knows"
            f" ({max(shipped)}): use the crm_im that wrote it"
        )
    if versions != shipped:
        raise CopyError(
            f"the SQLite file has schema version {max(versions, default=0)}, older than this crm_im's"
            f" ({max(shipped)}): start this crm_im on it once (it upgrades the file), stop it, then copy"
        )
    return versions


def planTables(source: sqlite3.Connection) -> list[TablePlan]:
    """
    Every table of the file but the schema bookkeeping, with its columns and
    primary key.
    """
    names = [
        str(row[0])
        for row in source.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            " AND name <> 'schema_version' ORDER BY name"
        )
    ]
    plans = []
    for name in names:
        info = source.execute(f"PRAGMA table_info({_quote(name)})").fetchall()
        columns = tuple(str(row[1]) for row in info)
        key = tuple(str(row[1]) for row in sorted((row for row in info if row[5]), key=lambda row: row[5]))
        plans.append(TablePlan(name, columns, key))
    return plans


def prepareTarget(target: Any, url: str, plans: Sequence[TablePlan], sourceVersions: set[int]) -> bool:
    """
    Bring the target's schema up to date and check it can take the copy.

    @return: whether an earlier run left progress to resume.
    """
    txn = Transaction(target.cursor(), PostgresEngine(url))
    prepareSchema_txn(txn, schemaFiles("postgres"))
    txn.execute("SELECT version FROM schema_version")
    targetVersions = _versions(txn.fetchall())
    if targetVersions != sourceVersions:
        raise CopyError(f"schema versions differ: SQLite {sorted(sourceVersions)}, PostgreSQL {sorted(targetVersions)}")
    txn.execute("SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = current_schema()")
    targetColumns: dict[str, set[str]] = {}
    for table, column in txn.fetchall():
        targetColumns.setdefault(str(table), set()).add(str(column))
    for plan in plans:
        missing = set(plan.columns) - targetColumns.get(plan.name, set())
        if missing:
            raise CopyError(f"PostgreSQL table {plan.name} lacks columns {sorted(missing)}")
    resuming = PROGRESS_TABLE in targetColumns
    if not resuming:
        for plan in plans:
            txn.execute(f"SELECT 1 FROM {_quote(plan.name)} LIMIT 1")
            if txn.fetchone() is not None:
                raise CopyError(
                    f"the PostgreSQL database already holds data (table {plan.name}) that this tool did not"
                    " copy: copy into an empty database (or check a finished copy with --verify-only)"
                )
        txn.execute(
            f"CREATE TABLE {PROGRESS_TABLE} (table_name TEXT PRIMARY KEY NOT NULL,"
            " last_key TEXT, copied BIGINT NOT NULL, done SMALLINT NOT NULL)"
        )
    target.commit()
    return resuming


def _cleaner(replaceNul: bool, report: CopyReport, table: str) -> Callable[[Sequence[Any], Sequence[Any]], tuple[Any, ...]]:
    """
    A function making a source row storable in PostgreSQL: U+0000 refused
    or replaced.
    """

    def clean(row: Sequence[Any], key: Sequence[Any]) -> tuple[Any, ...]:
        if not any(isinstance(value, str) and "\x00" in value for value in row):
            return tuple(row)
        if not replaceNul:
            raise CopyError(
                f"table {table}, row {list(key)}: a text value holds U+0000, which PostgreSQL cannot"
                " store; run again with --replace-nul to store U+FFFD instead"
            )
        cleaned = []
        for value in row:
            if isinstance(value, str) and "\x00" in value:
                report.replacedNul += 1
                value = value.replace("\x00", NUL_REPLACEMENT)
            cleaned.append(value)
        return tuple(cleaned)

    return clean


def _keyColumns(plan: TablePlan) -> tuple[str, ...]:
    return plan.key or ("rowid",)


def copyTable(
    source: sqlite3.Connection,
    target: Any,
    plan: TablePlan,
    batchSize: int,
    replaceNul: bool,
    report: CopyReport,
    onBatch: Callable[[str, int], None],
) -> None:
    """
    Copy one table in batches, each committed with its progress; resume
    after the last key an earlier run committed.
    """
    import json

    cursor = target.cursor()
    cursor.execute(f"SELECT last_key, copied, done FROM {PROGRESS_TABLE} WHERE table_name = %s", (plan.name,))
    progress = cursor.fetchone()
    lastKey: list[Any] | None = None
    copied = 0
    if progress is not None:
        if progress[2]:
            return
        lastKey = None if progress[0] is None else json.loads(progress[0])
        copied = int(progress[1])
        report.resumed.append(plan.name)
    keyColumns = _keyColumns(plan)
    keyList = ", ".join(_quote(column) if column != "rowid" else column for column in keyColumns)
    selected = ", ".join(_quote(column) for column in plan.columns)
    copySQL = f"COPY {_quote(plan.name)} ({selected}) FROM STDIN"
    clean = _cleaner(replaceNul, report, plan.name)
    width = len(keyColumns)
    thisRun = 0
    while True:
        if lastKey is None:
            rows = source.execute(
                f"SELECT {keyList}, {selected} FROM {_quote(plan.name)} ORDER BY {keyList} LIMIT ?", (batchSize,)
            ).fetchall()
        else:
            after = ", ".join("?" * width)
            rows = source.execute(
                f"SELECT {keyList}, {selected} FROM {_quote(plan.name)}"
                f" WHERE ({keyList}) > ({after}) ORDER BY {keyList} LIMIT ?",
                (*lastKey, batchSize),
            ).fetchall()
        if not rows:
            break
        with cursor.copy(copySQL) as copy:
            for row in rows:
                copy.write_row(clean(row[width:], row[:width]))
        lastKey = list(rows[-1][:width])
        copied += len(rows)
        thisRun += len(rows)
        cursor.execute(
            f"INSERT INTO {PROGRESS_TABLE} (table_name, last_key, copied, done) VALUES (%s, %s, %s, 0)"
            " ON CONFLICT (table_name) DO UPDATE SET last_key = excluded.last_key, copied = excluded.copied",
            (plan.name, json.dumps(lastKey), copied),
        )
        target.commit()
        onBatch(plan.name, copied)
    cursor.execute(
        f"INSERT INTO {PROGRESS_TABLE} (table_name, last_key, copied, done) VALUES (%s, NULL, %s, 1)"
        " ON CONFLICT (table_name) DO UPDATE SET done = 1",
        (plan.name, copied),
    )
    target.commit()
    report.copied[plan.name] = thisRun


def advanceSequences(source: sqlite3.Connection, target: Any) -> None:
    """
    Move every sequence of the target past the highest value its column
    holds, and past what SQLite's C{AUTOINCREMENT} had handed out.
    """
    handedOut: dict[str, int] = {}
    try:
        for name, value in source.execute("SELECT name, seq FROM sqlite_sequence"):
            handedOut[str(name)] = int(value)
    except sqlite3.OperationalError:
        pass  # no AUTOINCREMENT table
    cursor = target.cursor()
    cursor.execute(
        "SELECT table_name, column_name, pg_get_serial_sequence(quote_ident(table_name), column_name)"
        " FROM information_schema.columns WHERE table_schema = current_schema()"
        " AND column_default LIKE 'nextval(%'"
    )
    for table, column, sequence in cursor.fetchall():
        if sequence is None:
            continue
        cursor.execute(f"SELECT COALESCE(MAX({_quote(column)}), 0) FROM {_quote(table)}")
        row = cursor.fetchone()
        highest = max(int(row[0]) if row else 0, handedOut.get(str(table), 0))
        if highest > 0:
            cursor.execute("SELECT setval(%s, %s, true)", (sequence, highest))
    target.commit()


def _rowHash(row: Sequence[Any]) -> int:
    """
    One row's hash: its values' C{repr} (C{None}, C{int}, C{float}, C{str}
    and C{bytes} print unambiguously, and both sides give these types).
    """
    return int.from_bytes(hashlib.sha256(repr(tuple(row)).encode("utf-8")).digest(), "big")


def _checksum(rows: Iterable[Sequence[Any]], clean: Callable[[Sequence[Any]], Sequence[Any]] | None = None) -> tuple[int, str]:
    count = 0
    total = 0
    for row in rows:
        if clean is not None:
            row = clean(row)
        count += 1
        total = (total + _rowHash(row)) % _MODULUS
    return count, f"{total:064x}"


def verifyTable(source: sqlite3.Connection, target: Any, plan: TablePlan, replaceNul: bool) -> TableReport:
    """
    Count and checksum the table on both sides.
    """
    selected = ", ".join(_quote(column) for column in plan.columns)
    query = f"SELECT {selected} FROM {_quote(plan.name)}"

    def cleanSource(row: Sequence[Any]) -> Sequence[Any]:
        if replaceNul:
            return tuple(value.replace("\x00", NUL_REPLACEMENT) if isinstance(value, str) else value for value in row)
        return row

    sourceRows, sourceSum = _checksum(source.execute(query), cleanSource)
    with target.cursor(name="crm_im_verify") as cursor:
        cursor.itersize = 5000
        cursor.execute(query)
        targetRows, targetSum = _checksum(cursor)
    target.commit()
    return TableReport(plan.name, sourceRows, targetRows, sourceSum, targetSum)


def copyDatabase(
    sourcePath: str,
    targetURL: str,
    batchSize: int = DEFAULT_BATCH,
    replaceNul: bool = False,
    verifyOnly: bool = False,
    onBatch: Callable[[str, int], None] = lambda table, copied: None,
) -> CopyReport:
    """
    Copy (unless C{verifyOnly}) and verify; see the module docstring.

    @param onBatch: told C{(table, rows copied so far)} after each commit.
    @raise CopyError: when the copy cannot be made.
    """
    if batchSize <= 0:
        raise CopyError("--batch-size must be positive")
    report = CopyReport()
    source = openSource(sourcePath)
    try:
        versions = checkSourceSchema(source)
        plans = planTables(source)
        target = openTarget(targetURL)
        try:
            if not verifyOnly:
                prepareTarget(target, targetURL, plans, versions)
                for plan in plans:
                    copyTable(source, target, plan, batchSize, replaceNul, report, onBatch)
                advanceSequences(source, target)
            report.tables = [verifyTable(source, target, plan, replaceNul) for plan in plans]
            if report.ok and not verifyOnly:
                target.execute(f"DROP TABLE IF EXISTS {PROGRESS_TABLE}")
                target.commit()
        finally:
            target.close()
    finally:
        source.close()
    return report


def printReport(report: CopyReport, out: TextIO) -> None:
    """
    The verification, one line per table.
    """
    out.write(f"{'table':<24} {'SQLite rows':>12} {'PostgreSQL rows':>16}  checksum (sum of row SHA-256)\n")
    for table in report.tables:
        mark = "ok" if table.ok else "MISMATCH"
        checksum = table.sourceChecksum[:16]
        if table.sourceChecksum != table.targetChecksum:
            checksum += " != " + table.targetChecksum[:16]
        out.write(f"{table.name:<24} {table.sourceRows:>12} {table.targetRows:>16}  {checksum}  {mark}\n")
    if report.resumed:
        out.write(f"resumed: {', '.join(report.resumed)}\n")
    if report.replacedNul:
        out.write(f"U+0000 replaced by U+FFFD in {report.replacedNul} text values\n")


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """
    The command line; returns the exit status (0 copied and verified, 1
    mismatch, 2 refused).
    """
    parser = argparse.ArgumentParser(
        prog="crm_im-migrate",
        description="Copy a crm_im SQLite database into PostgreSQL (resumable, verified by row counts"
        " and checksums). Stop the crm_im node first.",
    )
    parser.add_argument("--from", dest="source", required=True, help="the SQLite database: sqlite:PATH")
    parser.add_argument(
        "--to",
        dest="target",
        default=os.environ.get("CRM_IM_STORE"),
        help="the PostgreSQL database: postgresql://user@host/db (default: $CRM_IM_STORE)",
    )
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help="rows per transaction")
    parser.add_argument("--replace-nul", action="store_true", help="store U+0000 in text as U+FFFD")
    parser.add_argument("--verify-only", action="store_true", help="copy nothing; compare counts and checksums")
    args = parser.parse_args(argv)
    if not args.target:
        parser.error("--to is required (or $CRM_IM_STORE)")

    def progress(table: str, copied: int) -> None:
        out.write(f"{table}: {copied} rows\n")
        out.flush()

    try:
        path = sqlitePath(args.source)
        out.write(f"{'verifying' if args.verify_only else 'copying'} sqlite:{path} -> {redactURL(args.target)}\n")
        report = copyDatabase(
            path, args.target, args.batch_size, args.replace_nul, args.verify_only, progress
        )
    except CopyError as error:
        err.write(f"crm_im-migrate: {error}\n")
        return 2
    printReport(report, out)
    if not report.ok:
        err.write("crm_im-migrate: the copy does NOT match the source (progress kept; see above)\n")
        return 1
    out.write("verified: every table matches\n" if args.verify_only else "copied and verified\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
