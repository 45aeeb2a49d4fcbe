"""
Tests for L{crm_im.storage}: one mixin of message-store tests run against the
memory fake and SQLite in a temporary file, plus SQLite-only tests (group
commit, durability across reopen, schema versions, pragmas).
"""

from __future__ import annotations

import ctypes
import sqlite3
import threading
import uuid
from pathlib import Path
from typing import Any, Sequence

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject

from tests.support.postgres import newSchemaURL
from tests.support.stores import PostgresStores, SQLiteStores

from crm_im.storage import (
    FileRecord,
    IFileMetadata,
    IMessageStore,
    MemoryMessageStore,
    NewMessage,
    PostgresMessageStore,
    SQLiteEngine,
    SQLiteMessageStore,
    StoreClosedError,
    StoredMessage,
    conversationKey,
    directConversation,
    groupConversation,
    roomConversation,
)
from crm_im.storage.interface import messageWeight
from crm_im.storage.messages import MAX_READ_MESSAGES, READ_PAGE
from crm_im.storage.engines import PostgresEngine, engineFor
from crm_im.storage.store import SQLMessageStore
from crm_im.storage.database import (
    SchemaTooNewError,
    Transaction,
    binaryChunks,
    chunks,
    paddedChunks,
    prepareSchema_txn,
    schemaFiles,
    splitStatements,
)


def sqliteAtVersion(path: str, version: int) -> sqlite3.Connection:
    """
    An SQLite file at C{path} made by the schema files up to C{version},
    recorded as applied, as a release of that version left it (to test the
    upgrades after it); the connection is open, in a transaction that its
    C{with} block commits.
    """
    old = sqlite3.connect(path)
    files = [entry for entry in schemaFiles() if entry[0] <= version]
    for _, _, sql in files:
        for statement in splitStatements(sql):
            old.execute(statement)
    old.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, name TEXT NOT NULL)")
    old.executemany("INSERT INTO schema_version VALUES (?, ?)", [(v, n) for v, n, _ in files])
    return old


def newMessage(
    id: str,
    fromId: str = "alice",
    toId: str = "bob",
    topic: str | None = None,
    content: str = "hello",
    **kwargs: Any,
) -> NewMessage:
    """
    A text message with defaults for the fields a test does not care about.
    """
    fields: dict[str, Any] = dict(
        fromId=fromId,
        fromName=fromId.title(),
        toId=toId,
        id=id,
        topic=topic,
        type="text",
        content=content,
        fileUrl=None,
        fileName=None,
        clientTimestamp=None,
        serverTimestamp=1700000000000,
    )
    fields.update(kwargs)
    return NewMessage(**fields)


def ids(messages: Sequence[StoredMessage]) -> list[str]:
    """
    The ids of C{messages}, in order.
    """
    return [message.id for message in messages]


class StoredMessageTests(SynchronousTestCase):
    """
    Tests for the values of L{crm_im.storage.interface}.
    """

    def test_toWireMinimal(self) -> None:
        """
        C{toWire} of a message without optional fields has exactly the
        contract's mandatory keys.
        """
        message = StoredMessage(
            seq=7,
            id="m1",
            fromId="alice",
            fromName="Alice",
            toId="bob",
            topic=None,
            type="text",
            content="hi",
            fileUrl=None,
            fileName=None,
            clientTimestamp=None,
            serverTimestamp=1000,
            delivered=True,
        )
        self.assertEqual(
            message.toWire(),
            {
                "id": "m1",
                "fromId": "alice",
                "fromName": "Alice",
                "toId": "bob",
                "content": "hi",
                "type": "text",
                "serverTimestamp": 1000,
                "seq": 7,
            },
        )

    def test_toWireOptional(self) -> None:
        """
        C{toWire} adds C{topic}, C{timestamp} (the client's), C{fileUrl} and
        C{fileName} when they are set.
        """
        message = StoredMessage(
            seq=1,
            id="f1",
            fromId="alice",
            fromName="Alice",
            toId="bob",
            topic="deal-42",
            type="file",
            content="",
            fileUrl="/files/x",
            fileName="a.pdf",
            clientTimestamp=999.5,
            serverTimestamp=1000,
            delivered=False,
        )
        wire = message.toWire()
        self.assertEqual(wire["topic"], "deal-42")
        self.assertEqual(wire["timestamp"], 999.5)
        self.assertEqual(wire["fileUrl"], "/files/x")
        self.assertEqual(wire["fileName"], "a.pdf")
        self.assertNotIn("delivered", wire)

    def test_conversationKey(self) -> None:
        """
        Both directions of a conversation share one key, distinct from other
        pairs even when ids are prefixes of each other.
        """
        self.assertEqual(conversationKey("a", "b"), conversationKey("b", "a"))
        self.assertNotEqual(conversationKey("a", "bc"), conversationKey("ab", "c"))


class SchemaTests(SynchronousTestCase):
    """
    Tests for the schema helpers of L{crm_im.storage.database}.
    """

    def test_splitStatements(self) -> None:
        """
        Statements are split at a C{;} ending a line; comment lines are
        dropped.
        """
        sql = (
            "-- a comment; here\n"
            "CREATE TABLE a (x TEXT);\n\n"
            "CREATE INDEX i\n ON a (x);\n"
        )
        self.assertEqual(
            splitStatements(sql),
            ["CREATE TABLE a (x TEXT)", "CREATE INDEX i\n ON a (x)"],
        )

    def test_schemaFilesShipped(self) -> None:
        """
        The package ships its schema files, numbered from 1 without gaps.
        """
        versions = [version for version, _, _ in schemaFiles()]
        self.assertEqual(versions, list(range(1, len(versions) + 1)))
        self.assertIn("messages", [name for _, name, _ in schemaFiles()])

    def schemaDirectory(self, files: dict[str, str]) -> Path:
        """
        A directory holding schema files with these names and contents.
        """
        directory = Path(self.mktemp())
        directory.mkdir()
        for name, sql in files.items():
            (directory / name).write_text(sql)
        return directory

    def test_variantPerEngine(self) -> None:
        """
        An engine's variant of a version wins over the shared file; a
        version with only a shared file runs on both; files of other names
        are ignored.
        """
        directory = self.schemaDirectory(
            {
                "001_a.sql.sqlite": "lite",
                "001_a.sql.postgres": "pg",
                "002_b.sql": "both",
                "003_c.sql": "shared",
                "003_c.sql.postgres": "pg only",
                "README": "not a schema file",
            }
        )
        self.assertEqual(
            schemaFiles("sqlite", directory), [(1, "a", "lite"), (2, "b", "both"), (3, "c", "shared")]
        )
        self.assertEqual(
            schemaFiles("postgres", directory), [(1, "a", "pg"), (2, "b", "both"), (3, "c", "pg only")]
        )

    def test_variantRefusals(self) -> None:
        """
        A version without a file for the engine, a variant for an unknown
        engine, two names for one version, and an unknown engine asked for
        are refused.
        """
        missing = self.schemaDirectory({"001_a.sql.sqlite": "x"})
        self.assertEqual(schemaFiles("sqlite", missing), [(1, "a", "x")])
        self.assertRaises(RuntimeError, schemaFiles, "postgres", missing)
        unknown = self.schemaDirectory({"001_a.sql.mysql": "x"})
        self.assertRaises(RuntimeError, schemaFiles, "sqlite", unknown)
        twoNames = self.schemaDirectory({"001_a.sql": "x", "001_b.sql.postgres": "y"})
        self.assertRaises(RuntimeError, schemaFiles, "postgres", twoNames)
        self.assertRaises(ValueError, schemaFiles, "oracle", missing)

    def test_shippedForEveryEngine(self) -> None:
        """
        Both engines get every version, with the same names; PostgreSQL's
        seq is a BIGSERIAL and no SQLite-only syntax reaches it.
        """
        lite = schemaFiles("sqlite")
        pg = schemaFiles("postgres")
        self.assertEqual([(v, n) for v, n, _ in lite], [(v, n) for v, n, _ in pg])
        self.assertIn("seq BIGSERIAL PRIMARY KEY", pg[0][2])
        for _, _, sql in pg:
            statements = " ".join(splitStatements(sql))
            self.assertNotIn("AUTOINCREMENT", statements)
            self.assertNotIn("X'00'", statements)

    def test_engineFor(self) -> None:
        """
        A C{--store} value names an engine: C{sqlite:PATH} (or a bare
        path), C{postgresql://} or C{postgres://}; anything else is refused
        without echoing a password.
        """
        lite = engineFor("sqlite:/var/lib/crm_im/x.db", "normal")
        assert isinstance(lite, SQLiteEngine)
        self.assertEqual((lite.path, lite.synchronous), ("/var/lib/crm_im/x.db", "NORMAL"))
        self.assertEqual(engineFor("sqlite:///abs.db").describe(), "sqlite:/abs.db")
        self.assertEqual(engineFor("relative.db").describe(), "sqlite:relative.db")
        pg = engineFor("postgresql://crm:secret@db.example/crm?sslmode=require")
        self.assertIsInstance(pg, PostgresEngine)
        self.assertEqual(pg.describe(), "postgresql://crm:***@db.example/crm?sslmode=require")
        self.assertIsInstance(engineFor("postgres://db/crm"), PostgresEngine)
        error = self.assertRaises(ValueError, engineFor, "mysql://crm:secret@db/crm")
        self.assertNotIn("secret", str(error))
        self.assertRaises(ValueError, engineFor, "sqlite:")

    def test_chunks(self) -> None:
        """
        C{chunks} slices a sequence into bounded pieces, losing nothing.
        """
        self.assertEqual(list(chunks([1, 2, 3, 4, 5], 2)), [[1, 2], [3, 4], [5]])
        self.assertEqual(list(chunks([], 2)), [])

    def test_binaryChunks(self) -> None:
        """
        C{binaryChunks} slices a sequence into pieces whose lengths are
        powers of two, the longest first, none past the bound, losing
        nothing.
        """
        self.assertEqual([len(c) for c in binaryChunks(list(range(11)), 4)], [4, 4, 2, 1])
        self.assertEqual([len(c) for c in binaryChunks(list(range(45)), 64)], [32, 8, 4, 1])
        self.assertEqual([x for c in binaryChunks(list(range(45)), 64) for x in c], list(range(45)))
        self.assertEqual(list(binaryChunks([], 4)), [])

    def test_paddedChunks(self) -> None:
        """
        C{paddedChunks} slices a sequence into bounded pieces, each padded
        to a power-of-two length with its last value.
        """
        self.assertEqual(list(paddedChunks([1, 2, 3, 4, 5], 4)), [[1, 2, 3, 4], [5]])
        self.assertEqual(list(paddedChunks([1, 2, 3], 8)), [[1, 2, 3, 3]])
        self.assertEqual(list(paddedChunks([7] * 5 + [8], 8)), [[7, 7, 7, 7, 7, 8, 8, 8]])
        self.assertEqual(list(paddedChunks([], 4)), [])

    def test_unknownSynchronousMode(self) -> None:
        """
        An unknown C{synchronous} mode is refused when the store is built.
        """
        self.assertRaises(ValueError, SQLiteEngine, "x.db", "SOMETIMES")
        self.assertEqual(SQLiteEngine("x.db", "normal").synchronous, "NORMAL")


