"""
Socket.IO v5 on the Engine.IO layer: L{SocketIOServer} and its packet codec.
"""

from .packet import DecodeError, Decoder, SocketIOPacket
from .server import ConnectionRefused, Namespace, Socket, SocketIOServer

__all__ = [
    "ConnectionRefused",
    "DecodeError",
    "Decoder",
    "Namespace",
    "Socket",
    "SocketIOPacket",
    "SocketIOServer",
]
