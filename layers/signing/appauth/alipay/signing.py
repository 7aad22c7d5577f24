"""The v2 gateway protocol: sign requests, verify responses and notifications.

Rules (see PROTOCOL.md): the string to sign drops ``sign`` and empty values, sorts keys, joins
``key=value`` with ``&`` using raw values. A response's signature covers the exact raw text of
the method node; the node is found by a JSON-aware scan and its data is parsed from that same
verified text, so nothing unverified is ever returned.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import unquote_to_bytes, urlencode

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from appauth.alipay.aes import aes_decrypt, aes_encrypt
from appauth.alipay.credentials import AppCredentials
from appauth.alipay.errors import AlipayError, SignatureError

BEIJING = timezone(timedelta(hours=8), "Asia/Shanghai")
SUCCESS_CODE = "10000"
TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"
ERROR_NODE = "error_response"
FORM_CONTENT_TYPE = "application/x-www-form-urlencoded;charset=utf-8"
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"RSA2": hashes.SHA256, "RSA": hashes.SHA1}
_DECODER = json.JSONDecoder()
_WHITESPACE = " \t\n\r"
# Set by build_request itself; extra_params may not override them.
RESERVED_PARAMS = frozenset(
    {"app_id", "method", "format", "charset", "sign_type", "timestamp", "version", "app_auth_token"}
    | {"app_cert_sn", "alipay_root_cert_sn", "encrypt_type", "biz_content", "sign"}
)


# --- signing primitives -------------------------------------------------------------------


def beijing_timestamp(now: datetime | None = None) -> str:
    """``yyyy-MM-dd HH:mm:ss`` in Beijing time, whatever the host's zone (Lambda runs in UTC)."""
    moment = now if now is not None else datetime.now(UTC)
    if moment.tzinfo is None:
        raise ValueError("timestamp needs an aware datetime")
    return moment.astimezone(BEIJING).strftime(TIMESTAMP_FORMAT)


def parse_beijing_timestamp(text: str) -> datetime:
    """The inverse of :func:`beijing_timestamp` (e.g. a notification's ``notify_time``), in UTC."""
    return datetime.strptime(text, TIMESTAMP_FORMAT).replace(tzinfo=BEIJING).astimezone(UTC)


def sign_content(params: Mapping[str, str | None], *, exclude: tuple[str, ...] = ("sign",)) -> str:
    """The v2 string to sign: empty values and ``exclude`` dropped, keys sorted, raw values."""
    return "&".join(
        f"{key}={params[key]}" for key in sorted(params) if key not in exclude and params[key]
    )


def rsa_sign(content: str, key: rsa.RSAPrivateKey, sign_type: str = "RSA2") -> str:
    signature = key.sign(content.encode("utf-8"), padding.PKCS1v15(), _HASHES[sign_type]())
    return base64.b64encode(signature).decode("ascii")


def rsa_verify(
    content: str | bytes, signature: str, key: rsa.RSAPublicKey, sign_type: str = "RSA2"
) -> bool:
    """True when ``signature`` (standard base64) is valid for ``content`` (text is signed as
    UTF-8; bytes as given, e.g. a GBK notification's); never raises."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    try:
        raw = base64.b64decode("".join(signature.split()), validate=True)
        key.verify(raw, data, padding.PKCS1v15(), _HASHES[sign_type]())
    except (InvalidSignature, binascii.Error, ValueError, KeyError):
        return False
    return True


def dumps_compact(value: Mapping[str, Any]) -> str:
    """``biz_content`` serialization: compact, UTF-8 kept as is. Serialize once, send those bytes."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# --- requests ------------------------------------------------------------------------------


@dataclass(frozen=True)
class GatewayRequest:
    """A signed v2 request, ready to POST: system parameters in the URL, biz_content in the body."""

    url: str
    body: bytes
    params: Mapping[str, str]

    @property
    def headers(self) -> dict[str, str]:
        return {"Content-Type": FORM_CONTENT_TYPE, "Accept": "application/json"}


