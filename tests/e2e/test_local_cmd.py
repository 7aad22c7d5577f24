"""``appauth local``: the stack kept running, clicked through over HTTP as a browser would.

``run_local`` runs in a thread with a stop event; the test waits (bounded) for it to say it is
ready, then: the start page through the HTTP front → the simulator's consent page and its form
→ the 302 to the front's ``/alipay/callback`` → the success page, and the token read back from
the token query through the local Lambda Invoke API (boto3's Lambda client, TokenClient). The
accelerated schedule is checked by a merchant whose pair the scheduled runs rotate. Ctrl-C of
the real command stops it without a traceback.
"""

from __future__ import annotations

import json
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urljoin

import boto3
import requests

from appauth.callers import TokenClient
from appauth_dev.local_cmd import (
    REFRESH_FUNCTION,
    TOKEN_QUERY_FUNCTION,
    FrontedService,
    run_local,
)
from tests.e2e.cli_helpers import COMMAND, interrupted_on_exit

READY_SECONDS = 60
MERCHANT_APP = "2021000000004242"


class Page(HTMLParser):
    """What a browser sees of a page: its links, its first form's action and fields."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.links: list[str] = []
        self.action: str | None = None
        self.fields: dict[str, str] = {}
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "a" and values.get("href"):
            self.links.append(values["href"])
        elif tag == "form" and self.action is None:
            self.action = values.get("action", "")
        elif tag == "input" and values.get("name"):
            self.fields[values["name"]] = values.get("value", "")


@dataclass
class Running:
    fronted: FrontedService
    result: list[int]

    @property
    def front(self) -> str:
        return self.fronted.front.url

    @property
    def lambda_url(self) -> str:
        assert self.fronted.lambda_api is not None
        return self.fronted.lambda_api.url

    def lambda_client(self) -> Any:
        return boto3.client(
            "lambda",
            endpoint_url=self.lambda_url,
            region_name="us-east-1",
            aws_access_key_id="local",
            aws_secret_access_key="local",
        )

    def invoke(self, function: str, payload: dict[str, Any]) -> dict[str, Any]:
        response = self.lambda_client().invoke(FunctionName=function, Payload=json.dumps(payload))
        assert response["StatusCode"] == 200
        assert "FunctionError" not in response
        answer: dict[str, Any] = json.loads(response["Payload"].read())
        return answer


@contextmanager
def local(**kw: Any) -> Iterator[Running]:
    """``run_local`` in a thread until the block ends; waits (bounded) until it is ready."""
    stop = threading.Event()
    ready: queue.Queue[FrontedService] = queue.Queue()
    result: list[int] = []
    worker = threading.Thread(
        target=lambda: result.append(run_local(stop=stop, on_ready=ready.put, **kw)),
        name="appauth-local",
    )
    worker.start()
    try:
        try:
            fronted = ready.get(timeout=READY_SECONDS)
        except queue.Empty:
            raise AssertionError(f"appauth local was not ready in {READY_SECONDS}s") from None
        yield Running(fronted, result)
    finally:
        stop.set()
        worker.join(timeout=READY_SECONDS)
    assert not worker.is_alive(), "appauth local did not stop"
    assert result == [0]


def eventually(check: Callable[[], Any], seconds: float = 30.0) -> Any:
    """``check()`` once it is truthy, polling (bounded): no fixed sleeps."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {seconds}s: {check}")
        time.sleep(0.05)  # the polling interval, not a timing assumption


