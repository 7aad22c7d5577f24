"""The local AWS for integration tests: moto's server on loopback and the stack from template.yaml.

- ``moto_endpoint`` (session): one ThreadedMotoServer on 127.0.0.1, a free port.
- ``aws_env`` (function): points boto3 at it with fake credentials (never a real account) and
  resets moto's state, so every test starts from nothing.
- ``local_stack`` (function): the template's tables, KMS keys and queue, the SSM secrets of the
  test vectors' ISV app, and the functions' environment applied to ``os.environ``.
"""

from __future__ import annotations

import copy
import json
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest
import requests
from aws_lambda_powertools.utilities import parameters
from moto.dynamodb import models as dynamodb_models
from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.table import Table as DynamoDBTable

from appauth.runtime import reset_runtime
from appauth_dev.simulator import RunningSimulator
from appauth_dev.stack import (
    DEFAULT_TEMPLATE,
    LocalStack,
    create_local_stack,
    put_secrets,
    start_moto_server,
)
from tests.conftest import read_vector_file

if TYPE_CHECKING:
    from mypy_boto3_ssm import SSMClient

REGION = "us-east-1"
SSM_PREFIX = "/appauth/test"


@dataclass(frozen=True)
class LocalStackEnv:
    """What ``local_stack`` yields: the stack, the environment it set, and the secrets it wrote."""

    stack: LocalStack
    env: dict[str, str]
    endpoint_url: str
    ssm_prefix: str
    app_id: str
    state_secret: str
    parameter_names: list[str]


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    server, url = start_moto_server()
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture
def aws_env(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """boto3 -> moto with fake credentials; a clean moto for this test. Returns the endpoint."""
    for name in (
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_ROLE_ARN",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    # No shared config or credentials file can leak a real profile or endpoint in.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config-absent"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials-absent"))
    requests.post(f"{moto_endpoint}/moto-api/reset", timeout=10).raise_for_status()
    parameters.clear_caches()  # type: ignore[no-untyped-call]  # Powertools caches values per process
    reset_runtime()  # boto3 clients, settings and credentials cached by an earlier test
    return moto_endpoint


@pytest.fixture
def local_stack(
    aws_env: str, vectors: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> Iterator[LocalStackEnv]:
    stack = create_local_stack(template=DEFAULT_TEMPLATE, region=REGION, endpoint_url=aws_env)
    keys = vectors["keys"]
    state_secret = secrets.token_urlsafe(32)
    ssm: SSMClient = boto3.client("ssm", region_name=REGION, endpoint_url=aws_env)
    names = put_secrets(
        ssm,
        SSM_PREFIX,
        app_private_key=read_vector_file(keys["app_private"]),
        alipay_public_key=read_vector_file(keys["alipay_public"]),
        state_secret=state_secret,
    )
    env = stack.environment(SSM_PREFIX, vectors["app_id"])
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    yield LocalStackEnv(
        stack=stack,
        env=env,
        endpoint_url=aws_env,
        ssm_prefix=SSM_PREFIX,
        app_id=vectors["app_id"],
        state_secret=state_secret,
        parameter_names=names,
    )
    parameters.clear_caches()  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class ServiceStack:
    """The whole service locally: the stack on moto, its secrets, and Alipay played by the simulator."""

    aws: LocalStackEnv
    simulator: RunningSimulator


@pytest.fixture
def service(
    local_stack: LocalStackEnv, simulator: RunningSimulator, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ServiceStack]:
    """Functions configured exactly as the template configures them, with Alipay's hosts pointed at
    the simulator; every cached client, setting and secret is rebuilt for this test."""
    overrides = local_stack.stack.environment(
        local_stack.ssm_prefix,
        local_stack.app_id,
        AlipayGatewayUrl=simulator.gateway_url,
        AlipayV3Url=simulator.url,
        AlipayAuthUrl=simulator.url,
    )
    for name, value in overrides.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    monkeypatch.setenv("POWERTOOLS_DEV", "false")
    reset_runtime()
    yield ServiceStack(aws=local_stack, simulator=simulator)
    reset_runtime()


@dataclass
class EventCapture:
    """Lifecycle events as EventBridge delivered them: a rule on the bus the functions publish
    to, targeting an SQS queue this fixture reads."""

    sqs: Any
    queue_url: str

    def read(self) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        while True:
            messages = self.sqs.receive_message(
                QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
            ).get("Messages", [])
            if not messages:
                return events
            for message in messages:
                events.append(json.loads(message["Body"]))
                self.sqs.delete_message(
                    QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"]
                )


@pytest.fixture
def lifecycle_events(local_stack: LocalStackEnv) -> EventCapture:
    sqs = boto3.client("sqs", region_name=REGION, endpoint_url=local_stack.endpoint_url)
    events = boto3.client("events", region_name=REGION, endpoint_url=local_stack.endpoint_url)
    queue_url = sqs.create_queue(QueueName="lifecycle-events")["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    bus = local_stack.env["EVENT_BUS_NAME"]
    events.put_rule(
        Name="appauth-lifecycle", EventBusName=bus, EventPattern=json.dumps({"source": ["appauth"]})
    )
    events.put_targets(
        Rule="appauth-lifecycle", EventBusName=bus, Targets=[{"Id": "queue", "Arn": arn}]
    )
    return EventCapture(sqs, queue_url)


@pytest.fixture
def atomic_moto(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make moto's DynamoDB operations atomic, as DynamoDB's are.

    moto applies an update attribute by attribute with no lock, and a failed transaction restores
    a deep copy of the whole table taken before it started, wiping writes other threads made
    meanwhile. Real DynamoDB checks a condition and writes an item atomically (transactions are
    serializable), so concurrency tests serialize moto's operations on the server side (moto runs
    in this process); the clients still race for real.
    """
    lock = threading.RLock()
    for name in (
        "get_item",
        "put_item",
        "update_item",
        "delete_item",
        "query",
    ):
        original = getattr(DynamoDBBackend, name)

        def locked(self: Any, *args: Any, __original: Any = original, **kwargs: Any) -> Any:
            with lock:
                return __original(self, *args, **kwargs)

        monkeypatch.setattr(DynamoDBBackend, name, locked)
    # moto backs up every table a transaction touches with a deep copy of the WHOLE table: with
    # hundreds of merchants that copy is most of a test's time. Under the lock the same rollback
    # needs only the items the transaction names, so back those up instead.
    monkeypatch.setattr(dynamodb_models, "copy", _TableCopySkipper())
    transact = DynamoDBBackend.transact_write_items

    def atomic_transact(self: Any, transact_items: list[dict[str, Any]]) -> None:
        with lock:
            saved = [_item_backup(self, entry) for entry in transact_items]
            try:
                transact(self, transact_items)
            except Exception:
                for table_name, key, item in saved:
                    self.delete_item(table_name, key)
                    if item is not None:
                        self.put_item(table_name, item)
                raise

    monkeypatch.setattr(DynamoDBBackend, "transact_write_items", atomic_transact)


class _TableCopySkipper:
    """``copy`` as moto's DynamoDB models see it: a Table is not copied (atomic_moto restores the
    items a failed transaction touched); everything else is."""

    def deepcopy(self, value: Any, memo: Any = None) -> Any:
        if isinstance(value, DynamoDBTable):
            return value
        return copy.deepcopy(value, memo)


def _item_backup(backend: Any, entry: dict[str, Any]) -> tuple[str, dict[str, Any], Any]:
    (op,) = entry.values()
    table_name = op["TableName"]
    if "Key" in op:
        key = op["Key"]
    else:
        table = backend.get_table(table_name)
        names = [table.hash_key_attr] + ([table.range_key_attr] if table.range_key_attr else [])
        key = {name: op["Item"][name] for name in names}
    current = backend.get_item(table_name, key)
    return (
        table_name,
        key,
        None if current is None else copy.deepcopy(current.to_json()["Attributes"]),
    )
