"""The local stack every section of the bench runs against, and the fresh interpreters it
measures in.

One :func:`bench_service` per run: the template's stack on moto's server, Alipay played by the
simulator, the callback behind the HTTP front (``appauth_dev.local_cmd.fronted_service``, as
``make demo`` runs it), all in this process on loopback. What is measured runs in its own
interpreter (:meth:`BenchService.run_worker`, :func:`run_probe`) with the function's environment,
as a Lambda container would: the handler never shares this process's interpreter lock with the
stand-ins for AWS and Alipay, and its peak memory is its own.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3

from appauth.alipay.models import TokenGrant
from appauth.envelope import TokenCipher
from appauth.policy import RefreshPolicy, due_shard
from appauth.runtime import runtime
from appauth.store import AUTH_SK, app_pk, epoch_ms, pair_fingerprint, sealed_to_item
from appauth_dev.load import grant_merchants
from appauth_dev.local_cmd import FrontedService, fronted_service
from appauth_dev.local_service import (
    FUNCTIONS,
    LOCAL_APP_ID,
    REGION,
    SSM_PREFIX,
    TEMPLATE_FUNCTIONS,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

REPO = Path(__file__).resolve().parents[1]
PROBE = Path(__file__).resolve().parent / "probe.py"
HANDLER_MODULES = FUNCTIONS  # function (its folder under functions/) -> its handler's module
# Not handed to the measuring interpreters. Bytecode is cached as Python does by default (the
# warm-up round writes it), whatever this shell says; --no-bytecode in bench.coldstart measures
# the other case. PYTHONPYCACHEPREFIX likewise: the caches next to the sources are the ones.
UNSET = frozenset({"PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX", "PYTHONSTARTUP"})
BATCH_WRITE_SIZE = 25  # DynamoDB's BatchWriteItem limit
MOTO_ACCOUNT = "123456789012"  # moto's default account (its STS answers it)


class WorkerError(RuntimeError):
    """A measuring interpreter failed: its last lines of stderr say why."""


class SeedingError(RuntimeError):
    """The store's item has changed in a way the fast seeding does not know."""


# --- the stand-ins' CPU ---------------------------------------------------------------------


class CpuMeter:
    """CPU seconds spent in moto's and the simulator's request handling (thread CPU time of each
    request's thread, so waiting for the lock or sleeping an injected latency is not counted)."""

    def __init__(self) -> None:
        self._seconds: defaultdict[str, float] = defaultdict(float)
        self._lock = threading.Lock()
        self._patched: list[tuple[Any, str, Any]] = []

    def meter(self, name: str, owner: Any, attribute: str) -> None:
        original = getattr(owner, attribute)
        seconds, lock = self._seconds, self._lock

        @functools.wraps(original)
        def metered(*args: Any, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return original(*args, **kwargs)
            finally:
                with lock:
                    seconds[name] += time.thread_time() - started

        setattr(owner, attribute, metered)
        self._patched.append((owner, attribute, original))

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self._seconds)

    def restore(self) -> None:
        for owner, attribute, original in reversed(self._patched):
            setattr(owner, attribute, original)
        self._patched.clear()


def cpu_since(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after.get(name, 0.0) - before.get(name, 0.0) for name in after}


class _TablesKept:
    """``copy`` as moto's DynamoDB models see it, but a whole table is not deep-copied."""

    def __init__(self, table_type: type) -> None:
        self._table_type = table_type

    def deepcopy(self, value: Any, memo: Any = None) -> Any:
        return value if isinstance(value, self._table_type) else copy.deepcopy(value, memo)


@contextmanager
def without_table_backups() -> Iterator[None]:
    """moto backs up every table a transaction names with a deep copy of the WHOLE table, twice
    for the layer's two-item transactions: at 10,000 merchants that copy, not the service, is
    what a rotation costs (the refresh section measures it). Real DynamoDB copies nothing. The
    rollback is lost; the layer's transactions cannot need it here (their conditional update
    comes first, the audit put has no condition)."""
    from moto.dynamodb import models  # noqa: PLC0415
    from moto.dynamodb.models.table import Table  # noqa: PLC0415

    namespace = vars(models)  # the module's globals: what its functions look ``copy`` up in
    original = namespace["copy"]
    namespace["copy"] = _TablesKept(Table)
    try:
        yield
    finally:
        namespace["copy"] = original


# moto's DynamoDB operations the layer and the seeding use: each made atomic below.
ATOMIC_OPERATIONS = (
    "get_item",
    "put_item",
    "update_item",
    "delete_item",
    "query",
    "transact_write_items",
    "batch_write_item",
)


