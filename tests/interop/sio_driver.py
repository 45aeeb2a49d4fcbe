"""
Drive real python-socketio clients for the trial interop harness.

The twin of C{driver.js}: one JSON command per line on stdin, one JSON report
per line on stdout, with the same commands and reports (see the header of
C{driver.js} and L{tests.support.clients}).  Run it with the Python that has
python-socketio installed (the harness uses C{sys.executable}).

python-socketio differs from socket.io-client in ways this driver does not
hide:

  - one C{socketio.Client} per client name connects all its namespaces at
    C{connect} time; a namespace cannot be added to a connected client, so a
    second namespace must be listed up front in the connect command's
    C{"namespaces"}.  Disconnecting one namespace of several is refused too:
    use C{close} (or disconnect the last one).
  - when the server emits with an ack callback, python-socketio always sends
    an ack (empty unless C{onAck} set a reply); socket.io-client sends none
    unless C{onAck} was called.
  - the polling to websocket upgrade happens inside C{connect}, before the
    namespaces connect, so the C{upgrade} report comes before the C{connect}
    report.
  - disconnect reasons are reported in socket.io-client's words
    (C{"io client disconnect"}, C{"io server disconnect"},
    C{"transport close"}); python-socketio's own is in C{"rawReason"}.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import threading
from importlib.metadata import version as distributionVersion
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import urlencode

import socketio

JSON = Any

_REASONS = {
    "client disconnect": "io client disconnect",
    "server disconnect": "io server disconnect",
    "transport error": "transport close",
}


def encodeBinary(value: Any) -> JSON:
    """
    Replace every C{bytes} inside C{value} by C{{"$bin": base64}}.

    @param value: a JSON-like value that may hold C{bytes}.
    @return: a JSON-serialisable copy.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$bin": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, (list, tuple)):
        return [encodeBinary(item) for item in value]
    if isinstance(value, dict):
        return {key: encodeBinary(item) for key, item in value.items()}
    return value


def decodeBinary(value: JSON) -> Any:
    """
    Replace every C{{"$bin": base64}} inside C{value} by C{bytes}.

    @param value: a decoded JSON value.
    @return: a copy with binary placeholders turned into C{bytes}.
    """
    if isinstance(value, list):
        return [decodeBinary(item) for item in value]
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get("$bin"), str):
            return base64.b64decode(value["$bin"])
        return {key: decodeBinary(item) for key, item in value.items()}
    return value


def countBinary(value: Any) -> int:
    """
    Count the C{bytes} values inside C{value}.

    @param value: a JSON-like value that may hold C{bytes}.
    @return: how many there are.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        return 1
    if isinstance(value, (list, tuple)):
        return sum(countBinary(item) for item in value)
    if isinstance(value, dict):
        return sum(countBinary(item) for item in value.values())
    return 0


class Reporter:
    """
    Writes one JSON report per line on stdout, from any thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def send(self, report: Dict[str, Any]) -> None:
        """
        Write C{report} as one line and flush.

        @param report: the report, already JSON-serialisable.
        """
        line = json.dumps(report, ensure_ascii=False) + "\n"
        with self._lock:
            sys.stdout.write(line)
            sys.stdout.flush()


