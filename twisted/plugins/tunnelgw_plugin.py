"""twistd plugin: ``twistd tunnelgw`` (the real work is imported lazily from tunnelgw.tap)."""

from twisted.application.service import ServiceMaker

tunnelgw = ServiceMaker(
    "tunnelgw",
    "tunnelgw.tap",
    "WebSocket tunnel gateway for remote desktops (ws/wss to TCP, TLS and UNIX backends)",
    "tunnelgw",
)
