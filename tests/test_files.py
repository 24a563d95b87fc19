"""
Static files (``Alias``): the pure choice of alias, configuration checks at
FILE:LINE, and a real ``twistd tunnelgw`` serving a folder over HTTP (content
types, validators, no listing, no traversal, precedence with routes).
"""

from __future__ import annotations

import http.client
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactor
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from support import GatewayProcess, TcpServer, echo
from tunnelgw.core.config import Alias, ConfigError, Location, parse_config
from tunnelgw.files import choose_alias
from tunnelgw.core.routing import Reject, normalise_path
from tunnelgw.service import check_config

HERE = Location("t", 1)


def aliases(*pairs: tuple[str, str]) -> list[Alias]:
    return [Alias(path, folder, HERE) for path, folder in pairs]


class ChooseAliasTests:
    """Which alias serves a normalised path, and the segments below it."""

    def test_longest_prefix_wins(self) -> None:
        """The alias with the longest matching path is chosen, segment-aware."""
        table = aliases(("/", "/srv/root"), ("/novnc", "/usr/share/novnc"), ("/novnc/app", "/srv/app"))
        assert choose_alias(table, "/novnc/vnc.html") == (table[1], ["vnc.html"])
        assert choose_alias(table, "/novnc/app/ui.js") == (table[2], ["ui.js"])
        assert choose_alias(table, "/novncx") == (table[0], ["novncx"])
        assert choose_alias(table, "/") == (table[0], [""])

    def test_alias_itself_and_trailing_slash(self) -> None:
        """The alias path itself gives no segments (a redirect adds the slash); a slash gives ''."""
        table = aliases(("/novnc", "/usr/share/novnc"))
        assert choose_alias(table, "/novnc") == (table[0], [])
        assert choose_alias(table, "/novnc/") == (table[0], [""])
        assert choose_alias(table, "/novnc/core/") == (table[0], ["core", ""])
        assert choose_alias(table, "/other") is None

    @given(st.lists(st.sampled_from(["a", "b", "..", ".", "%2e%2e", "%2f", "%2E.", "", "c%00"]), max_size=8))
    def test_no_segment_climbs(self, parts: list[str]) -> None:
        """After normalisation no segment handed to the file system is '..', '.', or holds '/' or NUL."""
        path = normalise_path(("/files/" + "/".join(parts)).encode())
        if isinstance(path, Reject):
            return
        chosen = choose_alias(aliases(("/files", "/srv")), path)
        if chosen is not None:
            assert all(s not in ("..", ".") and "/" not in s and "\x00" not in s for s in chosen[1])


def test_alias_config_errors() -> None:
    """Bad Alias lines are reported at FILE:LINE, all at once."""
    text = """Listen tcp:port=0
Alias /novnc
Alias novnc /usr/share/novnc
Alias /a relative/folder
Alias /dup /tmp
Alias /dup/ /tmp
ProxyPass /same tcp:host=127.0.0.1:port=1
Alias /same /tmp
"""
    with pytest.raises(ConfigError) as e:
        parse_config(text, "gw.conf")
    lines = str(e.value).splitlines()
    assert [line.split(":")[1] for line in lines] == ["2", "3", "4", "6", "8"]
    assert "Alias takes a URL path and an absolute folder" in lines[0]
    assert "duplicate Alias path '/dup' (first at gw.conf:5)" in lines[3]
    assert "also a ProxyPass path (at gw.conf:7)" in lines[4]


def test_alias_folder_must_exist(tmp_path: Path) -> None:
    """check_config names a missing Alias folder at its line."""
    config = parse_config(f"Listen tcp:port=0\nAlias /x {tmp_path}\nAlias /y {tmp_path / 'missing'}\n", "gw.conf")
    with pytest.raises(ConfigError) as e:
        check_config(config, MemoryReactor())
    assert str(e.value) == f"gw.conf:3: Alias folder '{tmp_path / 'missing'}' is not an existing folder"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, Path]]:
    tmp = tmp_path_factory.mktemp("files")
    root = tmp / "www"
    (root / "app" / "sub").mkdir(parents=True)
    (root / "index.html").write_text("<h1>index</h1>")
    for name in ("ui.js", "mod.mjs", "code.wasm", "logo.svg", "data.json", "blob.unknownext", "script.rpy"):
        (root / "app" / name).write_bytes(b"x" * 10)
    (tmp / "secret.txt").write_text("secret")
    (root / "link").symlink_to(tmp)  # a link out of the folder
    (root / "app" / "same.js").symlink_to(root / "app" / "ui.js")  # a link inside it
    (root / ".env").write_text("secret")
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("secret")
    with TcpServer(echo) as backend:
        config = f"""
Listen tcp:port=0:interface=127.0.0.1
Alias /web {root}
Alias /web/app/sub {root / 'app'}
ProxyPass /web/ws {backend.endpoint}
ProxyPass /echo {backend.endpoint}
"""
        with GatewayProcess(config, tmp) as gw:
            yield gw, root


