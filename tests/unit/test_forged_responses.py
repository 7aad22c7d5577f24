"""Forged and tampered Alipay answers never get through the layer's client (AlipayClient).

The client is given a requests transport that answers with crafted bytes, so each answer goes
through exactly what a real one does: bounded read, decode, extract, verify, parse. Answers are
the vectors' (made by Alipay's official Node SDK) and genuine answers with one byte changed in
every position class of the body and the v3 headers, nodes swapped or duplicated, the sign moved,
the certificate SN changed. The property: the client raises a signature (or unsigned Alipay)
error, or returns exactly the grants Alipay signed (a change outside the signed content, such as
an unused member's name); never anything else. (tests/unit/test_properties.py holds the same
kind of property for ``verify_response`` alone, over generated bodies.)
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from requests.structures import CaseInsensitiveDict

from appauth.alipay.client import PRODUCTION, AlipayClient, Protocol, RetryPolicy
from appauth.alipay.credentials import AppCredentials
from appauth.alipay.errors import AlipayError, SignatureError
from appauth.alipay.signing import scan_members
from tests.integration.fuzz_helpers import flip_byte, fuzz_examples, v2_position_classes
from tests.unit.helpers import alipay_sign, vector_data

V = vector_data()
SETTINGS = settings(
    max_examples=fuzz_examples(150),
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
# A proxy may change any byte, but HTTP header values stay printable ASCII on the wire.
HEADER_BYTES = st.integers(0x21, 0x7E)


def _vector(section: str, name_start: str, expect: str = "accept") -> dict[str, Any]:
    (found,) = (v for v in V[section] if v["name"].startswith(name_start) and v["expect"] == expect)
    return dict(found)


SINGLE = _vector("v2_responses", "exchange, single merchant")
CERT = _vector("v2_responses", "cert mode")
QUERY = _vector("v2_responses", "query with escaped slashes")
SIGNED_ERROR = _vector("v2_responses", "gateway error_response, signed")
V3_SUCCESS = _vector("v3_responses", "exchange success")


# --- a transport that answers with crafted bytes ------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


class CannedAdapter(requests.adapters.BaseAdapter):
    """Answers every request with ``answer``, as if it came off the wire."""

    def __init__(self, answer: Answer) -> None:
        super().__init__()
        self.answer = answer
        self.sent = 0

    def send(self, request: requests.PreparedRequest, **_: Any) -> requests.Response:  # type: ignore[override]
        self.sent += 1
        response = requests.Response()
        response.status_code = self.answer.status
        response.headers = CaseInsensitiveDict(self.answer.headers)
        response.raw = io.BytesIO(self.answer.body)
        response.url = request.url or ""
        response.request = request
        return response

    def close(self) -> None:
        return None


def _client(credentials: AppCredentials, answer: Answer, protocol: Protocol = "v2") -> AlipayClient:
    session = requests.Session()
    session.mount("https://", CannedAdapter(answer))
    return AlipayClient(
        credentials,
        PRODUCTION,
        protocol=protocol,
        session=session,
        retry=RetryPolicy(attempts=1),
        sleep=lambda _seconds: None,
    )


def _grants(client: AlipayClient) -> list[tuple[str, str | None, str, str]]:
    """What the exchange hands back, or raises."""
    response = client.exchange_code("P9a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5")
    return [
        (g.auth_app_id, g.user_id, g.app_auth_token, g.app_refresh_token) for g in response.grants
    ]


def _v2(body: str | bytes) -> Answer:
    raw = body.encode("utf-8") if isinstance(body, str) else body
    return Answer(200, {"Content-Type": "application/json;charset=utf-8"}, raw)


def _v3(status: int, headers: dict[str, str], body: str | bytes) -> Answer:
    raw = body.encode("utf-8") if isinstance(body, str) else body
    return Answer(status, {"Content-Type": "application/json", **headers}, raw)


def _refused(client: AlipayClient) -> Exception:
    with pytest.raises((SignatureError, AlipayError)) as caught:
        _grants(client)
    if isinstance(caught.value, AlipayError):
        assert not caught.value.signed  # a forgery never passes for a signed Alipay error
    return caught.value


def _genuine(credentials: AppCredentials, answer: Answer, protocol: Protocol = "v2") -> Any:
    grants = _grants(_client(credentials, answer, protocol))
    assert grants  # the harness hands genuine answers through: a refusal below means something
    return grants


# --- the vectors --------------------------------------------------------------------------------


def test_the_genuine_vectors_are_accepted_through_the_client(app_credentials, cert_credentials):
    """The counterpart of the refusals below: the same transport lets Alipay's answers through."""
    assert _genuine(app_credentials, _v2(SINGLE["body"]))[0][0] == "2018042501227906"
    assert _genuine(cert_credentials, _v2(CERT["body"]))[0][0] == "2018042501227906"
    v3 = _v3(V3_SUCCESS["status"], V3_SUCCESS["headers"], V3_SUCCESS["body"])
    assert _genuine(app_credentials, v3, "v3")[0][0] == "2018042501227906"


