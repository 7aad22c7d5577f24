"""The collaborators a function needs, built on first use and kept for the container's life.

Handlers call :func:`runtime` and pass what it holds to the layer's functions; tests call
:func:`reset_runtime` after changing the environment (or inject clients via ``appauth.aws``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING

from appauth import aws
from appauth.alipay.errors import AppAuthError
from appauth.config import Settings
from appauth.envelope import TokenCipher
from appauth.parking import GrantSink, Kept
from appauth.policy import RefreshPolicy
from appauth.secrets import load_credentials, load_state_secret
from appauth.store import TokenStore

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.parameters import SSMProvider

    from appauth.alipay.client import AlipayClient
    from appauth.alipay.credentials import AppCredentials
    from appauth.alipay.models import TokenGrant
    from appauth.events import EventBridgePublisher
    from appauth.lookup import LookupCache, TokenService
    from appauth.refresh import Refresher, TokenBucket


class PairNotKeptError(AppAuthError):
    """KMS, DynamoDB and SQS all refused a pair Alipay returned (counted, alarmed)."""


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: AlipayClient | None = None
        self._query_client: AlipayClient | None = None

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
        # Deferred, like every import of the OpenAPI client: a token look-up never needs it.
        from appauth.alipay.client import AlipayClient  # noqa: PLC0415

        credentials = self.credentials()
        if self._client is None or self._client.credentials is not credentials:
            self._client = AlipayClient(
                credentials,
                self.settings.endpoints,
                protocol=self.settings.protocol,
                session=self._client.session if self._client else None,
            )
        return self._client

    def query_client(self) -> AlipayClient:
        """The token query's client: tighter timeouts, since a caller waits on it (at most
        13 s: two tries of 2 s connect + 4 s read and a pause, inside the function's 20 s)."""
        from appauth.alipay.client import AlipayClient, RetryPolicy  # noqa: PLC0415

        credentials = self.credentials()
        if self._query_client is None or self._query_client.credentials is not credentials:
            self._query_client = AlipayClient(
                credentials,
                self.settings.endpoints,
                protocol=self.settings.protocol,
                connect_timeout=2.0,
                read_timeout=4.0,
                retry=RetryPolicy(attempts=2, max_delay=1.0),
                session=self._query_client.session if self._query_client else None,
            )
        return self._query_client

    def token_service(
        self, cache: LookupCache, *, time_left: Callable[[], float] | None = None
    ) -> TokenService:
        """The token query's service around the handler's cache (kept for the container)."""
        from appauth.lookup import TokenService  # noqa: PLC0415

        service = TokenService(store=self.store, cache=cache, alipay=self.query_client)
        if time_left is not None:
            service.time_left = time_left
        return service

    @cached_property
    def cipher(self) -> TokenCipher:
        return TokenCipher(aws.kms(), self.settings.token_key_id)

    @cached_property
    def events(self) -> EventBridgePublisher:
        from appauth.events import EventBridgePublisher  # noqa: PLC0415  (not on the look-up path)

        return EventBridgePublisher(aws.events, self.settings.event_bus_name)

    @cached_property
    def store(self) -> TokenStore:
        return TokenStore(
            aws.dynamodb(),
            self.settings.tokens_table,
            self.cipher,
            policy=RefreshPolicy(
                ahead_days=self.settings.refresh_ahead_days,
                hygiene_days=self.settings.refresh_hygiene_days,
                verify_days=self.settings.verify_every_days,
            ),
            actor=os.environ.get("AWS_LAMBDA_FUNCTION_NAME", "appauth"),
            events=self.events,
        )

    @cached_property
    def sink(self) -> GrantSink:
        return GrantSink(aws.sqs, self.settings.parked_queue_url, self.cipher)

    def refresher(
        self, *, owner: str, time_left: Callable[[], float], function_timeout: float
    ) -> Refresher:
        """The collaborators of one refresh run (``owner``: the invocation's request id)."""
        from appauth.refresh import Budget, Refresher  # noqa: PLC0415  (refresh function only)

        client = self.client()
        budget = Budget.for_client(client, aws.worst_case_call_seconds())
        return Refresher(
            store=self.store,
            client=client,
            sink=self.sink,
            clock=lambda: datetime.now(UTC),
            owner=owner,
            budget=budget,
            lease_seconds=budget.lease_seconds(function_timeout),
            time_left=time_left,
            limiter=self.rate_limiter,
        )

    @cached_property
    def rate_limiter(self) -> TokenBucket:
        """Shared by every run of this container: the client-side limit on Alipay refreshes."""
        from appauth.refresh import TokenBucket  # noqa: PLC0415

        return TokenBucket(self.settings.refresh_rate_per_second)

    def park(
        self, grants: Sequence[TokenGrant], *, source: str, reason: str, merchant_ref: str | None
    ) -> None:
        """The callback's fallback when the store refuses a pair: the queue, else the
        last-resort log line (the merchant's redirect is not sent twice)."""
        self._park(grants, source=source, reason=reason, merchant_ref=merchant_ref)

    def park_for_redelivery(
        self, grants: Sequence[TokenGrant], *, source: str, reason: str, merchant_ref: str | None
    ) -> None:
        """The notifications' fallback: the queue only. Alipay redelivers a notification that
        was not answered "success", which beats a pair kept in a log line."""
        self._park(grants, source=source, reason=reason, merchant_ref=merchant_ref, strict=True)

    def _park(
        self,
        grants: Sequence[TokenGrant],
        *,
        source: str,
        reason: str,
        merchant_ref: str | None,
        strict: bool = False,
    ) -> None:
        for grant in grants:
            kept = self.sink.keep(
                grant,
                None,
                source=source,
                reason=reason,
                merchant_ref=merchant_ref,
                last_resort=not strict,
            )
            if kept is Kept.LOST or (strict and kept is not Kept.PARKED):
                raise PairNotKeptError(f"merchant app {grant.auth_app_id}: pair not kept")


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
