"""
The twistd plugin: C{twistd crm_im}.
"""

from twisted.application.service import ServiceMaker

crmIM = ServiceMaker(
    "crm_im",
    "crm_im.tap",
    "CRM IM server: Socket.IO 4.x compatible instant messaging with durable storage",
    "crm_im",
)