class MessageStoreTestsMixin:
    """
    Tests of L{IMessageStore} semantics, for every implementation.

    Mixed into a L{TestCase} that defines L{makeStore}.
    """

    store: Any

    # Provided by TestCase.
    assertEqual: Any
    assertTrue: Any
    assertFalse: Any
    assertIsNone: Any
    assertIsInstance: Any
    assertFailure: Any
    failureResultOf: Any
    addCleanup: Any

    def makeStore(self) -> Any:
        """
        A new, unopened store.
        """
        raise NotImplementedError()

    def setUp(self) -> Any:
        """
        Open a fresh store; close it after the test.
        """
        self.store = self.makeStore()
        self.addCleanup(self.store.close)
        return self.store.open()

    async def storeAll(self, *messages: NewMessage) -> list[StoredMessage]:
        """
        Store C{messages} one after another.

        @return: the stored messages.
        """
        stored = []
        for message in messages:
            outcome = await self.store.storeMessage(message)
            stored.append(outcome.message)
        return stored

    def test_interface(self) -> None:
        """
        The store provides L{IMessageStore} and L{IFileMetadata}.
        """
        self.assertTrue(verifyObject(IMessageStore, self.store))
        self.assertTrue(verifyObject(IFileMetadata, self.store))

    #: whether the store links each new message to its predecessor in its
    #: conversation (L{StoredMessage.prevSeq}); SQLite does not
    links = True

    async def test_linksConversations(self) -> None:
        """
        A store that links gives each new message the seq and server time
        of the one before it in its conversation, in one batch and across
        batches, 0 for a conversation's first; a resend or a message read
        back carries no link. A store that does not link gives none.
        """
        first = await gatherResults(
            [
                self.store.storeMessage(newMessage("a1", serverTimestamp=1000)),
                self.store.storeMessage(newMessage("c1", toId="carol", serverTimestamp=1001)),
                self.store.storeMessage(newMessage("b1", fromId="bob", toId="alice", serverTimestamp=1002)),
            ]
        )
        a1, c1, b1 = (outcome.message for outcome in first)
        second = await self.store.storeMessage(newMessage("a2", serverTimestamp=1003))
        resent = await self.store.storeMessage(newMessage("a1", serverTimestamp=1004))
        self.assertFalse(resent.created)
        self.assertIsNone(resent.message.prevSeq)
        links = [(m.prevSeq, m.prevAt) for m in (a1, c1, b1, second.message)]
        if not self.links:
            self.assertEqual(links, [(None, 0)] * 4)
            return
        self.assertEqual(links, [(0, 0), (0, 0), (a1.seq, 1000), (b1.seq, 1002)])
        order = second.message.order
        self.assertEqual((order.conversation, order.seq, order.prevSeq), (a1.conversation, second.message.seq, b1.seq))
        page = await self.store.history("bob", "alice", None, 10, None, None)
        self.assertEqual([m.prevSeq for m in page.messages], [None] * 3)

    async def test_storeCreates(self) -> None:
        """
        A new message is stored with every field, a seq, undelivered and
        unread, and C{created} set.
        """
        msg = newMessage(
            "m1",
            topic="deal",
            clientTimestamp=1699999999999,
            type="file",
            fileUrl="/files/abc",
            fileName="a.pdf",
        )
        outcome = await self.store.storeMessage(msg)
        self.assertTrue(outcome.created)
        stored = outcome.message
        self.assertIsInstance(stored.seq, int)
        self.assertEqual(
            (stored.id, stored.fromId, stored.fromName, stored.toId, stored.topic),
            ("m1", "alice", "Alice", "bob", "deal"),
        )
        self.assertEqual(
            (stored.type, stored.content, stored.fileUrl, stored.fileName),
            ("file", "hello", "/files/abc", "a.pdf"),
        )
        self.assertEqual(stored.clientTimestamp, 1699999999999)
        self.assertIsInstance(stored.clientTimestamp, int)
        self.assertEqual(stored.serverTimestamp, 1700000000000)
        self.assertFalse(stored.delivered)
        page = await self.store.history("bob", "alice", None, 10, None, None)
        self.assertEqual(page.messages, [stored])

    async def test_fractionalClientTimestamp(self) -> None:
        """
        A fractional client timestamp is kept as it was sent.
        """
        await self.store.storeMessage(newMessage("m1", clientTimestamp=12.25))
        # 16 significant digits: PostgreSQL's float8-to-numeric cast would
        # keep 15.
        await self.store.storeMessage(newMessage("m2", clientTimestamp=1701234567890.123))
        page = await self.store.history("alice", "bob", None, 10, None, None)
        self.assertEqual([m.clientTimestamp for m in page.messages], [12.25, 1701234567890.123])

    async def test_duplicateNotStoredAgain(self) -> None:
        """
        Storing a C{(fromId, id)} again stores nothing and answers the
        existing row with its current state and C{created} unset.
        """
        first = await self.store.storeMessage(newMessage("m1", content="one"))
        await self.store.markDelivered([first.message.seq])
        again = await self.store.storeMessage(newMessage("m1", content="two"))
        self.assertFalse(again.created)
        self.assertEqual(again.message.seq, first.message.seq)
        self.assertEqual(again.message.content, "one")
        self.assertTrue(again.message.delivered)
        page = await self.store.history("alice", "bob", None, 10, None, None)
        self.assertEqual(ids(page.messages), ["m1"])

    async def test_sameIdOtherSender(self) -> None:
        """
        Ids are unique per sender: another sender may use the same id.
        """
        first = await self.store.storeMessage(newMessage("m1"))
        second = await self.store.storeMessage(
            newMessage("m1", fromId="bob", toId="alice")
        )
        self.assertTrue(second.created)
        self.assertTrue(second.message.seq > first.message.seq)

    async def test_duplicateWithinOneBatch(self) -> None:
        """
        Two stores of one C{(fromId, id)} issued together store one message;
        the second answers the first's row.
        """
        outcomes = await gatherResults(
            [
                self.store.storeMessage(newMessage("m0")),
                self.store.storeMessage(newMessage("m1", content="one")),
                self.store.storeMessage(newMessage("m1", content="two")),
            ]
        )
        self.assertEqual([o.created for o in outcomes], [True, True, False])
        self.assertEqual(outcomes[2].message, outcomes[1].message)
        page = await self.store.history("alice", "bob", None, 10, None, None)
        self.assertEqual([m.content for m in page.messages], ["hello", "one"])

    async def test_seqIncreases(self) -> None:
        """
        Every stored message gets a larger seq than the one before, whatever
        the conversation.
        """
        stored = await self.storeAll(
            newMessage("a"),
            newMessage("b", fromId="carol", toId="dave"),
            newMessage("c", fromId="bob", toId="alice"),
        )
        seqs = [message.seq for message in stored]
        self.assertEqual(seqs, sorted(set(seqs)))

    async def test_pendingFor(self) -> None:
        """
        C{pendingFor} lists the undelivered messages to a user, seq ascending,
        at most C{limit}; delivered ones and other users' are left out.
        """
        stored = await self.storeAll(
            newMessage("1"),
            newMessage("2", fromId="carol"),
            newMessage("3", toId="carol"),
            newMessage("4"),
            newMessage("5", fromId="dave"),
        )
        await self.store.markDelivered([stored[0].seq])
        pending = await self.store.pendingFor("bob", 10)
        self.assertEqual(ids(pending), ["2", "4", "5"])
        self.assertFalse(any(message.delivered for message in pending))
        self.assertEqual(ids(await self.store.pendingFor("bob", 2)), ["2", "4"])
        self.assertEqual(await self.store.pendingFor("nobody", 10), [])

    async def test_pendingForBytes(self) -> None:
        """
        With C{maxBytes}, C{pendingFor} stops at the message whose weight
        takes the total past it (that one included, so the caller knows
        more may wait), across the pages it reads; with C{after}, it starts
        past that seq.
        """
        heavy = "x" * 800  # weighs 1,000 with MESSAGE_OVERHEAD
        count = READ_PAGE + 8
        stored = await self.storeAll(*(newMessage(str(i), content=heavy) for i in range(count)))
        self.assertEqual(messageWeight(stored[0]), 1000)
        self.assertEqual(ids(await self.store.pendingFor("bob", 200, 2500)), ["0", "1", "2"])
        self.assertEqual(ids(await self.store.pendingFor("bob", 200, 3000)), ["0", "1", "2", "3"])
        self.assertEqual(ids(await self.store.pendingFor("bob", 2, 2500)), ["0", "1"])
        self.assertEqual(ids(await self.store.pendingFor("bob", 200, 10)), ["0"])
        # (past the first page read)
        many = await self.store.pendingFor("bob", 200, (READ_PAGE + 2) * 1000 - 1)
        self.assertEqual(ids(many), [str(i) for i in range(READ_PAGE + 2)])
        self.assertEqual(ids(await self.store.pendingFor("bob", 200)), [str(i) for i in range(count)])
        after = await self.store.pendingFor("bob", 200, 1500, after=stored[4].seq)
        self.assertEqual(ids(after), ["5", "6"])
        await self.store.markDelivered([stored[5].seq])
        self.assertEqual(ids(await self.store.pendingFor("bob", 200, 1500, after=stored[4].seq)), ["6", "7"])

    async def test_requeue(self) -> None:
        """
        C{requeue} puts delivered messages to that user back in the
        offline queue, in seq order; not someone else's.
        """
        stored = await self.storeAll(*(newMessage(str(i)) for i in range(3)))
        await self.store.markDelivered([m.seq for m in stored])
        self.assertEqual(await self.store.pendingFor("bob", 10), [])
        await self.store.requeue("bob", [stored[2].seq, stored[0].seq])
        await self.store.requeue("alice", [stored[1].seq])
        self.assertEqual(ids(await self.store.pendingFor("bob", 10)), ["0", "2"])

    async def test_markDelivered(self) -> None:
        """
        C{markDelivered} marks exactly the seqs given (unknown seqs are
        ignored); marking twice is harmless.
        """
        stored = await self.storeAll(newMessage("1"), newMessage("2"), newMessage("3"))
        await self.store.markDelivered([stored[0].seq, stored[2].seq, 10**9])
        await self.store.markDelivered([stored[0].seq])
        page = await self.store.history("alice", "bob", None, 10, None, None)
        self.assertEqual(
            [message.delivered for message in page.messages], [True, False, True]
        )
        self.assertEqual(ids(await self.store.pendingFor("bob", 10)), ["2"])

    async def conversation(self, count: int) -> list[StoredMessage]:
        """
        Store C{count} messages alternating between alice and bob (ids
        C{"0"}, C{"1"}, ...), with a message between others after each.
        """
        stored = []
        for n in range(count):
            if n % 2:
                message = newMessage(str(n), fromId="bob", toId="alice")
            else:
                message = newMessage(str(n))
            outcome = await self.store.storeMessage(message)
            stored.append(outcome.message)
            await self.store.storeMessage(
                newMessage(f"x{n}", fromId="alice", toId="carol")
            )
        return stored

    async def test_historyLatest(self) -> None:
        """
        Without C{before} or C{after}, C{history} gives the latest C{limit}
        messages of the conversation, both directions, oldest first.
        """
        await self.conversation(5)
        page = await self.store.history("alice", "bob", None, 3, None, None)
        self.assertEqual(ids(page.messages), ["2", "3", "4"])
        self.assertTrue(page.hasMore)
        page = await self.store.history("bob", "alice", None, 5, None, None)
        self.assertEqual(ids(page.messages), ["0", "1", "2", "3", "4"])
        self.assertFalse(page.hasMore)
        page = await self.store.history("bob", "carol", None, 5, None, None)
        self.assertEqual(page.messages, [])
        self.assertFalse(page.hasMore)

    async def test_historyBefore(self) -> None:
        """
        With C{before}, C{history} pages back: the latest C{limit} older than
        it, oldest first, C{hasMore} while older ones remain.
        """
        stored = await self.conversation(7)
        page = await self.store.history("alice", "bob", None, 3, stored[5].seq, None)
        self.assertEqual(ids(page.messages), ["2", "3", "4"])
        self.assertTrue(page.hasMore)
        page = await self.store.history(
            "alice", "bob", None, 3, page.messages[0].seq, None
        )
        self.assertEqual(ids(page.messages), ["0", "1"])
        self.assertFalse(page.hasMore)
        page = await self.store.history("alice", "bob", None, 2, stored[2].seq, None)
        self.assertEqual(ids(page.messages), ["0", "1"])
        self.assertFalse(page.hasMore)

    async def test_historyAfter(self) -> None:
        """
        With C{after}, C{history} catches up: the earliest C{limit} newer than
        it, oldest first, C{hasMore} while newer ones remain.
        """
        stored = await self.conversation(7)
        page = await self.store.history("bob", "alice", None, 3, None, stored[1].seq)
        self.assertEqual(ids(page.messages), ["2", "3", "4"])
        self.assertTrue(page.hasMore)
        page = await self.store.history(
            "bob", "alice", None, 3, None, page.messages[-1].seq
        )
        self.assertEqual(ids(page.messages), ["5", "6"])
        self.assertFalse(page.hasMore)
        page = await self.store.history("bob", "alice", None, 3, None, stored[6].seq)
        self.assertEqual(page.messages, [])
        self.assertFalse(page.hasMore)

    async def test_historyBetween(self) -> None:
        """
        With both C{before} and C{after}, C{history} gives the earliest
        C{limit} strictly between them.
        """
        stored = await self.conversation(7)
        page = await self.store.history(
            "bob", "alice", None, 2, stored[5].seq, stored[1].seq
        )
        self.assertEqual(ids(page.messages), ["2", "3"])
        self.assertTrue(page.hasMore)
        page = await self.store.history(
            "bob", "alice", None, 5, stored[5].seq, stored[1].seq
        )
        self.assertEqual(ids(page.messages), ["2", "3", "4"])
        self.assertFalse(page.hasMore)

    async def test_historyTopic(self) -> None:
        """
        With a C{topic}, C{history} lists only that topic's messages, and
        pages by them.
        """
        await self.storeAll(
            newMessage("1", topic="deal"),
            newMessage("2"),
            newMessage("3", topic="other"),
            newMessage("4", fromId="bob", toId="alice", topic="deal"),
            newMessage("5", topic="deal"),
        )
        page = await self.store.history("alice", "bob", "deal", 2, None, None)
        self.assertEqual(ids(page.messages), ["4", "5"])
        self.assertTrue(page.hasMore)
        page = await self.store.history(
            "alice", "bob", "deal", 2, page.messages[0].seq, None
        )
        self.assertEqual(ids(page.messages), ["1"])
        self.assertFalse(page.hasMore)
        page = await self.store.history("alice", "bob", None, 10, None, None)
        self.assertEqual(ids(page.messages), ["1", "2", "3", "4", "5"])

    async def test_markReadUpToSeq(self) -> None:
        """
        C{markRead} with C{upToSeq} moves the reader's cursor in the
        conversation with C{friendId} and returns the messages from that
        friend it newly covers, marked delivered; they are not returned
        again, and another sender's are not touched.
        """
        stored = await self.storeAll(
            newMessage("1"),
            newMessage("2", fromId="carol"),
            newMessage("3"),
            newMessage("4", fromId="bob", toId="alice"),
            newMessage("5"),
        )
        read = await self.store.markRead("bob", "alice", upToSeq=stored[3].seq)
        self.assertEqual(ids(read), ["1", "3"])
        self.assertTrue(all(m.delivered for m in read))
        conversation = directConversation("alice", "bob")
        self.assertEqual(await self.store.readCursors(conversation), {"bob": stored[3].seq})
        again = await self.store.markRead("bob", "alice", upToSeq=stored[4].seq)
        self.assertEqual(ids(again), ["5"])
        self.assertEqual(await self.store.markRead("bob", "alice", upToSeq=stored[4].seq), [])
        self.assertEqual(ids(await self.store.pendingFor("bob", 10)), ["2"])

    async def test_markReadNotPastTheEnd(self) -> None:
        """
        A cursor never moves past the conversation's latest message: an
        C{upToSeq} from the future does not read messages sent later.
        """
        await self.storeAll(newMessage("1"))
        self.assertEqual(ids(await self.store.markRead("bob", "alice", upToSeq=10**12)), ["1"])
        later = await self.storeAll(newMessage("2"))
        self.assertEqual(ids(await self.store.markRead("bob", "alice", upToSeq=later[0].seq)), ["2"])

    async def test_markReadMessageIds(self) -> None:
        """
        C{markRead} with C{messageIds} finds the friend's messages to the
        reader by those ids and moves the cursor to the latest: the earlier
        ones of the conversation are read with it. Ids of other senders,
        of the reader's own messages or unknown are ignored.
        """
        stored = await self.storeAll(
            newMessage("1"),
            newMessage("2", fromId="carol"),
            newMessage("3"),
            newMessage("1", fromId="bob", toId="alice"),
            newMessage("4"),
        )
        self.assertEqual(await self.store.markRead("bob", "alice", messageIds=["2", "nope"]), [])
        read = await self.store.markRead("bob", "alice", messageIds=["3", "nope"])
        self.assertEqual([(m.fromId, m.id) for m in read], [("alice", "1"), ("alice", "3")])
        self.assertEqual(await self.store.markRead("bob", "alice", messageIds=["1"]), [])
        conversation = directConversation("alice", "bob")
        self.assertEqual(await self.store.readCursors(conversation), {"bob": stored[2].seq})
        self.assertEqual([m.id for m in await self.store.markRead("alice", "bob", messageIds=["1"])], ["1"])
        self.assertEqual([m.id for m in await self.store.markRead("bob", "carol", messageIds=["2"])], ["2"])
        self.assertEqual(
            await self.store.readCursors(conversation), {"bob": stored[2].seq, "alice": stored[3].seq}
        )

    async def test_markReadBounded(self) -> None:
        """
        One C{markRead} covers at most C{MAX_READ_MESSAGES} messages (ids
        beyond one SQL C{IN} list resolved); the cursor stops at the last,
        and the next call covers the rest.
        """
        await gatherResults([self.store.storeMessage(newMessage(str(n))) for n in range(1200)])
        wanted = [str(n) for n in range(0, 1200, 2)]
        wanted += [f"missing{n}" for n in range(700)]
        read = await self.store.markRead("bob", "alice", messageIds=wanted)
        self.assertEqual(len(read), MAX_READ_MESSAGES)
        self.assertEqual([m.seq for m in read], sorted(m.seq for m in read))
        rest = await self.store.markRead("bob", "alice", messageIds=wanted)
        self.assertEqual(len(rest), 1199 - MAX_READ_MESSAGES)
        self.assertTrue(rest[0].seq > read[-1].seq)
        self.assertEqual(rest[-1].id, "1198")
        self.assertEqual(await self.store.markRead("bob", "alice", messageIds=wanted), [])

    async def test_markReadNeedsATarget(self) -> None:
        """
        C{markRead} with neither C{upToSeq} nor C{messageIds} fails with
        L{ValueError}.
        """
        await self.assertFailure(self.store.markRead("bob", "alice"), ValueError)

    async def test_ping(self) -> None:
        """
        C{ping} succeeds on an open store.
        """
        self.assertIsNone(await self.store.ping())

    async def test_fileRecords(self) -> None:
        """
        A recorded file's record is found by its id; an unknown id gives
        L{None}.
        """
        record = FileRecord("f" * 32, "alice", "bob", "a.pdf", None, 3, 1000)
        await self.store.recordFile(record)
        self.assertEqual(await self.store.fileRecord("f" * 32), record)
        self.assertIsNone(await self.store.fileRecord("g" * 32))

    async def test_releaseCaches(self) -> None:
        """
        C{releaseCaches} fires once done, and the store goes on as before:
        what it holds is read again, new writes are stored.
        """
        stored = await self.storeAll(*[newMessage(str(n)) for n in range(30)])
        self.assertIsNone(await self.store.releaseCaches())
        page = await self.store.history("alice", "bob", None, 50, None, None)
        self.assertEqual([m.seq for m in page.messages], [m.seq for m in stored])
        outcome = await self.store.storeMessage(newMessage("after"))
        self.assertTrue(outcome.created)

    async def test_closeDrainsWrites(self) -> None:
        """
        C{close} finishes the writes requested before it, and later writes
        fail with L{StoreClosedError}.
        """
        pending = [self.store.storeMessage(newMessage(str(n))) for n in range(20)]
        pending.append(self.store.markDelivered([1]))
        closing = self.store.close()
        late = self.store.storeMessage(newMessage("late"))
        await closing
        outcomes = await gatherResults(pending)
        self.assertTrue(all(outcome.created for outcome in outcomes[:20]))
        await self.assertFailure(late, StoreClosedError)
        await self.assertFailure(self.store.markDelivered([1]), StoreClosedError)


