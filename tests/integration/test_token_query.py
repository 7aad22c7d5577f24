"""The token query function, invoked in-process as Lambda would, against the local stack and simulator.

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
from pathlib import Path
from typing import Any

import pytest
import requests

import token_query_app
from appauth import aws
from appauth.alipay.models import TokenGrant
from appauth.lookup import LookupCache
from appauth.runtime import runtime
from appauth.store import STATUS_GRANTED, STATUS_REVOKED
from appauth_dev.local_service import FakeContext
from tests.integration.conftest import ServiceStack

EVENT = json.loads(
    (Path(__file__).parents[2] / "events" / "token_query.json").read_text(encoding="utf-8")
)
CACHE_SECONDS = 30.0


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


class DynamoCalls:
    def __init__(self, client: Any) -> None:
        self.counts: Counter[str] = Counter()
        client.meta.events.register("before-call.dynamodb.*", self._record)

    def _record(self, model: Any, **_: Any) -> None:
        self.counts[model.name] += 1


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
    target = logging.getLogger(token_query_app.logger.name)
    target.addHandler(handler)
    try:
        yield stream
    finally:
        target.removeHandler(handler)


def invoke(event: Any) -> dict[str, Any]:
    result: dict[str, Any] = token_query_app.lambda_handler(
        event, FakeContext(function_name="appauth-token-query")
    )
    return result


def query(auth_app_id: str) -> dict[str, Any]:
    return invoke({**EVENT, "auth_app_id": auth_app_id})


def authorize(service: ServiceStack, **body: Any) -> TokenGrant:
    """A merchant authorizes: a code from the simulator, exchanged and stored by the service."""
    minted = requests.post(f"{service.simulator.url}/simulator/codes", json=body, timeout=5)
    minted.raise_for_status()
    grant = runtime().client().exchange_code(minted.json()["app_auth_code"]).single()
    assert runtime().store.save_grant(grant, source="authorization").stored
    return grant


def test_a_granted_merchant_gets_the_stored_token(service: ServiceStack, function_logs):
    grant = authorize(service)
    answer = query(grant.auth_app_id)
    assert answer == {
        "auth_app_id": grant.auth_app_id,
        "found": True,
        "status": STATUS_GRANTED,
        "app_auth_token": grant.app_auth_token,
        "user_id": grant.user_id,
        "version": 1,
        "expires_at": answer["expires_at"],
        "re_expires_at": answer["re_expires_at"],
    }
    assert grant.expires_at is not None
    assert answer["expires_at"] == grant.expires_at.replace(microsecond=0).isoformat()
    # The token works at Alipay (the simulator) and is the merchant's current one.
    info = runtime().client().query_authorization(answer["app_auth_token"])
    assert info.valid
    assert info.auth_app_id == grant.auth_app_id
    # The function's logs name the merchant, never the token.
    logs = function_logs.getvalue()
    assert '"message":"Token query"' in logs
    assert grant.auth_app_id in logs
    assert grant.app_auth_token not in logs
    assert grant.app_refresh_token not in logs


@pytest.mark.usefixtures("clock")
def test_an_unknown_merchant_is_not_found(service: ServiceStack):
    assert query("2021009999999999") == {"auth_app_id": "2021009999999999", "found": False}
    assert invoke(EVENT) == {"auth_app_id": EVENT["auth_app_id"], "found": False}


@pytest.mark.usefixtures("clock")
def test_a_revoked_merchant_gets_its_status_but_no_token(service: ServiceStack):
    grant = authorize(service)
    assert runtime().store.mark_revoked(
        grant.auth_app_id, cancelled_at=grant.answered_at or grant.received_at, reason="cancelled"
    )
    answer = query(grant.auth_app_id)
    assert answer["found"] is True
    assert answer["status"] == STATUS_REVOKED
    assert answer["app_auth_token"] is None
    assert answer["version"] == 2
    assert grant.app_auth_token not in json.dumps(answer)


MALFORMED_EVENTS = [
    ["2021000100000001"],
    "2021000100000001",
    None,
    {},
    {"auth_app_id": ""},
    {"auth_app_id": "abc"},
    {"auth_app_id": "2021 0001"},
    {"auth_app_id": "1" * 33},
    {"auth_app_id": 2021000100000001},
    {"auth_app_id": ["2021000100000001"]},
    {"app_id": "2021000100000001"},
]


@pytest.mark.usefixtures("clock")
@pytest.mark.filterwarnings("ignore:No application metrics to publish")
def test_a_malformed_event_is_an_invalid_request(service: ServiceStack):
    calls = DynamoCalls(aws.dynamodb())
    for event in MALFORMED_EVENTS:
        answer = invoke(event)
        assert set(answer) == {"error"}, event
        assert answer["error"]["reason"] == "invalid_request", event
        assert "auth_app_id" in answer["error"]["message"], event
    assert not calls.counts  # refused before touching the table


def test_a_second_query_within_the_cache_age_makes_no_dynamodb_call(
    service: ServiceStack, clock: Clock
):
    grant = authorize(service)
    calls = DynamoCalls(aws.dynamodb())
    first = query(grant.auth_app_id)
    assert calls.counts == {"GetItem": 1}
    clock.now += CACHE_SECONDS - 1
    assert query(grant.auth_app_id) == first
    assert calls.counts == {"GetItem": 1}
    clock.now += 2  # past the cache age: read again
    assert query(grant.auth_app_id) == first
    assert calls.counts == {"GetItem": 2}


def test_a_miss_is_not_cached(service: ServiceStack, clock: Clock):
    minted = requests.post(f"{service.simulator.url}/simulator/codes", json={}, timeout=5).json()
    auth_app_id = minted["auth_app_ids"][0]
    assert query(auth_app_id)["found"] is False
    grant = runtime().client().exchange_code(minted["app_auth_code"]).single()
    runtime().store.save_grant(grant, source="authorization")
    answer = query(auth_app_id)  # same instant: a cached miss would still say "not found"
    assert answer["found"] is True
    assert answer["app_auth_token"] == grant.app_auth_token


def test_a_revoked_answer_is_not_cached_either(service: ServiceStack, clock: Clock):
    grant = authorize(service)
    runtime().store.mark_revoked(
        grant.auth_app_id, cancelled_at=grant.answered_at or grant.received_at, reason="x"
    )
    assert query(grant.auth_app_id)["status"] == STATUS_REVOKED
    later = (
        runtime()
        .client()
        .exchange_code(
            requests.post(
                f"{service.simulator.url}/simulator/codes",
                json={"auth_app_id": grant.auth_app_id},
                timeout=5,
            ).json()["app_auth_code"]
        )
        .single()
    )
    runtime().store.save_grant(later, source="authorization")
    answer = query(grant.auth_app_id)
    assert (answer["status"], answer["app_auth_token"]) == (STATUS_GRANTED, later.app_auth_token)


@pytest.mark.filterwarnings("ignore:No application metrics to publish")
def test_a_misconfigured_function_answers_misconfigured_without_a_trace(
    service: ServiceStack, clock: Clock, monkeypatch: pytest.MonkeyPatch
):
    from appauth.runtime import reset_runtime  # noqa: PLC0415

    monkeypatch.delenv("TOKENS_TABLE")
    reset_runtime()
    answer = query("2021000100000009")
    assert answer == {
        "error": {"reason": "misconfigured", "message": "the token service is misconfigured"}
    }
