"""The token store: one DynamoDB table (defined in template.yaml) for merchants, audit and state.

Items (``pk`` / ``sk``):

- ``APP#<auth_app_id>`` / ``AUTH``: the merchant app's authorization: ``status``
  (:class:`~appauth.lifecycle.Status`), ``version`` (bumped by every pair and every status
  change), the sealed token pair (``tokens``: KMS key id, wrapped data key, AES-GCM ciphertexts)
  and the one it replaced (``previous_tokens``, kept for recovery), ``token_issued_at`` (ms,
  orders writes), ``expires_at``, ``re_expires_at``, ``next_refresh_at`` (epoch seconds),
  ``user_id``, ``merchant_ref``, the refresh lease (``lease_owner``, ``lease_until``), the
  consecutive failure count (``refresh_failures``), ``reconcile_reason`` (a refresh whose outcome
  we did not see), what Alipay's query last said (``auth_methods``, ``auth_start``, ``auth_end``,
  ``alipay_status``, ``verified_at``) and when the sweep asks again (``verify_at``), timestamps.
  Only ``granted`` items carry ``due_shard``, which makes the ``due`` and ``verify`` indexes
  sparse: the refresher queries ``due_shard = s AND next_refresh_at <= now`` (and ``verify_at``)
  per shard, page by page, never a Scan. The ``status`` index lists merchants by status and the
  ``user`` index finds a merchant user's apps (both keyed by ``auth_app_id``).
- ``APP#<auth_app_id>`` / ``EVENT#<time>#<id>``: audit events (what, when, who; never a token).
- ``STATE#<nonce>`` / ``STATE``: an issued authorization ``state``; ``consumed_at`` is set once,
  atomically; ``ttl`` lets DynamoDB delete it after it expires.

Every write that could race is conditional, and every transition commits with its audit event in
one transaction, then goes to the event sink (EventBridge):

- A pair from a code, a notification or the parking queue is written only if it was issued after
  the stored one and after any cancellation, and only over the version it was checked against.
- A refreshed pair is written only by the lease holder over the leased version
  (:meth:`TokenStore.store_refreshed`); a refusal says who won (:class:`RefreshWrite`).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import secrets
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any, cast

from appauth.alipay.ids import is_app_id
from appauth.alipay.models import AuthorizationInfo, TokenGrant
from appauth.envelope import SealedTokens, TokenCipher, TokenDecryptionError
from appauth.errors import StateReplayedError
from appauth.lifecycle import (
    DiscardEvents,
    EventSink,
    LifecycleEvent,
    Status,
    Transition,
    transition_for_source,
)
from appauth.policy import DUE_SHARDS, RefreshPolicy, due_shard
from appauth.state import AuthState

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import PutTypeDef, UpdateTypeDef

STATUS_GRANTED = Status.GRANTED.value
STATUS_NEEDS_REAUTH = Status.NEEDS_REAUTH.value
STATUS_REVOKED = Status.REVOKED.value
AUTH_SK = "AUTH"
DUE_INDEX = "due"
VERIFY_INDEX = "verify"
STATUS_INDEX = "status"
USER_INDEX = "user"
LISTED_STATUSES = (STATUS_GRANTED, STATUS_NEEDS_REAUTH, STATUS_REVOKED)
MAX_APPS_PER_USER = 50
STATE_SK = "STATE"
STATE_TTL_SLACK = timedelta(days=1)
# A concurrent writer moved the version between our read and our write: read again, this often.
SAVE_ATTEMPTS = 32
LEASE_FIELDS = ("lease_until", "lease_owner")
GRANT_INFO_FIELDS = ("auth_methods", "alipay_status", "auth_start", "auth_end", "verified_at")

AttributeMap = dict[str, Any]


def pair_fingerprint(grant: TokenGrant) -> str:
    """Which pair an item holds, without holding it: SHA-256 of the pair (random tokens, so not
    reversible), so a second copy of the same pair is recognized by a function that cannot
    decrypt (the callback)."""
    material = f"{grant.auth_app_id}\n{grant.app_auth_token}\n{grant.app_refresh_token}"
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def app_pk(auth_app_id: str) -> str:
    return f"APP#{auth_app_id}"


def _key(auth_app_id: str) -> AttributeMap:
    return {"pk": {"S": app_pk(auth_app_id)}, "sk": {"S": AUTH_SK}}


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def _epoch(moment: datetime) -> str:
    return str(int(moment.timestamp()))


def epoch_ms(moment: datetime) -> str:
    """Milliseconds since the epoch: how token issue and cancellation times are ordered."""
    return str(int(moment.timestamp() * 1000))


def from_epoch_ms(value: int | str) -> datetime:
    return datetime.fromtimestamp(int(value) / 1000, UTC)


def _from_epoch(value: Mapping[str, str] | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(int(value["N"]), UTC)


@dataclass(frozen=True)
class SaveResult:
    """``stored`` is False when a newer pair (or a later cancellation) was already there."""

    auth_app_id: str
    stored: bool
    version: int | None = None


class RefreshWrite(StrEnum):
    """What became of a refreshed pair offered to :meth:`TokenStore.store_refreshed`."""

    STORED = "stored"
    SUPERSEDED = "superseded"  # a newer grant (re-authorization) is stored: ours is obsolete
    REVOKED = "revoked"  # the merchant cancelled meanwhile
    LEASE_LOST = "lease_lost"  # another runner holds the merchant now: park ours, never drop it


@dataclass(frozen=True)
class StoredAuthorization:
    auth_app_id: str
    user_id: str | None
    status: str
    version: int
    token_issued_at: datetime | None
    expires_at: datetime | None
    re_expires_at: datetime | None
    next_refresh_at: datetime | None
    merchant_ref: str | None
    granted_at: str | None
    updated_at: str | None
    sealed: SealedTokens | None = field(repr=False)
    lease_owner: str | None = None
    lease_until: datetime | None = None
    refresh_failures: int = 0
    reconcile_reason: str | None = None
    status_reason: str | None = None
    previous_issued_at: datetime | None = None
    previous_sealed: SealedTokens | None = field(default=None, repr=False)
    auth_methods: tuple[str, ...] | None = None  # None: Alipay has not been asked yet
    auth_start: str | None = None
    auth_end: str | None = None
    alipay_status: str | None = None
    verified_at: datetime | None = None
    verify_at: datetime | None = None

    def leased_at(self, now: datetime) -> bool:
        """A refresh or a verification holds the merchant at ``now``."""
        return self.lease_until is not None and self.lease_until > now


@dataclass(frozen=True)
class AuthorizationPage:
    """One page of :meth:`TokenStore.list_authorizations` (never a token); ``cursor`` is None
    on the last page."""

    items: list[StoredAuthorization]
    cursor: str | None


class CursorError(ValueError):
    """A list cursor that this store did not hand out."""


@dataclass(frozen=True)
class Lease:
    """A merchant claimed for one refresh. ``took_over``: an earlier lease had lapsed, so the
    runner that held it may have rotated the pair at Alipay without storing the answer."""

    stored: StoredAuthorization
    owner: str
    until: datetime
    took_over: bool

    @property
    def auth_app_id(self) -> str:
        return self.stored.auth_app_id

    @property
    def version(self) -> int:
        return self.stored.version

    @property
    def needs_reconcile(self) -> bool:
        return self.took_over or self.stored.reconcile_reason is not None


@dataclass(frozen=True)
class AuditEvent:
    auth_app_id: str
    event: str
    at: str
    actor: str
    detail: Mapping[str, str]


class TokenStore:
    def __init__(
        self,
        dynamodb: DynamoDBClient,
        table_name: str,
        cipher: TokenCipher,
        *,
        policy: RefreshPolicy | None = None,
        actor: str = "appauth",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        events: EventSink | None = None,
    ) -> None:
        self._db = dynamodb
        self._table = table_name
        self._cipher = cipher
        self._policy = policy or RefreshPolicy()
        self._actor = actor
        self._clock = clock
        self._events: EventSink = events or DiscardEvents()

    @property
    def policy(self) -> RefreshPolicy:
        """When this store schedules refreshes and verifications."""
        return self._policy

    @property
    def cipher(self) -> TokenCipher:
        return self._cipher

    # --- token pairs -----------------------------------------------------------------------

    def save_grant(
        self, grant: TokenGrant, *, source: str, merchant_ref: str | None = None
    ) -> SaveResult:
        """Store a pair Alipay returned, unless a pair issued later (or a later cancellation) is
        already stored. Reads the item first, then writes conditioned on the version it read,
        so the new version (and the event) is exact and the replaced pair is kept as previous."""
        sealed = self._cipher.seal(grant.auth_app_id, grant.secrets())
        return self.save_sealed(grant, sealed, source=source, merchant_ref=merchant_ref)

    def save_sealed(
        self,
        grant: TokenGrant,
        sealed: SealedTokens,
        *,
        source: str,
        merchant_ref: str | None = None,
    ) -> SaveResult:
        """:meth:`save_grant` for a pair already sealed (a parked or rescued pair)."""
        transition = transition_for_source(source)
        # A new authorization is ordered by when its answer arrived (Alipay issued it by then),
        # anything else by when its request was sent: a re-authorization beats a refresh that
        # overlapped it, whichever of the two is written first.
        ordered_at = grant.answered_at or grant.received_at
        issued_ms = int(epoch_ms(ordered_at))
        for _ in range(SAVE_ATTEMPTS):
            now = self._clock()
            current = self._get_item(grant.auth_app_id)
            if current is not None and (
                int(current.get("token_issued_at", {}).get("N", "-1")) >= issued_ms
                or int(current.get("revoked_ms", {}).get("N", "-1")) >= issued_ms
            ):
                self.record_event(grant.auth_app_id, "older_pair_ignored", {"source": source}, now)
                return SaveResult(grant.auth_app_id, stored=False)
            version = int(current["version"]["N"]) if current and "version" in current else 0
            status = Status(current["status"]["S"]) if current and "status" in current else None
            if (
                current is not None
                and status is Status.GRANTED
                and current.get("pair_fingerprint", {}).get("S") == pair_fingerprint(grant)
            ):
                # The same pair again (the grant notification and the callback's exchange both
                # carry the pair Alipay issued): already stored, no new version, no new event.
                self._keep_same_pair(grant, current, merchant_ref, source, now)
                return SaveResult(grant.auth_app_id, stored=True, version=version)
            if not transition.allowed_from(status):
                # e.g. a refresh result landing on an item that is no longer granted.
                self.record_event(grant.auth_app_id, "transition_refused", {"source": source}, now)
                return SaveResult(grant.auth_app_id, stored=False)
            update = self._pair_update(
                grant, sealed, now, version=version, source=source, ordered_at=ordered_at
            )
            if current is not None and "tokens" in current:
                update = _with_previous(update, current)
            if merchant_ref:
                update = _with_set(update, "merchant_ref", {"S": merchant_ref})
            if version == 0:
                update["ConditionExpression"] = "attribute_not_exists(version)"
            else:
                update["ConditionExpression"] = "version = :expected"
                _values(update)[":expected"] = {"N": str(version)}
            # The fences again, so no reader/writer interleaving can let an older pair in.
            update["ConditionExpression"] += (
                " AND (attribute_not_exists(token_issued_at) OR token_issued_at < :issued)"
                " AND (attribute_not_exists(revoked_ms) OR revoked_ms < :issued)"
            )
            detail = {
                "source": source,
                "user_id": grant.user_id or "",
                "merchant_ref": merchant_ref or "",
                "transition": transition.value,
            }
            event = self._event_item(grant.auth_app_id, "token_pair_stored", detail, now)
            if self._update_with_event(update, event):
                self._events.publish(
                    LifecycleEvent(
                        transition, grant.auth_app_id, version + 1, now, source, grant.user_id
                    )
                )
                return SaveResult(grant.auth_app_id, stored=True, version=version + 1)
        raise RuntimeError(  # pragma: no cover - SAVE_ATTEMPTS concurrent writers in a row
            f"merchant app {grant.auth_app_id}: the item kept changing while storing a pair"
        )

    def _keep_same_pair(
        self,
        grant: TokenGrant,
        current: Mapping[str, Any],
        merchant_ref: str | None,
        source: str,
        now: datetime,
    ) -> None:
        """Audit the repeat; fill in the merchant reference if only this copy carries it."""
        if merchant_ref and "merchant_ref" not in current:
            # Refused when the item moved on meanwhile: then there is nothing to fill in.
            with contextlib.suppress(self._db.exceptions.ConditionalCheckFailedException):
                self._db.update_item(
                    TableName=self._table,
                    Key=_key(grant.auth_app_id),
                    UpdateExpression="SET merchant_ref = :ref",
                    ConditionExpression="version = :version AND attribute_not_exists(merchant_ref)",
                    ExpressionAttributeValues={
                        ":ref": {"S": merchant_ref},
                        ":version": current["version"],
                    },
                )
        self.record_event(grant.auth_app_id, "same_pair_again", {"source": source}, now)

    def store_refreshed(
        self, lease: Lease, grant: TokenGrant, sealed: SealedTokens
    ) -> RefreshWrite:
        """The refreshed pair, in ONE write fenced by the lease: ``lease_owner = me AND version =
        leased``. It bumps the version, keeps the replaced pair sealed beside the new one, clears
        the lease, the failure count and any reconcile mark, and keeps ``merchant_ref``.
        A refusal is re-read and classified, never taken for success."""
        now = self._clock()
        stored = lease.stored
        update = self._pair_update(grant, sealed, now, version=lease.version, source="refresh")
        if stored.sealed is not None:
            update = _with_set(update, "previous_tokens", {"M": sealed_to_item(stored.sealed)})
            if stored.token_issued_at is not None:
                update = _with_set(
                    update, "previous_issued_at", {"N": epoch_ms(stored.token_issued_at)}
                )
        update["ConditionExpression"] = "lease_owner = :owner AND version = :expected"
        _values(update)[":owner"] = {"S": lease.owner}
        _values(update)[":expected"] = {"N": str(lease.version)}
        transition = Transition.RECOVERED if lease.needs_reconcile else Transition.REFRESHED
        source = "reconcile" if lease.needs_reconcile else "refresh"
        event = self._event_item(
            grant.auth_app_id,
            "token_pair_stored",
            {"source": source, "user_id": grant.user_id or "", "transition": transition.value},
            now,
        )
        if self._update_with_event(update, event):
            self._events.publish(
                LifecycleEvent(
                    transition, grant.auth_app_id, lease.version + 1, now, source, grant.user_id
                )
            )
            return RefreshWrite.STORED
        outcome = self._why_refused(lease)
        self.record_event(
            lease.auth_app_id, "refreshed_pair_not_stored", {"why": outcome.value}, now
        )
        return outcome

    def _why_refused(self, lease: Lease) -> RefreshWrite:
        current = self.get(lease.auth_app_id)
        if current is None or current.status == STATUS_REVOKED:
            return RefreshWrite.REVOKED
        if current.version != lease.version:
            return RefreshWrite.SUPERSEDED
        return RefreshWrite.LEASE_LOST

    def _pair_update(
        self,
        grant: TokenGrant,
        sealed: SealedTokens,
        now: datetime,
        *,
        version: int,
        source: str,
        ordered_at: datetime | None = None,
    ) -> UpdateTypeDef:
        next_refresh = self._policy.next_refresh_at(
            grant.auth_app_id, grant.received_at, grant.re_expires_at
        )
        values: AttributeMap = {
            ":issued": {"N": epoch_ms(ordered_at or grant.received_at)},
            ":granted": {"S": STATUS_GRANTED},
            ":version": {"N": str(version + 1)},
            ":now": {"S": _iso(now)},
            ":tokens": {"M": sealed_to_item(sealed)},
            ":app": {"S": grant.auth_app_id},
            ":next": {"N": _epoch(next_refresh)},
            ":shard": {"S": due_shard(grant.auth_app_id)},
            ":source": {"S": source},
            ":verify": {"N": _epoch(self._policy.next_verify_at(grant.auth_app_id, now))},
            ":fingerprint": {"S": pair_fingerprint(grant)},
        }
        sets = [
            "auth_app_id = :app",
            "#status = :granted",
            "version = :version",
            "tokens = :tokens",
            "token_issued_at = :issued",
            "next_refresh_at = :next",
            "due_shard = :shard",
            "verify_at = :verify",
            "pair_fingerprint = :fingerprint",
            "granted_at = if_not_exists(granted_at, :now)",
            "updated_at = :now",
            "token_source = :source",
        ]
        optional: dict[str, AttributeMap | None] = {
            "user_id": {"S": grant.user_id} if grant.user_id else None,
            "expires_at": {"N": _epoch(grant.expires_at)} if grant.expires_at else None,
            "re_expires_at": {"N": _epoch(grant.re_expires_at)} if grant.re_expires_at else None,
        }
        for name, value in optional.items():
            if value is not None:
                sets.append(f"{name} = :{name}")
                values[f":{name}"] = value
        # revoked_ms stays: it keeps refusing pairs issued before the cancellation.
        removes = [
            "revoked_at",
            *LEASE_FIELDS,
            "refresh_failures",
            "reconcile_reason",
            "status_reason",
        ]
        if not source.startswith("refresh"):
            # A new authorization (not a rotation of the same one): what Alipay said about the
            # old grant (its methods, its period) no longer holds until it is asked again.
            removes.extend(GRANT_INFO_FIELDS)
        return {
            "TableName": self._table,
            "Key": _key(grant.auth_app_id),
            "UpdateExpression": f"SET {', '.join(sets)} REMOVE {', '.join(removes)}",
            "ConditionExpression": "",
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": values,
        }

    def get(self, auth_app_id: str, *, consistent: bool = True) -> StoredAuthorization | None:
        item = self._get_item(auth_app_id, consistent=consistent)
        return None if item is None else _authorization_from_item(item)

    def _get_item(self, auth_app_id: str, *, consistent: bool = True) -> AttributeMap | None:
        response = self._db.get_item(
            TableName=self._table, Key=_key(auth_app_id), ConsistentRead=consistent
        )
        item = response.get("Item")
        return None if item is None else dict(item)

    def open_tokens(self, stored: StoredAuthorization) -> tuple[str, str]:
        """(app_auth_token, app_refresh_token), decrypted. Needs kms:Decrypt on the token key."""
        if stored.sealed is None:
            raise TokenDecryptionError(
                f"merchant app {stored.auth_app_id} has no stored pair (revoked first)"
            )
        opened = self._cipher.open(stored.auth_app_id, stored.sealed)
        return opened["app_auth_token"], opened["app_refresh_token"]

    def mark_revoked(self, auth_app_id: str, *, cancelled_at: datetime, reason: str) -> bool:
        """Revoke, unless the merchant re-authorized after the cancellation. True when changed.

        Works before any pair is stored too (a cancellation that overtakes a parked pair): the
        item then records only the revocation, and ``save_grant`` refuses older pairs.
        """
        for _ in range(SAVE_ATTEMPTS):
            now = self._clock()
            current = self._get_item(auth_app_id)
            version = int(current["version"]["N"]) if current and "version" in current else 0
            update: UpdateTypeDef = {
                "TableName": self._table,
                "Key": _key(auth_app_id),
                "UpdateExpression": "SET auth_app_id = :app, #status = :revoked, revoked_ms = :cancelled, "
                "revoked_at = :now, updated_at = :now, version = :version, status_reason = :reason "
                "REMOVE due_shard, next_refresh_at, verify_at, lease_until, lease_owner, reconcile_reason",
                "ConditionExpression": (
                    "attribute_not_exists(version)" if version == 0 else "version = :expected"
                )
                + " AND (attribute_not_exists(token_issued_at) OR token_issued_at <= :cancelled)"
                " AND (attribute_not_exists(revoked_ms) OR revoked_ms < :cancelled)",
                "ExpressionAttributeNames": {"#status": "status"},
                "ExpressionAttributeValues": {
                    ":app": {"S": auth_app_id},
                    ":revoked": {"S": STATUS_REVOKED},
                    ":now": {"S": _iso(now)},
                    ":version": {"N": str(version + 1)},
                    ":cancelled": {"N": epoch_ms(cancelled_at)},
                    ":reason": {"S": reason},
                },
            }
            if version:
                _values(update)[":expected"] = {"N": str(version)}
            event = self._event_item(auth_app_id, "authorization_revoked", {"reason": reason}, now)
            if self._update_with_event(update, event):
                user_id = current.get("user_id", {}).get("S") if current else None
                self._events.publish(
                    LifecycleEvent(
                        Transition.REVOKED, auth_app_id, version + 1, now, reason, user_id
                    )
                )
                return True
            latest = self._get_item(auth_app_id)
            latest_version = int(latest["version"]["N"]) if latest and "version" in latest else 0
            if latest_version == version:
                return False  # the fences refused it: re-authorized after, or already revoked
        return False

    # --- refresh scheduling ----------------------------------------------------------------

    def due(self, now: datetime, *, limit: int | None = None) -> Iterator[tuple[str, int]]:
        """(auth_app_id, version) of granted items due by ``now``, read lazily page by page from
        the sparse index (a Query per shard, never a Scan): a run never collects them all first."""
        yield from self._sparse_query(DUE_INDEX, "next_refresh_at", now, limit=limit)

    def _sparse_query(
        self, index: str, attribute: str, now: datetime, *, limit: int | None = None
    ) -> Iterator[tuple[str, int]]:
        found = 0
        paginator = self._db.get_paginator("query")
        for shard in range(DUE_SHARDS):
            pages = paginator.paginate(
                TableName=self._table,
                IndexName=index,
                KeyConditionExpression=f"due_shard = :shard AND {attribute} <= :now",
                ExpressionAttributeValues={":shard": {"S": str(shard)}, ":now": {"N": _epoch(now)}},
            )
            for page in pages:
                for item in page.get("Items", []):
                    yield item["auth_app_id"]["S"], int(item["version"]["N"])
                    found += 1
                    if limit is not None and found >= limit:
                        return

    def acquire_lease(
        self, auth_app_id: str, *, version: int, now: datetime, seconds: float, owner: str
    ) -> Lease | None:
        """Claim a merchant for one refresh; None if another runner holds a live lease or the item
        moved on (another version, no longer granted). One conditional update, no read."""
        until = now + timedelta(seconds=seconds)
        try:
            response = self._db.update_item(
                TableName=self._table,
                Key=_key(auth_app_id),
                UpdateExpression="SET lease_until = :until, lease_owner = :owner",
                ConditionExpression="version = :version AND #status = :granted "
                "AND (attribute_not_exists(lease_until) OR lease_until < :now)",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={
                    ":until": {"N": _epoch(until)},
                    ":owner": {"S": owner},
                    ":version": {"N": str(version)},
                    ":granted": {"S": STATUS_GRANTED},
                    ":now": {"N": _epoch(now)},
                },
                ReturnValues="ALL_OLD",
            )
        except self._db.exceptions.ConditionalCheckFailedException:
            return None
        old = dict(response["Attributes"])
        took_over = "lease_owner" in old
        old["lease_owner"] = {"S": owner}
        old["lease_until"] = {"N": _epoch(until)}
        return Lease(_authorization_from_item(old), owner, until, took_over)

    def mark_reconcile(self, lease: Lease, reason: str) -> bool:
        """Note, keeping the lease, that Alipay may have rotated the pair without our seeing the
        answer: whoever takes the merchant next reconciles instead of refreshing blindly."""
        now = self._clock()
        update: UpdateTypeDef = {
            "TableName": self._table,
            "Key": _key(lease.auth_app_id),
            "UpdateExpression": "SET reconcile_reason = :reason, updated_at = :now",
            "ConditionExpression": "version = :version AND lease_owner = :owner",
            "ExpressionAttributeValues": {
                ":reason": {"S": reason},
                ":now": {"S": _iso(now)},
                ":version": {"N": str(lease.version)},
                ":owner": {"S": lease.owner},
            },
        }
        event = self._event_item(
            lease.auth_app_id, "refresh_outcome_unknown", {"reason": reason}, now
        )
        return self._update_with_event(update, event)

    def release_lease(
        self,
        lease: Lease,
        *,
        until: datetime,
        reason: str,
        failures: int,
        reconcile_reason: str | None = None,
        transition: Transition | None = None,
    ) -> bool:
        """Push the next attempt to ``until`` and release the lease (only its holder may).
        ``failures`` is the consecutive failure count the backoff grows from; a pending
        reconciliation stays marked. ``transition`` (refresh_failed) publishes an event."""
        now = self._clock()
        sets = "SET next_refresh_at = :until, updated_at = :now, refresh_failures = :failures"
        values: AttributeMap = {
            ":until": {"N": _epoch(until)},
            ":now": {"S": _iso(now)},
            ":failures": {"N": str(failures)},
            ":version": {"N": str(lease.version)},
            ":owner": {"S": lease.owner},
        }
        removes = list(LEASE_FIELDS)
        if reconcile_reason is not None:
            sets += ", reconcile_reason = :reconcile"
            values[":reconcile"] = {"S": reconcile_reason}
        else:
            removes.append("reconcile_reason")
        update: UpdateTypeDef = {
            "TableName": self._table,
            "Key": _key(lease.auth_app_id),
            "UpdateExpression": f"{sets} REMOVE {', '.join(removes)}",
            "ConditionExpression": "version = :version AND lease_owner = :owner",
            "ExpressionAttributeValues": values,
        }
        detail = {"reason": reason, "until": _iso(until), "failures": str(failures)}
        event = self._event_item(lease.auth_app_id, "refresh_deferred", detail, now)
        # False means the item moved on (re-authorized, revoked, leased by another): nothing to do.
        released = self._update_with_event(update, event)
        if released and transition is not None:
            self._events.publish(
                LifecycleEvent(
                    transition,
                    lease.auth_app_id,
                    lease.version,
                    now,
                    reason,
                    lease.stored.user_id,
                    {"attempt": failures, "next_attempt_at": _iso(until)},
                )
            )
        return released

    def end_authorization(
        self, lease: Lease, transition: Transition, *, reason: str, confirmed_at: datetime
    ) -> bool:
        """``needs_reauth`` or ``revoked`` after Alipay confirmed it (``confirmed_at``: when the
        confirming query was sent), fenced by the lease. The item leaves the due index; the pair
        stays sealed (for the audit, never handed out). A revocation also fences out every pair
        issued before ``confirmed_at``, as a cancellation notification does: a late answer must
        not bring a cancelled merchant back."""
        return self._end(
            lease.stored, transition, reason=reason, confirmed_at=confirmed_at, owner=lease.owner
        )

    def end_confirmed(
        self,
        stored: StoredAuthorization,
        transition: Transition,
        *,
        reason: str,
        confirmed_at: datetime,
    ) -> bool:
        """:meth:`end_authorization` without a lease (a caller's report, confirmed by Alipay):
        fenced by the version read and ``granted``. A refresh that holds the lease meanwhile
        loses it; its answer, if any, still lands through the issue-time fences."""
        return self._end(stored, transition, reason=reason, confirmed_at=confirmed_at, owner=None)

    def _end(
        self,
        stored: StoredAuthorization,
        transition: Transition,
        *,
        reason: str,
        confirmed_at: datetime,
        owner: str | None,
    ) -> bool:
        if transition not in (Transition.NEEDS_REAUTH, Transition.REVOKED):
            raise ValueError(f"{transition.value} does not end an authorization")
        now = self._clock()
        status = transition.status.value
        extra = (
            ", revoked_at = :now, revoked_ms = :confirmed"
            if transition is Transition.REVOKED
            else ""
        )
        values: AttributeMap = {
            ":status": {"S": status},
            ":next": {"N": str(stored.version + 1)},
            ":now": {"S": _iso(now)},
            ":reason": {"S": reason},
            ":version": {"N": str(stored.version)},
        }
        if owner is not None:
            condition = "version = :version AND lease_owner = :owner"
            values[":owner"] = {"S": owner}
        else:
            # No lease, no pending reconciliation, checked by DynamoDB at the write: a refresh
            # that took the merchant since it was read (or died holding it) decides instead.
            condition = (
                "version = :version AND #status = :granted"
                " AND attribute_not_exists(lease_owner) AND attribute_not_exists(reconcile_reason)"
            )
            values[":granted"] = {"S": STATUS_GRANTED}
        if transition is Transition.REVOKED:
            values[":confirmed"] = {"N": epoch_ms(confirmed_at)}
        update: UpdateTypeDef = {
            "TableName": self._table,
            "Key": _key(stored.auth_app_id),
            "UpdateExpression": "SET #status = :status, version = :next, updated_at = :now, "
            f"status_reason = :reason{extra} "
            "REMOVE due_shard, next_refresh_at, verify_at, lease_until, lease_owner, "
            "reconcile_reason",
            "ConditionExpression": condition,
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": values,
        }
        name = "authorization_revoked" if transition is Transition.REVOKED else "needs_reauth"
        event = self._event_item(stored.auth_app_id, name, {"reason": reason}, now)
        if not self._update_with_event(update, event):
            return False
        self._events.publish(
            LifecycleEvent(
                transition, stored.auth_app_id, stored.version + 1, now, reason, stored.user_id
            )
        )
        return True

    # --- what Alipay says about a grant ----------------------------------------------------

    def record_authorization_info(
        self,
        stored: StoredAuthorization,
        info: AuthorizationInfo,
        *,
        verified_at: datetime,
        owner: str | None = None,
    ) -> bool:
        """Keep what the query said (methods, period, status) on the item, fenced by the
        version it is about, and schedule the next verification. With ``owner`` (the sweep's
        lease) the lease is released in the same write. False: the item moved on."""
        values: AttributeMap = {
            ":methods": {"L": [{"S": method} for method in info.auth_methods]},
            ":alipay_status": {"S": info.status},
            ":verified": {"N": epoch_ms(verified_at)},
            ":version": {"N": str(stored.version)},
        }
        sets = ["auth_methods = :methods", "alipay_status = :alipay_status"]
        sets.append("verified_at = :verified")
        removes = ["auth_start", "auth_end"]
        for name, value in (("auth_start", info.auth_start), ("auth_end", info.auth_end)):
            if value is not None:
                sets.append(f"{name} = :{name}")
                values[f":{name}"] = {"S": value}
                removes.remove(name)
        # Fenced by the version and status read: the info is about that grant.
        condition = "version = :version AND #status = :status"
        values[":status"] = {"S": stored.status}
        if stored.status == STATUS_GRANTED:
            # Only granted items are in the sparse indexes: never put an ended one back.
            sets.append("verify_at = :verify")
            values[":verify"] = {
                "N": _epoch(self._policy.next_verify_at(stored.auth_app_id, verified_at))
            }
        if owner is not None:
            condition += " AND lease_owner = :owner"
            values[":owner"] = {"S": owner}
            removes.extend(LEASE_FIELDS)
        expression = f"SET {', '.join(sets)}"
        if removes:
            expression += f" REMOVE {', '.join(removes)}"
        try:
            self._db.update_item(
                TableName=self._table,
                Key=_key(stored.auth_app_id),
                UpdateExpression=expression,
                ConditionExpression=condition,
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues=values,
            )
        except self._db.exceptions.ConditionalCheckFailedException:
            return False
        return True

    def request_reconcile(self, stored: StoredAuthorization, reason: str) -> bool:
        """Ask the next refresh run to reconcile this merchant now (resend its refresh token,
        then let Alipay's answer decide): a caller found the token dead. Fenced by the version;
        a reconciliation already pending is kept as it is."""
        now = self._clock()
        update: UpdateTypeDef = {
            "TableName": self._table,
            "Key": _key(stored.auth_app_id),
            "UpdateExpression": "SET reconcile_reason = :reason, next_refresh_at = :now_epoch, "
            "updated_at = :now",
            "ConditionExpression": "version = :version AND #status = :granted "
            "AND attribute_not_exists(reconcile_reason)",
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": {
                ":reason": {"S": reason},
                ":now_epoch": {"N": _epoch(now)},
                ":now": {"S": _iso(now)},
                ":version": {"N": str(stored.version)},
                ":granted": {"S": STATUS_GRANTED},
            },
        }
        event = self._event_item(stored.auth_app_id, "reconcile_requested", {"reason": reason}, now)
        return self._update_with_event(update, event)

    def defer_verification(self, lease: Lease, *, until: datetime, reason: str) -> bool:
        """The sweep could not verify (Alipay unreachable, answer unverifiable): ask again at
        ``until`` and release the lease. Audited; never a status change."""
        now = self._clock()
        update: UpdateTypeDef = {
            "TableName": self._table,
            "Key": _key(lease.auth_app_id),
            "UpdateExpression": "SET verify_at = :until, updated_at = :now "
            "REMOVE lease_until, lease_owner",
            "ConditionExpression": "version = :version AND lease_owner = :owner",
            "ExpressionAttributeValues": {
                ":until": {"N": _epoch(until)},
                ":now": {"S": _iso(now)},
                ":version": {"N": str(lease.version)},
                ":owner": {"S": lease.owner},
            },
        }
        detail = {"reason": reason, "until": _iso(until)}
        return self._update_with_event(
            update, self._event_item(lease.auth_app_id, "verification_deferred", detail, now)
        )

    # --- finding merchants -----------------------------------------------------------------

    def verify_due(self, now: datetime) -> Iterator[tuple[str, int]]:
        """(auth_app_id, version) of granted items whose verification is due, lazily."""
        yield from self._sparse_query(VERIFY_INDEX, "verify_at", now)

    def list_authorizations(
        self, *, status: str | None = None, cursor: str | None = None, limit: int = 50
    ) -> AuthorizationPage:
        """Merchants by status (all statuses, one after the other, without ``status``), in
        ``auth_app_id`` order, from the ``status`` index: never a Scan, never a token."""
        statuses = [status] if status else list(LISTED_STATUSES)
        start: tuple[str, str] | None = _decode_cursor(cursor, statuses) if cursor else None
        items: list[StoredAuthorization] = []
        for current in statuses[statuses.index(start[0]) if start else 0 :]:
            query: dict[str, Any] = {
                "TableName": self._table,
                "IndexName": STATUS_INDEX,
                "KeyConditionExpression": "#status = :status",
                "ExpressionAttributeNames": {"#status": "status"},
                "ExpressionAttributeValues": {":status": {"S": current}},
                "Limit": limit - len(items),
            }
            if start is not None and start[0] == current:
                query["ExclusiveStartKey"] = {
                    "status": {"S": current},
                    "auth_app_id": {"S": start[1]},
                    **_key(start[1]),
                }
            start = None
            while True:
                response = self._db.query(**query)
                items.extend(_authorization_from_item(item) for item in response.get("Items", []))
                last = response.get("LastEvaluatedKey")
                if len(items) >= limit:
                    if last is None and current == statuses[-1]:
                        return AuthorizationPage(items, None)
                    return AuthorizationPage(items, _encode_cursor(current, items[-1].auth_app_id))
                if last is None:
                    break
                query["ExclusiveStartKey"] = last
                query["Limit"] = limit - len(items)
        return AuthorizationPage(items, None)

    def by_user(self, user_id: str) -> list[tuple[str, int]]:
        """(auth_app_id, version) of every app this merchant user authorized (at most
        :data:`MAX_APPS_PER_USER`), from the ``user`` index."""
        response = self._db.query(
            TableName=self._table,
            IndexName=USER_INDEX,
            KeyConditionExpression="user_id = :user",
            ExpressionAttributeValues={":user": {"S": user_id}},
            Limit=MAX_APPS_PER_USER,
        )
        return [
            (item["auth_app_id"]["S"], int(item["version"]["N"]))
            for item in response.get("Items", [])
        ]

    def _update_with_event(self, update: UpdateTypeDef, event: PutTypeDef) -> bool:
        """Apply a conditional update and its audit event atomically; False if the condition failed."""
        try:
            self._db.transact_write_items(TransactItems=[{"Update": update}, {"Put": event}])
        except self._db.exceptions.TransactionCanceledException as error:
            reasons = error.response.get("CancellationReasons", [])
            if reasons and reasons[0].get("Code") == "ConditionalCheckFailed":
                return False
            raise
        return True

    # --- audit -----------------------------------------------------------------------------

    def _event_item(
        self, auth_app_id: str, event: str, detail: Mapping[str, str], now: datetime
    ) -> PutTypeDef:
        return {
            "TableName": self._table,
            "Item": {
                "pk": {"S": app_pk(auth_app_id)},
                "sk": {"S": f"EVENT#{_iso(now)}#{secrets.token_hex(4)}"},
                "event": {"S": event},
                "at": {"S": _iso(now)},
                "actor": {"S": self._actor},
                "detail": {"M": {k: {"S": v} for k, v in detail.items()}},
            },
        }

    def record_event(
        self, auth_app_id: str, event: str, detail: Mapping[str, str], now: datetime | None = None
    ) -> None:
        self._db.put_item(**self._event_item(auth_app_id, event, detail, now or self._clock()))

    def events(self, auth_app_id: str) -> list[AuditEvent]:
        response = self._db.query(
            TableName=self._table,
            KeyConditionExpression="pk = :pk AND begins_with(sk, :event)",
            ExpressionAttributeValues={
                ":pk": {"S": app_pk(auth_app_id)},
                ":event": {"S": "EVENT#"},
            },
            ConsistentRead=True,
        )
        return [
            AuditEvent(
                auth_app_id=auth_app_id,
                event=item["event"]["S"],
                at=item["at"]["S"],
                actor=item["actor"]["S"],
                detail={k: v["S"] for k, v in item.get("detail", {}).get("M", {}).items()},
            )
            for item in response.get("Items", [])
        ]

    # --- authorization state nonces --------------------------------------------------------

    def put_state(self, state: AuthState) -> None:
        item: AttributeMap = {
            "pk": {"S": f"STATE#{state.nonce}"},
            "sk": {"S": STATE_SK},
            "expires_at": {"N": str(state.expires_at)},
            "ttl": {"N": str(state.expires_at + int(STATE_TTL_SLACK.total_seconds()))},
            "batch": {"BOOL": state.batch},
            "issued_at": {"S": _iso(self._clock())},
        }
        if state.merchant_ref:
            item["merchant_ref"] = {"S": state.merchant_ref}
        self._db.put_item(
            TableName=self._table, Item=item, ConditionExpression="attribute_not_exists(pk)"
        )

    def consume_state(self, state: AuthState) -> None:
        """Mark an issued state used, exactly once; StateReplayedError otherwise."""
        try:
            self._db.update_item(
                TableName=self._table,
                Key={"pk": {"S": f"STATE#{state.nonce}"}, "sk": {"S": STATE_SK}},
                UpdateExpression="SET consumed_at = :now",
                ConditionExpression="attribute_exists(pk) AND attribute_not_exists(consumed_at)",
                ExpressionAttributeValues={":now": {"S": _iso(self._clock())}},
            )
        except self._db.exceptions.ConditionalCheckFailedException:
            raise StateReplayedError(
                "this authorization link was already used; start the authorization again"
            ) from None

    def release_state(self, state: AuthState) -> None:
        """Undo a consume when the exchange failed for a reason a retry can fix."""
        self._db.update_item(
            TableName=self._table,
            Key={"pk": {"S": f"STATE#{state.nonce}"}, "sk": {"S": STATE_SK}},
            UpdateExpression="REMOVE consumed_at",
            ConditionExpression="attribute_exists(pk)",
        )


def _values(update: UpdateTypeDef) -> AttributeMap:
    """The update's attribute values, to add to (every update here is built with a dict)."""
    return cast(AttributeMap, update["ExpressionAttributeValues"])


def _with_set(update: UpdateTypeDef, name: str, value: AttributeMap) -> UpdateTypeDef:
    """``update`` with one more ``SET name = value``."""
    sets, removes = update["UpdateExpression"].split(" REMOVE ")
    update["UpdateExpression"] = f"{sets}, {name} = :{name} REMOVE {removes}"
    _values(update)[f":{name}"] = value
    return update


def _with_previous(update: UpdateTypeDef, current: Mapping[str, Any]) -> UpdateTypeDef:
    """Keep the pair being replaced, still sealed, beside the new one (for recovery)."""
    update = _with_set(update, "previous_tokens", current["tokens"])
    if "token_issued_at" in current:
        update = _with_set(update, "previous_issued_at", current["token_issued_at"])
    return update


def _encode_cursor(status: str, auth_app_id: str) -> str:
    raw = json.dumps({"s": status, "a": auth_app_id}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str, statuses: list[str]) -> tuple[str, str]:
    """The cursor is only ever a status and an app id: anything else is refused, so a caller
    cannot steer the Query elsewhere."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value = json.loads(raw)
        status, auth_app_id = value["s"], value["a"]
    except (ValueError, TypeError, KeyError):
        raise CursorError("the cursor is not one this service handed out") from None
    if status not in statuses or not is_app_id(auth_app_id) or set(value) != {"s", "a"}:
        raise CursorError("the cursor is not one this service handed out")
    return status, auth_app_id


def sealed_to_item(sealed: SealedTokens) -> AttributeMap:
    """A sealed pair as the item's map attribute (``tokens``, ``previous_tokens``)."""
    return {
        "key_id": {"S": sealed.key_id},
        "wrapped_key": {"B": sealed.wrapped_key},
        "alg": {"S": sealed.algorithm},
        "fields": {"M": {name: {"B": blob} for name, blob in sealed.fields.items()}},
    }


def _sealed_from_item(item: Mapping[str, Any]) -> SealedTokens:
    return SealedTokens(
        key_id=item["key_id"]["S"],
        wrapped_key=bytes(item["wrapped_key"]["B"]),
        fields={name: bytes(value["B"]) for name, value in item["fields"]["M"].items()},
        algorithm=item["alg"]["S"],
    )


def _authorization_from_item(item: Mapping[str, Any]) -> StoredAuthorization:
    def text(name: str) -> str | None:
        value = item.get(name)
        return None if value is None else str(value["S"])

    def millis(name: str) -> datetime | None:
        return from_epoch_ms(item[name]["N"]) if name in item else None

    return StoredAuthorization(
        auth_app_id=item["auth_app_id"]["S"],
        user_id=text("user_id"),
        status=item["status"]["S"],
        version=int(item["version"]["N"]),
        token_issued_at=millis("token_issued_at"),
        expires_at=_from_epoch(item.get("expires_at")),
        re_expires_at=_from_epoch(item.get("re_expires_at")),
        next_refresh_at=_from_epoch(item.get("next_refresh_at")),
        merchant_ref=text("merchant_ref"),
        granted_at=text("granted_at"),
        updated_at=text("updated_at"),
        sealed=_sealed_from_item(item["tokens"]["M"]) if "tokens" in item else None,
        lease_owner=text("lease_owner"),
        lease_until=_from_epoch(item.get("lease_until")),
        refresh_failures=int(item["refresh_failures"]["N"]) if "refresh_failures" in item else 0,
        reconcile_reason=text("reconcile_reason"),
        status_reason=text("status_reason"),
        previous_issued_at=millis("previous_issued_at"),
        previous_sealed=_sealed_from_item(item["previous_tokens"]["M"])
        if "previous_tokens" in item
        else None,
        auth_methods=tuple(m["S"] for m in item["auth_methods"]["L"])
        if "auth_methods" in item
        else None,
        auth_start=text("auth_start"),
        auth_end=text("auth_end"),
        alipay_status=text("alipay_status"),
        verified_at=millis("verified_at"),
        verify_at=_from_epoch(item.get("verify_at")),
    )
