"""
Embedding tunnelgw in an existing Twisted web application.

Run from the repository root:  python examples/embed.py [PORT]

The application serves its own page at / and mounts the gateway's resource at
/desktops, where WebSocket sessions are relayed by the rules below (rules match
the full request path).  A built-in echo service stands in for a desktop.
"""

from __future__ import annotations

import sys

from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.protocols.wire import Echo
from twisted.internet.protocol import Factory
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from tunnelgw.core.config import parse_config
from tunnelgw.service import build_resource
from tunnelgw.web import access_log_formatter

PORT = int(sys.argv[1]) if len(sys.argv) > 1 else 8090

# Rules in tunnelgw's config language; Listen lines are not needed when embedding.
RULES = """
ProxyPass /desktops/echo tcp:host=127.0.0.1:port={echo_port}
"""


def main() -> None:
    """Start the echo backend and the application with the gateway mounted at /desktops."""
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    echo = reactor.listenTCP(0, Factory.forProtocol(Echo), interface="127.0.0.1")
    rules = RULES.format(echo_port=echo.getHost().port)
    root = Resource()
    root.putChild(b"", Data(b"<h1>My application</h1><p>Desktops at ws://host/desktops/echo</p>", "text/html"))
    # build_resource checks the rules (endpoint strings included) and raises
    # tunnelgw.core.config.ConfigError with FILE:LINE messages when they are wrong.
    gateway = build_resource(parse_config(rules, "embed.py:RULES", require_listeners=False), reactor)
    root.putChild(b"desktops", gateway)
    # The Site's access lines go through the gateway's redaction (tokens, query values),
    # for the application's own pages too: twisted.web's default line names the raw URI.
    site = Site(root, logFormatter=access_log_formatter(gateway.factory.redact))
    serverFromString(reactor, f"tcp:port={PORT}:interface=127.0.0.1").listen(site)
    print(f"application listening on http://127.0.0.1:{PORT}/", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
