# -*- test-case-name: tests.test_im_core -*-
"""
L{IMCore}: the IM handlers built on their dependencies (store, files,
presence, router, clock, settings), for any caller: the Socket.IO gateway,
an HTTP API, tests. It only builds; each handler module owns its events.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime

from ..auth import IAuthenticator, OpenAuthenticator
from ..limits import FailureLimiter, LimitSettings
from .metrics import IMMetrics
from ..presence import Presence
from ..storage.interface import IFileRecords, IFileStore
from .errors import NOT_FOUND, IMError
from .files import FileHandlers, UploadDesk
from .groups import GroupDirectory, GroupHandlers, GroupLimits
from .interfaces import IRouter
from .keys import KeyHandlers, KeyLimits
from .messaging import Messaging, MessagingSettings
from .push import PushHandlers
from ..notify.directory import PushDirectory
from .rooms import RoomHandlers, RoomLimits, RoomPresence
from .sessions import SessionSettings, Sessions
from .tokens import TokenGate


@attrs.frozen
class IMSettings:
    """
    The IM application's own settings.

    @ivar maxMessageLength: the longest C{content} of a text message.
    @ivar shutdownMessage: the text of C{server:shutdown}.
    @ivar logEvents: log a line per event (the original's C{[消息]} lines).
    @ivar recallWindow: seconds a sender may recall a message.
    @ivar groups: group limits. @ivar rooms: room limits.
    @ivar maxCiphertext: the largest ciphertext of an encrypted message
        (the server's maxPayload). @ivar keys: the key directory's limits.
    @ivar maxHistoryBytes: the most a history page may weigh, encoded
        (the server's maxPayload; a page always has one message).
    """

    maxMessageLength: int = 65536
    shutdownMessage: str = "服务器正在关闭"
    logEvents: bool = True
    recallWindow: float = 120.0
    groups: GroupLimits = GroupLimits()
    rooms: RoomLimits = RoomLimits()
    maxCiphertext: int = 1_000_000
    keys: KeyLimits = KeyLimits()
    maxHistoryBytes: int = 1_000_000


class IMCore:
    """
    Every IM handler, wired to one store, presence and router.
    """

    def __init__(
        self,
        store: object,
        files: IFileStore,
        presence: Presence,
        router: IRouter,
        clock: IReactorTime,
        settings: IMSettings | None = None,
        authenticator: IAuthenticator | None = None,
        limits: LimitSettings | None = None,
        metrics: IMMetrics | None = None,
        roomPresence: RoomPresence | None = None,
    ) -> None:
        """
        @param store: provides L{IMessageStore} and L{IConversationStore}.
        @param roomPresence: who is in which chat room (a cluster passes
            one spanning its nodes); by default this process's own.
        """
        settings = settings if settings is not None else IMSettings()
        self.settings = settings
        self.limits = limits if limits is not None else LimitSettings()
        self.metrics = metrics if metrics is not None else IMMetrics()
        self.presence = presence
        self.router = router
        self.store: object = store
        self.tokens = TokenGate(
            authenticator if authenticator is not None else OpenAuthenticator(),
            clock,
            lambda sid: None,
            FailureLimiter(self.limits.loginFailuresPerMinute, self.limits.loginFailureBurst),
            self.metrics.authFailures.inc,
        )
        self.directory = GroupDirectory(store)  # type: ignore[arg-type]
        self.groups = GroupHandlers(store, self.directory, router, clock, settings.groups)  # type: ignore[arg-type]
        self.roomPresence = roomPresence if roomPresence is not None else RoomPresence()
        self.rooms = RoomHandlers(store, store, self.roomPresence, presence, router, clock, settings.rooms)  # type: ignore[arg-type]
        self.messaging = Messaging(
            store,  # type: ignore[arg-type]
            store,  # type: ignore[arg-type]
            files,
            presence,
            router,
            self.directory,
            self.rooms,
            clock,
            MessagingSettings(
                settings.maxMessageLength,
                settings.recallWindow,
                settings.logEvents,
                settings.maxCiphertext,
                settings.maxHistoryBytes,
            ),
            self.metrics,
        )
        #: pushkeys and mutes in memory; the message path reads them once
        #: the wiring enables push (L{enablePush})
        self.pushDirectory = PushDirectory()
        self.push = PushHandlers(store, self.pushDirectory, self.directory, clock)
        self.groups.membersGone = self.push.unmuteGone
        #: the end-to-end key directory (ENCRYPTION.md)
        self.keys = KeyHandlers(store, router, clock, settings.keys)  # type: ignore[arg-type]
        self.sessions = Sessions(
            presence,
            router,
            self.tokens,
            self.messaging,
            self.groups,
            self.rooms,
            clock,
            SessionSettings(self.limits.devicesPerUser, settings.shutdownMessage, settings.logEvents),
        )

    #: C{file:upload} and C{file:url} (FILES.md), once L{enableUploads}
    files: FileHandlers | None = None

    def enableUploads(self, records: IFileRecords, desk: UploadDesk, signWire: Any) -> None:
        """
        Uploaded files are on: C{file:upload}, C{file:url}, file messages
        by C{fileId}, and file messages' links signed as they are sent.
        """
        self.files = FileHandlers(records, desk, self.directory, self.rooms)
        self.messaging.fileHandlers = self.files
        self.messaging.fileLinks = signWire
        self.rooms.fileLinks = signWire

    def fileHandlers(self) -> FileHandlers:
        """
        The file handlers. @raise IMError: C{NOT_FOUND} if uploads are off.
        """
        if self.files is None:
            raise IMError(NOT_FOUND, "this server keeps no uploaded files")
        return self.files

    def enablePush(self, notifier: object) -> None:
        """
        Offline push is on: the message path decides whom to notify from
        L{pushDirectory} and reports to C{notifier}
        (L{crm_im.notify.sender.PushSender}).
        """
        self.messaging.pushUsers = self.pushDirectory.users
        self.messaging.pushMutes = self.pushDirectory.mutes
        self.messaging.notifier = notifier  # type: ignore[assignment]
