"""Tests for tunnelgw.core.routing: longest prefix, patterns, normalisation, refusals."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tunnelgw.core.config import parse_config
from tunnelgw.core.routing import Reject, Route, RuleSet, choose_route, normalise_path

RULES = RuleSet(parse_config(
    "Listen tcp:port=1\n"
    "ProxyPass /vnc tcp:host=a:port=1\n"
    "ProxyPass /vnc/desk1 tcp:host=b:port=1\n"
    "ProxyPassMatch ^/vnc(\\d+)$ tcp:host=c:port=590$1\n"
    "ProxyPassMatch ^/h/([^/]+)$ tcp:host=$1:port=5900\n"
    "ProxyPassMatch ^/opt/(\\d+)?$ tcp:host=d:port=7$1\n",
    "r.conf"))


def target(path: bytes) -> str:
    """The target chosen for a path (fails the test on a refusal)."""
    route = choose_route(RULES, path)
    assert isinstance(route, Route), route
    return route.target


def test_longest_prefix_wins_segment_aware() -> None:
    """The longest rule path that is a whole-segment prefix of the request path wins."""
    assert target(b"/vnc") == "tcp:host=a:port=1"
    assert target(b"/vnc/") == "tcp:host=a:port=1"
    assert target(b"/vnc/other") == "tcp:host=a:port=1"
    assert target(b"/vnc/desk1") == "tcp:host=b:port=1"
    assert target(b"/vnc/desk1/x") == "tcp:host=b:port=1"
    assert target(b"/vnc/desk10") == "tcp:host=a:port=1"


def test_prefix_remainder() -> None:
    """The part of the path after the matched prefix is kept for the backend."""
    route = choose_route(RULES, b"/vnc/desk1/a/b")
    assert isinstance(route, Route) and route.remainder == "/a/b"


def test_pattern_substitution_and_segment_awareness() -> None:
    """/vncx is not under /vnc; pattern rules apply in file order with $N substituted."""
    assert target(b"/vnc7") == "tcp:host=c:port=5907"
    assert target(b"/opt/") == "tcp:host=d:port=7"
    assert choose_route(RULES, b"/vncx") == Reject(404, "no route for this path")


def test_captured_values_cannot_inject_endpoint_parameters() -> None:
    """A captured value with ':' or '=' is refused: a path never adds endpoint parameters or hosts."""
    refused = choose_route(RULES, b"/h/evil:port=22")
    assert isinstance(refused, Reject) and refused.status == 400
    assert target(b"/h/192.0.2.3") == "tcp:host=192.0.2.3:port=5900"
    # A whole-host capture takes addresses only: a name would let the client's DNS choose.
    assert choose_route(RULES, b"/h/desk-3.example") == Reject(404, "no route for this path: its value may not "
                                                                     "choose the backend host")
    assert isinstance(choose_route(RULES, b"/h/.."), Reject)


def test_normalisation() -> None:
    """Dot segments, repeated slashes and percent escapes are resolved before matching."""
    assert target(b"/x/../vnc/desk1") == "tcp:host=b:port=1"
    assert target(b"//vnc///desk1") == "tcp:host=b:port=1"
    assert target(b"/%76nc/desk%31") == "tcp:host=b:port=1"
    assert normalise_path(b"/a/./b/") == "/a/b/"
    assert normalise_path(b"/../etc") == Reject(400, "path climbs above the root")
    assert normalise_path(b"/vnc%2Fdesk1") == Reject(404, "encoded '/', '\\' or NUL in path")
    assert normalise_path(b"/%zz") == Reject(400, "bad percent escape in path")
    assert normalise_path(b"/%ff") == Reject(400, "path is not UTF-8")
    assert normalise_path(b"vnc") == Reject(400, "request path must start with '/'")


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=60).map(lambda b: b"/" + b))
def test_any_path_routes_or_is_refused(raw: bytes) -> None:
    """Any raw path yields a Route or a Reject with a 4xx status; a normalised path has no dot segments."""
    result = choose_route(RULES, raw)
    assert isinstance(result, (Route, Reject))
    if isinstance(result, Reject):
        assert 400 <= result.status < 500 and result.reason
    path = normalise_path(raw)
    if isinstance(path, str):
        assert path.startswith("/") and "//" not in path
        assert "." not in path.split("/") and ".." not in path.split("/")
        assert normalise_path(path.encode()) == path or "%" in path
