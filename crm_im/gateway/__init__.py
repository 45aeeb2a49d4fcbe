"""
Gateways: transports mapped onto the IM core's handlers (Socket.IO today).
"""