class MemoryMessageStoreTests(MessageStoreTestsMixin, TestCase):
    """
    The store tests against L{MemoryMessageStore}.
    """

    def makeStore(self) -> MemoryMessageStore:
        """
        A memory store.
        """
        return MemoryMessageStore()

    def test_firesSynchronously(self) -> None:
        """
        The fake's L{Deferred}s have fired when they are returned, and it
        needs no C{open}.
        """
        store = MemoryMessageStore()
        d = store.storeMessage(newMessage("1"))
        self.assertTrue(self.successResultOf(d).created)


class SQLMessageStoreTestsMixin(MessageStoreTestsMixin):
    """
    The store tests against L{SQLMessageStore} on one engine (mixed with
    L{SQLiteStores} or L{PostgresStores}), plus tests of what only a
    database does: group commit, durability across reopen, schema versions.
    """

    newStore: Any
    rows: Any
    integrityError: Any
    engineName: str
    successResultOf: Any
    assertIsNotNone: Any

    def makeStore(self) -> SQLMessageStore:
        """
        A store on a database of the test's own.
        """
        return self.newStore()

    async def reopen(self) -> SQLMessageStore:
        """
        Close the store and open a new one on the same database.
        """
        await self.store.close()
        store = self.newStore()
        await store.open()
        self.addCleanup(store.close)
        return store

    async def test_groupCommit(self) -> None:
        """
        Writes issued while a transaction is in flight share the next
        transaction: 50 stores and a markDelivered in one reactor turn cost at
        most two transactions, and every one is stored.
        """
        before = self.store.transactionCount
        writes: list[Deferred[Any]] = [
            self.store.storeMessage(newMessage(str(n))) for n in range(50)
        ]
        writes.append(self.store.markDelivered([1, 2, 3]))
        results = await gatherResults(writes)
        self.assertTrue(self.store.transactionCount - before <= 2)
        self.assertEqual(len({outcome.message.seq for outcome in results[:50]}), 50)
        page = await self.store.history("alice", "bob", None, 100, None, None)
        self.assertEqual(len(page.messages), 50)
        self.assertEqual(len(await self.store.pendingFor("bob", 100)), 47)

    async def test_largeBatchSeqsMatchRows(self) -> None:
        """
        A batch larger than one multi-row INSERT, with duplicates of stored
        and of same-batch messages, gets the seqs the rows really have, in
        order, and each duplicate the original row.
        """
        from crm_im.storage.store import INSERT_CHUNK

        first = await self.store.storeMessage(newMessage("old"))
        count = INSERT_CHUNK * 2 + 17
        writes: list[Deferred[Any]] = [self.store.storeMessage(newMessage(f"m{n}", content=f"c{n}")) for n in range(count)]
        writes.append(self.store.storeMessage(newMessage("old")))
        writes.append(self.store.storeMessage(newMessage("m5", content="again")))
        results = await gatherResults(writes)
        rows = dict(self.rows("SELECT message_id, seq FROM messages"))
        for n, outcome in enumerate(results[:count]):
            self.assertTrue(outcome.created)
            self.assertEqual(outcome.message.seq, rows[f"m{n}"])
            self.assertEqual(outcome.message.content, f"c{n}")
        seqs = [outcome.message.seq for outcome in results[:count]]
        self.assertEqual(seqs, sorted(seqs))
        self.assertEqual(results[count].created, False)
        self.assertEqual(results[count].message.seq, first.message.seq)
        self.assertEqual(results[count + 1].created, False)
        self.assertEqual(results[count + 1].message.seq, rows["m5"])
        self.assertEqual(results[count + 1].message.content, "c5")

    async def test_fewStatementShapes(self) -> None:
        """
        Batches of every size from 1 to 40 messages, each with a resend
        of the batch before's first message (so that the look-up of stored
        keys runs too) and then marked delivered, run at most seven texts
        (lengths 1 to 64, powers of two) of each variable-length statement,
        so that the database prepares and keeps a bounded number of them
        (L{paddedChunks}, L{binaryChunks}); every message is stored once
        and marked.
        """
        from crm_im.storage import database

        texts: set[str] = set()
        execute = database.Transaction.execute

        def recording(txn: database.Transaction, sql: str, args: Any = ()) -> None:
            texts.add(sql)
            execute(txn, sql, args)

        self.patch(database.Transaction, "execute", recording)
        total = 0
        for size in range(1, 41):
            resend = [self.store.storeMessage(newMessage(f"b{size - 1}-0"))] if size > 1 else []
            results = await gatherResults(
                [self.store.storeMessage(newMessage(f"b{size}-{n}")) for n in range(size)] + resend
            )
            self.assertEqual(sum(outcome.created for outcome in results), size)
            await self.store.markDelivered([outcome.message.seq for outcome in results])
            total += size
        for fragment in ("INSERT INTO messages", "UPDATE messages SET delivered", "WITH k(f, m)"):
            shapes = [text for text in texts if fragment in text]
            self.assertTrue(1 <= len(shapes) <= 7, (fragment, len(shapes)))
        self.assertEqual(self.rows("SELECT COUNT(*), SUM(delivered) FROM messages"), [(total, total)])

    async def test_badRowInBatchFailsAlone(self) -> None:
        """
        A message the database refuses (here a C{NOT NULL} column left
        empty) fails alone; the rest of its multi-row INSERT is stored.
        """
        writes: list[Deferred[Any]] = [
            self.store.storeMessage(newMessage("a")),
            self.store.storeMessage(newMessage("b", content=None)),  # type: ignore[arg-type]
            self.store.storeMessage(newMessage("c")),
        ]
        await self.assertFailure(writes.pop(1), self.integrityError)
        for write in writes:
            await write
        page = await self.store.history("alice", "bob", None, 10, None, None)
        self.assertEqual(ids(page.messages), ["a", "c"])

    async def test_badRowInLaterStatement(self) -> None:
        """
        A batch inserted with several statements (here 2 rows and 1) whose
        later statement fails undoes the earlier ones too: their messages
        are then stored as new (delivered, receipted as such), not taken
        for resends of what the failed attempt had left behind.
        """
        busy = self.store.storeMessage(newMessage("first"))
        writes: list[Deferred[Any]] = [
            self.store.storeMessage(newMessage("a")),
            self.store.storeMessage(newMessage("b")),
            self.store.storeMessage(newMessage("bad", content=None)),  # type: ignore[arg-type]
        ]
        await busy
        await self.assertFailure(writes.pop(), self.integrityError)
        outcomes = [await write for write in writes]
        self.assertEqual([outcome.created for outcome in outcomes], [True, True])
        page = await self.store.history("alice", "bob", None, 10, None, None)
        self.assertEqual(ids(page.messages), ["first", "a", "b"])

    async def test_resendInBatch(self) -> None:
        """
        A batch holding a resend (its key stored by an earlier batch)
        stores the others, one of them twice in the batch, as new and
        returns the stored message for the resend.
        """
        stored = await self.store.storeMessage(newMessage("old", content="before"))
        busy = self.store.storeMessage(newMessage("first"))
        writes = [
            self.store.storeMessage(newMessage("x")),
            self.store.storeMessage(newMessage("old", content="again")),
            self.store.storeMessage(newMessage("y")),
            self.store.storeMessage(newMessage("x")),
        ]
        await busy
        outcomes = [await write for write in writes]
        self.assertEqual([outcome.created for outcome in outcomes], [True, False, True, False])
        self.assertEqual(outcomes[1].message.seq, stored.message.seq)
        self.assertEqual(outcomes[1].message.content, "before")
        self.assertEqual(outcomes[3].message.seq, outcomes[0].message.seq)
        page = await self.store.history("alice", "bob", None, 10, None, None)
        self.assertEqual(ids(page.messages), ["old", "first", "x", "y"])

    async def test_deliveredMarksRideAlong(self) -> None:
        """
        Delivered marks alone start no transaction: they wait for the next
        write (or lazyDelay) and share its transaction.
        """
        stored = await self.store.storeMessage(newMessage("1"))
        before = self.store.transactionCount
        marked = self.store.markDelivered([stored.message.seq])
        self.assertEqual(self.store.transactionCount, before)
        await self.store.storeMessage(newMessage("2"))
        await marked
        self.assertEqual(self.store.transactionCount, before + 1)
        self.assertEqual(ids(await self.store.pendingFor("bob", 10)), ["2"])

    async def test_deliveredMarksAloneCommitSoon(self) -> None:
        """
        With no other write, delivered marks commit after lazyDelay.
        """
        clock = self.storeClock()
        stored = await self.store.storeMessage(newMessage("1"))
        await self.store.ping()
        before = self.store.transactionCount
        marked = self.store.markDelivered([stored.message.seq])
        clock.advance(self.store.lazyDelay - 0.001)
        self.assertEqual(self.store.transactionCount, before)
        clock.advance(0.001)
        await marked
        self.assertEqual(await self.store.pendingFor("bob", 10), [])

    def storeClock(self) -> Clock:
        """
        Give the store's own timers (lazy marks, commit interval) a
        L{Clock}; the database thread still reports through the reactor.
        """
        clock = Clock()
        self.store.database.clock = clock
        return clock

    async def test_commitInterval(self) -> None:
        """
        Writes arriving within C{commitInterval} of a transaction's start
        wait and share the next transaction, instead of each starting one
        as soon as the store is idle.
        """
        clock = self.storeClock()
        self.store.commitInterval = 0.2
        self.store.fullIntervalRate = 0  # the whole interval at any rate
        await self.store.storeMessage(newMessage("1"))
        # Out of the commit's callbacks (the store is idle again).
        await self.store.ping()
        before = self.store.transactionCount
        # The first of these would start a transaction of its own at once
        # (nothing is in flight) and the other two share a second.
        writes = [self.store.storeMessage(newMessage(str(n))) for n in range(2, 5)]
        clock.advance(0.19)
        self.assertEqual(self.store.transactionCount, before)
        clock.advance(0.01)
        self.assertEqual(self.store.transactionCount, before + 1)
        for write in writes:
            await write
        self.assertEqual(self.store.transactionCount, before + 1)

    async def test_commitIntervalFollowsTheRate(self) -> None:
        """
        Below C{fullIntervalRate} the commit interval shrinks with the
        write rate: writes at a tenth of it each start a transaction at
        once; at twice it they share transactions about C{commitInterval}
        apart; after a quiet spell a write commits at once again.
        """
        clock = self.storeClock()
        self.store.commitInterval = 0.2
        self.store.fullIntervalRate = 100.0
        self.store.rateWindow = 1.0
        n = 0
        for _ in range(20):  # 10 writes/s for 2 s
            before = self.store.transactionCount
            n += 1
            write = self.store.storeMessage(newMessage(str(n)))
            self.assertEqual(self.store.transactionCount, before + 1)
            await write
            await self.store.ping()  # out of the commit's callbacks
            clock.advance(0.1)
        before = self.store.transactionCount
        writes = []
        for _ in range(400):  # 200 writes/s for 2 s
            n += 1
            writes.append(self.store.storeMessage(newMessage(str(n))))
            clock.advance(0.005)
            await self.store.ping()  # the transaction started, if any, is done
        # 400 write transactions without the interval, 10 with the whole
        # of it (the 400 pings are transactions too)
        self.assertLess(self.store.transactionCount - before - 400, 60)
        # (whether a given write waited for the interval or for the
        # transaction in flight depends on the database thread's timing;
        # the count above is what the interval decides)
        clock.advance(0.2)
        for write in writes:
            await write
        await self.store.ping()
        clock.advance(3)  # a quiet spell
        before = self.store.transactionCount
        n += 1
        write = self.store.storeMessage(newMessage(str(n)))
        self.assertEqual(self.store.transactionCount, before + 1)
        await write

    async def test_deliveredMarksDueWaitOnlyForInterval(self) -> None:
        """
        Delivered marks whose lazy delay ended while the commit interval
        held them back commit when the interval ends, not a lazy delay
        later.
        """
        clock = self.storeClock()
        self.store.lazyDelay = 0.01
        self.store.commitInterval = 0.05
        self.store.fullIntervalRate = 0  # the whole interval at any rate
        stored = await self.store.storeMessage(newMessage("1"))
        marked = self.store.markDelivered([stored.message.seq])
        # A read queued behind the commit: when it answers, the commit's
        # callbacks are done and the marks' lazy call is scheduled.
        await self.store.ping()
        self.assertIsNotNone(self.store._lazyCall)
        self.store.lazyDelay = 1000.0
        before = self.store.transactionCount
        clock.advance(0.01)
        self.assertEqual(self.store.transactionCount, before)
        clock.advance(0.04)
        self.assertEqual(self.store.transactionCount, before + 1)
        await marked
        self.assertEqual(await self.store.pendingFor("bob", 10), [])

    async def test_writeFiresAfterCommit(self) -> None:
        """
        When a store's L{Deferred} fires, its transaction has committed: a
        second connection to the database sees the message.
        """
        await self.store.storeMessage(newMessage("1"))
        self.assertEqual(self.rows("SELECT message_id FROM messages"), [("1",)])

    async def test_failingWriteFailsAlone(self) -> None:
        """
        A write that fails inside a batch fails alone: the other writes of
        the batch are committed.
        """
        record = FileRecord("f" * 32, "alice", "bob", "a.pdf", None, 3, 1000)
        writes: list[Deferred[Any]] = [
            self.store.storeMessage(newMessage("0")),
            self.store.storeMessage(newMessage("1")),
            self.store.recordFile(record),
            self.store.recordFile(record),
            self.store.storeMessage(newMessage("2")),
        ]
        before = self.store.transactionCount
        await self.assertFailure(writes.pop(3), self.integrityError)
        for write in writes:
            await write
        self.assertTrue(self.store.transactionCount - before <= 1)
        page = await self.store.history("alice", "bob", None, 10, None, None)
        self.assertEqual(ids(page.messages), ["0", "1", "2"])
        self.assertEqual(await self.store.fileRecord("f" * 32), record)

    async def test_reopenKeepsEverything(self) -> None:
        """
        Closing and reopening the database keeps messages, delivered and read
        state, and file records; the schema is not applied again and seqs keep
        increasing.
        """
        self.assertEqual(
            self.store.database.schemaApplied, [version for version, _, _ in schemaFiles(self.engineName)]
        )
        stored = await self.storeAll(newMessage("1"), newMessage("2"), newMessage("3"))
        await self.store.markDelivered([stored[0].seq])
        await self.store.markRead("bob", "alice", messageIds=["2"])
        record = FileRecord("f" * 32, "alice", "bob", "a.pdf", "application/pdf", 3, 9)
        await self.store.recordFile(record)
        store = await self.reopen()
        self.assertEqual(store.database.schemaApplied, [])
        page = await store.history("alice", "bob", None, 10, None, None)
        self.assertEqual(
            [(m.id, m.delivered) for m in page.messages],
            [("1", True), ("2", True), ("3", False)],
        )
        self.assertEqual(await store.readCursors(directConversation("alice", "bob")), {"bob": stored[1].seq})
        self.assertEqual(await store.fileRecord("f" * 32), record)
        outcome = await store.storeMessage(newMessage("4"))
        self.assertTrue(outcome.message.seq > stored[2].seq)
        again = await store.storeMessage(newMessage("1"))
        self.assertFalse(again.created)

    async def test_schemaTooNew(self) -> None:
        """
        A database upgraded by a newer crm_im (a schema version this code
        does not ship) is refused at open, and left as it is.
        """

        def future_txn(txn: Transaction) -> None:
            txn.execute("INSERT INTO schema_version (version, name) VALUES (?, ?)", (999, "future"))

        await self.store.database.runInteraction("test", future_txn)
        await self.store.close()
        store = self.newStore()
        self.addCleanup(store.close)
        await self.assertFailure(store.open(), SchemaTooNewError)
        self.assertEqual(self.rows("SELECT name FROM schema_version WHERE version = ?", (999,)), [("future",)])

    async def test_schemaVersionRecorded(self) -> None:
        """
        Applying the schema again on an up-to-date database does nothing;
        C{schema_version} lists each version once.
        """

        def apply_txn(txn: Transaction) -> tuple[list[int], list[tuple[Any, ...]]]:
            applied = prepareSchema_txn(txn, schemaFiles(txn.engine.name))
            txn.execute("SELECT version, name FROM schema_version ORDER BY version")
            return applied, txn.fetchall()

        applied, rows = await self.store.database.runInteraction("test", apply_txn)
        self.assertEqual(applied, [])
        self.assertEqual(rows, [(version, name) for version, name, _ in schemaFiles(self.engineName)])
        self.assertEqual(rows[:4], [(1, "messages"), (2, "files"), (3, "partial_topic_index"), (4, "conversations")])

    async def test_notOpen(self) -> None:
        """
        A store that was never opened refuses reads and writes.
        """
        store = self.newStore()
        await self.assertFailure(store.storeMessage(newMessage("1")), StoreClosedError)
        await self.assertFailure(store.ping(), StoreClosedError)

    async def test_pingAfterClose(self) -> None:
        """
        C{ping} fails once the store is closed; closing twice is harmless.
        """
        await self.store.close()
        await self.store.close()
        await self.assertFailure(self.store.ping(), StoreClosedError)


