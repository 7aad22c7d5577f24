"""The token query service: what the token query function answers other Lambdas.

- ``get_token``: one GetItem on a miss; the decrypted token is cached in memory keyed by the
  item's ``version`` (a read that finds the same version reuses it without KMS), for a short
  max age and a bounded number of merchants. A newer version replaces it; a non-granted status
  evicts it. ``required_methods`` are checked against the methods Alipay's query reported,
  asked once and stored on the item.
- ``describe``: live from ``alipay.open.auth.token.app.query``, stored back on the item.
- ``list``: from the ``status`` index, paginated, never a token.
- ``report_invalid``: a caller saw Alipay reject a token. Only a report about the current
  version is checked, and only a signed answer from Alipay changes a status.

Every failure is an answer (:class:`QueryFailedError`), never an exception: AWS, KMS, SSM and
Alipay errors map to ``unavailable`` (``retryable`` says whether trying again may help) or
``misconfigured``. Nothing here logs or returns a secret other than the token asked for.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from appauth import aws
from appauth.alipay.errors import (
    AlipayError,
    ConfigError,
    SignatureError,
    TransportError,
    UnexpectedResponseError,
)
from appauth.envelope import TokenDecryptionError
from appauth.errors import InvalidRequestError
from appauth.lifecycle import Transition
from appauth.queries import Describe, GetToken, ListAuthorizations, ReportInvalid, TokenRequest
from appauth.secrets import SecretsUnavailableError
from appauth.store import (
    MAX_APPS_PER_USER,
    STATUS_GRANTED,
    CursorError,
    StoredAuthorization,
    TokenStore,
)

if TYPE_CHECKING:
    from appauth.alipay.client import AlipayClient
    from appauth.alipay.models import AuthorizationInfo

logger = logging.getLogger(__name__)


class ErrorCode(StrEnum):
    NOT_FOUND = "not_found"
    REVOKED = "revoked"
    NEEDS_REAUTH = "needs_reauth"
    METHOD_NOT_AUTHORIZED = "method_not_authorized"
    BAD_REQUEST = "bad_request"
    UNAVAILABLE = "unavailable"
    MISCONFIGURED = "misconfigured"


# The token query's Alipay client at worst (Runtime.query_client), plus a margin to answer.
ALIPAY_QUERY_SECONDS = 15.0

_ENDED = {"revoked": ErrorCode.REVOKED, "needs_reauth": ErrorCode.NEEDS_REAUTH}


class QueryFailedError(Exception):
    """A failed request, as the answer it becomes."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        retryable: bool = False,
        known: StoredAuthorization | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable
        self.known = known
        self.extra = extra or {}

    def answer(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "code": self.code.value,
            "message": self.message,
            "retryable": self.retryable,
        }
        body: dict[str, Any] = {"ok": False, "error": error}
        if self.known is not None:
            body.update(
                auth_app_id=self.known.auth_app_id,
                status=self.known.status,
                version=self.known.version,
            )
        for key, value in self.extra.items():
            (error if key == "missing_methods" else body)[key] = value
        return body


def _iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment else None


@dataclass(frozen=True)
class TokenLookup:
    """A granted authorization with its opened token (what the cache holds)."""

    auth_app_id: str
    version: int
    user_id: str | None
    app_auth_token: str = field(repr=False)
    expires_at: datetime | None
    re_expires_at: datetime | None
    auth_methods: tuple[str, ...] | None

    @classmethod
    def of(cls, stored: StoredAuthorization, app_auth_token: str) -> TokenLookup:
        return cls(
            auth_app_id=stored.auth_app_id,
            version=stored.version,
            user_id=stored.user_id,
            app_auth_token=app_auth_token,
            expires_at=stored.expires_at,
            re_expires_at=stored.re_expires_at,
            auth_methods=stored.auth_methods,
        )

    def answer(self) -> dict[str, Any]:
        return {
            "ok": True,
            "auth_app_id": self.auth_app_id,
            "user_id": self.user_id,
            "version": self.version,
            "status": STATUS_GRANTED,
            "app_auth_token": self.app_auth_token,
            "expires_at": _iso(self.expires_at),
            "re_expires_at": _iso(self.re_expires_at),
            "auth_methods": list(self.auth_methods) if self.auth_methods is not None else None,
        }


