# -*- test-case-name: tests.test_web -*-
"""
The resource tree of the one port: C{/}, C{/api/online-users}, C{/files/},
the Engine.IO endpoint at C{/socket.io/}, and JSON 404s everywhere else.
"""

from __future__ import annotations

from twisted.web.iweb import IRequest
from twisted.web.resource import IResource, Resource

from ..http.cors import CORSPolicy
from .json import NotFoundResource


class RootResource(Resource):
    """
    A tree whose unknown children are JSON 404s, and whose own path (C{/})
    is served by C{index}.
    """

    def __init__(self, index: IResource, cors: CORSPolicy) -> None:
        super().__init__()
        self.index = index
        self.notFound = NotFoundResource(cors)

    def getChild(self, path: bytes, request: IRequest) -> IResource:
        if path == b"":
            return self.index
        return self.notFound

    def render(self, request: IRequest) -> bytes:
        return self.index.render(request)


def buildRoot(
    index: IResource,
    onlineUsers: IResource,
    files: IResource,
    engine: IResource,
    cors: CORSPolicy,
) -> RootResource:
    """
    Assemble the tree.
    """
    root = RootResource(index, cors)
    api = RootResource(NotFoundResource(cors), cors)
    api.putChild(b"online-users", onlineUsers)
    root.putChild(b"api", api)
    root.putChild(b"files", files)
    root.putChild(b"socket.io", engine)
    return root
