"""TokenCipher against moto's KMS with the stack's real token key (envelope encryption).

What a table export must not reveal, and what rotation must not break: ciphertexts are bound to
their merchant app and field, tampering is detected, data keys are cached per container (and
only as long as allowed), and items sealed under an old KMS key still open after a new key is
configured, because the key id travels with the ciphertext.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.exceptions import ClientError

from appauth.envelope import ALGORITHM, SealedTokens, TokenCipher, TokenDecryptionError
from tests.integration.conftest import REGION, LocalStackEnv

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient

MERCHANT = "2021004100000001"
OTHER_MERCHANT = "2021004100000002"
TOKENS = {
    "app_auth_token": "202406BB0123456789abcdef0123456789abcdefX01",
    "app_refresh_token": "202406BBfedcba9876543210fedcba9876543210X02",
}


class KmsCalls:
    """Counts the KMS operations a client makes (botocore ``before-call`` hook)."""

    def __init__(self, client: Any) -> None:
        self.counts: Counter[str] = Counter()
        client.meta.events.register("before-call.kms.*", self._record)

    def _record(self, model: Any, **_: Any) -> None:
        self.counts[model.name] += 1


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def kms(local_stack: LocalStackEnv) -> KMSClient:
    client: KMSClient = boto3.client(
        "kms", region_name=REGION, endpoint_url=local_stack.endpoint_url
    )
    return client


@pytest.fixture
def key_arn(local_stack: LocalStackEnv) -> str:
    return local_stack.stack.token_key_id


def _flip_byte(blob: bytes, index: int) -> bytes:
    return blob[:index] + bytes([blob[index] ^ 0x01]) + blob[index + 1 :]


def test_seal_and_open_round_trip_without_plaintext_in_the_sealed_item(kms, key_arn):
    cipher = TokenCipher(kms, key_arn)
    sealed = cipher.seal(MERCHANT, TOKENS)
    assert sealed.algorithm == ALGORITHM
    assert set(sealed.fields) == set(TOKENS)
    for name, blob in sealed.fields.items():
        assert TOKENS[name].encode() not in blob
        assert len(blob) == 12 + len(TOKENS[name].encode()) + 16  # nonce + ciphertext + tag
    assert not any(value.encode() in sealed.wrapped_key for value in TOKENS.values())
    assert TOKENS["app_auth_token"] not in repr(sealed)
    assert cipher.open(MERCHANT, sealed) == TOKENS
    # A fresh container (no cached key) opens it too, through KMS.
    assert TokenCipher(kms, key_arn).open(MERCHANT, sealed) == TOKENS


def test_same_value_seals_to_different_ciphertexts(kms, key_arn):
    cipher = TokenCipher(kms, key_arn)
    first = cipher.seal(MERCHANT, TOKENS)
    second = cipher.seal(MERCHANT, TOKENS)
    assert first.wrapped_key == second.wrapped_key  # the cached data key
    assert first.fields["app_auth_token"] != second.fields["app_auth_token"]  # fresh nonces


def test_the_stored_key_id_is_the_key_arn_even_when_configured_by_alias(kms, key_arn):
    assert key_arn.startswith("arn:aws:kms:")
    assert TokenCipher(kms, key_arn).seal(MERCHANT, TOKENS).key_id == key_arn
    by_alias = TokenCipher(kms, "alias/appauth-local-tokens").seal(MERCHANT, TOKENS)
    assert by_alias.key_id == key_arn
    assert TokenCipher(kms, key_arn).open(MERCHANT, by_alias) == TOKENS


def test_ciphertext_is_bound_to_its_merchant_app(kms, key_arn):
    cipher = TokenCipher(kms, key_arn)
    sealed = cipher.seal(MERCHANT, TOKENS)
    # The container that sealed it (data key cached: GCM's associated data refuses) and a fresh
    # one (KMS refuses the data key under the other merchant's encryption context).
    for opener in (cipher, TokenCipher(kms, key_arn)):
        with pytest.raises(TokenDecryptionError) as caught:
            opener.open(OTHER_MERCHANT, sealed)
        assert OTHER_MERCHANT in str(caught.value)
        assert not any(value in str(caught.value) for value in TOKENS.values())
        # The rightful merchant still opens it with the same cipher afterwards.
        assert opener.open(MERCHANT, sealed) == TOKENS


def test_a_whole_sealed_item_moved_to_another_merchant_does_not_open(kms, key_arn):
    """Copying merchant A's sealed tokens into merchant B's item (wrapped key included)."""
    cipher = TokenCipher(kms, key_arn)
    sealed_a = cipher.seal(MERCHANT, TOKENS)
    sealed_b = cipher.seal(OTHER_MERCHANT, {k: v + "b" for k, v in TOKENS.items()})
    # Only the fields moved, under B's (valid, cached) data key: GCM rejects them.
    mixed = replace(sealed_b, fields=sealed_a.fields)
    with pytest.raises(TokenDecryptionError):
        cipher.open(OTHER_MERCHANT, mixed)
    with pytest.raises(TokenDecryptionError):
        TokenCipher(kms, key_arn).open(OTHER_MERCHANT, mixed)


def test_a_field_moved_to_another_field_does_not_open(kms, key_arn):
    cipher = TokenCipher(kms, key_arn)
    sealed = cipher.seal(MERCHANT, TOKENS)
    swapped = replace(
        sealed,
        fields={
            "app_auth_token": sealed.fields["app_refresh_token"],
            "app_refresh_token": sealed.fields["app_auth_token"],
        },
    )
    with pytest.raises(TokenDecryptionError, match=r"app_auth_token|app_refresh_token"):
        cipher.open(MERCHANT, swapped)
    renamed = replace(sealed, fields={"app_refresh_token": sealed.fields["app_auth_token"]})
    with pytest.raises(TokenDecryptionError):
        cipher.open(MERCHANT, renamed)


def test_tampering_any_byte_of_a_field_is_detected(kms, key_arn):
    cipher = TokenCipher(kms, key_arn)
    sealed = cipher.seal(MERCHANT, TOKENS)
    blob = sealed.fields["app_auth_token"]
    for index in (0, 11, 12, 20, len(blob) - 1):  # nonce, ciphertext, tag
        tampered = replace(
            sealed, fields={**sealed.fields, "app_auth_token": _flip_byte(blob, index)}
        )
        with pytest.raises(TokenDecryptionError, match="app_auth_token"):
            cipher.open(MERCHANT, tampered)
    assert cipher.open(MERCHANT, sealed) == TOKENS


def test_truncated_field_and_tampered_wrapped_key_and_unknown_algorithm_fail(kms, key_arn):
    cipher = TokenCipher(kms, key_arn)
    sealed = cipher.seal(MERCHANT, TOKENS)
    truncated = replace(sealed, fields={**sealed.fields, "app_auth_token": b"short"})
    with pytest.raises(TokenDecryptionError):
        cipher.open(MERCHANT, truncated)
    # A tampered wrapped key is not in any cache: KMS refuses it.
    bad_wrap = replace(
        sealed, wrapped_key=_flip_byte(sealed.wrapped_key, len(sealed.wrapped_key) // 2)
    )
    with pytest.raises(TokenDecryptionError, match="KMS refused"):
        TokenCipher(kms, key_arn).open(MERCHANT, bad_wrap)
    with pytest.raises(TokenDecryptionError, match="unsupported"):
        cipher.open(MERCHANT, replace(sealed, algorithm="AES-128-CBC"))


def test_data_keys_are_cached_per_merchant(kms, key_arn):
    calls = KmsCalls(kms)
    cipher = TokenCipher(kms, key_arn)
    sealed = [cipher.seal(MERCHANT, TOKENS) for _ in range(5)]
    assert calls.counts == {"GenerateDataKey": 1}
    assert len({item.wrapped_key for item in sealed}) == 1
    cipher.seal(OTHER_MERCHANT, TOKENS)
    assert calls.counts == {"GenerateDataKey": 2}
    # The container that sealed them opens them without asking KMS.
    for item in sealed:
        assert cipher.open(MERCHANT, item) == TOKENS
    assert calls.counts == {"GenerateDataKey": 2}


def test_an_old_data_key_is_replaced_after_max_age_and_max_uses(kms, key_arn):
    calls = KmsCalls(kms)
    clock = FakeMonotonic()
    cipher = TokenCipher(kms, key_arn, max_age_seconds=300, max_uses=3, monotonic=clock)
    first = cipher.seal(MERCHANT, TOKENS)
    clock.now += 299
    assert cipher.seal(MERCHANT, TOKENS).wrapped_key == first.wrapped_key
    assert calls.counts["GenerateDataKey"] == 1
    clock.now += 2  # 301 s after the key was made
    aged = cipher.seal(MERCHANT, TOKENS)
    assert aged.wrapped_key != first.wrapped_key
    assert calls.counts["GenerateDataKey"] == 2
    # max_uses=3: the 4th seal with the new key gets another one.
    cipher.seal(MERCHANT, TOKENS)
    cipher.seal(MERCHANT, TOKENS)
    assert calls.counts["GenerateDataKey"] == 2
    cipher.seal(MERCHANT, TOKENS)
    assert calls.counts["GenerateDataKey"] == 3
    # Everything sealed under earlier keys still opens.
    assert cipher.open(MERCHANT, first) == TOKENS
    assert cipher.open(MERCHANT, aged) == TOKENS


def test_a_fresh_container_decrypts_each_wrapped_key_once(kms, key_arn):
    sealer = TokenCipher(kms, key_arn)
    items = [
        (app, sealer.seal(app, TOKENS)) for app in (MERCHANT, OTHER_MERCHANT) for _ in range(3)
    ]
    assert len({sealed.wrapped_key for _, sealed in items}) == 2
    calls = KmsCalls(kms)
    fresh = TokenCipher(kms, key_arn)
    for app, sealed in items:
        assert fresh.open(app, sealed) == TOKENS
    assert calls.counts == {"Decrypt": 2}


def test_rotating_to_a_new_kms_key_still_opens_items_sealed_under_the_old_one(kms, key_arn):
    old_items = {
        app: TokenCipher(kms, key_arn).seal(app, TOKENS) for app in (MERCHANT, OTHER_MERCHANT)
    }
    new_key = kms.create_key(Description="replacement token key")["KeyMetadata"]
    assert new_key["Arn"] != key_arn
    calls = KmsCalls(kms)
    rotated = TokenCipher(kms, new_key["Arn"])
    for app, sealed in old_items.items():
        assert sealed.key_id == key_arn
        assert rotated.open(app, sealed) == TOKENS
    new_item = rotated.seal(MERCHANT, TOKENS)
    assert new_item.key_id == new_key["Arn"]
    assert rotated.open(MERCHANT, new_item) == TOKENS
    assert calls.counts == {"Decrypt": 2, "GenerateDataKey": 1}


def test_a_stored_key_id_that_disagrees_with_the_wrapped_key_is_refused(kms, key_arn):
    """The stored key id is passed to KMS Decrypt: an item claiming another key fails closed.

    Real KMS answers IncorrectKeyException (mapped to TokenDecryptionError); moto answers
    AccessDeniedException, which the cipher does not map (see the report): either way no
    plaintext comes back.
    """
    other = kms.create_key(Description="unrelated key")["KeyMetadata"]["Arn"]
    sealed = TokenCipher(kms, key_arn).seal(MERCHANT, TOKENS)
    lying = SealedTokens(key_id=other, wrapped_key=sealed.wrapped_key, fields=sealed.fields)
    with pytest.raises((TokenDecryptionError, ClientError)):
        TokenCipher(kms, key_arn).open(MERCHANT, lying)
