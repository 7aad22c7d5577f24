"""The authorization state machine: codes, token pairs, refresh rotation, grace and revocation.

Protocol-agnostic: the v2 gateway and the v3 API both call :meth:`SimulatorState.token_app` and
:meth:`SimulatorState.query` and map :class:`StateError` to their own error shapes.

Rules (chosen to be at least as strict as Alipay, so a client that passes here is safe there):

- A code is single use; it expires after 24 h (single) or 10 min (batch), by the simulator clock.
- Alipay issues one pair per authorization. A code minted with ``issue=True`` (an approval or a
  code whose grant notification is sent) issues its pairs at once, so the notification can
  carry them and they work before any exchange; exchanging that code answers those same pairs.
  A code minted without it issues them on its exchange (nothing could observe them before, and
  a failed exchange leaves no merchant and no pair).
- Each merchant app (``auth_app_id``) has one current pair. A refresh, or a new authorization of
  the same app, issues a new pair; the previous token keeps working for the behaviour's
  ``token_grace_seconds``, then stops (it is then unknown, as if Alipay had deleted it).
- A superseded refresh token gets what :attr:`Behaviour.superseded_refresh` says while within
  ``refresh_grace_seconds`` of being superseded: refused (the default, so a client that loses a
  refresh answer cannot silently retry it), the pair that superseded it (an idempotent replay),
  or a fresh pair. After that grace it is always refused.
- A refresh token is refused after ``re_expires_in``; an access token after ``expires_in``.
- Revocation stops every pair of the merchant app at once; query then says ``invalid``.
- Every merchant app keeps a record (:meth:`SimulatorState.merchant_record`): every pair issued,
  every refresh call and what it did, so a test can check that no issued pair was lost.
"""

from __future__ import annotations

import copy
import random
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

from appauth.alipay.signing import BEIJING

EXPIRES_IN = 31536000
RE_EXPIRES_IN = 32140800
SINGLE_CODE_TTL = 24 * 3600
BATCH_CODE_TTL = 10 * 60
MAX_BATCH_SIZE = 20
MAX_GRACE_SECONDS = 10 * 366 * 86400
SUPERSEDED_REFRESH_MODES = ("refuse", "same_pair", "new_pair")
# What a refresh call did, as merchant_record reports it.
REFRESH_OUTCOMES = ("rotated", "replayed_same", "replayed_new", "refused", "not_processed")
AUTH_METHODS = (
    "alipay.open.mini.baseinfo.query",
    "alipay.trade.create",
    "alipay.trade.pay",
    "alipay.trade.query",
    "alipay.trade.refund",
)


class ErrorKind(Enum):
    MISSING_PARAMETER = "missing-parameter"
    INVALID_PARAMETER = "invalid-parameter"
    CODE_INVALID = "code-invalid"
    REFRESH_TOKEN_INVALID = "refresh-token-invalid"  # noqa: S105 - an error kind
    APP_AUTH_TOKEN_INVALID = "app-auth-token-invalid"  # noqa: S105 - an error kind
    APP_AUTH_TOKEN_EXPIRED = "app-auth-token-expired"  # noqa: S105 - an error kind


class StateError(Exception):
    """A business failure; ``field`` names the parameter at fault (never its value)."""

    def __init__(self, kind: ErrorKind, field: str = "") -> None:
        self.kind = kind
        self.field = field
        super().__init__(f"{kind.value} {field}".strip())


class SimClock:
    """Wall time plus an offset that tests move forward instead of sleeping."""

    def __init__(self) -> None:
        self._offset = 0.0
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            return time.time() + self._offset

    def advance(self, seconds: float) -> float:
        with self._lock:
            self._offset += seconds
        return self.now()

    def reset(self) -> None:
        with self._lock:
            self._offset = 0.0


def beijing(epoch: float) -> str:
    """``yyyy-MM-dd HH:mm:ss`` in Beijing time."""
    return datetime.fromtimestamp(epoch, UTC).astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S")


