"""`make charts`: PNG charts of the benchmark tables, written next to them in docs/benchmarks/.

The markdown tables the benches print are the one source of the figures: this script reads them
back (a small table parser), so a chart never shows other numbers than the table it sits beside.
embed.md -> embed.png, search.md -> search.png, coldstart.md -> coldstart.png, memory.md -> memory.png.
"""

from __future__ import annotations

import re
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: runs where there is no display, as in CI

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import StrMethodFormatter

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from bench.report import DOCS  # noqa: E402

DPI = 100
OURS, BASELINE = "#1f6fb4", "#9a9a9a"
PUT, GET = "#1f6fb4", "#7fb3e0"
THOUSANDS = StrMethodFormatter("{x:,.0f}")
# bench/report.py's machine(): "2026-12-03, 2 cores (AMD EPYC), Python 3.11.7".
RUN_LINE = re.compile(r"\d{4}-\d{2}-\d{2}, \d+ cores \(.*?\), Python \d+(?:\.\d+)*")

Row = dict[str, str]


@dataclass(frozen=True)
class Report:
    """One docs/benchmarks/*.md file: the line naming its run, and its tables as rows of cells."""

    path: Path
    run: str
    tables: list[list[Row]]

    def tables_with(self, *columns: str) -> list[list[Row]]:
        found = [table for table in self.tables if table and all(column in table[0] for column in columns)]
        if not found:
            raise SystemExit(f"{self.path}: no table has the columns {', '.join(columns)}")
        return found

    def value(self, row: Row, column: str) -> float:
        """The cell as a number: thousands commas, bold marks and a trailing `x` dropped."""
        text = row[column].replace(",", "").replace("*", "").strip().removesuffix("x")
        try:
            return float(text)
        except ValueError:
            raise SystemExit(
                f"{self.path}: {column!r} of {next(iter(row.values()))!r} is {row[column]!r}"
            ) from None


def parse_tables(lines: list[str]) -> list[list[Row]]:
    """Every markdown table in `lines`: a header row, a `---` row, then rows keyed by the header
    (code marks dropped from the cells)."""
    tables: list[list[Row]] = []
    block: list[list[str]] = []
    for line in [*lines, ""]:
        if line.startswith("|"):
            block.append([cell.strip().replace("`", "") for cell in line.strip().strip("|").split("|")])
            continue
        if len(block) >= 2 and all(set(cell) <= set("-: ") for cell in block[1]):
            header = block[0]
            tables.append([dict(zip(header, cells, strict=True)) for cells in block[2:]])
        block = []
    return tables


def read_report(path: Path) -> Report:
    text = path.read_text(encoding="utf-8")
    run = RUN_LINE.search("\n".join(text.splitlines()[:5]))
    if run is None:
        raise SystemExit(f"{path}: no 'date, cores (CPU), Python' line among its first lines")
    return Report(path, run.group(0), parse_tables(text.splitlines()))


def _figure(
    report: Report,
    title: str,
    size: tuple[float, float],
    nrows: int = 1,
    ncols: int = 1,
    height_ratios: list[float] | None = None,
) -> tuple[Figure, list[Axes]]:
    figure, axes = plt.subplots(
        nrows, ncols, figsize=size, dpi=DPI, layout="constrained", squeeze=False, height_ratios=height_ratios
    )
    figure.suptitle(title, fontsize=12, fontweight="bold")
    source = report.path.relative_to(REPO_ROOT)
    figure.supxlabel(f"{report.run} · figures from {source}", fontsize=8, color="dimgray")
    return figure, list(axes.flat)


def _label(text: str, width: int = 34) -> str:
    return "\n".join(textwrap.wrap(text, width))


def _barh(
    axis: Axes,
    labels: list[str],
    values: list[float],
    colours: list[str],
    unit: str,
    notes: list[str] | None = None,
) -> None:
    """Horizontal bars, first label on top, each bar labelled with its value (and its note)."""
    bars = axis.barh(range(len(values)), values, color=colours)
    texts = [f"{value:,.0f}" for value in values]
    if notes is not None:
        texts = [f"{text}  ({note})" for text, note in zip(texts, notes, strict=True)]
    axis.bar_label(bars, labels=texts, padding=3, fontsize=8)
    axis.set_yticks(range(len(labels)), [_label(label) for label in labels], fontsize=8)
    axis.invert_yaxis()
    axis.set_xlabel(unit, fontsize=9)
    axis.set_xlim(0, max(values) * (1.18 if notes is None else 1.4))
    axis.grid(axis="x", alpha=0.3)
    axis.xaxis.set_major_formatter(THOUSANDS)


def _colour(contender: str) -> str:
    return OURS if contender.startswith("aiinfra") else BASELINE


