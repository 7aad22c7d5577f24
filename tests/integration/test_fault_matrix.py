"""The fault matrix: AWS and Alipay faults x the three flows (the callback's code exchange, the
refresh run, the token query), for the cells that no other test covers.

Every case runs the real handler (or the refresher the handler builds) against the template's
stack on moto and the simulator over HTTP, and ends on the same two checks: the request
succeeded or failed cleanly (a clear answer or page, no traceback, a retry hint exactly when a
retry can help), and nothing was lost: each merchant holds, as its current pair, the pair the
simulator last issued for it (``fault_helpers.assert_nothing_lost``), once the service's own
recovery path ran (the parking queue drained, the last-resort log line re-imported, the grant
notification delivered, the next refresh run). Variants of one cell run in one test, each on
fresh merchants: the stack's setup is most of an integration test's time.

Cells covered elsewhere (not tested again here):

- exchange x Alipay unsigned 20000 ``error``, timeout after processing (502, nothing stored),
  forged answers: test_callback.py; exchange x SSM parameter missing: test_callback.py
  (missing_private_key); exchange x token writes refused, through complete_authorization:
  test_parking.py.
- refresh x DynamoDB throttling and errors, table and queue refusing, answers lost, unusable
  or unsent (timeout, tamper, http_503): test_refresh_faults.py, test_refresh_protocol.py;
  refresh x KMS Decrypt down: test_refresh_protocol.py (kms_down_when_opening); refresh x
  PutEvents raising: test_refresh_races.py (eventbridge_refusing); refresh x Alipay unsigned
  20000: test_refresh.py, test_refresh_protocol.py (backoff).
- token query x DynamoDB, KMS Decrypt and SSM errors: test_token_query.py
  (aws_errors_are_answers, aws_out_of_reach, ssm_failing); x Alipay unsigned 20000 on
  report_invalid: test_token_query.py (report_when_alipay_is_down).
- PutEvents answering FailedEntryCount > 0, the publisher alone: tests/unit/test_lifecycle.py.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from aws_lambda_powertools.utilities import parameters

import refresh_app
import token_query_app
from appauth import aws
from appauth.alipay.client import QUERY_METHOD, TOKEN_METHOD
from appauth.events import PUBLISH_ATTEMPTS
from appauth.lookup import LookupCache
from appauth.parking import RESCUE_FIELD, drain_parked, import_rescued
from appauth.refresh import Outcome
from appauth.runtime import reset_runtime, runtime
from appauth.secrets import SecretsUnavailableError
from appauth.store import STATUS_GRANTED, STATUS_REVOKED
from appauth_dev.http_front import http_front
from appauth_dev.local_service import FakeContext
from appauth_dev.simulator import SimulatorControl
from tests.integration.callback_helpers import (
    HttpResponse,
    approve,
    emf_documents,
    invoke,
    metric_values,
    redirect_event,
    start,
    state_item,
)
from tests.integration.conftest import ServiceStack
from tests.integration.fault_helpers import (
    EVENTBRIDGE_REFUSALS,
    assert_nothing_lost,
    captured_logs,
    issued_pair,
    parked_pairs,
    refuse_event_entries,
    refuse_events,
)
from tests.integration.refresh_helpers import (
    DUE_AFTER,
    Clock,
    assert_never_granted_with_a_dead_pair,
    client_error,
    for_merchant,
    grant_merchants,
    inject,
    run_once,
    run_until_quiet,
)

NOTIFY_PATH = "/alipay/notify"
PARKED_SQS = json.loads(
    (Path(__file__).parents[2] / "events" / "refresh_parked_sqs.json").read_text(encoding="utf-8")
)
# Faults Alipay answers with before processing a call, or a call whose answer never comes.
ALIPAY_FAULTS = ("timeout", "http_503", "rate_limited")


@pytest.fixture
def control(service: ServiceStack) -> SimulatorControl:
    return SimulatorControl(service.simulator.url)


@pytest.fixture
def callback(service: ServiceStack, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    # Imported once the environment is the template's, as a cold start would.
    module = importlib.import_module("callback_app")
    # Its idempotency layer is built on first use with the client of that moment: rebuilt
    # here, so a client a test injects reaches it too.
    monkeypatch.setattr(module, "_idempotent_complete", None)
    return module


def _consent(callback: ModuleType, control: SimulatorControl) -> dict[str, str]:
    """A fresh state from the start page, approved on Alipay's consent page: the redirect."""
    page = start(callback.lambda_handler, merchant_ref="shop-f")
    return approve(control.base_url, page["authorization_url"])


