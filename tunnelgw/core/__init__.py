"""
The gateway's pure decisions: configuration (one directive table), routing,
limits, tokens, balancer, redirects, client addresses, WebSocket URLs, frames,
HTTP request heads and the relay policy.

Nothing in this package imports Twisted or Autobahn (tests/test_layout.py
checks it): values in, values out, time passed in as ``now``.
"""
