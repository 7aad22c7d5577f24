"""What the bench measures in a fresh interpreter of its own, as a Lambda container runs a handler:
``python -m bench.worker <scenario> <result.json> <config.json>``, run by
:func:`bench.service.run_worker` with the function's environment (its stdout, the handler's logs
and metrics, is discarded). Writes what it measured as JSON.

- ``token_query``: warm latency of ``get_token`` for a cache hit and for a miss (a merchant this
  container has not opened yet: the table read and the KMS decrypt), then hits per second from
  one thread and from several threads invoking the handler at once.
- ``refresh``: one scheduled run (``{"due": true}``) through the real handler, with every AWS call
  counted by botocore's event hooks (calls, client-observed time, DynamoDB items read and
  written) and the process's CPU time.

Both report the process's peak memory (VmHWM) on that path, so this module imports nothing
the handlers do not (the parent computes the statistics).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from appauth import aws
from bench.probe import LambdaContext, peak_rss_kib

# The clients each path uses (building others would cost this process time and memory).
TOKEN_QUERY_SERVICES = ("dynamodb", "kms")
REFRESH_SERVICES = ("dynamodb", "kms", "events", "sqs", "ssm")


class AwsCalls:
    """Every AWS call of the layer's clients: how many, how long (as the client saw it: moto's
    work, loopback and botocore), and DynamoDB items read and written. moto answers a constant
    ConsumedCapacity, so items are counted from the calls themselves."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.items_read = 0
        self.items_written = 0
        self._lock = threading.Lock()

    def attach(self, services: tuple[str, ...]) -> None:
        for service in services:
            client = getattr(aws, service)()  # built now, as the handler will use it
            client.meta.events.register("provide-client-params.*", self._before)
            client.meta.events.register("after-call.*", self._after)

    def _before(
        self, params: dict[str, Any], model: Any, context: dict[str, Any], **_: Any
    ) -> None:
        context["bench_started"] = time.perf_counter()
        context["bench_writes"] = _items_written(model.name, params)

    def _after(self, parsed: dict[str, Any], model: Any, context: dict[str, Any], **_: Any) -> None:
        name = f"{model.service_model.service_name}.{model.name}"
        elapsed = time.perf_counter() - context.get("bench_started", time.perf_counter())
        failed = "Error" in parsed
        with self._lock:
            self.calls[name] += 1
            self.seconds[name] += elapsed
            if model.service_model.service_name == "dynamodb" and not failed:
                self.items_read += _items_read(model.name, parsed)
                self.items_written += context.get("bench_writes", 0)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "calls": dict(self.calls),
                "seconds": dict(self.seconds),
                "dynamodb_items_read": self.items_read,
                "dynamodb_items_written": self.items_written,
            }


def _items_written(operation: str, params: dict[str, Any]) -> int:
    if operation in ("PutItem", "UpdateItem", "DeleteItem"):
        return 1
    if operation == "TransactWriteItems":
        return len(params.get("TransactItems", []))
    if operation == "BatchWriteItem":
        return sum(len(requests) for requests in params.get("RequestItems", {}).values())
    return 0


def _items_read(operation: str, parsed: dict[str, Any]) -> int:
    if operation == "GetItem":
        return 1 if "Item" in parsed else 0
    if operation in ("Query", "Scan"):
        return int(parsed.get("Count", 0))
    if operation == "BatchGetItem":
        return sum(len(items) for items in parsed.get("Responses", {}).values())
    if operation == "TransactGetItems":
        return len(parsed.get("Responses", []))
    return 0


def _peak_mib() -> float:
    return peak_rss_kib() / 1024


# --- token query ----------------------------------------------------------------------------


def _timed(call: Callable[[], dict[str, Any]]) -> float:
    started = time.perf_counter()
    answer = call()
    elapsed = time.perf_counter() - started
    if not answer.get("ok"):
        raise RuntimeError(f"get_token failed: {answer.get('error', {}).get('code')}")
    return elapsed


