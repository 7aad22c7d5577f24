"""Several refreshers at once, a due set at scale, and EventBridge refusing: what the simulator
counts (rotations per merchant) and what DynamoDB served (calls per rotation)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from appauth.policy import DUE_SHARDS
from appauth.refresh import Outcome, TokenBucket
from appauth.runtime import runtime
from appauth.store import STATUS_GRANTED
from appauth_dev.simulator import SimulatorControl
from tests.integration.conftest import ServiceStack
from tests.integration.refresh_helpers import (
    DUE_AFTER,
    Clock,
    assert_never_granted_with_a_dead_pair,
    client_error,
    grant_merchants,
    inject,
    refresher,
)

pytestmark = pytest.mark.usefixtures("atomic_moto")  # DynamoDB is atomic; moto is not

ROOT = Path(__file__).parents[2]


@pytest.fixture
def control(service: ServiceStack) -> SimulatorControl:
    return SimulatorControl(service.simulator.url)


def test_refreshers_racing_in_threads_rotate_each_merchant_exactly_once(
    control: SimulatorControl,
):
    clock = Clock(control)
    apps = [g.auth_app_id for g in grant_merchants(control, 30)]
    clock.advance(DUE_AFTER)
    control.faults(latency_ms=5)
    barrier = threading.Barrier(4)
    reports = []

    def run(owner: str) -> None:
        racer = refresher(clock, owner)
        barrier.wait()
        reports.append(racer.refresh_due(concurrency=3))

    threads = [threading.Thread(target=run, args=(f"racer-{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert sum(r.count(Outcome.ROTATED) for r in reports) == len(apps)
    for app in apps:
        record = control.merchant(app)
        assert record is not None
        assert record["rotations"] == 1
        assert assert_never_granted_with_a_dead_pair(control, app) == STATUS_GRANTED


def test_refreshers_racing_in_processes_rotate_each_merchant_exactly_once(
    service: ServiceStack, control: SimulatorControl
):
    clock = Clock(control)
    apps = [g.auth_app_id for g in grant_merchants(control, 24)]
    clock.advance(DUE_AFTER)
    control.faults(latency_ms=5)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            str(ROOT / p) for p in ("", "layers/signing", "devtools", "functions/refresh")
        ),
    }
    offset = str(clock.offset.total_seconds())
    racers = [
        subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [
                sys.executable,
                "-m",
                "tests.integration.refresh_child",
                service.simulator.url,
                offset,
                f"proc-{n}",
            ],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(3)
    ]
    outputs = [json.loads(racer.communicate(timeout=180)[0]) for racer in racers]

    assert all(racer.returncode == 0 for racer in racers)
    assert sum(out["rotated"] for out in outputs) == len(apps)
    for app in apps:
        record = control.merchant(app)
        assert record is not None
        assert record["rotations"] == 1
        assert assert_never_granted_with_a_dead_pair(control, app) == STATUS_GRANTED


def test_500_due_merchants_cost_a_constant_number_of_dynamodb_calls_each(
    control: SimulatorControl,
):
    clock = Clock(control)
    apps = [g.auth_app_id for g in grant_merchants(control, 500)]
    clock.advance(DUE_AFTER)
    control.faults(latency_ms=20)
    dynamodb = inject("dynamodb")  # no faults planned: it only counts the calls
    dynamodb.calls.clear()
    fast = replace(refresher(clock), limiter=TokenBucket(10_000))

    report = fast.refresh_due(concurrency=8)

    assert report.due == len(apps)
    assert report.count(Outcome.ROTATED) == len(apps)
    calls = dynamodb.calls
    assert not [c for c in calls if "scan" in c.lower()]
    # The index: one paginated Query per shard. Per rotation: one conditional update (the lease,
    # returning the item: no GetItem) and one transaction (the pair with its audit event).
    assert calls.count("paginate:query") == DUE_SHARDS
    assert calls.count("update_item") == len(apps)
    assert calls.count("transact_write_items") == len(apps)
    assert set(calls) == {"paginate:query", "update_item", "transact_write_items"}
    for app in apps[:: len(apps) // 10]:
        assert control.merchant(app)["rotations"] == 1  # type: ignore[index]


def test_eventbridge_refusing_never_blocks_or_loses_a_rotation(control: SimulatorControl):
    clock = Clock(control)
    apps = [g.auth_app_id for g in grant_merchants(control, 3)]
    clock.advance(DUE_AFTER)
    events = inject("events")
    events.fail_always("put_events", client_error("InternalException", "PutEvents"))
    events.calls.clear()

    report = refresher(clock).refresh_due(concurrency=2)

    assert report.count(Outcome.ROTATED) == len(apps)
    published, failed = runtime().events.take_counts()
    assert (published, failed) == (0, len(apps))
    assert events.calls.count("put_events") == 3 * len(apps)  # retried, then counted
    for app in apps:
        assert assert_never_granted_with_a_dead_pair(control, app) == STATUS_GRANTED
