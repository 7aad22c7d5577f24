"""A bounded load driver for the local service: concurrent requests on loopback, capped in count
and in time, with throughput, latency, error rate and 5xx counted.

Shared by ``make bench`` (the load rows of its table) and ``tests/e2e/test_load.py`` (a small
bounded run in ``make test``). A load is a list of requests, each a callable that makes one
request and says how it went (:class:`Outcome`); :func:`run_load` sends them from
``concurrency`` threads and stops sending when ``time_limit`` has passed, so a run always ends.

The scenarios of the local service (:class:`~appauth_dev.local_cmd.FrontedService`):

- callback: merchants authorized up front (:func:`authorize_merchants`: the start page through
  the HTTP front, then Alipay's consent page on the simulator), then their redirects to
  ``/alipay/callback`` sent concurrently (:func:`callback_requests`);
- token query: ``get_token`` invocations through a Lambda client (boto3's or
  :class:`~appauth_dev.local_lambda.LocalLambdaClient`), each answer checked against the token
  the simulator issued (:func:`token_query_requests`);
- afterwards, :func:`token_mismatches` compares every stored pair with the simulator's record.

Nothing here prints or keeps a token, code or state: failures are described by status and kind.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import requests

if TYPE_CHECKING:
    from appauth.store import TokenStore
    from appauth_dev.local_cmd import FrontedService
    from appauth_dev.simulator.control import SimulatorControl

REQUEST_TIMEOUT = 30.0


@dataclass(frozen=True)
class Outcome:
    """How one request went: ``ok``, the HTTP status if there was one, and when it failed a short
    reason (a status, an error code or an exception's type; never a secret)."""

    ok: bool
    status: int | None = None
    failure: str | None = None


Request = Callable[[], Outcome]


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` in 0..1) of a non-empty sample."""
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]


@dataclass
class LoadReport:
    """What one run did. ``not_sent`` were left when the time limit passed."""

    name: str
    concurrency: int
    time_limit: float
    attempted: int = 0
    succeeded: int = 0
    server_errors: int = 0  # answered 5xx
    not_sent: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list, repr=False)  # seconds, sent ones
    failures: Counter[str] = field(default_factory=Counter)

    @property
    def failed(self) -> int:
        return self.attempted - self.succeeded

    @property
    def throughput(self) -> float:
        """Successful requests per second over the run."""
        return self.succeeded / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def error_rate(self) -> float:
        return self.failed / self.attempted if self.attempted else 0.0

    def latency(self, fraction: float) -> float | None:
        """The nearest-rank percentile of the latencies, in seconds (None: nothing was sent)."""
        return percentile(self.latencies, fraction) if self.latencies else None

    def as_dict(self) -> dict[str, Any]:
        p50, p99 = self.latency(0.5), self.latency(0.99)
        return {
            "name": self.name,
            "concurrency": self.concurrency,
            "time_limit_seconds": self.time_limit,
            "attempted": self.attempted,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "server_errors": self.server_errors,
            "not_sent": self.not_sent,
            "elapsed_seconds": round(self.elapsed, 3),
            "throughput_per_second": round(self.throughput, 2),
            "error_rate": self.error_rate,
            "latency_p50_ms": None if p50 is None else round(p50 * 1000, 2),
            "latency_p99_ms": None if p99 is None else round(p99 * 1000, 2),
            "failures": dict(self.failures),
        }


def run_load(
    name: str,
    load: Sequence[Request],
    *,
    concurrency: int,
    time_limit: float,
    clock: Callable[[], float] = time.monotonic,
) -> LoadReport:
    """Send every request of ``load`` from ``concurrency`` threads until they are all sent or
    ``time_limit`` seconds have passed (then the rest are counted as not sent). A request that
    raises counts as failed, by the exception's type."""
    if concurrency < 1:
        raise ValueError("concurrency must be at least 1")
    report = LoadReport(name, concurrency, time_limit)
    lock = threading.Lock()
    pending = iter(load)
    started = clock()
    deadline = started + time_limit

    def next_request() -> Request | None:
        with lock:
            request = next(pending, None)
            if request is not None and clock() >= deadline:
                report.not_sent += 1 + sum(1 for _ in pending)
                return None
            return request

    def record(outcome: Outcome, seconds: float) -> None:
        with lock:
            report.attempted += 1
            report.latencies.append(seconds)
            if outcome.status is not None and outcome.status >= 500:
                report.server_errors += 1
            if outcome.ok:
                report.succeeded += 1
            else:
                report.failures[outcome.failure or "failed"] += 1

    def worker() -> None:
        while (request := next_request()) is not None:
            sent = clock()
            try:
                outcome = request()
            except Exception as error:  # one request's surprise is its own failure
                outcome = Outcome(False, failure=type(error).__name__)
            record(outcome, clock() - sent)

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"load-{name}") as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    report.elapsed = clock() - started
    return report


# --- the callback ------------------------------------------------------------------------


def authorize_merchants(
    fronted: FrontedService, count: int, *, session: requests.Session | None = None
) -> list[dict[str, str]]:
    """``count`` merchants through the start page (the front's ``/alipay/authorize``) and
    Alipay's consent page (the simulator): the query of each one's redirect to the callback,
    not followed yet (each holds a fresh code and a one-time state)."""
    http = session or requests.Session()
    redirects = []
    for _ in range(count):
        response = http.get(
            f"{fronted.front.url}/alipay/authorize",
            headers={"Accept": "application/json"},
            timeout=REQUEST_TIMEOUT,
        )
        if response.status_code != 200:
            raise RuntimeError(f"the start page answered {response.status_code}")
        redirects.append(fronted.service.approve(response.json()["authorization_url"]))
    return redirects


@dataclass
class Granted:
    """The merchant apps the callback answered ``granted`` for (filled as requests complete)."""

    auth_app_ids: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, auth_app_ids: Iterable[str]) -> None:
        with self._lock:
            self.auth_app_ids.extend(auth_app_ids)


def callback_requests(
    front_url: str, redirects: Sequence[Mapping[str, str]], granted: Granted
) -> list[Request]:
    """One ``GET /alipay/callback`` per redirect (as the merchant's browser follows it), asking
    for JSON; ok when the answer is 200 ``granted``."""
    local = threading.local()  # one keep-alive session per sending thread

    def request_for(query: Mapping[str, str]) -> Request:
        def send() -> Outcome:
            if not hasattr(local, "session"):
                local.session = requests.Session()
            response = local.session.get(
                f"{front_url}/alipay/callback",
                params=dict(query),
                headers={"Accept": "application/json"},
                timeout=REQUEST_TIMEOUT,
            )
            status = response.status_code
            if status != 200:
                return Outcome(False, status, f"HTTP {status}")
            answer = response.json()
            if answer.get("status") != "granted" or not answer.get("auth_app_ids"):
                return Outcome(False, status, "not granted")
            granted.add(answer["auth_app_ids"])
            return Outcome(True, status)

        return send

    return [request_for(query) for query in redirects]


def grant_merchants(fronted: FrontedService, count: int, *, time_limit: float = 120.0) -> list[str]:
    """``count`` merchants authorized one after the other (start page, consent, callback), as
    a merchant would: their merchant app ids. RuntimeError if any callback failed."""
    granted = Granted()
    redirects = authorize_merchants(fronted, count)
    report = run_load(
        "grant",
        callback_requests(fronted.front.url, redirects, granted),
        concurrency=1,
        time_limit=time_limit,
    )
    if report.failed or report.not_sent:
        raise RuntimeError(f"granting merchants failed: {dict(report.failures)}")
    return granted.auth_app_ids


# --- the token query ---------------------------------------------------------------------


class LambdaInvoker(Protocol):
    """boto3's Lambda client, or :class:`~appauth_dev.local_lambda.LocalLambdaClient`."""

    def invoke(self, *, FunctionName: str, Payload: bytes) -> dict[str, Any]:  # noqa: N803
        ...


def token_query_requests(
    lambda_client: LambdaInvoker,
    function_name: str,
    expected: Mapping[str, str],
    count: int,
) -> list[Request]:
    """``count`` ``get_token`` invocations, round-robin over the merchant apps of ``expected``
    (auth_app_id -> the app_auth_token the simulator issued); ok when the function answers
    ``ok`` with exactly that token."""
    apps = sorted(expected)
    if not apps:
        raise ValueError("no merchant to ask for")

    def request_for(auth_app_id: str) -> Request:
        payload = json.dumps({"action": "get_token", "auth_app_id": auth_app_id}).encode()

        def send() -> Outcome:
            response = lambda_client.invoke(FunctionName=function_name, Payload=payload)
            if response.get("FunctionError"):
                return Outcome(False, 500, "function error")
            answer = json.loads(response["Payload"].read())
            if not answer.get("ok"):
                return Outcome(False, 200, str(answer.get("error", {}).get("code", "refused")))
            if answer.get("app_auth_token") != expected[auth_app_id]:
                return Outcome(False, 200, "not the token Alipay issued")
            return Outcome(True, 200)

        return send

    return [request_for(apps[number % len(apps)]) for number in range(count)]


# --- what was stored ---------------------------------------------------------------------


def issued_tokens(control: SimulatorControl, auth_app_ids: Iterable[str]) -> dict[str, str]:
    """auth_app_id -> the app_auth_token the simulator issued last (its current pair)."""
    tokens = {}
    for auth_app_id in auth_app_ids:
        record = control.merchant(auth_app_id)
        if record is None:
            raise RuntimeError(f"the simulator never saw merchant app {auth_app_id}")
        tokens[auth_app_id] = str(record["current"]["app_auth_token"])
    return tokens


def token_mismatches(
    store: TokenStore, control: SimulatorControl, auth_app_ids: Iterable[str]
) -> list[str]:
    """The merchant apps whose stored pair (opened with the service's key) is not the pair the
    simulator issued last: ids only, never a token."""
    wrong = []
    for auth_app_id in auth_app_ids:
        stored = store.get(auth_app_id)
        record = control.merchant(auth_app_id)
        if stored is None or record is None:
            wrong.append(auth_app_id)
            continue
        current = record["current"]
        pair = (current["app_auth_token"], current["app_refresh_token"])
        if store.open_tokens(stored) != pair:
            wrong.append(auth_app_id)
    return wrong
