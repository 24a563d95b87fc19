"""Suite-wide checks: the run leaves no process behind."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from support import wait_until

#: Every child of the suite inherits this variable, even one that daemonizes or whose parent died.
_MARK = f"TUNNELGW_TEST_RUN={uuid.uuid4().hex}"


def pytest_configure(config: pytest.Config) -> None:
    """Mark the environment that every process the suite starts inherits."""
    name, value = _MARK.split("=")
    os.environ[name] = value


def _leftovers() -> list[str]:
    """Live processes (not zombies) carrying this run's mark, except pytest itself."""
    found = []
    mark = _MARK.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if mark not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if state != "Z":
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run if a process it started (twistd, nginx, Xvnc, chromium...) is still alive."""
    if not Path("/proc/self/environ").exists():
        return
    left: list[str] = []

    def none_left() -> bool:
        left[:] = _leftovers()
        return not left

    if not wait_until(none_left, timeout=5):
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = "processes started by the suite are still running:\n  " + "\n  ".join(left)
        if reporter is not None:
            reporter.write_line(message, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
