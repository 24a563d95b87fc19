"""Hardening directives of the configuration (tunnelgw.core.config): values, defaults and FILE:LINE errors."""

from __future__ import annotations

import pytest

from tunnelgw.core.config import ConfigError, KeepAlive, Limits, Timeouts, parse_config


def test_defaults_are_documented_values() -> None:
    """Without directives the documented defaults apply and the admin listener is off."""
    config = parse_config("Listen tcp:0\nProxyPass /a tcp:host=h:port=1\n")
    assert config.timeouts == Timeouts(handshake=10, connect=10, idle=3600)
    assert config.keepalive == KeepAlive(ping=30, pong=15, tcp_idle=60, tcp_interval=15, tcp_count=4)
    assert config.limits == Limits(sessions=10000, per_client=100, rate=20, headers=16384, frame=1048576, message=0)
    assert config.shutdown_timeout == 30 and config.admin_listeners == () and config.log_format == "text"


def test_directives_and_route_overrides() -> None:
    """Global values are read; routes inherit Timeout connect= unless they set connecttimeout."""
    config = parse_config("""Listen tcp:0
ProxyPass /a tcp:host=h:port=1 idletimeout=5 maxsessions=3
Timeout handshake=5 connect=3 idle=60
KeepAlive ping=10 pong=4 tcpidle=30 tcpinterval=5 tcpcount=3
Limit sessions=5 perclient=2 rate=120/m headers=4096 frame=1000 message=5000
ShutdownTimeout 7
AdminListen tcp:port=9090:interface=127.0.0.1
LogFormat JSON
ProxyPass /b tcp:host=h:port=1 connecttimeout=2
""", "gw.conf")
    a, b = config.prefix_rules
    assert (a.options.connect_timeout, a.options.idle_timeout, a.options.max_sessions) == (3, 5, 3)
    assert (b.options.connect_timeout, b.options.idle_timeout, b.options.max_sessions) == (2, None, None)
    assert config.timeouts == Timeouts(5, 3, 60)
    assert config.keepalive == KeepAlive(10, 4, 30, 5, 3)
    assert config.limits == Limits(5, 2, 2.0, 4096, 1000, 5000)
    assert config.shutdown_timeout == 7 and config.log_format == "json"
    assert config.admin_listeners[0].endpoint == "tcp:port=9090:interface=127.0.0.1"


@pytest.mark.parametrize("line, message", [
    ("Timeout handshake=x", "gw.conf:2: handshake must be a number, got 'x'"),
    ("Timeout foo=1", "gw.conf:2: Timeout: unknown option 'foo' (known: handshake=, connect=, idle=)"),
    ("Timeout", "gw.conf:2: Timeout takes key=value settings"),
    ("Limit rate=5/h", "gw.conf:2: rate must be a number, got '5/h'"),
    ("Limit headers=10", "gw.conf:2: headers must be from 1024 to"),
    ("Limit sessions=1.5", "gw.conf:2: sessions must be a whole number, got '1.5'"),
    ("KeepAlive ping=5 pong=5", "gw.conf:2: KeepAlive pong must be shorter than ping"),
    ("LogFormat xml", "gw.conf:2: LogFormat takes text or json"),
    ("ShutdownTimeout", "gw.conf:2: ShutdownTimeout takes the seconds"),
    ("ShutdownTimeout -1", "gw.conf:2: ShutdownTimeout must be from 0 to 86400"),
    ("AdminListen", "gw.conf:2: AdminListen takes one server endpoint string"),
    ("ProxyPass /a tcp:host=h:port=1 maxsessions=0", "gw.conf:2: maxsessions must be from 1 to"),
    ("ProxyPass /a tcp:host=h:port=1 idletimeout=soon", "gw.conf:2: idletimeout must be a number"),
])
def test_bad_values_are_named_at_their_line(line: str, message: str) -> None:
    """Every bad hardening value is refused with FILE:LINE and what is wrong."""
    with pytest.raises(ConfigError) as caught:
        parse_config(f"Listen tcp:0\n{line}\n", "gw.conf")
    assert str(caught.value).startswith(message), str(caught.value)
