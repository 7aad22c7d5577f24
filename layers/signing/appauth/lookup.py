"""Token look-ups for other Lambdas: one GetItem, one decrypt, and a short in-memory cache.

The cache is short on purpose: after a refresh the previous pair keeps working for a while at
Alipay, so a few seconds of staleness is safe, while a revocation must show quickly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from appauth.alipay.credentials import is_app_id
from appauth.errors import InvalidRequestError
from appauth.store import STATUS_GRANTED, TokenStore


@dataclass(frozen=True)
class TokenQuery:
    """``consistent`` skips the cache and reads the latest write: for a caller Alipay just told
    that its token is invalid, or that knows the merchant re-authorized a moment ago."""

    auth_app_id: str
    consistent: bool = False

    @classmethod
    def from_event(cls, event: Any) -> TokenQuery:
        if not isinstance(event, Mapping):
            raise InvalidRequestError(
                'the event must be a JSON object like {"auth_app_id": "2021..."}'
            )
        auth_app_id = event.get("auth_app_id")
        if not is_app_id(auth_app_id):
            raise InvalidRequestError("auth_app_id must be the merchant app's numeric id")
        consistent = event.get("consistent", False)
        if not isinstance(consistent, bool):
            raise InvalidRequestError("consistent must be true or false")
        return cls(auth_app_id, consistent)


@dataclass(frozen=True)
class TokenLookup:
    """``app_auth_token`` is present only while the authorization is ``granted``."""

    auth_app_id: str
    found: bool
    status: str | None = None
    app_auth_token: str | None = field(default=None, repr=False)
    user_id: str | None = None
    version: int | None = None
    expires_at: datetime | None = None
    re_expires_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        if not self.found:
            return {"auth_app_id": self.auth_app_id, "found": False}
        return {
            "auth_app_id": self.auth_app_id,
            "found": True,
            "status": self.status,
            "app_auth_token": self.app_auth_token,
            "user_id": self.user_id,
            "version": self.version,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "re_expires_at": self.re_expires_at.isoformat() if self.re_expires_at else None,
        }


def lookup_token(store: TokenStore, auth_app_id: str, *, consistent: bool = False) -> TokenLookup:
    stored = store.get(auth_app_id, consistent=consistent)
    if stored is None:
        return TokenLookup(auth_app_id, found=False)
    token = store.open_tokens(stored)[0] if stored.status == STATUS_GRANTED else None
    return TokenLookup(
        auth_app_id=auth_app_id,
        found=True,
        status=stored.status,
        app_auth_token=token,
        user_id=stored.user_id,
        version=stored.version,
        expires_at=stored.expires_at,
        re_expires_at=stored.re_expires_at,
    )


class LookupCache:
    """A per-container cache of look-ups, bounded in age and size."""

    def __init__(
        self,
        max_age_seconds: float = 30.0,
        max_items: int = 1024,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_age = max_age_seconds
        self._max_items = max_items
        self._monotonic = monotonic
        self._items: dict[str, tuple[float, TokenLookup]] = {}
        self._lock = threading.Lock()

    def get_or_load(
        self, auth_app_id: str, load: Callable[[str], TokenLookup], *, fresh: bool = False
    ) -> TokenLookup:
        """The cached look-up, or ``load``'s (always ``load``'s when ``fresh``)."""
        now = self._monotonic()
        with self._lock:
            hit = self._items.get(auth_app_id)
        if hit is not None and not fresh and now - hit[0] < self._max_age:
            return hit[1]
        result = load(auth_app_id)
        if not (result.found and result.status == STATUS_GRANTED):
            # Never cache a miss (a merchant who just authorized must not wait for it), and a
            # fresh read that finds the authorization gone evicts the cached token at once.
            with self._lock:
                self._items.pop(auth_app_id, None)
            return result
        with self._lock:
            if auth_app_id not in self._items and len(self._items) >= self._max_items:
                self._items.pop(next(iter(self._items)))
            self._items[auth_app_id] = (now, result)
        return result
