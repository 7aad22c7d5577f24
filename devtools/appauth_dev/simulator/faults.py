"""Injected faults (latency, errors, timeouts, rate limits, corrupted answers) and statistics.

Two kinds, checked on every API call: targeted rules (matched in order, first to fire wins) and
the global random faults. Every random decision comes from one seeded generator, so a test that
sets a rate of 0 or 1, or a fixed seed, sees the same outcomes on every run. A ``hold`` rule
parks the matching request until a test releases it, which is how tests force reorderings
without sleeping.
"""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

# How an answer can be damaged between Alipay and the client (see corruption.py).
RESPONSE_FAULTS = (
    "tamper",
    "wrong_key",
    "drop_sign",
    "garbage",
    "truncate",
    "oversized",
    "html_502",
)
_BOOLEANS = ("escape_slashes", "timeout_after_processing", "response_fault_after_processing")
_RATES = ("error_rate", "timeout_rate", "response_fault_rate")
# Faults that stop a call before Alipay processes it (after_processing does not apply).
BEFORE_PROCESSING_FAULTS = ("error", "rate_limited", "http_503")
# What a hold can be released into.
RELEASE_FAULTS = (*BEFORE_PROCESSING_FAULTS, "timeout", *RESPONSE_FAULTS)
TARGETED_FAULTS = (*RELEASE_FAULTS, "hold")
RULE_METHODS = (
    "alipay.open.auth.token.app",
    "alipay.open.auth.token.app.query",
    "alipay.open.mini.baseinfo.query",
)
GRANT_TYPES = ("authorization_code", "refresh_token")
MAX_TIMEOUT_SECONDS = 600.0
# A hold nobody releases gives up after this long, so a forgetful test cannot hang a thread.
MAX_HOLD_SECONDS = 300.0


@dataclass(frozen=True)
class Faults:
    """What goes wrong, for API calls only (the control API and consent pages never fail).

    - ``latency_ms``: every API response is delayed this long.
    - ``error_rate`` (0..1): answer "service unavailable", unsigned, without touching state.
    - ``timeout_rate`` (0..1): hold the request ``timeout_seconds``, then close the connection
      with no response. With ``timeout_after_processing`` (the default, and the dangerous case)
      the call takes effect first, so a client must treat a timeout as "outcome unknown".
    - ``rate_limit_per_second``: calls beyond this many in any one-second window are answered
      with a signed ``call-limited`` error (0 = no limit).
    - ``escape_slashes``: v2 bodies escape ``/`` as ``\\/`` while the signature covers the
      unescaped text, as real Alipay does.
    - ``response_fault``: corrupt the answer on its way to the client (``null`` = never), with
      probability ``response_fault_rate``. One of :data:`RESPONSE_FAULTS`; see
      :mod:`~appauth_dev.simulator.corruption`. Applies to answers the simulator computed
      (success or business error), not to the other faults' answers. With
      ``response_fault_after_processing`` (the default, and the dangerous case) the call takes
      effect first: Alipay processed it and the answer was damaged in transit. Without it the
      state is left exactly as it was (the answer is computed and then rolled back).
    """

    latency_ms: int = 0
    error_rate: float = 0.0
    timeout_rate: float = 0.0
    timeout_seconds: float = 10.0
    timeout_after_processing: bool = True
    rate_limit_per_second: float = 0.0
    escape_slashes: bool = False
    response_fault: str | None = None
    response_fault_rate: float = 1.0
    response_fault_after_processing: bool = True

    def updated(self, changes: Mapping[str, Any]) -> Faults:
        """A copy with ``changes`` applied; ValueError names the first bad field."""
        known = {f.name: f.type for f in fields(self)}
        values: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in known:
                raise ValueError(f"unknown fault '{name}'")
            if name == "response_fault":
                if value is not None and value not in RESPONSE_FAULTS:
                    raise ValueError(
                        f"'{name}' must be null or one of {', '.join(RESPONSE_FAULTS)}"
                    )
            elif name in _BOOLEANS:
                if not isinstance(value, bool):
                    raise ValueError(f"'{name}' must be true or false")
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"'{name}' must be a number")
            elif value < 0 or value > 1_000_000:
                raise ValueError(f"'{name}' is out of range")
            elif name in _RATES and value > 1:
                raise ValueError(f"'{name}' must be between 0 and 1")
            values[name] = int(value) if name == "latency_ms" else value
        return replace(self, **values)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Decision:
    latency: float
    rate_limited: bool
    error: bool
    timeout: bool
    timeout_seconds: float
    timeout_after_processing: bool
    escape_slashes: bool
    response_fault: str | None = None
    response_fault_after_processing: bool = True


