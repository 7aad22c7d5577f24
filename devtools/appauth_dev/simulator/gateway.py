"""The v2 gateway (``POST /gateway.do``): verify like Alipay, answer signed like Alipay.

Every protocol rule comes from the signing layer; this module only decides what to answer.

Error choices (``error_response`` unless noted; all signed with the Alipay key):

- 40001 ``isv.missing-app-id``, ``isv.missing-method``, ``isv.missing-signature``,
  ``isv.missing-signature-type``
- 40002 ``isv.invalid-app-id``, ``isv.invalid-method``, ``isv.invalid-signature-type``,
  ``isv.invalid-encrypt-type`` (unknown type, or AES with no key configured),
  ``isv.decryption-error``, ``isv.invalid-parameter`` (a form field repeated, or not UTF-8)
- cert mode, under the method node, signed but naming no ``alipay_cert_sn``: 40001
  ``isv.missing-app-cert-sn`` / ``isv.missing-alipay-root-cert-sn``, 40002
  ``isv.app-cert-not-exist`` (an ``app_cert_sn`` that is not the app's) /
  ``isv.invalid-alipay-root-cert-sn``
- under the method node: 40002 ``isv.invalid-signature``; 40001 ``isv.missing-timestamp`` /
  40002 ``isv.invalid-timestamp``; 40002 ``isv.invalid-biz-content``; then the business errors:
  40001 ``isv.missing-<field>``, 40002 ``isv.invalid-<field>``, 40002 ``isv.code-invalid``
  (unknown, used or expired code), 40002 ``isv.refresh-token-invalid`` (unknown, superseded,
  revoked or past ``re_expires_in``), 20001 ``aop.invalid-app-auth-token``, 20001
  ``aop.app-auth-token-time-out``.
- faults: unsigned 20000 ``isp.unknow-error``; signed 40004 ``isv.app-call-limited``.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from appauth.alipay.aes import aes_decrypt, aes_encrypt
from appauth.alipay.errors import SignatureError
from appauth.alipay.signing import (
    ERROR_NODE,
    dumps_compact,
    parse_form,
    response_node_name,
    rsa_sign,
    rsa_verify,
    sign_content,
)

from .config import SimulatorConfig
from .faults import CallInfo
from .reply import JSON_TYPE, Reply
from .state import ErrorKind, SimulatorState, StateError

TOKEN_APP = "alipay.open.auth.token.app"  # noqa: S105 - a method name
TOKEN_QUERY = "alipay.open.auth.token.app.query"  # noqa: S105 - a method name
# A merchant-scoped API, so tests can call "on behalf of" a merchant with its token.
MINI_BASEINFO = "alipay.open.mini.baseinfo.query"
METHODS = (TOKEN_APP, TOKEN_QUERY, MINI_BASEINFO)

_MESSAGES = {
    "10000": "Success",
    "20000": "Service Currently Unavailable",
    "20001": "Insufficient Token Permissions",
    "40001": "Missing Required Arguments",
    "40002": "Invalid Arguments",
    "40004": "Business Failed",
}
INVALID_SIGNATURE_MSG = "验签出错，建议检查签名字符串或签名私钥与应用公钥是否匹配"


class GatewayError(Exception):
    """An Alipay error; ``under_method`` puts it under the method node instead of error_response."""

    def __init__(
        self,
        code: str,
        sub_code: str,
        sub_msg: str,
        *,
        under_method: bool = False,
        outcome: str | None = None,
        names_cert: bool = True,
    ) -> None:
        self.code = code
        self.sub_code = sub_code
        self.sub_msg = sub_msg
        self.under_method = under_method
        # By default an answer under the method node counts as a business error in the stats.
        self.outcome = outcome or ("business_error" if under_method else "rejected")
        # Whether the signed answer names alipay_cert_sn (cert mode).
        self.names_cert = names_cert
        super().__init__(sub_code)

    def node(self) -> dict[str, Any]:
        return {
            "code": self.code,
            "msg": _MESSAGES[self.code],
            "sub_code": self.sub_code,
            "sub_msg": self.sub_msg,
        }


def business_rejection(error: StateError) -> GatewayError:
    field = error.field.replace("_", "-")
    kind = error.kind
    if kind is ErrorKind.MISSING_PARAMETER:
        return GatewayError(
            "40001", f"isv.missing-{field}", f"缺少必选参数{error.field}", under_method=True
        )
    if kind is ErrorKind.INVALID_PARAMETER:
        return GatewayError(
            "40002", f"isv.invalid-{field}", f"参数{error.field}无效", under_method=True
        )
    if kind is ErrorKind.CODE_INVALID:
        return GatewayError("40002", "isv.code-invalid", "授权码code无效", under_method=True)
    if kind is ErrorKind.REFRESH_TOKEN_INVALID:
        return GatewayError(
            "40002", "isv.refresh-token-invalid", "刷新令牌refresh_token无效", under_method=True
        )
    if kind is ErrorKind.APP_AUTH_TOKEN_EXPIRED:
        return GatewayError(
            "20001", "aop.app-auth-token-time-out", "应用授权令牌已过期", under_method=True
        )
    return GatewayError(
        "20001", "aop.invalid-app-auth-token", "无效的应用授权令牌", under_method=True
    )


def parse_params(query: str, body: bytes, content_type: str | None) -> dict[str, str]:
    """System parameters from the URL plus the form body, each decoded exactly once."""
    try:
        params = parse_form(query)
        if body:
            media = (content_type or "").split(";")[0].strip().lower()
            if media not in ("", "application/x-www-form-urlencoded"):
                raise GatewayError(
                    "40002", "isv.invalid-parameter", "请求体须为application/x-www-form-urlencoded"
                )
            for key, value in parse_form(body).items():
                if key in params:
                    raise GatewayError("40002", "isv.invalid-parameter", f"参数{key}重复")
                params[key] = value
    except (SignatureError, UnicodeDecodeError):
        raise GatewayError("40002", "isv.invalid-parameter", "参数重复或不是UTF-8编码") from None
    return params


def signed_body(
    config: SimulatorConfig,
    node_name: str,
    node: dict[str, Any],
    *,
    encrypt: bool = False,
    escape_slashes: bool = False,
    names_cert: bool = True,
) -> bytes:
    """``{"<node>":<text>,["alipay_cert_sn":..,]"sign":..}`` signing the exact node text."""
    text = dumps_compact(node)
    if encrypt and config.encrypt_key is not None:
        # The node becomes a JSON string of base64; the signed text includes its quotes.
        text = json.dumps(aes_encrypt(text, config.encrypt_key))
    parts = [f"{json.dumps(node_name)}:{text}"]
    if config.alipay_cert_sn and names_cert:
        parts.append(f'"alipay_cert_sn":{json.dumps(config.alipay_cert_sn)}')
    parts.append(f'"sign":{json.dumps(rsa_sign(text, config.alipay_private_key))}')
    body = "{" + ",".join(parts) + "}"
    if escape_slashes:
        # Real Alipay escapes "/" in the body but signs the unescaped text.
        body = body.replace("/", "\\/")
    return body.encode("utf-8")


def unavailable() -> Reply:
    node = {
        "code": "20000",
        "msg": _MESSAGES["20000"],
        "sub_code": "isp.unknow-error",
        "sub_msg": "系统繁忙",
    }
    body = dumps_compact({ERROR_NODE: node}).encode("utf-8")
    return Reply(200, body, {"Content-Type": JSON_TYPE}, outcome="fault_error")


def rate_limited(config: SimulatorConfig) -> Reply:
    node = {
        "code": "40004",
        "msg": _MESSAGES["40004"],
        "sub_code": "isv.app-call-limited",
        "sub_msg": "应用调用频率超限",
    }
    return Reply(
        200,
        signed_body(config, ERROR_NODE, node),
        {"Content-Type": JSON_TYPE},
        outcome="rate_limited",
    )


def handle(
    config: SimulatorConfig,
    state: SimulatorState,
    params: dict[str, str],
    *,
    escape_slashes: bool = False,
) -> Reply:
    method = params.get("method", "")
    encrypt = False
    try:
        _check_envelope(config, params)
        encrypt, biz_text = _biz_text(config, params)
        biz = _parse_biz(biz_text)
        data = _dispatch(state, method, params, biz)
    except GatewayError as rejection:
        node_name = response_node_name(method) if rejection.under_method else ERROR_NODE
        body = signed_body(
            config,
            node_name,
            rejection.node(),
            encrypt=encrypt and rejection.under_method,
            escape_slashes=escape_slashes,
            names_cert=rejection.names_cert,
        )
        return Reply(200, body, {"Content-Type": JSON_TYPE}, outcome=rejection.outcome)
    node = {"code": "10000", "msg": "Success", **data}
    body = signed_body(
        config, response_node_name(method), node, encrypt=encrypt, escape_slashes=escape_slashes
    )
    return Reply(200, body, {"Content-Type": JSON_TYPE})


def _check_envelope(config: SimulatorConfig, params: dict[str, str]) -> None:
    """Gateway-level checks, in the order the gateway makes them."""
    app_id = params.get("app_id")
    if not app_id:
        raise GatewayError("40001", "isv.missing-app-id", "缺少AppID参数")
    if app_id != config.app_id:
        raise GatewayError("40002", "isv.invalid-app-id", "无效的AppID参数")
    method = params.get("method")
    if not method:
        raise GatewayError("40001", "isv.missing-method", "缺少方法名参数")
    if method not in METHODS:
        raise GatewayError("40002", "isv.invalid-method", "不存在的方法名")
    signature = params.get("sign")
    if not signature:
        raise GatewayError("40001", "isv.missing-signature", "缺少签名参数")
    sign_type = params.get("sign_type")
    if not sign_type:
        raise GatewayError("40001", "isv.missing-signature-type", "缺少签名类型参数")
    if sign_type != "RSA2":
        raise GatewayError("40002", "isv.invalid-signature-type", "无效的签名类型参数")
    if config.cert_mode:
        _check_cert_sns(config, params)
    if not rsa_verify(sign_content(params), signature, config.app_public_key, "RSA2"):
        raise GatewayError(
            "40002",
            "isv.invalid-signature",
            INVALID_SIGNATURE_MSG,
            under_method=True,
            outcome="invalid_signature",
        )
    timestamp = params.get("timestamp")
    if not timestamp:
        raise GatewayError("40001", "isv.missing-timestamp", "缺少时间戳参数", under_method=True)
    try:
        datetime.strptime(timestamp, "%Y-%m-%d %H:%M:%S")
    except ValueError:
        raise GatewayError(
            "40002", "isv.invalid-timestamp", "非法的时间戳参数", under_method=True
        ) from None


def _cert_error(code: str, sub_code: str, sub_msg: str) -> GatewayError:
    """A cert-SN refusal as Alipay's gateway answers it.

    Sub codes: Alipay's signing troubleshooting page (opendocs common/02kdnf) lists
    isv.missing-app-cert-sn, isv.missing-alipay-root-cert-sn, isv.invalid-alipay-root-cert-sn
    and isv.app-cert-not-exist (there is no "isv.invalid-app-cert-sn"); the official v3 SDK's
    CommonErrorType enum has the same names without "isv.". Shape: a real answer captured with
    the Java SDK reads {"alipay_fund_trans_uni_transfer_response":{"code":"40002","msg":
    "Invalid Arguments","sub_code":"isv.missing-app-cert-sn",...},"sign":"..."}: under the
    method node (the Java SDK's parser calls error_response the old gateway's form), signed,
    naming no alipay_cert_sn (the gateway never resolved the caller's certificate). Signed
    without an SN: the Java SDK skips verifying a failure that names no certificate and returns
    it as an error; our layer verifies it with its one configured Alipay key and raises a
    signed AlipayError. An error_response here would be neither. (That capture says 40002 even
    for a missing SN; we keep 40001 for "missing" like every other missing parameter, which
    tests of the layer's client rely on; both codes are permanent to the layer.)
    """
    return GatewayError(
        code, sub_code, sub_msg, under_method=True, outcome="rejected", names_cert=False
    )


def _check_cert_sns(config: SimulatorConfig, params: dict[str, str]) -> None:
    app_cert_sn = params.get("app_cert_sn")
    if not app_cert_sn:
        raise _cert_error("40001", "isv.missing-app-cert-sn", "缺少应用公钥证书序列号")
    if app_cert_sn != config.app_cert_sn:
        raise _cert_error(
            "40002", "isv.app-cert-not-exist", "应用公钥证书不存在，请检查app_cert_sn"
        )
    root_sn = params.get("alipay_root_cert_sn")
    if not root_sn:
        raise _cert_error("40001", "isv.missing-alipay-root-cert-sn", "缺少支付宝根证书序列号")
    if config.alipay_root_cert_sn is not None and root_sn != config.alipay_root_cert_sn:
        raise _cert_error("40002", "isv.invalid-alipay-root-cert-sn", "支付宝根证书序列号无效")


def call_info(config: SimulatorConfig, params: dict[str, str]) -> CallInfo:
    """What the fault rules match on, read from the (not yet verified) parameters."""
    text = params.get("biz_content", "")
    if params.get("encrypt_type") == "AES" and config.encrypt_key is not None and text:
        try:
            text = aes_decrypt(text, config.encrypt_key)
        except SignatureError:
            text = ""
    try:
        biz = json.loads(text) if text else {}
    except (ValueError, RecursionError):
        biz = {}
    if not isinstance(biz, dict):
        biz = {}

    def text_of(value: Any) -> str | None:
        return value if isinstance(value, str) and value else None

    return CallInfo(
        method=params.get("method", ""),
        grant_type=text_of(biz.get("grant_type")),
        code=text_of(biz.get("code")),
        refresh_token=text_of(biz.get("refresh_token")),
        app_auth_token=text_of(biz.get("app_auth_token")) or text_of(params.get("app_auth_token")),
    )


def _biz_text(config: SimulatorConfig, params: dict[str, str]) -> tuple[bool, str]:
    """(whether the call is AES-encrypted, the plaintext biz_content)."""
    text = params.get("biz_content", "")
    encrypt_type = params.get("encrypt_type")
    if not encrypt_type:
        return False, text
    if encrypt_type != "AES" or config.encrypt_key is None:
        raise GatewayError("40002", "isv.invalid-encrypt-type", "加密类型无效或应用未配置AES密钥")
    if not text:
        return True, text
    try:
        return True, aes_decrypt(text, config.encrypt_key)
    except SignatureError:
        raise GatewayError("40002", "isv.decryption-error", "解密出错，请检查AES密钥") from None


def _parse_biz(text: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        value = None
    if not isinstance(value, dict):
        raise GatewayError(
            "40002", "isv.invalid-biz-content", "biz_content不是JSON对象", under_method=True
        )
    return value


def _dispatch(
    state: SimulatorState, method: str, params: dict[str, str], biz: dict[str, Any]
) -> dict[str, Any]:
    try:
        if method == TOKEN_APP:
            return state.token_app(biz)
        if method == TOKEN_QUERY:
            return state.query(biz.get("app_auth_token") or params.get("app_auth_token"))
        return _mini_baseinfo(state, params.get("app_auth_token", ""))
    except StateError as error:
        raise business_rejection(error) from None


def _mini_baseinfo(state: SimulatorState, app_auth_token: str) -> dict[str, Any]:
    if not app_auth_token:
        raise StateError(ErrorKind.MISSING_PARAMETER, "app_auth_token")
    pair = state.check_token(app_auth_token)
    return {
        "app_name": f"模拟小程序{pair.auth_app_id[-4:]}",
        "app_english_name": f"Simulated mini app {pair.auth_app_id[-4:]}",
        "app_slogan": "支付宝模拟器 / Alipay simulator",
        "app_logo": f"https://appstoreisvpic.alipayobjects.com/prod/{pair.auth_app_id}.png",
        "category_names": "生活服务_本地生活",
        "service_phone": "0571-88158090",
    }