class SQLiteMessageStoreTests(SQLiteStores, SQLMessageStoreTestsMixin, TestCase):
    """
    The store tests against L{SQLiteMessageStore} in a temporary file, plus
    what only SQLite has: pragmas, query plans, upgrades of old files.
    """

    links = False

    async def test_releaseCachesFreesPageCache(self) -> None:
        """
        C{releaseCaches} empties SQLite's page cache, which the writes had
        filled (its C{sqlite3_memory_used()}, in the library Python's
        C{sqlite3} runs on).
        """
        import _sqlite3

        try:
            memoryUsed = ctypes.CDLL(_sqlite3.__file__).sqlite3_memory_used
        except (OSError, AttributeError):
            raise self.skipTest("this Python's SQLite does not export sqlite3_memory_used")
        memoryUsed.restype = ctypes.c_int64
        await gatherResults([self.store.storeMessage(newMessage(str(n), content="x" * 500)) for n in range(2000)])
        before = memoryUsed()
        await self.store.releaseCaches()
        after = memoryUsed()
        # 2,000 rows of ~600 bytes and their index entries: over a MiB of
        # pages, nearly all of it cached.
        self.assertGreater(before - after, 512 * 1024)

    async def test_upgradeFromVersion2(self) -> None:
        """
        A database made by version 2 of the schema gets version 3 on the
        next start: the topic index becomes partial and its messages stay.
        """
        path = self.mktemp()
        with sqliteAtVersion(path, 2) as old:
            old.execute(
                "INSERT INTO messages (message_id, from_id, from_name, to_id, conversation, topic, type,"
                " content, server_timestamp) VALUES ('1', 'alice', 'A', 'bob', ?, 'deal', 'text', 'hi', 1)",
                (conversationKey("alice", "bob"),),
            )
        old.close()
        store = SQLiteMessageStore(path, reactor)
        await store.open()
        self.addCleanup(store.close)
        self.assertEqual(store.database.schemaApplied, [version for version, _, _ in schemaFiles() if version > 2])
        page = await store.history("alice", "bob", "deal", 10, None, None)
        self.assertEqual([m.id for m in page.messages], ["1"])

    async def test_pragmas(self) -> None:
        """
        The connection uses WAL and the C{synchronous} mode asked for (FULL by
        default).
        """

        def pragmas_txn(txn: Transaction) -> tuple[Any, ...]:
            txn.execute("PRAGMA journal_mode")
            journal = txn.fetchall()[0][0]
            txn.execute("PRAGMA synchronous")
            synchronous = txn.fetchall()[0][0]
            txn.execute("PRAGMA temp_store")
            tempStore = txn.fetchall()[0][0]
            txn.execute("PRAGMA cache_size")
            cacheSize = txn.fetchall()[0][0]
            txn.execute("PRAGMA wal_autocheckpoint")
            return journal, synchronous, tempStore, cacheSize, txn.fetchall()[0][0]

        result = await self.store.database.runInteraction("test", pragmas_txn)
        # temp_store 2 is MEMORY: statement journals stay out of files.
        self.assertEqual(result, ("wal", 2, 2, -65536, 10000))

    async def test_historyUsesIndexes(self) -> None:
        """
        The history queries are served by the conversation indexes, not by a
        scan of the table.
        """

        def plan_txn(txn: Transaction, sql: str, args: Sequence[Any]) -> str:
            txn.execute("EXPLAIN QUERY PLAN " + sql, args)
            return " | ".join(str(row[-1]) for row in txn.fetchall())

        key = conversationKey("alice", "bob")
        plain = await self.store.database.runInteraction(
            "test",
            plan_txn,
            "SELECT seq FROM messages WHERE conversation = ? AND seq < ?"
            " ORDER BY seq DESC LIMIT ?",
            (key, 10, 5),
        )
        self.assertIn("messages_conversation_seq", plain)
        topic = await self.store.database.runInteraction(
            "test",
            plan_txn,
            "SELECT seq FROM messages WHERE conversation = ? AND topic = ?"
            " AND seq > ? ORDER BY seq ASC LIMIT ?",
            (key, "deal", 10, 5),
        )
        self.assertIn("messages_conversation_topic_seq", topic)
        newest = await self.store.database.runInteraction(
            "test",
            plan_txn,
            "SELECT seq FROM messages WHERE conversation = ? AND topic = ?"
            " ORDER BY seq DESC LIMIT ?",
            (key, "deal", 5),
        )
        self.assertIn("messages_conversation_topic_seq", newest)

    async def test_topicIndexIsPartial(self) -> None:
        """
        Messages without a topic stay out of the history-by-topic index: it
        is partial (each index costs every insert a page at commit), and a
        database made before version 3 has it rebuilt that way.
        """

        def sql_txn(txn: Transaction) -> str:
            txn.execute("SELECT sql FROM sqlite_master WHERE name = 'messages_conversation_topic_seq'")
            return str(txn.fetchall()[0][0])

        sql = await self.store.database.runInteraction("test", sql_txn)
        self.assertIn("WHERE topic IS NOT NULL", sql)
        await self.store.storeMessage(newMessage("1"))
        await self.store.storeMessage(newMessage("2", topic="deal"))
        page = await self.store.history("alice", "bob", "deal", 10, None, None)
        self.assertEqual([m.id for m in page.messages], ["2"])


    async def test_upgradeReadFlagsToCursors(self) -> None:
        """
        A database of schema version 11, with 1:1 read state as a C{read_at}
        per message, gets version 12 on the next start: each reader's
        highest read seq in each conversation becomes its read cursor, the
        two per-message read indexes are gone, and reading goes on from
        the cursor.
        """
        path = self.mktemp()
        with sqliteAtVersion(path, 11) as old:
            insert = (
                "INSERT INTO messages (message_id, from_id, from_name, to_id, conversation, type,"
                " content, server_timestamp, delivered, read_at) VALUES (?, ?, 'X', ?, ?, 'text', 'hi', 1, 1, ?)"
            )
            ab, ac = conversationKey("alice", "bob"), conversationKey("alice", "carol")
            old.execute(insert, ("1", "alice", "bob", ab, 5))
            old.execute(insert, ("2", "alice", "bob", ab, 6))
            old.execute(insert, ("3", "alice", "bob", ab, None))
            old.execute(insert, ("4", "bob", "alice", ab, None))
            old.execute(insert, ("5", "carol", "alice", ac, 7))
            old.execute(insert, ("6", "alice", "", groupConversation("g1"), 1))
        old.close()
        store = SQLiteMessageStore(path, reactor)
        await store.open()
        self.addCleanup(store.close)
        self.assertEqual(store.database.schemaApplied, [v for v, _, _ in schemaFiles()[11:]])
        self.assertEqual(await store.readCursors(ab), {"bob": 2})
        self.assertEqual(await store.readCursors(ac), {"alice": 5})
        self.assertEqual(ids(await store.markRead("bob", "alice", upToSeq=10)), ["3"])

        def indexes_txn(txn: Transaction) -> dict[str, str]:
            txn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'messages'")
            return {str(row[0]): str(row[1]) for row in txn.fetchall()}

        indexes = await store.database.runInteraction("test", indexes_txn)
        self.assertNotIn("messages_unread_from", indexes)
        self.assertNotIn("messages_recipient_message_id", indexes)
        self.assertIn("WHERE to_id = ''", indexes["messages_shared_message_id"])

    async def test_readUsesIndexes(self) -> None:
        """
        What C{markRead} and C{findSharedMessages} ask is served by an
        index: the sender's ids, the conversation's seqs, the shared
        messages' ids; never a scan of the table.
        """

        def plan_txn(txn: Transaction, sql: str, args: Sequence[Any]) -> str:
            txn.execute("EXPLAIN QUERY PLAN " + sql, args)
            return " | ".join(str(row[-1]) for row in txn.fetchall())

        key = conversationKey("alice", "bob")
        plans = {
            "messages_sender_message_id": (
                "SELECT seq FROM messages WHERE from_id = ? AND message_id IN (?, ?) AND to_id = ?",
                ("alice", "1", "2", "bob"),
            ),
            "messages_conversation_seq": (
                "SELECT seq FROM messages WHERE conversation = ? AND seq > ? AND seq <= ? AND to_id = ?"
                " ORDER BY seq LIMIT ?",
                (key, 1, 10, "bob", 5),
            ),
            "messages_shared_message_id": (
                "SELECT seq FROM messages WHERE to_id = '' AND message_id = ? ORDER BY seq LIMIT 100",
                ("1",),
            ),
        }
        for index, (sql, args) in plans.items():
            plan = await self.store.database.runInteraction("test", plan_txn, sql, args)
            self.assertIn(index, plan)

    async def test_upgradeKeysFromNUL(self) -> None:
        """
        A database of schema version 7, whose conversation keys were joined
        with NUL, gets version 8 on the next start: every key (messages of
        each kind, read cursors, file records) is joined with U+001F, and
        history, groups and cursors read as before.
        """
        path = self.mktemp()
        nul = "\x00"
        direct = "alice" + nul + "bob"
        group = nul + "g" + nul + "g1"
        room = nul + "r" + nul + "r1"
        with sqliteAtVersion(path, 7) as old:
            insert = (
                "INSERT INTO messages (message_id, from_id, from_name, to_id, conversation, type,"
                " content, server_timestamp, delivered) VALUES (?, 'alice', 'A', ?, ?, 'text', ?, 1, ?)"
            )
            old.execute(insert, ("d", "bob", direct, "to bob", 0))
            old.execute(insert, ("g", "", group, "to the group", 1))
            old.execute(insert, ("r", "", room, "to the room", 1))
            old.execute("INSERT INTO groups VALUES ('g1', 'G', NULL, 'alice', 'alice', NULL, 1, NULL)")
            old.execute("INSERT INTO group_members VALUES ('g1', 'alice', 'owner', 1, 1, NULL)")
            old.execute("INSERT INTO group_members VALUES ('g1', 'bob', 'member', 1, 2, NULL)")
            old.execute("INSERT INTO read_cursors VALUES (?, 'bob', 2)", (group,))
            old.execute(
                "INSERT INTO files (file_id, from_id, to_id, file_name, size, created_at, conversation)"
                " VALUES ('f', 'alice', 'bob', 'a.pdf', 1, 1, ?)",
                (direct,),
            )
        old.close()
        store = SQLiteMessageStore(path, reactor)
        await store.open()
        self.addCleanup(store.close)
        # version 8 and every later one this code ships
        self.assertEqual(store.database.schemaApplied, [v for v, _, _ in schemaFiles()[7:]])
        page = await store.history("alice", "bob", None, 10, None, None)
        self.assertEqual([m.content for m in page.messages], ["to bob"])
        page = await store.conversationHistory(groupConversation("g1"), 10, None, None)
        self.assertEqual([(m.content, m.groupId) for m in page.messages], [("to the group", "g1")])
        page = await store.conversationHistory(roomConversation("r1"), 10, None, None)
        self.assertEqual([(m.content, m.roomId) for m in page.messages], [("to the room", "r1")])
        state = await store.group("g1")
        assert state is not None
        self.assertEqual(state.lastSeq, 2)
        self.assertEqual(await store.readCursors(groupConversation("g1")), {"bob": 2})
        with sqlite3.connect(path) as check:
            keys = check.execute(
                "SELECT conversation FROM messages UNION ALL SELECT conversation FROM read_cursors"
                " UNION ALL SELECT conversation FROM files"
            ).fetchall()
        check.close()
        self.assertEqual(
            sorted(key for (key,) in keys),
            sorted([conversationKey("alice", "bob")] * 2 + [groupConversation("g1")] * 2 + [roomConversation("r1")]),
        )


