"""Behaviour of the v2/v3 signing layer beyond the fixed vectors."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from appauth.alipay.aes import aes_decrypt, aes_encrypt, load_encrypt_key
from appauth.alipay.credentials import AppCredentials
from appauth.alipay.errors import AlipayError, SignatureError
from appauth.alipay.signing import (
    beijing_timestamp,
    build_request,
    extract_response,
    parse_form,
    rsa_sign,
    rsa_verify,
    sign_content,
    verify_notification,
    verify_response,
)
from appauth.alipay.signing_v3 import (
    build_v3_request,
    encode_query,
    parse_authorization,
    verify_v3_response,
)
from tests.unit.helpers import (
    alipay_private_key,
    alipay_sign,
    app_public_key,
    key_path,
    read_vector_file,
    signed_body,
    vector_data,
)

METHOD = "alipay.open.auth.token.app"
NODE = "alipay_open_auth_token_app_response"
GATEWAY = "https://openapi.alipay.com/gateway.do"
NOW = datetime(2026, 11, 21, 2, 0, 0, tzinfo=UTC)
SUCCESS = {"code": "10000", "msg": "Success", "app_auth_token": "201904BBtoken", "expires_in": 1}


def _compact(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _sn_of(file: str) -> str:
    (sn,) = (v["sn"] for v in vector_data()["cert_sn"] if v["file"] == file)
    return str(sn)


@pytest.fixture(scope="module")
def aes_credentials() -> AppCredentials:
    data = vector_data()
    return AppCredentials.from_keys(
        data["app_id"],
        read_vector_file(key_path("app_private")),
        read_vector_file(key_path("alipay_public")),
        encrypt_key=data["aes"][0]["key"],
    )


# --- Beijing timestamp ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2026, 1, 1, 0, 30, tzinfo=UTC), "2026-01-01 08:30:00"),
        (datetime(2025, 12, 31, 16, 0, 0, tzinfo=UTC), "2026-01-01 00:00:00"),
        (datetime(2026, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=-5))), "2026-01-01 13:30:00"),
        (
            datetime(2026, 1, 1, 8, 30, 15, tzinfo=timezone(timedelta(hours=8))),
            "2026-01-01 08:30:15",
        ),
    ],
)
def test_beijing_timestamp_of_aware_datetimes(moment, expected):
    assert beijing_timestamp(moment) == expected


def test_beijing_timestamp_rejects_naive_datetime():
    with pytest.raises(ValueError, match="aware"):
        beijing_timestamp(datetime(2026, 1, 1, 0, 30))


@pytest.mark.parametrize("zone", ["UTC", "America/New_York", "Asia/Tokyo", "Pacific/Kiritimati"])
def test_beijing_timestamp_now_ignores_host_zone(zone, monkeypatch):
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        before = datetime.now(UTC) + timedelta(hours=8)
        stamp = datetime.strptime(beijing_timestamp(), "%Y-%m-%d %H:%M:%S")
        after = datetime.now(UTC) + timedelta(hours=8)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert before.replace(tzinfo=None, microsecond=0) <= stamp <= after.replace(tzinfo=None)


# --- sign_content --------------------------------------------------------------------------


def test_sign_content_drops_empty_values_and_sign_keeps_sign_type_and_sorts():
    params = {
        "version": "1.0",
        "sign": "SIGNATURE",
        "sign_type": "RSA2",
        "app_id": "1",
        "empty": "",
        "none": None,
        "Zed": "upper sorts first",
        "biz_content": '{"a":"x&y=z"}',
        "zero": "0",
    }
    assert sign_content(params) == (
        'Zed=upper sorts first&app_id=1&biz_content={"a":"x&y=z"}&sign_type=RSA2&version=1.0&zero=0'
    )


# --- build_request -------------------------------------------------------------------------


def _split(request: Any) -> tuple[dict[str, str], dict[str, str]]:
    url = urlsplit(request.url)
    assert f"{url.scheme}://{url.netloc}{url.path}" == GATEWAY
    query = parse_qsl(url.query, keep_blank_values=True, strict_parsing=True)
    body = parse_qsl(request.body.decode("ascii"), keep_blank_values=True, strict_parsing=True)
    # no key appears twice
    assert len(dict(query)) == len(query)
    assert len(dict(body)) == len(body)
    return dict(query), dict(body)


def test_build_request_system_params_in_query_and_only_biz_content_in_body(app_credentials):
    biz = {"grant_type": "authorization_code", "code": "a&b=c+d 中/%"}
    request = build_request(app_credentials, GATEWAY, METHOD, biz, now=NOW)
    query, body = _split(request)
    assert set(body) == {"biz_content"}
    assert "biz_content" not in query
    assert set(query) == {
        "app_id", "method", "format", "charset", "sign_type", "timestamp", "version", "sign",
    }  # fmt: skip
    assert query["app_id"] == vector_data()["app_id"]
    assert query["method"] == METHOD
    assert query["sign_type"] == "RSA2"
    assert query["charset"] == "utf-8"
    assert query["timestamp"] == "2026-11-21 10:00:00"
    assert json.loads(body["biz_content"]) == biz
    # the body is exactly what was signed: re-verify from the wire form with the app public key
    signed = {k: v for k, v in query.items() if k != "sign"} | body
    assert rsa_verify(sign_content(signed), query["sign"], app_public_key())
    assert request.headers["Content-Type"].startswith("application/x-www-form-urlencoded")


def test_build_request_sends_a_string_biz_content_unchanged(app_credentials):
    text = '{"b": 1,  "a":"\\u4e2d"}'
    request = build_request(app_credentials, GATEWAY, METHOD, text, now=NOW)
    query, body = _split(request)
    assert body["biz_content"] == text
    assert rsa_verify(sign_content({**query, **body}), query["sign"], app_public_key())


def test_build_request_without_biz_content_has_empty_body(app_credentials):
    request = build_request(app_credentials, GATEWAY, METHOD, now=NOW)
    query, body = _split(request)
    assert request.body == b""
    assert body == {}
    assert rsa_verify(sign_content(query), query["sign"], app_public_key())


def test_build_request_app_auth_token_and_extra_params(app_credentials):
    plain_query, _ = _split(build_request(app_credentials, GATEWAY, METHOD, {}, now=NOW))
    assert "app_auth_token" not in plain_query
    assert "notify_url" not in plain_query
    request = build_request(
        app_credentials,
        GATEWAY,
        METHOD,
        {"x": 1},
        app_auth_token="201712BB_token",
        extra_params={"notify_url": "https://isv.example.com/n?a=1&b=商", "return_url": ""},
        now=NOW,
    )
    query, body = _split(request)
    assert query["app_auth_token"] == "201712BB_token"
    assert query["notify_url"] == "https://isv.example.com/n?a=1&b=商"
    assert "return_url" not in query
    assert "app_cert_sn" not in query
    assert "alipay_root_cert_sn" not in query
    assert rsa_verify(sign_content({**query, **body}), query["sign"], app_public_key())


def test_build_request_url_with_existing_query(app_credentials):
    request = build_request(app_credentials, GATEWAY + "?charset=utf-8", METHOD, {}, now=NOW)
    assert request.url.startswith(GATEWAY + "?charset=utf-8&")


def test_build_request_cert_mode_adds_cert_sns(cert_credentials):
    request = build_request(cert_credentials, GATEWAY, METHOD, {"x": 1}, now=NOW)
    query, body = _split(request)
    assert query["app_cert_sn"] == _sn_of("certs/app_cert.crt")
    assert query["alipay_root_cert_sn"] == _sn_of("certs/alipay_root_cert.crt")
    assert rsa_verify(sign_content({**query, **body}), query["sign"], app_public_key())


def test_build_request_aes_round_trip(aes_credentials):
    biz = {"grant_type": "authorization_code", "code": "授权码/1"}
    request = build_request(aes_credentials, GATEWAY, METHOD, biz, encrypt=True, now=NOW)
    query, body = _split(request)
    assert query["encrypt_type"] == "AES"
    assert "授权码" not in body["biz_content"]
    key = load_encrypt_key(vector_data()["aes"][0]["key"])
    assert json.loads(aes_decrypt(body["biz_content"], key)) == biz
    # encrypt then sign: the signature covers the ciphertext
    assert rsa_verify(sign_content({**query, **body}), query["sign"], app_public_key())


def test_build_request_without_encrypt_has_no_encrypt_type(aes_credentials):
    query, body = _split(build_request(aes_credentials, GATEWAY, METHOD, {"a": 1}, now=NOW))
    assert "encrypt_type" not in query
    assert json.loads(body["biz_content"]) == {"a": 1}


def test_build_request_encrypt_without_key_is_refused(app_credentials):
    with pytest.raises(ValueError, match="encrypt"):
        build_request(app_credentials, GATEWAY, METHOD, {"a": 1}, encrypt=True, now=NOW)


# --- verify_response -----------------------------------------------------------------------


def test_success_verifies(app_credentials):
    body = signed_body(NODE, _compact(SUCCESS))
    assert verify_response(body, METHOD, app_credentials) == SUCCESS


def test_success_without_sign_is_rejected(app_credentials):
    body = json.dumps({NODE: SUCCESS})
    with pytest.raises(SignatureError):
        verify_response(body, METHOD, app_credentials)


def test_success_without_code_and_without_sign_is_rejected(app_credentials):
    body = json.dumps({NODE: {"app_auth_token": "x"}})
    with pytest.raises(SignatureError):
        verify_response(body, METHOD, app_credentials)


def test_unsigned_error_under_method_node(app_credentials):
    node = {"code": "40004", "msg": "Business Failed", "sub_code": "isv.x", "sub_msg": "失败"}
    with pytest.raises(AlipayError) as caught:
        verify_response(json.dumps({NODE: node}), METHOD, app_credentials)
    assert caught.value.signed is False
    assert (caught.value.code, caught.value.msg) == ("40004", "Business Failed")
    assert (caught.value.sub_code, caught.value.sub_msg) == ("isv.x", "失败")


def test_signed_error_with_a_bad_signature_is_a_signature_error(app_credentials):
    node = _compact({"code": "40004", "msg": "Business Failed"})
    body = signed_body(NODE, node, signed_text=node.replace("40004", "40002"))
    with pytest.raises(SignatureError):
        verify_response(body, METHOD, app_credentials)


def test_escaped_slashes_verify_against_the_unescaped_text(app_credentials):
    data = {**SUCCESS, "url": "https://isv.example.com/cb/x"}
    text = _compact(data)
    escaped = text.replace("/", "\\/")
    assert escaped != text
    body = signed_body(NODE, escaped, signed_text=text)
    assert verify_response(body, METHOD, app_credentials) == data
    # and the other way round: signature over the escaped text as sent
    body = signed_body(NODE, escaped)
    assert verify_response(body, METHOD, app_credentials) == data


def test_escaped_slashes_do_not_make_a_forgery_verify(app_credentials):
    text = _compact({**SUCCESS, "url": "https://a.example/x"})
    forged = text.replace("a.example", "b.example").replace("/", "\\/")
    body = signed_body(NODE, forged, signed_text=text)
    with pytest.raises(SignatureError):
        verify_response(body, METHOD, app_credentials)


def test_duplicate_method_node_is_rejected(app_credentials):
    good = _compact(SUCCESS)
    evil = _compact({**SUCCESS, "app_auth_token": "attacker"})
    for extra_first in (True, False):
        body = signed_body(NODE, good, extra=f',"{NODE}":{evil}')
        if extra_first:
            body = signed_body(NODE, evil, signed_text=good, extra=f',"{NODE}":{good}')
        with pytest.raises(SignatureError, match=NODE):
            verify_response(body, METHOD, app_credentials)


def test_duplicate_sign_is_rejected(app_credentials):
    body = signed_body(NODE, _compact(SUCCESS))
    body = body[:-1] + ',"sign":"AAAA"}'
    with pytest.raises(SignatureError):
        verify_response(body, METHOD, app_credentials)


def test_error_response_used_only_when_method_node_absent(app_credentials):
    error = '{"code":"20000","msg":"Service Currently Unavailable"}'
    body = signed_body(NODE, _compact(SUCCESS), extra=f',"error_response":{error}')
    assert extract_response(body, METHOD).name == NODE
    assert verify_response(body, METHOD, app_credentials) == SUCCESS
    # a signed error_response does not lend its signature to a forged method node
    forged = _compact({**SUCCESS, "app_auth_token": "attacker"})
    body = f'{{"error_response":{error},"{NODE}":{forged},"sign":"{alipay_sign(error)}"}}'
    with pytest.raises(SignatureError):
        verify_response(body, METHOD, app_credentials)
    # with the method node absent, error_response is what is verified and raised
    body = signed_body("error_response", error)
    assert extract_response(body, METHOD).name == "error_response"
    with pytest.raises(AlipayError) as caught:
        verify_response(body, METHOD, app_credentials)
    assert caught.value.signed is True
    assert caught.value.code == "20000"


def test_a_node_of_another_method_is_not_accepted(app_credentials):
    body = signed_body("alipay_trade_query_response", _compact(SUCCESS))
    with pytest.raises(SignatureError):
        verify_response(body, METHOD, app_credentials)


def test_inner_sign_inside_values_does_not_confuse(app_credentials):
    data = {
        **SUCCESS,
        "memo": 'a "sign":"AAAA", } { and \\"sign\\"',
        "nested": {"sign": "inner", "alipay_cert_sn": "x", "list": ["}", "{", '"']},
    }
    text = _compact(data)
    body = signed_body(NODE, text)
    extracted = extract_response(body, METHOD)
    assert extracted.node.raw == text
    assert extracted.sign == alipay_sign(text)
    assert verify_response(body, METHOD, app_credentials) == data


@pytest.mark.parametrize(
    "suffix", ["x", "{}", ',"a":1}', "}", "\x00", '{"sign":"x"}', "\n]"], ids=repr
)
def test_trailing_garbage_is_rejected(suffix, app_credentials):
    body = signed_body(NODE, _compact(SUCCESS))
    assert verify_response(body + "\n ", METHOD, app_credentials) == SUCCESS
    with pytest.raises(SignatureError):
        verify_response(body + suffix, METHOD, app_credentials)


def test_every_truncation_is_rejected(app_credentials):
    body = signed_body(NODE, _compact(SUCCESS))
    for end in range(len(body)):
        with pytest.raises(SignatureError):
            verify_response(body[:end], METHOD, app_credentials)


@pytest.mark.parametrize(
    "body",
    ["", " ", "[]", "null", "1", '"text"', "true", f'[{{"{NODE}":{{}}}}]', "{", "{}", "{,}"],
    ids=repr,
)
def test_non_object_or_empty_bodies_are_rejected(body, app_credentials):
    with pytest.raises(SignatureError):
        verify_response(body, METHOD, app_credentials)


def test_non_string_keys_or_non_object_node_are_rejected(app_credentials):
    for body in (
        f"{{1:{_compact(SUCCESS)}}}",
        signed_body(NODE, '"not json inside"'),
        signed_body(NODE, "[1,2]"),
        signed_body(NODE, "10000"),
        f'{{"{NODE}":{_compact(SUCCESS)},"sign":12}}',
    ):
        with pytest.raises(SignatureError):
            verify_response(body, METHOD, app_credentials)


def test_non_utf8_bytes_are_rejected(app_credentials):
    body = signed_body(NODE, _compact({**SUCCESS, "msg": "成功"})).encode("utf-8")
    assert verify_response(body, METHOD, app_credentials)["msg"] == "成功"
    for bad in (body.replace("成功".encode(), "成功".encode("gbk")), b"\xff" + body):
        with pytest.raises(SignatureError):
            verify_response(bad, METHOD, app_credentials)


def _encrypted_body(data: dict[str, Any], *, sign_quoted: bool = True) -> str:
    key = load_encrypt_key(vector_data()["aes"][0]["key"])
    ciphertext = aes_encrypt(_compact(data), key)
    node = json.dumps(ciphertext)
    return signed_body(NODE, node, signed_text=node if sign_quoted else ciphertext)


def test_encrypted_response_verifies_then_decrypts(aes_credentials):
    assert verify_response(_encrypted_body(SUCCESS), METHOD, aes_credentials) == SUCCESS


def test_encrypted_response_signature_must_cover_the_quotes(aes_credentials):
    with pytest.raises(SignatureError):
        verify_response(_encrypted_body(SUCCESS, sign_quoted=False), METHOD, aes_credentials)


def test_encrypted_response_without_key_is_rejected(app_credentials):
    with pytest.raises(SignatureError, match="AES"):
        verify_response(_encrypted_body(SUCCESS), METHOD, app_credentials)


def test_encrypted_error_is_a_signed_alipay_error(aes_credentials):
    body = _encrypted_body({"code": "40002", "msg": "Invalid Arguments", "sub_code": "isv.x"})
    with pytest.raises(AlipayError) as caught:
        verify_response(body, METHOD, aes_credentials)
    assert (caught.value.code, caught.value.sub_code, caught.value.signed) == (
        "40002", "isv.x", True,
    )  # fmt: skip


def test_signed_ciphertext_that_does_not_decrypt_is_rejected(aes_credentials):
    node = json.dumps("bm90IGNpcGhlcnRleHQ=")
    with pytest.raises(SignatureError):
        verify_response(signed_body(NODE, node), METHOD, aes_credentials)


def test_key_mode_ignores_alipay_cert_sn(app_credentials):
    body = signed_body(NODE, _compact(SUCCESS), extra=',"alipay_cert_sn":"whatever"')
    assert verify_response(body, METHOD, app_credentials) == SUCCESS


# --- AlipayError classification ------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        AlipayError("20000", "Service Currently Unavailable", sub_code="isp.unknow-error"),
        AlipayError("20000", "Service Currently Unavailable"),
        AlipayError("invalid-x", "m", http_status=500),
        AlipayError("invalid-x", "m", http_status=503),
        AlipayError("too-many", "m", http_status=429),
        AlipayError("40004", "Business Failed", sub_code="aop.app-call-limited"),
        AlipayError("40004", "Business Failed", sub_code="ISP.CALL-LIMITED"),
    ],
    ids=repr,
)
def test_transient_errors(error):
    assert error.transient
    assert not error.permanent


@pytest.mark.parametrize(
    "error",
    [
        AlipayError("40002", "Invalid Arguments", sub_code="isv.invalid-signature"),
        AlipayError("40002", "Invalid Arguments", sub_code="isv.code-invalid"),
        AlipayError(
            "20001", "Insufficient Token Permissions", sub_code="aop.invalid-app-auth-token"
        ),
        AlipayError("20001", "m", sub_code="aop.app-auth-token-time-out"),
        AlipayError("invalid-auth-token", "m", http_status=401),
        AlipayError("40006", "Insufficient Permissions", http_status=200),
    ],
    ids=repr,
)
def test_permanent_errors(error):
    assert error.permanent
    assert not error.transient


def test_unsigned_vector_gateway_error_is_transient(app_credentials):
    (vector,) = (v for v in vector_data()["v2_responses"] if v["expect"] == "unsigned_error")
    with pytest.raises(AlipayError) as caught:
        verify_response(vector["body"], vector["method"], app_credentials)
    assert caught.value.transient


# --- v3 ------------------------------------------------------------------------------------


def test_encode_query_is_rfc3986():
    query = {"app_auth_token": "a b/c+d&e=f~_.-", "x y": "中"}
    assert encode_query(query) == "app_auth_token=a%20b%2Fc%2Bd%26e%3Df~_.-&x%20y=%E4%B8%AD"
    assert encode_query({}) == ""
    assert encode_query(None) == ""


def _v3_signed_content(request: Any, token: str | None) -> tuple[str, str]:
    fields = parse_authorization(request.headers["authorization"])
    signature = fields.pop("sign")
    auth = ",".join(f"{k}={v}" for k, v in fields.items())
    content = f"{auth}\n{request.http_method}\n{request.path_with_query}\n"
    content += request.body.decode("utf-8") + "\n"
    if token:
        content += token + "\n"
    return content, signature


@pytest.mark.parametrize("token", [None, "201712BB_merchant"])
def test_v3_request_signed_content_with_and_without_app_auth_token(token, app_credentials):
    request = build_v3_request(
        app_credentials,
        "get",
        "/v3/alipay/open/auth/token/app/query",
        query={"app_auth_token": "201904BB/x+y"},
        app_auth_token=token,
    )
    assert request.http_method == "GET"
    assert request.path_with_query == (
        "/v3/alipay/open/auth/token/app/query?app_auth_token=201904BB%2Fx%2By"
    )
    assert request.body == b""
    content, signature = _v3_signed_content(request, token)
    assert rsa_verify(content, signature, app_public_key())
    if token:
        assert request.headers["alipay-app-auth-token"] == token
        # the token line is really part of the signed content
        untokened, _ = _v3_signed_content(request, None)
        assert not rsa_verify(untokened, signature, app_public_key())
    else:
        assert "alipay-app-auth-token" not in request.headers
    assert "alipay-root-cert-sn" not in request.headers
    fields = parse_authorization(request.headers["authorization"])
    assert "app_cert_sn" not in fields
    assert fields["app_id"] == vector_data()["app_id"]


def test_v3_request_headers_and_fresh_nonce(app_credentials):
    first = build_v3_request(app_credentials, "POST", "/v3/x", body={"a": "中"})
    second = build_v3_request(app_credentials, "POST", "/v3/x", body={"a": "中"})
    assert json.loads(first.body) == {"a": "中"}
    assert first.headers["content-type"] == "application/json"
    assert first.headers["accept"] == "application/json"
    assert first.headers["alipay-request-id"] != second.headers["alipay-request-id"]
    nonces = {parse_authorization(r.headers["authorization"])["nonce"] for r in (first, second)}
    assert len(nonces) == 2
    stamp = int(parse_authorization(first.headers["authorization"])["timestamp"])
    assert abs(stamp - time.time() * 1000) < 60_000


def test_v3_cert_mode_request(cert_credentials):
    request = build_v3_request(cert_credentials, "POST", "/v3/x", body="{}")
    fields = parse_authorization(request.headers["authorization"])
    assert fields["app_cert_sn"] == _sn_of("certs/app_cert.crt")
    assert list(fields) == ["app_id", "app_cert_sn", "nonce", "timestamp", "sign"]
    assert request.headers["alipay-root-cert-sn"] == _sn_of("certs/alipay_root_cert.crt")
    content, signature = _v3_signed_content(request, None)
    assert rsa_verify(content, signature, app_public_key())


def _v3_headers(body: str, *, sn: str | None = None, **extra: str) -> dict[str, str]:
    timestamp, nonce = "1763690400123", "n0nce"
    headers = {
        "Alipay-Timestamp": timestamp,
        "Alipay-Nonce": nonce,
        "Alipay-Signature": alipay_sign(f"{timestamp}\n{nonce}\n{body}\n"),
    }
    if sn is not None:
        headers["alipay-sn"] = sn
    return headers | extra


def test_v3_signed_success_with_mixed_case_headers(app_credentials):
    body = '{"app_auth_token":"t"}'
    assert verify_v3_response(200, _v3_headers(body), body, app_credentials) == {
        "app_auth_token": "t"
    }


@pytest.mark.parametrize("status", [200, 201, 204])
def test_v3_unsigned_success_is_rejected(status, app_credentials):
    with pytest.raises(SignatureError):
        verify_v3_response(
            status, {"alipay-trace-id": "t"}, '{"app_auth_token":"t"}', app_credentials
        )


def test_v3_partially_signed_success_is_rejected(app_credentials):
    body = '{"app_auth_token":"t"}'
    headers = _v3_headers(body)
    del headers["Alipay-Nonce"]
    with pytest.raises(SignatureError):
        verify_v3_response(200, headers, body, app_credentials)


def test_v3_signed_success_that_is_not_an_object_is_rejected(app_credentials):
    for body in ("[1]", "not json", '"text"', "null"):
        with pytest.raises(SignatureError):
            verify_v3_response(200, _v3_headers(body), body, app_credentials)


def test_v3_signed_error_with_bad_signature_is_a_signature_error(app_credentials):
    body = '{"code":"invalid-auth-token","message":"m"}'
    headers = _v3_headers(body)
    with pytest.raises(SignatureError):
        verify_v3_response(401, headers, body.replace("invalid", "expired"), app_credentials)


def test_v3_signed_error_is_signed_alipay_error(app_credentials):
    body = '{"code":"invalid-auth-token","message":"无效"}'
    headers = _v3_headers(body, **{"alipay-trace-id": "tr-1"})
    with pytest.raises(AlipayError) as caught:
        verify_v3_response(401, headers, body, app_credentials)
    assert (caught.value.code, caught.value.msg) == ("invalid-auth-token", "无效")
    assert (caught.value.signed, caught.value.trace_id, caught.value.http_status) == (
        True, "tr-1", 401,
    )  # fmt: skip
    assert caught.value.permanent


@pytest.mark.parametrize("body", ["", "<html>502 Bad Gateway</html>", "[]"])
def test_v3_unsigned_error_without_json_body(body, app_credentials):
    with pytest.raises(AlipayError) as caught:
        verify_v3_response(502, {}, body, app_credentials)
    assert caught.value.code == "http-502"
    assert caught.value.signed is False
    assert caught.value.transient


def test_v3_cert_mode_response_sn_selects_key(cert_credentials):
    body = '{"a":1}'
    sn = _sn_of("certs/alipay_cert.crt")
    assert verify_v3_response(200, _v3_headers(body, sn=sn), body, cert_credentials) == {"a": 1}
    with pytest.raises(SignatureError, match="not configured"):
        verify_v3_response(200, _v3_headers(body, sn=sn[::-1]), body, cert_credentials)


# --- notifications -------------------------------------------------------------------------


def _notification(**overrides: str) -> dict[str, str]:
    params = {
        "notify_id": "n1",
        "notify_type": "open_app_auth_notify",
        "app_id": vector_data()["app_id"],
        "charset": "utf-8",
        "version": "1.0",
        "sign_type": "RSA2",
        "biz_content": '{"detail":{"app_auth_token":"t"}}',
    } | overrides
    params["sign"] = alipay_sign(sign_content(params))
    return params


def test_notification_signed_by_alipay_verifies(app_credentials):
    verify_notification(_notification(), app_credentials)


def test_notification_with_a_different_sign_type_is_rejected(app_credentials):
    params = _notification()
    params["sign_type"] = "RSA"
    # a valid RSA2 signature under the "sign_type dropped" rule: only the sign_type check rejects
    params["sign"] = alipay_sign(sign_content(params, exclude=("sign", "sign_type")))
    # and a valid SHA1 signature, the algorithm the sender asks for, is refused too
    sha1 = dict(params, sign=rsa_sign(sign_content(params), alipay_private_key(), "RSA"))
    with pytest.raises(SignatureError, match="sign_type"):
        verify_notification(sha1, app_credentials)
    with pytest.raises(SignatureError, match="sign_type"):
        verify_notification(params, app_credentials)


def test_notification_without_sign_type_verifies(app_credentials):
    params = _notification()
    del params["sign_type"]
    params["sign"] = alipay_sign(sign_content(params))
    verify_notification(params, app_credentials)


@pytest.mark.parametrize("sign", [None, ""])
def test_notification_missing_sign_is_rejected(sign, app_credentials):
    params = _notification()
    if sign is None:
        del params["sign"]
    else:
        params["sign"] = sign
    with pytest.raises(SignatureError, match="no sign"):
        verify_notification(params, app_credentials)


def test_notification_signed_by_the_app_key_is_rejected(app_credentials):
    params = _notification()
    params["sign"] = rsa_sign(sign_content(params), app_credentials.private_key)
    with pytest.raises(SignatureError):
        verify_notification(params, app_credentials)


def test_notification_added_field_is_rejected(app_credentials):
    params = _notification()
    params["status"] = "cancel_auth"
    with pytest.raises(SignatureError):
        verify_notification(params, app_credentials)


def test_notification_empty_field_added_still_verifies(app_credentials):
    params = _notification()
    params["out_biz_no"] = ""
    verify_notification(params, app_credentials)


def test_repeated_form_field_is_rejected():
    with pytest.raises(SignatureError, match="status"):
        parse_form("status=execute_auth&sign=x&status=cancel_auth")


def test_parse_form_decodes_exactly_once():
    assert parse_form("a=%2541&b=x%2By+z&c=&d=%E5%95%86") == {
        "a": "%41", "b": "x+y z", "c": "", "d": "商",
    }  # fmt: skip
