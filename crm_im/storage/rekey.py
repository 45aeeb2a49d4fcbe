# -*- test-case-name: tests.test_crypto_rekey -*-
"""
C{crm_im-rekey}: move everything encrypted at rest to the current key of
the key file (ENCRYPTION.md, "At rest"), and encrypt what was stored in
clear before encryption was turned on.

    crm_im-rekey --store sqlite:/var/lib/crm_im/crm_im.sqlite3 \\
                 --encryption-keys /etc/crm_im/keys --files /var/lib/crm_im/files

(also C{python -m crm_im.storage.rekey}). What it does, in order:

  1. Applies the schema (as the server does at start) and refuses a key
     file that lacks a key the database was written with; records the
     current key as used (committed before anything is written under it,
     so that a server started without it refuses to start).
  2. Walks the messages (by seq) and the file records (by file id) in
     batches of C{--batch-size}, each batch its own transaction with its
     progress in C{rekey_progress}: an interrupted run resumes where it
     stopped. A row is rewritten compare-and-set (only if its sealed
     columns and key id are still those read), so a message recalled
     meanwhile by the running server is not overwritten: it is read again.
     End-to-end encrypted messages (type C{encrypted}) are left as they
     are.
  3. Seals again every file under C{--files} (blobs, thumbnails, files
     kept before content addressing) whose header names another key, or
     that is in clear, into a temporary file renamed over it (a reader
     keeps the bytes it opened). Files already under the current key are
     skipped after reading their header, so this step resumes by itself.
  4. Once no row names another key, forgets the other keys in
     C{encryption_keys}: a server may then start with a key file holding
     the current key alone.

Safe while the server runs, provided every server already writes with the
same current key (put the new key first in the file and restart them
before running this); a blob deleted while it is being sealed again may be
left behind as bytes nobody refers to.

This is a command-line tool, not part of the server: it uses the engine's
DB-API module directly, blocking, with no reactor.
"""

from __future__ import annotations

import argparse
import os
import re
import sqlite3
import sys
from typing import IO, Any, Callable, Sequence, TextIO

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.python.filepath import FilePath

from ..crypto import AtRest, DecryptionError, KeyFileError, loadKeyFile
from ..crypto.stream import readHeader
from .database import KeysMissingError, Transaction, checkKeys_txn, prepareSchema_txn, schemaFiles
from .engines import BaseEngine, PostgresEngine, SQLiteEngine, engineFor, redactURL, setUpConnection
from .filerecords import _nameAAD
from .files import replaceDurably
from .messages import E2E_TYPE, _aad

DEFAULT_BATCH = 1000
#: Times a batch is read again when rows changed under it before giving up.
MAX_RETRIES = 20


class RekeyError(Exception):
    """
    The rekey cannot go on: the message says why.
    """


@attrs.define
class RekeyReport:
    """
    What a run did.

    @ivar messages: message rows sealed again (or for the first time).
    @ivar fileRecords: file records whose name was sealed again.
    @ivar files: files on disk sealed again.
    @ivar resumedFrom: per table, the position an earlier run had reached.
    @ivar conflicts: rows changed by the server while being rewritten (read
        again and done).
    @ivar forgotten: key ids no longer needed, removed from
        C{encryption_keys}.
    """

    messages: int = 0
    fileRecords: int = 0
    files: int = 0
    resumedFrom: dict[str, str] = attrs.Factory(dict)
    conflicts: int = 0
    forgotten: list[str] = attrs.Factory(list)


