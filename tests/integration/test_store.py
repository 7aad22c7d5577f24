"""TokenStore against the template's tokens table on moto, with the stack's real KMS token key.

Conditional writes (a newer pair is never overwritten by an older one, revocation does not undo
a later re-authorization), one-time state nonces, the sparse ``due`` index (never a Scan), and
the refresh lease.
"""

from __future__ import annotations

import secrets
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import boto3
import pytest

from appauth.alipay.models import TokenGrant
from appauth.envelope import TokenCipher, TokenDecryptionError
from appauth.errors import StateReplayedError
from appauth.policy import DUE_SHARDS, RefreshPolicy, due_shard
from appauth.state import AuthState
from appauth.store import STATUS_GRANTED, STATUS_REVOKED, TokenStore, app_pk
from tests.integration.conftest import REGION, LocalStackEnv

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
YEAR = 365 * 86400
MERCHANT = "2021004200000001"


class DynamoCalls:
    """Every DynamoDB operation a client makes (botocore ``before-call`` hook)."""

    def __init__(self, client: Any) -> None:
        self.operations: list[str] = []
        client.meta.events.register("before-call.dynamodb.*", self._record)

    def _record(self, model: Any, **_: Any) -> None:
        self.operations.append(model.name)


def grant(
    auth_app_id: str = MERCHANT,
    *,
    received_at: datetime = NOW,
    tag: str = "1",
    user_id: str | None = "2088000000000001",
) -> TokenGrant:
    return TokenGrant(
        auth_app_id=auth_app_id,
        user_id=user_id,
        app_auth_token=f"202611BBauth{auth_app_id}{tag}X01",
        app_refresh_token=f"202611BBrefresh{auth_app_id}{tag}X02",
        expires_in=YEAR,
        re_expires_in=YEAR + 7 * 86400,
        received_at=received_at,
    )


@pytest.fixture
def dynamodb(local_stack: LocalStackEnv) -> DynamoDBClient:
    client: DynamoDBClient = boto3.client(
        "dynamodb", region_name=REGION, endpoint_url=local_stack.endpoint_url
    )
    return client


@pytest.fixture
def store(local_stack: LocalStackEnv, dynamodb: DynamoDBClient) -> TokenStore:
    kms = boto3.client("kms", region_name=REGION, endpoint_url=local_stack.endpoint_url)
    return TokenStore(
        dynamodb,
        local_stack.stack.tokens_table,
        TokenCipher(kms, local_stack.stack.token_key_id),
        actor="test-runner",
        clock=lambda: NOW,
    )


def raw_item(dynamodb: DynamoDBClient, table: str, auth_app_id: str) -> dict[str, Any]:
    response = dynamodb.get_item(
        TableName=table, Key={"pk": {"S": app_pk(auth_app_id)}, "sk": {"S": "AUTH"}}
    )
    return dict(response["Item"])


def event_names(store: TokenStore, auth_app_id: str) -> list[str]:
    return sorted(event.event for event in store.events(auth_app_id))


# --- token pairs ---------------------------------------------------------------------------


def test_a_new_grant_is_stored_sealed_with_version_1_and_audited(
    store, dynamodb, local_stack: LocalStackEnv
):
    pair = grant()
    result = store.save_grant(pair, source="authorization", merchant_ref="shop-42")
    assert (result.auth_app_id, result.stored) == (MERCHANT, True)

    stored = store.get(MERCHANT)
    assert stored is not None
    assert stored.status == STATUS_GRANTED
    assert stored.version == 1
    assert stored.user_id == "2088000000000001"
    assert stored.merchant_ref == "shop-42"
    assert stored.token_issued_at == NOW
    assert stored.expires_at == NOW + timedelta(seconds=YEAR)
    assert stored.re_expires_at == NOW + timedelta(seconds=YEAR + 7 * 86400)
    expected_next = RefreshPolicy().next_refresh_at(MERCHANT, NOW, pair.re_expires_at)
    assert stored.next_refresh_at == expected_next.replace(microsecond=0)
    assert NOW < stored.next_refresh_at <= NOW + timedelta(days=90)
    assert stored.sealed.key_id == local_stack.stack.token_key_id
    assert store.open_tokens(stored) == (pair.app_auth_token, pair.app_refresh_token)

    item = raw_item(dynamodb, local_stack.stack.tokens_table, MERCHANT)
    assert item["due_shard"] == {"S": due_shard(MERCHANT)}
    assert item["next_refresh_at"] == {"N": str(int(expected_next.timestamp()))}
    assert item["token_source"] == {"S": "authorization"}
    # Nothing in the item (or the whole table) holds a token in the clear.
    table_dump = repr(dynamodb.scan(TableName=local_stack.stack.tokens_table)["Items"])
    assert pair.app_auth_token not in table_dump
    assert pair.app_refresh_token not in table_dump

    events = store.events(MERCHANT)
    assert [e.event for e in events] == ["token_pair_stored"]
    assert events[0].actor == "test-runner"
    assert dict(events[0].detail) == {
        "source": "authorization",
        "user_id": "2088000000000001",
        "merchant_ref": "shop-42",
        "transition": "granted",
    }


