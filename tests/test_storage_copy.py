"""
Tests for L{crm_im.storage.copy}, the SQLite → PostgreSQL copy tool: a
SQLite file filled by the real store, copied into a PostgreSQL schema of
the test's own, read back by the PostgreSQL store; interrupted and resumed;
refusals; verification that catches a difference.
"""

from __future__ import annotations

import io
import sqlite3
import subprocess
import sys
from typing import Any

import psycopg
from twisted.internet import reactor
from twisted.trial.unittest import TestCase

from crm_im.storage import (
    ADMIN,
    MEMBER,
    OWNER,
    FileRecord,
    GroupChange,
    GroupRecord,
    MemberRecord,
    NewMessage,
    PostgresMessageStore,
    RoomRecord,
    SQLiteMessageStore,
    directConversation,
    groupConversation,
)
from crm_im.storage.admin import AuditEntry, BanRecord, SeenUser, SQLAdminStore
from crm_im.storage.copy import PROGRESS_TABLE, CopyError, copyDatabase, main
from crm_im.storage.database import schemaFiles, splitStatements
from crm_im.storage.outbox import Pushkey
from tests.support.postgres import newSchemaURL


def message(id: str, fromId: str = "alice", toId: str | None = "bob", **fields: Any) -> NewMessage:
    """
    A text message (1:1 unless C{groupId} or C{roomId} is given).
    """
    values: dict[str, Any] = dict(
        fromId=fromId, fromName=fromId.title(), toId=toId, id=id, topic=None, type="text",
        content=f"content of {id} ✓ 100%", fileUrl=None, fileName=None, clientTimestamp=None,
        serverTimestamp=1000,
    )
    values.update(fields)
    return NewMessage(**values)


class Interrupted(Exception):
    """
    Stands for Ctrl-C or a lost connection in the middle of a copy.
    """


