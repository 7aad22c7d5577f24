"""Certificate mode: a missing or wrong ``app_cert_sn`` / ``alipay_root_cert_sn`` is answered the
way Alipay answers it, and the layer's real AlipayClient surfaces it as an AlipayError carrying
the code, not as a signature failure."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import requests

from appauth.alipay.errors import AlipayError
from appauth.alipay.signing import build_request
from appauth.alipay.signing_v3 import build_v3_request
from appauth_dev.simulator import RunningSimulator, SimulatorControl
from tests.e2e.single_shot import make_client

TOKEN_APP = "alipay.open.auth.token.app"
V3_TOKEN = "/v3/alipay/open/auth/token/app"
TIMEOUT = 10
WRONG_SN = "0123456789abcdef0123456789abcdef"

# (what the credentials get wrong, v2 code, v2 sub_code, v3 code)
CASES = [
    ({"app_cert_sn": ""}, "40001", "isv.missing-app-cert-sn", "missing-app-cert-sn"),
    ({"app_cert_sn": WRONG_SN}, "40002", "isv.app-cert-not-exist", "app-cert-not-exist"),
    (
        {"alipay_root_cert_sn": ""},
        "40001",
        "isv.missing-alipay-root-cert-sn",
        "missing-alipay-root-cert-sn",
    ),
    (
        {"alipay_root_cert_sn": WRONG_SN},
        "40002",
        "isv.invalid-alipay-root-cert-sn",
        "invalid-alipay-root-cert-sn",
    ),
]


@pytest.mark.parametrize(("wrong", "code", "sub_code", "_v3_code"), CASES)
def test_v2_cert_sn_errors_come_under_the_method_node(
    cert_simulator: RunningSimulator, cert_credentials, wrong, code, sub_code, _v3_code
):
    creds = replace(cert_credentials, **wrong)
    minted = SimulatorControl(cert_simulator.url).codes()
    with pytest.raises(AlipayError) as info:
        make_client(cert_simulator, creds).exchange_code(minted["app_auth_code"])
    error = info.value
    assert (error.code, error.sub_code, error.signed) == (code, sub_code, True)
    assert error.msg in ("Missing Required Arguments", "Invalid Arguments")
    assert error.permanent
    # The raw answer: the method's own node, signed, naming no Alipay certificate.
    request = build_request(
        creds,
        cert_simulator.gateway_url,
        TOKEN_APP,
        {"grant_type": "authorization_code", "code": minted["app_auth_code"]},
    )
    body = requests.post(
        request.url, data=request.body, headers=request.headers, timeout=TIMEOUT
    ).json()
    assert set(body) == {"alipay_open_auth_token_app_response", "sign"}
    assert body["alipay_open_auth_token_app_response"]["sub_code"] == sub_code
    # Nothing was processed: the code still works with the right certificates.
    grant = make_client(cert_simulator, cert_credentials).exchange_code(minted["app_auth_code"])
    assert grant.single().auth_app_id == minted["auth_app_ids"][0]
    counts = SimulatorControl(cert_simulator.url).stats()["requests"][TOKEN_APP]
    assert counts == {"rejected": 2, "success": 1}


@pytest.mark.parametrize(("wrong", "_code", "_sub_code", "v3_code"), CASES)
def test_v3_cert_sn_errors_are_400_bodies(
    cert_simulator: RunningSimulator, cert_credentials, wrong, _code, _sub_code, v3_code
):
    creds = replace(cert_credentials, **wrong)
    code = SimulatorControl(cert_simulator.url).codes()["app_auth_code"]
    with pytest.raises(AlipayError) as info:
        make_client(cert_simulator, creds, "v3").exchange_code(code)
    error = info.value
    assert (error.http_status, error.code, error.signed) == (400, v3_code, True)
    assert error.trace_id
    request = build_v3_request(
        creds, "POST", V3_TOKEN, body={"grant_type": "authorization_code", "code": code}
    )
    answer = requests.post(
        cert_simulator.url + request.path_with_query,
        data=request.body,
        headers=dict(request.headers),
        timeout=TIMEOUT,
    )
    assert answer.status_code == 400
    assert json.loads(answer.text) == {
        "code": v3_code,
        "message": answer.json()["message"],
        "links": [],
    }
    assert "alipay-signature" in answer.headers
    assert "alipay-sn" not in answer.headers
    assert make_client(cert_simulator, cert_credentials, "v3").exchange_code(code).grants


def test_the_right_certificates_still_name_the_alipay_cert(
    cert_simulator: RunningSimulator, cert_credentials, vectors
):
    alipay_sn = next(c["sn"] for c in vectors["cert_sn"] if c["file"] == "certs/alipay_cert.crt")
    code = SimulatorControl(cert_simulator.url).codes()["app_auth_code"]
    request = build_request(
        cert_credentials,
        cert_simulator.gateway_url,
        TOKEN_APP,
        {"grant_type": "authorization_code", "code": code},
    )
    body = requests.post(
        request.url, data=request.body, headers=request.headers, timeout=TIMEOUT
    ).json()
    assert body["alipay_cert_sn"] == alipay_sn
