"""
The seams of the Engine.IO layer.

An L{IEngineIOApplication} (Socket.IO, or any raw Engine.IO app) receives
sessions and their messages; the session writes through an L{IPollRequest}
(a held long-polling GET) or an L{IWebSocketChannel} (the Autobahn glue),
so the state machine in L{crm_im.engineio.session} runs without a network.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from .packet import Frame
    from .session import EngineIOSession


class IEngineIOApplication(Interface):
    """
    What an Engine.IO server hands sessions and messages to.
    """

    def sessionOpened(session: "EngineIOSession") -> None:
        """
        A handshake completed: C{session} is open and may be sent to.
        """

    def messageReceived(session: "EngineIOSession", data: bytes, binary: bool) -> None:
        """
        C{session} received a MESSAGE packet. C{data} is UTF-8 text (without
        the type digit) unless C{binary}.
        """

    def sessionClosed(session: "EngineIOSession", reason: str) -> None:
        """
        C{session} closed; C{reason} is Engine.IO's (C{"transport close"},
        C{"ping timeout"}, C{"transport error"}, C{"forced close"},
        C{"parse error"}, C{"server shutting down"}).
        """


class IPollRequest(Interface):
    """
    A long-polling GET held open until there is something to send.
    """

    def respond(body: bytes) -> None:
        """
        Answer the GET with C{body} (an encoded payload) and finish it.
        """


class IWebSocketChannel(Interface):
    """
    A WebSocket connection carrying one session's packets.
    """

    name = Attribute("Always C{'websocket'}.")

    def writeFrame(frame: "Frame") -> None:
        """
        Write one packet as one WebSocket message; a
        L{crm_im.engineio.packet.FrameBatch} as one
        message per packet, in order.
        """

    def flushWrites() -> None:
        """
        Send what was written this reactor turn now, not at its end.
        """

    def pauseReading() -> None:
        """
        Stop reading from the connection until L{resumeReading}.
        """

    def resumeReading() -> None:
        """
        Read from the connection again.
        """

    def closeChannel() -> None:
        """
        Close the WebSocket connection (after what was written).
        """