@contextmanager
def dynamodb_semantics() -> Iterator[None]:
    """moto as DynamoDB behaves under concurrent callers: each operation atomic (moto checks a
    condition and then writes attribute by attribute, so two workers can both take one lease),
    and no whole-table copies (:func:`without_table_backups`). The refresh run's workers race
    for real on the client side, as tests/integration's ``atomic_moto`` has them do."""
    from moto.dynamodb.models import DynamoDBBackend  # noqa: PLC0415

    lock = threading.RLock()
    originals = {name: vars(DynamoDBBackend)[name] for name in ATOMIC_OPERATIONS}

    def atomic(operation: Any) -> Any:
        @functools.wraps(operation)
        def locked(*args: Any, **kwargs: Any) -> Any:
            with lock:
                return operation(*args, **kwargs)

        return locked

    for name, operation in originals.items():
        setattr(DynamoDBBackend, name, atomic(operation))
    try:
        with without_table_backups():
            yield
    finally:
        for name, operation in originals.items():
            setattr(DynamoDBBackend, name, operation)


# --- the service --------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedReport:
    merchants: int
    seconds: float
    batch_writes: int


@dataclass
class BenchService:
    fronted: FrontedService
    cpu: CpuMeter
    granted: list[str] = field(default_factory=list)

    @property
    def control(self) -> Any:
        return self.fronted.control

    @property
    def endpoint(self) -> str:
        return os.environ["AWS_ENDPOINT_URL"]

    def dynamodb(self) -> DynamoDBClient:
        client: DynamoDBClient = boto3.client(
            "dynamodb", region_name=REGION, endpoint_url=self.endpoint
        )
        return client

    def function_env(self, function: str, **environment: str) -> dict[str, str]:
        """The environment the template gives ``function`` (Globals and its own variables), the
        local endpoints, and the code where Lambda puts it: the layer, then the function."""
        simulator = self.fronted.service.simulator
        template_env = self.fronted.service.stack.environment(
            SSM_PREFIX,
            LOCAL_APP_ID,
            function=TEMPLATE_FUNCTIONS[function],
            AlipayGatewayUrl=simulator.gateway_url,
            AlipayV3Url=simulator.url,
            AlipayAuthUrl=simulator.url,
            CallbackUrl=self.fronted.callback_url,
        )
        paths = [str(REPO / "layers" / "signing"), str(REPO / "functions" / function)]
        inherited = {name: value for name, value in os.environ.items() if name not in UNSET}
        return {
            **inherited,
            **template_env,
            "PYTHONPATH": os.pathsep.join(paths),
            "PYTHONHASHSEED": "0",
            **environment,
        }

    def grant(self, count: int) -> list[str]:
        """``count`` merchants authorized through the start page, the consent page and the
        callback (one at a time), as a merchant would."""
        granted = grant_merchants(self.fronted, count)
        self.granted.extend(granted)
        return granted

    def make_due(self, auth_app_ids: Sequence[str]) -> None:
        """Their next rotation moved into the past: the schedule's next run takes them."""
        past = _epoch_seconds(datetime.now(UTC) - timedelta(minutes=1))
        client = self.dynamodb()
        for auth_app_id in auth_app_ids:
            client.update_item(
                TableName=runtime().settings.tokens_table,
                Key={"pk": {"S": app_pk(auth_app_id)}, "sk": {"S": AUTH_SK}},
                UpdateExpression="SET next_refresh_at = :past",
                ConditionExpression="attribute_exists(pk)",
                ExpressionAttributeValues={":past": {"N": past}},
            )

    def seed(self, count: int, *, due: bool) -> SeedReport:
        """``count`` granted merchants (``due``: all due now), fast: their pairs issued by the
        simulator (in process), sealed under the token key with moto's KMS called in process,
        and written with BatchWriteItem. Each item is a copy of one the real store wrote, with
        every per-merchant attribute set for its merchant."""
        started = time.perf_counter()
        grants = _simulator_grants(self.fronted, count)
        template = self._item_template(grants[0], grants[1])
        settings = runtime().settings
        cipher = TokenCipher(_InProcessKms(), settings.token_key_id)  # type: ignore[arg-type]
        policy = runtime().store.policy  # the same policy the store schedules by
        now = datetime.now(UTC)
        past = _epoch_seconds(now - timedelta(minutes=1))
        items = [
            _merchant_item(
                template, grant, cipher=cipher, policy=policy, now=now, due=past if due else None
            )
            for grant in grants
        ]
        batches = [
            items[start : start + BATCH_WRITE_SIZE]
            for start in range(0, len(items), BATCH_WRITE_SIZE)
        ]
        client = self.dynamodb()
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(
                pool.map(lambda batch: _batch_write(client, settings.tokens_table, batch), batches)
            )
        return SeedReport(count, time.perf_counter() - started, len(batches))

    def _item_template(self, first: TokenGrant, second: TokenGrant) -> dict[str, Any]:
        """Two merchants stored by the real store (``save_grant``) and read back raw: the first
        is the template, and what differs between them must be an attribute
        :func:`_merchant_item` sets (else the store changed: SeedingError names it)."""
        store = runtime().store
        client = self.dynamodb()
        raw = []
        for grant in (first, second):
            if not store.save_grant(grant, source="authorization").stored:
                raise SeedingError(f"the store refused merchant app {grant.auth_app_id}")
            raw.append(
                client.get_item(
                    TableName=runtime().settings.tokens_table,
                    Key={"pk": {"S": app_pk(grant.auth_app_id)}, "sk": {"S": AUTH_SK}},
                    ConsistentRead=True,
                )["Item"]
            )
        first_item, second_item = raw
        if set(first_item) != set(second_item):
            raise SeedingError("two merchants stored alike hold different attributes")
        differing = frozenset(name for name in first_item if first_item[name] != second_item[name])
        unknown = differing - PER_MERCHANT_ATTRIBUTES
        if unknown:
            raise SeedingError(
                f"the stored item has per-merchant attributes the bench does not set: "
                f"{', '.join(sorted(unknown))} (teach bench.service._merchant_item)"
            )
        return dict(first_item)


