"""The token query's per-container cache: short-lived, never caches a miss, evicts on a fresh miss."""

from __future__ import annotations

import pytest

from appauth.errors import InvalidRequestError
from appauth.lookup import LookupCache, TokenLookup, TokenQuery


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def granted(version: int) -> TokenLookup:
    return TokenLookup(
        "2018", found=True, status="granted", app_auth_token=f"t{version}", version=version
    )


def test_hits_within_the_age_and_reloads_after():
    clock, loads = Clock(), []

    def load(app: str) -> TokenLookup:
        loads.append(app)
        return granted(len(loads))

    cache = LookupCache(max_age_seconds=30, monotonic=clock)
    assert cache.get_or_load("2018", load).version == 1
    clock.now = 29
    assert cache.get_or_load("2018", load).version == 1
    clock.now = 31
    assert cache.get_or_load("2018", load).version == 2
    assert loads == ["2018", "2018"]


def test_misses_are_not_cached_and_a_fresh_miss_evicts_the_token():
    cache = LookupCache(max_age_seconds=30, monotonic=Clock())
    assert cache.get_or_load("2018", lambda app: granted(1)).app_auth_token == "t1"
    revoked = TokenLookup("2018", found=True, status="revoked")
    assert cache.get_or_load("2018", lambda app: revoked, fresh=True).app_auth_token is None
    # The revocation seen by the fresh read is not hidden by the cached token afterwards.
    assert cache.get_or_load("2018", lambda app: revoked).status == "revoked"


@pytest.mark.parametrize(
    "event",
    [
        None,
        [],
        {},
        {"auth_app_id": 2018},
        {"auth_app_id": "20x8"},
        {"auth_app_id": "1", "consistent": "yes"},
    ],
)
def test_malformed_queries_are_refused(event):
    with pytest.raises(InvalidRequestError):
        TokenQuery.from_event(event)
