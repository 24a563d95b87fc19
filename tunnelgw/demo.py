"""
The built-in demo: an echo service to relay to and a page to try it from, so
that ``twistd -n tunnelgw`` shows a working session on a fresh machine.
"""

from __future__ import annotations

from html import escape

from twisted.internet.protocol import Factory
from twisted.protocols.wire import Echo

__all__ = ["demo_factory", "demo_page"]

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tunnelgw demo</title>
<style>body{{font:15px system-ui,sans-serif;max-width:42em;margin:2em auto}}
#log{{background:#111;color:#9f9;padding:1em;min-height:8em;white-space:pre-wrap}}</style></head>
<body><h1>tunnelgw demo</h1>
<p>This page opens a WebSocket to <code>{path}</code>; tunnelgw relays it to a TCP echo
service. Type a line and it comes back through the backend.</p>
<form id="f"><input id="t" size="40" autofocus placeholder="type here"> <button>send</button></form>
<div id="log"></div>
<script>
const log = (s) => {{ document.getElementById("log").textContent += s + "\\n"; }};
const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "{path}";
const ws = new WebSocket(url, ["binary"]);
ws.binaryType = "arraybuffer";
ws.onopen = () => log("connected to " + url + " (subprotocol " + ws.protocol + ")");
ws.onmessage = (e) => log("echo: " + new TextDecoder().decode(e.data));
ws.onclose = (e) => log("closed: " + e.code + " " + e.reason);
document.getElementById("f").onsubmit = (e) => {{
  e.preventDefault();
  const t = document.getElementById("t");
  ws.send(new TextEncoder().encode(t.value));
  t.value = "";
}};
</script></body></html>
"""


def demo_page(websocket_path: str) -> bytes:
    """The demo page's HTML for a session at websocket_path."""
    return _PAGE.format(path=escape(websocket_path)).encode("utf-8")


def demo_factory(kind: str) -> Factory:
    """A server factory for a built-in backend kind (``echo``)."""
    if kind != "echo":
        raise ValueError(f"unknown demo backend {kind!r}")
    factory: Factory = Factory.forProtocol(Echo)
    factory.noisy = False
    return factory
