"""A forged or damaged answer to the callback's code exchange, through the real handler: v2 and
v3, key and certificate mode, AWS on moto, Alipay played by the simulator over real HTTP.

Alipay processed the code (the pair exists at Alipay), but its answer was changed on the way: a
byte of the body or of a v3 header, the certificate SN, or any of the simulator's corruptions.
Principle 2 of DESIGN.md (an Alipay answer is verified before it changes anything) decides: the
unverified pair is neither stored nor parked (a pair parked from a forged answer could be an
attacker's). The code is not burned silently: the merchant reads a clear page asking to
authorize again, the refusal is logged and counted by reason, and the pair Alipay did issue
still arrives by its grant notification (the design's safety net), which stores it.
"""

from __future__ import annotations

import importlib
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from requests.structures import CaseInsensitiveDict

from appauth.runtime import runtime
from appauth_dev.http_front import http_front
from appauth_dev.simulator import RunningSimulator, SimulatorControl
from tests.integration.callback_helpers import (
    CallbackFunction,
    HttpResponse,
    approve,
    emf_documents,
    invoke,
    logs_to_stdout,
    metric_values,
    redirect_event,
    scan_all,
    set_faults,
    start,
    state_item,
)
from tests.integration.conftest import ServiceStack
from tests.integration.fuzz_helpers import (
    AwsCalls,
    Snapshots,
    flip_byte,
    fuzz_examples,
    reconfigure,
    same_kind,
    v2_position_classes,
)

pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")
REJECTED = "Alipay's answer could not be verified; nothing was stored. Please authorize again."
# The parts of a v3 answer a proxy could change: the body and the signed headers.
V3_PARTS = ("body", "alipay-timestamp", "alipay-nonce", "alipay-signature")
# Changes outside what Alipay signed that leave its content and signature intact: the sign's
# base64 may spell the same bytes otherwise, and an SN member renamed is an unknown member (one
# certificate configured: it verifies). Only then may the answer be taken.
BENIGN = {"sign value", "alipay_cert_sn key", "alipay-signature"}


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class InTransit(requests.adapters.HTTPAdapter):
    """The real transport, with Alipay's answers handed to ``change`` on their way back."""

    def __init__(self) -> None:
        super().__init__()
        self.change: Callable[[Answer], Answer] | None = None
        self.changed: list[tuple[Answer, Answer]] = []  # (as Alipay sent it, as delivered)

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        response = super().send(request, **kwargs)
        if self.change is None:
            return response
        sent = Answer(
            response.status_code,
            {k.lower(): v for k, v in response.headers.items()},
            response.raw.read(decode_content=True),
        )
        delivered = self.change(sent)
        self.changed.append((sent, delivered))
        headers = {k: v for k, v in delivered.headers.items() if k != "content-length"}
        response.status_code = delivered.status
        response.headers = CaseInsensitiveDict(
            {**headers, "content-length": str(len(delivered.body))}
        )
        response.raw = io.BytesIO(delivered.body)
        return response


@dataclass(repr=False)
class Exchange(CallbackFunction):
    """The callback function, in one protocol and signing mode, with Alipay's answers in transit."""

    protocol: str
    mode: str
    transit: InTransit
    calls: AwsCalls
    snapshots: Snapshots
    events_before: int = 0  # lifecycle events published before the last request

    def __repr__(self) -> str:  # hypothesis prints it with a failing example: keep it short
        return f"Exchange({self.protocol}, {self.mode} mode)"

    @property
    def simulator(self) -> RunningSimulator:
        return self.service.simulator

    def consent(self) -> dict[str, str]:
        page = start(self.handler, merchant_ref="forged-1")
        return approve(self.simulator.url, page["authorization_url"])

    def complete(self, redirect: dict[str, str]) -> HttpResponse:
        self.events_before = len(self.calls.named("PutEvents"))
        return invoke(self.handler, redirect_event(redirect, accept="application/json"))

    def issued(self, redirect: dict[str, str]) -> list[tuple[str, str, str]]:
        """The pairs Alipay issued for this redirect's code: (auth_app_id, token, refresh)."""
        found = self.simulator.state.issued_pairs(redirect["app_auth_code"])
        assert found is not None, "Alipay did not process the code"
        return [(p.auth_app_id, p.app_auth_token, p.app_refresh_token) for p in found[0]]

    def assert_refused_and_nothing_kept(
        self, response: HttpResponse, redirect: dict[str, str], reason: str, message: str
    ) -> None:
        assert response.status == 502, response.body
        error = response.json()["error"]
        assert (error["reason"], error["message"]) == (reason, message)
        for auth_app_id, _, _ in self.issued(redirect):
            assert self.store.get(auth_app_id) is None
            assert self.store.events(auth_app_id) == []
        assert self.parked() == 0
        assert len(self.calls.named("PutEvents")) == self.events_before
        # No idempotency record: nothing to replay. The state stays spent: the merchant is told
        # to authorize again, and a reload says the link was used (never a second exchange).
        stack = self.service.aws.stack
        records = scan_all(self.snapshots.dynamodb, stack.idempotency_table)
        assert all(redirect["app_auth_code"] not in json.dumps(r) for r in records)
        item = state_item(self.snapshots.dynamodb, stack.tokens_table, redirect["state"])
        assert item is not None
        assert "consumed_at" in item
        reload = self.complete(redirect)
        assert (reload.status, reload.json()["error"]["reason"]) == (409, "state_replayed")

    def assert_stored_as_issued(self, redirect: dict[str, str]) -> None:
        for auth_app_id, token, refresh in self.issued(redirect):
            stored = self.store.get(auth_app_id)
            assert stored is not None
            assert self.store.open_tokens(stored) == (token, refresh)


