"""
An upload interrupted by C{kill -9} of a real C{twistd} process: the
half-written C{.part} file is found by the restarted server, which
answers C{HEAD} with the bytes that reached the disk, and the stock
tus-js-client finishes the upload from there with the same C{uploadUrl}.
"""

from __future__ import annotations

import hashlib
from typing import Any, Generator
from urllib.parse import urlsplit

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import ClientCreator, Protocol
from twisted.internet.task import deferLater

from tests.integration.test_files import generated, runTus
from tests.integration.test_twistd import ProcessTestCase
from tests.support.clients import requireKind

Inline = Generator[Deferred[Any], Any, Any]


class _HalfPatch(Protocol):
    """
    Sends a PATCH's headers and part of its body, and keeps the connection
    open.
    """

    def __init__(self, request: bytes) -> None:
        self.request = request

    def connectionMade(self) -> None:
        self.transport.write(self.request)  # type: ignore[union-attr]


class KillTests(ProcessTestCase):
    """
    C{kill -9} in the middle of an upload.
    """

    @inlineCallbacks
    def test_resumeAfterSIGKILL(self) -> Inline:
        """
        Half of a 4 MiB body is in when the server is killed (the PATCH
        still open); restarted on the same data directory, the server
        resumes the upload from the bytes on disk, tus-js-client sends the
        rest, and the stored file has the right SHA-256.
        """
        requireKind("node")
        dataDir = self.mktemp()
        process = self.spawnTwistd(dataDir)
        yield self.waitUntilServing(process)
        driver = yield self.driver("node")
        url = f"http://127.0.0.1:{process.port}"
        yield driver.connect("a", url, transports=["websocket"])
        yield driver.emit("a", "user:login", {"id": "alice", "name": "A"}, ack=True)
        size = 4 * 1024 * 1024
        data = generated(size)
        (ack,) = yield driver.emit("a", "file:upload", {"fileName": "k.bin", "fileSize": size, "toId": "alice"}, ack=True)
        parsed = urlsplit(ack["uploadUrl"])
        head = (
            b"PATCH %s?%s HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
            b"Content-Type: application/offset+octet-stream\r\nContent-Length: %d\r\n\r\n"
            % (parsed.path.encode(), parsed.query.encode(), size)
        )
        half = size // 2
        connection = yield ClientCreator(reactor, _HalfPatch, head + data[:half]).connectTCP("127.0.0.1", process.port)
        self.addCleanup(connection.transport.loseConnection)
        # wait (bounded) until the server has taken the half
        offset = 0
        for _ in range(200):
            response = yield treq.head(url + ack["uploadUrl"], headers={"Tus-Resumable": "1.0.0"}, persistent=False)
            offset = int(response.headers.getRawHeaders(b"upload-offset", [b"0"])[0])
            if offset == half:
                break
            yield deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(offset, half)
        process.signal("KILL")
        yield self.waitForExit(process)
        yield driver.waitForDisconnect("a")

        restarted = self.spawnTwistd(dataDir)
        yield self.waitUntilServing(restarted)
        url = f"http://127.0.0.1:{restarted.port}"
        reports = yield runTus(url + ack["uploadUrl"], size)
        self.assertEqual([r["event"] for r in reports if "event" in r], ["success"], reports)
        resumedAt = int([r for r in reports if r.get("response") == "HEAD"][0]["offset"])
        self.assertGreater(resumedAt, 0)
        self.assertLessEqual(resumedAt, half)
        yield driver.connect("a2", url, transports=["websocket"])
        yield driver.emit("a2", "user:login", {"id": "alice", "name": "A"}, ack=True)
        (link,) = yield driver.emit("a2", "file:url", {"fileId": ack["fileId"]}, ack=True)
        response = yield treq.get(url + link["fileUrl"], persistent=False)
        body = yield response.content()
        self.assertEqual(hashlib.sha256(body).hexdigest(), hashlib.sha256(data).hexdigest())
        restarted.signal("TERM")
        self.assertEqual((yield self.waitForExit(restarted)), 0, restarted.text)
