"""``appauth local``: the whole service kept running on this machine, for a person with a browser.

The stack from template.yaml on moto, Alipay played by the simulator, and the three functions
in this process (:mod:`appauth_dev.local_service`), plus:

- an HTTP front on ``127.0.0.1`` (:mod:`appauth_dev.http_front`) turning each request into the
  API Gateway (HTTP API, payload 2.0) event of the callback function: the start page, Alipay's
  redirect back (``CALLBACK_URL`` is the front's ``/alipay/callback``, so the simulator's consent
  page sends the browser there) and the notify route (the simulator's ``notify_url``);
- the Lambda Invoke API on another loopback port (``POST /2015-03-31/functions/<name>/
  invocations``, what boto3, the AWS CLI and ``TokenClient`` call), so the token query and the
  refresh function can be invoked from another terminal;
- the refresh function invoked with the schedule's event (``{"due": true}``) every
  ``--refresh-every`` seconds, optionally moving both clocks ``--days-per-run`` days first so
  pairs fall due while you watch;
- printed with the URLs: moto's endpoint and the shell lines (:func:`operator_environment`)
  with which ``appauth list``, ``show``, ``parked``, ``authorize-url``... in another terminal
  act on this stack.

Invocations are serialized (one lock), as if each function had one warm container. Ctrl-C
stops everything. :func:`fronted_service` is the same composition for ``make demo``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shlex
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import unquote

from botocore.exceptions import ClientError

from appauth_dev.http_front import RunningFront, http_front
from appauth_dev.local_lambda import LocalLambdaClient
from appauth_dev.local_service import REGION, LocalService, local_service
from appauth_dev.operator import NAME_SOURCES, local_names
from appauth_dev.simulator.control import SimulatorControl

CALLBACK_PATH = "/alipay/callback"
NOTIFY_PATH = "/alipay/notify"
AUTHORIZE_PATH = "/alipay/authorize"
INVOKE_PATH = re.compile(r"^/2015-03-31/functions/(?P<name>[^/]+)/invocations$")
TOKEN_QUERY_FUNCTION = "appauth-local-token_query"  # noqa: S105 (a function name)
REFRESH_FUNCTION = "appauth-local-refresh"
DEFAULT_REFRESH_EVERY = 30.0


@dataclass
class FrontedService:
    """The local service with its callback function behind an HTTP front (``front``), the
    simulator sending its notifications to the front's notify route, and (``lambda_api``) the
    Lambda Invoke API when asked for. ``lock`` serializes every function invocation."""

    service: LocalService
    front: RunningFront
    control: SimulatorControl
    lock: threading.RLock = field(default_factory=threading.RLock)
    lambda_api: RunningFront | None = None

    @property
    def callback_url(self) -> str:
        return self.front.url + CALLBACK_PATH

    @property
    def notify_url(self) -> str:
        return self.front.url + NOTIFY_PATH

    def invoke(self, function: str, event: Any) -> Any:
        """``function`` (``callback``, ``refresh``, ``token_query``) invoked as Lambda would.
        Never call it while holding up a request the simulator sends to the front."""
        with self.lock:
            return self.service.invoke(function, event)

    def say(self, text: str) -> None:
        """Print a line (not while an invocation has its stdout silenced)."""
        with self.lock:
            print(text, flush=True)


@contextmanager
def fronted_service(*, log_requests: bool = False) -> Iterator[FrontedService]:
    """Start the local service behind an HTTP front. The front starts first (its free port
    becomes the stack's ``CallbackUrl``), then the service; the simulator's ``notify_url`` is
    set to the front's notify route. ``log_requests`` prints one line per request (method,
    path, status: never a query string, which holds codes and states)."""
    holder: list[FrontedService] = []

    def callback(event: dict[str, Any], _context: Any) -> dict[str, Any]:
        if not holder:
            return {"statusCode": 503, "body": "starting"}
        fronted = holder[0]
        answer: dict[str, Any] = fronted.invoke("callback", event)
        if log_requests:
            fronted.say(
                f"  {event['requestContext']['http']['method']} {event['rawPath']} → {answer.get('statusCode')}"
            )
        return answer

    with (
        http_front(callback, function_name="appauth-local-callback") as front,
        local_service(callback_url=front.url + CALLBACK_PATH) as service,
    ):
        control = SimulatorControl(service.simulator.url)
        fronted = FrontedService(service=service, front=front, control=control)
        control.behaviour(notify_url=fronted.notify_url)
        holder.append(fronted)
        yield fronted


# --- the Lambda Invoke API -------------------------------------------------------------------


def lambda_invoke_api(
    client: LocalLambdaClient, lock: threading.RLock
) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    """A handler for :func:`http_front` that answers Lambda's ``Invoke`` REST call as AWS does
    (status, ``X-Amz-Function-Error``, ``X-Amz-Executed-Version``, errors as
    ``x-amzn-ErrorType``), so boto3's Lambda client works against it."""

    def handle(event: dict[str, Any], _context: Any) -> dict[str, Any]:
        match = INVOKE_PATH.match(event.get("rawPath") or "")
        if match is None or event["requestContext"]["http"]["method"] != "POST":
            return _api_error(404, "ResourceNotFoundException", "only Invoke is served here")
        raw = event.get("body") or ""
        payload = base64.b64decode(raw) if event.get("isBase64Encoded") else raw.encode()
        headers = event.get("headers") or {}
        try:
            with lock:
                response = client.invoke(
                    FunctionName=unquote(match["name"]),
                    Payload=payload,
                    InvocationType=headers.get("x-amz-invocation-type", "RequestResponse"),
                )
        except ClientError as error:
            details = error.response.get("Error", {})
            status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 400))
            return _api_error(status, str(details.get("Code")), str(details.get("Message")))
        answer_headers = {
            "Content-Type": "application/json",
            "X-Amz-Executed-Version": response.get("ExecutedVersion", "$LATEST"),
        }
        if response.get("FunctionError"):
            answer_headers["X-Amz-Function-Error"] = response["FunctionError"]
        return {
            "statusCode": response["StatusCode"],
            "headers": answer_headers,
            "body": base64.b64encode(response["Payload"].read()).decode("ascii"),
            "isBase64Encoded": True,
        }

    return handle


