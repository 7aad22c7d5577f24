"""The callback function end to end: its sample events through ``lambda_handler`` in-process, AWS
played by the template's stack on moto and Alipay by the simulator over real HTTP.

Every authorization follows Alipay's flow for real: the start page issues a state, the merchant
approves on the simulator's consent page, and the 302's query becomes the redirect event.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode

import boto3
import pytest
import requests
import segno

from appauth.alipay.models import TokenGrant
from appauth.runtime import runtime
from tests.conftest import read_vector_file
from tests.integration.callback_helpers import (
    REGION,
    CallbackFunction,
    HttpResponse,
    alipay_signed,
    approve,
    emf_documents,
    exchanges,
    grant_notification,
    load_event,
    logs_to_stdout,
    metric_values,
    raw_values,
    redirect_event,
    scan_all,
    set_faults,
    start,
    state_item,
    state_payload,
    url_query,
    windows,
    with_body,
    with_header,
    with_query,
)
from tests.integration.conftest import ServiceStack

VECTOR_AUTH_APP_ID = "2018042501227906"  # the merchant app of the notification vectors
OTHER_APP_ID = "2021000199999999"


class Callback(CallbackFunction):
    """The callback function with the local stack and the simulator behind it."""

    @property
    def sim(self) -> str:
        return self.service.simulator.url

    def consent(self, *, auth_app_id: str | None = None, **start_query: str) -> dict[str, str]:
        """A fresh state from the start page, approved on Alipay's consent page: the redirect."""
        page = start(self.handler, **start_query)
        return approve(self.sim, page["authorization_url"], auth_app_id=auth_app_id)

    def grant(self, **start_query: str) -> tuple[dict[str, str], dict[str, Any]]:
        redirect = self.consent(**start_query)
        response = self.call(redirect_event(redirect, accept="application/json"))
        assert response.status == 200, response.body
        return redirect, response.json()

    def merchant_items(self) -> list[dict[str, Any]]:
        return [item for item in scan_all(self.db, self.tokens_table) if item["sk"]["S"] == "AUTH"]

    def raw_item(self, auth_app_id: str) -> dict[str, Any]:
        item = self.db.get_item(
            TableName=self.tokens_table,
            Key={"pk": {"S": f"APP#{auth_app_id}"}, "sk": {"S": "AUTH"}},
            ConsistentRead=True,
        )["Item"]
        return dict(item)


@pytest.fixture
def cb(service: ServiceStack) -> Callback:
    return Callback.load(service)


def _assert_refused(
    response: HttpResponse, status: int, message: str, *, reason: str | None = None
) -> None:
    assert response.status == status, response.body
    assert "Traceback" not in response.body
    if response.headers["content-type"].startswith("application/json"):
        error = response.json()["error"]
        assert message in error["message"]
        if reason:
            assert error["reason"] == reason
    else:
        assert "授权未完成" in response.body
        assert html.escape(message) in response.body


# --- full grant ---------------------------------------------------------------------------------