@pytest.mark.parametrize(
    "vector",
    [
        pytest.param(v, id=v["name"])
        for section in ("v2_responses", "v3_responses")
        for v in V[section]
        if v["expect"] == "reject"
    ],
)
@pytest.mark.parametrize("call", ["exchange_code", "refresh"])
def test_every_reject_vector_is_refused_by_the_client(vector, call, app_credentials):
    if "status" in vector:
        client = _client(
            app_credentials, _v3(vector["status"], vector["headers"], vector["body"]), "v3"
        )
    else:
        client = _client(app_credentials, _v2(vector["body"]))
    with pytest.raises(SignatureError):
        getattr(client, call)("201904BBa095c4366ba74acba2dd971244632F89")


# --- one byte changed, in every position class -------------------------------------------------


def _position(classes: dict[str, list[int]]) -> st.SearchStrategy[tuple[str, int]]:
    """A class (each equally likely, so every class is exercised), then an offset in it."""
    return st.sampled_from(sorted(classes)).flatmap(
        lambda label: st.sampled_from(classes[label]).map(lambda index: (label, index))
    )


def _assert_refused_or_genuine(
    client: AlipayClient, genuine: Any, label: str, *, must_refuse: bool
) -> None:
    refusal: Exception | None = None
    try:
        grants = _grants(client)
    except (SignatureError, AlipayError) as error:
        refusal = error
    if refusal is not None:
        # Refused: as a forgery, or as an unsigned error (never one passing for signed).
        assert not (isinstance(refusal, AlipayError) and refusal.signed), label
        return
    assert not must_refuse, f"a change to {label} was accepted"
    assert grants == genuine, f"a change to {label} was accepted with other data"


# Changing any byte of these changes what Alipay signed, or which key verifies it.
_SIGNED_V2 = {"node key", "node value", "sign key", "punctuation", "alipay_cert_sn value"}


@pytest.mark.parametrize(
    ("vector", "mode"), [(SINGLE, "key"), (CERT, "cert")], ids=["key mode", "cert mode"]
)
@SETTINGS
@given(data=st.data())
def test_a_v2_answer_with_any_byte_changed_is_refused_or_the_genuine_one(
    vector, mode, data, app_credentials, cert_credentials
):
    credentials = cert_credentials if mode == "cert" else app_credentials
    body = vector["body"]
    genuine = _genuine(credentials, _v2(body))
    classes = v2_position_classes(body)
    label, index = data.draw(_position(classes), label="position")
    flipped = flip_byte(body.encode("utf-8"), index, data.draw(st.integers(0, 255), label="byte"))
    # The sign's base64 may spell the same signature otherwise (its last character has unused
    # bits): that is still Alipay's signature over Alipay's content.
    _assert_refused_or_genuine(
        _client(credentials, _v2(flipped)), genuine, label, must_refuse=label in _SIGNED_V2
    )


def test_the_position_classes_cover_every_byte_of_the_answers():
    for vector, expected in ((SINGLE, 5), (CERT, 7)):
        classes = v2_position_classes(vector["body"])
        assert len(classes) == expected, sorted(classes)
        offsets = sorted(i for span in classes.values() for i in span)
        assert offsets == list(range(len(vector["body"].encode("utf-8"))))


def _v3_cert_answer(cert_sn: str) -> Answer:
    """The v3 vector's body signed in certificate mode (``alipay-sn`` names the certificate),
    with the vectors' Alipay key, the key of the test CA's Alipay certificate."""
    timestamp, nonce, body = "1763690400123", "c3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8", V3_SUCCESS["body"]
    headers = {
        "alipay-timestamp": timestamp,
        "alipay-nonce": nonce,
        "alipay-signature": alipay_sign(f"{timestamp}\n{nonce}\n{body}\n"),
        "alipay-sn": cert_sn,
        "alipay-trace-id": "0b1c2d3e4f",
    }
    return _v3(200, headers, body)


