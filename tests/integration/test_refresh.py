"""The scheduled refresh function, invoked in-process as Lambda would, against the local stack and simulator.

Grants are real pairs from the simulator; the ones meant to be due are stored as if received
~400 days ago (so their refresh time has passed) while the simulator still honours them.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
import requests

import refresh_app
from appauth.alipay.models import TokenGrant
from appauth.parking import park_grants, parked_message
from appauth.refresh import TRANSIENT_BACKOFF
from appauth.runtime import runtime
from appauth.store import STATUS_GRANTED, app_pk
from appauth_dev.local_service import FakeContext
from tests.integration.conftest import REGION, ServiceStack

EVENT = json.loads(
    (Path(__file__).parents[2] / "events" / "refresh_schedule.json").read_text(encoding="utf-8")
)
TOKEN_METHOD = "alipay.open.auth.token.app"
LONG_AGO = timedelta(days=400)


@pytest.fixture
def cold_start(service: ServiceStack) -> ServiceStack:
    """Import the handler in the service's environment (Powertools reads it at import)."""
    importlib.reload(refresh_app)
    return service


def run(context: FakeContext | None = None) -> dict[str, Any]:
    result: dict[str, Any] = refresh_app.lambda_handler(
        EVENT, context or FakeContext(function_name="appauth-refresh", remaining_ms=900_000)
    )
    return result


def exchange(service: ServiceStack, **body: Any) -> list[TokenGrant]:
    minted = requests.post(f"{service.simulator.url}/simulator/codes", json=body, timeout=5)
    minted.raise_for_status()
    return list(runtime().client().exchange_code(minted.json()["app_auth_code"]).grants)


def store_pair(grant: TokenGrant, *, age: timedelta = timedelta(0)) -> TokenGrant:
    stored = replace(grant, received_at=grant.received_at - age)
    assert runtime().store.save_grant(stored, source="authorization", merchant_ref="shop-1").stored
    return stored


def token_calls(service: ServiceStack) -> dict[str, int]:
    stats = requests.get(f"{service.simulator.url}/simulator/stats", timeout=5).json()
    return dict(stats["requests"].get(TOKEN_METHOD, {}))


def raw_item(service: ServiceStack, auth_app_id: str) -> dict[str, Any]:
    dynamodb = boto3.client("dynamodb", region_name=REGION, endpoint_url=service.aws.endpoint_url)
    item = dynamodb.get_item(
        TableName=service.aws.stack.tokens_table,
        Key={"pk": {"S": app_pk(auth_app_id)}, "sk": {"S": "AUTH"}},
        ConsistentRead=True,
    )["Item"]
    return dict(item)


def test_each_due_merchant_is_refreshed_exactly_once(cold_start: ServiceStack):
    service = cold_start
    due = [store_pair(g, age=LONG_AGO) for g in exchange(service, batch_size=3)]
    (fresh,) = exchange(service)
    store_pair(fresh)
    fresh_before = runtime().store.get(fresh.auth_app_id)
    assert fresh_before is not None
    before = token_calls(service)
    started = datetime.now(UTC)

    result = run()

    assert result["due"] == 3
    assert result["rotated"] == 3
    assert result["parked_drained"] == 0
    assert result["skipped_leased"] == result["deferred_transient"] == result["lost"] == 0
    after = token_calls(service)
    assert after["success"] - before["success"] == 3  # one refresh call per due merchant
    store = runtime().store
    client = runtime().client()
    for old in due:
        stored = store.get(old.auth_app_id)
        assert stored is not None
        assert (stored.status, stored.version) == (STATUS_GRANTED, 2)
        assert stored.merchant_ref == "shop-1"
        assert stored.token_issued_at is not None
        assert stored.token_issued_at >= started - timedelta(seconds=1)
        assert stored.next_refresh_at is not None
        assert stored.next_refresh_at > started + timedelta(days=30)
        token, refresh_token = store.open_tokens(stored)
        assert (token, refresh_token) != (old.app_auth_token, old.app_refresh_token)
        info = client.query_authorization(token)
        assert info.valid
        assert info.auth_app_id == old.auth_app_id
        assert "lease_until" not in raw_item(service, old.auth_app_id)
        assert [e.detail.get("source") for e in store.events(old.auth_app_id)].count("refresh") == 1
    assert store.get(fresh.auth_app_id) == fresh_before  # not due: untouched

    # A second run finds nothing to do and calls Alipay not once.
    again = run()
    assert again["due"] == again["rotated"] == 0
    assert token_calls(service) == after