# Everything _merchant_item sets for its merchant, and the two timestamps of the write (the
# seeded items keep the template's: written at the same moment).
PER_MERCHANT_ATTRIBUTES = frozenset(
    {
        "pk",
        "auth_app_id",
        "user_id",
        "tokens",
        "pair_fingerprint",
        "due_shard",
        "next_refresh_at",
        "verify_at",
        "token_issued_at",
        "expires_at",
        "re_expires_at",
        "granted_at",
        "updated_at",
    }
)


class _InProcessKms:
    """GenerateDataKey on moto's KMS backend in this process (no HTTP): what the seeding seals
    with. The handlers decrypt through moto's API as usual."""

    def __init__(self) -> None:
        from moto.kms.models import kms_backends  # noqa: PLC0415

        self._backend = kms_backends[MOTO_ACCOUNT][REGION]

    def generate_data_key(
        self,
        *,
        KeyId: str,  # noqa: N803 (boto3's names)
        KeySpec: str,  # noqa: N803
        EncryptionContext: dict[str, str],  # noqa: N803
    ) -> dict[str, Any]:
        plaintext, blob, arn = self._backend.generate_data_key(
            key_id=KeyId, encryption_context=EncryptionContext, number_of_bytes=0, key_spec=KeySpec
        )
        return {"Plaintext": plaintext, "CiphertextBlob": blob, "KeyId": arn}


def _simulator_grants(fronted: FrontedService, count: int) -> list[TokenGrant]:
    """``count`` merchant apps authorized at the simulator (batch authorizations of 20, pairs
    issued at once), as the grants the exchange would have returned."""
    state = fronted.service.simulator.state
    now = datetime.now(UTC)
    grants: list[TokenGrant] = []
    while len(grants) < count:
        minted = state.mint_code(batch_size=min(20, count - len(grants)), issue=True)
        issued = state.issued_pairs(minted.app_auth_code)
        if issued is None:
            raise SeedingError("the simulator issued no pairs for a minted code")
        for pair in issued[0]:
            token = pair.as_token()
            grants.append(
                TokenGrant(
                    auth_app_id=pair.auth_app_id,
                    user_id=pair.user_id,
                    app_auth_token=pair.app_auth_token,
                    app_refresh_token=pair.app_refresh_token,
                    expires_in=int(token["expires_in"]),
                    re_expires_in=int(token["re_expires_in"]),
                    received_at=now,
                    answered_at=now,
                )
            )
    return grants


def _merchant_item(
    template: dict[str, Any],
    grant: TokenGrant,
    *,
    cipher: TokenCipher,
    policy: RefreshPolicy,
    now: datetime,
    due: str | None,
) -> dict[str, Any]:
    """The template item made this merchant's: its key, ids, sealed pair and schedule (``due``:
    the rotation's time, epoch seconds; None: the policy's for this grant)."""
    sealed = cipher.seal(grant.auth_app_id, grant.secrets())
    values: dict[str, Any] = {
        "pk": {"S": app_pk(grant.auth_app_id)},
        "auth_app_id": {"S": grant.auth_app_id},
        "user_id": {"S": grant.user_id or ""},
        "tokens": {"M": sealed_to_item(sealed)},
        "pair_fingerprint": {"S": pair_fingerprint(grant)},
        "due_shard": {"S": due_shard(grant.auth_app_id)},
        "next_refresh_at": {"N": due or _epoch_seconds(_next_refresh(policy, grant))},
        "verify_at": {"N": _epoch_seconds(policy.next_verify_at(grant.auth_app_id, now))},
        "token_issued_at": {"N": epoch_ms(grant.answered_at or grant.received_at)},
    }
    for name, moment in (("expires_at", grant.expires_at), ("re_expires_at", grant.re_expires_at)):
        if moment is not None:
            values[name] = {"N": _epoch_seconds(moment)}
    item = dict(template)
    item.update({name: value for name, value in values.items() if name in template})
    return item


