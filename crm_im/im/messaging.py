# -*- test-case-name: tests.test_im_messaging -*-
"""
Messages in every conversation kind, as transport-free handlers: sending
(1:1, group, room), the 1:1 offline queue, inline files, history, read
state, typing and recall.

Delivery order: a message is delivered only after its commit, and the
receipt follows. While a user's offline queue is being delivered to their
first device, live 1:1 messages for them are held and delivered after it,
so a conversation never arrives out of C{seq} order: those stored here by
the catch-up, those routed to the device from another node by the router
(L{IRouter.hold}).

The 1:1 path is the hot path of the server (the relay benchmark): it
avoids allocations it does not need (one callback pair per message, no
coroutine) and marks delivered messages in one write per reactor turn.
"""

from __future__ import annotations

from typing import AbstractSet, Any, Callable, Iterable, Protocol

import attrs
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from .._json import dumps
from .metrics import IMMetrics
from ..notify.rules import groupRecipients
from ..presence import Presence
from ..safelog import Logger
from ..storage.interface import (
    FileRecord,
    HistoryPage,
    IConversationStore,
    IFileStore,
    IMessageStore,
    NewMessage,
    StoreClosedError,
    StoredMessage,
    StoreOutcome,
    directConversation,
    groupConversation,
    messageWeight,
    roomConversation,
)
from . import conversations as rules
from . import validation
from .errors import FORBIDDEN, INVALID_PAYLOAD, INTERNAL, NOT_FOUND, IMError
from .files import FileHandlers, baseFileName, cleanMimeType, filePath
from .groups import GroupDirectory
from .interfaces import Caller, IRouter
from .rooms import RoomHandlers

#: How many offline messages are fetched and sent per round.
PENDING_BATCH = 200
#: Message types counted under their own name in C{/metrics} (the rest,
#: system messages aside, count as C{text}).
_COUNTED_TYPES = frozenset(["file", "encrypted"])


@attrs.define
class _CatchUp:
    """
    A user's offline queue being delivered (L{Messaging.catchUp}).

    @ivar device: the device it goes to.
    @ivar held: the messages to the user stored meanwhile, in the order
        they came, at most L{PENDING_BATCH}; still in the queue, where the
        catch-up may find them.
    @ivar delivered: the seqs the catch-up sent.
    @ivar overflow: more came than L{held} keeps: another catch-up
        follows, for those its reads did not find.
    @ivar routed: the events the router held for the device (from another
        node: stored there) and released as the catch-up sent past them.
    """

    device: str
    held: list[StoredMessage] = attrs.Factory(list)
    delivered: set[int] = attrs.Factory(set)
    overflow: bool = False
    routed: list[tuple[str, dict[str, Any]]] = attrs.Factory(list)


@attrs.frozen
class MessagingSettings:
    """
    @ivar maxMessageLength: the longest C{content} of a text message.
    @ivar recallWindow: seconds after sending during which a sender may
        recall a message.
    @ivar logEvents: log a line per message (the original's C{[消息]}).
    @ivar maxCiphertext: the largest ciphertext of an encrypted message, in
        characters (the server's maxPayload).
    @ivar maxHistoryBytes: the most a history page may weigh, encoded
        (the server's maxPayload; a page always has one message).
    """

    maxMessageLength: int = 65536
    recallWindow: float = 120.0
    logEvents: bool = True
    maxCiphertext: int = validation.MAX_CIPHERTEXT
    maxHistoryBytes: int = validation.MAX_CIPHERTEXT


class Notifier(Protocol):
    """
    Where the message path reports messages to notify by push
    (L{crm_im.notify.sender.PushSender}).
    """

    def enqueued(self, userId: str, seq: int, createdAt: int, durable: bool = True) -> None:
        """
        Message C{seq} for C{userId} is stored; its outbox row is durable
        unless C{durable} is false (then the notifier writes it).
        """


def roomNotFound() -> IMError:
    """
    The refusal for a room the caller may not see.
    """
    return IMError(NOT_FOUND, "no such room")


def namingMessage(failure: Failure, messageId: str) -> Failure:
    """
    A refusal of a message names its id (PROTOCOL.md section 3), also when
    it came from a check that knows nothing of messages (membership of a
    group, a socket in a room).
    """
    error = failure.value
    if isinstance(error, IMError) and error.id is None:
        error.id = messageId
    return failure


def resent(new: NewMessage, earlier: StoredMessage) -> None:
    """
    C{new} has the sender and id of C{earlier}, stored before: a resend
    (its ack was lost), answered with C{earlier}'s receipt, if it names the
    same conversation.

    @raise IMError: C{INVALID_PAYLOAD} if it names another: an id used
        again for another message (ids are the sender's, per sender), which
        a receipt would tell the sender was stored when it was not.
    """
    if (new.toId, new.groupId, new.roomId) != (earlier.toId, earlier.groupId, earlier.roomId):
        raise IMError(
            INVALID_PAYLOAD, "this id names another message of yours, in another conversation: use a new id", new.id
        )


