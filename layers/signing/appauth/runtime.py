"""The collaborators a function needs, built on first use and kept for the container's life.

Handlers call :func:`runtime` and pass what it holds to the layer's functions; tests call
:func:`reset_runtime` after changing the environment (or inject clients via ``appauth.aws``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from functools import cached_property
from typing import TYPE_CHECKING

from appauth import aws
from appauth.alipay.client import AlipayClient
from appauth.alipay.credentials import AppCredentials
from appauth.alipay.models import TokenGrant
from appauth.config import Settings
from appauth.envelope import TokenCipher
from appauth.parking import park_grants
from appauth.policy import RefreshPolicy
from appauth.secrets import load_credentials, load_state_secret
from appauth.store import TokenStore

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.parameters import SSMProvider


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: AlipayClient | None = None

    @cached_property
    def parameters(self) -> SSMProvider:
        from aws_lambda_powertools.utilities.parameters import SSMProvider  # noqa: PLC0415

        return SSMProvider(boto3_client=aws.ssm())

    def credentials(self) -> AppCredentials:
        return load_credentials(self.settings, self.parameters)

    def state_secret(self) -> bytes:
        return load_state_secret(self.settings, self.parameters)

    def client(self) -> AlipayClient:
        """The client for the current credentials (rebuilt when a rotated key is picked up)."""
        credentials = self.credentials()
        if self._client is None or self._client.credentials is not credentials:
            self._client = AlipayClient(
                credentials,
                self.settings.endpoints,
                protocol=self.settings.protocol,
                session=self._client.session if self._client else None,
            )
        return self._client

    @cached_property
    def cipher(self) -> TokenCipher:
        return TokenCipher(aws.kms(), self.settings.token_key_id)

    @cached_property
    def store(self) -> TokenStore:
        return TokenStore(
            aws.dynamodb(),
            self.settings.tokens_table,
            self.cipher,
            policy=RefreshPolicy(
                ahead_days=self.settings.refresh_ahead_days,
                hygiene_days=self.settings.refresh_hygiene_days,
            ),
            actor=os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "appauth"),
        )

    def park(
        self, grants: Sequence[TokenGrant], *, source: str, reason: str, merchant_ref: str | None
    ) -> None:
        park_grants(
            aws.sqs(),
            self.settings.parked_queue_url,
            grants,
            self.cipher,
            source=source,
            reason=reason,
            merchant_ref=merchant_ref,
        )


_runtime: Runtime | None = None
_lock = threading.Lock()


def runtime() -> Runtime:
    global _runtime  # noqa: PLW0603  (one per container, by design)
    if _runtime is None:
        with _lock:
            if _runtime is None:
                _runtime = Runtime(Settings.from_env())
    return _runtime


def reset_runtime() -> None:
    global _runtime  # noqa: PLW0603
    _runtime = None
    aws.reset_clients()
