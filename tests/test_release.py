"""A newcomer's first hour: README's install command as written, and the sdist as released."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

import pytest

from support import REPO, require_module, wait_until

_IGNORED = shutil.ignore_patterns(".git", ".venv", "venv", ".ci/venvs", "venvs", "__pycache__", "*.egg-info",
                                  "build", "dist", ".pytest_cache", ".hypothesis", ".mypy_cache", "*.log",
                                  "dropin.cache", "artifacts")


def readme_install_command() -> str:
    """README's first command: the venv, the install and the gateway."""
    text = (REPO / "README.rst").read_text()
    match = re.search(r"^    (python3 -m venv .*twistd -n tunnelgw)$", text, re.M)
    assert match, "README's first command makes a venv, installs and starts twistd -n tunnelgw"
    return match.group(1)


def test_readme_install_command_serves_demo(tmp_path: Path) -> None:
    """README's install command, run as written in a copy of the tree, serves the demo page on 127.0.0.1:8080."""
    tree = tmp_path / "tunnelgw"
    shutil.copytree(REPO, tree, ignore=_IGNORED)
    # The embedded default's ports are fixed: other tests (and other checkouts) using them wait here.
    with open("/tmp/tunnelgw-default-ports.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        log = open(tmp_path / "readme.log", "wb")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        proc = subprocess.Popen(["bash", "-c", readme_install_command()], cwd=tree, stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
        page: list[str] = []

        def served() -> bool:
            try:
                page.append(urllib.request.urlopen("http://127.0.0.1:8080/", timeout=2).read().decode())
                return True
            except OSError:
                return proc.poll() is not None

        try:
            assert wait_until(served, timeout=400, interval=0.5) and page, (tmp_path / "readme.log").read_text()[-4000:]
            assert "tunnelgw demo" in page[-1]
            assert (tree / ".venv/bin/twistd").exists()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
            log.close()


def test_sdist_installs_and_carries_the_tests(tmp_path: Path) -> None:
    """The sdist built from the tree has LICENSE, NEWS, docs, examples, .ci and tests; installed in a venv, its test modules import."""
    require_module("setuptools")  # venvs of Python 3.12+ have none: the test extra declares it
    tree = tmp_path / "tree"
    shutil.copytree(REPO, tree, ignore=_IGNORED)
    (tmp_path / "dist").mkdir()
    # The PEP 517 hook that `python -m build --sdist` calls, without needing the build package.
    subprocess.run([sys.executable, "-c", "import sys; from setuptools import build_meta; build_meta.build_sdist(sys.argv[1])",
                    str(tmp_path / "dist")], check=True, capture_output=True, cwd=tree, timeout=300)
    (sdist,) = (tmp_path / "dist").glob("tunnelgw-*.tar.gz")
    import tunnelgw

    assert sdist.name == f"tunnelgw-{tunnelgw.__version__}.tar.gz"
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
        tar.extractall(tmp_path / "unpacked", filter="data") if sys.version_info >= (3, 12) else tar.extractall(tmp_path / "unpacked")
    for needed in ("LICENSE", "NEWS.rst", "MANIFEST.in", "tests/support.py", "tests/desktops.py", "tests/fronts.py",
                   "tests/rawws.py", "tests/conftest.py", "tests/apps/gtk_recorder.py", "docs/operations.rst",
                   "examples/tunnelgw.conf", "examples/systemd/tunnelgw.service", "examples/grafana/tunnelgw-dashboard.json",
                   ".ci/run", ".ci/apt-packages.txt", "twisted/plugins/tunnelgw_plugin.py"):
        assert needed in names, needed
    assert any(n.startswith("bench/") for n in names)
    assert not any("dropin.cache" in n or "__pycache__" in n for n in names)
    venv = tmp_path / "venv"
    # The dependencies come from this interpreter's site-packages (after the venv's own, by a
    # .pth file, which also works when this interpreter is itself a venv): the sdist is what is tested.
    import site
    import sysconfig

    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    (purelib / "_outer_site.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    subprocess.run([venv / "bin/python", "-m", "pip", "install", "-q", "--no-deps",
                    "--disable-pip-version-check", str(sdist)], check=True, timeout=300)
    unpacked = next((tmp_path / "unpacked").iterdir())
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    probe = ("import sys, tunnelgw; sys.path.insert(0, sys.argv[1]);"
             "import support, desktops, fronts, rawws, test_cli, test_deployment;"
             "print(tunnelgw.__file__, tunnelgw.__version__)")
    out = subprocess.run([venv / "bin/python", "-c", probe, str(unpacked / "tests")], check=True, capture_output=True,
                         text=True, env=env, cwd=tmp_path, timeout=120).stdout
    assert str(venv) in out and tunnelgw.__version__ in out, out
    plugins = subprocess.run([venv / "bin/python", "-c", "from twisted.scripts.twistd import run; run()", "--help"], capture_output=True, text=True, env=env, cwd=tmp_path,
                             timeout=120).stdout
    assert "tunnelgw" in plugins


def parser_directives() -> set[str]:
    """The directive names of the parser's table, lower-cased (``<proxy>`` for the block)."""
    from tunnelgw.core.config import DIRECTIVES

    return {"<proxy>" if d.name == "<Proxy" else d.name.lower() for d in DIRECTIVES if d.name != "</Proxy>"}


def test_example_config_and_reference_cover_every_directive() -> None:
    """examples/tunnelgw.conf uses every directive with a comment above it; --directives and the docs name each."""
    from tunnelgw.core.config import DIRECTIVES

    known = parser_directives()
    assert {"listen", "proxypass", "alias", "tokensource", "<proxy>", "originallow"} <= known

    lines = (REPO / "examples/tunnelgw.conf").read_text().splitlines()
    used = {}
    for i, line in enumerate(lines):
        word = line.split()[0].lower() if line.strip() and not line.lstrip().startswith("#") else None
        if word:
            word = "<proxy>" if word.startswith("<proxy") else word
            used.setdefault(word, i)
    assert set(used) - {"</proxy>"} == known, known ^ (set(used) - {"</proxy>"})
    for word, i in used.items():
        above = [l for l in lines[:i] if l.strip()][-1:]
        inside_block = lines[i].startswith("  ") or word == "</proxy>"
        assert inside_block or (above and above[0].lstrip().startswith("#")), f"no comment above {lines[i]!r}"

    docs = (REPO / "README.rst").read_text() + "".join(p.read_text() for p in (REPO / "docs").glob("*.rst"))
    for directive in DIRECTIVES:
        assert re.search(re.escape(directive.name.strip("<>/")), docs), f"{directive.name} is not documented"


def test_directives_option_prints_the_reference() -> None:
    """`twistd tunnelgw --directives` prints every directive; --help lists their names."""
    from support import subprocess_env, twistd_command
    from tunnelgw.core.config import DIRECTIVES

    out = subprocess.run(twistd_command("tunnelgw", "--directives"), capture_output=True, text=True,
                         env=subprocess_env(), timeout=60)
    assert out.returncode == 0
    helptext = subprocess.run(twistd_command("tunnelgw", "--help"), capture_output=True, text=True,
                              env=subprocess_env(), timeout=60).stdout
    for directive in DIRECTIVES:
        assert re.search(rf"^  {re.escape(directive.name)}( |$)", out.stdout, re.M), directive.name
        assert directive.name in helptext.replace("\n", " ")
