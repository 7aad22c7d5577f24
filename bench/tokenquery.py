"""Token query, warm, in-process: ``get_token`` latency for a cache hit and a cache miss (moto's
server behind it), and hits per second from one thread and from several invoking the handler at
once, all in one fresh interpreter of its own (bench.worker) with the function's environment."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.report import Row, percentile
from bench.service import BenchService, run_worker

SECTION = "Token query (warm, in-process)"


@dataclass(frozen=True)
class Scale:
    hit_calls: int
    misses: int
    rate_seconds: float  # per round
    rate_rounds: int
    threads: int = 8


QUICK = Scale(hit_calls=300, misses=20, rate_seconds=0.25, rate_rounds=2)
FULL = Scale(hit_calls=3000, misses=300, rate_seconds=1.0, rate_rounds=4)


def _ms(samples: list[float], fraction: float) -> float:
    return percentile(samples, fraction) * 1000


def measure(bench: BenchService, scale: Scale) -> tuple[list[Row], dict[str, Any], float]:
    """The rows, the details for the JSON, and the handler's peak memory (MiB)."""
    bench.seed(scale.misses + 1, due=False)
    apps = bench.fronted.service.simulator.state.merchant_ids()[-(scale.misses + 1) :]
    config = {
        "hit_app": apps[0],
        "miss_apps": apps[1:],
        "hit_calls": scale.hit_calls,
        "rate_seconds": scale.rate_seconds,
        "rate_rounds": scale.rate_rounds,
        "threads": scale.threads,
        "timeout_ms": bench.fronted.service.timeout_ms("token_query"),
    }
    result = run_worker("token_query", bench.function_env("token_query"), config, timeout=600)
    hits, misses = result["hit_seconds"], result["miss_seconds"]
    # A miss is a GetItem and a KMS Decrypt: what those took, as the client saw them, is the
    # floor under the miss's latency (the rest is the handler's own work).
    miss_mean_ms = sum(misses) / len(misses) * 1000
    floor_ms = result["miss_aws_seconds"] / len(misses) * 1000
    single, concurrent = result["single_thread"], result["concurrent"]
    rows = [
        Row(
            SECTION,
            "cache hit, p50",
            _ms(hits, 0.5),
            "ms",
            "cache miss, p50",
            _ms(misses, 0.5),
            note=f"{len(hits):,} get_token of one merchant, no AWS call",
        ),
        Row(SECTION, "cache hit, p99", _ms(hits, 0.99), "ms", "cache miss, p99", _ms(misses, 0.99)),
        Row(
            SECTION,
            "cache miss, p50",
            _ms(misses, 0.5),
            "ms",
            note=f"{len(misses):,} merchants opened for the first time (moto on loopback)",
        ),
        Row(SECTION, "cache miss, p99", _ms(misses, 0.99), "ms"),
        Row(
            SECTION,
            "cache miss, mean",
            miss_mean_ms,
            "ms",
            "its GetItem + KMS Decrypt, mean",
            floor_ms,
            note="the AWS calls as the client saw them; the rest is the handler's work",
        ),
        Row(
            SECTION,
            "hits per second, 1 thread",
            single["per_second"],
            "/s",
            note=f"best of {scale.rate_rounds} rounds of {scale.rate_seconds:g} s over "
            f"{len(apps)} cached merchants; each answer logged at INFO (JSON), as deployed",
        ),
        Row(
            SECTION,
            f"hits per second, {concurrent['threads']} threads invoking at once",
            concurrent["per_second"],
            "/s",
            "1 thread",
            single["per_second"],
            note=f"{concurrent['failed']} failed; threads overlap only where the interpreter "
            "lock is let go (writing the log line and the metrics)",
        ),
    ]
    details = {"scale": vars(scale), **result}
    return rows, details, float(result["peak_mib"])
