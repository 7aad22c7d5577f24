"""The OpenAPI client: one object for the v2 gateway and the v3 API.

Retries are only where they are safe. A request that never left (connection refused, connect
timeout) may always be resent. A request that may have reached Alipay (read timeout, connection
dropped mid-answer, proxy 5xx) is resent only when it is read-only (``*.query``); for a token
exchange or refresh the client raises :class:`OutcomeUnknownError` instead, because Alipay may
have consumed the code or rotated the pair already.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import ConnectTimeoutError, MaxRetryError

from appauth.alipay.credentials import AppCredentials
from appauth.alipay.endpoints import ENVIRONMENTS, PRODUCTION, SANDBOX, Endpoints, Protocol
from appauth.alipay.errors import AlipayError, OutcomeUnknownError, TransportError
from appauth.alipay.models import (
    AuthorizationInfo,
    TokenResponse,
    parse_authorization_info,
    parse_token_response,
)
from appauth.alipay.redaction import install_log_filters
from appauth.alipay.signing import build_request, verify_response
from appauth.alipay.signing_v3 import build_v3_request, verify_v3_response

# The endpoints live in appauth.alipay.endpoints (no requests there: cold starts) and are
# re-exported here, where the README and ISVs' code import them from.
__all__ = [
    "ENVIRONMENTS",
    "MAX_RESPONSE_BYTES",
    "NOT_PROCESSED_STATUSES",
    "POOL_SIZE",
    "PRODUCTION",
    "QUERY_METHOD",
    "SANDBOX",
    "TOKEN_METHOD",
    "V3_QUERY_PATH",
    "V3_TOKEN_PATH",
    "AlipayClient",
    "Endpoints",
    "Protocol",
    "RetryPolicy",
    "V3Response",
]

logger = logging.getLogger(__name__)

TOKEN_METHOD = "alipay.open.auth.token.app"  # noqa: S105 (a method name)
QUERY_METHOD = "alipay.open.auth.token.app.query"
V3_TOKEN_PATH = "/v3/alipay/open/auth/token/app"  # noqa: S105 (a path)
V3_QUERY_PATH = "/v3/alipay/open/auth/token/app/query"
MAX_RESPONSE_BYTES = 1024 * 1024
# A proxy or load balancer answering these has, by their definition, not handed the request on
# (503 Service Unavailable, 429 Too Many Requests): nothing was processed, so even an exchange or
# a refresh may be resent. A 500, 502 or 504 may come after Alipay processed it: outcome unknown.
NOT_PROCESSED_STATUSES = frozenset({429, 503})
POOL_SIZE = 64  # connections kept per host: the refresh run calls Alipay from a thread pool
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with full jitter, for the requests where a retry is safe."""

    attempts: int = 3
    base_delay: float = 0.2
    max_delay: float = 2.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.max_delay, self.base_delay * 2 ** (attempt - 1)))  # noqa: S311


@dataclass(frozen=True)
class V3Response:
    status: int
    data: dict[str, Any]
    trace_id: str | None


@dataclass(frozen=True)
class _RawResponse:
    status: int
    headers: Mapping[str, str]
    text: str


def _never_sent(error: requests.ConnectionError) -> bool:
    """True when the connection was never established, so Alipay cannot have seen the request."""
    if isinstance(error, requests.ConnectTimeout):
        return True
    reason = error.args[0] if error.args else None
    if isinstance(reason, MaxRetryError):
        reason = reason.reason
    return isinstance(reason, ConnectTimeoutError)  # includes NewConnectionError and DNS failures


