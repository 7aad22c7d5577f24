"""The token query function, invoked in-process as Lambda would, against the local stack and the
simulator: every action, every error code, the cache, and failures as data.

Grants are made for real: a code minted on the simulator, exchanged by the function's own client
(HTTP, signed, verified) and saved by the function's own store (DynamoDB + KMS on moto).
"""

from __future__ import annotations

import importlib
import io
import json
import logging
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import token_query_app
from appauth import aws
from appauth.alipay.client import QUERY_METHOD
from appauth.alipay.models import TokenGrant
from appauth.lifecycle import Transition
from appauth.lookup import LookupCache
from appauth.refresh import Outcome
from appauth.runtime import reset_runtime, runtime
from appauth.store import STATUS_GRANTED, STATUS_NEEDS_REAUTH, STATUS_REVOKED
from appauth_dev.local_service import FakeContext
from appauth_dev.simulator import SimulatorControl
from tests.integration.conftest import EventCapture, ServiceStack
from tests.integration.refresh_helpers import client_error, inject

EVENTS = Path(__file__).parents[2] / "events"
CACHE_SECONDS = 30.0
UNKNOWN_APP = "2021009999999999"


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


class Calls:
    """Every operation a boto3 client makes (botocore ``before-call`` hook)."""

    def __init__(self, client: Any, service: str) -> None:
        self.counts: Counter[str] = Counter()
        client.meta.events.register(f"before-call.{service}.*", self._record)

    def _record(self, model: Any, **_: Any) -> None:
        self.counts[model.name] += 1


@pytest.fixture
def ctl(service: ServiceStack) -> SimulatorControl:
    return SimulatorControl(service.simulator.url)


@pytest.fixture
def clock(service: ServiceStack, monkeypatch: pytest.MonkeyPatch) -> Clock:
    """A cold start in the service's environment, with a look-up cache on a fake clock.

    The module is reloaded because Powertools reads its settings (metrics namespace, service
    name) when the handler module is imported, which Lambda does after setting the environment.
    """
    importlib.reload(token_query_app)
    fake = Clock()
    monkeypatch.setattr(
        token_query_app, "cache", LookupCache(max_age_seconds=CACHE_SECONDS, monotonic=fake)
    )
    return fake


