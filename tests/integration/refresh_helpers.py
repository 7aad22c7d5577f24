"""Shared harness of the refresh protocol tests: a clock shared with the simulator, AWS fault
injection around the real (moto) clients, and the invariant every test ends on.

Faults are injected by wrapping the boto3 client the layer uses (``appauth.aws.set_client``):
the calls that are not failed go to moto unchanged.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from botocore.exceptions import ClientError

from appauth import aws
from appauth.alipay.client import TOKEN_METHOD, AlipayClient
from appauth.alipay.models import TokenGrant
from appauth.parking import drain_parked
from appauth.refresh import Refresher, RefreshReport
from appauth.runtime import runtime
from appauth.store import STATUS_GRANTED, STATUS_NEEDS_REAUTH, STATUS_REVOKED
from appauth_dev.simulator import SimulatorControl

# Long enough for every pair to be due (hygiene: 90 days) and every backoff to have passed.
DUE_AFTER = timedelta(days=91)
BETWEEN_RUNS = timedelta(hours=1)  # the template's default schedule


class LambdaKilled(BaseException):
    """The function died mid-run (timeout, out of memory): nothing after this point runs."""


@dataclass
class Clock:
    """The service's clock and the simulator's, moved together instead of sleeping."""

    control: SimulatorControl
    offset: timedelta = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, delta: timedelta) -> None:
        self.offset += delta
        self.control.advance_clock(delta.total_seconds())


def client_error(code: str, operation: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "injected"}}, operation)


@dataclass
class _Planned:
    error: BaseException
    when: Callable[[dict[str, Any]], bool]


@dataclass
class FaultyClient:
    """A boto3 client whose named operations fail as planned, the rest passing through. Every
    call is recorded by name (paginated operations as ``paginate:<operation>``)."""

    real: Any
    plan: dict[str, list[_Planned]] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    fired: int = 0  # planned failures raised so far

    def fail(
        self,
        operation: str,
        error: BaseException,
        times: int = 1,
        *,
        when: Callable[[dict[str, Any]], bool] = lambda _kwargs: True,
    ) -> None:
        """Fail the next ``times`` calls of ``operation`` whose keyword arguments match ``when``."""
        self.plan.setdefault(operation, []).extend(_Planned(error, when) for _ in range(times))

    def fail_always(
        self,
        operation: str,
        error: BaseException,
        *,
        when: Callable[[dict[str, Any]], bool] = lambda _kwargs: True,
    ) -> None:
        self.fail(operation, error, times=10_000, when=when)

    def heal(self) -> None:
        self.plan.clear()

    def get_paginator(self, operation: str) -> Any:
        paginator = self.real.get_paginator(operation)
        calls = self.calls

        planned = self.plan.get(f"paginate:{operation}", [])
        client = self

        class Counted:
            def paginate(self, **kwargs: Any) -> Any:
                calls.append(f"paginate:{operation}")
                if planned:
                    client.fired += 1
                    raise planned.pop(0).error
                return paginator.paginate(**kwargs)

        return Counted()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.real, name)
        if not callable(attribute) or name in ("exceptions", "meta"):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            pending = self.plan.get(name, [])
            planned = next((p for p in pending if p.when(kwargs)), None)
            if planned is not None:
                pending.remove(planned)
                self.fired += 1
                raise planned.error
            return attribute(*args, **kwargs)

        return call


def for_merchant(auth_app_id: str) -> Callable[[dict[str, Any]], bool]:
    """``when`` for a call about this merchant app (its key, or its id in a message body)."""
    return lambda kwargs: auth_app_id in repr(kwargs)


def inject(service_name: str) -> FaultyClient:
    """Wrap the layer's client for ``service_name`` (built now, against moto)."""
    faulty = FaultyClient(getattr(aws, service_name)())
    aws.set_client(service_name, faulty)
    # Collaborators built earlier hold the real client: rebuild them on next use.
    for cached in ("store", "sink", "cipher", "events"):
        vars(runtime()).pop(cached, None)
    return faulty


def grant_merchants(
    control: SimulatorControl, count: int, *, merchant_ref: str = "shop-1"
) -> list[TokenGrant]:
    """``count`` merchants authorized at the simulator and stored as the callback would."""
    grants: list[TokenGrant] = []
    client = runtime().client()
    while len(grants) < count:
        size = min(20, count - len(grants))
        code = control.codes(batch_size=size)["app_auth_code"]
        grants.extend(client.exchange_code(code).grants)
    store = runtime().store

    def save(grant: TokenGrant) -> bool:
        return store.save_grant(grant, source="authorization", merchant_ref=merchant_ref).stored

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(save, grants))
    return grants


