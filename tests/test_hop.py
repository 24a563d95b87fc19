"""Pool hops, pure: the header signs every field for one owner and one request, two secrets during a rotation, nonces used once."""

from __future__ import annotations

import pytest

from tunnelgw.core.hop import WINDOW, Hop, HopNonces, check_hop, hop_value, parse_hop_secrets

OLD, NEW = b"o" * 32, b"n" * 32
OWNER = "wss://gw3.example:8443"
URI = "/vnc?token=desk1"
HOP = Hop(1000, "0123456789abcdef0123456789abcdef", "wss://gw2.example:8443", "203.0.113.9", "alice",
          (("email", "alice@ops.example"),))


def test_a_hop_names_the_client_and_its_certificate() -> None:
    """A hop checked by its owner gives back the client's address and certificate names the relayer signed."""
    assert check_hop((OLD,), hop_value(OLD, HOP, OWNER, URI), OWNER, URI, 1010) == HOP
    bare = Hop(1000, HOP.nonce, HOP.relayer, "2001:db8::1")
    found = check_hop((OLD,), hop_value(OLD, bare, OWNER, URI), OWNER, URI, 1000)
    assert found == bare and not found.has_certificate


def test_rotation_accepts_both_secrets() -> None:
    """During a rotation the owner accepts hops under either secret; a secret it does not hold is refused."""
    for signer in (OLD, NEW):
        assert check_hop((NEW, OLD), hop_value(signer, HOP, OWNER, URI), OWNER, URI, 1000) == HOP
    assert check_hop((NEW,), hop_value(OLD, HOP, OWNER, URI), OWNER, URI, 1000) is None


@pytest.mark.parametrize("owner, uri, now", [
    ("wss://gw4.example:8443", URI, 1000),  # made for another owner
    (OWNER, "/vnc?token=desk2", 1000),  # for another request
    (OWNER, URI, 1000 + WINDOW + 1),  # stale
    (OWNER, URI, 1000 - WINDOW - 1),  # from the future
])
def test_a_hop_is_worth_nothing_elsewhere(owner: str, uri: str, now: float) -> None:
    """Another owner, another request or a time outside the window: refused."""
    assert check_hop((OLD,), hop_value(OLD, HOP, OWNER, URI), owner, uri, now) is None


def test_tampered_or_old_format_hops_are_refused() -> None:
    """Changing any field (client, relayer, certificate, nonce) breaks the MAC; the replayable version 1 is refused."""
    value = hop_value(OLD, HOP, OWNER, URI)
    fields = value.split(";")
    for index, replacement in ((2, "f" * 32), (3, "wss%3A%2F%2Fevil"), (4, "198.51.100.1"), (5, "-")):
        changed = ";".join(fields[:index] + [replacement] + fields[index + 1:])
        assert check_hop((OLD,), changed, OWNER, URI, 1000) is None, index
    for bad in ("1000;203.0.113.9;" + "0" * 64, "", "2;x;y", value + ";extra", value.replace(";2", ";2 ")):
        assert check_hop((OLD,), bad, OWNER, URI, 1000) is None, bad


def test_nonces_are_used_once_within_their_window() -> None:
    """A (relayer, nonce) is accepted once; its memory ends with its window; the memory is bounded."""
    nonces = HopNonces(limit=2)
    assert nonces.first_use(HOP, 1000) and not nonces.first_use(HOP, 1029)
    other_relayer = Hop(1000, HOP.nonce, "wss://gw5.example", HOP.client)
    assert nonces.first_use(other_relayer, 1000)
    third = Hop(1000, "f" * 32, HOP.relayer, HOP.client)
    assert not nonces.first_use(third, 1000)  # full: refused rather than forgotten
    assert nonces.first_use(third, 1000 + WINDOW + 1)  # the others' windows are over: room again


def test_secret_files() -> None:
    """One secret per line (two during a rotation), each long enough."""
    assert parse_hop_secrets(b"\n" + NEW + b"\n" + OLD + b"\n", 32) == (NEW, OLD)
    for text, message in ((b"\n\n", "holds no secret"), (NEW + b"\nshort", "hop secret 2 must hold"),
                          (NEW + b"\n" + OLD + b"\n" + OLD, "one secret, or two")):
        with pytest.raises(ValueError, match=message):
            parse_hop_secrets(text, 32)
