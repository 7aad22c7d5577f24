"""The authorization lifecycle: its states, the transitions between them, and the events they emit.

States of a merchant app (the ``status`` of its item):

- ``granted``: we hold a pair Alipay issued; the token query hands it out.
- ``needs_reauth``: Alipay confirmed (signed answer of ``alipay.open.auth.token.app.query``) that
  the pair we hold is dead; only the merchant can fix it, by authorizing again.
- ``revoked``: the merchant cancelled (notification), or the query says the authorization is
  ``invalid``.

A new authorization (callback or ``open_app_auth_notify``) leads from any state to ``granted``;
nothing else leaves ``needs_reauth`` or ``revoked``. Every transition is written with its audit
event in one DynamoDB transaction (:mod:`appauth.store`) and then published on EventBridge
(:mod:`appauth.events`); neither carries a token or a code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

EVENT_SOURCE = "appauth"
DETAIL_TYPE_PREFIX = "appauth.authorization."


class Status(StrEnum):
    GRANTED = "granted"
    NEEDS_REAUTH = "needs_reauth"
    REVOKED = "revoked"


class Transition(StrEnum):
    """What happened to an authorization; the value is the EventBridge ``detail-type`` suffix."""

    GRANTED = "granted"  # a merchant authorized (or re-authorized): a new pair from a code
    REFRESHED = "refreshed"  # the scheduled or manual refresh stored Alipay's new pair
    RECOVERED = "recovered"  # a parked, replayed or rescued pair was applied
    NEEDS_REAUTH = "needs_reauth"  # Alipay confirmed the pair is dead
    REVOKED = "revoked"  # the merchant cancelled, or Alipay says the authorization is invalid
    REFRESH_FAILED = "refresh_failed"  # transient: retried with backoff, the status is unchanged

    @property
    def detail_type(self) -> str:
        return DETAIL_TYPE_PREFIX + self.value

    @property
    def status(self) -> Status:
        """The status an item has after this transition."""
        return _RESULTING_STATUS[self]

    def allowed_from(self, status: Status | None) -> bool:
        """Whether this transition may start from ``status`` (None: no item yet)."""
        return status in _ALLOWED_FROM[self]


_RESULTING_STATUS = {
    Transition.GRANTED: Status.GRANTED,
    Transition.REFRESHED: Status.GRANTED,
    Transition.RECOVERED: Status.GRANTED,
    Transition.NEEDS_REAUTH: Status.NEEDS_REAUTH,
    Transition.REVOKED: Status.REVOKED,
    Transition.REFRESH_FAILED: Status.GRANTED,
}
_ANY: frozenset[Status | None] = frozenset({None, *Status})
_ALLOWED_FROM: dict[Transition, frozenset[Status | None]] = {
    Transition.GRANTED: _ANY,
    # A parked pair may land after the item was marked dead: it is newer, so it revives it
    # (the store's fences refuse it when it is older than the stored pair or the cancellation).
    Transition.RECOVERED: _ANY,
    # Never onto needs_reauth or revoked: a refresh result arriving after the item was found
    # dead or cancelled is a late answer, applied (if at all) as a recovery, through the fences.
    Transition.REFRESHED: frozenset({None, Status.GRANTED}),
    Transition.REFRESH_FAILED: frozenset({Status.GRANTED}),
    Transition.NEEDS_REAUTH: frozenset({Status.GRANTED}),
    Transition.REVOKED: _ANY,
}


# Where a stored pair came from (``token_source``) decides which transition storing it is.
SOURCE_TRANSITIONS = {
    "authorization": Transition.GRANTED,
    "notification": Transition.GRANTED,
    "refresh": Transition.REFRESHED,
    "reconcile": Transition.RECOVERED,
}


def transition_for_source(source: str) -> Transition:
    """``authorization``/``notification`` -> granted, ``refresh`` -> refreshed; a parked,
    replayed or rescued pair (``<source>+parked``, ``+rescued``, ``reconcile``) -> recovered."""
    if "+" in source:
        return Transition.RECOVERED
    return SOURCE_TRANSITIONS.get(source, Transition.GRANTED)


@dataclass(frozen=True)
class LifecycleEvent:
    """One transition, as published. Holds no token, code or key: safe to log and to publish."""

    transition: Transition
    auth_app_id: str
    version: int
    at: datetime
    reason: str
    user_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> Status:
        return self.transition.status

    def detail(self) -> dict[str, Any]:
        return {
            "auth_app_id": self.auth_app_id,
            "user_id": self.user_id,
            "version": self.version,
            "status": self.status.value,
            "reason": self.reason,
            "at": self.at.astimezone(UTC).isoformat(timespec="milliseconds"),
            **dict(self.extra),
        }


class EventSink(Protocol):
    """Where transitions go after they are committed. Must never raise: a failed publish is
    counted and alarmed, and never blocks or undoes the transition it reports."""

    def publish(self, event: LifecycleEvent) -> None: ...


class DiscardEvents:
    """An :class:`EventSink` that keeps nothing (a store used by a tool, not a function)."""

    def publish(self, event: LifecycleEvent) -> None:
        return None
