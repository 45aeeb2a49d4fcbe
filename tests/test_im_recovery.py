"""
Tests of connection state recovery for IM clients: a logged-in socket that
lost its connection and comes back within the window with its pid gets its
sid, login and chat rooms back with no presence change seen by others, and
the 1:1 messages sent meanwhile come from the store's offline queue. Driven
through the real L{SocketIOServer}, L{SocketIOGateway} and L{IMCore} with
fake WebSockets, a memory store and a L{Clock}.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from crm_im._json import dumps, loads
from crm_im.engineio import EngineIOConfig
from crm_im.gateway.socketio import SocketIOGateway
from crm_im.im.core import IMCore
from crm_im.presence import Presence
from crm_im.routing.local import LocalRouter
from crm_im.socketio import SocketIOConfig, SocketIOServer
from crm_im.socketio.server import HELD_RELEASE_DELAY
from crm_im.storage.memory import MemoryMessageStore

from .test_sio_server import Client

WINDOW = 30_000


class IMRecoveryTests(SynchronousTestCase):
    """
    Recovery of the IM state of a socket: identity, rooms, presence and the
    messages it missed.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        # Heartbeats far apart: the clock jumps past the window.
        engine = EngineIOConfig(pingInterval=3_600_000, pingTimeout=3_600_000)
        self.sio = SocketIOServer(self.clock, engine, config=SocketIOConfig(recoveryWindow=WINDOW))
        self.store = MemoryMessageStore()
        self.presence = Presence(self.clock)
        sockets = self.sio.namespace("/").sockets
        self.core = IMCore(
            self.store, None, self.presence, LocalRouter(sockets, self.presence, self.clock), self.clock  # type: ignore[arg-type]
        )
        self.gateway = SocketIOGateway(self.sio, self.core, self.clock)

    def tearDown(self) -> None:
        self.sio.stop()

    def connect(self, auth: dict[str, Any] | None = None) -> tuple[Client, dict[str, Any]]:
        """
        A client session connected to C{/}; the CONNECT answer.
        """
        client = Client(self.sio)
        client.send(b"0" + (dumps(auth) if auth is not None else b""))
        answer = client.received()[0]
        self.assertTrue(answer.startswith(b"0{"), answer)
        return client, loads(answer[1:])

    def emit(self, client: Client, event: str, payload: Any, ackId: int = 1) -> None:
        """
        Emit C{event} with an ack id.
        """
        client.send(b"2" + str(ackId).encode() + dumps([event, payload]))

    def events(self, client: Client) -> list[tuple[str, Any]]:
        """
        The events (not acks) received since last asked.
        """
        result = []
        for data in client.received():
            if data.startswith(b"2"):
                name, *args = loads(data[1:])
                result.append((name, args[0] if args else None))
        return result

    def login(self, userId: str) -> tuple[Client, str, str]:
        """
        A client logged in as C{userId}: it, its sid and its pid.
        """
        client, answer = self.connect()
        self.emit(client, "user:login", {"id": userId, "name": userId.upper()})
        self.clock.advance(0)
        client.received()
        return client, answer["sid"], answer["pid"]

    def cut(self, client: Client) -> None:
        """
        The client's transport breaks.
        """
        client.session.channelClosed(client.channel)

    def test_resumed(self) -> None:
        """
        Back within the window with its pid: the same sid, logged in as
        before without a login, still in its chat room; the others saw no
        status change; the 1:1 messages sent meanwhile arrive from the
        store, in order, and the sender was told they were stored for an
        offline user.
        """
        alice, aliceSid, alicePid = self.login("alice")
        bob, _, _ = self.login("bob")
        self.events(alice)
        self.successResultOf(self.store.createRoom(_room("r1")))
        self.emit(alice, "room:join", {"roomId": "r1"})
        self.clock.advance(0)
        self.events(alice)
        self.cut(alice)
        self.clock.advance(1)
        for n in range(3):
            self.emit(bob, "message", {"id": f"m{n}", "toId": "alice", "content": f"hello {n}"}, ackId=10 + n)
        self.clock.advance(1)
        acks = [loads(data[3:])[0] for data in bob.received() if data.startswith(b"31")]
        self.assertEqual([ack["status"] for ack in acks], ["offline"] * 3)
        back, answer = self.connect({"pid": alicePid})
        self.assertEqual(answer, {"sid": aliceSid, "pid": alicePid})
        self.clock.advance(HELD_RELEASE_DELAY)
        self.clock.advance(0)
        received = self.events(back)
        messages = [payload["content"] for name, payload in received if name == "message"]
        self.assertEqual(messages, ["hello 0", "hello 1", "hello 2"])
        self.assertIn("groups", [name for name, _ in received])
        self.assertNotIn("user:login:success", [name for name, _ in received])
        user = self.presence.userOfDevice(aliceSid)
        assert user is not None
        self.assertEqual(user.id, "alice")
        self.assertTrue(self.core.rooms.rooms.contains("r1", aliceSid))
        self.clock.advance(WINDOW / 1000 + 1)
        self.assertEqual([name for name, _ in self.events(bob) if name == "status_change"], [])
        self.assertTrue(self.core.rooms.rooms.contains("r1", aliceSid))

    def test_notBack(self) -> None:
        """
        A socket that does not come back within the window: its user goes
        offline for the others at the window's end (not before), and it
        leaves its rooms.
        """
        alice, aliceSid, _ = self.login("alice")
        bob, _, _ = self.login("bob")
        self.successResultOf(self.store.createRoom(_room("r1")))
        self.emit(alice, "room:join", {"roomId": "r1"})
        self.clock.advance(0)
        self.events(bob)
        self.cut(alice)
        self.clock.advance(WINDOW / 1000 - 1)
        self.assertEqual(self.events(bob), [])
        self.assertIsNotNone(self.presence.user("alice"))
        self.clock.advance(2)
        self.assertEqual(
            [(name, payload["userId"], payload["status"]) for name, payload in self.events(bob)],
            [("status_change", "alice", "offline")],
        )
        self.assertFalse(self.core.rooms.rooms.contains("r1", aliceSid))
        back = Client(self.sio)
        back.send(b"0" + dumps({"pid": "whatever"}))
        answer = loads(back.received()[0][1:])
        self.assertNotEqual(answer["sid"], aliceSid)
        self.assertIsNone(self.presence.userOfDevice(answer["sid"]))

    def test_deliberateDisconnect(self) -> None:
        """
        A client that disconnects on purpose is gone at once: offline for
        the others at the end of the turn, as without recovery.
        """
        alice, _, _ = self.login("alice")
        bob, _, _ = self.login("bob")
        self.events(bob)
        alice.send(b"1")
        self.clock.advance(0)
        self.assertEqual(
            [(name, payload["status"]) for name, payload in self.events(bob)], [("status_change", "offline")]
        )

    def test_offWithoutWindow(self) -> None:
        """
        With recovery off, a cut connection is a logout at once.
        """
        self.sio = SocketIOServer(self.clock)
        self.presence = Presence(self.clock)
        sockets = self.sio.namespace("/").sockets
        self.core = IMCore(
            self.store, None, self.presence, LocalRouter(sockets, self.presence, self.clock), self.clock  # type: ignore[arg-type]
        )
        self.gateway = SocketIOGateway(self.sio, self.core, self.clock)
        client = Client(self.sio)
        client.send(b"0")
        sid = loads(client.received()[0][1:])["sid"]
        self.emit(client, "user:login", {"id": "alice", "name": "A"})
        self.cut(client)
        self.assertIsNone(self.presence.userOfDevice(sid))
        self.clock.advance(0)
        self.assertIsNone(self.presence.user("alice"))


