"""The v3 API (``/v3/alipay/open/auth/token/app[/query]``): JSON in, signed JSON out.

Success is 200 with the plain object. Errors are ``{"code","message","links"}`` with these
codes (all signed, with an ``alipay-trace-id`` header):

- 400 ``missing-parameter`` / ``invalid-parameter`` (bad JSON, missing or wrong-typed field),
  400 ``invalid-auth-code`` (unknown, used or expired code), 400 ``invalid-refresh-token``
- 401 ``invalid-authorization`` (missing or malformed header), ``invalid-app-id``,
  ``invalid-signature``, ``invalid-app-auth-token``, ``app-auth-token-expired``
- cert mode, 400, signed but with no ``alipay-sn`` header (see :func:`_cert_error`):
  ``missing-app-cert-sn``, ``app-cert-not-exist`` (an ``app_cert_sn`` that is not the app's),
  ``missing-alipay-root-cert-sn``, ``invalid-alipay-root-cert-sn``
- 404 ``not-found``, 405 ``method-not-allowed``
- faults: 503 ``service-unavailable`` (unsigned), 429 ``app-call-limited`` (signed)
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from appauth.alipay.errors import SignatureError
from appauth.alipay.signing import dumps_compact, parse_form, rsa_sign, rsa_verify
from appauth.alipay.signing_v3 import (
    AUTH_SCHEME,
    parse_authorization,
    request_sign_content,
    response_sign_content,
)

from .config import SimulatorConfig
from .faults import CallInfo
from .reply import JSON_TYPE, Reply
from .state import ErrorKind, SimulatorState, StateError

TOKEN_PATH = "/v3/alipay/open/auth/token/app"  # noqa: S105 - a path
QUERY_PATH = "/v3/alipay/open/auth/token/app/query"
ROUTES = {TOKEN_PATH: "POST", QUERY_PATH: "GET"}
# Stats labels: the v2 method names with a v3 prefix.
LABELS = {
    TOKEN_PATH: "v3 alipay.open.auth.token.app",
    QUERY_PATH: "v3 alipay.open.auth.token.app.query",
}


class V3Error(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        outcome: str = "rejected",
        *,
        names_cert: bool = True,
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.outcome = outcome
        # Whether the signed answer carries alipay-sn (cert mode).
        self.names_cert = names_cert
        super().__init__(code)


def _cert_error(code: str, message: str) -> V3Error:
    """A cert-SN refusal: the codes of the official v3 SDK's CommonErrorType enum
    (missing-app-cert-sn, app-cert-not-exist, missing-alipay-root-cert-sn,
    invalid-alipay-root-cert-sn), 400 as Alipay's v3 error table (open-v3/054fcv) classes
    certificate and parameter problems. Signed like the v2 answer but without ``alipay-sn``
    (the gateway never resolved the caller's certificate), so a client that knows one Alipay
    certificate still verifies it and surfaces the error code."""
    return V3Error(400, code, message, names_cert=False)


def _business_error(error: StateError) -> V3Error:
    kind = error.kind
    if kind is ErrorKind.MISSING_PARAMETER:
        return V3Error(400, "missing-parameter", f"缺少必选参数 {error.field}", "business_error")
    if kind is ErrorKind.INVALID_PARAMETER:
        return V3Error(400, "invalid-parameter", f"参数 {error.field} 无效", "business_error")
    if kind is ErrorKind.CODE_INVALID:
        return V3Error(400, "invalid-auth-code", "授权码code无效", "business_error")
    if kind is ErrorKind.REFRESH_TOKEN_INVALID:
        return V3Error(400, "invalid-refresh-token", "刷新令牌refresh_token无效", "business_error")
    if kind is ErrorKind.APP_AUTH_TOKEN_EXPIRED:
        return V3Error(401, "app-auth-token-expired", "应用授权令牌已过期", "business_error")
    return V3Error(401, "invalid-app-auth-token", "无效的应用授权令牌", "business_error")


def _trace_id() -> str:
    return uuid.uuid4().hex


def signed_reply(
    config: SimulatorConfig,
    status: int,
    value: Mapping[str, Any],
    *,
    outcome: str = "success",
    names_cert: bool = True,
) -> Reply:
    body = dumps_compact(value)
    timestamp = str(int(_now_ms()))
    nonce = str(uuid.uuid4())
    headers = {
        "Content-Type": JSON_TYPE,
        "alipay-trace-id": _trace_id(),
        "alipay-timestamp": timestamp,
        "alipay-nonce": nonce,
        "alipay-signature": rsa_sign(
            response_sign_content(timestamp, nonce, body), config.alipay_private_key
        ),
    }
    if config.alipay_cert_sn and names_cert:
        headers["alipay-sn"] = config.alipay_cert_sn
    return Reply(status, body.encode("utf-8"), headers, outcome=outcome)


def _now_ms() -> float:
    return time.time() * 1000


def error_reply(config: SimulatorConfig, error: V3Error) -> Reply:
    value = {"code": error.code, "message": error.message, "links": []}
    return signed_reply(
        config, error.status, value, outcome=error.outcome, names_cert=error.names_cert
    )


def unavailable() -> Reply:
    value = {"code": "service-unavailable", "message": "系统繁忙，请稍后再试", "links": []}
    headers = {"Content-Type": JSON_TYPE, "alipay-trace-id": _trace_id()}
    return Reply(503, dumps_compact(value).encode("utf-8"), headers, outcome="fault_error")


def rate_limited(config: SimulatorConfig) -> Reply:
    return error_reply(config, V3Error(429, "app-call-limited", "应用调用频率超限", "rate_limited"))


def route_error(path: str, http_method: str) -> V3Error | None:
    """404/405 for a request that reaches no v3 operation (checked before authentication)."""
    expected = ROUTES.get(path)
    if expected is None:
        return V3Error(404, "not-found", "接口不存在")
    if expected != http_method:
        return V3Error(405, "method-not-allowed", f"请使用{expected}")
    return None


def handle(
    config: SimulatorConfig,
    *,
    state: SimulatorState,
    http_method: str,
    raw_target: str,
    body: bytes,
    headers: Mapping[str, str],
) -> Reply:
    """``headers`` keys are lower case; ``raw_target`` is the path and query exactly as received."""
    try:
        path = urlsplit(raw_target).path
        routing = route_error(path, http_method)
        if routing is not None:
            raise routing
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise V3Error(400, "invalid-parameter", "请求体不是UTF-8编码") from None
        app_auth_token = headers.get("alipay-app-auth-token") or None
        _authenticate(
            config,
            http_method=http_method,
            raw_target=raw_target,
            text=text,
            headers=headers,
            app_auth_token=app_auth_token,
        )
        try:
            if app_auth_token:
                state.check_token(app_auth_token)
            if path == TOKEN_PATH:
                data = state.token_app(_json_object(text))
            else:
                data = state.query(_query_params(raw_target).get("app_auth_token"))
        except StateError as error:
            raise _business_error(error) from None
    except V3Error as error:
        return error_reply(config, error)
    return signed_reply(config, 200, data)


def _authenticate(
    config: SimulatorConfig,
    *,
    http_method: str,
    raw_target: str,
    text: str,
    headers: Mapping[str, str],
    app_auth_token: str | None,
) -> None:
    header = headers.get("authorization", "")
    try:
        fields = parse_authorization(header)
    except SignatureError:
        raise V3Error(
            401, "invalid-authorization", f"authorization须为 {AUTH_SCHEME} ..."
        ) from None
    # The signed auth string is the header's text before ",sign=", exactly as sent.
    auth, sep, signature = header.partition(" ")[2].rpartition(",sign=")
    if not sep or "sign" not in fields or fields["sign"] != signature:
        raise V3Error(401, "invalid-authorization", "authorization须以sign结尾")
    for name in ("app_id", "nonce", "timestamp"):
        if not fields.get(name):
            raise V3Error(401, "invalid-authorization", f"authorization缺少{name}")
    if not fields["timestamp"].isdigit():
        raise V3Error(401, "invalid-authorization", "timestamp须为毫秒时间戳")
    if fields["app_id"] != config.app_id:
        raise V3Error(401, "invalid-app-id", "无效的AppID参数")
    if config.cert_mode:
        app_cert_sn = fields.get("app_cert_sn")
        if not app_cert_sn:
            raise _cert_error("missing-app-cert-sn", "缺少应用公钥证书序列号")
        if app_cert_sn != config.app_cert_sn:
            raise _cert_error("app-cert-not-exist", "应用公钥证书不存在，请检查app_cert_sn")
        root = headers.get("alipay-root-cert-sn")
        if not root:
            raise _cert_error("missing-alipay-root-cert-sn", "缺少支付宝根证书序列号")
        if config.alipay_root_cert_sn is not None and root != config.alipay_root_cert_sn:
            raise _cert_error("invalid-alipay-root-cert-sn", "支付宝根证书序列号无效")
    content = request_sign_content(auth, http_method, raw_target, text, app_auth_token)
    if not rsa_verify(content, signature, config.app_public_key, "RSA2"):
        raise V3Error(
            401, "invalid-signature", "验签出错，请检查签名内容与应用私钥", "invalid_signature"
        )


def call_info(path: str, raw_target: str, body: bytes, headers: Mapping[str, str]) -> CallInfo:
    """What the fault rules match on, read from the (not yet verified) request."""
    method = LABELS[path].removeprefix("v3 ")
    header_token = headers.get("alipay-app-auth-token") or None
    if path == QUERY_PATH:
        try:
            token = parse_form(urlsplit(raw_target).query).get("app_auth_token")
        except (SignatureError, UnicodeDecodeError):
            token = None
        return CallInfo(method, app_auth_token=token or header_token)
    try:
        value = json.loads(body.decode("utf-8")) if body.strip() else {}
    except (UnicodeDecodeError, ValueError, RecursionError):
        value = {}
    data = value if isinstance(value, dict) else {}

    def text_of(name: str) -> str | None:
        item = data.get(name)
        return item if isinstance(item, str) and item else None

    return CallInfo(
        method,
        grant_type=text_of("grant_type"),
        code=text_of("code"),
        refresh_token=text_of("refresh_token"),
        app_auth_token=header_token,
    )


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text) if text.strip() else {}
    except (json.JSONDecodeError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise V3Error(400, "invalid-parameter", "请求体须为JSON对象", "business_error")
    return value


def _query_params(raw_target: str) -> dict[str, str]:
    try:
        return parse_form(urlsplit(raw_target).query)
    except (SignatureError, UnicodeDecodeError):
        raise V3Error(
            400, "invalid-parameter", "查询参数重复或不是UTF-8编码", "business_error"
        ) from None