class DriverClient:
    """
    One named python-socketio client and the state the driver keeps for it.
    """

    def __init__(self, name: str, reporter: Reporter,
                 ackReplies: Dict[Tuple[str, str, str], Optional[List[Any]]]
                 ) -> None:
        self.name = name
        self.reporter = reporter
        self.ackReplies = ackReplies
        self.connectErrors: Dict[str, Any] = {}
        self.sio = socketio.Client(reconnection=False, handle_sigint=False)
        self.sio.on("*", self._onEvent, namespace="*")
        self.sio.on("connect", self._onConnect, namespace="*")
        self.sio.on("disconnect", self._onDisconnect, namespace="*")
        self.sio.on("connect_error", self._onConnectError, namespace="*")
        self.announced: set[str] = set()
        self.pendingConnect = False
        self._wrapSendPacket()
        self._wrapUpgrade()

    def _wrapSendPacket(self) -> None:
        """
        Serialise packet sends: python-socketio's emit is not thread safe and
        acks go out from its read thread while emits go out from ours.
        """
        lock = threading.Lock()
        original = self.sio._send_packet

        def sendPacket(pkt: Any) -> None:
            with lock:
                original(pkt)

        self.sio._send_packet = sendPacket

    def _wrapUpgrade(self) -> None:
        """
        Report a polling to websocket upgrade: engineio's
        C{_connect_websocket} upgrades when a polling session already has a
        sid, and returns true when it worked.
        """
        eio = self.sio.eio
        original: Callable[..., bool] = eio._connect_websocket

        def connectWebsocket(*args: Any, **kwargs: Any) -> bool:
            upgrading = bool(eio.sid)
            result = original(*args, **kwargs)
            if upgrading and result:
                self.reporter.send({"type": "upgrade", "client": self.name,
                                    "transport": "websocket"})
            return result

        eio._connect_websocket = connectWebsocket

    def _onEvent(self, event: str, namespace: str, *args: Any) -> Any:
        self.reporter.send({"type": "event", "client": self.name,
                            "namespace": namespace, "event": event,
                            "args": encodeBinary(list(args))})
        ackKey = (self.name, namespace, event)
        if ackKey in self.ackReplies:
            reply = self.ackReplies[ackKey]
            if reply is None:
                return tuple(args)
            return tuple(decodeBinary(reply))
        return None

    def _onConnect(self, namespace: str) -> None:
        if self.pendingConnect:
            # reported with its ref once connect() returns
            return
        self._announce(namespace, None)

    def _announce(self, namespace: str, ref: Optional[int]) -> None:
        self.announced.add(namespace)
        self.reporter.send({"type": "connect", "ref": ref,
                            "client": self.name, "namespace": namespace,
                            "id": self.sio.get_sid(namespace),
                            "transport": self.sio.transport()})

    def _onDisconnect(self, namespace: str, reason: str = "") -> None:
        self.announced.discard(namespace)
        self.reporter.send({"type": "disconnect", "client": self.name,
                            "namespace": namespace,
                            "reason": _REASONS.get(reason, reason),
                            "rawReason": reason})

    def _onConnectError(self, namespace: str, data: Any = None) -> None:
        self.connectErrors[namespace] = data

    def _configureTLS(self, opts: Dict[str, Any]) -> None:
        """
        Map socket.io-client's TLS options: C{ca} (PEM text of the CA to
        trust, for both transports; the name is still verified) and
        C{rejectUnauthorized: false} (python-socketio's C{ssl_verify=False}).

        @param opts: the connect command's options.
        """
        ca = opts.get("ca")
        if ca is not None:
            import tempfile

            import requests

            with tempfile.NamedTemporaryFile("w", suffix=".pem", delete=False) as caFile:
                caFile.write(ca)
            session = requests.Session()
            session.verify = caFile.name
            # Else $REQUESTS_CA_BUNDLE would override the session's verify.
            session.trust_env = False
            # As python-socketio's http_session option: kept across resets.
            self.sio.eio.http = session
            self.sio.eio.external_http = True
        if opts.get("rejectUnauthorized") is False:
            self.sio.eio.ssl_verify = False

    def connect(self, cmd: Dict[str, Any]) -> None:
        """
        Connect every namespace of the command, then report each.  Blocks:
        call it off the command loop.

        @param cmd: the connect command.
        """
        ref = cmd.get("ref")
        namespace = cmd.get("namespace") or "/"
        namespaces = [namespace] + [
            n for n in cmd.get("namespaces") or [] if n != namespace]
        opts = dict(cmd.get("opts") or {})
        if self.sio.connected:
            if namespace in self.sio.namespaces:
                raise RuntimeError(
                    f"client {self.name} is already connected to {namespace}")
            raise RuntimeError(
                "python-socketio connects all namespaces at connect time: "
                f"client {self.name} is connected, so {namespace} must be "
                "listed in the first connect's namespaces=[...]")
        headers = dict(opts.get("extraHeaders") or {})
        headers.update(opts.get("headers") or {})
        timeout = float(opts.get("timeout", 10000)) / 1000.0
        url = cmd["url"]
        if opts.get("query"):
            url += ("&" if "?" in url else "?") + urlencode(opts["query"])
        self._configureTLS(opts)
        self.connectErrors = {}
        self.pendingConnect = True
        try:
            self.sio.connect(url, headers=headers,
                             auth=opts.get("auth"),
                             transports=opts.get("transports"),
                             namespaces=namespaces,
                             socketio_path=opts.get("path", "socket.io")
                             .strip("/"),
                             wait_timeout=timeout)
        except socketio.exceptions.ConnectionError as exc:
            self.pendingConnect = False
            failed = [n for n in namespaces if n in self.connectErrors]
            for n in failed or [namespace]:
                message, data = self._errorDetails(
                    self.connectErrors.get(n), str(exc))
                self.reporter.send({
                    "type": "connect_error",
                    "ref": ref if n == namespace else None,
                    "client": self.name, "namespace": n,
                    "message": message, "data": encodeBinary(data)})
            if namespace not in failed and failed:
                self.reporter.send({
                    "type": "connect_error", "ref": ref,
                    "client": self.name, "namespace": namespace,
                    "message": str(exc), "data": None})
            return
        self.pendingConnect = False
        for n in namespaces:
            if n in self.sio.namespaces and n not in self.announced:
                self._announce(n, ref if n == namespace else None)

    @staticmethod
    def _errorDetails(error: Any, fallback: str) -> Tuple[str, Any]:
        """
        Split what python-socketio hands its connect_error handler into the
        C{message} and C{data} of socket.io-client's C{Error}.
        """
        if isinstance(error, dict):
            return str(error.get("message", fallback)), error.get("data")
        if isinstance(error, str):
            return error, None
        if error is None:
            return fallback, None
        return fallback, error

    def disconnect(self, namespace: str) -> None:
        """
        Disconnect C{namespace}; python-socketio can only drop them all.

        @param namespace: the namespace to leave.
        """
        others = [n for n in self.sio.namespaces if n != namespace]
        if namespace not in self.sio.namespaces:
            raise RuntimeError(
                f"client {self.name} is not connected to {namespace}")
        if others:
            raise RuntimeError(
                "python-socketio cannot leave one namespace of several "
                f"(still on {others}); use close")
        self.sio.disconnect()

    def close(self) -> None:
        """
        Drop the connection and every namespace on it.
        """
        self.sio.shutdown()