def _room(roomId: str) -> Any:
    from crm_im.storage.interface import RoomRecord

    return RoomRecord(id=roomId, name=roomId, topic="", public=True, createdBy="x", clientId=None, createdAt=0)


class _SlowRecoveryStore:
    """
    A L{MemoryRecoveryStore} whose missed-message reads wait until
    L{release}: live messages arrive while the replay is read.
    """

    def __init__(self, store: Any) -> None:
        self.inner = store
        self.waiting: list[tuple[Any, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def missedMessages(self, *args: Any) -> Any:
        from twisted.internet.defer import Deferred

        d: Deferred[Any] = Deferred()
        self.waiting.append((d, args))
        return d

    def release(self) -> None:
        waiting, self.waiting = self.waiting, []
        for d, args in waiting:
            self.inner.missedMessages(*args).chainDeferred(d)


class StoreRecoveryTests(IMRecoveryTests):
    """
    The same, with recovery from the store (as the server wires it): and
    the record's lifecycle, group and room messages, the client's offset,
    a restart, the replay's bound, live messages during the replay, and
    sockets ended on purpose.
    """

    def setUp(self) -> None:
        from crm_im.im.recovery import enableRecovery
        from crm_im.storage.recovery import MemoryRecoveryStore

        super().setUp()
        self.clock.advance(1_000_000)
        self.records = MemoryRecoveryStore(self.store)
        self.recoveryStore: Any = self.records
        self.build()

    def build(self, maxReplay: int | None = None, node: str = "") -> None:
        """
        A server (Socket.IO, IM core, gateway) on the same stores: a new
        node, or the node restarted; C{node} its cluster node id.
        """
        from crm_im.im.recovery import enableRecovery

        engine = EngineIOConfig(pingInterval=3_600_000, pingTimeout=3_600_000)
        self.sio = SocketIOServer(self.clock, engine, config=SocketIOConfig(recoveryWindow=WINDOW))
        self.presence = Presence(self.clock)
        sockets = self.sio.namespace("/").sockets
        self.router = LocalRouter(sockets, self.presence, self.clock)
        self.core = IMCore(self.store, None, self.presence, self.router, self.clock)  # type: ignore[arg-type]
        self.gateway = SocketIOGateway(self.sio, self.core, self.clock)
        recovery = enableRecovery(self.sio, self.core.sessions, self.router, self.recoveryStore, self.clock, node)
        assert recovery is not None
        if maxReplay is not None:
            recovery.maxReplay = maxReplay
        self.recovery = recovery
        self.gateway.start()

    def tearDown(self) -> None:
        self.gateway.stop()
        super().tearDown()

    def messages(self, client: Client) -> list[tuple[str, Any, str | None]]:
        """
        The C{message} events received since last asked: content, seq and
        the offset argument.
        """
        result: list[tuple[str, Any, str | None]] = []
        for data in client.received():
            if data.startswith(b"2"):
                name, *args = loads(data[1:])
                if name == "message":
                    self.assertEqual(len(args), 1, args)  # (one argument, as ever)
                    result.append((args[0]["content"], args[0]["seq"], None))
                elif name == "recovery:offset":
                    # the offset of the message just before it
                    content, seq, _ = result[-1]
                    self.assertEqual(args, [f"m{seq}"])
                    result[-1] = (content, seq, args[0])
        return result

    def assertRecovered(self, pid: str, sid: str, userId: str) -> Client:
        """
        Coming back with C{pid} recovers socket C{sid}, logged in as
        C{userId}; @return: the client.
        """
        back, answer = self.reconnect(pid)
        self.assertEqual(answer, {"sid": sid, "pid": pid})
        user = self.presence.userOfDevice(sid)
        assert user is not None
        self.assertEqual(user.id, userId)
        return back

    def reconnect(self, pid: str, offset: str | None = None) -> tuple[Client, dict[str, Any]]:
        """
        Come back with C{pid} (and the offset of the last message got).
        """
        auth: dict[str, Any] = {"pid": pid}
        if offset is not None:
            auth["offset"] = offset
        client, answer = self.connect(auth)
        self.clock.advance(HELD_RELEASE_DELAY)
        self.clock.advance(0)
        return client, answer

    def send(self, client: Client, payload: dict[str, Any], ackId: int = 7) -> None:
        self.emit(client, "message", payload, ackId)
        self.clock.advance(0)

    def group(self, owner: Client, members: list[str]) -> str:
        """
        A group of C{owner} with C{members}; its id.
        """
        self.emit(owner, "group:create", {"name": "g", "memberIds": members, "id": "g1"}, ackId=99)
        self.clock.advance(0)
        for data in owner.received():
            if data.startswith(b"399"):
                return str(loads(data[3:])[0]["id"])
        raise AssertionError("no group:create ack")

    def test_offsets(self) -> None:
        """
        With recovery from the store, a stored message's event is followed
        by its offset, C{recovery:offset "m<seq>"} (only to sockets with a
        pid), and keeps its one argument.
        """
        alice, _, _ = self.login("alice")
        bob, _, _ = self.login("bob")
        self.send(bob, {"id": "x", "toId": "alice", "content": "hi"})
        [(content, seq, offset)] = self.messages(alice)
        self.assertEqual((content, offset), ("hi", f"m{seq}"))

    def test_recordLifecycle(self) -> None:
        """
        A record is written at login (no expiry: the socket is connected),
        gets the window as expiry when the socket is cut, is live again
        once it is back, and is deleted at logout; records of sockets that
        were connected when the node last stopped get the window at start,
        and expired ones are deleted.
        """
        alice, sid, pid = self.login("alice")
        record = self.records.records[pid]
        self.assertEqual((record.sid, record.userId, record.expiresAt), (sid, "alice", None))
        self.successResultOf(self.store.createRoom(_room("r1")))
        self.emit(alice, "room:join", {"roomId": "r1"})
        self.clock.advance(0)
        self.cut(alice)
        record = self.records.records[pid]
        self.assertEqual(record.rooms, ("r1",))
        self.assertEqual(record.expiresAt, int(self.clock.seconds() * 1000) + WINDOW)
        back, answer = self.reconnect(pid)
        self.assertEqual(answer["sid"], sid)
        self.assertIsNone(self.records.records[pid].expiresAt)
        self.emit(back, "user:logout", {})
        self.clock.advance(0)
        self.assertNotIn(pid, self.records.records)
        # Another socket connected when the node stopped without telling.
        carol, _, carolPid = self.login("carol")
        self.recovery.start()
        self.assertEqual(self.records.records[carolPid].expiresAt, int(self.clock.seconds() * 1000) + WINDOW)
        self.clock.advance(WINDOW / 1000 + 1)
        self.recovery.start()
        self.assertNotIn(carolPid, self.records.records)

    def test_goneRecordsLeaveMemoryAtWindowEnd(self) -> None:
        """
        The record of a socket cut off stays in memory for the window and
        leaves it when the window ends, with no other socket going away
        meanwhile (a sweep ran only with a later disconnect, at most once
        a minute: a churn of cut connections left the last minute's
        records behind, seen by C{bench/churn.py}); stopping the sessions
        (and presence) leaves no timer behind.
        """
        alice, _, _ = self.login("alice")
        bob, _, _ = self.login("bob")
        self.cut(alice)
        self.clock.advance(WINDOW / 2000)
        self.cut(bob)
        self.assertEqual(self.recovery.goneRecords, 2)
        self.clock.advance(WINDOW / 2000 + 0.01)
        self.assertEqual(self.recovery.goneRecords, 1)
        self.clock.advance(WINDOW / 2000)
        self.assertEqual(self.recovery.goneRecords, 0)
        carol, _, _ = self.login("carol")
        self.cut(carol)
        # (the presence hold is the presence stage's; the server stops both)
        self.core.sessions.stop()
        self.presence.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.presence.start()
        self.core.sessions.start()
        self.clock.advance(WINDOW / 1000 + 0.01)
        self.assertEqual(self.recovery.goneRecords, 0)

    def test_goneRecordsBounded(self) -> None:
        """
        At most C{maxGone} records of sockets gone stay in memory, the
        oldest leaving first (with its timer); a socket whose record left
        comes back all the same, from the store's copy.
        """
        self.recovery.maxGone = 2
        alice, aliceSid, alicePid = self.login("alice")
        others = [self.login(name)[0] for name in ("bob", "carol")]
        for client in (alice, *others):
            self.cut(client)
        self.assertEqual(self.recovery.goneRecords, 2)
        self.assertEqual(len(self.recovery._goneDeadlines), 2)
        back, answer = self.connect({"pid": alicePid})
        self.assertEqual(answer, {"sid": aliceSid, "pid": alicePid})
        self.clock.advance(HELD_RELEASE_DELAY)
        self.clock.advance(0)
        user = self.presence.userOfDevice(aliceSid)
        assert user is not None
        self.assertEqual(user.id, "alice")

    def test_groupRoomAndDirectInOrder(self) -> None:
        """
        A socket cut off while 1:1, group and room messages are sent to it
        gets every one of them once, in seq order, with its offset; its own
        messages are not replayed; then the live ones follow.
        """
        alice, _, pid = self.login("alice")
        bob, _, _ = self.login("bob")
        carol, _, _ = self.login("carol")
        groupId = self.group(bob, ["alice", "carol"])
        self.successResultOf(self.store.createRoom(_room("r1")))
        for client in (alice, bob):
            self.emit(client, "room:join", {"roomId": "r1"}, ackId=98)
        self.clock.advance(0)
        self.messages(alice)  # (the group's system message)
        self.send(bob, {"id": "before", "toId": "alice", "content": "before"})
        [(_, _, lastOffset)] = self.messages(alice)
        self.cut(alice)
        self.send(bob, {"id": "g1", "groupId": groupId, "content": "group 1"})
        self.send(carol, {"id": "d1", "toId": "alice", "content": "direct 1"})
        self.send(bob, {"id": "r1", "roomId": "r1", "content": "room 1"})
        self.send(carol, {"id": "g2", "groupId": groupId, "content": "group 2"})
        self.send(bob, {"id": "d2", "toId": "alice", "content": "direct 2"})
        back, answer = self.reconnect(pid, lastOffset)
        missed = self.messages(back)
        self.assertEqual([c for c, _, _ in missed], ["group 1", "direct 1", "room 1", "group 2", "direct 2"])
        self.assertEqual([s for _, s, _ in missed], sorted(s for _, s, _ in missed))
        self.assertEqual([o for _, _, o in missed], [f"m{s}" for _, s, _ in missed])
        self.send(carol, {"id": "after", "toId": "alice", "content": "after"})
        self.assertEqual([c for c, _, _ in self.messages(back)], ["after"])
        # The offline 1:1 ones were marked delivered: no second delivery
        # at a later login.
        self.assertEqual(self.successResultOf(self.store.pendingFor("alice", 10)), [])

    def test_lostInFlight(self) -> None:
        """
        Messages written to the socket but not received by the client
        (the offset it comes back with is older) are sent again; those it
        got are not.
        """
        alice, _, pid = self.login("alice")
        bob, _, _ = self.login("bob")
        for n in range(4):
            self.send(bob, {"id": f"m{n}", "toId": "alice", "content": f"m{n}"})
        received = self.messages(alice)
        self.assertEqual(len(received), 4)
        self.cut(alice)
        back, _ = self.reconnect(pid, received[1][2])
        self.assertEqual([c for c, _, _ in self.messages(back)], ["m2", "m3"])

    def test_restart(self) -> None:
        """
        The node restarts (a new server on the same store) between the
        cut and the reconnect: the socket is still recovered, with its sid,
        login and rooms, and the messages sent meanwhile.
        """
        alice, sid, pid = self.login("alice")
        bob, _, _ = self.login("bob")
        self.successResultOf(self.store.createRoom(_room("r1")))
        self.emit(alice, "room:join", {"roomId": "r1"})
        self.clock.advance(0)
        self.cut(alice)
        self.send(bob, {"id": "while", "toId": "alice", "content": "while away"})
        self.gateway.stop()
        self.sio.stop()
        self.build()
        bob, _, _ = self.login("bob")
        self.send(bob, {"id": "restarted", "toId": "alice", "content": "after restart"})
        back, answer = self.reconnect(pid)
        self.assertEqual(answer, {"sid": sid, "pid": pid})
        self.assertEqual([c for c, _, _ in self.messages(back)], ["while away", "after restart"])
        user = self.presence.userOfDevice(sid)
        assert user is not None
        self.assertEqual(user.id, "alice")
        self.assertTrue(self.core.rooms.rooms.contains("r1", sid))

    def test_anotherNodeStarts(self) -> None:
        """
        In a cluster, a node that starts gives the window only to its own
        records left without an expiry (its previous life's sockets), not
        to those of sockets connected to other nodes: those expired a
        window later while still connected, and could not come back once
        their own node was killed and started again.
        """
        self.build(node="n1")
        alice, sid, pid = self.login("alice")
        self.build(node="n2")
        self.clock.advance(WINDOW / 1000 + 1)
        self.assertIsNone(self.records.records[pid].expiresAt)
        # n1 is killed (its sockets never told) and starts again
        self.build(node="n1")
        self.assertEqual(self.records.records[pid].node, "n1")
        self.assertIsNotNone(self.records.records[pid].expiresAt)
        self.assertRecovered(pid, sid, "alice")

    def test_killedInRooms(self) -> None:
        """
        The node is killed (its sockets never go: no record gets its rooms
        as they do) and starts again: a socket comes back in the chat
        rooms it was in, not in one it left, and is still in them after a
        second kill.
        """
        alice, sid, pid = self.login("alice")
        for roomId in ("r1", "r2"):
            self.successResultOf(self.store.createRoom(_room(roomId)))
            self.emit(alice, "room:join", {"roomId": roomId})
            self.clock.advance(0)
        self.emit(alice, "room:leave", {"roomId": "r2"})
        self.clock.advance(0)
        self.build()
        back, answer = self.reconnect(pid)
        self.assertEqual(answer, {"sid": sid, "pid": pid})
        self.assertEqual(self.core.rooms.rooms.roomsOf(sid), {"r1"})
        self.build()
        self.reconnect(pid)
        self.assertEqual(self.core.rooms.rooms.roomsOf(sid), {"r1"})

    def test_backOnAnotherNode(self) -> None:
        """
        A socket cut from this node comes back on another node of the
        cluster (logged in again there with its sid, which this node hears
        as a login of that sid): when its window here ends, this node does
        not take it out of its chat rooms (nor tell the room it left).
        """
        alice, sid, pid = self.login("alice")
        bob, _, _ = self.login("bob")
        self.successResultOf(self.store.createRoom(_room("r1")))
        for client in (alice, bob):
            self.emit(client, "room:join", {"roomId": "r1"})
            self.clock.advance(0)
        self.events(bob)
        self.cut(alice)
        self.clock.advance(1)
        # (what ClusterPresence.remoteLogin does for the other node's login)
        self.presence.login("alice", sid, "ALICE", None)
        self.clock.advance(WINDOW / 1000 + 1)
        self.assertTrue(self.core.rooms.rooms.contains("r1", sid))
        self.assertNotIn("room:left", [name for name, _ in self.events(bob)])

    def test_nodeDied(self) -> None:
        """
        Another node is dropped for want of a heartbeat (killed): the
        records of its sockets get the window, and its clients come back
        on this node with their sid and login. Before, they waited for a
        restart of the dead node (and a node that never came back left
        its records for ever).
        """
        self.build(node="n1")
        alice, sid, pid = self.login("alice")
        self.build(node="n2")
        self.recovery.nodeDied("n2")
        self.assertIsNone(self.records.records[pid].expiresAt)
        self.recovery.nodeDied("n1")
        self.assertIsNotNone(self.records.records[pid].expiresAt)
        self.assertRecovered(pid, sid, "alice")

    def test_rejoined(self) -> None:
        """
        A node the others took for dead while its sockets stayed connected
        (cut off from Redis) joins again: their records lose the expiry
        the others gave them.
        """
        self.build(node="n1")
        alice, sid, pid = self.login("alice")
        self.records.expireRecoveries(0, 5_000_000, "n1")
        self.assertIsNotNone(self.records.records[pid].expiresAt)
        self.recovery.rejoined()
        self.assertIsNone(self.records.records[pid].expiresAt)
        self.assertEqual(self.records.records[pid].sid, sid)

    def test_bounded(self) -> None:
        """
        Past C{maxReplay} missed messages, the oldest are replayed and the
        client is told to fetch the rest: C{recovery:resync {afterSeq}}.
        """
        self.recovery.maxReplay = 3
        alice, _, pid = self.login("alice")
        bob, _, _ = self.login("bob")
        self.cut(alice)
        for n in range(5):
            self.send(bob, {"id": f"m{n}", "toId": "alice", "content": f"m{n}"})
        back, _ = self.reconnect(pid)
        received = [loads(d[1:]) for d in back.received() if d.startswith(b"2")]
        names = [r[0] for r in received]
        self.assertEqual([r[1]["content"] for r in received if r[0] == "message"], ["m0", "m1", "m2"])
        self.assertIn("recovery:resync", names)
        resync = received[names.index("recovery:resync")][1]
        lastReplayed = [r for r in received if r[0] == "message"][-1]
        self.assertEqual(resync["afterSeq"], lastReplayed[1]["seq"])
        self.assertLess(names.index("message"), names.index("recovery:resync"))

    def test_boundedInBytes(self) -> None:
        """
        Missed messages past C{maxReplayBytes} are not replayed: the
        client gets those within it (here one: a message of 600 characters
        weighs 800 of 1,000) and is told to fetch the rest. The store read
        stops at the message that passes the bound, so a thousand missed
        messages near C{--max-payload} are never held at once.
        """
        self.recovery.maxReplayBytes = 1000
        alice, _, pid = self.login("alice")
        bob, _, _ = self.login("bob")
        self.cut(alice)
        for n in range(5):
            self.send(bob, {"id": f"m{n}", "toId": "alice", "content": f"{n}" * 600})
        read: list[int] = []
        missedMessages = self.records.missedMessages

        def recording(*args: Any) -> Any:
            return missedMessages(*args).addCallback(lambda found: read.append(len(found)) or found)

        self.records.missedMessages = recording  # type: ignore[method-assign]
        back, _ = self.reconnect(pid)
        received = [loads(d[1:]) for d in back.received() if d.startswith(b"2")]
        names = [r[0] for r in received]
        replayed = [r[1] for r in received if r[0] == "message"]
        self.assertEqual([m["content"][0] for m in replayed], ["0"])
        self.assertEqual(read, [2])
        resync = received[names.index("recovery:resync")][1]
        self.assertEqual(resync["afterSeq"], replayed[-1]["seq"])

    def test_liveDuringReplay(self) -> None:
        """
        Messages that arrive while the missed ones are being read wait and
        follow them, each once, in seq order.
        """
        slow = _SlowRecoveryStore(self.records)
        self.recoveryStore = slow
        self.gateway.stop()
        self.sio.stop()
        self.build()
        alice, _, pid = self.login("alice")
        bob, _, _ = self.login("bob")
        self.cut(alice)
        self.send(bob, {"id": "a", "toId": "alice", "content": "missed"})
        back, answer = self.reconnect(pid)
        self.assertEqual(len(slow.waiting), 1)
        self.send(bob, {"id": "b", "toId": "alice", "content": "live"})
        self.assertEqual(self.messages(back), [])
        slow.release()
        self.clock.advance(0)
        self.assertEqual([c for c, _, _ in self.messages(back)], ["missed", "live"])

    def test_kickedNotRecovered(self) -> None:
        """
        A user kicked (the admin API's disconnect) while its socket was cut
        off cannot get it back; nor a socket disconnected by the server.
        """
        alice, sid, pid = self.login("alice")
        self.cut(alice)
        self.assertIsNotNone(self.presence.user("alice"))  # held for the window
        self.core.sessions.endSessionsOf("alice")
        self.assertNotIn(pid, self.records.records)
        self.assertIsNone(self.presence.user("alice"))  # offline now
        back, answer = self.reconnect(pid)
        self.assertNotEqual(answer["sid"], sid)
        self.assertIsNone(self.presence.userOfDevice(answer["sid"]))
        bob, bobSid, bobPid = self.login("bob")
        self.sio.disconnect(bobSid, closeConnection=True)
        self.assertNotIn(bobPid, self.records.records)
        again, answer = self.reconnect(bobPid)
        self.assertNotEqual(answer["sid"], bobSid)

    def test_bannedNotRecovered(self) -> None:
        """
        A user banned while its socket was cut off (on this node or
        another) is not recovered, and its record is dropped.
        """
        from crm_im.im.errors import FORBIDDEN, IMError

        alice, sid, pid = self.login("alice")
        self.cut(alice)

        def admission(userId: str) -> None:
            if userId == "alice":
                raise IMError(FORBIDDEN, "this account is banned")

        self.core.sessions.admission = admission
        back, answer = self.reconnect(pid)
        self.assertNotEqual(answer["sid"], sid)
        self.assertNotIn(pid, self.records.records)

    def test_abuseDropNotRecovered(self) -> None:
        """
        A socket dropped for abusing its rate limit cannot come back with
        its pid: a new socket, not logged in.
        """
        from crm_im.limits import LimitSettings, SocketRateLimiter

        alice, sid, pid = self.login("alice")
        rates: SocketRateLimiter = self.gateway.rates
        rates.settings = LimitSettings(eventsPerSecond=0.001, eventBurst=1, abuseRefusals=1)
        rates.forget(sid)
        for n in range(5):
            self.emit(alice, "typing", {"toId": "bob", "isTyping": True}, ackId=20 + n)
        self.clock.advance(0)
        self.assertFalse(alice.open)
        self.assertNotIn(pid, self.records.records)
        back, answer = self.reconnect(pid)
        self.assertNotEqual(answer["sid"], sid)
        self.assertIsNone(self.presence.userOfDevice(answer["sid"]))
