"""``python -m bench [--quick] [--only SECTION,...]``: every section, one table, one JSON file.

The full run (``make bench``) is the default: 10,000 merchants for the refresh, 7 cold-start
rounds, seconds-long timings. ``--quick`` runs everything small (a CI smoke run, well under a
minute of measuring). Exits 1 when a section could not be measured (named under the table);
a goal that is not met is reported in the table, not as a failure of the run.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from bench import coldstart, loadtest, package, refresh, signing, tokenquery
from bench.machine import describe_machine, load_average
from bench.report import RESULTS_DIR, Results, Row, make_console, render, save
from bench.service import BenchService, bench_service

SECTIONS = ("signing", "package", "coldstart", "token_query", "load", "refresh")
MEMORY_SECTION = "Peak memory (RSS) on the benchmark path"


@dataclass(frozen=True)
class Plan:
    timing: signing.Timing
    coldstart_runs: int
    coldstart_warmups: int
    token_query: tokenquery.Scale
    load: loadtest.Scale
    refresh: refresh.Scale
    build_layer: bool


QUICK = Plan(signing.QUICK, 1, 1, tokenquery.QUICK, loadtest.QUICK, refresh.QUICK, False)
FULL = Plan(signing.FULL, 7, 1, tokenquery.FULL, loadtest.FULL, refresh.FULL, True)


class Run:
    """One bench run: the sections asked for, each measured once; a section that fails is
    recorded (its reason under the table) and the others still run."""

    def __init__(self, plan: Plan, sections: Sequence[str], results: Results) -> None:
        self.plan = plan
        self.sections = sections
        self.results = results
        self.progress = Console(stderr=True)
        self.peaks: dict[str, float] = {}
        self.cold: dict[str, coldstart.Samples] | None = None

    def section(self, name: str, measure: Callable[[], list[Row]]) -> None:
        if name not in self.sections:
            return
        self.progress.log(f"bench: {name}...")
        started = time.perf_counter()
        try:
            self.results.add(measure())
        except Exception as error:  # one section's failure must not hide the others' figures
            self.results.sections_failed[name] = f"{type(error).__name__}: {error}"
            self.results.details.setdefault("tracebacks", {})[name] = traceback.format_exc()
        self.results.details.setdefault("section_seconds", {})[name] = round(
            time.perf_counter() - started, 1
        )

    def detail(self, name: str, rows: list[Row], details: Any) -> list[Row]:
        self.results.details[name] = details
        return rows

    def offline(self) -> None:
        plan = self.plan
        self.section("signing", lambda: self.detail("signing", *self._signing(plan.timing)))
        self.section(
            "package",
            lambda: self.detail("package", *package.measure(build_if_missing=plan.build_layer)),
        )

    @staticmethod
    def _signing(timing: signing.Timing) -> tuple[list[Row], dict[str, Any]]:
        rows, sign_details = signing.sign_and_verify_rows(timing)
        more, response_details = signing.response_rows(timing)
        return [*rows, *more], {**sign_details, **response_details}

    def online(self, bench: BenchService) -> None:
        plan = self.plan
        self.section("coldstart", lambda: self._coldstart(bench))
        self.section(
            "token_query",
            lambda: self._peak("token_query", tokenquery.measure(bench, plan.token_query)),
        )
        self.section("load", lambda: self.detail("load", *loadtest.measure(bench, plan.load)))
        self.section("refresh", lambda: self._peak("refresh", refresh.measure(bench, plan.refresh)))

    def _coldstart(self, bench: BenchService) -> list[Row]:
        self.cold = coldstart.measure(
            bench,
            self.plan.coldstart_runs,
            warmups=self.plan.coldstart_warmups,
            progress=self.progress.log,
        )
        self.results.details["coldstart"] = coldstart.details(self.cold)
        return coldstart.rows(self.cold)

    def _peak(self, name: str, measured: tuple[list[Row], dict[str, Any], float]) -> list[Row]:
        rows, details, peak = measured
        self.peaks[name] = peak
        self.results.details[name] = details
        return rows

    def memory(self) -> None:
        """The peaks gathered by the sections, beside a fresh interpreter's ``import boto3``."""
        if self.cold is None:
            return
        rows = coldstart.memory_rows(self.cold, MEMORY_SECTION)
        base = rows[0].value
        paths = {
            "token_query": "token_query_app, warm hits, misses and threads",
            "refresh": "refresh_app, the largest scheduled run",
        }
        for name, what in paths.items():
            if name in self.peaks:
                rows.append(
                    Row(MEMORY_SECTION, what, self.peaks[name], "MiB", "import boto3", base)
                )
        self.results.add(rows)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="everything small (CI smoke run)")
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections (default: all of {', '.join(SECTIONS)})",
    )
    parser.add_argument("--results", type=Path, default=RESULTS_DIR, help="where the JSON goes")
    args = parser.parse_args(argv)
    sections = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s): {', '.join(unknown)}")
    results = Results("quick" if args.quick else "full", describe_machine())
    run = Run(QUICK if args.quick else FULL, sections, results)
    run.offline()
    if set(sections) - {"signing", "package"}:
        try:
            with bench_service() as bench:
                run.online(bench)
        except Exception as error:  # the local stack itself did not start or stop
            results.sections_failed["local stack"] = f"{type(error).__name__}: {error}"
    run.memory()
    results.machine["load_average_at_end"] = load_average()
    render(results, make_console())
    path = save(results, args.results)
    Console(stderr=True).log(f"bench: written {path} (and latest.json)")
    return 1 if results.sections_failed else 0


if __name__ == "__main__":
    sys.exit(main())
