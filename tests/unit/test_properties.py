"""Properties of v2 response verification over any body the gateway (or an attacker) could send.

Runs are deterministic (``derandomize=True``, no example database) so CI and laptops agree.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appauth.alipay.credentials import AppCredentials
from appauth.alipay.errors import AlipayError, SignatureError
from appauth.alipay.signing import extract_response, response_node_name, verify_response
from tests.unit.helpers import alipay_public_key, alipay_sign, vector_data

SETTINGS = settings(
    max_examples=200,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

METHODS = ["alipay.open.auth.token.app", "alipay.open.auth.token.app.query", "alipay.trade.query"]
RESERVED = {"sign", "alipay_cert_sn", "error_response", *map(response_node_name, METHODS)}

# --- strategies ----------------------------------------------------------------------------

_chars = st.characters(codec="utf-8")  # what UTF-8 can carry: no lone surrogates
_tricky = st.sampled_from(
    [
        "/",
        "\\",
        '"',
        "{",
        "}",
        "[",
        "]",
        ":",
        ",",
        "\\/",
        '"sign":"',
        "}}",
        "\u2028",
        "\x00",
        "中",
        "😀",
    ]
)
strings = st.one_of(
    st.text(_chars, max_size=12),
    st.lists(st.one_of(_tricky, st.text(_chars, max_size=3)), max_size=8).map("".join),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    strings,
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(strings, children, max_size=4)
    ),
    max_leaves=16,
)
objects = st.dictionaries(strings, json_values, max_size=6)
whitespace = st.sampled_from(["", "", " ", "\n", "\t", "\r\n  "])
separators = st.sampled_from([(",", ":"), (", ", ": "), (",", ": "), (" , ", " : ")])


def _verifies(raw: str, signature: str) -> bool:
    """Independent oracle: RSA2 over the raw node text, or over it with ``\\/`` unescaped."""
    try:
        sig = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return False
    for text in {raw, raw.replace("\\/", "/")}:
        try:
            alipay_public_key().verify(
                sig, text.encode("utf-8"), padding.PKCS1v15(), hashes.SHA256()
            )
        except (InvalidSignature, ValueError):
            continue
        return True
    return False


@st.composite
def signed_responses(draw: st.DrawFn) -> tuple[str, str, str, dict[str, Any]]:
    """(method, body, exact raw node text in the body, the node object) of a validly signed body."""
    method = draw(st.sampled_from(METHODS))
    data = draw(objects)
    data["code"] = "10000"
    text = json.dumps(
        data,
        ensure_ascii=draw(st.booleans()),
        separators=draw(separators),
        indent=draw(st.sampled_from([None, None, 2])),
    )
    # Alipay escapes "/" as "\/" in the body and signs the unescaped text
    raw = text.replace("/", "\\/") if draw(st.booleans()) else text
    members = [
        (response_node_name(method), raw),
        ("sign", json.dumps(alipay_sign(text))),
    ]
    if draw(st.booleans()):
        members.append(("alipay_cert_sn", json.dumps(draw(strings))))
    extra = draw(
        st.dictionaries(strings.filter(lambda k: k not in RESERVED), json_values, max_size=2)
    )
    members += [(key, json.dumps(value)) for key, value in extra.items()]
    members = draw(st.permutations(members))
    ws = [draw(whitespace) for _ in range(4 * len(members) + 2)]
    parts = [
        f"{ws[4 * i]}{json.dumps(key)}{ws[4 * i + 1]}:{ws[4 * i + 2]}{value}{ws[4 * i + 3]}"
        for i, (key, value) in enumerate(members)
    ]
    body = f"{ws[-2]}{{{','.join(parts)}}}{ws[-1]}"
    return method, body, raw, data


# --- well-formed, validly signed bodies ----------------------------------------------------


@SETTINGS
@given(response=signed_responses())
def test_any_signed_object_is_extracted_exactly_and_verified(response, app_credentials):
    method, body, raw, data = response
    assert extract_response(body, method).node.raw == raw
    assert verify_response(body, method, app_credentials) == data
    assert verify_response(body.encode("utf-8"), method, app_credentials) == data


# --- anything else: only SignatureError / AlipayError, data only when validly signed -------


def _check(body: str | bytes, method: str, credentials: AppCredentials) -> None:
    """verify_response raises only the two documented errors, and returns data (or a signed
    error) only when the node it used is validly signed."""
    try:
        result = verify_response(body, method, credentials)
    except SignatureError:
        return
    except AlipayError as error:
        if error.signed:
            _assert_validly_signed(body, method)
        return
    _assert_validly_signed(body, method)
    text = body.decode("utf-8") if isinstance(body, bytes) else body
    assert result == json.loads(extract_response(text, method).node.raw)


def _assert_validly_signed(body: str | bytes, method: str) -> None:
    text = body.decode("utf-8") if isinstance(body, bytes) else body
    extracted = extract_response(text, method)
    assert extracted.sign is not None
    assert _verifies(extracted.node.raw, extracted.sign)


@SETTINGS
@given(body=st.one_of(st.text(), st.binary()))
def test_arbitrary_text_or_bytes(body, app_credentials):
    _check(body, METHODS[0], app_credentials)


@SETTINGS
@given(
    document=st.fixed_dictionaries(
        {response_node_name(METHODS[0]): json_values},
        optional={
            "sign": st.one_of(strings, json_values),
            "alipay_cert_sn": json_values,
            "error_response": json_values,
        },
    ),
    ensure_ascii=st.booleans(),
)
def test_arbitrary_unsigned_or_forged_json_documents(document, ensure_ascii, app_credentials):
    _check(json.dumps(document, ensure_ascii=ensure_ascii), METHODS[0], app_credentials)


@SETTINGS
@given(response=signed_responses(), data=st.data())
def test_truncated_bodies_are_rejected(response, data, app_credentials):
    method, body, _, _ = response
    stripped = body.rstrip()
    encoded = stripped.encode("utf-8")
    end = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1), label="end")
    with pytest.raises(SignatureError):
        verify_response(encoded[:end], method, app_credentials)
    end = data.draw(st.integers(min_value=0, max_value=len(stripped) - 1), label="char end")
    with pytest.raises(SignatureError):
        verify_response(stripped[:end], method, app_credentials)


@SETTINGS
@given(response=signed_responses(), data=st.data())
def test_byte_flips_never_yield_unsigned_data(response, data, app_credentials):
    method, body, _, _ = response
    mutated = bytearray(body.encode("utf-8"))
    for _ in range(data.draw(st.integers(min_value=1, max_value=3), label="flips")):
        index = data.draw(st.integers(min_value=0, max_value=len(mutated) - 1), label="index")
        mutated[index] ^= data.draw(st.integers(min_value=1, max_value=255), label="mask")
    _check(bytes(mutated), method, app_credentials)


_VECTOR_BODIES = [
    pytest.param(v["body"], v["method"], id=v["name"]) for v in vector_data()["v2_responses"]
]


@pytest.mark.parametrize(("body", "method"), _VECTOR_BODIES)
@settings(SETTINGS, max_examples=50)
@given(data=st.data())
def test_mutated_vector_bodies(body, method, data, app_credentials):
    encoded = body.encode("utf-8")
    index = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1), label="index")
    mask = data.draw(st.integers(min_value=1, max_value=255), label="mask")
    flipped = bytearray(encoded)
    flipped[index] ^= mask
    _check(bytes(flipped), method, app_credentials)
    _check(encoded[:index], method, app_credentials)
    _check(body[:index] + body[index + 1 :], method, app_credentials)