@dataclass
class TokenPair:
    app_auth_token: str = field(repr=False)
    app_refresh_token: str = field(repr=False)
    auth_app_id: str
    user_id: str
    issued_at: float
    expires_at: float
    re_expires_at: float
    superseded_at: float | None = None
    revoked: bool = False
    source: str = "authorization_code"
    # The refresh token of the pair that superseded this one (for an idempotent replay).
    successor: str | None = field(default=None, repr=False)

    def as_token(self) -> dict[str, Any]:
        return {
            "app_auth_token": self.app_auth_token,
            "app_refresh_token": self.app_refresh_token,
            "auth_app_id": self.auth_app_id,
            "user_id": self.user_id,
            "expires_in": EXPIRES_IN,
            "re_expires_in": RE_EXPIRES_IN,
        }


@dataclass
class _Code:
    auth_app_ids: list[str]
    user_id: str
    batch: bool
    expires_at: float
    used: bool = False
    # The pairs of this authorization once issued (at approval, or at the exchange).
    pairs: list[TokenPair] | None = None
    issued_at: float | None = None


@dataclass
class _Merchant:
    auth_app_id: str
    user_id: str
    auth_start: float
    current: TokenPair
    pairs: list[TokenPair] = field(default_factory=list)  # every pair issued, oldest first
    refresh_calls: list[dict[str, Any]] = field(default_factory=list)
    rotations: int = 0
    exchanges: int = 0


@dataclass(frozen=True)
class Behaviour:
    """How Alipay behaves where its documentation is silent; changed at run time by tests.

    - ``superseded_refresh``: what a refresh with a superseded refresh token gets while within
      ``refresh_grace_seconds`` of being superseded: ``refuse`` (40002
      ``isv.refresh-token-invalid`` at once), ``same_pair`` (accepted: the pair that superseded
      it, unchanged, nothing superseded; an idempotent replay of the first answer) or
      ``new_pair`` (accepted: a fresh pair is issued and supersedes the current one).
    - ``token_grace_seconds``: how long a superseded ``app_auth_token`` keeps working for API
      calls and query. ``refresh_grace_seconds``: the window above. Both default to the config's
      ``grace_seconds``.
    - ``notify_url``: where notifications (grant and cancellation) are POSTed (``None``: nowhere).
    """

    superseded_refresh: str = "refuse"
    token_grace_seconds: float = 3600
    refresh_grace_seconds: float = 3600
    notify_url: str | None = None

    def updated(self, changes: Mapping[str, Any]) -> Behaviour:
        """A copy with ``changes`` applied; ValueError names the first bad field."""
        known = {f.name for f in fields(self)}
        for name, value in changes.items():
            if name not in known:
                raise ValueError(f"unknown behaviour '{name}'")
            if name == "superseded_refresh":
                if value not in SUPERSEDED_REFRESH_MODES:
                    raise ValueError(
                        f"'{name}' must be one of {', '.join(SUPERSEDED_REFRESH_MODES)}"
                    )
            elif name == "notify_url":
                if value is not None and not _is_http_url(value):
                    raise ValueError(f"'{name}' must be null or an absolute http(s) URL")
            elif (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not 0 <= value <= MAX_GRACE_SECONDS
            ):
                raise ValueError(f"'{name}' must be a number of seconds, 0 to 10 years")
        return replace(self, **changes)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_http_url(value: Any) -> bool:
    if not isinstance(value, str) or not value.isascii():
        return False
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in value):
        return False
    parts = urlsplit(value)
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


@dataclass
class CallNote:
    """What the server knows about the API call being processed: the fault that will hit its
    answer. Refresh records made during the call point at it, so a lost answer is recorded as
    what it did, with the fault that lost it."""

    fault: str | None
    records: list[dict[str, Any]] = field(default_factory=list)


# Each request is handled in its own thread, so a context variable scopes the note to one call
# without threading it through the protocol modules.
_NOTE: ContextVar[CallNote | None] = ContextVar("simulator_call_note", default=None)


@dataclass(frozen=True)
class MintedCode:
    app_auth_code: str = field(repr=False)
    auth_app_ids: list[str]
    user_id: str
    batch: bool
    expires_in: int


