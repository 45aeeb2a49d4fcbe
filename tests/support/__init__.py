"""
Test support code shared by crm_im's test modules: real Socket.IO clients
driven from trial (L{tests.support.clients}), and waiting for markers in
received bytes (L{tests.support.markers}).
"""
