"""
crm_im for C{twistd -ny crm_im.tac}: the same service as C{twistd crm_im}.
Options come from C{CRM_IM_OPTIONS} (e.g. "--port 9000 --data-dir /var/lib/crm_im")
and C{PORT}.
"""

import os
import shlex

from twisted.application import service

from crm_im.tap import Options, makeService

options = Options()
options.parseOptions(shlex.split(os.environ.get("CRM_IM_OPTIONS", "")))
application = service.Application("crm_im")
makeService(options).setServiceParent(application)
