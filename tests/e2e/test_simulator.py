"""The Alipay simulator, exercised over real HTTP with the signing layer's own client functions."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests

from appauth.alipay.credentials import AppCredentials
from appauth.alipay.errors import AlipayError, SignatureError
from appauth.alipay.signing import build_request, rsa_sign, sign_content, verify_response
from appauth.alipay.signing_v3 import build_v3_request, verify_v3_response
from appauth_dev.simulator import RunningSimulator
from appauth_dev.simulator.corruption import GARBAGE
from appauth_dev.simulator.state import RE_EXPIRES_IN

TOKEN_APP = "alipay.open.auth.token.app"
TOKEN_QUERY = "alipay.open.auth.token.app.query"
BASEINFO = "alipay.open.mini.baseinfo.query"
V3_TOKEN = "/v3/alipay/open/auth/token/app"
V3_QUERY = "/v3/alipay/open/auth/token/app/query"
TOKEN_SHAPE = re.compile(r"^\d{6}BB[0-9a-f]{32}X\d{2}$")
TIMEOUT = 10


# --- helpers ----------------------------------------------------------------------------------


def control(sim: RunningSimulator, name: str, body: dict[str, Any] | None = None) -> Any:
    response = requests.post(f"{sim.url}/simulator/{name}", json=body or {}, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()


def mint(sim: RunningSimulator, **body: Any) -> dict[str, Any]:
    result: dict[str, Any] = control(sim, "codes", body)
    return result


def post_v2(
    sim: RunningSimulator,
    creds: AppCredentials,
    method: str,
    biz: dict[str, Any] | None = None,
    **kwargs: Any,
) -> requests.Response:
    request = build_request(creds, sim.gateway_url, method, biz, **kwargs)
    return requests.post(request.url, data=request.body, headers=request.headers, timeout=TIMEOUT)


def v2(
    sim: RunningSimulator,
    creds: AppCredentials,
    method: str,
    biz: dict[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    return verify_response(post_v2(sim, creds, method, biz, **kwargs).text, method, creds)


def exchange(
    sim: RunningSimulator, creds: AppCredentials, code: str, **kwargs: Any
) -> dict[str, Any]:
    return v2(sim, creds, TOKEN_APP, {"grant_type": "authorization_code", "code": code}, **kwargs)


def refresh(sim: RunningSimulator, creds: AppCredentials, refresh_token: str) -> dict[str, Any]:
    return v2(
        sim, creds, TOKEN_APP, {"grant_type": "refresh_token", "refresh_token": refresh_token}
    )


def query(sim: RunningSimulator, creds: AppCredentials, token: str) -> dict[str, Any]:
    return v2(sim, creds, TOKEN_QUERY, {"app_auth_token": token})


def alipay_error(call: Any, *args: Any, **kwargs: Any) -> AlipayError:
    with pytest.raises(AlipayError) as info:
        call(*args, **kwargs)
    return info.value


def v3(
    sim: RunningSimulator,
    creds: AppCredentials,
    http_method: str,
    path: str,
    **kwargs: Any,
) -> tuple[requests.Response, dict[str, Any]]:
    request = build_v3_request(creds, http_method, path, **kwargs)
    response = requests.request(
        request.http_method,
        sim.url + request.path_with_query,
        data=request.body,
        headers=dict(request.headers),
        timeout=TIMEOUT,
    )
    return response, verify_v3_response(
        response.status_code, response.headers, response.text, creds
    )


def v3_error(
    sim: RunningSimulator, creds: AppCredentials, http_method: str, path: str, **kwargs: Any
) -> AlipayError:
    return alipay_error(v3, sim, creds, http_method, path, **kwargs)


# --- v2 token exchange --------------------------------------------------------------------------


def test_single_exchange_returns_top_level_fields_and_tokens(simulator, app_credentials):
    minted = mint(simulator)
    assert re.fullmatch(r"2021\d{12}", minted["auth_app_ids"][0])
    assert re.fullmatch(r"2088\d{12}", minted["user_id"])
    data = exchange(simulator, app_credentials, minted["app_auth_code"])
    assert data["code"] == "10000"
    assert data["msg"] == "Success"
    assert data["auth_app_id"] == minted["auth_app_ids"][0]
    assert data["user_id"] == minted["user_id"]
    assert data["expires_in"] == 31536000
    assert data["re_expires_in"] == 32140800
    assert TOKEN_SHAPE.match(data["app_auth_token"])
    assert TOKEN_SHAPE.match(data["app_refresh_token"])
    assert data["tokens"] == [{k: data[k] for k in data["tokens"][0]}]


def test_batch_exchange_returns_tokens_only(simulator, app_credentials):
    minted = mint(simulator, batch_size=3)
    data = exchange(simulator, app_credentials, minted["app_auth_code"])
    assert "app_auth_token" not in data
    assert [t["auth_app_id"] for t in data["tokens"]] == minted["auth_app_ids"]
    assert len({t["app_auth_token"] for t in data["tokens"]}) == 3
    assert all(t["user_id"] == minted["user_id"] for t in data["tokens"])


def test_code_is_single_use(simulator, app_credentials):
    code = mint(simulator)["app_auth_code"]
    exchange(simulator, app_credentials, code)
    error = alipay_error(exchange, simulator, app_credentials, code)
    assert (error.code, error.sub_code, error.signed) == ("40002", "isv.code-invalid", True)
    assert error.permanent
    unknown = alipay_error(exchange, simulator, app_credentials, "0" * 32)
    assert unknown.sub_code == "isv.code-invalid"


def test_codes_expire_by_the_simulator_clock(simulator, app_credentials):
    single = mint(simulator)["app_auth_code"]
    batch = mint(simulator, batch_size=2)["app_auth_code"]
    control(simulator, "clock", {"advance_seconds": 10 * 60})
    assert alipay_error(exchange, simulator, app_credentials, batch).sub_code == "isv.code-invalid"
    control(simulator, "clock", {"advance_seconds": 24 * 3600 - 10 * 60 - 1})
    assert exchange(simulator, app_credentials, single)["code"] == "10000"
    late = mint(simulator)["app_auth_code"]
    control(simulator, "clock", {"advance_seconds": 24 * 3600})
    assert alipay_error(exchange, simulator, app_credentials, late).sub_code == "isv.code-invalid"


def test_missing_fields_are_40001(simulator, app_credentials):
    error = alipay_error(
        v2, simulator, app_credentials, TOKEN_APP, {"grant_type": "authorization_code"}
    )
    assert (error.code, error.sub_code) == ("40001", "isv.missing-code")
    error = alipay_error(v2, simulator, app_credentials, TOKEN_APP, {})
    assert (error.code, error.sub_code) == ("40001", "isv.missing-grant-type")
    error = alipay_error(v2, simulator, app_credentials, TOKEN_APP, {"grant_type": "password"})
    assert (error.code, error.sub_code) == ("40002", "isv.invalid-grant-type")


# --- refresh, grace, revocation -------------------------------------------------------------------


def test_refresh_rotates_and_the_old_pair_works_only_for_the_grace(simulator, app_credentials):
    first = exchange(simulator, app_credentials, mint(simulator)["app_auth_code"])
    second = refresh(simulator, app_credentials, first["app_refresh_token"])
    assert second["auth_app_id"] == first["auth_app_id"]
    assert second["app_auth_token"] != first["app_auth_token"]
    assert second["app_refresh_token"] != first["app_refresh_token"]
    assert second["tokens"][0]["app_auth_token"] == second["app_auth_token"]
    # Within the grace both tokens work, but only the newest refresh token refreshes.
    assert query(simulator, app_credentials, first["app_auth_token"])["status"] == "valid"
    assert (
        v2(simulator, app_credentials, BASEINFO, {}, app_auth_token=first["app_auth_token"])["code"]
        == "10000"
    )
    stale = alipay_error(refresh, simulator, app_credentials, first["app_refresh_token"])
    assert (stale.code, stale.sub_code) == ("40002", "isv.refresh-token-invalid")
    control(simulator, "clock", {"advance_seconds": simulator.config.grace_seconds})
    gone = alipay_error(query, simulator, app_credentials, first["app_auth_token"])
    assert (gone.code, gone.sub_code) == ("20001", "aop.invalid-app-auth-token")
    gone = alipay_error(
        v2, simulator, app_credentials, BASEINFO, {}, app_auth_token=first["app_auth_token"]
    )
    assert gone.sub_code == "aop.invalid-app-auth-token"
    current = query(simulator, app_credentials, second["app_auth_token"])
    assert current["status"] == "valid"
    assert current["auth_app_id"] == first["auth_app_id"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", current["auth_end"])
    assert current["auth_methods"]
    assert simulator.state.current_pair(first["auth_app_id"]) is not None


def test_refresh_token_expires_after_re_expires_in(simulator, app_credentials):
    pair = exchange(simulator, app_credentials, mint(simulator)["app_auth_code"])
    control(simulator, "clock", {"advance_seconds": RE_EXPIRES_IN})
    error = alipay_error(refresh, simulator, app_credentials, pair["app_refresh_token"])
    assert error.sub_code == "isv.refresh-token-invalid"


def test_reauthorizing_an_app_issues_a_new_pair(simulator, app_credentials):
    first = exchange(simulator, app_credentials, mint(simulator)["app_auth_code"])
    again = mint(simulator, auth_app_id=first["auth_app_id"])
    assert again["user_id"] == first["user_id"]
    second = exchange(simulator, app_credentials, again["app_auth_code"])
    assert second["auth_app_id"] == first["auth_app_id"]
    assert second["app_auth_token"] != first["app_auth_token"]
    assert query(simulator, app_credentials, first["app_auth_token"])["status"] == "valid"
    assert (
        alipay_error(refresh, simulator, app_credentials, first["app_refresh_token"]).code
        == "40002"
    )


def test_revocation_stops_every_pair(simulator, app_credentials):
    first = exchange(simulator, app_credentials, mint(simulator)["app_auth_code"])
    second = refresh(simulator, app_credentials, first["app_refresh_token"])
    assert control(simulator, "revoke", {"auth_app_id": first["auth_app_id"]})["revoked_pairs"] == 2
    for token in (first["app_auth_token"], second["app_auth_token"]):
        assert query(simulator, app_credentials, token)["status"] == "invalid"
        error = alipay_error(v2, simulator, app_credentials, BASEINFO, {}, app_auth_token=token)
        assert error.code == "20001"
    assert (
        alipay_error(refresh, simulator, app_credentials, second["app_refresh_token"]).code
        == "40002"
    )
    unknown = requests.post(
        f"{simulator.url}/simulator/revoke",
        json={"auth_app_id": "2021999999999999"},
        timeout=TIMEOUT,
    )
    assert unknown.status_code == 404


def test_unknown_token_query_is_20001(simulator, app_credentials):
    error = alipay_error(query, simulator, app_credentials, "202601BB" + "0" * 32 + "X00")
    assert (error.code, error.sub_code, error.signed) == (
        "20001",
        "aop.invalid-app-auth-token",
        True,
    )


# --- gateway checks -----------------------------------------------------------------------------


def test_bad_signature_is_40002_under_the_method_node(
    simulator, app_credentials, vectors, vector_file
):
    forged = AppCredentials.from_keys(
        vectors["app_id"],
        vector_file(vectors["keys"]["alipay_private"]),
        vector_file(vectors["keys"]["alipay_public"]),
    )
    response = post_v2(simulator, forged, TOKEN_QUERY, {"app_auth_token": "x"})
    assert '"alipay_open_auth_token_app_query_response":' in response.text
    error = alipay_error(verify_response, response.text, TOKEN_QUERY, app_credentials)
    assert (error.code, error.msg, error.sub_code) == (
        "40002",
        "Invalid Arguments",
        "isv.invalid-signature",
    )
    assert error.sub_msg is not None
    assert error.sub_msg.startswith("验签出错")
    # Tampering with the signed biz_content after signing fails the same way.
    request = build_request(
        app_credentials, simulator.gateway_url, TOKEN_QUERY, {"app_auth_token": "a"}
    )
    tampered = request.body.replace(b"%22a%22", b"%22b%22")
    assert tampered != request.body
    response = requests.post(request.url, data=tampered, headers=request.headers, timeout=TIMEOUT)
    assert (
        alipay_error(verify_response, response.text, TOKEN_QUERY, app_credentials).sub_code
        == "isv.invalid-signature"
    )


def test_wrong_or_missing_envelope_fields(simulator, app_credentials, vectors, vector_file):
    other = AppCredentials.from_keys(
        "2021000100000002",
        vector_file(vectors["keys"]["app_private"]),
        vector_file(vectors["keys"]["alipay_public"]),
    )
    response = post_v2(
        simulator, other, TOKEN_APP, {"grant_type": "authorization_code", "code": "x"}
    )
    assert response.text.startswith('{"error_response":')
    error = alipay_error(verify_response, response.text, TOKEN_APP, app_credentials)
    assert (error.code, error.sub_code, error.signed) == ("40002", "isv.invalid-app-id", True)

    request = build_request(app_credentials, simulator.gateway_url, TOKEN_APP, {"grant_type": "x"})
    base, query_string = request.url.split("?", 1)
    params = dict(parse_qs(query_string))

    def without(*names: str) -> str:
        kept = {k: v[0] for k, v in params.items() if k not in names}
        return requests.post(
            f"{base}?{urlencode(kept)}", data=request.body, headers=request.headers, timeout=TIMEOUT
        ).text

    for missing, sub_code in (("app_id", "isv.missing-app-id"), ("sign", "isv.missing-signature")):
        error = alipay_error(verify_response, without(missing), TOKEN_APP, app_credentials)
        assert (error.code, error.sub_code) == ("40001", sub_code)
    error = alipay_error(v2, simulator, app_credentials, "alipay.trade.nonexistent", {})
    assert (error.code, error.sub_code) == ("40002", "isv.invalid-method")


def test_parameters_may_all_come_in_the_form_body(simulator, app_credentials):
    code = mint(simulator)["app_auth_code"]
    request = build_request(
        app_credentials,
        simulator.gateway_url,
        TOKEN_APP,
        {"grant_type": "authorization_code", "code": code},
    )
    response = requests.post(simulator.gateway_url, data=dict(request.params), timeout=TIMEOUT)
    assert verify_response(response.text, TOKEN_APP, app_credentials)["auth_app_id"]


def test_escaped_slashes_are_signed_unescaped(simulator, app_credentials):
    pair = exchange(simulator, app_credentials, mint(simulator)["app_auth_code"])
    control(simulator, "faults", {"escape_slashes": True})
    response = post_v2(
        simulator, app_credentials, BASEINFO, {}, app_auth_token=pair["app_auth_token"]
    )
    assert "https:\\/\\/" in response.text
    data = verify_response(response.text, BASEINFO, app_credentials)
    assert data["app_logo"].startswith("https://")


# --- v3 ---------------------------------------------------------------------------------------------


def test_v3_exchange_refresh_and_query(simulator, app_credentials):
    minted = mint(simulator)
    response, data = v3(
        simulator,
        app_credentials,
        "POST",
        V3_TOKEN,
        body={"grant_type": "authorization_code", "code": minted["app_auth_code"]},
    )
    assert response.status_code == 200
    assert "code" not in data
    assert data["auth_app_id"] == minted["auth_app_ids"][0]
    assert data["tokens"][0]["app_auth_token"] == data["app_auth_token"]
    _, refreshed = v3(
        simulator,
        app_credentials,
        "POST",
        V3_TOKEN,
        body={"grant_type": "refresh_token", "refresh_token": data["app_refresh_token"]},
    )
    assert refreshed["app_auth_token"] != data["app_auth_token"]
    _, status = v3(
        simulator,
        app_credentials,
        "GET",
        V3_QUERY,
        query={"app_auth_token": refreshed["app_auth_token"]},
    )
    assert status["status"] == "valid"
    # The merchant token may also ride in the alipay-app-auth-token header (and is signed).
    _, status = v3(
        simulator,
        app_credentials,
        "GET",
        V3_QUERY,
        query={"app_auth_token": refreshed["app_auth_token"]},
        app_auth_token=refreshed["app_auth_token"],
    )
    assert status["auth_app_id"] == data["auth_app_id"]


def test_v3_batch_and_errors(simulator, app_credentials, vectors, vector_file):
    minted = mint(simulator, batch_size=2)
    _, data = v3(
        simulator,
        app_credentials,
        "POST",
        V3_TOKEN,
        body={"grant_type": "authorization_code", "code": minted["app_auth_code"]},
    )
    assert set(data) == {"tokens"}
    assert len(data["tokens"]) == 2
    error = v3_error(
        simulator,
        app_credentials,
        "POST",
        V3_TOKEN,
        body={"grant_type": "authorization_code", "code": minted["app_auth_code"]},
    )
    assert (error.http_status, error.code, error.signed) == (400, "invalid-auth-code", True)
    assert error.trace_id
    error = v3_error(simulator, app_credentials, "GET", V3_QUERY, query={"app_auth_token": "nope"})
    assert (error.http_status, error.code) == (401, "invalid-app-auth-token")
    forged = AppCredentials.from_keys(
        vectors["app_id"],
        vector_file(vectors["keys"]["alipay_private"]),
        vector_file(vectors["keys"]["alipay_public"]),
    )
    error = v3_error(simulator, forged, "GET", V3_QUERY, query={"app_auth_token": "x"})
    assert (error.http_status, error.code) == (401, "invalid-signature")
    unsigned = requests.get(f"{simulator.url}{V3_QUERY}?app_auth_token=x", timeout=TIMEOUT)
    assert unsigned.status_code == 401
    assert unsigned.json()["code"] == "invalid-authorization"
    assert unsigned.json()["links"] == []
    assert requests.get(f"{simulator.url}/v3/nothing", timeout=TIMEOUT).status_code == 404
    assert requests.get(f"{simulator.url}{V3_TOKEN}", timeout=TIMEOUT).status_code == 405


def test_v3_signs_over_the_raw_query_as_received(simulator, app_credentials):
    request = build_v3_request(app_credentials, "GET", V3_QUERY, query={"app_auth_token": "a b"})
    assert "a%20b" in request.path_with_query
    # Same parameters, re-encoded differently on the wire: the signature must not hold.
    altered = request.path_with_query.replace("a%20b", "a+b")
    response = requests.get(simulator.url + altered, headers=dict(request.headers), timeout=TIMEOUT)
    assert (response.status_code, response.json()["code"]) == (401, "invalid-signature")


# --- cert mode and AES ---------------------------------------------------------------------------------


def test_cert_mode(cert_simulator, cert_credentials, app_credentials, vectors):
    alipay_sn = next(c["sn"] for c in vectors["cert_sn"] if c["file"] == "certs/alipay_cert.crt")
    response = post_v2(
        cert_simulator,
        cert_credentials,
        TOKEN_APP,
        {"grant_type": "authorization_code", "code": mint(cert_simulator)["app_auth_code"]},
    )
    assert json.loads(response.text)["alipay_cert_sn"] == alipay_sn
    data = verify_response(response.text, TOKEN_APP, cert_credentials)
    assert data["app_auth_token"]
    # Key-mode requests carry no app_cert_sn: refused.
    error = alipay_error(
        v2, cert_simulator, app_credentials, TOKEN_QUERY, {"app_auth_token": data["app_auth_token"]}
    )
    assert (error.code, error.sub_code) == ("40001", "isv.missing-app-cert-sn")
    response, status = v3(
        cert_simulator,
        cert_credentials,
        "GET",
        V3_QUERY,
        query={"app_auth_token": data["app_auth_token"]},
    )
    assert response.headers["alipay-sn"] == alipay_sn
    assert status["status"] == "valid"
    error = v3_error(
        cert_simulator,
        app_credentials,
        "GET",
        V3_QUERY,
        query={"app_auth_token": data["app_auth_token"]},
    )
    assert (error.http_status, error.code) == (400, "missing-app-cert-sn")


def test_aes_mode_decrypts_requests_and_encrypts_responses(aes_simulator, aes_credentials):
    code = mint(aes_simulator)["app_auth_code"]
    biz = {"grant_type": "authorization_code", "code": code}
    response = post_v2(aes_simulator, aes_credentials, TOKEN_APP, biz, encrypt=True)
    node = json.loads(response.text)["alipay_open_auth_token_app_response"]
    assert isinstance(node, str)
    assert code not in response.text
    data = verify_response(response.text, TOKEN_APP, aes_credentials)
    assert data["auth_app_id"]
    # A business error is encrypted too, and still verifies and decrypts.
    error = alipay_error(v2, aes_simulator, aes_credentials, TOKEN_APP, biz, encrypt=True)
    assert error.sub_code == "isv.code-invalid"
    # Plaintext calls still work; garbage ciphertext is refused.
    assert (
        v2(aes_simulator, aes_credentials, TOKEN_QUERY, {"app_auth_token": data["app_auth_token"]})[
            "status"
        ]
        == "valid"
    )
    # A correctly signed request whose "ciphertext" is garbage (build_request cannot make one).
    params = dict(build_request(aes_credentials, aes_simulator.gateway_url, TOKEN_APP).params)
    params.pop("sign")
    params.update(encrypt_type="AES", biz_content="not-base64!")
    params["sign"] = rsa_sign(sign_content(params), aes_credentials.private_key)
    response = requests.post(aes_simulator.gateway_url, data=params, timeout=TIMEOUT)
    assert (
        alipay_error(verify_response, response.text, TOKEN_APP, aes_credentials).sub_code
        == "isv.decryption-error"
    )


# --- consent pages ------------------------------------------------------------------------------------


def test_consent_page_approve_redirects_with_state(simulator, app_credentials):
    state = 'c3RhdGU=<&>"x'
    redirect = "https://isv.example.com/callback?tenant=a%26b"
    page = requests.get(
        f"{simulator.url}/oauth2/appToAppAuth.htm",
        params={"app_id": app_credentials.app_id, "redirect_uri": redirect, "state": state},
        timeout=TIMEOUT,
    )
    assert page.status_code == 200
    assert "text/html" in page.headers["Content-Type"]
    assert "确认授权" in page.text
    assert "Approve" in page.text
    assert "&lt;&amp;&gt;&quot;x" in page.text
    assert '<&>"x' not in page.text
    form = {
        "app_id": app_credentials.app_id,
        "redirect_uri": redirect,
        "state": state,
        "mode": "single",
    }
    approved = requests.post(
        f"{simulator.url}/oauth2/approve", data=form, allow_redirects=False, timeout=TIMEOUT
    )
    assert approved.status_code == 302
    location = urlsplit(approved.headers["Location"])
    assert (location.scheme, location.netloc, location.path) == (
        "https",
        "isv.example.com",
        "/callback",
    )
    got = parse_qs(location.query)
    assert got["tenant"] == ["a&b"]
    assert got["state"] == [state]
    assert got["app_id"] == [app_credentials.app_id]
    assert exchange(simulator, app_credentials, got["app_auth_code"][0])["code"] == "10000"


def test_batch_consent_page(simulator, app_credentials):
    params = {
        "app_id": app_credentials.app_id,
        "application_type": "TINYAPP,WEBAPP",
        "redirect_uri": "http://localhost:3000/cb",
    }
    page = requests.get(
        f"{simulator.url}/oauth2/appToAppBatchAuth.htm", params=params, timeout=TIMEOUT
    )
    assert page.status_code == 200
    approved = requests.post(
        f"{simulator.url}/oauth2/approve",
        data={**params, "mode": "batch"},
        allow_redirects=False,
        timeout=TIMEOUT,
    )
    got = parse_qs(urlsplit(approved.headers["Location"]).query)
    assert "state" not in got
    data = exchange(simulator, app_credentials, got["app_auth_code"][0])
    assert len(data["tokens"]) == 2


@pytest.mark.parametrize(
    "params",
    [
        {"app_id": "2021000100000002", "redirect_uri": "https://isv.example.com/cb"},
        {"redirect_uri": "https://isv.example.com/cb"},
        {"app_id": "APP", "redirect_uri": "/relative"},
        {"app_id": "APP", "redirect_uri": "javascript:alert(1)"},
        {"app_id": "APP", "redirect_uri": "https://isv.example.com/cb\r\nSet-Cookie: x=1"},
        {"app_id": "APP"},
    ],
)
def test_consent_rejects_bad_requests(simulator, app_credentials, params):
    params = {k: (app_credentials.app_id if v == "APP" else v) for k, v in params.items()}
    page = requests.get(f"{simulator.url}/oauth2/appToAppAuth.htm", params=params, timeout=TIMEOUT)
    assert page.status_code == 400
    approved = requests.post(
        f"{simulator.url}/oauth2/approve", data=params, allow_redirects=False, timeout=TIMEOUT
    )
    assert approved.status_code == 400
    assert simulator.state.merchant_ids() == []


# --- faults ----------------------------------------------------------------------------------------------


def test_error_rate_answers_unsigned_20000_without_changing_state(simulator, app_credentials):
    code = mint(simulator)["app_auth_code"]
    control(simulator, "faults", {"error_rate": 1})
    error = alipay_error(exchange, simulator, app_credentials, code)
    assert (error.code, error.sub_code, error.signed, error.transient) == (
        "20000",
        "isp.unknow-error",
        False,
        True,
    )
    v3err = v3_error(
        simulator,
        app_credentials,
        "POST",
        V3_TOKEN,
        body={"grant_type": "authorization_code", "code": code},
    )
    assert (v3err.http_status, v3err.signed, v3err.transient) == (503, False, True)
    control(simulator, "faults", {"error_rate": 0})
    assert exchange(simulator, app_credentials, code)["code"] == "10000"
    stats = requests.get(f"{simulator.url}/simulator/stats", timeout=TIMEOUT).json()["requests"]
    assert stats[TOKEN_APP] == {"fault_error": 1, "success": 1}
    assert stats["v3 alipay.open.auth.token.app"] == {"fault_error": 1}


def test_rate_limit_is_signed_and_transient(simulator, app_credentials):
    control(simulator, "faults", {"rate_limit_per_second": 1})
    first = alipay_error(query, simulator, app_credentials, "unknown")
    assert first.code == "20001"
    limited = alipay_error(query, simulator, app_credentials, "unknown")
    assert (limited.code, limited.sub_code, limited.signed, limited.transient) == (
        "40004",
        "isv.app-call-limited",
        True,
        True,
    )
    v3err = v3_error(simulator, app_credentials, "GET", V3_QUERY, query={"app_auth_token": "x"})
    assert (v3err.http_status, v3err.code, v3err.signed, v3err.transient) == (
        429,
        "app-call-limited",
        True,
        True,
    )


@pytest.mark.parametrize("after_processing", [True, False])
def test_timeout_drops_the_connection(simulator, app_credentials, after_processing):
    code = mint(simulator)["app_auth_code"]
    control(
        simulator,
        "faults",
        {"timeout_rate": 1, "timeout_seconds": 0.05, "timeout_after_processing": after_processing},
    )
    with pytest.raises(requests.ConnectionError):
        exchange(simulator, app_credentials, code)
    assert (len(simulator.state.merchant_ids()) == 1) is after_processing
    control(simulator, "faults", {"timeout_rate": 0})
    if after_processing:
        assert (
            alipay_error(exchange, simulator, app_credentials, code).sub_code == "isv.code-invalid"
        )
    else:
        assert exchange(simulator, app_credentials, code)["code"] == "10000"


@pytest.mark.parametrize("fault", ["tamper", "wrong_key", "drop_sign", "garbage", "truncate"])
def test_response_faults_fail_verification_after_processing(simulator, app_credentials, fault):
    control(simulator, "faults", {"response_fault": fault, "escape_slashes": True})
    with pytest.raises(SignatureError):
        exchange(simulator, app_credentials, mint(simulator)["app_auth_code"])
    with pytest.raises(SignatureError):
        v3(
            simulator,
            app_credentials,
            "POST",
            V3_TOKEN,
            body={"grant_type": "authorization_code", "code": mint(simulator)["app_auth_code"]},
        )
    # Alipay processed both calls; only the answers were damaged.
    assert len(simulator.state.merchant_ids()) == 2
    stats = requests.get(f"{simulator.url}/simulator/stats", timeout=TIMEOUT).json()["requests"]
    assert stats[TOKEN_APP] == {"corrupted": 1}
    assert stats["v3 alipay.open.auth.token.app"] == {"corrupted": 1}


def test_oversized_and_proxy_502_answers(simulator, app_credentials):
    control(simulator, "faults", {"response_fault": "oversized"})
    response = post_v2(simulator, app_credentials, TOKEN_QUERY, {"app_auth_token": "x"})
    assert response.status_code == 200
    assert len(response.content) > 1024 * 1024
    # Valid JSON with a valid signature: only a size limit rejects it.
    assert alipay_error(verify_response, response.text, TOKEN_QUERY, app_credentials).signed
    control(simulator, "faults", {"response_fault": "html_502"})
    response = post_v2(simulator, app_credentials, TOKEN_QUERY, {"app_auth_token": "x"})
    assert response.status_code == 502
    assert response.headers["Content-Type"].startswith("text/html")
    assert "502 Bad Gateway" in response.text
    assert "alipay-trace-id" not in response.headers


def test_response_fault_without_processing_leaves_state(simulator, app_credentials):
    code = mint(simulator)["app_auth_code"]
    control(
        simulator, "faults", {"response_fault": "tamper", "response_fault_after_processing": False}
    )
    with pytest.raises(SignatureError):
        exchange(simulator, app_credentials, code)
    assert simulator.state.merchant_ids() == []
    control(simulator, "faults", {"response_fault": None})
    assert exchange(simulator, app_credentials, code)["code"] == "10000"


def test_response_fault_rate_is_seeded(simulator, app_credentials):
    def outcomes() -> list[bool]:
        control(simulator, "faults", {"response_fault": "garbage", "response_fault_rate": 0.5})
        control(simulator, "faults", {"seed": 7})
        return [
            post_v2(simulator, app_credentials, TOKEN_QUERY, {"app_auth_token": "x"}).content
            == GARBAGE
            for _ in range(12)
        ]

    first = outcomes()
    assert 0 < sum(first) < 12
    assert outcomes() == first


def test_fault_and_control_inputs_are_validated(simulator):
    for name, body in (
        ("faults", {"error_rate": 2}),
        ("faults", {"nonsense": 1}),
        ("faults", {"escape_slashes": "yes"}),
        ("faults", {"response_fault": "nope"}),
        ("faults", {"response_fault_rate": 1.5}),
        ("faults", {"response_fault_after_processing": 1}),
        ("faults", {"seed": "1"}),
        ("clock", {"advance_seconds": -1}),
        ("codes", {"batch_size": 0}),
        ("codes", {"auth_app_id": 12}),
        ("revoke", {}),
    ):
        response = requests.post(f"{simulator.url}/simulator/{name}", json=body, timeout=TIMEOUT)
        assert response.status_code == 400, (name, body)
        assert "error" in response.json()


# --- robustness ---------------------------------------------------------------------------------------------


def test_oversized_body_is_413(simulator):
    response = requests.post(simulator.gateway_url, data=b"a=" + b"x" * 65 * 1024, timeout=TIMEOUT)
    assert response.status_code == 413
    response = requests.post(f"{simulator.url}{V3_TOKEN}", data=b"{" * (65 * 1024), timeout=TIMEOUT)
    assert response.status_code == 413


def test_garbage_never_crashes_the_server(simulator, app_credentials):
    garbage: list[tuple[str, str, bytes, dict[str, str]]] = [
        ("POST", "/gateway.do", b"\xff\xfe\x00garbage", {}),
        ("POST", "/gateway.do?a=1&a=2", b"", {}),
        ("POST", "/gateway.do", b'{"app_id": 1}', {"Content-Type": "application/json"}),
        ("POST", "/gateway.do?%zz=%", b"biz_content=%ff", {}),
        ("GET", "/gateway.do", b"", {}),
        ("POST", V3_TOKEN, b"\xff", {"authorization": "ALIPAY-SHA256withRSA"}),
        ("POST", V3_TOKEN, b"[]", {"authorization": "ALIPAY-SHA256withRSA app_id=1,nonce,sign=x"}),
        ("POST", V3_TOKEN, b"{}", {"authorization": "Bearer x"}),
        (
            "GET",
            V3_QUERY + "?app_auth_token=%ff",
            b"",
            {"authorization": "ALIPAY-SHA256withRSA sign=="},
        ),
        ("GET", "/oauth2/appToAppAuth.htm?app_id=%ff%fe", b"", {}),
        ("POST", "/oauth2/approve", b"\xff\xff", {}),
        ("POST", "/simulator/codes", b"\xff", {}),
        ("POST", "/simulator/codes", b"[1]", {}),
        ("PUT", "/simulator/codes", b"", {}),
        ("DELETE", "/nowhere", b"", {}),
    ]
    for method, path, body, headers in garbage:
        response = requests.request(
            method, simulator.url + path, data=body, headers=headers, timeout=TIMEOUT
        )
        assert response.status_code < 500, (method, path, response.status_code)
        if path.startswith("/gateway.do"):
            assert "error_response" in response.json()
    # A body that is valid JSON for the layer but not an object: signed 40002, not a crash.
    error = alipay_error(v2, simulator, app_credentials, TOKEN_APP, "[1,2]")
    assert error.sub_code == "isv.invalid-biz-content"
    assert exchange(simulator, app_credentials, mint(simulator)["app_auth_code"])["code"] == "10000"


def test_logs_never_carry_secrets(simulator, app_credentials, caplog):
    caplog.set_level("DEBUG", logger="appauth_dev.simulator")
    code = mint(simulator)["app_auth_code"]
    data = exchange(simulator, app_credentials, code)
    v3(
        simulator,
        app_credentials,
        "GET",
        V3_QUERY,
        query={"app_auth_token": data["app_auth_token"]},
    )
    text = caplog.text
    assert "gateway.do" in text
    for secret in (code, data["app_auth_token"], data["app_refresh_token"], "sign="):
        assert secret not in text


# --- the CLI ---------------------------------------------------------------------------------------------------


def test_cli_serves_until_sigterm(vectors):
    vectors_dir = Path(__file__).parent.parent / "vectors"
    command = [
        sys.executable,
        "-m",
        "appauth_dev.simulator.cli",
        "--port",
        "0",
        "--app-id",
        vectors["app_id"],
        "--app-public-key",
        str(vectors_dir / vectors["keys"]["app_public"]),
        "--alipay-private-key",
        str(vectors_dir / vectors["keys"]["alipay_private"]),
        "--seed",
        "1",
    ]
    root = Path(__file__).parent.parent.parent
    env_path = f"{root / 'layers' / 'signing'}:{root / 'devtools'}"
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        command,
        stdout=subprocess.PIPE,
        text=True,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        match = re.fullmatch(r"Alipay simulator listening on (http://127\.0\.0\.1:\d+)\n", line)
        assert match, line
        minted = requests.post(f"{match.group(1)}/simulator/codes", json={}, timeout=TIMEOUT).json()
        assert minted["app_auth_code"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_reset_clears_state_faults_and_clock(simulator, app_credentials):
    code = mint(simulator)["app_auth_code"]
    before = requests.get(f"{simulator.url}/simulator/clock", timeout=TIMEOUT).json()["now"]
    control(simulator, "clock", {"advance_seconds": 86400})
    control(simulator, "faults", {"error_rate": 1, "latency_ms": 1})
    assert control(simulator, "reset") == {"reset": True}
    assert (
        requests.get(f"{simulator.url}/simulator/clock", timeout=TIMEOUT).json()["now"]
        < before + 3600
    )
    faults = requests.get(f"{simulator.url}/simulator/faults", timeout=TIMEOUT).json()
    assert (faults["error_rate"], faults["latency_ms"]) == (0, 0)
    assert alipay_error(exchange, simulator, app_credentials, code).sub_code == "isv.code-invalid"
    # Reseeded: the same ids come back after a reset, so runs are reproducible.
    control(simulator, "reset")
    first = mint(simulator)
    control(simulator, "reset")
    assert mint(simulator) == first
