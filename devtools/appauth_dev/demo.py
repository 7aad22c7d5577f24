"""``make demo``: the whole token lifecycle through the real handlers, on this machine only.

No AWS account, no Alipay, no Docker: moto's server holds template.yaml's stack (tables, KMS
keys, the parking queue, the secrets in SSM), the simulator plays Alipay, and the three functions
run in this process exactly as Lambda runs them, the callback function behind a loopback API
Gateway front (:func:`appauth_dev.local_cmd.fronted_service`). The steps:

start page → consent (single and batch) → callback → token query (``get_token``, ``describe``
through :class:`appauth.callers.TokenClient`) → a :class:`appauth.callers.MerchantClient` call →
both clocks moved forward so every pair is due → the refresh function's scheduled run rotates
them (the old pair refused after Alipay's grace period, the new one works) → a refresh whose
answer is lost, reconciled by the next run → a cancellation notification sent by the simulator to
the notify route → ``revoked``, and the token query saying so → a table of every merchant.

"Both clocks": the simulator's clock and the service's (:class:`appauth_dev.local_service.
ServiceClock`: every wall-clock read of the layer, so the refresh function, invoked with the
schedule's own event, finds the pairs due and stores lifetimes on the moved clock).

Every step checks its result; any failure exits 1 naming the step. Ctrl-C exits 130 after
stopping everything. ``run_demo(fail_at=STEP)`` (or ``APPAUTH_DEMO_FAIL_AT=STEP``) makes every
Alipay call fail from that step on, to see a failure reported (``STEP`` is a step's key, e.g.
``merchant-call``).
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from html.parser import HTMLParser
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

import boto3
import requests

from appauth.alipay.client import TOKEN_METHOD, AlipayClient, Endpoints
from appauth.alipay.errors import AlipayError
from appauth.alipay.redaction import mask
from appauth.callers import (
    MerchantClient,
    MerchantMustReauthorizeError,
    MerchantToken,
    RevokedError,
    TokenClient,
)
from appauth.runtime import runtime
from appauth.store import AUTH_SK, app_pk
from appauth_dev.local_cmd import TOKEN_QUERY_FUNCTION, FrontedService, fronted_service
from appauth_dev.local_lambda import LocalLambdaClient
from appauth_dev.simulator.control import SimulatorControl

MERCHANT_METHOD = "alipay.open.mini.baseinfo.query"
DUE_AFTER = timedelta(days=91)  # past RefreshHygieneDays (90): every pair is due
PAST_GRACE = timedelta(minutes=61)  # past the simulator's grace for a superseded token (1 h)
NEXT_RUN = timedelta(minutes=10)  # past the first backoff of a merchant to reconcile (<= 5 min)
FAIL_AT_ENV = "APPAUTH_DEMO_FAIL_AT"
INDENT = " " * 20
CALLBACK_SHORT = "the front's /alipay/callback"

STEPS = {
    "start": "start page",
    "consent": "consent",
    "callback": "callback",
    "token-query": "token query",
    "merchant-call": "merchant call",
    "clock": "clock",
    "rotation": "rotation",
    "grace": "grace period",
    "lost-answer": "lost answer",
    "cancellation": "cancellation",
    "table": "table",
}
T = TypeVar("T")


class DemoFailedError(Exception):
    """The product did not behave as the demo promises."""


class StepFailedError(Exception):
    def __init__(self, number: int, title: str, cause: BaseException) -> None:
        self.number = number
        self.title = title
        self.cause = cause
        detail = (
            str(cause) if isinstance(cause, DemoFailedError) else f"{type(cause).__name__}: {cause}"
        )
        super().__init__(f"step {number} ({title}): {detail}")


def _say(text: str = "") -> None:
    print(text, flush=True)


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise DemoFailedError(what)


def _quietly(call: Callable[[], T]) -> T:
    """A caller-side call (TokenClient, MerchantClient) without the layer's log lines (the
    ``appauth`` logger has the handler and the level the functions' Powertools Logger gave it)."""
    logger = logging.getLogger("appauth")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        return call()
    finally:
        logger.setLevel(level)


