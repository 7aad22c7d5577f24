"""Refresh: many due merchants rotated by the real refresh handler (``{"due": true}``, the
schedule's run) against the simulator answering every call after ``latency_ms``.

Two runs, each in a fresh interpreter of its own (bench.worker): one with the client-side rate
limit raised out of the way, so what is measured is the pipeline (the default concurrency, the
simulator's latency, the table and KMS) beside its ideal, concurrency / latency; and a smaller
one at the template's defaults (concurrency and rate limit), beside the rate limit. From them:
DynamoDB items read and written per rotation (botocore's hooks), the AWS calls, the CPU each
side spends (the handler's process; moto and the simulator in this one), and the projected
time for 1,000,000 merchants at the defaults, in the schedule's runs of the function's timeout.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from appauth import aws
from appauth.refresh import Budget
from appauth.runtime import runtime
from appauth_dev.load import token_mismatches
from appauth_dev.stack import load_template
from bench.report import Row
from bench.service import (
    BenchService,
    cpu_since,
    dynamodb_semantics,
    run_worker,
    without_table_backups,
)

SECTION = "Refresh (scheduled run)"
RAISED_RATE = 1000  # RefreshRatePerSecond's maximum: out of the pipeline's way
DYNAMODB_READ_TIMEOUT = 120.0  # seconds: moto's due-index pages (see bench.worker)
PROJECTED_MERCHANTS = 1_000_000
CHECKED_MERCHANTS = 50  # stored pairs compared with the simulator's after the run
# Lambda gives a function CPU in proportion to its memory: one vCPU at 1,769 MB (AWS docs).
MB_PER_VCPU = 1769


@dataclass(frozen=True)
class Scale:
    merchants: int
    at_defaults: int
    latency_ms: int = 50


QUICK = Scale(merchants=100, at_defaults=40)
FULL = Scale(merchants=10_000, at_defaults=400)


@dataclass
class Run:
    merchants: int
    rate_limit: int
    concurrency: int
    seconds: float
    rotated: int
    handler_cpu: float
    stand_in_cpu: dict[str, float]
    aws: dict[str, Any]
    alipay_calls: int
    peak_mib: float
    answer: dict[str, Any]

    @property
    def per_second(self) -> float:
        return self.rotated / self.seconds

    def per_rotation(self, total: float) -> float:
        return total / max(1, self.rotated)


def _alipay_calls(bench: BenchService) -> int:
    requests = bench.control.stats()["requests"]
    return sum(sum(outcomes.values()) for outcomes in requests.values())


def _run(bench: BenchService, merchants: int, env: dict[str, str]) -> Run:
    bench.seed(merchants, due=True)
    timeout_ms = bench.fronted.service.timeout_ms("refresh")
    cpu_before, calls_before = bench.cpu.snapshot(), _alipay_calls(bench)
    config = {"timeout_ms": timeout_ms, "dynamodb_read_timeout": DYNAMODB_READ_TIMEOUT}
    result = run_worker("refresh", env, config, timeout=3600)
    answer = result["answer"]
    # moto's paging of the due index may list a merchant twice while rotated items leave it
    # (its second listing is skipped by the lease, as designed): "due" can exceed "merchants".
    shown = {key: value for key, value in answer.items() if value}
    if answer.get("rotated") != merchants or answer.get("stopped_on_error"):
        raise RuntimeError(f"the refresh run did not rotate every due merchant: {shown}")
    if answer.get("due", 0) - merchants != answer.get("skipped_leased", 0):
        raise RuntimeError(f"the refresh run did something besides rotating: {shown}")
    return Run(
        merchants=merchants,
        rate_limit=int(env["REFRESH_RATE_PER_SECOND"]),
        concurrency=int(env["REFRESH_CONCURRENCY"]),
        seconds=result["seconds"],
        rotated=answer["rotated"],
        handler_cpu=result["cpu_seconds"],
        stand_in_cpu=cpu_since(cpu_before, bench.cpu.snapshot()),
        aws=result["aws"],
        alipay_calls=_alipay_calls(bench) - calls_before,
        peak_mib=result["peak_mib"],
        answer=answer,
    )


def _backup_cost(bench: BenchService) -> float:
    """What moto's whole-table backup adds to one two-item transaction on the seeded table, in
    seconds (the bench skips it for the runs: real DynamoDB has no such cost)."""
    client, table = bench.dynamodb(), runtime().settings.tokens_table
    items: Any = [
        {"Put": {"TableName": table, "Item": {"pk": {"S": "BENCH#backup"}, "sk": {"S": sk}}}}
        for sk in ("a", "b")
    ]

    def one() -> float:
        started = time.perf_counter()
        client.transact_write_items(TransactItems=items)
        return time.perf_counter() - started

    with_backup = one()
    with without_table_backups():
        without = one()
    client.delete_item(TableName=table, Key={"pk": {"S": "BENCH#backup"}, "sk": {"S": "a"}})
    client.delete_item(TableName=table, Key={"pk": {"S": "BENCH#backup"}, "sk": {"S": "b"}})
    return max(0.0, with_backup - without)


def measure(bench: BenchService, scale: Scale) -> tuple[list[Row], dict[str, Any], float]:
    """The rows, the details for the JSON, and the handler's peak memory (MiB)."""
    defaults = bench.function_env("refresh")
    raised = bench.function_env("refresh", REFRESH_RATE_PER_SECOND=str(RAISED_RATE))
    bench.control.faults(latency_ms=scale.latency_ms)
    try:
        with dynamodb_semantics():
            # The small run first: moto's due-index pages cost the more, the bigger the table.
            at_defaults = _run(bench, scale.at_defaults, defaults)
            pipeline = _run(bench, scale.merchants, raised)
        backup = _backup_cost(bench)
    finally:
        bench.control.faults(latency_ms=0)
    sample = _rotated_sample(bench, CHECKED_MERCHANTS)
    wrong = token_mismatches(runtime().store, bench.control, sample)
    budget = Budget.for_client(runtime().client(), aws.worst_case_call_seconds())
    timeout = bench.fronted.service.timeout_ms("refresh") / 1000
    rows = _rows(
        pipeline,
        at_defaults=at_defaults,
        scale=scale,
        backup=backup,
        limits=(budget, timeout),
        wrong=len(wrong),
    )
    details = {
        "scale": vars(scale),
        "pipeline": vars(pipeline),
        "at_defaults": vars(at_defaults),
        "moto_transaction_backup_seconds": backup,
        "reserve_seconds": budget.reserve,
        "stored_pairs_checked": CHECKED_MERCHANTS,
        "stored_pairs_wrong": len(wrong),
    }
    return rows, details, pipeline.peak_mib


