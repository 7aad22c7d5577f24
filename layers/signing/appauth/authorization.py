"""The authorization flow: start (issue a state and the Alipay link) and complete (the redirect).

Order of the callback, each step before anything it protects:
1. the request's shape and ``app_id``; 2. the state's HMAC and expiry; 3. the state's one-time
use, consumed atomically; 4. the code exchange (the client verifies Alipay's signature);
5. every returned pair stored durably, or parked if the store refuses; 6. the outcome.
A failure a retry can fix (Alipay busy, nothing sent) releases the state so the merchant can
reload; a permanent one (code refused) does not.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from appauth.alipay.errors import AlipayError, OutcomeUnknownError, TransportError
from appauth.alipay.ids import is_app_id
from appauth.alipay.models import TokenGrant
from appauth.authorize_url import DEFAULT_BATCH_TYPES, authorization_url, parse_application_types
from appauth.errors import (
    AlipayUnavailableError,
    InvalidCodeError,
    InvalidRequestError,
    OutcomeUncertainError,
    WrongAppError,
)
from appauth.state import MAX_STATE_LENGTH, issue_state, validate_merchant_ref, verify_state
from appauth.store import TokenStore

if TYPE_CHECKING:
    from appauth.alipay.client import AlipayClient

CODE_PATTERN = re.compile(r"^[A-Za-z0-9]{8,64}$")


class Parker(Protocol):
    def __call__(
        self, grants: Sequence[TokenGrant], *, source: str, reason: str, merchant_ref: str | None
    ) -> None: ...


# --- start ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StartRequest:
    redirect_uri: str
    merchant_ref: str | None = None
    batch: bool = False
    application_types: tuple[str, ...] = DEFAULT_BATCH_TYPES

    @classmethod
    def from_query(cls, query: Mapping[str, str], *, redirect_uri: str) -> StartRequest:
        batch_flag = query.get("batch", "0")
        if batch_flag not in ("0", "1", "true", "false"):
            raise InvalidRequestError("batch must be 1 or 0")
        batch = batch_flag in ("1", "true")
        if not batch and query.get("application_type"):
            raise InvalidRequestError("application_type is only for batch=1")
        return cls(
            redirect_uri=redirect_uri,
            merchant_ref=validate_merchant_ref(query.get("merchant_ref")),
            batch=batch,
            application_types=parse_application_types(query.get("application_type")),
        )


@dataclass(frozen=True)
class StartResult:
    url: str
    expires_at: int
    batch: bool
    merchant_ref: str | None


def start_authorization(
    request: StartRequest,
    *,
    app_id: str,
    auth_base_url: str,
    store: TokenStore,
    state_secret: bytes,
    state_ttl_seconds: int,
    now: int,
) -> StartResult:
    token, state = issue_state(
        state_secret,
        now=now,
        ttl_seconds=state_ttl_seconds,
        merchant_ref=request.merchant_ref,
        batch=request.batch,
    )
    store.put_state(state)
    url = authorization_url(
        auth_base_url,
        app_id,
        request.redirect_uri,
        token,
        batch=request.batch,
        application_types=request.application_types,
    )
    return StartResult(
        url=url, expires_at=state.expires_at, batch=request.batch, merchant_ref=request.merchant_ref
    )


# --- complete ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CallbackRequest:
    app_id: str
    app_auth_code: str = field(repr=False)
    state: str = field(repr=False)

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> CallbackRequest:
        app_id = query.get("app_id", "")
        code = query.get("app_auth_code", "")
        state = query.get("state", "")
        if not app_id or not code:
            raise InvalidRequestError("app_id and app_auth_code are required")
        if not is_app_id(app_id):
            raise InvalidRequestError("app_id is malformed")
        if not CODE_PATTERN.match(code):
            raise InvalidRequestError("app_auth_code is malformed")
        if len(state) > MAX_STATE_LENGTH:
            raise InvalidRequestError("state is too long")
        return cls(app_id=app_id, app_auth_code=code, state=state)

    def as_dict(self) -> dict[str, str]:
        return {"app_id": self.app_id, "app_auth_code": self.app_auth_code, "state": self.state}


@dataclass(frozen=True)
class AuthorizationOutcome:
    """What the merchant is told. Holds no token, so it may be cached and logged."""

    auth_app_ids: tuple[str, ...]
    merchant_ref: str | None
    batch: bool
    parked: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "auth_app_ids": list(self.auth_app_ids),
            "merchant_ref": self.merchant_ref,
            "batch": self.batch,
            "parked": self.parked,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuthorizationOutcome:
        return cls(
            auth_app_ids=tuple(data["auth_app_ids"]),
            merchant_ref=data.get("merchant_ref"),
            batch=bool(data.get("batch")),
            parked=bool(data.get("parked")),
        )


def complete_authorization(
    request: CallbackRequest,
    *,
    app_id: str,
    client: AlipayClient,
    store: TokenStore,
    park: Parker,
    state_secret: bytes,
    now: int,
) -> AuthorizationOutcome:
    if request.app_id != app_id:
        raise WrongAppError("this authorization is for another app")
    state = verify_state(request.state, state_secret, now=now)
    store.consume_state(state)
    try:
        response = client.exchange_code(request.app_auth_code)
    except OutcomeUnknownError:
        raise OutcomeUncertainError(
            "Alipay did not confirm the authorization in time; if it went through, it will be "
            "recorded from Alipay's notification, otherwise please authorize again"
        ) from None
    except TransportError:
        store.release_state(state)
        raise AlipayUnavailableError(
            "Alipay could not be reached; please retry in a minute"
        ) from None
    except AlipayError as error:
        if error.transient:
            store.release_state(state)
            raise AlipayUnavailableError("Alipay is busy; please retry in a minute") from None
        raise InvalidCodeError(
            "Alipay refused this authorization code (already used or expired); please authorize again",
            reason=f"alipay_{error.code}",
        ) from None
    parked = store_grants(
        response.grants, store, park, source="authorization", merchant_ref=state.merchant_ref
    )
    return AuthorizationOutcome(
        auth_app_ids=tuple(grant.auth_app_id for grant in response.grants),
        merchant_ref=state.merchant_ref,
        batch=state.batch,
        parked=parked,
    )


def store_grants(
    grants: Sequence[TokenGrant],
    store: TokenStore,
    park: Parker,
    *,
    source: str,
    merchant_ref: str | None,
) -> bool:
    """Store every pair; any the store refuses is parked. True when something was parked."""
    refused: list[TokenGrant] = []
    for grant in grants:
        try:
            store.save_grant(grant, source=source, merchant_ref=merchant_ref)
        except (BotoCoreError, ClientError):
            refused.append(grant)
    if refused:
        park(refused, source=source, reason="store_unavailable", merchant_ref=merchant_ref)
    return bool(refused)
