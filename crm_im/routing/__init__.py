"""
Implementations of L{crm_im.im.interfaces.IRouter}: L{LocalRouter} fans out
to this process's sockets.
"""

from .local import LocalRouter

__all__ = ["LocalRouter"]
