"""
Test support code shared by crm_im's test modules: real Socket.IO clients
driven from trial (L{tests.support.clients}).
"""
