"""HTTP plumbing: routing, body limits, faults, the control API, and the background server.

Logs name the route and status only: URLs and bodies carry tokens, codes and signatures.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from appauth.alipay.errors import SignatureError
from appauth.alipay.signing import parse_form
from appauth_dev.loopback import BackgroundServer

from . import consent, corruption, gateway, v3
from . import notify as notifications
from .config import SimulatorConfig
from .faults import (
    BEFORE_PROCESSING_FAULTS,
    CallInfo,
    FaultInjector,
    Faults,
    Plan,
    Release,
    Stats,
)
from .reply import JSON_TYPE, Reply
from .state import CallNote, SimulatorState, beijing

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
        self.faults = FaultInjector(config.seed, clock=self.state.clock.now)
        self.stats = Stats()
        self.outbox = notifications.Outbox(config, self.state)
        super().__init__(address, Handler)

    def reset(self) -> None:
        # Faults first: held requests and injected timeouts end before the state is cleared.
        self.faults.reset()
        self.outbox.reset()
        self.state.reset()
        self.stats.reset()

    def revoke(self, auth_app_id: str, *, notify: bool = False) -> dict[str, Any]:
        """The merchant cancels (KeyError for an unknown app), silently or with a notification."""
        count = self.state.revoke(auth_app_id)
        notification = self.outbox.post_cancellation(auth_app_id) if notify else None
        return {"auth_app_id": auth_app_id, "revoked_pairs": count, "notification": notification}

    def notify_grant(
        self, app_auth_code: str, out_biz_no: str | None = None
    ) -> list[dict[str, Any]]:
        """Send the grant notification(s) of a code whose pairs are issued, whatever the knob."""
        return self.outbox.post_grant(app_auth_code, out_biz_no=out_biz_no)


def _html_reply(status: int, html: str) -> Reply:
    return Reply(
        status, html.encode("utf-8"), {"Content-Type": HTML_TYPE, "Cache-Control": "no-store"}
    )


def _json_reply(status: int, value: Any) -> Reply:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return Reply(status, text.encode("utf-8"), {"Content-Type": JSON_TYPE})


class _BadRequestError(Exception):
    pass


@dataclass
class _Work:
    """One API call's processing: run at most once, noting the fault that will hit its answer."""

    state: SimulatorState
    process: Callable[[], Reply]
    reply: Reply | None = None
    note: CallNote | None = None
    held: bool = False

    def run(self, fault: str | None) -> Reply:
        if self.reply is None:
            with self.state.noting(fault) as note:
                self.reply = self.process()
            self.note = note
        return self.reply


