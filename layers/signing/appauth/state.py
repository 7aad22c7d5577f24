"""The one-time ``state`` carried through Alipay's consent page and back to the callback.

Format: ``v1.<base64url(json payload)>.<base64url(HMAC-SHA256(secret, "v1." + payload))>``.
The HMAC proves we issued it (no forged callbacks), the expiry bounds its life, and the nonce is
recorded when issued and consumed atomically at the callback (no replays).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass

from appauth.errors import InvalidRequestError, InvalidStateError

VERSION = "v1"
MAX_STATE_LENGTH = 1024
MERCHANT_REF_PATTERN = re.compile(r"^[A-Za-z0-9_.:@-]{1,64}$")
APPLICATION_TYPES = frozenset({"TINYAPP", "WEBAPP", "MOBILEAPP", "PUBLICAPP", "ARAPP"})


@dataclass(frozen=True)
class AuthState:
    nonce: str
    expires_at: int
    merchant_ref: str | None = None
    batch: bool = False


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    """Strict base64url: only the one canonical spelling decodes (no junk, no spare bits), so
    a state cannot be varied to slip past the idempotency key or a cache."""
    data = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    if _b64(data) != text:
        raise ValueError("non-canonical base64")
    return data


def _mac(secret: bytes, signed_part: str) -> bytes:
    return hmac.new(secret, signed_part.encode("ascii"), hashlib.sha256).digest()


def validate_merchant_ref(merchant_ref: str | None) -> str | None:
    if merchant_ref is None or merchant_ref == "":
        return None
    if not MERCHANT_REF_PATTERN.match(merchant_ref):
        raise InvalidRequestError(
            "merchant_ref must be 1-64 characters of letters, digits and _ . : @ -"
        )
    return merchant_ref


def issue_state(
    secret: bytes,
    *,
    now: int,
    ttl_seconds: int,
    merchant_ref: str | None = None,
    batch: bool = False,
) -> tuple[str, AuthState]:
    state = AuthState(
        nonce=secrets.token_urlsafe(18),
        expires_at=now + ttl_seconds,
        merchant_ref=validate_merchant_ref(merchant_ref),
        batch=batch,
    )
    payload = {"n": state.nonce, "e": state.expires_at, "b": int(batch)}
    if state.merchant_ref:
        payload["r"] = state.merchant_ref
    body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode("utf-8"))
    signed_part = f"{VERSION}.{body}"
    return f"{signed_part}.{_b64(_mac(secret, signed_part))}", state


def verify_state(token: str | None, secret: bytes, *, now: int) -> AuthState:
    """Check signature and expiry (not use: the store consumes the nonce atomically)."""
    if not token:
        raise InvalidStateError("the state parameter is missing; start the authorization again")
    if len(token) > MAX_STATE_LENGTH or token.count(".") != 2:
        raise InvalidStateError("the state parameter is malformed")
    version, body, mac = token.split(".")
    if version != VERSION:
        raise InvalidStateError("the state parameter has an unknown version")
    try:
        expected = _mac(secret, f"{version}.{body}")
        if not hmac.compare_digest(_unb64(mac), expected):
            raise InvalidStateError("the state parameter was not issued by this service")
        payload = json.loads(_unb64(body))
        state = AuthState(
            nonce=str(payload["n"]),
            expires_at=int(payload["e"]),
            merchant_ref=payload.get("r"),
            batch=bool(payload.get("b")),
        )
    except InvalidStateError:
        raise
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise InvalidStateError("the state parameter is malformed") from None
    if state.expires_at <= now:
        raise InvalidStateError("the authorization link has expired; start the authorization again")
    return state
