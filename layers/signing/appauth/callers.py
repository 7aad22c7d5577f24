"""The caller's side of the token query function, for the ISV's own Lambdas.

:class:`TokenClient` invokes the token query function (``lambda:InvokeFunction``, JSON in and
out, the contract of ``functions/token_query``) and turns every answer into a typed value or a
typed :class:`TokenServiceError`. It keeps a short, bounded, per-container cache of granted
tokens keyed by ``auth_app_id`` and version. :class:`MerchantClient` binds the layer's
:class:`~appauth.alipay.client.AlipayClient` to one merchant app: every call carries that
merchant's ``app_auth_token``, and when Alipay says the token is dead it reports it, picks up the
rotated token and retries once, or raises :class:`MerchantMustReauthorizeError`.

Cold starts: importing this module imports neither boto3 nor requests nor cryptography. The
Lambda client is made on first use; the Alipay client is the caller's own.

No token ever appears in an error message, a log line or a ``repr``.
"""

from __future__ import annotations

import json
import logging
import random
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from appauth.alipay.errors import AlipayError, AppAuthError

if TYPE_CHECKING:
    from appauth.alipay.client import AlipayClient, V3Response

logger = logging.getLogger(__name__)

STATUS_GRANTED = "granted"
# botocore Config of the lazily made Lambda client. A get_token answers in milliseconds; the
# function's Timeout (20 s) is for describe and report_invalid, which ask Alipay: a read timeout a
# little above it lets a slow but successful answer arrive instead of retrying a call that may
# have acted. Connecting to the Lambda endpoint takes milliseconds. botocore itself does not
# retry: one retry layer, ours.
CONNECT_TIMEOUT_SECONDS = 1.0
READ_TIMEOUT_SECONDS = 22.0
BOTOCORE_MAX_ATTEMPTS = 1
BACKOFF_BASE_SECONDS = 0.05
BACKOFF_MAX_SECONDS = 0.5
MAX_ANSWER_BYTES = 6 * 1024 * 1024  # Lambda's own limit for a synchronous response
MAX_MESSAGE_CHARS = 300
# Invoke-level error codes that mean the caller's setup is wrong: retrying cannot help.
MISCONFIGURED_INVOKE_CODES = frozenset(
    {
        "AccessDeniedException",
        "AccessDenied",
        "ResourceNotFoundException",
        "InvalidParameterValueException",
        "InvalidRequestContentException",
        "RequestTooLargeException",
        "UnrecognizedClientException",
        "InvalidSignatureException",
        "ExpiredTokenException",
        "KMSAccessDeniedException",
        "KMSDisabledException",
        "KMSNotFoundException",
        "KMSInvalidStateException",
        "InvalidRuntimeException",
        "InvalidZipFileException",
        "InvalidSecurityGroupIDException",
        "InvalidSubnetIDException",
        "RecursiveInvocationException",
        "EC2AccessDeniedException",
    }
)
# Invoke-level error codes that a later invoke may not hit (throttling, the function updating).
RETRYABLE_INVOKE_CODES = frozenset(
    {
        "TooManyRequestsException",
        "ThrottlingException",
        "ResourceConflictException",
        "ResourceNotReadyException",
        "ServiceException",
        "EC2ThrottledException",
        "EC2UnexpectedException",
        "ENILimitReachedException",
        "SubnetIPAddressLimitReachedException",
        "SnapStartNotReadyException",
        "SnapStartTimeoutException",
        "EFSMountTimeoutException",
    }
)
# Function errors (errorType of an unhandled error) that a later invoke may not hit.
TRANSIENT_FUNCTION_ERRORS = frozenset({"Sandbox.Timedout", "Runtime.ExitError"})
_SAFE_LABEL = re.compile(r"[A-Za-z0-9_.:-]{1,80}")

Report = Literal["stale", "valid", "confirmed"]
T = TypeVar("T")


# --- errors --------------------------------------------------------------------------------