class Connection:
    """
    One DB-API connection of an engine, its transactions run one at a time
    through L{Transaction} (the server's C{*_txn} functions run on it).
    """

    def __init__(self, engine: BaseEngine, atRest: AtRest, clock: IReactorTime) -> None:
        """
        @param clock: what C{updated_at} of the progress rows is read from.
        """
        self.engine = engine
        self.atRest = atRest
        self.clock = clock
        if isinstance(engine, SQLiteEngine):
            if not os.path.isfile(engine.path):
                raise RekeyError(f"no SQLite database at {engine.path}")
            conn: Any = sqlite3.connect(engine.path, check_same_thread=False)
            engine.onNewConnection(conn)
        else:
            assert isinstance(engine, PostgresEngine)
            import psycopg

            try:
                conn = psycopg.connect(engine.url, **{**engine.connectArguments(), "application_name": "crm_im-rekey"})
            except psycopg.Error as error:
                raise RekeyError(f"cannot connect to {redactURL(engine.url)}: {error}")
            setUpConnection(conn)
        self.conn = conn

    def run(self, func: Callable[..., Any], *args: Any) -> Any:
        """
        Run C{func(txn, *args)} in one transaction: committed if it
        returns, rolled back if it raises.
        """
        cursor = self.conn.cursor()
        txn = Transaction(cursor, self.engine, self.atRest.records)
        sqlite = isinstance(self.engine, SQLiteEngine)
        if sqlite:
            # the write lock first: a read snapshot cannot be upgraded to a
            # write once the server committed meanwhile (SQLITE_BUSY)
            txn.execute("BEGIN IMMEDIATE")
        try:
            result = func(txn, *args)
        except BaseException:
            if sqlite:
                cursor.execute("ROLLBACK")
            else:
                self.conn.rollback()
            raise
        if sqlite:
            cursor.execute("COMMIT")
        else:
            self.conn.commit()
        return result

    def close(self) -> None:
        self.conn.close()

    def now(self) -> int:
        """
        Milliseconds since the epoch, from the injected clock.
        """
        return int(self.clock.seconds() * 1000)


def _progress_txn(txn: Transaction, target: str, keyId: str) -> str | None:
    """
    Where an earlier run under C{keyId} stopped in C{target}, if one did.
    """
    txn.execute("SELECT key_id, position FROM rekey_progress WHERE target = ?", (target,))
    row = txn.fetchone()
    if row is None or row[0] != keyId:
        return None
    return str(row[1])


def _saveProgress_txn(txn: Transaction, target: str, keyId: str, position: str, now: int) -> None:
    txn.execute(
        "INSERT INTO rekey_progress (target, key_id, position, updated_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (target) DO UPDATE SET key_id = excluded.key_id, position = excluded.position,"
        " updated_at = excluded.updated_at",
        (target, keyId, position, now),
    )


def _same(column: str, value: Any, args: list[Any]) -> str:
    """
    A compare-and-set condition on one nullable column.
    """
    if value is None:
        return f"{column} IS NULL"
    args.append(value)
    return f"{column} = ?"


#: The columns of a message sealed at rest.
_SEALED = ("content", "file_url", "file_name", "system")


def rekeyMessages_txn(txn: Transaction, atRest: AtRest, after: int, limit: int) -> tuple[int, int, int | None]:
    """
    Seal again under the current key one batch of messages after seq
    C{after}.

    @return: C{(rewritten, conflicts, last)}: C{last} is the seq to resume
        after (L{None}: no row left), before the first row the server
        changed meanwhile if any.
    """
    cipher = atRest.records
    current = cipher.currentId
    txn.execute(
        "SELECT seq, message_id, from_id, content, file_url, file_name, system, key_id FROM messages"
        " WHERE seq > ? AND type <> ? AND (key_id IS NULL OR key_id <> ?) ORDER BY seq LIMIT ?",
        (after, E2E_TYPE, current, limit),
    )
    rows = txn.fetchall()
    if not rows:
        return 0, 0, None
    rewritten = 0
    for seq, messageId, fromId, content, fileUrl, fileName, system, keyId in rows:
        plain = [content, fileUrl, fileName, system]
        if keyId is not None:
            for index, column in enumerate(_SEALED):
                value = plain[index]
                if value is not None and (column != "content" or value):
                    plain[index] = cipher.open(keyId, value, _aad(column, fromId, messageId))
        sealed = [
            None if value is None else cipher.seal(value, _aad(column, fromId, messageId))
            for value, column in zip(plain, _SEALED)
        ]
        args: list[Any] = [*sealed, current, seq]
        conditions = [
            _same("content", content, args),
            _same("file_url", fileUrl, args),
            _same("file_name", fileName, args),
            _same("system", system, args),
            _same("key_id", keyId, args),
        ]
        txn.execute(
            "UPDATE messages SET content = ?, file_url = ?, file_name = ?, system = ?, key_id = ?"
            f" WHERE seq = ? AND {' AND '.join(conditions)}",
            args,
        )
        if txn.rowcount != 1:
            # changed by the server since read (a recall): read it again
            return rewritten, 1, seq - 1
        rewritten += 1
    return rewritten, 0, int(rows[-1][0])


