"""Cold start per handler: import AND the first invocation in a fresh interpreter, against the
local stack (moto's server, the simulator), beside ``import boto3`` alone in a fresh interpreter
in the same run, as ratios.

Each handler's first invocation is a realistic one: the token query's ``get_token`` for a stored
merchant (a cache miss: the table read and the KMS decrypt), the callback's redirect with a valid
code and state (the exchange with the simulator and the store write), the refresh's scheduled run
with one due merchant (a rotation). Runs are interleaved (boto3, then each handler, in an order
that turns each run) after one warm-up round that is not counted (it writes the .pyc files);
the median of the runs is reported.

Runs on its own: ``python -m bench.coldstart [--runs 7] [--importtime [--top 15]]
[--no-bytecode]``; with ``--importtime`` it also runs each handler once under ``-X importtime``
and prints what cost the most (the first invocation's late imports included). Bytecode is
cached as Python caches it (the warm-up writes it); ``--no-bytecode`` compiles every module
from source, as Lambda does for the layer and the function (they ship no .pyc, and /opt and
/var/task are read-only), and for boto3 too (the runtime's has bytecode): a bound, not Lambda.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

from rich.console import Console
from rich.table import Table

from appauth_dev.http_front import api_gateway_event
from appauth_dev.load import authorize_merchants
from bench.report import Row, make_console, median
from bench.service import HANDLER_MODULES, BenchService, bench_service, run_probe

SECTION = "Cold start (import + 1st invoke)"
BASELINE = "boto3"
# The goals, as ratios to `import boto3` in the same run.
GOALS = {"token_query": 1.25, "callback": 1.6, "refresh": 1.6}
HANDLERS = tuple(GOALS)
START_MARKER = "appauth-bench probe: clock started"  # what bench/probe.py writes first
IMPORTTIME_LINE = re.compile(r"^import time:\s*(\d+)\s*\|\s*(\d+)\s*\| ( *)(\S+)\s*$")


@dataclass
class Samples:
    import_ms: list[float] = field(default_factory=list)
    invoke_ms: list[float] = field(default_factory=list)
    total_ms: list[float] = field(default_factory=list)
    maxrss_mib: list[float] = field(default_factory=list)

    def add(self, probe: dict[str, Any]) -> None:
        invoke = probe["invoke_ms"] or 0.0
        self.import_ms.append(probe["import_ms"])
        self.invoke_ms.append(invoke)
        self.total_ms.append(probe["import_ms"] + invoke)
        self.maxrss_mib.append(probe["maxrss_kib"] / 1024)

    def medians(self) -> dict[str, float]:
        return {
            "import_ms": median(self.import_ms),
            "invoke_ms": median(self.invoke_ms),
            "total_ms": median(self.total_ms),
            "maxrss_mib": median(self.maxrss_mib),
        }


class ColdStart:
    """The events of each handler's first invocation, fresh for every run (a code is single
    use, a rotated merchant is no longer due), and the check that it did the realistic thing."""

    def __init__(self, bench: BenchService, environment: dict[str, str] | None = None) -> None:
        self.bench = bench
        self.environment = environment or {}
        self.stored = bench.grant(1)[0]

    def event(self, handler: str) -> dict[str, Any]:
        if handler == "token_query":
            return {"action": "get_token", "auth_app_id": self.stored}
        if handler == "refresh":
            self.bench.make_due(self.bench.grant(1))
            return {"due": True}
        front = self.bench.fronted.front.url
        query = authorize_merchants(self.bench.fronted, 1)[0]
        host = urlsplit(front).netloc
        headers = {"Host": host, "Accept": "application/json", "User-Agent": "appauth-bench"}
        return api_gateway_event("GET", f"/alipay/callback?{urlencode(query)}", headers, None, host)

    def probe(self, target: str, *, importtime: bool = False) -> dict[str, Any]:
        if target == BASELINE:
            return run_probe(BASELINE, self.bench.function_env("token_query", **self.environment))
        service = self.bench.fronted.service
        result = run_probe(
            HANDLER_MODULES[target],
            self.bench.function_env(target, **self.environment),
            self.event(target),
            remaining_ms=service.timeout_ms(target),
            importtime=importtime,
        )
        _check_realistic(target, result["answer"])
        return result


def _check_realistic(handler: str, answer: dict[str, Any]) -> None:
    """A cold start of an error path would flatter the handler: refuse to count it."""
    realistic = {
        "token_query": answer.get("ok") is True,
        "callback": answer.get("statusCode") == 200,
        "refresh": answer.get("due") == 1 and answer.get("rotated") == 1,
    }[handler]
    if not realistic:
        raise RuntimeError(f"the {handler} cold start did not take its realistic path: {answer}")


def measure(
    bench: BenchService,
    runs: int,
    *,
    warmups: int = 1,
    environment: dict[str, str] | None = None,
    progress: Callable[[str], None] = lambda _text: None,
) -> dict[str, Samples]:
    """``runs`` interleaved rounds, after ``warmups`` rounds that are not counted;
    ``environment`` is added to every probe's."""
    cold = ColdStart(bench, environment)
    targets = (BASELINE, *HANDLERS)
    samples = {target: Samples() for target in targets}
    for number in range(warmups + runs):
        turn = number % len(targets)
        for target in targets[turn:] + targets[:turn]:
            result = cold.probe(target)
            if number >= warmups:
                samples[target].add(result)
        counted = number - warmups + 1
        progress(f"cold start: {'warm-up' if counted <= 0 else f'round {counted}/{runs}'} done")
    return samples