def _redirect(callback: ModuleType, redirect: dict[str, str]) -> HttpResponse:
    return invoke(callback.lambda_handler, redirect_event(redirect, accept="application/json"))


def _assert_clean(response: HttpResponse, status: int, case: object = None) -> None:
    assert response.status == status, (case, response.body)
    assert "Traceback" not in response.body, case
    assert 'File "' not in response.body, case
    # The retry hint exactly when the same link can work again.
    assert ("retry-after" in response.headers) is (status == 503), case


def _state_consumed(service: ServiceStack, redirect: dict[str, str]) -> bool:
    item = state_item(aws.dynamodb(), service.aws.stack.tokens_table, redirect["state"])
    assert item is not None
    return "consumed_at" in item


def _assert_retry_works(
    callback: ModuleType, control: SimulatorControl, redirect: dict[str, str], case: object
) -> None:
    retried = _redirect(callback, redirect)
    _assert_clean(retried, 200, case)
    assert_nothing_lost(control, *retried.json()["auth_app_ids"])


# --- the callback's exchange ------------------------------------------------------------------


def test_exchange_whose_pair_the_store_refuses_is_parked_and_the_drain_stores_it(
    service: ServiceStack, control: SimulatorControl, callback: ModuleType
):
    for service_name, operation, code in [
        ("dynamodb", "transact_write_items", "ThrottlingException"),  # past boto3's retries
        ("dynamodb", "transact_write_items", "InternalServerError"),
        ("kms", "generate_data_key", "ThrottlingException"),  # the pair cannot be sealed
    ]:
        case = (service_name, code)
        redirect = _consent(callback, control)
        faulty = inject(service_name)
        faulty.fail_always(operation, client_error(code, operation))

        response = _redirect(callback, redirect)

        _assert_clean(response, 200, case)
        body = response.json()
        assert (body["status"], body["parked"]) == ("granted", True), case
        (app,) = body["auth_app_ids"]
        assert faulty.fired >= 1, case
        assert runtime().store.get(app) is None, case  # nothing reached the table
        # The parked message holds what Alipay issued; sealed unless KMS was the fault.
        assert parked_pairs() == {app: (issued_pair(control, app), service_name != "kms")}, case
        assert _state_consumed(service, redirect), case  # the pair is kept: the link is spent

        faulty.heal()
        rt = runtime()
        assert drain_parked(aws.sqs(), rt.settings.parked_queue_url, rt.store) == 1, case
        assert_nothing_lost(control, app)
        stored = rt.store.get(app)
        assert stored is not None
        assert stored.merchant_ref == "shop-f", case


def test_exchange_whose_pair_table_and_queue_refuse_is_kept_in_one_log_line(
    control: SimulatorControl, callback: ModuleType
):
    redirect = _consent(callback, control)
    dynamodb, sqs = inject("dynamodb"), inject("sqs")
    dynamodb.fail_always("transact_write_items", client_error("InternalServerError", "Tx"))
    sqs.fail_always("send_message", client_error("ServiceUnavailable", "SendMessage"))

    with captured_logs() as logs:
        response = _redirect(callback, redirect)

    _assert_clean(response, 200)
    (app,) = response.json()["auth_app_ids"]
    assert response.json()["parked"] is True
    (rescued,) = [r for r in logs.records if hasattr(r, RESCUE_FIELD)]
    token, refresh = issued_pair(control, app)
    assert token not in logs.text()  # sealed: ciphertext only
    assert refresh not in logs.text()
    # The operator re-imports the line (alarmed) once AWS is back.
    dynamodb.heal()
    sqs.heal()
    line = json.dumps({RESCUE_FIELD: getattr(rescued, RESCUE_FIELD)})
    assert import_rescued(line, runtime().store).stored
    assert_nothing_lost(control, app)


def _on_table(name: str) -> Callable[[dict[str, Any]], bool]:
    return lambda kwargs: kwargs.get("TableName") == name


def test_dynamodb_refusing_before_the_exchange_is_503_and_the_same_link_works_later(
    service: ServiceStack,
    control: SimulatorControl,
    callback: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
):
    tables = {
        "tokens": service.aws.stack.tokens_table,  # consuming the state
        "idempotency": service.aws.stack.idempotency_table,  # the redirect's idempotency record
    }
    for operation, table, code in [
        ("update_item", "tokens", "ThrottlingException"),
        ("update_item", "tokens", "InternalServerError"),
        ("put_item", "idempotency", "ProvisionedThroughputExceededException"),
    ]:
        case = (operation, table, code)
        redirect = _consent(callback, control)
        dynamodb = inject("dynamodb")
        monkeypatch.setattr(callback, "_idempotent_complete", None)  # rebuilt on the new client
        dynamodb.fail_always(
            operation, client_error(code, operation), when=_on_table(tables[table])
        )

        response = _redirect(callback, redirect)

        _assert_clean(response, 503, case)
        assert dynamodb.fired >= 1, case
        assert service.simulator.state.pair_count() == 0, case  # nothing was exchanged
        assert not _state_consumed(service, redirect), case
        dynamodb.heal()
        _assert_retry_works(callback, control, redirect, case)
        service.simulator.reset()


