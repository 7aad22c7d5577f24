"""Per-attribute token encryption: AES-256-GCM under a KMS data key (envelope encryption).

Each merchant app's tokens are encrypted under a data key generated with the KMS encryption
context ``{"auth_app_id": <id>, "purpose": "appauth-token"}``, so a table export or a broad
``dynamodb:GetItem`` grant reveals nothing, every KMS Decrypt in CloudTrail names the merchant,
and IAM can restrict who may decrypt. The GCM associated data binds each ciphertext to its
merchant app and attribute, so ciphertexts cannot be swapped between items or fields.

Data keys are cached per container (bounded by age and count) to keep KMS calls off the hot path;
the wrapped key and the KMS key id are stored beside the ciphertext, so the KMS key can be
rotated or replaced and old items still decrypt.
"""

from __future__ import annotations

import base64
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from appauth.alipay.errors import AppAuthError

if TYPE_CHECKING:
    from mypy_boto3_kms import KMSClient

ALGORITHM = "AES-256-GCM"
PURPOSE = "appauth-token"
NONCE_BYTES = 12
# KMS answers that mean "this stored pair cannot be opened here", as opposed to KMS being down.
REFUSALS = frozenset(
    {
        "InvalidCiphertextException",
        "IncorrectKeyException",
        "NotFoundException",
        "DisabledException",
        "KMSInvalidStateException",
        "KeyUnavailableException",
        "AccessDeniedException",
    }
)


class TokenDecryptionError(AppAuthError):
    """A stored token does not decrypt: wrong merchant, tampered ciphertext or an unknown key."""


@dataclass(frozen=True)
class SealedTokens:
    """What is stored: the wrapped data key, the KMS key id, and one ciphertext per field."""

    key_id: str
    wrapped_key: bytes = field(repr=False)
    fields: Mapping[str, bytes] = field(repr=False)
    algorithm: str = ALGORITHM


def sealed_to_json(sealed: SealedTokens) -> dict[str, Any]:
    """A JSON-safe form (base64), e.g. for a parked message."""
    return {
        "key_id": sealed.key_id,
        "alg": sealed.algorithm,
        "wrapped_key": base64.b64encode(sealed.wrapped_key).decode("ascii"),
        "fields": {k: base64.b64encode(v).decode("ascii") for k, v in sealed.fields.items()},
    }


def sealed_from_json(data: Mapping[str, Any]) -> SealedTokens:
    return SealedTokens(
        key_id=data["key_id"],
        wrapped_key=base64.b64decode(data["wrapped_key"]),
        fields={k: base64.b64decode(v) for k, v in data["fields"].items()},
        algorithm=data.get("alg", ALGORITHM),
    )


def encryption_context(auth_app_id: str) -> dict[str, str]:
    return {"auth_app_id": auth_app_id, "purpose": PURPOSE}


def _aad(auth_app_id: str, name: str) -> bytes:
    return f"{PURPOSE}|{auth_app_id}|{name}".encode()


@dataclass
class _DataKey:
    plaintext: bytes = field(repr=False)
    wrapped: bytes = field(repr=False)
    key_id: str
    created: float
    uses: int = 0


class TokenCipher:
    """Seals and opens token fields for one merchant app at a time."""

    def __init__(
        self,
        kms: KMSClient,
        key_id: str,
        *,
        max_age_seconds: float = 300.0,
        max_uses: int = 1000,
        max_cached_keys: int = 2048,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._kms = kms
        self._key_id = key_id
        self._max_age = max_age_seconds
        self._max_uses = max_uses
        self._max_cached = max_cached_keys
        self._monotonic = monotonic
        self._encrypt_keys: OrderedDict[str, _DataKey] = OrderedDict()
        # wrapped key -> (plaintext key, when unwrapped): aged like the encrypt keys, so a disabled
        # KMS key stops decrypting in warm containers too.
        self._decrypt_keys: OrderedDict[bytes, tuple[bytes, float]] = OrderedDict()
        self._lock = threading.Lock()

    def seal(self, auth_app_id: str, values: Mapping[str, str]) -> SealedTokens:
        data_key = self._data_key_for(auth_app_id)
        aes = AESGCM(data_key.plaintext)
        sealed: dict[str, bytes] = {}
        for name, value in values.items():
            nonce = os.urandom(NONCE_BYTES)
            sealed[name] = nonce + aes.encrypt(
                nonce, value.encode("utf-8"), _aad(auth_app_id, name)
            )
        return SealedTokens(key_id=data_key.key_id, wrapped_key=data_key.wrapped, fields=sealed)

    def open(self, auth_app_id: str, sealed: SealedTokens) -> dict[str, str]:
        if sealed.algorithm != ALGORITHM:
            raise TokenDecryptionError(f"unsupported token algorithm {sealed.algorithm!r}")
        aes = AESGCM(self._unwrap(auth_app_id, sealed))
        opened: dict[str, str] = {}
        for name, blob in sealed.fields.items():
            try:
                plain = aes.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], _aad(auth_app_id, name))
            except (InvalidTag, ValueError):
                raise TokenDecryptionError(
                    f"stored field {name!r} of merchant app {auth_app_id} does not decrypt"
                ) from None
            opened[name] = plain.decode("utf-8")
        return opened

    def _data_key_for(self, auth_app_id: str) -> _DataKey:
        now = self._monotonic()
        with self._lock:
            cached = self._encrypt_keys.get(auth_app_id)
            if cached and now - cached.created < self._max_age and cached.uses < self._max_uses:
                cached.uses += 1
                self._encrypt_keys.move_to_end(auth_app_id)
                return cached
        response = self._kms.generate_data_key(
            KeyId=self._key_id, KeySpec="AES_256", EncryptionContext=encryption_context(auth_app_id)
        )
        data_key = _DataKey(
            plaintext=response["Plaintext"],
            wrapped=response["CiphertextBlob"],
            key_id=response["KeyId"],
            created=now,
            uses=1,
        )
        with self._lock:
            self._encrypt_keys[auth_app_id] = data_key
            self._decrypt_keys[data_key.wrapped] = (data_key.plaintext, now)
            self._trim()
        return data_key

    def _unwrap(self, auth_app_id: str, sealed: SealedTokens) -> bytes:
        now = self._monotonic()
        with self._lock:
            cached = self._decrypt_keys.get(sealed.wrapped_key)
            if cached is not None and now - cached[1] < self._max_age:
                self._decrypt_keys.move_to_end(sealed.wrapped_key)
                # The wrapped key was produced under this merchant's context; GCM's associated
                # data still rejects a ciphertext moved to another merchant's item.
                return cached[0]
        try:
            response = self._kms.decrypt(
                CiphertextBlob=sealed.wrapped_key,
                KeyId=sealed.key_id,
                EncryptionContext=encryption_context(auth_app_id),
            )
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code", "")
            if code not in REFUSALS:
                raise
            raise TokenDecryptionError(
                f"KMS refused the data key of merchant app {auth_app_id} ({code}: wrong merchant, "
                "tampered item, key disabled or pending deletion, or no kms:Decrypt on the key)"
            ) from None
        plaintext = response["Plaintext"]
        with self._lock:
            self._decrypt_keys[sealed.wrapped_key] = (plaintext, now)
            self._trim()
        return plaintext

    def _trim(self) -> None:
        while len(self._encrypt_keys) > self._max_cached:
            self._encrypt_keys.popitem(last=False)
        while len(self._decrypt_keys) > self._max_cached:
            self._decrypt_keys.popitem(last=False)
