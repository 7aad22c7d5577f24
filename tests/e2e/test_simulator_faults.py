"""Targeted fault rules and held requests, over HTTP through the layer's real AlipayClient.

Concurrency is driven with threads and the simulator's holds (``wait_for_hold`` blocks on a
condition in the simulator); no test sleeps.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import pytest
import requests

from appauth.alipay.client import AlipayClient
from appauth.alipay.errors import AlipayError, SignatureError, TransportError
from appauth.alipay.models import TokenGrant
from appauth_dev.simulator import RunningSimulator, SimulatorControl, SimulatorControlError
from appauth_dev.simulator.faults import RESPONSE_FAULTS
from tests.e2e.single_shot import make_client

TOKEN_APP = "alipay.open.auth.token.app"
TOKEN_QUERY = "alipay.open.auth.token.app.query"
TIMEOUT = 10
WAIT = 5.0  # how long a test waits for a request to be held (it normally takes milliseconds)
T = TypeVar("T")


@pytest.fixture
def background() -> Iterator[Callable[[Callable[[], T]], Future[T]]]:
    """Run a client call in another thread (the one the simulator will hold)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        yield pool.submit


def authorize(ctl: SimulatorControl, client: AlipayClient, **mint: Any) -> TokenGrant:
    return client.exchange_code(ctl.codes(**mint)["app_auth_code"]).single()


def outcomes(ctl: SimulatorControl, auth_app_id: str) -> list[tuple[str, str | None]]:
    found = ctl.merchant(auth_app_id)
    assert found is not None
    return [(call["outcome"], call["fault"]) for call in found["refresh_calls"]]


def stats(ctl: SimulatorControl, label: str) -> dict[str, int]:
    counts: dict[str, int] = ctl.stats()["requests"].get(label, {})
    return counts


def fired(ctl: SimulatorControl) -> list[int]:
    return [rule["fired"] for rule in ctl.rules()]


# --- matching ------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["v2", "v3"])
def test_a_rule_matches_by_method(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials, protocol
):
    client = make_client(simulator, app_credentials, protocol)
    grant = authorize(ctl, client)
    rule = ctl.add_rule(method=TOKEN_QUERY, fault="error")
    assert rule["id"] == "r1"
    assert (rule["count"], rule["nth"], rule["after_processing"]) == (1, None, False)
    refreshed = client.refresh(grant.app_refresh_token).single()  # not a query: untouched
    with pytest.raises(AlipayError) as info:
        client.query_authorization(refreshed.app_auth_token)
    if protocol == "v2":
        assert (info.value.code, info.value.signed) == ("20000", False)
    else:
        assert (info.value.http_status, info.value.signed) == (503, False)
    assert info.value.transient
    assert client.query_authorization(refreshed.app_auth_token).valid  # count 1: spent
    assert ctl.rules()[0] | {} == {**rule, "matched": 1, "fired": 1, "active": False}
    label = TOKEN_QUERY if protocol == "v2" else f"v3 {TOKEN_QUERY}"
    assert stats(ctl, label) == {"fault_error": 1, "success": 1}


def test_a_rule_matches_by_grant_type(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials
):
    client = make_client(simulator, app_credentials)
    ctl.add_rule(grant_type="authorization_code", fault="rate_limited")
    code = ctl.codes()["app_auth_code"]
    with pytest.raises(AlipayError) as info:
        client.exchange_code(code)
    assert (info.value.code, info.value.sub_code, info.value.signed) == (
        "40004",
        "isv.app-call-limited",
        True,
    )
    ctl.add_rule(grant_type="authorization_code", fault="error")
    ctl.add_rule(grant_type="refresh_token", fault="error", count=5)
    # The code was not consumed by the refused call; the second rule now takes the exchange.
    with pytest.raises(AlipayError):
        client.exchange_code(code)
    grant = client.exchange_code(code).single()
    with pytest.raises(AlipayError):
        client.refresh(grant.app_refresh_token)
    assert fired(ctl) == [1, 1, 1]
    assert stats(ctl, TOKEN_APP) == {"rate_limited": 1, "fault_error": 2, "success": 1}