def get(gw: GatewayProcess, path: str, method: str = "GET",
        headers: dict[str, str] = {}) -> tuple[int, http.client.HTTPMessage, bytes]:
    """One raw HTTP request (the path is sent exactly as given)."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port(), timeout=5)
    try:
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


@pytest.mark.parametrize("name, content_type", [
    ("ui.js", "text/javascript; charset=utf-8"), ("mod.mjs", "text/javascript; charset=utf-8"),
    ("code.wasm", "application/wasm"), ("logo.svg", "image/svg+xml"), ("data.json", "application/json"),
    ("blob.unknownext", "application/octet-stream"), ("script.rpy", "application/octet-stream"),
])
def test_content_types(site: tuple[GatewayProcess, Path], name: str, content_type: str) -> None:
    """Files are sent with their web content type, nosniff, and never run as scripts."""
    status, headers, body = get(site[0], f"/web/app/{name}")
    assert (status, headers["content-type"], body) == (200, content_type, b"x" * 10)
    assert headers["x-content-type-options"] == "nosniff"


def test_validators_and_revalidation(site: tuple[GatewayProcess, Path]) -> None:
    """Files carry Cache-Control: no-cache, Last-Modified and an ETag; both validators give 304."""
    status, headers, _ = get(site[0], "/web/app/ui.js")
    assert status == 200 and headers["cache-control"] == "no-cache"
    assert headers["last-modified"] and headers["etag"].startswith('"')
    assert get(site[0], "/web/app/ui.js", headers={"If-None-Match": headers["etag"]})[0] == 304
    assert get(site[0], "/web/app/ui.js", headers={"If-Modified-Since": headers["last-modified"]})[0] == 304
    assert get(site[0], "/web/app/ui.js", method="HEAD")[1]["content-length"] == "10"


def test_folders(site: tuple[GatewayProcess, Path]) -> None:
    """A folder redirects to its slash form, serves index.html, and is never listed (403)."""
    status, headers, _ = get(site[0], "/web")
    assert (status, headers["location"]) == (302, "/web/")
    status, _, body = get(site[0], "/web/")
    assert (status, body) == (200, b"<h1>index</h1>")
    status, _, body = get(site[0], "/web/app/")
    assert status == 403 and b"ui.js" not in body


@pytest.mark.parametrize("path, status", [
    ("/web/../secret.txt", 404), ("/web/app/../../secret.txt", 404), ("/web/%2e%2e/secret.txt", 404),
    ("/web/%2e%2e/%2e%2e/secret.txt", 400), ("/web/..%2fsecret.txt", 404), ("/web/app%2f..%2f..%2fsecret.txt", 404),
    ("/web/%5c..%5csecret.txt", 404), ("/web/%00", 404), ("/web/nothing.html", 404),
])
def test_no_traversal(site: tuple[GatewayProcess, Path], path: str, status: int) -> None:
    """Dot segments, encoded dots and encoded slashes never reach a file outside the folder."""
    got, _, body = get(site[0], path)
    assert (got, b"secret" in body) == (status, False)


def test_precedence_with_routes(site: tuple[GatewayProcess, Path]) -> None:
    """A longer ProxyPass path beats an alias (426 to plain GET); a longer alias beats a shorter one."""
    assert get(site[0], "/web/ws")[0] == 426
    status, _, body = get(site[0], "/web/app/sub/ui.js")
    assert (status, body) == (200, b"x" * 10)
    with connect(f"ws://127.0.0.1:{site[0].port()}/web/ws", open_timeout=5) as ws:
        ws.send(b"hi")
        assert ws.recv(timeout=5) == b"hi"
    with pytest.raises(InvalidStatus) as e:
        connect(f"ws://127.0.0.1:{site[0].port()}/web/index.html", open_timeout=5)
    assert e.value.response.status_code == 404


@pytest.mark.parametrize("path", ["/web/link/secret.txt", "/web/link/", "/web/.env", "/web/.git/config",
                                  "/web/.git/", "/web/%2eenv", "/web/app/sub/../../.env"])
def test_links_out_and_dot_files_refused(site: tuple[GatewayProcess, Path], path: str) -> None:
    """A symbolic link leading outside the folder and dot-files or dot-folders are 404, never served."""
    got, _, body = get(site[0], path)
    assert (got, b"secret" in body) == (404, False)


def test_links_inside_the_folder_served(site: tuple[GatewayProcess, Path]) -> None:
    """A symbolic link that stays inside the folder is served like the file it names."""
    assert get(site[0], "/web/app/same.js")[::2] == (200, b"x" * 10)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(["link", ".env", ".git", "config", "secret.txt", "app", "..", ".", "%2e%2e",
                                 "%2eenv", "ui.js", "same.js", "", "%2f", "sub"]), min_size=1, max_size=5))
def test_free_form_alias_paths_never_leak(site: tuple[GatewayProcess, Path], segments: list[str]) -> None:
    """Whatever the path below an alias, nothing outside its folder nor any dot-file is ever sent."""
    got, _, body = get(site[0], "/web/" + "/".join(segments))
    assert b"secret" not in body, (segments, got)
