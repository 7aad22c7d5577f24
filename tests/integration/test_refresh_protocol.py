"""The rotation protocol, case by case: each failure a review found in the basic refresh, as it
happens (simulator over HTTP, moto's server), and what the service does about it now.

Every test ends on the invariant: never ``granted`` with a pair Alipay refuses.
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from appauth import aws
from appauth.alipay.client import QUERY_METHOD, TOKEN_METHOD, AlipayClient
from appauth.lifecycle import Transition
from appauth.parking import RESCUE_FIELD, import_rescued
from appauth.policy import DUE_SHARDS
from appauth.refresh import TRANSIENT_BACKOFF, Budget, Outcome
from appauth.runtime import runtime
from appauth.store import STATUS_GRANTED, STATUS_NEEDS_REAUTH, STATUS_REVOKED
from appauth_dev.keygen import generate_private_key
from appauth_dev.simulator import SimulatorControl
from appauth_dev.simulator.state import SUPERSEDED_REFRESH_MODES
from tests.integration.conftest import EventCapture, ServiceStack
from tests.integration.refresh_helpers import (
    DUE_AFTER,
    Clock,
    LambdaKilled,
    alipay,
    assert_never_granted_with_a_dead_pair,
    client_error,
    grant_merchants,
    inject,
    refresh_held_at_alipay,
    refresher,
    run_once,
    run_until_quiet,
    stored_pair,
)

pytestmark = pytest.mark.usefixtures("atomic_moto")  # DynamoDB is atomic; moto is not

GRACE = 3600


@pytest.fixture
def control(service: ServiceStack) -> SimulatorControl:
    control = SimulatorControl(service.simulator.url)
    control.behaviour(token_grace_seconds=GRACE, refresh_grace_seconds=GRACE)
    return control


@pytest.fixture
def clock(control: SimulatorControl) -> Clock:
    return Clock(control)


def lose_next_refresh(control: SimulatorControl, fault: str) -> None:
    control.add_rule(
        method=TOKEN_METHOD,
        grant_type="refresh_token",
        fault=fault,
        after_processing=True,
        count=1,
        timeout_seconds=0.1,
    )


# --- case 1: the answer is lost or unusable, or the run dies after Alipay answered -----------


@pytest.mark.parametrize("rule", SUPERSEDED_REFRESH_MODES)
@pytest.mark.parametrize("fault", ["timeout", "tamper", "drop_sign", "html_502"])
def test_a_lost_or_unusable_answer_is_reconciled_not_retried_forever(
    control: SimulatorControl,
    clock: Clock,
    lifecycle_events: EventCapture,
    rule: str,
    fault: str,
):
    control.behaviour(superseded_refresh=rule)
    (grant,) = grant_merchants(control, 1)
    clock.advance(DUE_AFTER)
    lose_next_refresh(control, fault)

    report = run_once(clock)

    app = grant.auth_app_id
    record = control.merchant(app)
    assert record is not None
    if rule == "refuse":
        # The rotated pair is gone with the answer; the old pair still works for a while.
        assert report.count(Outcome.REFUSED_PAIR_VALID) == 1
        assert stored_pair(app) == (grant.app_auth_token, grant.app_refresh_token)
        stored = runtime().store.get(app)
        assert stored is not None
        assert stored.status == STATUS_GRANTED
        assert stored.reconcile_reason is not None
        # Once Alipay stops honouring the old pair, the query confirms it: needs_reauth.
        clock.advance(timedelta(seconds=GRACE + 1))
        run_until_quiet(clock)
        assert assert_never_granted_with_a_dead_pair(control, app) == STATUS_NEEDS_REAUTH
        detail_types = [e["detail-type"] for e in lifecycle_events.read()]
        assert Transition.NEEDS_REAUTH.detail_type in detail_types
    else:
        # A replaying Alipay hands back what it issued: recovered in the same run.
        assert report.count(Outcome.RECOVERED) == 1
        assert report.reconciled == 1
        assert assert_never_granted_with_a_dead_pair(control, app) == STATUS_GRANTED
        detail_types = [e["detail-type"] for e in lifecycle_events.read()]
        assert Transition.RECOVERED.detail_type in detail_types
    # Exactly one resend of the superseded refresh token, never a loop.
    outcomes = [call["outcome"] for call in control.merchant(app)["refresh_calls"]]  # type: ignore[index]
    assert outcomes[0] == "rotated"
    assert outcomes[1] in ("refused", "replayed_same", "replayed_new")
    assert len(outcomes) <= 2 or rule == "refuse"  # one resend; refuse retries later, alarmed


@pytest.mark.parametrize("rule", SUPERSEDED_REFRESH_MODES)
def test_a_run_that_died_after_alipay_answered_is_reconciled_by_the_next(
    control: SimulatorControl, clock: Clock, rule: str
):
    control.behaviour(superseded_refresh=rule)
    (grant,) = grant_merchants(control, 1)
    clock.advance(DUE_AFTER)
    dynamodb = inject("dynamodb")
    dynamodb.fail("transact_write_items", LambdaKilled())

    with pytest.raises(LambdaKilled):
        run_once(clock, owner="dead-run")

    dynamodb.heal()
    app = grant.auth_app_id
    assert runtime().store.get(app).lease_owner == "dead-run"  # type: ignore[union-attr]
    # Within the lease nobody touches it; after it lapses the next run reconciles.
    assert run_once(clock, owner="too-soon").count(Outcome.SKIPPED_LEASED) == 1
    clock.advance(timedelta(seconds=refresher(clock).lease_seconds + 1))
    report = run_once(clock, owner="next-run")
    assert report.reconciled == 1
    if rule == "refuse":
        assert report.count(Outcome.REFUSED_PAIR_VALID) == 1
        clock.advance(timedelta(seconds=GRACE + 1))
        run_until_quiet(clock)
        assert assert_never_granted_with_a_dead_pair(control, app) == STATUS_NEEDS_REAUTH
    else:
        assert report.count(Outcome.RECOVERED) == 1
        assert assert_never_granted_with_a_dead_pair(control, app) == STATUS_GRANTED


# --- case 2: DynamoDB and the parking queue both refuse --------------------------------------


def test_table_and_queue_refusing_leaves_the_pair_sealed_in_one_log_line(
    control: SimulatorControl, clock: Clock, caplog: pytest.LogCaptureFixture
):
    (grant,) = grant_merchants(control, 1)
    clock.advance(DUE_AFTER)
    dynamodb = inject("dynamodb")
    sqs = inject("sqs")
    sqs.fail_always("send_message", client_error("ServiceUnavailable", "SendMessage"))
    caplog.set_level(logging.DEBUG)
    rt = runtime()
    leasing = refresher(clock)
    dynamodb.fail_always("transact_write_items", client_error("InternalServerError", "Tx"))

    report = leasing.refresh_due()

    assert report.count(Outcome.LAST_RESORT) == 1
    assert report.count(Outcome.LOST) == 0
    rescued = [r for r in caplog.records if hasattr(r, RESCUE_FIELD)]
    assert len(rescued) == 1
    current = control.merchant(grant.auth_app_id)["current"]  # type: ignore[index]
    everything = " ".join(r.getMessage() + json.dumps(vars(r), default=str) for r in caplog.records)
    assert current["app_auth_token"] not in everything  # sealed: ciphertext only
    assert current["app_refresh_token"] not in everything
    # The operator re-imports it once DynamoDB is back.
    dynamodb.heal()
    sqs.heal()
    line = json.dumps({RESCUE_FIELD: getattr(rescued[0], RESCUE_FIELD)})
    assert import_rescued(line, rt.store).stored
    assert stored_pair(grant.auth_app_id) == (
        current["app_auth_token"],
        current["app_refresh_token"],
    )
    assert assert_never_granted_with_a_dead_pair(control, grant.auth_app_id) == STATUS_GRANTED
    assert "recovered" in {e.detail.get("transition") for e in rt.store.events(grant.auth_app_id)}


def test_table_refusing_parks_the_pair_and_the_next_drain_stores_it(
    control: SimulatorControl, clock: Clock
):
    (grant,) = grant_merchants(control, 1)
    clock.advance(DUE_AFTER)
    dynamodb = inject("dynamodb")
    dynamodb.fail("transact_write_items", client_error("ThrottlingException", "Tx"), times=3)

    report = run_once(clock)

    assert report.count(Outcome.PARKED) == 1
    # The next run drains it first, with the same fences, and does not refresh again.
    clock.advance(timedelta(seconds=refresher(clock).lease_seconds + 1))
    again = run_once(clock, owner="run-2")
    assert again.due == 0
    assert assert_never_granted_with_a_dead_pair(control, grant.auth_app_id) == STATUS_GRANTED
    assert control.merchant(grant.auth_app_id)["rotations"] == 1  # type: ignore[index]


# --- case 3: cancelled at Alipay, no notification ----------------------------------------------


def test_a_silent_cancellation_is_found_by_the_query_and_revokes(
    control: SimulatorControl, clock: Clock, lifecycle_events: EventCapture
):
    (grant,) = grant_merchants(control, 1)
    control.revoke(grant.auth_app_id, notify=False)
    clock.advance(DUE_AFTER)

    report = run_once(clock)

    assert report.count(Outcome.REVOKED) == 1
    stored = runtime().store.get(grant.auth_app_id)
    assert stored is not None
    assert stored.status == STATUS_REVOKED
    assert stored.next_refresh_at is None  # out of the due index
    assert assert_never_granted_with_a_dead_pair(control, grant.auth_app_id) == STATUS_REVOKED
    assert control.stats()["requests"][QUERY_METHOD]["success"] == 1
    (event,) = [e for e in lifecycle_events.read() if e["detail-type"].endswith(".revoked")]
    assert event["source"] == "appauth"
    assert event["detail"]["auth_app_id"] == grant.auth_app_id
    assert event["detail"]["status"] == STATUS_REVOKED
    assert grant.app_auth_token not in json.dumps(event)
    # Later runs never call Alipay for it again.
    clock.advance(timedelta(days=30))
    assert run_once(clock).due == 0


def test_an_unsigned_or_unreachable_query_never_changes_the_status(
    control: SimulatorControl, clock: Clock
):
    (grant,) = grant_merchants(control, 1)
    control.revoke(grant.auth_app_id, notify=False)
    clock.advance(DUE_AFTER)
    control.add_rule(method=QUERY_METHOD, fault="error", count=10)  # unsigned 20000, retried, fails

    report = run_once(clock)

    assert report.count(Outcome.DEFERRED_UNCONFIRMED) == 1
    stored = runtime().store.get(grant.auth_app_id)
    assert stored is not None
    assert stored.status == STATUS_GRANTED
    control.clear_rules()
    run_until_quiet(clock)
    assert assert_never_granted_with_a_dead_pair(control, grant.auth_app_id) == STATUS_REVOKED


# --- case 4: exponential backoff from the stored attempt count ---------------------------------


def test_transient_failures_back_off_exponentially_and_publish_the_attempt(
    control: SimulatorControl, clock: Clock, lifecycle_events: EventCapture
):
    (grant,) = grant_merchants(control, 1)
    clock.advance(DUE_AFTER)
    control.add_rule(method=TOKEN_METHOD, grant_type="refresh_token", fault="error", count=4)
    delays: list[timedelta] = []
    for attempt in range(1, 5):
        started = clock.now()
        report = run_once(clock, owner=f"run-{attempt}")
        assert report.count(Outcome.DEFERRED_TRANSIENT) == 1
        stored = runtime().store.get(grant.auth_app_id)
        assert stored is not None
        assert stored.status == STATUS_GRANTED
        assert stored.refresh_failures == attempt
        assert stored.next_refresh_at is not None
        delay = stored.next_refresh_at - started
        ceiling = TRANSIENT_BACKOFF.base * 2 ** (attempt - 1)
        assert ceiling / 2 - timedelta(seconds=1) <= delay <= ceiling + timedelta(seconds=1)
        delays.append(delay)
        clock.advance(delay + timedelta(seconds=1))
    assert delays[3] > delays[0] * 3  # 4x the ceiling, half of it at worst: grows, not flat
    failed = [e for e in lifecycle_events.read() if e["detail-type"].endswith(".refresh_failed")]
    assert [e["detail"]["attempt"] for e in failed] == [1, 2, 3, 4]
    assert run_once(clock).count(Outcome.ROTATED) == 1
    stored = runtime().store.get(grant.auth_app_id)
    assert stored is not None
    assert stored.refresh_failures == 0


# --- case 5: a re-authorization racing a refresh -------------------------------------------------


@pytest.mark.parametrize("first", ["refresh_processed_first", "reauth_processed_first"])
def test_a_reauthorization_racing_a_refresh_ends_with_the_pair_alipay_holds(
    control: SimulatorControl, clock: Clock, first: str
):
    (grant,) = grant_merchants(control, 1, merchant_ref="shop-1")
    app = grant.auth_app_id
    clock.advance(DUE_AFTER)
    # Hold the refresh at Alipay: after processing (Alipay rotated, the answer waits) or before.
    with refresh_held_at_alipay(
        control, clock, after_processing=first == "refresh_processed_first"
    ):
        # The merchant authorizes again meanwhile; the callback stores it with a new merchant_ref.
        code = control.codes(auth_app_id=app)["app_auth_code"]
        (reauth,) = alipay(clock).exchange_code(code).grants
        stored_reauth = runtime().store.save_grant(
            reauth, source="authorization", merchant_ref="shop-2"
        )
        assert stored_reauth.stored

    stored = runtime().store.get(app)
    assert stored is not None
    assert stored.merchant_ref == "shop-2"  # never reverted to the value read at lease time
    assert assert_never_granted_with_a_dead_pair(control, app) == STATUS_GRANTED
    # Whatever happened, nothing is left leased or marked, and the next runs agree.
    run_until_quiet(clock)
    assert assert_never_granted_with_a_dead_pair(control, app) == STATUS_GRANTED


def test_a_reauthorization_stored_after_a_refresh_it_overlapped_still_wins(
    control: SimulatorControl, clock: Clock
):
    """The exchange was sent before the refresh but Alipay processed it after: the refresh is
    stored first, and the re-authorization must still land (it used to be 'older')."""
    (grant,) = grant_merchants(control, 1)
    app = grant.auth_app_id
    clock.advance(DUE_AFTER)
    code = control.codes(auth_app_id=app)["app_auth_code"]
    control.add_rule(
        method=TOKEN_METHOD, grant_type="authorization_code", fault="hold", after_processing=False
    )
    exchanged: list[Any] = []
    worker = threading.Thread(
        target=lambda: exchanged.extend(alipay(clock).exchange_code(code).grants)
    )
    worker.start()
    hold = control.wait_for_hold(timeout=10)
    assert run_once(clock).count(Outcome.ROTATED) == 1  # the refresh, sent later, lands first
    control.release(hold["id"])
    worker.join(timeout=30)
    (reauth,) = exchanged
    assert runtime().store.save_grant(reauth, source="authorization", merchant_ref="shop-9").stored
    assert assert_never_granted_with_a_dead_pair(control, app) == STATUS_GRANTED


# --- case 6: a write refused because of a cancellation is not "refreshed" ------------------------


def test_a_cancellation_during_the_refresh_is_not_counted_as_refreshed(
    control: SimulatorControl, clock: Clock
):
    (grant,) = grant_merchants(control, 1)
    app = grant.auth_app_id
    clock.advance(DUE_AFTER)
    with refresh_held_at_alipay(control, clock) as held:
        control.revoke(app, notify=False)
        assert runtime().store.mark_revoked(
            app, cancelled_at=clock.now(), reason="merchant_cancelled"
        )
    report = held.report
    assert report.count(Outcome.ROTATED) == 0
    assert report.count(Outcome.SUPERSEDED) == 1
    assert assert_never_granted_with_a_dead_pair(control, app) == STATUS_REVOKED


# --- case 7: the time budget and the lease come from the configured timeouts --------------------


def test_the_reserve_covers_the_worst_case_and_the_lease_outlives_the_function(
    service: ServiceStack,
):
    client = runtime().client()
    budget = Budget.for_client(client, aws.worst_case_call_seconds())
    # boto3's worst case for seal + every table write and re-read + park, and the refresh call.
    boto_worst = aws.MAX_ATTEMPTS * (aws.CONNECT_TIMEOUT + aws.READ_TIMEOUT)
    assert budget.store >= boto_worst * (2 + 2 * budget.store_attempts + 1)
    assert budget.refresh_call >= client.worst_case_seconds(retry_safe=False)
    assert budget.reserve == budget.refresh_call + budget.store
    assert budget.lease_seconds(900) > 900
    assert budget.lease_seconds(900) > budget.reserve + budget.confirm
    # Slower timeouts mean a larger reserve: computed, not a constant.
    slower = Budget.for_client(client, aws.worst_case_call_seconds() * 2)
    assert slower.reserve > budget.reserve


def test_a_worker_never_sends_a_refresh_it_could_not_store(control: SimulatorControl, clock: Clock):
    grant_merchants(control, 2)
    clock.advance(DUE_AFTER)
    budget = refresher(clock).budget
    short = refresher(clock, time_left=budget.reserve - 1)
    report = short.refresh_due(concurrency=2)
    assert report.count(Outcome.STOPPED_EARLY) == 1
    assert control.stats()["requests"][TOKEN_METHOD] == {"success": 1}  # the exchange, no refresh


# --- what a review found: setup errors, late answers, unreadable AWS, the worker's own check ---


def test_a_signed_error_about_our_own_keys_never_changes_a_status(
    control: SimulatorControl, clock: Clock
):
    """Alipay refuses our signature (a rotated app key not yet in the console): signed 40002
    isv.invalid-signature for the refresh. It says nothing about the merchant's pair."""
    (grant,) = grant_merchants(control, 1)
    clock.advance(DUE_AFTER)
    rt = runtime()
    wrong_key = replace(rt.credentials(), private_key=generate_private_key())
    client = AlipayClient(wrong_key, rt.settings.endpoints, clock=clock.now)
    report = replace(refresher(clock), client=client).refresh_due()

    assert report.count(Outcome.DEFERRED_ALIPAY_ERROR) == 1
    stored = runtime().store.get(grant.auth_app_id)
    assert stored is not None
    assert stored.status == STATUS_GRANTED
    assert stored.lease_owner is None
    assert assert_never_granted_with_a_dead_pair(control, grant.auth_app_id) == STATUS_GRANTED
    assert QUERY_METHOD not in control.stats()["requests"]  # nothing to confirm about the pair