@dataclass(frozen=True)
class CallInfo:
    """An API call as the fault rules see it, read from the request before it is verified."""

    method: str  # the API method, the same for v2 and v3 (e.g. alipay.open.auth.token.app)
    grant_type: str | None = None
    code: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    app_auth_token: str | None = field(default=None, repr=False)


@dataclass
class _Rule:
    id: str
    fault: str
    method: str | None
    grant_type: str | None
    auth_app_id: str | None
    nth: int | None
    count: int | None
    after_processing: bool
    timeout_seconds: float | None
    matched: int = 0
    fired: int = 0

    @property
    def active(self) -> bool:
        if self.nth is not None:
            return self.matched < self.nth
        return self.fired < (self.count or 0)

    def matches(self, call: CallInfo, apps: Sequence[str]) -> bool:
        return (
            (self.method is None or self.method == call.method)
            and (self.grant_type is None or self.grant_type == call.grant_type)
            and (self.auth_app_id is None or self.auth_app_id in apps)
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "method": self.method,
            "grant_type": self.grant_type,
            "auth_app_id": self.auth_app_id,
            "nth": self.nth,
            "count": self.count,
            "fault": self.fault,
            "after_processing": self.after_processing,
            "timeout_seconds": self.timeout_seconds,
            "matched": self.matched,
            "fired": self.fired,
            "active": self.active,
        }


def _rule_from(spec: Mapping[str, Any], rule_id: str) -> _Rule:
    """Validate a rule; ValueError names the first bad field."""
    known = {
        "method",
        "grant_type",
        "auth_app_id",
        "nth",
        "count",
        "fault",
        "after_processing",
        "timeout_seconds",
    }
    for name in spec:
        if name not in known:
            raise ValueError(f"unknown rule field '{name}'")
    fault = spec.get("fault")
    if fault not in TARGETED_FAULTS:
        raise ValueError(f"'fault' must be one of {', '.join(TARGETED_FAULTS)}")
    method = spec.get("method")
    if method is not None and method not in RULE_METHODS:
        raise ValueError(f"'method' must be null or one of {', '.join(RULE_METHODS)}")
    grant_type = spec.get("grant_type")
    if grant_type is not None and grant_type not in GRANT_TYPES:
        raise ValueError(f"'grant_type' must be null or one of {', '.join(GRANT_TYPES)}")
    auth_app_id = spec.get("auth_app_id")
    if auth_app_id is not None and (not isinstance(auth_app_id, str) or not auth_app_id.isdigit()):
        raise ValueError("'auth_app_id' must be null or a string of digits")
    nth, count = spec.get("nth"), spec.get("count")
    if nth is not None and count is not None:
        raise ValueError("give 'nth' or 'count', not both")
    for name, value in (("nth", nth), ("count", count)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1_000_000
        ):
            raise ValueError(f"'{name}' must be a positive integer")
    after = spec.get("after_processing", True)
    if not isinstance(after, bool):
        raise ValueError("'after_processing' must be true or false")
    timeout = spec.get("timeout_seconds")
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 <= timeout <= MAX_TIMEOUT_SECONDS
    ):
        raise ValueError(f"'timeout_seconds' must be a number, 0 to {MAX_TIMEOUT_SECONDS:g}")
    return _Rule(
        id=rule_id,
        fault=fault,
        method=method,
        grant_type=grant_type,
        auth_app_id=auth_app_id,
        nth=nth,
        count=None if nth is not None else (count or 1),
        # Error-type faults answer before processing, whatever the rule says.
        after_processing=after and fault not in BEFORE_PROCESSING_FAULTS,
        timeout_seconds=timeout,
    )


@dataclass(frozen=True)
class Plan:
    """What happens to one API call: the fault that hits it (None: none) and how."""

    latency: float
    escape_slashes: bool
    fault: str | None = None
    after_processing: bool = True
    timeout_seconds: float = 10.0
    rule_id: str | None = None