def _cert_sn(credentials: AppCredentials) -> str:
    (sn,) = credentials.alipay_public_keys
    return sn


@pytest.mark.parametrize("mode", ["key", "cert"])
@SETTINGS
@given(data=st.data())
def test_a_v3_answer_with_any_byte_of_its_body_or_headers_changed_is_refused(
    mode, data, app_credentials, cert_credentials
):
    credentials = cert_credentials if mode == "cert" else app_credentials
    if mode == "cert":
        answer = _v3_cert_answer(_cert_sn(cert_credentials))
    else:
        answer = _v3(V3_SUCCESS["status"], V3_SUCCESS["headers"], V3_SUCCESS["body"])
    genuine = _genuine(credentials, answer, "v3")
    signed = ["alipay-timestamp", "alipay-nonce", "alipay-signature"]
    if mode == "cert":
        signed.append("alipay-sn")  # selects the key: another SN is not configured
    part = data.draw(st.sampled_from(["body", *signed]), label="part")
    if part == "body":
        index = data.draw(st.integers(0, len(answer.body) - 1), label="index")
        changed = Answer(
            answer.status,
            answer.headers,
            flip_byte(answer.body, index, data.draw(st.integers(0, 255))),
        )
    else:
        value = answer.headers[part].encode("ascii")
        index = data.draw(st.integers(0, len(value) - 1), label="index")
        flipped = flip_byte(value, index, data.draw(HEADER_BYTES, label="byte")).decode("latin-1")
        changed = Answer(answer.status, {**answer.headers, part: flipped}, answer.body)
    # The signature's base64 may spell the same signature otherwise; anything else is refused.
    _assert_refused_or_genuine(
        _client(credentials, changed, "v3"), genuine, part, must_refuse=part != "alipay-signature"
    )


# --- nodes swapped, duplicated, the sign moved -------------------------------------------------


def _members(body: str) -> dict[str, str]:
    return {name: nodes[0].raw for name, nodes in scan_members(body).items()}


def _body(*members: tuple[str, str]) -> str:
    return "{" + ",".join(f"{json.dumps(name)}:{raw}" for name, raw in members) + "}"


NODE = "alipay_open_auth_token_app_response"
SINGLE_NODE, SINGLE_SIGN = _members(SINGLE["body"])[NODE], _members(SINGLE["body"])["sign"]
FORGED_NODE = SINGLE_NODE.replace("2018042501227906", "2018042501227907")


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(_body(("sign", SINGLE_SIGN), (NODE, SINGLE_NODE)), id="members reordered"),
        pytest.param(
            _body(
                (NODE, SINGLE_NODE), ("error_response", '{"code":"40002"}'), ("sign", SINGLE_SIGN)
            ),
            id="an unsigned error_response beside the signed node",
        ),
    ],
)
def test_what_alipay_signed_is_accepted_however_the_members_are_arranged(body, app_credentials):
    assert _grants(_client(app_credentials, _v2(body))) == _genuine(
        app_credentials, _v2(SINGLE["body"])
    )


QUERY_MEMBERS = _members(QUERY["body"])
ERROR_MEMBERS = _members(SIGNED_ERROR["body"])


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(_body((NODE, SINGLE_NODE[:-1] + f',"sign":{SINGLE_SIGN}}}')), id="sign moved into the node"),
        pytest.param(_body((NODE, SINGLE_NODE), ("x", f'{{"sign":{SINGLE_SIGN}}}')), id="sign moved under another member"),
        pytest.param(_body((NODE, SINGLE_NODE)), id="sign dropped"),
        pytest.param(_body((NODE, FORGED_NODE), ("sign", SINGLE_SIGN)), id="node changed, sign kept"),
        pytest.param(_body((NODE, SINGLE_NODE), (NODE, FORGED_NODE), ("sign", SINGLE_SIGN)), id="node duplicated"),
        pytest.param(_body((NODE, SINGLE_NODE), ("sign", SINGLE_SIGN), ("sign", SINGLE_SIGN)), id="sign duplicated"),
        pytest.param(
            _body((NODE, FORGED_NODE), ("sign", QUERY_MEMBERS["sign"])), id="another answer's sign"
        ),
        pytest.param(
            _body(*QUERY_MEMBERS.items()), id="another method's signed node (the query's)"
        ),
        pytest.param(
            _body((NODE, FORGED_NODE), ("error_response", ERROR_MEMBERS["error_response"]), ("sign", ERROR_MEMBERS["sign"])),
            id="a forged node beside a signed error_response",
        ),
        pytest.param(
            _body((NODE, FORGED_NODE), ("sign", ERROR_MEMBERS["sign"])),
            id="the signed error's sign on a forged node",
        ),
        pytest.param(_body((NODE, json.dumps(SINGLE_NODE)), ("sign", SINGLE_SIGN)), id="the node as a string"),
        pytest.param(_body(("node", SINGLE_NODE), ("sign", SINGLE_SIGN)), id="the node renamed"),
        pytest.param(SINGLE["body"] + SINGLE["body"], id="two answers in one body"),
    ],
)  # fmt: skip
def test_a_rearranged_answer_is_refused(body, app_credentials):
    _refused(_client(app_credentials, _v2(body)))


