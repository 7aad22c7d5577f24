"""The small pages the callback function shows a merchant (中文 and English, never a token)."""

from __future__ import annotations

from html import escape

from appauth.authorization import AuthorizationOutcome, StartResult

_STYLE = (
    "body{font-family:-apple-system,'PingFang SC','Microsoft YaHei',sans-serif;max-width:36rem;"
    "margin:3rem auto;padding:0 1rem;color:#1f2329}h1{font-size:1.4rem}.en{color:#646a73}"
    ".ok{color:#1a7f37}.err{color:#c9252d}a.button{display:inline-block;padding:.6rem 1.2rem;"
    "background:#1677ff;color:#fff;border-radius:6px;text-decoration:none}code{font-size:.85rem}"
)


def _page(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="zh-CN"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>{body}</body></html>"
    )


def start_page(result: StartResult, qr_svg: str) -> str:
    kind_zh = "批量授权" if result.batch else "授权"
    kind_en = "batch authorization" if result.batch else "authorization"
    url = escape(result.url, quote=True)
    return _page(
        "支付宝授权 · Alipay authorization",
        f"<h1>请使用支付宝扫码完成{kind_zh}</h1>"
        f'<p class="en">Scan with the Alipay app to complete the {kind_en}.</p>'
        f"{qr_svg}"
        f'<p><a class="button" href="{url}">在支付宝中打开 · Open in Alipay</a></p>'
        '<p class="en">The link works once and expires; reload this page for a new one.</p>',
    )


def result_page(outcome: AuthorizationOutcome) -> str:
    apps = "".join(f"<li><code>{escape(app)}</code></li>" for app in outcome.auth_app_ids)
    note = ""
    if outcome.parked:
        note = (
            "<p>授权已收到，正在保存，稍后生效。</p>"
            '<p class="en">Received; it is being saved and will be active shortly.</p>'
        )
    return _page(
        "授权成功 · Authorized",
        '<h1 class="ok">授权成功</h1><p class="en">Authorization complete.</p>'
        f"<p>已授权的应用 · Authorized apps:</p><ul>{apps}</ul>{note}"
        '<p>您可以关闭此页面。</p><p class="en">You can close this page.</p>',
    )


_ERROR_TEXT_ZH = {
    400: "请求无效",
    409: "此授权链接已使用",
    502: "支付宝未及时确认",
    503: "支付宝暂时不可用，请稍后重试",
}


def error_page(status: int, message: str) -> str:
    zh = _ERROR_TEXT_ZH.get(status, "授权未完成")
    return _page(
        "授权未完成 · Authorization not completed",
        f'<h1 class="err">{escape(zh)}</h1><p class="en">{escape(message)}</p>',
    )
