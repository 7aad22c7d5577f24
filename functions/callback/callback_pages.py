"""The small pages the callback function shows a merchant (中文 and English, never a token).

Each page is one self-contained document: its only style is the inline ``<style>`` below (allowed
by its hash in :data:`CONTENT_SECURITY_POLICY`), the QR code is inline SVG, and nothing is
loaded from anywhere (no script, font, image or stylesheet by URL; the favicon is ``data:``).
Fluid from a 320 px phone to a desktop. The result page names the merchant's app ids and its
merchant reference, nothing else.
"""

from __future__ import annotations

import base64
import hashlib
from html import escape

from appauth.authorization import AuthorizationOutcome, StartResult

_STYLE = (
    ":root{color-scheme:light}"
    "*{box-sizing:border-box}"
    "html{-webkit-text-size-adjust:100%;text-size-adjust:100%}"
    "body{margin:0;min-height:100vh;background:#f2f4f7;color:#1f2329;"
    "font:16px/1.6 -apple-system,BlinkMacSystemFont,'Segoe UI','PingFang SC','Hiragino Sans GB',"
    "'Microsoft YaHei','Noto Sans CJK SC','WenQuanYi Micro Hei',Roboto,Arial,sans-serif}"
    "main{width:100%;max-width:28rem;margin:0 auto;padding:1rem .75rem 2rem}"
    ".card{background:#fff;border-radius:16px;box-shadow:0 1px 2px rgba(16,24,40,.06),"
    "0 4px 16px rgba(16,24,40,.06);padding:1.5rem 1rem;text-align:center}"
    ".brand{display:flex;align-items:center;justify-content:center;gap:.5rem;margin:0 0 1rem;"
    "font-size:.9rem;color:#646a73}"
    ".brand b{display:inline-flex;align-items:center;justify-content:center;width:1.6rem;"
    "height:1.6rem;border-radius:6px;background:#1677ff;color:#fff;font-size:.95rem}"
    "h1{font-size:1.35rem;line-height:1.35;margin:.25rem 0;font-weight:600;overflow-wrap:anywhere}"
    "p{margin:.5rem 0;overflow-wrap:anywhere}"
    ".en{color:#646a73;font-size:.92rem}"
    ".lead{margin-bottom:1.25rem}"
    ".icon{display:inline-flex;align-items:center;justify-content:center;width:3.25rem;"
    "height:3.25rem;border-radius:50%;color:#fff;font-size:1.75rem;font-weight:700;"
    "margin-bottom:.5rem}"
    ".ok .icon{background:#1a7f37}.ok h1{color:#1a7f37}"
    ".err .icon{background:#c9252d}.err h1{color:#c9252d}"
    ".qr{display:inline-block;line-height:0;padding:.25rem;border:1px solid #e5e6eb;"
    "border-radius:12px;background:#fff;max-width:100%}"
    ".qr svg{display:block}"
    ".or{margin:1rem 0 .5rem;color:#646a73;font-size:.92rem}"
    "a.button{display:block;width:100%;min-height:3rem;padding:.75rem 1rem;border-radius:10px;"
    "background:#1677ff;color:#fff;font-weight:600;text-decoration:none;line-height:1.5}"
    "a.button:hover,a.button:focus-visible{background:#0958d9}"
    "a.button:focus-visible{outline:3px solid #91caff;outline-offset:2px}"
    ".note{margin-top:1.25rem;font-size:.85rem;color:#646a73}"
    "dl{margin:1.25rem 0 .5rem;text-align:left;border-top:1px solid #e5e6eb}"
    "dt{margin-top:.75rem;font-size:.85rem;color:#646a73}"
    "dd{margin:.25rem 0 0}"
    "dd ul{list-style:none;margin:0;padding:0}"
    "dd li+li{margin-top:.25rem}"
    "code{font:600 1rem/1.5 ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;"
    "overflow-wrap:anywhere}"
    ".message{margin-top:1rem;padding:.75rem;border-radius:10px;background:#fff1f0;"
    "color:#5c0011;text-align:left;font-size:.92rem}"
    "footer{margin-top:1rem;text-align:center;font-size:.8rem;color:#8f959e}"
    "@media (min-width:40rem){main{padding-top:4rem}.card{padding:2.5rem 2.5rem 2rem}"
    "h1{font-size:1.5rem}}"
    "@media (max-width:21rem){.qr svg{zoom:.85}}"  # a 320 px phone: the QR still fits
)
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode("utf-8")).digest()).decode("ascii")