def test_a_browser_clicks_through_and_the_token_is_stored() -> None:
    with local(refresh_every=0) as running:
        browser = requests.Session()
        start = browser.get(
            f"{running.front}/alipay/authorize", params={"merchant_ref": "shop-e2e"}, timeout=30
        )
        assert start.status_code == 200
        assert start.headers["Content-Type"].startswith("text/html")
        consent_url = next(link for link in Page(start.text).links if "/oauth2/" in link)
        assert consent_url.startswith(running.fronted.service.simulator.url)

        consent = browser.get(consent_url, timeout=30)
        assert consent.status_code == 200
        form = Page(consent.text)
        assert form.action
        fields = {**form.fields, "auth_app_id": MERCHANT_APP}  # the merchant types its app id
        approved = browser.post(
            urljoin(consent_url, form.action), data=fields, allow_redirects=False, timeout=30
        )
        assert approved.status_code == 302
        location = approved.headers["Location"]
        assert location.startswith(f"{running.front}/alipay/callback?")

        result = browser.get(location, timeout=30)
        assert result.status_code == 200, result.text
        assert result.headers["Content-Type"].startswith("text/html")
        assert MERCHANT_APP in result.text
        assert "授权成功" in result.text

        # Alipay's grant notification reached the notify route through the front, too.
        paths = [(r["method"], r["path"], r["status"]) for r in running.fronted.front.requests]
        assert ("POST", "/alipay/notify", 200) in paths
        assert ("GET", "/alipay/callback", 200) in paths

        # The token query, from outside: boto3's Lambda client against the local Invoke API.
        tokens = TokenClient(TOKEN_QUERY_FUNCTION, lambda_client=running.lambda_client())
        token = tokens.get(MERCHANT_APP, consistent=True)
        record = running.fronted.control.merchant(MERCHANT_APP)
        assert record is not None
        assert token.app_auth_token == record["current"]["app_auth_token"]
        assert token.status == "granted"
        assert token.app_auth_token not in result.text  # the page never shows a token
        listed = running.invoke(TOKEN_QUERY_FUNCTION, {"action": "list"})
        assert [item["auth_app_id"] for item in listed["items"]] == [MERCHANT_APP]


def test_the_invoke_api_answers_like_lambda_for_unknown_functions_and_bad_payloads() -> None:
    with local(refresh_every=0) as running:
        base = f"{running.lambda_url}/2015-03-31/functions"
        missing = requests.post(f"{base}/nope/invocations", data=b"{}", timeout=30)
        assert missing.status_code == 404
        assert missing.headers["x-amzn-ErrorType"] == "ResourceNotFoundException"
        garbage = requests.post(f"{base}/{TOKEN_QUERY_FUNCTION}/invocations", data=b"{", timeout=30)
        assert garbage.status_code == 400
        assert garbage.headers["x-amzn-ErrorType"] == "InvalidRequestContentException"
        refused = requests.post(
            f"{base}/{TOKEN_QUERY_FUNCTION}/invocations",
            data=json.dumps({"action": "get_token", "auth_app_id": MERCHANT_APP}),
            timeout=30,
        )
        assert refused.status_code == 200
        assert refused.json()["error"]["code"] == "not_found"


def test_the_accelerated_schedule_rotates_a_merchant_while_it_runs() -> None:
    # Each scheduled run first moves both clocks 100 days: past RefreshHygieneDays (90).
    with local(refresh_every=0.2, days_per_run=100) as running:
        # Authorized by Alipay's grant notification alone (no code to expire meanwhile).
        minted = running.fronted.control.codes(auth_app_id=MERCHANT_APP, notify=True)
        assert [n["delivered"] for n in minted["notifications"]] == [True]

        def rotated() -> dict[str, Any] | None:
            answer = running.invoke(
                TOKEN_QUERY_FUNCTION,
                {"action": "get_token", "auth_app_id": MERCHANT_APP, "consistent": True},
            )
            return answer if answer.get("ok") and answer["version"] >= 2 else None

        answer = eventually(rotated)
        record = running.fronted.control.merchant(MERCHANT_APP)
        assert record is not None
        assert record["rotations"] >= 1
        # The stored pair is one Alipay issued (the current one, or the one a run just replaced).
        issued = {pair["app_auth_token"] for pair in record["pairs"]}
        assert answer["app_auth_token"] in issued
        # The refresh function is reachable from outside too (the manual trigger).
        report = running.invoke(REFRESH_FUNCTION, {"auth_app_ids": [MERCHANT_APP]})
        assert report["due"] == 1


def test_ctrl_c_stops_the_real_command_without_a_traceback() -> None:
    command = [*COMMAND, "local", "--refresh-every", "0"]
    with interrupted_on_exit(
        command, ready="Ctrl-C stops everything", timeout=READY_SECONDS
    ) as run:
        front = re.search(
            r"start page \(single\)\s+(http://127\.0\.0\.1:\d+)/alipay/authorize", run.stdout
        )
        assert front, run.stdout
        assert requests.get(f"{front[1]}/alipay/authorize", timeout=30).status_code == 200
    assert run.code == 0, run.stderr
    assert "Traceback" not in run.stderr
    assert "stopped" in run.stderr
    # Everything it started is gone: the front no longer answers.
    try:
        requests.get(f"{front[1]}/alipay/authorize", timeout=5)
    except requests.ConnectionError:
        pass
    else:
        raise AssertionError("the front still answers after Ctrl-C")


