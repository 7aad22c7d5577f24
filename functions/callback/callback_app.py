"""Callback function (HTTP API): the page that starts an authorization, Alipay's redirect back,
and Alipay's notifications. Thin: parse, call the layer, map the result or error to a response.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from datetime import UTC, datetime
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyPersistenceLayerError,
    IdempotencyValidationError,
)
from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import DataRecord
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import BotoCoreError, ClientError

from appauth import aws
from appauth.alipay.errors import ConfigError, SignatureError, UnexpectedResponseError
from appauth.authorization import (
    AuthorizationOutcome,
    CallbackRequest,
    StartRequest,
    complete_authorization,
    start_authorization,
)
from appauth.errors import InvalidRequestError, RequestError, ServiceBusyError
from appauth.notifications import (
    MAX_NOTIFICATION_BYTES,
    NotificationResult,
    process_notification,
    read_notification,
)
from appauth.runtime import runtime
from appauth.secrets import SecretsUnavailableError
from appauth.tracing import traced
from callback_pages import CONTENT_SECURITY_POLICY, error_page, result_page, start_page

logger = Logger()
metrics = Metrics()
app = APIGatewayHttpResolver()

CALLBACK_PATH = "/alipay/callback"
NOTIFY_PATH = "/alipay/notify"
MAX_QUERY_BYTES = 4096
HTML = "text/html; charset=utf-8"
NO_STORE = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
# The merchant pages load nothing from anywhere (callback_pages): the browser is told so.
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
}
# The same redirect (reload, retry) is answered from the record, without a second exchange.
IDEMPOTENCY = IdempotencyConfig(
    event_key_jmespath="[app_auth_code, state]",
    expires_after_seconds=24 * 3600,
    hash_function="sha256",
)


def _replayed(response: Any, idempotent_data: DataRecord) -> Any:
    """A response answered from the record (not processed again) says so."""
    return {**response, "replayed": True} if isinstance(response, dict) else response


# A notification Alipay redelivers (same app_id and notify_id) after it was processed is
# answered "success" from the record. Alipay redelivers for about 25 hours; keep 3 days. A
# notify_id that comes back with other signed content is not a redelivery: it is processed
# (the store's fences make that safe) instead of being answered from the record.
NOTIFY_IDEMPOTENCY = IdempotencyConfig(
    event_key_jmespath="[app_id, notify_id]",
    payload_validation_jmespath="[notify_type, msg_method, biz_content]",
    expires_after_seconds=3 * 24 * 3600,
    hash_function="sha256",
    response_hook=_replayed,
)


class NotificationRejectedError(RequestError):
    reason = "notification_rejected"


class NotificationInProgressError(RequestError):
    http_status = 503
    reason = "notification_in_progress"


class AuthorizationInProgressError(RequestError):
    http_status = 503
    reason = "in_progress"


class AlipayAnswerRejectedError(RequestError):
    http_status = 502
    reason = "alipay_answer_rejected"


def _query() -> dict[str, str]:
    event = app.current_event
    if len(event.raw_query_string or "") > MAX_QUERY_BYTES:
        raise InvalidRequestError("the query string is too long")
    return dict(event.query_string_parameters or {})


def _wants_json() -> bool:
    accept = app.current_event.headers.get("accept", "")
    return (
        "application/json" in accept
        or (app.current_event.query_string_parameters or {}).get("format") == "json"
    )


def _respond(
    status: int, html: str, data: dict[str, Any], headers: dict[str, str] | None = None
) -> Response[str]:
    merged = {**NO_STORE, **(headers or {})}
    if _wants_json():
        return Response(status, "application/json", json.dumps(data, ensure_ascii=False), merged)
    return Response(status, HTML, html, {**merged, **PAGE_HEADERS})


def _redirect_uri() -> str:
    configured = runtime().settings.callback_url
    return configured or f"https://{app.current_event.request_context.domain_name}{CALLBACK_PATH}"


@app.get("/alipay/authorize")
def authorize() -> Response[str]:
    rt = runtime()
    query = _query()
    request = StartRequest.from_query(query, redirect_uri=_redirect_uri())
    result = start_authorization(
        request,
        app_id=rt.settings.app_id,
        auth_base_url=rt.settings.endpoints.auth_base_url,
        store=rt.store,
        state_secret=rt.state_secret(),
        state_ttl_seconds=rt.settings.state_ttl_seconds,
        now=int(time.time()),
    )
    metrics.add_metric(name="AuthorizationsStarted", unit=MetricUnit.Count, value=1)
    if query.get("redirect") == "1":
        return Response(302, HTML, "", {**NO_STORE, **PAGE_HEADERS, "Location": result.url})
    import segno  # noqa: PLC0415  (only this page needs it: keeps other cold starts lean)

    qr_svg = segno.make(result.url, error="m").svg_inline(scale=4, border=2)
    data = {"authorization_url": result.url, "expires_at": result.expires_at, "batch": result.batch}
    return _respond(200, start_page(result, qr_svg), data)


def _complete(redirect: dict[str, str]) -> dict[str, Any]:
    rt = runtime()
    outcome = complete_authorization(
        CallbackRequest(**redirect),
        app_id=rt.settings.app_id,
        client=rt.client(),
        store=rt.store,
        park=rt.park,
        state_secret=rt.state_secret(),
        now=int(time.time()),
    )
    return outcome.as_dict()


_idempotent_complete: Any = None


def _complete_once(request: CallbackRequest) -> AuthorizationOutcome:
    global _idempotent_complete  # noqa: PLW0603  (built on first use: no boto3 client at import)
    if _idempotent_complete is None:
        persistence = DynamoDBPersistenceLayer(
            table_name=runtime().settings.idempotency_table, boto3_client=aws.dynamodb()
        )
        _idempotent_complete = idempotent_function(
            data_keyword_argument="redirect", persistence_store=persistence, config=IDEMPOTENCY
        )(_complete)
    try:
        return AuthorizationOutcome.from_dict(_idempotent_complete(redirect=request.as_dict()))
    except IdempotencyAlreadyInProgressError:
        # The same redirect is being handled right now (a double click): let the browser retry.
        raise AuthorizationInProgressError(
            "this authorization is being completed; reload in a moment"
        ) from None
    except (SignatureError, UnexpectedResponseError):
        raise AlipayAnswerRejectedError(
            "Alipay's answer could not be verified; nothing was stored. Please authorize again."
        ) from None


@app.get(CALLBACK_PATH)
def callback() -> Response[str]:
    request = CallbackRequest.from_query(_query())
    outcome = _complete_once(request)
    metrics.add_metric(
        name="AuthorizationsGranted", unit=MetricUnit.Count, value=len(outcome.auth_app_ids)
    )
    if outcome.parked:
        metrics.add_metric(name="TokenPairsParked", unit=MetricUnit.Count, value=1)
    logger.info(
        "Authorization complete",
        extra={"auth_app_ids": list(outcome.auth_app_ids), "parked": outcome.parked},
    )
    return _respond(200, result_page(outcome), {"status": "granted", **outcome.as_dict()})


def _raw_body() -> bytes:
    """The request body as the bytes Alipay sent (API Gateway may hand them over in base64)."""
    event = app.current_event
    body = event.body or ""
    if not isinstance(body, str):
        raise InvalidRequestError("the body is not text")
    # Base64 of MAX_NOTIFICATION_BYTES is 4/3 as long: refuse anything longer before decoding.
    if len(body) > 2 * MAX_NOTIFICATION_BYTES:
        raise InvalidRequestError("notification body is too large")
    if event.is_base64_encoded:
        try:
            return base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):  # ValueError: non-ASCII characters
            raise InvalidRequestError("the body is not valid base64") from None
    try:
        return body.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: not text API Gateway could have sent
        raise InvalidRequestError("the body is not valid text") from None


def _process(notification: dict[str, str]) -> dict[str, Any]:
    rt = runtime()
    # Parked in the queue, or "fail": Alipay redelivers, which beats a pair kept in a log line.
    result = process_notification(
        notification, store=rt.store, park=rt.park_for_redelivery, now=datetime.now(UTC)
    )
    return result.as_dict()


_idempotent_process: Any = None


def _process_once(params: dict[str, str]) -> tuple[NotificationResult, bool]:
    """Process a verified notification once per (app_id, notify_id); (result, replayed).

    The record is written only after verification, completed only once the change is durable,
    and deleted by Powertools when processing raises, so Alipay's redelivery is processed.
    """
    global _idempotent_process  # noqa: PLW0603  (built on first use: no boto3 client at import)
    if not params.get("notify_id"):
        return NotificationResult.from_dict(_process(params)), False
    if _idempotent_process is None:
        # Its own persistence layer: Powertools configures one per decorated function.
        persistence = DynamoDBPersistenceLayer(
            table_name=runtime().settings.idempotency_table, boto3_client=aws.dynamodb()
        )
        _idempotent_process = idempotent_function(
            data_keyword_argument="notification",
            persistence_store=persistence,
            config=NOTIFY_IDEMPOTENCY,
        )(_process)
    try:
        data = _idempotent_process(notification=params)
    except IdempotencyAlreadyInProgressError:
        # The same notification is being processed right now: "fail" makes Alipay retry later.
        raise NotificationInProgressError("this notification is being processed") from None
    except IdempotencyValidationError:
        logger.warning(
            "notify_id seen before with other content: processed without de-duplication",
            extra={"notify_id": params.get("notify_id")},
        )
        return NotificationResult.from_dict(_process(params)), False
    return NotificationResult.from_dict(data), bool(data.get("replayed"))


@app.post(NOTIFY_PATH)
def notify() -> Response[str]:
    rt = runtime()
    body = _raw_body()
    try:
        params = read_notification(body, credentials=rt.credentials())
    except SignatureError as error:  # undecodable, repeated field, forged or tampered
        raise NotificationRejectedError(f"notification rejected: {error}") from None
    result, replayed = _process_once(params)
    metrics.add_metric(name=f"Notifications_{result.kind}", unit=MetricUnit.Count, value=1)
    if replayed:
        metrics.add_metric(name="NotificationsReplayed", unit=MetricUnit.Count, value=1)
    logger.info(
        "Notification handled",
        extra={
            "kind": result.kind,
            "auth_app_id": result.auth_app_id,
            "changed": result.changed and not replayed,
            "replayed": replayed,
        },
    )
    # Alipay stops redelivering only when the body is exactly "success".
    return Response(200, "text/plain", "success", NO_STORE)


@app.exception_handler(RequestError)  # type: ignore[untyped-decorator]
def request_error(error: RequestError) -> Response[str]:
    return _refused(error)


def _refused(error: RequestError) -> Response[str]:
    _count_failure(error.reason)
    logger.warning("Request refused", extra={"reason": error.reason, "status": error.http_status})
    headers = {"Retry-After": "60"} if error.http_status == 503 else None
    if _is_notification():
        return _notification_failed(error.http_status)
    return _respond(
        error.http_status,
        error_page(error.http_status, str(error)),
        error.as_dict(),
        headers,
    )


@app.exception_handler(ConfigError)  # type: ignore[untyped-decorator]
def config_error(error: ConfigError) -> Response[str]:
    _count_failure("misconfigured")
    # The parameter name helps the operator; the merchant only learns that it is our fault.
    logger.error("Service misconfigured", extra={"parameter": error.parameter, "error": str(error)})
    if _is_notification():
        return _notification_failed(500)
    return _respond(
        500,
        error_page(500, "The service is misconfigured."),
        {"error": {"reason": "misconfigured"}},
    )


@app.exception_handler(SecretsUnavailableError)  # type: ignore[untyped-decorator]
def secrets_unavailable(error: SecretsUnavailableError) -> Response[str]:
    logger.error("Secrets unreadable now", extra={"parameter": error.parameter})
    return _refused(
        ServiceBusyError("The service cannot read its configuration now; please retry shortly.")
    )


@app.exception_handler(  # type: ignore[untyped-decorator]
    [ClientError, BotoCoreError, IdempotencyPersistenceLayerError]
)
def aws_failed(error: Exception) -> Response[str]:
    # Reached only before a pair exists: after the exchange, store_grants parks on any failure.
    cause = error.__cause__ or error.__context__ or error
    if not aws.is_transient(cause):
        return _internal_error(error)
    logger.error("AWS busy", extra={"aws_error": type(cause).__name__, "error": str(cause)})
    return _refused(ServiceBusyError("The service is busy; please retry shortly."))


@app.exception_handler(Exception)  # type: ignore[untyped-decorator]
def unexpected_error(error: Exception) -> Response[str]:
    return _internal_error(error)


def _internal_error(error: Exception) -> Response[str]:
    _count_failure("internal_error")
    logger.exception("Unexpected error")
    if _is_notification():
        return _notification_failed(500)
    return _respond(
        500, error_page(500, "Internal error."), {"error": {"reason": "internal_error"}}
    )


def _is_notification() -> bool:
    return app.current_event.raw_path == NOTIFY_PATH


def _notification_failed(status: int) -> Response[str]:
    # Alipay reads the body: anything but "success" makes it deliver the notification again.
    return Response(status, "text/plain", "fail", NO_STORE)


@app.not_found
def not_found(_: Exception) -> Response[str]:
    return _respond(404, error_page(404, "Not found."), {"error": {"reason": "not_found"}})


def _count_failure(reason: str) -> None:
    metrics.add_metric(name="AuthorizationsFailed", unit=MetricUnit.Count, value=1)
    # A separate EMF document, so the reason dimension does not attach to the other metrics.
    with single_metric(
        name="AuthorizationsFailedByReason",
        unit=MetricUnit.Count,
        value=1,
        namespace=metrics.namespace,
    ) as metric:
        metric.add_dimension(name="reason", value=reason)


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_HTTP)
@traced
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    IDEMPOTENCY.register_lambda_context(context)
    NOTIFY_IDEMPOTENCY.register_lambda_context(context)
    try:
        return app.resolve(event, context)
    finally:
        _count_lifecycle_events()


def _count_lifecycle_events() -> None:
    """Lifecycle events this request published, or failed to (alarmed): never raises."""
    try:
        published, failed = runtime().events.take_counts()
    except ConfigError:  # misconfigured: nothing was published, and the response says so
        return
    if published:
        metrics.add_metric(name="EventsPublished", unit=MetricUnit.Count, value=published)
    if failed:
        metrics.add_metric(name="EventsPublishFailed", unit=MetricUnit.Count, value=failed)
