"""
Encryption at rest in the SQL store (SQLite and PostgreSQL): what reaches
the database, reading it back, rows moved or altered, rotation, the keys
checked at start, and C{crm_im-rekey} (resumed after an interruption,
compare-and-set against a concurrent recall, file bytes).
"""

from __future__ import annotations

import io
import os
from typing import Any

from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from crm_im.crypto import AtRest, DecryptionError, parseKeys
from crm_im.crypto.stream import readHeader
from crm_im.storage import FileRecord, PostgresMessageStore, SQLiteMessageStore, SQLMessageStore
from crm_im.storage.database import KeysMissingError, Transaction
from crm_im.storage.interface import COMPLETE
from crm_im.storage.rekey import RekeyError, _walk, main, rekey, rekeyMessages_txn
from tests.support.postgres import newSchemaURL
from tests.support.stores import PostgresStores, SQLiteStores
from tests.test_crypto import keyLine
from tests.test_storage import newMessage

MARKER = "MARKER-5d1c0f"


def atRest(*ids: str) -> AtRest:
    """
    The ciphers of a key file with C{ids} (the first current), each key made
    from its id so that the same id is the same key in every ring.
    """
    return AtRest.fromRing(parseKeys("\n".join(keyLine(keyId, sum(keyId.encode()) % 256) for keyId in ids)))


class _Interrupted(Exception):
    pass


