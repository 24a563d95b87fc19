"""
Links from a session to its backend, one module per kind: byte streams
through client endpoint strings (:mod:`.tcp`), WebSocket hops
(:mod:`.websocket`), plain HTTP reverse proxying on ws:// routes
(:mod:`.http`).
"""
