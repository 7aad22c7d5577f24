"""Helpers for driving the callback function in-process: its sample events, a Lambda context, the
merchant's walk through Alipay's consent page (the simulator), and raw reads of the local stack.
"""

from __future__ import annotations

import base64
import copy
import importlib
import json
import logging
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import parse_qsl, urlencode, urlsplit

import boto3
import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from appauth.alipay.keys import load_private_key
from appauth.alipay.signing import beijing_timestamp, dumps_compact, sign_content
from appauth.runtime import runtime
from appauth_dev.local_service import FakeContext
from tests.conftest import read_vector_file

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

    from appauth.store import TokenStore
    from tests.integration.conftest import ServiceStack

EVENTS_DIR = Path(__file__).resolve().parents[2] / "events"
REGION = "us-east-1"

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: str

    def json(self) -> Any:
        return json.loads(self.body)


def load_event(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EVENTS_DIR / name).read_text(encoding="utf-8"))
    return copy.deepcopy(data)


def with_query(event: dict[str, Any], query: Mapping[str, str] | None) -> dict[str, Any]:
    """The event with its query replaced: ``queryStringParameters`` and ``rawQueryString`` agree."""
    changed = copy.deepcopy(event)
    if query:
        changed["queryStringParameters"] = dict(query)
        changed["rawQueryString"] = urlencode(dict(query))
    else:
        changed.pop("queryStringParameters", None)
        changed["rawQueryString"] = ""
    return changed


def with_header(event: dict[str, Any], name: str, value: str) -> dict[str, Any]:
    changed = copy.deepcopy(event)
    changed["headers"][name] = value
    return changed


def with_body(event: dict[str, Any], body: str) -> dict[str, Any]:
    changed = copy.deepcopy(event)
    changed["body"] = body
    changed["isBase64Encoded"] = False
    return changed


def invoke(handler: Handler, event: dict[str, Any]) -> HttpResponse:
    result = handler(
        event, FakeContext(function_name="appauth-local-callback", remaining_ms=15_000)
    )
    body = result.get("body") or ""
    if result.get("isBase64Encoded"):
        body = base64.b64decode(body).decode("utf-8")
    headers = {name.lower(): str(value) for name, value in (result.get("headers") or {}).items()}
    return HttpResponse(int(result["statusCode"]), headers, body)


# --- the merchant's side: the start page, Alipay's consent page, the redirect ---------------------


def start(handler: Handler, **query: str) -> dict[str, Any]:
    """The start page as JSON: ``authorization_url``, ``expires_at``, ``batch``."""
    event = with_query(load_event("callback_start_page.json"), {**query, "format": "json"})
    response = invoke(handler, event)
    assert response.status == 200, response.body
    data: dict[str, Any] = response.json()
    return data


def url_query(url: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(url).query, keep_blank_values=True))


def approve(
    simulator_url: str, authorization_url: str, *, auth_app_id: str | None = None
) -> dict[str, str]:
    """Approve on the simulator's consent page; the query of the 302 to our callback."""
    form = url_query(authorization_url)
    form["mode"] = "batch" if "BatchAuth" in urlsplit(authorization_url).path else "single"
    if auth_app_id is not None:
        form["auth_app_id"] = auth_app_id
    answer = requests.post(
        f"{simulator_url}/oauth2/approve", data=form, allow_redirects=False, timeout=10
    )
    assert answer.status_code == 302, answer.text
    location = answer.headers["Location"]
    assert urlsplit(location).path == "/alipay/callback"
    return url_query(location)


def redirect_event(query: Mapping[str, str], *, accept: str | None = None) -> dict[str, Any]:
    event = with_query(load_event("callback_redirect_ok.json"), query)
    return with_header(event, "accept", accept) if accept else event


def state_payload(state: str) -> dict[str, Any]:
    body = state.split(".")[1]
    data: dict[str, Any] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return data


