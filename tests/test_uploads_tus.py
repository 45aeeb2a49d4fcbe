"""
Tests for L{crm_im.uploads.tus}: the tus 1.0.0 state machine of one upload
(offsets, conflicts, termination, expiry), with explicit times.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from crm_im.uploads import tus

OCTETS = b"application/offset+octet-stream"


def upload(length: int = 100, offset: int = 0, expiresAt: int = 10_000) -> tus.Upload:
    """
    An upload of C{length} bytes at C{offset}, open until C{expiresAt} ms.
    """
    return tus.Upload("f" * 32, length, offset, expiresAt)


class UploadStateTests(SynchronousTestCase):
    """
    L{tus.Upload}.
    """

    def assertRefused(self, status: int, f: object, *args: object, **kwargs: object) -> tus.TusError:
        """
        C{f(*args)} raises L{tus.TusError} with C{status}.
        """
        error = self.assertRaises(tus.TusError, f, *args, **kwargs)  # type: ignore[arg-type]
        self.assertEqual(error.status, status, error.message)
        return error

    def test_patchesAppendInOrder(self) -> None:
        """
        Each write begins at the current offset, and the offset moves by
        the bytes received; the last byte completes the upload.
        """
        u = upload()
        self.assertEqual(u.head(0), 0)
        u.beginWrite(0, 0, 40, OCTETS)
        u.received(40)
        self.assertFalse(u.endWrite(1, 1000))
        self.assertEqual(u.head(1), 40)
        u.beginWrite(2, 40, None, OCTETS + b"; charset=binary")
        u.received(30)
        u.received(30)
        self.assertTrue(u.endWrite(3, 1000))
        self.assertEqual(u.offset, 100)

    def test_wrongOffsetIsConflict(self) -> None:
        """
        A C{PATCH} whose C{Upload-Offset} is not the server's is 409, and
        changes nothing.
        """
        u = upload(offset=10)
        error = self.assertRefused(409, u.beginWrite, 0, 0, 5, OCTETS)
        self.assertIn("10", error.message)
        self.assertRefused(409, u.beginWrite, 0, 11, 5, OCTETS)
        self.assertEqual((u.offset, u.writer), (10, False))

    def test_oneWriterAtATime(self) -> None:
        """
        A second write while one is open is 409; after the first ends it
        may begin.
        """
        u = upload()
        u.beginWrite(0, 0, None, OCTETS)
        self.assertRefused(409, u.beginWrite, 0, 0, None, OCTETS)
        u.received(5)
        u.endWrite(1, 1000)
        u.beginWrite(1, 5, None, OCTETS)

    def test_contentType(self) -> None:
        """
        A C{PATCH} must be C{application/offset+octet-stream} (415); a
        whole-body C{PUT} may have any type.
        """
        u = upload()
        self.assertRefused(415, u.beginWrite, 0, 0, 1, b"application/json")
        self.assertRefused(415, u.beginWrite, 0, 0, 1, None)
        u.beginWrite(0, 0, 100, b"image/png", whole=True)

    def test_bodiesPastTheLength(self) -> None:
        """
        A declared body past the announced length is 413 before a byte is
        taken; bytes past it in a chunked body are 413 and not counted.
        """
        u = upload(offset=90)
        self.assertRefused(413, u.beginWrite, 0, 90, 11, OCTETS)
        u.beginWrite(0, 90, None, OCTETS)
        u.received(10)
        self.assertRefused(413, u.received, 1)
        self.assertEqual(u.offset, 100)

    def test_overrunRewinds(self) -> None:
        """
        A request refused for a body past the length is rewound to where
        it began: it ends with the upload incomplete, at that offset, and
        the next request resumes there.
        """
        u = upload(offset=40)
        u.beginWrite(0, 40, None, OCTETS)
        u.received(60)
        self.assertRefused(413, u.received, 1)
        u.rewind(40)
        self.assertFalse(u.endWrite(1, 1000))
        self.assertEqual((u.head(1), u.state), (40, tus.UPLOADING))
        u.beginWrite(2, 40, 60, OCTETS)
        self.assertRaises(ValueError, u.rewind, 41)

    def test_putCarriesTheWholeFile(self) -> None:
        """
        A C{PUT} declaring another length than the file's is 400.
        """
        u = upload()
        self.assertRefused(400, u.beginWrite, 0, 0, 99, None, whole=True)

    def test_expiry(self) -> None:
        """
        Past C{expiresAt} the upload is 410 for every request; each write
        that ends moves the expiry to C{idle} after its end.
        """
        u = upload(expiresAt=1000)
        self.assertEqual(u.head(1000), 0)
        self.assertRefused(410, u.head, 1001)
        self.assertRefused(410, u.beginWrite, 1001, 0, 1, OCTETS)
        u = upload(expiresAt=1000)
        u.beginWrite(900, 0, 1, OCTETS)
        u.received(1)
        u.endWrite(5000, 3600)
        self.assertEqual(u.expiresAt, 8600)
        self.assertEqual(u.head(8600), 1)

    def test_termination(self) -> None:
        """
        An aborted upload is 410 for every request.
        """
        u = upload()
        u.abort()
        self.assertRefused(410, u.head, 0)
        self.assertRefused(410, u.beginWrite, 0, 0, 1, OCTETS)

    def test_complete(self) -> None:
        """
        A complete upload reports its length and refuses writes (409),
        but an empty body at its end has nothing to write and succeeds
        (C{False}: a C{PUT} of an empty file, a last C{PATCH} again).
        """
        u = upload(offset=100)
        u.complete()
        self.assertEqual(u.head(10**12), 100)
        self.assertRefused(409, u.beginWrite, 0, 100, 1, OCTETS)
        self.assertRefused(409, u.beginWrite, 0, 99, 0, OCTETS)
        self.assertRefused(409, u.beginWrite, 0, 100, None, OCTETS)
        self.assertIs(u.beginWrite(0, 100, 0, OCTETS), False)
        self.assertFalse(u.writer)


class HeaderTests(SynchronousTestCase):
    """
    Header parsing.
    """

    def test_numbers(self) -> None:
        """
        C{Upload-Offset} is a non-negative decimal of at most 19 digits.
        """
        self.assertEqual(tus.headerNumber(b" 42 ", "Upload-Offset"), 42)
        for bad in (None, b"", b"-1", b"1e3", b"0x10", b"\xd9\xa3", b"9" * 20):
            error = self.assertRaises(tus.TusError, tus.headerNumber, bad, "Upload-Offset")
            self.assertEqual(error.status, 400)

    def test_version(self) -> None:
        """
        C{Tus-Resumable} other than 1.0.0 is 412; absent is accepted (plain
        HTTP clients).
        """
        tus.checkVersion(b"1.0.0")
        tus.checkVersion(None)
        self.assertEqual(self.assertRaises(tus.TusError, tus.checkVersion, b"0.2.2").status, 412)

    def test_errorCodes(self) -> None:
        """
        Each status carries the contract's code.
        """
        self.assertEqual(tus.TusError(409, "x").code, "CONFLICT")
        self.assertEqual(tus.TusError(413, "x").code, "TOO_LARGE")
        self.assertEqual(tus.TusError(460, "x").code, "CHECKSUM_MISMATCH")
