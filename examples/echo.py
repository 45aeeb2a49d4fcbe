"""
A complete Socket.IO echo server on crm_im's engine: run it with
C{python examples/echo.py [PORT]} and connect any Socket.IO 4.x client.
"""

import sys

from twisted.internet import reactor
from twisted.web.resource import Resource

from crm_im.engineio.config import EngineIOConfig
from crm_im.engineio.site import EngineIOSite
from crm_im.socketio import ConnectionRefused, SocketIOServer

sio = SocketIOServer(reactor)


@sio.on("connect")
def connect(sid, auth):
    if auth.get("token") == "bad":
        raise ConnectionRefused("bad token", {"hint": "try another"})
    sio.enterRoom(sid, "everyone")


@sio.on("echo")
def echo(sid, *args):
    sio.emit("echoed", *args, to="everyone", skipSid=sid)
    return args  # the acknowledgement


root = Resource()
root.putChild(b"socket.io", sio.resource())
sio.start()
reactor.listenTCP(int(sys.argv[1]) if len(sys.argv) > 1 else 8080, EngineIOSite(root, EngineIOConfig()))
reactor.run()