def test_full_grant_stores_the_encrypted_pair_alipay_issued(cb: Callback):
    page = start(cb.handler, merchant_ref="shop-42")
    redirect = approve(cb.sim, page["authorization_url"])
    assert redirect["app_id"] == cb.service.aws.app_id

    response = cb.call(redirect_event(redirect))

    assert response.status == 200, response.body
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-store"
    [auth_app_id] = cb.service.simulator.state.merchant_ids()
    issued = cb.service.simulator.state.current_pair(auth_app_id)
    assert issued is not None
    assert "授权成功" in response.body
    assert "Authorization complete" in response.body
    assert auth_app_id in response.body
    for secret in (
        issued.app_auth_token,
        issued.app_refresh_token,
        redirect["app_auth_code"],
        redirect["state"],
    ):
        assert secret not in response.body

    stored = cb.store.get(auth_app_id)
    assert stored is not None
    assert (stored.status, stored.version, stored.merchant_ref) == ("granted", 1, "shop-42")
    assert stored.user_id == issued.user_id
    assert cb.store.open_tokens(stored) == (issued.app_auth_token, issued.app_refresh_token)
    info = runtime().client().query_authorization(issued.app_auth_token)
    assert info.valid
    assert info.auth_app_id == auth_app_id
    assert stored.re_expires_at is not None
    assert stored.next_refresh_at is not None
    assert datetime.now(UTC) < stored.next_refresh_at < stored.re_expires_at

    raw = cb.raw_item(auth_app_id)
    assert raw["due_shard"]["S"]
    assert int(raw["next_refresh_at"]["N"]) == int(stored.next_refresh_at.timestamp())
    assert raw["tokens"]["M"]["fields"]["M"].keys() == {"app_auth_token", "app_refresh_token"}
    # No plaintext token or code anywhere: the item, the audit events, the idempotency record.
    tokens_items, idempotency_items = cb.snapshot()
    assert len(idempotency_items) == 1
    for value in raw_values([*tokens_items, *idempotency_items]):
        assert issued.app_auth_token not in value
        assert issued.app_refresh_token not in value
        assert redirect["app_auth_code"] not in value

    events = cb.store.events(auth_app_id)
    assert [event.event for event in events] == ["token_pair_stored"]
    assert events[0].detail["source"] == "authorization"
    assert events[0].detail["merchant_ref"] == "shop-42"
    for value in events[0].detail.values():
        assert issued.app_auth_token not in value
        assert issued.app_refresh_token not in value
    assert cb.parked() == 0
    # The state was consumed by this use.
    state = state_item(cb.db, cb.tokens_table, redirect["state"])
    assert state is not None
    assert "consumed_at" in state


@pytest.mark.parametrize("how", ["accept", "format"])
def test_full_grant_answers_json_when_asked(cb: Callback, how: str):
    redirect = cb.consent(merchant_ref="shop-7")
    if how == "accept":
        event = redirect_event(redirect, accept="application/json")
    else:
        event = redirect_event({**redirect, "format": "json"})

    response = cb.call(event)

    assert response.status == 200, response.body
    assert response.headers["content-type"].startswith("application/json")
    [auth_app_id] = cb.service.simulator.state.merchant_ids()
    assert response.json() == {
        "status": "granted",
        "auth_app_ids": [auth_app_id],
        "merchant_ref": "shop-7",
        "batch": False,
        "parked": False,
    }


def test_batch_grant_stores_every_merchant_app(cb: Callback):
    page = start(cb.handler, batch="1", application_type="TINYAPP,WEBAPP", merchant_ref="b-1")
    assert page["batch"] is True
    assert "/oauth2/appToAppBatchAuth.htm" in page["authorization_url"]
    assert url_query(page["authorization_url"])["application_type"] == "TINYAPP,WEBAPP"
    redirect = approve(cb.sim, page["authorization_url"])

    response = cb.call(redirect_event(redirect, accept="application/json"))

    assert response.status == 200, response.body
    body = response.json()
    assert body["batch"] is True
    ids = body["auth_app_ids"]
    assert len(ids) == 2
    assert sorted(ids) == cb.service.simulator.state.merchant_ids()
    for auth_app_id in ids:
        stored = cb.store.get(auth_app_id)
        assert stored is not None
        assert (stored.status, stored.version, stored.merchant_ref) == ("granted", 1, "b-1")
        issued = cb.service.simulator.state.current_pair(auth_app_id)
        assert issued is not None
        assert cb.store.open_tokens(stored)[0] == issued.app_auth_token


def test_duplicate_delivery_exchanges_once_and_answers_the_same(cb: Callback):
    redirect = cb.consent()
    first = cb.call(redirect_event(redirect))
    second = cb.call(redirect_event(redirect))

    assert first.status == second.status == 200
    assert first.body == second.body
    assert exchanges(cb.sim) == 1
    [auth_app_id] = cb.service.simulator.state.merchant_ids()
    stored = cb.store.get(auth_app_id)
    assert stored is not None
    assert stored.version == 1
    assert [event.event for event in cb.store.events(auth_app_id)] == ["token_pair_stored"]


