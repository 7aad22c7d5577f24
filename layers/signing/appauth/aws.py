"""boto3 clients, created on first use and cached per container (never at import time).

Tests and the local stack inject their own with :func:`set_client`, or point boto3 at moto with
``AWS_ENDPOINT_URL``.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_kms import KMSClient
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_ssm import SSMClient

_clients: dict[str, Any] = {}
_lock = threading.Lock()


def _client(service: str) -> Any:
    client = _clients.get(service)
    if client is None:
        with _lock:
            client = _clients.get(service)
            if client is None:
                import boto3  # noqa: PLC0415  (deferred: keeps cold starts of pure paths cheap)
                from botocore.config import Config  # noqa: PLC0415

                config = Config(
                    retries={"mode": "standard", "max_attempts": 5},
                    connect_timeout=3,
                    read_timeout=10,
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


def set_client(service: str, client: Any) -> None:
    _clients[service] = client


def reset_clients() -> None:
    """Forget every client (tests switch endpoints between runs)."""
    _clients.clear()
