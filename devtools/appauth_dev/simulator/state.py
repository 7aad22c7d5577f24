"""The authorization state machine: codes, token pairs, refresh rotation, grace and revocation.

Protocol-agnostic: the v2 gateway and the v3 API both call :meth:`SimulatorState.token_app` and
:meth:`SimulatorState.query` and map :class:`StateError` to their own error shapes.

Rules (chosen to be at least as strict as Alipay, so a client that passes here is safe there):

- A code is single use; it expires after 24 h (single) or 10 min (batch), by the simulator clock.
- Each merchant app (``auth_app_id``) has one current pair. A refresh, or a new authorization of
  the same app, issues a new pair; the previous pair keeps working for ``grace_seconds``, then
  stops (its token is then unknown, as if Alipay had deleted it).
- Only the current pair's refresh token refreshes: a superseded refresh token is refused even
  within the grace period, so a client that loses a refresh answer cannot silently retry it.
- A refresh token is refused after ``re_expires_in``; an access token after ``expires_in``.
- Revocation stops every pair of the merchant app at once; query then says ``invalid``.
"""

from __future__ import annotations

import copy
import random
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from appauth.alipay.signing import BEIJING

EXPIRES_IN = 31536000
RE_EXPIRES_IN = 32140800
SINGLE_CODE_TTL = 24 * 3600
BATCH_CODE_TTL = 10 * 60
MAX_BATCH_SIZE = 20
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


@dataclass
class _Merchant:
    auth_app_id: str
    user_id: str
    auth_start: float
    current: TokenPair


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
        self.grace_seconds = grace_seconds
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

    # --- codes ------------------------------------------------------------------------------

    def mint_code(
        self,
        auth_app_id: str | None = None,
        user_id: str | None = None,
        batch_size: int | None = None,
    ) -> MintedCode:
        """Mint an ``app_auth_code`` as if the merchant had approved the consent page.

        ``batch_size`` set (even to 1) makes a batch authorization: ``tokens[]`` only, 10 min code.
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
            self._codes[code] = _Code(app_ids, user, batch, now + ttl)
            return MintedCode(code, list(app_ids), user, batch, ttl)

    # --- token operations --------------------------------------------------------------------

    def _issue(self, auth_app_id: str, user_id: str, now: float) -> TokenPair:
        pair = TokenPair(
            app_auth_token=self._new_token(now),
            app_refresh_token=self._new_token(now),
            auth_app_id=auth_app_id,
            user_id=user_id,
            issued_at=now,
            expires_at=now + EXPIRES_IN,
            re_expires_at=now + RE_EXPIRES_IN,
        )
        merchant = self._merchants.get(auth_app_id)
        if merchant is None:
            self._merchants[auth_app_id] = _Merchant(auth_app_id, user_id, now, pair)
        else:
            if merchant.current.superseded_at is None:
                merchant.current.superseded_at = now
            if merchant.current.revoked:
                merchant.auth_start = now  # a fresh authorization after a cancellation
            merchant.current = pair
        self._by_token[pair.app_auth_token] = pair
        self._by_refresh[pair.app_refresh_token] = pair
        return pair

    def exchange_code(self, code: str) -> tuple[list[TokenPair], bool]:
        with self._lock:
            now = self.clock.now()
            record = self._codes.get(code)
            if record is None or record.used or now >= record.expires_at:
                raise StateError(ErrorKind.CODE_INVALID, "code")
            record.used = True
            pairs = [self._issue(app_id, record.user_id, now) for app_id in record.auth_app_ids]
            return [replace(p) for p in pairs], record.batch

    def refresh(self, refresh_token: str) -> TokenPair:
        with self._lock:
            now = self.clock.now()
            pair = self._by_refresh.get(refresh_token)
            if (
                pair is None
                or pair.revoked
                or pair.superseded_at is not None
                or now >= pair.re_expires_at
            ):
                raise StateError(ErrorKind.REFRESH_TOKEN_INVALID, "refresh_token")
            return replace(self._issue(pair.auth_app_id, pair.user_id, now))

    def _lookup(self, app_auth_token: str, now: float) -> TokenPair:
        """The pair of a token Alipay still knows (superseded ones vanish after the grace)."""
        pair = self._by_token.get(app_auth_token)
        if pair is None or (
            pair.superseded_at is not None and now >= pair.superseded_at + self.grace_seconds
        ):
            raise StateError(ErrorKind.APP_AUTH_TOKEN_INVALID, "app_auth_token")
        return pair

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


def _required(biz: Mapping[str, Any], name: str) -> str:
    value = biz.get(name)
    if value is None or value == "":
        raise StateError(ErrorKind.MISSING_PARAMETER, name)
    if not isinstance(value, str):
        raise StateError(ErrorKind.INVALID_PARAMETER, name)
    return value
