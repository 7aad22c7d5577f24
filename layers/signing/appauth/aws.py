"""boto3 clients, created on first use and cached per container (never at import time).

Tests and the local stack inject their own with :func:`set_client`, or point boto3 at moto with
``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from appauth.alipay.redaction import install_log_filters

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_events import EventBridgeClient
    from mypy_boto3_kms import KMSClient
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_ssm import SSMClient

# Tight on purpose: the refresh run reserves time for the worst case of every AWS call it makes
# after Alipay answered (see worst_case_call_seconds), so these bound how much it must reserve.
CONNECT_TIMEOUT = 2.0
READ_TIMEOUT = 5.0
MAX_ATTEMPTS = 3
# botocore's standard mode sleeps up to min(2 ** attempt, 20) s between attempts.
_MAX_BACKOFF = sum(min(2.0**attempt, 20.0) for attempt in range(MAX_ATTEMPTS - 1))

# AWS error codes a retry may cure (throttling, a busy or failing service).
RETRYABLE_AWS_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "InternalServerError",
        "InternalFailure",
        "ServiceUnavailable",
        "TransactionConflictException",
        "LimitExceededException",
        "KMSInternalException",
        "DependencyTimeoutException",
        "TooManyUpdates",
    }
)
# AWS error codes that mean our own setup is wrong (permissions, missing resources).
SETUP_AWS_CODES = frozenset(
    {
        "AccessDeniedException",
        "AccessDenied",
        "UnrecognizedClientException",
        "ResourceNotFoundException",
        "ValidationException",
        "ParameterNotFound",
        "NotFoundException",
        "DisabledException",
        "KMSInvalidStateException",
        "InvalidKeyUsageException",
    }
)


def is_transient(error: BaseException) -> bool:
    """An AWS failure a retry may cure: no answer at all, throttling, or a failing service."""
    from botocore.exceptions import BotoCoreError, ClientError  # noqa: PLC0415  (cold starts)

    if isinstance(error, BotoCoreError):
        return True
    if not isinstance(error, ClientError):
        return False
    code = str(error.response.get("Error", {}).get("Code", ""))
    status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 500))
    return code in RETRYABLE_AWS_CODES or (code not in SETUP_AWS_CODES and status >= 500)


_clients: dict[str, Any] = {}
_lock = threading.Lock()


def _client(service: str) -> Any:
    client = _clients.get(service)
    if client is None:
        with _lock:
            client = _clients.get(service)
            if client is None:
                # Before any AWS call: botocore at DEBUG would log decrypted SSM values and KMS
                # plaintext data keys.
                install_log_filters()
                import boto3  # noqa: PLC0415  (deferred: keeps cold starts of pure paths cheap)
                from botocore.config import Config  # noqa: PLC0415

                config = Config(
                    retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
                    connect_timeout=CONNECT_TIMEOUT,
                    read_timeout=READ_TIMEOUT,
                    max_pool_connections=50,  # the refresh run's thread pool shares each client
                )
                client = boto3.client(service, config=config)  # type: ignore[call-overload]
                _clients[service] = client
    return client


def dynamodb() -> DynamoDBClient:
    client: DynamoDBClient = _client("dynamodb")
    return client


def kms() -> KMSClient:
    client: KMSClient = _client("kms")
    return client


def ssm() -> SSMClient:
    client: SSMClient = _client("ssm")
    return client


def sqs() -> SQSClient:
    client: SQSClient = _client("sqs")
    return client


def events() -> EventBridgeClient:
    client: EventBridgeClient = _client("events")
    return client


def worst_case_call_seconds() -> float:
    """The longest one AWS call can take with the configuration above, retries included."""
    return MAX_ATTEMPTS * (CONNECT_TIMEOUT + READ_TIMEOUT) + _MAX_BACKOFF


def set_client(service: str, client: Any) -> None:
    _clients[service] = client


def reset_clients() -> None:
    """Forget every client (tests switch endpoints between runs)."""
    _clients.clear()