def simulator_stats(simulator_url: str) -> dict[str, dict[str, int]]:
    answer = requests.get(f"{simulator_url}/simulator/stats", timeout=10)
    answer.raise_for_status()
    stats: dict[str, dict[str, int]] = answer.json()["requests"]
    return stats


def exchanges(simulator_url: str) -> int:
    """Calls of ``alipay.open.auth.token.app`` the simulator saw, whatever their outcome."""
    return sum(simulator_stats(simulator_url).get("alipay.open.auth.token.app", {}).values())


def set_faults(simulator_url: str, **faults: Any) -> None:
    requests.post(f"{simulator_url}/simulator/faults", json=faults, timeout=10).raise_for_status()


# --- a grant notification as Alipay sends it -------------------------------------------------------


def grant_notification(
    app_id: str,
    auth_app_id: str,
    *,
    tokens: tuple[str, str],
    trigger_context: dict[str, str],
    charset: str = "utf-8",
    auth_time: bool = True,
    notify_time: str | None = None,
) -> dict[str, str]:
    """The fields of an ``open_app_auth_notify`` granting ``tokens`` (app_auth_token,
    app_refresh_token), unsigned and without a ``notify_id``; ``notify_time`` is now in Beijing
    time unless given."""
    now = datetime.now(UTC)
    detail: dict[str, Any] = {
        "app_auth_token": tokens[0],
        "app_refresh_token": tokens[1],
        "user_id": "2088102175794899",
        "auth_app_id": auth_app_id,
        "app_id": app_id,
        "expires_in": 31536000,
        "re_expires_in": 32140800,
    }
    if auth_time:
        detail["auth_time"] = int(now.timestamp() * 1000)
    content = {
        "notify_context": {"trigger": "auth_app", "trigger_context": trigger_context},
        "detail": detail,
        "error": {},
    }
    return {
        "notify_type": "open_app_auth_notify",
        "notify_time": beijing_timestamp(now) if notify_time is None else notify_time,
        "app_id": app_id,
        "charset": charset,
        "version": "1.0",
        "sign_type": "RSA2",
        "status": "execute_auth",
        "biz_content": dumps_compact(content),
    }


def alipay_signed(params: dict[str, str], *, charset: str = "utf-8") -> dict[str, str]:
    """Signed as Alipay signs: the sign content of the decoded values, in the form's charset,
    with the vectors' Alipay private key (``sign_type`` left out, one of the two rules)."""
    key = load_private_key(read_vector_file("keys/alipay_private_pkcs8.pem"))
    content = sign_content(params, exclude=("sign", "sign_type")).encode(charset)
    signature = key.sign(content, padding.PKCS1v15(), hashes.SHA256())
    return {**params, "sign": base64.b64encode(signature).decode("ascii")}


# --- raw reads of the local stack ---------------------------------------------------------------


def dynamodb(endpoint_url: str) -> DynamoDBClient:
    client: DynamoDBClient = boto3.client("dynamodb", region_name=REGION, endpoint_url=endpoint_url)
    return client