def test_secrets_unreadable_now_is_503_and_the_same_link_works_later(
    service: ServiceStack, control: SimulatorControl, callback: ModuleType
):
    for code in ("ThrottlingException", "InternalServerError"):
        redirect = _consent(callback, control)
        reset_runtime()  # a cold container: the secrets are read from SSM on first use
        parameters.clear_caches()  # type: ignore[no-untyped-call]
        ssm = inject("ssm")
        ssm.fail_always("get_parameter", client_error(code, "GetParameter"))

        response = _redirect(callback, redirect)

        _assert_clean(response, 503, code)
        assert ssm.fired >= 1, code
        assert service.aws.ssm_prefix not in response.body, code  # named in the log only
        assert service.simulator.state.pair_count() == 0, code
        assert not _state_consumed(service, redirect), code
        ssm.heal()
        _assert_retry_works(callback, control, redirect, code)
        service.simulator.reset()


def test_exchange_with_eventbridge_refusing_still_grants_and_counts_the_failure(
    control: SimulatorControl, callback: ModuleType, capsys: pytest.CaptureFixture[str]
):
    for how in EVENTBRIDGE_REFUSALS:
        redirect = _consent(callback, control)
        put_events_calls = refuse_events(how)
        capsys.readouterr()

        response = _redirect(callback, redirect)

        _assert_clean(response, 200, how)
        (app,) = response.json()["auth_app_ids"]
        assert response.json()["parked"] is False, how
        assert put_events_calls() == PUBLISH_ATTEMPTS, how  # retried, then given up on
        assert_nothing_lost(control, app)
        # The audit event is the durable record; the failed publish is counted (alarmed).
        assert [e.event for e in runtime().store.events(app)] == ["token_pair_stored"], how
        documents = emf_documents(capsys.readouterr().out)
        assert [v for _, v in metric_values(documents, "EventsPublishFailed")] == [[1.0]], how
        assert metric_values(documents, "EventsPublished") == [], how
        reset_runtime()  # the next case starts from healthy clients


def test_alipay_busy_during_the_exchange_is_503_and_the_same_link_works_later(
    service: ServiceStack, control: SimulatorControl, callback: ModuleType
):
    for fault in ("http_503", "rate_limited"):
        redirect = _consent(callback, control)
        control.add_rule(method=TOKEN_METHOD, grant_type="authorization_code", fault=fault, count=5)

        response = _redirect(callback, redirect)

        _assert_clean(response, 503, fault)
        assert response.json()["error"]["reason"] == "alipay_unavailable", fault
        assert service.simulator.state.pair_count() == 0, fault  # refused before processing
        assert not _state_consumed(service, redirect), fault  # released for the retry
        control.clear_rules()
        _assert_retry_works(callback, control, redirect, fault)
        service.simulator.reset()


@pytest.fixture
def notified_callback(callback: ModuleType, control: SimulatorControl) -> Iterator[ModuleType]:
    """The callback also on loopback as Alipay's notification endpoint; the simulator holds its
    notifications until the test delivers them."""
    with http_front(callback.lambda_handler) as front:
        control.behaviour(notify_url=f"{front.url}{NOTIFY_PATH}")
        control.notification_settings(hold=True)
        yield callback


def test_exchange_whose_answer_is_lost_is_502_and_the_grant_notification_stores_the_pair(
    service: ServiceStack, control: SimulatorControl, notified_callback: ModuleType
):
    redirect = _consent(notified_callback, control)
    # Alipay processes the exchange (the pair is issued), and its answer never comes.
    lost = {"fault": "timeout", "after_processing": True, "timeout_seconds": 0.1}
    control.add_rule(method=TOKEN_METHOD, grant_type="authorization_code", **lost)

    response = _redirect(notified_callback, redirect)

    _assert_clean(response, 502)
    assert response.json()["error"]["reason"] == "outcome_unknown"
    (app,) = service.simulator.state.merchant_ids()  # Alipay issued the pair...
    assert runtime().store.get(app) is None  # ...and the service never saw it
    (delivered,) = control.deliver_notifications()
    assert delivered["delivered"] is True
    assert_nothing_lost(control, app)
    assert [e.event for e in runtime().store.events(app)] == ["token_pair_stored"]


