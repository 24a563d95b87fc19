"""
tunnelgw: a WebSocket tunnel gateway for remote desktops, on Twisted and Autobahn.

Embedding API: :func:`tunnelgw.service.make_service` and
:func:`tunnelgw.service.build_resource`, with configurations from
:func:`tunnelgw.service.load_config` or :func:`tunnelgw.core.config.parse_config`.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
