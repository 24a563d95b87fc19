"""
The package's layers, checked from the source: the pure core imports neither
Twisted nor Autobahn (nor anything above it), and no module imports in a
cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "tunnelgw"
#: What the pure core must never import (I/O frameworks and the layers above it).
FORBIDDEN_IN_CORE = ("twisted", "autobahn", "txaio", "zope", "OpenSSL", "service_identity")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module path imported anywhere in the file (function bodies included)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _modules() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {i for i in _imports(path) if i in modules} | {
        i for i in _imports(path) if i.split(".")[0] in FORBIDDEN_IN_CORE} for name, path in modules.items()}


class LayoutTests:
    """The layers as folders."""

    def test_core_imports_no_framework(self) -> None:
        """No module of tunnelgw.core imports Twisted, Autobahn, zope, pyOpenSSL or a non-core tunnelgw module."""
        bad = {}
        for name, imports in _modules().items():
            if name == "tunnelgw.core" or name.startswith("tunnelgw.core."):
                wrong = sorted(i for i in imports if i.split(".")[0] in FORBIDDEN_IN_CORE
                               or (i.startswith("tunnelgw.") and not i.startswith("tunnelgw.core")))
                if wrong:
                    bad[name] = wrong
        assert bad == {}
        assert len([n for n in _modules() if n.startswith("tunnelgw.core.")]) >= 10

    def test_backends_do_not_import_glue_above_them(self) -> None:
        """tunnelgw.backends imports only the core, other backends and operations modules, never the session or web glue."""
        above = ("tunnelgw.session", "tunnelgw.web", "tunnelgw.front", "tunnelgw.service", "tunnelgw.tap",
                 "tunnelgw.reload", "tunnelgw.protocol")
        bad = {name: sorted(i for i in imports if i.startswith(above))
               for name, imports in _modules().items() if name.startswith("tunnelgw.backends")}
        assert {k: v for k, v in bad.items() if v} == {}

    def test_no_import_cycles(self) -> None:
        """The import graph of tunnelgw (function-level imports included) has no cycle."""
        graph = {name: {i for i in imports if i.startswith("tunnelgw")} for name, imports in _modules().items()}
        # A package's __init__ is not an edge target for its own submodules.
        state: dict[str, int] = {}
        cycles: list[list[str]] = []

        def visit(node: str, stack: list[str]) -> None:
            state[node] = 1
            for nxt in sorted(graph.get(node, ())):
                if nxt not in graph or nxt == node:
                    continue
                if state.get(nxt) == 1:
                    cycles.append(stack[stack.index(nxt):] + [nxt] if nxt in stack else [node, nxt])
                elif nxt not in state:
                    visit(nxt, stack + [nxt])
            state[node] = 2

        for name in sorted(graph):
            if name not in state:
                visit(name, [name])
        assert cycles == []
