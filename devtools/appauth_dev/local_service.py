"""The whole service on one machine: the template's stack on moto's server, Alipay played by the
simulator, and the three functions invoked in-process exactly as Lambda would (same handlers,
same environment variables as the template sets). Used by ``make demo``; no AWS account.
"""

from __future__ import annotations

import importlib
import io
import json
import logging
import os
import secrets
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from types import ModuleType
from typing import Any, Self
from urllib.parse import parse_qsl, urlencode, urlsplit

import boto3
import requests

from appauth.runtime import reset_runtime
from appauth_dev.keygen import generate_private_key, private_pkcs8_pem, public_pem
from appauth_dev.simulator.config import SimulatorConfig
from appauth_dev.simulator.control import SimulatorControl
from appauth_dev.simulator.server import RunningSimulator, start_simulator
from appauth_dev.stack import (
    DEFAULT_TEMPLATE,
    LocalStack,
    create_local_stack,
    put_secrets,
    start_moto_server,
)

REPO = DEFAULT_TEMPLATE.parent
FUNCTIONS = {"callback": "callback_app", "refresh": "refresh_app", "token_query": "token_query_app"}
TEMPLATE_FUNCTIONS = {
    "callback": "CallbackFunction",
    "refresh": "RefreshFunction",
    "token_query": "TokenQueryFunction",
}
LOCAL_APP_ID = "2021000199990001"
SSM_PREFIX = "/appauth/local"
REGION = "us-east-1"
SERVICE_LOGGER = "appauth"  # POWERTOOLS_SERVICE_NAME in template.yaml: the functions' Logger
# The layer modules that read the wall clock: each default ``clock`` there is
# ``lambda: datetime.now(UTC)``, which looks ``datetime`` up in its module when it runs.
CLOCK_MODULES = ("appauth.runtime", "appauth.store", "appauth.lookup", "appauth.alipay.client")


@dataclass
class FakeContext:
    """The attributes of Lambda's context object that Powertools reads (logger, idempotency)."""

    function_name: str = "appauth-local"
    memory_limit_in_mb: int = 256
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    remaining_ms: int = 30_000
    function_version: str = "$LATEST"

    @property
    def invoked_function_arn(self) -> str:
        return f"arn:aws:lambda:{REGION}:123456789012:function:{self.function_name}"

    @property
    def log_group_name(self) -> str:
        return f"/aws/lambda/{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def http_event(
    method: str, path: str, query: dict[str, str] | None = None, body: str | None = None
) -> dict[str, Any]:
    """An API Gateway HTTP API (payload 2.0) event, as events/*.json holds them."""
    sample = "callback_start_page.json" if method == "GET" else "callback_notify_granted.json"
    event: dict[str, Any] = json.loads((REPO / "events" / sample).read_text(encoding="utf-8"))
    event["rawPath"] = path
    event["routeKey"] = f"{method} {path}"
    event["requestContext"]["http"].update(method=method, path=path)
    event["requestContext"]["requestId"] = str(uuid.uuid4())
    event["rawQueryString"] = urlencode(query or {})
    event["queryStringParameters"] = query or None
    event["headers"]["accept"] = "application/json"
    if body is not None:
        event["body"] = body
    return event


class ServiceClock:
    """The service's wall clock, moved forward like the simulator's instead of sleeping.

    While :meth:`installed`, every wall-clock read of the layer (the refresh run's clock, the
    store's, the token query's, the Alipay client's lifetimes) is ``offset`` ahead of real time;
    the handlers run unchanged. Offset zero is real time.
    """

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    @contextmanager
    def installed(self) -> Iterator[None]:
        clock = self

        class ShiftedDatetime(datetime):
            @classmethod
            def now(cls, tz: tzinfo | None = None) -> Self:
                return cls.fromtimestamp(time.time() + clock.offset.total_seconds(), tz)

        modules = [importlib.import_module(name) for name in CLOCK_MODULES]
        saved = [(module, vars(module)["datetime"]) for module in modules]
        for module in modules:
            vars(module)["datetime"] = ShiftedDatetime
        try:
            yield
        finally:
            for module, original in saved:
                vars(module)["datetime"] = original


@dataclass
class LocalService:
    stack: LocalStack
    simulator: RunningSimulator
    modules: dict[str, ModuleType]

    quiet: bool = True
    clock: ServiceClock = field(default_factory=ServiceClock)

    def advance_clock(self, delta: timedelta) -> None:
        """Move the simulator's clock and the service's together (``delta`` ahead)."""
        SimulatorControl(self.simulator.url).advance_clock(delta.total_seconds())
        self.clock.offset += delta

    def invoke(self, function: str, event: Any) -> Any:
        module = self.modules[function]
        context = FakeContext(
            function_name=f"appauth-local-{function}", remaining_ms=self.timeout_ms(function)
        )
        if not self.quiet:
            return module.lambda_handler(event, context)
        # Keep the functions' JSON logs and EMF metrics (stdout in Lambda) out of the demo's story
        # (the log handlers hold the real stdout, so silence them too).
        logging.disable(logging.CRITICAL)
        try:
            with redirect_stdout(io.StringIO()):
                return module.lambda_handler(event, context)
        finally:
            logging.disable(logging.NOTSET)

    def timeout_ms(self, function: str) -> int:
        """The function's Timeout in template.yaml: what it has left when invoked."""
        logical_id = TEMPLATE_FUNCTIONS[function]
        properties = self.stack.template["Resources"][logical_id]["Properties"]
        return int(properties["Timeout"]) * 1000

    def http(
        self, method: str, path: str, query: dict[str, str] | None = None, body: str | None = None
    ) -> tuple[int, Any]:
        response = self.invoke("callback", http_event(method, path, query, body))
        text = response.get("body") or ""
        try:
            return response["statusCode"], json.loads(text)
        except ValueError:
            return response["statusCode"], text

    def approve(self, authorization_url: str, *, auth_app_id: str | None = None) -> dict[str, str]:
        """What a merchant does on Alipay's consent page; returns the redirect's query."""
        parts = urlsplit(authorization_url)
        fields = dict(parse_qsl(parts.query))
        if parts.path.endswith("appToAppBatchAuth.htm"):
            fields["mode"] = "batch"
        if auth_app_id:
            fields["auth_app_id"] = auth_app_id
        response = requests.post(
            f"{self.simulator.url}/oauth2/approve", data=fields, allow_redirects=False, timeout=10
        )
        if response.status_code != 302:
            raise RuntimeError(f"the simulator's consent page answered {response.status_code}")
        return dict(parse_qsl(urlsplit(response.headers["Location"]).query))


