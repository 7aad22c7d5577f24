"""POST /alipay/notify through the callback function's real handler, AWS played by the template's
stack on moto: bodies as API Gateway hands them over (text or base64), decoded in the form's own
charset, verified, and processed once per notify_id (Powertools Idempotency).

Alipay stops redelivering only when the body is exactly ``success``; anything else is ``fail``.
"""

from __future__ import annotations

import base64
import json
from typing import Any
from urllib.parse import urlencode

import pytest
from botocore.exceptions import ClientError

from appauth.runtime import runtime
from tests.conftest import read_vector_file
from tests.integration.callback_helpers import (
    CallbackFunction,
    HttpResponse,
    alipay_signed,
    grant_notification,
    load_event,
    logs_to_stdout,
)
from tests.integration.conftest import ServiceStack

VECTOR_APP_ID = "2021000100000001"  # the ISV app of the vectors (the stack's app_id)
VECTOR_AUTH_APP_ID = "2018042501227906"  # the merchant app of the notification vectors
OTHER_APP_ID = "2021000199999999"
GRANTED = "callback_notify_granted.json"
CANCELLED = "callback_notify_cancelled.json"


class Notify(CallbackFunction):
    """The callback function's notify route, with the local stack behind it."""

    @property
    def app_id(self) -> str:
        return self.service.aws.app_id

    def text(self, body: str, template: str = GRANTED) -> HttpResponse:
        """The notification as API Gateway hands a text body over."""
        event = load_event(template)
        event["body"] = body
        event["isBase64Encoded"] = False
        return self.call(event)

    def b64(self, body: bytes | str, template: str = GRANTED) -> HttpResponse:
        """The notification as API Gateway hands a binary body over: base64 (or, given a str, the
        base64 text as is)."""
        event = load_event(template)
        event["body"] = base64.b64encode(body).decode("ascii") if isinstance(body, bytes) else body
        event["isBase64Encoded"] = True
        return self.call(event)

    def event(self, name: str) -> HttpResponse:
        return self.call(load_event(name))

    def audit(self, auth_app_id: str = VECTOR_AUTH_APP_ID) -> list[str]:
        return [event.event for event in self.store.events(auth_app_id)]


@pytest.fixture
def nt(service: ServiceStack) -> Notify:
    return Notify.load(service)


def _store_error(operation: str = "TransactWriteItems") -> ClientError:
    return ClientError({"Error": {"Code": "InternalServerError", "Message": "injected"}}, operation)


def _vector_body(name: str) -> str:
    body: str = load_event(name)["body"]
    return body


def _granted_params(
    app_id: str,
    auth_app_id: str,
    *,
    charset: str = "utf-8",
    notify_id: str | None = "2026112100222100000077",
    memo: str = "商户授权成功（测试）",
) -> dict[str, str]:
    params = grant_notification(
        app_id,
        auth_app_id,
        tokens=(
            "202611BBgbksigned00000000000000000000X01",
            "202611BBgbksigned11111111111111111111X01",
        ),
        trigger_context={"out_biz_no": "merchant-gbk", "memo": memo},
        charset=charset,
    )
    if notify_id is not None:
        params["notify_id"] = notify_id
    return alipay_signed(params, charset=charset)


def _encoded(params: dict[str, str], charset: str) -> bytes:
    return urlencode(params, encoding=charset).encode("ascii")


# --- the vectors -------------------------------------------------------------------------------


def _vectors(expect: str) -> list[Any]:
    data = json.loads(read_vector_file("vectors.json"))
    return [
        pytest.param(vector, id=vector["name"].split(" (")[0].split(":")[0])
        for vector in data["notifications"]
        if vector["expect"] == expect
    ]


@pytest.mark.parametrize("vector", _vectors("accept"))
@pytest.mark.parametrize("delivery", ["text", "base64"])
def test_each_notification_vector_is_accepted_and_stored(
    nt: Notify, vector: dict[str, Any], delivery: str
):
    body: str = vector["form_body"]
    response = nt.text(body) if delivery == "text" else nt.b64(body.encode("ascii"))

    assert (response.status, response.body) == (200, "success")
    assert response.headers["content-type"].startswith("text/plain")
    stored = nt.store.get(VECTOR_AUTH_APP_ID)
    assert stored is not None
    if vector["params"].get("notify_type") == "open_app_auth_notify":
        assert (stored.status, stored.merchant_ref) == ("granted", "merchant-42")
        assert nt.audit() == ["token_pair_stored"]
    else:
        # A cancellation of a merchant never stored still records the revocation, so that an
        # older pair arriving later (a parked one) cannot bring the merchant back.
        assert stored.status == "revoked"
        assert nt.audit() == ["authorization_revoked"]
    assert len(nt.idempotency_records()) == 1


