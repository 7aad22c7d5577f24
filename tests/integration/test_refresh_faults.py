"""The fault matrix: every fault point of a rotation x every way Alipay may treat a superseded
refresh token. Each case runs the refresh until quiet and checks the invariant on every merchant:
it holds the pair the simulator last issued and accepts, or it is needs_reauth/revoked with an
event, and then only when the simulator confirms its pair is dead. Never granted with a pair
the simulator refuses.

A bystander merchant is due in the same runs and must rotate normally whatever happens to the
faulted one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta

import pytest

from appauth.alipay.client import TOKEN_METHOD
from appauth.parking import RESCUE_FIELD, import_rescued
from appauth.runtime import runtime
from appauth.store import STATUS_GRANTED
from appauth_dev.simulator import SimulatorControl
from appauth_dev.simulator.state import SUPERSEDED_REFRESH_MODES
from tests.integration.conftest import ServiceStack
from tests.integration.refresh_helpers import (
    DUE_AFTER,
    Clock,
    LambdaKilled,
    assert_never_granted_with_a_dead_pair,
    client_error,
    for_merchant,
    grant_merchants,
    inject,
    refresh_held_at_alipay,
    refresher,
    run_once,
    run_until_quiet,
)

pytestmark = pytest.mark.usefixtures("atomic_moto")  # DynamoDB is atomic; moto is not

GRACE = 2 * 3600  # longer than the schedule (hourly): a lost answer can be replayed


def _alipay_fault(fault: str, *, after: bool) -> Callable[[SimulatorControl, str], None]:
    def plant(control: SimulatorControl, app: str) -> None:
        control.add_rule(
            method=TOKEN_METHOD,
            grant_type="refresh_token",
            auth_app_id=app,
            fault=fault,
            after_processing=after,
            count=1,
            timeout_seconds=0.1,
        )

    return plant


ALIPAY_SIDE = ("before_send", "lost_answer", "unusable_answer", "lease_lost_mid_call")


def _first_run(
    case: str, control: SimulatorControl, clock: Clock, app: str, caplog: pytest.LogCaptureFixture
) -> int:
    """Plant the fault, run the first refresh through it, and undo what an operator undoes.
    Returns how many planned AWS failures were raised (0 for Alipay-side faults)."""
    fired = 0
    if case in ("before_send", "lost_answer", "unusable_answer"):
        fault, after = {
            "before_send": ("http_503", False),
            "lost_answer": ("timeout", True),
            "unusable_answer": ("tamper", True),
        }[case]
        _alipay_fault(fault, after=after)(control, app)
        run_once(clock)
    elif case == "killed_after_answer":
        dynamodb = inject("dynamodb")
        dynamodb.fail("transact_write_items", LambdaKilled(), when=for_merchant(app))
        with pytest.raises(LambdaKilled):
            run_once(clock)
        fired = dynamodb.fired
        dynamodb.heal()
    elif case in ("table_refusing", "throttling"):
        dynamodb = inject("dynamodb")
        code = "ServiceUnavailable" if case == "table_refusing" else "ThrottlingException"
        times = 3 if case == "table_refusing" else 2  # throttling: within the store's retries
        dynamodb.fail(
            "transact_write_items",
            client_error(code, "TransactWriteItems"),
            times,
            when=for_merchant(app),
        )
        run_once(clock)
        fired = dynamodb.fired
        dynamodb.heal()
    elif case == "table_and_queue_refusing":
        dynamodb = inject("dynamodb")
        sqs = inject("sqs")
        dynamodb.fail_always(
            "transact_write_items",
            client_error("InternalServerError", "Tx"),
            when=for_merchant(app),
        )
        sqs.fail_always(
            "send_message",
            client_error("ServiceUnavailable", "SendMessage"),
            when=for_merchant(app),
        )
        run_once(clock)
        fired = dynamodb.fired + sqs.fired
        dynamodb.heal()
        sqs.heal()
        # The operator re-imports the last-resort log line (alarmed) once AWS is back.
        (record,) = [r for r in caplog.records if hasattr(r, RESCUE_FIELD)]
        assert record.auth_app_id == app  # type: ignore[attr-defined]
        line = json.dumps({RESCUE_FIELD: getattr(record, RESCUE_FIELD)})
        assert import_rescued(line, runtime().store).stored
    elif case == "lease_lost_mid_call":
        # Run A's refresh is processed and its answer held; A's lease lapses; run B takes over.
        with refresh_held_at_alipay(control, clock, owner="slow-run", auth_app_id=app):
            clock.advance(timedelta(seconds=refresher(clock).lease_seconds + 1))
            run_once(clock, owner="taker")
    else:  # pragma: no cover
        raise AssertionError(case)
    return fired


FAULT_POINTS = (
    "before_send",
    "lost_answer",
    "unusable_answer",
    "killed_after_answer",
    "table_refusing",
    "table_and_queue_refusing",
    "lease_lost_mid_call",
    "throttling",
)


@pytest.mark.parametrize("rule", SUPERSEDED_REFRESH_MODES)
@pytest.mark.parametrize("case", FAULT_POINTS)
def test_every_fault_point_under_every_superseded_token_rule(
    service: ServiceStack, caplog: pytest.LogCaptureFixture, case: str, rule: str
):
    control = SimulatorControl(service.simulator.url)
    control.behaviour(
        superseded_refresh=rule, token_grace_seconds=GRACE, refresh_grace_seconds=GRACE
    )
    clock = Clock(control)
    faulted, bystander = (g.auth_app_id for g in grant_merchants(control, 2))
    clock.advance(DUE_AFTER)

    fired = _first_run(case, control, clock, faulted, caplog)
    run_until_quiet(clock)

    status = assert_never_granted_with_a_dead_pair(control, faulted)
    assert assert_never_granted_with_a_dead_pair(control, bystander) == STATUS_GRANTED
    bystander_record = control.merchant(bystander)
    assert bystander_record is not None
    assert bystander_record["rotations"] == 1  # rotated exactly once in this due cycle
    record = control.merchant(faulted)
    assert record is not None
    assert record["rotations"] <= 2  # at most the lost rotation and one reconciliation
    # The fault really met the faulted merchant (and only it: the bystander rotated once).
    if case in ALIPAY_SIDE:
        assert any(call["fault"] for call in record["refresh_calls"])
    else:
        assert fired >= 1
    if case in ("before_send", "table_refusing", "throttling", "table_and_queue_refusing"):
        # Nothing was lost for good: these always end granted with Alipay's pair.
        assert status == STATUS_GRANTED
    if rule != "refuse":
        # A replaying Alipay lets every lost answer be recovered.
        assert status == STATUS_GRANTED
    print(f"fault-matrix {case:26} {rule:10} -> {status}")  # shown with -s: the closing note