def scan_all(client: DynamoDBClient, table: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for page in client.get_paginator("scan").paginate(TableName=table, ConsistentRead=True):
        items.extend(page.get("Items", []))
    return sorted(items, key=lambda item: json.dumps(item, sort_keys=True, default=repr))


def state_item(client: DynamoDBClient, table: str, state: str) -> dict[str, Any] | None:
    nonce = state_payload(state)["n"]
    item = client.get_item(
        TableName=table, Key={"pk": {"S": f"STATE#{nonce}"}, "sk": {"S": "STATE"}}
    ).get("Item")
    return dict(item) if item else None


def raw_values(value: Any) -> list[str]:
    """Every string and binary value inside a DynamoDB item (binaries decoded leniently)."""
    found: list[str] = []
    if isinstance(value, Mapping):
        for inner in value.values():
            found.extend(raw_values(inner))
    elif isinstance(value, list | tuple):
        for inner in value:
            found.extend(raw_values(inner))
    elif isinstance(value, bytes | bytearray):
        found.append(bytes(value).decode("latin-1"))
    elif value is not None:
        found.append(str(value))
    return found


def windows(secret: str, size: int = 16) -> set[str]:
    """Every ``size``-character window of a secret's body (PEM armour and line breaks removed)."""
    body = "".join(line for line in secret.splitlines() if not line.startswith("-----"))
    return {body[i : i + size] for i in range(max(1, len(body) - size + 1))}


def emf_documents(stdout: str) -> list[dict[str, Any]]:
    """The CloudWatch embedded-metric-format documents printed on stdout."""
    documents: list[dict[str, Any]] = []
    for raw_line in stdout.splitlines():
        line = raw_line.strip()
        if not line.startswith("{"):
            continue
        try:
            document = json.loads(line)
        except ValueError:
            continue
        if isinstance(document, dict) and "_aws" in document:
            documents.append(document)
    return documents


def metric_values(documents: list[dict[str, Any]], name: str) -> list[tuple[dict[str, str], Any]]:
    """(dimensions, value) of every occurrence of metric ``name``."""
    found: list[tuple[dict[str, str], Any]] = []
    for document in documents:
        for directive in document["_aws"]["CloudWatchMetrics"]:
            names = {metric["Name"] for metric in directive["Metrics"]}
            if name in names:
                keys = [key for group in directive["Dimensions"] for key in group]
                found.append(({key: document[key] for key in keys}, document[name]))
    return found


def parked_messages(endpoint_url: str, queue_url: str, region: str) -> int:
    """Messages on the parking queue, visible or in flight."""
    sqs = boto3.client("sqs", region_name=region, endpoint_url=endpoint_url)
    attributes = sqs.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return sum(int(value) for value in attributes.values())


# --- the function under test ----------------------------------------------------------------------


@dataclass
class CallbackFunction:
    """The callback function in-process, the local stack (and the simulator) behind it."""

    module: ModuleType
    service: ServiceStack
    db: DynamoDBClient

    @classmethod
    def load(cls, service: ServiceStack) -> Self:
        # Imported once the environment is the template's: Powertools reads the service name and
        # the metrics namespace when the module is first imported, as in a Lambda cold start.
        module = importlib.import_module("callback_app")
        return cls(module=module, service=service, db=dynamodb(service.aws.endpoint_url))

    @property
    def handler(self) -> Handler:
        handler: Handler = self.module.lambda_handler
        return handler

    @property
    def store(self) -> TokenStore:
        return runtime().store

    @property
    def tokens_table(self) -> str:
        return self.service.aws.stack.tokens_table

    def call(self, event: dict[str, Any]) -> HttpResponse:
        return invoke(self.handler, event)

    def idempotency_records(self) -> list[dict[str, Any]]:
        return scan_all(self.db, self.service.aws.stack.idempotency_table)

    def snapshot(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Everything the service persisted: the tokens table and the idempotency records."""
        return scan_all(self.db, self.tokens_table), self.idempotency_records()

    def parked(self) -> int:
        stack = self.service.aws.stack
        return parked_messages(self.service.aws.endpoint_url, stack.parked_queue_url, REGION)


@contextmanager
def logs_to_stdout(module: ModuleType) -> Iterator[None]:
    """Point the handler module's Powertools log handler at the current ``sys.stdout`` (capsys'
    during a test's call phase). The handler keeps the stream it was created with, which may be
    an earlier test's."""
    handlers = [
        handler
        for handler in logging.getLogger(module.logger.name).handlers
        if isinstance(handler, logging.StreamHandler)
    ]
    assert handlers, "the Powertools logger has no stream handler"
    previous = [handler.stream for handler in handlers]
    for handler in handlers:
        handler.setStream(sys.stdout)
    try:
        yield
    finally:
        for handler, stream in zip(handlers, previous, strict=True):
            handler.setStream(sys.__stdout__ if getattr(stream, "closed", True) else stream)