# --- bad requests: 4xx, a clear message, nothing changed --------------------------------------


Redirect = dict[str, str]
# (case, how the real redirect is damaged, the message the merchant reads)
BAD_REDIRECTS: list[tuple[str, Callable[[Redirect], Redirect], str]] = [
    ("no params", lambda r: {}, "app_id and app_auth_code are required"),
    (
        "no code",
        lambda r: {"app_id": r["app_id"], "state": r["state"]},
        "app_id and app_auth_code are required",
    ),
    (
        "no app_id",
        lambda r: {"app_auth_code": r["app_auth_code"], "state": r["state"]},
        "app_id and app_auth_code are required",
    ),
    (
        "no state",
        lambda r: {"app_id": r["app_id"], "app_auth_code": r["app_auth_code"]},
        "the state parameter is missing",
    ),
    ("5 KB query", lambda r: {**r, "padding": "x" * 5000}, "the query string is too long"),
    (
        "code with symbols",
        lambda r: {**r, "app_auth_code": "abc$%^&*()<script>"},
        "app_auth_code is malformed",
    ),
    ("app_id garbage", lambda r: {**r, "app_id": "20210001'; DROP"}, "app_id is malformed"),
    ("state too long", lambda r: {**r, "state": "v1." + "A" * 1100 + ".x"}, "state is too long"),
    ("state garbage", lambda r: {**r, "state": "not-a-state"}, "the state parameter is malformed"),
    (
        "state with a bad version",
        lambda r: {**r, "state": "v2" + r["state"][2:]},
        "the state parameter has an unknown version",
    ),
    (
        "wrong app_id",
        lambda r: {**r, "app_id": OTHER_APP_ID},
        "this authorization is for another app",
    ),
]


def test_bad_redirects_are_refused_and_change_nothing(cb: Callback):
    redirect = cb.consent()
    before = cb.snapshot()

    for case, damage, message in BAD_REDIRECTS:
        for accept in (None, "application/json"):
            response = cb.call(redirect_event(damage(redirect), accept=accept))
            assert response.status == 400, (case, response.body)
            _assert_refused(response, 400, message)
            assert cb.snapshot() == before, case

    assert exchanges(cb.sim) == 0
    # The real redirect still works: none of the refused requests consumed anything.
    assert cb.call(redirect_event(redirect)).status == 200


def test_forged_state_from_the_sample_event_is_refused(cb: Callback):
    before = cb.snapshot()
    event = with_header(
        load_event("callback_redirect_bad_state.json"), "accept", "application/json"
    )

    response = cb.call(event)

    _assert_refused(response, 400, "was not issued by this service", reason="invalid_state")
    assert cb.snapshot() == before
    assert exchanges(cb.sim) == 0


def test_state_signed_with_another_secret_is_refused(cb: Callback):
    redirect = cb.consent()
    version, body, _mac = redirect["state"].split(".")
    forged = f"{version}.{body}.{'A' * 43}"
    before = cb.snapshot()

    response = cb.call(redirect_event({**redirect, "state": forged}))

    _assert_refused(response, 400, "the state parameter was not issued by this service")
    assert cb.snapshot() == before
    assert exchanges(cb.sim) == 0


def test_expired_state_is_refused_and_not_consumed(cb: Callback, monkeypatch: pytest.MonkeyPatch):
    redirect = cb.consent()
    expires_at = state_payload(redirect["state"])["e"]
    before = cb.snapshot()
    monkeypatch.setattr(cb.module, "time", SimpleNamespace(time=lambda: expires_at + 1.0))

    response = cb.call(redirect_event(redirect, accept="application/json"))

    _assert_refused(response, 400, "the authorization link has expired", reason="invalid_state")
    assert cb.snapshot() == before
    assert exchanges(cb.sim) == 0
    item = state_item(cb.db, cb.tokens_table, redirect["state"])
    assert item is not None
    assert "consumed_at" not in item


