"""Tests for tunnelgw.core.config: directives, options, and FILE:LINE errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnelgw.core.config import DEFAULT_CONFIG, ConfigError, PrefixRule, parse_config


def problems(text: str) -> list[str]:
    """The problem lines a text yields."""
    with pytest.raises(ConfigError) as raised:
        parse_config(text, "gw.conf")
    return str(raised.value).splitlines()


def test_issue_example_parses() -> None:
    """The configuration shown in the issue parses into listeners and rules in order."""
    config = parse_config(
        "Listen tcp:port=8080:interface=127.0.0.1\n"
        "Listen ssl:port=8443:privateKey=key.pem:certKey=cert.pem\n"
        "ProxyPass      /vnc/desk1    tcp:host=10.0.0.5:port=5901   connecttimeout=5\n"
        "ProxyPass      /local        unix:path=/run/desk.sock\n"
        "ProxyPass      /remote       tls:desk.example:5901\n"
        "ProxyPassMatch ^/vnc/(\\d+)$  tcp:host=127.0.0.1:port=590$1\n",
        "gw.conf",
    )
    assert [l.endpoint for l in config.listeners] == [
        "tcp:port=8080:interface=127.0.0.1", "ssl:port=8443:privateKey=key.pem:certKey=cert.pem"]
    assert [r.path for r in config.prefix_rules] == ["/vnc/desk1", "/local", "/remote"]
    assert config.prefix_rules[0].options.connect_timeout == 5.0
    assert config.prefix_rules[1].options.connect_timeout == 10.0
    assert config.pattern_rules[0].target == "tcp:host=127.0.0.1:port=590$1"
    assert config.pattern_rules[0].where.line == 6


def test_comments_quotes_and_continuations() -> None:
    """Comments and blank lines are ignored, quotes group words, a trailing backslash joins lines."""
    config = parse_config(
        "# a comment\n\n  Listen tcp:port=1  # trailing comment\n"
        'ProxyPassMatch "^/a b/(x)$" tcp:host=h:port=$1 \\\n   connecttimeout=2\n',
        "f")
    rule = config.pattern_rules[0]
    assert rule.pattern.pattern == "^/a b/(x)$"
    assert rule.options.connect_timeout == 2.0
    assert rule.where.line == 4


def test_trailing_slash_is_the_same_path() -> None:
    """'/vnc/' and '/vnc' name one rule path, so writing both is a duplicate."""
    assert problems("Listen tcp:port=1\nProxyPass /vnc/ tcp:host=a:port=1\nProxyPass /vnc tcp:host=b:port=1\n") == [
        "gw.conf:3: duplicate ProxyPass path '/vnc' (first at gw.conf:2)"]


@pytest.mark.parametrize("line, message", [
    ("Frobnicate yes", "unknown directive 'Frobnicate'"),
    ("Listen", "Listen takes one server endpoint string"),
    ("ProxyPass /x", "ProxyPass takes a path and a target"),
    ("ProxyPass x tcp:host=a:port=1", "ProxyPass path must be an absolute URL path"),
    ("ProxyPass /a/../b tcp:host=a:port=1", "ProxyPass path must be an absolute URL path"),
    ("ProxyPass /a tcp:host=a:port=$1", "$N substitutions need ProxyPassMatch"),
    ("ProxyPass /a tcp:host=a:port=1 connecttimeout=soon", "connecttimeout must be a number"),
    ("ProxyPass /a tcp:host=a:port=1 connecttimeout=0", "connecttimeout must be more than 0"),
    ("ProxyPass /a tcp:host=a:port=1 colour=blue", "ProxyPass: unknown option 'colour'"),
    ("ProxyPass /a tcp:host=a:port=1 stray", "expected key=value"),
    ("ProxyPassMatch ^/(x$ tcp:host=a:port=1", "bad regular expression"),
    ("ProxyPassMatch ^/x$ tcp:host=a:port=$1", "target uses $1 but the expression has 0 group(s)"),
    ('ProxyPass "/a tcp:host=a:port=1', "unterminated double quote"),
    ("DemoBackend chargen tcp:port=1", "DemoBackend takes a kind"),
    ("Limit streams=0", "streams must be from 1 to 1000, got '0'"),
    ("Limit streams=5000", "streams must be from 1 to 1000, got '5000'"),
])
def test_each_mistake_is_reported_at_its_line(line: str, message: str) -> None:
    """Every kind of mistake is named with the file and the line it is on."""
    lines = problems(f"Listen tcp:port=1\n\n{line}\n")
    assert len(lines) == 1
    assert lines[0].startswith("gw.conf:3: ")
    assert message in lines[0]


def test_all_mistakes_are_reported_at_once() -> None:
    """Parsing goes on after a mistake, so one run lists them all."""
    lines = problems("Bogus\nListen tcp:port=1\nProxyPass /a\nProxyPassMatch ( tcp:host=a:port=1\n")
    assert [l.split(":")[1] for l in lines] == ["1", "3", "4"]


def test_no_listener_is_an_error() -> None:
    """A configuration that would accept nothing is refused."""
    assert problems("ProxyPass /a tcp:host=a:port=1\n") == [
        "gw.conf:1: no Listen directive: the gateway would accept nothing"]


def test_default_config_parses() -> None:
    """The embedded default is a valid configuration with the echo demo."""
    config = parse_config(DEFAULT_CONFIG, "<default>")
    assert config.listeners[0].endpoint == "tcp:port=8080:interface=127.0.0.1"
    assert isinstance(config.rules[0], PrefixRule) and config.rules[0].path == "/echo"
    assert config.demo_backends[0].kind == "echo"


_directive_words = st.sampled_from(["Listen", "ProxyPass", "ProxyPassMatch", "DemoBackend", "DemoPage",
                                    "listen", "#", '"', "\\", "connecttimeout=", "/", "$1", "(", "tcp:port=1"])
_line = st.lists(st.one_of(_directive_words, st.text(max_size=12)), max_size=6).map(" ".join)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(_line, st.text(max_size=40)), max_size=12).map("\n".join))
def test_any_text_parses_or_yields_located_errors(text: str) -> None:
    """Whatever the text, the parser returns a Config or raises ConfigError whose every line is FILE:LINE: reason."""
    try:
        parse_config(text, "fuzz.conf")
    except ConfigError as e:
        assert e.problems
        n_lines = max(1, len(text.splitlines()))
        for problem in e.problems:
            assert problem.where.file == "fuzz.conf"
            assert 1 <= problem.where.line <= n_lines
            assert str(problem).startswith(f"fuzz.conf:{problem.where.line}: ")
            assert problem.message