# Sent with every page: nothing may load or run but the page's own <style> (by its hash) and
# data: images (the favicon); no framing, no form posts, no <base>.
CONTENT_SECURITY_POLICY = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; img-src data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _page(title: str, body: str, *, kind: str = "") -> str:
    card = f"card {kind}" if kind else "card"
    return (
        '<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<meta name="referrer" content="no-referrer">'
        '<meta name="robots" content="noindex">'
        '<link rel="icon" href="data:,">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f'<body><main><div class="{card}">'
        '<p class="brand"><b aria-hidden="true">支</b>'
        '<span>支付宝授权 · <span lang="en">Alipay authorization</span></span></p>'
        f"{body}</div>"
        '<footer>第三方应用授权 · <span lang="en">Third-party app authorization</span></footer>'
        "</main></body></html>"
    )


def _en(text: str, css: str = "en") -> str:
    return f'<p class="{css}" lang="en">{text}</p>'


def _merchant_ref(reference: str | None) -> str:
    if not reference:
        return ""
    return (
        '<dt>商户编号 · <span lang="en">Merchant reference</span></dt>'
        f'<dd><code class="merchant-ref">{escape(reference)}</code></dd>'
    )


def start_page(result: StartResult, qr_svg: str) -> str:
    kind_zh = "批量授权" if result.batch else "授权"
    kind_en = "batch authorization" if result.batch else "authorization"
    url = escape(result.url, quote=True)
    reference = _merchant_ref(result.merchant_ref)
    return _page(
        "支付宝授权 · Alipay authorization",
        f"<h1>请使用支付宝扫码完成{kind_zh}</h1>"
        + _en(f"Scan with the Alipay app to complete the {kind_en}.", "en lead")
        + f'<div class="qr" role="img" aria-label="QR code · 二维码">{qr_svg}</div>'
        + '<p class="or">已在手机上？ · <span lang="en">On your phone?</span></p>'
        + f'<p><a class="button" href="{url}">在支付宝中打开 · Open in Alipay</a></p>'
        + (f"<dl>{reference}</dl>" if reference else "")
        + '<p class="note">此链接仅可使用一次且会过期；刷新页面可获取新链接。<br>'
        '<span lang="en">The link works once and expires; reload this page for a new one.'
        "</span></p>",
    )


def result_page(outcome: AuthorizationOutcome) -> str:
    apps = "".join(
        f'<li><code class="app-id">{escape(app)}</code></li>' for app in outcome.auth_app_ids
    )
    note = ""
    if outcome.parked:
        note = (
            '<p class="note">授权已收到，正在保存，稍后生效。<br>'
            '<span lang="en">Received; it is being saved and will be active shortly.</span></p>'
        )
    return _page(
        "授权成功 · Authorized",
        '<div class="icon" aria-hidden="true">✓</div>'
        "<h1>授权成功</h1>" + _en("Authorization complete.") + "<dl>"
        '<dt>已授权的应用 · <span lang="en">Authorized apps</span></dt>'
        f"<dd><ul>{apps}</ul></dd>{_merchant_ref(outcome.merchant_ref)}</dl>{note}"
        '<p class="note">您可以关闭此页面。<br><span lang="en">You can close this page.</span></p>',
        kind="ok",
    )


_ERROR_TEXT_ZH = {
    400: "请求无效",
    404: "页面不存在",
    409: "此授权链接已使用",
    500: "服务出现问题，请稍后重试",
    502: "支付宝未及时确认",
    503: "支付宝暂时不可用，请稍后重试",
}


def error_page(status: int, message: str) -> str:
    zh = _ERROR_TEXT_ZH.get(status, "授权未完成")
    return _page(
        "授权未完成 · Authorization not completed",
        '<div class="icon" aria-hidden="true">!</div>'
        f"<h1>{escape(zh)}</h1>"
        + _en("The authorization was not completed.")
        + f'<p class="message" lang="en">{escape(message)}</p>'
        '<p class="note">如需帮助，请联系为您提供此链接的服务商。<br>'
        '<span lang="en">For help, contact the provider who gave you this link.</span></p>',
        kind="err",
    )
