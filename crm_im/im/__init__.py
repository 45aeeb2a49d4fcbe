"""
The chat application: the events of the contract on top of Socket.IO,
presence and storage.
"""
