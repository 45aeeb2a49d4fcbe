"""
Tests for L{crm_im.uploads.signing}: download signatures and upload tokens
against tampering and expiry, with L{task.Clock}; the secret kept in the
data directory.
"""

from __future__ import annotations

import os
import stat

from twisted.internet.task import Clock
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from crm_im.uploads.signing import DOWNLOAD, THUMBNAIL, UPLOAD, SignatureError, URLSigner, loadSecret

FILE = "A" * 32
OTHER = "B" * 32


class SignerTests(SynchronousTestCase):
    """
    L{URLSigner}.
    """

    def setUp(self) -> None:
        """
        A signer at t=1000 s.
        """
        self.clock = Clock()
        self.clock.advance(1000)
        self.signer = URLSigner(b"k" * 32, self.clock)

    def test_roundTrip(self) -> None:
        """
        A signature verifies for its purpose, file and expiry until the
        expiry (inclusive).
        """
        sig = self.signer.sign(DOWNLOAD, FILE, 2000)
        self.assertEqual(self.signer.verify(DOWNLOAD, FILE, "2000", sig), 2000)
        self.clock.advance(1000)
        self.assertEqual(self.signer.verify(DOWNLOAD, FILE, "2000", sig), 2000)

    def test_expired(self) -> None:
        """
        After its expiry a good signature is refused as expired.
        """
        sig = self.signer.sign(DOWNLOAD, FILE, 2000)
        self.clock.advance(1001)
        error = self.assertRaises(SignatureError, self.signer.verify, DOWNLOAD, FILE, "2000", sig)
        self.assertTrue(error.expired)

    def test_tampering(self) -> None:
        """
        Another file, another expiry, another purpose, another key or a
        changed signature: refused, not as expired.
        """
        sig = self.signer.sign(DOWNLOAD, FILE, 2000)
        cases = [
            (DOWNLOAD, OTHER, "2000", sig),
            (DOWNLOAD, FILE, "2001", sig),
            (DOWNLOAD, FILE, "99999", sig),
            (THUMBNAIL, FILE, "2000", sig),
            (UPLOAD, FILE, "2000", sig),
            (DOWNLOAD, FILE, "2000", sig[:-1] + ("A" if sig[-1] != "A" else "B")),
            (DOWNLOAD, FILE, "2000", URLSigner(b"j" * 32, self.clock).sign(DOWNLOAD, FILE, 2000)),
            (DOWNLOAD, FILE, "2000", ""),
            (DOWNLOAD, FILE, None, sig),
            (DOWNLOAD, FILE, "-5", sig),
            (DOWNLOAD, FILE, "2e3", sig),
            (DOWNLOAD, FILE, "2000", sig * 3),
        ]
        for purpose, fileId, expires, signature in cases:
            error = self.assertRaises(SignatureError, self.signer.verify, purpose, fileId, expires, signature)
            self.assertFalse(error.expired, (purpose, fileId, expires))

    def test_uploadTokens(self) -> None:
        """
        An upload token opens its own file only, whatever the time (its
        upload's record decides how long); it is no download signature.
        """
        token = self.signer.uploadToken(FILE)
        self.signer.verifyUploadToken(FILE, token)
        self.clock.advance(10**9)
        self.signer.verifyUploadToken(FILE, token)
        for bad in (None, "", token[:-1], self.signer.uploadToken(OTHER), token + "x" * 60):
            self.assertRaises(SignatureError, self.signer.verifyUploadToken, FILE, bad)
        self.assertRaises(SignatureError, self.signer.verify, DOWNLOAD, FILE, "0", token)

    def test_shortSecret(self) -> None:
        """
        A secret under 16 bytes is refused.
        """
        self.assertRaises(ValueError, URLSigner, b"short", self.clock)


class SecretTests(SynchronousTestCase):
    """
    L{loadSecret}.
    """

    def test_keptInTheDataDirectory(self) -> None:
        """
        Without a configured secret, 32 random bytes are made once, kept
        readable by the owner only, and read again on the next start.
        """
        directory = FilePath(self.mktemp())
        first = loadSecret(directory)
        self.assertEqual(len(first), 32)
        path = directory.child("url-secret")
        self.assertEqual(stat.S_IMODE(os.stat(path.path).st_mode), 0o600)
        self.assertEqual(loadSecret(directory), first)
        self.assertNotEqual(loadSecret(FilePath(self.mktemp())), first)

    def test_configured(self) -> None:
        """
        A configured secret wins and nothing is written.
        """
        directory = FilePath(self.mktemp())
        self.assertEqual(loadSecret(directory, "s" * 20), b"s" * 20)
        self.assertFalse(directory.child("url-secret").exists())