def test_replayed_state_with_another_code_is_refused(cb: Callback):
    redirect, granted = cb.grant()
    [auth_app_id] = granted["auth_app_ids"]
    second_code = requests.post(f"{cb.sim}/simulator/codes", json={}, timeout=10).json()
    before = cb.snapshot()

    response = cb.call(
        redirect_event(
            {**redirect, "app_auth_code": second_code["app_auth_code"]}, accept="application/json"
        )
    )

    _assert_refused(response, 409, "already used", reason="state_replayed")
    assert cb.snapshot() == before
    assert exchanges(cb.sim) == 1
    stored = cb.store.get(auth_app_id)
    assert stored is not None
    assert stored.version == 1
    assert cb.store.get(second_code["auth_app_ids"][0]) is None


def test_used_code_is_refused_by_alipay_and_consumes_the_state(cb: Callback):
    used, _ = cb.grant()
    fresh = cb.consent()
    merchants_before = cb.merchant_items()

    response = cb.call(
        redirect_event({**fresh, "app_auth_code": used["app_auth_code"]}, accept="application/json")
    )

    _assert_refused(response, 400, "Alipay refused this authorization code", reason="alipay_40002")
    assert cb.merchant_items() == merchants_before
    assert cb.service.simulator.state.pair_count() == 1
    item = state_item(cb.db, cb.tokens_table, fresh["state"])
    assert item is not None
    assert "consumed_at" in item  # a permanent refusal: the link is spent


def test_invalid_code_is_refused_and_stores_nothing(cb: Callback):
    fresh = cb.consent()

    response = cb.call(redirect_event({**fresh, "app_auth_code": "0123456789abcdefF00"}))

    _assert_refused(response, 400, "Alipay refused this authorization code")
    assert "请求无效" in response.body
    assert cb.merchant_items() == []
    assert cb.service.simulator.state.pair_count() == 0


# --- Alipay down, slow or forged ----------------------------------------------------------------


def test_alipay_unavailable_is_503_and_the_same_link_works_later(cb: Callback):
    redirect = cb.consent()
    set_faults(cb.sim, error_rate=1)
    before = cb.snapshot()

    response = cb.call(redirect_event(redirect, accept="application/json"))

    _assert_refused(response, 503, "please retry", reason="alipay_unavailable")
    assert response.headers["retry-after"] == "60"
    assert cb.snapshot() == before  # the state was released, no idempotency record is left
    item = state_item(cb.db, cb.tokens_table, redirect["state"])
    assert item is not None
    assert "consumed_at" not in item

    set_faults(cb.sim, error_rate=0)
    retried = cb.call(redirect_event(redirect, accept="application/json"))

    assert retried.status == 200, retried.body
    [auth_app_id] = retried.json()["auth_app_ids"]
    stored = cb.store.get(auth_app_id)
    assert stored is not None
    assert stored.version == 1


def test_timeout_after_alipay_processed_is_502_and_stores_nothing(cb: Callback):
    redirect = cb.consent()
    set_faults(cb.sim, timeout_rate=1, timeout_seconds=0.2, timeout_after_processing=True)

    response = cb.call(redirect_event(redirect, accept="application/json"))

    _assert_refused(response, 502, "Alipay did not confirm", reason="outcome_unknown")
    assert "retry-after" not in response.headers
    assert cb.merchant_items() == []
    assert cb.parked() == 0
    assert exchanges(cb.sim) == 1  # sent once, never resent
    assert cb.service.simulator.state.pair_count() == 1  # Alipay did issue a pair


