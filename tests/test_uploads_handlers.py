"""
Unit tests of L{crm_im.im.files.FileHandlers} on the handlers' memory
store: who may get a link to a file (C{file:url}), decided by the
conversation rules and the messages that carry the file.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable, TypeVar

from crm_im.im.errors import NOT_FOUND
from crm_im.im.files import FileHandlers, UploadDesk
from crm_im.storage.interface import COMPLETE, FileRecord, directConversation, groupConversation
from crm_im.storage.memoryfiles import MemoryFileRecords
from tests.test_im_handlers import START, HandlerTestCase

_T = TypeVar("_T")


class FakeDesk:
    """
    An L{UploadDesk} whose links are plain strings, and which admits
    every file.
    """

    async def create(
        self,
        fromId: str,
        toId: str,
        conversation: str,
        fileName: str,
        fileSize: int,
        mimeType: str | None,
        sha256: str | None,
        fileId: str,
    ) -> dict[str, Any]:
        """
        See L{UploadDesk.create}.
        """
        raise NotImplementedError("no uploads here")

    async def admit(self, fromId: str, fileSize: int, record: Callable[[], Awaitable[_T]]) -> _T:
        """
        See L{UploadDesk.admit}.
        """
        return await record()

    def filePath(self, fileId: str, fileName: str) -> str:
        """
        See L{UploadDesk.filePath}.
        """
        return f"/api/files/{fileId}/{fileName}"

    def fileUrl(self, fileId: str, fileName: str) -> str:
        """
        See L{UploadDesk.fileUrl}.
        """
        return self.filePath(fileId, fileName) + "?signed"

    def thumbnailUrl(self, fileId: str, mimeType: str | None) -> str | None:
        """
        See L{UploadDesk.thumbnailUrl}.
        """
        return None

    def signWire(self, wire: dict[str, Any]) -> dict[str, Any]:
        """
        Fill a file message's C{fileUrl}.
        """
        wire["fileUrl"] = self.fileUrl(wire["fileId"], wire.get("fileName") or "file")
        return wire


class FileAccessTests(HandlerTestCase):
    """
    C{file:url}: alice's files, sent to bob and to a group of alice and
    bob; carol sees neither conversation.
    """

    def setUp(self) -> None:
        """
        The core with uploads on, over memory file records.
        """
        super().setUp()
        self.records = MemoryFileRecords(self.store)
        desk = FakeDesk()
        self.core.enableUploads(self.records, desk, desk.signWire)
        handlers = self.core.files
        assert handlers is not None
        self.files: FileHandlers = handlers

    def uploaded(self, fileId: str, conversation: str, toId: str = "") -> str:
        """
        Record a complete file of alice's, uploaded for C{conversation}.
        """
        record = FileRecord(
            fileId=fileId,
            fromId="alice",
            toId=toId,
            fileName=fileId + ".txt",
            mimeType="text/plain",
            size=3,
            createdAt=START * 1000,
            conversation=conversation,
            state=COMPLETE,
            sha256="0" * 64,
        )
        self.successResultOf(self.records.recordFile(record))
        return fileId

    def url(self, device: str, fileId: str) -> dict[str, Any]:
        """
        C{file:url} from C{device}.
        """
        return self.answer(self.files.url(self.caller(device), {"fileId": fileId}))

    def urlRefused(self, device: str, fileId: str) -> str:
        """
        C{file:url} from C{device}, refused: its code.
        """
        return self.refused(self.files.url, self.caller(device), {"fileId": fileId})

    def recall(self, device: str, messageId: str) -> None:
        """
        C{message:recall} from C{device}.
        """
        self.answer(self.core.messaging.recall(self.caller(device), {"messageId": messageId}))

    def test_onlyAMessageGivesAccess(self) -> None:
        """
        A file uploaded for a conversation is its uploader's alone until a
        message there carries it; a stranger to the conversation gets
        C{NOT_FOUND} either way.
        """
        fileId = self.uploaded("f" * 32, directConversation("alice", "bob"), "bob")
        self.assertIn("fileUrl", self.url("a1", fileId))
        self.assertEqual(self.urlRefused("b1", fileId), NOT_FOUND)
        self.send("a1", "", id="m1", toId="bob", type="file", fileId=fileId)
        self.assertEqual(self.url("b1", fileId)["fileUrl"], f"/api/files/{fileId}/{fileId}.txt?signed")
        self.assertEqual(self.urlRefused("c1", fileId), NOT_FOUND)

    def test_recallTakesTheFile(self) -> None:
        """
        Once the message carrying it is recalled, the recipient of a 1:1
        file and the members of a group get C{NOT_FOUND}; the uploader
        keeps the file, and sending it again gives it back.
        """
        self.makeGroup("a1", ["bob"])
        direct = self.uploaded("d" * 32, directConversation("alice", "bob"), "bob")
        shared = self.uploaded("g" * 32, groupConversation("g1"))
        self.send("a1", "", id="m1", toId="bob", type="file", fileId=direct)
        self.send("a1", "", id="m2", groupId="g1", type="file", fileId=shared)
        self.assertIn("fileUrl", self.url("b1", direct))
        self.assertIn("fileUrl", self.url("b1", shared))
        self.recall("a1", "m1")
        self.recall("a1", "m2")
        self.assertEqual(self.urlRefused("b1", direct), NOT_FOUND)
        self.assertEqual(self.urlRefused("b2", shared), NOT_FOUND)
        self.assertIn("fileUrl", self.url("a2", direct))
        self.assertIn("fileUrl", self.url("a2", shared))
        self.send("a1", "", id="m3", toId="bob", type="file", fileId=direct)
        self.assertIn("fileUrl", self.url("b1", direct))

    def test_anotherMessageStillCarriesIt(self) -> None:
        """
        A file sent in two messages stays readable through the one not
        recalled.
        """
        self.makeGroup("a1", ["bob"])
        fileId = self.uploaded("e" * 32, directConversation("alice", "bob"), "bob")
        self.send("a1", "", id="m1", toId="bob", type="file", fileId=fileId)
        self.send("a1", "", id="m2", groupId="g1", type="file", fileId=fileId)
        self.recall("a1", "m1")
        self.assertIn("fileUrl", self.url("b1", fileId))
        self.recall("a1", "m2")
        self.assertEqual(self.urlRefused("b1", fileId), NOT_FOUND)
