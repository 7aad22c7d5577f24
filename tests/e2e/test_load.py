"""Load on loopback through the real handlers, bounded in count and time, with the bench's driver
(``appauth_dev.load``; ``make bench`` runs it bigger): concurrent callback redirects behind the
HTTP front and concurrent token queries fail nothing and answer no 5xx, and every stored pair,
and every token answered, is the one the simulator issued."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from appauth.runtime import runtime
from appauth_dev.load import (
    Granted,
    Outcome,
    authorize_merchants,
    callback_requests,
    grant_merchants,
    issued_tokens,
    run_load,
    token_mismatches,
    token_query_requests,
)
from appauth_dev.local_cmd import FrontedService, fronted_service
from appauth_dev.local_lambda import LocalLambdaClient

CALLBACKS = 8
TOKEN_QUERIES = 80
CONCURRENCY = 4
TIME_LIMIT = 60.0  # seconds; the run takes about one (a bound, never reached when all is well)
TOKEN_QUERY_FUNCTION = "appauth-local-token_query"


@pytest.fixture(scope="module")
def fronted() -> Iterator[FrontedService]:
    """The local service behind its HTTP front; grant notifications off, so each redirect is
    the one exchange and the one stored pair."""
    with fronted_service() as running:
        running.control.notification_settings(grant_notifications=False)
        yield running


def test_concurrent_callbacks_and_token_queries_fail_nothing(fronted: FrontedService) -> None:
    redirects = authorize_merchants(fronted, CALLBACKS)
    granted = Granted()
    callbacks = run_load(
        "callback",
        callback_requests(fronted.front.url, redirects, granted),
        concurrency=CONCURRENCY,
        time_limit=TIME_LIMIT,
    )
    assert (callbacks.attempted, callbacks.succeeded) == (CALLBACKS, CALLBACKS), callbacks.failures
    assert (callbacks.server_errors, callbacks.not_sent) == (0, 0)
    assert len(set(granted.auth_app_ids)) == CALLBACKS
    assert token_mismatches(runtime().store, fronted.control, granted.auth_app_ids) == []

    expected = issued_tokens(fronted.control, granted.auth_app_ids)
    client = LocalLambdaClient.for_service(fronted.service)
    queries = run_load(
        "token_query",
        token_query_requests(client, TOKEN_QUERY_FUNCTION, expected, TOKEN_QUERIES),
        concurrency=CONCURRENCY,
        time_limit=TIME_LIMIT,
    )
    assert (queries.attempted, queries.succeeded) == (TOKEN_QUERIES, TOKEN_QUERIES), (
        queries.failures
    )
    assert (queries.server_errors, queries.not_sent) == (0, 0)


def test_the_load_counts_every_redirect_alipay_refuses(fronted: FrontedService) -> None:
    """The fault injected: Alipay answers every exchange "service unavailable". Each callback is
    counted failed with a 5xx, none is granted, and the token query knows none of them."""
    redirects = authorize_merchants(fronted, 3)
    granted = Granted()
    fronted.control.faults(error_rate=1.0)
    try:
        report = run_load(
            "callback",
            callback_requests(fronted.front.url, redirects, granted),
            concurrency=CONCURRENCY,
            time_limit=TIME_LIMIT,
        )
    finally:
        fronted.control.faults(error_rate=0.0)
    assert (report.attempted, report.failed, report.server_errors) == (3, 3, 3)
    assert report.error_rate == 1.0
    assert granted.auth_app_ids == []


def test_a_wrong_token_is_a_failed_query(fronted: FrontedService) -> None:
    """A token query answering anything but the token Alipay issued counts as failed."""
    [auth_app_id] = grant_merchants(fronted, 1)
    client = LocalLambdaClient.for_service(fronted.service)
    wrong = {auth_app_id: "201901BB" + "0" * 32 + "X00"}
    report = run_load(
        "token_query",
        token_query_requests(client, TOKEN_QUERY_FUNCTION, wrong, 3),
        concurrency=1,
        time_limit=TIME_LIMIT,
    )
    assert (report.attempted, report.failed) == (3, 3)
    assert report.failures == {"not the token Alipay issued": 3}


class SteppingClock:
    """A clock each request moves forward by one second: timing without sleeping."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def request(self) -> Outcome:
        self.now += 1.0
        return Outcome(True, 200)


def test_a_load_stops_sending_when_its_time_is_up() -> None:
    clock = SteppingClock()
    report = run_load("bounded", [clock.request] * 10, concurrency=1, time_limit=2.5, clock=clock)
    # Sent at 0, 1 and 2 s; at 3 s the limit has passed and the other seven are not sent.
    assert (report.attempted, report.succeeded, report.not_sent) == (3, 3, 7)
    assert report.elapsed == 3.0
    assert report.latency(0.5) == 1.0


def test_a_request_that_raises_is_a_failure_by_its_type() -> None:
    def broken() -> Outcome:
        raise ConnectionResetError

    report = run_load("broken", [broken, broken], concurrency=2, time_limit=10)
    assert (report.attempted, report.failed) == (2, 2)
    assert report.failures == {"ConnectionResetError": 2}
