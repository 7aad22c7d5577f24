"""The signed one-time state: only we can issue it, it expires, and tampering is caught."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest

from appauth.errors import InvalidRequestError, InvalidStateError
from appauth.state import MAX_STATE_LENGTH, issue_state, verify_state

SECRET = b"s" * 48
NOW = 1_763_690_400


def test_round_trip_carries_reference_batch_and_expiry():
    token, issued = issue_state(
        SECRET, now=NOW, ttl_seconds=600, merchant_ref="shop-42", batch=True
    )
    verified = verify_state(token, SECRET, now=NOW + 599)
    assert verified == issued
    assert verified.merchant_ref == "shop-42"
    assert verified.batch is True
    assert verified.expires_at == NOW + 600


def test_each_state_has_its_own_nonce():
    nonces = {issue_state(SECRET, now=NOW, ttl_seconds=60)[1].nonce for _ in range(50)}
    assert len(nonces) == 50


def test_expired_state_is_refused():
    token, _ = issue_state(SECRET, now=NOW, ttl_seconds=600)
    with pytest.raises(InvalidStateError, match="expired"):
        verify_state(token, SECRET, now=NOW + 600)


def test_state_signed_with_another_secret_is_refused():
    token, _ = issue_state(b"x" * 48, now=NOW, ttl_seconds=600)
    with pytest.raises(InvalidStateError, match="not issued by this service"):
        verify_state(token, SECRET, now=NOW)


def test_tampered_payload_is_refused_even_with_a_valid_looking_shape():
    token, _ = issue_state(SECRET, now=NOW, ttl_seconds=600, merchant_ref="shop-42")
    version, body, mac = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload["r"] = "shop-43"
    forged = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    with pytest.raises(InvalidStateError):
        verify_state(f"{version}.{forged}.{mac}", SECRET, now=NOW)


@pytest.mark.parametrize(
    "token",
    [
        None,
        "",
        "abc",
        "v1.a.b.c",
        "v2.e30.AAAA",
        "v1.!!!.???",
        "v1." + "A" * MAX_STATE_LENGTH + ".x",
    ],
    ids=["none", "empty", "no-dots", "too-many-parts", "other-version", "not-base64", "too-long"],
)
def test_malformed_states_are_refused(token):
    with pytest.raises(InvalidStateError):
        verify_state(token, SECRET, now=NOW)


def test_a_correctly_signed_but_incomplete_payload_is_malformed():
    body = base64.urlsafe_b64encode(b'{"e":1}').rstrip(b"=").decode()
    mac = hmac.new(SECRET, f"v1.{body}".encode(), hashlib.sha256).digest()
    token = f"v1.{body}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    with pytest.raises(InvalidStateError, match="malformed"):
        verify_state(token, SECRET, now=NOW)


@pytest.mark.parametrize("ref", ["has space", "<script>", "x" * 65, "商户"])
def test_merchant_reference_is_restricted(ref):
    with pytest.raises(InvalidRequestError):
        issue_state(SECRET, now=NOW, ttl_seconds=60, merchant_ref=ref)


def test_only_the_canonical_spelling_of_a_state_verifies():
    token, _ = issue_state(SECRET, now=NOW, ttl_seconds=600)
    assert verify_state(token, SECRET, now=NOW)
    for variant in (token + "!!", token[:-1] + "=", token.replace(".", ".\n", 1)):
        with pytest.raises(InvalidStateError):
            verify_state(variant, SECRET, now=NOW)
