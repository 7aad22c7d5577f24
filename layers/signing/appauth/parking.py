"""Where a token pair goes when DynamoDB will not take it: an SQS queue, alarmed, drained later.

A pair Alipay returned is never dropped. If the store write still fails after boto3's retries,
the pair is parked (sealed with KMS when KMS answers; the queue is SSE-encrypted either way) and
an alarm fires on the queue depth. :func:`drain_parked` writes parked pairs into the store and
deletes each message only after its pair is stored (or a newer pair made it obsolete).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from appauth.alipay.errors import AppAuthError
from appauth.alipay.models import TokenGrant
from appauth.envelope import TokenCipher, sealed_from_json, sealed_to_json

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient

    from appauth.store import TokenStore

logger = logging.getLogger(__name__)
MESSAGE_KIND = "appauth.parked_grant.v1"


def _encode_grant(grant: TokenGrant, cipher: TokenCipher) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "auth_app_id": grant.auth_app_id,
        "user_id": grant.user_id,
        "expires_in": grant.expires_in,
        "re_expires_in": grant.re_expires_in,
        "received_at": grant.received_at.isoformat(),
    }
    try:
        entry["sealed"] = sealed_to_json(cipher.seal(grant.auth_app_id, grant.secrets()))
    except (BotoCoreError, ClientError):
        # KMS is down too: the queue's own KMS encryption at rest still protects the pair.
        entry["tokens"] = grant.secrets()
    return entry


def _decode_grant(entry: dict[str, Any], cipher: TokenCipher) -> TokenGrant:
    if "sealed" in entry:
        tokens = cipher.open(entry["auth_app_id"], sealed_from_json(entry["sealed"]))
    else:
        tokens = entry["tokens"]
    return TokenGrant(
        auth_app_id=entry["auth_app_id"],
        user_id=entry.get("user_id"),
        app_auth_token=tokens["app_auth_token"],
        app_refresh_token=tokens["app_refresh_token"],
        expires_in=entry.get("expires_in"),
        re_expires_in=entry.get("re_expires_in"),
        received_at=datetime.fromisoformat(entry["received_at"]),
    )


def park_grants(
    sqs: SQSClient,
    queue_url: str,
    grants: Sequence[TokenGrant],
    cipher: TokenCipher,
    *,
    source: str,
    reason: str,
    merchant_ref: str | None = None,
) -> None:
    """Send each pair to the parking queue (one message per pair, so each drains on its own)."""
    for grant in grants:
        body = {
            "kind": MESSAGE_KIND,
            "source": source,
            "reason": reason,
            "merchant_ref": merchant_ref,
            "grant": _encode_grant(grant, cipher),
        }
        sqs.send_message(QueueUrl=queue_url, MessageBody=json.dumps(body))
        logger.error(
            "Token pair parked: the store refused it",
            extra={"auth_app_id": grant.auth_app_id, "reason": reason},
        )


def drain_parked(
    sqs: SQSClient,
    queue_url: str,
    store: TokenStore,
    cipher: TokenCipher,
    *,
    max_messages: int = 100,
) -> int:
    """Store parked pairs; returns how many messages were settled (stored or obsolete)."""
    settled = unsettled = 0
    while settled + unsettled < max_messages:
        response = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
        )
        messages = response.get("Messages", [])
        if not messages:
            break
        for message in messages:
            try:
                body = json.loads(message["Body"])
                if not isinstance(body, dict) or body.get("kind") != MESSAGE_KIND:
                    raise ValueError("not a parked grant")
                grant = _decode_grant(body["grant"], cipher)
                store.save_grant(
                    grant, source=f"{body['source']}+parked", merchant_ref=body.get("merchant_ref")
                )
            except (
                ValueError,
                KeyError,
                TypeError,
                AppAuthError,
                BotoCoreError,
                ClientError,
            ) as error:
                # Leave it: it comes back after the visibility timeout and, after a few tries,
                # moves to the dead-letter queue (alarmed). One bad message never blocks the rest.
                unsettled += 1
                logger.error(
                    "Parked message not settled; left on the queue",
                    extra={"message_id": message.get("MessageId"), "error": type(error).__name__},
                )
                continue
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
            settled += 1
    return settled
