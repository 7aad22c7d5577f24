"""No secret in anything the service emits, with every logger at DEBUG.

Every flow runs through the real handlers (callback with its exchange, notify, token query,
refresh rotation and the verification sweep) and their failure paths (Alipay errors, timeouts
and forged answers, AWS errors, parking, misconfiguration) with the service's loggers, Powertools
and botocore/boto3/urllib3/requests at DEBUG (POWERTOOLS_LOG_LEVEL=DEBUG as well). Captured:
every log record of every logger (message, extras, exception), the handlers' stdout/stderr (the
Powertools JSON lines and the EMF metric documents), every answer and page that is not the one
designed to carry a value (the start page carries its state; get_token its token), every item of
every table (audit events, idempotency records) and every EventBridge PutEvents entry.

Secrets: every app_auth_token, app_refresh_token and app_auth_code the simulator issued (its
record of issued pairs) or the notification vectors carry, the app private key (any 40-character
run of its base64, in all three forms), the state secret, every state's and notification's
signature, and the KMS data keys that seal the tokens (their plaintext, base64).

The simulator's and moto's own logs are Alipay's and AWS's side, not the service's: left out.
"""

from __future__ import annotations

import base64
import importlib
import io
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from types import ModuleType
from typing import Any
from urllib.parse import quote, urlencode

import boto3
import pytest

import refresh_app
import token_query_app
from appauth import aws
from appauth.alipay.client import TOKEN_METHOD
from appauth.alipay.models import TokenGrant
from appauth.lookup import LookupCache
from appauth.runtime import reset_runtime, runtime
from appauth_dev.local_service import FakeContext
from appauth_dev.simulator import SimulatorControl
from tests.conftest import read_vector_file
from tests.integration.callback_helpers import (
    REGION,
    HttpResponse,
    alipay_signed,
    approve,
    grant_notification,
    invoke,
    load_event,
    raw_values,
    redirect_event,
    set_faults,
    start,
    url_query,
    windows,
)
from tests.integration.conftest import ServiceStack
from tests.integration.fuzz_helpers import (
    AwsCalls,
    RecordCapture,
    Snapshots,
    every_log_record,
    reconfigure,
)
from tests.integration.refresh_helpers import Clock, client_error, for_merchant, inject, refresher

pytestmark = [
    pytest.mark.filterwarnings("ignore:No application metrics to publish"),
    pytest.mark.usefixtures("atomic_moto"),  # refresh runs use a thread pool
]
THIRD_PARTY = ("botocore", "boto3", "urllib3", "requests", "aws_lambda_powertools")
# Alipay's side and AWS's side of the loopback: not what the service logs.
NOT_THE_SERVICE = ("appauth_dev.simulator", "werkzeug", "moto")
KEY_FILES = (
    "keys/app_private_pkcs8.pem",
    "keys/app_private_pkcs1.pem",
    "keys/app_private_pkcs8.bare.txt",
)
KEY_WINDOW = 40
GRANTED, CANCELLED = "callback_notify_granted.json", "callback_notify_cancelled.json"
LONG_AGO = timedelta(days=400)