class LookupCache:
    """Per-container cache of opened tokens: fresh for ``max_age_seconds``, and reusable past
    that for as long as the item's version has not moved (no second KMS call for the same
    pair). At most ``max_items`` merchants, least recently used first out."""

    def __init__(
        self,
        max_age_seconds: float = 30.0,
        max_items: int = 1024,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_age = max_age_seconds
        self._max_items = max_items
        self._monotonic = monotonic
        self._items: OrderedDict[str, tuple[float, TokenLookup]] = OrderedDict()
        self._lock = threading.Lock()

    def fresh(self, auth_app_id: str) -> TokenLookup | None:
        with self._lock:
            entry = self._items.get(auth_app_id)
            if entry is None or self._monotonic() - entry[0] >= self._max_age:
                return None
            self._items.move_to_end(auth_app_id)
            return entry[1]

    def same_version(self, auth_app_id: str, version: int) -> TokenLookup | None:
        with self._lock:
            entry = self._items.get(auth_app_id)
            return entry[1] if entry is not None and entry[1].version == version else None

    def put(self, lookup: TokenLookup) -> TokenLookup:
        """Keep ``lookup`` unless a newer version is cached; the one kept (to answer with: a
        lagging, eventually consistent read never hands out an older pair than one seen)."""
        with self._lock:
            current = self._items.get(lookup.auth_app_id)
            if current is not None and current[1].version > lookup.version:
                return current[1]
            self._items[lookup.auth_app_id] = (self._monotonic(), lookup)
            self._items.move_to_end(lookup.auth_app_id)
            while len(self._items) > self._max_items:
                self._items.popitem(last=False)
            return lookup

    def evict(self, auth_app_id: str) -> None:
        with self._lock:
            self._items.pop(auth_app_id, None)

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True)
class Answer:
    """What to return, and what the cache did (``hit``, ``miss`` or None: not a look-up)."""

    body: dict[str, Any]
    cache: str | None = None

    @property
    def error_code(self) -> str | None:
        return None if self.body.get("ok") else self.body["error"]["code"]


