"""Token query function: other Lambdas invoke it directly for a merchant's current token.

Event: ``{"auth_app_id": "2021...", "consistent": false}`` (``consistent`` skips the
short cache and reads the latest write). Answer: ``{"auth_app_id", "found", "status",
"app_auth_token" (only while granted), "user_id", "version", "expires_at", "re_expires_at"}``
or ``{"error": {"reason", "message"}}``. Never exposed over HTTP.
"""

from __future__ import annotations

import os
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from appauth.alipay.errors import ConfigError
from appauth.errors import RequestError
from appauth.lookup import LookupCache, TokenQuery, lookup_token
from appauth.runtime import runtime

logger = Logger()
tracer = Tracer()
metrics = Metrics()
cache = LookupCache(max_age_seconds=float(os.environ.get("TOKEN_CACHE_SECONDS", "30")))


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: Any, context: LambdaContext) -> dict[str, Any]:
    try:
        query = TokenQuery.from_event(event)
        result = cache.get_or_load(
            query.auth_app_id,
            lambda app: lookup_token(runtime().store, app, consistent=query.consistent),
            fresh=query.consistent,
        )
    except RequestError as error:
        logger.warning("Token query refused", extra={"reason": error.reason})
        return error.as_dict()
    except ConfigError as error:
        logger.error(
            "Service misconfigured", extra={"parameter": error.parameter, "error": str(error)}
        )
        return {
            "error": {"reason": "misconfigured", "message": "the token service is misconfigured"}
        }
    metrics.add_metric(name="TokenQueries", unit=MetricUnit.Count, value=1)
    logger.info(
        "Token query",
        extra={"auth_app_id": query.auth_app_id, "found": result.found, "status": result.status},
    )
    return result.as_dict()
