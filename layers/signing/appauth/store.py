"""The token store: one DynamoDB table (defined in template.yaml) for merchants, audit and state.

Items (``pk`` / ``sk``):

- ``APP#<auth_app_id>`` / ``AUTH``: the merchant app's authorization: ``status`` (granted,
  needs_reauth, revoked), ``version``, the sealed token pair (``tokens``: KMS key id, wrapped
  data key, AES-GCM ciphertexts), ``token_issued_at`` (ms, orders writes), ``expires_at``,
  ``re_expires_at``, ``next_refresh_at`` (epoch seconds), ``user_id``, ``merchant_ref``,
  timestamps. Only ``granted`` items carry ``due_shard``, which makes the ``due`` index sparse:
  the refresher queries ``due_shard = s AND next_refresh_at <= now`` per shard, never a Scan.
- ``APP#<auth_app_id>`` / ``EVENT#<time>#<id>``: audit events (what, when, who; never a token).
- ``STATE#<nonce>`` / ``STATE``: an issued authorization ``state``; ``consumed_at`` is set once,
  atomically; ``ttl`` lets DynamoDB delete it after it expires.

Every write that could race is conditional: a token pair is written only if it was issued after
the stored one (``token_issued_at``), and the audit event goes in the same transaction.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from appauth.alipay.models import TokenGrant
from appauth.envelope import SealedTokens, TokenCipher, TokenDecryptionError
from appauth.errors import StateReplayedError
from appauth.policy import DUE_SHARDS, RefreshPolicy, due_shard
from appauth.state import AuthState

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import PutTypeDef, UpdateTypeDef

STATUS_GRANTED = "granted"
STATUS_REVOKED = "revoked"
AUTH_SK = "AUTH"
DUE_INDEX = "due"
STATE_SK = "STATE"
STATE_TTL_SLACK = timedelta(days=1)

AttributeMap = dict[str, Any]


def app_pk(auth_app_id: str) -> str:
    return f"APP#{auth_app_id}"


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
    ) -> None:
        self._db = dynamodb
        self._table = table_name
        self._cipher = cipher
        self._policy = policy or RefreshPolicy()
        self._actor = actor
        self._clock = clock

    # --- token pairs -----------------------------------------------------------------------

    def save_grant(
        self, grant: TokenGrant, *, source: str, merchant_ref: str | None = None
    ) -> SaveResult:
        """Store a pair Alipay returned, unless a pair issued later is already stored."""
        now = self._clock()
        sealed = self._cipher.seal(grant.auth_app_id, grant.secrets())
        next_refresh = self._policy.next_refresh_at(
            grant.auth_app_id, grant.received_at, grant.re_expires_at
        )
        names = {"#status": "status"}
        values: AttributeMap = {
            ":issued": {"N": epoch_ms(grant.received_at)},
            ":granted": {"S": STATUS_GRANTED},
            ":one": {"N": "1"},
            ":zero": {"N": "0"},
            ":now": {"S": _iso(now)},
            ":tokens": {"M": _sealed_to_item(sealed)},
            ":app": {"S": grant.auth_app_id},
            ":next": {"N": _epoch(next_refresh)},
            ":shard": {"S": due_shard(grant.auth_app_id)},
            ":source": {"S": source},
        }
        sets = [
            "auth_app_id = :app",
            "#status = :granted",
            "version = if_not_exists(version, :zero) + :one",
            "tokens = :tokens",
            "token_issued_at = :issued",
            "next_refresh_at = :next",
            "due_shard = :shard",
            "granted_at = if_not_exists(granted_at, :now)",
            "updated_at = :now",
            "token_source = :source",
        ]
        removes = ["revoked_at", "lease_until", "lease_owner", "refresh_failures"]
        # revoked_ms stays: it keeps refusing pairs issued before the cancellation.
        optional: dict[str, AttributeMap | None] = {
            "user_id": {"S": grant.user_id} if grant.user_id else None,
            "merchant_ref": {"S": merchant_ref} if merchant_ref else None,
            "expires_at": {"N": _epoch(grant.expires_at)} if grant.expires_at else None,
            "re_expires_at": {"N": _epoch(grant.re_expires_at)} if grant.re_expires_at else None,
        }
        for name, value in optional.items():
            if value is not None:
                sets.append(f"{name} = :{name}")
                values[f":{name}"] = value
        update: UpdateTypeDef = {
            "TableName": self._table,
            "Key": {"pk": {"S": app_pk(grant.auth_app_id)}, "sk": {"S": AUTH_SK}},
            "UpdateExpression": f"SET {', '.join(sets)} REMOVE {', '.join(removes)}",
            # Never over a newer pair, and never resurrect a merchant who cancelled after this
            # pair was issued (a parked or in-flight pair landing after the cancellation).
            "ConditionExpression": "(attribute_not_exists(token_issued_at) OR token_issued_at < :issued) "
            "AND (attribute_not_exists(revoked_ms) OR revoked_ms < :issued)",
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": values,
        }
        event = self._event_item(
            grant.auth_app_id,
            "token_pair_stored",
            {"source": source, "user_id": grant.user_id or "", "merchant_ref": merchant_ref or ""},
            now,
        )
        if not self._update_with_event(update, event):
            self.record_event(grant.auth_app_id, "older_pair_ignored", {"source": source}, now)
            return SaveResult(grant.auth_app_id, stored=False)
        return SaveResult(grant.auth_app_id, stored=True)

    def get(self, auth_app_id: str, *, consistent: bool = True) -> StoredAuthorization | None:
        response = self._db.get_item(
            TableName=self._table,
            Key={"pk": {"S": app_pk(auth_app_id)}, "sk": {"S": AUTH_SK}},
            ConsistentRead=consistent,
        )
        item = response.get("Item")
        return None if item is None else _authorization_from_item(item)

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
        now = self._clock()
        update: UpdateTypeDef = {
            "TableName": self._table,
            "Key": {"pk": {"S": app_pk(auth_app_id)}, "sk": {"S": AUTH_SK}},
            "UpdateExpression": "SET auth_app_id = :app, #status = :revoked, revoked_ms = :cancelled, "
            "revoked_at = :now, updated_at = :now, version = if_not_exists(version, :zero) + :one "
            "REMOVE due_shard, next_refresh_at, lease_until, lease_owner",
            "ConditionExpression": "(attribute_not_exists(token_issued_at) OR token_issued_at <= :cancelled) "
            "AND (attribute_not_exists(revoked_ms) OR revoked_ms < :cancelled)",
            "ExpressionAttributeNames": {"#status": "status"},
            "ExpressionAttributeValues": {
                ":app": {"S": auth_app_id},
                ":revoked": {"S": STATUS_REVOKED},
                ":now": {"S": _iso(now)},
                ":zero": {"N": "0"},
                ":one": {"N": "1"},
                ":cancelled": {"N": epoch_ms(cancelled_at)},
            },
        }
        event = self._event_item(auth_app_id, "authorization_revoked", {"reason": reason}, now)
        return self._update_with_event(update, event)

    # --- refresh scheduling ----------------------------------------------------------------

    def due(self, now: datetime, *, limit: int) -> list[tuple[str, int]]:
        """(auth_app_id, version) of granted items due by ``now``: a Query per shard of the sparse index."""
        found: list[tuple[str, int]] = []
        for shard in range(DUE_SHARDS):
            paginator = self._db.get_paginator("query")
            pages = paginator.paginate(
                TableName=self._table,
                IndexName=DUE_INDEX,
                KeyConditionExpression="due_shard = :shard AND next_refresh_at <= :now",
                ExpressionAttributeValues={":shard": {"S": str(shard)}, ":now": {"N": _epoch(now)}},
            )
            for page in pages:
                for item in page.get("Items", []):
                    found.append((item["auth_app_id"]["S"], int(item["version"]["N"])))
                    if len(found) >= limit:
                        return found
        return found

    def acquire_lease(
        self, auth_app_id: str, *, version: int, now: datetime, seconds: int, owner: str
    ) -> StoredAuthorization | None:
        """Claim a merchant for one refresh and return it as leased; None if another runner holds
        it or the item moved on (another version, no longer granted)."""
        try:
            response = self._db.update_item(
                TableName=self._table,
                Key={"pk": {"S": app_pk(auth_app_id)}, "sk": {"S": AUTH_SK}},
                UpdateExpression="SET lease_until = :until, lease_owner = :owner",
                ConditionExpression="version = :version AND #status = :granted "
                "AND (attribute_not_exists(lease_until) OR lease_until < :now)",
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={
                    ":until": {"N": _epoch(now + timedelta(seconds=seconds))},
                    ":owner": {"S": owner},
                    ":version": {"N": str(version)},
                    ":granted": {"S": STATUS_GRANTED},
                    ":now": {"N": _epoch(now)},
                },
                ReturnValues="ALL_NEW",
            )
        except self._db.exceptions.ConditionalCheckFailedException:
            return None
        return _authorization_from_item(response["Attributes"])

    def defer_refresh(
        self, auth_app_id: str, *, version: int, owner: str, until: datetime, reason: str
    ) -> None:
        """Push a failed refresh back (and release the lease); counts consecutive failures."""
        now = self._clock()
        update: UpdateTypeDef = {
            "TableName": self._table,
            "Key": {"pk": {"S": app_pk(auth_app_id)}, "sk": {"S": AUTH_SK}},
            "UpdateExpression": "SET next_refresh_at = :until, updated_at = :now, "
            "refresh_failures = if_not_exists(refresh_failures, :zero) + :one REMOVE lease_until, lease_owner",
            # Only the runner holding the lease may release it.
            "ConditionExpression": "version = :version AND lease_owner = :owner",
            "ExpressionAttributeValues": {
                ":until": {"N": _epoch(until)},
                ":now": {"S": _iso(now)},
                ":zero": {"N": "0"},
                ":one": {"N": "1"},
                ":version": {"N": str(version)},
                ":owner": {"S": owner},
            },
        }
        event = self._event_item(
            auth_app_id, "refresh_deferred", {"reason": reason, "until": _iso(until)}, now
        )
        # False means the item moved on (re-authorized, revoked, leased by another): nothing to do.
        self._update_with_event(update, event)

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


def _sealed_to_item(sealed: SealedTokens) -> AttributeMap:
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

    return StoredAuthorization(
        auth_app_id=item["auth_app_id"]["S"],
        user_id=text("user_id"),
        status=item["status"]["S"],
        version=int(item["version"]["N"]),
        token_issued_at=from_epoch_ms(item["token_issued_at"]["N"])
        if "token_issued_at" in item
        else None,
        expires_at=_from_epoch(item.get("expires_at")),
        re_expires_at=_from_epoch(item.get("re_expires_at")),
        next_refresh_at=_from_epoch(item.get("next_refresh_at")),
        merchant_ref=text("merchant_ref"),
        granted_at=text("granted_at"),
        updated_at=text("updated_at"),
        sealed=_sealed_from_item(item["tokens"]["M"]) if "tokens" in item else None,
    )
