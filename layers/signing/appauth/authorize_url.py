"""Alipay's authorization (consent) URLs: one merchant app, or a batch of its apps."""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import urlencode, urlsplit

from appauth.errors import InvalidRequestError
from appauth.state import APPLICATION_TYPES

SINGLE_PATH = "/oauth2/appToAppAuth.htm"
BATCH_PATH = "/oauth2/appToAppBatchAuth.htm"
DEFAULT_BATCH_TYPES = ("TINYAPP", "WEBAPP")


def parse_application_types(raw: str | None) -> tuple[str, ...]:
    """``TINYAPP,WEBAPP`` → validated, de-duplicated, in the given order."""
    if not raw:
        return DEFAULT_BATCH_TYPES
    types: list[str] = []
    for item in raw.split(","):
        name = item.strip().upper()
        if name not in APPLICATION_TYPES:
            raise InvalidRequestError(
                f"application_type must be a comma-separated list of {', '.join(sorted(APPLICATION_TYPES))}"
            )
        if name not in types:
            types.append(name)
    return tuple(types)


def authorization_url(
    auth_base_url: str,
    app_id: str,
    redirect_uri: str,
    state: str,
    *,
    batch: bool = False,
    application_types: Sequence[str] = DEFAULT_BATCH_TYPES,
) -> str:
    parts = urlsplit(redirect_uri)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise InvalidRequestError("redirect_uri must be an absolute http(s) URL")
    params = {"app_id": app_id}
    if batch:
        params["application_type"] = ",".join(application_types)
    params["redirect_uri"] = redirect_uri
    params["state"] = state
    path = BATCH_PATH if batch else SINGLE_PATH
    return f"{auth_base_url.rstrip('/')}{path}?{urlencode(params)}"