def test_re_authorization_replaces_the_pair_and_bumps_the_version(store):
    store.save_grant(grant(tag="old"), source="authorization", merchant_ref="shop-42")
    later = NOW + timedelta(days=3)
    newer = grant(received_at=later, tag="new")
    result = store.save_grant(newer, source="authorization")
    assert result.stored
    stored = store.get(MERCHANT)
    assert stored is not None
    assert stored.version == 2
    assert stored.token_issued_at == later
    assert store.open_tokens(stored) == (newer.app_auth_token, newer.app_refresh_token)
    assert stored.merchant_ref == "shop-42"  # kept when the new write names none
    assert stored.granted_at == "2026-11-21T10:00:00.000+00:00"  # first grant's time, kept
    assert event_names(store, MERCHANT) == ["token_pair_stored", "token_pair_stored"]


def test_an_older_pair_never_overwrites_a_newer_one(store):
    newer = grant(received_at=NOW, tag="new")
    store.save_grant(newer, source="refresh")
    for received_at in (NOW - timedelta(seconds=1), NOW):  # older, and the same instant
        result = store.save_grant(grant(received_at=received_at, tag="old"), source="parked")
        assert not result.stored
    stored = store.get(MERCHANT)
    assert stored is not None
    assert stored.version == 1
    assert store.open_tokens(stored) == (newer.app_auth_token, newer.app_refresh_token)
    events = store.events(MERCHANT)
    assert sorted(e.event for e in events) == [
        "older_pair_ignored",
        "older_pair_ignored",
        "token_pair_stored",
    ]
    ignored = [e for e in events if e.event == "older_pair_ignored"]
    assert all(dict(e.detail) == {"source": "parked"} for e in ignored)


@pytest.mark.usefixtures("atomic_moto")
def test_concurrent_writers_keep_the_latest_pair_and_count_every_stored_write(
    store, dynamodb, local_stack: LocalStackEnv
):
    pairs = [grant(received_at=NOW + timedelta(seconds=i), tag=f"t{i}") for i in range(12)]
    order = [pairs[i] for i in (5, 11, 0, 7, 3, 9, 1, 10, 2, 8, 4, 6)]
    barrier = threading.Barrier(len(order))

    def save(pair: TokenGrant) -> bool:
        barrier.wait()
        return bool(store.save_grant(pair, source="race").stored)

    with ThreadPoolExecutor(max_workers=len(order)) as pool:
        stored_flags = list(pool.map(save, order))

    stored = store.get(MERCHANT)
    assert stored is not None
    latest = pairs[-1]
    assert stored.token_issued_at == latest.received_at
    assert store.open_tokens(stored) == (latest.app_auth_token, latest.app_refresh_token)
    assert stored_flags[order.index(latest)] is True
    assert stored.version == sum(stored_flags)
    counts = Counter(event_names(store, MERCHANT))
    assert counts == {
        "token_pair_stored": sum(stored_flags),
        "older_pair_ignored": len(order) - sum(stored_flags),
    }
    # Every stored write was newer than the one before it (the versions tell the same story).
    assert raw_item(dynamodb, local_stack.stack.tokens_table, MERCHANT)["version"] == {
        "N": str(sum(stored_flags))
    }


def test_a_grant_without_optional_fields_is_stored(store):
    bare = TokenGrant(
        auth_app_id=MERCHANT,
        user_id=None,
        app_auth_token="202611BBbareX01",
        app_refresh_token="202611BBbareX02",
        expires_in=None,
        re_expires_in=None,
        received_at=NOW,
    )
    assert store.save_grant(bare, source="authorization").stored
    stored = store.get(MERCHANT)
    assert stored is not None
    assert (stored.user_id, stored.expires_at, stored.re_expires_at) == (None, None, None)
    assert stored.next_refresh_at is not None
    assert stored.next_refresh_at > NOW  # hygiene rotation still schedules it
    assert store.get("2021004299999999") is None


# --- state nonces --------------------------------------------------------------------------


def _state() -> AuthState:
    return AuthState(
        nonce=secrets.token_urlsafe(18),
        expires_at=int(NOW.timestamp()) + 1800,
        merchant_ref="shop-42",
    )