VARIANTS = [("v2", "key"), ("v3", "key"), ("v2", "cert"), ("v3", "cert")]


@pytest.fixture
def exchange(
    request: pytest.FixtureRequest, service: ServiceStack, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Exchange]:
    protocol, mode = request.param
    simulator: RunningSimulator = request.getfixturevalue(
        "cert_simulator" if mode == "cert" else "simulator"
    )
    configured = reconfigure(service, simulator, monkeypatch, protocol=protocol, signing_mode=mode)
    module = importlib.import_module("callback_app")
    # A cold start: the idempotent wrapper is built on first use, on this test's client.
    monkeypatch.setattr(module, "_idempotent_complete", None)
    transit = InTransit()
    runtime().client().session.mount(simulator.url, transit)
    snapshots = Snapshots(configured.aws.stack, configured.aws.endpoint_url)
    yield Exchange(
        module=module,
        service=configured,
        db=snapshots.dynamodb,
        protocol=protocol,
        mode=mode,
        transit=transit,
        calls=AwsCalls(),
        snapshots=snapshots,
    )
    transit.close()


# --- one byte changed, in every position class, per protocol and mode -------------------------


def _classes(answer: Answer, protocol: str, mode: str) -> dict[str, list[int]]:
    if protocol == "v2":
        return v2_position_classes(answer.body.decode("utf-8"))
    parts = {"body": list(range(len(answer.body)))}
    for name in V3_PARTS[1:] + (("alipay-sn",) if mode == "cert" else ()):
        parts[name] = list(range(len(answer.headers[name])))
    return parts


def _changed(answer: Answer, part: str, offset: int, byte: int) -> Answer:
    """A byte changed where a token, a digit or a name would be: to another of its kind where it
    is a letter or digit (still valid JSON: only the signature can tell), else to ``byte``."""
    if part in answer.headers:
        value = answer.headers[part].encode("ascii")
        # A header stays printable ASCII on the wire.
        replacement = same_kind(value[offset], 0x21 + byte % 94)
        changed = flip_byte(value, offset, replacement).decode("ascii")
        return Answer(answer.status, {**answer.headers, part: changed}, answer.body)
    replacement = same_kind(answer.body[offset], byte)
    return Answer(answer.status, answer.headers, flip_byte(answer.body, offset, replacement))


def _offsets(raw: bytes, offsets: list[int]) -> list[int]:
    """The letters and digits among ``offsets`` (where a forger changes data), else all."""
    alphanumeric = [i for i in offsets if chr(raw[i]).isascii() and chr(raw[i]).isalnum()]
    return alphanumeric or offsets


def _expected_classes(protocol: str, mode: str) -> set[str]:
    if protocol == "v3":
        return set(V3_PARTS) | ({"alipay-sn"} if mode == "cert" else set())
    members = {"node", "sign"} | ({"alipay_cert_sn"} if mode == "cert" else set())
    return {f"{m} {part}" for m in members for part in ("key", "value")} | {"punctuation"}