def _day(value: str | datetime | None) -> str:
    if value is None:
        return "-"
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.strftime("%Y-%m-%d %H:%M")


class _Form(HTMLParser):
    """The consent page's form, as a browser reads it (action and hidden fields)."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form" and self.action is None:
            self.action = values.get("action", "")
        elif tag == "input" and values.get("type") == "hidden" and "name" in values:
            self.fields[values["name"]] = values.get("value", "")


@dataclass
class Demo:
    fronted: FrontedService
    tokens: TokenClient
    lam: LocalLambdaClient
    isv_alipay: AlipayClient  # the ISV Lambda's own client (signs with the ISV app's key)
    fail_at: str | None = None
    http: requests.Session = field(default_factory=requests.Session)
    single: str = ""
    batch: list[str] = field(default_factory=list)
    cached: MerchantToken | None = None
    number: int = 0

    @property
    def control(self) -> SimulatorControl:
        return self.fronted.control

    @property
    def front(self) -> str:
        return self.fronted.front.url

    # --- plumbing ------------------------------------------------------------------------

    @contextmanager
    def step(self, key: str) -> Iterator[None]:
        self.number += 1
        title = STEPS[key]
        if self.fail_at == key:
            self.control.faults(error_rate=1.0)  # every Alipay call fails from here on
        print(f"{self.number:>2}. {title:<16}", end="", flush=True)
        try:
            yield
        except KeyboardInterrupt:
            raise
        except Exception as error:
            _say()
            raise StepFailedError(self.number, title, error) from error

    def line(self, text: str, *, first: bool = False) -> None:
        _say(text if first else INDENT + text)

    def get(self, path_or_url: str, **params: str) -> tuple[int, Any]:
        response = self.http.get(
            urljoin(self.front, path_or_url),
            params=params or None,
            headers={"Accept": "application/json"},
            allow_redirects=False,
            timeout=30,
        )
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, response.text

    def consent(self, authorization_url: str, **choices: str) -> str:
        """The merchant's browser on Alipay's consent page: open it, approve; the redirect."""
        page = self.http.get(authorization_url, timeout=10)
        _check(page.status_code == 200, f"the consent page answered {page.status_code}")
        form = _Form()
        form.feed(page.text)
        _check(form.action is not None, "the consent page has no form")
        approved = self.http.post(
            urljoin(authorization_url, form.action or ""),
            data={**form.fields, **choices},
            allow_redirects=False,
            timeout=30,
        )
        _check(approved.status_code == 302, f"approving answered {approved.status_code}")
        location = approved.headers["Location"]
        _check(
            location.startswith(self.fronted.callback_url + "?"),
            f"Alipay redirected elsewhere: {urlsplit(location).path}",
        )
        return location

    def stored(self, auth_app_id: str) -> dict[str, Any]:
        """The token query's consistent answer (the service's truth, not the ISV's cache)."""
        answer: dict[str, Any] = self.fronted.invoke(
            "token_query", {"action": "get_token", "auth_app_id": auth_app_id, "consistent": True}
        )
        return answer

    def alipay_record(self, auth_app_id: str) -> dict[str, Any]:
        record: dict[str, Any] | None = self.control.merchant(auth_app_id)
        if record is None:
            raise DemoFailedError(f"Alipay never saw {auth_app_id}")
        return record

    def refresh(self, event: dict[str, Any]) -> dict[str, Any]:
        report: dict[str, Any] = self.fronted.invoke("refresh", event)
        _check("error" not in report, f"the refresh function refused {event}: {report}")
        return report

    # --- the steps -----------------------------------------------------------------------

    def start_page(self) -> dict[str, Any]:
        with self.step("start"):
            status, single = self.get("/alipay/authorize", merchant_ref="shop-42")
            _check(status == 200 and "authorization_url" in single, f"start page answered {status}")
            self.line(
                "GET /alipay/authorize?merchant_ref=shop-42 → 200: Alipay link + QR code, signed one-time state",
                first=True,
            )
            status, batch = self.get(
                "/alipay/authorize", batch="1", application_type="TINYAPP,WEBAPP"
            )
            _check(status == 200 and batch.get("batch") is True, f"batch start page: {status}")
            self.line("GET /alipay/authorize?batch=1&application_type=TINYAPP,WEBAPP → 200 (batch)")
        return {"single": single["authorization_url"], "batch": batch["authorization_url"]}

    def consents(self, urls: dict[str, str]) -> dict[str, str]:
        with self.step("consent"):
            before = len(self.control.notifications())
            single = self.consent(urls["single"])
            self.line(
                f"merchant opens the link, approves Alipay's consent form → 302 to "
                f"{CALLBACK_SHORT} with app_auth_code={mask(_query(single)['app_auth_code'])}",
                first=True,
            )
            batch = self.consent(urls["batch"])
            self.line(
                f"another merchant approves the batch page (TINYAPP,WEBAPP) → 302 to {CALLBACK_SHORT}"
            )
            _check(self.control.notifications()[before:] == [], "no grant notification")
        return {"single": single, "batch": batch}

    def callbacks(self, redirects: dict[str, str]) -> None:
        with self.step("callback"):
            status, granted = self.get(redirects["single"])
            _check(
                status == 200 and granted.get("status") == "granted",
                f"callback answered {status}: {granted}",
            )
            self.single = granted["auth_app_ids"][0]
            self.line(
                f"GET /alipay/callback → 200 granted auth_app_id={self.single} "
                f"merchant_ref={granted['merchant_ref']}",
                first=True,
            )
            status, batch = self.get(redirects["batch"])
            _check(
                status == 200 and len(batch.get("auth_app_ids", [])) == 2,
                f"batch callback: {status} {batch}",
            )
            self.batch = list(batch["auth_app_ids"])
            self.line(f"GET /alipay/callback (batch) → 200 granted {', '.join(self.batch)}")
            status, again = self.get(redirects["single"])
            _check(status == 200 and again.get("auth_app_ids") == granted["auth_app_ids"], "repeat")
            self.line("the same redirect again → 200 same result, no second exchange (idempotent)")
            replayed = _with_query(redirects["single"], app_auth_code="a" * 32)
            status, refused = self.get(replayed)
            _check(status == 409, f"a replayed state must be refused, got {status}")
            state = _query(redirects["single"])["state"]
            status, forged = self.get(_with_query(redirects["single"], state=state[:-4] + "AAAA"))
            _check(status == 400, f"a forged state must be refused, got {status}")
            self.line(
                f"state reused → 409 {refused['error']['reason']}; "
                f"forged state → 400 {forged['error']['reason']}"
            )
            service = self.fronted.service
            raw = boto3.client("dynamodb").get_item(
                TableName=service.stack.tokens_table,
                Key={"pk": {"S": app_pk(self.single)}, "sk": {"S": AUTH_SK}},
                ConsistentRead=True,
            )["Item"]
            pair = self.alipay_record(self.single)["current"]
            _check(
                pair["app_auth_token"] not in repr(raw)
                and pair["app_refresh_token"] not in repr(raw),
                "the raw item must not hold the token in clear",
            )
            key = raw["tokens"]["M"]["key_id"]["S"].rsplit("/", 1)[-1]
            self.line(f"raw DynamoDB item → no plaintext token; sealed under KMS key {key}")

    def token_query(self) -> None:
        with self.step("token-query"):
            token = _quietly(lambda: self.tokens.get(self.single))
            alipay_pair = self.alipay_record(self.single)["current"]
            _check(
                token.version == 1 and token.app_auth_token == alipay_pair["app_auth_token"],
                f"get_token: version {token.version}, the pair Alipay issued: "
                f"{token.app_auth_token == alipay_pair['app_auth_token']}",
            )
            self.cached = token
            self.line(
                f"TokenClient.get → granted version={token.version} "
                f"app_auth_token={mask(token.app_auth_token)} expires {_day(token.expires_at)}",
                first=True,
            )
            described = _quietly(lambda: self.tokens.describe(self.single))
            details = described.details
            _check(details.get("alipay_status") == "valid", f"describe: {details}")
            self.line(
                f"TokenClient.describe → Alipay says {details['alipay_status']}, "
                f"{len(described.auth_methods or ())} methods, auth_end {details.get('auth_end')} "
                "(never a token)"
            )

    def merchant_call(self) -> None:
        with self.step("merchant-call"):
            merchant = MerchantClient(self.isv_alipay, self.tokens, self.single)
            answer = _quietly(lambda: merchant.call(MERCHANT_METHOD))
            _check(answer.get("code") == "10000", f"{MERCHANT_METHOD}: {answer}")
            self.line(
                f'MerchantClient.call("{MERCHANT_METHOD}") → 10000 app_name={answer["app_name"]} '
                "(Alipay checked the merchant's token)",
                first=True,
            )

    def clock(self) -> None:
        with self.step("clock"):
            self.fronted.service.advance_clock(DUE_AFTER)
            now = self.fronted.service.clock.now()
            self.line(
                f"the simulator's clock and the service's +{DUE_AFTER.days} days (now "
                f"{_day(now)} UTC): every pair is past RefreshHygieneDays (90)",
                first=True,
            )

    def rotation(self) -> None:
        merchants = [self.single, *self.batch]
        with self.step("rotation"):
            report = self.refresh({"due": True})
            _check(
                report["due"] == len(merchants) and report["rotated"] == len(merchants),
                f"scheduled run: due={report['due']} rotated={report['rotated']}",
            )
            verified = f" verify_due={report['verify_due']}" if report["verify_due"] else ""
            self.line(
                f'refresh function, the schedule\'s event {{"due": true}} → due={report["due"]} '
                f"rotated={report['rotated']}{verified}",
                first=True,
            )
            for app in merchants:
                stored = self.stored(app)
                current = self.alipay_record(app)["current"]
                _check(
                    stored.get("version") == 2
                    and stored.get("app_auth_token") == current["app_auth_token"],
                    f"{app}: version {stored.get('version')}, the pair Alipay issued last: "
                    f"{stored.get('app_auth_token') == current['app_auth_token']}",
                )
            self.line(
                "each merchant now at version 2, holding the pair Alipay issued last; next "
                f"refresh {_day(_next_refresh(self, self.single))} UTC"
            )

    def grace(self) -> None:
        with self.step("grace"):
            if self.cached is None:
                raise DemoFailedError("no token was cached by the token query step")
            old = self.cached.app_auth_token
            works = _quietly(lambda: self.isv_alipay.call(MERCHANT_METHOD, app_auth_token=old))
            _check(works.get("code") == "10000", "within the grace the old token still works")
            self.line(
                "right after the rotation the old app_auth_token still works (Alipay's grace: 1 h)",
                first=True,
            )
            self.fronted.service.advance_clock(PAST_GRACE)
            try:
                _quietly(lambda: self.isv_alipay.call(MERCHANT_METHOD, app_auth_token=old))
            except AlipayError as error:
                _check(error.app_auth_token_dead, f"the old token: {error}")
                refused = f"{error.code} {error.sub_code or ''}".strip()
            else:
                raise DemoFailedError("Alipay still accepts the superseded token after its grace")
            first = self.alipay_record(self.single)["pairs"][0]
            _check(
                not first["token_accepted"] and not first["refresh_accepted"],
                f"the old pair at Alipay: {first['token_accepted']} {first['refresh_accepted']}",
            )
            self.line(
                f"both clocks +{PAST_GRACE.seconds // 60} min: the old app_auth_token → refused "
                f"by Alipay ({refused}); its refresh token too"
            )
            merchant = MerchantClient(self.isv_alipay, self.tokens, self.single)
            calls = len(self.lam.calls)
            answer = _quietly(lambda: merchant.call(MERCHANT_METHOD))
            actions = [e.get("action") for _n, e in self.lam.calls[calls:]]
            _check(
                answer.get("code") == "10000" and "report_invalid" in actions,
                f"MerchantClient after the rotation: {answer.get('code')} {actions}",
            )
            self.line(
                "MerchantClient (its container still caches version 1) → refused, report_invalid "
                "→ stale, retried once with version 2 → 10000"
            )

    def lost_answer(self) -> None:
        app = self.single
        with self.step("lost-answer"):
            # This Alipay replays the pair it issued when a superseded refresh token comes back
            # within its grace (what the protocol relies on to recover a lost answer).
            self.control.behaviour(superseded_refresh="same_pair")
            self.control.add_rule(
                method=TOKEN_METHOD,
                grant_type="refresh_token",
                auth_app_id=app,
                fault="timeout",
                after_processing=True,
                count=2,
                timeout_seconds=0.1,
            )
            report = self.refresh({"auth_app_ids": [app]})
            (entry,) = report["merchants"]
            held = self.stored(app)
            _check(
                entry["outcome"] == "outcome_unknown" and held.get("version") == 2,
                f"a lost answer must be marked, not guessed: {entry['outcome']} {held.get('version')}",
            )
            self.line(
                f'refresh {{"auth_app_ids": ["{app}"]}}: Alipay rotates, the answer is lost, and '
                "so is the resend's",
                first=True,
            )
            self.line(
                f"→ {entry['outcome']}: marked for reconciliation; the token query still serves "
                f"version {held['version']}"
            )
            self.fronted.service.advance_clock(NEXT_RUN)
            report = self.refresh({"due": True})
            recovered = self.stored(app)
            record = self.alipay_record(app)
            _check(
                report["recovered"] == 1
                and report["reconciled"] == 1
                and recovered.get("version") == 3
                and recovered.get("app_auth_token") == record["current"]["app_auth_token"],
                f"the next run must reconcile: {report['recovered']} {recovered.get('version')}",
            )
            calls = [call["outcome"] for call in record["refresh_calls"][-3:]]
            _check(calls[0] == "rotated" and "rotated" not in calls[1:], f"Alipay did {calls}")
            self.line(
                f'both clocks +{NEXT_RUN.seconds // 60} min, the next scheduled run {{"due": true}} '
                f"→ due={report['due']} reconciled={report['reconciled']} "
                f"recovered={report['recovered']}"
            )
            self.line(
                f"Alipay rotated once for the three calls ({', '.join(calls)}); its pair is stored "
                f"(version {recovered['version']})"
            )

    def cancellation(self) -> None:
        app = self.batch[0]
        with self.step("cancellation"):
            sent = len(self.fronted.front.requests)
            revoked = self.control.revoke(app, notify=True)
            notification = revoked["notification"] or {}
            _check(
                notification.get("delivered") is True and notification.get("answer") == "success",
                f"the cancellation notification: {notification}",
            )
            requests_seen = self.fronted.front.requests[sent:]
            _check(
                requests_seen == [{"method": "POST", "path": "/alipay/notify", "status": 200}],
                f"the notify route saw {requests_seen}",
            )
            self.line(
                f"merchant {app} cancels at Alipay → the simulator POSTs a signed "
                "alipay.open.auth.appauth.cancelled to /alipay/notify → 200 success",
                first=True,
            )
            try:
                _quietly(lambda: self.tokens.get(app, consistent=True))
            except RevokedError as error:
                self.line(f"token query get_token → {error.code}: {error.message}")
            else:
                raise DemoFailedError(
                    "the token query still hands out a cancelled merchant's token"
                )
            merchant = MerchantClient(self.isv_alipay, self.tokens, app)
            try:
                _quietly(lambda: merchant.call(MERCHANT_METHOD))
            except MerchantMustReauthorizeError as error:
                self.line(
                    f"MerchantClient.call → {type(error).__name__} ({error.code}), no call made"
                )
            else:
                raise DemoFailedError("a call was made for a cancelled merchant")
            stored = self.stored(app)
            _check(stored.get("ok") is False and not stored.get("app_auth_token"), "no token")

    def table(self) -> None:
        with self.step("table"):
            page = _quietly(self.tokens.list)
            items = sorted(page.items, key=lambda item: item.auth_app_id)
            _check(
                {item.auth_app_id for item in items} == {self.single, *self.batch},
                f"list: {[item.auth_app_id for item in items]}",
            )
            expected = {self.single: "granted", self.batch[0]: "revoked", self.batch[1]: "granted"}
            for item in items:
                _check(
                    item.status == expected[item.auth_app_id],
                    f"{item.auth_app_id}: {item.status}",
                )
            self.line('TokenClient.list (the token query\'s "list": never a token)', first=True)
            _say()
            store = runtime().store
            rows = [("merchant", "status", "version", "next refresh (UTC)", "last event")]
            for item in items:
                events = store.events(item.auth_app_id)
                rows.append(
                    (
                        item.auth_app_id,
                        item.status or "-",
                        str(item.version),
                        _day(item.details.get("next_refresh_at")),
                        events[-1].event if events else "-",
                    )
                )
            widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
            for row in rows:
                _say(
                    "    "
                    + "  ".join(
                        cell.ljust(width) for cell, width in zip(row, widths, strict=True)
                    ).rstrip()
                )


