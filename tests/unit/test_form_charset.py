"""Notification forms decoded in their own ``charset`` (utf-8, gbk, gb2312, gb18030), exactly once,
and verified over the bytes Alipay signs (the sign content in that charset)."""

from __future__ import annotations

import base64
from urllib.parse import quote, urlencode

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from appauth.alipay.credentials import AppCredentials
from appauth.alipay.errors import SignatureError
from appauth.alipay.keys import load_private_key
from appauth.alipay.signing import (
    FormDecodeError,
    parse_form,
    rsa_sign,
    sign_content,
    verify_notification,
)
from tests.conftest import read_vector_file

CHINESE = '{"msg":"授权成功","merchant":"杭州市西湖区某某商户（测试）"}'


def _form(charset: str, **extra: str) -> dict[str, str]:
    return {
        "notify_id": "2026112100222100000042",
        "charset": charset,
        "biz_content": CHINESE,
        "memo": "商户 a+b=c&d%e",
        **extra,
    }


@pytest.mark.parametrize("charset", ["GBK", "gbk", "gb2312", "GB2312", "gb18030", "GB18030"])
def test_gbk_family_form_decodes_to_the_chinese_text(charset: str):
    params = _form(charset)
    escaped = urlencode(params, encoding=charset.lower()).encode("ascii")
    assert b"%" in escaped
    assert escaped.isascii()

    assert parse_form(escaped) == params


def test_gbk_form_sent_as_raw_bytes_decodes_too():
    # Not every sender escapes non-ASCII bytes: raw GBK bytes in the body decode the same way.
    body = "charset=GBK&biz_content=".encode("ascii") + CHINESE.encode("gbk")
    assert parse_form(body) == {"charset": "GBK", "biz_content": CHINESE}


@pytest.mark.parametrize("charset", ["utf-8", "UTF-8", "Utf-8"])
def test_utf8_form_decodes(charset: str):
    params = _form(charset)
    assert parse_form(urlencode(params).encode("ascii")) == params
    assert parse_form(urlencode(params)) == params  # text as well as bytes


def test_no_charset_means_utf8():
    assert parse_form(b"a=%E5%95%86&b=x") == {"a": "商", "b": "x"}


def test_gbk_bytes_are_not_read_as_utf8():
    # The same characters, GBK-encoded: valid under charset=GBK, refused under UTF-8.
    gbk = quote("商户", encoding="gbk")
    assert parse_form(f"charset=GBK&m={gbk}".encode("ascii")) == {"charset": "GBK", "m": "商户"}
    with pytest.raises(FormDecodeError, match="utf-8"):
        parse_form(f"charset=utf-8&m={gbk}".encode("ascii"))
    with pytest.raises(FormDecodeError):
        parse_form(f"m={gbk}".encode("ascii"))


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"\xff\xfe\xfd", id="ff-fe-fd"),
        pytest.param(b"charset=utf-8&a=\xff\xfe\xfd", id="raw-invalid-bytes"),
        pytest.param(b"charset=utf-8&a=%FF%FE%FD", id="escaped-invalid-bytes"),
        pytest.param(b"charset=utf-8&a=%E5%95", id="truncated-utf8-char"),
        pytest.param(b"charset=utf-8&a=\xe5\x95", id="truncated-raw-utf8-char"),
        pytest.param(b"charset=gbk&a=%C9", id="truncated-gbk-char"),
        pytest.param(b"charset=gb2312&a=%81%40", id="gbk-only-char-claiming-gb2312"),
        pytest.param(b"\xff=1", id="invalid-key"),
    ],
)
def test_undecodable_bytes_raise_the_layers_error(body: bytes):
    with pytest.raises(FormDecodeError) as caught:
        parse_form(body)
    assert isinstance(caught.value, SignatureError)  # the route's "forged or undecodable"


