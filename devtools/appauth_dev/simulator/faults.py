"""Injected faults (latency, errors, timeouts, rate limits, corrupted answers) and statistics.

Every random decision comes from one seeded generator, so a test that sets a rate of 0 or 1, or
a fixed seed, sees the same outcomes on every run.
"""

from __future__ import annotations

import random
import threading
import time
from collections import defaultdict, deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
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


class FaultInjector:
    def __init__(self, seed: int | None = None) -> None:
        self._seed = seed
        self._lock = threading.Lock()
        self._rng = random.Random(seed)  # noqa: S311 - fault injection, seedable on purpose
        self._faults = Faults()
        self._admitted: deque[float] = deque()

    @property
    def faults(self) -> Faults:
        with self._lock:
            return self._faults

    def update(self, changes: Mapping[str, Any]) -> Faults:
        with self._lock:
            self._faults = self._faults.updated(changes)
            return self._faults

    def reset(self) -> None:
        with self._lock:
            self._faults = Faults()
            self._rng.seed(self._seed)
            self._admitted.clear()

    def reseed(self, seed: int) -> None:
        """Restart the random decisions from ``seed`` (until the next reset)."""
        with self._lock:
            self._rng.seed(seed)

    def decide(self) -> Decision:
        with self._lock:
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