def _rotated_sample(bench: BenchService, count: int) -> list[str]:
    """Merchants the runs rotated (the seeded ones the simulator knows), a spread sample."""
    ids = bench.fronted.service.simulator.state.merchant_ids()
    step = max(1, len(ids) // count)
    return ids[::step][:count]


def _projection(rate: float, timeout: float, reserve: float) -> tuple[float, int]:
    """(hours of running, scheduled runs) to rotate PROJECTED_MERCHANTS at ``rate`` per second,
    each run taking merchants until it has only the reserve left of its timeout."""
    per_run = rate * max(0.0, timeout - reserve)
    return PROJECTED_MERCHANTS / rate / 3600, math.ceil(PROJECTED_MERCHANTS / per_run)


def _rows(
    pipeline: Run,
    *,
    at_defaults: Run,
    scale: Scale,
    backup: float,
    limits: tuple[Budget, float],
    wrong: int,
) -> list[Row]:
    budget, timeout = limits
    latency = scale.latency_ms / 1000
    ideal = pipeline.concurrency / latency
    aws_calls = sum(pipeline.aws["calls"].values())
    query_pages = pipeline.aws["calls"].get("dynamodb.Query", 0)
    query_seconds = pipeline.aws["seconds"].get("dynamodb.Query", 0.0)
    listed_twice = pipeline.answer.get("skipped_leased", 0)
    aws_seconds = sum(pipeline.aws["seconds"].values())
    moto_ms = pipeline.per_rotation(pipeline.stand_in_cpu.get("moto", 0.0)) * 1000
    simulator_ms = pipeline.per_rotation(pipeline.stand_in_cpu.get("simulator", 0.0)) * 1000
    handler_ms = pipeline.per_rotation(pipeline.handler_cpu) * 1000
    stand_in_ceiling = 1000 / (moto_ms + simulator_ms) if moto_ms + simulator_ms else None
    hours, runs = _projection(at_defaults.per_second, timeout, budget.reserve)
    limit_hours, limit_runs = _projection(float(at_defaults.rate_limit), timeout, budget.reserve)
    memory_mb = int(load_template()["Resources"]["RefreshFunction"]["Properties"]["MemorySize"])
    lambda_vcpu = memory_mb / MB_PER_VCPU
    where = f"{pipeline.merchants:,} due, Alipay {scale.latency_ms} ms"
    return [
        Row(
            SECTION,
            f"rotated per second ({where}, concurrency {pipeline.concurrency})",
            pipeline.per_second,
            "/s",
            "ideal: concurrency / latency",
            ideal,
            note=f"rate limit raised to {RAISED_RATE}/s; {pipeline.seconds:.0f} s for the run"
            + (f"; {listed_twice} listed twice by moto, skipped" if listed_twice else ""),
        ),
        Row(
            SECTION,
            f"rotated per second at the defaults ({at_defaults.merchants:,} due)",
            at_defaults.per_second,
            "/s",
            "the rate limit",
            float(at_defaults.rate_limit),
            note=f"concurrency {at_defaults.concurrency}, RefreshRatePerSecond "
            f"{at_defaults.rate_limit}",
        ),
        Row(
            SECTION,
            "DynamoDB items read per rotation",
            pipeline.per_rotation(pipeline.aws["dynamodb_items_read"]),
            "items",
            note="the due index's entries and items read (moto's ConsumedCapacity is a constant)",
        ),
        Row(
            SECTION,
            "DynamoDB items written per rotation",
            pipeline.per_rotation(pipeline.aws["dynamodb_items_written"]),
            "items",
            note="the lease, the pair with its audit event (one transaction)",
        ),
        Row(
            SECTION,
            "AWS calls per rotation (DynamoDB, KMS, EventBridge...)",
            pipeline.per_rotation(aws_calls),
            "calls",
            note=_call_mix(pipeline),
        ),
        Row(
            SECTION,
            "Alipay calls per rotation",
            pipeline.per_rotation(pipeline.alipay_calls),
            "calls",
            note="the simulator's count",
        ),
        Row(
            SECTION,
            "time in AWS calls per rotation (client-observed, moto)",
            pipeline.per_rotation(aws_seconds) * 1000,
            "ms",
            "Alipay's latency",
            float(scale.latency_ms),
            note="each worker waits this on moto besides Alipay's latency",
        ),
        Row(
            SECTION,
            "CPU per rotation: moto + simulator (this process)",
            moto_ms + simulator_ms,
            "ms",
            note=f"moto {moto_ms:.1f} ms, simulator {simulator_ms:.1f} ms: one interpreter, so at "
            f"most {stand_in_ceiling or 0:,.0f} rotations/s"
            + (" (the bottleneck here)" if _stand_ins_bound(pipeline, stand_in_ceiling) else ""),
        ),
        Row(
            SECTION,
            "CPU per rotation: the refresh handler's process",
            handler_ms,
            "ms",
            note=f"at {memory_mb} MB (template.yaml) Lambda gives {lambda_vcpu:.2f} vCPU: at most "
            f"{lambda_vcpu * 1000 / handler_ms:,.0f} rotations/s of CPU",
        ),
        Row(
            SECTION,
            "moto's Query of the due index, per page",
            query_seconds / max(1, query_pages) * 1000,
            "ms",
            note=f"{query_pages} pages took {query_seconds:.0f} s of the run, every other "
            f"DynamoDB call waiting (moto serves one at a time; DynamoDB: milliseconds); read "
            f"timeout raised to {DYNAMODB_READ_TIMEOUT:.0f} s for it",
        ),
        Row(
            SECTION,
            "moto's whole-table copy per transaction (skipped)",
            backup * 1000,
            "ms",
            note=f"at {pipeline.merchants + at_defaults.merchants:,}+ items; real DynamoDB has "
            "no such cost, so the runs skip it",
        ),
        Row(
            SECTION,
            "stored pairs that are not what Alipay issued",
            float(wrong),
            "pairs",
            value_at_most=0,
            note=f"{CHECKED_MERCHANTS} merchants sampled after the runs",
        ),
        Row(
            SECTION,
            f"projected: {PROJECTED_MERCHANTS:,} merchants at the defaults",
            hours,
            "h",
            note=f"at the {at_defaults.per_second:.1f}/s measured: {runs} hourly runs of "
            f"{timeout:.0f} s (each stops {budget.reserve:.0f} s early, its reserve); at the "
            f"limit itself ({at_defaults.rate_limit}/s) {limit_hours:.1f} h in {limit_runs} "
            f"runs; spread over 90 days, "
            f"{PROJECTED_MERCHANTS / 90 / at_defaults.per_second / 60:.0f} min a day",
        ),
    ]


def _stand_ins_bound(run: Run, ceiling: float | None) -> bool:
    return ceiling is not None and run.per_second >= 0.8 * ceiling


def _call_mix(run: Run) -> str:
    mix = sorted(run.aws["calls"].items(), key=lambda item: item[1], reverse=True)
    return ", ".join(f"{name} {run.per_rotation(count):.2f}" for name, count in mix[:5])
