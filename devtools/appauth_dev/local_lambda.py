"""A boto3-compatible Lambda client that runs handlers in this process, as Lambda would.

``LocalLambdaClient({"appauth-token-query": token_query_app.lambda_handler}).invoke(...)``
answers like ``boto3.client("lambda").invoke``: the event is the JSON of ``Payload`` (a fresh
object, as the runtime decodes it), the answer is ``{"StatusCode": 200, "Payload": <file-like>,
"ExecutedVersion": "$LATEST"}``, and a handler that raises (or returns something that is not
JSON) gives ``"FunctionError": "Unhandled"`` with Lambda's error payload (``errorMessage``,
``errorType``, ``stackTrace``). An unknown function or a payload that is not JSON raises
botocore's ``ClientError`` with Lambda's codes (``ResourceNotFoundException``,
``InvalidRequestContentException``). So a caller such as :class:`appauth.callers.TokenClient`
runs its real code path with no AWS at all.
"""

from __future__ import annotations

import io
import json
import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, redirect_stdout
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from appauth_dev.local_service import REGION, FakeContext

if TYPE_CHECKING:
    from appauth_dev.local_service import LocalService

Handler = Callable[[Any, Any], Any]
MAX_PAYLOAD_BYTES = 6 * 1024 * 1024
DEFAULT_TIMEOUT_MS = 30_000
_quiet_lock = threading.RLock()


def _client_error(code: str, message: str, status: int) -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "Invoke")


def function_name_of(name_or_arn: str) -> str:
    """``name``, ``name:alias``, ``arn:aws:lambda:region:account:function:name[:alias]`` and
    ``account:function:name`` all name the function ``name``."""
    parts = name_or_arn.split(":")
    if "function" in parts:
        return parts[parts.index("function") + 1]
    return parts[0]


class LocalLambdaClient:
    """``handlers``: function name -> ``handler(event, context)``. ``timeouts_ms``: per function
    (default 30 s), what ``context.get_remaining_time_in_millis()`` starts at; with
    ``enforce_timeouts`` a handler that ran longer is reported as Lambda reports a timeout.
    ``quiet`` keeps the handlers' logs and stdout (Powertools JSON, EMF) out of the test output.
    ``calls`` records every invoke (function name and decoded event); ``monotonic`` is the clock
    that times a handler."""

    def __init__(
        self,
        handlers: Mapping[str, Handler],
        *,
        timeouts_ms: Mapping[str, int] | None = None,
        enforce_timeouts: bool = False,
        quiet: bool = False,
        region: str = REGION,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.handlers = dict(handlers)
        self.timeouts_ms = dict(timeouts_ms or {})
        self.enforce_timeouts = enforce_timeouts
        self.quiet = quiet
        self.region = region
        self._monotonic = monotonic
        self.calls: list[tuple[str, Any]] = []
        self._lock = threading.Lock()

    @classmethod
    def for_service(
        cls, service: LocalService, names: Mapping[str, str] | None = None, **kw: Any
    ) -> LocalLambdaClient:
        """The local service's functions (``callback``, ``refresh``, ``token_query``) under the
        names ``names`` gives them (default: ``appauth-local-<function>``), each with the
        Timeout that template.yaml sets; quiet unless the service is not."""
        names = names or {function: f"appauth-local-{function}" for function in service.modules}
        handlers = {
            name: service.modules[function].lambda_handler for function, name in names.items()
        }
        timeouts = {name: service.timeout_ms(function) for function, name in names.items()}
        kw.setdefault("quiet", service.quiet)
        return cls(handlers, timeouts_ms=timeouts, **kw)

    def invoke(
        self,
        *,
        FunctionName: str,  # noqa: N803 (boto3's parameter names)
        Payload: bytes | bytearray | str | None = None,  # noqa: N803
        InvocationType: str = "RequestResponse",  # noqa: N803
        **_other: Any,
    ) -> dict[str, Any]:
        name = function_name_of(FunctionName)
        handler = self.handlers.get(name)
        if handler is None:
            raise _client_error(
                "ResourceNotFoundException",
                f"Function not found: arn:aws:lambda:{self.region}:123456789012:function:{name}",
                404,
            )
        if InvocationType not in ("RequestResponse", "Event", "DryRun"):
            raise _client_error("InvalidParameterValueException", "Unsupported InvocationType", 400)
        raw = Payload if Payload is not None else b"{}"
        data = raw.encode() if isinstance(raw, str) else bytes(raw)
        if len(data) > MAX_PAYLOAD_BYTES:
            raise _client_error("RequestTooLargeException", "Request must be smaller", 413)
        try:
            event = json.loads(data or b"{}")
        except ValueError:
            raise _client_error(
                "InvalidRequestContentException", "Could not parse request body into json", 400
            ) from None
        if InvocationType == "DryRun":
            return {"StatusCode": 204, "Payload": io.BytesIO(b"")}
        with self._lock:
            self.calls.append((name, event))
        timeout_ms = self.timeouts_ms.get(name, DEFAULT_TIMEOUT_MS)
        body, function_error = self._run(handler, name, event, timeout_ms)
        if InvocationType == "Event":
            return {"StatusCode": 202, "Payload": io.BytesIO(b"")}
        response: dict[str, Any] = {
            "StatusCode": 200,
            "Payload": io.BytesIO(body),
            "ExecutedVersion": "$LATEST",
        }
        if function_error:
            response["FunctionError"] = "Unhandled"
        return response

    def _run(self, handler: Handler, name: str, event: Any, timeout_ms: int) -> tuple[bytes, bool]:
        context = FakeContext(function_name=name, remaining_ms=timeout_ms)
        started = self._monotonic()
        try:
            with self._silenced():
                result = handler(event, context)
        except Exception as error:  # Lambda reports any exception as an unhandled error
            return _error_payload(str(error), type(error).__name__, error), True
        if self.enforce_timeouts and (self._monotonic() - started) * 1000 > timeout_ms:
            message = f"Task timed out after {timeout_ms / 1000:.2f} seconds"
            return _error_payload(message, "Sandbox.Timedout"), True
        try:
            return json.dumps(result).encode(), False
        except (TypeError, ValueError) as error:
            message = f"Unable to marshal response: {error}"
            return _error_payload(message, "Runtime.MarshalError"), True

    @contextmanager
    def _silenced(self) -> Iterator[None]:
        if not self.quiet:
            yield
            return
        with _quiet_lock:
            logging.disable(logging.CRITICAL)
            try:
                with redirect_stdout(io.StringIO()):
                    yield
            finally:
                logging.disable(logging.NOTSET)


def _error_payload(message: str, error_type: str, error: BaseException | None = None) -> bytes:
    trace = traceback.format_tb(error.__traceback__) if error is not None else []
    return json.dumps(
        {"errorMessage": message, "errorType": error_type, "requestId": "", "stackTrace": trace}
    ).encode()
