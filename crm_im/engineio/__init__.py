"""
Engine.IO v4 on Twisted: sessions, long-polling and WebSocket (Autobahn).

A raw Engine.IO application implements L{IEngineIOApplication}, builds an
L{EngineIOServer} and mounts an L{EngineIOResource} at any path.
"""

from .config import EngineIOConfig
from .interfaces import IEngineIOApplication
from .resource import BoundedRequest, EngineIOResource
from .server import EngineIOError, EngineIOServer
from .session import EngineIOSession

__all__ = [
    "BoundedRequest",
    "EngineIOConfig",
    "EngineIOError",
    "EngineIOResource",
    "EngineIOServer",
    "EngineIOSession",
    "IEngineIOApplication",
]