class Handler(BaseHTTPRequestHandler):
    server: SimulatorServer
    protocol_version = "HTTP/1.1"
    server_version = "AlipaySimulator/1.0"
    sys_version = ""
    # A client that stops sending must not hold a thread forever.
    timeout = 30
    # Headers and body go out in two writes: without TCP_NODELAY every keep-alive answer
    # waits for the client's delayed ACK (about 40 ms).
    disable_nagle_algorithm = True

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
            self._send(self._control(path, urlsplit(self.path).query, body))
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
        call: CallInfo,
        process: Callable[[bool], Reply],
        unavailable: Callable[[], Reply],
        limited: Callable[[], Reply],
    ) -> None:
        """Answer one API call, through whatever fault the rules or the random faults pick.

        ``process`` computes the answer and changes the state. A fault "after processing" lets
        it run first (the answer is then lost or damaged); before processing it never runs, or
        runs rolled back (a response fault still needs an answer to damage).
        """
        srv = self.server
        apps = srv.state.resolve_apps(
            code=call.code, refresh_token=call.refresh_token, app_auth_token=call.app_auth_token
        )
        plan = srv.faults.plan(call, apps)
        if plan.latency:
            time.sleep(plan.latency)
        work = _Work(srv.state, lambda: process(plan.escape_slashes))
        fault, after = plan.fault, plan.after_processing
        if fault == "hold":
            release = self._hold(plan, work, call, apps)
            if release.aborted:
                # Reset or shutdown: drop the call; nothing more happens to it.
                self.close_connection = True
                return
            # A released call goes on into its "then" fault; one held before processing is
            # processed now (that is the reordering), so timeouts and response faults after a
            # hold always hit a processed call.
            fault, after = release.then, True
        if fault is None:
            reply = work.run("hold" if work.held else None)
        elif fault in BEFORE_PROCESSING_FAULTS:
            if work.reply is None:
                srv.state.record_unprocessed(call.refresh_token, fault)
            answers = {"error": unavailable, "rate_limited": limited}
            reply = answers.get(fault, corruption.proxy_503)()
        elif fault == "timeout":
            self._time_out(plan, work, call, label, after=after)
            return
        else:
            # A response fault: the answer is damaged on its way to the client.
            if work.reply is None and not after:
                with srv.state.rolled_back():
                    work.run(None)
                srv.state.record_unprocessed(call.refresh_token, fault)
            reply = corruption.corrupt(work.run(fault), fault, v3=label.startswith("v3 "))
            self.close_connection = True
        srv.stats.record(label, reply.outcome)
        # A client that rejects an oversized answer hangs up before reading all of it.
        with contextlib.suppress(ConnectionError):
            self._send(reply)

    def _hold(self, plan: Plan, work: _Work, call: CallInfo, apps: tuple[str, ...]) -> Release:
        """Block this thread until a test releases the call (processing it first if asked)."""
        srv = self.server
        if plan.after_processing:
            work.run("hold")
        release = srv.faults.hold(plan.rule_id, call.method, apps[0] if apps else None)
        work.held = True
        if work.note is not None and release.then is not None:
            srv.state.amend(work.note, release.then)
        return release

    def _time_out(
        self, plan: Plan, work: _Work, call: CallInfo, label: str, *, after: bool
    ) -> None:
        srv = self.server
        if work.reply is None:
            if after:
                work.run("timeout")
            else:
                srv.state.record_unprocessed(call.refresh_token, "timeout")
        srv.stats.record(label, "timeout")
        if not work.held:
            srv.faults.sleep(plan.timeout_seconds)
        # No response at all: the client sees the connection drop.
        self.close_connection = True

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
            gateway.call_info(srv.config, params),
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
            v3.call_info(path, self.path, body, headers),
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

        def approved() -> Reply:
            notify = bool(
                srv.outbox.settings.grant_notifications and srv.state.behaviour.notify_url
            )
            approval = consent.approve(srv.config, srv.state, parse_form(body), issue=notify)
            # Sent before the redirect goes out (hold it to see the other order).
            if notify:
                srv.notify_grant(approval.app_auth_code, approval.out_biz_no)
            return Reply(302, b"", {"Location": approval.location, "Cache-Control": "no-store"})

        self._consent(approved)

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

    def _control(self, path: str, query: str, body: bytes) -> Reply:
        srv = self.server
        name = path.removeprefix("/simulator/")
        try:
            if name == "notifications" or name.startswith("notifications/"):
                return _notifications(srv, self.command, name, body)
            if self.command == "GET":
                if name.startswith("merchants/"):
                    return _merchant(srv, name.removeprefix("merchants/"))
                if name == "holds":
                    return _holds(srv, query)
                reader = _READERS.get(name)
                return (
                    _json_reply(200, reader(srv))
                    if reader
                    else _json_reply(404, {"error": "not found"})
                )
            if self.command == "DELETE" and name == "faults/rules":
                return _json_reply(200, {"cleared": srv.faults.clear_rules()})
            if self.command != "POST":
                return _json_reply(405, {"error": "use POST"})
            data = _json_body(body)
            hold_id = name.removeprefix("holds/").removesuffix("/release")
            if name == f"holds/{hold_id}/release":
                return _release(srv, hold_id, data)
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


MAX_OUT_BIZ_NO = 64


