"""The merchant's consent pages (``/oauth2/appToAppAuth.htm``, ``appToAppBatchAuth.htm``).

The page shows an Approve form that POSTs to ``/oauth2/approve``; approving mints a code (and,
when a grant notification will carry them, issues the authorization's pairs) and answers 302 to
``redirect_uri`` with ``app_id``, ``app_auth_code`` and ``state`` appended. Everything the
browser sends is validated again on approve: the form is as untrusted as the URL.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from html import escape
from urllib.parse import urlencode, urlsplit, urlunsplit

from .config import SimulatorConfig
from .state import SimulatorState

SINGLE_PATH = "/oauth2/appToAppAuth.htm"
BATCH_PATH = "/oauth2/appToAppBatchAuth.htm"
APPROVE_PATH = "/oauth2/approve"
APPLICATION_TYPES = ("TINYAPP", "WEBAPP", "MOBILEAPP", "PUBLICAPP", "ARAPP")
MAX_STATE_LENGTH = 2048


class ConsentError(Exception):
    """The request cannot be shown or approved; the message is safe to render (escaped)."""


@dataclass(frozen=True)
class ConsentRequest:
    app_id: str
    redirect_uri: str
    state: str | None
    application_types: tuple[str, ...] | None  # None for a single authorization

    @property
    def batch(self) -> bool:
        return self.application_types is not None


def validate(config: SimulatorConfig, params: dict[str, str], *, batch: bool) -> ConsentRequest:
    if params.get("app_id") != config.app_id:
        raise ConsentError("app_id 无效 / unknown app_id")
    uri = params.get("redirect_uri", "")
    _check_redirect_uri(config, uri)
    state = params.get("state") or None
    if state is not None and len(state) > MAX_STATE_LENGTH:
        raise ConsentError("state 过长 / state is too long")
    types: tuple[str, ...] | None = None
    if batch:
        raw = [t.strip() for t in params.get("application_type", "").split(",") if t.strip()]
        if not raw or any(t not in APPLICATION_TYPES for t in raw):
            raise ConsentError(
                "application_type 无效 / application_type must list " + ",".join(APPLICATION_TYPES)
            )
        types = tuple(dict.fromkeys(raw))
    return ConsentRequest(config.app_id, uri, state, types)


def _check_redirect_uri(config: SimulatorConfig, uri: str) -> None:
    if not uri:
        raise ConsentError("缺少 redirect_uri / redirect_uri is required")
    # Control characters or non-ASCII would corrupt the Location header.
    if not uri.isascii() or any(ord(c) < 0x21 or ord(c) == 0x7F for c in uri):
        raise ConsentError("redirect_uri 含非法字符 / redirect_uri has invalid characters")
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConsentError(
            "redirect_uri 须为绝对 http(s) 地址 / redirect_uri must be absolute http(s)"
        )
    if config.redirect_uri is not None and uri != config.redirect_uri:
        raise ConsentError(
            "redirect_uri 与应用配置的授权回调地址不一致 / redirect_uri does not match the app's"
        )


def redirect_location(request: ConsentRequest, code: str) -> str:
    parts = urlsplit(request.redirect_uri)
    pairs = [("app_id", request.app_id), ("app_auth_code", code)]
    if request.state is not None:
        pairs.append(("state", request.state))
    extra = urlencode(pairs)
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


@dataclass(frozen=True)
class Approval:
    location: str  # where the browser is redirected
    app_auth_code: str
    out_biz_no: str | None  # the merchant reference in the ISV's state, if it carries one


def merchant_reference(state: str | None) -> str | None:
    """The merchant reference (``r``) of a state in the service's ``v1.<payload>.<mac>`` form.

    Read without checking the MAC (the simulator does not hold the ISV's secret); None for any
    other state, so the grant notification then names no ``out_biz_no``.
    """
    if not state or state.count(".") != 2:
        return None
    version, body, _mac = state.split(".")
    if version != "v1":
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError, RecursionError):
        return None
    reference = payload.get("r") if isinstance(payload, dict) else None
    return reference if isinstance(reference, str) and reference else None


def approve(
    config: SimulatorConfig, state: SimulatorState, form: dict[str, str], *, issue: bool = False
) -> Approval:
    """Mint a code for an approved consent form; the redirect location and what a grant
    notification needs. ``issue`` issues the pairs now (Alipay issues them at approval; without
    a notification nobody can tell, so they are otherwise issued on the exchange)."""
    request = validate(config, form, batch=form.get("mode") == "batch")
    auth_app_id = form.get("auth_app_id", "").strip() or None
    if auth_app_id is not None and not (auth_app_id.isdigit() and len(auth_app_id) == 16):
        raise ConsentError("商户应用ID须为16位数字 / the merchant app id must be 16 digits")
    if request.application_types is not None:
        minted = state.mint_code(
            auth_app_id, batch_size=len(request.application_types), issue=issue
        )
    else:
        minted = state.mint_code(auth_app_id, issue=issue)
    return Approval(
        redirect_location(request, minted.app_auth_code),
        minted.app_auth_code,
        merchant_reference(request.state),
    )


def _hidden(name: str, value: str) -> str:
    return f'<input type="hidden" name="{escape(name)}" value="{escape(value)}">'


def page(request: ConsentRequest) -> str:
    fields = [
        _hidden("app_id", request.app_id),
        _hidden("redirect_uri", request.redirect_uri),
        _hidden("mode", "batch" if request.batch else "single"),
    ]
    if request.state is not None:
        fields.append(_hidden("state", request.state))
    if request.application_types is not None:
        fields.append(_hidden("application_type", ",".join(request.application_types)))
        scope = (
            "<p>授权以下类型的应用 / Authorize apps of these types: "
            f"{escape(', '.join(request.application_types))}</p>"
        )
    else:
        scope = (
            "<p><label>商户应用ID（可选）/ Merchant app id (optional): "
            '<input name="auth_app_id" pattern="[0-9]{16}" placeholder="2021..."></label></p>'
        )
    return (
        '<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">'
        "<title>第三方应用授权 / Authorize a third-party app</title></head><body>"
        "<h1>第三方应用授权 / Authorize a third-party app</h1>"
        f"<p>服务商应用 {escape(request.app_id)} 申请代您调用支付宝接口。<br>"
        f"The service provider app {escape(request.app_id)} asks to call Alipay for you.</p>"
        f"<p>授权后将返回 / You will return to: <code>{escape(request.redirect_uri)}</code></p>"
        f'<form method="post" action="{APPROVE_PATH}">{"".join(fields)}{scope}'
        '<button type="submit">确认授权 / Approve</button></form>'
        "<p><small>支付宝模拟器 / Alipay simulator (development only)</small></p></body></html>"
    )


def error_page(message: str) -> str:
    return (
        '<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">'
        "<title>授权失败 / Authorization failed</title></head><body>"
        f"<h1>授权失败 / Authorization failed</h1><p>{escape(message)}</p></body></html>"
    )
