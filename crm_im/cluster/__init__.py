"""
Several crm_im nodes over one Redis: the Redis connection
(L{crm_im.cluster.connection}, on txredisapi), cluster-wide presence
(L{crm_im.cluster.presence}), the node's registry, heartbeat and channels
(L{crm_im.cluster.node}), the Socket.IO Redis adapter format
(L{crm_im.cluster.adapter}) and forwarding of long-polling requests to the
node owning a session (L{crm_im.cluster.forward}). The delivery router is
L{crm_im.routing.redis.RedisRouter}.
"""