def _codes(srv: SimulatorServer, data: dict[str, Any]) -> Reply:
    batch_size = data.get("batch_size")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)):
        raise _BadRequestError("'batch_size' must be an integer")
    notify = data.get("notify", False)
    if not isinstance(notify, bool):
        raise _BadRequestError("'notify' must be true or false")
    out_biz_no = data.get("out_biz_no")
    if out_biz_no is not None:
        if not notify:
            raise _BadRequestError("'out_biz_no' goes with 'notify': true")
        if (
            not isinstance(out_biz_no, str)
            or not 1 <= len(out_biz_no) <= MAX_OUT_BIZ_NO
            or not out_biz_no.isprintable()
        ):
            raise _BadRequestError(
                f"'out_biz_no' must be 1 to {MAX_OUT_BIZ_NO} printable characters"
            )
    try:
        minted = srv.state.mint_code(
            _optional_str(data, "auth_app_id"),
            _optional_str(data, "user_id"),
            batch_size,
            issue=notify,
        )
    except ValueError as error:
        raise _BadRequestError(str(error)) from None
    answer: dict[str, Any] = {
        "app_auth_code": minted.app_auth_code,
        "auth_app_ids": minted.auth_app_ids,
        "user_id": minted.user_id,
        "batch": minted.batch,
        "expires_in": minted.expires_in,
    }
    if notify:
        answer["notifications"] = srv.notify_grant(minted.app_auth_code, out_biz_no)
    return _json_reply(200, answer)


def _revoke(srv: SimulatorServer, data: dict[str, Any]) -> Reply:
    auth_app_id = _optional_str(data, "auth_app_id")
    if auth_app_id is None:
        raise _BadRequestError("'auth_app_id' is required")
    notify = data.get("notify", False)
    if not isinstance(notify, bool):
        raise _BadRequestError("'notify' must be true or false")
    try:
        return _json_reply(200, srv.revoke(auth_app_id, notify=notify))
    except KeyError:
        return _json_reply(404, {"error": "no such merchant app"})


def _advance_clock(srv: SimulatorServer, data: dict[str, Any]) -> Reply:
    seconds = data.get("advance_seconds")
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not 0 <= seconds <= 10 * 366 * 86400
    ):
        raise _BadRequestError("'advance_seconds' must be a number of seconds, 0 to 10 years")
    srv.state.clock.advance(seconds)
    # Scheduled notification retries that fell due go out before the answer.
    srv.outbox.deliver_due()
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


# Notification settings the behaviour endpoint also takes (answered back only when named).
BEHAVIOUR_NOTIFICATION_KNOBS = ("grant_notifications",)


def _set_behaviour(srv: SimulatorServer, data: dict[str, Any]) -> Reply:
    knobs = {name: data[name] for name in BEHAVIOUR_NOTIFICATION_KNOBS if name in data}
    changes = {name: value for name, value in data.items() if name not in knobs}
    try:
        # Both checked before either changes: a refused call changes nothing.
        srv.outbox.settings.updated(knobs)
        srv.state.behaviour.updated(changes)
        behaviour = srv.state.set_behaviour(**changes).as_dict()
        settings = srv.outbox.update(knobs).as_dict()
    except ValueError as error:
        raise _BadRequestError(str(error)) from None
    return _json_reply(200, {**behaviour, **{name: settings[name] for name in knobs}})


def _ids(data: dict[str, Any]) -> list[str] | None:
    ids = data.get("ids")
    if ids is None:
        return None
    if not isinstance(ids, list) or not all(isinstance(one, str) for one in ids):
        raise _BadRequestError("'ids' must be a list of notification ids")
    return ids


def _notifications(srv: SimulatorServer, command: str, name: str, body: bytes) -> Reply:
    """``/simulator/notifications[/settings|/deliver|/redeliver]``."""
    outbox = srv.outbox
    if name == "notifications":
        if command == "GET":
            return _json_reply(200, outbox.listing())
        if command == "DELETE":
            return _json_reply(200, {"cleared": outbox.clear()})
        return _json_reply(405, {"error": "use GET or DELETE"})
    if name == "notifications/settings" and command == "GET":
        return _json_reply(200, outbox.settings.as_dict())
    sends = {"notifications/deliver": outbox.deliver, "notifications/redeliver": outbox.redeliver}
    if name != "notifications/settings" and name not in sends:
        return _json_reply(404, {"error": "not found"})
    if command != "POST":
        return _json_reply(405, {"error": "use POST"})
    data = _json_body(body)
    try:
        if name == "notifications/settings":
            return _json_reply(200, outbox.update(data).as_dict())
        unknown = set(data) - {"ids", "order"}
        if unknown:
            raise _BadRequestError(f"unknown field '{sorted(unknown)[0]}'")
        return _json_reply(200, sends[name](_ids(data), str(data.get("order", "oldest"))))
    except ValueError as error:
        raise _BadRequestError(str(error)) from None
    except KeyError:
        return _json_reply(404, {"error": "no such notification"})