class AtRestStoreMixin:
    """
    The tests, on a store of one engine.
    """

    mktemp: Any
    addCleanup: Any
    assertEqual: Any
    assertIn: Any
    assertNotIn: Any
    assertIsNone: Any
    assertTrue: Any
    assertFailure: Any
    assertRaises: Any
    rows: Any

    def keyedStore(self, keys: AtRest | None) -> SQLMessageStore:
        """
        A new, unopened store on the test's database, with C{keys}.
        """
        raise NotImplementedError()

    def storeURL(self) -> str:
        """
        The C{--store} value of the test's database.
        """
        raise NotImplementedError()

    def execute(self, sql: str, args: Any = ()) -> None:
        """
        Change the database behind the store's back (blocking).
        """
        raise NotImplementedError()

    async def opened(self, keys: AtRest | None) -> SQLMessageStore:
        """
        A store with C{keys}, opened, closed at cleanup.
        """
        store = self.keyedStore(keys)
        await store.open()
        self.addCleanup(store.close)
        return store

    def rawText(self) -> str:
        """
        Every message and file record column, as stored.
        """
        return repr(self.rows("SELECT * FROM messages")) + repr(self.rows("SELECT * FROM files"))

    async def storeMarkers(self, store: SQLMessageStore, suffix: str = "") -> None:
        """
        Store a text, a file and a system message and a file record, each
        holding L{MARKER} in the text encryption at rest covers.
        """
        await store.storeMessage(newMessage(id="t" + suffix, content=MARKER + " text"))
        await store.storeMessage(
            newMessage(id="f" + suffix, type="file", content="", fileName=MARKER + ".pdf", fileUrl=f"/files/x/{MARKER}.pdf")
        )
        await store.storeMessage(
            newMessage(id="s" + suffix, type="system", content="", system={"action": "rename", "name": MARKER})
        )
        await store.recordFile(
            FileRecord(
                fileId=("F" + suffix).ljust(32, "x"),
                fromId="alice",
                toId="bob",
                fileName=MARKER + ".bin",
                mimeType=None,
                size=3,
                createdAt=1,
                conversation=None,
                state=COMPLETE,
                sha256=None,
            )
        )

    async def test_sealedAndReadBack(self) -> None:
        """
        With keys, content, file names and system texts reach the database
        sealed, with the key id beside them; history, look-ups, the stored
        answer to a resend and file records read them back.
        """
        store = await self.opened(atRest("k1"))
        await self.storeMarkers(store)
        self.assertNotIn(MARKER, self.rawText())
        self.assertEqual(
            sorted(self.rows("SELECT message_id, key_id FROM messages")), [("f", "k1"), ("s", "k1"), ("t", "k1")]
        )
        self.assertEqual(self.rows("SELECT key_id FROM encryption_keys"), [("k1",)])
        page = await store.history("alice", "bob", None, 10, None, None)
        byId = {message.id: message for message in page.messages}
        self.assertEqual(byId["t"].content, MARKER + " text")
        self.assertEqual((byId["f"].fileName, byId["f"].fileUrl), (MARKER + ".pdf", f"/files/x/{MARKER}.pdf"))
        self.assertEqual(byId["s"].system, {"action": "rename", "name": MARKER})
        again = await store.storeMessage(newMessage(id="t", content="other"))
        self.assertEqual((again.created, again.message.content), (False, MARKER + " text"))
        found = await store.findMessage("alice", "t")
        self.assertEqual(found.content, MARKER + " text")  # type: ignore[union-attr]
        record = await store.fileRecord("F".ljust(32, "x"))
        self.assertEqual(record.fileName, MARKER + ".bin")  # type: ignore[union-attr]
        recalled = await store.recall(byId["t"].seq, "alice", 5)
        self.assertEqual(recalled.content, "")  # type: ignore[union-attr]

    async def test_endToEndStoredAsIs(self) -> None:
        """
        An end-to-end encrypted message (C{type: 'encrypted'}) is already
        ciphertext: stored as it is, without a key id.
        """
        store = await self.opened(atRest("k1"))
        await store.storeMessage(newMessage(id="e", type="encrypted", content=""))
        self.assertEqual(self.rows("SELECT key_id FROM messages"), [(None,)])

    async def test_movedOrAlteredRefused(self) -> None:
        """
        A sealed content copied into another row, or altered, fails to
        read: the store answers an error, not another row's text.
        """
        store = await self.opened(atRest("k1"))
        await store.storeMessage(newMessage(id="a", content="for a"))
        await store.storeMessage(newMessage(id="b", content="for b"))
        await store.close()
        self.execute("UPDATE messages SET content = (SELECT content FROM messages WHERE message_id = 'a')"
                     " WHERE message_id = 'b'")
        store = await self.opened(atRest("k1"))
        await self.assertFailure(store.findMessage("alice", "b"), DecryptionError)
        self.assertEqual((await store.findMessage("alice", "a")).content, "for a")  # type: ignore[union-attr]
        await store.close()
        sealed = self.rows("SELECT content FROM messages WHERE message_id = 'a'")[0][0]
        altered = ("B" if sealed[20] != "B" else "C").join([sealed[:20], sealed[21:]])
        self.execute("UPDATE messages SET content = ? WHERE message_id = 'a'", (altered,))
        store = await self.opened(atRest("k1"))
        await self.assertFailure(store.findMessage("alice", "a"), DecryptionError)

    async def test_rotation(self) -> None:
        """
        A new key first in the file: old rows read with the old key, new
        rows are sealed under the new one.
        """
        store = await self.opened(atRest("k1"))
        await store.storeMessage(newMessage(id="old", content="old text"))
        await store.close()
        store = await self.opened(atRest("k2", "k1"))
        await store.storeMessage(newMessage(id="new", content="new text"))
        page = await store.history("alice", "bob", None, 10, None, None)
        self.assertEqual([m.content for m in page.messages], ["old text", "new text"])
        self.assertEqual(sorted(self.rows("SELECT message_id, key_id FROM messages")), [("new", "k2"), ("old", "k1")])
        self.assertEqual(sorted(self.rows("SELECT key_id FROM encryption_keys")), [("k1",), ("k2",)])

    async def test_clearRowsStayReadable(self) -> None:
        """
        Keys given to a database with rows in clear: those stay readable,
        new rows are sealed.
        """
        store = await self.opened(None)
        await store.storeMessage(newMessage(id="clear", content="clear text"))
        await store.close()
        store = await self.opened(atRest("k1"))
        await store.storeMessage(newMessage(id="sealed", content="sealed text"))
        page = await store.history("alice", "bob", None, 10, None, None)
        self.assertEqual([m.content for m in page.messages], ["clear text", "sealed text"])
        self.assertEqual(
            sorted(self.rows("SELECT message_id, key_id FROM messages")), [("clear", None), ("sealed", "k1")]
        )

    async def test_startRefusedWithoutTheKeys(self) -> None:
        """
        A database written with a key refuses to open without a key file,
        or with one lacking that key, saying which keys it needs.
        """
        store = await self.opened(atRest("k1"))
        await store.storeMessage(newMessage(id="m", content="text"))
        await store.close()
        error = await self.assertFailure(self.keyedStore(None).open(), KeysMissingError)
        self.assertIn("keys k1", str(error))
        self.assertIn("--encryption-keys", str(error))
        error = await self.assertFailure(self.keyedStore(atRest("k2")).open(), KeysMissingError)
        self.assertIn("k1", str(error))
        self.assertIn("does not hold", str(error))
        store = await self.opened(atRest("k2", "k1"))
        self.assertEqual((await store.findMessage("alice", "m")).content, "text")  # type: ignore[union-attr]

    async def test_startRefusedWithAnotherKeyOfTheSameId(self) -> None:
        """
        A key file with a used key's id and other bytes is refused at
        start, saying which key, and nothing is written under it; the
        right key opens the database again. (It used to start, fail every
        old row, and seal new rows under a second key of the same id.)
        """
        store = await self.opened(atRest("k1"))
        await store.storeMessage(newMessage(id="m", content="text"))
        await store.close()
        impostor = AtRest.fromRing(parseKeys(keyLine("k1", 7)))
        self.assertNotEqual(impostor.ring.current.check, atRest("k1").ring.current.check)
        error = await self.assertFailure(self.keyedStore(impostor).open(), KeysMissingError)
        self.assertIn("the key k1 of", str(error))
        self.assertIn("same id, other bytes", str(error))
        # as an older key of the file, too
        error = await self.assertFailure(
            self.keyedStore(AtRest.fromRing(parseKeys(keyLine("k2", 2) + "\n" + keyLine("k1", 7)))).open(), KeysMissingError
        )
        self.assertIn("the key k1 of", str(error))
        self.assertEqual(self.rows("SELECT message_id FROM messages"), [("m",)])
        store = await self.opened(atRest("k1"))
        self.assertEqual((await store.findMessage("alice", "m")).content, "text")  # type: ignore[union-attr]

    async def test_keyRecordedWithoutCheck(self) -> None:
        """
        A key recorded before check values existed (schema 014) is
        verified once against a message sealed under it: the wrong bytes
        are refused; the right ones open and the check is recorded, after
        which no message needs reading. A key that sealed no message is
        recorded as it is.
        """
        store = await self.opened(atRest("k1"))
        await store.storeMessage(newMessage(id="m", content="text"))
        await store.close()
        self.execute("UPDATE encryption_keys SET key_check = NULL")
        impostor = AtRest.fromRing(parseKeys(keyLine("k1", 7)))
        error = await self.assertFailure(self.keyedStore(impostor).open(), KeysMissingError)
        self.assertIn("same id, other bytes", str(error))
        self.assertEqual(self.rows("SELECT key_check FROM encryption_keys"), [(None,)])
        store = await self.opened(atRest("k1"))
        await store.close()
        self.assertEqual(self.rows("SELECT key_check FROM encryption_keys"), [(atRest("k1").ring.current.check,)])
        self.execute("DELETE FROM messages")
        await self.assertFailure(self.keyedStore(impostor).open(), KeysMissingError)
        self.execute("UPDATE encryption_keys SET key_check = NULL")
        store = await self.opened(impostor)
        await store.close()
        self.assertEqual(self.rows("SELECT key_check FROM encryption_keys"), [(impostor.ring.current.check,)])

    async def test_rekeyResumed(self) -> None:
        """
        C{crm_im-rekey} stopped after its first batch resumes where it
        stopped; in the end every row (clear or under the old key) and
        every file is sealed under the new key, reads back, and the old
        key is no longer needed to start.
        """
        store = await self.opened(None)
        for index in range(4):
            await store.storeMessage(newMessage(id=f"c{index}", content=f"clear {index}"))
        await store.close()
        store = await self.opened(atRest("k1"))
        for index in range(5):
            await store.storeMessage(newMessage(id=f"s{index}", content=f"sealed {index}"))
        await store.storeMessage(newMessage(id="e", type="encrypted", content=""))
        await self.storeMarkers(store)
        await store.close()
        files = self.mktemp()
        os.makedirs(os.path.join(files, "blobs", "ab"))
        os.makedirs(os.path.join(files, "uploads"))
        with open(os.path.join(files, "blobs", "ab", "abc"), "wb") as f:
            f.write(b"clear blob bytes")
        with open(os.path.join(files, "uploads", "x.part"), "wb") as f:
            f.write(b"partial")
        keys = atRest("k2", "k1")
        batches: list[tuple[str, int]] = []

        def interrupt(table: str, done: int) -> None:
            batches.append((table, done))
            raise _Interrupted()

        clock = Clock()
        clock.advance(1_700_000_000)
        self.assertRaises(_Interrupted, rekey, self.storeURL(), keys, clock, files, 4, interrupt)
        self.assertEqual(batches, [("messages", 4)])
        (progress,) = self.rows("SELECT target, key_id, position, updated_at FROM rekey_progress")
        self.assertEqual(progress[:2], ("messages", "k2"))
        self.assertEqual(progress[3], 1_700_000_000_000)  # the injected clock's time
        report = rekey(self.storeURL(), keys, clock, files, 4)
        self.assertEqual(report.resumedFrom, {"messages": progress[2]})
        self.assertEqual(report.messages, 12 - 4)
        self.assertEqual((report.fileRecords, report.files), (1, 1))
        self.assertEqual(report.forgotten, ["k1"])
        self.assertEqual(set(self.rows("SELECT key_id FROM messages")), {("k2",), (None,)})
        self.assertEqual(self.rows("SELECT key_id FROM messages WHERE type = 'encrypted'"), [(None,)])
        self.assertEqual(self.rows("SELECT key_id FROM encryption_keys"), [("k2",)])
        self.assertEqual(self.rows("SELECT * FROM rekey_progress"), [])
        self.assertNotIn(MARKER, self.rawText())
        with open(os.path.join(files, "blobs", "ab", "abc"), "rb") as f:
            self.assertEqual(readHeader(f)[1], "k2")
            self.assertEqual(keys.files.reader(f, b"blobs/ab/abc").read(), b"clear blob bytes")
        with open(os.path.join(files, "uploads", "x.part"), "rb") as f:
            self.assertEqual(f.read(), b"partial")
        store = await self.opened(atRest("k2"))
        page = await store.history("alice", "bob", None, 20, None, None)
        contents = [m.content for m in page.messages if m.type == "text"]
        self.assertEqual(contents, [f"clear {i}" for i in range(4)] + [f"sealed {i}" for i in range(5)] + [MARKER + " text"])
        self.assertEqual((await store.fileRecord("F".ljust(32, "x"))).fileName, MARKER + ".bin")  # type: ignore[union-attr]

    async def test_rekeyCompareAndSet(self) -> None:
        """
        A message the server recalls between the rekey's read and its
        write is not overwritten: the write finds the row changed, reads it
        again, and seals the recalled row.
        """
        store = await self.opened(atRest("k1"))
        await store.storeMessage(newMessage(id="m1", content="first"))
        await store.storeMessage(newMessage(id="m2", content="second"))
        await store.close()
        keys = atRest("k2", "k1")
        recalled: list[bool] = []

        class Recalling(Transaction):
            def __init__(self, txn: Transaction) -> None:
                self.__dict__.update(txn.__dict__)

            def execute(self, sql: str, args: Any = ()) -> None:
                if sql.startswith("UPDATE messages SET content = ?") and not recalled:
                    recalled.append(True)
                    # what recall_txn does, in the same transaction
                    Transaction.execute(
                        self,
                        "UPDATE messages SET content = '', file_name = NULL, recalled_by = 'alice'"
                        " WHERE message_id = 'm2'",
                    )
                Transaction.execute(self, sql, args)

        def step(txn: Transaction, atRest: AtRest, after: int, limit: int) -> Any:
            return rekeyMessages_txn(Recalling(txn), atRest, after, limit)

        from crm_im.storage.engines import engineFor
        from crm_im.storage.rekey import Connection, RekeyReport

        connection = Connection(engineFor(self.storeURL()), keys, Clock())
        self.addCleanup(connection.close)
        report = RekeyReport()
        # m1 first: the recall of m2 happens as m1 is rewritten, then m2's
        # write finds it changed
        done = _walk(connection, "messages", step, 0, int, 10, report, None)
        self.assertEqual((done, report.conflicts), (2, 1))
        self.assertEqual(sorted(self.rows("SELECT message_id, key_id, recalled_by FROM messages")),
                         [("m1", "k2", None), ("m2", "k2", "alice")])
        store = await self.opened(keys)
        self.assertEqual((await store.findMessage("alice", "m2")).content, "")  # type: ignore[union-attr]
        self.assertEqual((await store.findMessage("alice", "m1")).content, "first")  # type: ignore[union-attr]

    async def test_rekeyFilesDirectoryChecked(self) -> None:
        """
        A C{--files} that is not a file store is refused before anything
        is written: the data directory (its files would be sealed under
        the wrong paths, unreadable to the server), any other tree, and a
        directory that does not exist (no file would be rekeyed, yet the
        old keys would be forgotten). The file store itself is rekeyed.
        """
        store = await self.opened(atRest("k1"))
        await store.storeMessage(newMessage(id="m1", content="first"))
        await store.close()
        dataDir = self.mktemp()
        files = os.path.join(dataDir, "files")
        os.makedirs(os.path.join(files, "blobs", "ab"))
        os.makedirs(os.path.join(files, "Xy"))  # kept before content addressing
        blob = os.path.join(files, "blobs", "ab", "abc")
        with open(blob, "wb") as f:
            f.write(b"clear blob bytes")
        other = self.mktemp()
        os.makedirs(os.path.join(other, "dpkg"))
        keys = atRest("k2", "k1")
        for directory, said in (
            (dataDir, f"give {files}"),
            (other, "it holds dpkg/"),
            (files + "-typo", "no such directory"),
        ):
            error = self.assertRaises(RekeyError, rekey, self.storeURL(), keys, Clock(), directory)
            self.assertIn(said, str(error))
        with open(blob, "rb") as f:
            self.assertEqual(f.read(), b"clear blob bytes")
        self.assertEqual(self.rows("SELECT key_id FROM messages"), [("k1",)])
        self.assertEqual(self.rows("SELECT key_id FROM encryption_keys"), [("k1",)])
        report = rekey(self.storeURL(), keys, Clock(), files)
        self.assertEqual((report.messages, report.files, report.forgotten), (1, 1, ["k1"]))

    async def test_rekeyCommandRefusals(self) -> None:
        """
        The command refuses a key file lacking a key the database needs
        (exit 1) and a bad key file (exit 2), saying why.
        """
        store = await self.opened(None)
        await store.close()
        keyFile = self.mktemp()
        with open(keyFile, "w") as f:
            f.write(keyLine("k9", 9) + "\n")
        os.chmod(keyFile, 0o600)
        self.execute("INSERT INTO encryption_keys (key_id, first_used) VALUES ('k1', 1)")
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(main(["--store", self.storeURL(), "--encryption-keys", keyFile], out, err), 1)
        self.assertIn("k1", err.getvalue())
        self.assertNotIn("k1", out.getvalue())
        with open(keyFile, "w") as f:
            f.write("k9:short\n")
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(main(["--store", self.storeURL(), "--encryption-keys", keyFile], out, err), 2)
        self.assertEqual((out.getvalue(), err.getvalue().startswith("crm_im-rekey:")), ("", True))
        self.assertIn("line 1", err.getvalue())
        self.assertRaises(RekeyError, rekey, self.storeURL(), atRest("k1"), Clock(), None, 0)


