"""
Turn measured figures into the results table (Markdown and JSON) and a plot.

Each :class:`Row` is one figure: tunnelgw's value, websockify's, the direct
ceiling (the same client straight to the backend), the target and whether it
is met.  Pure functions, apart from :func:`write_results`.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

__all__ = ["Row", "markdown_table", "target_met", "write_results"]


@dataclass(frozen=True)
class Row:
    """
    One figure.  ``goal`` is a factor of websockify's value (``higher`` says
    which way is better) or, with ``absolute``, a bound on tunnelgw's value.
    """

    figure: str
    unit: str
    tunnelgw: Optional[float]
    websockify: Optional[float]
    direct: Optional[float] = None
    goal: Optional[float] = None
    higher: bool = True
    absolute: bool = False
    note: str = ""

    @property
    def ratio(self) -> Optional[float]:
        """tunnelgw / websockify."""
        if self.tunnelgw is None or not self.websockify:
            return None
        return self.tunnelgw / self.websockify

    @property
    def target(self) -> str:
        """The target in words."""
        if self.goal is None:
            return ""
        if self.absolute:
            return f"{'>=' if self.higher else '<='} {self.goal:g} {self.unit}"
        if self.higher:
            return f">= {self.goal:g}x websockify"
        return "< websockify" if self.goal < 1 else f"<= {self.goal:g}x websockify"


def target_met(row: Row) -> Optional[bool]:
    """Whether the row meets its goal; None when it has none or lacks a value."""
    if row.goal is None or row.tunnelgw is None:
        return None
    if row.absolute:
        return row.tunnelgw >= row.goal if row.higher else row.tunnelgw <= row.goal
    if row.websockify is None:
        return None
    if row.higher:
        return row.tunnelgw >= row.goal * row.websockify
    # Lower is better: goal 1 means "no worse", below 1 means "strictly better".
    if row.goal < 1:
        return row.tunnelgw < row.websockify
    return row.tunnelgw <= row.goal * row.websockify


def _num(value: Optional[float]) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def markdown_table(rows: list[Row]) -> str:
    """The results as a Markdown table: figure | tunnelgw | websockify | ratio | direct | target | met?"""
    lines = ["| figure | tunnelgw | websockify | ratio | direct ceiling | target | met? |",
             "|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        met = target_met(r)
        ratio = r.ratio
        lines.append(" | ".join([
            f"| {r.figure} ({r.unit})",
            _num(r.tunnelgw), _num(r.websockify),
            f"{ratio:.2f}" if ratio is not None else "-",
            _num(r.direct), r.target,
            {True: "yes", False: "**no**", None: "-"}[met] + (f" ({r.note})" if r.note else ""),
        ]) + " |")
    return "\n".join(lines)


def _plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plotted = [r for r in rows if r.tunnelgw is not None]
    fig, axes = plt.subplots((len(plotted) + 2) // 3, 3, figsize=(15, 3.2 * ((len(plotted) + 2) // 3)))
    for ax in axes.flat[len(plotted):]:
        ax.axis("off")
    for ax, r in zip(axes.flat, plotted):
        names, values, colours = ["tunnelgw"], [r.tunnelgw], ["#2a7ab0"]
        if r.websockify is not None:
            names.append("websockify"); values.append(r.websockify); colours.append("#d9822b")
        if r.direct is not None:
            names.append("direct"); values.append(r.direct); colours.append("#999999")
        bars = ax.barh(names, values, color=colours)
        ax.bar_label(bars, labels=[_num(v) for v in values], padding=3, fontsize=9)
        ax.invert_yaxis()
        met = target_met(r)
        mark = {True: " [met]", False: " [NOT met]", None: ""}[met]
        ax.set_title(f"{r.figure}{mark}", fontsize=10, color="black" if met is not False else "#b00020")
        ax.set_xlabel(r.unit + ("  (lower is better)" if not r.higher else ""), fontsize=9)
        ax.set_xlim(0, max(values) * 1.3)
        ax.tick_params(labelsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_results(rows: list[Row], folder: Path, meta: dict[str, object]) -> str:
    """Write latest.md, latest.json and latest.png into folder; return the Markdown."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "machine": platform.platform(),
            "python": platform.python_version(), **meta}
    table = markdown_table(rows)
    notes = "\n".join(f"- {k}: {v}" for k, v in meta.items())
    text = f"# tunnelgw benchmark results\n\n{table}\n\n{notes}\n"
    (folder / "latest.md").write_text(text)
    (folder / "latest.json").write_text(json.dumps(
        {"meta": meta, "rows": [asdict(r) | {"ratio": r.ratio, "target": r.target, "met": target_met(r)} for r in rows]},
        indent=2) + "\n")
    _plot(rows, folder / "latest.png")
    return text
