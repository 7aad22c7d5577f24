"""The verification sweep: a cancellation Alipay never notified is found within VerifyEveryDays,
without waiting months for the next rotation (simulator over HTTP, moto's server).
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest

from appauth.alipay.client import QUERY_METHOD, TOKEN_METHOD
from appauth.alipay.errors import AlipayError
from appauth.refresh import Outcome, RefreshReport, TokenBucket
from appauth.runtime import runtime
from appauth.store import STATUS_GRANTED, STATUS_NEEDS_REAUTH, STATUS_REVOKED
from appauth_dev.simulator import SimulatorControl
from tests.integration.conftest import EventCapture, ServiceStack
from tests.integration.refresh_helpers import (
    Clock,
    assert_never_granted_with_a_dead_pair,
    grant_merchants,
    refresher,
)

pytestmark = pytest.mark.usefixtures("atomic_moto")

VERIFY_DAYS = 7  # the template's default VerifyEveryDays


@pytest.fixture
def control(service: ServiceStack) -> SimulatorControl:
    control = SimulatorControl(service.simulator.url)
    control.behaviour(token_grace_seconds=3600, refresh_grace_seconds=3600)
    return control


@pytest.fixture
def clock(control: SimulatorControl) -> Clock:
    return Clock(control)


def sweep(clock: Clock, owner: str = "run-1") -> RefreshReport:
    """A scheduled run: what is due, then the sweep (as the refresh function does)."""
    run = refresher(clock, owner)
    report = run.refresh_due(concurrency=4)
    return run.verify_due(report, concurrency=4)


def query_calls(control: SimulatorControl) -> int:
    return sum(control.stats()["requests"].get(QUERY_METHOD, {}).values())


def test_nobody_is_asked_before_the_period_and_everybody_after_it(
    control: SimulatorControl, clock: Clock
):
    grants = grant_merchants(control, 6)
    clock.advance(timedelta(days=VERIFY_DAYS * 0.85))  # before the earliest spread check
    report = sweep(clock)
    assert (report.verify_due, query_calls(control)) == (0, 0)
    clock.advance(timedelta(days=VERIFY_DAYS * 0.15, minutes=1))
    report = sweep(clock)
    assert report.count(Outcome.VERIFIED) == report.verify_due == len(grants)
    assert query_calls(control) == len(grants)
    for grant in grants:
        stored = runtime().store.get(grant.auth_app_id)
        assert stored is not None
        assert stored.status == STATUS_GRANTED
        assert stored.auth_methods
        assert "alipay.trade.pay" in stored.auth_methods
        assert stored.auth_end is not None
        assert stored.alipay_status == "valid"
        assert stored.lease_owner is None  # the sweep's lease is released in the same write
        assert stored.verify_at is not None
        assert stored.verified_at is not None
        assert stored.verify_at - stored.verified_at <= timedelta(days=VERIFY_DAYS)
        assert stored.verify_at - stored.verified_at >= timedelta(days=VERIFY_DAYS * 0.9)
    # Checked: the next run asks nobody.
    assert sweep(clock).verify_due == 0


def test_a_silent_cancellation_is_revoked_within_the_period(
    control: SimulatorControl, clock: Clock, lifecycle_events: EventCapture
):
    cancelled, kept = grant_merchants(control, 2)
    lifecycle_events.read()
    control.revoke(cancelled.auth_app_id)  # no notification: only the query can tell
    clock.advance(timedelta(days=VERIFY_DAYS, minutes=1))
    report = sweep(clock)
    assert report.count(Outcome.REVOKED) == 1
    assert report.count(Outcome.VERIFIED) == 1
    gone = runtime().store.get(cancelled.auth_app_id)
    assert gone is not None
    assert gone.status == STATUS_REVOKED
    assert gone.verify_at is None  # out of the sparse index
    assert gone.status_reason == "verify:query:invalid"
    assert [(e["detail-type"], e["detail"]["auth_app_id"]) for e in lifecycle_events.read()] == [
        ("appauth.authorization.revoked", cancelled.auth_app_id)
    ]
    assert assert_never_granted_with_a_dead_pair(control, kept.auth_app_id) == STATUS_GRANTED


@pytest.mark.parametrize(
    ("rule", "expected"), [("refuse", STATUS_NEEDS_REAUTH), ("same_pair", STATUS_GRANTED)]
)
def test_a_dead_token_is_refreshed_before_anything_is_concluded(
    control: SimulatorControl, clock: Clock, rule: str, expected: str
):
    """Alipay rotated without our seeing the answer and the old token is past its grace: the
    sweep tries the refresh token before calling the merchant lost."""
    month = 30 * 86400  # the superseded refresh token is still honoured when the sweep comes
    control.behaviour(superseded_refresh=rule, token_grace_seconds=0, refresh_grace_seconds=month)
    (grant,) = grant_merchants(control, 1)
    runtime().client().refresh(grant.app_refresh_token)  # the lost rotation
    clock.advance(timedelta(days=VERIFY_DAYS, minutes=1))
    report = sweep(clock)
    assert report.verify_due == 1
    assert assert_never_granted_with_a_dead_pair(control, grant.auth_app_id) == expected
    record = control.merchant(grant.auth_app_id)
    assert record is not None
    assert len(record["refresh_calls"]) == 2  # the lost one, and the sweep's


def test_no_usable_answer_changes_nothing_and_asks_again_later(
    control: SimulatorControl, clock: Clock
):
    (grant,) = grant_merchants(control, 1)
    clock.advance(timedelta(days=VERIFY_DAYS, minutes=1))
    control.add_rule(method=QUERY_METHOD, fault="tamper", count=1)
    report = sweep(clock)
    assert report.count(Outcome.VERIFY_DEFERRED) == 1
    stored = runtime().store.get(grant.auth_app_id)
    assert stored is not None
    assert (stored.status, stored.version, stored.alipay_status) == (STATUS_GRANTED, 1, None)
    assert stored.lease_owner is None
    assert stored.verify_at is not None
    assert timedelta(minutes=25) <= stored.verify_at - clock.now() <= timedelta(hours=1)
    assert sweep(clock).verify_due == 0  # not hammered in the same hour
    clock.advance(timedelta(hours=1))
    assert sweep(clock).count(Outcome.VERIFIED) == 1


def test_a_merchant_marked_for_reconciliation_is_reconciled_by_the_sweep(
    control: SimulatorControl, clock: Clock
):
    (grant,) = grant_merchants(control, 1)
    store = runtime().store
    lease = store.acquire_lease(
        grant.auth_app_id, version=1, now=clock.now(), seconds=60, owner="dead-run"
    )
    assert lease is not None
    assert store.mark_reconcile(lease, "outcome_unknown:test")
    clock.advance(timedelta(days=VERIFY_DAYS, minutes=1))
    report = sweep(clock)
    # Its lease lapsed long ago; the due pass or the sweep reconciles it (whichever comes first).
    assert report.count(Outcome.RECOVERED) == 1
    assert report.reconciled == 1
    assert assert_never_granted_with_a_dead_pair(control, grant.auth_app_id) == STATUS_GRANTED


def test_the_sweep_shares_the_runs_rate_limit_and_stops_when_time_runs_out(
    control: SimulatorControl, clock: Clock
):
    grants = grant_merchants(control, 5)
    clock.advance(timedelta(days=VERIFY_DAYS, minutes=1))
    acquired: list[int] = []

    class CountingBucket(TokenBucket):
        def acquire(self) -> None:
            acquired.append(1)

    run = replace(refresher(clock), limiter=CountingBucket(1000))
    report = run.verify_due(RefreshReport(), concurrency=2)
    assert len(acquired) == report.count(Outcome.VERIFIED) == len(grants)
    # A run without the time an answer needs asks nobody and leaves everyone due.
    clock.advance(timedelta(days=VERIFY_DAYS, minutes=1))
    before = query_calls(control)
    short = refresher(clock, "short-run", time_left=1.0)
    report = short.verify_due(RefreshReport())
    assert report.count(Outcome.STOPPED_EARLY) >= 1
    assert query_calls(control) == before


def test_every_merchant_is_verified_at_least_every_period(control: SimulatorControl, clock: Clock):
    """Three weeks of runs every 12 h: no merchant goes longer than the period (plus one run)
    without Alipay being asked, and none is asked much more often than needed."""
    grants = grant_merchants(control, 8)
    seen: dict[str, list[datetime]] = {g.auth_app_id: [clock.now()] for g in grants}
    step = timedelta(hours=12)
    for number in range(42):
        clock.advance(step)
        sweep(clock, owner=f"run-{number}")
        for grant in grants:
            stored = runtime().store.get(grant.auth_app_id)
            assert stored is not None
            if stored.verified_at and stored.verified_at > seen[grant.auth_app_id][-1]:
                seen[grant.auth_app_id].append(stored.verified_at)
    for times in seen.values():
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        assert len(gaps) == 3  # 21 days, every 7 days
        assert max(gaps) <= timedelta(days=VERIFY_DAYS) + step
        assert min(gaps) >= timedelta(days=VERIFY_DAYS * 0.9) - step


def test_the_rotation_counts_as_a_fresh_start_for_the_sweep(
    control: SimulatorControl, clock: Clock
):
    (grant,) = grant_merchants(control, 1)
    assert refresher(clock).refresh_now([grant.auth_app_id]).count(Outcome.ROTATED) == 1
    stored = runtime().store.get(grant.auth_app_id)
    assert stored is not None
    assert stored.verify_at is not None
    assert stored.verify_at - clock.now() >= timedelta(days=VERIFY_DAYS * 0.9) - timedelta(
        minutes=1
    )
    assert sum(control.stats()["requests"].get(TOKEN_METHOD, {}).values()) == 2


class PermissionRefused:
    """The service's client, except that Alipay refuses the query for our own setup."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.queries = 0

    def query_authorization(self, app_auth_token: str) -> Any:
        self.queries += 1
        raise AlipayError(
            "40006",
            "Insufficient Permissions",
            sub_code="isv.insufficient-isv-permissions",
            signed=True,
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def test_our_own_setup_error_never_rotates_or_changes_the_merchant(
    control: SimulatorControl, clock: Clock
):
    (grant,) = grant_merchants(control, 1)
    before = runtime().store.get(grant.auth_app_id)
    assert before is not None
    clock.advance(timedelta(days=VERIFY_DAYS, minutes=1))
    base = refresher(clock)
    refused = PermissionRefused(base.client)
    run = replace(base, client=refused)  # type: ignore[arg-type]
    report = run.verify_due(RefreshReport())
    assert refused.queries == 1
    assert report.count(Outcome.DEFERRED_ALIPAY_ERROR) == 1
    after = runtime().store.get(grant.auth_app_id)
    assert after is not None
    # The rotation schedule and the failure count are untouched; only the check waits.
    assert (after.version, after.status) == (1, STATUS_GRANTED)
    assert after.next_refresh_at == before.next_refresh_at
    assert after.refresh_failures == 0
    assert after.lease_owner is None
    assert after.verify_at is not None
    assert after.verify_at > clock.now()
    assert run.refresh_due().due == 0  # nothing became due for a rotation
