"""Scheduled refresh: rotate every pair whose refresh time has come.

One run: settle parked pairs first (they may be newer than what the table holds), then read
what is due from the sparse ``due`` index (never a Scan), claim each merchant with a lease (two
runners never rotate the same merchant), refresh, and store the new pair before anything else.

Failures never pass for revocation. A failure where Alipay cannot have rotated the pair
(nothing sent, an Alipay error) is deferred: soon when transient, with backoff when permanent.
A failure where Alipay may have rotated it (no answer, or an answer we could not use) keeps the
lease, so nothing resends the old refresh token blindly before it expires, and is counted for
the alarm. The run stops taking new merchants while it still has time to store what it got.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from botocore.exceptions import BotoCoreError, ClientError

from appauth.alipay.client import AlipayClient
from appauth.alipay.errors import (
    AlipayError,
    OutcomeUnknownError,
    SignatureError,
    TransportError,
    UnexpectedResponseError,
)
from appauth.authorization import Parker, store_grants
from appauth.envelope import TokenDecryptionError
from appauth.store import StoredAuthorization, TokenStore

logger = logging.getLogger(__name__)

LEASE_SECONDS = 300
TRANSIENT_RETRY = timedelta(minutes=15)
PERMANENT_RETRY = timedelta(hours=6)
# Worst case for one merchant: connect + read timeout of the refresh, then the store write.
MIN_SECONDS_PER_MERCHANT = 45.0


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
    lost: int = 0
    stopped_early: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(vars(self))


def refresh_due(
    *,
    store: TokenStore,
    client: AlipayClient,
    park: Parker,
    clock: Callable[[], datetime],
    owner: str,
    time_left: Callable[[], float] = lambda: float("inf"),
    limit: int = 1000,
) -> RefreshReport:
    report = RefreshReport()
    for auth_app_id, version in store.due(clock(), limit=limit):
        report.due += 1
        if time_left() < MIN_SECONDS_PER_MERCHANT:
            report.stopped_early += 1  # still due: the next run takes it
            continue
        now = clock()
        leased = store.acquire_lease(
            auth_app_id, version=version, now=now, seconds=LEASE_SECONDS, owner=owner
        )
        if leased is None:
            report.skipped_leased += 1
            continue
        _refresh_one(
            leased, store=store, client=client, park=park, now=now, owner=owner, report=report
        )
    return report


def _refresh_one(
    stored: StoredAuthorization,
    *,
    store: TokenStore,
    client: AlipayClient,
    park: Parker,
    now: datetime,
    owner: str,
    report: RefreshReport,
) -> None:
    auth_app_id, version = stored.auth_app_id, stored.version
    try:
        _, refresh_token = store.open_tokens(stored)
    except TokenDecryptionError:
        # One unreadable item (tampered, key gone) must not stop the others; audit and move on.
        report.unreadable += 1
        logger.error("Stored pair does not decrypt", extra={"auth_app_id": auth_app_id})
        store.defer_refresh(
            auth_app_id,
            version=version,
            owner=owner,
            until=now + PERMANENT_RETRY,
            reason="unreadable_pair",
        )
        return
    try:
        response = client.refresh(refresh_token)
    except (OutcomeUnknownError, SignatureError, UnexpectedResponseError) as error:
        # Alipay may have rotated the pair already (no answer, or an answer we cannot use, e.g.
        # an unknown alipay_cert_sn after Alipay rotated its certificate). Keep the lease.
        report.outcome_unknown += 1
        logger.error(
            "Refresh outcome unknown",
            extra={"auth_app_id": auth_app_id, "error": type(error).__name__},
        )
        return
    except (TransportError, AlipayError) as error:
        permanent = isinstance(error, AlipayError) and error.permanent
        if permanent:
            report.deferred_permanent += 1
        else:
            report.deferred_transient += 1
        store.defer_refresh(
            auth_app_id,
            version=version,
            owner=owner,
            until=now + (PERMANENT_RETRY if permanent else TRANSIENT_RETRY),
            reason=_failure_reason(error),
        )
        return
    if response.incomplete:
        logger.error(
            "Refresh answer had incomplete entries",
            extra={"auth_app_id": auth_app_id, "incomplete": response.incomplete},
        )
    try:
        parked = store_grants(
            response.grants, store, park, source="refresh", merchant_ref=stored.merchant_ref
        )
    except (BotoCoreError, ClientError) as error:
        # The store AND the parking queue refused: nothing durable holds the new pair. Count it
        # (alarmed) and keep going; the old pair still works during Alipay's grace period.
        report.lost += 1
        logger.critical(
            "Refreshed pair could not be stored or parked",
            extra={"auth_app_id": auth_app_id, "error": type(error).__name__},
        )
        return
    if parked:
        report.parked += 1
    else:
        report.refreshed += 1


def _failure_reason(error: Exception) -> str:
    if isinstance(error, AlipayError):
        return f"alipay_{error.code}_{error.sub_code}" if error.sub_code else f"alipay_{error.code}"
    return type(error).__name__