class TokenServiceError(AppAuthError):
    """The token service refused or could not answer. ``code`` is the contract's error code;
    ``retryable`` says whether the same request may succeed later. Never carries a token."""

    def __init__(
        self,
        code: str,
        message: str,
        retryable: bool = False,
        *,
        auth_app_id: str | None = None,
        status: str | None = None,
        version: int | None = None,
    ) -> None:
        self.code = code
        self.message = message
        self.retryable = retryable
        self.auth_app_id = auth_app_id
        self.status = status
        self.version = version
        about = f" (auth_app_id {auth_app_id})" if auth_app_id else ""
        super().__init__(f"{code}{about}: {message}")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, message={self.message!r}, "
            f"retryable={self.retryable!r}, auth_app_id={self.auth_app_id!r})"
        )


class NotFoundError(TokenServiceError):
    """No authorization is stored for that merchant app (or user)."""


class MerchantMustReauthorizeError(TokenServiceError):
    """The merchant's authorization is gone: only a new authorization by the merchant helps."""


class RevokedError(MerchantMustReauthorizeError):
    """The merchant cancelled the authorization."""


class NeedsReauthError(MerchantMustReauthorizeError):
    """Alipay no longer accepts the merchant's tokens (refresh failed for good)."""


class MethodNotAuthorizedError(TokenServiceError):
    """The merchant did not authorize every method asked for; ``missing_methods`` names them."""

    def __init__(
        self,
        code: str,
        message: str,
        retryable: bool = False,
        *,
        missing_methods: Sequence[str] = (),
        auth_app_id: str | None = None,
        status: str | None = None,
        version: int | None = None,
    ) -> None:
        self.missing_methods = tuple(missing_methods)
        super().__init__(
            code, message, retryable, auth_app_id=auth_app_id, status=status, version=version
        )


class BadRequestError(TokenServiceError):
    """The request broke the contract (unknown field, wrong type, oversized value)."""


class UnavailableError(TokenServiceError):
    """The token service (or the Lambda service, or Alipay behind it) did not answer usefully."""


class MisconfiguredError(TokenServiceError):
    """The caller's or the service's setup is wrong (IAM, function name, keys): never retried."""


ERROR_CLASSES: dict[str, type[TokenServiceError]] = {
    "not_found": NotFoundError,
    "revoked": RevokedError,
    "needs_reauth": NeedsReauthError,
    "method_not_authorized": MethodNotAuthorizedError,
    "bad_request": BadRequestError,
    "unavailable": UnavailableError,
    "misconfigured": MisconfiguredError,
}


# --- values --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MerchantToken:
    """A merchant app's current ``app_auth_token`` (granted). ``auth_methods`` None: not known."""

    auth_app_id: str
    user_id: str | None
    version: int
    app_auth_token: str = field(repr=False)
    expires_at: datetime | None = None
    re_expires_at: datetime | None = None
    auth_methods: tuple[str, ...] | None = None
    status: str = STATUS_GRANTED

    def covers(self, required_methods: Iterable[str] | None) -> bool | None:
        """True/False when ``auth_methods`` is known, None when it is not (ask the service)."""
        if not required_methods:
            return True
        if self.auth_methods is None:
            return None
        return set(required_methods) <= set(self.auth_methods)


@dataclass(frozen=True)
class AppAuthorization:
    """One app of a merchant user (``get_for_user``): its token, or why there is none."""

    auth_app_id: str
    token: MerchantToken | None = None
    error: TokenServiceError | None = None

    @property
    def ok(self) -> bool:
        return self.token is not None


@dataclass(frozen=True)
class ReportResult:
    """What ``report_invalid`` learnt. ``report``: ``stale`` (the version reported is not the
    current one), ``valid`` (Alipay says the token works) or ``confirmed`` (Alipay confirms it
    dead). ``token``: the current token when granted; ``error``: why there is none."""

    auth_app_id: str
    report: Report
    token: MerchantToken | None = None
    error: TokenServiceError | None = None