@pytest.mark.parametrize(
    "sn",
    [
        *(pytest.param(v["sn"], id=v["name"]) for v in V["cert_sn"] if v["file"] != "certs/alipay_cert.crt"),
        pytest.param("", id="empty"),
        pytest.param("0" * 32, id="zeros"),
    ],
)  # fmt: skip
def test_a_cert_mode_answer_naming_another_certificate_is_refused(sn, cert_credentials):
    members = _members(CERT["body"])
    genuine = _cert_sn(cert_credentials)
    assert json.loads(members["alipay_cert_sn"]) == genuine
    body = _body(*{**members, "alipay_cert_sn": json.dumps(sn)}.items())
    if sn == "":
        # No SN named: the one configured certificate verifies, and it is Alipay's signature.
        assert _grants(_client(cert_credentials, _v2(body))) == _genuine(
            cert_credentials, _v2(CERT["body"])
        )
        return
    error = _refused(_client(cert_credentials, _v2(body)))
    assert isinstance(error, SignatureError)
    assert sn in str(error)
    v3 = _v3_cert_answer(sn)
    assert isinstance(_refused(_client(cert_credentials, v3, "v3")), SignatureError)


def _v3_vector() -> Answer:
    return _v3(V3_SUCCESS["status"], V3_SUCCESS["headers"], V3_SUCCESS["body"])


def _without(headers: dict[str, str], name: str) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k != name}


_V3_HEADERS = V3_SUCCESS["headers"]


@pytest.mark.parametrize(
    "answer",
    [
        *(pytest.param(_v3(200, _without(_V3_HEADERS, name), V3_SUCCESS["body"]), id=f"no {name}") for name in ("alipay-timestamp", "alipay-nonce", "alipay-signature")),
        pytest.param(
            _v3(200, {**_V3_HEADERS, "alipay-timestamp": _V3_HEADERS["alipay-nonce"], "alipay-nonce": _V3_HEADERS["alipay-timestamp"]}, V3_SUCCESS["body"]),
            id="timestamp and nonce swapped",
        ),
        pytest.param(_v3(200, _V3_HEADERS, V3_SUCCESS["body"] + " "), id="body with a trailing space"),
        pytest.param(_v3(200, _V3_HEADERS, " " + V3_SUCCESS["body"]), id="body with a leading space"),
        pytest.param(_v3(200, _V3_HEADERS, V3_SUCCESS["body"].replace(",", ", ", 1)), id="body re-serialized"),
        pytest.param(_v3(200, {**_V3_HEADERS, "alipay-signature": "A" + _V3_HEADERS["alipay-signature"][1:]}, V3_SUCCESS["body"]), id="signature altered"),
        pytest.param(_v3(200, {**_V3_HEADERS, "alipay-signature": alipay_sign(V3_SUCCESS["body"])}, V3_SUCCESS["body"]), id="signature over the body alone"),
    ],
)  # fmt: skip
def test_a_v3_answer_with_its_headers_tampered_is_refused(answer, app_credentials):
    _genuine(app_credentials, _v3_vector(), "v3")
    assert isinstance(_refused(_client(app_credentials, answer, "v3")), SignatureError)


def test_a_signed_v3_answer_under_an_error_status_is_never_data(app_credentials):
    headers = V3_SUCCESS["headers"]
    for status in (400, 401, 500):
        with pytest.raises(AlipayError):
            _grants(_client(app_credentials, _v3(status, headers, V3_SUCCESS["body"]), "v3"))