@dataclass
class Debug:
    """The service at DEBUG, with everything it emits captured and every secret it saw noted."""

    service: ServiceStack = field(repr=False)
    callback: ModuleType = field(repr=False)
    records: RecordCapture = field(repr=False)
    calls: AwsCalls = field(repr=False)
    capsys: pytest.CaptureFixture[str] = field(repr=False)
    powertools_lines: io.StringIO = field(repr=False)
    answers: list[str] = field(default_factory=list)  # answers and pages (not designed carriers)
    output: list[str] = field(default_factory=list)  # stdout and stderr
    codes: set[str] = field(default_factory=set)
    states: set[str] = field(default_factory=set)
    notified: set[str] = field(default_factory=set)  # pairs and signs of our own notifications

    @property
    def control(self) -> SimulatorControl:
        return SimulatorControl(self.service.simulator.url)

    # --- the callback function ---------------------------------------------------------------

    def start_page(self, **query: str) -> dict[str, Any]:
        page = start(self.callback.lambda_handler, **query)  # the start page carries its state
        self.states.add(url_query(page["authorization_url"])["state"])
        return page

    def consent(self) -> dict[str, str]:
        redirect = approve(self.service.simulator.url, self.start_page()["authorization_url"])
        self.codes.add(redirect["app_auth_code"])
        return redirect

    def redirect(self, redirect: dict[str, str], *, json_answer: bool = False) -> HttpResponse:
        accept = "application/json" if json_answer else None
        response = invoke(self.callback.lambda_handler, redirect_event(redirect, accept=accept))
        self.answers.append(response.body)
        return response

    def notify(self, body: str | None = None, name: str = GRANTED) -> HttpResponse:
        event = load_event(name)
        if body is not None:
            event["body"] = body
        response = invoke(self.callback.lambda_handler, event)
        self.answers.append(response.body)
        return response

    def mint(self, **body: Any) -> dict[str, Any]:
        minted = self.control.codes(**body)
        self.codes.add(minted["app_auth_code"])
        return minted

    # --- token query and refresh -------------------------------------------------------------

    def query(self, event: dict[str, Any], *, carries_token: bool = False) -> dict[str, Any]:
        answer: dict[str, Any] = token_query_app.lambda_handler(
            event, FakeContext(function_name="appauth-token-query")
        )
        if not (carries_token and answer.get("ok")):
            self.answers.append(json.dumps(answer, ensure_ascii=False))
        return answer

    def refresh(self, event: dict[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = refresh_app.lambda_handler(
            event, FakeContext(function_name="appauth-refresh", remaining_ms=900_000)
        )
        self.answers.append(json.dumps(answer, ensure_ascii=False))
        return answer

    def take_output(self) -> None:
        out, err = self.capsys.readouterr()
        self.output += [out, err, self.powertools_lines.getvalue()]


@pytest.fixture
def debug(
    service: ServiceStack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Debug]:
    monkeypatch.setenv("POWERTOOLS_LOG_LEVEL", "DEBUG")
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")
    # Cold starts in this environment: the modules read it at import; the idempotent wrappers
    # are built on first use, on this test's clients.
    callback = importlib.import_module("callback_app")
    monkeypatch.setattr(callback, "_idempotent_complete", None)
    monkeypatch.setattr(callback, "_idempotent_process", None)
    importlib.reload(token_query_app)
    importlib.reload(refresh_app)
    monkeypatch.setattr(token_query_app, "cache", LookupCache(max_age_seconds=30.0))
    # What the functions' Powertools handler writes (to stdout in Lambda), kept here.
    lines = io.StringIO()
    powertools = callback.logger.registered_handler
    assert isinstance(powertools, logging.StreamHandler)
    # Swapped, not setStream(): that flushes the old stream, maybe an earlier test's, closed.
    previous, powertools.stream = powertools.stream, lines
    try:
        with every_log_record("appauth", *THIRD_PARTY) as records:
            yield Debug(service, callback, records, AwsCalls(), capsys, lines)
    finally:
        powertools.stream = previous


# --- the secrets, and where they must not be ----------------------------------------------------


def _vector_notification_secrets() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {"app_auth_token": set(), "app_refresh_token": set()}
    found |= {"app_auth_code": set(), "notification sign": set()}
    for name in (GRANTED, CANCELLED):
        params = dict(url_query("?" + load_event(name)["body"]))
        found["notification sign"].add(params["sign"])
        detail = json.loads(params["biz_content"]).get("detail", {})
        for kind in ("app_auth_token", "app_refresh_token", "app_auth_code"):
            if detail.get(kind):
                found[kind].add(detail[kind])
    return found


def _secrets(debug: Debug) -> dict[str, set[str]]:
    """Every secret the flows saw, by kind (key windows are checked apart: see _key_leaks)."""
    found = _vector_notification_secrets()
    state = debug.service.simulator.state
    for auth_app_id in state.merchant_ids():
        record = state.merchant_record(auth_app_id)
        assert record is not None
        for pair in record["pairs"]:
            found["app_auth_token"].add(pair["app_auth_token"])
            found["app_refresh_token"].add(pair["app_refresh_token"])
    found["app_auth_code"] |= debug.codes
    found["state signature"] = {state_token.split(".")[2] for state_token in debug.states}
    found["state secret"] = {debug.service.aws.state_secret}
    found["KMS data key"] = {base64.b64encode(key).decode() for key in debug.calls.plaintexts}
    found["own notification's pair or sign"] = set(debug.notified)
    for kind in ("app_auth_token", "app_refresh_token", "app_auth_code", "KMS data key"):
        assert found[kind], f"no {kind} seen: the flows did not run"
    return {kind: values for kind, values in found.items() if values}


_BASE64_RUN = re.compile(rf"[A-Za-z0-9+/]{{{KEY_WINDOW},}}")


def _key_windows() -> set[str]:
    found: set[str] = set()
    for name in KEY_FILES:
        found |= windows(read_vector_file(name), KEY_WINDOW)
    return found


def _key_leaks(text: str, key_windows: set[str]) -> list[str]:
    """Runs of base64 in ``text`` that share a 40-character window with the private key."""
    leaks = []
    for run in _BASE64_RUN.findall(text):
        if any(run[i : i + KEY_WINDOW] in key_windows for i in range(len(run) - KEY_WINDOW + 1)):
            leaks.append(run[:60])
    return leaks


def _leaks(channels: dict[str, str], secrets: dict[str, set[str]]) -> dict[str, str]:
    """``{"<kind> in <channel>": "…where it stands…"}``, one example per kind and channel."""
    key_windows = _key_windows()
    found: dict[str, str] = {}
    for channel, text in channels.items():
        for kind, values in secrets.items():
            for value in values:
                for spelled in {value, quote(value, safe="")}:
                    at = text.find(spelled)
                    if at >= 0:
                        context = text[max(0, at - 100) : at + 12].replace("\n", " ")
                        found.setdefault(f"{kind} in {channel}", f"…{context}…")
        for run in _key_leaks(text, key_windows):
            found.setdefault(f"app private key in {channel}", f"…{run}…")
    return found


def _assert_nothing_leaked(debug: Debug) -> None:
    """First what the service itself emits, then what the libraries it uses log at DEBUG."""
    debug.take_output()
    secrets = _secrets(debug)
    by_logger: dict[str, list[str]] = {}
    for record in debug.records.records:
        if not record.logger.startswith(NOT_THE_SERVICE):
            by_logger.setdefault(f"log {record.logger} ({record.where})", []).append(record.text)
    assert any(name.startswith("log appauth") for name in by_logger)  # the capture worked
    assert any(name.startswith("log botocore") for name in by_logger)
    stack = debug.service.aws.stack
    snapshots = Snapshots(stack, debug.service.aws.endpoint_url)
    stdout = "stdout/stderr (Powertools log lines, EMF metrics)"
    ours = {
        stdout: "\n".join(debug.output),
        "answers and pages": "\n".join(debug.answers),
        "tables (audit events, idempotency records)": "\n".join(
            raw_values(snapshots.take().items())
        ),
        "EventBridge PutEvents": json.dumps(debug.calls.named("PutEvents"), ensure_ascii=False),
    }
    assert '"_aws"' in ours[stdout]  # metrics were printed
    assert "appauth.authorization" in ours["EventBridge PutEvents"]  # events were published
    ours |= {
        name: "\n".join(texts)
        for name, texts in by_logger.items()
        if not name.startswith(tuple(f"log {lib}" for lib in THIRD_PARTY))
    }
    leaks = _leaks(ours, secrets)
    assert not leaks, _shown(leaks)
    libraries = {name: "\n".join(texts) for name, texts in by_logger.items() if name not in ours}
    leaks = _leaks(libraries, secrets)
    assert not leaks, _shown(leaks)


def _shown(leaks: dict[str, str]) -> str:
    return "secrets leaked:\n" + "\n".join(
        f"- {where}: {seen}" for where, seen in sorted(leaks.items())
    )


# --- the flows ------------------------------------------------------------------------------------


def test_the_callback_and_notify_routes_leak_nothing_at_debug(debug: Debug):
    sim = debug.service.simulator.url
    # The start page, a grant, its reload, a replayed state, a used code, a forged state.
    html_start = invoke(debug.callback.lambda_handler, load_event("callback_start_page.json"))
    assert html_start.status == 200
    granted = debug.consent()
    assert debug.redirect(granted).status == 200
    assert debug.redirect(granted, json_answer=True).status == 200
    other_code = debug.mint()["app_auth_code"]
    assert debug.redirect({**granted, "app_auth_code": other_code}).status == 409
    fresh = debug.consent()
    assert debug.redirect({**fresh, "app_auth_code": granted["app_auth_code"]}).status == 400
    forged = debug.consent()
    assert debug.redirect({**forged, "state": forged["state"][:-4] + "AAAA"}).status == 400
    # Alipay unavailable, slow after processing, forging its answer.
    for faults in (
        {"error_rate": 1},
        {"timeout_rate": 1, "timeout_seconds": 0.2},
        {"response_fault": "tamper"},
    ):
        set_faults(sim, **faults)
        assert debug.redirect(debug.consent(), json_answer=True).status in (502, 503), faults
        set_faults(sim, error_rate=0, timeout_rate=0, response_fault=None)
    # The store refuses: parked; the queue refuses too: the sealed pair in a log line; KMS
    # refuses as well: the pair is lost (alarmed), never written in plaintext anywhere.
    db = inject("dynamodb")
    db.fail_always(
        "transact_write_items", client_error("InternalServerError", "TransactWriteItems")
    )
    assert debug.redirect(debug.consent(), json_answer=True).json()["parked"] is True
    sqs = inject("sqs")
    sqs.fail_always("send_message", client_error("KMS.ThrottlingException", "SendMessage"))
    assert debug.redirect(debug.consent(), json_answer=True).json()["parked"] is True
    kms = inject("kms")
    kms.fail_always("generate_data_key", client_error("KMSInternalException", "GenerateDataKey"))
    assert debug.redirect(debug.consent(), json_answer=True).status == 500
    for faulty in (db, sqs, kms):
        faulty.heal()
    # Notifications: granted, cancelled, tampered, the store refusing (parked for redelivery),
    # and the queue refusing too (Alipay redelivers).
    assert debug.notify().body == "success"
    assert debug.notify(name=CANCELLED).body == "success"
    tampered = load_event(GRANTED)["body"].replace("merchant-42", "merchant-43")
    assert debug.notify(tampered).body == "fail"
    db.fail_always(
        "transact_write_items", client_error("InternalServerError", "TransactWriteItems")
    )
    assert debug.notify(_signed_grant(debug, "2026120100222100000041")).body == "success"  # parked
    sqs.fail_always("send_message", client_error("InternalError", "SendMessage"))
    assert debug.notify(_signed_grant(debug, "2026120100222100000042")).body == "fail"
    db.heal()
    sqs.heal()
    # Misconfigured: the private key is gone from SSM.
    ssm = boto3.client("ssm", region_name=REGION, endpoint_url=debug.service.aws.endpoint_url)
    ssm.delete_parameter(Name=f"{debug.service.aws.ssm_prefix}/app-private-key")
    reset_runtime()  # a new container: it reads its secrets again
    debug.calls.attach()
    assert debug.redirect(debug.consent(), json_answer=True).status == 500

    _assert_nothing_leaked(debug)


def test_the_token_query_leaks_nothing_at_debug(debug: Debug, monkeypatch: pytest.MonkeyPatch):
    grants = _exchange(debug, batch_size=3)
    granted, other, cancelled = (g.auth_app_id for g in grants)
    user = grants[0].user_id
    assert debug.query({"action": "get_token", "auth_app_id": granted}, carries_token=True)["ok"]
    assert debug.query({"action": "get_token", "user_id": user}, carries_token=True)["ok"]
    required = {
        "action": "get_token",
        "auth_app_id": other,
        "required_methods": ["alipay.trade.pay"],
    }
    assert debug.query(required, carries_token=True)["ok"]
    assert debug.query({"action": "describe", "auth_app_id": granted})["ok"]
    assert debug.query({"action": "list"})["ok"]
    report = {"action": "report_invalid", "auth_app_id": granted, "version": 1}
    assert debug.query(report, carries_token=True)["report"] == "valid"
    debug.control.revoke(cancelled)
    confirmed = debug.query({**report, "auth_app_id": cancelled}, carries_token=True)
    assert (confirmed["error"]["code"], confirmed["report"]) == ("revoked", "confirmed")
    assert debug.query({"action": "get_token", "auth_app_id": "2021009999999999"})["ok"] is False
    assert debug.query({"action": "get_token", "auth_app_id": granted, "x": 1})["ok"] is False
    # AWS refusing: a key that does not open (a cold cache: the token must be opened), a
    # throttled table.
    monkeypatch.setattr(token_query_app, "cache", LookupCache(max_age_seconds=30.0))
    kms = inject("kms")
    kms.fail_always("decrypt", client_error("AccessDeniedException", "Decrypt"))
    consistent = {"action": "get_token", "auth_app_id": other, "consistent": True}
    assert debug.query(consistent, carries_token=True)["error"]["code"] == "misconfigured"
    kms.heal()
    db = inject("dynamodb")
    db.fail_always("get_item", client_error("ProvisionedThroughputExceededException", "GetItem"))
    assert debug.query(consistent, carries_token=True)["error"]["code"] == "unavailable"
    db.heal()
    # v3: the query sends the token in its URL (as Alipay's API defines it).
    reconfigure(debug.service, debug.service.simulator, monkeypatch, protocol="v3")
    monkeypatch.setattr(token_query_app, "cache", LookupCache(max_age_seconds=30.0))
    debug.calls.attach()
    assert debug.query({"action": "describe", "auth_app_id": other})["ok"]

    _assert_nothing_leaked(debug)


def test_refresh_and_the_verification_sweep_leak_nothing_at_debug(debug: Debug):
    rotated, deferred, cancelled, unknown, parked = (
        g.auth_app_id for g in _exchange(debug, batch_size=5, age=LONG_AGO)
    )
    control = debug.control
    refresh_rule = {"method": TOKEN_METHOD, "grant_type": "refresh_token", "count": 1}
    control.add_rule(**refresh_rule, auth_app_id=deferred, fault="error")
    control.revoke(cancelled)
    # Alipay rotates the pair and the answer is lost (the refresh token sent is then spent).
    control.add_rule(**refresh_rule, auth_app_id=unknown, fault="timeout", timeout_seconds=0.1)
    db = inject("dynamodb")
    db.fail_always(
        "transact_write_items",
        client_error("InternalServerError", "TransactWriteItems"),
        when=for_merchant(parked),
    )
    first = debug.refresh(load_event("refresh_schedule.json"))
    assert first["due"] == 5, first
    rotated_item = runtime().store.get(rotated)
    assert rotated_item is not None
    assert rotated_item.version == 2
    db.heal()
    # The parked pair through the queue's event source; the lost answer reconciled now.
    sqs = aws.sqs()
    queue = debug.service.aws.stack.parked_queue_url
    messages = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)["Messages"]
    records = [
        {
            **load_event("refresh_parked_sqs.json")["Records"][0],
            "messageId": m["MessageId"],
            "body": m["Body"],
        }
        for m in messages
    ]
    assert debug.refresh({"Records": records}) == {"batchItemFailures": []}
    assert debug.refresh({"auth_app_ids": [unknown]})["merchants"]
    # The verification sweep, a week on (the service's clock and Alipay's moved together).
    clock = Clock(control)
    clock.advance(timedelta(days=8))
    run = refresher(clock, "sweep-1")
    swept = run.verify_due(run.refresh_due(concurrency=2), concurrency=2)
    assert swept.verify_due >= 1, swept.as_dict()

    _assert_nothing_leaked(debug)


# --- helpers of the flows -----------------------------------------------------------------------


def _exchange(debug: Debug, *, batch_size: int, age: timedelta = timedelta(0)) -> list[TokenGrant]:
    """Merchants authorized at the simulator and stored as the callback would (``age`` ago)."""
    minted = debug.mint(batch_size=batch_size)
    grants = list(runtime().client().exchange_code(minted["app_auth_code"]).grants)
    for grant in grants:
        stored = replace(grant, received_at=grant.received_at - age)
        assert runtime().store.save_grant(stored, source="authorization").stored
    return grants


def _signed_grant(debug: Debug, notify_id: str) -> str:
    """A grant notification for a merchant the simulator minted a code for, signed as Alipay
    signs it; its token pair and signature join the secrets."""
    minted = debug.mint()
    tail = f"{notify_id[-6:]}{minted['app_auth_code'][:16]}X01"
    tokens = (f"202612BBnotified{tail}", f"202612BBrenotify{tail}")
    fields = grant_notification(
        debug.service.aws.app_id, minted["auth_app_ids"][0], tokens=tokens, trigger_context={}
    )
    signed = alipay_signed({"notify_id": notify_id, **fields})
    debug.notified |= {*tokens, signed["sign"]}
    return urlencode(signed)
