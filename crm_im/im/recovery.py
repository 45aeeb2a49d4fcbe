# -*- test-case-name: tests.test_im_recovery -*-
"""
Connection state recovery for IM clients, from the store (issue 17).

L{StoreRecovery} is the L{IConnectionRecovery} of the server: events that
are not stored messages (what the application emits with
L{SocketIOServer.emit}, in any namespace) are kept in the memory
L{RecoveryLog}, as before; the IM state of a logged-in socket of C{/} is
a L{RecoveryRecord} in the store, so a client that comes back within the
window gets its socket back on this node, on this node restarted, or on
another node sharing the database:

 - at login a record is written (the highest message seq then, no
   expiry: the socket is connected);
 - when the socket goes away for a reason worth recovering from, the
   record gets its expiry (now + window) and the chat rooms the socket
   was in; a logout, a kick, a ban, an abuse drop or an expired token
   deletes it instead;
 - a CONNECT with its C{pid} finds the record (in memory when it went away
   here, else in the store), and the socket comes back with its sid and is
   logged in again as its user (L{Sessions.resume}) with no C{user:login};
 - then the messages it missed are read from the store
   (L{IRecoveryStore.missedMessages}): the 1:1 messages to its user, and
   those of its groups and chat rooms, after the last one the client
   says it got. Every stored message's event is followed by its offset,
   C{recovery:offset "m<seq>"} (L{LocalRouter.offsets}; a cut between
   the two re-sends that one message), which socket.io-client sends
   back in its CONNECT; a client that got none since it logged in missed
   everything after the seq of its login. Live messages for the socket
   wait while they are read (L{LocalRouter.hold}); the two are merged by
   seq, each once, in order, and the 1:1 ones still in the offline queue
   are marked delivered (their senders get C{message:sent} C{delivered}).

At most L{MAX_REPLAY} messages and about L{MAX_REPLAY_BYTES} are
replayed: a client that missed more gets the oldest ones, then
C{recovery:resync} C{{afterSeq}}: it fetches the rest with
C{get_history} (C{after}), a page at a time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from ..safelog import Logger
from ..socketio.recovery import DetachedSocket, IConnectionRecovery, RecoveryLog, Restored
from ..storage.interface import StoreClosedError, StoredMessage, messageWeight
from ..storage.recovery import IRecoveryStore, RecoveryRecord
from ..timers import DeadlineHeap
from .errors import IMError

if TYPE_CHECKING:
    from ..presence import UserPresence
    from .sessions import Sessions

#: The most missed messages replayed to a socket that comes back; past it,
#: C{recovery:resync}.
MAX_REPLAY = 1000

#: The most bytes of missed messages replayed (by L{messageWeight}), the
#: message that passes it included; past it, C{recovery:resync}. The
#: server's own is its C{--max-payload}, a history page's bound.
MAX_REPLAY_BYTES = 1_000_000

#: The most records of sockets gone from this node kept in memory (the
#: oldest leave first; they stay in the store for their window).
MAX_GONE = 100_000

#: Seconds between two deletions of expired records (done along with a
#: socket going away; no timer of its own).
SWEEP_EVERY = 60.0


def imOffset(offset: str | None) -> int | None:
    """
    The seq in a stored message's offset (C{"m<seq>"}), or L{None}.
    """
    if offset is None or not offset.startswith("m"):
        return None
    digits = offset[1:]
    if not digits.isdigit() or len(digits) > 18:
        return None
    return int(digits)


class _Router(Protocol):
    """
    What recovery needs of the router (L{crm_im.routing.local.LocalRouter}).
    """

    offsets: bool

    def hold(self, device: str) -> None: ...

    def release(self, device: str) -> list[tuple[str, dict[str, Any]]]: ...

    def toDevices(self, deviceIds: Iterable[str], event: str, payload: Any, exceptDevice: str | None = None) -> int: ...

    def toUsers(self, userIds: Iterable[str], event: str, payload: Any, exceptDevice: str | None = None) -> int: ...


@implementer(IConnectionRecovery)
class StoreRecovery:
    """
    The memory log for events, and the IM state of sockets in the store.

    @ivar window: seconds a socket may come back within.
    @ivar maxReplay: see L{MAX_REPLAY}.
    @ivar maxReplayBytes: see L{MAX_REPLAY_BYTES}.
    @ivar maxGone: see L{MAX_GONE}.
    """

    log = Logger()

    def __init__(
        self,
        memory: RecoveryLog,
        store: IRecoveryStore,
        clock: IReactorTime,
        window: float,
        namespace: str = "/",
        maxReplay: int = MAX_REPLAY,
        maxReplayBytes: int = MAX_REPLAY_BYTES,
        maxGone: int = MAX_GONE,
        node: str = "",
    ) -> None:
        self.memory = memory
        self.store = store
        self.clock = clock
        self.window = window
        self.namespace = namespace
        self.maxReplay = maxReplay
        self.maxReplayBytes = maxReplayBytes
        self.maxGone = maxGone
        #: this node's C{--node-id} in a cluster: its records say so, and
        #: at start it gives only its own records the window (L{start})
        self.node = node
        #: set by L{enable}
        self.sessions: Sessions | None = None
        self.router: _Router | None = None
        #: the private session id of a device (its socket's), if any
        self.pidOf: Callable[[str], str | None] = lambda device: None
        # Logged-in devices' records (device -> record).
        self._live: dict[str, RecoveryRecord] = {}
        # Records of sockets gone from this node (pid -> record): found
        # here before their write is committed.
        self._gone: dict[str, RecoveryRecord] = {}
        # Devices coming back (sid -> record, the client's seq).
        self._comingBack: dict[str, tuple[RecoveryRecord, int | None]] = {}
        # When each record of _gone ends (its window): dropped then, not
        # at the next sweep, which only a later disconnect runs.
        self._goneDeadlines = DeadlineHeap(clock, self._goneExpired)
        self._lastSweep = clock.seconds()

    def now(self) -> int:
        return int(self.clock.seconds() * 1000)

    # ---- IConnectionRecovery: events go to the memory log

    @property
    def lastOffset(self) -> int:
        """
        See L{IConnectionRecovery.lastOffset}.
        """
        return self.memory.lastOffset

    def newPid(self) -> str:
        """
        See L{IConnectionRecovery.newPid}.
        """
        return self.memory.newPid()

    def nextOffset(self) -> int:
        """
        See L{IConnectionRecovery.nextOffset}.
        """
        return self.memory.nextOffset()

    def record(self, offset: int, namespace: str, to: Any, skipSid: str | None, frames: Any) -> None:
        """
        See L{IConnectionRecovery.record}.
        """
        self.memory.record(offset, namespace, to, skipSid, frames)

    def detach(self, pid: str, sid: str, namespace: str, rooms: Iterable[str], data: Any, firstOffset: int) -> None:
        """
        See L{IConnectionRecovery.detach}: the socket's Socket.IO state to
        the memory log (its IM state is kept by L{gone}, called by the
        sessions as it disconnects).
        """
        self.memory.detach(pid, sid, namespace, rooms, data, firstOffset)

    def restore(self, pid: str, namespace: str, offset: str | None) -> "Restored | None | Deferred[Restored | None]":
        """
        See L{IConnectionRecovery.restore}: the Socket.IO state from the
        memory log; in C{/}, the IM record from memory or the store.
        """
        seq = imOffset(offset)
        memory = self.memory.restore(pid, namespace, None if seq is not None else offset)
        if namespace != self.namespace:
            return memory
        record = self._gone.pop(pid, None)
        if record is not None:
            if record.expiresAt is not None and record.expiresAt > self.now():
                return self._back(record, seq, memory)
            record = None
        d = self.store.recoveryRecord(pid, self.now())

        def found(record: RecoveryRecord | None) -> Restored | None:
            if record is None:
                return memory
            return self._back(record, seq, memory)

        return d.addCallback(found)

    def _back(self, record: RecoveryRecord, seq: int | None, memory: Restored | None) -> Restored | None:
        """
        The socket of C{record} comes back (unless its user may not).
        """
        sessions = self.sessions
        if sessions is not None and sessions.admission is not None:
            try:
                sessions.admission(record.userId)
            except IMError:
                # A ban ends its sessions for good.
                self._drop(record.pid)
                return None
        self._comingBack[record.sid] = (record, seq)
        if memory is not None and memory.socket.sid == record.sid:
            return memory
        socket = DetachedSocket(
            record.pid, record.sid, self.namespace, frozenset(), None, self.memory.lastOffset, self.clock.seconds()
        )
        return Restored(socket, [])

    # ---- the IM side, told by the sessions

    @property
    def goneRecords(self) -> int:
        """
        How many records of sockets gone from this node (within their
        window) are kept in memory.
        """
        return len(self._gone)

    def start(self) -> None:
        """
        The server starts: records of sockets that were connected when the
        node last stopped without telling get the window from now;
        expired ones go.
        """
        self._goneDeadlines.start()
        self.memory.start()
        now = self.now()
        self.store.expireRecoveries(now, now + int(self.window * 1000), self.node).addErrback(self._failed, "expiring")

    def nodeDied(self, node: str) -> None:
        """
        Another node of the cluster was dropped for want of a heartbeat
        (killed, cut off): the records of the sockets connected to it get
        the window from now, so that its clients come back on this node
        (and the records of a node that never starts again expire).
        """
        if node == self.node:
            return
        now = self.now()
        self.store.expireRecoveries(now, now + int(self.window * 1000), node).addErrback(self._failed, "expiring")

    def rejoined(self) -> None:
        """
        This node (re)joined the cluster: if the others had taken it for
        dead (cut off from Redis for longer than the TTL), they gave its
        connected sockets' records an expiry (L{nodeDied}); take it back,
        else those records would expire under sockets still connected.
        """
        for record in self._live.values():
            if record.lastSeq >= 0:
                self.store.keepRecovery(record).addErrback(self._failed, "keeping")

    def loggedIn(self, device: str, user: "UserPresence") -> None:
        """
        C{device} logged in as C{user}: its record, if it has a pid.
        """
        pid = self.pidOf(device)
        if pid is None:
            return
        record = RecoveryRecord(pid, device, user.id, user.name, user.avatar, (), -1, None, self.node)
        self._live[device] = record
        self.store.keepRecovery(record).addCallbacks(
            self._kept, self._failed, callbackArgs=(device, pid), errbackArgs=("keeping",)
        )

    def _kept(self, record: RecoveryRecord, device: str, pid: str) -> None:
        live = self._live.get(device)
        if live is not None and live.pid == pid and live.lastSeq < 0:
            # (its seq of login, now known)
            self._live[device] = attrs.evolve(live, lastSeq=record.lastSeq)
            if live.rooms != record.rooms:
                # rooms entered while the login's record was written
                self.store.keepRecovery(self._live[device]).addErrback(self._failed, "keeping")
            gone = self._gone.get(pid)
            if gone is not None and gone.lastSeq < 0:
                self._gone[pid] = attrs.evolve(gone, lastSeq=record.lastSeq)

    def roomsChanged(self, device: str, rooms: Iterable[str]) -> None:
        """
        C{device}, logged in, entered or left a chat room: its record says
        which rooms it is in now. The record got them only as the socket
        went (L{gone}); a node killed never gets there, and its sockets
        came back after its restart, or on another node, in no room, with
        C{recovered} true (so their clients did not join again).
        """
        live = self._live.get(device)
        if live is None:
            return
        live = self._live[device] = attrs.evolve(live, rooms=tuple(sorted(rooms)))
        if live.lastSeq >= 0:
            # (else written with its seq of login, L{_kept})
            self.store.keepRecovery(live).addErrback(self._failed, "keeping")

    def gone(self, device: str, rooms: Iterable[str]) -> None:
        """
        C{device}, logged in, went away for a reason worth recovering
        from: its record gets its expiry and rooms.
        """
        live = self._live.pop(device, None)
        if live is None:
            return
        record = RecoveryRecord(
            live.pid,
            live.sid,
            live.userId,
            live.name,
            live.avatar,
            tuple(sorted(rooms)),
            live.lastSeq,
            self.now() + int(self.window * 1000),
            self.node,
        )
        if record.pid not in self._gone and len(self._gone) >= self.maxGone:
            # (the oldest record's write was committed long ago: restoring
            # it reads the store's copy)
            oldest = next(iter(self._gone))
            del self._gone[oldest]
            self._goneDeadlines.cancel(oldest)
        self._gone[record.pid] = record
        self._goneDeadlines.set(record.pid, self.window)
        self.store.keepRecovery(record).addErrback(self._failed, "keeping")
        self._sweep()

    def _goneExpired(self, pid: object) -> None:
        """
        The window of a socket that went away ended: its record leaves
        memory (the store's copy expires with the next sweep; L{restore}
        would not take it any more).
        """
        self._gone.pop(str(pid), None)

    def stop(self) -> None:
        """
        The server stops: no deadline outlives it, nor the memory log's
        timer (the records stay, in memory until the process ends and in the
        store).
        """
        self._goneDeadlines.stop()
        self.memory.stop()

    def forget(self, device: str) -> None:
        """
        C{device} logged out or was disconnected on purpose: it may not
        come back.
        """
        self._comingBack.pop(device, None)
        live = self._live.pop(device, None)
        if live is not None:
            self._drop(live.pid)

    def forgetUser(self, userId: str) -> None:
        """
        C{userId} was kicked or banned: none of its sockets may come back,
        on any node.
        """
        for device in [d for d, r in self._live.items() if r.userId == userId]:
            del self._live[device]
        for pid in [p for p, r in self._gone.items() if r.userId == userId]:
            del self._gone[pid]
            self.memory.discard(pid)
        for device in [d for d, (r, _) in self._comingBack.items() if r.userId == userId]:
            del self._comingBack[device]
        self.store.dropRecoveriesOf(userId).addErrback(self._failed, "dropping")

    def _drop(self, pid: str) -> None:
        self._gone.pop(pid, None)
        self.memory.discard(pid)
        self.store.dropRecovery(pid).addErrback(self._failed, "dropping")

    def _sweep(self) -> None:
        now = self.clock.seconds()
        if now - self._lastSweep < SWEEP_EVERY:
            return
        self._lastSweep = now
        horizon = int(now * 1000)
        for pid in [p for p, r in self._gone.items() if r.expiresAt is not None and r.expiresAt <= horizon]:
            del self._gone[pid]
        self.store.expireRecoveries(horizon).addErrback(self._failed, "expiring")

    def identity(self, device: str) -> tuple[str, str, str | None] | None:
        """
        The identity of C{device} if it is coming back from a record.
        """
        back = self._comingBack.get(device)
        if back is None:
            return None
        record = back[0]
        return record.userId, record.name, record.avatar

    def comingBack(self, device: str) -> bool:
        """
        Is C{device} coming back from a record (its replay is ours)?
        """
        return device in self._comingBack

    def resumed(self, device: str, user: "UserPresence") -> Deferred[Any]:
        """
        C{device}, coming back, is logged in again as C{user}: back in its
        chat rooms, live again in the store, and the messages it missed
        are replayed before the live ones.
        """
        record, seq = self._comingBack.pop(device)
        sessions = self.sessions
        router = self.router
        assert sessions is not None and router is not None
        rooms = sessions.rooms.rooms
        for roomId in record.rooms:
            if not rooms.contains(roomId, device):
                rooms.enter(roomId, device, user.id)
        live = RecoveryRecord(
            record.pid, device, user.id, user.name, user.avatar, record.rooms, record.lastSeq, None, self.node
        )
        self._live[device] = live
        self.store.keepRecovery(live).addErrback(self._failed, "keeping")
        after = seq if seq is not None else record.lastSeq
        if after < 0:
            # Cut before its login's record was written, and it got no
            # message: what waits in the offline queue, as after a login.
            return sessions.messaging.catchUp(user.id, device)
        router.hold(device)
        # When it went away: its expiry less the window (for a node that
        # died, when the node started again).
        goneAt = None if record.expiresAt is None else record.expiresAt - int(self.window * 1000)
        d = self.store.missedMessages(
            user.id, tuple(record.rooms), after, record.lastSeq, self.maxReplay + 1, self.maxReplayBytes, goneAt
        )
        done: Deferred[Any] = d.addCallbacks(
            self._replay, self._replayFailed, callbackArgs=(device, user.id), errbackArgs=(device,)
        )
        done.addErrback(self._failed, "replaying to")
        return done

    def _replayFailed(self, failure: Failure, device: str) -> None:
        self._failed(failure, "reading the missed messages of")
        assert self.router is not None
        for event, payload in self.router.release(device):
            self.router.toDevices((device,), event, payload)

    def _replay(self, missed: list[StoredMessage], device: str, userId: str) -> None:
        sessions = self.sessions
        router = self.router
        assert sessions is not None and router is not None
        messaging = sessions.messaging
        held = router.release(device)
        if sessions.presence.userOfDevice(device) is None:
            return
        kept = self._replayable(missed)
        # (a read that passed the byte bound stopped there: more may wait)
        truncated = kept < len(missed) or sum(messageWeight(m) for m in missed) > self.maxReplayBytes
        # A published event (POST /api/publish) went out live under its own
        # name, without an offset: replayed only from the offline queue.
        # (what the client is told to fetch after, if truncated)
        lastReplayed = missed[kept - 1].seq if kept else 0
        missed = [m for m in missed[:kept] if not _published(m) or (m.toId == userId and not m.delivered)]
        bySeq: dict[int, tuple[str, Any]] = {m.seq: ("message", messaging.wire(m)) for m in missed}
        liveAfter: list[tuple[str, Any]] = []
        for event, payload in held:
            seq = payload.get("seq")
            if truncated and isinstance(seq, int) and seq > lastReplayed:
                # past the gap the client fills with get_history
                continue
            if isinstance(seq, int):
                bySeq[seq] = (event, payload)
            else:
                liveAfter.append((event, payload))
        for seq in sorted(bySeq):
            event, payload = bySeq[seq]
            router.toDevices((device,), event, payload)
        for event, payload in liveAfter:
            router.toDevices((device,), event, payload)
        if truncated:
            router.toDevices(
                (device,),
                "recovery:resync",
                {"afterSeq": lastReplayed, "reason": "more was missed than a replay carries"},
            )
        queued = [m for m in missed if m.toId == userId and not m.delivered]
        if queued:
            # From the offline queue: delivered now, as by a catch-up.
            messaging.store.markDelivered([m.seq for m in queued]).addErrback(self._failed, "marking delivered")
            messaging.queueDelivered(queued)
        self.log.info(
            "[恢复] {sid} {userId}: {count} missed messages after seq {after}{more}",
            sid=device,
            userId=userId,
            count=len(missed),
            after=missed[0].seq - 1 if missed else lastReplayed,
            more=" (more: recovery:resync)" if truncated else "",
        )

    def _replayable(self, missed: list[StoredMessage]) -> int:
        """
        How many of C{missed} are replayed: at most L{maxReplay}, and no
        more than weigh L{maxReplayBytes} (never none).
        """
        total = 0
        for count, message in enumerate(missed):
            if count >= self.maxReplay:
                return count
            total += messageWeight(message)
            if count and total > self.maxReplayBytes:
                return count
        return len(missed)

    def _failed(self, failure: Failure, what: str) -> None:
        if not failure.check(StoreClosedError):
            self.log.failure("recovery record: {what}", failure, what=what)


def _published(message: StoredMessage) -> bool:
    system = message.system
    return system is not None and system.get("action") == "publish"


def enableRecovery(
    sio: Any, sessions: "Sessions", router: Any, store: IRecoveryStore, clock: IReactorTime, node: str = ""
) -> StoreRecovery | None:
    """
    Wire recovery from the store into a server whose Socket.IO server has
    recovery on (a L{RecoveryLog}): its recovery becomes a
    L{StoreRecovery} around that log, the router puts offsets on stored
    messages' events, and the sessions keep records.

    @param node: the cluster node's id (L{StoreRecovery.node}), C{""} alone.

    @return: the L{StoreRecovery}, or L{None} if recovery is off.
    """
    memory = sio.recovery
    if not isinstance(memory, RecoveryLog) or not (hasattr(router, "hold") and hasattr(router, "offsets")):
        # (off; or a router that cannot hold or mark messages: recovery
        # stays in memory, as before)
        return None
    recovery = StoreRecovery(
        memory, store, clock, memory.window, maxReplayBytes=sessions.messaging.settings.maxHistoryBytes, node=node
    )
    recovery.sessions = sessions
    recovery.router = router
    recovery.pidOf = lambda device: _pidOf(sio, device)
    sessions.rooms.socketRoomsListeners.append(recovery.roomsChanged)
    router.offsets = True
    sio.recovery = recovery
    sessions.recovery = recovery
    return recovery


def _pidOf(sio: Any, device: str) -> str | None:
    socket = sio.getSocket(device)
    return None if socket is None else socket.pid


def recoveryStoreFor(store: Any) -> IRecoveryStore:
    """
    The L{IRecoveryStore} beside a message store: SQL or in memory.
    """
    from ..storage.memory import MemoryMessageStore
    from ..storage.recovery import MemoryRecoveryStore, SQLRecoveryStore

    if isinstance(store, MemoryMessageStore):
        return MemoryRecoveryStore(store)
    return SQLRecoveryStore(store)


__all__ = ["MAX_REPLAY", "StoreRecovery", "enableRecovery", "imOffset", "recoveryStoreFor"]