def test_a_rule_matches_by_the_merchant_app_of_the_call(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials
):
    client = make_client(simulator, app_credentials)
    first = authorize(ctl, client)
    second = authorize(ctl, client)
    ctl.add_rule(auth_app_id=first.auth_app_id, fault="http_503", count=3)
    # The other merchant is untouched, by refresh token or by app_auth_token.
    other = client.refresh(second.app_refresh_token).single()
    assert client.query_authorization(other.app_auth_token).valid
    with pytest.raises(TransportError) as info:
        client.refresh(first.app_refresh_token)
    assert info.value.status == 503
    with pytest.raises(TransportError):
        client.query_authorization(first.app_auth_token)  # the app of an app_auth_token
    # ... and of a code: a fresh authorization of the same app.
    with pytest.raises(TransportError):
        authorize(ctl, client, auth_app_id=first.auth_app_id)
    assert outcomes(ctl, first.auth_app_id) == [("not_processed", "http_503")]
    assert stats(ctl, TOKEN_APP)["http_503"] == 2
    assert stats(ctl, TOKEN_QUERY)["http_503"] == 1


def test_a_bare_503_carries_nothing_from_alipay(simulator: RunningSimulator, ctl: SimulatorControl):
    ctl.add_rule(fault="http_503")
    answer = requests.post(simulator.gateway_url, data={"method": TOKEN_QUERY}, timeout=TIMEOUT)
    assert answer.status_code == 503
    assert answer.headers["Content-Type"].startswith("text/html")
    assert "503" in answer.text
    assert not any(name.lower().startswith("alipay-") for name in answer.headers)
    assert "sign" not in answer.text


def test_nth_and_count(simulator: RunningSimulator, ctl: SimulatorControl, app_credentials):
    client = make_client(simulator, app_credentials)
    grant = authorize(ctl, client)
    ctl.add_rule(method=TOKEN_QUERY, nth=3, fault="error")
    results: list[bool | str | None] = []
    for _ in range(4):
        try:
            results.append(client.query_authorization(grant.app_auth_token).valid)
        except AlipayError as error:
            results.append(error.code)
    assert results == [True, True, "20000", True]
    [rule] = ctl.rules()
    assert (rule["nth"], rule["count"], rule["matched"], rule["fired"], rule["active"]) == (
        3,
        None,
        3,
        1,
        False,
    )
    assert ctl.clear_rules() == 1
    ctl.add_rule(method=TOKEN_QUERY, count=2, fault="rate_limited")
    results.clear()
    for _ in range(3):
        try:
            results.append(client.query_authorization(grant.app_auth_token).valid)
        except AlipayError as error:
            results.append(error.sub_code)
    assert results == ["isv.app-call-limited", "isv.app-call-limited", True]


def test_rules_are_tried_in_order_and_the_first_to_fire_wins(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials
):
    client = make_client(simulator, app_credentials)
    grant = authorize(ctl, client)
    ctl.add_rule(method=TOKEN_QUERY, nth=2, fault="error")
    ctl.add_rule(method=TOKEN_QUERY, fault="rate_limited", count=10)
    codes = []
    for _ in range(2):
        with pytest.raises(AlipayError) as info:
            client.query_authorization(grant.app_auth_token)
        codes.append(info.value.code)
    # Call 1: the nth rule counts it but does not fire, so the next rule takes it; call 2: nth.
    assert codes == ["40004", "20000"]
    assert fired(ctl) == [1, 1]


def test_timeout_rules_before_and_after_processing(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials
):
    client = make_client(simulator, app_credentials)
    grant = authorize(ctl, client)
    ctl.add_rule(grant_type="refresh_token", fault="timeout", after_processing=False)
    ctl.add_rule(grant_type="refresh_token", fault="timeout", timeout_seconds=0.05)
    assert [rule["timeout_seconds"] for rule in ctl.rules()] == [None, 0.05]
    ctl.faults(timeout_seconds=0.05)  # what the first rule (no timeout_seconds) waits
    for _ in range(2):
        with pytest.raises(TransportError):
            client.refresh(grant.app_refresh_token)
    assert outcomes(ctl, grant.auth_app_id) == [
        ("not_processed", "timeout"),
        ("rotated", "timeout"),
    ]
    assert stats(ctl, TOKEN_APP)["timeout"] == 2


@pytest.mark.parametrize("fault", RESPONSE_FAULTS)
@pytest.mark.parametrize("after_processing", [True, False])
def test_response_fault_rules(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials, fault, after_processing
):
    client = make_client(simulator, app_credentials)
    grant = authorize(ctl, client)
    ctl.add_rule(
        method=TOKEN_APP,
        grant_type="refresh_token",
        auth_app_id=grant.auth_app_id,
        fault=fault,
        after_processing=after_processing,
    )
    with pytest.raises((SignatureError, TransportError)):
        client.refresh(grant.app_refresh_token)
    expected = ("rotated", fault) if after_processing else ("not_processed", fault)
    assert outcomes(ctl, grant.auth_app_id) == [expected]
    assert stats(ctl, TOKEN_APP)["corrupted"] == 1