@dataclass(frozen=True)
class AuthorizationSummary:
    """One authorization as ``describe`` and ``list`` show it (never a token). ``details``: any
    further fields of the answer (e.g. what Alipay's query said), tokens removed."""

    auth_app_id: str
    status: str | None
    user_id: str | None = None
    version: int | None = None
    expires_at: datetime | None = None
    re_expires_at: datetime | None = None
    auth_methods: tuple[str, ...] | None = None
    details: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AuthorizationPage:
    """One page of ``list``; ``cursor`` (opaque) fetches the next one, None on the last page."""

    items: tuple[AuthorizationSummary, ...]
    cursor: str | None = None


# --- parsing answers -----------------------------------------------------------------------

TOKEN_FIELDS = frozenset({"app_auth_token", "app_refresh_token"})
SUMMARY_FIELDS = frozenset(
    {
        "ok",
        "auth_app_id",
        "status",
        "user_id",
        "version",
        "expires_at",
        "re_expires_at",
        "auth_methods",
        "report",
        "error",
    }
)


class _MalformedError(Exception):
    """The answer does not follow the contract; the argument names the field (never a value)."""


def _opt_str(answer: Mapping[str, Any], name: str) -> str | None:
    value = answer.get(name)
    if value is None or isinstance(value, str):
        return value
    raise _MalformedError(name)


def _req_str(answer: Mapping[str, Any], name: str) -> str:
    value = answer.get(name)
    if isinstance(value, str) and value:
        return value
    raise _MalformedError(name)


def _opt_int(answer: Mapping[str, Any], name: str) -> int | None:
    value = answer.get(name)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _MalformedError(name)


def _opt_time(answer: Mapping[str, Any], name: str) -> datetime | None:
    value = answer.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            pass
    raise _MalformedError(name)


def _opt_methods(answer: Mapping[str, Any], name: str = "auth_methods") -> tuple[str, ...] | None:
    value = answer.get(name)
    if value is None:
        return None
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise _MalformedError(name)


def _parse_token(answer: Mapping[str, Any]) -> MerchantToken:
    version = _opt_int(answer, "version")
    if version is None:
        raise _MalformedError("version")
    return MerchantToken(
        auth_app_id=_req_str(answer, "auth_app_id"),
        user_id=_opt_str(answer, "user_id"),
        version=version,
        app_auth_token=_req_str(answer, "app_auth_token"),
        expires_at=_opt_time(answer, "expires_at"),
        re_expires_at=_opt_time(answer, "re_expires_at"),
        auth_methods=_opt_methods(answer),
        status=_opt_str(answer, "status") or STATUS_GRANTED,
    )


def _parse_summary(answer: Mapping[str, Any]) -> AuthorizationSummary:
    return AuthorizationSummary(
        auth_app_id=_req_str(answer, "auth_app_id"),
        status=_opt_str(answer, "status"),
        user_id=_opt_str(answer, "user_id"),
        version=_opt_int(answer, "version"),
        expires_at=_opt_time(answer, "expires_at"),
        re_expires_at=_opt_time(answer, "re_expires_at"),
        auth_methods=_opt_methods(answer),
        details={
            key: value
            for key, value in answer.items()
            if key not in SUMMARY_FIELDS and key not in TOKEN_FIELDS
        },
    )


