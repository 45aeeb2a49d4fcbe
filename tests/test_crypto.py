"""
Tests for L{crm_im.crypto}: the key file, the record cipher, and the
streamed chunked cipher of file bytes with its static resource.
"""

from __future__ import annotations

import base64
import io
import os
import random
from typing import Any

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.test._util import _render
from twisted.web.test.requesthelper import DummyRequest

from crm_im.crypto import AtRest, DecryptionError, KeyFileError, KeyRing, RecordCipher, UnknownKeyError, fieldAAD, parseKeys
from crm_im.crypto.keys import loadKeyFile
from crm_im.crypto.stream import CHUNK, MAGIC, FileCipher, plainSizeOf, readHeader, sealedSize
from crm_im.crypto.web import SealedFile


def keyLine(keyId: str, seed: int) -> str:
    """
    A key file line with a key made from C{seed}.
    """
    return f"{keyId}:{base64.b64encode(bytes([seed]) * 32).decode()}"


def ring(*ids: str) -> KeyRing:
    """
    A key ring of C{ids}, the first current; a key id is the same key in
    every ring.
    """
    return parseKeys("\n".join(keyLine(keyId, sum(keyId.encode()) % 256) for keyId in ids))


class KeyFileTests(SynchronousTestCase):
    """
    Tests for L{parseKeys} and L{loadKeyFile}.
    """

    def test_parse(self) -> None:
        """
        Lines C{keyId:base64}: the first is current, blank lines and
        comments are skipped, every key is kept by id.
        """
        keys = parseKeys("# keys\n\n" + keyLine("k2", 2) + "\n  " + keyLine("k1", 1) + "  \n")
        self.assertEqual(keys.current.id, "k2")
        self.assertEqual(keys.ids, frozenset({"k1", "k2"}))
        self.assertEqual(keys.byId("k1").secret, b"\x01" * 32)  # type: ignore[union-attr]
        self.assertIsNone(keys.byId("k3"))
        self.assertNotIn("AQEB", repr(keys))

    def test_refusals(self) -> None:
        """
        A key not of 32 bytes, not base64, a duplicate id, a bad id, a line
        without a colon or a file without keys are refused with the line
        number and never the key material.
        """
        short = base64.b64encode(b"x" * 16).decode()
        cases = [
            (f"k1:{short}", "line 1: key 'k1' is 16 bytes, not 32"),
            ("k1:@@@@", "not valid base64"),
            (keyLine("k1", 1) + "\n" + keyLine("k1", 2), "line 2: key id 'k1' is given twice"),
            ("bad id:" + base64.b64encode(b"x" * 32).decode(), "line 1: a key id is"),
            ("justtext", "line 1: expected keyId:base64"),
            ("# nothing\n\n", "no key in the file"),
        ]
        for text, expected in cases:
            error = self.assertRaises(KeyFileError, parseKeys, text, "keys.txt")
            self.assertIn(expected, str(error), text)
            self.assertNotIn(short, str(error))

    def test_loadFile(self) -> None:
        """
        A file readable by its owner alone loads without warnings; one
        others may read loads with a warning naming the fix; an unreadable
        one is refused.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(keyLine("k1", 1) + "\n")
        os.chmod(path, 0o600)
        keys, warnings = loadKeyFile(path)
        self.assertEqual((keys.current.id, warnings), ("k1", []))
        os.chmod(path, 0o644)
        _, warnings = loadKeyFile(path)
        self.assertEqual(len(warnings), 1)
        self.assertIn("chmod 600", warnings[0])
        error = self.assertRaises(KeyFileError, loadKeyFile, path + ".missing")
        self.assertIn("cannot read the key file", str(error))


class RecordCipherTests(SynchronousTestCase):
    """
    Tests for L{RecordCipher}.
    """

    def test_roundTrip(self) -> None:
        """
        A sealed record opens to its text with the same key id and
        associated data; every seal uses a fresh nonce.
        """
        cipher = RecordCipher(ring("k1"))
        aad = fieldAAD("messages", "content", "alice", "m1")
        for text in ("", "hello", "你好 🌍" * 100):
            sealed = cipher.seal(text, aad)
            self.assertNotIn(text or "\x00", sealed)
            self.assertEqual(cipher.open("k1", sealed, aad), text)
        self.assertNotEqual(cipher.seal("same", aad), cipher.seal("same", aad))

    def test_tamperedRefused(self) -> None:
        """
        A record with any byte changed fails authentication.
        """
        cipher = RecordCipher(ring("k1"))
        aad = fieldAAD("messages", "content", "alice", "m1")
        raw = bytearray(base64.b64decode(cipher.seal("hello world", aad)))
        for index in (0, 12, len(raw) - 1):
            changed = bytearray(raw)
            changed[index] ^= 1
            self.assertRaises(DecryptionError, cipher.open, "k1", base64.b64encode(bytes(changed)).decode(), aad)
        self.assertRaises(DecryptionError, cipher.open, "k1", "not base64!", aad)
        self.assertRaises(DecryptionError, cipher.open, "k1", "AAAA", aad)

    def test_movedRowRefused(self) -> None:
        """
        A record sealed for one row (or column) fails in another: the
        row's identity is its associated data, length-prefixed so that
        C{("ab", "c")} is not C{("a", "bc")}.
        """
        cipher = RecordCipher(ring("k1"))
        sealed = cipher.seal("secret", fieldAAD("messages", "content", "alice", "m1"))
        for other in (
            fieldAAD("messages", "content", "alice", "m2"),
            fieldAAD("messages", "content", "bob", "m1"),
            fieldAAD("messages", "file_name", "alice", "m1"),
            fieldAAD("messages", "content", "alicem", "1"),
        ):
            self.assertRaises(DecryptionError, cipher.open, "k1", sealed, other)

    def test_rotation(self) -> None:
        """
        With a new key first, records are sealed under it, and those of the
        old key still open; a key not in the file is L{UnknownKeyError}.
        """
        aad = b"row"
        old = RecordCipher(ring("k1"))
        sealedOld = old.seal("before", aad)
        rotated = RecordCipher(ring("k2", "k1"))
        self.assertEqual(rotated.currentId, "k2")
        self.assertEqual(rotated.open("k1", sealedOld, aad), "before")
        sealedNew = rotated.seal("after", aad)
        self.assertRaises(DecryptionError, rotated.open, "k1", sealedNew, aad)
        self.assertEqual(rotated.open("k2", sealedNew, aad), "after")
        error = self.assertRaises(UnknownKeyError, old.open, "k2", sealedNew, aad)
        self.assertIn("'k2'", str(error))


def sample(size: int) -> bytes:
    """
    C{size} bytes of a fixed pseudo-random sequence.
    """
    return random.Random(size).randbytes(size)


class StreamTests(SynchronousTestCase):
    """
    Tests for L{FileCipher}: chunked sealing of file bytes.
    """

    def setUp(self) -> None:
        self.cipher = FileCipher(ring("k1", "k0"))

    def test_roundTrips(self) -> None:
        """
        Files of every size around the chunk boundaries seal to the size
        L{sealedSize} says, and read back whole, sealed whole or streamed.
        """
        for size in (0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5):
            data = sample(size)
            sealed = self.cipher.seal(data, b"blobs/ab/x")
            self.assertEqual(len(sealed), sealedSize(size, "k1"), size)
            self.assertTrue(sealed.startswith(MAGIC))
            out = io.BytesIO()
            self.assertEqual(self.cipher.sealStream(io.BytesIO(data), out, b"blobs/ab/x"), size)
            self.assertEqual(len(out.getvalue()), len(sealed))
            for blob in (sealed, out.getvalue()):
                reader = self.cipher.reader(io.BytesIO(blob), b"blobs/ab/x")
                self.assertEqual(reader.size, size)
                self.assertEqual(reader.read(), data, size)

    def test_noPlaintext(self) -> None:
        """
        The sealed bytes do not hold the plaintext.
        """
        data = b"MARKER-0123456789" * 10000
        self.assertNotIn(b"MARKER", self.cipher.seal(data, b"f"))

    def test_rangeReads(self) -> None:
        """
        Reads from any offset, across chunk boundaries, give the
        plaintext's bytes there, decrypting only the chunks they need.
        """
        data = sample(4 * CHUNK + 123)
        reader = self.cipher.reader(io.BytesIO(self.cipher.seal(data, b"f")), b"f")
        rng = random.Random(7)
        for _ in range(50):
            start = rng.randrange(len(data))
            length = rng.randrange(1, 2 * CHUNK)
            reader.seek(start)
            got = b""
            while len(got) < length:
                piece = reader.read(length - len(got))
                if not piece:
                    break
                got += piece
            self.assertEqual(got, data[start : start + length], (start, length))
        reader.seek(-10, os.SEEK_END)
        self.assertEqual(reader.read(), data[-10:])
        self.assertEqual(reader.read(), b"")

    def test_truncationDetected(self) -> None:
        """
        A sealed file cut at a chunk boundary reads until the last chunk
        left, which was not sealed as the final one; cut elsewhere, its
        size is impossible or its last chunk fails.
        """
        data = sample(3 * CHUNK + 10)
        sealed = self.cipher.seal(data, b"f")
        header = len(sealed) - len(data) - 4 * 16
        for cut in (header + 2 * (CHUNK + 16), header + 3 * (CHUNK + 16), len(sealed) - 1, header + 5):
            def read() -> bytes:
                reader = self.cipher.reader(io.BytesIO(sealed[:cut]), b"f")
                return reader.read()

            self.assertRaises(DecryptionError, read)

    def test_reorderDetected(self) -> None:
        """
        Chunks swapped, or a chunk altered, fail authentication.
        """
        data = sample(3 * CHUNK)
        sealed = self.cipher.seal(data, b"f")
        header = len(sealed) - len(data) - 3 * 16
        body = sealed[header:]
        first, second = body[: CHUNK + 16], body[CHUNK + 16 : 2 * (CHUNK + 16)]
        swapped = sealed[:header] + second + first + body[2 * (CHUNK + 16) :]
        reader = self.cipher.reader(io.BytesIO(swapped), b"f")
        self.assertRaises(DecryptionError, reader.read, 10)
        altered = bytearray(sealed)
        altered[header + CHUNK + 20] ^= 0x80
        reader = self.cipher.reader(io.BytesIO(bytes(altered)), b"f")
        self.assertEqual(reader.read(CHUNK), data[:CHUNK])
        self.assertRaises(DecryptionError, reader.read, 10)

    def test_movedFileRefused(self) -> None:
        """
        Bytes sealed for one place in the store fail at another.
        """
        sealed = self.cipher.seal(b"hello", b"blobs/aa/one")
        reader = self.cipher.reader(io.BytesIO(sealed), b"blobs/bb/two")
        self.assertRaises(DecryptionError, reader.read)

    def test_rotationAndUnknownKey(self) -> None:
        """
        Bytes sealed under an older key of the file read; under a key not
        in the file, L{UnknownKeyError}; a file in clear has no header.
        """
        old = FileCipher(ring("k0"))
        sealed = old.seal(b"old bytes", b"f")
        self.assertEqual(readHeader(io.BytesIO(sealed))[1], "k0")
        self.assertEqual(self.cipher.reader(io.BytesIO(sealed), b"f").read(), b"old bytes")
        self.assertRaises(UnknownKeyError, FileCipher(ring("k9")).reader, io.BytesIO(sealed), b"f")
        self.assertEqual(readHeader(io.BytesIO(b"plain text")), (b"", None))
        self.assertRaises(DecryptionError, self.cipher.reader, io.BytesIO(b"plain"), b"f")

    def test_impossibleSizes(self) -> None:
        """
        A body no sealed file has (a last chunk with no byte after full
        ones, or less than a tag) is refused.
        """
        self.assertEqual(plainSizeOf(16), 0)
        self.assertEqual(plainSizeOf(CHUNK + 16), CHUNK)
        self.assertEqual(plainSizeOf(CHUNK + 16 + 17), CHUNK + 1)
        for size in (0, 15, CHUNK + 16 + 16):
            self.assertRaises(DecryptionError, plainSizeOf, size)


class SealedFileTests(TestCase):
    """
    Tests for L{SealedFile}: Twisted's static file over sealed bytes.
    """

    def serve(self, path: str, rangeHeader: bytes | None = None) -> tuple[DummyRequest, Any]:
        """
        Render a L{SealedFile} of C{path} for a GET with C{rangeHeader}.
        """
        cipher = AtRest.fromRing(ring("k1")).files
        resource = SealedFile(path, cipher, b"blobs/ab/x", "application/octet-stream")
        request = DummyRequest([b""])
        if rangeHeader is not None:
            request.requestHeaders.setRawHeaders(b"range", [rangeHeader])
        return request, _render(resource, request)

    async def test_rangesDecrypted(self) -> None:
        """
        A whole download and C{Range} requests (within a chunk, across
        chunks, the last bytes) get the plaintext with its size; a file in
        clear is served as it is.
        """
        data = sample(3 * CHUNK + 77)
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(FileCipher(ring("k1")).seal(data, b"blobs/ab/x"))
        request, d = self.serve(path)
        await d
        self.assertEqual(b"".join(request.written), data)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"content-length"), [b"%d" % len(data)])
        for header, start, end in (
            (b"bytes=10-19", 10, 20),
            (b"bytes=%d-%d" % (CHUNK - 5, CHUNK + 5), CHUNK - 5, CHUNK + 6),
            (b"bytes=-7", len(data) - 7, len(data)),
        ):
            request, d = self.serve(path, header)
            await d
            self.assertEqual(request.responseCode, 206, header)
            self.assertEqual(b"".join(request.written), data[start:end], header)
            self.assertEqual(
                request.responseHeaders.getRawHeaders(b"content-range"),
                [b"bytes %d-%d/%d" % (start, end - 1, len(data))],
            )
        clear = self.mktemp()
        with open(clear, "wb") as f:
            f.write(b"in clear")
        request, d = self.serve(clear, b"bytes=3-4")
        await d
        self.assertEqual(b"".join(request.written), b"cl")


    async def test_alteredCutOff(self) -> None:
        """
        A download whose bytes stop decrypting (altered on disk, in the
        first chunk or a later one; whole or a C{Range}) is cut off: the
        client's request fails at once, its connection closed, instead of
        waiting for the rest of a C{Content-Length} that never comes. The
        failure is logged.
        """
        from twisted.internet import reactor
        from twisted.web.client import Agent, PartialDownloadError, ResponseFailed, ResponseNeverReceived, readBody
        from twisted.web.resource import Resource
        from twisted.web.server import Site

        data = sample(3 * CHUNK + 77)
        sealed = bytearray(FileCipher(ring("k1")).seal(data, b"blobs/ab/x"))
        headerSize = len(sealed) - 3 * (CHUNK + 16) - (77 + 16)
        cipher = AtRest.fromRing(ring("k1")).files
        for chunk, rangeHeader in ((0, None), (1, None), (1, b"bytes=10-%d" % (2 * CHUNK))):
            altered = bytearray(sealed)
            altered[headerSize + chunk * (CHUNK + 16) + 5] ^= 1  # a byte of that chunk
            path = self.mktemp()
            with open(path, "wb") as f:
                f.write(bytes(altered))
            resource = SealedFile(path, cipher, b"blobs/ab/x", "application/octet-stream")
            root = Resource()
            root.putChild(b"f", resource)
            port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
            self.addCleanup(port.stopListening)
            headers = None
            if rangeHeader is not None:
                from twisted.web.http_headers import Headers

                headers = Headers({b"range": [rangeHeader]})
            agent = Agent(reactor)
            url = b"http://127.0.0.1:%d/f" % port.getHost().port

            async def download() -> bytes:
                response = await agent.request(b"GET", url, headers)
                return await readBody(response)

            d = Deferred.fromCoroutine(download()).addTimeout(10, reactor)
            # (without the cut, the addTimeout's TimeoutError)
            await self.assertFailure(d, PartialDownloadError, ResponseFailed, ResponseNeverReceived)
        self.assertEqual(len(self.flushLoggedErrors(DecryptionError)), 3)


class OptionTests(SynchronousTestCase):
    """
    C{--encryption-keys} of C{twistd crm_im}.
    """

    def parse(self, *args: str) -> Any:
        from crm_im.tap import Options

        options = Options()
        options.parseOptions(list(args))
        return options.config

    def test_option(self) -> None:
        """
        Off by default; with a good key file, its absolute path reaches the
        configuration (also from C{$CRM_IM_ENCRYPTION_KEYS}); a bad or
        missing file is refused at once, naming the option.
        """
        from twisted.python import usage

        self.assertIsNone(self.parse().encryptionKeys)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(keyLine("k1", 1) + "\n")
        os.chmod(path, 0o600)
        self.assertEqual(self.parse("--encryption-keys", path).encryptionKeys, os.path.abspath(path))
        self.patch(os, "environ", dict(os.environ, CRM_IM_ENCRYPTION_KEYS=path))
        self.assertEqual(self.parse().encryptionKeys, os.path.abspath(path))
        self.patch(os, "environ", {k: v for k, v in os.environ.items() if k != "CRM_IM_ENCRYPTION_KEYS"})
        with open(path, "w") as f:
            f.write("k1:" + base64.b64encode(b"x" * 31).decode() + "\n")
        error = self.assertRaises(usage.UsageError, self.parse, "--encryption-keys", path)
        self.assertIn("--encryption-keys", str(error))
        self.assertIn("31 bytes, not 32", str(error))
        error = self.assertRaises(usage.UsageError, self.parse, "--encryption-keys", path + ".none")
        self.assertIn("cannot read", str(error))
