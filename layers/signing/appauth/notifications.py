"""Alipay's asynchronous notifications about authorizations (POST form to the notify URL).

- ``notify_type=open_app_auth_notify``: a merchant authorized (or changed) the app; the
  notification carries the token pair, which is stored like an exchange result. This is also the
  safety net when the callback's exchange answer was lost.
- ``msg_method=alipay.open.auth.appauth.cancelled``: the merchant cancelled; the authorization
  becomes ``revoked`` unless it was re-authorized after the cancellation.

Everything is decoded (the form in its own ``charset``: utf-8, gbk, gb2312 or gb18030) and
verified (signature, then ``app_id``) by :func:`read_notification` before anything changes;
:func:`process_notification` then applies it. Redelivery is harmless: the callback function
answers a ``notify_id`` it already processed from its idempotency record, an older or identical
pair is not written over a newer one, and revoking twice is a no-op.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from appauth.alipay.errors import UnexpectedResponseError
from appauth.alipay.models import TokenGrant, parse_token_response
from appauth.alipay.signing import parse_beijing_timestamp, parse_form, verify_notification
from appauth.authorization import Parker, store_grants
from appauth.errors import InvalidRequestError, WrongAppError
from appauth.state import MERCHANT_REF_PATTERN
from appauth.store import TokenStore

if TYPE_CHECKING:
    from appauth.alipay.credentials import AppCredentials

AUTH_NOTIFY_TYPE = "open_app_auth_notify"
CANCELLED_METHOD = "alipay.open.auth.appauth.cancelled"
MAX_NOTIFICATION_BYTES = 64 * 1024


@dataclass(frozen=True)
class NotificationResult:
    kind: str  # "granted", "cancelled" or "ignored"
    auth_app_id: str | None
    changed: bool

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe (an idempotency record keeps it): no token, no code."""
        return {"kind": self.kind, "auth_app_id": self.auth_app_id, "changed": self.changed}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NotificationResult:
        auth_app_id = data.get("auth_app_id")
        return cls(
            kind=str(data["kind"]),
            auth_app_id=None if auth_app_id is None else str(auth_app_id),
            changed=bool(data.get("changed")),
        )


def _biz_content(params: Mapping[str, str]) -> dict[str, Any]:
    try:
        value = json.loads(params.get("biz_content") or "{}")
    except ValueError:
        raise InvalidRequestError("biz_content is not JSON") from None
    if not isinstance(value, dict):
        raise InvalidRequestError("biz_content is not a JSON object")
    return value


def _millis(value: Any, fallback: datetime | None) -> datetime | None:
    try:
        return datetime.fromtimestamp(int(value) / 1000, UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return fallback


def _beijing(value: str | None) -> datetime | None:
    try:
        return parse_beijing_timestamp(value or "")
    except ValueError:
        return None


def read_notification(body: bytes | str, *, credentials: AppCredentials) -> dict[str, str]:
    """Decode and verify a notification: its form in its own charset, the signature, then the
    ``app_id``. Nothing is trusted (or recorded) before this returns.

    Raises InvalidRequestError (too large), SignatureError (undecodable, repeated field, forged
    or tampered; FormDecodeError for the first two) or WrongAppError.
    """
    if len(body) > MAX_NOTIFICATION_BYTES:
        raise InvalidRequestError("notification body is too large")
    params = parse_form(body)
    verify_notification(params, credentials)
    if params.get("app_id") != credentials.app_id:
        raise WrongAppError("the notification is for another app")
    return params


def process_notification(
    params: Mapping[str, str], *, store: TokenStore, park: Parker, now: datetime
) -> NotificationResult:
    """Apply a notification :func:`read_notification` verified. Returns once the change is
    durable (stored, or parked); raises otherwise, so Alipay's redelivery is processed."""
    content = _biz_content(params)
    if params.get("notify_type") == AUTH_NOTIFY_TYPE:
        return _granted(content, store, park, params.get("notify_time"))
    if params.get("msg_method") == CANCELLED_METHOD:
        auth_app_id = str(content.get("auth_app_id") or params.get("msg_app_id") or "")
        if not auth_app_id:
            raise InvalidRequestError("the cancellation names no auth_app_id")
        cancelled_at = _millis(params.get("utc_timestamp"), now) or now
        changed = store.mark_revoked(
            auth_app_id, cancelled_at=cancelled_at, reason="merchant_cancelled"
        )
        return NotificationResult("cancelled", auth_app_id, changed)
    return NotificationResult("ignored", None, False)


def handle_notification(
    body: bytes | str,
    *,
    credentials: AppCredentials,
    store: TokenStore,
    park: Parker,
    now: datetime,
) -> NotificationResult:
    """:func:`read_notification` then :func:`process_notification` (no de-duplication)."""
    params = read_notification(body, credentials=credentials)
    return process_notification(params, store=store, park=park, now=now)


def _granted(
    content: Mapping[str, Any], store: TokenStore, park: Parker, notify_time: str | None
) -> NotificationResult:
    detail = content.get("detail")
    if not isinstance(detail, dict):
        raise InvalidRequestError("the authorization notification has no detail")
    # Alipay issued the pair at auth_time: using it (not our clock) keeps a late notification
    # from overwriting a pair that was refreshed since. Without it, notify_time is the bound;
    # with neither, the pair is refused (Alipay redelivers) rather than ranked as the newest.
    issued_at = _millis(detail.get("auth_time"), None) or _beijing(notify_time)
    if issued_at is None:
        raise InvalidRequestError(
            "the authorization notification carries no auth_time or notify_time"
        )
    try:
        grant: TokenGrant = parse_token_response(detail, issued_at).single()
    except UnexpectedResponseError as error:
        raise InvalidRequestError(
            f"the authorization notification is incomplete: {error}"
        ) from None
    context = content.get("notify_context")
    trigger = context.get("trigger_context") if isinstance(context, dict) else None
    merchant_ref = trigger.get("out_biz_no") if isinstance(trigger, dict) else None
    if not (isinstance(merchant_ref, str) and MERCHANT_REF_PATTERN.match(merchant_ref)):
        merchant_ref = None
    parked = store_grants([grant], store, park, source="notification", merchant_ref=merchant_ref)
    return NotificationResult("granted", grant.auth_app_id, not parked)
