"""HTTP plumbing: routing, body limits, faults, the control API, and the background server.

Logs name the route and status only: URLs and bodies carry tokens, codes and signatures.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from appauth.alipay.errors import SignatureError
from appauth.alipay.signing import parse_form

from . import consent, corruption, gateway, v3
from .config import SimulatorConfig
from .faults import FaultInjector, Faults, Stats
from .reply import JSON_TYPE, Reply
from .state import SimulatorState, beijing

logger = logging.getLogger("appauth_dev.simulator")

MAX_BODY_BYTES = 64 * 1024
GATEWAY_PATH = "/gateway.do"
HTML_TYPE = "text/html;charset=utf-8"


class SimulatorServer(ThreadingHTTPServer):
    daemon_threads = True
    # Tests restart quickly on fixed ports; never wait for TIME_WAIT.
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], config: SimulatorConfig) -> None:
        self.config = config
        self.state = SimulatorState(grace_seconds=config.grace_seconds, seed=config.seed)
        self.faults = FaultInjector(config.seed)
        self.stats = Stats()
        super().__init__(address, Handler)

    def reset(self) -> None:
        self.state.reset()
        self.faults.reset()
        self.stats.reset()


def _html_reply(status: int, html: str) -> Reply:
    return Reply(
        status, html.encode("utf-8"), {"Content-Type": HTML_TYPE, "Cache-Control": "no-store"}
    )


def _json_reply(status: int, value: Any) -> Reply:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return Reply(status, text.encode("utf-8"), {"Content-Type": JSON_TYPE})


class _BadRequestError(Exception):
    pass


class Handler(BaseHTTPRequestHandler):
    server: SimulatorServer
    protocol_version = "HTTP/1.1"
    server_version = "AlipaySimulator/1.0"
    sys_version = ""
    # A client that stops sending must not hold a thread forever.
    timeout = 30

    # --- logging (never the request line: it carries tokens and signatures) ----------------

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        logger.info("%s %s -> %s", self.command, urlsplit(self.path).path[:100], code)

    def log_error(self, format: str, *args: Any) -> None:
        logger.info("rejected a malformed request")

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("http.server message suppressed")

    # --- verbs -----------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        try:
            body = self._read_body()
            if body is None:
                return
            self._route(body)
        except Exception as exc:
            logger.warning(
                "internal error handling %s: %s", urlsplit(self.path).path[:100], type(exc).__name__
            )
            self.close_connection = True
            with contextlib.suppress(OSError):
                self._send(
                    Reply(
                        500,
                        b'{"code":"internal-error","message":"simulator bug"}',
                        {"Content-Type": JSON_TYPE},
                    )
                )

    def _read_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            self._send(_json_reply(411, {"error": "send a Content-Length, not chunked encoding"}))
            return None
        raw = self.headers.get("Content-Length", "0") or "0"
        if not raw.strip().isdigit():
            self.close_connection = True
            self._send(_json_reply(400, {"error": "bad Content-Length"}))
            return None
        length = int(raw)
        if length > MAX_BODY_BYTES:
            # The body stays unread, so the connection cannot be reused.
            self.close_connection = True
            self._send(
                _json_reply(
                    413,
                    {"code": "request-too-large", "message": f"body over {MAX_BODY_BYTES} bytes"},
                )
            )
            return None
        return self.rfile.read(length) if length else b""

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    def _route(self, body: bytes) -> None:
        path = urlsplit(self.path).path
        srv = self.server
        if path == GATEWAY_PATH and self.command in ("GET", "POST"):
            self._gateway(body)
        elif path.startswith("/v3/"):
            self._v3(path, body)
        elif path in (consent.SINGLE_PATH, consent.BATCH_PATH) and self.command == "GET":
            self._consent_page(batch=path == consent.BATCH_PATH)
        elif path == consent.APPROVE_PATH and self.command == "POST":
            self._approve(body)
        elif path.startswith("/simulator/"):
            self._send(self._control(path, body))
        elif path == "/" and self.command == "GET":
            self._send(
                _json_reply(
                    200,
                    {
                        "simulator": "alipay",
                        "gateway": GATEWAY_PATH,
                        "now": beijing(srv.state.clock.now()),
                    },
                )
            )
        else:
            self._send(_json_reply(404, {"error": "not found"}))

    # --- API calls, with faults ----------------------------------------------------------------

    def _api(
        self,
        label: str,
        process: Callable[[bool], Reply],
        unavailable: Callable[[], Reply],
        limited: Callable[[], Reply],
    ) -> None:
        srv = self.server
        decision = srv.faults.decide()
        if decision.latency:
            time.sleep(decision.latency)
        if decision.rate_limited:
            reply = limited()
        elif decision.error:
            reply = unavailable()
        elif decision.timeout:
            if decision.timeout_after_processing:
                process(decision.escape_slashes)
            srv.stats.record(label, "timeout")
            time.sleep(decision.timeout_seconds)
            # No response at all: the client sees the connection drop.
            self.close_connection = True
            return
        elif decision.response_fault is not None:
            if decision.response_fault_after_processing:
                reply = process(decision.escape_slashes)
            else:
                with srv.state.rolled_back():
                    reply = process(decision.escape_slashes)
            reply = corruption.corrupt(reply, decision.response_fault, v3=label.startswith("v3 "))
            srv.stats.record(label, reply.outcome)
            self.close_connection = True
            # A client that rejects an oversized answer hangs up before reading all of it.
            with contextlib.suppress(ConnectionError):
                self._send(reply)
            return
        else:
            reply = process(decision.escape_slashes)
        srv.stats.record(label, reply.outcome)
        self._send(reply)

    def _gateway(self, body: bytes) -> None:
        srv = self.server
        parts = urlsplit(self.path)
        try:
            params = gateway.parse_params(parts.query, body, self.headers.get("Content-Type"))
        except gateway.GatewayError as rejection:
            srv.stats.record("unknown", "rejected")
            self._send(
                Reply(
                    200,
                    gateway.signed_body(srv.config, "error_response", rejection.node()),
                    {"Content-Type": JSON_TYPE},
                    outcome="rejected",
                )
            )
            return
        method = params.get("method", "")
        label = method if method in gateway.METHODS else "unknown"
        self._api(
            label,
            lambda escape: gateway.handle(srv.config, srv.state, params, escape_slashes=escape),
            gateway.unavailable,
            lambda: gateway.rate_limited(srv.config),
        )

    def _v3(self, path: str, body: bytes) -> None:
        srv = self.server
        headers = {name.lower(): value for name, value in self.headers.items()}
        routing = v3.route_error(path, self.command)
        if routing is not None:
            self._send(v3.error_reply(srv.config, routing))
            return
        self._api(
            v3.LABELS[path],
            lambda _escape: v3.handle(
                srv.config,
                state=srv.state,
                http_method=self.command,
                raw_target=self.path,
                body=body,
                headers=headers,
            ),
            v3.unavailable,
            lambda: v3.rate_limited(srv.config),
        )

    # --- consent pages ----------------------------------------------------------------------------

    def _consent_page(self, *, batch: bool) -> None:
        srv = self.server
        self._consent(
            lambda: _html_reply(
                200,
                consent.page(
                    consent.validate(srv.config, parse_form(urlsplit(self.path).query), batch=batch)
                ),
            )
        )

    def _approve(self, body: bytes) -> None:
        srv = self.server
        self._consent(
            lambda: Reply(
                302,
                b"",
                {
                    "Location": consent.approve(srv.config, srv.state, parse_form(body)),
                    "Cache-Control": "no-store",
                },
            )
        )

    def _consent(self, render: Callable[[], Reply]) -> None:
        """Answer a consent request; bad input gets the bilingual error page, never a crash."""
        try:
            reply = render()
        except SignatureError:  # parse_form: a repeated field or bytes that are not UTF-8
            reply = _html_reply(
                400, consent.error_page("参数重复或编码错误 / repeated or badly encoded parameters")
            )
        except consent.ConsentError as error:
            reply = _html_reply(400, consent.error_page(str(error)))
        self._send(reply)

    # --- control API ------------------------------------------------------------------------------

    def _control(self, path: str, body: bytes) -> Reply:
        srv = self.server
        name = path.removeprefix("/simulator/")
        if self.command == "GET":
            reader = _READERS.get(name)
            return (
                _json_reply(200, reader(srv))
                if reader
                else _json_reply(404, {"error": "not found"})
            )
        if self.command != "POST":
            return _json_reply(405, {"error": "use POST"})
        try:
            data = _json_body(body)
            return _CONTROL.get(name, _not_found)(srv, data)
        except _BadRequestError as error:
            return _json_reply(400, {"error": str(error)})


def _json_body(body: bytes) -> dict[str, Any]:
    if not body.strip():
        return {}
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise _BadRequestError("the body must be a JSON object") from None
    if not isinstance(value, dict):
        raise _BadRequestError("the body must be a JSON object")
    return value


def _optional_str(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is not None and (not isinstance(value, str) or not value.isdigit()):
        raise _BadRequestError(f"'{name}' must be a string of digits")
    return value


def _clock(srv: SimulatorServer) -> dict[str, Any]:
    now = srv.state.clock.now()
    return {"now": now, "beijing": beijing(now)}


def _not_found(srv: SimulatorServer, data: dict[str, Any]) -> Reply:
    return _json_reply(404, {"error": "not found"})


def _codes(srv: SimulatorServer, data: dict[str, Any]) -> Reply:
    batch_size = data.get("batch_size")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)):
        raise _BadRequestError("'batch_size' must be an integer")
    try:
        minted = srv.state.mint_code(
            _optional_str(data, "auth_app_id"), _optional_str(data, "user_id"), batch_size
        )
    except ValueError as error:
        raise _BadRequestError(str(error)) from None
    return _json_reply(
        200,
        {
            "app_auth_code": minted.app_auth_code,
            "auth_app_ids": minted.auth_app_ids,
            "user_id": minted.user_id,
            "batch": minted.batch,
            "expires_in": minted.expires_in,
        },
    )


def _revoke(srv: SimulatorServer, data: dict[str, Any]) -> Reply:
    auth_app_id = _optional_str(data, "auth_app_id")
    if auth_app_id is None:
        raise _BadRequestError("'auth_app_id' is required")
    try:
        count = srv.state.revoke(auth_app_id)
    except KeyError:
        return _json_reply(404, {"error": "no such merchant app"})
    return _json_reply(200, {"auth_app_id": auth_app_id, "revoked_pairs": count})


def _advance_clock(srv: SimulatorServer, data: dict[str, Any]) -> Reply:
    seconds = data.get("advance_seconds")
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not 0 <= seconds <= 10 * 366 * 86400
    ):
        raise _BadRequestError("'advance_seconds' must be a number of seconds, 0 to 10 years")
    srv.state.clock.advance(seconds)
    return _json_reply(200, _clock(srv))


def _set_faults(srv: SimulatorServer, data: dict[str, Any]) -> Reply:
    changes = dict(data)
    seed = changes.pop("seed", None)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise _BadRequestError("'seed' must be an integer")
    try:
        faults: Faults = srv.faults.update(changes)
    except ValueError as error:
        raise _BadRequestError(str(error)) from None
    if seed is not None:
        srv.faults.reseed(seed)
    return _json_reply(200, faults.as_dict())


def _reset(srv: SimulatorServer, data: dict[str, Any]) -> Reply:
    srv.reset()
    return _json_reply(200, {"reset": True})


_READERS: dict[str, Callable[[SimulatorServer], Any]] = {
    "stats": lambda srv: {"requests": srv.stats.snapshot()},
    "faults": lambda srv: srv.faults.faults.as_dict(),
    "clock": _clock,
}
_CONTROL: dict[str, Callable[[SimulatorServer, dict[str, Any]], Reply]] = {
    "codes": _codes,
    "revoke": _revoke,
    "clock": _advance_clock,
    "faults": _set_faults,
    "reset": _reset,
}


class RunningSimulator:
    """A simulator serving in a background thread. Also a context manager."""

    def __init__(self, server: SimulatorServer) -> None:
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="alipay-simulator", daemon=True
        )
        self._thread.start()

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def gateway_url(self) -> str:
        return self.url + GATEWAY_PATH

    @property
    def config(self) -> SimulatorConfig:
        return self._server.config

    @property
    def state(self) -> SimulatorState:
        return self._server.state

    @property
    def faults(self) -> FaultInjector:
        return self._server.faults

    @property
    def stats(self) -> Stats:
        return self._server.stats

    def reset(self) -> None:
        """Clear state, faults, statistics and the clock offset (same as POST /simulator/reset)."""
        self._server.reset()

    def shutdown(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> RunningSimulator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.shutdown()


def start_simulator(
    config: SimulatorConfig, host: str = "127.0.0.1", port: int = 0
) -> RunningSimulator:
    """Listen on ``host:port`` (0 picks a free port) and serve in a daemon thread."""
    return RunningSimulator(SimulatorServer((host, port), config))