def test_a_state_is_consumed_once(store, dynamodb, local_stack: LocalStackEnv):
    state = _state()
    store.put_state(state)
    item = dynamodb.get_item(
        TableName=local_stack.stack.tokens_table,
        Key={"pk": {"S": f"STATE#{state.nonce}"}, "sk": {"S": "STATE"}},
    )["Item"]
    assert item["ttl"] == {"N": str(state.expires_at + 86400)}
    assert item["merchant_ref"] == {"S": "shop-42"}
    store.consume_state(state)
    with pytest.raises(StateReplayedError):
        store.consume_state(state)


def test_a_released_state_can_be_consumed_again(store):
    state = _state()
    store.put_state(state)
    store.consume_state(state)
    store.release_state(state)
    store.consume_state(state)
    with pytest.raises(StateReplayedError):
        store.consume_state(state)


def test_a_state_that_was_never_issued_cannot_be_consumed_or_issued_twice(store, dynamodb):
    with pytest.raises(StateReplayedError):
        store.consume_state(_state())
    with pytest.raises(dynamodb.exceptions.ConditionalCheckFailedException):
        store.release_state(_state())
    state = _state()
    store.put_state(state)
    with pytest.raises(dynamodb.exceptions.ConditionalCheckFailedException):
        store.put_state(state)


@pytest.mark.usefixtures("atomic_moto")
def test_concurrent_consumers_of_one_state_exactly_one_wins(store):
    state = _state()
    store.put_state(state)
    barrier = threading.Barrier(6)

    def consume(_: int) -> bool:
        barrier.wait()
        try:
            store.consume_state(state)
        except StateReplayedError:
            return False
        return True

    with ThreadPoolExecutor(max_workers=6) as pool:
        outcomes = list(pool.map(consume, range(6)))
    assert sorted(outcomes) == [False] * 5 + [True]


# --- revocation ----------------------------------------------------------------------------


def test_mark_revoked_takes_the_item_out_of_the_due_index(
    store, dynamodb, local_stack: LocalStackEnv
):
    store.save_grant(grant(), source="authorization")
    far_future = NOW + timedelta(days=3650)
    assert list(store.due(far_future, limit=10)) == [(MERCHANT, 1)]

    assert store.mark_revoked(MERCHANT, cancelled_at=NOW + timedelta(hours=1), reason="cancelled")
    stored = store.get(MERCHANT)
    assert stored is not None
    assert (stored.status, stored.version, stored.next_refresh_at) == (STATUS_REVOKED, 2, None)
    item = raw_item(dynamodb, local_stack.stack.tokens_table, MERCHANT)
    assert "due_shard" not in item
    assert "revoked_at" in item
    assert list(store.due(far_future, limit=10)) == []
    assert "authorization_revoked" in event_names(store, MERCHANT)
    # A redelivered cancellation changes nothing.
    assert not store.mark_revoked(MERCHANT, cancelled_at=NOW + timedelta(hours=1), reason="again")
    stored_again = store.get(MERCHANT)
    assert stored_again is not None
    assert stored_again.version == 2

    # A re-authorization after the cancellation brings it back, due index included.
    later = grant(received_at=NOW + timedelta(days=1), tag="again")
    assert store.save_grant(later, source="authorization").stored
    assert store.get(MERCHANT).version == 3
    back = store.get(MERCHANT)
    assert back is not None
    assert back.status == STATUS_GRANTED
    assert "revoked_at" not in raw_item(dynamodb, local_stack.stack.tokens_table, MERCHANT)
    assert list(store.due(far_future, limit=10)) == [(MERCHANT, 3)]


def test_a_cancellation_older_than_the_current_pair_changes_nothing(store):
    store.save_grant(grant(received_at=NOW), source="authorization")
    assert not store.mark_revoked(
        MERCHANT, cancelled_at=NOW - timedelta(minutes=5), reason="late notification"
    )
    stored = store.get(MERCHANT)
    assert stored is not None
    assert (stored.status, stored.version) == (STATUS_GRANTED, 1)
    assert event_names(store, MERCHANT) == ["token_pair_stored"]
    # An app never stored gets a revocation record (its pair may still be parked).
    assert store.mark_revoked("2021004299999999", cancelled_at=NOW, reason="unknown app")


# --- due index -----------------------------------------------------------------------------


def _apps_in_distinct_shards(count: int) -> list[str]:
    chosen: dict[str, str] = {}
    for n in range(1000):
        app = f"20210043{n:08d}"
        chosen.setdefault(due_shard(app), app)
        if len(chosen) == count:
            break
    return list(chosen.values())