def test_rules_match_v3_calls_by_the_same_method(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials
):
    client = make_client(simulator, app_credentials, "v3")
    grant = authorize(ctl, client)
    ctl.add_rule(method=TOKEN_APP, grant_type="refresh_token", fault="tamper")
    with pytest.raises(SignatureError):
        client.refresh(grant.app_refresh_token)
    assert outcomes(ctl, grant.auth_app_id) == [("rotated", "tamper")]
    assert stats(ctl, f"v3 {TOKEN_APP}") == {"success": 1, "corrupted": 1}


def test_rules_override_the_random_faults_and_reset_clears_them(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials
):
    client = make_client(simulator, app_credentials)
    grant = authorize(ctl, client)
    ctl.faults(error_rate=1)
    ctl.add_rule(method=TOKEN_QUERY, fault="rate_limited")
    with pytest.raises(AlipayError) as info:
        client.query_authorization(grant.app_auth_token)
    assert info.value.code == "40004"  # the rule, not the random error
    ctl.reset()
    assert ctl.rules() == []
    assert ctl.add_rule(fault="error")["id"] == "r1"  # ids restart


def test_rules_are_validated(simulator: RunningSimulator, ctl: SimulatorControl):
    for bad, named in (
        ({}, "fault"),
        ({"fault": "explode"}, "fault"),
        ({"fault": "error", "method": "alipay.trade.pay"}, "method"),
        ({"fault": "error", "grant_type": "password"}, "grant_type"),
        ({"fault": "error", "auth_app_id": 2021}, "auth_app_id"),
        ({"fault": "error", "nth": 0}, "nth"),
        ({"fault": "error", "count": 1.5}, "count"),
        ({"fault": "error", "nth": 1, "count": 1}, "nth"),
        ({"fault": "timeout", "after_processing": "no"}, "after_processing"),
        ({"fault": "timeout", "timeout_seconds": -1}, "timeout_seconds"),
        ({"fault": "error", "colour": "red"}, "colour"),
    ):
        with pytest.raises(SimulatorControlError) as info:
            ctl.add_rule(**bad)
        assert info.value.status == 400, bad
        assert named in str(info.value), bad
        with pytest.raises(ValueError, match=named):
            simulator.faults.add_rule(**bad)
    assert ctl.rules() == []
    # The Python API on the running simulator adds to the same list.
    assert simulator.faults.add_rule(fault="hold", method=TOKEN_QUERY)["id"] == "r1"
    assert [rule["fault"] for rule in ctl.rules()] == ["hold"]
    answer = requests.delete(f"{simulator.url}/simulator/faults/rules", timeout=TIMEOUT)
    assert answer.json() == {"cleared": 1}


# --- holds -------------------------------------------------------------------------------------


def test_a_hold_after_processing_changes_the_state_before_the_answer(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials, background
):
    client = make_client(simulator, app_credentials)
    grant = authorize(ctl, client)
    rule = ctl.add_rule(grant_type="refresh_token", fault="hold")
    pending = background(lambda: client.refresh(grant.app_refresh_token).single())
    held = ctl.wait_for_hold(WAIT)
    assert (held["rule_id"], held["method"], held["auth_app_id"]) == (
        rule["id"],
        TOKEN_APP,
        grant.auth_app_id,
    )
    assert held["id"] == "h1"
    # Alipay has rotated already; the client has no answer yet.
    found = ctl.merchant(grant.auth_app_id)
    assert found is not None
    assert outcomes(ctl, grant.auth_app_id) == [("rotated", "hold")]
    assert not pending.done()
    assert ctl.release(held["id"]) == {"released": "h1", "then": None}
    new = pending.result(timeout=TIMEOUT)
    assert new.app_refresh_token == found["current"]["app_refresh_token"]
    assert ctl.holds() == []
    assert stats(ctl, TOKEN_APP)["success"] == 2