# --- the refresh run ----------------------------------------------------------------------------


@pytest.fixture
def clock(control: SimulatorControl, atomic_moto: None) -> Clock:
    return Clock(control)


@pytest.fixture
def refresh(service: ServiceStack) -> ModuleType:
    # Reloaded in the template's environment: Powertools reads it when the module is imported.
    return importlib.reload(refresh_app)


def _run(refresh: ModuleType, event: dict[str, Any]) -> dict[str, Any]:
    context = FakeContext(function_name="appauth-refresh", remaining_ms=900_000)
    answer: dict[str, Any] = refresh.lambda_handler(event, context)
    return answer


def test_refreshed_pair_that_cannot_be_sealed_is_parked_and_the_next_run_stores_it(
    control: SimulatorControl, clock: Clock
):
    faulted, bystander = (g.auth_app_id for g in grant_merchants(control, 2))
    clock.advance(DUE_AFTER)
    kms = inject("kms")  # Alipay answers, then KMS will not seal the new pair
    kms.fail_always(
        "generate_data_key",
        client_error("KMSInternalException", "GenerateDataKey"),
        when=for_merchant(faulted),
    )

    report = run_once(clock)

    assert (report.count(Outcome.PARKED), report.count(Outcome.ROTATED)) == (1, 1)
    # Unsealed (KMS refused), so the queue's own encryption at rest protects it.
    assert parked_pairs() == {faulted: (issued_pair(control, faulted), False)}
    kms.heal()
    run_until_quiet(clock)  # each run drains the queue first
    assert assert_never_granted_with_a_dead_pair(control, faulted) == STATUS_GRANTED
    assert_nothing_lost(control, faulted, bystander)
    for app in (faulted, bystander):
        record = control.merchant(app)
        assert record is not None
        assert record["rotations"] == 1  # the parked pair was stored, not refreshed again


def test_refresh_with_eventbridge_refusing_its_entries_rotates_and_says_so(
    control: SimulatorControl, refresh: ModuleType
):
    (app,) = (g.auth_app_id for g in grant_merchants(control, 1))
    refused = refuse_event_entries()
    runtime().events.take_counts()  # the grant's own event

    answer = _run(refresh, {"auth_app_ids": [app]})

    assert answer["rotated"] == 1
    assert (answer["events_published"], answer["events_failed"]) == (0, 1)
    assert refused.calls == PUBLISH_ATTEMPTS
    assert_nothing_lost(control, app)
    transitions = [e.detail.get("transition") for e in runtime().store.events(app)]
    assert transitions == ["granted", "refreshed"]  # the audit trail has the rotation


def test_refresh_rate_limited_by_alipay_is_deferred_and_a_later_run_rotates(
    control: SimulatorControl, clock: Clock
):
    faulted, bystander = (g.auth_app_id for g in grant_merchants(control, 2))
    clock.advance(DUE_AFTER)
    control.add_rule(
        method=TOKEN_METHOD,
        grant_type="refresh_token",
        auth_app_id=faulted,
        fault="rate_limited",
        count=5,
    )

    report = run_once(clock)

    assert (report.count(Outcome.DEFERRED_TRANSIENT), report.count(Outcome.ROTATED)) == (1, 1)
    stored = runtime().store.get(faulted)
    assert stored is not None
    assert (stored.status, stored.version, stored.refresh_failures) == (STATUS_GRANTED, 1, 1)
    assert QUERY_METHOD not in control.stats()["requests"]  # a busy Alipay says nothing of the pair
    assert_nothing_lost(control, faulted, bystander)  # Alipay issued nothing new for it
    control.clear_rules()
    run_until_quiet(clock)
    assert_nothing_lost(control, faulted, bystander)
    record = control.merchant(faulted)
    assert record is not None
    assert record["rotations"] == 1