@pytest.fixture
def function_logs(clock: Clock) -> Iterator[io.StringIO]:
    """What the function's logger (and the layer's loggers under it) write, as Lambda would see it."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(token_query_app.logger.registered_formatter)
    targets = [logging.getLogger(token_query_app.logger.name), logging.getLogger("appauth")]
    for target in targets:
        target.addHandler(handler)
    try:
        yield stream
    finally:
        for target in targets:
            target.removeHandler(handler)


def invoke(event: Any) -> dict[str, Any]:
    result: dict[str, Any] = token_query_app.lambda_handler(
        event, FakeContext(function_name="appauth-token-query")
    )
    # The answer always travels as JSON (direct invoke): it must serialize as it is.
    assert json.loads(json.dumps(result)) == result
    return result


def get_token(auth_app_id: str, **fields: Any) -> dict[str, Any]:
    return invoke({"action": "get_token", "auth_app_id": auth_app_id, **fields})


def authorize(ctl: SimulatorControl, **body: Any) -> TokenGrant:
    """A merchant authorizes: a code from the simulator, exchanged and stored by the service."""
    grant = runtime().client().exchange_code(ctl.codes(**body)["app_auth_code"]).single()
    assert runtime().store.save_grant(grant, source="authorization").stored
    return grant


def rotate_elsewhere(grant: TokenGrant) -> TokenGrant:
    """Alipay rotates the pair without this service storing the answer (a lost answer)."""
    return runtime().client().refresh(grant.app_refresh_token).single()


def alipay_calls(ctl: SimulatorControl) -> Counter[str]:
    """The API calls the simulator answered, by method."""
    requests = ctl.stats()["requests"]
    return Counter({method: sum(o.values()) for method, o in requests.items()})


# --- get_token ---------------------------------------------------------------------------------


def test_a_granted_merchant_gets_its_token_and_nothing_secret_is_logged(
    service: ServiceStack, ctl: SimulatorControl, function_logs: io.StringIO
):
    grant = authorize(ctl)
    answer = get_token(grant.auth_app_id)
    assert grant.expires_at is not None
    assert grant.re_expires_at is not None
    assert answer == {
        "ok": True,
        "auth_app_id": grant.auth_app_id,
        "user_id": grant.user_id,
        "version": 1,
        "status": STATUS_GRANTED,
        "app_auth_token": grant.app_auth_token,
        "expires_at": grant.expires_at.replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        "re_expires_at": grant.re_expires_at.replace(microsecond=0)
        .isoformat()
        .replace("+00:00", "Z"),
        "auth_methods": None,  # not asked yet
    }
    # The token works at Alipay (the simulator) and is the merchant's current one.
    info = runtime().client().query_authorization(answer["app_auth_token"])
    assert info.valid
    assert info.auth_app_id == grant.auth_app_id
    logs = function_logs.getvalue()
    assert '"message":"Token query"' in logs
    assert grant.auth_app_id in logs
    assert grant.app_auth_token not in logs
    assert grant.app_refresh_token not in logs


@pytest.mark.usefixtures("clock")
def test_the_issue_4_request_shape_still_works(service: ServiceStack, ctl: SimulatorControl):
    grant = authorize(ctl)
    legacy = json.loads((EVENTS / "token_query_legacy.json").read_text(encoding="utf-8"))
    answer = invoke({**legacy, "auth_app_id": grant.auth_app_id})
    assert answer["ok"] is True
    assert answer["app_auth_token"] == grant.app_auth_token
    assert invoke({"auth_app_id": grant.auth_app_id, "consistent": True})["version"] == 1


@pytest.mark.usefixtures("clock")
def test_the_sample_events_are_valid_requests(service: ServiceStack):
    paths = sorted(EVENTS.glob("token_query*.json"))
    assert len(paths) == 6
    for path in paths:
        answer = invoke(json.loads(path.read_text(encoding="utf-8")))
        if path.name == "token_query_list.json":
            assert answer == {"ok": True, "items": [], "cursor": None}
            continue
        # Their merchant is not stored here: a well-formed request, answered not_found.
        assert answer["ok"] is False, path.name
        assert answer["error"]["code"] == "not_found", (path.name, answer)


@pytest.mark.usefixtures("clock")
def test_an_unknown_merchant_is_not_found_and_not_retryable(service: ServiceStack):
    assert get_token(UNKNOWN_APP) == {
        "ok": False,
        "error": {
            "code": "not_found",
            "message": "no authorization is stored for this app",
            "retryable": False,
        },
    }


@pytest.mark.usefixtures("clock")
def test_a_revoked_or_dead_merchant_gets_its_status_but_never_a_token(
    service: ServiceStack, ctl: SimulatorControl
):
    revoked, dead = authorize(ctl), authorize(ctl)
    store = runtime().store
    assert store.mark_revoked(
        revoked.auth_app_id, cancelled_at=revoked.answered_at or revoked.received_at, reason="x"
    )
    stored = store.get(dead.auth_app_id)
    assert stored is not None
    assert store.end_confirmed(
        stored, Transition.NEEDS_REAUTH, reason="test", confirmed_at=dead.received_at
    )
    for grant, code in ((revoked, STATUS_REVOKED), (dead, STATUS_NEEDS_REAUTH)):
        answer = get_token(grant.auth_app_id)
        assert answer["ok"] is False
        assert answer["error"]["code"] == code
        assert answer["error"]["retryable"] is False
        assert (answer["status"], answer["version"]) == (code, 2)
        assert grant.app_auth_token not in json.dumps(answer)
        assert grant.app_refresh_token not in json.dumps(answer)


MALFORMED_EVENTS: list[Any] = [
    ["2021000100000001"],
    "2021000100000001",
    None,
    42,
    {},
    {"auth_app_id": ""},
    {"auth_app_id": "abc"},
    {"auth_app_id": "1" * 33},
    {"auth_app_id": 2021000100000001},
    {"app_id": "2021000100000001"},
    {"auth_app_id": "2021000100000001", "consistent": "yes"},
    {"action": "get_token"},
    {"action": "get_token", "auth_app_id": "2021000100000001", "user_id": "2088000000000001"},
    {"action": "get_token", "auth_app_id": "2021000100000001", "extra": 1},
    {"action": "get_token", "auth_app_id": "2021000100000001", "required_methods": "a.b"},
    {"action": "get_token", "auth_app_id": "2021000100000001", "required_methods": ["DROP"]},
    {"action": "get_token", "auth_app_id": "2021000100000001", "required_methods": ["a.b"] * 21},
    {"action": "fetch", "auth_app_id": "2021000100000001"},
    {"action": ["get_token"], "auth_app_id": "2021000100000001"},
    {"action": "describe"},
    {"action": "list", "limit": 0},
    {"action": "list", "limit": 101},
    {"action": "list", "limit": True},
    {"action": "list", "status": "active"},
    {"action": "list", "cursor": "not/base64!"},
    {"action": "list", "cursor": "eyJzIjoiZ3JhbnRlZCJ9"},  # well-formed base64, not our cursor
    {"action": "report_invalid", "auth_app_id": "2021000100000001"},
    {"action": "report_invalid", "auth_app_id": "2021000100000001", "version": "3"},
    {"action": "report_invalid", "auth_app_id": "2021000100000001", "version": 0},
    {"action": "report_invalid", "auth_app_id": "2021000100000001", "version": True},
    {"action": "get_token", "auth_app_id": "2021000100000001", "pad": "x" * 5000},
]


@pytest.mark.usefixtures("clock")
@pytest.mark.filterwarnings("ignore:No application metrics to publish")
def test_a_malformed_request_is_a_bad_request_and_touches_nothing(service: ServiceStack):
    calls = Calls(aws.dynamodb(), "dynamodb")
    for event in MALFORMED_EVENTS:
        answer = invoke(event)
        assert answer["ok"] is False, event
        assert answer["error"]["code"] == "bad_request", (event, answer)
        assert answer["error"]["retryable"] is False
        assert len(answer["error"]["message"]) < 300
    # Refused before touching the table (the cursor check is the store's, and reads nothing).
    assert not calls.counts


# --- the cache ---------------------------------------------------------------------------------


def test_the_cache_serves_within_its_age_then_reads_one_item(
    service: ServiceStack, ctl: SimulatorControl, clock: Clock
):
    grant = authorize(ctl)
    calls = Calls(aws.dynamodb(), "dynamodb")
    first = get_token(grant.auth_app_id)
    assert calls.counts == {"GetItem": 1}
    clock.now += CACHE_SECONDS - 1
    assert get_token(grant.auth_app_id) == first
    assert calls.counts == {"GetItem": 1}
    clock.now += 2  # past the cache age: one read again, same version
    assert get_token(grant.auth_app_id) == first
    assert calls.counts == {"GetItem": 2}
    assert get_token(grant.auth_app_id, consistent=True) == first
    assert calls.counts == {"GetItem": 3}


def test_a_newer_version_replaces_the_cached_token_and_an_end_evicts_it(
    service: ServiceStack, ctl: SimulatorControl, clock: Clock
):
    grant = authorize(ctl)
    assert get_token(grant.auth_app_id)["version"] == 1
    again = authorize(ctl, auth_app_id=grant.auth_app_id)  # re-authorization: version 2
    assert get_token(grant.auth_app_id)["version"] == 1  # still within the cache age
    fresh = get_token(grant.auth_app_id, consistent=True)
    assert (fresh["version"], fresh["app_auth_token"]) == (2, again.app_auth_token)
    assert get_token(grant.auth_app_id)["app_auth_token"] == again.app_auth_token
    runtime().store.mark_revoked(
        grant.auth_app_id, cancelled_at=again.answered_at or again.received_at, reason="x"
    )
    assert get_token(grant.auth_app_id, consistent=True)["error"]["code"] == STATUS_REVOKED
    # The revocation seen once is not hidden by the token cached before it.
    assert get_token(grant.auth_app_id)["error"]["code"] == STATUS_REVOKED


def test_a_miss_is_not_cached(service: ServiceStack, ctl: SimulatorControl, clock: Clock):
    minted = ctl.codes()
    auth_app_id = minted["auth_app_ids"][0]
    assert get_token(auth_app_id)["error"]["code"] == "not_found"
    grant = runtime().client().exchange_code(minted["app_auth_code"]).single()
    runtime().store.save_grant(grant, source="authorization")
    # Same instant: a cached miss would still say not_found.
    assert get_token(auth_app_id)["app_auth_token"] == grant.app_auth_token


# --- required_methods, describe --------------------------------------------------------------


def test_required_methods_are_asked_once_then_checked_from_the_item(
    service: ServiceStack, ctl: SimulatorControl, clock: Clock
):
    grant = authorize(ctl)
    answer = get_token(grant.auth_app_id, required_methods=["alipay.trade.create"])
    assert answer["ok"] is True
    assert "alipay.trade.create" in answer["auth_methods"]
    assert alipay_calls(ctl)[QUERY_METHOD] == 1
    clock.now += CACHE_SECONDS + 1  # from the table now, not the cache: still no Alipay call
    missing = get_token(
        grant.auth_app_id,
        required_methods=["alipay.trade.create", "alipay.fund.trans.uni.transfer"],
    )
    assert missing["ok"] is False
    assert missing["error"]["code"] == "method_not_authorized"
    assert missing["error"]["missing_methods"] == ["alipay.fund.trans.uni.transfer"]
    assert "app_auth_token" not in missing
    assert alipay_calls(ctl)[QUERY_METHOD] == 1


@pytest.mark.usefixtures("clock")
def test_describe_answers_live_and_stores_what_alipay_said(
    service: ServiceStack, ctl: SimulatorControl
):
    grant = authorize(ctl)
    answer = invoke({"action": "describe", "auth_app_id": grant.auth_app_id})
    assert answer["ok"] is True
    assert answer["alipay_status"] == "valid"
    assert answer["auth_methods"]
    assert answer["auth_start"]
    assert answer["auth_end"]
    assert answer["verified_at"] is not None
    assert "app_auth_token" not in answer
    stored = runtime().store.get(grant.auth_app_id)
    assert stored is not None
    assert stored.auth_methods == tuple(answer["auth_methods"])
    assert (stored.auth_end, stored.version) == (answer["auth_end"], 1)


@pytest.mark.usefixtures("clock")
def test_describe_of_a_silently_cancelled_merchant_revokes_it(
    service: ServiceStack, ctl: SimulatorControl, lifecycle_events: EventCapture
):
    grant = authorize(ctl)
    lifecycle_events.read()
    ctl.revoke(grant.auth_app_id)  # no notification
    answer = invoke({"action": "describe", "auth_app_id": grant.auth_app_id})
    assert answer["ok"] is False
    assert answer["error"]["code"] == STATUS_REVOKED
    assert answer["alipay_status"] == "invalid"
    assert get_token(grant.auth_app_id, consistent=True)["error"]["code"] == STATUS_REVOKED
    (event,) = lifecycle_events.read()
    assert event["detail-type"] == "appauth.authorization.revoked"
    assert event["detail"]["auth_app_id"] == grant.auth_app_id


# --- list, by user -----------------------------------------------------------------------------


@pytest.mark.usefixtures("clock")
def test_list_pages_through_every_status_without_tokens(
    service: ServiceStack, ctl: SimulatorControl
):
    grants = [authorize(ctl) for _ in range(5)]
    store = runtime().store
    cancelled = grants[0]
    store.mark_revoked(
        cancelled.auth_app_id,
        cancelled_at=cancelled.answered_at or cancelled.received_at,
        reason="x",
    )
    seen: list[dict[str, Any]] = []
    cursor = None
    pages = 0
    while True:
        request: dict[str, Any] = {"action": "list", "limit": 2}
        if cursor:
            request["cursor"] = cursor
        answer = invoke(request)
        assert answer["ok"] is True
        assert len(answer["items"]) <= 2
        seen.extend(answer["items"])
        pages += 1
        cursor = answer["cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert sorted(i["auth_app_id"] for i in seen) == sorted(g.auth_app_id for g in grants)
    statuses = {i["auth_app_id"]: i["status"] for i in seen}
    assert statuses[cancelled.auth_app_id] == STATUS_REVOKED
    text = json.dumps(seen)
    assert not any(g.app_auth_token in text or g.app_refresh_token in text for g in grants)
    only = invoke({"action": "list", "status": STATUS_REVOKED})
    assert [i["auth_app_id"] for i in only["items"]] == [cancelled.auth_app_id]
    assert only["cursor"] is None


@pytest.mark.usefixtures("clock")
def test_get_token_by_user_id_returns_every_app_of_that_user(
    service: ServiceStack, ctl: SimulatorControl
):
    user_id = "2088000000004242"
    first, second = authorize(ctl, user_id=user_id), authorize(ctl, user_id=user_id)
    runtime().store.mark_revoked(
        second.auth_app_id, cancelled_at=second.answered_at or second.received_at, reason="x"
    )
    authorize(ctl)  # another user
    answer = invoke({"action": "get_token", "user_id": user_id})
    assert answer["ok"] is True
    assert answer["user_id"] == user_id
    assert answer["truncated"] is False
    by_app = {a["auth_app_id"]: a for a in answer["authorizations"]}
    assert set(by_app) == {first.auth_app_id, second.auth_app_id}
    assert by_app[first.auth_app_id]["app_auth_token"] == first.app_auth_token
    assert by_app[second.auth_app_id]["error"]["code"] == STATUS_REVOKED
    nobody = invoke({"action": "get_token", "user_id": "2088000000009999"})
    assert nobody["error"]["code"] == "not_found"


# --- report_invalid ----------------------------------------------------------------------------


@pytest.mark.usefixtures("clock")
def test_a_stale_report_changes_nothing_and_returns_the_current_token(
    service: ServiceStack, ctl: SimulatorControl
):
    grant = authorize(ctl)
    again = authorize(ctl, auth_app_id=grant.auth_app_id)
    before = alipay_calls(ctl)
    answer = invoke({"action": "report_invalid", "auth_app_id": grant.auth_app_id, "version": 1})
    assert answer["report"] == "stale"
    assert (answer["version"], answer["app_auth_token"]) == (2, again.app_auth_token)
    assert alipay_calls(ctl) == before  # Alipay was not even asked
    stored = runtime().store.get(grant.auth_app_id)
    assert stored is not None
    assert (stored.version, stored.status) == (2, STATUS_GRANTED)


@pytest.mark.usefixtures("clock")
def test_a_report_alipay_contradicts_keeps_the_token(service: ServiceStack, ctl: SimulatorControl):
    grant = authorize(ctl)
    answer = invoke({"action": "report_invalid", "auth_app_id": grant.auth_app_id, "version": 1})
    assert answer["ok"] is True
    assert answer["report"] == "valid"
    assert answer["app_auth_token"] == grant.app_auth_token
    assert alipay_calls(ctl)[QUERY_METHOD] == 1
    stored = runtime().store.get(grant.auth_app_id)
    assert stored is not None
    assert (stored.version, stored.status) == (1, STATUS_GRANTED)


@pytest.mark.usefixtures("clock")
def test_a_confirmed_report_revokes_a_cancelled_merchant_with_its_event(
    service: ServiceStack, ctl: SimulatorControl, lifecycle_events: EventCapture
):
    grant = authorize(ctl)
    lifecycle_events.read()
    ctl.revoke(grant.auth_app_id)
    answer = invoke({"action": "report_invalid", "auth_app_id": grant.auth_app_id, "version": 1})
    assert answer["ok"] is False
    assert answer["report"] == "confirmed"
    assert answer["error"]["code"] == STATUS_REVOKED
    assert [e["detail-type"] for e in lifecycle_events.read()] == ["appauth.authorization.revoked"]
    # A second report (the version is no longer current) changes nothing more.
    again = invoke({"action": "report_invalid", "auth_app_id": grant.auth_app_id, "version": 1})
    assert again["report"] == "stale"
    assert again["error"]["code"] == STATUS_REVOKED
    assert lifecycle_events.read() == []


@pytest.mark.usefixtures("clock")
@pytest.mark.parametrize(
    ("rule", "expected"), [("refuse", STATUS_NEEDS_REAUTH), ("same_pair", STATUS_GRANTED)]
)
def test_a_token_alipay_no_longer_knows_is_reconciled_by_the_refresh_run_not_ended_here(
    service: ServiceStack, ctl: SimulatorControl, rule: str, expected: str
):
    """The token is dead but its refresh token may not be (a rotation whose answer was lost):
    the report asks the refresh run to reconcile; only a refused refresh ends the merchant."""
    grace = 0 if rule == "refuse" else 86400
    ctl.behaviour(superseded_refresh=rule, token_grace_seconds=0, refresh_grace_seconds=grace)
    grant = authorize(ctl)
    rotate_elsewhere(grant)  # the new pair never reached the service: the stored one is dead
    ctl.advance_clock(1)
    answer = invoke({"action": "report_invalid", "auth_app_id": grant.auth_app_id, "version": 1})
    assert answer["ok"] is False
    assert (answer["error"]["code"], answer["error"]["retryable"]) == ("unavailable", True)
    stored = runtime().store.get(grant.auth_app_id)
    assert stored is not None
    assert (stored.status, stored.version) == (STATUS_GRANTED, 1)
    assert stored.reconcile_reason is not None
    assert stored.next_refresh_at is not None
    assert stored.next_refresh_at <= datetime.now(UTC)
    run = runtime().refresher(owner="run-1", time_left=lambda: 900.0, function_timeout=900.0)
    report = run.refresh_due()
    assert report.reconciled == 1
    after = runtime().store.get(grant.auth_app_id)
    assert after is not None
    assert after.status == expected
    if expected == STATUS_GRANTED:  # Alipay replayed the pair it had issued: recovered
        record = ctl.merchant(grant.auth_app_id)
        assert record is not None
        assert runtime().store.open_tokens(after)[0] == record["current"]["app_auth_token"]


@pytest.mark.usefixtures("clock")
def test_a_report_never_ends_a_merchant_a_dead_run_left_leased(
    service: ServiceStack, ctl: SimulatorControl
):
    """A run died holding the lease (its lease lapsed, no reconcile mark): it may have rotated
    at Alipay. The report must leave the merchant to the reconciliation, even if Alipay's query
    about the stored token says invalid."""
    grant = authorize(ctl)
    store = runtime().store
    long_ago = datetime.now(UTC) - timedelta(hours=2)
    assert store.acquire_lease(
        grant.auth_app_id, version=1, now=long_ago, seconds=60, owner="dead-run"
    )
    ctl.revoke(grant.auth_app_id)
    answer = invoke({"action": "report_invalid", "auth_app_id": grant.auth_app_id, "version": 1})
    assert (answer["error"]["code"], answer["error"]["retryable"]) == ("unavailable", True)
    stored = store.get(grant.auth_app_id)
    assert stored is not None
    assert (stored.status, stored.lease_owner) == (STATUS_GRANTED, "dead-run")


@pytest.mark.usefixtures("clock")
def test_the_end_is_fenced_on_the_lease_at_the_write_not_only_at_the_read(
    service: ServiceStack, ctl: SimulatorControl
):
    grant = authorize(ctl)
    store = runtime().store
    read = store.get(grant.auth_app_id)
    assert read is not None
    # A refresh takes the merchant between the read and the write.
    assert store.acquire_lease(
        grant.auth_app_id, version=1, now=datetime.now(UTC), seconds=900, owner="run-1"
    )
    assert not store.end_confirmed(
        read, Transition.REVOKED, reason="report", confirmed_at=datetime.now(UTC)
    )
    stored = store.get(grant.auth_app_id)
    assert stored is not None
    assert (stored.status, stored.lease_owner) == (STATUS_GRANTED, "run-1")


@pytest.mark.usefixtures("clock")
def test_a_reauthorization_forgets_what_alipay_said_about_the_old_grant(
    service: ServiceStack, ctl: SimulatorControl
):
    grant = authorize(ctl)
    assert invoke({"action": "describe", "auth_app_id": grant.auth_app_id})["ok"] is True
    store = runtime().store
    described = store.get(grant.auth_app_id)
    assert described is not None
    assert described.auth_methods is not None
    authorize(ctl, auth_app_id=grant.auth_app_id)
    again = store.get(grant.auth_app_id)
    assert again is not None
    assert (again.version, again.auth_methods, again.auth_end, again.verified_at) == (
        2,
        None,
        None,
        None,
    )
    # ...while a rotation of the same grant keeps it.
    run = runtime().refresher(owner="run-1", time_left=lambda: 900.0, function_timeout=900.0)
    assert invoke({"action": "describe", "auth_app_id": grant.auth_app_id})["ok"] is True
    assert run.refresh_now([grant.auth_app_id]).count(Outcome.ROTATED) == 1
    rotated = store.get(grant.auth_app_id)
    assert rotated is not None
    assert rotated.version == 3
    assert rotated.auth_methods is not None


@pytest.mark.usefixtures("clock")
def test_a_report_during_a_rotation_is_left_to_the_refresh_run(
    service: ServiceStack, ctl: SimulatorControl
):
    grant = authorize(ctl)
    store = runtime().store
    lease = store.acquire_lease(
        grant.auth_app_id, version=1, now=datetime.now(UTC), seconds=900, owner="run-1"
    )
    assert lease is not None
    ctl.revoke(grant.auth_app_id)
    answer = invoke({"action": "report_invalid", "auth_app_id": grant.auth_app_id, "version": 1})
    assert answer["error"]["code"] == "unavailable"
    assert answer["error"]["retryable"] is True
    stored = store.get(grant.auth_app_id)
    assert stored is not None
    assert (stored.status, stored.lease_owner) == (STATUS_GRANTED, "run-1")


@pytest.mark.usefixtures("clock")
def test_a_report_when_alipay_is_down_changes_nothing(service: ServiceStack, ctl: SimulatorControl):
    grant = authorize(ctl)
    ctl.add_rule(method=QUERY_METHOD, fault="error", count=10)
    answer = invoke({"action": "report_invalid", "auth_app_id": grant.auth_app_id, "version": 1})
    assert answer["error"]["code"] == "unavailable"
    assert answer["error"]["retryable"] is True
    stored = runtime().store.get(grant.auth_app_id)
    assert stored is not None
    assert (stored.version, stored.status) == (1, STATUS_GRANTED)
    assert stored.alipay_status is None  # nothing Alipay did not say is recorded


# --- failures are data -------------------------------------------------------------------------


@pytest.mark.usefixtures("clock")
@pytest.mark.parametrize(
    "case",
    [
        ("dynamodb", "get_item", "ProvisionedThroughputExceededException", "unavailable", True),
        ("dynamodb", "get_item", "InternalServerError", "unavailable", True),
        ("dynamodb", "get_item", "AccessDeniedException", "misconfigured", False),
        ("dynamodb", "get_item", "ResourceNotFoundException", "misconfigured", False),
        ("kms", "decrypt", "ThrottlingException", "unavailable", True),
        ("kms", "decrypt", "KMSInternalException", "unavailable", True),
        ("kms", "decrypt", "AccessDeniedException", "misconfigured", False),
        ("kms", "decrypt", "DisabledException", "misconfigured", False),
    ],
)
def test_aws_errors_are_answers_that_say_whether_to_retry(
    service: ServiceStack,
    ctl: SimulatorControl,
    case: tuple[str, str, str, str, bool],
    function_logs: io.StringIO,
):
    service_name, operation, error, code, retryable = case
    grant = authorize(ctl)
    faulty = inject(service_name)
    faulty.fail_always(operation, client_error(error, operation))
    answer = get_token(grant.auth_app_id)
    assert faulty.fired >= 1
    assert answer["ok"] is False
    assert (answer["error"]["code"], answer["error"]["retryable"]) == (code, retryable)
    text = json.dumps(answer) + function_logs.getvalue()
    assert "Traceback" not in text
    assert grant.app_auth_token not in text
    faulty.heal()
    assert get_token(grant.auth_app_id)["app_auth_token"] == grant.app_auth_token


@pytest.mark.usefixtures("clock")
def test_aws_out_of_reach_is_retryable(service: ServiceStack, ctl: SimulatorControl):
    grant = authorize(ctl)
    faulty = inject("dynamodb")
    faulty.fail_always("get_item", EndpointConnectionError(endpoint_url="https://dynamodb"))
    answer = get_token(grant.auth_app_id)
    assert (answer["error"]["code"], answer["error"]["retryable"]) == ("unavailable", True)


@pytest.mark.usefixtures("clock")
@pytest.mark.parametrize(
    ("error", "code", "retryable"),
    [
        ("ThrottlingException", "unavailable", True),
        ("InternalServerError", "unavailable", True),
        ("AccessDeniedException", "misconfigured", False),
    ],
)
def test_ssm_failing_is_an_answer_and_a_look_up_does_not_need_it(
    service: ServiceStack, ctl: SimulatorControl, error: str, code: str, retryable: bool
):
    grant = authorize(ctl)
    reset_runtime()  # a cold container: the secrets are read from SSM on first use
    faulty = inject("ssm")
    faulty.fail_always("get_parameter", client_error(error, "GetParameter"))
    answer = invoke({"action": "describe", "auth_app_id": grant.auth_app_id})
    assert faulty.fired >= 1
    assert answer["ok"] is False
    assert (answer["error"]["code"], answer["error"]["retryable"]) == (code, retryable)
    assert "Traceback" not in json.dumps(answer)
    # A plain look-up needs no secret from SSM: it still works.
    assert get_token(grant.auth_app_id)["app_auth_token"] == grant.app_auth_token


@pytest.mark.filterwarnings("ignore:No application metrics to publish")
def test_a_misconfigured_function_answers_misconfigured_without_a_trace(
    service: ServiceStack, clock: Clock, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("TOKENS_TABLE")
    reset_runtime()
    answer = get_token("2021000100000009")
    assert answer["ok"] is False
    assert answer["error"] == {
        "code": "misconfigured",
        "message": "the token service is misconfigured (TOKENS_TABLE)",
        "retryable": False,
    }


# --- fuzzing -----------------------------------------------------------------------------------

_json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=40)
_values = st.recursive(
    _json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
_field_names = st.sampled_from(
    [
        "action",
        "auth_app_id",
        "user_id",
        "required_methods",
        "consistent",
        "status",
        "cursor",
        "limit",
        "version",
    ]
) | st.text(max_size=12)
_actions = st.sampled_from(["get_token", "describe", "list", "report_invalid", "GET_TOKEN", ""])
_requests = st.one_of(
    _values,
    st.dictionaries(_field_names, _values, max_size=6),
    st.fixed_dictionaries(
        {"action": _actions},
        optional={
            "auth_app_id": st.from_regex(r"\A[0-9]{1,33}\Z") | _values,
            "user_id": st.from_regex(r"\A2088[0-9]{12}\Z") | _values,
            "version": st.integers() | _values,
            "limit": st.integers() | _values,
            "cursor": st.text(max_size=600),
            "required_methods": st.lists(st.text(max_size=30), max_size=25) | _values,
        },
    ),
)


@pytest.mark.usefixtures("clock")
@pytest.mark.filterwarnings("ignore:No application metrics to publish")
@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(event=_requests)
def test_no_payload_makes_the_function_raise_or_leak(service: ServiceStack, event: Any):
    answer = invoke(event)
    assert isinstance(answer.get("ok"), bool)
    if not answer["ok"]:
        error = answer["error"]
        assert error["code"] in {
            "not_found",
            "revoked",
            "needs_reauth",
            "method_not_authorized",
            "bad_request",
            "unavailable",
            "misconfigured",
        }
        assert isinstance(error["retryable"], bool)
        assert "Traceback" not in error["message"]
        assert "/" not in error["message"][:1]
        # Unknown merchants and bad requests only: nothing here may look like an outage.
        assert error["code"] in {"bad_request", "not_found"}, (event, answer)
