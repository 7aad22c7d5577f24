"""Every vector of vectors.json (made and checked by Alipay's official Node SDK), driven from the file."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from cryptography.hazmat.primitives import serialization

from appauth.alipay import keys
from appauth.alipay.aes import aes_decrypt, aes_encrypt, load_encrypt_key
from appauth.alipay.credentials import AppCredentials
from appauth.alipay.errors import AlipayError, SignatureError
from appauth.alipay.signing import (
    extract_response,
    parse_form,
    rsa_sign,
    rsa_verify,
    scan_members,
    sign_content,
    verify_notification,
    verify_response,
)
from appauth.alipay.signing_v3 import (
    auth_string,
    build_v3_request,
    request_sign_content,
    verify_v3_response,
)
from tests.unit.helpers import app_public_key, key_path, read_vector_file, vector_data, vector_ids

V = vector_data()


def _cases(section: str, *, where: Callable[[dict[str, Any]], bool] | None = None) -> Any:
    items = V[section]
    ids = vector_ids(section)
    return [
        pytest.param(item, id=ident)
        for item, ident in zip(items, ids, strict=True)
        if where is None or where(item)
    ]


def _has_member(body: str, name: str) -> bool:
    return name in json.loads(body)


def _auth_fields(auth: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in auth.split(","))


# --- keys ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def app_private_forms() -> dict[str, Any]:
    return {
        form: keys.load_private_key(read_vector_file(key_path(form)))
        for form in ("app_private", "app_private_pkcs1", "app_private_bare")
    }


def test_all_three_app_private_key_files_load_to_the_same_key(app_private_forms):
    numbers = {form: key.private_numbers() for form, key in app_private_forms.items()}
    assert len(numbers) == 3
    reference = numbers["app_private"]
    for form, value in numbers.items():
        assert value == reference, form
    # ...and it is the pair of app_public.
    assert reference.public_numbers == app_public_key().public_numbers()


def test_both_alipay_public_key_files_load_to_the_same_key():
    pem = keys.load_public_key(read_vector_file(key_path("alipay_public")))
    bare = keys.load_public_key(read_vector_file(key_path("alipay_public_bare")))
    assert pem.public_numbers() == bare.public_numbers()


# --- v2 requests ---------------------------------------------------------------------------


@pytest.mark.parametrize("vector", _cases("v2_requests"))
def test_v2_request_sign_content(vector):
    assert sign_content(vector["params"]) == vector["sign_content"]


@pytest.mark.parametrize("form", ["app_private", "app_private_pkcs1", "app_private_bare"])
@pytest.mark.parametrize("vector", _cases("v2_requests"))
def test_v2_request_signature_matches_byte_for_byte(vector, form, app_private_forms):
    ours = rsa_sign(sign_content(vector["params"]), app_private_forms[form], "RSA2")
    assert ours == vector["sign"]


@pytest.mark.parametrize("vector", _cases("v2_requests"))
def test_v2_request_signature_verifies_with_app_public(vector):
    assert rsa_verify(vector["sign_content"], vector["sign"], app_public_key())
    assert not rsa_verify(vector["sign_content"] + " ", vector["sign"], app_public_key())


# --- v2 responses --------------------------------------------------------------------------


@pytest.mark.parametrize("vector", _cases("v2_responses", where=lambda v: "signed_content" in v))
def test_v2_response_signed_content_is_the_raw_node_text(vector):
    extracted = extract_response(vector["body"], vector["method"])
    assert extracted.node.raw == vector["signed_content"]


@pytest.mark.parametrize("vector", _cases("v2_responses", where=lambda v: v["expect"] == "accept"))
def test_v2_response_accept(vector, app_credentials):
    expected = json.loads(vector["signed_content"])
    if expected.get("code") == "10000":
        assert verify_response(vector["body"], vector["method"], app_credentials) == expected
        # bytes as they come off the wire verify the same
        body = vector["body"].encode("utf-8")
        assert verify_response(body, vector["method"], app_credentials) == expected
    else:
        with pytest.raises(AlipayError) as caught:
            verify_response(vector["body"], vector["method"], app_credentials)
        assert caught.value.signed is True
        assert caught.value.code == expected["code"]
        assert caught.value.sub_code == expected["sub_code"]
        assert caught.value.sub_msg == expected["sub_msg"]


@pytest.mark.parametrize("vector", _cases("v2_responses", where=lambda v: v["expect"] == "reject"))
def test_v2_response_reject(vector, app_credentials):
    with pytest.raises(SignatureError):
        verify_response(vector["body"], vector["method"], app_credentials)


@pytest.mark.parametrize(
    "vector", _cases("v2_responses", where=lambda v: v["expect"] == "unsigned_error")
)
def test_v2_response_unsigned_error(vector, app_credentials):
    (node,) = (v for k, v in json.loads(vector["body"]).items() if k != "sign")
    with pytest.raises(AlipayError) as caught:
        verify_response(vector["body"], vector["method"], app_credentials)
    assert caught.value.signed is False
    assert caught.value.code == node["code"]
    assert caught.value.sub_code == node["sub_code"]


_CERT_RESPONSES = _cases(
    "v2_responses",
    where=lambda v: v["expect"] == "accept" and _has_member(v["body"], "alipay_cert_sn"),
)


def test_there_is_a_cert_mode_response_vector():
    assert _CERT_RESPONSES


@pytest.mark.parametrize("vector", _CERT_RESPONSES)
def test_v2_cert_mode_response_selects_key_by_alipay_cert_sn(vector, cert_credentials):
    sn = json.loads(vector["body"])["alipay_cert_sn"]
    assert sn in cert_credentials.alipay_public_keys
    expected = json.loads(vector["signed_content"])
    assert verify_response(vector["body"], vector["method"], cert_credentials) == expected


@pytest.mark.parametrize("vector", _CERT_RESPONSES)
def test_v2_cert_mode_response_unknown_sn_is_rejected(vector, cert_credentials):
    sn = json.loads(vector["body"])["alipay_cert_sn"]
    unknown = sn[::-1]
    assert unknown not in cert_credentials.alipay_public_keys
    body = vector["body"].replace(json.dumps(sn), json.dumps(unknown))
    assert scan_members(body)["alipay_cert_sn"][0].value == unknown
    with pytest.raises(SignatureError, match=unknown):
        verify_response(body, vector["method"], cert_credentials)


# --- v3 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", _cases("v3_requests"))
def test_v3_request_auth_string_and_sign_content(vector):
    fields = _auth_fields(vector["auth_string"])
    auth = auth_string(fields["app_id"], fields["nonce"], int(fields["timestamp"]))
    assert auth == vector["auth_string"]
    content = request_sign_content(
        auth, vector["http_method"], vector["url"], vector["body"], vector.get("app_auth_token")
    )
    assert content == vector["sign_content"]


@pytest.mark.parametrize("vector", _cases("v3_requests"))
def test_v3_request_signature(vector, app_credentials):
    assert rsa_sign(vector["sign_content"], app_credentials.private_key) == vector["sign"]
    assert rsa_verify(vector["sign_content"], vector["sign"], app_public_key())


@pytest.mark.parametrize("vector", _cases("v3_requests"))
def test_v3_build_request_gives_the_vector_authorization(vector, app_credentials):
    fields = _auth_fields(vector["auth_string"])
    url = urlsplit(vector["url"])
    request = build_v3_request(
        app_credentials,
        vector["http_method"],
        url.path,
        query=dict(parse_qsl(url.query)) or None,
        body=vector["body"],
        app_auth_token=vector.get("app_auth_token"),
        nonce=fields["nonce"],
        timestamp_ms=int(fields["timestamp"]),
    )
    assert request.headers["authorization"] == vector["authorization"]
    assert request.path_with_query == vector["url"]
    assert request.body == vector["body"].encode("utf-8")
    assert request.headers.get("alipay-app-auth-token") == vector.get("app_auth_token")


def _v3_verify(vector: dict[str, Any], credentials: AppCredentials) -> dict[str, Any]:
    return verify_v3_response(vector["status"], vector["headers"], vector["body"], credentials)


@pytest.mark.parametrize("vector", _cases("v3_responses", where=lambda v: v["expect"] == "accept"))
def test_v3_response_accept(vector, app_credentials):
    assert _v3_verify(vector, app_credentials) == json.loads(vector["body"])


@pytest.mark.parametrize("vector", _cases("v3_responses", where=lambda v: v["expect"] == "reject"))
def test_v3_response_reject(vector, app_credentials):
    with pytest.raises(SignatureError):
        _v3_verify(vector, app_credentials)


@pytest.mark.parametrize("vector", _cases("v3_responses", where=lambda v: v["expect"] == "error"))
def test_v3_response_error(vector, app_credentials):
    with pytest.raises(AlipayError) as caught:
        _v3_verify(vector, app_credentials)
    error = caught.value
    assert error.code == json.loads(vector["body"])["code"]
    assert error.msg == json.loads(vector["body"])["message"]
    assert error.trace_id == vector["headers"]["alipay-trace-id"]
    assert vector["headers"]["alipay-trace-id"] in str(error)
    assert error.http_status == vector["status"]
    assert error.signed is False


# --- notifications -------------------------------------------------------------------------


@pytest.mark.parametrize("vector", _cases("notifications", where=lambda v: "form_body" in v))
def test_notification_form_body_decodes_once_to_params(vector):
    assert parse_form(vector["form_body"]) == vector["params"]
    assert parse_form(vector["form_body"].encode("utf-8")) == vector["params"]


@pytest.mark.parametrize("vector", _cases("notifications", where=lambda v: v["expect"] == "accept"))
def test_notification_accept(vector, app_credentials):
    verify_notification(vector["params"], app_credentials)
    if "form_body" in vector:
        verify_notification(parse_form(vector["form_body"]), app_credentials)


@pytest.mark.parametrize("vector", _cases("notifications", where=lambda v: v["expect"] == "reject"))
def test_notification_reject(vector, app_credentials):
    with pytest.raises(SignatureError):
        verify_notification(vector["params"], app_credentials)


@pytest.mark.parametrize("vector", _cases("notifications", where=lambda v: "sign_content" in v))
def test_notification_sign_type_kept_or_dropped(vector, app_credentials):
    """Each vector was signed under one rule; only that rule's content verifies."""
    params = vector["params"]
    kept = sign_content(params, exclude=("sign",))
    dropped = sign_content(params, exclude=("sign", "sign_type"))
    assert vector["sign_content"] in (kept, dropped)
    other = dropped if vector["sign_content"] == kept else kept
    assert rsa_verify(vector["sign_content"], params["sign"], app_credentials.alipay_key(None))
    assert not rsa_verify(other, params["sign"], app_credentials.alipay_key(None))
    verify_notification(params, app_credentials)


