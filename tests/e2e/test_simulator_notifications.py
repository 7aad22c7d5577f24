"""The simulator's asynchronous notifications over real HTTP: the grant notification sent on the
consent page's approval (checked with the layer's verifier and against the exchange answer), the
outbox, and its knobs (duplicates, holding for out-of-order delivery, tampering, redelivery until
the receiver answers ``success``, the clock-driven retry schedule). No test sleeps: deliveries
are synchronous and the retry schedule follows the simulator clock."""

from __future__ import annotations

import json
import logging
import re
import socket
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from appauth.alipay.client import AlipayClient
from appauth.alipay.credentials import AppCredentials
from appauth.alipay.errors import AlipayError, SignatureError
from appauth.alipay.signing import parse_form, rsa_verify, sign_content, verify_notification
from appauth.state import issue_state
from appauth_dev.simulator import RunningSimulator, SimulatorControl, SimulatorControlError
from appauth_dev.simulator.notify import TAMPER_KINDS
from tests.e2e.notify_receiver import NotifyReceiver
from tests.e2e.single_shot import make_client

TIMEOUT = 10
BEIJING_TIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")


# --- a loopback ISV notify endpoint ---------------------------------------------------------------


@pytest.fixture
def wired(ctl: SimulatorControl, receiver: NotifyReceiver) -> NotifyReceiver:
    """The receiver, configured as the simulator's notify_url."""
    ctl.behaviour(notify_url=receiver.url)
    return receiver


# --- helpers ---------------------------------------------------------------------------------------


def approve(
    sim: RunningSimulator,
    app_id: str,
    *,
    state: str | None = None,
    batch: str | None = None,
    auth_app_id: str | None = None,
) -> dict[str, str]:
    """Approve on the consent page; the 302's query (``app_auth_code``, ``state``)."""
    form = {"app_id": app_id, "redirect_uri": "https://isv.example.com/cb", "mode": "single"}
    if state is not None:
        form["state"] = state
    if batch is not None:
        form.update(mode="batch", application_type=batch)
    if auth_app_id is not None:
        form["auth_app_id"] = auth_app_id
    approved = requests.post(
        f"{sim.url}/oauth2/approve", data=form, allow_redirects=False, timeout=TIMEOUT
    )
    assert approved.status_code == 302, approved.text
    return {k: v[0] for k, v in parse_qs(urlsplit(approved.headers["Location"]).query).items()}


def layer_state(merchant_ref: str | None) -> str:
    """A state in the service's own format, as its authorization URL carries it."""
    token, _ = issue_state(
        b"s" * 32, now=int(time.time()), ttl_seconds=600, merchant_ref=merchant_ref
    )
    return token


def biz(params: dict[str, str]) -> dict[str, Any]:
    content: dict[str, Any] = json.loads(params["biz_content"])
    return content


def sim_now(ctl: SimulatorControl) -> float:
    now: float = requests.get(f"{ctl.base_url}/simulator/clock", timeout=TIMEOUT).json()["now"]
    return now


def vector(vectors: dict[str, Any], kind: str) -> dict[str, Any]:
    found: dict[str, Any] = next(
        n for n in vectors["notifications"] if kind in n["name"] and n["expect"] == "accept"
    )
    return found


