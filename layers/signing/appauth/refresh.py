"""Scheduled refresh: rotate every pair whose refresh time has come.

One run: settle parked pairs first (they may be newer than what the table holds), then read
what is due from the sparse ``due`` index (never a Scan), claim each merchant with a lease (two
runners never rotate the same merchant), refresh, and store the new pair before anything else.
Failures never pass for revocation: a transient one is retried at the next run, a permanent one
is deferred with backoff and audited.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from appauth.authorization import Parker, store_grants
from appauth.client import AlipayClient
from appauth.envelope import TokenDecryptionError
from appauth.errors import (
    AlipayError,
    OutcomeUnknownError,
    SignatureError,
    TransportError,
    UnexpectedResponseError,
)
from appauth.store import TokenStore

logger = logging.getLogger(__name__)

LEASE_SECONDS = 300
TRANSIENT_RETRY = timedelta(minutes=15)
PERMANENT_RETRY = timedelta(hours=6)


@dataclass
class RefreshReport:
    due: int = 0
    refreshed: int = 0
    skipped_leased: int = 0
    deferred_transient: int = 0
    deferred_permanent: int = 0
    outcome_unknown: int = 0
    unreadable: int = 0
    parked: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


def refresh_due(
    *,
    store: TokenStore,
    client: AlipayClient,
    park: Parker,
    now: datetime,
    owner: str,
    limit: int = 1000,
) -> RefreshReport:
    report = RefreshReport()
    for auth_app_id, version in store.due(now, limit=limit):
        report.due += 1
        if not store.acquire_lease(
            auth_app_id, version=version, now=now, seconds=LEASE_SECONDS, owner=owner
        ):
            report.skipped_leased += 1
            continue
        stored = store.get(auth_app_id)
        if stored is None or stored.version != version:
            report.skipped_leased += 1
            continue
        try:
            _, refresh_token = store.open_tokens(stored)
        except TokenDecryptionError:
            # One unreadable item (tampered, key gone) must not stop the others; audit and move on.
            report.unreadable += 1
            logger.error("Stored pair does not decrypt", extra={"auth_app_id": auth_app_id})
            store.defer_refresh(
                auth_app_id, version=version, until=now + PERMANENT_RETRY, reason="unreadable_pair"
            )
            continue
        try:
            response = client.refresh(refresh_token)
        except OutcomeUnknownError:
            # Alipay may have rotated the pair; keep the lease so nothing else retries blindly
            # before it expires (reconciliation is the refresh issue's job).
            report.outcome_unknown += 1
            logger.warning("Refresh outcome unknown", extra={"auth_app_id": auth_app_id})
            continue
        except (TransportError, SignatureError, UnexpectedResponseError, AlipayError) as error:
            permanent = isinstance(error, AlipayError) and error.permanent
            if permanent:
                report.deferred_permanent += 1
            else:
                report.deferred_transient += 1
            store.defer_refresh(
                auth_app_id,
                version=version,
                until=now + (PERMANENT_RETRY if permanent else TRANSIENT_RETRY),
                reason=_failure_reason(error),
            )
            continue
        if store_grants(
            response.grants, store, park, source="refresh", merchant_ref=stored.merchant_ref
        ):
            report.parked += 1
        else:
            report.refreshed += 1
    return report


def _failure_reason(error: Exception) -> str:
    if isinstance(error, AlipayError):
        return f"alipay_{error.code}_{error.sub_code}" if error.sub_code else f"alipay_{error.code}"
    return type(error).__name__