class Messaging:
    """
    The message events, for every conversation kind.
    """

    log = Logger()

    def __init__(
        self,
        store: IMessageStore,
        cursors: IConversationStore,
        files: IFileStore,
        presence: Presence,
        router: IRouter,
        groups: GroupDirectory,
        rooms: RoomHandlers,
        clock: IReactorTime,
        settings: MessagingSettings | None = None,
        metrics: IMMetrics | None = None,
    ) -> None:
        self.store = store
        self.cursors = cursors
        self.files = files
        self.presence = presence
        self.router = router
        self.groups = groups
        self.rooms = rooms
        self.clock = clock
        self.settings = settings if settings is not None else MessagingSettings()
        self.metrics = metrics if metrics is not None else IMMetrics()
        # Users whose offline queue is being delivered -> its state.
        self._catchingUp: dict[str, _CatchUp] = {}
        # Messages delivered live whose "delivered" flag is not committed yet.
        self._unflushed: set[int] = set()
        # Delivered this turn, to be marked in one write at its end.
        self._toMark: list[int] = []
        #: Offline push (PUSH.md), set by the wiring when a gateway is
        #: configured: the users with pushkeys, the muted groups and where
        #: to report what to notify. Empty, the message path pays one set
        #: look-up for it.
        self.pushUsers: AbstractSet[str] = frozenset()
        self.pushMutes: AbstractSet[tuple[str, str]] = frozenset()
        self.notifier: Notifier | None = None
        #: Uploaded files (FILES.md), set by the wiring: the handlers that
        #: resolve a message's C{fileId}, and what fills a file message's
        #: wire form with fresh signed links.
        self.fileHandlers: FileHandlers | None = None
        self.fileLinks: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    def now(self) -> int:
        """
        Milliseconds since the epoch, from the injected clock.
        """
        return int(self.clock.seconds() * 1000)

    def wire(self, stored: StoredMessage) -> dict[str, Any]:
        """
        The wire form of a stored message, a file message's links signed
        afresh.
        """
        wire = stored.toWire()
        if stored.fileId is not None and self.fileLinks is not None:
            self.fileLinks(wire)
        return wire

    def timed(self, d: "Deferred[Any]", operation: str) -> "Deferred[Any]":
        """
        Observe how long the store took for C{d} (success or failure).
        """
        histogram = self.metrics.store[operation]
        started = self.clock.seconds()

        def observe(result: object) -> object:
            histogram.observe(self.clock.seconds() - started)
            return result

        return d.addBoth(observe)

    # ---- sending

    def send(self, caller: Caller, data: Any) -> Deferred[dict[str, Any]]:
        """
        C{message}: store durably, deliver, then answer with the receipt.
        """
        settings = self.settings
        request = validation.message(data, caller.userId, settings.maxMessageLength, settings.maxCiphertext)
        toId = request.toId
        notify: tuple[str, ...] = ()
        if toId is not None and toId in self.pushUsers:
            notify = self._directNotify(toId, caller.userId)
        new = NewMessage(
            fromId=caller.userId,
            fromName=caller.name,
            toId=request.toId,
            id=request.id,
            topic=request.topic,
            type=request.type,
            content=request.content,
            fileUrl=request.fileUrl,
            fileName=request.fileName,
            clientTimestamp=request.timestamp,
            serverTimestamp=self.now(),
            groupId=request.groupId,
            roomId=request.roomId,
            notify=notify,
            ciphertext=request.ciphertext,
            algorithm=request.algorithm,
            mentions=request.mentions,
        )
        if request.fileId is not None:
            return ensureDeferred(self._sendFile(caller, new, request.fileId)).addErrback(namingMessage, new.id)
        if toId is not None:
            return self.store.storeMessage(new).addCallbacks(
                self._directStored, self._storeFailed, callbackArgs=(caller, notify, new), errbackArgs=(request.id,)
            )
        if request.groupId is not None:
            return ensureDeferred(self._sendToGroup(caller, new)).addErrback(namingMessage, new.id)
        return ensureDeferred(self._sendToRoom(caller, new)).addErrback(namingMessage, new.id)

    async def _sendFile(self, caller: Caller, new: NewMessage, fileId: str) -> dict[str, Any]:
        """
        A message carrying an uploaded file: its name, size and type come
        from the file's record, never from the client.
        """
        if self.fileHandlers is None:
            raise IMError(NOT_FOUND, "this server keeps no uploaded files", new.id)
        record = await self.fileHandlers.ownFile(caller, fileId, new.id)
        new = attrs.evolve(
            new,
            fileId=record.fileId,
            fileUrl=filePath(record.fileId, record.fileName),
            fileName=record.fileName,
            fileSize=record.size,
            mimeType=record.mimeType,
        )
        if new.toId is not None:
            outcome = await self._store(new)
            return self._directStored(outcome, caller, new.notify, new)
        if new.groupId is not None:
            return await self._sendToGroup(caller, new)
        return await self._sendToRoom(caller, new)

    def _storeFailed(self, failure: Failure, messageId: str) -> Failure:
        if failure.check(IMError):
            return failure
        self.log.failure("storing message {id}", failure, id=messageId)
        raise IMError(INTERNAL, "the message could not be stored; send it again", messageId)

    async def _store(self, new: NewMessage) -> StoreOutcome:
        try:
            return await self.store.storeMessage(new)
        except IMError:
            raise
        except Exception:
            self.log.failure("storing message {id}", id=new.id)
            raise IMError(INTERNAL, "the message could not be stored; send it again", new.id)

    def _receipt(self, caller: Caller, receipt: dict[str, Any]) -> dict[str, Any]:
        if caller.device is not None:
            self.router.toDevices((caller.device,), "message:sent", receipt)
        return receipt

    def _directNotify(self, toId: str, fromId: str) -> tuple[str, ...]:
        """
        Whom a 1:1 message to C{toId} (who has pushkeys) notifies: C{toId}
        if no device of theirs is connected.
        """
        if toId == fromId or self.presence.devicesOf(toId):
            return ()
        return (toId,)

    def _directStored(
        self, outcome: StoreOutcome, caller: Caller, notify: tuple[str, ...] = (), new: NewMessage | None = None
    ) -> dict[str, Any]:
        stored = outcome.message
        if not outcome.created and new is not None:
            resent(new, stored)
        if outcome.created:
            self.metrics.messages[stored.type if stored.type in _COUNTED_TYPES else "text"].inc()
            delivered = self._deliverDirect(stored, caller.device)
            if notify or (not delivered and stored.toId in self.pushUsers and stored.toId != stored.fromId):
                # Offline (the row was written with the message), or gone
                # offline while it was stored (the notifier writes the row).
                if self.notifier is not None and stored.toId is not None:
                    self.notifier.enqueued(stored.toId, stored.seq, stored.serverTimestamp, bool(notify))
            if self.settings.logEvents:
                self.log.info(
                    "[消息] {fromId} -> {toId} seq={seq} {outcome}",
                    fromId=stored.fromId,
                    toId=stored.toId,
                    seq=stored.seq,
                    delivered=delivered,
                    outcome=f"已转发给 {stored.toId}" if delivered else f"{stored.toId} 不在线，已存为离线消息",
                )
        else:
            delivered = stored.delivered or stored.seq in self._unflushed
        status = "delivered" if delivered else "offline"
        self.metrics.receipts[status].inc()
        return self._receipt(caller, {"messageId": stored.id, "status": status, "timestamp": stored.serverTimestamp})

    def _deliverDirect(self, stored: StoredMessage, senderDevice: str | None) -> bool:
        """
        Deliver a newly stored 1:1 message to the recipient's devices and
        the sender's other devices.

        @return: whether a device of the recipient got it (or will, right
            after its offline queue).
        """
        toId = stored.toId
        assert toId is not None
        wire = self.wire(stored)
        catchUp = self._catchingUp.get(toId)
        if catchUp is not None:
            # Its place is after the queue being delivered, which the
            # catch-up reads it with if it comes in time; it stays in the
            # queue until a device of the recipient is sent it.
            if len(catchUp.held) < PENDING_BATCH:
                catchUp.held.append(stored)
            else:
                catchUp.overflow = True
            if stored.fromId != toId:
                self.router.toUsers((stored.fromId,), "message", wire, senderDevice, stored.order)
            return True
        delivered = bool(self.presence.devicesOf(toId))
        if stored.fromId == toId:
            # a note to oneself reaches every device, the sending one too
            self.router.toUsers((toId,), "message", wire, order=stored.order)
        else:
            self.router.toUsers((toId, stored.fromId), "message", wire, senderDevice, stored.order)
        if delivered and self.presence.hasDeviceHere(toId):
            # (a device on another node: that node marks it, L{routedHere})
            self._markSoon(stored.seq)
        return delivered

    def routedHere(self, payload: dict[str, Any]) -> None:
        """
        Another node's stored 1:1 message (C{message} or C{file_transfer})
        was just written to a device of its recipient here: mark it
        delivered, as L{_deliverDirect} does on the node that stored it for
        its own devices. The storing node does not mark what it routes: a
        node that died since its last heartbeat would take the message out
        of the offline queue unsent (and the recipient, reconnecting
        elsewhere, would never get it).
        """
        seq = payload.get("seq")
        if type(seq) is int and isinstance(payload.get("toId"), str):
            self._markSoon(seq)

    def _markSoon(self, seq: int) -> None:
        """
        Mark message C{seq}, sent to a device of its recipient, delivered:
        one markDelivered per reactor turn for every message delivered in
        it (a commit's batch is delivered in one turn).
        """
        self._unflushed.add(seq)
        if not self._toMark:
            self.clock.callLater(0, self._markDelivered)
        self._toMark.append(seq)

    def _markDelivered(self) -> None:
        seqs, self._toMark = self._toMark, []
        self.store.markDelivered(seqs).addBoth(self._flushed, seqs)

    def _flushed(self, result: object, seqs: list[int]) -> None:
        self._unflushed.difference_update(seqs)
        if isinstance(result, Failure):
            if result.check(StoreClosedError):
                # Delivered while the server stopped, after its store
                # closed: not an error, and nothing is lost; they come
                # again from the offline queue (delivery is at least once).
                self.log.info(
                    "{count} messages delivered as the store closed: they will be delivered again at the next login",
                    count=len(seqs),
                )
                return
            self.log.failure("marking {count} messages delivered", result, count=len(seqs))

    async def _sendToGroup(self, caller: Caller, new: NewMessage) -> dict[str, Any]:
        groupId = new.groupId
        assert groupId is not None
        state = self.groups.cached(groupId)
        if state is None:
            state = await self.groups.get(groupId)
        rules.authorize(state, caller.userId, rules.SEND)
        assert state is not None
        if self.pushUsers:
            notify = groupRecipients(
                state.members, groupId, caller.userId, self.pushUsers, self._connected, self.pushMutes, set(new.mentions)
            )
            if notify:
                new = attrs.evolve(new, notify=notify)
        outcome = await self._store(new)
        stored = outcome.message
        if not outcome.created:
            resent(new, stored)
        else:
            self.metrics.messages[stored.type if stored.type in _COUNTED_TYPES else "text"].inc()
            if new.notify and self.notifier is not None:
                for userId in new.notify:
                    self.notifier.enqueued(userId, stored.seq, stored.serverTimestamp)
            self.groups.noteMessage(groupId, stored.seq)
            current = self.groups.cached(groupId) or state
            assert current is not None
            self.router.toUsers(current.members, "message", self.wire(stored), caller.device, stored.order)
            if self.settings.logEvents:
                self.log.info("[群消息] {fromId} -> {groupId} seq={seq}", fromId=stored.fromId, groupId=groupId, seq=stored.seq)
        self.metrics.receipts["sent"].inc()
        return self._receipt(
            caller, {"messageId": stored.id, "status": "sent", "timestamp": stored.serverTimestamp, "seq": stored.seq}
        )

    async def _sendToRoom(self, caller: Caller, new: NewMessage) -> dict[str, Any]:
        roomId = new.roomId
        assert roomId is not None
        room = await self.rooms.record(roomId)
        if room is None:
            raise roomNotFound()
        if caller.device is None or not self.rooms.rooms.contains(roomId, caller.device):
            raise IMError(FORBIDDEN, "join the room first (room:join)")
        outcome = await self._store(new)
        stored = outcome.message
        if not outcome.created:
            resent(new, stored)
        else:
            self.metrics.messages[stored.type if stored.type in _COUNTED_TYPES else "text"].inc()
            self.router.toDevices(
                list(self.rooms.rooms.devices(roomId)), "message", self.wire(stored), caller.device, stored.order
            )
        self.metrics.receipts["sent"].inc()
        return self._receipt(
            caller, {"messageId": stored.id, "status": "sent", "timestamp": stored.serverTimestamp, "seq": stored.seq}
        )

    # ---- the 1:1 offline queue

    def catchUp(self, userId: str, device: str) -> Deferred[None]:
        """
        Deliver C{userId}'s offline queue to C{device}, their first device,
        unless a delivery to them is under way.
        """
        if userId in self._catchingUp:
            d: Deferred[None] = Deferred()
            d.callback(None)
            return d
        catchUp = self._catchingUp[userId] = _CatchUp(device)
        # (what other nodes deliver to the device meanwhile waits too)
        self.router.hold(device)
        d = ensureDeferred(self._deliverPending(userId, device, catchUp))
        d.addErrback(lambda failure: self.log.failure("offline delivery to {userId}", failure, userId=userId))
        d.addBoth(lambda _: self._endCatchUp(userId))
        return d

    async def _deliverPending(self, userId: str, device: str, catchUp: "_CatchUp") -> None:
        """
        Send the queue in reads of at most L{PENDING_BATCH} messages and
        about C{maxHistoryBytes}, each message when the device's connection
        has room (L{IRouter.whenWritable}): a queue of 200 messages near
        C{--max-payload} each, sent at once, would pass its buffer bound,
        close it, and come again at every login. What was sent is marked
        delivered as it goes (the marks ride with other writes, as the live
        ones do; the next read starts past them), and each sender hears
        C{delivered} once its mark is committed; what was not sent waits
        for the next login.
        """
        budget = self.settings.maxHistoryBytes
        after = 0
        while True:
            batch = await self.timed(self.store.pendingFor(userId, PENDING_BATCH, budget, after), "pending")
            if not batch:
                return
            after = batch[-1].seq
            # (delivered live, or by an earlier catch-up, and not marked yet)
            fresh = [m for m in batch if m.seq not in self._unflushed]
            sent: list[StoredMessage] = []
            for stored in fresh:
                if not await self.router.whenWritable(device):
                    break
                user = self.presence.userOfDevice(device)
                if user is None or user.id != userId:
                    # That device went; the rest waits for the next login.
                    break
                self._sendPastHold(catchUp, "message", self.wire(stored))
                sent.append(stored)
            if sent:
                seqs = [m.seq for m in sent]
                catchUp.delivered.update(seqs)
                self._unflushed.update(seqs)
                # (a message held during the catch-up got its receipt,
                # "delivered", when it was stored)
                held = {m.seq for m in catchUp.held}
                queued = [m for m in sent if m.seq not in held]
                marked = self.store.markDelivered(seqs)
                marked.addCallback(lambda _, queued: self.queueDelivered(queued), queued)
                marked.addBoth(self._flushed, seqs)
            if len(sent) < len(fresh):
                return
            if len(batch) < PENDING_BATCH and sum(messageWeight(m) for m in batch) <= budget:
                # the whole queue (a read that filled neither bound)
                return

    def _sendPastHold(self, catchUp: _CatchUp, event: str, payload: dict[str, Any]) -> None:
        """
        Send an event of the queue to the catch-up's device, which the
        router holds: what it held until now is kept for after the queue.
        """
        device = catchUp.device
        catchUp.routed.extend(self.router.release(device))
        self.router.toDevices((device,), event, payload)
        self.router.hold(device)

    def queueDelivered(self, queued: list[StoredMessage]) -> None:
        """
        Messages of the offline queue were sent (by a catch-up, once their
        marks are committed; or by a recovery replay): their senders hear
        C{message:sent} C{delivered}.
        """
        self.metrics.receipts["delivered"].inc(len(queued))
        for stored in queued:
            self.router.toUsers(
                (stored.fromId,),
                "message:sent",
                {"messageId": stored.id, "status": "delivered", "timestamp": stored.serverTimestamp},
            )

    def _endCatchUp(self, userId: str) -> None:
        """
        The messages that came during the catch-up and that its reads did
        not find go now, in C{seq} order: those stored here to every
        device of the user, marked delivered if one was there (past
        L{PENDING_BATCH} of them, the rest by another catch-up); those the
        router held for the catch-up's device, to it.
        """
        catchUp = self._catchingUp.pop(userId)
        device = catchUp.device
        routed = catchUp.routed + self.router.release(device)
        user = self.presence.userOfDevice(device)
        here = user is not None and user.id == userId
        late: list[tuple[int, int, Any]] = [
            (m.seq, 0, m) for m in catchUp.held if m.seq not in catchUp.delivered
        ]
        unordered: list[tuple[str, dict[str, Any]]] = []
        if not here:
            # Messages another node routed here were marked delivered as
            # they were handed to the (holding) router; the device went
            # before they were sent: back to the queue, for the next login.
            lost = [
                p["seq"]
                for e, p in routed
                if e == "message" and p.get("toId") == userId and type(p.get("seq")) is int
            ]
            if lost:
                self.store.requeue(userId, lost).addErrback(
                    lambda f: self.log.failure("requeueing {count} messages to {userId}", f, count=len(lost), userId=userId)
                )
        else:
            for event, payload in routed:
                seq = payload.get("seq")
                if type(seq) is not int:
                    unordered.append((event, payload))
                elif seq not in catchUp.delivered:
                    # (a message the catch-up read found is not sent twice)
                    late.append((seq, 1, (event, payload)))
        late.sort(key=lambda entry: (entry[0], entry[1]))
        for _, fromRouter, item in late:
            if fromRouter:
                self.router.toDevices((device,), item[0], item[1])
            elif self.router.toUsers((userId,), "message", self.wire(item)):
                self._markSoon(item.seq)
        for event, payload in unordered:
            self.router.toDevices((device,), event, payload)
        if catchUp.overflow and here:
            self.catchUp(userId, device)

    # ---- files sent inline

    def fileTransfer(self, caller: Caller, data: Any) -> Any:
        """
        C{file_transfer}: keep the file (content-addressed) and record a
        C{file} message in history, for online and offline recipients
        alike; relay the transfer as it came to online devices (with the
        name, size and type history has), queue the message for an offline
        recipient. A retried transfer (same C{id})
        is answered from the message stored the first time. The file is
        held to the limits of an upload (C{TOO_LARGE}).
        """
        request = validation.fileTransfer(data, caller.userId)
        return ensureDeferred(self._fileTransfer(caller, request))

    async def _fileTransfer(self, caller: Caller, request: validation.FileRequest) -> dict[str, Any]:
        if request.raw.get("id") is not None:
            earlier = await self.store.findMessage(caller.userId, request.id)
            if earlier is not None and earlier.toId == request.toId:
                return self._directStored(StoreOutcome(earlier, created=False), caller)
        now = self.now()
        fileName = baseFileName(request.fileName)

        def save() -> Deferred[FileRecord]:
            return self.files.save(
                caller.userId,
                request.toId,
                fileName,
                # as an upload's: what downloads are served as, never null
                cleanMimeType(request.mimeType),
                request.data,
                now,
                directConversation(caller.userId, request.toId),
            )

        try:
            if self.fileHandlers is None:
                record = await save()
            else:
                # within --max-file-size and the quota, as file:upload
                record = await self.fileHandlers.keepInline(caller, len(request.data), request.id, save)
        except IMError:
            raise
        except Exception:
            self.log.failure("keeping file {id}", id=request.id)
            raise IMError(INTERNAL, "the file could not be stored; send it again", request.id)
        toId = request.toId
        online = bool(self.presence.devicesOf(toId)) or toId in self._catchingUp
        notify = self._directNotify(toId, caller.userId) if toId in self.pushUsers and not online else ()
        new = NewMessage(
            fromId=caller.userId,
            fromName=caller.name,
            toId=toId,
            id=request.id,
            topic=request.topic,
            type="file",
            content=fileName,
            fileUrl=filePath(record.fileId, fileName),
            fileName=fileName,
            clientTimestamp=None,
            serverTimestamp=now,
            notify=notify,
            fileId=record.fileId,
            fileSize=record.size,
            mimeType=record.mimeType,
        )
        if not online:
            outcome = await self._store(new)
            if self.settings.logEvents:
                self.log.info("[文件] {fromId} -> {toId} kept for later", fromId=caller.userId, toId=toId)
            return self._directStored(outcome, caller, notify, new)
        outcome = await self._store(new)
        stored = outcome.message
        if not outcome.created:
            return self._directStored(outcome, caller, new=new)
        # Online: the transfer is relayed as it came (with its stored
        # file's id and link); the message is history, delivered already.
        # Its name, size and type are those history has (the name without
        # a path, the bytes' true size, a plain MIME type), not the claims.
        payload: dict[str, Any] = {
            "id": request.id,
            "toId": toId,
            "fileName": fileName,
            "data": request.raw["data"],
            "fromId": caller.userId,
            "fromName": caller.name,
            "serverTimestamp": stored.serverTimestamp,
            "fileId": record.fileId,
            "seq": stored.seq,
            "fileSize": record.size,
            "mimeType": record.mimeType,
        }
        if request.topic is not None:
            payload["topic"] = request.topic
        if self.fileLinks is not None:
            payload["fileUrl"] = self.wire(stored)["fileUrl"]
        if toId == caller.userId:
            self.router.toUsers((toId,), "file_transfer", payload, order=stored.order)
        else:
            self.router.toUsers((toId, caller.userId), "file_transfer", payload, caller.device, stored.order)
        if self.presence.hasDeviceHere(toId):
            # (a device on another node: that node marks it, L{routedHere})
            self._markSoon(stored.seq)
        if self.settings.logEvents:
            self.log.info("[文件] {fromId} -> {toId} {size} bytes", fromId=caller.userId, toId=toId, size=len(request.data))
        self.metrics.messages["file_transfer"].inc()
        self.metrics.receipts["delivered"].inc()
        return self._receipt(caller, {"messageId": stored.id, "status": "delivered", "timestamp": stored.serverTimestamp})

    # ---- history, read state, typing

    async def history(self, caller: Caller, data: Any) -> dict[str, Any]:
        """
        C{get_history}: a page of one of the caller's conversations.
        """
        request = validation.history(data)
        if request.friendId is not None:
            page = await self.timed(
                self.store.history(
                    caller.userId, request.friendId, request.topic, request.limit, request.before, request.after
                ),
                "history",
            )
            messages, hasMore = self._pageOnWire(page, request.after is not None)
            return {"friendId": request.friendId, "topic": request.topic, "messages": messages, "hasMore": hasMore}
        if request.groupId is not None:
            rules.authorize(await self.groups.get(request.groupId), caller.userId, rules.READ)
            conversation = groupConversation(request.groupId)
            answer: dict[str, Any] = {"groupId": request.groupId}
        else:
            assert request.roomId is not None
            conversation = await self._readableRoom(caller, request.roomId)
            answer = {"roomId": request.roomId}
        page = await self.timed(
            self.store.conversationHistory(conversation, request.limit, request.before, request.after), "history"
        )
        answer["messages"], answer["hasMore"] = self._pageOnWire(page, request.after is not None)
        return answer

    async def _readableRoom(self, caller: Caller, roomId: str) -> str:
        """
        The conversation of a room whose history the caller may read: a
        public room, or one this socket is in (GROUPS.md).

        @raise IMError: C{NOT_FOUND} for any other.
        """
        room = await self.rooms.record(roomId)
        inside = caller.device is not None and self.rooms.rooms.contains(roomId, caller.device)
        if room is None or not (room.public or inside):
            raise roomNotFound()
        return roomConversation(roomId)

    def _pageOnWire(self, page: HistoryPage, forward: bool) -> tuple[list[dict[str, Any]], bool]:
        """
        A history page's messages as sent, cut to
        L{IMSettings.maxHistoryBytes} encoded: the count bound alone lets
        200 messages of a ciphertext each near C{maxPayload} make a 200 MB
        answer. The messages nearest the cursor stay (the oldest when
        paging forward with C{after}, else the newest); C{hasMore} then
        says the client pages on from the last one it got, as usual.
        """
        wires = [self.wire(m) for m in page.messages]
        budget = self.settings.maxHistoryBytes
        total = kept = 0
        for wire in wires if forward else reversed(wires):
            total += len(dumps(wire))
            if kept and total > budget:
                break
            kept += 1
        if kept == len(wires):
            return wires, page.hasMore
        return (wires[:kept] if forward else wires[len(wires) - kept :]), True

    async def read(self, caller: Caller, data: Any) -> dict[str, Any]:
        """
        C{message:read}: mark received 1:1 messages read and tell their
        senders and the reader's other devices, or move the caller's read
        cursor in a group or a room (and tell the reader's other devices).
        """
        request = validation.read(data)
        now = self.now()
        userId = caller.userId
        if request.groupId is not None or request.roomId is not None:
            assert request.upToSeq is not None
            payload: dict[str, Any] = {"readerId": userId}
            if request.groupId is not None:
                rules.authorize(await self.groups.get(request.groupId), userId, rules.READ)
                conversation = groupConversation(request.groupId)
                payload["groupId"] = request.groupId
            else:
                assert request.roomId is not None
                conversation = await self._readableRoom(caller, request.roomId)
                payload["roomId"] = request.roomId
            cursor, moved = await self.timed(self.cursors.moveReadCursor(conversation, userId, request.upToSeq), "read")
            payload["upToSeq"], payload["timestamp"] = cursor, now
            if moved:
                self.router.toUsers((userId,), "message:read", payload, caller.device)
            return payload
        friendId = request.friendId
        assert friendId is not None
        newlyRead: list[StoredMessage] = await self.timed(
            self.store.markRead(userId, friendId, upToSeq=request.upToSeq, messageIds=request.messageIds),
            "read",
        )
        ids = [m.id for m in newlyRead]
        if ids:
            self.router.toUsers((friendId,), "message:read", {"readerId": userId, "messageIds": ids, "timestamp": now})
            if friendId != userId:
                # The reader's other devices clear the same unread messages
                # (as for groups); the friend is named since the ids are the
                # friend's. (A note to oneself has told every device above.)
                synced = {
                    "readerId": userId,
                    "friendId": friendId,
                    "messageIds": ids,
                    "upToSeq": max(m.seq for m in newlyRead),
                    "timestamp": now,
                }
                self.router.toUsers((userId,), "message:read", synced, caller.device)
        return {"readerId": userId, "messageIds": ids, "timestamp": now}

    def typing(self, caller: Caller, data: Any) -> Any:
        """
        C{typing}: forward to the other side's devices; never stored.
        """
        request = validation.typing(data, caller.userId)
        payload: dict[str, Any] = {"fromId": caller.userId, "fromName": caller.name, "isTyping": request.isTyping}
        if request.topic is not None:
            payload["topic"] = request.topic
        if request.toId is not None:
            sent = self.router.toUsers((request.toId,), "typing", payload)
            return {"toId": request.toId, "delivered": sent > 0}
        if request.groupId is not None:
            return ensureDeferred(self._groupTyping(caller, request.groupId, payload))
        return ensureDeferred(self._roomTyping(caller, request.roomId or "", payload))

    async def _groupTyping(self, caller: Caller, groupId: str, payload: dict[str, Any]) -> dict[str, Any]:
        state = await self.groups.get(groupId)
        rules.authorize(state, caller.userId, rules.SEND)
        assert state is not None
        payload["groupId"] = groupId
        sent = self.router.toUsers(state.members, "typing", payload, caller.device)
        return {"groupId": groupId, "delivered": sent > 0}

    async def _roomTyping(self, caller: Caller, roomId: str, payload: dict[str, Any]) -> dict[str, Any]:
        room = await self.rooms.record(roomId)
        if room is None:
            raise roomNotFound()
        if caller.device is None or not self.rooms.rooms.contains(roomId, caller.device):
            raise IMError(FORBIDDEN, "join the room first (room:join)")
        payload["roomId"] = roomId
        sent = self.router.toDevices(list(self.rooms.rooms.devices(roomId)), "typing", payload, caller.device)
        return {"roomId": roomId, "delivered": sent > 0}

    # ---- recall

    async def _recallable(self, caller: Caller, request: validation.RecallRequest) -> tuple[StoredMessage, str | None]:
        """
        Find the message C{request} names and decide whether the caller may
        recall it.

        @return: the message and the caller's role in its group (if any).
        """
        now = self.now()
        window = self.settings.recallWindow
        candidates: list[StoredMessage] = []
        own = await self.store.findMessage(caller.userId, request.messageId)
        if own is not None:
            candidates.append(own)
        if request.toId is None:
            candidates.extend(m for m in await self.store.findSharedMessages(request.messageId) if m.fromId != caller.userId)
        if request.toId is not None:
            candidates = [m for m in candidates if m.toId == request.toId]
        elif request.groupId is not None:
            candidates = [m for m in candidates if m.groupId == request.groupId]
        elif request.roomId is not None:
            candidates = [m for m in candidates if m.roomId == request.roomId]
        refusal: IMError | None = None
        for message in candidates:
            role = None
            if message.groupId is not None:
                state = await self.groups.get(message.groupId)
                try:
                    role = rules.authorize(state, caller.userId, rules.READ).role
                except IMError as error:
                    if error.code == FORBIDDEN and message.fromId == caller.userId:
                        refusal = refusal or error
                    continue
            elif message.fromId != caller.userId:
                # Someone else's room message: only group admins recall others'.
                if refusal is None and message.roomId is not None:
                    refusal = IMError(FORBIDDEN, "only its sender may recall a room message", request.messageId)
                continue
            if message.recalledBy is not None or rules.mayRecall(message, caller.userId, role, now, window):
                return message, role
            if message.type == "system":
                reason = "system messages cannot be recalled"
            elif message.fromId != caller.userId:
                reason = "only its sender, or the group's owner and admins, may recall it"
            else:
                reason = f"messages can be recalled within {window:g} s of sending"
            refusal = IMError(FORBIDDEN, reason, request.messageId)
        if refusal is None and request.toId is not None:
            # The recipient of a 1:1 message sees it, but only its sender
            # may recall it. (Named by its sender and id: that is how the
            # store finds a message; without toId there is no sender to
            # look under, and NOT_FOUND follows.)
            received = await self.store.findMessage(request.toId, request.messageId)
            if received is not None and received.toId == caller.userId:
                refusal = IMError(FORBIDDEN, "only its sender may recall a 1:1 message")
        if refusal is not None:
            refusal.id = request.messageId
            raise refusal
        raise IMError(NOT_FOUND, "no such message", request.messageId)

    async def recall(self, caller: Caller, data: Any) -> dict[str, Any]:
        """
        C{message:recall}: erase a message's content for everyone; its
        place in history stays as a stub.
        """
        request = validation.recall(data)
        message, _ = await self._recallable(caller, request)
        await self.recallStored(message, caller.userId)
        return {"messageId": request.messageId, "recalled": True}

    async def recallStored(self, message: StoredMessage, by: str) -> None:
        """
        Recall C{message} (the caller decided it may) and tell whoever sees
        its conversation; nothing happens to one already recalled. The
        admin API recalls through here with C{by="admin"}.
        """
        if message.recalledBy is not None:
            return
        now = self.now()
        stub = await self.store.recall(message.seq, by, now)
        if stub is not None:
            payload: dict[str, Any] = {
                "messageId": message.id,
                "seq": message.seq,
                "fromId": message.fromId,
                "by": by,
                "timestamp": now,
            }
            if message.toId is not None:
                payload["conversation"] = {"toId": message.toId}
                self.router.toUsers({message.fromId, message.toId}, "message:recalled", payload)
            elif message.groupId is not None:
                payload["conversation"] = {"groupId": message.groupId}
                state = await self.groups.get(message.groupId)
                if state is not None:
                    self.router.toUsers(state.members, "message:recalled", payload)
            else:
                roomId = message.roomId or ""
                payload["conversation"] = {"roomId": roomId}
                self.router.toDevices(list(self.rooms.rooms.devices(roomId)), "message:recalled", payload)

    def findSharedMessages(self, messageId: str) -> Deferred[list[StoredMessage]]:
        """
        The group and room messages with this id (for read receipts).
        """
        return self.store.findSharedMessages(messageId)

    def pushFor(self, userIds: Iterable[str], groupId: str | None = None) -> tuple[str, ...]:
        """
        Of C{userIds}, whom an event stored now notifies by push (PUSH.md):
        users with pushkeys and no connected device, and in a group only
        those who did not mute it. For callers storing messages of their
        own (the publish API); empty when push is off.
        """
        if self.notifier is None or not self.pushUsers:
            return ()
        if groupId is not None:
            return groupRecipients(userIds, groupId, "", self.pushUsers, self._connected, self.pushMutes, frozenset())
        return tuple(u for u in userIds if u in self.pushUsers and not self._connected(u))

    def pushStored(self, outcome: StoreOutcome, notify: tuple[str, ...]) -> None:
        """
        An event stored with C{notify} (L{pushFor}): its outbox rows were
        written with it; the sender takes them from here.
        """
        if outcome.created and self.notifier is not None:
            stored = outcome.message
            for userId in notify:
                self.notifier.enqueued(userId, stored.seq, stored.serverTimestamp)

    def _connected(self, userId: str) -> bool:
        """
        Has C{userId} a connected device?
        """
        return bool(self.presence.devicesOf(userId))

    def holding(self, userId: str) -> bool:
        """
        Is C{userId}'s offline queue being delivered now?
        """
        return userId in self._catchingUp


