"""The parking queue (SQS on moto): a pair the store refuses is parked, never dropped, and drained later.

Also the authorization flow with a store whose DynamoDB writes fail: the pair Alipay returned
(exchanged for real with the simulator over HTTP) is parked, and a later drain stores it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import boto3
import pytest
import requests

from appauth.alipay.client import AlipayClient, Endpoints
from appauth.alipay.credentials import AppCredentials
from appauth.alipay.models import TokenGrant
from appauth.authorization import CallbackRequest, complete_authorization
from appauth.envelope import TokenCipher
from appauth.parking import MESSAGE_KIND, drain_parked, park_grants
from appauth.state import issue_state
from appauth.store import TokenStore
from appauth_dev.simulator import RunningSimulator
from tests.integration.conftest import REGION, LocalStackEnv

if TYPE_CHECKING:
    from collections.abc import Sequence

    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_kms import KMSClient
    from mypy_boto3_sqs import SQSClient

NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
MISSING_KEY = "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000"


def grant(auth_app_id: str, *, received_at: datetime = NOW, tag: str = "1") -> TokenGrant:
    return TokenGrant(
        auth_app_id=auth_app_id,
        user_id="2088000000000002",
        app_auth_token=f"202611BBparkedauth{auth_app_id}{tag}X01",
        app_refresh_token=f"202611BBparkedrefresh{auth_app_id}{tag}X02",
        expires_in=31536000,
        re_expires_in=32140800,
        received_at=received_at,
    )


@pytest.fixture
def clients(local_stack: LocalStackEnv) -> tuple[SQSClient, KMSClient, DynamoDBClient]:
    def make(service: str) -> Any:
        return boto3.client(service, region_name=REGION, endpoint_url=local_stack.endpoint_url)  # type: ignore[call-overload]

    return make("sqs"), make("kms"), make("dynamodb")


@pytest.fixture
def sqs(clients: tuple[SQSClient, KMSClient, DynamoDBClient]) -> SQSClient:
    return clients[0]


@pytest.fixture
def cipher(
    local_stack: LocalStackEnv, clients: tuple[SQSClient, KMSClient, DynamoDBClient]
) -> TokenCipher:
    return TokenCipher(clients[1], local_stack.stack.token_key_id)


@pytest.fixture
def store(
    local_stack: LocalStackEnv,
    clients: tuple[SQSClient, KMSClient, DynamoDBClient],
    cipher: TokenCipher,
) -> TokenStore:
    return TokenStore(clients[2], local_stack.stack.tokens_table, cipher, clock=lambda: NOW)


@pytest.fixture
def queue_url(local_stack: LocalStackEnv) -> str:
    return local_stack.stack.parked_queue_url


def peek(sqs: SQSClient, queue_url: str) -> list[dict[str, Any]]:
    """Every message body on the queue, left visible for the drain."""
    response = sqs.receive_message(
        QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=0
    )
    return [json.loads(message["Body"]) for message in response.get("Messages", [])]


def queue_depth(sqs: SQSClient, queue_url: str) -> int:
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attributes["ApproximateNumberOfMessages"]) + int(
        attributes["ApproximateNumberOfMessagesNotVisible"]
    )


def test_each_pair_is_parked_sealed_in_its_own_message(sqs, queue_url, cipher, local_stack):
    pairs = [grant("2021004500000001"), grant("2021004500000002")]
    park_grants(
        sqs,
        queue_url,
        pairs,
        cipher,
        source="authorization",
        reason="store_unavailable",
        merchant_ref="shop-7",
    )
    bodies = peek(sqs, queue_url)
    assert len(bodies) == 2
    assert queue_depth(sqs, queue_url) == 2
    assert {body["grant"]["auth_app_id"] for body in bodies} == {p.auth_app_id for p in pairs}
    raw = json.dumps(bodies)
    for pair in pairs:
        assert pair.app_auth_token not in raw
        assert pair.app_refresh_token not in raw
    for body in bodies:
        assert body["kind"] == MESSAGE_KIND
        assert (body["source"], body["reason"], body["merchant_ref"]) == (
            "authorization",
            "store_unavailable",
            "shop-7",
        )
        assert "tokens" not in body["grant"]
        assert body["grant"]["sealed"]["key_id"] == local_stack.stack.token_key_id
        assert set(body["grant"]["sealed"]["fields"]) == {"app_auth_token", "app_refresh_token"}
        assert body["grant"]["received_at"] == NOW.isoformat()


def test_a_pair_is_parked_even_when_kms_fails_and_drains_later(
    sqs, queue_url, clients, store, cipher
):
    broken = TokenCipher(clients[1], MISSING_KEY)
    pair = grant("2021004500000003")
    park_grants(sqs, queue_url, [pair], broken, source="refresh", reason="store_unavailable")
    (body,) = peek(sqs, queue_url)
    # Not sealed (KMS refused), so the queue's own encryption at rest is what protects it.
    assert "sealed" not in body["grant"]
    assert body["grant"]["tokens"]["app_auth_token"] == pair.app_auth_token
    assert drain_parked(sqs, queue_url, store) == 1
    stored = store.get(pair.auth_app_id)
    assert stored is not None
    assert store.open_tokens(stored) == (pair.app_auth_token, pair.app_refresh_token)
    assert queue_depth(sqs, queue_url) == 0


def test_drain_stores_every_parked_pair_and_deletes_the_messages(sqs, queue_url, store, cipher):
    pairs = [grant(f"20210045000001{n:02d}") for n in range(13)]  # more than one receive batch
    park_grants(
        sqs,
        queue_url,
        pairs,
        cipher,
        source="authorization",
        reason="store_unavailable",
        merchant_ref="shop-9",
    )
    assert queue_depth(sqs, queue_url) == 13
    assert drain_parked(sqs, queue_url, store) == 13
    for pair in pairs:
        stored = store.get(pair.auth_app_id)
        assert stored is not None
        assert stored.version == 1
        assert stored.merchant_ref == "shop-9"
        assert stored.token_issued_at == pair.received_at
        assert store.open_tokens(stored) == (pair.app_auth_token, pair.app_refresh_token)
        assert [e.detail["source"] for e in store.events(pair.auth_app_id)] == [
            "authorization+parked"
        ]
    assert queue_depth(sqs, queue_url) == 0
    assert drain_parked(sqs, queue_url, store) == 0


def test_drain_respects_max_messages(sqs, queue_url, store, cipher):
    pairs = [grant(f"20210045000002{n:02d}") for n in range(4)]
    park_grants(sqs, queue_url, pairs, cipher, source="authorization", reason="store_unavailable")
    # Settles whole receive batches until at least max_messages are done.
    settled = drain_parked(sqs, queue_url, store, max_messages=1)
    assert 1 <= settled <= 4
    assert queue_depth(sqs, queue_url) == 4 - settled


def test_a_parked_pair_made_obsolete_by_a_newer_stored_pair_is_settled_without_overwriting(
    sqs, queue_url, store, cipher
):
    app = "2021004500000004"
    newer = grant(app, received_at=NOW + timedelta(minutes=10), tag="new")
    store.save_grant(newer, source="refresh")
    park_grants(
        sqs,
        queue_url,
        [grant(app, tag="old")],
        cipher,
        source="authorization",
        reason="store_unavailable",
    )
    assert drain_parked(sqs, queue_url, store) == 1
    stored = store.get(app)
    assert stored is not None
    assert stored.version == 1
    assert store.open_tokens(stored) == (newer.app_auth_token, newer.app_refresh_token)
    assert sorted(e.event for e in store.events(app)) == ["older_pair_ignored", "token_pair_stored"]
    assert queue_depth(sqs, queue_url) == 0


def test_a_parked_pair_newer_than_the_stored_one_replaces_it(sqs, queue_url, store, cipher):
    app = "2021004500000005"
    store.save_grant(grant(app, tag="old"), source="authorization")
    newer = grant(app, received_at=NOW + timedelta(hours=1), tag="new")
    park_grants(sqs, queue_url, [newer], cipher, source="refresh", reason="store_unavailable")
    assert drain_parked(sqs, queue_url, store) == 1
    stored = store.get(app)
    assert stored is not None
    assert stored.version == 2
    assert store.open_tokens(stored) == (newer.app_auth_token, newer.app_refresh_token)


def test_a_message_of_another_kind_is_left_on_the_queue(sqs, queue_url, store, cipher):
    sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps({"kind": "something.else"}))
    park_grants(
        sqs,
        queue_url,
        [grant("2021004500000006")],
        cipher,
        source="authorization",
        reason="store_unavailable",
    )
    assert drain_parked(sqs, queue_url, store) == 1
    assert store.get("2021004500000006") is not None
    assert queue_depth(sqs, queue_url) == 1  # still there (invisible for now), not deleted


# --- the authorization flow with a failing store ------------------------------------------


def _failing_token_writes(dynamodb: DynamoDBClient) -> None:
    """TransactWriteItems (the pair and its audit event) go to a table that does not exist.

    Only the token writes fail: the state nonce (PutItem/UpdateItem on the real table) still
    works, as when DynamoDB refuses one write after boto3's retries.
    """

    def retarget(params: dict[str, Any], **_: Any) -> None:
        for entry in params.get("TransactItems", []):
            for operation in entry.values():
                operation["TableName"] = "appauth-local-NoSuchTable"

    dynamodb.meta.events.register("before-parameter-build.dynamodb.TransactWriteItems", retarget)


@pytest.mark.parametrize("batch_size", [None, 3], ids=["single", "batch"])
def test_complete_authorization_parks_what_the_store_refuses(
    local_stack: LocalStackEnv,
    simulator: RunningSimulator,
    app_credentials: AppCredentials,
    batch_size: int | None,
):
    sqs = boto3.client("sqs", region_name=REGION, endpoint_url=local_stack.endpoint_url)
    queue_url = local_stack.stack.parked_queue_url
    kms = boto3.client("kms", region_name=REGION, endpoint_url=local_stack.endpoint_url)
    cipher = TokenCipher(kms, local_stack.stack.token_key_id)
    healthy_db = boto3.client("dynamodb", region_name=REGION, endpoint_url=local_stack.endpoint_url)
    store = TokenStore(healthy_db, local_stack.stack.tokens_table, cipher)
    failing_db = boto3.client("dynamodb", region_name=REGION, endpoint_url=local_stack.endpoint_url)
    _failing_token_writes(failing_db)
    failing_store = TokenStore(failing_db, local_stack.stack.tokens_table, cipher)
    secret = local_stack.state_secret.encode()
    now = int(datetime.now(UTC).timestamp())
    token, state = issue_state(secret, now=now, ttl_seconds=600, merchant_ref="shop-3")
    failing_store.put_state(state)
    minted = requests.post(
        f"{simulator.url}/simulator/codes",
        json={} if batch_size is None else {"batch_size": batch_size},
        timeout=5,
    ).json()
    parked_calls: list[Sequence[TokenGrant]] = []

    def park(
        grants: Sequence[TokenGrant], *, source: str, reason: str, merchant_ref: str | None
    ) -> None:
        parked_calls.append(grants)
        park_grants(
            sqs, queue_url, grants, cipher, source=source, reason=reason, merchant_ref=merchant_ref
        )

    client = AlipayClient(app_credentials, Endpoints.local(simulator.url))
    outcome = complete_authorization(
        CallbackRequest(
            app_id=local_stack.app_id, app_auth_code=minted["app_auth_code"], state=token
        ),
        app_id=local_stack.app_id,
        client=client,
        store=failing_store,
        park=park,
        state_secret=secret,
        now=now,
    )
    assert outcome.parked is True
    assert list(outcome.auth_app_ids) == minted["auth_app_ids"]
    assert len(parked_calls) == 1  # one park call with every refused pair
    assert [g.auth_app_id for g in parked_calls[0]] == minted["auth_app_ids"]
    assert queue_depth(sqs, queue_url) == len(minted["auth_app_ids"])
    for app in minted["auth_app_ids"]:
        assert store.get(app) is None  # nothing reached the table

    # DynamoDB is back: the drain stores exactly what Alipay returned, and Alipay knows it.
    assert drain_parked(sqs, queue_url, store) == len(minted["auth_app_ids"])
    for parked in parked_calls[0]:
        stored = store.get(parked.auth_app_id)
        assert stored is not None
        assert stored.merchant_ref == "shop-3"
        token_value, refresh_value = store.open_tokens(stored)
        assert (token_value, refresh_value) == (parked.app_auth_token, parked.app_refresh_token)
        info = client.query_authorization(token_value)
        assert info.valid
        assert info.auth_app_id == parked.auth_app_id
    assert queue_depth(sqs, queue_url) == 0
