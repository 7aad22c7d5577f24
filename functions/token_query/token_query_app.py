"""Token query function: other Lambdas invoke it directly (never over HTTP) for a merchant's token.

Requests: ``{"action": "get_token" | "describe" | "list" | "report_invalid", ...}`` (see
``appauth.queries`` and the README, "Asking for tokens"). Answers: ``{"ok": true, ...}`` or
``{"ok": false, "error": {"code", "message", "retryable"}}``; never an exception.
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.utilities.typing import LambdaContext

from appauth.lookup import Answer, LookupCache, failure_for
from appauth.queries import parse_request
from appauth.runtime import runtime
from appauth.tracing import traced

logger = Logger()
metrics = Metrics()
# Per container: tokens opened here are served from memory for this long (TokenCacheSeconds).
cache = LookupCache(max_age_seconds=float(os.environ.get("TOKEN_CACHE_SECONDS", "30")))


@logger.inject_lambda_context
@traced
@metrics.log_metrics
def lambda_handler(event: Any, context: LambdaContext) -> dict[str, Any]:
    try:
        request = parse_request(event)
        service = runtime().token_service(
            cache, time_left=lambda: context.get_remaining_time_in_millis() / 1000
        )
        answer = service.answer(request)
    except Exception as error:  # a bad request, or a runtime that cannot be built
        answer = Answer(failure_for(error).answer())
        request = None
    _count(answer)
    logger.info(
        "Token query",
        extra={
            "action": type(request).__name__ if request else None,
            "auth_app_id": getattr(request, "auth_app_id", None),
            "ok": answer.body.get("ok"),
            "code": answer.error_code,
            "cache": answer.cache,
        },
    )
    return answer.body


def _count(answer: Answer) -> None:
    if answer.cache == "hit":
        metrics.add_metric(name="TokenQueryCacheHits", unit=MetricUnit.Count, value=1)
    elif answer.cache == "miss":
        metrics.add_metric(name="TokenQueryCacheMisses", unit=MetricUnit.Count, value=1)
    if answer.error_code is None:
        metrics.add_metric(name="TokenQueries", unit=MetricUnit.Count, value=1)
        return
    metrics.add_metric(name="TokenQueryErrors", unit=MetricUnit.Count, value=1)
    # Its own EMF document, so the code dimension does not attach to the other metrics.
    with single_metric(
        name="TokenQueryErrorsByCode", unit=MetricUnit.Count, value=1, namespace=metrics.namespace
    ) as metric:
        metric.add_dimension(name="code", value=answer.error_code)
