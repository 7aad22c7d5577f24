"""The token query's request parsing and its per-container cache (no AWS)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import pytest

from appauth.errors import InvalidRequestError
from appauth.lookup import LookupCache, TokenLookup, TokenService, failure_for
from appauth.queries import (
    Describe,
    GetToken,
    ListAuthorizations,
    ReportInvalid,
    parse_request,
)
from appauth.store import MAX_APPS_PER_USER, STATUS_GRANTED, StoredAuthorization


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def lookup(version: int, app: str = "2018") -> TokenLookup:
    return TokenLookup(app, version, "2088", f"t{version}", None, None, None)


def test_requests_parse_into_their_types():
    assert parse_request({"auth_app_id": "2018"}) == GetToken(auth_app_id="2018")
    assert parse_request(
        {"action": "get_token", "user_id": "2088", "required_methods": ["a.b", "a.b", "c.d"]}
    ) == GetToken(user_id="2088", required_methods=("a.b", "c.d"))
    assert parse_request({"action": "describe", "auth_app_id": "7"}) == Describe("7")
    assert parse_request({"action": "list"}) == ListAuthorizations()
    assert parse_request({"action": "list", "status": "revoked", "limit": 3}) == (
        ListAuthorizations(status="revoked", limit=3)
    )
    assert parse_request({"action": "report_invalid", "auth_app_id": "7", "version": 2}) == (
        ReportInvalid("7", 2)
    )


@pytest.mark.parametrize(
    "event",
    [
        {"action": "get_token", "auth_app_id": "7", "\u202eevil" * 30: 1},
        {"action": "get_token", "auth_app_id": "7", "required_methods": [1]},
        {"action": "get_token", "auth_app_id": "7", "required_methods": ["a." + "b" * 200]},
        {"action": "get_token", "auth_app_id": "7", "x": float("nan")},
        {"action": "get_token", "auth_app_id": "7", "x": {1, 2}},
    ],
)
def test_a_bad_request_names_the_problem_in_a_short_printable_message(event: Any):
    with pytest.raises(InvalidRequestError) as raised:
        parse_request(event)
    message = str(raised.value)
    assert len(message) < 300
    assert message.isprintable()
    assert "\u202e" not in message


def test_the_cache_serves_within_its_age_and_keeps_the_version_past_it():
    clock = Clock()
    cache = LookupCache(max_age_seconds=30, monotonic=clock)
    cache.put(lookup(1))
    clock.now = 29
    assert cache.fresh("2018") == lookup(1)
    clock.now = 31
    assert cache.fresh("2018") is None
    # Past its age the opened token is still reusable for the same version, not another.
    assert cache.same_version("2018", 1) == lookup(1)
    assert cache.same_version("2018", 2) is None


def test_an_older_version_never_replaces_a_newer_one():
    cache = LookupCache(monotonic=Clock())
    cache.put(lookup(3))
    cache.put(lookup(2))  # a slow reader that started before the rotation
    assert cache.fresh("2018") == lookup(3)
    cache.put(lookup(4))
    assert cache.fresh("2018") == lookup(4)


def test_the_cache_is_bounded_least_recently_used_first_out():
    cache = LookupCache(max_items=2, monotonic=Clock())
    cache.put(lookup(1, "1"))
    cache.put(lookup(1, "2"))
    assert cache.fresh("1") is not None  # "1" is now the most recently used
    cache.put(lookup(1, "3"))
    assert len(cache) == 2
    assert cache.fresh("2") is None
    assert cache.fresh("1") is not None
    assert cache.fresh("3") is not None


def test_a_token_never_shows_in_a_lookups_repr():
    assert "t1" not in repr(lookup(1))


def stored(version: int, *, methods: tuple[str, ...] | None = None) -> StoredAuthorization:
    return StoredAuthorization(
        auth_app_id="2018",
        user_id="2088",
        status=STATUS_GRANTED,
        version=version,
        token_issued_at=None,
        expires_at=None,
        re_expires_at=None,
        next_refresh_at=None,
        merchant_ref=None,
        granted_at=None,
        updated_at=None,
        sealed=None,
        auth_methods=methods,
    )


@dataclass
class FakeStore:
    """The reads a look-up makes; ``opened`` counts the decrypts."""

    item: StoredAuthorization
    opened: int = 0
    reads: list[bool] = field(default_factory=list)

    def get(self, auth_app_id: str, *, consistent: bool = True) -> StoredAuthorization:
        self.reads.append(consistent)
        return self.item

    def open_tokens(self, item: StoredAuthorization) -> tuple[str, str]:
        self.opened += 1
        return f"t{item.version}", f"r{item.version}"


def service(store: FakeStore, clock: Clock) -> TokenService:
    def no_alipay() -> Any:
        raise AssertionError("a look-up must not build the Alipay client")

    return TokenService(
        store=store,  # type: ignore[arg-type]
        cache=LookupCache(max_age_seconds=30, monotonic=clock),
        alipay=no_alipay,
        clock=lambda: datetime.now(UTC),
    )


def test_a_read_that_finds_the_same_version_does_not_decrypt_again():
    clock, store = Clock(), FakeStore(stored(1))
    tokens = service(store, clock)
    first = tokens.answer(GetToken(auth_app_id="2018"))
    assert (first.cache, first.body["app_auth_token"], store.opened) == ("miss", "t1", 1)
    assert tokens.answer(GetToken(auth_app_id="2018")).cache == "hit"
    clock.now = 31
    again = tokens.answer(GetToken(auth_app_id="2018"))
    assert (again.cache, store.opened, len(store.reads)) == ("miss", 1, 2)
    store.item = stored(2)  # rotated: the new version is opened
    clock.now = 62
    rotated = tokens.answer(GetToken(auth_app_id="2018"))
    assert (rotated.body["app_auth_token"], store.opened) == ("t2", 2)


def test_required_methods_known_on_the_item_need_no_alipay_call():
    store = FakeStore(stored(1, methods=("alipay.trade.query",)))
    tokens = service(store, Clock())
    ok = tokens.answer(GetToken(auth_app_id="2018", required_methods=("alipay.trade.query",)))
    assert ok.body["ok"] is True
    missing = tokens.answer(GetToken(auth_app_id="2018", required_methods=("alipay.trade.pay",)))
    assert missing.body["error"]["code"] == "method_not_authorized"
    assert missing.body["error"]["missing_methods"] == ["alipay.trade.pay"]
    assert "app_auth_token" not in missing.body


def test_an_unexpected_error_is_an_answer_without_its_text():
    failure = failure_for(RuntimeError("secret-token-value"))
    answer = failure.answer()
    assert answer["error"]["code"] == "unavailable"
    assert "secret-token-value" not in str(answer)


def test_consistent_reads_skip_the_cache():
    clock, store = Clock(), FakeStore(stored(1))
    tokens = service(store, clock)
    tokens.answer(GetToken(auth_app_id="2018"))
    store.item = replace(stored(2))
    fresh = tokens.answer(GetToken(auth_app_id="2018", consistent=True))
    assert (fresh.cache, fresh.body["version"], store.reads[-1]) == ("miss", 2, True)


def test_a_lagging_read_never_answers_an_older_pair_than_one_seen():
    clock, store = Clock(), FakeStore(stored(6))
    tokens = service(store, clock)
    assert tokens.answer(GetToken(auth_app_id="2018")).body["version"] == 6
    clock.now = 31  # past the age: the next read is an eventually consistent one...
    store.item = stored(5)  # ...from a replica that has not seen version 6 yet
    answer = tokens.answer(GetToken(auth_app_id="2018"))
    assert (answer.body["version"], answer.body["app_auth_token"]) == (6, "t6")


def test_no_alipay_query_is_started_without_the_time_to_finish_it():
    store = FakeStore(stored(1))
    tokens = service(store, Clock())
    tokens.time_left = lambda: 3.0
    answer = tokens.answer(Describe("2018")).body
    # The Alipay factory would raise: it is never built.
    assert (answer["error"]["code"], answer["error"]["retryable"]) == ("unavailable", True)


def test_a_user_with_more_apps_than_one_read_returns_says_the_list_is_cut():
    store = FakeStore(stored(1))
    apps = [(str(1000 + n), 1) for n in range(MAX_APPS_PER_USER)]
    store.by_user = lambda user_id: apps  # type: ignore[attr-defined]
    answer = service(store, Clock()).answer(GetToken(user_id="2088")).body
    assert answer["truncated"] is True
    assert len(answer["authorizations"]) == MAX_APPS_PER_USER
    store.by_user = lambda user_id: apps[:3]  # type: ignore[attr-defined]
    assert service(store, Clock()).answer(GetToken(user_id="2088")).body["truncated"] is False