def grant_params(ctl: SimulatorControl, **mint: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """Mint a code with a grant notification (sent if notify_url is set); (mint answer, params)."""
    minted = ctl.codes(notify=True, **mint)
    [note] = minted["notifications"]
    return minted, parse_form(note["form_body"])


def verifies(params: dict[str, str], creds: AppCredentials) -> bool:
    try:
        verify_notification(params, creds)
    except SignatureError:
        return False
    return True


# --- the grant notification ------------------------------------------------------------------------


def test_approval_sends_a_grant_notification_shaped_and_signed_like_the_vector(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials, vectors, wired
):
    before = sim_now(ctl)
    redirect = approve(simulator, app_credentials.app_id, state=layer_state("merchant-42"))
    [body] = wired.bodies
    params = parse_form(body)
    verify_notification(params, app_credentials)
    expected = vector(vectors, "open_app_auth_notify")
    assert list(params) == list(expected["params"])  # the same fields, in the same order
    # Signed with sign_type kept in the content (the vector's rule), not without it.
    key = app_credentials.alipay_key(None)
    assert rsa_verify(sign_content(params, exclude=("sign",)), params["sign"], key)
    assert not rsa_verify(sign_content(params, exclude=("sign", "sign_type")), params["sign"], key)
    assert (params["notify_type"], params["status"], params["app_id"]) == (
        "open_app_auth_notify",
        "execute_auth",
        app_credentials.app_id,
    )
    assert (params["charset"], params["version"], params["sign_type"]) == ("utf-8", "1.0", "RSA2")
    assert BEIJING_TIME.match(params["notify_time"])
    assert re.fullmatch(r"\d{22}", params["notify_id"])
    content = biz(params)
    vector_content = json.loads(expected["params"]["biz_content"])
    assert list(content) == list(vector_content)
    assert list(content["detail"]) == list(vector_content["detail"])
    assert content["notify_context"] == {
        "trigger": "auth_app",
        "trigger_context": {"out_biz_no": "merchant-42"},
    }
    assert content["error"] == {}
    detail = content["detail"]
    assert detail["app_auth_code"] == redirect["app_auth_code"]
    assert detail["app_id"] == app_credentials.app_id
    assert (detail["expires_in"], detail["re_expires_in"]) == (31536000, 32140800)
    assert isinstance(detail["auth_time"], int)
    assert abs(detail["auth_time"] / 1000 - before) < 5
    # The pair exists from the approval: it works before anyone exchanged the code...
    client = make_client(simulator, app_credentials, "v2")
    info = client.query_authorization(detail["app_auth_token"])
    assert (info.valid, info.auth_app_id) == (True, detail["auth_app_id"])
    # ...and the exchange answers that very pair (one pair per authorization).
    grant = client.exchange_code(redirect["app_auth_code"]).single()
    assert (
        grant.app_auth_token,
        grant.app_refresh_token,
        grant.auth_app_id,
        grant.user_id,
    ) == (
        detail["app_auth_token"],
        detail["app_refresh_token"],
        detail["auth_app_id"],
        detail["user_id"],
    )
    found = ctl.merchant(grant.auth_app_id)
    assert found is not None
    assert (len(found["pairs"]), found["exchanges"]) == (1, 1)
    assert found["pairs"][0]["issued_at"] * 1000 == pytest.approx(detail["auth_time"], abs=1)
    # The outbox lists it as delivered, with the attempt.
    [entry] = ctl.notifications()
    assert (entry["kind"], entry["notify_id"], entry["auth_app_id"]) == (
        "grant",
        params["notify_id"],
        grant.auth_app_id,
    )
    assert entry["form_body"] == body == entry["genuine_body"]
    assert (entry["delivered"], entry["held"], entry["tampered"]) == (True, False, None)
    [attempt] = entry["attempts"]
    assert (attempt["status"], attempt["answer"], attempt["delivered"]) == (200, "success", True)
    assert abs(attempt["at"] - before) < 5


def test_the_code_is_still_single_use_and_a_refresh_from_the_notification_works(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials, wired
):
    approve(simulator, app_credentials.app_id)
    detail = biz(wired.params()[0])["detail"]
    client = make_client(simulator, app_credentials, "v2")
    # The ISV stored the notification's pair first and refreshed it: a normal rotation.
    rotated = client.refresh(detail["app_refresh_token"]).single()
    assert rotated.app_auth_token != detail["app_auth_token"]
    # The exchange still answers the authorization's own pair (now superseded), once.
    grant = client.exchange_code(detail["app_auth_code"]).single()
    assert grant.app_refresh_token == detail["app_refresh_token"]
    with pytest.raises(AlipayError, match="40002"):
        client.exchange_code(detail["app_auth_code"])
    found = ctl.merchant(detail["auth_app_id"])
    assert found is not None
    assert [p["source"] for p in found["pairs"]] == ["authorization_code", "refresh_token"]


def test_a_code_whose_authorization_was_cancelled_cannot_be_exchanged(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials, wired
):
    redirect = approve(simulator, app_credentials.app_id)
    auth_app_id = biz(wired.params()[0])["detail"]["auth_app_id"]
    ctl.revoke(auth_app_id)
    with pytest.raises(AlipayError, match="40002"):
        make_client(simulator, app_credentials, "v2").exchange_code(redirect["app_auth_code"])


def test_a_batch_approval_notifies_each_app_with_its_exchanged_pair(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials, wired
):
    redirect = approve(simulator, app_credentials.app_id, batch="TINYAPP,WEBAPP,ARAPP")
    notes = wired.params()
    assert len(notes) == 3
    for params in notes:
        verify_notification(params, app_credentials)
    details = {biz(p)["detail"]["auth_app_id"]: biz(p)["detail"] for p in notes}
    assert len(details) == 3
    assert len({p["notify_id"] for p in notes}) == 3
    # No merchant reference in the state: trigger_context names no out_biz_no.
    assert all(biz(p)["notify_context"]["trigger_context"] == {} for p in notes)
    grants = make_client(simulator, app_credentials, "v2").exchange_code(redirect["app_auth_code"])
    assert {g.auth_app_id for g in grants.grants} == set(details)
    for grant in grants.grants:
        detail = details[grant.auth_app_id]
        assert (grant.app_auth_token, grant.app_refresh_token, grant.user_id) == (
            detail["app_auth_token"],
            detail["app_refresh_token"],
            detail["user_id"],
        )
        assert detail["app_auth_code"] == redirect["app_auth_code"]


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (None, {}),
        ("opaque-isv-state", {}),  # not the service's format: nothing to read
        ("v1.!!!.x", {}),
        ("LAYER", {"out_biz_no": "shop:7@east"}),
    ],
)
def test_out_biz_no_comes_from_the_state_when_the_simulator_can_read_it(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials, wired, *, state, expected
):
    if state == "LAYER":
        state = layer_state("shop:7@east")
    approve(simulator, app_credentials.app_id, state=state)
    [params] = wired.params()
    assert biz(params)["notify_context"]["trigger_context"] == expected
    verify_notification(params, app_credentials)


