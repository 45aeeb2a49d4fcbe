# -*- test-case-name: tests.test_im_groups -*-
"""
Groups (GROUPS.md): the C{group:*} operations as transport-free handlers,
and L{GroupDirectory}, the cache of group states the message path reads.

Every handler takes a L{Caller} and the client's payload, decides through
L{crm_im.im.conversations}, writes through the L{IConversationStore} (a
membership change and its system message in one transaction), and tells
the members through the L{IRouter}.
"""

from __future__ import annotations

import uuid
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable, Iterable

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from ..storage.interface import (
    ADMIN,
    MEMBER,
    OWNER,
    GroupChange,
    GroupRecord,
    GroupState,
    GroupSummary,
    IConversationStore,
    MemberRecord,
    NewMessage,
    StoredMessage,
    groupConversation,
)
from . import conversations as rules
from . import validation
from .errors import FORBIDDEN, NOT_FOUND, RATE_LIMITED, TOO_LARGE, IMError
from .interfaces import Caller, IRouter
from ..serial import InFlight, KeyedSerializer

_MISSING = object()


@attrs.frozen
class GroupLimits:
    """
    @ivar maxMembers: members per group, the owner included.
    @ivar maxGroupsPerUser: groups one user may be a member of.
    """

    maxMembers: int = 2000
    maxGroupsPerUser: int = 500


class GroupDirectory:
    """
    Group states by id, read through from the store and kept while the
    process runs (bounded: the oldest loaded is dropped past C{maxCached}).
    Membership changes replace the cached state with the store's state
    after the change committed. The last C{seq} of each cached group is
    kept up to date by the message path.
    """

    def __init__(self, store: IConversationStore, maxCached: int = 20_000) -> None:
        self._store = store
        self._states: dict[str, GroupState] = {}
        self._loading: dict[str, list[Deferred[GroupState | None]]] = {}
        self._lastSeq: dict[str, int] = {}
        self.maxCached = maxCached
        #: called with a group id after this process changed the group (a
        #: cluster tells the other nodes, which L{forget} it)
        self.changeListeners: list[Callable[[str], object]] = []

    def changed(self, groupId: str) -> Deferred[GroupState | None]:
        """
        This process changed C{groupId}: read it again and tell the
        listeners.
        """
        for listener in self.changeListeners:
            listener(groupId)
        return self.reload(groupId)

    def cached(self, groupId: str) -> GroupState | None:
        """
        The cached state, or L{None} if not cached.
        """
        return self._states.get(groupId)

    def get(self, groupId: str) -> Deferred[GroupState | None]:
        """
        The state of C{groupId} (L{None}: no such group), from the cache
        or the store; concurrent loads of one group share one read.
        """
        state = self._states.get(groupId)
        if state is not None:
            return succeed(state)
        d: Deferred[GroupState | None] = Deferred()
        waiting = self._loading.get(groupId)
        if waiting is not None:
            waiting.append(d)
            return d
        self._loading[groupId] = [d]
        self._store.group(groupId).addBoth(self._loaded, groupId)
        return d

    def _loaded(self, result: Any, groupId: str) -> None:
        waiting = self._loading.pop(groupId, [])
        if isinstance(result, GroupState):
            self.put(result)
        for d in waiting:
            if isinstance(result, BaseException) or hasattr(result, "raiseException"):
                d.errback(result)
            else:
                d.callback(result)

    def reload(self, groupId: str) -> Deferred[GroupState | None]:
        """
        Drop the cached state and read it again (after a change).
        """
        self.forget(groupId)
        return self.get(groupId)

    def put(self, state: GroupState) -> None:
        """
        Cache C{state}.
        """
        groupId = state.group.id
        if groupId not in self._states and len(self._states) >= self.maxCached:
            oldest = next(iter(self._states))
            self.forget(oldest)
        self._states[groupId] = state
        self._lastSeq[groupId] = max(state.lastSeq, self._lastSeq.get(groupId, 0))

    def forget(self, groupId: str) -> None:
        """
        Drop C{groupId} from the cache.
        """
        self._states.pop(groupId, None)
        self._lastSeq.pop(groupId, None)

    def noteMessage(self, groupId: str, seq: int) -> None:
        """
        A message C{seq} was stored in C{groupId}.
        """
        if groupId in self._states and seq > self._lastSeq.get(groupId, 0):
            self._lastSeq[groupId] = seq

    def lastSeq(self, state: GroupState) -> int:
        """
        The last seq of a group as known now.
        """
        return max(state.lastSeq, self._lastSeq.get(state.group.id, 0))