@dataclass
class _Hold:
    id: str
    rule_id: str | None
    method: str
    auth_app_id: str | None
    since: float
    event: threading.Event = field(default_factory=threading.Event)
    then: str | None = None
    aborted: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "rule_id": self.rule_id,
            "method": self.method,
            "auth_app_id": self.auth_app_id,
            "since": self.since,
        }


@dataclass(frozen=True)
class Release:
    """How a held call continues: into ``then`` (None: answered normally), or aborted (reset)."""

    then: str | None
    aborted: bool


def _check_then(then: object) -> str | None:
    if then is None:
        return None
    if not isinstance(then, str) or then not in RELEASE_FAULTS:
        raise ValueError(f"'then' must be null or one of {', '.join(RELEASE_FAULTS)}")
    return then


class FaultInjector:
    def __init__(self, seed: int | None = None, clock: Callable[[], float] = time.time) -> None:
        self._seed = seed
        self._clock = clock
        self._lock = threading.Lock()
        # Waiters for holds (GET /simulator/holds?wait=...) sleep on this, never on a timer.
        self._holds_changed = threading.Condition(self._lock)
        self._rng = random.Random(seed)  # noqa: S311 - fault injection, seedable on purpose
        self._faults = Faults()
        self._admitted: deque[float] = deque()
        self._rules: list[_Rule] = []
        self._holds: dict[str, _Hold] = {}
        self._rule_seq = 0
        self._hold_seq = 0
        # Injected timeouts wait on this; reset and shutdown set it so no thread lingers.
        self._wakeup = threading.Event()

    @property
    def faults(self) -> Faults:
        with self._lock:
            return self._faults

    def update(self, changes: Mapping[str, Any]) -> Faults:
        with self._lock:
            self._faults = self._faults.updated(changes)
            return self._faults

    def reset(self) -> None:
        """Defaults, no rules; every held request and injected timeout ends now."""
        self.release_all()
        with self._lock:
            self._faults = Faults()
            self._rng.seed(self._seed)
            self._admitted.clear()
            self._rules.clear()
            self._rule_seq = 0
            self._hold_seq = 0

    def reseed(self, seed: int) -> None:
        """Restart the random decisions from ``seed`` (until the next reset)."""
        with self._lock:
            self._rng.seed(seed)

    def decide(self) -> Decision:
        with self._lock:
            return self._decide()

    def _decide(self) -> Decision:
        """The random faults for one call (the lock is held)."""
        f = self._faults
        rate_limited = False
        if f.rate_limit_per_second > 0:
            # Real (monotonic) time: a sliding one-second window of admitted calls.
            now = time.monotonic()
            while self._admitted and now - self._admitted[0] >= 1.0:
                self._admitted.popleft()
            rate_limited = len(self._admitted) >= f.rate_limit_per_second
            if not rate_limited:
                self._admitted.append(now)
        # Draw every number every time so one rate never shifts another's sequence.
        error_draw, timeout_draw = self._rng.random(), self._rng.random()
        corrupt_draw = self._rng.random()
        error = not rate_limited and error_draw < f.error_rate
        timeout = not rate_limited and not error and timeout_draw < f.timeout_rate
        corrupt = (
            f.response_fault is not None
            and not (rate_limited or error or timeout)
            and corrupt_draw < f.response_fault_rate
        )
        return Decision(
            latency=f.latency_ms / 1000,
            rate_limited=rate_limited,
            error=error,
            timeout=timeout,
            timeout_seconds=f.timeout_seconds,
            timeout_after_processing=f.timeout_after_processing,
            escape_slashes=f.escape_slashes,
            response_fault=f.response_fault if corrupt else None,
            response_fault_after_processing=f.response_fault_after_processing,
        )

    # --- targeted rules ------------------------------------------------------------------

    def add_rule(self, **spec: Any) -> dict[str, Any]:
        """Add a rule (see the package docstring); ValueError names the first bad field."""
        with self._lock:
            rule = _rule_from(spec, f"r{self._rule_seq + 1}")
            self._rule_seq += 1
            self._rules.append(rule)
            return rule.as_dict()

    def rules(self) -> list[dict[str, Any]]:
        with self._lock:
            return [rule.as_dict() for rule in self._rules]

    def clear_rules(self) -> int:
        with self._lock:
            cleared = len(self._rules)
            self._rules.clear()
            return cleared

    def plan(self, call: CallInfo, apps: Sequence[str]) -> Plan:
        """The fault for one API call: the first rule that fires, else the random faults."""
        with self._lock:
            # Drawn on every call, so a rule firing never shifts the seeded random sequence.
            decision = self._decide()
            base = Plan(latency=decision.latency, escape_slashes=decision.escape_slashes)
            for rule in self._rules:
                if not (rule.active and rule.matches(call, apps)):
                    continue
                rule.matched += 1
                if rule.nth is not None and rule.matched < rule.nth:
                    continue
                rule.fired += 1
                return replace(
                    base,
                    fault=rule.fault,
                    after_processing=rule.after_processing,
                    timeout_seconds=(
                        rule.timeout_seconds
                        if rule.timeout_seconds is not None
                        else self._faults.timeout_seconds
                    ),
                    rule_id=rule.id,
                )
        if decision.rate_limited:
            return replace(base, fault="rate_limited")
        if decision.error:
            return replace(base, fault="error")
        if decision.timeout:
            return replace(
                base,
                fault="timeout",
                after_processing=decision.timeout_after_processing,
                timeout_seconds=decision.timeout_seconds,
            )
        if decision.response_fault is not None:
            return replace(
                base,
                fault=decision.response_fault,
                after_processing=decision.response_fault_after_processing,
            )
        return base

    def sleep(self, seconds: float) -> None:
        """An injected timeout: wait ``seconds``, or less if the simulator resets or stops."""
        with self._lock:
            wakeup = self._wakeup
        wakeup.wait(seconds)

    # --- holds ---------------------------------------------------------------------------

    def hold(self, rule_id: str | None, method: str, auth_app_id: str | None) -> Release:
        """Block this request's thread until a test releases it (or reset/shutdown aborts it)."""
        with self._lock:
            self._hold_seq += 1
            held = _Hold(f"h{self._hold_seq}", rule_id, method, auth_app_id, self._clock())
            self._holds[held.id] = held
            self._holds_changed.notify_all()
        released = held.event.wait(MAX_HOLD_SECONDS)
        with self._lock:
            self._holds.pop(held.id, None)
            self._holds_changed.notify_all()
            return Release(held.then, held.aborted or not released)

    def holds(self, wait: float | None = None, count: int = 1) -> list[dict[str, Any]]:
        """The held requests, oldest first; with ``wait``, first block up to that many seconds
        until at least ``count`` are held."""
        with self._holds_changed:
            if wait:
                self._holds_changed.wait_for(lambda: len(self._holds) >= count, wait)
            return [held.as_dict() for held in self._holds.values()]

    def wait_for_hold(self, timeout: float = 5.0, *, rule_id: str | None = None) -> dict[str, Any]:
        """The oldest held request (of ``rule_id`` if given); TimeoutError if none comes."""

        def first() -> dict[str, Any] | None:
            return next(
                (
                    h.as_dict()
                    for h in self._holds.values()
                    if rule_id is None or h.rule_id == rule_id
                ),
                None,
            )

        with self._holds_changed:
            held = self._holds_changed.wait_for(first, timeout)
            if held is None:
                raise TimeoutError(f"no request was held within {timeout}s")
            return held

    def release(self, hold_id: str, then: str | None = None) -> dict[str, Any]:
        """Let a held request go on, into ``then`` (a fault) or normally; KeyError if unknown."""
        then = _check_then(then)
        with self._lock:
            held = self._holds.pop(hold_id)
            held.then = then
            held.event.set()
            self._holds_changed.notify_all()
            return {"released": hold_id, "then": then}

    def release_all(self) -> int:
        """Abort every held request and wake every injected timeout (reset, shutdown)."""
        with self._lock:
            held = list(self._holds.values())
            self._holds.clear()
            for one in held:
                one.aborted = True
                one.event.set()
            self._wakeup.set()
            self._wakeup = threading.Event()
            self._holds_changed.notify_all()
            return len(held)


class Stats:
    """Request counts by API method and outcome (e.g. ``success``, ``error``, ``timeout``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: defaultdict[str, defaultdict[str, int]] = defaultdict(
            lambda: defaultdict(int)
        )

    def record(self, method: str, outcome: str) -> None:
        with self._lock:
            self._counts[method][outcome] += 1

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {method: dict(outcomes) for method, outcomes in self._counts.items()}

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
