"""Shared by the reliability and security suite (fuzzing, forged answers, secrets in logs): the
example budget, what a response body may never show, everything the local stack persisted, the
AWS writes a request attempted, and every log record of every logger.
"""

from __future__ import annotations

import json
import logging
import os
import traceback
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from aws_lambda_powertools.utilities import parameters

from appauth import aws
from appauth.alipay.signing import scan_members
from appauth.runtime import reset_runtime
from appauth_dev.simulator import RunningSimulator
from appauth_dev.stack import LocalStack, plain_resources, put_secrets
from tests.conftest import read_vector_file
from tests.integration.callback_helpers import dynamodb, scan_all
from tests.integration.conftest import ServiceStack

# Bigger runs set the examples per property: APPAUTH_FUZZ_EXAMPLES=5000 make test.
EXAMPLES_VARIABLE = "APPAUTH_FUZZ_EXAMPLES"
# What an error body must never show: a stack trace or where the code lives.
LEAK_MARKERS = ("Traceback", 'File "', ".py", "/work", "site-packages")
# Operations that change what AWS keeps for the service (tables, queues, the event bus).
WRITE_OPERATIONS = frozenset(
    {
        "PutItem",
        "UpdateItem",
        "DeleteItem",
        "TransactWriteItems",
        "BatchWriteItem",
        "SendMessage",
        "SendMessageBatch",
        "PutEvents",
    }
)
SERVICES = ("dynamodb", "kms", "ssm", "sqs", "events")