class CopyTests(TestCase):
    """
    L{copyDatabase} and the command line.
    """

    def setUp(self) -> None:
        self.url = newSchemaURL(self)
        self.path = self.mktemp()

    def rows(self, sql: str, args: Any = ()) -> list[tuple[Any, ...]]:
        """
        Rows of a query on the target (blocking).
        """
        with psycopg.connect(self.url, autocommit=True) as conn:
            return [tuple(row) for row in conn.execute(sql, args).fetchall()]

    async def fill(self, messages: int = 40) -> SQLiteMessageStore:
        """
        Fill the SQLite file through the store, with every kind of row the
        server writes; return the (closed) store.
        """
        store = SQLiteMessageStore(self.path, reactor)
        await store.open()
        for n in range(messages):
            await store.storeMessage(message(f"m{n}", clientTimestamp=1701234567890.123 if n % 2 else n))
        await store.markDelivered([1, 2, 3])
        await store.markRead("bob", "alice", messageIds=["m1"])
        group = GroupRecord("g1", "Deals", None, "alice", "alice", "c1", 1000)
        members = [MemberRecord("alice", OWNER, 1000), MemberRecord("bob", MEMBER, 1000)]
        system = message("s1", toId=None, type="system", content="", system={"action": "create", "by": "alice"})
        await store.createGroup(group, members, system)
        said = await store.storeMessage(message("g-m", toId=None, groupId="g1"))
        await store.changeGroup(GroupChange("g1", 2000, roles=(("bob", ADMIN),)))
        await store.moveReadCursor(groupConversation("g1"), "bob", said.message.seq)
        await store.createRoom(RoomRecord("r1", "Lobby", "talk", True, "alice", "r1", 1000))
        await store.storeMessage(message("r-m", toId=None, roomId="r1"))
        await store.recordFile(FileRecord("f" * 32, "alice", "bob", "a.pdf", "application/pdf", 3, 9))
        await store.registerPushkey(Pushkey("k1", "bob", "app", None, None, None, 10), 10)
        await store.storeMessage(message("pushed", notify=("bob",)))
        admin = SQLAdminStore(store)
        await admin.recordAudit(AuditEntry("a1", 5, "token", "user.ban", "eve", {"why": "spam"}, "127.0.0.1"))
        await admin.saveBan(BanRecord("eve", None, "spam", 5, "token"))
        await admin.sawUsers([SeenUser("alice", "Alice", None, 1, 2), SeenUser("bob", "Bob", "b.png", 1, 3)])
        await store.close()
        return store

    async def openTarget(self) -> PostgresMessageStore:
        """
        The PostgreSQL store on the copy, closed after the test.
        """
        store = PostgresMessageStore(self.url, reactor)
        self.addCleanup(store.close)
        await store.open()
        return store

    async def assertSameData(self) -> None:
        """
        The PostgreSQL store reads what the SQLite store reads.
        """
        lite = SQLiteMessageStore(self.path, reactor)
        await lite.open()
        self.addCleanup(lite.close)
        pg = await self.openTarget()
        self.assertEqual(pg.database.schemaApplied, [])
        for friend in ("bob",):
            self.assertEqual(
                await pg.history("alice", friend, None, 200, None, None),
                await lite.history("alice", friend, None, 200, None, None),
            )
        self.assertEqual(await pg.pendingFor("bob", 200), await lite.pendingFor("bob", 200))
        self.assertEqual(await pg.group("g1"), await lite.group("g1"))
        self.assertEqual(await pg.groupSummaries("bob"), await lite.groupSummaries("bob"))
        self.assertEqual(await pg.readCursors(groupConversation("g1")), await lite.readCursors(groupConversation("g1")))
        self.assertEqual(
            await pg.readCursors(directConversation("alice", "bob")), await lite.readCursors(directConversation("alice", "bob"))
        )
        self.assertEqual(await pg.room("r1"), await lite.room("r1"))
        self.assertEqual(await pg.fileRecord("f" * 32), await lite.fileRecord("f" * 32))
        self.assertEqual(await pg.loadPush(), await lite.loadPush())
        self.assertEqual(await SQLAdminStore(pg).bans(), await SQLAdminStore(lite).bans())
        self.assertEqual(await SQLAdminStore(pg).counts(), await SQLAdminStore(lite).counts())

    async def test_copyEverything(self) -> None:
        """
        Every table is copied and verified; the PostgreSQL store then reads
        the same messages, groups, cursors, rooms, files, push and admin
        records as the SQLite one; the progress table is gone; a new
        message gets a seq above every copied one.
        """
        await self.fill()
        batches: list[tuple[str, int]] = []
        report = copyDatabase(self.path, self.url, batchSize=16, onBatch=lambda t, n: batches.append((t, n)))
        self.assertTrue(report.ok, report)
        tables = {table.name: table for table in report.tables}
        self.assertEqual(tables["messages"].sourceRows, 44)
        self.assertEqual(report.copied["messages"], 44)
        self.assertEqual([n for t, n in batches if t == "messages"], [16, 32, 44])
        self.assertTrue({"groups", "group_members", "read_cursors", "rooms", "files", "push_keys", "push_outbox",
                         "admin_audit", "admin_bans", "users_seen"} <= set(tables))
        self.assertEqual(self.rows("SELECT to_regclass(%s)", (PROGRESS_TABLE,)), [(None,)])
        await self.assertSameData()
        pg = await self.openTarget()
        fresh = await pg.storeMessage(message("after"))
        self.assertEqual(fresh.message.seq, 45)

    async def test_seqNeverHandedOutTwice(self) -> None:
        """
        A seq SQLite handed out to a message since deleted is not handed out
        again by PostgreSQL.
        """
        await self.fill(messages=3)
        with sqlite3.connect(self.path) as lite:
            lite.execute("DELETE FROM messages WHERE seq = (SELECT MAX(seq) FROM messages)")
        lite.close()
        self.assertTrue(copyDatabase(self.path, self.url).ok)
        pg = await self.openTarget()
        fresh = await pg.storeMessage(message("after"))
        self.assertEqual(fresh.message.seq, 8)

    async def test_resumes(self) -> None:
        """
        A copy interrupted after some batches resumes, when run again, after
        the last batch it committed: every row is there once.
        """
        await self.fill()

        def interrupt(table: str, copied: int) -> None:
            if table == "messages" and copied == 20:
                raise Interrupted()

        self.assertRaises(Interrupted, copyDatabase, self.path, self.url, 10, onBatch=interrupt)
        self.assertEqual(self.rows("SELECT COUNT(*) FROM messages"), [(20,)])
        report = copyDatabase(self.path, self.url, batchSize=10)
        self.assertTrue(report.ok)
        self.assertIn("messages", report.resumed)
        self.assertEqual(report.copied["messages"], 24)
        self.assertNotIn("files", report.copied)  # copied whole by the first run
        await self.assertSameData()

    async def test_refusesDataItDidNotCopy(self) -> None:
        """
        A PostgreSQL database already holding messages is refused, and so is
        a second copy into a finished one (check it with C{verifyOnly}).
        """
        await self.fill(messages=2)
        pg = await self.openTarget()
        await pg.storeMessage(message("other"))
        error = self.assertRaises(CopyError, copyDatabase, self.path, self.url)
        self.assertIn("already holds data", str(error))

    async def test_verifyCatchesDifferences(self) -> None:
        """
        A changed row on the PostgreSQL side, the same counts, is found by
        the checksum; C{--verify-only} exits 1.
        """
        await self.fill(messages=5)
        self.assertTrue(copyDatabase(self.path, self.url).ok)
        self.assertRaises(CopyError, copyDatabase, self.path, self.url)
        self.assertTrue(copyDatabase(self.path, self.url, verifyOnly=True).ok)
        self.rows("UPDATE messages SET content = 'changed' WHERE seq = 3 RETURNING seq")
        report = copyDatabase(self.path, self.url, verifyOnly=True)
        bad = [table for table in report.tables if not table.ok]
        self.assertEqual([(t.name, t.sourceRows == t.targetRows) for t in bad], [("messages", True)])
        out = io.StringIO()
        self.assertEqual(main(["--from", "sqlite:" + self.path, "--to", self.url, "--verify-only"], out), 1)
        self.assertIn("MISMATCH", out.getvalue())

    async def test_nul(self) -> None:
        """
        Text holding U+0000 (older crm_im accepted it) stops the copy with
        the row and the way out; with C{replaceNul} it is stored as U+FFFD
        and counted, and the copy verifies.
        """
        await self.fill(messages=3)
        with sqlite3.connect(self.path) as lite:
            lite.execute("UPDATE messages SET content = ? WHERE message_id = 'm1'", ("a\x00b",))
        lite.close()
        error = self.assertRaises(CopyError, copyDatabase, self.path, self.url)
        self.assertIn("--replace-nul", str(error))
        report = copyDatabase(self.path, self.url, replaceNul=True)
        self.assertTrue(report.ok)
        self.assertEqual(report.replacedNul, 1)
        self.assertEqual(self.rows("SELECT content FROM messages WHERE message_id = 'm1'"), [("a\ufffdb",)])

    async def test_oldSourceRefused(self) -> None:
        """
        A SQLite file of an older schema is refused with what to do.
        """
        with sqlite3.connect(self.path) as old:
            for _, _, sql in schemaFiles()[:7]:
                for statement in splitStatements(sql):
                    old.execute(statement)
            old.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL)")
            old.executemany("INSERT INTO schema_version VALUES (?, ?)", [(v, n) for v, n, _ in schemaFiles()[:7]])
        old.close()
        error = self.assertRaises(CopyError, copyDatabase, self.path, self.url)
        self.assertIn("start this crm_im on it once", str(error))
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(main(["--from", self.path, "--to", self.url], out, err), 2)
        self.assertEqual(main(["--from", self.path + ".missing", "--to", self.url], out, err), 2)
        self.assertNotIn("crm_im-migrate: ", out.getvalue())
        self.assertEqual(err.getvalue().count("crm_im-migrate: "), 2)

    async def test_commandLine(self) -> None:
        """
        C{python -m crm_im.storage.copy} copies and verifies, prints a line
        per table, and exits 0.
        """
        await self.fill(messages=3)
        done = subprocess.run(
            [sys.executable, "-m", "crm_im.storage.copy", "--from", "sqlite:" + self.path, "--to", self.url],
            capture_output=True, text=True, timeout=60,
        )
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertIn("copied and verified", done.stdout)
        self.assertRegex(done.stdout, r"messages\s+7\s+7\s+[0-9a-f]{16}\s+ok")