def memberWire(member: MemberRecord) -> dict[str, Any]:
    """
    A member as the contract shows it.
    """
    return {"userId": member.userId, "role": member.role, "joinedAt": member.joinedAt}


def orderedMembers(state: GroupState) -> list[MemberRecord]:
    """
    The owner first, then by seniority.
    """
    return sorted(state.members.values(), key=lambda m: (m.role != OWNER, m.joinedAt, m.order))


def groupWire(record: GroupRecord, memberCount: int, lastSeq: int) -> dict[str, Any]:
    """
    The contract's Group object.
    """
    return {
        "id": record.id,
        "name": record.name,
        "avatar": record.avatar,
        "ownerId": record.ownerId,
        "createdAt": record.createdAt,
        "memberCount": memberCount,
        "lastSeq": lastSeq,
    }


#: The largest ciphertext (characters, device ids counted) an encrypted
#: C{lastMessage} of a group summary carries: a login lists up to 500
#: groups, and one encrypted message may be as large as maxPayload.
MAX_SUMMARY_CIPHERTEXT = 65536


def lastMessageWire(message: StoredMessage) -> dict[str, Any]:
    """
    A group summary's C{lastMessage}: the message's wire form, except that
    a ciphertext larger than L{MAX_SUMMARY_CIPHERTEXT} is left out (and
    C{ciphertextOmitted: true} said instead; C{get_history} has it).
    """
    wire = message.toWire()
    ciphertext = message.ciphertext
    if ciphertext is not None:
        size = len(ciphertext) if isinstance(ciphertext, str) else sum(len(k) + len(v) for k, v in ciphertext.items())
        if size > MAX_SUMMARY_CIPHERTEXT:
            del wire["ciphertext"]
            wire["ciphertextOmitted"] = True
    return wire


def summaryWire(summary: GroupSummary) -> dict[str, Any]:
    """
    One entry of C{group:list} and the login C{groups} event.
    """
    wire = groupWire(summary.group, summary.memberCount, summary.lastSeq)
    wire["unreadCount"] = summary.unreadCount
    wire["readSeq"] = summary.readSeq
    wire["lastMessage"] = None if summary.lastMessage is None else lastMessageWire(summary.lastMessage)
    return wire


