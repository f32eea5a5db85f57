"""Routing: from a recipient domain to an ordered list of MX hosts (RFC 5321 §5.1, RFC 7505).

``mx`` is the pure core (ordering, null MX, site keys, domain normalisation); ``resolver`` is the
async DNS adapter over dnspython with a TTL cache. Nothing here opens SMTP connections.
"""
