"""
The upstream code :mod:`tunnelgw.upstream` replaces is the code it was
written against: a hash of each replaced function's source, pinned for the
installed Twisted and Autobahn, so that an upgrade that changes one fails
here (and says which to look at again) instead of misbehaving quietly.
"""

from __future__ import annotations

import configparser
import hashlib
import importlib
import inspect
from importlib.metadata import version
from pathlib import Path

import pytest

from tunnelgw.upstream import REPLACED

_ROOT = Path(__file__).resolve().parent.parent


def _source_hash(dotted: str) -> str:
    module, owner, name = dotted.rsplit(".", 2)
    function = getattr(getattr(importlib.import_module(module), owner), name)
    return hashlib.sha256(inspect.getsource(function).encode()).hexdigest()[:16]


@pytest.mark.parametrize("dotted", sorted(REPLACED))
def test_replaced_upstream_source_unchanged(dotted: str) -> None:
    """The replaced function's source hashes as pinned (else: review the override in tunnelgw.upstream, re-pin)."""
    assert _source_hash(dotted) == REPLACED[dotted], (
        f"{dotted} changed upstream (twisted {version('twisted')}, autobahn {version('autobahn')}): "
        "review its override in tunnelgw/upstream.py and pin the new hash")


def test_upper_bounds_in_setup_cfg() -> None:
    """setup.cfg bounds Twisted and Autobahn from above, and the installed versions are inside the bounds."""
    parser = configparser.ConfigParser()
    parser.read(_ROOT / "setup.cfg")
    requires = {line.split("[")[0].split(">")[0].strip(): line.strip()
                for line in parser["options"]["install_requires"].splitlines() if line.strip()}
    for name in ("twisted", "autobahn"):
        spec = requires[name]
        assert "<" in spec, spec
        bound = tuple(int(n) for n in spec.split("<")[1].split(",")[0].split("."))
        installed = tuple(int(n) for n in version(name).split(".")[:len(bound)])
        assert installed < bound, (name, version(name), spec)


def test_no_private_overrides_outside_upstream() -> None:
    """Outside tunnelgw/upstream.py no class defines an Autobahn or Twisted private method."""
    private = ("def _connectionMade", "def _connectionLost", "def _onOpen", "def _onConnect", "def _dataReceived",
               "def _actuallyStartHandshake", "def _flushSendBIO", "def _flushReceiveBIO")
    for path in (_ROOT / "tunnelgw").rglob("*.py"):
        if path.name == "upstream.py":
            continue
        text = path.read_text(encoding="utf-8")
        assert not [p for p in private if p in text], path


def test_no_twisted_internals_are_replaced() -> None:
    """The gateway's transports are its own FileDescriptors: nothing of Twisted's is pinned, and nothing swaps classes."""
    assert not [dotted for dotted in REPLACED if dotted.startswith("twisted.")]
    for path in (_ROOT / "tunnelgw").rglob("*.py"):
        assert "__class__ = " not in path.read_text(encoding="utf-8"), path


def test_autobahn_traffic_counters_cost_no_memory_per_connection() -> None:
    """Autobahn's per-connection TrafficStats is one shared object that reads 0 and keeps nothing."""
    from autobahn.websocket.protocol import TrafficStats

    from tunnelgw.upstream import QuietClientProtocol, QuietServerProtocol

    stats = QuietServerProtocol.trafficStats
    assert stats is QuietClientProtocol.trafficStats
    for name in vars(TrafficStats()):  # every counter Autobahn increments: stats.name += n
        setattr(stats, name, getattr(stats, name) + 1000)
        assert getattr(stats, name) == 0
    stats.reset()
    assert not hasattr(stats, "__dict__")