@pytest.mark.parametrize("fault", ["tamper", "wrong_key"])
def test_forged_alipay_answer_is_502_and_stores_nothing(cb: Callback, fault: str):
    redirect = cb.consent()
    set_faults(cb.sim, response_fault=fault)

    response = cb.call(redirect_event(redirect))

    _assert_refused(response, 502, "Alipay's answer could not be verified")
    assert "支付宝未及时确认" in response.body
    assert cb.merchant_items() == []
    assert cb.parked() == 0
    issued = cb.service.simulator.state.merchant_ids()
    assert len(issued) == 1  # the pair exists at Alipay, but nothing unverified was stored
    assert cb.store.events(issued[0]) == []


# --- re-authorization -------------------------------------------------------------------------


def test_reauthorization_replaces_the_pair_and_an_older_pair_never_wins(cb: Callback):
    _, first = cb.grant()
    [auth_app_id] = first["auth_app_ids"]
    first_pair = cb.service.simulator.state.current_pair(auth_app_id)
    assert first_pair is not None
    first_stored = cb.store.get(auth_app_id)
    assert first_stored is not None

    again = cb.consent(auth_app_id=auth_app_id, merchant_ref="shop-2")
    response = cb.call(redirect_event(again, accept="application/json"))

    assert response.status == 200, response.body
    assert response.json()["auth_app_ids"] == [auth_app_id]
    second_pair = cb.service.simulator.state.current_pair(auth_app_id)
    assert second_pair is not None
    assert second_pair.app_auth_token != first_pair.app_auth_token
    stored = cb.store.get(auth_app_id)
    assert stored is not None
    assert (stored.status, stored.version, stored.merchant_ref) == ("granted", 2, "shop-2")
    assert cb.store.open_tokens(stored) == (
        second_pair.app_auth_token,
        second_pair.app_refresh_token,
    )
    assert stored.token_issued_at is not None
    assert first_stored.token_issued_at is not None
    assert stored.token_issued_at > first_stored.token_issued_at

    # The first pair arriving late (e.g. a redelivered notification) must not overwrite it.
    late = TokenGrant(
        auth_app_id=auth_app_id,
        user_id=first_pair.user_id,
        app_auth_token=first_pair.app_auth_token,
        app_refresh_token=first_pair.app_refresh_token,
        expires_in=31536000,
        re_expires_in=32140800,
        received_at=first_stored.token_issued_at,
    )
    result = cb.store.save_grant(late, source="notification")

    assert not result.stored
    after = cb.store.get(auth_app_id)
    assert after is not None
    assert after.version == 2
    assert cb.store.open_tokens(after)[0] == second_pair.app_auth_token
    assert [event.event for event in cb.store.events(auth_app_id)] == [
        "token_pair_stored",
        "token_pair_stored",
        "older_pair_ignored",
    ]


# --- notifications ------------------------------------------------------------------------------


def _notify(cb: Callback, body: str | None = None, name: str = "callback_notify_granted.json"):
    event = load_event(name)
    return cb.call(with_body(event, body) if body is not None else event)


def _vector_biz_content(name: str) -> dict[str, Any]:
    body = load_event(name)["body"]
    params = dict(url_query("?" + body))
    content: dict[str, Any] = json.loads(params["biz_content"])
    return content


def test_granted_notification_stores_the_pair_it_carries(cb: Callback):
    response = _notify(cb)

    assert (response.status, response.body) == (200, "success")
    assert response.headers["content-type"].startswith("text/plain")
    detail = _vector_biz_content("callback_notify_granted.json")["detail"]
    stored = cb.store.get(VECTOR_AUTH_APP_ID)
    assert stored is not None
    assert (stored.status, stored.version) == ("granted", 1)
    assert stored.merchant_ref == "merchant-42"
    assert stored.user_id == detail["user_id"]
    assert stored.token_issued_at == datetime.fromtimestamp(detail["auth_time"] / 1000, UTC)
    assert cb.store.open_tokens(stored) == (detail["app_auth_token"], detail["app_refresh_token"])
    assert cb.raw_item(VECTOR_AUTH_APP_ID)["token_source"]["S"] == "notification"

    # Redelivery is harmless: the same pair is not written again.
    assert _notify(cb).body == "success"
    again = cb.store.get(VECTOR_AUTH_APP_ID)
    assert again is not None
    assert again.version == 1


