"""
Turn measured figures into the results table (Markdown and JSON) and a plot.

Each :class:`Row` is one figure of one run: tunnelgw's value and those of the
peers measured beside it in the same run (websockify, the asyncio bridge,
nginx; for a route with ``auth=`` or ``record=on``, tunnelgw's plain route on
the same gateway), the direct ceiling (the same client straight to the
backend), and the targets.  With several runs, :class:`Figure` holds one figure's rows, one per
run: the table gives the median of each value and, for each ratio
tunnelgw / peer, the median of the per-run ratios followed by the per-run
ratios themselves (a ratio is only ever taken within one run).  Pure
functions, apart from :func:`write_results`.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Optional

__all__ = ["PEERS", "RIVALS", "Figure", "Row", "combine", "markdown_table", "target_met", "write_results"]

#: Every column with a value, in table order.
PEERS = ("tunnelgw", "plain", "websockify", "bridge", "nginx", "floor", "direct")
#: The peers tunnelgw is compared with (a ratio column each).
RIVALS = ("plain", "websockify", "bridge", "nginx", "floor")
#: Column names that are not the peer's own.
_NAMES = {"plain": "plain route"}

_COLOURS = {"tunnelgw": "#2a7ab0", "plain": "#7fb3d5", "websockify": "#d9822b", "bridge": "#5a9e4b", "nginx": "#8e5ab0", "floor": "#b05a5a",
            "direct": "#999999"}


@dataclass(frozen=True)
class Row:
    """
    One figure of one run.  Each goal is ``(peer, factor)``: tunnelgw at least
    factor x that peer's value (``higher``), or at most factor x it (lower is
    better); with peer ``""`` the factor
    is a bound on tunnelgw's own value.
    """

    figure: str
    unit: str
    tunnelgw: Optional[float] = None
    websockify: Optional[float] = None
    direct: Optional[float] = None
    higher: bool = True
    goals: tuple[tuple[str, float], ...] = ()
    note: str = ""
    bridge: Optional[float] = None
    nginx: Optional[float] = None
    floor: Optional[float] = None
    plain: Optional[float] = None  # tunnelgw's plain route, beside an auth= or record=on route

    def value(self, peer: str) -> Optional[float]:
        """The value measured for peer (a name from :data:`PEERS`)."""
        return getattr(self, peer)  # type: ignore[no-any-return]

    def ratio(self, peer: str = "websockify") -> Optional[float]:
        """tunnelgw / peer in this run."""
        other = self.value(peer)
        if self.tunnelgw is None or not other:
            return None
        return self.tunnelgw / other

    @property
    def target(self) -> str:
        """The targets in words."""
        words = []
        for peer, factor in self.goals:
            if not peer:
                words.append(f"{'>=' if self.higher else '<='} {factor:g} {self.unit}")
            elif self.higher:
                words.append(f">= {factor:g}x {_NAMES.get(peer, peer)}")
            else:
                words.append(f"<= {factor:g}x {_NAMES.get(peer, peer)}")
        return ", ".join(words)


def _goal_met(higher: bool, factor: float, value: float, ratio: Optional[float], absolute: bool) -> Optional[bool]:
    if absolute:
        return value >= factor if higher else value <= factor
    if ratio is None:
        return None
    if higher:
        return ratio >= factor
    return ratio <= factor


def _all_met(results: list[Optional[bool]]) -> Optional[bool]:
    if not results or any(r is None for r in results):
        return None if not any(r is False for r in results) else False
    return all(results)


def target_met(row: Row) -> Optional[bool]:
    """Whether the row meets all its goals; None when it has none or lacks a value."""
    if not row.goals or row.tunnelgw is None:
        return None
    return _all_met([_goal_met(row.higher, factor, row.tunnelgw, row.ratio(peer) if peer else None, not peer)
                     for peer, factor in row.goals])


def _median(values: list[Optional[float]]) -> Optional[float]:
    present = [v for v in values if v is not None]
    return float(statistics.median(present)) if present else None


@dataclass(frozen=True)
class Figure:
    """One figure over all runs: :attr:`runs` holds its row from each run."""

    runs: tuple[Row, ...]

    @property
    def median(self) -> Row:
        """The row of the medians of every value (notes of all runs kept once each)."""
        first = self.runs[0]
        notes = list(dict.fromkeys(r.note for r in self.runs if r.note))
        medians: dict[str, Any] = {peer: _median([r.value(peer) for r in self.runs]) for peer in PEERS}
        return replace(first, note="; ".join(notes), **medians)

    def run_ratios(self, peer: str) -> list[Optional[float]]:
        """tunnelgw / peer, run by run."""
        return [r.ratio(peer) for r in self.runs]

    def median_ratio(self, peer: str) -> Optional[float]:
        """The median of the per-run ratios tunnelgw / peer."""
        return _median(self.run_ratios(peer))

    @property
    def met(self) -> Optional[bool]:
        """Whether the goals are met by the median ratios (or, for a bound, the median value)."""
        m = self.median
        if not m.goals or m.tunnelgw is None:
            return None
        return _all_met([_goal_met(m.higher, factor, m.tunnelgw, self.median_ratio(peer) if peer else None, not peer)
                         for peer, factor in m.goals])


def combine(runs: list[list[Row]]) -> list[Figure]:
    """Group the rows of several runs by figure (in the first run's order)."""
    by_name: dict[str, list[Row]] = {}
    for rows in runs:
        for r in rows:
            by_name.setdefault(r.figure, []).append(r)
    return [Figure(tuple(rows)) for rows in by_name.values()]


def _num(value: Optional[float]) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def _ratio_cell(f: Figure, peer: str) -> str:
    median = f.median_ratio(peer)
    if median is None:
        return "-"
    if len(f.runs) == 1:
        return f"{median:.2f}"
    per_run = " ".join("-" if r is None else f"{r:.2f}" for r in f.run_ratios(peer))
    return f"{median:.2f} ({per_run})"


def markdown_table(figures: list[Figure]) -> str:
    """
    The results as a Markdown table: medians of the values, then each ratio
    tunnelgw / peer as the median of the per-run ratios with the per-run
    ratios in brackets, then the targets.
    """
    head = ["figure", "tunnelgw", "plain route", "websockify", "bridge", "nginx", "Twisted floor", "direct ceiling",
            *(f"tunnelgw / {_NAMES.get(p, p)}" for p in RIVALS), "target", "met?"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(PEERS) + len(RIVALS)) + "---|---|"]
    for f in figures:
        m = f.median
        met = f.met
        lines.append("| " + " | ".join([
            f"{m.figure} ({m.unit})", *(_num(m.value(p)) for p in PEERS), *(_ratio_cell(f, p) for p in RIVALS),
            m.target, {True: "yes", False: "**no**", None: "-"}[met] + (f" ({m.note})" if m.note else ""),
        ]) + " |")
    return "\n".join(lines)