def build_request(
    credentials: AppCredentials,
    gateway_url: str,
    method: str,
    biz_content: Mapping[str, Any] | str | None = None,
    *,
    app_auth_token: str | None = None,
    extra_params: Mapping[str, str] | None = None,
    encrypt: bool = False,
    now: datetime | None = None,
) -> GatewayRequest:
    """Sign one gateway call. ``extra_params`` carries optional system parameters (notify_url...)."""
    params: dict[str, str] = {
        "app_id": credentials.app_id,
        "method": method,
        "format": "JSON",
        "charset": "utf-8",
        "sign_type": credentials.sign_type,
        "timestamp": beijing_timestamp(now),
        "version": "1.0",
    }
    if app_auth_token:
        params["app_auth_token"] = app_auth_token
    if credentials.cert_mode:
        params["app_cert_sn"] = credentials.app_cert_sn or ""
        params["alipay_root_cert_sn"] = credentials.alipay_root_cert_sn or ""
    if extra_params:
        clashes = sorted(RESERVED_PARAMS & set(extra_params))
        if clashes:
            raise ValueError(f"extra_params may not override {', '.join(clashes)}")
        params.update({k: v for k, v in extra_params.items() if v})
    content = (
        biz_content
        if isinstance(biz_content, str) or biz_content is None
        else dumps_compact(biz_content)
    )
    if content is not None and encrypt:
        if credentials.encrypt_key is None:
            raise ValueError("encrypt=True needs an encrypt key in the credentials")
        params["encrypt_type"] = "AES"
        content = aes_encrypt(content, credentials.encrypt_key)
    signed = dict(params)
    if content is not None:
        signed["biz_content"] = content
    params["sign"] = rsa_sign(sign_content(signed), credentials.private_key, credentials.sign_type)
    separator = "&" if "?" in gateway_url else "?"
    body = (
        urlencode({"biz_content": content}, encoding="utf-8").encode("ascii")
        if content is not None
        else b""
    )
    return GatewayRequest(
        url=f"{gateway_url}{separator}{urlencode(params, encoding='utf-8')}",
        body=body,
        params={**signed, "sign": params["sign"]},
    )


# --- responses -----------------------------------------------------------------------------


def response_node_name(method: str) -> str:
    return method.replace(".", "_") + "_response"


@dataclass(frozen=True)
class RawNode:
    """One top-level member of a response body: its exact text and its parsed value."""

    raw: str
    value: Any


@dataclass(frozen=True)
class ExtractedResponse:
    name: str
    node: RawNode
    sign: str | None
    cert_sn: str | None


def _skip_ws(text: str, index: int) -> int:
    while index < len(text) and text[index] in _WHITESPACE:
        index += 1
    return index


def scan_members(text: str) -> dict[str, list[RawNode]]:
    """Every top-level member of a JSON object with the exact source text of its value.

    Uses the JSON decoder to find where each value ends, so braces inside strings, escapes and
    nested objects are handled exactly as a JSON parser handles them. Raises SignatureError on
    anything that is not a single JSON object.
    """
    members: dict[str, list[RawNode]] = {}
    try:
        index = _skip_ws(text, 0)
        if text[index] != "{":
            raise SignatureError("the response is not a JSON object")
        index = _skip_ws(text, index + 1)
        if text[index] == "}":
            index += 1
        else:
            while True:
                key, index = _DECODER.raw_decode(text, index)
                if not isinstance(key, str):
                    raise SignatureError("the response has a non-string key")
                index = _skip_ws(text, index)
                if text[index] != ":":
                    raise SignatureError("the response is not valid JSON")
                start = _skip_ws(text, index + 1)
                value, end = _DECODER.raw_decode(text, start)
                members.setdefault(key, []).append(RawNode(text[start:end], value))
                index = _skip_ws(text, end)
                if text[index] == ",":
                    index = _skip_ws(text, index + 1)
                    continue
                if text[index] == "}":
                    index += 1
                    break
                raise SignatureError("the response is not valid JSON")
        if _skip_ws(text, index) != len(text):
            raise SignatureError("the response has data after its JSON object")
    except IndexError:
        raise SignatureError("the response is truncated") from None
    except (ValueError, RecursionError):
        # ValueError also covers JSONDecodeError and integers too long to convert.
        raise SignatureError("the response is not valid JSON") from None
    return members


