"""The merchant pages in a real browser: Debian's chromium, driven by Playwright.

The local service (the template's stack on moto, Alipay played by the simulator) with its callback
function behind the loopback HTTP front, as ``appauth local`` runs it, and ``CALLBACK_URL`` the
front's ``/alipay/callback``, so the simulator's consent page sends the browser back there. On a
phone-sized and a desktop-sized screen, a merchant opens the start page, clicks "Open in Alipay",
approves on the consent page and lands on the success page, which names its app id; the token
query then holds the pair Alipay issued. The pages load nothing but themselves (their CSP is
enforced by the browser and nothing is blocked), fit a 375 px screen without scrolling sideways,
and never show a token. Screenshots go to build/screenshots/ (artifacts, git-ignored).

Chromium comes from Debian (``make test`` installs it where apt can: devtools/install_browser.sh);
Playwright's own browser downloads are never used. Without chromium the test skips, saying why.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, expect, sync_playwright

from appauth.runtime import reset_runtime
from appauth_dev.http_front import RunningFront, http_front
from appauth_dev.local_service import LOCAL_APP_ID, LocalService, local_service

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "build" / "screenshots"
CALLBACK_PATH = "/alipay/callback"
# Without the background-networking flags chromium's own connections are refused by the
# closed network of CI's machine, and it waits on them.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The screenshots' sizes: a 375 px phone (touch, mobile viewport) and a desktop window.
SCREENS: dict[str, dict[str, Any]] = {
    "mobile": {"viewport": {"width": 375, "height": 812}, "is_mobile": True, "has_touch": True},
    "desktop": {"viewport": {"width": 1280, "height": 800}},
}
MERCHANTS = {"mobile": "2021000000007501", "desktop": "2021000000007502"}
TIMEOUT_MS = 10_000  # each wait of Playwright's; a click-through takes well under a second


def _chromium() -> str | None:
    """Debian's chromium (or $CHROMIUM): what the test drives."""
    for candidate in (os.environ.get("CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@dataclass
class Fronted:
    service: LocalService
    front: RunningFront

    @property
    def callback_url(self) -> str:
        return self.front.url + CALLBACK_PATH

    def token_query(self, auth_app_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.service.invoke(
            "token_query", {"action": "get_token", "auth_app_id": auth_app_id, "consistent": True}
        )
        return answer


@pytest.fixture(scope="module")
def chromium() -> str:
    path = _chromium()
    if path is None:
        pytest.skip(
            "chromium not found at /usr/bin/chromium (nor $CHROMIUM, nor on PATH): the browser "
            "test needs Debian's chromium; `make browser` (devtools/install_browser.sh) installs "
            "it where apt-get can, or `apt-get install chromium`"
        )
    return path


@pytest.fixture(scope="module")
def fronted() -> Iterator[Fronted]:
    """The local service, then its callback function behind an HTTP front; ``CALLBACK_URL`` is
    the front's callback route (set before any request, the runtime read afresh)."""
    with local_service() as service:

        def callback(event: dict[str, Any], _context: Any) -> dict[str, Any]:
            answer: dict[str, Any] = service.invoke("callback", event)
            return answer

        with http_front(callback) as front:
            # local_service puts the whole environment back when it ends.
            os.environ["CALLBACK_URL"] = front.url + CALLBACK_PATH
            reset_runtime()
            yield Fronted(service, front)


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Browser]:
    # Playwright gives each launch a fresh temporary user-data-dir, removed when it closes.
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=chromium, headless=True, args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Watched:
    """What a page did besides rendering: every request's URL, console errors, CSP reports."""

    page: Page
    requests: list[str] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (where, message)

    def violations(self) -> list[str]:
        found: list[str] = self.page.evaluate("window.__cspViolations || []")
        return found


# Runs before any script of the page (and outside its CSP): records what the policy blocked.
CSP_RECORDER = (
    "window.__cspViolations = [];"
    "document.addEventListener('securitypolicyviolation', e => window.__cspViolations.push("
    "e.violatedDirective + ' ' + e.blockedURI));"
)


@pytest.fixture(params=list(SCREENS))
def screen(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def watched(browser: Browser, screen: str) -> Iterator[Watched]:
    context = browser.new_context(**SCREENS[screen], locale="zh-CN")
    context.set_default_timeout(TIMEOUT_MS)
    context.add_init_script(CSP_RECORDER)
    page = context.new_page()
    seen = Watched(page)

    def on_request(request: Request) -> None:
        seen.requests.append(request.url)

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            seen.errors.append((message.location.get("url", ""), message.text))

    page.on("request", on_request)
    page.on("console", on_console)
    try:
        yield seen
    finally:
        context.close()


def _shot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def _assert_self_contained(seen: Watched, fronted: Fronted, status: int = 200) -> None:
    """Nothing blocked, nothing logged, nothing fetched but the pages themselves. (Console
    errors of the service's pages only: the simulator's consent page is not ours. An error
    page's own status is logged by chromium as an error.)"""
    page = seen.page
    assert seen.violations() == []
    ours = [text for where, text in seen.errors if where.startswith(fronted.front.url + "/")]
    expected = f"Failed to load resource: the server responded with a status of {status} "
    assert [text for text in ours if not (status >= 400 and text.startswith(expected))] == []
    seen.errors.clear()
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    own = (fronted.front.url + "/", fronted.service.simulator.url + "/")
    assert [url for url in seen.requests if not url.startswith(own)] == []
    seen.requests.clear()


def test_merchant_clicks_through_to_the_success_page(
    watched: Watched, fronted: Fronted, screen: str
) -> None:
    page = watched.page
    merchant = MERCHANTS[screen]
    reference = f"shop-{screen}"

    # The start page: the QR code inline, the link to Alipay's consent page, the merchant ref.
    start = page.goto(f"{fronted.front.url}/alipay/authorize?merchant_ref={reference}")
    assert start is not None
    assert start.status == 200
    headers = start.headers
    assert headers["content-type"].startswith("text/html")
    assert headers["content-security-policy"].startswith("default-src 'none';")
    assert headers["cache-control"] == "no-store"
    expect(page.locator("h1")).to_have_text("请使用支付宝扫码完成授权")
    expect(
        page.get_by_text("Scan with the Alipay app to complete the authorization.")
    ).to_be_visible()
    expect(page.locator(".qr svg")).to_be_visible()
    expect(page.locator("code.merchant-ref")).to_have_text(reference)
    link = page.get_by_role("link", name="在支付宝中打开 · Open in Alipay")
    expect(link).to_be_visible()
    href = link.get_attribute("href") or ""
    assert href.startswith(fronted.service.simulator.url + "/oauth2/appToAppAuth.htm?")
    # The page's own stylesheet applies (allowed by its hash): the button is Alipay blue.
    assert link.evaluate("a => getComputedStyle(a).backgroundColor") == "rgb(22, 119, 255)"
    box = page.locator(".card").bounding_box()
    assert box is not None
    assert box["x"] >= 0
    assert box["x"] + box["width"] <= SCREENS[screen]["viewport"]["width"]
    _assert_self_contained(watched, fronted)
    _shot(page, f"start-{screen}")

    # Alipay's consent page (the simulator's): the merchant app id, then Approve.
    link.click()
    page.wait_for_url(f"{fronted.service.simulator.url}/oauth2/appToAppAuth.htm?**")
    page.locator('input[name="auth_app_id"]').fill(merchant)
    page.get_by_role("button", name="确认授权 / Approve").click()

    # Back at the service: the success page names the merchant's app and reference only.
    page.wait_for_url(f"{fronted.callback_url}?**")
    expect(page.locator("h1")).to_have_text("授权成功")
    expect(page.get_by_text("Authorization complete.")).to_be_visible()
    expect(page.locator("code.app-id")).to_have_text([merchant])
    expect(page.locator("code.merchant-ref")).to_have_text(reference)
    _assert_self_contained(watched, fronted)
    _shot(page, f"result-{screen}")

    # The pair Alipay issued is stored, and the page shows neither token nor code nor state.
    stored = fronted.token_query(merchant)
    issued = fronted.service.simulator.state.current_pair(merchant)
    assert issued is not None
    assert stored.get("app_auth_token") == issued.app_auth_token, stored
    html = page.content()
    for secret in (issued.app_auth_token, issued.app_refresh_token):
        assert secret not in html
    query = page.url.split("?", 1)[1]
    for part in query.split("&"):
        name, _, value = part.partition("=")
        if name in ("app_auth_code", "state"):
            assert value not in html

    # The same redirect again (a reload): the same page, answered from the idempotency record
    # (the code is spent: Alipay would refuse a second exchange).
    page.reload()
    expect(page.locator("code.app-id")).to_have_text([merchant])

    # A forged redirect: the error page, just as self-contained.
    page.goto(f"{fronted.callback_url}?app_id={LOCAL_APP_ID}&app_auth_code=y&state=forged")
    expect(page.locator("h1")).to_have_text("请求无效")
    expect(page.get_by_text("The authorization was not completed.")).to_be_visible()
    _assert_self_contained(watched, fronted, status=400)
    _shot(page, f"error-{screen}")