class SimulatorState:
    """All mutable simulator state behind one lock (the server is multi-threaded)."""

    def __init__(self, *, grace_seconds: int = 3600, seed: int | None = None) -> None:
        self.clock = SimClock()
        # The config's grace: the default of both grace periods in the behaviour.
        self.grace_seconds = grace_seconds
        self._default_behaviour = Behaviour(
            token_grace_seconds=grace_seconds, refresh_grace_seconds=grace_seconds
        )
        self._behaviour = self._default_behaviour
        self._seed = seed
        self._lock = threading.RLock()
        self._rng = random.Random(seed)  # noqa: S311 - test data, seedable on purpose
        self._codes: dict[str, _Code] = {}
        self._merchants: dict[str, _Merchant] = {}
        self._by_token: dict[str, TokenPair] = {}
        self._by_refresh: dict[str, TokenPair] = {}

    def reset(self) -> None:
        with self._lock:
            self.clock.reset()
            self._rng.seed(self._seed)
            self._codes.clear()
            self._merchants.clear()
            self._by_token.clear()
            self._by_refresh.clear()
            self._behaviour = self._default_behaviour

    # --- behaviour ----------------------------------------------------------------------------

    @property
    def behaviour(self) -> Behaviour:
        with self._lock:
            return self._behaviour

    def set_behaviour(self, **changes: Any) -> Behaviour:
        """Change how Alipay behaves (see :class:`Behaviour`); ValueError names a bad field."""
        with self._lock:
            self._behaviour = self._behaviour.updated(changes)
            return self._behaviour

    @contextmanager
    def rolled_back(self) -> Iterator[None]:
        """Run calls whose effects are undone on exit (other threads wait meanwhile)."""
        with self._lock:
            saved = copy.deepcopy((self._codes, self._merchants, self._by_token, self._by_refresh))
            rng = self._rng.getstate()
            try:
                yield
            finally:
                self._codes, self._merchants, self._by_token, self._by_refresh = saved
                self._rng.setstate(rng)

    # --- random identifiers (realistic shapes) ---------------------------------------------

    def _digits(self, count: int) -> str:
        return "".join(self._rng.choice("0123456789") for _ in range(count))

    def _hex(self, count: int) -> str:
        return "".join(self._rng.choice("0123456789abcdef") for _ in range(count))

    def new_user_id(self) -> str:
        with self._lock:
            return "2088" + self._digits(12)

    def new_app_id(self) -> str:
        with self._lock:
            return "2021" + self._digits(12)

    def _new_token(self, now: float) -> str:
        # Alipay's shape: yyyyMM + "BB" + 32 hex + "X" + 2 digits.
        month = datetime.fromtimestamp(now, UTC).astimezone(BEIJING).strftime("%Y%m")
        return f"{month}BB{self._hex(32)}X{self._digits(2)}"

    def new_notify_id(self, now: float) -> str:
        """A message id of Alipay's shape: the Beijing date and 14 digits."""
        day = datetime.fromtimestamp(now, UTC).astimezone(BEIJING).strftime("%Y%m%d")
        with self._lock:
            return day + self._digits(14)

    # --- codes ------------------------------------------------------------------------------

    def mint_code(
        self,
        auth_app_id: str | None = None,
        user_id: str | None = None,
        batch_size: int | None = None,
        *,
        issue: bool = False,
    ) -> MintedCode:
        """Mint an ``app_auth_code`` as if the merchant had approved the consent page.

        ``batch_size`` set (even to 1) makes a batch authorization: ``tokens[]`` only, 10 min code.
        ``issue`` issues the authorization's pairs now (see :meth:`issued_pairs`) instead of on
        the exchange.
        """
        batch = batch_size is not None
        count = batch_size if batch_size is not None else 1
        if not 1 <= count <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be 1..{MAX_BATCH_SIZE}")
        with self._lock:
            now = self.clock.now()
            first = auth_app_id or self.new_app_id()
            known = self._merchants.get(first)
            user = user_id or (known.user_id if known else self.new_user_id())
            app_ids = [first] + [self.new_app_id() for _ in range(count - 1)]
            ttl = BATCH_CODE_TTL if batch else SINGLE_CODE_TTL
            code = self._hex(29) + "F" + self._digits(2)
            record = _Code(app_ids, user, batch, now + ttl)
            self._codes[code] = record
            if issue:
                self._issue_code(record, now)
            return MintedCode(code, list(app_ids), user, batch, ttl)

    def _issue_code(self, record: _Code, now: float) -> list[TokenPair]:
        if record.pairs is None:
            record.pairs = [
                self._issue(app_id, record.user_id, now, "authorization_code")
                for app_id in record.auth_app_ids
            ]
            record.issued_at = now
        return record.pairs

    def issued_pairs(self, code: str) -> tuple[list[TokenPair], float] | None:
        """Copies of the pairs a code's authorization issued and when; None if not issued yet."""
        with self._lock:
            record = self._codes.get(code)
            if record is None or record.pairs is None or record.issued_at is None:
                return None
            return [replace(p) for p in record.pairs], record.issued_at

    # --- token operations --------------------------------------------------------------------

    def _issue(self, auth_app_id: str, user_id: str, now: float, source: str) -> TokenPair:
        pair = TokenPair(
            app_auth_token=self._new_token(now),
            app_refresh_token=self._new_token(now),
            auth_app_id=auth_app_id,
            user_id=user_id,
            issued_at=now,
            expires_at=now + EXPIRES_IN,
            re_expires_at=now + RE_EXPIRES_IN,
            source=source,
        )
        merchant = self._merchants.get(auth_app_id)
        if merchant is None:
            merchant = _Merchant(auth_app_id, user_id, now, pair)
            self._merchants[auth_app_id] = merchant
        else:
            if merchant.current.superseded_at is None:
                merchant.current.superseded_at = now
                merchant.current.successor = pair.app_refresh_token
            if merchant.current.revoked:
                merchant.auth_start = now  # a fresh authorization after a cancellation
            merchant.current = pair
        merchant.pairs.append(pair)
        self._by_token[pair.app_auth_token] = pair
        self._by_refresh[pair.app_refresh_token] = pair
        return pair

    def exchange_code(self, code: str) -> tuple[list[TokenPair], bool]:
        with self._lock:
            now = self.clock.now()
            record = self._codes.get(code)
            if record is None or record.used or now >= record.expires_at:
                raise StateError(ErrorKind.CODE_INVALID, "code")
            if record.pairs is not None and any(p.revoked for p in record.pairs):
                # The merchant cancelled the authorization this code stands for.
                raise StateError(ErrorKind.CODE_INVALID, "code")
            record.used = True
            # One pair per authorization: the pairs issued at approval, if they were.
            pairs = self._issue_code(record, now)
            for app_id in record.auth_app_ids:
                self._merchants[app_id].exchanges += 1
            return [replace(p) for p in pairs], record.batch

    def refresh(self, refresh_token: str) -> TokenPair:
        with self._lock:
            now = self.clock.now()
            pair = self._by_refresh.get(refresh_token)
            if pair is None:
                raise StateError(ErrorKind.REFRESH_TOKEN_INVALID, "refresh_token")
            merchant = self._merchants[pair.auth_app_id]
            outcome, answer = self._refresh(pair, now)
            if outcome in ("rotated", "replayed_new"):
                merchant.rotations += 1
            note = _NOTE.get()
            record = self._record_call(merchant, now, outcome, note.fault if note else None)
            if note is not None:
                note.records.append(record)
            if answer is None:
                raise StateError(ErrorKind.REFRESH_TOKEN_INVALID, "refresh_token")
            return replace(answer)

    def _refresh(self, pair: TokenPair, now: float) -> tuple[str, TokenPair | None]:
        """(what the refresh did, the pair it answers with or None when refused)."""
        if pair.revoked or now >= pair.re_expires_at:
            return "refused", None
        if pair.superseded_at is None:
            return "rotated", self._issue(pair.auth_app_id, pair.user_id, now, "refresh_token")
        behaviour = self._behaviour
        mode = behaviour.superseded_refresh
        if mode == "refuse" or now >= pair.superseded_at + behaviour.refresh_grace_seconds:
            return "refused", None
        if mode == "same_pair":
            # _issue sets successor together with superseded_at.
            return "replayed_same", self._by_refresh[pair.successor or ""]
        return "replayed_new", self._issue(pair.auth_app_id, pair.user_id, now, "refresh_token")

    @staticmethod
    def _record_call(
        merchant: _Merchant, now: float, outcome: str, fault: str | None
    ) -> dict[str, Any]:
        record: dict[str, Any] = {"at": now, "outcome": outcome, "fault": fault}
        merchant.refresh_calls.append(record)
        return record

    @contextmanager
    def noting(self, fault: str | None) -> Iterator[CallNote]:
        """Process an API call whose answer ``fault`` will hit (None: answered normally)."""
        note = CallNote(fault)
        token = _NOTE.set(note)
        try:
            yield note
        finally:
            _NOTE.reset(token)

    def amend(self, note: CallNote, fault: str | None) -> None:
        """The fault that hit a processed call's answer became known later (a released hold)."""
        with self._lock:
            note.fault = fault
            for record in note.records:
                record["fault"] = fault

    def record_unprocessed(self, refresh_token: str | None, fault: str) -> None:
        """A refresh call that a fault stopped before Alipay processed it."""
        if not refresh_token:
            return
        with self._lock:
            pair = self._by_refresh.get(refresh_token)
            if pair is not None:
                merchant = self._merchants[pair.auth_app_id]
                self._record_call(merchant, self.clock.now(), "not_processed", fault)

    def resolve_apps(
        self,
        *,
        code: str | None = None,
        refresh_token: str | None = None,
        app_auth_token: str | None = None,
    ) -> tuple[str, ...]:
        """The merchant apps a call's code or token belongs to (valid or not); () if unknown."""
        with self._lock:
            if code and code in self._codes:
                return tuple(self._codes[code].auth_app_ids)
            pair = None
            if refresh_token:
                pair = self._by_refresh.get(refresh_token)
            if pair is None and app_auth_token:
                pair = self._by_token.get(app_auth_token)
            return (pair.auth_app_id,) if pair is not None else ()

    def _lookup(self, app_auth_token: str, now: float) -> TokenPair:
        """The pair of a token Alipay still knows (superseded ones vanish after the grace)."""
        pair = self._by_token.get(app_auth_token)
        if pair is None or not self._within_token_grace(pair, now):
            raise StateError(ErrorKind.APP_AUTH_TOKEN_INVALID, "app_auth_token")
        return pair

    def _within_token_grace(self, pair: TokenPair, now: float) -> bool:
        return (
            pair.superseded_at is None
            or now < pair.superseded_at + self._behaviour.token_grace_seconds
        )

    def check_token(self, app_auth_token: str) -> TokenPair:
        """The pair of a token that may call APIs now; StateError otherwise."""
        with self._lock:
            now = self.clock.now()
            pair = self._lookup(app_auth_token, now)
            if pair.revoked:
                raise StateError(ErrorKind.APP_AUTH_TOKEN_INVALID, "app_auth_token")
            if now >= pair.expires_at:
                raise StateError(ErrorKind.APP_AUTH_TOKEN_EXPIRED, "app_auth_token")
            return replace(pair)

    def user_of(self, auth_app_id: str) -> str | None:
        with self._lock:
            merchant = self._merchants.get(auth_app_id)
            return merchant.user_id if merchant else None

    def revoke(self, auth_app_id: str) -> int:
        """The merchant cancels: every pair of the app stops at once. Returns how many pairs."""
        with self._lock:
            pairs = [p for p in self._by_token.values() if p.auth_app_id == auth_app_id]
            if not pairs:
                raise KeyError(auth_app_id)
            for pair in pairs:
                pair.revoked = True
            return len(pairs)

    # --- API-level operations (parameters as the caller sent them) ---------------------------

    def token_app(self, biz: Mapping[str, Any]) -> dict[str, Any]:
        """``alipay.open.auth.token.app``: the response data without ``code``/``msg``."""
        grant_type = _required(biz, "grant_type")
        if grant_type == "authorization_code":
            pairs, batch = self.exchange_code(_required(biz, "code"))
        elif grant_type == "refresh_token":
            pairs, batch = [self.refresh(_required(biz, "refresh_token"))], False
        else:
            raise StateError(ErrorKind.INVALID_PARAMETER, "grant_type")
        tokens = [p.as_token() for p in pairs]
        if batch:
            return {"tokens": tokens}
        return {**tokens[0], "tokens": tokens}

    def query(self, app_auth_token: Any) -> dict[str, Any]:
        """``alipay.open.auth.token.app.query``: the response data without ``code``/``msg``."""
        if app_auth_token is None or app_auth_token == "":
            raise StateError(ErrorKind.MISSING_PARAMETER, "app_auth_token")
        if not isinstance(app_auth_token, str):
            raise StateError(ErrorKind.INVALID_PARAMETER, "app_auth_token")
        with self._lock:
            now = self.clock.now()
            pair = self._lookup(app_auth_token, now)
            merchant = self._merchants[pair.auth_app_id]
            valid = not pair.revoked and now < pair.expires_at
            return {
                "auth_app_id": pair.auth_app_id,
                "user_id": pair.user_id,
                "auth_methods": list(AUTH_METHODS),
                "auth_start": beijing(merchant.auth_start),
                "auth_end": beijing(pair.expires_at),
                "expires_in": max(0, int(pair.expires_at - now)) if valid else 0,
                "status": "valid" if valid else "invalid",
            }

    # --- inspection for tests ------------------------------------------------------------------

    def current_pair(self, auth_app_id: str) -> TokenPair | None:
        with self._lock:
            merchant = self._merchants.get(auth_app_id)
            return replace(merchant.current) if merchant else None

    def merchant_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._merchants)

    def pair_count(self) -> int:
        with self._lock:
            return len(self._by_token)

    def merchant_record(self, auth_app_id: str) -> dict[str, Any] | None:
        """Everything Alipay did for one merchant app, with raw tokens (test use only)."""
        with self._lock:
            merchant = self._merchants.get(auth_app_id)
            if merchant is None:
                return None
            now = self.clock.now()
            return {
                "auth_app_id": merchant.auth_app_id,
                "user_id": merchant.user_id,
                "status": "cancelled" if merchant.current.revoked else "authorized",
                "current": self._pair_record(merchant.current, now),
                "pairs": [self._pair_record(pair, now) for pair in merchant.pairs],
                "refresh_calls": copy.deepcopy(merchant.refresh_calls),
                "rotations": merchant.rotations,
                "exchanges": merchant.exchanges,
            }

    def _pair_record(self, pair: TokenPair, now: float) -> dict[str, Any]:
        behaviour = self._behaviour
        refreshable = pair.superseded_at is None or (
            behaviour.superseded_refresh != "refuse"
            and now < pair.superseded_at + behaviour.refresh_grace_seconds
        )
        return {
            "app_auth_token": pair.app_auth_token,
            "app_refresh_token": pair.app_refresh_token,
            "issued_at": pair.issued_at,
            "superseded_at": pair.superseded_at,
            "source": pair.source,
            # The same rules as check_token/query and refresh, evaluated now.
            "token_accepted": not pair.revoked
            and self._within_token_grace(pair, now)
            and now < pair.expires_at,
            "refresh_accepted": not pair.revoked and now < pair.re_expires_at and refreshable,
        }


def _required(biz: Mapping[str, Any], name: str) -> str:
    value = biz.get(name)
    if value is None or value == "":
        raise StateError(ErrorKind.MISSING_PARAMETER, name)
    if not isinstance(value, str):
        raise StateError(ErrorKind.INVALID_PARAMETER, name)
    return value
