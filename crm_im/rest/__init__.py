"""
HTTP resources for people and back ends beyond the IM clients: the admin
API and page, and C{/api/publish} (L{crm_im.rest.admin}).
"""