class GroupHandlers:
    """
    The C{group:*} events.
    """

    def __init__(
        self,
        store: IConversationStore,
        directory: GroupDirectory,
        router: IRouter,
        clock: IReactorTime,
        limits: GroupLimits | None = None,
        newId: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> None:
        self.store = store
        self.directory = directory
        self.router = router
        self.clock = clock
        self.limits = limits if limits is not None else GroupLimits()
        self.newId = newId
        #: a group's membership, roles and owner change one change at a
        #: time (on this node): each decides on what the last one left
        self.serial = KeyedSerializer()
        #: users whose membership of one more group is being written on
        #: this node (L{_joining})
        self.joining = InFlight()
        #: told C{(groupId, userIds)} when members left a group (removed,
        #: left, or it was dissolved), after the change is stored: what
        #: they kept per group elsewhere goes (their C{group:mute}).
        self.membersGone: Callable[[str, Iterable[str]], object] = lambda groupId, userIds: None

    def now(self) -> int:
        """
        Milliseconds since the epoch, from the injected clock.
        """
        return int(self.clock.seconds() * 1000)

    def wire(self, state: GroupState) -> dict[str, Any]:
        """
        The Group with members.
        """
        wire = groupWire(state.group, len(state.members), self.directory.lastSeq(state))
        wire["members"] = [memberWire(m) for m in orderedMembers(state)]
        return wire

    def _system(
        self, caller: Caller, groupId: str, action: str, content: str, **extra: Any
    ) -> NewMessage:
        system: dict[str, Any] = {"action": action, "by": caller.userId}
        system.update({key: value for key, value in extra.items() if value is not None})
        return NewMessage(
            fromId=caller.userId,
            fromName=caller.name,
            toId=None,
            id=self.newId(),
            topic=None,
            type="system",
            content=content,
            fileUrl=None,
            fileName=None,
            clientTimestamp=None,
            serverTimestamp=self.now(),
            groupId=groupId,
            system=system,
        )

    def _announce(self, userIds: Iterable[str], stored: StoredMessage | None) -> None:
        if stored is not None:
            self.directory.noteMessage(stored.groupId or "", stored.seq)
            self.router.toUsers(userIds, "message", stored.toWire(), order=stored.order)

    @asynccontextmanager
    async def _joining(self, caller: Caller, userIds: Iterable[str]) -> AsyncIterator[None]:
        """
        Refuse if any of C{userIds} is in as many groups as a user may be;
        otherwise count them as joining one more until the block that
        writes their membership is over.

        The count is the stored memberships and those being written on this
        node: two adds of one user to two I{different} groups at once (the
        serializer orders only one group's changes) each read the stored
        count from before the other, and both passed the bound. The refusal
        says which only of the caller: how many groups someone else is in
        is theirs to know.
        """
        limit = self.limits.maxGroupsPerUser
        if not limit:
            yield
            return
        ids = list(userIds)
        counts = await self.store.groupCounts(ids)
        joining = self.joining
        if caller.userId in ids and counts.get(caller.userId, 0) + joining[caller.userId] >= limit:
            raise IMError(RATE_LIMITED, f"you are in {limit} groups already, the most a user may be in")
        if any(counts.get(userId, 0) + joining[userId] >= limit for userId in ids):
            raise IMError(RATE_LIMITED, "a user named may not join more groups")
        with joining.holding(ids):
            yield

    async def _change(self, change: GroupChange) -> tuple[GroupState | None, StoredMessage | None]:
        stored = await self.store.changeGroup(change)
        state = await self.directory.changed(change.groupId)
        return state, stored

    async def _member(self, caller: Caller, groupId: str, action: str) -> tuple[GroupState, MemberRecord]:
        state = await self.directory.get(groupId)
        member = rules.authorize(state, caller.userId, action)
        assert state is not None
        return state, member

    # ---- the events

    async def create(self, caller: Caller, data: Any) -> dict[str, Any]:
        """
        C{group:create}: the caller owns a new group (or gets back the one
        a retry with the same C{id} made).
        """
        request = validation.groupCreate(data)
        if request.clientId is not None:
            # A retry (its ack was lost) gets its group back, whatever the
            # limits say now.
            existing = await self.directory.get(request.clientId)
            if (
                existing is not None
                and existing.group.createdBy == caller.userId
                and existing.group.clientId == request.clientId
            ):
                return self.wire(existing)
        memberIds = [userId for userId in request.memberIds if userId != caller.userId]
        if len(memberIds) + 1 > self.limits.maxMembers:
            raise IMError(TOO_LARGE, f"a group has at most {self.limits.maxMembers} members")
        async with self._joining(caller, [caller.userId, *memberIds]):
            now = self.now()
            record = GroupRecord(
                id=request.clientId if request.clientId is not None else self.newId(),
                name=request.name,
                avatar=request.avatar,
                ownerId=caller.userId,
                createdBy=caller.userId,
                clientId=request.clientId,
                createdAt=now,
            )
            members = [MemberRecord(caller.userId, OWNER, now)] + [MemberRecord(u, MEMBER, now) for u in memberIds]
            system = self._system(
                caller, record.id, "create", f"{caller.name} 创建了群组「{request.name}」", userIds=memberIds
            )
            state, created, stored = await self.store.createGroup(record, members, system)
        if not created:
            self.directory.put(state)
            return self.wire(state)
        self.directory.put(attrs.evolve(state, lastSeq=0 if stored is None else stored.seq))
        wire = self.wire(state)
        self.router.toUsers(state.members, "group:joined", {"group": wire})
        self._announce(state.members, stored)
        return wire

    async def update(self, caller: Caller, data: Any) -> dict[str, Any]:
        """
        C{group:update}: owner or admin renames it or changes its avatar.
        """
        request = validation.groupUpdate(data)
        return await self.serial.run(request.groupId, lambda: self._update(caller, request))

    async def _update(self, caller: Caller, request: validation.GroupUpdateRequest) -> dict[str, Any]:
        state, _ = await self._member(caller, request.groupId, rules.UPDATE)
        renamed = request.name is not None and request.name != state.group.name
        if not renamed and (request.avatar is None or request.avatar == (state.group.avatar or "")):
            # Nothing changes: nothing to store, announce or show in history.
            return self.wire(state)
        system = self._system(
            caller,
            request.groupId,
            "rename" if renamed else "update",
            f"{caller.name} 将群名改为「{request.name}」" if renamed else f"{caller.name} 更新了群资料",
            name=request.name,
        )
        change = GroupChange(request.groupId, self.now(), name=request.name, avatar=request.avatar, system=system)
        newState, stored = await self._change(change)
        if newState is None:
            raise rules.groupNotFound()
        wire = self.wire(newState)
        self.router.toUsers(newState.members, "group:updated", {"group": wire})
        self._announce(newState.members, stored)
        return wire

    async def addMembers(self, caller: Caller, data: Any) -> dict[str, Any]:
        """
        C{group:add_members}: owner or admin adds users.
        """
        groupId, userIds = validation.groupMembers(data, "group:add_members")
        return await self.serial.run(groupId, lambda: self._addMembers(caller, groupId, userIds))

    async def _addMembers(self, caller: Caller, groupId: str, userIds: tuple[str, ...]) -> dict[str, Any]:
        state, _ = await self._member(caller, groupId, rules.ADD_MEMBERS)
        added = [userId for userId in userIds if userId not in state.members]
        if not added:
            return self.wire(state)
        if len(state.members) + len(added) > self.limits.maxMembers:
            raise IMError(TOO_LARGE, f"a group has at most {self.limits.maxMembers} members")
        async with self._joining(caller, added):
            now = self.now()
            system = self._system(caller, groupId, "add", f"{caller.name} 添加了 {', '.join(added)}", userIds=added)
            change = GroupChange(groupId, now, add=tuple(MemberRecord(u, MEMBER, now) for u in added), system=system)
            newState, stored = await self._change(change)
        if newState is None:
            raise rules.groupNotFound()
        wire = self.wire(newState)
        self.router.toUsers(added, "group:joined", {"group": wire})
        others = [userId for userId in newState.members if userId not in added]
        self.router.toUsers(
            others, "group:members", {"groupId": groupId, "added": added, "removed": [], "by": caller.userId}
        )
        self._announce(newState.members, stored)
        return wire

    async def removeMembers(self, caller: Caller, data: Any) -> dict[str, Any]:
        """
        C{group:remove_members}: owner or admin removes members (an admin
        only plain members; nobody the owner).
        """
        groupId, userIds = validation.groupMembers(data, "group:remove_members")
        return await self.serial.run(groupId, lambda: self._removeMembers(caller, groupId, userIds))

    async def _removeMembers(self, caller: Caller, groupId: str, userIds: tuple[str, ...]) -> dict[str, Any]:
        state, actor = await self._member(caller, groupId, rules.REMOVE_MEMBERS)
        removed = [userId for userId in userIds if userId in state.members]
        for userId in removed:
            if not rules.mayRemove(actor.role, state.members[userId].role):
                raise IMError(FORBIDDEN, f"a group {actor.role} may not remove the {state.members[userId].role}")
        if not removed:
            return self.wire(state)
        system = self._system(caller, groupId, "remove", f"{caller.name} 移除了 {', '.join(removed)}", userIds=removed)
        newState, stored = await self._change(GroupChange(groupId, self.now(), remove=tuple(removed), system=system))
        self.membersGone(groupId, removed)
        if newState is None:
            raise rules.groupNotFound()
        self.router.toUsers(removed, "group:left", {"groupId": groupId, "reason": "removed", "by": caller.userId})
        self.router.toUsers(
            newState.members, "group:members", {"groupId": groupId, "added": [], "removed": removed, "by": caller.userId}
        )
        self._announce(newState.members, stored)
        return self.wire(newState)

    async def leave(self, caller: Caller, data: Any) -> dict[str, Any]:
        """
        C{group:leave}: a member leaves; an owner hands the group to the
        longest-serving admin (else member); the last member dissolves it.
        """
        groupId = validation.groupId(data, "group:leave")
        return await self.serial.run(groupId, lambda: self._leave(caller, groupId))

    async def _leave(self, caller: Caller, groupId: str) -> dict[str, Any]:
        state, member = await self._member(caller, groupId, rules.LEAVE)
        now = self.now()
        heir = rules.successor(state.members.values(), caller.userId) if member.role == OWNER else None
        if member.role == OWNER and heir is None:
            await self.store.changeGroup(GroupChange(groupId, now, dissolve=True))
            await self.directory.changed(groupId)
            self.membersGone(groupId, state.members)
            self.router.toUsers([caller.userId], "group:left", {"groupId": groupId, "reason": "left", "by": caller.userId})
            return {"groupId": groupId, "left": True}
        system = self._system(caller, groupId, "leave", f"{caller.name} 退出了群组", userIds=[caller.userId])
        change = GroupChange(
            groupId,
            now,
            remove=(caller.userId,),
            ownerId=heir,
            roles=((heir, OWNER),) if heir is not None else (),
            system=system,
        )
        newState, stored = await self._change(change)
        self.membersGone(groupId, (caller.userId,))
        self.router.toUsers([caller.userId], "group:left", {"groupId": groupId, "reason": "left", "by": caller.userId})
        if newState is None:
            return {"groupId": groupId, "left": True}
        self.router.toUsers(
            newState.members,
            "group:members",
            {"groupId": groupId, "added": [], "removed": [caller.userId], "by": caller.userId},
        )
        self._announce(newState.members, stored)
        if heir is not None:
            # The handover is part of history too.
            handover = self._system(
                caller, groupId, "role", f"{caller.name} 退出，群主转让给 {heir}", userIds=[heir], role=OWNER
            )
            handed = await self.store.changeGroup(GroupChange(groupId, self.now(), system=handover))
            self._announce(newState.members, handed)
            self.router.toUsers(newState.members, "group:updated", {"group": self.wire(newState)})
        return {"groupId": groupId, "left": True}

    async def setRole(self, caller: Caller, data: Any) -> dict[str, Any]:
        """
        C{group:set_role}: the owner makes a member admin or member, or
        hands ownership over (the old owner becomes admin).
        """
        groupId, userId, role = validation.groupRole(data)
        return await self.serial.run(groupId, lambda: self._setRole(caller, groupId, userId, role))

    async def _setRole(self, caller: Caller, groupId: str, userId: str, role: str) -> dict[str, Any]:
        state, _ = await self._member(caller, groupId, rules.SET_ROLE)
        target = state.members.get(userId)
        if target is None:
            raise IMError(NOT_FOUND, "no such member")
        if userId == caller.userId:
            raise IMError(FORBIDDEN, "the owner hands the group over by making another member owner")
        if role == OWNER:
            change = GroupChange(
                groupId,
                self.now(),
                ownerId=userId,
                roles=((userId, OWNER), (caller.userId, ADMIN)),
                system=self._system(caller, groupId, "role", f"{caller.name} 将群主转让给 {userId}", userIds=[userId], role=role),
            )
        elif target.role == role:
            return self.wire(state)
        else:
            change = GroupChange(
                groupId,
                self.now(),
                roles=((userId, role),),
                system=self._system(caller, groupId, "role", f"{caller.name} 将 {userId} 设为{role}", userIds=[userId], role=role),
            )
        newState, stored = await self._change(change)
        if newState is None:
            raise rules.groupNotFound()
        wire = self.wire(newState)
        self.router.toUsers(newState.members, "group:updated", {"group": wire})
        self._announce(newState.members, stored)
        return wire

    async def dissolve(self, caller: Caller, data: Any) -> dict[str, Any]:
        """
        C{group:dissolve}: the owner ends the group; it is C{NOT_FOUND}
        for everyone afterwards.
        """
        groupId = validation.groupId(data, "group:dissolve")

        async def dissolve() -> dict[str, Any]:
            state, _ = await self._member(caller, groupId, rules.DISSOLVE)
            return await self._dissolved(state, caller.userId)

        return await self.serial.run(groupId, dissolve)

    async def dissolveGroup(self, groupId: str, by: str) -> dict[str, Any]:
        """
        End the group (the caller decided it may) and tell its members; the
        admin API dissolves through here with C{by="admin"}.

        @raise IMError: C{NOT_FOUND} if there is no such group (any more).
        """

        async def dissolve() -> dict[str, Any]:
            state = await self.directory.get(groupId)
            if state is None:
                raise rules.groupNotFound()
            return await self._dissolved(state, by)

        return await self.serial.run(groupId, dissolve)

    async def _dissolved(self, state: GroupState, by: str) -> dict[str, Any]:
        groupId = state.group.id
        await self.store.changeGroup(GroupChange(groupId, self.now(), dissolve=True))
        await self.directory.changed(groupId)
        self.membersGone(groupId, state.members)
        self.router.toUsers(state.members, "group:left", {"groupId": groupId, "reason": "dissolved", "by": by})
        return {"groupId": groupId, "dissolved": True}

    async def summaries(self, userId: str) -> list[dict[str, Any]]:
        """
        The caller's groups with unread counts, most recent activity first.
        """
        return [summaryWire(summary) for summary in await self.store.groupSummaries(userId)]

    async def listGroups(self, caller: Caller, data: Any) -> dict[str, Any]:
        """
        C{group:list}.
        """
        return {"groups": await self.summaries(caller.userId)}

    async def info(self, caller: Caller, data: Any) -> dict[str, Any]:
        """
        C{group:info}: the Group with members; members only.
        """
        state, _ = await self._member(caller, validation.groupId(data, "group:info"), rules.INFO)
        return self.wire(state)

    async def readReceipts(self, caller: Caller, data: Any, findShared: Callable[[str], Deferred[list[StoredMessage]]]) -> dict[str, Any]:
        """
        C{group:read_receipts}: who of the current members has read a
        message, from their read cursors. Members who joined after it was
        sent are in neither list: their cursor starts where the group was
        when they joined, which says nothing of that message.
        """
        groupId, messageId = validation.readReceipts(data)
        state, _ = await self._member(caller, groupId, rules.READ)
        found = [m for m in await findShared(messageId) if m.groupId == groupId]
        if not found:
            raise IMError(NOT_FOUND, "no such message in this group", messageId)
        # Ids are unique per sender only: of several members' messages with
        # this id, the caller's own (whose receipts a sender asks for), else
        # the latest.
        own = [m for m in found if m.fromId == caller.userId]
        message = (own or found)[-1]
        cursors = await self.store.readCursors(groupConversation(groupId))
        readBy: list[str] = []
        unreadBy: list[str] = []
        for member in orderedMembers(state):
            if member.userId == message.fromId or member.joinedAt > message.serverTimestamp:
                continue
            (readBy if cursors.get(member.userId, 0) >= message.seq else unreadBy).append(member.userId)
        return {"messageId": messageId, "readBy": readBy, "unreadBy": unreadBy}
