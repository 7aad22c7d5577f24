"""Typed results of the token APIs. Token values never appear in ``repr`` (they end up in logs)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from appauth.alipay.errors import UnexpectedResponseError

_TOKEN_FIELDS = ("app_auth_token", "app_refresh_token", "auth_app_id")


@dataclass(frozen=True)
class TokenGrant:
    """One merchant app's token pair, as Alipay returned it, stamped with when we received it."""

    auth_app_id: str
    user_id: str | None
    app_auth_token: str = field(repr=False)
    app_refresh_token: str = field(repr=False)
    expires_in: int | None
    re_expires_in: int | None
    received_at: datetime
    # When the answer arrived (a code exchange): Alipay issued the pair between ``received_at``
    # (when we sent the request) and this. A new authorization is ordered by it, so it wins over
    # a refresh that overlapped it (see TokenStore.save_grant).
    answered_at: datetime | None = None

    def secrets(self) -> dict[str, str]:
        """The two values that are sealed at rest, by field name."""
        return {"app_auth_token": self.app_auth_token, "app_refresh_token": self.app_refresh_token}

    @property
    def expires_at(self) -> datetime | None:
        return (
            None
            if self.expires_in is None
            else self.received_at + timedelta(seconds=self.expires_in)
        )

    @property
    def re_expires_at(self) -> datetime | None:
        """When the refresh token lapses: the date the refresh schedule must beat."""
        if self.re_expires_in is None:
            return None
        return self.received_at + timedelta(seconds=self.re_expires_in)


@dataclass(frozen=True)
class TokenResponse:
    """Every grant in one ``alipay.open.auth.token.app`` answer (several for a batch authorization).

    ``incomplete`` counts entries that lacked a token or an id: the complete ones are still
    returned, so one malformed entry never discards its valid siblings.
    """

    grants: tuple[TokenGrant, ...]
    incomplete: int = 0

    def single(self) -> TokenGrant:
        if len(self.grants) != 1:
            raise UnexpectedResponseError(
                f"expected one token pair, Alipay returned {len(self.grants)}"
            )
        return self.grants[0]


@dataclass(frozen=True)
class AuthorizationInfo:
    """What ``alipay.open.auth.token.app.query`` says about a token."""

    auth_app_id: str
    user_id: str | None
    status: str
    auth_methods: tuple[str, ...]
    auth_start: str | None
    auth_end: str | None
    expires_in: int | None

    @property
    def valid(self) -> bool:
        return self.status == "valid"


def _optional_int(value: Any, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise UnexpectedResponseError(f"'{name}' is not a number") from None


def _optional_str(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _grant(entry: Mapping[str, Any], received_at: datetime) -> TokenGrant:
    missing = [name for name in _TOKEN_FIELDS if not entry.get(name)]
    if missing:
        raise UnexpectedResponseError(f"a token entry lacks {', '.join(missing)}")
    return TokenGrant(
        auth_app_id=str(entry["auth_app_id"]),
        user_id=_optional_str(entry.get("user_id")),
        app_auth_token=str(entry["app_auth_token"]),
        app_refresh_token=str(entry["app_refresh_token"]),
        expires_in=_optional_int(entry.get("expires_in"), "expires_in"),
        re_expires_in=_optional_int(entry.get("re_expires_in"), "re_expires_in"),
        received_at=received_at,
    )


def parse_token_response(data: Mapping[str, Any], received_at: datetime) -> TokenResponse:
    """Both shapes: top-level fields and/or ``tokens[]``. Identical duplicates collapse to one."""
    entries: list[Mapping[str, Any]] = []
    if data.get("app_auth_token"):
        entries.append(data)
    tokens = data.get("tokens") or []
    if not isinstance(tokens, list) or not all(isinstance(t, Mapping) for t in tokens):
        raise UnexpectedResponseError("'tokens' is not a list of objects")
    entries.extend(tokens)
    grants: list[TokenGrant] = []
    incomplete = 0
    for entry in entries:
        try:
            grant = _grant(entry, received_at)
        except UnexpectedResponseError:
            incomplete += 1
            continue
        if grant not in grants:
            grants.append(grant)
    if not grants:
        raise UnexpectedResponseError("the token response holds no complete token pair")
    return TokenResponse(tuple(grants), incomplete)


def parse_authorization_info(data: Mapping[str, Any]) -> AuthorizationInfo:
    if not data.get("auth_app_id") or not data.get("status"):
        raise UnexpectedResponseError("the query response lacks auth_app_id or status")
    methods = data.get("auth_methods") or []
    if not isinstance(methods, list):
        raise UnexpectedResponseError("'auth_methods' is not a list")
    return AuthorizationInfo(
        auth_app_id=str(data["auth_app_id"]),
        user_id=_optional_str(data.get("user_id")),
        status=str(data["status"]),
        auth_methods=tuple(str(m) for m in methods),
        auth_start=_optional_str(data.get("auth_start")),
        auth_end=_optional_str(data.get("auth_end")),
        expires_in=_optional_int(data.get("expires_in"), "expires_in"),
    )