def _scrub(text: str, answer: Mapping[str, Any]) -> str:
    """``text`` cut short, with any token the same answer carries masked (defence in depth)."""
    text = text[:MAX_MESSAGE_CHARS]
    for name in TOKEN_FIELDS:
        secret = answer.get(name)
        if isinstance(secret, str) and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def _error_from(answer: Mapping[str, Any]) -> TokenServiceError:
    """The typed error of an ``ok: false`` answer."""
    error = answer.get("error")
    if not isinstance(error, Mapping):
        raise _MalformedError("error")
    code = error.get("code")
    if not isinstance(code, str) or not _SAFE_LABEL.fullmatch(code):
        raise _MalformedError("error.code")
    message = error.get("message")
    message = _scrub(message, answer) if isinstance(message, str) else code.replace("_", " ")
    retryable = error.get("retryable") is True
    auth_app_id = _opt_str(answer, "auth_app_id")
    status = _opt_str(answer, "status")
    version = _opt_int(answer, "version")
    cls = ERROR_CLASSES.get(code, TokenServiceError)
    if cls is MethodNotAuthorizedError:
        return MethodNotAuthorizedError(
            code,
            message,
            retryable,
            missing_methods=_opt_methods(error, "missing_methods") or (),
            auth_app_id=auth_app_id,
            status=status,
            version=version,
        )
    return cls(code, message, retryable, auth_app_id=auth_app_id, status=status, version=version)


# --- the client ----------------------------------------------------------------------------


def _methods(required_methods: Iterable[str] | str | None) -> list[str] | None:
    if required_methods is None:
        return None
    if isinstance(required_methods, str):
        required_methods = [required_methods]
    methods = list(dict.fromkeys(required_methods))
    return methods or None


def _default_lambda_client() -> Any:
    """boto3's Lambda client with tight timeouts and no botocore retries (imported here, on first
    use, so that importing this module stays cheap)."""
    import boto3  # noqa: PLC0415 (lazy on purpose: cold starts)
    from botocore.config import Config  # noqa: PLC0415

    config = Config(
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=READ_TIMEOUT_SECONDS,
        retries={"total_max_attempts": BOTOCORE_MAX_ATTEMPTS, "mode": "standard"},
        tcp_keepalive=True,
    )
    return boto3.client("lambda", config=config)


def _invoke_error(error: Exception, function_name: str) -> TokenServiceError | None:
    """The typed error of an exception the Lambda client raised; None when it is not botocore's."""
    try:
        from botocore.exceptions import (  # noqa: PLC0415 (only when an invoke failed)
            BotoCoreError,
            ClientError,
            NoCredentialsError,
            NoRegionError,
            PartialCredentialsError,
        )
    except ImportError:  # pragma: no cover - botocore is in every Lambda runtime
        return None
    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        code = str(details.get("Code") or "ClientError")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        label = code if _SAFE_LABEL.fullmatch(code) else "ClientError"
        what = f"invoking the token query function {function_name} failed: {label}"
        if code in MISCONFIGURED_INVOKE_CODES:
            return MisconfiguredError("misconfigured", what, False)
        if (
            code in RETRYABLE_INVOKE_CODES
            or not isinstance(status, int)
            or status >= 500
            or status == 429
        ):
            return UnavailableError("unavailable", what, True)
        return MisconfiguredError("misconfigured", what, False)  # any other 4xx: our request
    if isinstance(error, NoCredentialsError | PartialCredentialsError | NoRegionError):
        return MisconfiguredError(
            "misconfigured",
            f"no AWS credentials or region to invoke {function_name}: {type(error).__name__}",
            False,
        )
    if isinstance(error, BotoCoreError):
        return UnavailableError(
            "unavailable",
            f"invoking the token query function {function_name} failed: {type(error).__name__}",
            True,
        )
    return None


