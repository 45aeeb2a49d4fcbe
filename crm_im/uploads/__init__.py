"""
File upload storage (FILES.md): the tus 1.0.0 resumable upload protocol
(L{crm_im.uploads.tus}, a pure state machine), signed URLs
(L{crm_im.uploads.signing}), the service that streams uploads to disk,
completes, sweeps and makes thumbnails (L{crm_im.uploads.service}) and its
twisted.web resource at C{/api/files/} (L{crm_im.uploads.resource}).
"""