def rows(samples: dict[str, Samples]) -> list[Row]:
    base = samples[BASELINE].medians()
    found = [
        Row(
            SECTION,
            "import boto3 alone",
            base["import_ms"],
            "ms",
            note=f"median of {len(samples[BASELINE].import_ms)} fresh interpreters",
        )
    ]
    for handler in HANDLERS:
        handler_medians = samples[handler].medians()
        found.append(
            Row(
                SECTION,
                HANDLER_MODULES[handler],
                handler_medians["total_ms"],
                "ms",
                "import boto3",
                base["import_ms"],
                ratio_at_most=GOALS[handler],
                note=f"import {handler_medians['import_ms']:.0f} ms + 1st invoke "
                f"{handler_medians['invoke_ms']:.0f} ms",
            )
        )
    return found


def memory_rows(samples: dict[str, Samples], section: str) -> list[Row]:
    """Peak RSS of the cold start (the callback's benchmark path) beside boto3's."""
    base = samples[BASELINE].medians()["maxrss_mib"]
    return [
        Row(
            section,
            "import boto3 alone",
            base,
            "MiB",
            note="peak RSS of a fresh interpreter",
        ),
        Row(
            section,
            "callback_app, a redirect (exchange + store)",
            max(samples["callback"].maxrss_mib),
            "MiB",
            "import boto3",
            base,
            note="the cold start's process; the function has 256 MiB",
        ),
    ]


def importtime_offenders(report: str, top: int) -> dict[str, list[dict[str, Any]]]:
    """From ``-X importtime`` (what came after the probe's clock started): the packages whose
    modules took the most time themselves (self times summed by top-level package), and the
    heaviest single imports (cumulative, nested at most two deep, with their depth)."""
    packages: dict[str, float] = {}
    heaviest = []
    _, _, measured = report.partition(START_MARKER)
    for line in measured.splitlines():
        match = IMPORTTIME_LINE.match(line)
        if not match:
            continue
        self_ms, cumulative_ms = int(match.group(1)) / 1000, int(match.group(2)) / 1000
        depth, module = len(match.group(3)) // 2, match.group(4)
        root = module.split(".", 1)[0]
        packages[root] = packages.get(root, 0.0) + self_ms
        if depth <= 2:
            heaviest.append({"module": module, "depth": depth, "cumulative_ms": cumulative_ms})
    heaviest.sort(key=lambda entry: entry["cumulative_ms"], reverse=True)
    by_package = sorted(packages.items(), key=lambda item: item[1], reverse=True)
    return {
        "by_package": [{"package": name, "self_ms": ms} for name, ms in by_package[:top]],
        "heaviest": heaviest[:top],
    }