@pytest.mark.parametrize("vector", _vectors("reject"))
def test_each_rejected_vector_is_refused_and_changes_nothing(nt: Notify, vector: dict[str, Any]):
    before = nt.snapshot()
    response = nt.text(urlencode(vector["params"]))
    assert (response.status, response.body) == (400, "fail")
    assert nt.snapshot() == before


# --- charsets ----------------------------------------------------------------------------------


@pytest.mark.parametrize("charset", ["GBK", "gb18030", "utf-8"])
@pytest.mark.parametrize("escaped", [True, False], ids=["percent-escaped", "raw-bytes"])
def test_signed_notification_in_its_own_charset_is_accepted(
    nt: Notify, charset: str, escaped: bool
):
    params = _granted_params(nt.app_id, "2021000100000091", charset=charset)
    body = (
        _encoded(params, charset.lower())
        if escaped
        # Non-ASCII bytes left unescaped (only the form's delimiters escaped).
        else "&".join(
            f"{k}={v.replace('%', '%25').replace('&', '%26').replace('+', '%2B')}"
            for k, v in params.items()
        ).encode(charset.lower())
    )

    response = nt.b64(body)

    assert (response.status, response.body) == (200, "success")
    stored = nt.store.get("2021000100000091")
    assert stored is not None
    assert (stored.status, stored.merchant_ref) == ("granted", "merchant-gbk")
    assert nt.store.open_tokens(stored)[0] == "202611BBgbksigned00000000000000000000X01"


def _undecodable() -> list[Any]:
    gbk = _granted_params(VECTOR_APP_ID, "2021000100000092", charset="GBK")
    vector = _vector_body(GRANTED).encode("ascii")
    return [
        pytest.param(b"\xff\xfe\xfd", id="ff-fe-fd"),
        pytest.param(vector + b"&memo=%E5%95", id="truncated-char"),
        pytest.param(vector + b"&memo=\xe5\x95", id="truncated-raw-char"),
        # A GBK form (correctly signed over its GBK bytes) that claims to be UTF-8.
        pytest.param(_encoded({**gbk, "charset": "utf-8"}, "gbk"), id="gbk-bytes-claiming-utf-8"),
        pytest.param(_encoded({**gbk, "charset": "big5"}, "gbk"), id="unknown-charset"),
        pytest.param(vector + b"&charset=gbk", id="repeated-charset"),
        pytest.param("!!not base64!!", id="invalid-base64"),
        pytest.param("bm90aWZ5X2lk=", id="bad-base64-padding"),
        pytest.param("bm90aW\nZ5X2lkPTE=", id="base64-with-newline"),
        pytest.param("\u5546\u6237", id="non-ascii-base64"),
        pytest.param(b"a" * (70 * 1024), id="oversize"),
    ]


@pytest.mark.parametrize("body", _undecodable())
def test_undecodable_base64_bodies_are_a_400_fail_without_traceback(
    nt: Notify, capsys: pytest.CaptureFixture[str], body: bytes | str
):
    capsys.readouterr()
    before = nt.snapshot()

    with logs_to_stdout(nt.module):
        response = nt.b64(body)

    assert (response.status, response.body) == (400, "fail")
    assert response.headers["content-type"].startswith("text/plain")
    logs = "".join(capsys.readouterr())
    assert "Request refused" in logs  # the logs were captured
    for marker in ("Traceback", "UnicodeDecodeError", "Unexpected error", "binascii"):
        assert marker not in logs
    assert nt.snapshot() == before


def test_text_body_that_is_not_text_is_a_400_fail(nt: Notify, capsys: pytest.CaptureFixture[str]):
    before = nt.snapshot()
    with logs_to_stdout(nt.module):
        response = nt.text("notify_id=1&memo=\udcff")  # a lone surrogate: not encodable
    assert (response.status, response.body) == (400, "fail")
    assert "Traceback" not in "".join(capsys.readouterr())
    assert nt.snapshot() == before