@dataclass
class TokenService:
    """``alipay`` builds the OpenAPI client only when a request needs Alipay (describe,
    report_invalid, a first ``required_methods`` check): a plain look-up never loads it."""

    store: TokenStore
    cache: LookupCache
    alipay: Callable[[], AlipayClient]
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)
    # The invocation's remaining seconds: an Alipay query is only started when it can finish.
    time_left: Callable[[], float] = lambda: float("inf")
    _misses: threading.local = field(default_factory=threading.local, repr=False)

    def answer(self, request: TokenRequest) -> Answer:
        """Never raises: every failure becomes its answer."""
        self._misses.value = False
        try:
            if isinstance(request, GetToken):
                body = self._get_token(request)
                return Answer(body, "miss" if self._misses.value else "hit")
            if isinstance(request, Describe):
                return Answer(self._describe(request.auth_app_id))
            if isinstance(request, ListAuthorizations):
                return Answer(self._list(request))
            return Answer(self._report_invalid(request))
        except Exception as error:  # the contract: every failure is data
            return Answer(failure_for(error).answer())

    # --- get_token --------------------------------------------------------------------------

    def _get_token(self, request: GetToken) -> dict[str, Any]:
        if request.user_id is None:
            return self._one(str(request.auth_app_id), request.required_methods, request.consistent)
        apps = self.store.by_user(request.user_id)
        if not apps:
            raise QueryFailedError(
                ErrorCode.NOT_FOUND, "no authorization is stored for this user_id"
            )
        answers = []
        for auth_app_id, _ in apps:
            try:
                answers.append(self._one(auth_app_id, request.required_methods, request.consistent))
            except Exception as error:  # one app's failure is its own entry
                answers.append(failure_for(error).answer())
        # The user index is read once, up to MAX_APPS_PER_USER: say so when there may be more.
        truncated = len(apps) >= MAX_APPS_PER_USER
        return {
            "ok": True,
            "user_id": request.user_id,
            "authorizations": answers,
            "truncated": truncated,
        }

    def _one(self, auth_app_id: str, required: Iterable[str], consistent: bool) -> dict[str, Any]:
        lookup = None if consistent else self.cache.fresh(auth_app_id)
        if lookup is None:
            lookup = self._load(auth_app_id, consistent=consistent)
        required = tuple(required)
        if required:
            methods = lookup.auth_methods
            if methods is None:
                # Never asked yet: once, and stored on the item for every later check.
                lookup = self._learn_methods(auth_app_id)
                methods = lookup.auth_methods or ()
            missing = [m for m in required if m not in methods]
            if missing:
                raise QueryFailedError(
                    ErrorCode.METHOD_NOT_AUTHORIZED,
                    "the merchant did not authorize every required method; ask them to "
                    "authorize again with these included",
                    extra={
                        "auth_app_id": auth_app_id,
                        "version": lookup.version,
                        "status": STATUS_GRANTED,
                        "missing_methods": missing,
                    },
                )
        return lookup.answer()

    def _load(self, auth_app_id: str, *, consistent: bool) -> TokenLookup:
        self._misses.value = True
        stored = self.store.get(auth_app_id, consistent=consistent)
        if stored is None:
            self.cache.evict(auth_app_id)
            raise QueryFailedError(ErrorCode.NOT_FOUND, "no authorization is stored for this app")
        if stored.status != STATUS_GRANTED:
            self.cache.evict(auth_app_id)
            raise ended(stored)
        reusable = self.cache.same_version(auth_app_id, stored.version)
        if reusable is not None and reusable.auth_methods == stored.auth_methods:
            lookup = reusable
        else:
            lookup = TokenLookup.of(stored, self.store.open_tokens(stored)[0])
        return self.cache.put(lookup)

    def _learn_methods(self, auth_app_id: str) -> TokenLookup:
        stored = self._current(auth_app_id)
        token = self.store.open_tokens(stored)[0]
        self._confirm(stored, token, reason="methods")
        # Whatever Alipay said is on the item now (or the authorization ended): read it back.
        self.cache.evict(auth_app_id)
        return self._load(auth_app_id, consistent=True)

    # --- describe ---------------------------------------------------------------------------

    def _describe(self, auth_app_id: str) -> dict[str, Any]:
        stored = self._current(auth_app_id)
        if stored.status != STATUS_GRANTED:
            raise ended(stored, extra=_described(stored))
        token = self.store.open_tokens(stored)[0]
        self._confirm(stored, token, reason="describe")
        self.cache.evict(auth_app_id)
        after = self._current(auth_app_id)
        if after.status != STATUS_GRANTED:
            raise ended(after, extra=_described(after))
        return {
            "ok": True,
            "auth_app_id": auth_app_id,
            "user_id": after.user_id,
            "version": after.version,
            "status": after.status,
            **_described(after),
        }

    # --- list -------------------------------------------------------------------------------

    def _list(self, request: ListAuthorizations) -> dict[str, Any]:
        page = self.store.list_authorizations(
            status=request.status, cursor=request.cursor, limit=request.limit
        )
        return {
            "ok": True,
            "items": [listed_item(item) for item in page.items],
            "cursor": page.cursor,
        }

    # --- report_invalid ---------------------------------------------------------------------

    def _report_invalid(self, request: ReportInvalid) -> dict[str, Any]:
        self.cache.evict(request.auth_app_id)
        stored = self._current(request.auth_app_id)
        if stored.version != request.version or stored.status != STATUS_GRANTED:
            # Stale: the caller used an older pair (or the end is already recorded). Nothing
            # changes; the answer is the current state.
            return {**self._current_answer(stored), "report": "stale"}
        token = self.store.open_tokens(stored)[0]
        info = self._confirm(stored, token, reason="report_invalid")
        current = self._current(request.auth_app_id)
        if current.status != STATUS_GRANTED:
            report = "confirmed" if info is None else "stale"
            return {**ended(current).answer(), "report": report}
        if current.version != stored.version:
            # Replaced meanwhile (a rotation or a re-authorization): the new pair is the answer.
            return {**self._current_answer(current), "report": "stale"}
        return {**self._current_answer(current), "report": "valid"}

    def _current_answer(self, stored: StoredAuthorization) -> dict[str, Any]:
        if stored.status != STATUS_GRANTED:
            return ended(stored).answer()
        lookup = TokenLookup.of(stored, self.store.open_tokens(stored)[0])
        self.cache.put(lookup)
        return lookup.answer()

    # --- asking Alipay ----------------------------------------------------------------------

    def _current(self, auth_app_id: str) -> StoredAuthorization:
        stored = self.store.get(auth_app_id, consistent=True)
        if stored is None:
            raise QueryFailedError(ErrorCode.NOT_FOUND, "no authorization is stored for this app")
        return stored

    def _confirm(
        self, stored: StoredAuthorization, token: str, *, reason: str
    ) -> AuthorizationInfo | None:
        """Ask Alipay about the stored token. Returns what it said (stored on the item) when
        the grant is valid; None once the authorization was ended on its signed word."""
        if self.time_left() < ALIPAY_QUERY_SECONDS:
            raise QueryFailedError(
                ErrorCode.UNAVAILABLE,
                "not enough time left in this invocation to ask Alipay; ask again",
                retryable=True,
            )
        queried_at = self.clock()
        try:
            info = self.alipay().query_authorization(token)
        except AlipayError as error:
            if error.signed and error.app_auth_token_dead:
                # Alipay no longer knows this token, but its refresh token may still work (a
                # rotation whose answer was lost, an expired token): only the refresh run can
                # tell, so it is asked to reconcile now. Never an end from here.
                self.store.request_reconcile(stored, f"{reason}:{_code(error)}")
                self.cache.evict(stored.auth_app_id)
                raise QueryFailedError(
                    ErrorCode.UNAVAILABLE,
                    "Alipay no longer accepts this token; the refresh run tries its refresh "
                    "token next and ends the authorization only if Alipay refuses that too",
                    retryable=True,
                    known=stored,
                ) from None
            if error.transient:
                raise QueryFailedError(
                    ErrorCode.UNAVAILABLE,
                    f"Alipay is busy ({_code(error)}); nothing changed",
                    retryable=True,
                ) from None
            raise QueryFailedError(
                ErrorCode.MISCONFIGURED,
                f"Alipay refused the service's query ({_code(error)}): check the app's keys, "
                "certificates and permissions; nothing changed",
            ) from None
        except (TransportError, SignatureError, UnexpectedResponseError) as error:
            raise QueryFailedError(
                ErrorCode.UNAVAILABLE,
                f"Alipay gave no usable answer ({type(error).__name__}); nothing changed",
                retryable=True,
            ) from None
        if info.auth_app_id != stored.auth_app_id:
            raise QueryFailedError(
                ErrorCode.UNAVAILABLE,
                "Alipay's answer names another app; nothing changed",
                retryable=True,
            )
        self.store.record_authorization_info(stored, info, verified_at=queried_at)
        if not info.valid:
            self._end(stored, Transition.REVOKED, f"{reason}:query:{info.status}", queried_at)
            return None
        return info

    def _end(
        self, stored: StoredAuthorization, transition: Transition, reason: str, at: datetime
    ) -> None:
        if stored.reconcile_reason is not None or stored.leased_at(self.clock()):
            # A rotation is in flight or its answer is being reconciled: the pair Alipay calls
            # dead may already be replaced. The refresh run decides; ask again shortly.
            raise QueryFailedError(
                ErrorCode.UNAVAILABLE,
                "a token rotation is in progress for this merchant; ask again in a minute",
                retryable=True,
                known=stored,
            )
        ended = self.store.end_confirmed(stored, transition, reason=reason, confirmed_at=at)
        self.cache.evict(stored.auth_app_id)
        if not ended:
            current = self.store.get(stored.auth_app_id, consistent=True)
            if current is not None and (current.version, current.status) == (
                stored.version,
                STATUS_GRANTED,
            ):
                # The same grant, but a refresh took it meanwhile (the write is fenced on it).
                raise QueryFailedError(
                    ErrorCode.UNAVAILABLE,
                    "a token rotation is in progress for this merchant; ask again in a minute",
                    retryable=True,
                    known=current,
                )