def importtime(
    bench: BenchService, top: int, environment: dict[str, str] | None = None
) -> dict[str, dict[str, Any]]:
    cold = ColdStart(bench, environment)
    return {
        handler: importtime_offenders(cold.probe(handler, importtime=True)["importtime"], top)
        for handler in HANDLERS
    }


def details(samples: dict[str, Samples]) -> dict[str, Any]:
    return {
        target: {"medians": found.medians(), "samples": vars(found)}
        for target, found in samples.items()
    }


def _print_ratios(console: Console, samples: dict[str, Samples]) -> None:
    table = Table(title="cold start: import + first invocation, fresh interpreters (medians)")
    for name in ("target", "import ms", "1st invoke ms", "total ms", "x import boto3", "goal"):
        table.add_column(name, justify="left" if name in ("target", "goal") else "right")
    base = samples[BASELINE].medians()["import_ms"]
    table.add_row(BASELINE, f"{base:.0f}", "", f"{base:.0f}", "1.00x", "")
    for handler in HANDLERS:
        found = samples[handler].medians()
        ratio = found["total_ms"] / base
        verdict = "met" if ratio <= GOALS[handler] else "NOT met"
        table.add_row(
            HANDLER_MODULES[handler],
            f"{found['import_ms']:.0f}",
            f"{found['invoke_ms']:.0f}",
            f"{found['total_ms']:.0f}",
            f"{ratio:.2f}x",
            f"<= {GOALS[handler]}x {verdict}",
            style=None if ratio <= GOALS[handler] else "red",
        )
    console.print(table)


def print_offenders(console: Console, offenders: dict[str, dict[str, Any]]) -> None:
    for handler, found in offenders.items():
        module = HANDLER_MODULES[handler]
        packages = Table(title=f"-X importtime, {module}: self time by package")
        packages.add_column("package")
        packages.add_column("self ms", justify="right")
        for entry in found["by_package"]:
            packages.add_row(entry["package"], f"{entry['self_ms']:.1f}")
        heaviest = Table(title=f"-X importtime, {module}: heaviest imports (depth <= 2)")
        heaviest.add_column("module (indented by depth)")
        heaviest.add_column("cumulative ms", justify="right")
        for entry in found["heaviest"]:
            heaviest.add_row(
                "  " * entry["depth"] + entry["module"], f"{entry['cumulative_ms']:.1f}"
            )
        console.print(packages, heaviest)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.coldstart", description=__doc__)
    parser.add_argument("--runs", type=int, default=7, help="measured rounds (default 7)")
    parser.add_argument(
        "--warmups", type=int, default=1, help="rounds before them, not counted (default 1)"
    )
    parser.add_argument(
        "--importtime", action="store_true", help="also print -X importtime's top offenders"
    )
    parser.add_argument("--top", type=int, default=15, help="offenders per handler (default 15)")
    parser.add_argument(
        "--no-bytecode",
        action="store_true",
        help="no .pyc for any module: everything compiled from source on import (Lambda "
        "compiles the layer's and the function's code so, having no .pyc of them; the runtime's "
        "boto3 has its own)",
    )
    args = parser.parse_args(argv)
    console = make_console()
    with tempfile.TemporaryDirectory(prefix="appauth-no-bytecode-") as empty:
        # An empty cache prefix that nothing writes to: no module finds its bytecode.
        environment = (
            {"PYTHONPYCACHEPREFIX": empty, "PYTHONDONTWRITEBYTECODE": "1"}
            if args.no_bytecode
            else {}
        )
        with bench_service() as bench:
            samples = measure(
                bench,
                args.runs,
                warmups=args.warmups,
                environment=environment,
                progress=console.log,
            )
            _print_ratios(console, samples)
            if args.importtime:
                print_offenders(console, importtime(bench, args.top, environment))
    return 0


if __name__ == "__main__":
    sys.exit(main())
