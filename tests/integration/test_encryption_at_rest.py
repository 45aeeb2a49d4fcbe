"""
Encryption at rest end to end (ENCRYPTION.md, "At rest"): the real
L{CRMIMService} with C{--encryption-keys} on a loopback port, Node
socket.io-client users sending a known marker in a message, in a file's
name and in its bytes (a tus upload and an inline C{file_transfer}), then
every file of the data directory scanned (the SQLite database, its WAL,
the file store): the marker is nowhere, while history, downloads (with
C{Range}) and thumbnails still give it back. The same flow without keys
finds the marker, so the scan does look where the data is. And C{twistd}
processes refusing to start without the keys a database was written with.
"""

from __future__ import annotations

import base64
import os
import uuid
from typing import Any

import treq
from twisted.internet.defer import inlineCallbacks

from crm_im.crypto.stream import MAGIC
from tests.integration.test_files import FilesTestCase, Inline, tinyPNG
from tests.integration.test_twistd import ProcessTestCase


def scan(directory: str, needle: bytes) -> list[str]:
    """
    The files under C{directory} holding C{needle} (blocking).
    """
    found = []
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                if needle in f.read():
                    found.append(os.path.relpath(path, directory))
    return found


def tablesHolding(path: str, needle: str) -> list[str]:
    """
    The C{table.column} of the SQLite database at C{path} whose text holds
    C{needle} (to say where a leak is).
    """
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        found = []
        tables = [row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for column in [row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')]:
                count = conn.execute(
                    f'SELECT COUNT(*) FROM "{table}" WHERE instr(CAST("{column}" AS TEXT), ?) > 0', (needle,)
                ).fetchone()[0]
                if count:
                    found.append(f"{table}.{column}")
        return found
    finally:
        conn.close()


class EncryptedAtRestTests(FilesTestCase):
    """
    The marker's flow through a server with C{--encryption-keys}.
    """

    encrypted = True

    @inlineCallbacks
    def setUp(self) -> Inline:
        """
        Serve crm_im, with a key file of its own when L{encrypted}.
        """
        self.settings = dict(FilesTestCase.settings)
        if self.encrypted:
            keyFile = self.mktemp()
            with open(keyFile, "w") as f:
                f.write("k1:" + base64.b64encode(os.urandom(32)).decode() + "\n")
            os.chmod(keyFile, 0o600)
            self.settings["encryptionKeys"] = keyFile
        yield super().setUp()

    @inlineCallbacks
    def sendMarkers(self) -> Inline:
        """
        Alice sends Bob the marker as a text, as an uploaded file's name and
        bytes, and as an inline transfer; an image too. Returns the marker,
        the uploaded bytes and Bob's history.
        """
        marker = "MARKER-" + uuid.uuid4().hex
        yield self.login("a", "alice")
        yield self.login("b", "bob")
        receipt = yield self.ask("a", "message", {"toId": "bob", "id": "m1", "content": f"text {marker} 你好"})
        self.assertEqual(receipt["status"], "delivered", receipt)
        # four chunks and a bit, the marker in each
        data = (marker.encode() + os.urandom(1000)) * 250
        ack = yield self.uploadFile("a", data, toId="bob", fileName=f"{marker}.bin")
        receipt = yield self.ask("a", "message", {"type": "file", "fileId": ack["fileId"], "toId": "bob", "id": "f1"})
        self.assertEqual(receipt["status"], "delivered", receipt)
        inline = marker.encode() * 10
        sent = yield self.ask(
            "a", "file_transfer", {"id": "t1", "toId": "bob", "fileName": f"inline-{marker}.txt", "data": inline}
        )
        self.assertEqual(sent["status"], "delivered", sent)
        image = yield self.uploadFile("a", tinyPNG(), toId="bob", fileName="p.png", mimeType="image/png")
        receipt = yield self.ask("a", "message", {"type": "file", "fileId": image["fileId"], "toId": "bob", "id": "p1"})
        self.assertEqual(receipt["status"], "delivered", receipt)
        page = yield self.ask("b", "get_history", {"friendId": "alice"})
        return marker, data, inline, page["messages"]

    @inlineCallbacks
    def readBack(self, marker: str, data: bytes, inline: bytes, messages: list[Any]) -> Inline:
        """
        History, downloads (whole and ranges) and the thumbnail give the
        marker and the bytes back.
        """
        byId = {message["id"]: message for message in messages}
        self.assertEqual(byId["m1"]["content"], f"text {marker} 你好")
        self.assertEqual(byId["f1"]["fileName"], f"{marker}.bin")
        self.assertEqual(byId["t1"]["fileName"], f"inline-{marker}.txt")
        response = yield treq.get(self.url + byId["f1"]["fileUrl"], persistent=False)
        self.assertEqual((response.code, (yield response.content())), (200, data))
        self.assertIn(marker.encode("utf-8"), response.headers.getRawHeaders(b"content-disposition")[0])
        for first, last in ((100_000, 100_099), (65_530, 65_545), (len(data) - 10, len(data) - 1)):
            response = yield treq.get(
                self.url + byId["f1"]["fileUrl"], headers={b"Range": [b"bytes=%d-%d" % (first, last)]}, persistent=False
            )
            self.assertEqual(response.code, 206)
            self.assertEqual((yield response.content()), data[first : last + 1])
            self.assertEqual(
                response.headers.getRawHeaders(b"content-range"), [b"bytes %d-%d/%d" % (first, last, len(data))]
            )
        response = yield treq.get(self.url + byId["t1"]["fileUrl"], persistent=False)
        self.assertEqual((yield response.content()), inline)
        response = yield treq.get(self.url + byId["p1"]["thumbnailUrl"], persistent=False)
        thumbnail = yield response.content()
        self.assertEqual((response.code, thumbnail[:2]), (200, b"\xff\xd8"))

    @inlineCallbacks
    def test_marker(self) -> Inline:
        """
        With keys the marker is in no file of the data directory (database,
        WAL, blobs, thumbnails); without, the scan finds it in the
        database and the blobs. Either way clients get it back.
        """
        marker, data, inline, messages = yield self.sendMarkers()
        yield self.readBack(marker, data, inline, messages)
        dataDir = self.service.dataDir.path
        names = os.listdir(dataDir)
        self.assertIn("crm_im.sqlite3", names)
        self.assertIn("crm_im.sqlite3-wal", names)
        found = scan(dataDir, marker.encode("utf-8"))
        blobs = [p for p in self.service.files.directory.child("blobs").walk() if p.isfile()]
        thumbs = [p for p in self.service.files.directory.child("thumbs").walk() if p.isfile()]
        self.assertEqual((len(blobs), len(thumbs)), (3, 1))
        if self.encrypted:
            self.assertEqual((found, tablesHolding(os.path.join(dataDir, "crm_im.sqlite3"), marker)), ([], []))
            for path in blobs + thumbs:
                self.assertEqual(path.open().read(len(MAGIC)), MAGIC, path.path)
            self.assertEqual(self.service.store.database.engine.name, "sqlite")
        else:
            self.assertIn("crm_im.sqlite3-wal", found)
            self.assertEqual(len([name for name in found if name.startswith("files")]), 2, found)


class ClearControlTests(EncryptedAtRestTests):
    """
    Without keys: the scan finds what is stored in clear.
    """

    encrypted = False


class StartRefusedTests(ProcessTestCase):
    """
    C{twistd crm_im} as an operator starts it with encryption at rest: a
    database written with a key refuses to start without that key, in one
    line with exit status 1 (no traceback); a bad key file is refused
    before anything starts.
    """

    def keyFile(self, *lines: str) -> str:
        """
        A key file (mode 0600) with C{lines}.
        """
        path = os.path.abspath(self.mktemp())
        with open(path, "w") as f:
            f.write("".join(line + "\n" for line in lines))
        os.chmod(path, 0o600)
        return path

    @inlineCallbacks
    def assertCouldNotStart(self, process: Any, reason: str) -> Inline:
        self.assertEqual((yield self.waitForExit(process, timeout=45)), 1, process.text)
        lines = [line for line in process.text.splitlines() if "could not start" in line]
        self.assertEqual(len(lines), 1, process.text)
        self.assertIn(reason, lines[0])
        self.assertNotIn("Traceback", process.text)

    @inlineCallbacks
    def test_refusals(self) -> Inline:
        """
        A server started with key C{k1} serves and says which key is
        current; restarted without keys, or with a file lacking C{k1}, it
        does not start; with C{k1} after a new current key it does.
        """
        dataDir = self.mktemp()
        k1 = "k1:" + base64.b64encode(os.urandom(32)).decode()
        k2 = "k2:" + base64.b64encode(os.urandom(32)).decode()
        process = self.spawnTwistd(dataDir, "--encryption-keys", self.keyFile(k1))
        yield self.waitUntilServing(process)
        self.assertIn("Encryption at rest: current key k1", process.text)
        process.signal("TERM")
        self.assertEqual((yield self.waitForExit(process)), 0, process.text)

        process = self.spawnTwistd(dataDir)
        yield self.assertCouldNotStart(process, "this database holds data encrypted at rest (keys k1)")
        lacking = self.keyFile(k2)
        process = self.spawnTwistd(dataDir, "--encryption-keys", lacking)
        yield self.assertCouldNotStart(process, f"keys k1, which {lacking} does not hold")

        process = self.spawnTwistd(dataDir, "--encryption-keys", self.keyFile(k2, k1))
        yield self.waitUntilServing(process)
        self.assertIn("current key k2, 2 key(s)", process.text)
        process.signal("TERM")
        self.assertEqual((yield self.waitForExit(process)), 0, process.text)

    @inlineCallbacks
    def test_badKeyFile(self) -> Inline:
        """
        A key that is not 32 bytes: twistd refuses the option, naming the
        file and line, and never prints the key.
        """
        short = base64.b64encode(b"s" * 20).decode()
        process = self.spawnTwistd(self.mktemp(), "--encryption-keys", self.keyFile("# keys", "k1:" + short))
        code = yield self.waitForExit(process, timeout=45)
        self.assertNotEqual(code, 0)
        self.assertIn("--encryption-keys", process.text)
        self.assertIn("line 2: key 'k1' is 20 bytes, not 32", process.text)
        self.assertNotIn(short, process.text)
