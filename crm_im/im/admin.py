# -*- test-case-name: tests.test_im_admin -*-
"""
The back office (ADMIN.md) as transport-free handlers: what an operator
does (kick, ban, broadcast C{system:notice}, publish a back end's event,
dissolve a group, create and close rooms, export and recall messages) and
sees (stats, users seen and their devices, the audit log).

Like the Socket.IO gateway, the admin HTTP API is a thin caller: it
authenticates, parses, and calls one method here with an L{Actor}. Every
action that changes something goes through the same handlers the socket
events use (recall through L{Messaging.recallStored}, dissolve through
L{GroupHandlers.dissolveGroup}, rooms through L{RoomHandlers}) and is
written to the audit log.

It is also a L{crm_im.im.sessions.SessionWatcher}: it keeps when each
device connected and records the users seen (batched, one write per
reactor turn), and its L{admission} refuses a banned user's login.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections import deque
from typing import Any, Callable, Iterable

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure

from .. import __version__
from ..presence import UserPresence
from ..safelog import Logger
from ..storage.admin import AuditEntry, BanRecord, IAdminStore, SeenUser, newAuditId
from ..storage.interface import (
    NewMessage,
    StoreClosedError,
    StoredMessage,
    directConversation,
    groupConversation,
    roomConversation,
)
from .core import IMCore
from .errors import CONFLICT, FORBIDDEN, INVALID_PAYLOAD, NOT_FOUND, IMError
from .groups import orderedMembers, memberWire, groupWire
from .validation import MAX_INT64
from .interfaces import Caller
from .reserved import reservedEvent

#: Who admin actions are by, in what clients see (C{by: "admin"}).
ADMIN_BY = "admin"

#: Items per page when the caller does not say, and at most.
DEFAULT_PAGE = 50
MAX_PAGE = 500

#: Minutes of per-minute message counts kept for the dashboard.
MINUTES_KEPT = 60

#: The longest broadcast and kick/ban reason.
MAX_NOTICE = 4096
MAX_REASON = 1024

@attrs.frozen
class Actor:
    """
    Who asks, for the audit log.

    @ivar name: C{token} (the shared admin token) or the C{sub} of an
        admin JWT.
    @ivar address: the client address of the request.
    """

    name: str
    address: str


@attrs.frozen
class Page:
    """
    One page of a list: C{{items, nextCursor}}.
    """

    items: list[Any]
    nextCursor: str | None

    def toWire(self) -> dict[str, Any]:
        """
        The API's list.
        """
        return {"items": self.items, "nextCursor": self.nextCursor}


def pageSize(limit: int | None) -> int:
    """
    The page size asked for, L{DEFAULT_PAGE} if none.

    @raise IMError: C{INVALID_PAYLOAD} outside 1..L{MAX_PAGE} (a larger
        page would be silently shorter than asked; a smaller one means
        nothing).
    """
    if limit is None:
        return DEFAULT_PAGE
    if not 1 <= limit <= MAX_PAGE:
        raise IMError(INVALID_PAYLOAD, f"limit must be 1..{MAX_PAGE}")
    return limit


def _text(value: Any, name: str, maxLength: int, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise IMError(INVALID_PAYLOAD, f"{name} is required")
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise IMError(INVALID_PAYLOAD, f"{name} must be a non-empty string")
    if len(value) > maxLength:
        raise IMError(INVALID_PAYLOAD, f"{name} is longer than {maxLength} characters")
    return value


def _userIds(value: Any, name: str = "userIds") -> list[str] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not 1 <= len(value) <= 10_000:
        raise IMError(INVALID_PAYLOAD, f"{name} must be a list of 1..10000 user ids")
    ids = []
    for userId in value:
        if isinstance(userId, int) and not isinstance(userId, bool):
            userId = str(userId)
        if not isinstance(userId, str) or not 1 <= len(userId) <= 128:
            raise IMError(INVALID_PAYLOAD, f"{name} must hold user ids (strings of 1..128 characters)")
        ids.append(userId)
    return list(dict.fromkeys(ids))


def _body(data: Any) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise IMError(INVALID_PAYLOAD, "the body must be a JSON object")
    return data


class AdminHandlers:
    """
    The admin operations, on one L{IMCore}.
    """

    log = Logger()

    def __init__(
        self,
        core: IMCore,
        store: IAdminStore,
        clock: IReactorTime,
        deviceInfo: Callable[[str], dict[str, Any]] = lambda device: {},
        sessionsByTransport: Callable[[], dict[str, int]] = dict,
        storeSize: Callable[[], int | None] = lambda: None,
        node: str | None = None,
        outboxDepth: Callable[[], int | None] = lambda: None,
    ) -> None:
        """
        @param deviceInfo: a device's C{transport}, C{address} and
            C{userAgent} (the transport's knowledge, given by the wiring).
        @param sessionsByTransport: open sessions by transport name.
        @param storeSize: the store's size in bytes, if known.
        @param node: this node's name (default: the host name and pid).
        @param outboxDepth: notifications waiting in the push outbox, or
            L{None} without push.
        """
        self.core = core
        self.store = store
        self.clock = clock
        self.deviceInfo = deviceInfo
        self.sessionsByTransport = sessionsByTransport
        self.storeSize = storeSize
        self.outboxDepth = outboxDepth
        self.node = node if node is not None else f"{socket.gethostname()}#{os.getpid()}"
        self.startedAt = self.now()
        self._bans: dict[str, BanRecord] = {}
        #: told of the user id of each ban or unban made here (a cluster
        #: tells the other nodes, which L{reloadBans})
        self.banListeners: list[Callable[[str], object]] = []
        self._connectedAt: dict[str, int] = {}
        self._seen: dict[str, SeenUser] = {}
        self._seenFlush: Any = None
        # (minute start in ms, messages accepted in it), oldest first
        self._minutes: deque[tuple[int, int]] = deque(maxlen=MINUTES_KEPT)
        self._minuteStart = self.startedAt
        self._minuteBase = self.accepted()
        self._sampler = LoopingCall(self._sampleMinute)
        self._sampler.clock = clock

    def now(self) -> int:
        """
        Milliseconds since the epoch, from the injected clock.
        """
        return int(self.clock.seconds() * 1000)

    # ---- lifecycle

    def start(self) -> Deferred[None]:
        """
        Load the bans (the store is open) and start counting messages per
        minute.
        """
        self.startedAt = self._minuteStart = self.now()
        self._minuteBase = self.accepted()
        if not self._sampler.running:
            self._sampler.start(60, now=False)

        return self.reloadBans()

    def reloadBans(self) -> Deferred[None]:
        """
        Read the bans from the store again (at start, and when another
        node banned or unbanned someone).
        """

        def loaded(bans: list[BanRecord]) -> None:
            self._bans = {ban.userId: ban for ban in bans}

        return self.store.bans().addCallback(loaded)

    def stop(self) -> None:
        """
        Stop the sampler and write the users seen that are still queued.
        """
        if self._sampler.running:
            self._sampler.stop()
        if self._seenFlush is not None and self._seenFlush.active():
            self._seenFlush.cancel()
            self._flushSeen()

    def accepted(self) -> int:
        """
        Messages accepted by this process since it started.
        """
        return int(sum(count.value for count in self.core.metrics.messages.values()))

    def _sampleMinute(self) -> None:
        # Minutes since the start, not wall-clock minutes: one looping
        # call, and every sample covers a whole minute.
        now = self.now()
        count = self.accepted()
        self._minutes.append((self._minuteStart, count - self._minuteBase))
        self._minuteStart = now
        self._minuteBase = count

    # ---- SessionWatcher

    def deviceConnected(self, device: str, remote: str) -> None:
        """
        Note when C{device} connected.
        """
        self._connectedAt[device] = self.now()

    def deviceLoggedIn(self, device: str, user: UserPresence) -> None:
        """
        Record that C{user} was seen now.
        """
        self._sawUser(user)

    def deviceLoggedOut(self, device: str, user: UserPresence) -> None:
        """
        The user's last device gone: they were last seen now.
        """
        if not user.devices:
            self._sawUser(user)

    def deviceDisconnected(self, device: str, reason: str) -> None:
        """
        Forget the device.
        """
        self._connectedAt.pop(device, None)

    def _sawUser(self, user: UserPresence) -> None:
        now = self.now()
        self._seen[user.id] = SeenUser(user.id, user.name, user.avatar, now, now)
        if self._seenFlush is None or not self._seenFlush.active():
            self._seenFlush = self.clock.callLater(0, self._flushSeen)

    def _flushSeen(self) -> None:
        seen, self._seen = self._seen, {}
        if not seen:
            return
        d = self.store.sawUsers(list(seen.values()))
        d.addErrback(self._logFailure, "recording the users seen")

    def _logFailure(self, failure: Failure, what: str) -> None:
        if not failure.check(StoreClosedError):
            self.log.failure("admin: {what}", failure, what=what)

    # ---- bans

    def activeBan(self, userId: str) -> BanRecord | None:
        """
        The ban on C{userId} that holds now, if any.
        """
        ban = self._bans.get(userId)
        if ban is not None and ban.active(self.now()):
            return ban
        return None

    def admission(self, userId: str) -> None:
        """
        Refuse the login of a banned user.

        @raise IMError: C{FORBIDDEN}.
        """
        if self.activeBan(userId) is not None:
            raise IMError(FORBIDDEN, "this account is banned")

    # ---- the audit log

    def audit(self, actor: Actor, action: str, target: str | None, detail: dict[str, Any] | None = None) -> Deferred[None]:
        """
        Write an audit entry; the action's answer waits for it (an
        operator's action is not done until it is on record).
        """
        entry = AuditEntry(newAuditId(), self.now(), actor.name, action, target, detail, actor.address)
        self.log.info(
            "[管理] {actor}@{address} {action} {target}",
            actor=actor.name,
            address=actor.address,
            action=action,
            target=target if target is not None else "-",  # (a broadcast to everyone has none)
        )
        return self.store.recordAudit(entry)

    async def auditLog(self, cursor: str | None, limit: int | None) -> Page:
        """
        The audit log, newest first.
        """
        size = pageSize(limit)
        before = None
        if cursor:
            at, _, auditId = cursor.partition(":")
            try:
                before = (int(at), auditId)
            except ValueError:
                raise IMError(INVALID_PAYLOAD, "bad cursor")
            if not -MAX_INT64 <= before[0] <= MAX_INT64:
                raise IMError(INVALID_PAYLOAD, "bad cursor")
        entries = await self.store.auditPage(size + 1, before)
        more = len(entries) > size
        del entries[size:]
        last = entries[-1] if entries else None
        return Page([e.toWire() for e in entries], f"{last.at}:{last.id}" if more and last else None)

    # ---- stats

    async def stats(self) -> dict[str, Any]:
        """
        The dashboard's numbers.
        """
        now = self.now()
        presence = self.core.presence
        counts = await self.store.counts()
        byTransport = self.sessionsByTransport()
        users = self._loggedIn()
        online = sum(1 for u in users if u.visible)
        # (this node's, in a cluster; devicesLoggedIn counts every node's,
        # as usersOnline and usersLoggedIn do)
        here = sum(1 for _ in presence.allDevices())
        accepted = self.accepted()
        minutes = [{"at": at, "count": count} for at, count in self._minutes]
        minutes.append({"at": self._minuteStart, "count": accepted - self._minuteBase})
        devices = sum(len(u.devices) for u in users)
        return {
            "version": __version__,
            "node": self.node,
            "nodes": [{"id": self.node, "sessions": sum(byTransport.values()), "devices": here, "startedAt": self.startedAt}],
            "startedAt": self.startedAt,
            "uptime": now - self.startedAt,
            "timestamp": now,
            "sessions": {"total": sum(byTransport.values()), "byTransport": byTransport},
            "usersOnline": online,
            "usersLoggedIn": len(users),
            "devicesLoggedIn": devices,
            "messages": {"stored": counts.messages, "accepted": accepted, "perMinute": minutes},
            "groups": counts.groups,
            "rooms": counts.rooms,
            "usersSeen": counts.usersSeen,
            "bans": sum(1 for ban in self._bans.values() if ban.active(now)),
            "storeSize": self.storeSize(),
            "pushOutbox": self.outboxDepth(),
        }

    # ---- users

    def _loggedIn(self) -> list[UserPresence]:
        """
        The users logged in on any node. (From this node's devices, in a
        cluster, C{users?online=true} left out a user online only on
        another node, whom C{online=false} left out as online: in neither
        list; and the dashboard counted this node's users only, where
        C{GET /} counts the cluster's.)
        """
        return self.core.presence.loggedInUsers()

    def _devices(self, user: UserPresence | None) -> list[dict[str, Any]]:
        if user is None:
            return []
        devices = []
        for device in sorted(user.devices):
            info: dict[str, Any] = {"id": device, "transport": None, "address": None, "userAgent": None}
            info.update(self.deviceInfo(device))
            info["connectedAt"] = self._connectedAt.get(device)
            devices.append(info)
        return devices

    def _userWire(self, userId: str, seen: SeenUser | None) -> dict[str, Any]:
        user = self.core.presence.user(userId)
        ban = self.activeBan(userId)
        lastSeen: int | None
        if user is not None and user.devices:
            status = user.status
            lastSeen = self.now()
        else:
            status = "offline"
            lastSeen = seen.lastSeen if seen is not None else None
        return {
            "id": userId,
            "name": user.name if user is not None else (seen.name if seen else userId),
            "avatar": user.avatar if user is not None else (seen.avatar if seen else None),
            "status": status,
            "online": user is not None and bool(user.devices),
            "lastSeen": lastSeen,
            "firstSeen": seen.firstSeen if seen is not None else None,
            "devices": self._devices(user),
            "ban": ban.toWire() if ban is not None else None,
        }

    async def users(self, online: bool | None, q: str | None, cursor: str | None, limit: int | None) -> Page:
        """
        Users seen (C{online=None}), only those logged in now
        (C{online=True}) or only the others (C{online=False}), by id.
        """
        size = pageSize(limit)
        if online:
            matching = sorted(
                (u for u in self._loggedIn() if (cursor is None or u.id > cursor) and _matches(q, u.id, u.name)),
                key=lambda u: u.id,
            )
            chosen = [u.id for u in matching[: size + 1]]
            seen = await self.store.seenUsersByIds(chosen[:size])
            more = len(chosen) > size
            ids = chosen[:size]
            return Page([self._userWire(i, seen.get(i)) for i in ids], ids[-1] if more and ids else None)
        found = await self.store.seenUsers(q, cursor, size + 1)
        more = len(found) > size
        del found[size:]
        items = [self._userWire(s.userId, s) for s in found]
        if online is False:
            items = [item for item in items if not item["online"]]
        return Page(items, found[-1].userId if more and found else None)

    async def user(self, userId: str) -> dict[str, Any]:
        """
        One user, seen or logged in now.
        """
        seen = (await self.store.seenUsersByIds([userId])).get(userId)
        if seen is None and self.core.presence.user(userId) is None:
            raise IMError(NOT_FOUND, "no such user")
        return self._userWire(userId, seen)

    def _kick(self, userId: str, reason: str) -> int:
        router = self.core.router
        devices = list(self.core.presence.devicesOf(userId))
        sent = router.toDevices(devices, "server:kick", {"reason": reason, "timestamp": self.now()})
        for device in devices:
            router.disconnect(device)
        # Nor may a socket of theirs that lost its connection come back.
        self.core.sessions.endSessionsOf(userId)
        return sent

    async def disconnect(self, actor: Actor, userId: str, data: Any) -> dict[str, Any]:
        """
        C{POST users/<id>/disconnect} C{{reason?}}: every device of the user
        gets C{server:kick {reason}} and is disconnected.
        """
        reason = _text(_body(data).get("reason"), "reason", MAX_REASON) or "disconnected by an administrator"
        devices = self._kick(userId, reason)
        await self.audit(actor, "user.disconnect", userId, {"reason": reason, "devices": devices})
        return {"userId": userId, "devices": devices}

    async def ban(self, actor: Actor, userId: str, data: Any) -> dict[str, Any]:
        """
        C{POST users/<id>/ban} C{{until?, reason?}}: disconnected now,
        refused at login until unbanned or C{until}.
        """
        body = _body(data)
        reason = _text(body.get("reason"), "reason", MAX_REASON)
        until = body.get("until")
        if until is not None and (
            not isinstance(until, int) or isinstance(until, bool) or not self.now() < until <= MAX_INT64
        ):
            raise IMError(INVALID_PAYLOAD, "until must be a time in the future, in ms since the epoch")
        ban = BanRecord(userId, until, reason, self.now(), actor.name)
        await self.store.saveBan(ban)
        self._bans[userId] = ban
        for listener in self.banListeners:
            listener(userId)
        devices = self._kick(userId, reason or "banned")
        await self.audit(actor, "user.ban", userId, {"until": until, "reason": reason, "devices": devices})
        return {"userId": userId, "ban": ban.toWire(), "devices": devices}

    async def unban(self, actor: Actor, userId: str) -> dict[str, Any]:
        """
        C{DELETE users/<id>/ban}.
        """
        existed = await self.store.removeBan(userId)
        self._bans.pop(userId, None)
        for listener in self.banListeners:
            listener(userId)
        await self.audit(actor, "user.unban", userId, {"existed": existed})
        return {"userId": userId, "unbanned": existed}

    # ---- broadcast and publish

    async def broadcast(self, actor: Actor, data: Any) -> dict[str, Any]:
        """
        C{POST broadcast} C{{message, userIds?}}: C{system:notice {message,
        timestamp}} to every logged-in socket or to the listed users.
        """
        body = _body(data)
        message = _text(body.get("message"), "message", MAX_NOTICE, required=True)
        userIds = _userIds(body.get("userIds"))
        payload = {"message": message, "timestamp": self.now()}
        router = self.core.router
        if userIds is None:
            delivered = router.toEveryone("system:notice", payload)
        else:
            delivered = router.toUsers(userIds, "system:notice", payload)
        await self.audit(
            actor, "broadcast", None, {"message": message, "userIds": userIds, "delivered": delivered}
        )
        return {"delivered": delivered, "timestamp": payload["timestamp"]}

    async def publish(self, actor: Actor, data: Any) -> dict[str, Any]:
        """
        C{POST /api/publish} C{{event, data, userIds? | groupId? | roomId?,
        store?}} (CLUSTER.md): a back end's event to users, a group's
        members or a room's sockets.

        @return: C{{delivered}}: the devices reached on this node.
        """
        body = _body(data)
        event = _text(body.get("event"), "event", 128, required=True)
        assert event is not None
        if reservedEvent(event):
            raise IMError(FORBIDDEN, f"{event!r} is one of the IM's own events and cannot be published")
        payload = body.get("data")
        targets = [key for key in ("userIds", "groupId", "roomId") if body.get(key) is not None]
        if len(targets) != 1:
            raise IMError(INVALID_PAYLOAD, "give exactly one of userIds, groupId and roomId")
        keep = body.get("store", False)
        if not isinstance(keep, bool):
            raise IMError(INVALID_PAYLOAD, "store must be a boolean")
        router = self.core.router
        now = self.now()
        if targets == ["userIds"]:
            userIds = _userIds(body["userIds"]) or []
            delivered = router.toUsers(userIds, event, payload)
            if keep:
                await self._storeDirect(userIds, event, payload, now)
            target = ",".join(userIds[:20])
        elif targets == ["groupId"]:
            groupId = _text(body["groupId"], "groupId", 128, required=True) or ""
            state = await self.core.directory.get(groupId)
            if state is None:
                raise IMError(NOT_FOUND, "no such group")
            delivered = router.toUsers(state.members, event, payload)
            if keep:
                await self._storeShared(event, payload, now, groupId=groupId)
            target = f"group:{groupId}"
        else:
            roomId = _text(body["roomId"], "roomId", 128, required=True) or ""
            if await self.core.rooms.record(roomId) is None:
                raise IMError(NOT_FOUND, "no such room")
            delivered = router.toDevices(list(self.core.roomPresence.devices(roomId)), event, payload)
            if keep:
                await self._storeShared(event, payload, now, roomId=roomId)
            target = f"room:{roomId}"
        await self.audit(actor, "publish", target, {"event": event, "store": keep, "delivered": delivered})
        return {"delivered": delivered}

    def _systemMessage(
        self,
        event: str,
        payload: Any,
        now: int,
        toId: str | None = None,
        groupId: str | None = None,
        roomId: str | None = None,
        notify: tuple[str, ...] = (),
    ) -> NewMessage:
        return NewMessage(
            fromId=ADMIN_BY,
            fromName=ADMIN_BY,
            toId=toId,
            id=str(uuid.uuid4()),
            topic=None,
            type="system",
            content=event,
            fileUrl=None,
            fileName=None,
            clientTimestamp=None,
            serverTimestamp=now,
            groupId=groupId,
            roomId=roomId,
            system={"action": "publish", "by": ADMIN_BY, "event": event, "data": payload},
            notify=notify,
        )

    async def _storeDirect(self, userIds: Iterable[str], event: str, payload: Any, now: int) -> None:
        """
        Keep a published event as a C{system} message per user: those with
        a device now had it live (marked delivered), the others get it as
        a C{message} at their next login, like any offline message.
        """
        store = self.core.messaging.store
        delivered = []
        messaging = self.core.messaging
        for userId in userIds:
            # offline users with pushkeys are notified (PUSH.md)
            notify = messaging.pushFor((userId,))
            outcome = await store.storeMessage(self._systemMessage(event, payload, now, toId=userId, notify=notify))
            messaging.pushStored(outcome, notify)
            if self.core.presence.devicesOf(userId):
                delivered.append(outcome.message.seq)
        if delivered:
            await store.markDelivered(delivered)

    async def _storeShared(self, event: str, payload: Any, now: int, groupId: str | None = None, roomId: str | None = None) -> None:
        messaging = self.core.messaging
        state = self.core.directory.cached(groupId) if groupId is not None else None
        # a group's offline members with pushkeys are notified (PUSH.md)
        notify = messaging.pushFor(state.members, groupId) if state is not None else ()
        outcome = await messaging.store.storeMessage(
            self._systemMessage(event, payload, now, groupId=groupId, roomId=roomId, notify=notify)
        )
        messaging.pushStored(outcome, notify)
        if groupId is not None:
            self.core.directory.noteMessage(groupId, outcome.message.seq)

    # ---- groups and rooms

    async def groups(self, q: str | None, cursor: str | None, limit: int | None) -> Page:
        """
        Groups not dissolved, by id.
        """
        size = pageSize(limit)
        found = await self.store.listGroups(q, cursor, size + 1)
        more = len(found) > size
        del found[size:]
        items = [groupWire(record, count, lastSeq) for record, count, lastSeq in found]
        return Page(items, found[-1][0].id if more and found else None)

    async def group(self, groupId: str) -> dict[str, Any]:
        """
        A group with its members (and whether each is online).
        """
        state = await self.core.directory.get(groupId)
        if state is None:
            raise IMError(NOT_FOUND, "no such group")
        wire = groupWire(state.group, len(state.members), self.core.directory.lastSeq(state))
        presence = self.core.presence
        wire["members"] = [
            dict(memberWire(m), online=bool(presence.devicesOf(m.userId))) for m in orderedMembers(state)
        ]
        return wire

    async def dissolveGroup(self, actor: Actor, groupId: str) -> dict[str, Any]:
        """
        C{DELETE groups/<id>}: dissolve, as its owner would.
        """
        state = await self.core.directory.get(groupId)
        if state is None:
            raise IMError(NOT_FOUND, "no such group")
        result = await self.core.groups.dissolveGroup(groupId, ADMIN_BY)
        await self.audit(actor, "group.dissolve", groupId, {"name": state.group.name, "members": len(state.members)})
        return result

    async def rooms(self, cursor: str | None, limit: int | None) -> Page:
        """
        Every room, by id, with who is in it now.
        """
        size = pageSize(limit)
        found = await self.store.listRooms(cursor, size + 1)
        more = len(found) > size
        del found[size:]
        handlers = self.core.rooms
        items = []
        for room in found:
            wire = handlers.wire(room)
            wire["members"] = [handlers._userWire(u) for u in self.core.roomPresence.users(room.id)]
            items.append(wire)
        return Page(items, found[-1].id if more and found else None)

    async def createRoom(self, actor: Actor, data: Any) -> dict[str, Any]:
        """
        C{POST rooms}: as C{room:create}, created by C{admin}.
        """
        room = await self.core.rooms.create(Caller(None, ADMIN_BY, ADMIN_BY), data, privileged=True)
        await self.audit(actor, "room.create", room["id"], {"name": room["name"], "public": room["public"]})
        return room

    async def closeRoom(self, actor: Actor, roomId: str) -> dict[str, Any]:
        """
        C{DELETE rooms/<id>}: the room is gone; its sockets get
        C{room:left}.
        """
        if not await self.store.deleteRoom(roomId):
            raise IMError(NOT_FOUND, "no such room")
        sockets = self.core.rooms.closed(roomId)
        await self.audit(actor, "room.close", roomId, {"sockets": sockets})
        return {"roomId": roomId, "closed": True, "sockets": sockets}

    # ---- messages

    async def messages(
        self,
        userId: str | None,
        peerId: str | None,
        groupId: str | None,
        roomId: str | None,
        before: int | None,
        after: int | None,
        limit: int | None,
    ) -> dict[str, Any]:
        """
        The conversation export, oldest first, paged by C{seq}: a 1:1
        conversation (C{userId} and C{peerId}), every 1:1 message of
        C{userId}, a group or a room. Forwards from C{after} (default: the
        start; C{nextCursor} is the next C{after}), or backwards with
        C{before} (C{nextCursor} is the next C{before}).
        """
        size = pageSize(limit)
        if sum(x is not None for x in (groupId, roomId, userId)) != 1 or (peerId is not None and userId is None):
            raise IMError(INVALID_PAYLOAD, "give userId (and peerId), or groupId, or roomId")
        conversation: str | None = None
        onlyUser: str | None = None
        if groupId is not None:
            conversation = groupConversation(groupId)
        elif roomId is not None:
            conversation = roomConversation(roomId)
        elif peerId is not None:
            assert userId is not None
            conversation = directConversation(userId, peerId)
        else:
            onlyUser = userId
        page = await self.store.exportMessages(conversation, onlyUser, size, before, after)
        items = [m.toWire() for m in page.messages]
        cursor = None
        if page.hasMore and page.messages:
            cursor = str(page.messages[0].seq if before is not None else page.messages[-1].seq)
        return {"items": items, "nextCursor": cursor, "direction": "backward" if before is not None else "forward"}

    async def recall(self, actor: Actor, messageId: str, data: Any) -> dict[str, Any]:
        """
        C{POST messages/<messageId>/recall} C{{seq?, fromId?}}: as
        GROUPS.md, C{by: "admin"}, of exactly one message.

        A client's message id is unique per sender only (the store's dedup
        key is C{(fromId, id)}): counter-style ids repeat across users and
        conversations, so the id alone may name several messages, and
        recalling them all erased other people's conversations. C{seq}
        (unique, shown by the export) or C{fromId} picks one; an id that
        still matches more than one is refused with L{CONFLICT}, listing
        what the export would show of each (seq, sender, conversation).
        A system message is refused as C{message:recall} refuses it: it is
        the record of who joined, left or renamed what.
        """
        body = _body(data)
        seq = body.get("seq")
        if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool) or not 1 <= seq <= MAX_INT64):
            raise IMError(INVALID_PAYLOAD, "seq must be a message's seq (a positive integer)")
        fromId = _text(body.get("fromId"), "fromId", 128)
        found = [
            m
            for m in await self.store.messagesById(messageId)
            if (seq is None or m.seq == seq) and (fromId is None or m.fromId == fromId)
        ]
        if not found:
            raise IMError(NOT_FOUND, "no such message", messageId)
        if len(found) > 1:
            shown = "; ".join(f"seq {m.seq} from {m.fromId} {_conversationName(m)}" for m in found[:10])
            more = f"; and {len(found) - 10} more" if len(found) > 10 else ""
            raise IMError(
                CONFLICT,
                f"{len(found)} messages have this id (ids are unique per sender only): give seq or fromId"
                f" ({shown}{more})",
                messageId,
            )
        (message,) = found
        if message.type == "system":
            raise IMError(FORBIDDEN, "system messages cannot be recalled", messageId)
        await self.core.messaging.recallStored(message, ADMIN_BY)
        await self.audit(actor, "message.recall", messageId, {"seq": message.seq, "fromId": message.fromId})
        return {"messageId": messageId, "recalled": True, "seq": message.seq, "fromId": message.fromId}


def _conversationName(message: StoredMessage) -> str:
    """
    Where C{message} is, as the export names it: C{to <user>}, C{in group
    <id>} or C{in room <id>}.
    """
    if message.groupId is not None:
        return f"in group {message.groupId}"
    if message.roomId is not None:
        return f"in room {message.roomId}"
    return f"to {message.toId}"


def _matches(q: str | None, *values: str) -> bool:
    if not q:
        return True
    q = q.lower()
    return any(q in value.lower() for value in values)