def test_the_grant_knob_and_no_notify_url(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials, receiver
):
    client = make_client(simulator, app_credentials, "v2")
    defaults = ctl.behaviour()
    assert "grant_notifications" not in defaults  # the behaviour's own fields are unchanged
    assert ctl.notification_settings()["grant_notifications"] is True
    # No notify_url: nothing is sent, and the pair is issued on the exchange (as before).
    redirect = approve(simulator, app_credentials.app_id)
    assert ctl.notifications() == []
    assert simulator.state.pair_count() == 0
    client.exchange_code(redirect["app_auth_code"]).single()
    assert simulator.state.pair_count() == 1
    # Switched off through the behaviour endpoint: a notify_url changes nothing.
    changed = ctl.behaviour(grant_notifications=False, notify_url=receiver.url)
    assert changed == {**defaults, "notify_url": receiver.url, "grant_notifications": False}
    assert ctl.notification_settings()["grant_notifications"] is False
    assert simulator.outbox.settings.grant_notifications is False
    approve(simulator, app_credentials.app_id)
    assert receiver.bodies == []
    assert ctl.notifications() == []
    assert simulator.state.pair_count() == 1
    # An explicit request still sends one, whatever the knob.
    minted, params = grant_params(ctl, out_biz_no="ref-1")
    assert minted["notifications"][0]["delivered"] is True
    assert receiver.bodies == [minted["notifications"][0]["form_body"]]
    assert biz(params)["notify_context"]["trigger_context"] == {"out_biz_no": "ref-1"}
    assert biz(params)["detail"]["app_auth_code"] == minted["app_auth_code"]
    # A bad value changes nothing (neither half of the call).
    with pytest.raises(SimulatorControlError) as bad:
        ctl.behaviour(grant_notifications="yes", token_grace_seconds=5)
    assert bad.value.status == 400
    assert "grant_notifications" in str(bad.value)
    assert ctl.behaviour()["token_grace_seconds"] == defaults["token_grace_seconds"]
    ctl.behaviour(grant_notifications=True)
    approve(simulator, app_credentials.app_id)
    assert len(receiver.bodies) == 2
    ctl.reset()
    assert ctl.notification_settings()["grant_notifications"] is True
    assert ctl.notifications() == []


# --- duplicates, out of order, tampering -----------------------------------------------------------


def test_duplicate_delivery_posts_each_notification_n_times(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials, wired
):
    assert ctl.notification_settings(copies=3)["copies"] == 3
    approve(simulator, app_credentials.app_id)
    assert len(wired.bodies) == 3
    assert len(set(wired.bodies)) == 1  # the same notification, same notify_id, three times
    [entry] = ctl.notifications()
    assert entry["delivered"] is True
    assert [a["status"] for a in entry["attempts"]] == [200, 200, 200]
    auth_app_id = entry["auth_app_id"]
    revoked = ctl.revoke(auth_app_id, notify=True)["notification"]
    assert revoked["delivered"] is True
    assert len(wired.bodies) == 6
    assert wired.bodies[3:] == [revoked["form_body"]] * 3
    verify_notification(parse_form(wired.bodies[-1]), app_credentials)
    # One copy answered success: delivered, even if a later copy failed.
    ctl.notification_settings(copies=2)
    wired.queued = [(200, "success"), (500, "fail")]
    [note] = ctl.codes(notify=True)["notifications"]
    assert (note["delivered"], note["status"]) == (True, 500)
    assert ctl.redeliver_notifications() == []