class AlipayClient:
    """Signed calls to Alipay with verified answers.

    ``protocol`` selects v2 (gateway) or v3 for the token methods; ``call`` and ``request`` are
    always available. Collaborators (session, sleep, clock) are injectable for tests.
    """

    def __init__(
        self,
        credentials: AppCredentials,
        endpoints: Endpoints = PRODUCTION,
        *,
        protocol: Protocol = "v2",
        encrypt: bool = False,
        session: requests.Session | None = None,
        connect_timeout: float = 3.05,
        read_timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if protocol not in ("v2", "v3"):
            raise ValueError("protocol must be 'v2' or 'v3'")
        install_log_filters()  # urllib3 at DEBUG logs every URL: v3 queries carry the token
        self.credentials = credentials
        self.endpoints = endpoints
        self.protocol = protocol
        self.encrypt = encrypt
        self._session = session
        self._timeout = (connect_timeout, read_timeout)
        self._retry = retry or RetryPolicy()
        self._sleep = sleep
        self._clock = clock

    def worst_case_seconds(self, *, retry_safe: bool) -> float:
        """The longest one call can take. A call that is not retry-safe is resent only when it
        never left (each such try costs at most the connect timeout); a safe one is resent
        after any transient failure. Read timeouts bound each socket read, as in requests."""
        connect, read = self._timeout
        attempts = self._retry.attempts
        pauses = (attempts - 1) * self._retry.max_delay
        if retry_safe:
            return attempts * (connect + read) + pauses
        return attempts * connect + read + pauses

    @property
    def session(self) -> requests.Session:
        if self._session is None:
            session = requests.Session()
            adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE)
            session.mount("https://", adapter)
            session.mount("http://", adapter)
            self._session = session
        return self._session

    # --- token APIs ----------------------------------------------------------------------

    def exchange_code(self, app_auth_code: str) -> TokenResponse:
        """``grant_type=authorization_code``. Never retried once it may have reached Alipay."""
        body = {"grant_type": "authorization_code", "code": app_auth_code}
        sent_at = self._clock()  # lifetimes count from before the request: the safe bound
        response = parse_token_response(self._token_call(body), sent_at)
        answered_at = self._clock()
        return replace(
            response, grants=tuple(replace(g, answered_at=answered_at) for g in response.grants)
        )

    def refresh(self, app_refresh_token: str) -> TokenResponse:
        """``grant_type=refresh_token``. Never retried once it may have reached Alipay."""
        body = {"grant_type": "refresh_token", "refresh_token": app_refresh_token}
        sent_at = self._clock()
        return parse_token_response(self._token_call(body), sent_at)

    def query_authorization(self, app_auth_token: str) -> AuthorizationInfo:
        """``alipay.open.auth.token.app.query``: read-only, so transient failures are retried."""
        if self.protocol == "v3":
            data = self.request("GET", V3_QUERY_PATH, query={"app_auth_token": app_auth_token}).data
        else:
            data = self.call(QUERY_METHOD, {"app_auth_token": app_auth_token})
        return parse_authorization_info(data)

    def _token_call(self, body: Mapping[str, str]) -> dict[str, Any]:
        if self.protocol == "v3":
            return self.request("POST", V3_TOKEN_PATH, body=body).data
        return self.call(TOKEN_METHOD, body)

    # --- generic calls -------------------------------------------------------------------

    def call(
        self,
        method: str,
        biz_content: Mapping[str, Any] | str | None = None,
        *,
        app_auth_token: str | None = None,
        extra_params: Mapping[str, str] | None = None,
        retry_safe: bool | None = None,
    ) -> dict[str, Any]:
        """One v2 gateway call; returns the verified method node (``code`` 10000).

        ``retry_safe`` defaults to True for ``*.query`` methods only.
        """
        safe = method.endswith(".query") if retry_safe is None else retry_safe

        def attempt() -> dict[str, Any]:
            signed = build_request(
                self.credentials,
                self.endpoints.gateway_url,
                method,
                biz_content,
                app_auth_token=app_auth_token,
                extra_params=extra_params,
                encrypt=self.encrypt,
            )
            raw = self._send(
                "POST", signed.url, signed.body, signed.headers, safe=safe, what=method
            )
            if raw.status != 200:
                raise self._lost(
                    safe or raw.status in NOT_PROCESSED_STATUSES,
                    f"{method}: the gateway answered HTTP {raw.status}",
                    raw.status,
                )
            return verify_response(raw.text, method, self.credentials)

        return self._with_retries(attempt, safe)

    def request(
        self,
        http_method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Mapping[str, Any] | None = None,
        app_auth_token: str | None = None,
        retry_safe: bool | None = None,
    ) -> V3Response:
        """One v3 call; returns the verified JSON body or raises AlipayError for 4xx/5xx."""
        safe = http_method.upper() == "GET" if retry_safe is None else retry_safe

        def attempt() -> V3Response:
            signed = build_v3_request(
                self.credentials,
                http_method,
                path,
                query=query,
                body=body,
                app_auth_token=app_auth_token,
            )
            url = self.endpoints.v3_base_url + signed.path_with_query
            raw = self._send(
                signed.http_method, url, signed.body, signed.headers, safe=safe, what=path
            )
            if raw.status >= 500 and not raw.headers.get("alipay-trace-id"):
                # A proxy's 5xx, not Alipay's: the request may or may not have been processed.
                raise self._lost(
                    safe or raw.status in NOT_PROCESSED_STATUSES,
                    f"{path}: HTTP {raw.status} from a proxy",
                    raw.status,
                )
            data = verify_v3_response(raw.status, raw.headers, raw.text, self.credentials)
            return V3Response(raw.status, data, raw.headers.get("alipay-trace-id"))

        return self._with_retries(attempt, safe)

    # --- transport -----------------------------------------------------------------------

    @staticmethod
    def _lost(safe: bool, message: str, status: int | None = None) -> TransportError:
        if safe:
            return TransportError(message, status=status)
        return OutcomeUnknownError(
            message + "; the request may have reached Alipay, so it was not resent", status=status
        )

    def _with_retries(self, attempt: Callable[[], T], safe: bool) -> T:
        for number in range(1, self._retry.attempts + 1):
            try:
                return attempt()
            except TransportError as error:
                # Never resent once it may have reached Alipay: OutcomeUnknownError is not
                # transient. Otherwise it is a safe call, or a request that never left.
                if not error.transient or number == self._retry.attempts:
                    raise
                logger.warning(
                    "Alipay call failed, retrying", extra={"attempt": number, "error": str(error)}
                )
            except AlipayError as error:
                if not (safe and error.transient) or number == self._retry.attempts:
                    raise
                logger.warning(
                    "Alipay busy, retrying", extra={"attempt": number, "code": error.code}
                )
            self._sleep(self._retry.delay(number))
        raise AssertionError("unreachable")  # pragma: no cover

    def _send(
        self,
        http_method: str,
        url: str,
        body: bytes,
        headers: Mapping[str, str],
        *,
        safe: bool,
        what: str,
    ) -> _RawResponse:
        host = urlsplit(url).netloc
        started = time.monotonic()
        try:
            response = self.session.request(
                http_method,
                url,
                data=body or None,
                headers=dict(headers),
                timeout=self._timeout,
                stream=True,
            )
            try:
                content = self._read_bounded(response)
            finally:
                response.close()
            if content is None:
                raise self._lost(
                    safe, f"{what}: the answer from {host} exceeds {MAX_RESPONSE_BYTES} bytes"
                )
        except requests.ConnectionError as error:
            if _never_sent(error):
                raise TransportError(f"{what}: could not connect to {host}") from None
            raise self._lost(safe, f"{what}: the connection to {host} failed") from None
        except requests.Timeout:
            raise self._lost(
                safe, f"{what}: no answer from {host} within {self._timeout[1]}s"
            ) from None
        except requests.RequestException as error:
            raise self._lost(safe, f"{what}: {type(error).__name__} talking to {host}") from None
        logger.info(
            "Alipay call",
            extra={
                "alipay_call": what,
                "status": response.status_code,
                "duration_ms": round((time.monotonic() - started) * 1000, 1),
                "trace_id": response.headers.get("alipay-trace-id"),
            },
        )
        return _RawResponse(
            response.status_code,
            {k.lower(): v for k, v in response.headers.items()},
            content.decode("utf-8", errors="replace"),
        )

    @staticmethod
    def _read_bounded(response: requests.Response) -> bytes | None:
        """The body, or None when it is larger than any answer Alipay sends."""
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_content(64 * 1024):
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                return None
            chunks.append(chunk)
        return b"".join(chunks)