def test_another_terminal_reaches_the_stack_with_only_the_printed_environment() -> None:
    """``appauth local`` as a person runs it; then, as in a second terminal, only the lines it
    printed (evaluated by bash, over a shell that pointed elsewhere) and the operator commands:
    ``authorize-url`` (its link approved on the simulator, through the front's callback),
    ``list``, ``list --due-within``, ``show``, ``refresh`` and ``parked``.

    Its imports are its own: the rest of this file's helpers are being reworked."""
    import io  # noqa: PLC0415
    import os  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    from contextlib import redirect_stdout  # noqa: PLC0415

    from appauth_dev import cli  # noqa: PLC0415

    merchant = "2021000000004343"
    command = [*COMMAND, "local", "--refresh-every", "0"]
    with interrupted_on_exit(
        command, ready="Ctrl-C stops everything", timeout=READY_SECONDS
    ) as run:
        printed = run.stdout
        moto = re.search(r"AWS \(moto\)\s+(http://127\.0\.0\.1:\d+)", printed)
        simulator = re.search(r"Alipay simulator\s+(http://127\.0\.0\.1:\d+)", printed)
        callback = re.search(r"callback\s+(http://127\.0\.0\.1:\d+/alipay/callback)", printed)
        assert moto, printed
        assert simulator, printed
        assert callback, printed
        lines = [line.strip() for line in printed.splitlines()]
        script = "\n".join(line for line in lines if line.startswith(("unset ", "export ")))
        elsewhere = {"AWS_PROFILE": "prod", "APPAUTH_STACK": "prod", "APPAUTH_TOKENS_TABLE": "prod"}
        shell = subprocess.run(  # noqa: S603 (what appauth local printed, in bash)
            ["bash", "-c", f"{script}\nenv -0"],  # noqa: S607 (the user's shell)
            env={"PATH": os.environ.get("PATH", ""), **elsewhere},
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        exported = dict(entry.split("=", 1) for entry in shell.stdout.split("\0") if entry)
        terminal = {k: v for k, v in exported.items() if k.startswith(("AWS_", "APPAUTH_"))}
        assert "AWS_PROFILE" not in terminal
        assert "APPAUTH_STACK" not in terminal
        assert terminal["AWS_ENDPOINT_URL"] == moto[1]

        def appauth(*argv: str) -> Any:
            out = io.StringIO()
            with redirect_stdout(out):
                code = cli.main([*argv, "--json"])
            assert code == 0, (argv, out.getvalue())
            return json.loads(out.getvalue())

        saved = dict(os.environ)
        try:
            for name in [n for n in os.environ if n.startswith(("AWS_", "APPAUTH_"))]:
                del os.environ[name]
            os.environ.update(terminal)

            link = appauth("authorize-url", "--merchant-ref", "shop-terminal")
            assert link["url"].startswith(f"{simulator[1]}/oauth2/appToAppAuth.htm?")
            assert link["redirect_uri"] == callback[1]
            consent = requests.get(link["url"], timeout=30)
            assert consent.status_code == 200, consent.text
            form = re.search(r'<form method="post" action="([^"]+)"', consent.text)
            hidden = r'<input type="hidden" name="([^"]+)" value="([^"]*)">'
            fields = dict(re.findall(hidden, consent.text))
            assert form, consent.text
            assert "state" in fields, consent.text
            assert not any("&" in value for value in fields.values())  # nothing HTML-escaped
            approved = requests.post(
                f"{simulator[1]}{form[1]}",
                data={**fields, "auth_app_id": merchant},
                allow_redirects=False,
                timeout=30,
            )
            assert approved.status_code == 302, approved.text
            assert approved.headers["Location"].startswith(f"{callback[1]}?")
            result = requests.get(approved.headers["Location"], timeout=30)
            assert result.status_code == 200, result.text
            assert merchant in result.text

            listed = appauth("list")
            assert merchant in [item["auth_app_id"] for item in listed["items"]]
            due = appauth("list", "--due-within", "400")
            assert due["source"] == "due_index"
            assert [item["auth_app_id"] for item in due["items"]] == [merchant]
            shown = appauth("show", merchant)
            assert shown["authorization"]["status"] == "granted"
            assert shown["authorization"]["merchant_ref"] == "shop-terminal"
            refreshed = appauth("refresh", merchant)
            assert refreshed["outcomes"] == {"rotated": 1}
            parked = appauth("parked")
            assert parked["parked"]["visible"] == 0
            assert parked["dead_letter"]["url"].startswith(moto[1])
        finally:
            os.environ.clear()
            os.environ.update(saved)
    assert run.code == 0, run.stderr