def test_held_notifications_go_out_in_reverse_or_on_demand(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials, wired
):
    ctl.notification_settings(hold=True)
    first = approve(simulator, app_credentials.app_id)
    auth_app_id = ctl.notifications()[0]["auth_app_id"]
    cancelled = ctl.revoke(auth_app_id, notify=True)["notification"]
    assert (cancelled["delivered"], cancelled["status"], cancelled["error"]) == (
        False,
        None,
        "held in the outbox",
    )
    second = approve(simulator, app_credentials.app_id)
    assert wired.bodies == []
    held = ctl.notifications()
    assert [(n["kind"], n["held"], n["attempts"]) for n in held] == [
        ("grant", True, []),
        ("cancellation", True, []),
        ("grant", True, []),
    ]
    assert (
        biz(parse_form(held[0]["form_body"]))["detail"]["app_auth_code"] == (first["app_auth_code"])
    )
    # The ISV exchanged the code before the notification arrived: the same pair either way.
    exchanged = make_client(simulator, app_credentials, "v2").exchange_code(second["app_auth_code"])
    late = biz(parse_form(held[2]["form_body"]))["detail"]
    assert (exchanged.single().app_auth_token, exchanged.single().app_refresh_token) == (
        late["app_auth_token"],
        late["app_refresh_token"],
    )
    # Newest first: the cancellation reaches the ISV before the grant it cancels.
    sent = ctl.deliver_notifications(order="newest")
    assert [n["id"] for n in sent] == [held[2]["id"], held[1]["id"], held[0]["id"]]
    assert wired.bodies == [held[2]["form_body"], held[1]["form_body"], held[0]["form_body"]]
    assert biz(wired.params()[0])["detail"]["app_auth_code"] == second["app_auth_code"]
    assert [p.get("msg_method") for p in wired.params()][1] == (
        "alipay.open.auth.appauth.cancelled"
    )
    assert all(n["delivered"] and not n["held"] for n in ctl.notifications())
    assert ctl.deliver_notifications() == []  # nothing is held any more
    # On demand, in exactly the order asked, even already delivered ones (a late duplicate).
    again = ctl.redeliver_notifications(ids=[held[0]["id"], held[2]["id"]])
    assert [n["id"] for n in again] == [held[0]["id"], held[2]["id"]]
    assert wired.bodies[3:] == [held[0]["form_body"], held[2]["form_body"]]
    with pytest.raises(SimulatorControlError) as unknown:
        ctl.deliver_notifications(ids=["n999"])
    assert unknown.value.status == 404


@pytest.mark.parametrize("how", TAMPER_KINDS)
@pytest.mark.parametrize("kind", ["grant", "cancellation"])
def test_a_tampered_notification_fails_the_layers_verification(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials, wired, *, how, kind
):
    ctl.notification_settings(tamper=how)
    minted = ctl.codes(notify=True)
    if kind == "cancellation":
        make_client(simulator, app_credentials, "v2").exchange_code(minted["app_auth_code"])
        ctl.revoke(minted["auth_app_ids"][0], notify=True)
    entry = ctl.notifications()[-1]
    assert (entry["kind"], entry["tampered"]) == (kind, how)
    delivered = parse_form(wired.bodies[-1])
    assert wired.bodies[-1] == entry["form_body"] != entry["genuine_body"]
    genuine = parse_form(entry["genuine_body"])
    assert verifies(genuine, app_credentials)
    assert not verifies(delivered, app_credentials)
    assert list(delivered) == list(genuine)
    changed = {name for name in genuine if genuine[name] != delivered[name]}
    auth_app_id = minted["auth_app_ids"][0]
    if how == "wrong_key":
        assert changed == {"sign"}
    elif how == "biz_content":
        assert changed == {"biz_content"}
        before, after = genuine["biz_content"], delivered["biz_content"]
        assert len(before) == len(after)
        assert sum(a != b for a, b in zip(before, after, strict=True)) == 1
        json.loads(after)  # still valid JSON: only the signature can tell
    else:
        assert "sign" not in changed
        assert "biz_content" in changed
        forged = json.loads(delivered["biz_content"])
        forged_id = forged["detail"]["auth_app_id"] if kind == "grant" else forged["auth_app_id"]
        assert forged_id != auth_app_id
        assert auth_app_id not in wired.bodies[-1]
        if kind == "cancellation":
            assert delivered["msg_app_id"] == forged_id
    # Off again: the next one is genuine.
    ctl.notification_settings(tamper=None)
    _, params = grant_params(ctl)
    assert verifies(params, app_credentials)


