"""
End-to-end tests: crm_im served on a real loopback port, driven by real
clients (Node socket.io-client, python-socketio, treq, Autobahn).
"""