def _rate(
    invoke: Callable[[str], dict[str, Any]], apps: list[str], threads: int, seconds: float
) -> dict[str, Any]:
    """get_token from ``threads`` threads at once for ``seconds``: answers per second."""
    counts = [0] * threads
    failures = [0] * threads
    deadline = time.perf_counter() + seconds

    def work(number: int) -> None:
        index = number
        while time.perf_counter() < deadline:
            if invoke(apps[index % len(apps)]).get("ok"):
                counts[number] += 1
            else:
                failures[number] += 1
            index += threads

    started = time.perf_counter()
    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    return {"per_second": sum(counts) / elapsed, "threads": threads, "failed": sum(failures)}


def token_query(config: dict[str, Any]) -> dict[str, Any]:
    import token_query_app  # noqa: PLC0415  (found where Lambda puts it: PYTHONPATH)

    calls = AwsCalls()
    calls.attach(TOKEN_QUERY_SERVICES)
    context = LambdaContext(config["timeout_ms"])

    def invoke(auth_app_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = token_query_app.lambda_handler(
            {"action": "get_token", "auth_app_id": auth_app_id}, context
        )
        return answer

    hit_app: str = config["hit_app"]
    miss_apps: list[str] = config["miss_apps"]
    _timed(lambda: invoke(hit_app))  # the container's first look-up: now cached
    before_hits = calls.snapshot()["calls"]
    hits = [_timed(lambda: invoke(hit_app)) for _ in range(config["hit_calls"])]
    hit_calls = calls.snapshot()["calls"]
    if hit_calls != before_hits:
        raise RuntimeError("a cache hit called AWS: the hits were not hits")
    before_misses = calls.snapshot()["seconds"]
    misses = [_timed(lambda app=app: invoke(app)) for app in miss_apps]  # type: ignore[misc]
    after_misses = calls.snapshot()["seconds"]
    miss_aws = sum(after_misses.values()) - sum(before_misses.values())
    cached = [hit_app, *miss_apps]
    # Interleaved rounds, each kind's best kept: other work on the machine only slows a round.
    singles, concurrents = [], []
    for _ in range(config["rate_rounds"]):
        singles.append(_rate(invoke, cached, 1, config["rate_seconds"]))
        concurrents.append(_rate(invoke, cached, config["threads"], config["rate_seconds"]))
    single = max(singles, key=lambda found: found["per_second"])
    concurrent = max(concurrents, key=lambda found: found["per_second"])
    return {
        "hit_seconds": hits,
        "miss_seconds": misses,
        "miss_aws_seconds": miss_aws,
        "single_thread": single,
        "concurrent": concurrent,
        "aws": calls.snapshot(),
        "peak_mib": _peak_mib(),
    }


# --- refresh --------------------------------------------------------------------------------


def _patient_dynamodb(read_timeout: float) -> None:
    """The layer's DynamoDB client with a longer read timeout, everything else as configured.

    moto answers a page of the due index at 10,000 merchants in seconds (it scans, sorts and
    serializes every item in Python; DynamoDB answers in milliseconds), past the layer's 5 s read
    timeout. Only the client changes: the run's time budget still counts the layer's timeouts."""
    import boto3  # noqa: PLC0415
    from botocore.config import Config  # noqa: PLC0415

    layer = aws.dynamodb()
    config = layer.meta.config.merge(Config(read_timeout=read_timeout))
    aws.set_client("dynamodb", boto3.client("dynamodb", config=config))


def refresh(config: dict[str, Any]) -> dict[str, Any]:
    import refresh_app  # noqa: PLC0415  (found where Lambda puts it: PYTHONPATH)

    _patient_dynamodb(config["dynamodb_read_timeout"])
    calls = AwsCalls()
    calls.attach(REFRESH_SERVICES)
    context = LambdaContext(config["timeout_ms"])
    cpu_started, started = time.process_time(), time.perf_counter()
    answer = refresh_app.lambda_handler({"due": True}, context)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    if not config.get("keep_merchants"):
        answer.pop("merchants", None)  # ids and outcomes of up to 1000 merchants
    return {
        "answer": answer,
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "aws": calls.snapshot(),
        "peak_mib": _peak_mib(),
    }


SCENARIOS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "token_query": token_query,
    "refresh": refresh,
}


def main(argv: list[str]) -> int:
    scenario, result_path, config_path = argv
    config = json.loads(Path(config_path).read_text(encoding="utf-8"))
    result = SCENARIOS[scenario](config)
    Path(result_path).write_text(json.dumps(result), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