def rekeyFileRecords_txn(txn: Transaction, atRest: AtRest, after: str, limit: int) -> tuple[int, int, str | None]:
    """
    Seal again under the current key the names of one batch of file
    records after file id C{after}; see L{rekeyMessages_txn}.
    """
    cipher = atRest.records
    current = cipher.currentId
    txn.execute(
        "SELECT file_id, file_name, key_id FROM files"
        " WHERE file_id > ? AND (key_id IS NULL OR key_id <> ?) ORDER BY file_id LIMIT ?",
        (after, current, limit),
    )
    rows = txn.fetchall()
    if not rows:
        return 0, 0, None
    rewritten = 0
    previous = after
    for fileId, fileName, keyId in rows:
        plain = fileName if keyId is None else cipher.open(keyId, fileName, _nameAAD(fileId))
        args: list[Any] = [cipher.seal(plain, _nameAAD(fileId)), current, fileId, fileName]
        condition = _same("key_id", keyId, args)
        txn.execute(
            f"UPDATE files SET file_name = ?, key_id = ? WHERE file_id = ? AND file_name = ? AND {condition}",
            args,
        )
        if txn.rowcount != 1:
            return rewritten, 1, previous
        rewritten += 1
        previous = fileId
    return rewritten, 0, str(rows[-1][0])


def _walk(
    connection: Connection,
    target: str,
    step: Callable[..., tuple[int, int, Any]],
    start: Any,
    decode: Callable[[str], Any],
    batchSize: int,
    report: RekeyReport,
    onBatch: Callable[[str, int], None] | None,
) -> int:
    atRest = connection.atRest
    current = atRest.currentId
    saved = connection.run(_progress_txn, target, current)
    position = start
    if saved is not None:
        report.resumedFrom[target] = saved
        position = decode(saved)
    total = 0
    retries = 0

    def batch(txn: Transaction) -> tuple[int, int, Any]:
        done, conflicts, last = step(txn, atRest, position, batchSize)
        if last is not None:
            _saveProgress_txn(txn, target, current, str(last), connection.now())
        return done, conflicts, last

    while True:
        done, conflicts, last = connection.run(batch)
        total += done
        report.conflicts += conflicts
        if last is None:
            return total
        if conflicts and not done:
            retries += 1
            if retries > MAX_RETRIES:
                raise RekeyError(f"{target}: rows keep changing under the rekey; run it again")
        else:
            retries = 0
        position = last
        if onBatch is not None:
            onBatch(target, total)