def ended(stored: StoredAuthorization, *, extra: dict[str, Any] | None = None) -> QueryFailedError:
    """The failure for an authorization that is no longer granted."""
    code = _ENDED.get(stored.status, ErrorCode.NOT_FOUND)
    message = (
        "the merchant cancelled the authorization; only the merchant can authorize again"
        if code is ErrorCode.REVOKED
        else "the merchant's authorization no longer works; the merchant must authorize again"
    )
    return QueryFailedError(
        code, message, known=stored, extra={"user_id": stored.user_id, **(extra or {})}
    )


def _described(stored: StoredAuthorization) -> dict[str, Any]:
    return {
        "alipay_status": stored.alipay_status,
        "auth_methods": list(stored.auth_methods) if stored.auth_methods is not None else None,
        "auth_start": stored.auth_start,
        "auth_end": stored.auth_end,
        "verified_at": _iso(stored.verified_at),
    }


def listed_item(stored: StoredAuthorization) -> dict[str, Any]:
    """One row of the ``list`` answer (the operator CLI's ``appauth list`` shows the same)."""
    return {
        "auth_app_id": stored.auth_app_id,
        "user_id": stored.user_id,
        "status": stored.status,
        "version": stored.version,
        "expires_at": _iso(stored.expires_at),
        "re_expires_at": _iso(stored.re_expires_at),
        "next_refresh_at": _iso(stored.next_refresh_at),
        "status_reason": stored.status_reason,
        "updated_at": stored.updated_at,
        **_described(stored),
    }