def _load_functions() -> dict[str, ModuleType]:
    """Each function imported afresh, as a cold start in this environment would: Powertools reads
    its settings and the handlers build their lazy collaborators (clients bound to this moto
    server) on import. :func:`_unload_functions` puts back what was there before."""
    modules: dict[str, ModuleType] = {}
    for folder, module in FUNCTIONS.items():
        # Each function's folder is its code root in Lambda; put them where Lambda would.
        path = str(REPO / "functions" / folder)
        if path not in sys.path:
            sys.path.insert(0, path)
        sys.modules.pop(module, None)
        modules[folder] = importlib.import_module(module)
    return modules


def _unload_functions(previous: dict[str, ModuleType | None]) -> None:
    """Whoever imported the handlers before (a test) gets its own modules back, not ones bound
    to a server that is gone. (The process-wide ``appauth`` logger keeps the level the first
    Powertools Logger gave it, the template's; quiet mode silences invocations instead.)"""
    for name, module in previous.items():
        if module is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = module


def _logger_state(name: str) -> dict[str, Any]:
    state = dict(vars(logging.getLogger(name)))
    state["handlers"] = list(state["handlers"])
    state["filters"] = list(state["filters"])
    return state


def _restore_logger(name: str, state: dict[str, Any]) -> None:
    """The functions' Powertools Logger gives the service's logger a handler bound to the
    stdout of the moment (a test's capture, closed later), a level and its own markers: put
    back what was there, so the next cold start sets it up afresh."""
    logger = logging.getLogger(name)
    vars(logger).clear()
    vars(logger).update(state)
    logger.setLevel(state["level"])  # also clears the cached effective levels


@contextmanager
def local_service(
    *, app_id: str = LOCAL_APP_ID, quiet: bool = True, callback_url: str | None = None
) -> Iterator[LocalService]:
    """Start everything; ``quiet`` keeps the functions' JSON logs and EMF metrics off stdout.
    ``callback_url`` is the template's ``CallbackUrl`` (the redirect URL the start page gives
    Alipay; e.g. an HTTP front's ``/alipay/callback``); by default derived from the request."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's per-request access log
    server, endpoint = start_moto_server()
    saved = dict(os.environ)
    previous_modules = {name: sys.modules.get(name) for name in FUNCTIONS.values()}
    previous_logger = _logger_state(SERVICE_LOGGER)
    simulator: RunningSimulator | None = None
    try:
        # moto keeps its state per process, whichever server serves it: start from nothing, so
        # a second local service in this process (a test after the demo) can build the stack.
        requests.post(f"{endpoint}/moto-api/reset", timeout=10).raise_for_status()
        os.environ.update(
            AWS_ENDPOINT_URL=endpoint,
            AWS_DEFAULT_REGION=REGION,
            AWS_REGION=REGION,
            AWS_ACCESS_KEY_ID="local",
            AWS_SECRET_ACCESS_KEY="local",  # noqa: S106 (moto's fake credentials)
            POWERTOOLS_TRACE_DISABLED="true",
        )
        os.environ.pop("AWS_PROFILE", None)
        stack = create_local_stack(region=REGION, endpoint_url=endpoint)
        app_key, alipay_key = generate_private_key(), generate_private_key()
        put_secrets(
            boto3.client("ssm", region_name=REGION, endpoint_url=endpoint),
            SSM_PREFIX,
            app_private_key=private_pkcs8_pem(app_key).decode(),
            alipay_public_key=public_pem(alipay_key).decode(),
            state_secret=secrets.token_urlsafe(48),
        )
        simulator = start_simulator(
            SimulatorConfig.from_material(
                app_id, public_pem(app_key), private_pkcs8_pem(alipay_key)
            )
        )
        os.environ.update(
            stack.environment(
                SSM_PREFIX,
                app_id,
                AlipayGatewayUrl=simulator.gateway_url,
                AlipayV3Url=simulator.url,
                AlipayAuthUrl=simulator.url,
                **({"CallbackUrl": callback_url} if callback_url else {}),
            )
        )
        reset_runtime()
        clock = ServiceClock()
        with clock.installed():
            yield LocalService(
                stack=stack,
                simulator=simulator,
                modules=_load_functions(),
                quiet=quiet,
                clock=clock,
            )
    finally:
        reset_runtime()
        _unload_functions(previous_modules)
        _restore_logger(SERVICE_LOGGER, previous_logger)
        if simulator is not None:
            simulator.shutdown()
        server.stop()
        os.environ.clear()
        os.environ.update(saved)