# --- redelivery and retries ------------------------------------------------------------------------


def test_a_notification_stays_pending_until_the_receiver_answers_exactly_success(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials, wired
):
    wired.queued = [(500, "fail"), (200, "fail"), (200, "success\n"), (200, "SUCCESS")]
    minted, _ = grant_params(ctl)
    assert minted["notifications"][0]["delivered"] is False
    assert minted["notifications"][0]["status"] == 500
    for _ in range(3):
        [retried] = ctl.redeliver_notifications()
        assert retried["delivered"] is False
    [entry] = ctl.notifications()
    assert [(a["status"], a["answer"], a["delivered"]) for a in entry["attempts"]] == [
        (500, "fail", False),
        (200, "fail", False),
        (200, "success\n", False),
        (200, "SUCCESS", False),
    ]
    times = [a["at"] for a in entry["attempts"]]
    assert times == sorted(times)
    # The receiver now answers success: one more attempt, then redelivery stops.
    [done] = ctl.redeliver_notifications()
    assert done["delivered"] is True
    assert len(done["attempts"]) == 5
    assert ctl.redeliver_notifications() == []
    assert len(wired.bodies) == 5
    assert len(set(wired.bodies)) == 1


def test_no_answer_at_all_is_recorded_and_redelivered_later(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials, receiver
):
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nobody listens there
    ctl.behaviour(notify_url=f"http://127.0.0.1:{port}/notify")
    minted, _ = grant_params(ctl)
    note = minted["notifications"][0]
    assert (note["delivered"], note["status"], note["answer"]) == (False, None, None)
    assert note["error"]
    # Not sent at all while no notify_url is configured: pending, no attempt.
    ctl.behaviour(notify_url=None)
    auth_app_id = minted["auth_app_ids"][0]
    cancelled = ctl.revoke(auth_app_id, notify=True)["notification"]
    assert cancelled["error"] == "not sent: no notify_url"
    assert [len(n["attempts"]) for n in ctl.notifications()] == [1, 0]
    ctl.behaviour(notify_url=receiver.url)
    sent = ctl.redeliver_notifications()
    assert [n["kind"] for n in sent] == ["grant", "cancellation"]
    assert all(n["delivered"] for n in sent)
    assert len(receiver.bodies) == 2


def test_the_retry_schedule_follows_the_simulator_clock(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials, wired
):
    settings = ctl.notification_settings(retry_schedule=[240, 600])
    assert settings["retry_schedule"] == [240.0, 600.0]
    wired.default = (500, "busy")
    grant_params(ctl)
    [entry] = ctl.notifications()
    first = entry["attempts"][0]["at"]
    assert entry["next_attempt_at"] == pytest.approx(first + 240)
    ctl.advance_clock(200)  # not due yet
    assert len(ctl.notifications()[0]["attempts"]) == 1
    ctl.advance_clock(100)  # due: retried before the clock call answers
    entry = ctl.notifications()[0]
    assert len(entry["attempts"]) == 2
    assert entry["next_attempt_at"] == pytest.approx(entry["attempts"][1]["at"] + 600)
    wired.default = (200, "success")
    ctl.advance_clock(600)
    entry = ctl.notifications()[0]
    assert [a["delivered"] for a in entry["attempts"]] == [False, False, True]
    assert (entry["delivered"], entry["next_attempt_at"]) == (True, None)
    ctl.advance_clock(86400)
    assert len(ctl.notifications()[0]["attempts"]) == 3
    assert len(wired.bodies) == 3
    # A schedule runs out: after its last step nothing is due, redeliver still works.
    wired.default = (500, "busy")
    ctl.notification_settings(retry_schedule=[60])
    grant_params(ctl)
    ctl.advance_clock(61)
    ctl.advance_clock(86400)
    latest = ctl.notifications()[-1]
    assert (len(latest["attempts"]), latest["next_attempt_at"]) == (2, None)
    assert len(ctl.redeliver_notifications(ids=[latest["id"]])[0]["attempts"]) == 3
    # Off by default: no automatic retries.
    ctl.reset()
    assert ctl.notification_settings()["retry_schedule"] is None
    ctl.behaviour(notify_url=wired.url)
    grant_params(ctl)
    ctl.advance_clock(86400)
    assert len(ctl.notifications()[0]["attempts"]) == 1


