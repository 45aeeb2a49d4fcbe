"""
Socket.IO v5 on the Engine.IO layer: L{SocketIOServer} and its packet codec.
"""

from .packet import DecodeError, Decoder, SocketIOPacket
from .recovery import IConnectionRecovery, RecoveryLog
from .server import ConnectionRefused, Namespace, Socket, SocketIOConfig, SocketIOServer

__all__ = [
    "ConnectionRefused",
    "DecodeError",
    "IConnectionRecovery",
    "Decoder",
    "Namespace",
    "RecoveryLog",
    "Socket",
    "SocketIOConfig",
    "SocketIOPacket",
    "SocketIOServer",
]