# --- once per notify_id ------------------------------------------------------------------------


def test_duplicate_notify_id_is_processed_once_and_answered_success(nt: Notify):
    first = nt.event(GRANTED)
    again = nt.event(GRANTED)
    base64_again = nt.b64(_vector_body(GRANTED).encode("ascii"))

    assert [r.body for r in (first, again, base64_again)] == ["success"] * 3
    # Processed once: without de-duplication the redelivery records "older_pair_ignored".
    assert nt.audit() == ["token_pair_stored"]
    stored = nt.store.get(VECTOR_AUTH_APP_ID)
    assert stored is not None
    assert stored.version == 1
    [record] = nt.idempotency_records()
    assert record["status"]["S"] == "COMPLETED"


def test_duplicate_cancellation_calls_the_store_once(nt: Notify, monkeypatch: pytest.MonkeyPatch):
    calls: list[str] = []
    original = nt.store.mark_revoked

    def counting(auth_app_id: str, **kwargs: Any) -> bool:
        calls.append(auth_app_id)
        return original(auth_app_id, **kwargs)

    monkeypatch.setattr(nt.store, "mark_revoked", counting)

    assert [nt.event(CANCELLED).body for _ in range(3)] == ["success"] * 3
    assert calls == [VECTOR_AUTH_APP_ID]


def test_notification_without_notify_id_is_processed_every_time(nt: Notify):
    params = _granted_params(nt.app_id, "2021000100000093", notify_id=None)
    body = urlencode(params)

    assert nt.text(body).body == "success"
    assert nt.text(body).body == "success"

    # Processed twice (the second found the same pair stored), and no idempotency record.
    assert nt.audit("2021000100000093") == ["token_pair_stored", "older_pair_ignored"]
    assert nt.idempotency_records() == []


def test_concurrent_duplicate_gets_fail_and_alipay_retries(
    nt: Notify, monkeypatch: pytest.MonkeyPatch
):
    """The same notification arriving while the first delivery is being processed."""
    inner: list[HttpResponse] = []
    original = nt.store.mark_revoked

    def while_processing(auth_app_id: str, **kwargs: Any) -> bool:
        if not inner:
            inner.append(nt.event(CANCELLED))
        return original(auth_app_id, **kwargs)

    monkeypatch.setattr(nt.store, "mark_revoked", while_processing)

    outer = nt.event(CANCELLED)

    assert [(r.status, r.body) for r in inner] == [(503, "fail")]
    assert (outer.status, outer.body) == (200, "success")
    assert nt.audit() == ["authorization_revoked"]
    assert nt.event(CANCELLED).body == "success"  # a later redelivery: from the record
    assert nt.audit() == ["authorization_revoked"]


# --- failures while processing -----------------------------------------------------------------


def test_store_failure_answers_fail_and_the_redelivery_is_processed(
    nt: Notify, monkeypatch: pytest.MonkeyPatch
):
    def failing(auth_app_id: str, **kwargs: Any) -> bool:
        raise _store_error()

    with monkeypatch.context() as patch:
        patch.setattr(nt.store, "mark_revoked", failing)
        response = nt.event(CANCELLED)

    # A DynamoDB 5xx is our service being busy: 503 (Alipay reads only the body, "fail").
    assert (response.status, response.body) == (503, "fail")
    assert nt.store.get(VECTOR_AUTH_APP_ID) is None
    assert nt.idempotency_records() == []  # Powertools deleted it: the redelivery is not blocked

    redelivered = nt.event(CANCELLED)

    assert (redelivered.status, redelivered.body) == (200, "success")
    stored = nt.store.get(VECTOR_AUTH_APP_ID)
    assert stored is not None
    assert stored.status == "revoked"
    assert nt.audit() == ["authorization_revoked"]


def test_dynamodb_error_on_the_write_answers_fail_and_the_redelivery_is_processed(
    nt: Notify, monkeypatch: pytest.MonkeyPatch
):
    """The error comes from DynamoDB's client itself (the transaction the store writes)."""
    client = nt.store._db  # the store's own client (Powertools' record writes go through it too)
    original = client.transact_write_items
    failures: list[str] = []

    def failing_once(**kwargs: Any) -> Any:
        if not failures:
            failures.append("injected")
            raise _store_error()
        return original(**kwargs)

    monkeypatch.setattr(client, "transact_write_items", failing_once)

    assert nt.event(CANCELLED).body == "fail"
    assert nt.idempotency_records() == []
    assert nt.event(CANCELLED).body == "success"
    assert nt.audit() == ["authorization_revoked"]