def test_a_late_answer_never_brings_a_silently_cancelled_merchant_back(
    control: SimulatorControl, clock: Clock
):
    (grant,) = grant_merchants(control, 1)
    app = grant.auth_app_id
    clock.advance(DUE_AFTER)
    with refresh_held_at_alipay(control, clock, owner="slow") as slow:
        control.revoke(app, notify=False)  # the merchant cancels; no notification
        clock.advance(timedelta(seconds=refresher(clock).lease_seconds + 1))
        taker = run_once(clock, owner="taker")  # resend refused, the query says invalid
        assert taker.count(Outcome.REVOKED) == 1
    # The slow run's answer arrived after all: it is not stored.
    assert slow.report.count(Outcome.SUPERSEDED) == 1
    assert assert_never_granted_with_a_dead_pair(control, app) == STATUS_REVOKED
    stored = runtime().store.get(app)
    assert stored is not None
    assert stored.next_refresh_at is None


def test_an_unreadable_index_or_parking_queue_never_stops_what_it_need_not(
    control: SimulatorControl, clock: Clock
):
    (grant,) = grant_merchants(control, 1)
    clock.advance(DUE_AFTER)
    sqs = inject("sqs")
    sqs.fail("receive_message", client_error("ServiceUnavailable", "ReceiveMessage"))
    assert run_once(clock).count(Outcome.ROTATED) == 1  # the drain failed, the run went on
    clock.advance(DUE_AFTER)
    dynamodb = inject("dynamodb")
    dynamodb.fail("paginate:query", client_error("InternalServerError", "Query"))
    report = refresher(clock).refresh_due()
    assert report.count(Outcome.STOPPED_ON_ERROR) == 1
    assert dynamodb.fired == 1
    assert refresher(clock).refresh_due().count(Outcome.ROTATED) == 1  # next run: still due
    assert assert_never_granted_with_a_dead_pair(control, grant.auth_app_id) == STATUS_GRANTED


