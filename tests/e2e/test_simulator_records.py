"""The simulator's per-merchant records, its superseded-refresh behaviours and grace periods, and
cancellation with and without a notification, over HTTP through the layer's real AlipayClient
and the typed control client."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
import requests

from appauth.alipay.client import AlipayClient
from appauth.alipay.errors import AlipayError, SignatureError, TransportError
from appauth.alipay.models import TokenGrant
from appauth.alipay.signing import parse_form, verify_notification
from appauth_dev.simulator import RunningSimulator, SimulatorControl, SimulatorControlError
from tests.e2e.single_shot import make_client

TIMEOUT = 10
GRACE = 3600  # the fixtures' config grace_seconds (the default)


def authorize(ctl: SimulatorControl, client: AlipayClient, **mint: Any) -> TokenGrant:
    return client.exchange_code(ctl.codes(**mint)["app_auth_code"]).single()


def record(ctl: SimulatorControl, auth_app_id: str) -> dict[str, Any]:
    found = ctl.merchant(auth_app_id)
    assert found is not None
    return found


def calls(found: dict[str, Any]) -> list[tuple[str, str | None]]:
    return [(call["outcome"], call["fault"]) for call in found["refresh_calls"]]


def refused(client: AlipayClient, refresh_token: str) -> AlipayError:
    with pytest.raises(AlipayError) as info:
        client.refresh(refresh_token)
    return info.value


# --- records -------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["v2", "v3"])
def test_the_record_after_an_exchange_and_a_rotation(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials, protocol
):
    client = make_client(simulator, app_credentials, protocol)
    first = authorize(ctl, client)
    second = client.refresh(first.app_refresh_token).single()
    found = record(ctl, first.auth_app_id)
    assert found["auth_app_id"] == first.auth_app_id
    assert found["user_id"] == first.user_id
    assert found["status"] == "authorized"
    assert (found["rotations"], found["exchanges"]) == (1, 1)
    old, new = found["pairs"]
    assert (old["app_auth_token"], old["app_refresh_token"]) == (
        first.app_auth_token,
        first.app_refresh_token,
    )
    assert (new["app_auth_token"], new["app_refresh_token"]) == (
        second.app_auth_token,
        second.app_refresh_token,
    )
    assert (old["source"], new["source"]) == ("authorization_code", "refresh_token")
    assert found["current"] == new
    assert old["superseded_at"] == new["issued_at"]
    assert new["superseded_at"] is None
    # Within the grace the old token still works, but (by default) not its refresh token.
    assert (old["token_accepted"], old["refresh_accepted"]) == (True, False)
    assert (new["token_accepted"], new["refresh_accepted"]) == (True, True)
    assert calls(found) == [("rotated", None)]
    assert abs(found["refresh_calls"][0]["at"] - new["issued_at"]) < 1


def test_an_unknown_merchant_has_no_record(simulator: RunningSimulator, ctl: SimulatorControl):
    assert ctl.merchant("2021999999999999") is None
    assert simulator.state.merchant_record("2021999999999999") is None
    answer = requests.get(f"{simulator.url}/simulator/merchants/2021999999999999", timeout=TIMEOUT)
    assert answer.status_code == 404
    assert answer.json() == {"error": "no such merchant app"}


def test_a_batch_exchange_counts_for_every_app(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials
):
    minted = ctl.codes(batch_size=2)
    make_client(simulator, app_credentials, "v2").exchange_code(minted["app_auth_code"])
    for auth_app_id in minted["auth_app_ids"]:
        found = record(ctl, auth_app_id)
        assert (found["exchanges"], found["rotations"], len(found["pairs"])) == (1, 0, 1)
        assert found["refresh_calls"] == []


@pytest.mark.parametrize(
    ("fault", "raised"), [("timeout", TransportError), ("tamper", SignatureError)]
)
def test_a_refresh_whose_answer_was_lost_is_recorded_as_what_it_did(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials, fault, raised
):
    client = make_client(simulator, app_credentials, "v2")
    grant = authorize(ctl, client)
    ctl.add_rule(grant_type="refresh_token", fault=fault, timeout_seconds=0)
    with pytest.raises(raised):
        client.refresh(grant.app_refresh_token)
    found = record(ctl, grant.auth_app_id)
    assert calls(found) == [("rotated", fault)]
    assert found["rotations"] == 1
    # Alipay issued a pair the client never saw: it is current, and its token works.
    assert found["current"]["app_refresh_token"] != grant.app_refresh_token
    assert found["current"]["token_accepted"]
    assert len(found["pairs"]) == 2


@pytest.mark.parametrize("fault", ["timeout", "error", "rate_limited", "http_503", "garbage"])
def test_a_refresh_stopped_before_processing_is_recorded_as_not_processed(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials, fault
):
    client = make_client(simulator, app_credentials, "v2")
    grant = authorize(ctl, client)
    ctl.add_rule(grant_type="refresh_token", fault=fault, after_processing=False, timeout_seconds=0)
    with pytest.raises((TransportError, AlipayError, SignatureError)):
        client.refresh(grant.app_refresh_token)
    found = record(ctl, grant.auth_app_id)
    assert calls(found) == [("not_processed", fault)]
    assert (found["rotations"], len(found["pairs"])) == (0, 1)
    # Nothing happened: the same refresh token still rotates.
    assert client.refresh(grant.app_refresh_token).single().auth_app_id == grant.auth_app_id
    assert calls(record(ctl, grant.auth_app_id))[-1] == ("rotated", None)


def test_random_faults_are_recorded_too(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials
):
    client = make_client(simulator, app_credentials, "v2")
    grant = authorize(ctl, client)
    ctl.faults(error_rate=1)
    with pytest.raises(AlipayError):
        client.refresh(grant.app_refresh_token)
    ctl.faults(error_rate=0, response_fault="drop_sign")
    with pytest.raises(SignatureError):
        client.refresh(grant.app_refresh_token)
    assert calls(record(ctl, grant.auth_app_id)) == [
        ("not_processed", "error"),
        ("rotated", "drop_sign"),
    ]


# --- superseded refresh tokens -----------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["v2", "v3"])
def test_refuse_is_the_default(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials, protocol
):
    client = make_client(simulator, app_credentials, protocol)
    first = authorize(ctl, client)
    client.refresh(first.app_refresh_token)
    error = refused(client, first.app_refresh_token)
    if protocol == "v2":
        assert (error.code, error.sub_code, error.signed) == (
            "40002",
            "isv.refresh-token-invalid",
            True,
        )
    else:
        assert (error.http_status, error.code) == (400, "invalid-refresh-token")
    found = record(ctl, first.auth_app_id)
    assert calls(found) == [("rotated", None), ("refused", None)]
    assert found["rotations"] == 1


@pytest.mark.parametrize("protocol", ["v2", "v3"])
def test_same_pair_replays_the_pair_that_superseded_it(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials, protocol
):
    assert ctl.behaviour(superseded_refresh="same_pair")["superseded_refresh"] == "same_pair"
    client = make_client(simulator, app_credentials, protocol)
    first = authorize(ctl, client)
    second = client.refresh(first.app_refresh_token).single()
    replay = client.refresh(first.app_refresh_token).single()
    assert (replay.app_auth_token, replay.app_refresh_token) == (
        second.app_auth_token,
        second.app_refresh_token,
    )
    found = record(ctl, first.auth_app_id)
    assert calls(found) == [("rotated", None), ("replayed_same", None)]
    # Nothing was superseded by the replay.
    assert (found["rotations"], len(found["pairs"])) == (1, 2)
    assert found["current"]["app_refresh_token"] == second.app_refresh_token
    assert found["pairs"][0]["refresh_accepted"]
    # The current refresh token still rotates as usual.
    third = client.refresh(second.app_refresh_token).single()
    assert third.app_refresh_token not in (first.app_refresh_token, second.app_refresh_token)


def test_same_pair_replays_the_original_answer_even_after_a_later_rotation(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials
):
    ctl.behaviour(superseded_refresh="same_pair")
    client = make_client(simulator, app_credentials, "v2")
    first = authorize(ctl, client)
    second = client.refresh(first.app_refresh_token).single()
    third = client.refresh(second.app_refresh_token).single()
    # An idempotent replay: the answer the first refresh gave, not the current pair.
    replay = client.refresh(first.app_refresh_token).single()
    assert replay.app_refresh_token == second.app_refresh_token
    assert record(ctl, first.auth_app_id)["current"]["app_refresh_token"] == (
        third.app_refresh_token
    )


@pytest.mark.parametrize("protocol", ["v2", "v3"])
def test_new_pair_issues_a_fresh_pair_that_supersedes_the_current_one(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials, protocol
):
    ctl.behaviour(superseded_refresh="new_pair")
    client = make_client(simulator, app_credentials, protocol)
    first = authorize(ctl, client)
    second = client.refresh(first.app_refresh_token).single()
    third = client.refresh(first.app_refresh_token).single()
    assert third.app_refresh_token not in (first.app_refresh_token, second.app_refresh_token)
    found = record(ctl, first.auth_app_id)
    assert calls(found) == [("rotated", None), ("replayed_new", None)]
    assert (found["rotations"], len(found["pairs"])) == (2, 3)
    assert found["current"]["app_refresh_token"] == third.app_refresh_token
    assert found["pairs"][1]["superseded_at"] is not None
    # The second pair was superseded by the replay: its refresh token now replays too.
    fourth = client.refresh(second.app_refresh_token).single()
    assert fourth.app_refresh_token != third.app_refresh_token


@pytest.mark.parametrize("mode", ["refuse", "same_pair", "new_pair"])
def test_after_the_refresh_grace_a_superseded_refresh_token_is_refused(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials, mode
):
    ctl.behaviour(superseded_refresh=mode, refresh_grace_seconds=600)
    client = make_client(simulator, app_credentials, "v2")
    first = authorize(ctl, client)
    second = client.refresh(first.app_refresh_token).single()
    ctl.advance_clock(599)
    assert record(ctl, first.auth_app_id)["pairs"][0]["refresh_accepted"] is (mode != "refuse")
    ctl.advance_clock(1)
    assert refused(client, first.app_refresh_token).sub_code == "isv.refresh-token-invalid"
    found = record(ctl, first.auth_app_id)
    assert calls(found)[-1] == ("refused", None)
    assert not found["pairs"][0]["refresh_accepted"]
    assert found["current"]["app_refresh_token"] == second.app_refresh_token


@pytest.mark.parametrize("mode", ["refuse", "same_pair", "new_pair"])
def test_a_cancelled_merchant_is_always_refused(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials, mode
):
    ctl.behaviour(superseded_refresh=mode)
    client = make_client(simulator, app_credentials, "v2")
    first = authorize(ctl, client)
    second = client.refresh(first.app_refresh_token).single()
    ctl.revoke(first.auth_app_id)
    for token in (first.app_refresh_token, second.app_refresh_token):
        assert refused(client, token).sub_code == "isv.refresh-token-invalid"
    found = record(ctl, first.auth_app_id)
    assert found["status"] == "cancelled"
    assert not any(p["token_accepted"] or p["refresh_accepted"] for p in found["pairs"])
    assert calls(found)[1:] == [("refused", None), ("refused", None)]


def test_token_grace_and_refresh_grace_are_independent(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials
):
    ctl.behaviour(superseded_refresh="same_pair", token_grace_seconds=60, refresh_grace_seconds=600)
    client = make_client(simulator, app_credentials, "v2")
    first = authorize(ctl, client)
    second = client.refresh(first.app_refresh_token).single()
    assert client.query_authorization(first.app_auth_token).valid
    ctl.advance_clock(60)
    with pytest.raises(AlipayError) as gone:
        client.query_authorization(first.app_auth_token)
    assert (gone.value.code, gone.value.sub_code) == ("20001", "aop.invalid-app-auth-token")
    with pytest.raises(AlipayError):
        client.call("alipay.open.mini.baseinfo.query", {}, app_auth_token=first.app_auth_token)
    old = record(ctl, first.auth_app_id)["pairs"][0]
    assert (old["token_accepted"], old["refresh_accepted"]) == (False, True)
    # The old token is dead but its refresh token still replays the pair it was replaced by.
    assert client.refresh(first.app_refresh_token).single().app_auth_token == second.app_auth_token

    # The other way round: the old token outlives its refresh token.
    ctl.reset()
    ctl.behaviour(superseded_refresh="same_pair", token_grace_seconds=600, refresh_grace_seconds=60)
    first = authorize(ctl, client)
    client.refresh(first.app_refresh_token)
    ctl.advance_clock(60)
    assert client.query_authorization(first.app_auth_token).valid
    assert refused(client, first.app_refresh_token).code == "40002"
    old = record(ctl, first.auth_app_id)["pairs"][0]
    assert (old["token_accepted"], old["refresh_accepted"]) == (True, False)


def test_zero_graces_stop_the_old_pair_at_once(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials
):
    ctl.behaviour(superseded_refresh="new_pair", token_grace_seconds=0, refresh_grace_seconds=0)
    client = make_client(simulator, app_credentials, "v2")
    first = authorize(ctl, client)
    client.refresh(first.app_refresh_token)
    with pytest.raises(AlipayError):
        client.query_authorization(first.app_auth_token)
    assert refused(client, first.app_refresh_token).code == "40002"


# --- the behaviour settings ----------------------------------------------------------------------


def test_behaviour_defaults_validation_and_reset(
    simulator: RunningSimulator, ctl: SimulatorControl
):
    defaults = {
        "superseded_refresh": "refuse",
        "token_grace_seconds": GRACE,
        "refresh_grace_seconds": GRACE,
        "notify_url": None,
    }
    assert ctl.behaviour() == defaults
    assert simulator.state.behaviour.as_dict() == defaults
    changed = ctl.behaviour(token_grace_seconds=1.5, notify_url="http://127.0.0.1:9/notify")
    assert changed == {**defaults, "token_grace_seconds": 1.5, "notify_url": changed["notify_url"]}
    for bad, named in (
        ({"superseded_refresh": "sometimes"}, "superseded_refresh"),
        ({"token_grace_seconds": -1}, "token_grace_seconds"),
        ({"refresh_grace_seconds": True}, "refresh_grace_seconds"),
        ({"refresh_grace_seconds": "60"}, "refresh_grace_seconds"),
        ({"notify_url": "ftp://example.com/x"}, "notify_url"),
        ({"notify_url": "http://"}, "notify_url"),
        ({"notify_url": "http://127.0.0.1:port/"}, "notify_url"),
        ({"notify_url": 5}, "notify_url"),
        ({"grace": 1}, "grace"),
    ):
        with pytest.raises(SimulatorControlError) as info:
            ctl.behaviour(**bad)
        assert info.value.status == 400
        assert named in str(info.value)
        with pytest.raises(ValueError, match=named):
            simulator.state.set_behaviour(**bad)
    assert ctl.behaviour()["token_grace_seconds"] == 1.5  # a refused change changes nothing
    ctl.reset()
    assert ctl.behaviour() == defaults
    # The Python side, as a frozen dataclass.
    behaviour = simulator.state.set_behaviour(superseded_refresh="new_pair")
    assert behaviour.superseded_refresh == "new_pair"
    with pytest.raises(AttributeError):
        behaviour.superseded_refresh = "refuse"  # type: ignore[misc]


# --- cancellation and its notification ----------------------------------------------------------------


def test_a_silent_cancellation_has_no_notification(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials, receiver
):
    ctl.behaviour(notify_url=receiver.url)
    client = make_client(simulator, app_credentials, "v2")
    grant = authorize(ctl, client)
    assert ctl.revoke(grant.auth_app_id) == {
        "auth_app_id": grant.auth_app_id,
        "revoked_pairs": 1,
        "notification": None,
    }
    assert receiver.received == []
    assert not client.query_authorization(grant.app_auth_token).valid
    assert record(ctl, grant.auth_app_id)["status"] == "cancelled"
    with pytest.raises(SimulatorControlError) as unknown:
        ctl.revoke("2021999999999999", notify=True)
    assert unknown.value.status == 404


def test_a_notified_cancellation_is_signed_like_alipay(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials, vectors
):
    client = make_client(simulator, app_credentials, "v2")
    grant = authorize(ctl, client)
    now = requests.get(f"{simulator.url}/simulator/clock", timeout=TIMEOUT).json()["now"]
    result = ctl.revoke(grant.auth_app_id, notify=True)
    notification = result["notification"]
    # No notify_url: built, not sent.
    assert (notification["delivered"], notification["status"], notification["answer"]) == (
        False,
        None,
        None,
    )
    params = parse_form(notification["form_body"])
    verify_notification(params, app_credentials)
    vector = next(n for n in vectors["notifications"] if "cancelled" in n["name"])
    assert list(params) == list(vector["params"])  # the same fields, in the same order
    assert params["msg_method"] == "alipay.open.auth.appauth.cancelled"
    assert params["app_id"] == app_credentials.app_id
    assert (params["msg_app_id"], params["msg_uid"]) == (grant.auth_app_id, grant.user_id)
    assert (params["msg_type"], params["version"], params["charset"], params["sign_type"]) == (
        "sys",
        "1.1",
        "utf-8",
        "RSA2",
    )
    assert abs(int(params["utc_timestamp"]) / 1000 - now) < 5
    biz = json.loads(params["biz_content"])
    assert biz["auth_app_id"] == grant.auth_app_id
    assert biz["user_id"] == grant.user_id
    assert biz["app_id"] == app_credentials.app_id
    # Tampering breaks the signature the layer checks.
    forged = dict(params, msg_app_id="2021000000000000")
    with pytest.raises(SignatureError):
        verify_notification(forged, app_credentials)
    # The utc_timestamp follows the simulator clock.
    again = authorize(ctl, client)
    ctl.advance_clock(86400)
    later = parse_form(ctl.revoke(again.auth_app_id, notify=True)["notification"]["form_body"])
    assert int(later["utc_timestamp"]) / 1000 - now > 86000


def test_a_notified_cancellation_is_delivered(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials, receiver
):
    ctl.behaviour(notify_url=receiver.url)
    grant = authorize(ctl, make_client(simulator, app_credentials, "v2"))
    notification = ctl.revoke(grant.auth_app_id, notify=True)["notification"]
    assert (notification["delivered"], notification["status"], notification["answer"]) == (
        True,
        200,
        "success",
    )
    [(headers, body)] = receiver.received
    assert body == notification["form_body"]
    assert headers["content-type"] == "application/x-www-form-urlencoded; charset=utf-8"
    verify_notification(parse_form(body), app_credentials)
    # The Python equivalent on the running simulator.
    again = authorize(ctl, make_client(simulator, app_credentials, "v2"))
    assert simulator.revoke(again.auth_app_id, notify=True)["notification"]["delivered"]
    assert len(receiver.received) == 2


def test_a_refused_or_failed_delivery_is_reported_not_raised(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials, receiver
):
    client = make_client(simulator, app_credentials, "v2")
    receiver.default = (500, "fail")
    ctl.behaviour(notify_url=receiver.url)
    grant = authorize(ctl, client)
    notification = ctl.revoke(grant.auth_app_id, notify=True)["notification"]
    assert (notification["delivered"], notification["status"], notification["answer"]) == (
        False,
        500,
        "fail",
    )
    # Nobody listening: no HTTP answer at all.
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    ctl.behaviour(notify_url=f"http://127.0.0.1:{port}/notify")
    grant = authorize(ctl, client)
    notification = ctl.revoke(grant.auth_app_id, notify=True)["notification"]
    assert (notification["delivered"], notification["status"], notification["answer"]) == (
        False,
        None,
        None,
    )
    assert notification["error"]
    assert notification["form_body"]
    # The cancellation itself happened either way.
    assert record(ctl, grant.auth_app_id)["status"] == "cancelled"


def test_revoke_validates_notify(simulator: RunningSimulator):
    answer = requests.post(
        f"{simulator.url}/simulator/revoke",
        json={"auth_app_id": "2021000000000001", "notify": "yes"},
        timeout=TIMEOUT,
    )
    assert answer.status_code == 400
    assert "notify" in answer.json()["error"]


def test_reauthorizing_after_a_cancellation_is_authorized_again(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials
):
    client = make_client(simulator, app_credentials, "v2")
    grant = authorize(ctl, client)
    ctl.revoke(grant.auth_app_id)
    again = authorize(ctl, client, auth_app_id=grant.auth_app_id)
    found = record(ctl, grant.auth_app_id)
    assert found["status"] == "authorized"
    assert found["exchanges"] == 2
    assert found["current"]["app_auth_token"] == again.app_auth_token
    assert not found["pairs"][0]["token_accepted"]