@pytest.mark.filterwarnings("ignore:No application metrics to publish")
def test_refresh_without_its_secrets_sends_nothing_and_parked_pairs_still_come_home(
    service: ServiceStack, control: SimulatorControl, refresh: ModuleType
):
    (grant,) = grant_merchants(control, 1)
    app = grant.auth_app_id
    # The merchant authorizes again; the store refused that pair, so it waits on the queue.
    code = control.codes(auth_app_id=app)["app_auth_code"]
    reauthorized = runtime().client().exchange_code(code).single()
    runtime().sink.keep(reauthorized, None, source="authorization", reason="store_unavailable")
    (message,) = aws.sqs().receive_message(
        QueueUrl=runtime().settings.parked_queue_url, WaitTimeSeconds=0
    )["Messages"]
    reset_runtime()  # a cold container whose SSM reads fail
    parameters.clear_caches()  # type: ignore[no-untyped-call]
    ssm = inject("ssm")
    ssm.fail_always("get_parameter", client_error("ThrottlingException", "GetParameter"))

    # The queue's event source needs no secret: the parked pair is stored.
    record = {**PARKED_SQS["Records"][0], "messageId": "m-1", "body": message["Body"]}
    assert _run(refresh, {"Records": [record]}) == {"batchItemFailures": []}
    assert_nothing_lost(control, app)
    # A run fails as a whole (an invocation error), naming the parameter, before any call.
    with pytest.raises(SecretsUnavailableError) as raised:
        _run(refresh, {"auth_app_ids": [app]})
    assert raised.value.parameter == f"{service.aws.ssm_prefix}/app-private-key"
    assert ssm.fired >= 1
    merchant = control.merchant(app)
    assert merchant is not None
    assert merchant["refresh_calls"] == []

    ssm.heal()
    assert _run(refresh, {"auth_app_ids": [app]})["rotated"] == 1
    assert_nothing_lost(control, app)


# --- the token query ----------------------------------------------------------------------------


@pytest.fixture
def query(service: ServiceStack, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The token query handler, reloaded in the template's environment (a cold start), with an
    empty cache of its own."""
    module = importlib.reload(token_query_app)
    monkeypatch.setattr(module, "cache", LookupCache(max_age_seconds=30.0))
    return module


def _ask(query: ModuleType, request: dict[str, Any]) -> dict[str, Any]:
    answer: dict[str, Any] = query.lambda_handler(
        request, FakeContext(function_name="appauth-token-query")
    )
    return answer


def _authorize(control: SimulatorControl) -> str:
    (grant,) = grant_merchants(control, 1)
    return grant.auth_app_id


QUERY_REQUESTS: dict[str, dict[str, Any]] = {
    "describe": {"action": "describe"},
    "report_invalid": {"action": "report_invalid", "version": 1},
    # The methods are not known yet: Alipay is asked once.
    "required_methods": {"action": "get_token", "required_methods": ["alipay.trade.create"]},
}


def test_alipay_failing_a_query_is_a_retryable_answer_and_changes_nothing(
    control: SimulatorControl, query: ModuleType
):
    # Every fault on one action, and the lost answer on the others: they share the call to
    # Alipay and how its failure is answered, not what happens after it.
    cases = [(f, "describe") for f in ALIPAY_FAULTS] + [
        ("timeout", action) for action in QUERY_REQUESTS if action != "describe"
    ]
    for fault, action in cases:
        request = QUERY_REQUESTS[action]
        case = (fault, action)
        app = _authorize(control)
        before = runtime().store.get(app)
        control.add_rule(
            method=QUERY_METHOD, fault=fault, auth_app_id=app, count=5, timeout_seconds=0.1
        )

        answer = _ask(query, {**request, "auth_app_id": app})

        assert answer["ok"] is False, case
        error = answer["error"]
        assert (error["code"], error["retryable"]) == ("unavailable", True), case
        assert "Traceback" not in json.dumps(answer), case
        assert "app_auth_token" not in answer, case
        assert runtime().store.get(app) == before, case  # nothing Alipay did not say
        control.clear_rules()
        healed = _ask(query, {**request, "auth_app_id": app})
        assert healed["ok"] is True, (case, healed)
        assert_nothing_lost(control, app)


def test_a_revocation_the_query_finds_is_kept_whatever_eventbridge_does(
    control: SimulatorControl, query: ModuleType
):
    for how in EVENTBRIDGE_REFUSALS:
        app = _authorize(control)
        put_events_calls = refuse_events(how)
        runtime().events.take_counts()
        control.revoke(app)  # cancelled at Alipay, no notification

        answer = _ask(query, {"action": "describe", "auth_app_id": app})

        assert answer["ok"] is False, how
        assert (answer["error"]["code"], answer["status"]) == (STATUS_REVOKED, STATUS_REVOKED)
        assert runtime().events.take_counts() == (0, 1), how  # counted: alarmed
        assert put_events_calls() == PUBLISH_ATTEMPTS, how
        stored = runtime().store.get(app)
        assert stored is not None
        assert stored.status == STATUS_REVOKED, how
        assert "authorization_revoked" in {e.event for e in runtime().store.events(app)}, how
        reset_runtime()  # the next case starts from healthy clients
