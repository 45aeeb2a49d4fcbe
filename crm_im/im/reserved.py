"""
The event names a back end may not publish (through C{POST /api/publish},
the Admin UI or the Redis adapter): the IM's own server -> client events,
so that no back end can forge a chat message, and Socket.IO's reserved
names. One list, read by every publishing path.
"""

from __future__ import annotations

RESERVED_EVENTS = frozenset(
    [
        "message",
        "history",
        "typing",
        "file_transfer",
        "status_change",
        "online_users",
        "groups",
        "error",
        "connect",
        "connect_error",
        "disconnect",
        "disconnecting",
        "newListener",
        "removeListener",
    ]
)
RESERVED_PREFIXES = ("message:", "user:", "group:", "room:", "server:", "system:", "auth:", "file:", "keys:", "recovery:")


def reservedEvent(event: str) -> bool:
    """
    Whether C{event} is one of the IM's own server -> client events (or a
    Socket.IO reserved name), which a back end may not publish.
    """
    return event in RESERVED_EVENTS or event.startswith(RESERVED_PREFIXES)