def rekeyFiles(directory: str, atRest: AtRest, report: RekeyReport, onFile: Callable[[str], None] | None = None) -> None:
    """
    Seal again every file under C{directory} not sealed with the current
    key (blocking). Uploads in progress (C{uploads/}) and temporary files
    are left alone.
    """
    cipher = atRest.files
    current = atRest.currentId
    if not os.path.isdir(directory):
        return
    for root, dirs, names in os.walk(directory):
        relative = os.path.relpath(root, directory)
        if relative == "uploads" or relative.startswith("uploads" + os.sep):
            dirs[:] = []
            continue
        dirs.sort()
        for name in sorted(names):
            if name.endswith(".tmp") or relative == ".":
                continue
            path = os.path.join(root, name)
            identity = "/".join([*relative.split(os.sep), name]).encode("utf-8")
            with open(path, "rb") as source:
                _, keyId = readHeader(source)
                if keyId == current:
                    continue

                def seal(out: IO[bytes]) -> None:
                    # (called at once, within this iteration)
                    if keyId is None:
                        source.seek(0)
                        cipher.sealStream(source, out, identity)
                    else:
                        cipher.sealStream(cipher.reader(source, identity), out, identity)

                if not replaceDurably(FilePath(path), seal, onlyIfPresent=True):
                    continue  # deleted meanwhile (its last reference went): keep it gone
            report.files += 1
            if onFile is not None:
                onFile(path)


#: What a file store holds at its top (L{crm_im.storage.files}): blobs,
#: thumbnails, uploads, and the two-character directories of the files
#: kept before content addressing.
_STORE_DIRECTORIES = frozenset({"blobs", "thumbs", "uploads"})
_LEGACY_SHARD = re.compile(r"[A-Za-z0-9_-]{2}")


def checkFilesDirectory(directory: str) -> None:
    """
    Refuse a C{--files} that is not a file store, before anything is
    written: every file under it not sealed with the current key would be
    sealed in place, so the data directory itself (its C{files/} sealed
    under the wrong paths, unreadable to the server) or any other tree
    would be damaged; and a directory that does not exist would rekey no
    file and yet forget the old keys the files still need.

    @raise RekeyError: if C{directory} is missing or holds a directory a
        file store does not.
    """
    if not os.path.isdir(directory):
        raise RekeyError(f"--files {directory}: no such directory (give the files directory of --data-dir)")
    strangers = sorted(
        name
        for name in os.listdir(directory)
        if os.path.isdir(os.path.join(directory, name))
        and name not in _STORE_DIRECTORIES
        and not _LEGACY_SHARD.fullmatch(name)
    )
    if strangers:
        hint = (
            f": give {os.path.join(directory, 'files')}"
            if "files" in strangers
            else ": give the files directory of --data-dir"
        )
        raise RekeyError(
            f"--files {directory} is not a crm_im file store (it holds {', '.join(n + '/' for n in strangers[:5])}"
            f" which a file store does not){hint}"
        )


def _forget_txn(txn: Transaction, current: str) -> list[str]:
    """
    Drop the key ids no row names any more from C{encryption_keys}, and the
    progress of the finished run.
    """
    txn.execute("SELECT DISTINCT key_id FROM messages WHERE key_id IS NOT NULL")
    needed = {str(row[0]) for row in txn.fetchall()}
    txn.execute("SELECT DISTINCT key_id FROM files WHERE key_id IS NOT NULL")
    needed |= {str(row[0]) for row in txn.fetchall()}
    txn.execute("SELECT key_id FROM encryption_keys")
    forgotten = sorted(str(row[0]) for row in txn.fetchall() if row[0] != current and row[0] not in needed)
    for keyId in forgotten:
        txn.execute("DELETE FROM encryption_keys WHERE key_id = ?", (keyId,))
    txn.execute("DELETE FROM rekey_progress")
    return forgotten


def _prepare_txn(txn: Transaction, atRest: AtRest, now: int) -> None:
    prepareSchema_txn(txn, schemaFiles(txn.engine.name))
    checkKeys_txn(txn, atRest, now)