def _next_refresh(demo: Demo, auth_app_id: str) -> str | None:
    page = _quietly(demo.tokens.list)
    for item in page.items:
        if item.auth_app_id == auth_app_id:
            value = item.details.get("next_refresh_at")
            return str(value) if value else None
    return None


def _query(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query))


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    return parts._replace(query=urlencode({**_query(url), **changes})).geturl()


def run_demo(*, fail_at: str | None = None) -> int:
    """The demo; 0 when every step passed, 1 naming the failed step, 130 on Ctrl-C."""
    fail_at = fail_at or os.environ.get(FAIL_AT_ENV) or None
    if fail_at is not None and fail_at not in STEPS:
        print(f"demo: {FAIL_AT_ENV} must be one of {', '.join(STEPS)}", file=sys.stderr)
        return 2
    started = time.monotonic()
    try:
        with warnings.catch_warnings():
            # A function interrupted by Ctrl-C flushes no metrics; Powertools warns about it.
            warnings.filterwarnings("ignore", "No application metrics to publish")
            return _run(fail_at, started)
    except KeyboardInterrupt:
        print("\ndemo interrupted: everything it started is stopped", file=sys.stderr)
        return 130


def _run(fail_at: str | None, started: float) -> int:
    _say("appauth demo: the whole token lifecycle on this machine (no AWS account, no Alipay)")
    try:
        with fronted_service() as fronted:
            service = fronted.service
            lam = LocalLambdaClient.for_service(service)
            # An ISV Lambda: its TokenClient (a container cache that outlives a rotation here)
            # and its own Alipay client, signing with the ISV app's key (the service's).
            tokens = TokenClient(TOKEN_QUERY_FUNCTION, lambda_client=lam, max_age_seconds=600)
            isv_alipay = AlipayClient(
                runtime().credentials(), Endpoints.local(service.simulator.url)
            )
            _say(
                f"  stack      template.yaml on moto: tables {service.stack.tokens_table}, "
                f"{service.stack.idempotency_table}; KMS keys; parking queue; secrets in SSM"
            )
            _say(
                f"  Alipay     the simulator at {service.simulator.url} (fresh RSA-2048 keys; "
                "grant notifications off: the callback stores each pair)"
            )
            _say(
                f"  functions  callback behind an API Gateway front at {fronted.front.url} "
                "(CALLBACK_URL, notify_url); refresh and token_query invoked as Lambda would"
            )
            # The callback's exchange stores each new pair; Alipay's grant notifications (which
            # carry the same pairs) stay off so each authorization is one stored version.
            fronted.control.notification_settings(grant_notifications=False)
            _say()
            demo = Demo(fronted, tokens, lam, isv_alipay, fail_at=fail_at)
            urls = demo.start_page()
            demo.callbacks(demo.consents(urls))
            demo.token_query()
            demo.merchant_call()
            demo.clock()
            demo.rotation()
            demo.grace()
            demo.lost_answer()
            demo.cancellation()
            demo.table()
    except StepFailedError as failed:
        print(f"demo FAILED at {failed}", file=sys.stderr)
        return 1
    except (AlipayError, DemoFailedError, OSError, RuntimeError) as error:
        print(
            f"demo FAILED while starting or stopping: {type(error).__name__}: {error}",
            file=sys.stderr,
        )
        return 1
    _say()
    _say(
        f"all {len(STEPS)} steps passed in {time.monotonic() - started:.1f} s; everything it started is stopped"
    )
    _say("demo OK")
    return 0
