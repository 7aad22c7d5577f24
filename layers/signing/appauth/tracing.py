"""X-Ray tracing of a handler, only when the stack turns it on (template parameter ``Tracing``).

Powertools' ``Tracer`` imports the X-Ray SDK (and botocore's session) when it is built, even
when tracing is disabled: about as long as ``import boto3`` itself. Off, the handler is returned
as it is and the SDK is never imported.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar, cast

HandlerT = TypeVar("HandlerT", bound=Callable[..., Any])
# Set by template.yaml from the Tracing parameter; absent (tests, local tools) means off.
TRACING_ENV = "POWERTOOLS_TRACE_DISABLED"


def tracing_enabled() -> bool:
    return os.environ.get(TRACING_ENV, "true").strip().lower() in {"false", "0", "no", "off"}


def traced(handler: HandlerT) -> HandlerT:
    """``Tracer().capture_lambda_handler`` when tracing is on; the handler itself when off.

    Responses are never recorded (a token query answer carries a token); errors are."""
    if not tracing_enabled():
        return handler
    from aws_lambda_powertools import Tracer  # noqa: PLC0415  (only with tracing on)

    return cast("HandlerT", Tracer().capture_lambda_handler(handler, capture_response=False))