def _api_error(status: int, code: str, message: str) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/json", "x-amzn-ErrorType": code},
        "body": json.dumps({"Type": "User", "message": message}),
    }


# --- appauth local ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--refresh-every",
        type=float,
        default=DEFAULT_REFRESH_EVERY,
        metavar="SECONDS",
        help=f"invoke the refresh function's scheduled run this often (default {DEFAULT_REFRESH_EVERY:g}; 0: never)",
    )
    parser.add_argument(
        "--days-per-run",
        type=float,
        default=0.0,
        metavar="DAYS",
        help="before each scheduled run, move the simulator's and the service's clocks this many days forward, so pairs fall due (default 0: real time)",
    )


def run(args: argparse.Namespace) -> int:
    """The ``appauth local`` command."""
    return run_local(refresh_every=args.refresh_every, days_per_run=args.days_per_run)


def run_local(
    *,
    refresh_every: float = DEFAULT_REFRESH_EVERY,
    days_per_run: float = 0.0,
    stop: threading.Event | None = None,
    on_ready: Callable[[FrontedService], None] | None = None,
) -> int:
    """Serve until ``stop`` is set (or Ctrl-C); ``on_ready`` is called once everything listens."""
    stop = stop or threading.Event()
    print("appauth local: starting moto, the Alipay simulator and the functions…", flush=True)
    try:
        with fronted_service(log_requests=True) as fronted:
            lam = LocalLambdaClient.for_service(fronted.service)
            with http_front(
                lambda_invoke_api(lam, fronted.lock), function_name="lambda-api"
            ) as api:
                fronted.lambda_api = api
                worker = threading.Thread(
                    target=_refresh_schedule,
                    args=(fronted, refresh_every, days_per_run, stop),
                    name="appauth-local-refresh",
                    daemon=True,
                )
                if refresh_every > 0:
                    worker.start()
                _print_urls(fronted, refresh_every, days_per_run)
                if on_ready is not None:
                    on_ready(fronted)
                try:
                    while not stop.wait(1.0):
                        pass
                finally:
                    stop.set()
                    if worker.is_alive():
                        worker.join(timeout=60)
    except KeyboardInterrupt:
        stop.set()
        print("\nappauth local: interrupted; everything it started is stopped", file=sys.stderr)
        return 0
    print("appauth local: stopped", flush=True)
    return 0


def _refresh_schedule(
    fronted: FrontedService, every: float, days_per_run: float, stop: threading.Event
) -> None:
    runs = 0
    while not stop.wait(every):
        runs += 1
        try:
            if days_per_run:
                # Outside the lock: the simulator may send due notification retries meanwhile.
                fronted.service.advance_clock(timedelta(days=days_per_run))
            report = fronted.invoke("refresh", {"due": True})
        except Exception as error:  # keep serving; say what happened
            fronted.say(f"  refresh run {runs}: failed: {type(error).__name__}: {error}")
            continue
        counts = {
            name: value
            for name, value in report.items()
            if isinstance(value, int) and value and name not in ("events_failed",)
        }
        if counts or days_per_run:
            clock = fronted.service.clock.now().strftime("%Y-%m-%d %H:%M UTC")
            summary = " ".join(f"{name}={value}" for name, value in counts.items()) or "nothing due"
            fronted.say(f"  refresh run {runs} (service clock {clock}): {summary}")


