"""Where a token pair goes when DynamoDB will not take it: never dropped.

Durable sinks after the table, in order (:class:`GrantSink`):

1. the parking queue (SQS, encrypted with its own KMS key): one message per pair, the pair sealed
   under the token key when KMS answers; drained at the start of every refresh run and, as soon
   as it arrives, by the refresh function's SQS event source;
2. when the queue refuses too, the last resort: one structured log line (``appauth_rescue``)
   holding the same message, the pair sealed under the token key (ciphertext only: never
   plaintext in a log), which the operator re-imports with :func:`import_rescued`;
3. only when KMS, DynamoDB and SQS all refuse is the pair ``lost``: counted and alarmed.

Applying a parked pair goes through :meth:`TokenStore.save_sealed`, with the same fences as any
grant: an older pair never overwrites a newer one, nor a cancellation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from appauth.alipay.errors import AppAuthError
from appauth.alipay.models import TokenGrant
from appauth.envelope import SealedTokens, TokenCipher, sealed_from_json, sealed_to_json
from appauth.store import SaveResult, TokenStore

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

logger = logging.getLogger(__name__)
MESSAGE_KIND = "appauth.parked_grant.v1"
RESCUE_FIELD = "appauth_rescue"


class Kept(StrEnum):
    PARKED = "parked"
    LAST_RESORT = "logged_last_resort"
    LOST = "lost"
    LEFT_WITH_SENDER = "left_with_sender"  # not kept here: the sender redelivers it


class ParkedMessageError(AppAuthError):
    """A parked message (or rescued log line) is not one this service wrote, or is damaged."""


def parked_message(
    grant: TokenGrant,
    sealed: SealedTokens | None,
    *,
    source: str,
    reason: str,
    merchant_ref: str | None = None,
) -> dict[str, Any]:
    """The message body: the pair sealed when it could be, else plaintext for the queue alone
    (the queue's KMS encryption at rest protects it; such a body never goes to a log)."""
    entry: dict[str, Any] = {
        "auth_app_id": grant.auth_app_id,
        "user_id": grant.user_id,
        "expires_in": grant.expires_in,
        "re_expires_in": grant.re_expires_in,
        "received_at": grant.received_at.isoformat(),
        "answered_at": grant.answered_at.isoformat() if grant.answered_at else None,
    }
    if sealed is not None:
        entry["sealed"] = sealed_to_json(sealed)
    else:
        entry["tokens"] = grant.secrets()
    return {
        "kind": MESSAGE_KIND,
        "source": source,
        "reason": reason,
        "merchant_ref": merchant_ref,
        "grant": entry,
    }


@dataclass
class GrantSink:
    """The parking queue, then the log. Collaborators are injectable (and lazy)."""

    sqs: Callable[[], SQSClient]
    queue_url: str
    cipher: TokenCipher

    def keep(
        self,
        grant: TokenGrant,
        sealed: SealedTokens | None,
        *,
        source: str,
        reason: str,
        merchant_ref: str | None = None,
        last_resort: bool = True,
    ) -> Kept:
        """The queue, then (``last_resort``) the sealed pair in one log line. Without it a pair
        the queue refuses is ``LEFT_WITH_SENDER``: for a sender that redelivers (a notification)."""
        if sealed is None:
            sealed = self._try_seal(grant)
        body = parked_message(
            grant, sealed, source=source, reason=reason, merchant_ref=merchant_ref
        )
        try:
            self.sqs().send_message(QueueUrl=self.queue_url, MessageBody=json.dumps(body))
        except (BotoCoreError, ClientError) as error:
            logger.error(
                "Parking queue refused a token pair",
                extra={"auth_app_id": grant.auth_app_id, "error": type(error).__name__},
            )
        else:
            logger.error(
                "Token pair parked: the store refused it",
                extra={"auth_app_id": grant.auth_app_id, "reason": reason},
            )
            return Kept.PARKED
        if not last_resort:
            return Kept.LEFT_WITH_SENDER
        if sealed is None:
            # KMS, DynamoDB and SQS all refused: there is nowhere to put it but plaintext in a
            # log, which we never do. Counted as lost (alarmed).
            logger.critical(
                "Token pair lost: KMS, DynamoDB and SQS all refused it",
                extra={"auth_app_id": grant.auth_app_id, "reason": reason},
            )
            return Kept.LOST
        logger.critical(
            "Token pair kept in this log line as a last resort: re-import it",
            extra={"auth_app_id": grant.auth_app_id, RESCUE_FIELD: body},
        )
        return Kept.LAST_RESORT

    def _try_seal(self, grant: TokenGrant) -> SealedTokens | None:
        try:
            return self.cipher.seal(grant.auth_app_id, grant.secrets())
        except (BotoCoreError, ClientError):
            return None


def park_grants(
    sqs: SQSClient,
    queue_url: str,
    grants: Sequence[TokenGrant],
    cipher: TokenCipher,
    *,
    source: str,
    reason: str,
    merchant_ref: str | None = None,
) -> list[Kept]:
    """Park each pair (one message per pair, so each drains on its own)."""
    sink = GrantSink(lambda: sqs, queue_url, cipher)
    return [
        sink.keep(grant, None, source=source, reason=reason, merchant_ref=merchant_ref)
        for grant in grants
    ]


def apply_parked(body: Mapping[str, Any], store: TokenStore) -> SaveResult:
    """Store one parked pair with the usual fences. Raises ParkedMessageError when the body is
    not a parked grant, and lets AWS errors through (the message stays for another try)."""
    if not isinstance(body, Mapping) or body.get("kind") != MESSAGE_KIND:
        raise ParkedMessageError("not a parked grant")
    try:
        entry = body["grant"]
        received_at = datetime.fromisoformat(entry["received_at"])
        auth_app_id = str(entry["auth_app_id"])
        if "sealed" in entry:
            sealed = sealed_from_json(entry["sealed"])
            tokens = store.cipher.open(auth_app_id, sealed)
        else:
            tokens = entry["tokens"]
            sealed = None
        grant = TokenGrant(
            auth_app_id=auth_app_id,
            user_id=entry.get("user_id"),
            app_auth_token=tokens["app_auth_token"],
            app_refresh_token=tokens["app_refresh_token"],
            expires_in=entry.get("expires_in"),
            re_expires_in=entry.get("re_expires_in"),
            received_at=received_at,
            answered_at=datetime.fromisoformat(entry["answered_at"])
            if entry.get("answered_at")
            else None,
        )
        source = f"{body['source']}+parked"
    except (KeyError, TypeError, ValueError) as error:
        raise ParkedMessageError(f"damaged parked grant ({type(error).__name__})") from None
    merchant_ref = body.get("merchant_ref")
    if sealed is None:
        return store.save_grant(grant, source=source, merchant_ref=merchant_ref)
    return store.save_sealed(grant, sealed, source=source, merchant_ref=merchant_ref)


def import_rescued(log_line: str | Mapping[str, Any], store: TokenStore) -> SaveResult:
    """Re-import a pair that :class:`GrantSink` logged as a last resort (the whole JSON log line,
    or its ``appauth_rescue`` object)."""
    record: Any = json.loads(log_line) if isinstance(log_line, str) else log_line
    body = record.get(RESCUE_FIELD, record) if isinstance(record, Mapping) else None
    if not isinstance(body, Mapping) or "sealed" not in body.get("grant", {}):
        raise ParkedMessageError("not a rescued token pair")
    return apply_parked({**body, "source": f"{body['source']}+rescued"}, store)


def drain_parked(
    sqs: SQSClient,
    queue_url: str,
    store: TokenStore,
    *,
    max_messages: int = 100,
) -> int:
    """Store parked pairs; returns how many messages were settled (stored or obsolete)."""
    settled = unsettled = 0
    while settled + unsettled < max_messages:
        try:
            response = sqs.receive_message(
                QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
            )
        except (BotoCoreError, ClientError) as error:
            # The queue is unreachable: the run goes on (its event source drains it later).
            logger.error("Parking queue unreachable", extra={"error": type(error).__name__})
            break
        messages = response.get("Messages", [])
        if not messages:
            break
        for message in messages:
            try:
                apply_parked(_message_body(message["Body"]), store)
            except (AppAuthError, BotoCoreError, ClientError) as error:
                # Leave it: it comes back after the visibility timeout and, after a few tries,
                # moves to the dead-letter queue (alarmed). One bad message never blocks the rest.
                unsettled += 1
                logger.error(
                    "Parked message not settled; left on the queue",
                    extra={"message_id": message.get("MessageId"), "error": type(error).__name__},
                )
                continue
            settled += 1
            try:
                sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
            except (BotoCoreError, ClientError) as error:
                # Stored already: when the message comes back its pair is an older one, ignored.
                logger.warning(
                    "Parked message stored but not deleted",
                    extra={"message_id": message.get("MessageId"), "error": type(error).__name__},
                )
    return settled


def _message_body(text: str) -> Mapping[str, Any]:
    try:
        body = json.loads(text)
    except ValueError:
        raise ParkedMessageError("a parked message is not JSON") from None
    if not isinstance(body, Mapping):
        raise ParkedMessageError("not a parked grant")
    return body


def apply_parked_record(body_text: str, store: TokenStore) -> SaveResult:
    """One SQS record of the parking queue (the event source path); raising reports it as a
    batch item failure, so SQS redelivers it and, after 5 tries, dead-letters it."""
    return apply_parked(_message_body(body_text), store)
