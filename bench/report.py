"""The bench's rows: one figure beside the reference measured in the same run, the ratio, the
goal and whether it is met; printed as one table (rich) and written as JSON."""

from __future__ import annotations

import json
import statistics
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from appauth_dev.load import percentile
from bench.machine import one_line

__all__ = ["Results", "Row", "make_console", "median", "percentile", "render", "save"]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PIPED_WIDTH = 180


@dataclass
class Row:
    """One measured figure. ``ratio`` is ``value / reference_value`` when both exist; a goal is
    a bound on the ratio (``ratio_at_least`` / ``ratio_at_most``) or on the value itself
    (``value_at_most``), and ``met`` says whether this run meets it."""

    section: str
    measure: str
    value: float | None
    unit: str
    reference: str | None = None
    reference_value: float | None = None
    ratio_at_least: float | None = None
    ratio_at_most: float | None = None
    value_at_most: float | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.value is None or not self.reference_value:
            return None
        return self.value / self.reference_value

    @property
    def goal(self) -> str | None:
        if self.ratio_at_least is not None:
            return f">= {self.ratio_at_least:g}x"
        if self.ratio_at_most is not None:
            return f"<= {self.ratio_at_most:g}x"
        if self.value_at_most is not None:
            return f"<= {self.value_at_most:g} {self.unit}"
        return None

    @property
    def met(self) -> bool | None:
        ratio = self.ratio
        if self.ratio_at_least is not None:
            return None if ratio is None else ratio >= self.ratio_at_least
        if self.ratio_at_most is not None:
            return None if ratio is None else ratio <= self.ratio_at_most
        if self.value_at_most is not None:
            return None if self.value is None else self.value <= self.value_at_most
        return None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "goal": self.goal, "met": self.met}


@dataclass
class Results:
    mode: str
    machine: dict[str, Any]
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    sections_failed: dict[str, str] = field(default_factory=dict)

    def add(self, rows: Sequence[Row]) -> None:
        self.rows.extend(rows)

    def as_dict(self, finished: datetime) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "started": self.started.isoformat(timespec="seconds"),
            "duration_seconds": round((finished - self.started).total_seconds(), 1),
            "machine": self.machine,
            "rows": [row.as_dict() for row in self.rows],
            "sections_failed": self.sections_failed,
            "details": self.details,
        }


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if abs(value) >= 1000:
        text = f"{value:,.0f}"
    elif abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".rstrip()


def _verdict(row: Row) -> str:
    if row.goal is None:
        return ""
    if row.met is None:
        return f"{row.goal} ?"
    return f"{row.goal} {'met' if row.met else 'NOT met'}"


def make_console() -> Console:
    """A terminal's own width; piped (make's log, CI), wide enough that rows stay on a line."""
    return Console(width=None if sys.stdout.isatty() else PIPED_WIDTH)


def render(results: Results, console: Console | None = None) -> None:
    console = console or make_console()
    table = Table(
        title=f"appauth bench ({results.mode})",
        caption=one_line(results.machine),
        show_lines=False,
        expand=False,
    )
    for name, justify in (
        ("section", "left"),
        ("measure", "left"),
        ("value", "right"),
        ("reference (same run)", "left"),
        ("ratio", "right"),
        ("goal", "left"),
        ("note", "left"),
    ):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    previous = None
    for row in results.rows:
        reference = (
            f"{row.reference}: {_number(row.reference_value, row.unit)}"
            if row.reference and row.reference_value is not None
            else (row.reference or "")
        )
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else ""
        verdict = _verdict(row)
        style = "red" if row.met is False else None
        table.add_row(
            row.section if row.section != previous else "",
            row.measure,
            _number(row.value, row.unit),
            reference,
            ratio,
            verdict,
            row.note,
            style=style,
        )
        previous = row.section
    console.print(table)
    for section, reason in results.sections_failed.items():
        console.print(f"[red]{section}: not measured: {reason}[/red]")


def save(results: Results, directory: Path = RESULTS_DIR) -> Path:
    """``<directory>/<UTC timestamp>.json`` and ``latest.json`` (the same content)."""
    finished = datetime.now(UTC)
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(results.as_dict(finished), indent=2, ensure_ascii=False, default=str)
    path = directory / f"{results.started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(text + "\n", encoding="utf-8")
    (directory / "latest.json").write_text(text + "\n", encoding="utf-8")
    return path