def test_notification_during_misconfiguration_answers_fail_so_alipay_redelivers(cb: Callback):
    parameter = f"{cb.service.aws.ssm_prefix}/alipay-public-key"
    ssm = boto3.client("ssm", region_name=REGION, endpoint_url=cb.service.aws.endpoint_url)
    value = ssm.get_parameter(Name=parameter, WithDecryption=True)["Parameter"]["Value"]
    ssm.delete_parameter(Name=parameter)

    response = _notify(cb)

    assert (response.status, response.body) == (500, "fail")
    assert cb.store.get(VECTOR_AUTH_APP_ID) is None
    ssm.put_parameter(Name=parameter, Value=value, Type="SecureString")
    assert _notify(cb).body == "success"
    assert cb.store.get(VECTOR_AUTH_APP_ID) is not None


def test_cancelled_notification_revokes_the_merchant(cb: Callback):
    assert _notify(cb).body == "success"

    response = _notify(cb, name="callback_notify_cancelled.json")

    assert (response.status, response.body) == (200, "success")
    stored = cb.store.get(VECTOR_AUTH_APP_ID)
    assert stored is not None
    assert (stored.status, stored.version) == ("revoked", 2)
    assert stored.next_refresh_at is None
    assert "due_shard" not in cb.raw_item(VECTOR_AUTH_APP_ID)
    assert [event.event for event in cb.store.events(VECTOR_AUTH_APP_ID)][-1] == (
        "authorization_revoked"
    )
    # Redelivered: a no-op.
    assert _notify(cb, name="callback_notify_cancelled.json").body == "success"
    again = cb.store.get(VECTOR_AUTH_APP_ID)
    assert again is not None
    assert again.version == 2


def test_tampered_notifications_are_refused_and_change_nothing(cb: Callback):
    body = load_event("callback_notify_granted.json")["body"]
    before = cb.snapshot()

    for old, new in [
        ("merchant-42", "merchant-43"),  # inside biz_content
        ("status=execute_auth", "status=execute_authx"),  # a top-level field
        ("&sign=r4pX", "&sign=r4pY"),  # the signature itself
        ("&sign_type=RSA2", "&sign_type=RSA"),  # a downgrade
        ("&charset=utf-8", "&charset=utf-8&charset=gbk"),  # a repeated field
    ]:
        assert old in body
        response = _notify(cb, body.replace(old, new, 1))
        assert (response.status, response.body) == (400, "fail"), old
        assert cb.snapshot() == before, old


def _signed_notification(
    app_id: str, auth_app_id: str, *, auth_time: bool = True, notify_time: str | None = None
) -> str:
    """An ``open_app_auth_notify`` signed with the vectors' Alipay private key."""
    params = grant_notification(
        app_id,
        auth_app_id,
        tokens=(
            "202611BBselfsigned0000000000000000000X01",
            "202611BBselfsigned1111111111111111111X01",
        ),
        trigger_context={"out_biz_no": "self-1"},
        auth_time=auth_time,
        notify_time=notify_time,
    )
    return urlencode(alipay_signed({"notify_id": "2026112100222100000099", **params}))


def test_a_notification_without_auth_time_is_ranked_by_notify_time_or_refused(cb: Callback):
    ranked = _notify(
        cb,
        _signed_notification(
            cb.service.aws.app_id,
            "2021000100000079",
            auth_time=False,
            notify_time="2026-11-21 18:00:00",
        ),
    )
    assert (ranked.status, ranked.body) == (200, "success")
    stored = cb.store.get("2021000100000079")
    assert stored is not None
    assert stored.token_issued_at == datetime(2026, 11, 21, 10, 0, tzinfo=UTC)  # Beijing = UTC+8

    refused = _notify(
        cb,
        _signed_notification(
            cb.service.aws.app_id, "2021000100000080", auth_time=False, notify_time=""
        ),
    )
    assert (refused.status, refused.body) == (400, "fail")
    assert cb.store.get("2021000100000080") is None


