"""Parsing the token APIs' answers into typed results, from the official vectors' shapes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from appauth.alipay.errors import UnexpectedResponseError
from appauth.alipay.models import parse_authorization_info, parse_token_response
from appauth.alipay.redaction import mask
from appauth.alipay.signing import verify_response

RECEIVED = datetime(2026, 11, 21, 2, 0, tzinfo=UTC)


def _accepted(vectors, app_credentials, name_part: str):
    for vector in vectors["v2_responses"]:
        if name_part in vector["name"] and vector["expect"] == "accept":
            return verify_response(vector["body"], vector["method"], app_credentials)
    raise LookupError(name_part)


def test_seed_shape_top_level_and_tokens_collapse_to_one_grant(vectors, app_credentials):
    data = _accepted(vectors, app_credentials, "single merchant")
    grants = parse_token_response(data, RECEIVED).grants
    assert len(grants) == 1
    grant = grants[0]
    assert grant.app_auth_token == data["app_auth_token"]
    assert grant.app_refresh_token == data["app_refresh_token"]
    assert grant.auth_app_id == data["auth_app_id"]
    assert grant.user_id == data["user_id"]
    assert grant.re_expires_at == RECEIVED + timedelta(seconds=data["re_expires_in"])
    assert grant.expires_at == RECEIVED + timedelta(seconds=data["expires_in"])


def test_batch_shape_gives_one_grant_per_app(vectors, app_credentials):
    data = _accepted(vectors, app_credentials, "batch authorization")
    response = parse_token_response(data, RECEIVED)
    assert [g.auth_app_id for g in response.grants] == [t["auth_app_id"] for t in data["tokens"]]
    assert len(response.grants) > 1
    with pytest.raises(UnexpectedResponseError):
        response.single()


def test_conflicting_top_level_and_tokens_keep_both_pairs():
    # Nothing Alipay returned is dropped, even when the two shapes disagree.
    entry = {"app_auth_token": "a" * 40, "app_refresh_token": "r" * 40, "auth_app_id": "2018"}
    other = dict(entry, app_auth_token="b" * 40)
    response = parse_token_response({**entry, "tokens": [other]}, RECEIVED)
    assert {g.app_auth_token for g in response.grants} == {"a" * 40, "b" * 40}


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"tokens": []},
        {"tokens": "nope"},
        {"tokens": [{"app_auth_token": "x"}]},
        {"app_auth_token": "t", "app_refresh_token": "r", "auth_app_id": "1", "expires_in": "soon"},
    ],
    ids=["empty", "no-tokens", "tokens-not-list", "entry-missing-fields", "bad-number"],
)
def test_unusable_token_responses_are_refused(data):
    with pytest.raises(UnexpectedResponseError):
        parse_token_response(data, RECEIVED)


def test_token_values_never_appear_in_repr(vectors, app_credentials):
    data = _accepted(vectors, app_credentials, "single merchant")
    response = parse_token_response(data, RECEIVED)
    text = repr(response)
    assert data["app_auth_token"] not in text
    assert data["app_refresh_token"] not in text
    assert data["auth_app_id"] in text


def test_query_response_parses(vectors, app_credentials):
    data = _accepted(vectors, app_credentials, "query with escaped slashes")
    info = parse_authorization_info(data)
    assert info.valid is (data["status"] == "valid")
    assert info.auth_methods == tuple(data["auth_methods"])
    assert info.auth_end == data["auth_end"]
    invalid = parse_authorization_info(dict(data, status="invalid"))
    assert not invalid.valid


@pytest.mark.parametrize(
    "data", [{}, {"auth_app_id": "1"}, {"auth_app_id": "1", "status": "valid", "auth_methods": "x"}]
)
def test_unusable_query_responses_are_refused(data):
    with pytest.raises(UnexpectedResponseError):
        parse_authorization_info(data)


@pytest.mark.parametrize("secret", ["201904BBf9c9781043854fe58c25b4b378350A89", "short", ""])
def test_mask_reveals_at_most_seven_characters(secret):
    masked = mask(secret)
    assert secret[4:-3] not in masked or len(secret) < 8
    if len(secret) >= 16:
        assert masked.startswith(secret[:4])
        assert f"({len(secret)})" in masked


def test_one_incomplete_entry_does_not_discard_its_valid_siblings():
    good = {"app_auth_token": "a" * 40, "app_refresh_token": "r" * 40, "auth_app_id": "2018"}
    response = parse_token_response({"tokens": [good, {"auth_app_id": "2019"}]}, RECEIVED)
    assert [g.auth_app_id for g in response.grants] == ["2018"]
    assert response.incomplete == 1