class PostgresMessageStoreTests(PostgresStores, SQLMessageStoreTestsMixin, TestCase):
    """
    The store tests against L{PostgresMessageStore} in a schema of the
    test's own, plus what only PostgreSQL has: nodes sharing a database.
    """

    async def otherNode(self) -> SQLMessageStore:
        """
        Another open store on the test's database, as a second node has.
        """
        store = self.newStore()
        self.addCleanup(store.close)
        await store.open()
        return store

    async def test_linksAcrossNodes(self) -> None:
        """
        Two nodes writing into one conversation in turn: each message is
        linked to the one before it, whichever node stored that one (read
        under the write lock).
        """
        other = await self.otherNode()
        made = []
        for n in range(6):
            store = (self.store, other)[n % 2]
            outcome = await store.storeMessage(newMessage(f"x{n}", serverTimestamp=2000 + n))
            made.append(outcome.message)
        self.assertEqual(
            [(m.prevSeq, m.prevAt) for m in made],
            [(0, 0)] + [(before.seq, before.serverTimestamp) for before in made[:-1]],
        )

    async def test_seqsCommitInOrderAcrossNodes(self) -> None:
        """
        Two stores on one database (two nodes) writing at once: every seq
        is unique, each store's writes get increasing seqs, and a reader
        polling meanwhile never sees a seq commit below one it has seen
        (the write lock makes commit order seq order): what it sees is
        always every seq from 1 to the highest, no hole to be filled later.
        """
        other = await self.otherNode()
        reader = await self.otherNode()
        rounds, size = 20, 20
        for store in (self.store, other):
            store.commitInterval = 0
        holes: list[tuple[int, int]] = []
        polls = 0
        writing = True

        def poll_txn(txn: Transaction) -> tuple[int, int]:
            txn.execute("SELECT COUNT(*), COALESCE(MAX(seq), 0) FROM messages")
            row = txn.fetchone()
            assert row is not None
            return int(row[0]), int(row[1])

        async def poll() -> None:
            nonlocal polls
            while writing:
                count, highest = await reader.database.runInteraction("poll", poll_txn)
                polls += 1
                if count != highest:
                    holes.append((count, highest))

        async def write(store: SQLMessageStore, sender: str) -> list[int]:
            seqs: list[int] = []
            for round in range(rounds):
                outcomes = await gatherResults(
                    [store.storeMessage(newMessage(f"{round}-{n}", fromId=sender)) for n in range(size)]
                )
                seqs.extend(outcome.message.seq for outcome in outcomes)
            return seqs

        polling = Deferred.fromCoroutine(poll())
        mine, theirs = await gatherResults(
            [Deferred.fromCoroutine(write(self.store, "alice")), Deferred.fromCoroutine(write(other, "carol"))]
        )
        writing = False
        await polling
        self.assertEqual(holes, [])
        self.assertTrue(polls > 0)
        self.assertEqual(mine, sorted(mine))
        self.assertEqual(theirs, sorted(theirs))
        self.assertEqual(sorted(mine + theirs), list(range(1, 2 * rounds * size + 1)))

    async def test_writeWaitsForEarlierSeqs(self) -> None:
        """
        While one node's transaction holds a seq it has not committed,
        another node's write waits (on the advisory write lock) instead of
        committing a higher seq first; once the first commits, the second
        does, with the higher seq.
        """
        from twisted.internet.task import deferLater
        from twisted.internet.threads import deferToThread

        from crm_im.storage.messages import storeMessage_txn

        name = "crm_im_t_" + uuid.uuid4().hex[:12]
        other = PostgresMessageStore(self.url + "&application_name=" + name, reactor)
        self.addCleanup(other.close)
        await other.open()
        drawn = threading.Event()
        release = threading.Event()
        self.addCleanup(release.set)

        def slow_txn(txn: Transaction) -> Any:
            outcome = storeMessage_txn(txn, newMessage("first"))
            drawn.set()
            release.wait(30)
            return outcome

        first = self.store._write("slow", slow_txn)
        self.assertTrue(await deferToThread(drawn.wait, 30))
        second = other.storeMessage(newMessage("second", fromId="carol"))
        query = "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name = ? AND wait_event = 'advisory'"
        for _ in range(200):
            if self.rows(query, (name,)) == [(1,)]:
                break
            await deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(self.rows(query, (name,)), [(1,)])
        self.assertFalse(second.called)
        self.assertEqual(self.rows("SELECT COUNT(*) FROM messages"), [(0,)])
        release.set()
        earlier, later = await first, await second
        self.assertTrue(earlier.message.seq < later.message.seq)

    async def test_schemaAppliedOnceByNodesStartingTogether(self) -> None:
        """
        Stores opened at once on an empty database apply the schema once
        between them (the schema lock), and all of them start.
        """
        await self.store.close()
        import psycopg

        url = newSchemaURL(self)
        stores = [PostgresMessageStore(url, reactor) for _ in range(3)]
        for store in stores:
            self.addCleanup(store.close)
        await gatherResults([store.open() for store in stores])
        applied = sorted((store.database.schemaApplied for store in stores), key=len)
        self.assertEqual(applied, [[], [], [version for version, _, _ in schemaFiles("postgres")]])
        with psycopg.connect(url) as conn:
            versions = conn.execute("SELECT COUNT(*), COUNT(DISTINCT version) FROM schema_version").fetchone()
        self.assertEqual(versions, (len(applied[-1]), len(applied[-1])))

    async def test_reconnects(self) -> None:
        """
        After the server dropped every connection of the store (a restart,
        a failover: here C{pg_terminate_backend}), reads and writes carry
        on: a transaction whose connection broke under it runs again on a
        new one.
        """
        import psycopg

        await self.store.close()
        name = "crm_im_t_" + uuid.uuid4().hex[:12]
        store = PostgresMessageStore(self.url + "&application_name=" + name, reactor)
        self.addCleanup(store.close)
        await store.open()
        await store.storeMessage(newMessage("1"))
        await gatherResults([store.ping() for _ in range(4)])
        with psycopg.connect(self.url, autocommit=True) as conn:
            killed = conn.execute(
                "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s",
                (name,),
            ).fetchone()
        assert killed is not None
        self.assertTrue(killed[0] >= 1)
        outcome = await store.storeMessage(newMessage("2"))
        self.assertTrue(outcome.created)
        for _ in range(store.database.engine.retriesOnBrokenConnection):
            self.assertEqual(ids(await store.pendingFor("bob", 10)), ["1", "2"])
        self.flushLoggedErrors()