def test_alipay_errors_defer_the_refresh_without_changing_the_status(cold_start: ServiceStack):
    service = cold_start
    due = [store_pair(g, age=LONG_AGO) for g in exchange(service, batch_size=2)]
    requests.post(f"{service.simulator.url}/simulator/faults", json={"error_rate": 1}, timeout=5)
    started = datetime.now(UTC)

    result = run()

    finished = datetime.now(UTC)
    assert result["due"] == 2
    assert result["deferred_transient"] == 2
    assert result["rotated"] == result["needs_reauth"] == 0
    assert token_calls(service).get("fault_error") == 2  # no blind retry of a refresh
    store = runtime().store
    for old in due:
        stored = store.get(old.auth_app_id)
        assert stored is not None
        assert (stored.status, stored.version) == (STATUS_GRANTED, 1)
        assert store.open_tokens(stored) == (old.app_auth_token, old.app_refresh_token)
        assert stored.next_refresh_at is not None
        # The first failure backs off by half to all of the base delay (jitter).
        lower = (started + TRANSIENT_BACKOFF.base / 2).replace(microsecond=0)
        assert lower <= stored.next_refresh_at <= finished + TRANSIENT_BACKOFF.base
        item = raw_item(service, old.auth_app_id)
        assert item["refresh_failures"] == {"N": "1"}
        assert "lease_until" not in item
        deferred = [e for e in store.events(old.auth_app_id) if e.event == "refresh_deferred"]
        assert len(deferred) == 1
        assert deferred[0].detail["reason"].startswith("alipay_20000")

    # Deferred: the next run (Alipay healthy again) leaves them alone until their new time.
    requests.post(f"{service.simulator.url}/simulator/faults", json={"error_rate": 0}, timeout=5)
    assert run()["due"] == 0