def test_pair_the_store_refuses_is_parked_then_success_once(
    nt: Notify, monkeypatch: pytest.MonkeyPatch
):
    def failing(*args: Any, **kwargs: Any) -> Any:
        raise _store_error("UpdateItem")

    monkeypatch.setattr(nt.store, "save_grant", failing)

    first = nt.event(GRANTED)
    again = nt.event(GRANTED)

    assert [first.body, again.body] == ["success", "success"]  # durable: parked in the queue
    assert nt.parked() == 1  # the redelivery was not parked a second time


def test_pair_neither_stored_nor_parked_answers_fail_and_the_redelivery_is_processed(
    nt: Notify, monkeypatch: pytest.MonkeyPatch
):
    def failing(*args: Any, **kwargs: Any) -> Any:
        raise _store_error("UpdateItem")

    rt = runtime()
    with monkeypatch.context() as patch:
        patch.setattr(nt.store, "save_grant", failing)
        patch.setattr(rt, "park_for_redelivery", failing)
        response = nt.event(GRANTED)

    assert (response.status, response.body) == (503, "fail")
    assert nt.store.get(VECTOR_AUTH_APP_ID) is None
    assert nt.idempotency_records() == []

    assert nt.event(GRANTED).body == "success"
    stored = nt.store.get(VECTOR_AUTH_APP_ID)
    assert stored is not None
    assert stored.status == "granted"


# --- forged notifications never block the genuine one --------------------------------------------


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("merchant-42", "merchant-43"),  # inside biz_content
        ("2018042501227906", "2018042501227907"),  # the merchant app, inside biz_content
        ("&sign=r4pX", "&sign=r4pY"),  # the signature itself
        ("&app_id=2021000100000001", "&app_id=2021000199999999"),  # another ISV app
        ("&sign_type=RSA2", "&sign_type=RSA"),  # a downgrade
    ],
)
def test_tampered_notification_fails_and_the_genuine_one_is_still_processed(
    nt: Notify, old: str, new: str
):
    genuine = _vector_body(GRANTED)
    assert old in genuine
    before = nt.snapshot()

    for _ in range(2):
        response = nt.text(genuine.replace(old, new, 1))
        assert (response.status, response.body) == (400, "fail")
    assert nt.snapshot() == before  # no pair, no audit event, no idempotency record

    assert nt.event(GRANTED).body == "success"  # same notify_id
    stored = nt.store.get(VECTOR_AUTH_APP_ID)
    assert stored is not None
    assert stored.merchant_ref == "merchant-42"


def test_notification_signed_for_another_app_does_not_block_ours(nt: Notify):
    notify_id = "2026112100222100000088"
    before = nt.snapshot()
    foreign = _granted_params(OTHER_APP_ID, "2021000100000094", notify_id=notify_id)

    response = nt.text(urlencode(foreign))

    assert (response.status, response.body) == (400, "fail")
    assert nt.snapshot() == before
    ours = _granted_params(nt.app_id, "2021000100000094", notify_id=notify_id)
    assert nt.text(urlencode(ours)).body == "success"
    assert nt.store.get("2021000100000094") is not None


def test_undecodable_copy_does_not_block_the_genuine_notification(nt: Notify):
    genuine = _vector_body(GRANTED).encode("ascii")
    assert nt.b64(genuine + b"&memo=\xff").body == "fail"
    assert nt.b64(genuine.replace(b"charset=utf-8", b"charset=koi8-r")).body == "fail"
    assert nt.snapshot()[1] == []
    assert nt.b64(genuine).body == "success"


def test_idempotency_record_holds_no_token(nt: Notify):
    assert nt.event(GRANTED).body == "success"
    [record] = nt.idempotency_records()
    text = json.dumps(record)
    for secret in ("202611BBb1c2", "202611BBr1c2", "P9a1b2c3", "r4pXn8dM"):  # token, code, sign
        assert secret not in text