def test_due_returns_only_granted_items_whose_time_has_come_across_shards(store):
    due_apps = _apps_in_distinct_shards(4)
    assert len({due_shard(app) for app in due_apps}) == 4
    long_ago = NOW - timedelta(days=400)
    for app in due_apps:
        store.save_grant(grant(app, received_at=long_ago), source="authorization")
    not_due = "2021004399999991"
    store.save_grant(grant(not_due, received_at=NOW), source="authorization")
    revoked = "2021004399999992"
    store.save_grant(grant(revoked, received_at=long_ago), source="authorization")
    store.mark_revoked(revoked, cancelled_at=NOW, reason="cancelled")

    found = list(store.due(NOW, limit=100))
    assert sorted(found) == sorted((app, 1) for app in due_apps)
    assert list(store.due(long_ago - timedelta(days=1), limit=100)) == []

    # The boundary: due exactly at next_refresh_at, not a second before.
    stored = store.get(not_due)
    assert stored is not None
    assert stored.next_refresh_at is not None
    at = stored.next_refresh_at
    assert (not_due, 1) in list(store.due(at, limit=100))
    assert (not_due, 1) not in list(store.due(at - timedelta(seconds=1), limit=100))


def test_due_respects_the_limit(store):
    apps = _apps_in_distinct_shards(min(5, DUE_SHARDS))
    for app in apps:
        store.save_grant(grant(app, received_at=NOW - timedelta(days=400)), source="authorization")
    assert len(list(store.due(NOW, limit=2))) == 2
    assert len(list(store.due(NOW, limit=1))) == 1
    assert len(list(store.due(NOW, limit=100))) == len(apps)


def test_save_get_due_and_lease_never_scan(store, dynamodb):
    calls = DynamoCalls(dynamodb)
    apps = _apps_in_distinct_shards(3)
    for app in apps:
        store.save_grant(grant(app, received_at=NOW - timedelta(days=400)), source="authorization")
    store.save_grant(grant(apps[0], received_at=NOW - timedelta(days=399)), source="refresh")
    store.save_grant(grant(apps[0], received_at=NOW - timedelta(days=401)), source="parked")
    assert store.get(apps[1]) is not None
    due = list(store.due(NOW, limit=100))
    assert len(due) == 3
    leases = {
        app: store.acquire_lease(app, version=version, now=NOW, seconds=300, owner="r1")
        for app, version in due
    }
    lease = leases[apps[1]]
    assert lease is not None
    store.release_lease(lease, until=NOW + timedelta(hours=1), reason="test", failures=1)
    store.mark_revoked(apps[2], cancelled_at=NOW, reason="cancelled")
    assert calls.operations  # the hook saw the traffic
    assert "Scan" not in calls.operations
    assert set(calls.operations) <= {
        "TransactWriteItems",
        "GetItem",
        "Query",
        "UpdateItem",
        "PutItem",
    }
    assert calls.operations.count("Query") == DUE_SHARDS  # one Query per shard of the index


# --- lease ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("atomic_moto")
def test_only_one_of_two_concurrent_acquirers_wins_the_lease(store):
    store.save_grant(grant(received_at=NOW - timedelta(days=400)), source="authorization")
    barrier = threading.Barrier(2)

    def acquire(owner: str) -> bool:
        barrier.wait()
        return bool(store.acquire_lease(MERCHANT, version=1, now=NOW, seconds=300, owner=owner))

    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(acquire, ["runner-a", "runner-b"]))
    assert sorted(outcomes) == [False, True]
    # Still held a moment later; free again once expired.
    assert not store.acquire_lease(
        MERCHANT, version=1, now=NOW + timedelta(seconds=299), seconds=300, owner="runner-c"
    )
    assert store.acquire_lease(
        MERCHANT, version=1, now=NOW + timedelta(seconds=301), seconds=300, owner="runner-c"
    )


def test_a_stale_version_or_a_revoked_item_cannot_be_leased(
    store, dynamodb, local_stack: LocalStackEnv
):
    store.save_grant(grant(received_at=NOW - timedelta(days=400)), source="authorization")
    store.save_grant(grant(received_at=NOW - timedelta(days=399), tag="2"), source="refresh")
    assert not store.acquire_lease(MERCHANT, version=1, now=NOW, seconds=300, owner="stale")
    assert store.acquire_lease(MERCHANT, version=2, now=NOW, seconds=300, owner="fresh")
    item = raw_item(dynamodb, local_stack.stack.tokens_table, MERCHANT)
    assert item["lease_owner"] == {"S": "fresh"}
    # A stored pair releases the lease.
    store.save_grant(grant(received_at=NOW - timedelta(days=398), tag="3"), source="refresh")
    item = raw_item(dynamodb, local_stack.stack.tokens_table, MERCHANT)
    assert "lease_owner" not in item
    assert "lease_until" not in item
    store.mark_revoked(MERCHANT, cancelled_at=NOW, reason="cancelled")
    assert not store.acquire_lease(MERCHANT, version=4, now=NOW, seconds=300, owner="late")
    assert not store.acquire_lease("2021004299999999", version=1, now=NOW, seconds=300, owner="x")