def rekey(
    store: str,
    atRest: AtRest,
    clock: IReactorTime,
    filesDirectory: str | None = None,
    batchSize: int = DEFAULT_BATCH,
    onBatch: Callable[[str, int], None] | None = None,
) -> RekeyReport:
    """
    Move every row and file to the current key of C{atRest}; see the
    module's docstring.

    @param clock: the time progress and key records are stamped with.
    @param onBatch: called after each committed batch with the table and
        the rows done so far by this run.
    @raise RekeyError: when it cannot go on.
    """
    if batchSize < 1:
        raise RekeyError("--batch-size must be at least 1")
    if filesDirectory is not None:
        checkFilesDirectory(filesDirectory)
    try:
        engine = engineFor(store)
    except ValueError as error:
        raise RekeyError(str(error))
    connection = Connection(engine, atRest, clock)
    report = RekeyReport()
    try:
        try:
            connection.run(_prepare_txn, atRest, connection.now())
        except KeysMissingError as error:
            raise RekeyError(str(error))
        report.messages = _walk(connection, "messages", rekeyMessages_txn, 0, int, batchSize, report, onBatch)
        report.fileRecords = _walk(connection, "files", rekeyFileRecords_txn, "", str, batchSize, report, onBatch)
        if filesDirectory is not None:
            rekeyFiles(filesDirectory, atRest, report)
            report.forgotten = connection.run(_forget_txn, atRest.currentId)
    except DecryptionError as error:
        raise RekeyError(f"cannot read a stored value: {error}")
    finally:
        connection.close()
    return report


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """
    The command line; returns the exit status (0 done, 1 failed, 2 bad
    arguments).
    """
    parser = argparse.ArgumentParser(
        prog="crm_im-rekey",
        description="Re-encrypt every message, file name and file under the current key of the key file"
        " (resumable; safe while crm_im runs with that key file).",
    )
    parser.add_argument(
        "--store",
        default=os.environ.get("CRM_IM_STORE"),
        help="the database: sqlite:PATH or postgresql://user@host/db (default: $CRM_IM_STORE)",
    )
    parser.add_argument(
        "--encryption-keys",
        default=os.environ.get("CRM_IM_ENCRYPTION_KEYS"),
        help="the key file, its first key the current one (default: $CRM_IM_ENCRYPTION_KEYS)",
    )
    parser.add_argument(
        "--files",
        default=None,
        help="the file store directory (the files directory of --data-dir); without it file bytes are"
        " not touched and the old keys stay recorded as in use",
    )
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH, help="rows per transaction")
    args = parser.parse_args(argv)
    if not args.store:
        parser.error("--store is required (or $CRM_IM_STORE)")
    if not args.encryption_keys:
        parser.error("--encryption-keys is required (or $CRM_IM_ENCRYPTION_KEYS)")
    try:
        ring, warnings = loadKeyFile(args.encryption_keys)
    except KeyFileError as error:
        err.write(f"crm_im-rekey: {error}\n")
        return 2
    for warning in warnings:
        err.write(f"warning: {warning}\n")

    def progress(table: str, done: int) -> None:
        out.write(f"{table}: {done} rows\n")
        out.flush()

    out.write(f"rekeying {redactURL(args.store)} to key {ring.current.id}\n")
    try:
        # (the command's entry point, like tap.py for the server: the one
        # place that picks the real clock)
        from twisted.internet import reactor

        report = rekey(args.store, AtRest.fromRing(ring), reactor, args.files, args.batch_size, progress)
    except RekeyError as error:
        err.write(f"crm_im-rekey: {error}\n")
        return 1
    for table, position in sorted(report.resumedFrom.items()):
        out.write(f"{table}: resumed after {position}\n")
    out.write(
        f"done: {report.messages} messages, {report.fileRecords} file records, {report.files} files"
        f" sealed under {ring.current.id}"
        + (f"; {report.conflicts} rows read again after a change" if report.conflicts else "")
        + "\n"
    )
    if report.forgotten:
        out.write(f"keys no longer needed (may be removed from the key file): {', '.join(report.forgotten)}\n")
    elif args.files is None:
        out.write("file bytes not rekeyed (no --files): the old keys stay needed\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
