"""The v3 protocol: the ``authorization`` header, request headers and response verification."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from appauth.alipay.credentials import AppCredentials
from appauth.alipay.errors import AlipayError, SignatureError
from appauth.alipay.signing import rsa_sign, rsa_verify

AUTH_SCHEME = "ALIPAY-SHA256withRSA"


def auth_string(app_id: str, nonce: str, timestamp_ms: int, app_cert_sn: str | None = None) -> str:
    parts = [f"app_id={app_id}"]
    if app_cert_sn:
        parts.append(f"app_cert_sn={app_cert_sn}")
    parts += [f"nonce={nonce}", f"timestamp={timestamp_ms}"]
    return ",".join(parts)


def request_sign_content(
    auth: str, http_method: str, path_with_query: str, body: str, app_auth_token: str | None = None
) -> str:
    """``<auth>\\n<METHOD>\\n<path?query>\\n<body>\\n`` plus ``<app_auth_token>\\n`` for a merchant."""
    content = f"{auth}\n{http_method.upper()}\n{path_with_query}\n{body}\n"
    if app_auth_token:
        content += f"{app_auth_token}\n"
    return content


def response_sign_content(timestamp: str, nonce: str, body: str) -> str:
    return f"{timestamp}\n{nonce}\n{body}\n"


def encode_query(query: Mapping[str, str] | None) -> str:
    """Query string exactly as it will be sent and signed (RFC 3986 percent-encoding)."""
    if not query:
        return ""
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in query.items())


def parse_authorization(header: str) -> dict[str, str]:
    """Split ``ALIPAY-SHA256withRSA k=v,...,sign=...`` into its fields (sign may hold ``=``)."""
    scheme, _, rest = header.partition(" ")
    if scheme != AUTH_SCHEME or not rest:
        raise SignatureError(f"authorization scheme must be {AUTH_SCHEME}")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key in fields:
            raise SignatureError("malformed authorization header")
        fields[key] = value
    return fields


@dataclass(frozen=True)
class V3Request:
    http_method: str
    path_with_query: str
    body: bytes
    headers: Mapping[str, str]


def build_v3_request(
    credentials: AppCredentials,
    http_method: str,
    path: str,
    *,
    query: Mapping[str, str] | None = None,
    body: Mapping[str, Any] | str | None = None,
    app_auth_token: str | None = None,
    nonce: str | None = None,
    timestamp_ms: int | None = None,
) -> V3Request:
    method = http_method.upper()
    encoded = encode_query(query)
    path_with_query = f"{path}?{encoded}" if encoded else path
    if body is None:
        text = ""
    elif isinstance(body, str):
        text = body
    else:
        text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    auth = auth_string(
        credentials.app_id,
        nonce or str(uuid.uuid4()),
        timestamp_ms if timestamp_ms is not None else int(time.time() * 1000),
        credentials.app_cert_sn,
    )
    signature = rsa_sign(
        request_sign_content(auth, method, path_with_query, text, app_auth_token),
        credentials.private_key,
        "RSA2",
    )
    headers = {
        "authorization": f"{AUTH_SCHEME} {auth},sign={signature}",
        "alipay-request-id": str(uuid.uuid4()),
        "content-type": "application/json",
        "accept": "application/json",
    }
    if app_auth_token:
        headers["alipay-app-auth-token"] = app_auth_token
    if credentials.alipay_root_cert_sn:
        headers["alipay-root-cert-sn"] = credentials.alipay_root_cert_sn
    return V3Request(method, path_with_query, text.encode("utf-8"), headers)


def _lower(headers: Mapping[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def verify_v3_response(
    status: int, headers: Mapping[str, str], body: str, credentials: AppCredentials
) -> dict[str, Any]:
    """Verify a v3 response and return its JSON object; errors raise AlipayError.

    A 2xx must be signed (``alipay-timestamp``/``alipay-nonce``/``alipay-signature``); an error
    body may be unsigned, but if it carries a signature, the signature must hold.
    """
    h = _lower(headers)
    signature, timestamp, nonce = (
        h.get("alipay-signature"),
        h.get("alipay-timestamp"),
        h.get("alipay-nonce"),
    )
    signed = bool(signature and timestamp and nonce)
    if signed:
        key = credentials.alipay_key(h.get("alipay-sn"))
        if not rsa_verify(
            response_sign_content(timestamp or "", nonce or "", body), signature or "", key
        ):
            raise SignatureError(
                "the v3 response signature does not verify with the Alipay public key"
            )
    elif 200 <= status < 300:
        raise SignatureError("the v3 response is not signed; an unsigned success is never trusted")
    try:
        value = json.loads(body) if body.strip() else {}
    except (ValueError, RecursionError):
        value = None
    if 200 <= status < 300:
        if not isinstance(value, dict):
            raise SignatureError("the v3 response is not a JSON object")
        return value
    data = value if isinstance(value, dict) else {}
    raise AlipayError(
        str(data.get("code") or f"http-{status}"),
        str(data.get("message") or "no error body"),
        trace_id=h.get("alipay-trace-id"),
        http_status=status,
        signed=signed,
    )