def test_notification_vectors_cover_both_sign_type_rules():
    rules = {"sign_type=" in v["sign_content"] for v in V["notifications"] if "sign_content" in v}
    assert rules == {True, False}


# --- AES -----------------------------------------------------------------------------------


@pytest.mark.parametrize("vector", _cases("aes"))
def test_aes_encrypt(vector):
    key = load_encrypt_key(vector["key"])
    assert aes_encrypt(vector["plaintext"], key) == vector["ciphertext"]


@pytest.mark.parametrize("vector", _cases("aes"))
def test_aes_decrypt(vector):
    key = load_encrypt_key(vector["key"])
    assert aes_decrypt(vector["ciphertext"], key) == vector["plaintext"]


# --- certificates --------------------------------------------------------------------------


@pytest.mark.parametrize("vector", _cases("cert_sn"))
def test_cert_sn(vector):
    material = read_vector_file(vector["file"])
    if vector["root"]:
        assert keys.root_certificate_sn(material) == vector["sn"]
    else:
        assert keys.certificate_sn(keys.load_certificate(material)) == vector["sn"]


@pytest.mark.parametrize("vector", _cases("cert_public_keys"))
def test_cert_public_key_spki(vector):
    key = keys.load_public_key(read_vector_file(vector["file"]), name="alipay cert")
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert base64.b64encode(spki).decode("ascii") == vector["spki_base64"]


def _sn_of(file: str) -> str:
    (sn,) = (v["sn"] for v in V["cert_sn"] if v["file"] == file)
    return str(sn)


def test_cert_credentials_carry_the_vector_sns(cert_credentials):
    assert cert_credentials.app_cert_sn == _sn_of("certs/app_cert.crt")
    assert cert_credentials.alipay_root_cert_sn == _sn_of("certs/alipay_root_cert.crt")
    assert set(cert_credentials.alipay_public_keys) == {_sn_of("certs/alipay_cert.crt")}