def test_kms_down_when_opening_the_pair_is_transient_and_sends_nothing(
    control: SimulatorControl, clock: Clock
):
    (grant,) = grant_merchants(control, 1)
    clock.advance(DUE_AFTER)
    kms = inject("kms")
    kms.fail_always("decrypt", client_error("KMSInternalException", "Decrypt"))

    report = refresher(clock).refresh_due()

    assert report.count(Outcome.DEFERRED_TRANSIENT) == 1
    assert kms.fired >= 1
    stored = runtime().store.get(grant.auth_app_id)
    assert stored is not None
    assert stored.lease_owner is None  # released at once: nothing can have rotated
    assert stored.refresh_failures == 1
    assert control.merchant(grant.auth_app_id)["refresh_calls"] == []  # type: ignore[index]


def test_a_worker_that_waited_out_its_time_in_the_rate_limit_does_not_send(
    control: SimulatorControl, clock: Clock
):
    (grant,) = grant_merchants(control, 1)
    clock.advance(DUE_AFTER)
    base = refresher(clock)
    remaining = [base.budget.reserve + 60]

    class SlowLimit:
        def acquire(self) -> None:
            remaining[0] -= 120  # the bucket kept this worker waiting two minutes

    report = replace(base, time_left=lambda: remaining[0], limiter=SlowLimit()).refresh_due()  # type: ignore[arg-type]

    assert report.count(Outcome.STOPPED_EARLY) == 1
    assert control.merchant(grant.auth_app_id)["refresh_calls"] == []  # type: ignore[index]
    stored = runtime().store.get(grant.auth_app_id)
    assert stored is not None
    assert stored.lease_owner is None  # released, still due, no failure counted
    assert stored.refresh_failures == 0
    assert stored.next_refresh_at is not None
    assert stored.next_refresh_at <= clock.now()


