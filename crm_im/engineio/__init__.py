"""
Engine.IO v4 on Twisted: sessions, long-polling and WebSocket (Autobahn).

A raw Engine.IO application implements L{IEngineIOApplication} (its
sessions are L{EngineIOSession}s: C{session.send("text")},
C{session.send(b"binary")}, C{session.close()}), builds an
L{EngineIOServer}, mounts an L{EngineIOResource} at any path and serves the
tree with an L{EngineIOSite}. See C{examples/compliance.py}.
"""

from .config import EngineIOConfig
from .interfaces import IEngineIOApplication
from .packet import Frame
from .resource import BoundedRequest, EngineIOResource
from .server import EngineIOError, EngineIOServer
from .session import EngineIOSession
from .site import EngineIOSite

__all__ = [
    "BoundedRequest",
    "EngineIOConfig",
    "EngineIOError",
    "EngineIOResource",
    "EngineIOServer",
    "EngineIOSession",
    "EngineIOSite",
    "Frame",
    "IEngineIOApplication",
]
