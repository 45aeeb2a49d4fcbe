"""
A bare Engine.IO v4 / Socket.IO v5 client over a raw WebSocket, on
asyncio's socket calls, for the slow-reader harness (C{bench/slow_readers.py}).

Why not socket.io-client or python-socketio: a slow reader must stop
reading its socket for real, so that the kernel's receive buffer fills,
the TCP window closes and the server's writes pile up in the server. Here
reading is an explicit C{sock_recv} call, and a client stops reading by
not making it; its receive buffer can be made small (C{rcvbuf}) before it
connects, so the window closes after a few KiB.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct
from typing import Any, Callable


class Closed(Exception):
    """
    The server closed the connection.
    """


class RawClient:
    """
    One Socket.IO client over one WebSocket connection.

    @ivar onEvent: called with C{(event, args)} for every event received
        while L{run} reads.
    """

    def __init__(self, port: int, rcvbuf: int | None = None, mss: int | None = None) -> None:
        self.port = port
        self.rcvbuf = rcvbuf
        self.mss = mss
        self.sock: socket.socket | None = None
        self._buffer = bytearray()
        self._nextAck = 0
        self._acks: dict[int, asyncio.Future[Any]] = {}
        self.onEvent: Callable[[str, list[Any]], None] = lambda event, args: None
        self.closed = False
        # one frame at a time on the socket (sock_sendall may wait midway)
        self._sending = asyncio.Lock()

    async def connect(self) -> None:
        """
        Open the WebSocket, take the Engine.IO OPEN and connect to C{/}.
        """
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.rcvbuf is not None:
            # before connect(): the window scale is chosen at the handshake
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
        if self.mss is not None:
            # The MSS this client announces: on loopback (MTU 65536) the
            # server's kernel sizes the connection's send buffer from a
            # 64 KiB segment, up to tcp_wmem's maximum (4 MiB) at once;
            # an Ethernet-sized one (1448) makes it behave as over a NIC.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, self.mss)
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", self.port))
        self.sock = sock
        key = base64.b64encode(os.urandom(16)).decode("ascii")
        request = (
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{self.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await loop.sock_sendall(sock, request.encode("ascii"))
        while b"\r\n\r\n" not in self._buffer:
            await self._fill()
        head, _, rest = bytes(self._buffer).partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise Closed(head.decode("latin-1"))
        self._buffer = bytearray(rest)
        opened = await self._packet()
        if not opened.startswith("0"):
            raise Closed(f"expected OPEN, got {opened[:50]!r}")
        await self._sendText("40")
        while True:
            packet = await self._packet()
            if packet.startswith("40"):
                return
            if packet.startswith("44"):
                raise Closed(f"CONNECT refused: {packet}")

    async def login(self, userId: str) -> Any:
        """
        C{user:login}, reading (and answering PINGs) until its ack.
        """
        future = self.emit("user:login", {"id": userId, "name": userId}, ack=True)
        assert future is not None
        while not future.done():
            await self.readOne()
        return future.result()

    def emit(self, event: str, *args: Any, ack: bool = False) -> "asyncio.Future[Any] | None":
        """
        Send an event; with C{ack}, a future of the ack's first argument
        (it resolves while L{run} or L{readOne} reads).
        """
        future: asyncio.Future[Any] | None = None
        if ack:
            ackId = self._nextAck
            self._nextAck += 1
            future = asyncio.get_running_loop().create_future()
            self._acks[ackId] = future
            text = f"42{ackId}" + json.dumps([event, *args], separators=(",", ":"))
        else:
            text = "42" + json.dumps([event, *args], separators=(",", ":"))
        asyncio.ensure_future(self._sendText(text))
        return future

    async def run(self) -> None:
        """
        Read until the connection closes: PINGs answered, events to
        L{onEvent}, acks to their futures.
        """
        try:
            while True:
                await self.readOne()
        except (Closed, OSError):
            self._closed()

    async def readOne(self) -> None:
        """
        Read and handle one Engine.IO packet.
        """
        packet = await self._packet()
        if packet == "2":
            await self._sendText("3")
        elif packet.startswith("42"):
            body = packet[2:]
            start = body.index("[")
            event, *args = json.loads(body[start:])
            self.onEvent(event, args)
        elif packet.startswith("43"):
            body = packet[2:]
            start = body.index("[")
            future = self._acks.pop(int(body[:start]), None)
            if future is not None and not future.done():
                values = json.loads(body[start:])
                future.set_result(values[0] if values else None)
        elif packet.startswith("1") or packet.startswith("41"):
            raise Closed(packet)

    def close(self) -> None:
        """
        Close the TCP connection.
        """
        if self.sock is not None:
            self.sock.close()
        self._closed()

    def _closed(self) -> None:
        self.closed = True
        for future in self._acks.values():
            if not future.done():
                future.set_exception(Closed("connection closed"))
        self._acks.clear()

    async def _fill(self) -> None:
        assert self.sock is not None
        data = await asyncio.get_running_loop().sock_recv(self.sock, 65536)
        if not data:
            raise Closed("EOF")
        self._buffer += data

    async def _packet(self) -> str:
        """
        The next text message (control frames: a close ends, pings are
        answered by nobody: the server sends none, Engine.IO pings in
        text).
        """
        while True:
            opcode, payload = await self._frame()
            if opcode == 1:
                return payload.decode("utf-8")
            if opcode == 8:
                raise Closed("WebSocket close")

    async def _frame(self) -> tuple[int, bytes]:
        while True:
            buffer = self._buffer
            if len(buffer) >= 2:
                opcode = buffer[0] & 0x0F
                length = buffer[1] & 0x7F
                start = 2
                if length == 126:
                    if len(buffer) < 4:
                        await self._fill()
                        continue
                    length = struct.unpack("!H", buffer[2:4])[0]
                    start = 4
                elif length == 127:
                    if len(buffer) < 10:
                        await self._fill()
                        continue
                    length = struct.unpack("!Q", buffer[2:10])[0]
                    start = 10
                if len(buffer) >= start + length:
                    payload = bytes(buffer[start : start + length])
                    del buffer[: start + length]
                    return opcode, payload
            await self._fill()

    async def _sendText(self, text: str) -> None:
        if self.sock is None or self.closed:
            return
        payload = text.encode("utf-8")
        mask = os.urandom(4)
        length = len(payload)
        if length < 126:
            head = struct.pack("!BB", 0x81, 0x80 | length)
        elif length < 0x10000:
            head = struct.pack("!BBH", 0x81, 0x80 | 126, length)
        else:
            head = struct.pack("!BBQ", 0x81, 0x80 | 127, length)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if length < 256 else _mask(payload, mask)
        try:
            async with self._sending:
                await asyncio.get_running_loop().sock_sendall(self.sock, head + mask + masked)
        except OSError:
            self._closed()


def _mask(payload: bytes, mask: bytes) -> bytes:
    """
    XOR C{payload} with the 4-byte C{mask}, fast for large payloads.
    """
    repeated = (mask * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(len(payload), "little")