@pytest.mark.parametrize(
    "charset", ["latin-1", "iso-8859-1", "big5", "utf8", "utf-16", "", "gbk ", "x" * 100]
)
def test_unknown_charset_is_refused(charset: str):
    with pytest.raises(FormDecodeError, match="charset"):
        parse_form(urlencode({"charset": charset, "a": "b"}).encode("ascii"))


def test_non_ascii_charset_value_is_refused():
    with pytest.raises(FormDecodeError, match="charset"):
        parse_form(b"charset=gb\xff&a=b")


@pytest.mark.parametrize(
    "body",
    [
        b"status=execute_auth&sign=x&status=cancel_auth",
        b"charset=utf-8&a=1&charset=gbk",  # which charset applies would be ambiguous
        b"charset=utf-8&%63harset=gbk",  # the same key, escaped
        b"a=1&a=1",  # even with the same value
        "charset=GBK&商=1&商=2".encode("gbk"),
    ],
)
def test_repeated_field_is_refused(body: bytes):
    with pytest.raises(FormDecodeError, match="repeats"):
        parse_form(body)


@pytest.mark.parametrize("charset", ["utf-8", "gbk", "gb18030"])
def test_percent_decoding_happens_exactly_once(charset: str):
    body = f"charset={charset}&a=%2541&b=%25E5%2595%2586&c=x%2By+z&d=%2525&e=".encode("ascii")
    assert parse_form(body) == {
        "charset": charset,
        "a": "%41",  # not "A"
        "b": "%E5%95%86",  # not "商"
        "c": "x+y z",
        "d": "%25",
        "e": "",
    }


def test_decoded_text_with_another_charset_must_be_given_as_bytes():
    with pytest.raises(FormDecodeError, match="bytes"):
        parse_form("charset=GBK&m=商户")
    assert parse_form("charset=GBK&m=%C9%CC%BB%A7") == {"charset": "GBK", "m": "商户"}


# --- verification over the bytes Alipay signs ------------------------------------------------


def _signed(params: dict[str, str], encoding: str) -> dict[str, str]:
    key = load_private_key(read_vector_file("keys/alipay_private_pkcs8.pem"))
    content = sign_content(params).encode(encoding)
    signature = key.sign(content, padding.PKCS1v15(), hashes.SHA256())
    return {**params, "sign": base64.b64encode(signature).decode("ascii")}


def _notification(charset: str) -> dict[str, str]:
    return {
        "notify_id": "2026112100222100000042",
        "notify_type": "open_app_auth_notify",
        "app_id": "2021000100000001",
        "charset": charset,
        "sign_type": "RSA2",
        "version": "1.0",
        "biz_content": CHINESE,
    }


def test_gbk_notification_verifies_over_its_gbk_bytes(app_credentials: AppCredentials):
    signed = _signed(_notification("GBK"), "gbk")
    body = urlencode(signed, encoding="gbk").encode("ascii")

    params = parse_form(body)

    assert params["biz_content"] == CHINESE
    verify_notification(params, app_credentials)
    tampered = {**params, "biz_content": CHINESE.replace("授权", "取消")}
    with pytest.raises(SignatureError):
        verify_notification(tampered, app_credentials)


def test_gbk_notification_signed_over_other_bytes_is_refused(app_credentials: AppCredentials):
    # Signed over the UTF-8 bytes while declaring GBK: not what Alipay signs, so refused.
    signed = _signed(_notification("GBK"), "utf-8")
    with pytest.raises(SignatureError):
        verify_notification(parse_form(urlencode(signed, encoding="gbk")), app_credentials)


def test_utf8_notification_still_verifies_the_usual_way(app_credentials: AppCredentials):
    key = load_private_key(read_vector_file("keys/alipay_private_pkcs8.pem"))
    params = _notification("utf-8")
    params["sign"] = rsa_sign(sign_content(params), key)
    verify_notification(parse_form(urlencode(params).encode("ascii")), app_credentials)