def _single(members: dict[str, list[RawNode]], name: str) -> RawNode | None:
    nodes = members.get(name)
    if not nodes:
        return None
    if len(nodes) > 1:
        raise SignatureError(
            f"the response has {len(nodes)} '{name}' members; refusing an ambiguous body"
        )
    return nodes[0]


def _optional_string(members: dict[str, list[RawNode]], name: str) -> str | None:
    node = _single(members, name)
    if node is None:
        return None
    if not isinstance(node.value, str):
        raise SignatureError(f"the response's '{name}' is not a string")
    return node.value


def extract_response(body: str, method: str) -> ExtractedResponse:
    """Find the method node (else ``error_response``), its raw text, ``sign`` and ``alipay_cert_sn``."""
    members = scan_members(body)
    for name in (response_node_name(method), ERROR_NODE):
        node = _single(members, name)
        if node is not None:
            return ExtractedResponse(
                name=name,
                node=node,
                sign=_optional_string(members, "sign"),
                cert_sn=_optional_string(members, "alipay_cert_sn"),
            )
    raise SignatureError(
        f"the response has neither '{response_node_name(method)}' nor '{ERROR_NODE}'"
    )


def _verify_node(raw: str, signature: str, key: rsa.RSAPublicKey, sign_type: str) -> bool:
    if rsa_verify(raw, signature, key, sign_type):
        return True
    # Alipay may escape "/" as "\/" in the body but sign the unescaped text.
    return "\\/" in raw and rsa_verify(raw.replace("\\/", "/"), signature, key, sign_type)


def _alipay_error(node: Mapping[str, Any], *, signed: bool) -> AlipayError:
    def text(name: str) -> str | None:
        value = node.get(name)
        return None if value is None else str(value)

    return AlipayError(
        text("code") or "unknown",
        text("msg") or "",
        sub_code=text("sub_code"),
        sub_msg=text("sub_msg"),
        signed=signed,
    )


def verify_response(body: str | bytes, method: str, credentials: AppCredentials) -> dict[str, Any]:
    """Verify a v2 response and return the method node's data (decrypted if AES).

    Raises SignatureError for anything forged, tampered or unverifiable, and AlipayError for a
    (signed or unsigned) error; a success is returned only when its signature is valid.
    """
    if isinstance(body, bytes):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            raise SignatureError("the response is not UTF-8") from None
    extracted = extract_response(body, method)
    value = extracted.node.value
    if extracted.sign is None:
        if isinstance(value, dict) and str(value.get("code", "")) not in ("", SUCCESS_CODE):
            raise _alipay_error(value, signed=False)
        raise SignatureError("the response is not signed; an unsigned success is never trusted")
    key = credentials.alipay_key(extracted.cert_sn)
    if not _verify_node(extracted.node.raw, extracted.sign, key, credentials.sign_type):
        raise SignatureError(
            f"the signature of '{extracted.name}' does not verify with the Alipay public key"
        )
    if isinstance(value, str):
        if credentials.encrypt_key is None:
            raise SignatureError("the response is encrypted but no AES key is configured")
        value = _parse_object(aes_decrypt(value, credentials.encrypt_key))
    if not isinstance(value, dict):
        raise SignatureError(f"'{extracted.name}' is not a JSON object")
    if str(value.get("code", "")) != SUCCESS_CODE:
        raise _alipay_error(value, signed=True)
    return value


def _parse_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        raise SignatureError("decrypted content is not JSON") from None
    if not isinstance(value, dict):
        raise SignatureError("decrypted content is not a JSON object")
    return value


# --- notifications -------------------------------------------------------------------------


# The charsets a notification may declare (Alipay sends the ISV's configured one; GBK is
# common), by lower-cased name: the Python codec that decodes the form and encodes what is signed.
FORM_CHARSETS = {"utf-8": "utf-8", "gbk": "gbk", "gb2312": "gb2312", "gb18030": "gb18030"}
DEFAULT_FORM_CHARSET = "utf-8"


class FormDecodeError(SignatureError):
    """The form cannot be decoded unambiguously (bytes invalid in its charset, an unknown charset,
    a repeated field): nothing of it is used."""


def _unquote_plus(raw: bytes) -> bytes:
    """One round of form decoding, on bytes: ``+`` is a space, ``%XY`` a byte (as parse_qsl)."""
    return unquote_to_bytes(raw.replace(b"+", b" "))