def test_parked_pairs_are_drained_at_the_start_of_the_run(cold_start: ServiceStack):
    service = cold_start
    parked = exchange(service, batch_size=2)
    # A due merchant whose newer pair (from an earlier refresh) was parked: the drain stores it
    # first, so this run does not refresh it again with a refresh token Alipay has retired.
    (due_old,) = exchange(service)
    store_pair(due_old, age=LONG_AGO)
    (newer,) = exchange(service, auth_app_id=due_old.auth_app_id)
    runtime().park(
        [*parked, newer], source="refresh", reason="store_unavailable", merchant_ref=None
    )
    before = token_calls(service)

    result = run()

    assert result["parked_drained"] == 3
    assert result["due"] == result["rotated"] == 0
    assert token_calls(service) == before
    store = runtime().store
    for grant in [*parked, newer]:
        stored = store.get(grant.auth_app_id)
        assert stored is not None
        assert store.open_tokens(stored) == (grant.app_auth_token, grant.app_refresh_token)
    reauthorized = store.get(newer.auth_app_id)
    assert reauthorized is not None
    assert reauthorized.version == 2
    sqs = boto3.client("sqs", region_name=REGION, endpoint_url=service.aws.endpoint_url)
    attributes = sqs.get_queue_attributes(
        QueueUrl=service.aws.stack.parked_queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    assert attributes == {
        "ApproximateNumberOfMessages": "0",
        "ApproximateNumberOfMessagesNotVisible": "0",
    }


def test_a_merchant_leased_by_another_runner_is_skipped(cold_start: ServiceStack):
    service = cold_start
    (held, free) = [store_pair(g, age=LONG_AGO) for g in exchange(service, batch_size=2)]
    assert runtime().store.acquire_lease(
        held.auth_app_id, version=1, now=datetime.now(UTC), seconds=300, owner="other-runner"
    )
    before = token_calls(service)

    result = run()

    assert (result["due"], result["rotated"], result["skipped_leased"]) == (2, 1, 1)
    assert result["merchants"] == [
        {"auth_app_id": app, "outcome": outcome}
        for app, outcome in sorted(
            [(held.auth_app_id, "skipped_leased"), (free.auth_app_id, "rotated")],
            key=lambda entry: [m["auth_app_id"] for m in result["merchants"]].index(entry[0]),
        )
    ]
    assert token_calls(service)["success"] - before["success"] == 1
    held_now = runtime().store.get(held.auth_app_id)
    free_now = runtime().store.get(free.auth_app_id)
    assert held_now is not None
    assert free_now is not None
    assert (held_now.version, free_now.version) == (1, 2)
    assert raw_item(service, held.auth_app_id)["lease_owner"] == {"S": "other-runner"}


def test_parked_pairs_go_through_the_stack_queue(cold_start: ServiceStack):
    """runtime().park is what the function uses when the store refuses a refreshed pair."""
    service = cold_start
    (grant,) = exchange(service)
    sqs = boto3.client("sqs", region_name=REGION, endpoint_url=service.aws.endpoint_url)
    park_grants(
        sqs,
        service.aws.stack.parked_queue_url,
        [grant],
        runtime().cipher,
        source="refresh",
        reason="store_unavailable",
    )
    assert run()["parked_drained"] == 1
    stored = runtime().store.get(grant.auth_app_id)
    assert stored is not None
    assert stored.version == 1


def test_one_bad_parked_message_or_unreadable_item_does_not_stop_the_run(cold_start: ServiceStack):
    service = cold_start
    sqs = boto3.client("sqs", region_name=REGION, endpoint_url=service.aws.endpoint_url)
    sqs.send_message(QueueUrl=service.aws.stack.parked_queue_url, MessageBody="not json")
    parked = exchange(service)
    runtime().park(parked, source="authorization", reason="store_unavailable", merchant_ref=None)
    good = [store_pair(grant, age=LONG_AGO) for grant in exchange(service, batch_size=2)]
    (broken,) = [store_pair(grant, age=LONG_AGO) for grant in exchange(service)]
    dynamodb = boto3.client("dynamodb", region_name=REGION, endpoint_url=service.aws.endpoint_url)
    dynamodb.update_item(
        TableName=service.aws.stack.tokens_table,
        Key={"pk": {"S": app_pk(broken.auth_app_id)}, "sk": {"S": "AUTH"}},
        UpdateExpression="SET tokens.#f.app_refresh_token = :junk",
        ExpressionAttributeNames={"#f": "fields"},
        ExpressionAttributeValues={":junk": {"B": b"\x00" * 40}},
    )

    result = run()

    assert result["parked_drained"] == 1  # the good parked pair, despite the garbage before it
    assert runtime().store.get(parked[0].auth_app_id) is not None
    assert result["rotated"] == 2
    assert result["unreadable"] == 1
    for grant in good:
        stored = runtime().store.get(grant.auth_app_id)
        assert stored is not None
        assert stored.version == 2
    still = runtime().store.get(broken.auth_app_id)
    assert still is not None
    assert still.version == 1
    assert still.next_refresh_at is not None
    assert still.next_refresh_at > datetime.now(UTC)
    assert "unreadable_pair" in {
        e.detail.get("reason") for e in runtime().store.events(broken.auth_app_id)
    }
    # The garbage stays on the queue (redrive moves it to the dead-letter queue after 5 tries).
    visible_or_not = sqs.get_queue_attributes(
        QueueUrl=service.aws.stack.parked_queue_url,
        AttributeNames=["ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]["ApproximateNumberOfMessagesNotVisible"]
    assert visible_or_not == "1"


def test_a_run_short_of_time_leaves_merchants_for_the_next_run(cold_start: ServiceStack):
    service = cold_start
    due = [store_pair(grant, age=LONG_AGO) for grant in exchange(service, batch_size=2)]
    before = token_calls(service)

    result = run(FakeContext(function_name="appauth-refresh", remaining_ms=20_000))

    # The run stops reading the index at the first merchant it could not finish: the rest stay due.
    assert result["stopped_early"] == result["due"] == 1
    assert result["rotated"] == 0
    assert token_calls(service) == before  # no refresh was started that could not be stored
    assert run()["rotated"] == len(due)


# --- the manual trigger, the parking queue's event source, bad requests ------------------------

MANUAL = json.loads(
    (Path(__file__).parents[2] / "events" / "refresh_manual.json").read_text(encoding="utf-8")
)
PARKED_SQS = json.loads(
    (Path(__file__).parents[2] / "events" / "refresh_parked_sqs.json").read_text(encoding="utf-8")
)


def test_the_manual_trigger_refreshes_those_merchants_now_even_if_not_due(
    cold_start: ServiceStack,
):
    service = cold_start
    fresh, other = exchange(service, batch_size=2)
    store_pair(fresh)
    store_pair(other)
    unknown = "2021009999999999"

    result = refresh_app.lambda_handler(
        {**MANUAL, "auth_app_ids": [fresh.auth_app_id, unknown]},
        FakeContext(function_name="appauth-refresh", remaining_ms=900_000),
    )

    assert result["due"] == 2
    assert result["rotated"] == result["not_found"] == 1
    assert sorted(result["merchants"], key=lambda m: m["outcome"]) == [
        {"auth_app_id": unknown, "outcome": "not_found"},
        {"auth_app_id": fresh.auth_app_id, "outcome": "rotated"},
    ]
    refreshed = runtime().store.get(fresh.auth_app_id)
    untouched = runtime().store.get(other.auth_app_id)
    assert refreshed is not None
    assert untouched is not None
    assert (refreshed.version, untouched.version) == (2, 1)


@pytest.mark.parametrize(
    "event",
    [
        {"auth_app_ids": []},
        {"auth_app_ids": ["not-an-app-id"]},
        {"auth_app_ids": "2021004200000001"},
        {"auth_app_ids": ["2021004200000001"] * 101},
        {"due": False},
        {"due": True, "auth_app_ids": ["2021004200000001"]},
        {"due": True, "extra": 1},
        ["due"],
    ],
)
def test_a_malformed_trigger_is_refused_and_changes_nothing(cold_start: ServiceStack, event: Any):
    service = cold_start
    (due,) = [store_pair(g, age=LONG_AGO) for g in exchange(service)]
    before = token_calls(service)

    result = refresh_app.lambda_handler(event, FakeContext(function_name="appauth-refresh"))

    assert result["error"]["reason"] == "invalid_request"
    assert token_calls(service) == before
    stored = runtime().store.get(due.auth_app_id)
    assert stored is not None
    assert stored.version == 1


def test_the_parking_queue_event_source_stores_pairs_and_reports_bad_records(
    cold_start: ServiceStack,
):
    service = cold_start
    (grant,) = exchange(service)
    body = parked_message(
        grant,
        runtime().cipher.seal(grant.auth_app_id, grant.secrets()),
        source="refresh",
        reason="store_unavailable",
    )
    good = {**PARKED_SQS["Records"][0], "messageId": "good-1", "body": json.dumps(body)}
    bad = {**PARKED_SQS["Records"][0], "messageId": "bad-1"}  # the sample's body: not a grant

    result = refresh_app.lambda_handler(
        {"Records": [good, bad]}, FakeContext(function_name="appauth-refresh")
    )

    assert result == {"batchItemFailures": [{"itemIdentifier": "bad-1"}]}
    stored = runtime().store.get(grant.auth_app_id)
    assert stored is not None
    assert runtime().store.open_tokens(stored) == (grant.app_auth_token, grant.app_refresh_token)
    assert "recovered" in {
        e.detail.get("transition") for e in runtime().store.events(grant.auth_app_id)
    }