def test_a_hold_before_processing_reorders_two_refreshes(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials, background
):
    client = make_client(simulator, app_credentials)
    grant = authorize(ctl, client)
    ctl.add_rule(grant_type="refresh_token", fault="hold", after_processing=False)
    late = background(lambda: client.refresh(grant.app_refresh_token).single())
    held = ctl.wait_for_hold(WAIT)
    assert outcomes(ctl, grant.auth_app_id) == []  # nothing happened yet
    # A second refresh with the same token overtakes the held one and rotates.
    winner = make_client(simulator, app_credentials).refresh(grant.app_refresh_token).single()
    ctl.release(held["id"])
    with pytest.raises(AlipayError) as info:
        late.result(timeout=TIMEOUT)
    assert info.value.sub_code == "isv.refresh-token-invalid"
    assert outcomes(ctl, grant.auth_app_id) == [("rotated", None), ("refused", "hold")]
    found = ctl.merchant(grant.auth_app_id)
    assert found is not None
    assert found["current"]["app_refresh_token"] == winner.app_refresh_token


@pytest.mark.parametrize(
    "case",
    [
        (False, "timeout", TransportError, ("rotated", "timeout")),
        (True, "timeout", TransportError, ("rotated", "timeout")),
        (False, "error", AlipayError, ("not_processed", "error")),
        (True, "error", AlipayError, ("rotated", "error")),
        (False, "garbage", SignatureError, ("rotated", "garbage")),
        (False, "http_503", TransportError, ("not_processed", "http_503")),
    ],
)
def test_a_hold_released_into_a_fault(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials, background, case
):
    # (held after processing?, released into, what the client raises, the refresh record)
    after_processing, then, raised, expected = case
    client = make_client(simulator, app_credentials)
    grant = authorize(ctl, client)
    ctl.add_rule(grant_type="refresh_token", fault="hold", after_processing=after_processing)
    pending = background(lambda: client.refresh(grant.app_refresh_token))
    held = simulator.faults.wait_for_hold(WAIT)  # the Python API, same holds
    simulator.faults.release(held["id"], then=then)
    with pytest.raises(raised):
        pending.result(timeout=TIMEOUT)
    assert outcomes(ctl, grant.auth_app_id) == [expected]


def test_holds_wait_for_a_count_and_release_one_by_one(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials, background
):
    client = make_client(simulator, app_credentials)
    grant = authorize(ctl, client)
    ctl.add_rule(method=TOKEN_QUERY, fault="hold", count=2)
    first = background(lambda: client.query_authorization(grant.app_auth_token))
    second = background(
        lambda: make_client(simulator, app_credentials).query_authorization(grant.app_auth_token)
    )
    holds = ctl.holds(wait=WAIT, count=2)
    assert [h["method"] for h in holds] == [TOKEN_QUERY, TOKEN_QUERY]
    assert all(h["auth_app_id"] == grant.auth_app_id for h in holds)
    answer = requests.get(f"{simulator.url}/simulator/holds", timeout=TIMEOUT).json()
    assert answer == holds
    ctl.release(holds[1]["id"])
    ctl.release(holds[0]["id"], then="rate_limited")
    outcomes_seen = []
    for future in (first, second):
        try:
            outcomes_seen.append(future.result(timeout=TIMEOUT).valid)
        except AlipayError as error:
            outcomes_seen.append(error.code)
    assert sorted(map(str, outcomes_seen)) == ["40004", "True"]
    assert ctl.holds() == []


def test_waiting_for_a_hold_times_out_when_nothing_is_held(
    simulator: RunningSimulator, ctl: SimulatorControl
):
    assert ctl.holds(wait=0.05) == []
    with pytest.raises(TimeoutError):
        ctl.wait_for_hold(0.05)
    with pytest.raises(TimeoutError):
        simulator.faults.wait_for_hold(0.05)


def test_reset_and_release_errors(
    simulator: RunningSimulator, ctl: SimulatorControl, app_credentials, background
):
    client = make_client(simulator, app_credentials)
    grant = authorize(ctl, client)
    ctl.add_rule(grant_type="refresh_token", fault="hold", after_processing=False)
    pending = background(lambda: client.refresh(grant.app_refresh_token))
    held = ctl.wait_for_hold(WAIT)
    with pytest.raises(SimulatorControlError) as bad:
        ctl.release(held["id"], then="hold")
    assert bad.value.status == 400
    with pytest.raises(SimulatorControlError) as unknown:
        ctl.release("h999")
    assert unknown.value.status == 404
    # Reset ends the held request: its connection closes and nothing is processed.
    ctl.reset()
    with pytest.raises(TransportError):
        pending.result(timeout=TIMEOUT)
    assert ctl.holds() == []
    assert ctl.merchant(grant.auth_app_id) is None
    for query in ("wait=x", "wait=61", "count=0"):
        answer = requests.get(f"{simulator.url}/simulator/holds?{query}", timeout=TIMEOUT)
        assert answer.status_code == 400, query