def _plot(figures: list[Figure], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plotted = [f for f in figures if f.median.tunnelgw is not None]
    rows_of_axes = (len(plotted) + 2) // 3
    fig, axes = plt.subplots(rows_of_axes, 3, figsize=(15, 3.0 * rows_of_axes), squeeze=False)
    for ax in axes.flat[len(plotted):]:
        ax.axis("off")
    for ax, f in zip(axes.flat, plotted):
        r = f.median
        names = [p for p in PEERS if r.value(p) is not None]
        values = [float(r.value(p)) for p in names]  # type: ignore[arg-type]
        bars = ax.barh([_NAMES.get(p, p) for p in names], values, color=[_COLOURS[p] for p in names])
        ax.bar_label(bars, labels=[_num(v) for v in values], padding=3, fontsize=9)
        ax.invert_yaxis()
        met = f.met
        mark = {True: " [met]", False: " [NOT met]", None: ""}[met]
        ax.set_title(f"{r.figure}{mark}", fontsize=10, color="black" if met is not False else "#b00020")
        runs = f" (median of {len(f.runs)} runs)" if len(f.runs) > 1 else ""
        ax.set_xlabel(r.unit + ("  (lower is better)" if not r.higher else "") + runs, fontsize=9)
        ax.set_xlim(0, max(values) * 1.3)
        ax.tick_params(labelsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _row_json(r: Row) -> dict[str, Any]:
    return asdict(r) | {"ratios": {p: r.ratio(p) for p in RIVALS}, "target": r.target, "met": target_met(r)}


def write_results(runs: list[list[Row]], folder: Path, meta: dict[str, object]) -> str:
    """Write latest.md, latest.json and latest.png into folder; return the Markdown."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": platform.platform(),
            "python": platform.python_version(), "runs": len(runs), **meta}
    figures = combine(runs)
    notes = "\n".join(f"- {k}: {v}" for k, v in meta.items())
    title = f"medians of {len(runs)} runs" if len(runs) > 1 else "one run"
    parts = [f"# tunnelgw benchmark results ({title})\n", markdown_table(figures), "", notes, ""]
    if len(runs) > 1:
        for i, rows in enumerate(runs, 1):
            parts += [f"## Run {i}\n", markdown_table([Figure((r,)) for r in rows]), ""]
    text = "\n".join(parts)
    (folder / "latest.md").write_text(text)
    (folder / "latest.json").write_text(json.dumps({
        "meta": meta,
        "rows": [_row_json(f.median) | {"ratios": {p: f.median_ratio(p) for p in RIVALS},
                                        "per_run_ratios": {p: f.run_ratios(p) for p in RIVALS}, "met": f.met}
                 for f in figures],
        "runs": [[_row_json(r) for r in rows] for rows in runs]}, indent=2) + "\n")
    _plot(figures, folder / "latest.png")
    return text