class SQLiteAtRestTests(SQLiteStores, AtRestStoreMixin, TestCase):
    """
    On SQLite.
    """

    def keyedStore(self, keys: AtRest | None) -> SQLMessageStore:
        if not hasattr(self, "path"):
            self.path = self.mktemp()
        return SQLiteMessageStore(self.path, reactor, atRest=keys)

    def storeURL(self) -> str:
        return "sqlite:" + self.path

    def execute(self, sql: str, args: Any = ()) -> None:
        import sqlite3

        conn = sqlite3.connect(self.path)
        try:
            with conn:
                conn.execute(sql, args)
        finally:
            conn.close()

    def setUp(self) -> None:
        self.keyedStore(None)

    async def test_copiedAsTheyAre(self) -> None:
        """
        C{crm_im-migrate} carries sealed rows to PostgreSQL as they are: the
        same keys read them there (the associated data is the row's
        identity, which the copy keeps), and a server there without the
        keys refuses to start.
        """
        from crm_im.storage.copy import copyDatabase

        store = await self.opened(atRest("k1"))
        await self.storeMarkers(store)
        await store.close()
        url = newSchemaURL(self)
        self.assertTrue(copyDatabase(self.path, url).ok)
        await self.assertFailure(PostgresMessageStore(url, reactor).open(), KeysMissingError)
        copied = PostgresMessageStore(url, reactor, atRest("k1"))
        await copied.open()
        self.addCleanup(copied.close)
        page = await copied.history("alice", "bob", None, 10, None, None)
        self.assertEqual(
            {m.id: (m.content, m.fileName) for m in page.messages},
            {"t": (MARKER + " text", None), "f": ("", MARKER + ".pdf"), "s": ("", None)},
        )