def _epoch_seconds(moment: datetime) -> str:
    return str(int(moment.timestamp()))


def _next_refresh(policy: RefreshPolicy, grant: TokenGrant) -> datetime:
    return policy.next_refresh_at(grant.auth_app_id, grant.received_at, grant.re_expires_at)


def _batch_write(client: DynamoDBClient, table: str, items: list[dict[str, Any]]) -> None:
    requests: Any = [{"PutRequest": {"Item": item}} for item in items]
    for _ in range(10):
        answer = client.batch_write_item(RequestItems={table: requests})
        requests = answer.get("UnprocessedItems", {}).get(table)
        if not requests:
            return
    raise SeedingError("BatchWriteItem kept items unprocessed")


@contextmanager
def bench_service() -> Iterator[BenchService]:
    """The local stack, with the callback's grant notifications off (each authorization is one
    exchange and one stored pair, as in ``make demo``) and the stand-ins' CPU metered."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication  # noqa: PLC0415

    from appauth_dev.simulator.server import Handler  # noqa: PLC0415

    cpu = CpuMeter()
    cpu.meter("moto", DomainDispatcherApplication, "__call__")
    cpu.meter("simulator", Handler, "_dispatch")
    try:
        with fronted_service() as fronted:
            fronted.control.notification_settings(grant_notifications=False)
            yield BenchService(fronted, cpu)
    finally:
        cpu.restore()


# --- measuring interpreters --------------------------------------------------------------


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _measure_in(
    arguments: Sequence[str], result: Path, env: dict[str, str], *, timeout: float, what: str
) -> tuple[dict[str, Any], str]:
    """Run this interpreter with ``arguments`` (from the repository root, stdout discarded: the
    handler's logs and metrics); the JSON it wrote to ``result``, and its stderr."""
    completed = subprocess.run(  # noqa: S603 (our own interpreter, module and script)
        [sys.executable, *arguments],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=timeout,
        check=False,
    )
    if completed.returncode != 0 or not result.exists():
        raise WorkerError(f"{what} failed:\n{_tail(completed.stderr)}")
    data: dict[str, Any] = json.loads(result.read_text(encoding="utf-8"))
    return data, completed.stderr


def run_worker(
    scenario: str, env: dict[str, str], config: dict[str, Any], *, timeout: float
) -> dict[str, Any]:
    """``python -m bench.worker <scenario> <result file> <config file>`` in a fresh interpreter;
    its JSON result."""
    with tempfile.TemporaryDirectory(prefix="appauth-bench-") as folder:
        result, config_file = Path(folder) / "result.json", Path(folder) / "config.json"
        config_file.write_text(json.dumps(config), encoding="utf-8")
        arguments = ["-m", "bench.worker", scenario, str(result), str(config_file)]
        data, _ = _measure_in(arguments, result, env, timeout=timeout, what=f"worker {scenario}")
        return data


def run_probe(
    target: str,
    env: dict[str, str],
    event: Any = None,
    *,
    remaining_ms: int = 30_000,
    importtime: bool = False,
    timeout: float = 120,
) -> dict[str, Any]:
    """One cold start in a fresh interpreter (``bench/probe.py``): ``target`` imported (a
    handler module, or ``boto3`` alone) and, for a handler, ``event`` as its first invocation
    (``remaining_ms``: the function's timeout). With ``importtime`` the result also holds
    ``-X importtime``'s report (stderr)."""
    with tempfile.TemporaryDirectory(prefix="appauth-probe-") as folder:
        result = Path(folder) / "result.json"
        arguments = [str(PROBE), target, str(result)]
        if event is not None:
            invocation = Path(folder) / "invocation.json"
            invocation.write_text(
                json.dumps({"event": event, "remaining_ms": remaining_ms}), encoding="utf-8"
            )
            arguments.append(str(invocation))
        # -P: the script's folder (bench/) is not put on sys.path, as nothing of ours is in
        # Lambda's; -X importtime reports on stderr.
        flags = ["-P", *(["-X", "importtime"] if importtime else [])]
        data, stderr = _measure_in(
            [*flags, *arguments], result, env, timeout=timeout, what=f"probe {target}"
        )
        if importtime:
            data["importtime"] = stderr
        return data