class _TokenCache:
    """Granted tokens by ``auth_app_id``: bounded age and size (least recently used goes)."""

    def __init__(self, max_age: float, max_items: int, monotonic: Callable[[], float]) -> None:
        self._max_age = max_age
        self._max_items = max(1, max_items)
        self._monotonic = monotonic
        self._items: OrderedDict[str, tuple[float, MerchantToken]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def fresh(self, auth_app_id: str) -> MerchantToken | None:
        now = self._monotonic()
        with self._lock:
            hit = self._items.get(auth_app_id)
            if hit is None:
                return None
            if now - hit[0] >= self._max_age:
                del self._items[auth_app_id]
                return None
            self._items.move_to_end(auth_app_id)
            return hit[1]

    def put(self, token: MerchantToken, *, force: bool = False) -> MerchantToken:
        """Keep ``token`` unless a newer version is cached (``force``: a strongly consistent
        read, the truth); the token kept."""
        now = self._monotonic()
        with self._lock:
            hit = self._items.get(token.auth_app_id)
            if hit is not None and hit[1].version > token.version and not force:
                return hit[1]
            self._items[token.auth_app_id] = (now, token)
            self._items.move_to_end(token.auth_app_id)
            while len(self._items) > self._max_items:
                self._items.popitem(last=False)
        return token

    def evict(self, auth_app_id: str | None) -> None:
        if auth_app_id is None:
            return
        with self._lock:
            self._items.pop(auth_app_id, None)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class TokenClient:
    """Typed calls to the token query function, with a short per-container token cache.

    ``function_name``: the function's name, ARN or ``name:alias``. ``lambda_client``: anything
    with boto3's ``invoke`` (default: boto3's, made on first use). ``retries``: extra attempts,
    with jittered backoff, only for ``unavailable`` answers marked retryable. Thread-safe.
    """

    def __init__(
        self,
        function_name: str,
        *,
        lambda_client: Any = None,
        max_age_seconds: float = 30.0,
        max_items: int = 1024,
        retries: int = 2,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not function_name:
            raise ValueError("function_name is the token query function's name or ARN")
        self.function_name = function_name
        self._lambda_client = lambda_client
        self._client_lock = threading.Lock()
        self._retries = max(0, retries)
        self._sleep = sleep
        self._cache = _TokenCache(max_age_seconds, max_items, monotonic)

    def __repr__(self) -> str:
        return f"TokenClient({self.function_name!r})"

    # --- public API ----------------------------------------------------------------------

    def get(
        self,
        auth_app_id: str,
        required_methods: Iterable[str] | None = None,
        *,
        consistent: bool = False,
    ) -> MerchantToken:
        """The merchant app's current token; raises a :class:`TokenServiceError` subclass."""
        methods = _methods(required_methods)
        if not consistent:
            cached = self._cache.fresh(auth_app_id)
            if cached is not None and cached.covers(methods):
                return cached
        request: dict[str, Any] = {"action": "get_token", "auth_app_id": auth_app_id}
        if methods:
            request["required_methods"] = methods
        if consistent:
            request["consistent"] = True
        answer = self._call(request, auth_app_id)
        return self._granted(answer, auth_app_id, consistent=consistent)

    def get_for_user(
        self, user_id: str, required_methods: Iterable[str] | None = None
    ) -> list[AppAuthorization]:
        """Every app the merchant user authorized: each with its token or its typed error."""
        request: dict[str, Any] = {"action": "get_token", "user_id": user_id}
        methods = _methods(required_methods)
        if methods:
            request["required_methods"] = methods
        answer = self._call(request, None)
        self._raise_unless_ok(answer, None)
        entries = answer.get("authorizations")
        if not isinstance(entries, list) or not all(isinstance(e, Mapping) for e in entries):
            raise self._malformed("authorizations")
        result: list[AppAuthorization] = []
        for entry in entries:
            try:
                if entry.get("ok") is True:
                    token = self._cache.put(_parse_token(entry))
                    result.append(AppAuthorization(token.auth_app_id, token=token))
                else:
                    error = _error_from(entry)
                    self._cache.evict(error.auth_app_id)
                    result.append(AppAuthorization(error.auth_app_id or "", error=error))
            except _MalformedError as malformed:
                raise self._malformed(f"authorizations[].{malformed}") from None
        return result

    def report_invalid(self, auth_app_id: str, version: int) -> ReportResult:
        """Tell the service Alipay refused ``version`` of the merchant's token; it checks with
        Alipay and answers what is true now. Always evicts the cached token."""
        self._cache.evict(auth_app_id)
        answer = self._call(
            {"action": "report_invalid", "auth_app_id": auth_app_id, "version": version},
            auth_app_id,
        )
        report = answer.get("report")
        if report not in ("stale", "valid", "confirmed"):
            self._raise_unless_ok(answer, auth_app_id)
            raise self._malformed("report")
        try:
            if answer.get("ok") is True:
                token = _parse_token(answer)
                if report == "stale" and token.version > version:
                    token = self._cache.put(token)
                return ReportResult(auth_app_id, report, token=token)
            error = _error_from(answer)
        except _MalformedError as malformed:
            raise self._malformed(str(malformed)) from None
        self._cache.evict(auth_app_id)
        return ReportResult(auth_app_id, report, error=error)

    def describe(self, auth_app_id: str) -> AuthorizationSummary:
        """The authorization as Alipay's query shows it now (the service stores it back)."""
        answer = self._call({"action": "describe", "auth_app_id": auth_app_id}, auth_app_id)
        self._raise_unless_ok(answer, auth_app_id)
        try:
            summary = _parse_summary(answer)
            if isinstance(answer.get("app_auth_token"), str):
                self._cache.put(_parse_token(answer))
            elif summary.status != STATUS_GRANTED:
                self._cache.evict(auth_app_id)
        except _MalformedError as malformed:
            raise self._malformed(str(malformed)) from None
        return summary

    def clear_cache(self) -> None:
        self._cache.clear()

    def list(
        self, status: str | None = None, cursor: str | None = None, limit: int | None = None
    ) -> AuthorizationPage:
        """One page of stored authorizations (no tokens), optionally of one status."""
        request: dict[str, Any] = {"action": "list"}
        if status is not None:
            request["status"] = status
        if cursor is not None:
            request["cursor"] = cursor
        if limit is not None:
            request["limit"] = limit
        answer = self._call(request, None)
        self._raise_unless_ok(answer, None)
        items = answer.get("items")
        next_cursor = answer.get("cursor", answer.get("next_cursor"))
        if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
            raise self._malformed("items")
        if next_cursor is not None and not isinstance(next_cursor, str):
            raise self._malformed("cursor")
        try:
            return AuthorizationPage(tuple(_parse_summary(i) for i in items), next_cursor)
        except _MalformedError as malformed:
            raise self._malformed(f"items[].{malformed}") from None

    # --- plumbing ------------------------------------------------------------------------

    def _granted(
        self, answer: Mapping[str, Any], auth_app_id: str, *, consistent: bool
    ) -> MerchantToken:
        self._raise_unless_ok(answer, auth_app_id)
        try:
            token = _parse_token(answer)
        except _MalformedError as malformed:
            raise self._malformed(str(malformed)) from None
        if token.auth_app_id != auth_app_id:
            raise self._malformed("auth_app_id")
        return self._cache.put(token, force=consistent)

    def _raise_unless_ok(self, answer: Mapping[str, Any], auth_app_id: str | None) -> None:
        if answer.get("ok") is True:
            return
        try:
            error = _error_from(answer)
        except _MalformedError as malformed:
            raise self._malformed(str(malformed)) from None
        if error.auth_app_id is None and auth_app_id is not None:
            error.auth_app_id = auth_app_id
        self._cache.evict(error.auth_app_id or auth_app_id)
        raise error

    def _malformed(self, what: str) -> MisconfiguredError:
        return MisconfiguredError(
            "misconfigured",
            f"the answer of {self.function_name} does not follow the token query contract "
            f"({what}); is it the token query function, at a current version?",
            False,
        )

    @property
    def lambda_client(self) -> Any:
        if self._lambda_client is None:
            with self._client_lock:
                if self._lambda_client is None:
                    self._lambda_client = _default_lambda_client()
        return self._lambda_client

    def _call(self, request: Mapping[str, Any], auth_app_id: str | None) -> Mapping[str, Any]:
        """One logical request: the decoded answer, after bounded retries of retryable
        ``unavailable`` outcomes (invoke failures and ``unavailable`` answers alike)."""
        payload = json.dumps(request, separators=(",", ":")).encode()
        attempts = self._retries + 1
        for attempt in range(1, attempts + 1):
            try:
                answer = self._invoke_once(payload)
            except UnavailableError as error:
                if not error.retryable or attempt == attempts:
                    if error.auth_app_id is None:
                        error.auth_app_id = auth_app_id
                    raise
                retry_code = error.code
            else:
                error_node = answer.get("error") if answer.get("ok") is False else None
                retryable = (
                    isinstance(error_node, Mapping)
                    and error_node.get("code") == "unavailable"
                    and error_node.get("retryable") is True
                )
                if not retryable or attempt == attempts:
                    return answer
                retry_code = "unavailable"
            delay = random.uniform(0, min(BACKOFF_MAX_SECONDS, BACKOFF_BASE_SECONDS * 2**attempt))  # noqa: S311
            logger.warning(
                "Token query unavailable, retrying",
                extra={
                    "function_name": self.function_name,
                    "action": request.get("action"),
                    "auth_app_id": auth_app_id,
                    "attempt": attempt,
                    "code": retry_code,
                },
            )
            self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _invoke_once(self, payload: bytes) -> Mapping[str, Any]:
        client = self.lambda_client
        try:
            response = client.invoke(
                FunctionName=self.function_name,
                InvocationType="RequestResponse",
                Payload=payload,
            )
        except Exception as error:
            mapped = _invoke_error(error, self.function_name)
            if mapped is None:
                raise
            raise mapped from None
        body = _read_payload(response.get("Payload"))
        function_error = response.get("FunctionError")
        if function_error:
            raise _function_error(self.function_name, body)
        status = response.get("StatusCode")
        if status is not None and status != 200:
            raise UnavailableError(
                "unavailable",
                f"the token query function {self.function_name} answered status {status}",
                True,
            )
        if body is None:
            raise self._malformed("answer larger than Lambda allows")
        try:
            answer = json.loads(body)
        except ValueError:
            raise self._malformed("not JSON") from None
        if not isinstance(answer, Mapping) or not isinstance(answer.get("ok"), bool):
            raise self._malformed("ok")
        return answer


def _read_payload(payload: Any) -> bytes | None:
    """The response payload's bytes (a StreamingBody, bytes or str), None when oversized."""
    if payload is None:
        return b""
    if isinstance(payload, str):
        data = payload.encode()
    elif isinstance(payload, bytes | bytearray):
        data = bytes(payload)
    else:
        data = payload.read(MAX_ANSWER_BYTES + 1)
        if isinstance(data, str):
            data = data.encode()
    return None if len(data) > MAX_ANSWER_BYTES else data


def _function_error(function_name: str, body: bytes | None) -> UnavailableError:
    """An unhandled error of the function (a crash, a timeout, out of memory). Its message may
    hold anything, so only its errorType (a class name) is kept."""
    error_type = "unknown"
    try:
        details = json.loads(body or b"")
    except ValueError:
        details = None
    if isinstance(details, Mapping):
        raw_type = details.get("errorType")
        if isinstance(raw_type, str) and _SAFE_LABEL.fullmatch(raw_type):
            error_type = raw_type
        message = details.get("errorMessage")
        timed_out = isinstance(message, str) and "Task timed out" in message
    else:
        timed_out = False
    retryable = timed_out or error_type in TRANSIENT_FUNCTION_ERRORS
    return UnavailableError(
        "unavailable",
        f"the token query function {function_name} failed with an unhandled error "
        f"({error_type}); see its logs",
        retryable,
    )


# --- one merchant's Alipay client ----------------------------------------------------------


class MerchantClient:
    """The layer's :class:`~appauth.alipay.client.AlipayClient` bound to one merchant app.

    Every call carries the merchant's current ``app_auth_token`` (from ``tokens``). When Alipay
    says that token is dead, the client reports it (the service checks with Alipay), takes the
    current token and, if its version moved (a rotation), retries the call once; if it did not,
    the merchant must authorize again: :class:`MerchantMustReauthorizeError`. When the service
    finds that the token works after all, Alipay's error is raised unchanged. Every other
    :class:`~appauth.alipay.errors.AlipayError` passes through untouched.

    A retry resends the same request: for a call that moves money, make it idempotent at
    Alipay (``out_trade_no``, ``out_request_no``), as every Alipay payment API expects anyway.
    Alipay refuses a dead token before it processes anything.
    """

    def __init__(
        self,
        alipay_client: AlipayClient,
        tokens: TokenClient,
        auth_app_id: str,
        *,
        required_methods: Sequence[str] | None = None,
    ) -> None:
        self.alipay = alipay_client
        self.tokens = tokens
        self.auth_app_id = auth_app_id
        self.required_methods = tuple(required_methods) if required_methods else None

    def __repr__(self) -> str:
        return f"MerchantClient(auth_app_id={self.auth_app_id!r})"

    def token(self, *, consistent: bool = False) -> MerchantToken:
        return self.tokens.get(self.auth_app_id, self.required_methods, consistent=consistent)

    def call(
        self,
        method: str,
        biz_content: Mapping[str, Any] | str | None = None,
        **kw: Any,
    ) -> dict[str, Any]:
        """A v2 gateway call for this merchant (``AlipayClient.call``'s other keywords pass on)."""
        _no_token_keyword(kw)
        return self._with_token(
            lambda token: self.alipay.call(method, biz_content, app_auth_token=token, **kw)
        )

    def request(self, http_method: str, path: str, **kw: Any) -> V3Response:
        """A v3 call for this merchant (``AlipayClient.request``'s keywords pass on)."""
        _no_token_keyword(kw)
        return self._with_token(
            lambda token: self.alipay.request(http_method, path, app_auth_token=token, **kw)
        )

    def _with_token(self, send: Callable[[str], T]) -> T:
        token = self.token()
        try:
            return send(token.app_auth_token)
        except AlipayError as error:
            if not error.app_auth_token_dead:
                raise
            current = self._after_dead_token(token, error)
        try:
            return send(current.app_auth_token)
        except AlipayError as error:
            if not error.app_auth_token_dead:
                raise
            # The rotated token is refused too: tell the service, and stop here (one retry).
            second = self.tokens.report_invalid(self.auth_app_id, current.version)
            if second.report == "confirmed":
                raise self._must_reauthorize(second.error) from error
            raise

    def _after_dead_token(self, used: MerchantToken, error: AlipayError) -> MerchantToken:
        """The token to retry with, after Alipay refused ``used``; or raise."""
        try:
            report = self.tokens.report_invalid(self.auth_app_id, used.version)
        except TokenServiceError as service_error:
            raise service_error from error
        if report.report == "valid":
            raise error
        current = report.token if report.report == "stale" else None
        if current is None or current.version <= used.version:
            # The stale answer is the current state; otherwise read it, skipping every cache.
            try:
                current = self.tokens.get(self.auth_app_id, self.required_methods, consistent=True)
            except MerchantMustReauthorizeError as gone:
                raise gone from error
        if current.version <= used.version:
            raise self._must_reauthorize(report.error) from error
        logger.info(
            "Merchant token rotated, retrying once",
            extra={
                "auth_app_id": self.auth_app_id,
                "version_used": used.version,
                "version": current.version,
            },
        )
        return current

    def _must_reauthorize(self, cause: TokenServiceError | None) -> MerchantMustReauthorizeError:
        if isinstance(cause, MerchantMustReauthorizeError):
            return cause
        return MerchantMustReauthorizeError(
            "needs_reauth",
            f"Alipay refuses the app_auth_token of merchant app {self.auth_app_id} and the "
            "token service has no newer one: the merchant must authorize the app again",
            False,
            auth_app_id=self.auth_app_id,
        )


def _no_token_keyword(kw: Mapping[str, Any]) -> None:
    if "app_auth_token" in kw:
        raise TypeError("MerchantClient supplies app_auth_token itself; do not pass one")