def operator_environment(fronted: FrontedService) -> dict[str, str]:
    """What another terminal needs for ``appauth list``, ``show``, ``parked``, ``refresh``,
    ``authorize-url``... to act on this stack: boto3 pointed at moto (and Lambda at the local
    Invoke API), moto's fake credentials, and the stack's names as ``APPAUTH_*`` variables."""
    if fronted.lambda_api is None:
        raise RuntimeError("the Lambda Invoke API is not running")
    environment = {
        "AWS_ENDPOINT_URL": os.environ["AWS_ENDPOINT_URL"],  # local_service's moto server
        "AWS_ENDPOINT_URL_LAMBDA": fronted.lambda_api.url,
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",  # moto's fake credentials
        "AWS_DEFAULT_REGION": REGION,
    }
    names = {
        **local_names(fronted.service),
        "redirect_uri": fronted.callback_url,
        "start_page_url": fronted.front.url + AUTHORIZE_PATH,
    }
    for source in NAME_SOURCES:
        if source.env and source.key in names:
            environment[source.env] = names[source.key]
    return environment


def _print_urls(fronted: FrontedService, refresh_every: float, days_per_run: float) -> None:
    front, simulator = fronted.front.url, fronted.service.simulator.url
    api = fronted.lambda_api.url if fronted.lambda_api else "?"
    environment = operator_environment(fronted)
    # A shell's own target would win over (or mix with) this stack's names.
    unset = ["AWS_PROFILE", "APPAUTH_STACK"] + [
        source.env for source in NAME_SOURCES if source.env and source.env not in environment
    ]
    stack = fronted.service.stack
    schedule = (
        f'{{"due": true}} every {refresh_every:g} s'
        + (f", each run {days_per_run:g} days later" if days_per_run else "")
        if refresh_every > 0
        else "not scheduled (--refresh-every 0)"
    )
    lines = [
        "appauth local: the stack from template.yaml on moto, Alipay played by the simulator",
        "",
        "Open in a browser:",
        f"  start page (single)   {front}{AUTHORIZE_PATH}?merchant_ref=shop-1",
        f"  start page (batch)    {front}{AUTHORIZE_PATH}?batch=1&application_type=TINYAPP,WEBAPP",
        "",
        f"  callback              {fronted.callback_url}   (CALLBACK_URL: Alipay's consent page redirects here)",
        f"  notifications         {fronted.notify_url}   (the simulator's notify_url)",
        f"  Alipay simulator      {simulator}   (consent pages, control API /simulator/...)",
        f"  Lambda Invoke API     {api}   (functions appauth-local-callback, {REFRESH_FUNCTION}, {TOKEN_QUERY_FUNCTION})",
        f"  AWS (moto)            {environment['AWS_ENDPOINT_URL']}   (DynamoDB, KMS, SQS, SSM, EventBridge)",
        f"  refresh function      {schedule}",
        f"  tables                {stack.tokens_table}, {stack.idempotency_table}",
        "",
        "The operator commands from another terminal: paste these lines, then appauth list,",
        "appauth show <id>, appauth parked, appauth refresh <id>, appauth authorize-url --qr -, ...",
        "",
        f"  unset {' '.join(unset)}",
        *(f"  export {name}={shlex.quote(value)}" for name, value in environment.items()),
        "",
        "Or by hand:",
        f'  curl -s {api}/2015-03-31/functions/{TOKEN_QUERY_FUNCTION}/invocations -d \'{{"action": "list"}}\'',
        f'  curl -s {api}/2015-03-31/functions/{TOKEN_QUERY_FUNCTION}/invocations -d \'{{"action": "get_token", "auth_app_id": "<id>"}}\'',
        f'  curl -s {api}/2015-03-31/functions/{REFRESH_FUNCTION}/invocations -d \'{{"auth_app_ids": ["<id>"]}}\'',
        f'  curl -s {simulator}/simulator/revoke -d \'{{"auth_app_id": "<id>", "notify": true}}\'   (the merchant cancels; Alipay notifies)',
        "  boto3 / TokenClient: the AWS_* lines above",
        "",
        "Ctrl-C stops everything.",
    ]
    fronted.say("\n".join(lines))
