"""When to refresh: before the refresh token lapses, for hygiene, spread by jitter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from appauth.policy import DUE_SHARDS, MAX_JITTER, RefreshPolicy, due_shard

ISSUED = datetime(2026, 11, 21, 2, 0, tzinfo=UTC)


def test_refresh_lands_before_the_refresh_token_lapses_by_the_ahead_window():
    policy = RefreshPolicy(ahead_days=30, hygiene_days=400)
    re_expires = ISSUED + timedelta(seconds=32140800)
    at = policy.next_refresh_at("2018042501227906", ISSUED, re_expires)
    assert re_expires - timedelta(days=30) - MAX_JITTER <= at <= re_expires - timedelta(days=30)


def test_hygiene_wins_when_it_comes_first():
    policy = RefreshPolicy(ahead_days=30, hygiene_days=90)
    at = policy.next_refresh_at("2018042501227906", ISSUED, ISSUED + timedelta(days=372))
    assert ISSUED + timedelta(days=89) <= at <= ISSUED + timedelta(days=90)


def test_jitter_is_stable_per_grant_and_spreads_merchants():
    policy = RefreshPolicy()
    re_expires = ISSUED + timedelta(days=372)
    first = policy.next_refresh_at("app-1", ISSUED, re_expires)
    assert first == policy.next_refresh_at("app-1", ISSUED, re_expires)
    spread = {policy.next_refresh_at(f"app-{n}", ISSUED, re_expires) for n in range(100)}
    assert len(spread) > 90
    assert max(spread) - min(spread) > timedelta(hours=12)


def test_never_schedules_before_issue_even_for_a_nearly_expired_pair():
    policy = RefreshPolicy(ahead_days=30)
    at = policy.next_refresh_at("app", ISSUED, ISSUED + timedelta(days=1))
    assert at == ISSUED


def test_shards_are_stable_and_all_used():
    shards = [due_shard(f"20210000{n:08d}") for n in range(1000)]
    assert shards == [due_shard(f"20210000{n:08d}") for n in range(1000)]
    assert set(shards) == {str(n) for n in range(DUE_SHARDS)}
