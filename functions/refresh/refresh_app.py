"""Refresh function: rotates the token pairs that are due, and stores parked pairs.

Invoked by EventBridge Scheduler (``{"due": true}``), by an operator for some merchants now
(``{"auth_app_ids": [...]}``), and by the parking queue's SQS event source (a batch of parked
pairs, with partial failure reports). See ``appauth.refresh`` for the rotation protocol.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from appauth import aws
from appauth.errors import RequestError
from appauth.parking import apply_parked_record, drain_parked
from appauth.refresh import RefreshRequest
from appauth.runtime import runtime
from appauth.tracing import traced

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

logger = Logger()
metrics = Metrics()


def _store_parked(record: SQSRecord) -> None:
    apply_parked_record(record.body, runtime().store)


def _store_parked_batch(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """The parking queue's batch, with partial failure reports (Powertools Batch)."""
    # Imported on this path only: the scheduled run never needs Powertools Batch.
    from aws_lambda_powertools.utilities.batch import (  # noqa: PLC0415
        BatchProcessor,
        EventType,
        process_partial_response,
    )

    processor = BatchProcessor(event_type=EventType.SQS)
    return dict(
        process_partial_response(
            event=event, record_handler=_store_parked, processor=processor, context=context
        )
    )


@logger.inject_lambda_context
@traced
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if isinstance(event, dict) and "Records" in event:
        answer = _store_parked_batch(event, context)
        failed_records = len(answer.get("batchItemFailures", []))
        metrics.add_metric(
            name="Refresh_parked_drained",
            unit=MetricUnit.Count,
            value=len(event["Records"]) - failed_records,
        )
        _count_events()
        return answer
    try:
        request = RefreshRequest.from_event(event)
    except RequestError as error:
        logger.warning("Refresh request refused", extra={"reason": error.reason})
        return error.as_dict()
    rt = runtime()
    started_with = context.get_remaining_time_in_millis() / 1000
    # Parked pairs first: storing them needs no Alipay client, so they come home even when
    # the secrets the client needs cannot be read.
    drained = drain_parked(aws.sqs(), rt.settings.parked_queue_url, rt.store)
    refresher = rt.refresher(
        owner=context.aws_request_id,  # unique per run: only this run may release its leases
        time_left=lambda: context.get_remaining_time_in_millis() / 1000,
        function_timeout=started_with,
    )
    concurrency = rt.settings.refresh_concurrency
    if request.auth_app_ids:
        report = refresher.refresh_now(request.auth_app_ids, concurrency=concurrency)
    else:
        # The schedule's run: what is due, then the verification sweep with what time is left.
        report = refresher.refresh_due(concurrency=concurrency)
        refresher.verify_due(report, concurrency=concurrency)
    counts = {"parked_drained": drained, **report.as_dict()}
    for name, value in counts.items():
        metrics.add_metric(name=f"Refresh_{name}", unit=MetricUnit.Count, value=value)
    published, failed = _count_events()
    logger.info("Refresh run", extra=counts)
    return {
        **counts,
        "events_published": published,
        "events_failed": failed,
        "merchants": report.merchants,
    }


def _count_events() -> tuple[int, int]:
    """The lifecycle events this invocation published, and failed to (alarmed)."""
    published, failed = runtime().events.take_counts()
    metrics.add_metric(name="EventsPublished", unit=MetricUnit.Count, value=published)
    metrics.add_metric(name="EventsPublishFailed", unit=MetricUnit.Count, value=failed)
    return published, failed