def _add_rule(srv: SimulatorServer, data: dict[str, Any]) -> Reply:
    try:
        return _json_reply(200, srv.faults.add_rule(**data))
    except ValueError as error:
        raise _BadRequestError(str(error)) from None


def _merchant(srv: SimulatorServer, auth_app_id: str) -> Reply:
    record = srv.state.merchant_record(auth_app_id)
    if record is None:
        return _json_reply(404, {"error": "no such merchant app"})
    return _json_reply(200, record)


MAX_HOLD_WAIT = 60.0


def _holds(srv: SimulatorServer, query: str) -> Reply:
    """``?wait=S&count=N``: block up to S seconds until N requests are held (a Condition)."""
    try:
        params = parse_form(query)
    except SignatureError:
        raise _BadRequestError("bad query string") from None
    try:
        wait = float(params.get("wait") or 0)
        count = int(params.get("count") or 1)
    except ValueError:
        raise _BadRequestError("'wait' must be seconds and 'count' an integer") from None
    if not 0 <= wait <= MAX_HOLD_WAIT or not 1 <= count <= 1000:
        raise _BadRequestError(f"'wait' must be 0 to {MAX_HOLD_WAIT:g} s, 'count' 1 to 1000")
    return _json_reply(200, srv.faults.holds(wait=wait, count=count))


def _release(srv: SimulatorServer, hold_id: str, data: dict[str, Any]) -> Reply:
    try:
        return _json_reply(200, srv.faults.release(hold_id, then=data.get("then")))
    except ValueError as error:
        raise _BadRequestError(str(error)) from None
    except KeyError:
        return _json_reply(404, {"error": "no such held request"})


def _reset(srv: SimulatorServer, data: dict[str, Any]) -> Reply:
    srv.reset()
    return _json_reply(200, {"reset": True})


_READERS: dict[str, Callable[[SimulatorServer], Any]] = {
    "stats": lambda srv: {"requests": srv.stats.snapshot()},
    "faults": lambda srv: srv.faults.faults.as_dict(),
    "faults/rules": lambda srv: srv.faults.rules(),
    "clock": _clock,
    "behaviour": lambda srv: srv.state.behaviour.as_dict(),
}
_CONTROL: dict[str, Callable[[SimulatorServer, dict[str, Any]], Reply]] = {
    "codes": _codes,
    "revoke": _revoke,
    "clock": _advance_clock,
    "faults": _set_faults,
    "faults/rules": _add_rule,
    "behaviour": _set_behaviour,
    "reset": _reset,
}


class RunningSimulator:
    """A simulator serving in a background thread. Also a context manager."""

    def __init__(self, server: SimulatorServer) -> None:
        self._server = server
        self._serving = BackgroundServer(server, name="alipay-simulator")

    @property
    def host(self) -> str:
        return self._serving.host

    @property
    def port(self) -> int:
        return self._serving.port

    @property
    def url(self) -> str:
        return self._serving.url

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

    @property
    def outbox(self) -> notifications.Outbox:
        return self._server.outbox

    def reset(self) -> None:
        """Clear state, behaviour, faults, rules, holds, notifications, statistics and the clock
        offset (same as POST /simulator/reset)."""
        self._server.reset()

    def revoke(self, auth_app_id: str, notify: bool = False) -> dict[str, Any]:
        """Same as POST /simulator/revoke; KeyError for an unknown merchant app."""
        return self._server.revoke(auth_app_id, notify=notify)

    def shutdown(self) -> None:
        # Held requests and injected timeouts end first, so no handler thread hangs.
        self._server.faults.release_all()
        self._server.outbox.stop()
        self._serving.stop()

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