def test_release_lease_pushes_the_time_counts_failures_and_releases_the_lease(
    store, dynamodb, local_stack: LocalStackEnv
):
    store.save_grant(grant(received_at=NOW - timedelta(days=400)), source="authorization")
    lease = store.acquire_lease(MERCHANT, version=1, now=NOW, seconds=300, owner="r1")
    assert lease is not None
    assert not lease.took_over
    table = local_stack.stack.tokens_table
    for failures, until in ((1, NOW + timedelta(minutes=15)), (2, NOW + timedelta(hours=6))):
        # Only the lease holder can release: another runner's release changes nothing.
        other = replace(lease, owner="r2")
        assert not store.release_lease(other, until=NOW, reason="not mine", failures=9)
        assert raw_item(dynamodb, table, MERCHANT)["lease_owner"] == {"S": "r1"}
        assert store.release_lease(lease, until=until, reason="alipay_20000", failures=failures)
        item = raw_item(dynamodb, table, MERCHANT)
        assert item["next_refresh_at"] == {"N": str(int(until.timestamp()))}
        assert item["refresh_failures"] == {"N": str(failures)}
        assert "lease_until" not in item
        assert item["status"] == {"S": STATUS_GRANTED}
        assert item["version"] == {"N": "1"}
        lease = store.acquire_lease(MERCHANT, version=1, now=NOW, seconds=300, owner="r1")
        assert lease is not None
        assert not lease.took_over  # released properly: nothing to reconcile
    assert list(store.due(NOW + timedelta(hours=5), limit=10)) == []
    assert list(store.due(NOW + timedelta(hours=6), limit=10)) == [(MERCHANT, 1)]
    deferred = [e for e in store.events(MERCHANT) if e.event == "refresh_deferred"]
    assert len(deferred) == 2
    assert {e.detail["reason"] for e in deferred} == {"alipay_20000"}
    # A release for a version that moved on does nothing; a stored pair resets the count.
    store.save_grant(grant(received_at=NOW, tag="2"), source="refresh")
    assert not store.release_lease(lease, until=NOW + timedelta(days=9), reason="late", failures=3)
    item = raw_item(dynamodb, table, MERCHANT)
    assert "refresh_failures" not in item
    assert item["version"] == {"N": "2"}
    assert int(item["next_refresh_at"]["N"]) != int((NOW + timedelta(days=9)).timestamp())


def test_a_cancellation_is_never_undone_by_an_older_pair_landing_late(store):
    # Stored at t0, cancelled at t0+2h; a pair issued at t0+1h (parked, or an in-flight refresh)
    # arrives afterwards: it must not bring the merchant back.
    store.save_grant(grant(received_at=NOW), source="authorization")
    assert store.mark_revoked(MERCHANT, cancelled_at=NOW + timedelta(hours=2), reason="cancelled")
    late = store.save_grant(
        grant(received_at=NOW + timedelta(hours=1), tag="late"), source="authorization+parked"
    )
    assert not late.stored
    stored = store.get(MERCHANT)
    assert stored is not None
    assert stored.status == STATUS_REVOKED
    assert list(store.due(NOW + timedelta(days=3650), limit=10)) == []
    # A real re-authorization after the cancellation is accepted.
    assert store.save_grant(
        grant(received_at=NOW + timedelta(hours=3), tag="new"), source="authorization"
    ).stored


def test_a_cancellation_that_overtakes_the_first_pair_is_kept(store):
    # The cancellation arrives before the (parked) pair was ever stored.
    assert store.mark_revoked(MERCHANT, cancelled_at=NOW + timedelta(hours=2), reason="cancelled")
    tombstone = store.get(MERCHANT)
    assert tombstone is not None
    assert tombstone.status == STATUS_REVOKED
    assert tombstone.sealed is None
    with pytest.raises(TokenDecryptionError):
        store.open_tokens(tombstone)
    assert not store.save_grant(grant(received_at=NOW), source="authorization+parked").stored
    assert store.get(MERCHANT).status == STATUS_REVOKED