def _code(error: AlipayError) -> str:
    return f"{error.code} {error.sub_code}" if error.sub_code else error.code


def failure_for(error: Exception) -> QueryFailedError:
    """Every exception as its answer; messages name the cause, never a secret."""
    if isinstance(error, QueryFailedError):
        return error
    if isinstance(error, (InvalidRequestError, CursorError)):
        return QueryFailedError(ErrorCode.BAD_REQUEST, str(error))
    if isinstance(error, SecretsUnavailableError):
        logger.error("SSM unavailable", extra={"parameter": error.parameter, "error": str(error)})
        return QueryFailedError(
            ErrorCode.UNAVAILABLE, "the service's secrets cannot be read now", retryable=True
        )
    if isinstance(error, ConfigError):
        logger.error("Service misconfigured", extra={"parameter": error.parameter})
        return QueryFailedError(
            ErrorCode.MISCONFIGURED,
            f"the token service is misconfigured ({error.parameter or 'see its log'})",
        )
    if isinstance(error, TokenDecryptionError):
        logger.error("Stored token does not open", extra={"error": str(error)})
        return QueryFailedError(
            ErrorCode.MISCONFIGURED,
            "the stored token cannot be opened (KMS refused its data key, or the item was "
            "altered); the operator must look at the token query log",
        )
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", "")) or "unknown"
        service = error.operation_name
        logger.error("AWS call failed", extra={"aws_error": code, "operation": service})
        if code in aws.SETUP_AWS_CODES:
            return QueryFailedError(
                ErrorCode.MISCONFIGURED,
                f"AWS refused {service} ({code}): the function's permissions or resources are "
                "not what the template declares",
            )
        return QueryFailedError(
            ErrorCode.UNAVAILABLE,
            f"AWS {service} failed ({code})",
            retryable=aws.is_transient(error),
        )
    if isinstance(error, BotoCoreError):
        logger.error("AWS unreachable", extra={"aws_error": type(error).__name__})
        return QueryFailedError(
            ErrorCode.UNAVAILABLE,
            f"AWS did not answer ({type(error).__name__})",
            retryable=True,
        )
    logger.exception("Unexpected error in the token query")
    return QueryFailedError(ErrorCode.UNAVAILABLE, "internal error; see the token query log")
