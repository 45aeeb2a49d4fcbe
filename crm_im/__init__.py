"""
crm_im: a real-time instant-messaging server for a CRM.

Stock Socket.IO 4.x clients talk to it over Engine.IO v4 (long-polling and
WebSocket); the wire contract is C{shared/spec/PROTOCOL.md}. The package is
layered: L{crm_im.engineio} (transport sessions), L{crm_im.socketio}
(namespaces, rooms, acks), L{crm_im.im} (the chat application),
L{crm_im.presence}, L{crm_im.storage} and L{crm_im.web}.
"""

__version__ = "1.0.0"