def test_notification_for_another_app_is_refused(cb: Callback):
    # The same builder, with our app_id, is accepted: the refusal below is about the app_id.
    accepted = _notify(cb, _signed_notification(cb.service.aws.app_id, "2021000100000077"))
    assert (accepted.status, accepted.body) == (200, "success")
    before = cb.snapshot()

    response = _notify(cb, _signed_notification(OTHER_APP_ID, "2021000100000078"))

    assert (response.status, response.body) == (400, "fail")
    assert cb.snapshot() == before
    assert cb.store.get("2021000100000078") is None


# --- the start page -----------------------------------------------------------------------------


def test_start_page_shows_the_link_and_its_qr_code(cb: Callback):
    response = cb.call(load_event("callback_start_page.json"))

    assert response.status == 200, response.body
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-store"
    assert "请使用支付宝扫码" in response.body
    assert "Scan with the Alipay app" in response.body
    match = re.search(r'<a class="button" href="([^"]+)"', response.body)
    assert match
    escaped = match.group(1)
    assert "&amp;" in escaped
    assert "&state=" not in escaped  # every & is escaped in the attribute
    url = html.unescape(escaped)
    assert url.startswith(f"{cb.sim}/oauth2/appToAppAuth.htm?")
    query = url_query(url)
    assert query["app_id"] == cb.service.aws.app_id
    assert (
        query["redirect_uri"]
        == "https://abc123.execute-api.us-east-1.amazonaws.com/alipay/callback"
    )
    # The inline SVG is the QR code of exactly this link.
    assert "<svg" in response.body
    assert segno.make(url, error="m").svg_inline(scale=4, border=2) in response.body

    item = state_item(cb.db, cb.tokens_table, query["state"])
    assert item is not None
    expires_at = int(item["expires_at"]["N"])
    now = datetime.now(UTC).timestamp()
    assert now + 1800 - 10 <= expires_at <= now + 1800 + 1
    assert int(item["ttl"]["N"]) == expires_at + 86400
    assert item["merchant_ref"]["S"] == "shop-42"
    assert item["batch"]["BOOL"] is False
    assert "consumed_at" not in item


def test_start_page_batch_event(cb: Callback):
    response = cb.call(
        with_header(load_event("callback_start_batch.json"), "accept", "application/json")
    )

    assert response.status == 200, response.body
    data = response.json()
    assert data["batch"] is True
    assert "/oauth2/appToAppBatchAuth.htm?" in data["authorization_url"]
    state = url_query(data["authorization_url"])["state"]
    item = state_item(cb.db, cb.tokens_table, state)
    assert item is not None
    assert item["batch"]["BOOL"] is True


def test_start_page_redirects_when_asked(cb: Callback):
    event = with_query(load_event("callback_start_page.json"), {"redirect": "1"})

    response = cb.call(event)

    assert response.status == 302
    location = response.headers["location"]
    assert location.startswith(f"{cb.sim}/oauth2/appToAppAuth.htm?")
    assert response.body == ""
    assert state_item(cb.db, cb.tokens_table, url_query(location)["state"]) is not None
    # The link works: Alipay's consent page accepts it and redirects back.
    redirect = approve(cb.sim, location)
    assert cb.call(redirect_event(redirect)).status == 200


def test_start_page_refuses_bad_parameters(cb: Callback):
    before = cb.snapshot()

    for query, message in [
        ({"merchant_ref": "<script>"}, "merchant_ref must be"),
        ({"merchant_ref": "x" * 65}, "merchant_ref must be"),
        ({"batch": "1", "application_type": "TINYAPP,FOO"}, "application_type must be"),
        ({"application_type": "TINYAPP"}, "application_type is only for batch=1"),
        ({"batch": "yes"}, "batch must be 1 or 0"),
        ({"merchant_ref": "m", "padding": "x" * 5000}, "the query string is too long"),
    ]:
        response = cb.call(with_query(load_event("callback_start_page.json"), query))
        _assert_refused(response, 400, message)
        assert cb.snapshot() == before, query


