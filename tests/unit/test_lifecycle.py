"""The lifecycle's states and transitions, the refresh's backoff, rate limit, budget and request
parsing: pure rules, no AWS."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta

import pytest

from appauth.alipay.client import AlipayClient, RetryPolicy
from appauth.errors import InvalidRequestError
from appauth.events import EventBridgePublisher
from appauth.lifecycle import LifecycleEvent, Status, Transition, transition_for_source
from appauth.refresh import TRANSIENT_BACKOFF, Backoff, Budget, RefreshRequest, TokenBucket

AT = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def test_every_transition_names_its_event_and_resulting_status():
    assert {t.detail_type for t in Transition} == {
        "appauth.authorization.granted",
        "appauth.authorization.refreshed",
        "appauth.authorization.recovered",
        "appauth.authorization.needs_reauth",
        "appauth.authorization.revoked",
        "appauth.authorization.refresh_failed",
    }
    assert Transition.NEEDS_REAUTH.status is Status.NEEDS_REAUTH
    assert Transition.REVOKED.status is Status.REVOKED
    assert Transition.REFRESH_FAILED.status is Status.GRANTED  # never a status change


def test_only_a_new_authorization_or_a_recovered_pair_leaves_a_dead_state():
    for dead in (Status.NEEDS_REAUTH, Status.REVOKED):
        assert Transition.GRANTED.allowed_from(dead)
        assert Transition.RECOVERED.allowed_from(dead)
        assert not Transition.REFRESHED.allowed_from(dead)
        assert not Transition.REFRESH_FAILED.allowed_from(dead)
    assert not Transition.NEEDS_REAUTH.allowed_from(Status.REVOKED)
    assert Transition.REVOKED.allowed_from(None)  # a cancellation may overtake its pair


@pytest.mark.parametrize(
    ("source", "transition"),
    [
        ("authorization", Transition.GRANTED),
        ("notification", Transition.GRANTED),
        ("refresh", Transition.REFRESHED),
        ("reconcile", Transition.RECOVERED),
        ("refresh+parked", Transition.RECOVERED),
        ("authorization+parked", Transition.RECOVERED),
        ("refresh+parked+rescued", Transition.RECOVERED),
    ],
)
def test_the_source_of_a_pair_decides_its_transition(source: str, transition: Transition):
    assert transition_for_source(source) is transition


def test_an_event_detail_holds_no_token_and_says_what_the_issue_asks():
    event = LifecycleEvent(
        Transition.REFRESH_FAILED, "2021004200000001", 3, AT, "alipay_20000", "2088", {"attempt": 2}
    )
    assert event.detail() == {
        "auth_app_id": "2021004200000001",
        "user_id": "2088",
        "version": 3,
        "status": "granted",
        "reason": "alipay_20000",
        "at": "2026-12-01T08:00:00.000+00:00",
        "attempt": 2,
    }


class _Events:
    def __init__(self, failures: int, *, entry_error: bool = False) -> None:
        self.failures = failures
        self.entry_error = entry_error
        self.calls: list[dict[str, object]] = []

    def put_events(self, Entries: list[dict[str, object]]) -> dict[str, object]:  # noqa: N803
        self.calls.append(Entries[0])
        if self.failures:
            self.failures -= 1
            if self.entry_error:
                return {"FailedEntryCount": 1, "Entries": [{"ErrorCode": "InternalFailure"}]}
            from botocore.exceptions import EndpointConnectionError  # noqa: PLC0415

            raise EndpointConnectionError(endpoint_url="http://events")
        return {"FailedEntryCount": 0, "Entries": [{"EventId": "1"}]}


@pytest.mark.parametrize("entry_error", [False, True])
def test_the_publisher_retries_then_counts_and_never_raises(entry_error: bool):
    event = LifecycleEvent(Transition.REFRESHED, "2021004200000001", 2, AT, "refresh")
    flaky = _Events(failures=2, entry_error=entry_error)
    publisher = EventBridgePublisher(flaky, "bus", sleep=lambda _s: None)  # type: ignore[arg-type]
    publisher.publish(event)
    assert publisher.take_counts() == (1, 0)
    assert len(flaky.calls) == 3
    assert flaky.calls[0]["DetailType"] == "appauth.authorization.refreshed"
    assert flaky.calls[0]["Source"] == "appauth"
    assert flaky.calls[0]["EventBusName"] == "bus"
    assert json.loads(str(flaky.calls[0]["Detail"]))["version"] == 2

    down = _Events(failures=99, entry_error=entry_error)
    publisher = EventBridgePublisher(down, "bus", sleep=lambda _s: None)  # type: ignore[arg-type]
    publisher.publish(event)  # does not raise
    assert publisher.take_counts() == (0, 1)
    assert publisher.take_counts() == (0, 0)  # counts are per invocation


def test_backoff_grows_exponentially_with_jitter_and_is_capped():
    rng = random.Random(7)  # noqa: S311 - jitter, not a secret
    backoff = Backoff(timedelta(minutes=5), timedelta(hours=1))
    for failures, ceiling in ((1, 5), (2, 10), (3, 20), (4, 40), (5, 60), (9, 60)):
        for _ in range(20):
            delay = backoff.delay(failures, rng)
            assert timedelta(minutes=ceiling) / 2 <= delay <= timedelta(minutes=ceiling)
    assert TRANSIENT_BACKOFF.delay(30, rng) <= TRANSIENT_BACKOFF.cap


def test_the_token_bucket_admits_the_rate_and_makes_the_rest_wait():
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    bucket = TokenBucket(10, burst=2, monotonic=lambda: now[0], sleep=sleep)
    for _ in range(12):
        bucket.acquire()
    # Two at once (the burst), then one every 0.1 s: ten more take a second.
    assert now[0] == pytest.approx(1.0)
    assert all(s == pytest.approx(0.1) for s in slept)
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(0)


def _client(connect: float, read: float, attempts: int) -> AlipayClient:
    return AlipayClient(
        None,  # type: ignore[arg-type]  # the budget needs only the timeouts
        connect_timeout=connect,
        read_timeout=read,
        retry=RetryPolicy(attempts=attempts, max_delay=1.0),
    )


def test_the_budget_comes_from_the_configured_timeouts():
    client = _client(3.0, 10.0, 3)
    assert client.worst_case_seconds(retry_safe=False) == 3 * 3.0 + 10.0 + 2 * 1.0
    assert client.worst_case_seconds(retry_safe=True) == 3 * (3.0 + 10.0) + 2 * 1.0
    budget = Budget.for_client(client, aws_call=24.0)
    assert budget.reserve == budget.refresh_call + budget.store
    assert budget.store > budget.store_attempts * 24.0
    slower = Budget.for_client(_client(3.0, 30.0, 3), aws_call=24.0)
    assert slower.reserve == budget.reserve + 20.0
    assert budget.lease_seconds(900) == 900 + 60
    assert budget.lease_seconds(10) == budget.reserve + budget.confirm + 60


@pytest.mark.parametrize(
    ("event", "ids"),
    [
        ({}, ()),
        (None, ()),
        ({"due": True}, ()),
        ({"auth_app_ids": ["2021004200000001"]}, ("2021004200000001",)),
        ({"auth_app_ids": ["2021004200000001", "2021004200000001"]}, ("2021004200000001",)),
    ],
)
def test_refresh_requests(event: object, ids: tuple[str, ...]):
    assert RefreshRequest.from_event(event).auth_app_ids == ids


@pytest.mark.parametrize(
    "event",
    [
        {"due": "yes"},
        {"auth_app_ids": []},
        {"auth_app_ids": [1]},
        {"auth_app_ids": ["x" * 5000]},
        {"source": "aws.scheduler"},
        "due",
    ],
)
def test_malformed_refresh_requests_are_refused(event: object):
    with pytest.raises(InvalidRequestError):
        RefreshRequest.from_event(event)