@pytest.mark.parametrize("path", ["table_and_queue_refuse", "write_refused_by_a_newer_grant"])
def test_the_store_reserve_covers_the_aws_calls_the_durable_path_really_makes(
    control: SimulatorControl, clock: Clock, path: str
):
    (grant,) = grant_merchants(control, 1)
    app = grant.auth_app_id
    clock.advance(DUE_AFTER)
    clients = {name: inject(name) for name in ("dynamodb", "kms", "sqs")}
    if path == "table_and_queue_refuse":
        clients["dynamodb"].fail_always(
            "transact_write_items", client_error("InternalServerError", "Tx")
        )
        clients["sqs"].fail_always("send_message", client_error("ServiceUnavailable", "Send"))
    else:
        # A re-authorization lands while the refresh is at Alipay: the fenced write is refused.
        control.add_rule(method=TOKEN_METHOD, grant_type="refresh_token", fault="hold")
    leasing = refresher(clock)
    counted: list[int] = []

    def refresh_and_count() -> None:
        before = sum(len(c.calls) for c in clients.values())
        leasing.refresh_due()
        counted.append(sum(len(c.calls) for c in clients.values()) - before)

    worker = threading.Thread(target=refresh_and_count)
    worker.start()
    if path != "table_and_queue_refuse":
        hold = control.wait_for_hold(timeout=10)
        code = control.codes(auth_app_id=app)["app_auth_code"]
        (reauth,) = alipay(clock).exchange_code(code).grants
        before_reauth = sum(len(c.calls) for c in clients.values())
        runtime().store.save_grant(reauth, source="authorization")
        reauth_calls = sum(len(c.calls) for c in clients.values()) - before_reauth
        control.release(hold["id"])
    worker.join(timeout=60)
    (calls,) = counted
    if path != "table_and_queue_refuse":
        calls -= reauth_calls
    # The index pages, the lease and the decrypt come before the reserve is needed.
    after_the_answer = calls - DUE_SHARDS - 2
    assert after_the_answer >= 5  # the path was really taken (3 writes + seal + park, or more)
    assert after_the_answer * leasing.budget.aws_call <= leasing.budget.store