@pytest.mark.parametrize("exchange", VARIANTS, indirect=True, ids=["-".join(v) for v in VARIANTS])
@settings(
    max_examples=fuzz_examples(1, cost=500),  # an example: a dozen authorizations
    derandomize=True,
    database=None,
    deadline=None,
    # Each example is a dozen authorizations: a failure is reported as found, not shrunk.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_an_answer_changed_anywhere_is_refused_and_nothing_is_kept(
    exchange: Exchange, data: st.DataObject
):
    """Every position class of the answer, once per example: a byte changed there. (Drawn
    before the request: the handler would take a draw's exception for its own.)"""
    classes = sorted(_expected_classes(exchange.protocol, exchange.mode))
    for part in data.draw(st.permutations(classes), label="order"):
        at = data.draw(st.integers(0, 2**16), label=f"where in {part}")
        byte = data.draw(st.integers(0, 255), label=f"byte in {part}")
        seen: list[str] = []

        def change(
            answer: Answer, part: str = part, at: int = at, byte: int = byte, seen: list[str] = seen
        ) -> Answer:
            found = _classes(answer, exchange.protocol, exchange.mode)
            seen.extend(found)
            raw = answer.headers[part].encode() if part in answer.headers else answer.body
            offsets = _offsets(raw, found[part])
            return _changed(answer, part, offsets[at % len(offsets)], byte)

        redirect = exchange.consent()
        exchange.transit.change = change
        response = exchange.complete(redirect)
        exchange.transit.change = None
        assert sorted(seen) == classes  # every class of the real answer is exercised
        if response.status == 200:
            assert part in BENIGN, f"an answer changed in {part} was taken"
            exchange.assert_stored_as_issued(redirect)
        else:
            exchange.assert_refused_and_nothing_kept(
                response, redirect, "alipay_answer_rejected", REJECTED
            )


# --- every corruption the simulator can make ---------------------------------------------------

UNKNOWN = (
    "Alipay did not confirm the authorization in time; if it went through, it will be recorded "
    "from Alipay's notification, otherwise please authorize again"
)
# What the merchant is told: the answer is refused, or (too big, a proxy's page) its outcome
# is unknown, since Alipay may have used the code.
FAULTS = {
    "tamper": ("alipay_answer_rejected", REJECTED),
    "wrong_key": ("alipay_answer_rejected", REJECTED),
    "drop_sign": ("alipay_answer_rejected", REJECTED),
    "garbage": ("alipay_answer_rejected", REJECTED),
    "truncate": ("alipay_answer_rejected", REJECTED),
    "oversized": ("outcome_unknown", UNKNOWN),
    "html_502": ("outcome_unknown", UNKNOWN),
}


@pytest.mark.parametrize("exchange", [("v2", "key"), ("v3", "key")], indirect=True)
def test_each_corruption_is_refused_counted_and_logged_and_nothing_is_kept(
    exchange: Exchange, capsys: pytest.CaptureFixture[str]
):
    """(tamper and wrong_key in v2 are in test_callback too; here with what else must hold.)"""
    for fault, (reason, message) in FAULTS.items():
        redirect = exchange.consent()
        set_faults(exchange.simulator.url, response_fault=fault)
        capsys.readouterr()
        with logs_to_stdout(exchange.module):
            response = exchange.complete(redirect)
        out = capsys.readouterr().out
        set_faults(exchange.simulator.url, response_fault=None)
        assert exchange.issued(redirect), fault  # Alipay did issue the pair
        exchange.assert_refused_and_nothing_kept(response, redirect, reason, message)
        # Not silent: logged with its reason and counted by reason (alarmable).
        logs = [json.loads(line) for line in out.splitlines() if '"Request refused"' in line]
        assert [(log["reason"], log["status"]) for log in logs] == [(reason, 502)], fault
        counted = metric_values(emf_documents(out), "AuthorizationsFailedByReason")
        assert counted == [({"reason": reason, "service": "appauth"}, [1.0])], fault
    # Nothing was wedged: the next authorization goes through and stores what Alipay issued.
    redirect = exchange.consent()
    assert exchange.complete(redirect).status == 200
    exchange.assert_stored_as_issued(redirect)


@pytest.mark.parametrize("exchange", [("v2", "key")], indirect=True)
def test_the_pair_behind_a_refused_answer_arrives_by_notification(exchange: Exchange):
    """The design's safety net: Alipay's grant notification carries the pair the forged answer
    hid; the notify route verifies and stores it, and nothing from the forged answer is used."""
    control = SimulatorControl(exchange.simulator.url)
    with http_front(exchange.handler) as front:
        control.behaviour(notify_url=f"{front.url}/alipay/notify")
        control.notification_settings(hold=True)
        redirect = exchange.consent()
        set_faults(exchange.simulator.url, response_fault="tamper")
        response = exchange.complete(redirect)
        set_faults(exchange.simulator.url, response_fault=None)
        exchange.assert_refused_and_nothing_kept(
            response, redirect, "alipay_answer_rejected", REJECTED
        )

        [sent] = control.deliver_notifications()

    assert sent["delivered"], sent
    exchange.assert_stored_as_issued(redirect)
    [(auth_app_id, _, _)] = exchange.issued(redirect)
    stored = exchange.store.get(auth_app_id)
    assert stored is not None
    assert stored.status == "granted"
    [event] = exchange.store.events(auth_app_id)
    assert (event.event, event.detail["source"]) == ("token_pair_stored", "notification")
