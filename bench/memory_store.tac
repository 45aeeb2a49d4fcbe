"""
crm_im with its message store in memory, for measurement only:
C{twistd -ny bench/memory_store.tac} (options from C{CRM_IM_OPTIONS}, as
C{crm_im.tac}).

Why: the reference Node.js server keeps messages in memory; crm_im stores
every message durably before its receipt. Run side by side with
C{ref-node}, this shows what the rest of the stack (Twisted, Autobahn,
Engine.IO, Socket.IO, the IM application) costs without the database, so a
relay figure can be split into the stack's share and the durable store's.
It is the unit tests' fake store (L{MemoryMessageStore}): nothing survives
the process, and the store answers at once, so there are no group commits.
Never serve users with it.
"""

import os
import shlex

from twisted.application import service
from twisted.internet import reactor

from crm_im.server import CRMIMService
from crm_im.storage import MemoryMessageStore
from crm_im.tap import Options

options = Options()
options.parseOptions(shlex.split(os.environ.get("CRM_IM_OPTIONS", "")))
application = service.Application("crm_im-memory-store")
CRMIMService(options.config, reactor, store=MemoryMessageStore()).setServiceParent(application)