def form_codec(charset: str | None) -> str:
    """The codec of a form's declared ``charset`` (absent: UTF-8); FormDecodeError if unknown."""
    if charset is None:
        return DEFAULT_FORM_CHARSET
    codec = FORM_CHARSETS.get(charset.lower())
    if codec is None:
        shown = charset[:32].encode("ascii", "backslashreplace").decode("ascii")
        raise FormDecodeError(f"the form's charset {shown!r} is not supported")
    return codec


def parse_form(body: str | bytes) -> dict[str, str]:
    """Decode an ``application/x-www-form-urlencoded`` body exactly once, in its own charset.

    The body is split and percent-decoded as bytes; the ``charset`` field (ASCII, so readable
    before anything is decoded) names the encoding of every key and value: utf-8, gbk, gb2312 or
    gb18030, case-insensitively; UTF-8 when there is none. Bytes invalid in that charset, an
    unknown charset or a repeated key (which copy was signed would be ambiguous) raise
    FormDecodeError. ``str`` is taken as UTF-8 text; a non-ASCII one must declare UTF-8 (give
    the raw bytes for any other charset).
    """
    if isinstance(body, str):
        try:
            raw = body.encode("utf-8")
        except UnicodeEncodeError:
            raise FormDecodeError("the form is not valid text") from None
    else:
        raw = bytes(body)
    fields = _form_fields(raw)
    declared = fields.get(b"charset")
    try:
        codec = form_codec(None if declared is None else declared.decode("ascii"))
    except UnicodeDecodeError:
        raise FormDecodeError("the form's charset is not ASCII") from None
    if isinstance(body, str) and codec != "utf-8" and not body.isascii():
        raise FormDecodeError(f"a {codec} form must be given as bytes, not decoded text")
    params: dict[str, str] = {}
    try:
        for key, value in fields.items():
            text = key.decode(codec)
            if text in params:
                raise FormDecodeError(f"the form repeats the field {_shown(key)!r}")
            params[text] = value.decode(codec)
    except UnicodeDecodeError:
        raise FormDecodeError(f"the form is not valid url-encoded {codec} text") from None
    return params


def _form_fields(raw: bytes) -> dict[bytes, bytes]:
    """Split and percent-decode (once) on bytes; a repeated key is refused."""
    fields: dict[bytes, bytes] = {}
    for part in raw.split(b"&"):
        if not part:
            continue
        name, _, value = part.partition(b"=")
        key = _unquote_plus(name)
        if key in fields:
            raise FormDecodeError(f"the form repeats the field {_shown(key)!r}")
        fields[key] = _unquote_plus(value)
    return fields


def _shown(key: bytes) -> str:
    """A field name for a message: ASCII only, bounded."""
    return key[:40].decode("ascii", "backslashreplace")


def verify_notification(params: Mapping[str, str], credentials: AppCredentials) -> None:
    """Verify an asynchronous notification's ``sign``; raise SignatureError if it does not hold.

    Both rules seen in the wild are tried: ``sign_type`` kept in the signed content, then left out.
    The content is built from the decoded values and signed in the form's own ``charset`` (the
    bytes Alipay signs: ``content.getBytes(charset)``), so a GBK notification verifies over its
    GBK bytes; for UTF-8 that is the usual rule.
    """
    signature = params.get("sign")
    if not signature:
        raise SignatureError("the notification has no sign")
    sign_type = credentials.sign_type
    if params.get("sign_type", sign_type) != sign_type:
        # Never let the sender pick a weaker algorithm than the one configured.
        raise SignatureError(f"the notification's sign_type is not the configured {sign_type}")
    codec = form_codec(params.get("charset"))
    key = credentials.alipay_key(params.get("alipay_cert_sn"))
    for exclude in (("sign",), ("sign", "sign_type")):
        try:
            content = sign_content(params, exclude=exclude).encode(codec)
        except UnicodeEncodeError:
            raise FormDecodeError(f"the notification is not {codec} text") from None
        if rsa_verify(content, signature, key, sign_type):
            return
    raise SignatureError("the notification's signature does not verify with the Alipay public key")