class Driver:
    """
    The command loop: reads commands from stdin, runs them, reports.
    """

    def __init__(self) -> None:
        self.reporter = Reporter()
        self.clients: Dict[str, DriverClient] = {}
        self.ackReplies: Dict[Tuple[str, str, str], Optional[List[Any]]] = {}

    def client(self, name: str) -> DriverClient:
        """
        Return the client called C{name}, creating it if needed.

        @param name: the client name from the command.
        """
        if name not in self.clients:
            self.clients[name] = DriverClient(name, self.reporter,
                                              self.ackReplies)
        return self.clients[name]

    def existing(self, name: str) -> DriverClient:
        """
        Return the client called C{name} or raise.

        @param name: the client name from the command.
        """
        if name not in self.clients:
            raise RuntimeError(f"no client {name}")
        return self.clients[name]

    def handle(self, cmd: Dict[str, Any]) -> None:
        """
        Run one command; any exception becomes an C{error} report.

        @param cmd: the decoded command.
        """
        ref = cmd.get("ref")
        name = cmd.get("cmd")
        namespace = cmd.get("namespace") or "/"
        send = self.reporter.send
        if name == "connect":
            client = self.client(cmd["client"])

            def connect() -> None:
                try:
                    client.connect(cmd)
                except Exception as exc:
                    send({"type": "error", "ref": ref, "message": str(exc)})

            threading.Thread(target=connect, daemon=True).start()
        elif name == "emit":
            self._emit(cmd, namespace)
        elif name == "onAck":
            self.ackReplies[(cmd["client"], namespace, cmd["event"])] = \
                cmd.get("reply")
            send({"type": "done", "ref": ref})
        elif name == "disconnect":
            self.existing(cmd["client"]).disconnect(namespace)
            send({"type": "done", "ref": ref})
        elif name == "close":
            if cmd["client"] in self.clients:
                self.clients.pop(cmd["client"]).close()
            send({"type": "done", "ref": ref})
        elif name == "transport":
            transport = self.existing(cmd["client"]).sio.transport()
            send({"type": "transport", "ref": ref, "name": transport})
        elif name == "roundtrip":
            value = decodeBinary(cmd.get("value"))
            send({"type": "roundtrip", "ref": ref,
                  "value": encodeBinary(value),
                  "buffers": countBinary(value)})
        else:
            raise RuntimeError(f"unknown command {name!r}")

    def _emit(self, cmd: Dict[str, Any], namespace: str) -> None:
        """
        Emit, with an ack callback and a timer when an ack is asked for.
        """
        ref = cmd.get("ref")
        sio = self.existing(cmd["client"]).sio
        args = tuple(decodeBinary(cmd.get("args") or []))
        if not cmd.get("ack"):
            sio.emit(cmd["event"], args, namespace=namespace)
            self.reporter.send({"type": "emitted", "ref": ref})
            return
        timeout = float(cmd.get("timeout", 10000))
        lock = threading.Lock()
        settled: List[bool] = []

        def settle(report: Dict[str, Any]) -> None:
            with lock:
                if settled:
                    return
                settled.append(True)
            timer.cancel()
            self.reporter.send(report)

        def onAck(*reply: Any) -> None:
            settle({"type": "ack", "ref": ref,
                    "args": encodeBinary(list(reply))})

        def onTimeout() -> None:
            settle({"type": "error", "ref": ref,
                    "message": f"ack timeout after {timeout:.0f} ms"})

        timer = threading.Timer(timeout / 1000.0, onTimeout)
        timer.daemon = True
        timer.start()
        sio.emit(cmd["event"], args, namespace=namespace, callback=onAck)

    def quit(self) -> None:
        """
        Close every client (each within a few seconds) and exit.
        """
        closers = [threading.Thread(target=c.close, daemon=True)
                   for c in self.clients.values()]
        for closer in closers:
            closer.start()
        for closer in closers:
            closer.join(3)
        sys.stdout.flush()
        os._exit(0)

    def run(self) -> None:
        """
        Announce readiness, then serve commands until C{quit} or EOF.
        """
        self.reporter.send({"type": "ready", "kind": "python",
                            "version": distributionVersion("python-socketio"),
                            "pid": os.getpid()})
        for line in sys.stdin:
            if not line.strip():
                continue
            try:
                cmd = json.loads(line)
            except ValueError as exc:
                self.reporter.send({"type": "error", "ref": None,
                                    "message": f"bad JSON: {exc}"})
                continue
            if cmd.get("cmd") == "quit":
                break
            try:
                self.handle(cmd)
            except Exception as exc:
                self.reporter.send({"type": "error", "ref": cmd.get("ref"),
                                    "message": f"{type(exc).__name__}: {exc}"})
        self.quit()


if __name__ == "__main__":
    Driver().run()