class PostgresAtRestTests(PostgresStores, AtRestStoreMixin, TestCase):
    """
    On PostgreSQL.
    """

    def keyedStore(self, keys: AtRest | None) -> SQLMessageStore:
        if not hasattr(self, "url"):
            self.url = newSchemaURL(self)
        return PostgresMessageStore(self.url, reactor, keys)

    def storeURL(self) -> str:
        return self.url

    def execute(self, sql: str, args: Any = ()) -> None:
        import psycopg

        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(sql.replace("?", "%s"), args)

    def setUp(self) -> None:
        self.keyedStore(None)


class RekeyFilesTests(TestCase):
    """
    L{crm_im.storage.rekey.rekeyFiles}, the walk that seals files again.
    """

    def setUp(self) -> None:
        self.directory = self.mktemp()
        os.makedirs(os.path.join(self.directory, "blobs", "ab"))
        self.path = os.path.join(self.directory, "blobs", "ab", "abc")
        with open(self.path, "wb") as f:
            f.write(b"clear blob bytes")

    def test_fixedTemporaryNameTaken(self) -> None:
        """
        The file is sealed through a temporary file of its own: a
        C{<name>.tmp} beside it (another run's, or left by a crash) is
        neither used nor in the way, where the walk's fixed temporary name
        made the run fail on it.
        """
        from crm_im.storage.rekey import RekeyReport, rekeyFiles

        os.mkdir(self.path + ".tmp")
        keys = atRest("k2")
        report = RekeyReport()
        rekeyFiles(self.directory, keys, report)
        self.assertEqual(report.files, 1)
        with open(self.path, "rb") as f:
            self.assertEqual(readHeader(f)[1], "k2")
            self.assertEqual(keys.files.reader(f, b"blobs/ab/abc").read(), b"clear blob bytes")
        self.assertEqual(sorted(os.listdir(os.path.dirname(self.path))), ["abc", "abc.tmp"])

    def test_deletedMeanwhileStaysDeleted(self) -> None:
        """
        A file deleted while it is being sealed (retention took its last
        reference) is not brought back, and leaves no temporary file.
        """
        from crm_im.storage.rekey import RekeyReport, rekeyFiles

        keys = atRest("k2")
        path = self.path
        real = keys.files

        class Deleting:
            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

            def sealStream(self, source: Any, out: Any, identity: bytes) -> None:
                os.remove(path)
                real.sealStream(source, out, identity)

        report = RekeyReport()
        rekeyFiles(self.directory, AtRest(keys.ring, keys.records, Deleting()), report)  # type: ignore[arg-type]
        self.assertEqual(report.files, 0)
        self.assertEqual(os.listdir(os.path.dirname(path)), [])
