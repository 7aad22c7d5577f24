"""Notifications as Alipay sends them: the simulator POSTs signed notifications over HTTP to the
callback function behind a loopback API Gateway front (base64 bodies, as API Gateway hands them
over), duplicated, reordered, tampered and retried. Nothing changes wrongly.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any

import pytest

from appauth.runtime import runtime
from appauth.store import STATUS_GRANTED, STATUS_REVOKED
from appauth_dev.http_front import RunningFront, http_front
from appauth_dev.simulator import SimulatorControl
from tests.integration.conftest import EventCapture, ServiceStack
from tests.integration.refresh_helpers import client_error, inject

NOTIFY_PATH = "/alipay/notify"


@pytest.fixture
def front(service: ServiceStack) -> Iterator[RunningFront]:
    # Imported once the environment is the template's, as a cold start would.
    module = importlib.import_module("callback_app")
    with http_front(module.lambda_handler) as running:
        yield running


@pytest.fixture
def ctl(service: ServiceStack, front: RunningFront) -> SimulatorControl:
    control = SimulatorControl(service.simulator.url)
    control.behaviour(notify_url=f"{front.url}{NOTIFY_PATH}")
    return control


def pairs_stored(auth_app_id: str) -> int:
    return sum(e.event == "token_pair_stored" for e in runtime().store.events(auth_app_id))


def current_pair(ctl: SimulatorControl, auth_app_id: str) -> tuple[str, str]:
    record = ctl.merchant(auth_app_id)
    assert record is not None
    return record["current"]["app_auth_token"], record["current"]["app_refresh_token"]


def stored_pair(auth_app_id: str) -> tuple[str, str]:
    stored = runtime().store.get(auth_app_id)
    assert stored is not None
    return runtime().store.open_tokens(stored)


def grant_by_notification(ctl: SimulatorControl, **kw: Any) -> dict[str, Any]:
    minted = ctl.codes(notify=True, **kw)
    (auth_app_id,) = minted["auth_app_ids"]
    return {"auth_app_id": auth_app_id, **minted}


def test_a_grant_notification_alone_stores_the_pair_alipay_issued(
    ctl: SimulatorControl, front: RunningFront, lifecycle_events: EventCapture
):
    minted = grant_by_notification(ctl, out_biz_no="shop-7")
    auth_app_id = minted["auth_app_id"]
    (sent,) = ctl.notifications()
    assert sent["kind"] == "grant"
    assert sent["delivered"] is True
    assert [a["answer"] for a in sent["attempts"]] == ["success"]
    stored = runtime().store.get(auth_app_id)
    assert stored is not None
    assert (stored.status, stored.version, stored.merchant_ref) == (STATUS_GRANTED, 1, "shop-7")
    assert stored_pair(auth_app_id) == current_pair(ctl, auth_app_id)
    assert [e["detail-type"] for e in lifecycle_events.read()] == ["appauth.authorization.granted"]
    # API Gateway handed the form over base64-encoded; the route decoded it.
    assert front.requests == [{"method": "POST", "path": NOTIFY_PATH, "status": 200}]


def test_duplicate_deliveries_are_processed_once_and_all_answered_success(ctl: SimulatorControl):
    ctl.notification_settings(copies=3)
    auth_app_id = grant_by_notification(ctl)["auth_app_id"]
    (sent,) = ctl.notifications()
    assert [a["answer"] for a in sent["attempts"]] == ["success"] * 3
    assert pairs_stored(auth_app_id) == 1  # not three writes, and no "older pair" noise
    ctl.redeliver_notifications(ids=[sent["id"]])  # Alipay redelivers a day later, same id
    assert pairs_stored(auth_app_id) == 1
    stored = runtime().store.get(auth_app_id)
    assert stored is not None
    assert stored.version == 1


def test_a_cancellation_overtaking_its_grant_leaves_the_merchant_revoked(ctl: SimulatorControl):
    ctl.notification_settings(hold=True)
    auth_app_id = grant_by_notification(ctl)["auth_app_id"]
    ctl.advance_clock(5)
    ctl.revoke(auth_app_id, notify=True)
    sent = ctl.deliver_notifications(order="newest")
    assert [n["kind"] for n in sent] == ["cancellation", "grant"]
    assert all(n["delivered"] for n in sent)
    stored = runtime().store.get(auth_app_id)
    assert stored is not None
    assert stored.status == STATUS_REVOKED
    events = [e.event for e in runtime().store.events(auth_app_id)]
    assert "older_pair_ignored" in events
    assert "token_pair_stored" not in events


def test_a_reauthorization_delivered_before_the_first_grant_keeps_the_newer_pair(
    ctl: SimulatorControl,
):
    ctl.notification_settings(hold=True)
    auth_app_id = grant_by_notification(ctl)["auth_app_id"]
    ctl.advance_clock(60)
    grant_by_notification(ctl, auth_app_id=auth_app_id)
    newest = current_pair(ctl, auth_app_id)
    sent = ctl.deliver_notifications(order="newest")
    assert [n["delivered"] for n in sent] == [True, True]
    assert stored_pair(auth_app_id) == newest
    stored = runtime().store.get(auth_app_id)
    assert stored is not None
    assert (stored.status, stored.version) == (STATUS_GRANTED, 1)


@pytest.mark.parametrize("how", ["biz_content", "auth_app_id", "wrong_key"])
def test_a_tampered_notification_gets_fail_and_changes_nothing(
    ctl: SimulatorControl, service: ServiceStack, how: str
):
    ctl.notification_settings(tamper=how)
    auth_app_id = grant_by_notification(ctl)["auth_app_id"]
    (sent,) = ctl.notifications()
    assert sent["delivered"] is False
    assert [(a["status"], a["answer"]) for a in sent["attempts"]] == [(400, "fail")]
    assert runtime().store.get(auth_app_id) is None
    # A cancellation forged the same way revokes nothing either.
    ctl.notification_settings(tamper=None)
    again = grant_by_notification(ctl)["auth_app_id"]
    ctl.notification_settings(tamper=how)
    ctl.revoke(again, notify=True)
    stored = runtime().store.get(again)
    assert stored is not None
    assert stored.status == STATUS_GRANTED


def test_a_notification_that_failed_is_retried_until_success(ctl: SimulatorControl):
    faulty = inject("dynamodb")
    faulty.fail_always("transact_write_items", client_error("InternalServerError", "x"))
    faulty.fail_always("put_item", client_error("InternalServerError", "x"))
    sqs = inject("sqs")
    sqs.fail_always("send_message", client_error("InternalError", "SendMessage"))
    auth_app_id = grant_by_notification(ctl)["auth_app_id"]
    (sent,) = ctl.notifications()
    assert sent["delivered"] is False
    assert sent["attempts"][-1]["answer"] == "fail"
    assert sent["attempts"][-1]["status"] >= 500  # Alipay retries a 5xx "fail"
    faulty.heal()
    sqs.heal()
    (retried,) = ctl.redeliver_notifications()
    assert retried["delivered"] is True
    assert [a["answer"] for a in retried["attempts"]] == ["fail", "success"]
    assert stored_pair(auth_app_id) == current_pair(ctl, auth_app_id)
    assert ctl.redeliver_notifications() == []  # nothing pending any more


def test_the_notification_and_the_callback_carrying_one_pair_store_it_once(
    ctl: SimulatorControl, lifecycle_events: EventCapture
):
    """Alipay sends the pair twice (the grant notification, and the code's exchange): one version,
    one event, and the merchant reference whichever copy carried it."""
    minted = grant_by_notification(ctl)
    auth_app_id = minted["auth_app_id"]
    grant = runtime().client().exchange_code(minted["app_auth_code"]).single()
    assert (grant.app_auth_token, grant.app_refresh_token) == current_pair(ctl, auth_app_id)
    saved = runtime().store.save_grant(grant, source="authorization", merchant_ref="shop-9")
    assert (saved.stored, saved.version) == (True, 1)
    stored = runtime().store.get(auth_app_id)
    assert stored is not None
    assert (stored.version, stored.merchant_ref) == (1, "shop-9")
    events = [e.event for e in runtime().store.events(auth_app_id)]
    assert events.count("token_pair_stored") == 1
    assert "same_pair_again" in events
    assert [e["detail-type"] for e in lifecycle_events.read()] == ["appauth.authorization.granted"]