def embed_chart(report: Report) -> Figure:
    [rows] = report.tables_with("contender", "texts/s", "peak RSS MB")
    figure, (speed, memory) = _figure(
        report, "Embed: texts/s and peak RSS, aiinfra vs sentence-transformers (PyTorch)", (9.0, 3.6), ncols=2
    )
    names = [row["contender"] for row in rows]
    colours = [_colour(name) for name in names]
    _barh(speed, names, [report.value(row, "texts/s") for row in rows], colours, "texts/s (higher is better)")
    _barh(
        memory,
        names,
        [report.value(row, "peak RSS MB") for row in rows],
        colours,
        "peak RSS, MB (lower is better)",
    )
    memory.set_yticks([])
    return figure


def search_chart(report: Report) -> Figure:
    [rows] = report.tables_with("contender", "setting", "recall@10", "batch QPS")
    figure, (axis,) = _figure(report, "Search: recall@10 vs batch QPS of every contender", (9.0, 5.6))
    curves: dict[str, list[tuple[float, float]]] = {}
    for row in rows:
        if not row["setting"].startswith("filter:"):  # a filtered query answers another question
            curves.setdefault(row["contender"], []).append(
                (report.value(row, "recall@10"), report.value(row, "batch QPS"))
            )
    for contender, points in curves.items():
        recall, qps = zip(*sorted(points), strict=True)
        ours = contender.startswith("aiinfra")
        axis.plot(recall, qps, marker="o", markersize=4, linewidth=2.2 if ours else 1.4, label=contender)
    axis.set_yscale("log")
    axis.set_xlabel("recall@10 (higher is better)", fontsize=9)
    axis.set_ylabel("batch queries per second, log scale (higher is better)", fontsize=9)
    axis.grid(which="both", alpha=0.3)
    axis.legend(fontsize=8, loc="lower left")
    axis.set_title("one point per setting (nprobe, ef, ef_search); unfiltered queries", fontsize=9)
    return figure


def coldstart_chart(report: Report) -> Figure:
    [rows] = report.tables_with("function", "runs", "Init median", "Init max")
    figure, (axis,) = _figure(
        report, "Cold start: Init Duration per function vs the PyTorch baseline", (9.0, 3.8)
    )
    names = [row["function"] for row in rows]
    _barh(
        axis,
        names,
        [report.value(row, "Init median") for row in rows],
        [BASELINE if name.startswith("baseline") else OURS for name in names],
        "Init Duration, ms: median of the runs (lower is better)",
        notes=[f"{row['runs']} runs, max {report.value(row, 'Init max'):,.0f}" for row in rows],
    )
    return figure


def memory_chart(report: Report) -> Figure:
    data_plane, handler = report.tables_with("contender", "put ops/s", "get ops/s")
    # 100 commands per round trip is another workload than single operations: named, not drawn.
    pipelined = [row for row in data_plane if "-P " in row["contender"]]
    single = [row for row in data_plane if row not in pipelined]
    figure, axes = _figure(
        report,
        "Memory: put and get ops/s, aiinfra vs the ceiling of a Python client and redis-benchmark",
        (9.0, 7.0),
        nrows=2,
        height_ratios=[len(single), len(handler) + 0.6],
    )
    plane_title = "data plane (no HTTP), one client thread"
    if pipelined:
        rates = "; ".join(
            f"{row['contender']}: put {report.value(row, 'put ops/s'):,.0f}, "
            f"get {report.value(row, 'get ops/s'):,.0f}"
            for row in pipelined
        )
        plane_title += f"\npipelined, not drawn: {rates}"
    for axis, rows, title in zip(
        axes, [single, handler], [plane_title, "through the Lambda handler"], strict=True
    ):
        names = [row["contender"] for row in rows]
        at = range(len(rows))
        for offset, column, colour in ((-0.2, "put ops/s", PUT), (0.2, "get ops/s", GET)):
            values = [report.value(row, column) for row in rows]
            bars = axis.barh([y + offset for y in at], values, height=0.4, color=colour, label=column)
            axis.bar_label(bars, labels=[f"{value:,.0f}" for value in values], padding=3, fontsize=7)
        axis.set_yticks(list(at), [_label(name, 40) for name in names], fontsize=8)
        for tick, name in zip(axis.get_yticklabels(), names, strict=True):
            tick.set_fontweight("bold" if name.startswith("aiinfra") else "normal")
        axis.invert_yaxis()
        axis.set_xlim(0, axis.get_xlim()[1] * 1.1)
        axis.grid(axis="x", alpha=0.3)
        axis.xaxis.set_major_formatter(THOUSANDS)
        axis.set_title(title, fontsize=9)
    axes[0].legend(fontsize=8, loc="upper right")
    axes[1].set_xlabel("operations per second (higher is better)", fontsize=9)
    return figure


CHARTS: dict[str, Callable[[Report], Figure]] = {
    "embed": embed_chart,
    "search": search_chart,
    "coldstart": coldstart_chart,
    "memory": memory_chart,
}


def main() -> None:
    for name, chart in CHARTS.items():
        figure = chart(read_report(DOCS / f"{name}.md"))
        path = DOCS / f"{name}.png"
        figure.savefig(path, dpi=DPI, pil_kwargs={"optimize": True})
        plt.close(figure)
        print(f"{path.relative_to(REPO_ROOT)}: {path.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