# --- the control API ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "named"),
    [
        ("notifications/settings", {"copies": 0}, "copies"),
        ("notifications/settings", {"copies": True}, "copies"),
        ("notifications/settings", {"hold": 1}, "hold"),
        ("notifications/settings", {"tamper": "sign"}, "tamper"),
        ("notifications/settings", {"retry_schedule": []}, "retry_schedule"),
        ("notifications/settings", {"retry_schedule": [-1]}, "retry_schedule"),
        ("notifications/settings", {"retry_schedule": "60"}, "retry_schedule"),
        ("notifications/settings", {"duplicates": 2}, "duplicates"),
        ("notifications/deliver", {"order": "random"}, "order"),
        ("notifications/redeliver", {"ids": "n1"}, "ids"),
        ("notifications/redeliver", {"when": "now"}, "when"),
        ("codes", {"notify": "yes"}, "notify"),
        ("codes", {"out_biz_no": "ref"}, "out_biz_no"),
        ("codes", {"notify": True, "out_biz_no": ""}, "out_biz_no"),
    ],
)
def test_notification_controls_are_validated(
    simulator: RunningSimulator, ctl: SimulatorControl, path, body, named
):
    answer = requests.post(f"{simulator.url}/simulator/{path}", json=body, timeout=TIMEOUT)
    assert answer.status_code == 400
    assert named in answer.json()["error"]
    assert ctl.notification_settings() == simulator.outbox.settings.as_dict()
    assert ctl.notifications() == []


def test_the_outbox_listing_clearing_and_methods(
    simulator: RunningSimulator, ctl: SimulatorControl, wired
):
    assert (
        requests.put(f"{simulator.url}/simulator/notifications", timeout=TIMEOUT).status_code == 405
    )
    assert (
        requests.get(f"{simulator.url}/simulator/notifications/nope", timeout=TIMEOUT).status_code
        == 404
    )
    assert (
        requests.get(
            f"{simulator.url}/simulator/notifications/redeliver", timeout=TIMEOUT
        ).status_code
        == 405
    )
    minted = ctl.codes(notify=True, batch_size=2)
    params = parse_form(minted["notifications"][0]["form_body"])
    listing = ctl.notifications()
    assert [n["id"] for n in listing] == ["n1", "n2"]
    assert {n["auth_app_id"] for n in listing} == set(minted["auth_app_ids"])
    assert listing[0]["notify_id"] == params["notify_id"]
    assert set(listing[0]) >= {
        "id",
        "kind",
        "notify_id",
        "auth_app_id",
        "form_body",
        "attempts",
        "delivered",
    }
    assert ctl.clear_notifications() == 2
    assert ctl.notifications() == []


def test_notification_logs_never_carry_secrets(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials, wired, caplog
):
    caplog.set_level(logging.DEBUG)
    ctl.notification_settings(copies=2)
    approve(simulator, app_credentials.app_id, state=layer_state("merchant-42"))
    [entry] = ctl.notifications()
    ctl.redeliver_notifications(ids=[entry["id"]])
    detail = biz(parse_form(entry["form_body"]))["detail"]
    params = parse_form(entry["form_body"])
    text = caplog.text
    assert "notification" in text  # the outcome is logged...
    for secret in (
        detail["app_auth_token"],
        detail["app_refresh_token"],
        detail["app_auth_code"],
        params["sign"][:40],
    ):
        assert secret not in text  # ...never what it carries


def test_the_python_side(simulator: RunningSimulator, app_credentials, wired):
    simulator.state.set_behaviour(notify_url=wired.url)
    simulator.outbox.update({"copies": 2})
    approve(simulator, app_credentials.app_id)
    [entry] = simulator.outbox.listing()
    assert len(entry["attempts"]) == 2
    revoked = simulator.revoke(entry["auth_app_id"], notify=True)["notification"]
    assert revoked["delivered"] is True
    assert len(wired.bodies) == 4
    client: AlipayClient = make_client(simulator, app_credentials, "v2")
    detail = biz(parse_form(entry["form_body"]))["detail"]
    assert not client.query_authorization(detail["app_auth_token"]).valid