def fuzz_examples(default: int, *, cost: int = 1) -> int:
    """Examples of a property: ``default`` in ``make test``; APPAUTH_FUZZ_EXAMPLES for bigger
    runs, divided by ``cost`` for a property whose example costs that many requests."""
    configured = os.environ.get(EXAMPLES_VARIABLE, "").strip()
    return max(1, int(configured) // cost) if configured else default


def assert_no_leak(text: str, *, context: object = None) -> None:
    for marker in LEAK_MARKERS:
        assert marker not in text, (marker, context, text[:400])


# --- the service in another protocol or signing mode ---------------------------------------


def reconfigure(
    service: ServiceStack,
    simulator: RunningSimulator,
    monkeypatch: pytest.MonkeyPatch,
    *,
    protocol: str = "v2",
    signing_mode: str = "key",
) -> ServiceStack:
    """``service`` with the template's environment for ``protocol`` (AlipayProtocol) and
    ``signing_mode`` (SigningMode: cert mode gets the test CA's certificates in SSM), Alipay
    played by ``simulator``; every cached client, setting and secret rebuilt."""
    local = service.aws
    if signing_mode == "cert":
        ssm = boto3.client("ssm", region_name=local.stack.region, endpoint_url=local.endpoint_url)
        put_secrets(
            ssm,
            local.ssm_prefix,
            app_private_key=read_vector_file("keys/app_private_pkcs8.pem"),
            app_cert=read_vector_file("certs/app_cert.crt"),
            alipay_cert=read_vector_file("certs/alipay_cert.crt"),
            alipay_root_cert=read_vector_file("certs/alipay_root_cert.crt"),
            state_secret=local.state_secret,
        )
    environment = local.stack.environment(
        local.ssm_prefix,
        local.app_id,
        signing_mode,
        AlipayProtocol=protocol,
        AlipayGatewayUrl=simulator.gateway_url,
        AlipayV3Url=simulator.url,
        AlipayAuthUrl=simulator.url,
    )
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    parameters.clear_caches()  # type: ignore[no-untyped-call]
    reset_runtime()
    return ServiceStack(aws=local, simulator=simulator)


# --- answers changed in transit ------------------------------------------------------------


def v2_position_classes(body: str) -> dict[str, list[int]]:
    """Byte offsets of a v2 answer by what they belong to: each top-level member's key and
    value (the method node's value is the signed content), and the JSON around them."""
    raw = body.encode("utf-8")
    classes: dict[str, list[int]] = {}
    cursor = 0
    for name, nodes in scan_members(body).items():
        kind = "node" if name.endswith("_response") else name
        for node in nodes:
            key = json.dumps(name).encode("utf-8")
            value = node.raw.encode("utf-8")
            key_at = raw.index(key, cursor)
            value_at = raw.index(value, key_at + len(key))
            classes.setdefault(f"{kind} key", []).extend(range(key_at, key_at + len(key)))
            classes.setdefault(f"{kind} value", []).extend(range(value_at, value_at + len(value)))
            cursor = value_at + len(value)
    taken = {offset for offsets in classes.values() for offset in offsets}
    classes["punctuation"] = [offset for offset in range(len(raw)) if offset not in taken]
    return classes


def same_kind(original: int, choice: int) -> int:
    """Another digit for a digit, letter for a letter (the JSON stays valid, so only the
    signature can tell); any other byte is replaced by ``choice``."""
    for first, count in ((0x30, 10), (0x41, 26), (0x61, 26)):
        if first <= original < first + count:
            return first + (original - first + 1 + choice % (count - 1)) % count
    return choice


def flip_byte(raw: bytes, index: int, replacement: int) -> bytes:
    """``raw`` with the byte at ``index`` replaced by another (``replacement``, or the next)."""
    if replacement == raw[index]:
        replacement = (replacement + 1) % 256
    return raw[:index] + bytes([replacement]) + raw[index + 1 :]


# --- what the stack persisted ----------------------------------------------------------------


def template_resources(stack: LocalStack, resource_type: str) -> list[str]:
    """Physical names (queue URLs for queues) of every resource of ``resource_type`` in the
    template the stack was built from."""
    return sorted(
        stack.resources[logical_id]
        for logical_id, resource in plain_resources(stack.template).items()
        if resource.get("Type") == resource_type and logical_id in stack.resources
    )


@dataclass(frozen=True)
class Persisted:
    """Every item of every table of the template, and the message count of every queue."""

    tables: dict[str, list[dict[str, Any]]]
    queues: dict[str, int]

    def items(self) -> list[dict[str, Any]]:
        return [item for items in self.tables.values() for item in items]

    def added_since(self, before: Persisted) -> list[dict[str, Any]]:
        """Items present now and not before (any change of an item counts as an addition)."""
        old = {_canonical(item) for item in before.items()}
        return [item for item in self.items() if _canonical(item) not in old]

    def removed_since(self, before: Persisted) -> list[dict[str, Any]]:
        return before.added_since(self)

    def only(self, names: set[str]) -> Persisted:
        """The tables and queues named (physical names, queue URLs)."""
        return Persisted(
            tables={k: v for k, v in self.tables.items() if k in names},
            queues={k: v for k, v in self.queues.items() if k in names},
        )


def _canonical(item: dict[str, Any]) -> str:
    return json.dumps(item, sort_keys=True, default=repr)  # binary attributes are bytes


class Snapshots:
    """Takes :class:`Persisted` snapshots of a local stack (its clients built once: building a
    boto3 client costs more than a scan of these tables)."""

    def __init__(self, stack: LocalStack, endpoint_url: str) -> None:
        self._dynamodb = dynamodb(endpoint_url)
        self._sqs = boto3.client("sqs", region_name=stack.region, endpoint_url=endpoint_url)
        self._tables = template_resources(stack, "AWS::DynamoDB::Table")
        self._queues = template_resources(stack, "AWS::SQS::Queue")

    def take(self, names: set[str] | None = None) -> Persisted:
        """Everything, or only the tables and queues ``names`` names."""
        return Persisted(
            tables={
                table: scan_all(self._dynamodb, table)
                for table in self._tables
                if names is None or table in names
            },
            queues={
                queue: self._messages(queue)
                for queue in self._queues
                if names is None or queue in names
            },
        )

    @property
    def dynamodb(self) -> Any:
        return self._dynamodb

    def _messages(self, queue_url: str) -> int:
        """Messages on the queue, visible or in flight."""
        attributes = self._sqs.get_queue_attributes(
            QueueUrl=queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]
        return sum(int(value) for value in attributes.values())


class AwsCalls:
    """Every operation the layer's boto3 clients (``appauth.aws``) send, and the writes AWS
    carried out (a write refused, e.g. by its condition, changed nothing)."""

    def __init__(self, services: Sequence[str] = SERVICES) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.params: list[tuple[str, str, dict[str, Any]]] = []
        self.writes_done: list[tuple[str, dict[str, Any]]] = []  # (operation, request)
        self.plaintexts: list[bytes] = []  # KMS data keys handed out (GenerateDataKey, Decrypt)
        self._pending: dict[int, dict[str, Any]] = {}
        self.attach(services)

    def attach(self, services: Sequence[str] = SERVICES) -> None:
        """Watch the layer's current clients (again after ``reset_runtime`` replaced them)."""
        for service in services:
            events = getattr(aws, service)().meta.events
            events.register("before-call", self._before)
            events.register("after-call", self._after)

    def _before(
        self, model: Any, params: dict[str, Any], context: dict[str, Any], **_: Any
    ) -> None:
        # ``params`` is the serialized request: JSON for every service used here.
        request = json.loads(params.get("body") or b"{}")
        self.counts[(model.service_model.service_name, model.name)] += 1
        self.params.append((model.service_model.service_name, model.name, request))
        self._pending[id(context)] = request

    def _after(
        self,
        model: Any,
        http_response: Any,
        parsed: dict[str, Any],
        context: dict[str, Any],
        **_: Any,
    ) -> None:
        request = self._pending.pop(id(context), {})
        if model.name in WRITE_OPERATIONS and http_response.status_code < 300:
            self.writes_done.append((model.name, request))
        if isinstance(parsed.get("Plaintext"), bytes):
            self.plaintexts.append(parsed["Plaintext"])

    def writes(self) -> int:
        """Writes AWS carried out so far."""
        return len(self.writes_done)

    def since(self, count: int) -> tuple[list[tuple[str, dict[str, Any]]], set[str]]:
        """The writes carried out after the first ``count``, and the tables and queues they
        wrote to (``PutEvents`` names its bus)."""
        done = self.writes_done[count:]
        return done, {name for _, request in done for name in written_to(request)}

    def named(self, operation: str) -> list[dict[str, Any]]:
        """The parameters of every call of ``operation`` sent so far."""
        return [params for _, name, params in self.params if name == operation]


def written_to(request: dict[str, Any]) -> set[str]:
    """The tables, queues or buses a write request names."""
    names = {request[key] for key in ("TableName", "QueueUrl") if key in request}
    names |= set(request.get("RequestItems", {}))
    for entry in request.get("TransactItems", []):
        names |= {operation["TableName"] for operation in entry.values()}
    names |= {entry.get("EventBusName", "default") for entry in request.get("Entries", [])}
    return names


# --- every log record ------------------------------------------------------------------------


# The attributes every LogRecord has; any other one is an ``extra`` of the logging call.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


@dataclass(frozen=True)
class CapturedRecord:
    logger: str
    where: str  # the logging call: file and line
    text: str  # the message, every extra and the formatted exception


class RecordCapture(logging.Handler):
    """Keeps everything a log record carries, whatever formatter a real handler would use."""

    def __init__(self) -> None:
        super().__init__(level=logging.NOTSET)
        self.records: list[CapturedRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        parts = [record.getMessage()]
        parts += [
            f"{name}={value!r}"
            for name, value in vars(record).items()
            if name not in _RECORD_ATTRIBUTES
        ]
        if record.exc_info:
            parts.append("".join(traceback.format_exception(*record.exc_info)))
        where = f"{record.filename}:{record.lineno}"
        self.records.append(CapturedRecord(record.name, where, "\n".join(parts)))


@contextmanager
def every_log_record(*debug_loggers: str) -> Iterator[RecordCapture]:
    """Capture every record reaching the root logger (every logger propagates to it), with
    ``debug_loggers`` at DEBUG meanwhile; levels and handlers are put back afterwards. pytest's
    own capture is kept at WARNING meanwhile: a failure's report would print every DEBUG line."""
    capture = RecordCapture()
    root = logging.getLogger()
    levels = {name: logging.getLogger(name).level for name in debug_loggers}
    pytest_handlers = {
        handler: handler.level
        for handler in root.handlers
        if type(handler).__name__ == "LogCaptureHandler"
    }
    root.addHandler(capture)
    for name in debug_loggers:
        logging.getLogger(name).setLevel(logging.DEBUG)
    for handler in pytest_handlers:
        handler.setLevel(max(handler.level, logging.WARNING))
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        for handler, level in pytest_handlers.items():
            handler.setLevel(level)
