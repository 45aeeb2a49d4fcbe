"""
The fuzz targets of C{fuzz/}: every committed seed and every input that
once found a bug replays through its target (pure Python, no atheris), and
a short coverage-guided smoke run of each target under atheris (skipped
without atheris outside CI; on CI, where C{.ci/run} installs the C{fuzz}
extra, its absence is a failure).
"""

from __future__ import annotations

import base64
import importlib
import os
import subprocess
import sys
import tempfile
from importlib.util import find_spec
from pathlib import Path
from unittest import SkipTest

from twisted.trial.unittest import SynchronousTestCase

from crm_im.engineio.packet import PacketError, decodePayloadV3

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fuzz import TARGETS  # noqa: E402

#: Inputs per target of the smoke run (seconds in all).
SMOKE_RUNS = 2000


class SeedTests(SynchronousTestCase):
    """
    Every seed of every target passes it.
    """

    def test_seeds(self) -> None:
        for name in TARGETS:
            module = importlib.import_module(f"fuzz.{name}")
            seeds = sorted((ROOT / "fuzz" / "seeds" / name).iterdir())
            self.assertTrue(seeds, name)
            for seed in seeds:
                module.TestOneInput(seed.read_bytes())


class RegressionTests(SynchronousTestCase):
    """
    What the fuzzers found, each once a crash.
    """

    def test_v3BinaryPayloadTextNotUTF8(self) -> None:
        """
        A text packet in an Engine.IO v3 binary payload must be UTF-8 (as
        engine.io-parser 2 requires): it was accepted, and the v3 encoder
        failed on it (fuzz/eio_packet.py).
        """
        crash = b"\x00\x06\xff4\x00\x06\xff4h"
        self.assertRaises(PacketError, decodePayloadV3, crash)
        self.assertEqual(list(decodePayloadV3(b"\x00\x04\xff4h\xc3\xa9")), [(4, "hé".encode(), False)])
        importlib.import_module("fuzz.eio_packet").TestOneInput(crash)


    def test_statusNotAString(self) -> None:
        """
        C{status_change} with an object or a list as its status is
        INVALID_PAYLOAD, not a TypeError (an INTERNAL error) (fuzz/validation.py).
        """
        from crm_im.im import validation
        from crm_im.im.errors import IMError

        for value in ({}, [], {"a": 1}):
            error = self.assertRaises(IMError, validation.status, {"status": value})
            self.assertEqual(error.code, "INVALID_PAYLOAD")
        importlib.import_module("fuzz.validation").TestOneInput(base64.b64decode("oyIIQQAAJvYiCHoBATB0AQF0"))


    def test_binaryEventWithoutAttachments(self) -> None:
        """
        A BINARY_EVENT with no attachments (C{50-4[""]}, which the decoder
        accepts, like socket.io-parser) is encoded again as a plain EVENT:
        it was written C{54[""]}, a packet no decoder accepts
        (fuzz/sio_packet.py).
        """
        from crm_im.socketio.packet import BINARY_ACK, BINARY_EVENT, Decoder, SocketIOPacket, encode

        packet = Decoder(maxAttachments=4, maxAttachmentBytes=4096).feed(b'50-4[""]', False)
        self.assertEqual(packet, SocketIOPacket(BINARY_EVENT, "/", [""], 4))
        self.assertEqual([frame.data for frame in encode(packet)], [b'424[""]'])
        self.assertEqual([frame.data for frame in encode(SocketIOPacket(BINARY_ACK, "/", [1], 7))], [b"437[1]"])
        frames = encode(SocketIOPacket(BINARY_EVENT, "/", ["file", b"\x00"], None))
        self.assertEqual([frame.data for frame in frames], [b'451-["file",{"_placeholder":true,"num":0}]', b"\x00"])
        importlib.import_module("fuzz.sio_packet").TestOneInput(b'50-4[""]')


class SmokeTests(SynchronousTestCase):
    """
    Each target under atheris for L{SMOKE_RUNS} inputs.
    """

    def setUp(self) -> None:
        if find_spec("atheris") is None:
            if os.environ.get("CI") == "true":
                self.fail("atheris is not installed on CI (the test extra has it: .ci/run installs '.[test]')")
            raise SkipTest("atheris is not installed: pip install '.[fuzz]' (or '.[test]') to run the fuzz smoke test")

    def test_smoke(self) -> None:
        with tempfile.TemporaryDirectory() as scratch:
            process = subprocess.run(
                [sys.executable, "-m", "fuzz.run", "--runs", str(SMOKE_RUNS), "--corpus", scratch + "/corpus",
                 "--artifacts", scratch + "/artifacts"],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=300,
            )
        output = process.stdout.decode("utf-8", "replace")
        self.assertEqual(process.returncode, 0, output)
        lines = [line.split() for line in output.splitlines()[1:] if line.split()[:1] in ([t] for t in TARGETS)]
        self.assertEqual(sorted(line[0] for line in lines), sorted(TARGETS), output)
        for line in lines:
            self.assertGreaterEqual(int(line[1]), SMOKE_RUNS, output)
