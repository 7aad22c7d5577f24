"""Load on loopback, bounded in count and time (the driver is ``appauth_dev.load``, shared with
tests/e2e/test_load.py): the callback's redirects sent concurrently to the HTTP front, then the
token query's ``get_token`` invoked concurrently through the local Lambda client. Each is one
container (the front and the client run one invocation at a time, as a Lambda container does)
under concurrent callers. Afterwards every stored pair is compared with what the simulator
issued, and every token answered with the token it issued."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from appauth.runtime import runtime
from appauth_dev.load import (
    Granted,
    LoadReport,
    authorize_merchants,
    callback_requests,
    issued_tokens,
    run_load,
    token_mismatches,
    token_query_requests,
)
from appauth_dev.local_lambda import LocalLambdaClient
from bench.report import Row
from bench.service import BenchService

SECTION = "Load (loopback, concurrent)"
TOKEN_QUERY_FUNCTION = "appauth-local-token_query"  # noqa: S105 (a function name)


@dataclass(frozen=True)
class Scale:
    callbacks: int
    token_queries: int
    concurrency: int = 8
    time_limit: float = 120.0


QUICK = Scale(callbacks=16, token_queries=200, time_limit=30.0)
FULL = Scale(callbacks=200, token_queries=3000)


def _rows(report: LoadReport, what: str) -> list[Row]:
    p50, p99 = report.latency(0.5), report.latency(0.99)
    return [
        Row(
            SECTION,
            f"{what}: throughput",
            report.throughput,
            "/s",
            note=f"{report.attempted:,} sent by {report.concurrency} clients "
            f"({report.not_sent} not sent in {report.time_limit:g} s)",
        ),
        Row(
            SECTION,
            f"{what}: error rate",
            report.error_rate * 100,
            "%",
            value_at_most=0,
            note=f"{report.server_errors} answered 5xx"
            + (f"; {dict(report.failures)}" if report.failures else ""),
        ),
        Row(
            SECTION,
            f"{what}: latency p50 / p99",
            None if p50 is None else p50 * 1000,
            "ms",
            note="" if p99 is None else f"p99 {p99 * 1000:.1f} ms (queued behind one container)",
        ),
    ]


def measure(bench: BenchService, scale: Scale) -> tuple[list[Row], dict[str, Any]]:
    fronted = bench.fronted
    redirects = authorize_merchants(fronted, scale.callbacks)
    granted = Granted()
    callbacks = run_load(
        "callback",
        callback_requests(fronted.front.url, redirects, granted),
        concurrency=scale.concurrency,
        time_limit=scale.time_limit,
    )
    wrong = token_mismatches(runtime().store, fronted.control, granted.auth_app_ids)
    expected = issued_tokens(fronted.control, granted.auth_app_ids)
    client = LocalLambdaClient.for_service(fronted.service)
    queries = run_load(
        "token_query",
        token_query_requests(client, TOKEN_QUERY_FUNCTION, expected, scale.token_queries),
        concurrency=scale.concurrency,
        time_limit=scale.time_limit,
    )
    rows = [
        *_rows(callbacks, "callback redirect (HTTP front)"),
        Row(
            SECTION,
            "callback: stored pairs not what Alipay issued",
            float(len(wrong)),
            "pairs",
            value_at_most=0,
            note=f"of {len(granted.auth_app_ids)} granted",
        ),
        *_rows(queries, "token query get_token (Lambda client)"),
    ]
    details = {
        "scale": vars(scale),
        "callback": callbacks.as_dict(),
        "token_query": queries.as_dict(),
        "stored_pairs_wrong": len(wrong),
    }
    return rows, details
