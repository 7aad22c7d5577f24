"""Refresh function (EventBridge Scheduler): rotate the token pairs that are due."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from appauth import aws
from appauth.parking import drain_parked
from appauth.refresh import refresh_due
from appauth.runtime import runtime

logger = Logger()
tracer = Tracer()
metrics = Metrics()


@logger.inject_lambda_context
@tracer.capture_lambda_handler(capture_response=False)
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    rt = runtime()
    drained = drain_parked(aws.sqs(), rt.settings.parked_queue_url, rt.store, rt.cipher)
    report = refresh_due(
        store=rt.store,
        client=rt.client(),
        park=rt.park,
        clock=lambda: datetime.now(UTC),
        owner=context.aws_request_id,  # unique per run: only this run may release its leases
        time_left=lambda: context.get_remaining_time_in_millis() / 1000,
    )
    result = {"parked_drained": drained, **report.as_dict()}
    for name, value in result.items():
        metrics.add_metric(name=f"Refresh_{name}", unit=MetricUnit.Count, value=value)
    logger.info("Refresh run", extra=result)
    return result