def alipay(clock: Clock) -> AlipayClient:
    """The service's client on the test clock (lifetimes and ordering count from it)."""
    rt = runtime()
    return AlipayClient(
        rt.credentials(), rt.settings.endpoints, protocol=rt.settings.protocol, clock=clock.now
    )


def refresher(clock: Clock, owner: str = "run-1", *, time_left: float = 900.0) -> Refresher:
    built = runtime().refresher(owner=owner, time_left=lambda: time_left, function_timeout=900.0)
    return replace(built, client=alipay(clock), clock=clock.now, sleep=lambda _seconds: None)


def run_once(clock: Clock, owner: str = "run-1") -> RefreshReport:
    rt = runtime()
    drain_parked(aws.sqs(), rt.settings.parked_queue_url, rt.store)
    return refresher(clock, owner).refresh_due(concurrency=4)


def run_until_quiet(clock: Clock, *, max_runs: int = 24) -> list[RefreshReport]:
    """Scheduled runs, each BETWEEN_RUNS after the last, until one finds nothing due."""
    reports: list[RefreshReport] = []
    for number in range(max_runs):
        clock.advance(BETWEEN_RUNS)
        report = run_once(clock, owner=f"run-{number}")
        reports.append(report)
        if report.due == 0:
            return reports
    raise AssertionError(f"still busy after {max_runs} runs: {reports[-1].as_dict()}")


@dataclass
class HeldRefresh:
    """A refresh run in a thread whose refresh call Alipay (the simulator) holds."""

    hold: dict[str, Any]
    reports: list[RefreshReport]

    @property
    def report(self) -> RefreshReport:
        (report,) = self.reports
        return report


@contextmanager
def refresh_held_at_alipay(
    control: SimulatorControl,
    clock: Clock,
    *,
    owner: str = "held-run",
    after_processing: bool = True,
    auth_app_id: str | None = None,
) -> Iterator[HeldRefresh]:
    """Run a refresh whose call Alipay holds, before or after processing it, while the body
    does what must happen meanwhile; on exit the call is released and the run finishes."""
    target = {"auth_app_id": auth_app_id} if auth_app_id else {}
    control.add_rule(
        method=TOKEN_METHOD,
        grant_type="refresh_token",
        fault="hold",
        after_processing=after_processing,
        count=1,
        **target,
    )
    reports: list[RefreshReport] = []
    worker = threading.Thread(target=lambda: reports.append(run_once(clock, owner=owner)))
    worker.start()
    held = HeldRefresh(control.wait_for_hold(timeout=10), reports)
    try:
        yield held
    finally:
        control.release(held.hold["id"])
        worker.join(timeout=30)
    assert reports, "the held run did not finish"


def stored_pair(auth_app_id: str) -> tuple[str, str] | None:
    stored = runtime().store.get(auth_app_id)
    if stored is None or stored.sealed is None:
        return None
    return runtime().store.open_tokens(stored)


def assert_never_granted_with_a_dead_pair(control: SimulatorControl, auth_app_id: str) -> str:
    """The invariant: ``granted`` holds the pair Alipay last issued (and accepts); otherwise the
    item is ``needs_reauth``/``revoked`` with an event, and only when Alipay confirms its pair
    is dead. Returns the status."""
    stored = runtime().store.get(auth_app_id)
    assert stored is not None
    record = control.merchant(auth_app_id)
    assert record is not None
    pair = stored_pair(auth_app_id)
    assert pair is not None
    ours = next(p for p in record["pairs"] if p["app_auth_token"] == pair[0])
    if stored.status == STATUS_GRANTED:
        current = record["current"]
        assert (current["app_auth_token"], current["app_refresh_token"]) == pair, (
            "granted, but not with the pair Alipay last issued"
        )
        assert ours["token_accepted"]
        assert ours["refresh_accepted"]
    else:
        assert stored.status in (STATUS_NEEDS_REAUTH, STATUS_REVOKED)
        assert not ours["token_accepted"], f"{stored.status} although Alipay accepts the pair"
        names = {e.event for e in runtime().store.events(auth_app_id)}
        assert names & {"needs_reauth", "authorization_revoked"}
    return stored.status