# --- logs and metrics ---------------------------------------------------------------------------


def test_logs_carry_no_token_code_state_or_key(cb: Callback, capsys: pytest.CaptureFixture[str]):
    with logs_to_stdout(cb.module):
        redirect, granted = cb.grant()
        [auth_app_id] = granted["auth_app_ids"]
        refused = cb.consent()
        # A used code (refused by Alipay), then a forged state.
        cb.call(redirect_event({**refused, "app_auth_code": redirect["app_auth_code"]}))
        cb.call(redirect_event({**refused, "state": refused["state"][:-4] + "AAAA"}))

    out, err = capsys.readouterr()
    logs = out + err
    assert "Authorization complete" in logs  # the logs were captured
    assert "Request refused" in logs
    assert "Kx2mTgWrIAMEVxA=" in logs  # the correlation id (the request id)
    stored = cb.store.get(auth_app_id)
    assert stored is not None
    token, refresh = cb.store.open_tokens(stored)
    for secret in (
        token,
        refresh,
        redirect["app_auth_code"],
        refused["app_auth_code"],
        redirect["state"],
        refused["state"],
        cb.service.aws.state_secret,
    ):
        assert secret not in logs
    for window in windows(read_vector_file("keys/app_private_pkcs8.pem")):
        assert window not in logs


def test_metrics_count_grants_and_failures_by_reason(
    cb: Callback, capsys: pytest.CaptureFixture[str]
):
    cb.grant()
    granted = emf_documents(capsys.readouterr().out)
    assert [value for _, value in metric_values(granted, "AuthorizationsGranted")] == [[1.0]]
    assert metric_values(granted, "AuthorizationsFailedByReason") == []
    for document in granted:
        assert document["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "AlipayAppAuth"

    cb.call(load_event("callback_redirect_bad_state.json"))
    failed = emf_documents(capsys.readouterr().out)
    assert metric_values(failed, "AuthorizationsFailedByReason") == [
        ({"reason": "invalid_state", "service": "appauth"}, [1.0])
    ]
    assert [value for _, value in metric_values(failed, "AuthorizationsFailed")] == [[1.0]]
    assert metric_values(failed, "AuthorizationsGranted") == []


# --- misconfiguration ---------------------------------------------------------------------------


def test_missing_private_key_is_a_500_that_names_the_parameter_only_in_the_log(
    cb: Callback, capsys: pytest.CaptureFixture[str]
):
    redirect = cb.consent()
    parameter = f"{cb.service.aws.ssm_prefix}/app-private-key"
    ssm = boto3.client("ssm", region_name=REGION, endpoint_url=cb.service.aws.endpoint_url)
    ssm.delete_parameter(Name=parameter)
    capsys.readouterr()
    before = cb.snapshot()

    with logs_to_stdout(cb.module):
        page = cb.call(redirect_event(redirect))
        as_json = cb.call(redirect_event(redirect, accept="application/json"))

    assert page.status == as_json.status == 500
    assert "The service is misconfigured." in page.body
    assert as_json.json() == {"error": {"reason": "misconfigured"}}
    for body in (page.body, as_json.body):
        assert "app-private-key" not in body
        assert cb.service.aws.ssm_prefix not in body
        assert "Traceback" not in body
    logs = capsys.readouterr().out
    assert parameter in logs
    assert "Service misconfigured" in logs
    assert cb.snapshot() == before  # the state was not consumed
    assert exchanges(cb.sim) == 0

    # Once the operator puts the parameter back, the same link works.
    ssm.put_parameter(
        Name=parameter,
        Value=read_vector_file("keys/app_private_pkcs8.pem"),
        Type="SecureString",
    )
    assert cb.call(redirect_event(redirect)).status == 200
