"""The package type-checks: mypy (with the zope.interface plugin) finds no error in tunnelgw/."""

from __future__ import annotations

import subprocess
import sys

from support import REPO


def test_mypy_is_clean() -> None:
    """mypy reports no issue in the package, with the settings in setup.cfg."""
    result = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(REPO / "setup.cfg"), "tunnelgw"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
