"""The operator's commands of ``appauth``: run the deployed service (or the local stack) from a
terminal.

``list``, ``show``, ``refresh``, ``revoke``, ``describe``, ``secrets put``, ``parked``,
``recover`` and ``authorize-url``. They act on a :class:`Target`: the resource names (from
``--stack NAME``'s CloudFormation outputs and parameters, or from flags and ``APPAUTH_*``
variables) and the clients that reach them (boto3, which honours ``AWS_ENDPOINT_URL``;
:func:`local_target` gives the local stack's, for tests). Reads go through the service's own
interfaces where it has one (the token query's ``list``/``describe``/``get_token``, the refresh
function's manual trigger) and through the layer's :class:`~appauth.store.TokenStore` for what
only the table holds (state, audit history, the due index, an operator revocation, a rescued
pair, an authorization link's one-time state).

Nothing here prints a token or key material, except ``show --reveal`` (after a warning on
stderr). Exit codes: 0 ok, 1 not found or refused, 2 usage or configuration, 3 AWS unavailable.

Developer-only: this module never ships in the Lambda layer.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import secrets as random_secrets
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    NoRegionError,
    ParamValidationError,
    PartialCredentialsError,
    ProfileNotFound,
)
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from appauth.alipay.aes import load_encrypt_key
from appauth.alipay.endpoints import ENVIRONMENTS, SANDBOX
from appauth.alipay.errors import AppAuthError, ConfigError
from appauth.alipay.ids import is_app_id
from appauth.alipay.keys import (
    load_certificate,
    load_private_key,
    load_public_key,
    root_certificate_sn,
)
from appauth.authorization import StartRequest, start_authorization
from appauth.authorize_url import authorization_url, parse_application_types
from appauth.envelope import TokenCipher
from appauth.errors import InvalidRequestError
from appauth.events import EventBridgePublisher
from appauth.lookup import listed_item as listed_row  # the token query's list row
from appauth.parking import RESCUE_FIELD, import_rescued
from appauth.secrets import MIN_STATE_SECRET_BYTES
from appauth.state import validate_merchant_ref
from appauth.store import (
    LISTED_STATUSES,
    STATUS_GRANTED,
    STATUS_NEEDS_REAUTH,
    STATUS_REVOKED,
    AuditEvent,
    StoredAuthorization,
    TokenStore,
)
from appauth_dev.stack import SECRET_NAMES, STANDARD_TIER_LIMIT

if TYPE_CHECKING:
    from appauth_dev.local_service import LocalService

EXIT_OK = 0
EXIT_REFUSED = 1  # not found, refused, not confirmed
EXIT_USAGE = 2  # usage or configuration (flags, target, credentials, permissions, bad keys)
EXIT_AWS = 3  # AWS (or the service behind it) unavailable: a retry may help
EXIT_INTERRUPTED = 130

REFRESH_CHUNK = 100  # the refresh function's manual trigger takes at most 100 ids
LIST_PAGE = 100  # the token query's largest list page
REVOKE_REASON = "operator"
SSM_PREFIX_PATTERN = re.compile(r"^/[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")
QUEUE_COUNTS = (
    "ApproximateNumberOfMessages",
    "ApproximateNumberOfMessagesNotVisible",
    "ApproximateNumberOfMessagesDelayed",
)
PEEK_VISIBILITY_SECONDS = 30  # DLQ messages listed are hidden this long at most (reset at once)
REDRIVE_VISIBILITY_SECONDS = 60
REVEAL_WARNING = (
    "appauth show: WARNING: --reveal prints this merchant's app_auth_token. Whoever sees this "
    "terminal, its scrollback or a log of it can call Alipay on the merchant's behalf until the "
    "token is rotated. Never paste it into a ticket or a chat."
)
# AWS error codes that mean AWS is busy or failing, not that our setup is wrong.
TRANSIENT_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "RequestThrottledException",
        "ProvisionedThroughputExceededException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalError",
        "InternalFailure",
        "InternalServerError",
        "InternalServiceError",
        "KMSInternalException",
        "ServiceException",
        "EC2ThrottledException",
    }
)
# The token query's error codes, as exit codes.
QUERY_EXIT = {
    "not_found": EXIT_REFUSED,
    "revoked": EXIT_REFUSED,
    "needs_reauth": EXIT_REFUSED,
    "method_not_authorized": EXIT_REFUSED,
    "bad_request": EXIT_USAGE,
    "misconfigured": EXIT_USAGE,
    "unavailable": EXIT_AWS,
}
# Refresh outcomes that mean the merchant was not refreshed because of what was asked.
REFRESH_REFUSED = ("not_found", "not_granted")


class OperatorError(Exception):
    """A command failed; ``exit_code`` says how (see the module docstring)."""

    exit_code = EXIT_REFUSED


class NotFoundError(OperatorError):
    exit_code = EXIT_REFUSED


class RefusedError(OperatorError):
    exit_code = EXIT_REFUSED


class UsageError(OperatorError):
    exit_code = EXIT_USAGE


class AwsUnavailableError(OperatorError):
    exit_code = EXIT_AWS


def _now() -> datetime:
    return datetime.now(UTC)


# --- the target ------------------------------------------------------------------------------


@dataclass(frozen=True)
class NameSource:
    """Where one resource name comes from: a flag, an ``APPAUTH_*`` variable, the stack."""

    key: str
    flag: str | None
    env: str | None
    stack_key: str | None  # a CloudFormation output or parameter of template.yaml
    what: str
    shared: bool = True  # a flag of every command (else only of the commands that need it)


NAME_SOURCES = (
    NameSource(
        "token_query_function",
        "--token-query-function",
        "APPAUTH_TOKEN_QUERY_FUNCTION",
        "TokenQueryFunctionName",
        "the token query function",
    ),
    NameSource(
        "refresh_function",
        "--refresh-function",
        "APPAUTH_REFRESH_FUNCTION",
        "RefreshFunctionName",
        "the refresh function",
    ),
    NameSource(
        "tokens_table",
        "--tokens-table",
        "APPAUTH_TOKENS_TABLE",
        "TokensTableName",
        "the tokens table",
    ),
    NameSource(
        "parked_queue_url",
        "--parked-queue-url",
        "APPAUTH_PARKED_QUEUE_URL",
        "ParkedGrantsQueueUrl",
        "the parking queue",
    ),
    NameSource(
        "dead_letter_queue_url",
        "--dead-letter-queue-url",
        "APPAUTH_DEAD_LETTER_QUEUE_URL",
        None,  # read from the parking queue's redrive policy
        "the parking queue's dead-letter queue",
    ),
    NameSource(
        "event_bus_name",
        "--event-bus-name",
        "APPAUTH_EVENT_BUS_NAME",
        "EventBusName",
        "the lifecycle events' bus",
    ),
    NameSource("ssm_prefix", "--prefix", "APPAUTH_SSM_PREFIX", "SsmPrefix", "the SSM prefix"),
    NameSource("signing_mode", None, None, "SigningMode", "the signing mode"),
    # What authorize-url builds a link from (its own flags).
    NameSource("app_id", "--app-id", "APPAUTH_APP_ID", "AppId", "the ISV's app id", False),
    NameSource(
        "redirect_uri",
        "--redirect-uri",
        "APPAUTH_REDIRECT_URI",
        "CallbackUrl",  # the CallbackUrl parameter when set (a custom domain), else the output
        "the redirect URI (the callback registered on the Alipay app)",
        False,
    ),
    NameSource(
        "auth_url",
        "--auth-url",
        "APPAUTH_AUTH_URL",
        "AlipayAuthUrl",  # empty: AlipayEnvironment's host
        "Alipay's authorization host",
        False,
    ),
    NameSource("alipay_environment", None, None, "AlipayEnvironment", "the Alipay environment"),
    NameSource(
        "start_page_url",
        "--start-page-url",
        "APPAUTH_START_PAGE_URL",
        "AuthorizeUrl",
        "the start page",
        False,
    ),
)
_SOURCES = {source.key: source for source in NAME_SOURCES}


@dataclass
class Target:
    """Where the commands act. ``names``: resource names given explicitly (flags, variables);
    ``stack``: a CloudFormation stack whose outputs and parameters fill in the rest, read on
    first need; ``client``: a boto3 client by service name (``lambda_client`` overrides the
    Lambda one, e.g. :class:`~appauth_dev.local_lambda.LocalLambdaClient`); ``clock``: now."""

    names: dict[str, str]
    client_factory: Callable[[str], Any]
    stack: str | None = None
    lambda_client: Any = None
    clock: Callable[[], datetime] = _now
    description: str = "AWS"
    _clients: dict[str, Any] = field(default_factory=dict, repr=False)
    _stack_values: dict[str, str] | None = field(default=None, repr=False)
    _stack_parameters: dict[str, str] = field(default_factory=dict, repr=False)

    def client(self, service: str) -> Any:
        if service == "lambda" and self.lambda_client is not None:
            return self.lambda_client
        if service not in self._clients:
            try:
                self._clients[service] = self.client_factory(service)
            except (BotoCoreError, ClientError) as error:
                raise aws_error(error, f"creating the {service} client") from None
        return self._clients[service]

    def optional(self, key: str) -> str | None:
        if key in self.names:
            return self.names[key]
        source = _SOURCES[key]
        if self.stack is None or source.stack_key is None:
            return None
        return self.stack_values().get(source.stack_key)

    def name(self, key: str) -> str:
        value = self.optional(key)
        if value:
            return value
        source = _SOURCES[key]
        if self.stack is not None and source.stack_key is not None:
            raise UsageError(
                f"stack {self.stack} has no output or parameter {source.stack_key} "
                f"({source.what}): is it deployed from this template? Or pass {source.flag}"
            )
        ways = ["--stack NAME (or APPAUTH_STACK)"]
        if source.flag:
            ways.append(source.flag)
        how = f"pass {' or '.join(ways)}"
        if source.env:
            how += f", or set {source.env}"
        raise UsageError(f"no name for {source.what}: {how}")

    def stack_values(self) -> dict[str, str]:
        """The stack's outputs and parameters (names differ in template.yaml), read once."""
        if self._stack_values is None:
            if self.stack is None:
                return {}
            try:
                stacks = self.client("cloudformation").describe_stacks(StackName=self.stack)
            except (BotoCoreError, ClientError) as error:
                raise aws_error(error, f"reading stack {self.stack}") from None
            found = stacks.get("Stacks") or []
            if not found:
                raise UsageError(f"stack {self.stack} does not exist")
            stack = found[0]
            parameters = {
                p["ParameterKey"]: p.get("ParameterValue", "")
                for p in stack.get("Parameters") or []
            }
            outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs") or []}
            self._stack_parameters = parameters
            self._stack_values = {**parameters, **outputs}
        return self._stack_values

    def stack_parameter(self, key: str) -> str | None:
        """A parameter of the stack, even where an output has the same name (``CallbackUrl``)."""
        self.stack_values()
        return self._stack_parameters.get(key) or None

    def overridden(self, args: argparse.Namespace) -> Target:
        """This target with the names given on the command line instead (a flag always wins)."""
        flags = {
            source.key: getattr(args, source.key)
            for source in NAME_SOURCES
            if source.flag and getattr(args, source.key, None)
        }
        if not flags:
            return self
        return replace(self, names={**self.names, **flags}, _clients=self._clients)

    def where(self) -> str:
        return f"stack {self.stack}" if self.stack else self.description

    def store(self, *, actor: str = "appauth-operator") -> tuple[TokenStore, EventBridgePublisher]:
        """The layer's store on the tokens table, publishing lifecycle events like the functions.
        Its cipher only ever opens (a rescued pair): the key is named by the sealed pair."""
        events = EventBridgePublisher(
            lambda: self.client("events"), self.optional("event_bus_name") or "default"
        )
        store = TokenStore(
            self.client("dynamodb"),
            self.name("tokens_table"),
            TokenCipher(self.client("kms"), "unused: the operator never seals"),
            actor=actor,
            clock=self.clock,
            events=events,
        )
        return store, events


def _client_config(service: str) -> Any:
    from botocore.config import Config  # noqa: PLC0415

    if service == "lambda":
        # The refresh function runs for up to 900 s; a retried invoke would run it twice.
        return Config(connect_timeout=5, read_timeout=960, retries={"total_max_attempts": 1})
    return Config(
        connect_timeout=5, read_timeout=30, retries={"mode": "standard", "max_attempts": 3}
    )


def aws_target(args: argparse.Namespace) -> Target:
    """The target from the command line: ``--stack``/``APPAUTH_STACK``, the name flags and
    their ``APPAUTH_*`` variables, ``--profile``/``--region``; boto3 reads ``AWS_ENDPOINT_URL``
    (and ``AWS_ENDPOINT_URL_<SERVICE>``) itself."""
    import boto3  # noqa: PLC0415

    names: dict[str, str] = {}
    for source in NAME_SOURCES:
        value = getattr(args, source.key, None) if source.flag else None
        if not value and source.env:
            value = os.environ.get(source.env)
        if value:
            names[source.key] = value
    try:
        session = boto3.session.Session(
            profile_name=getattr(args, "profile", None), region_name=getattr(args, "region", None)
        )
    except ProfileNotFound as error:
        raise UsageError(str(error)) from None
    stack = getattr(args, "stack", None) or os.environ.get("APPAUTH_STACK") or None
    endpoint = os.environ.get("AWS_ENDPOINT_URL")

    def client(service: str) -> Any:
        return session.client(service, config=_client_config(service))  # type: ignore[call-overload]

    return Target(
        names=names,
        client_factory=client,
        stack=stack,
        description=f"the endpoint {endpoint}" if endpoint else "AWS",
    )


def local_names(service: LocalService) -> dict[str, str]:
    """The local stack's names, by :data:`NAME_SOURCES` key (``appauth local`` prints them as
    the ``APPAUTH_*`` variables): the functions, the table, the queue, the SSM prefix, and what
    the start page builds links from (the app id, the simulator's host, ``CALLBACK_URL``)."""
    from appauth_dev.local_service import SSM_PREFIX  # noqa: PLC0415

    stack = service.stack
    names = {
        # LocalLambdaClient.for_service's names
        "token_query_function": "appauth-local-token_query",
        "refresh_function": "appauth-local-refresh",
        "tokens_table": stack.tokens_table,
        "parked_queue_url": stack.parked_queue_url,
        "ssm_prefix": SSM_PREFIX,
        "signing_mode": "key",
        "event_bus_name": os.environ.get("EVENT_BUS_NAME") or "default",
        "auth_url": service.simulator.url,
    }
    # What local_service gave the functions (the template's environment variables).
    for key, variable in (("app_id", "APP_ID"), ("redirect_uri", "CALLBACK_URL")):
        if os.environ.get(variable):
            names[key] = os.environ[variable]
    return names


def local_target(service: LocalService, *, lambda_client: Any = None) -> Target:
    """The local stack of :func:`appauth_dev.local_service.local_service`: its functions through
    a :class:`~appauth_dev.local_lambda.LocalLambdaClient` (in process), everything else through
    boto3 pointed at its moto server, its clock (moved with ``advance_clock``)."""
    import boto3  # noqa: PLC0415

    from appauth_dev.local_lambda import LocalLambdaClient  # noqa: PLC0415
    from appauth_dev.local_service import REGION  # noqa: PLC0415

    endpoint = os.environ["AWS_ENDPOINT_URL"]  # local_service points everything at moto

    def client(name: str) -> Any:
        return boto3.client(name, region_name=REGION, endpoint_url=endpoint)  # type: ignore[call-overload]

    return Target(
        names=local_names(service),
        client_factory=client,
        lambda_client=lambda_client or LocalLambdaClient.for_service(service),
        clock=service.clock.now,
        description=f"the local stack ({endpoint})",
    )


# --- errors ----------------------------------------------------------------------------------


def aws_error(error: BaseException, doing: str) -> OperatorError:
    """A botocore error as the operator's error: AWS busy or unreachable is 3, anything about
    our setup (credentials, permissions, a missing resource, a bad parameter) is 2."""
    if isinstance(error, ClientError):
        details = error.response.get("Error", {})
        code = str(details.get("Code") or "")
        message = str(details.get("Message") or "")
        status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        text = f"{doing}: {code}: {message}" if message else f"{doing}: {code}"
        if code in TRANSIENT_CODES or status >= 500:
            return AwsUnavailableError(text)
        return UsageError(text)
    if isinstance(
        error,
        (
            NoCredentialsError,
            PartialCredentialsError,
            NoRegionError,
            ProfileNotFound,
            ParamValidationError,
        ),
    ):
        return UsageError(f"{doing}: {error}")
    return AwsUnavailableError(f"{doing}: {error}")


@contextmanager
def _aws(doing: str) -> Iterator[None]:
    try:
        yield
    except (BotoCoreError, ClientError) as error:
        raise aws_error(error, doing) from None


def _app_id(value: str) -> str:
    if not is_app_id(value):
        raise UsageError(f"{value[:40]!r} is not an Alipay app id (digits only)")
    return value


# --- invoking the functions ------------------------------------------------------------------


def _invoke(target: Target, key: str, payload: Mapping[str, Any]) -> Any:
    function = target.name(key)
    with _aws(f"invoking {function}"):
        response = target.client("lambda").invoke(
            FunctionName=function,
            InvocationType="RequestResponse",
            Payload=json.dumps(payload).encode(),
        )
        body = response["Payload"].read()
    try:
        answer = json.loads(body or b"null")
    except ValueError:
        raise AwsUnavailableError(f"{function} answered something that is not JSON") from None
    if response.get("FunctionError"):
        detail = answer if isinstance(answer, dict) else {}
        raise AwsUnavailableError(
            f"{function} failed ({detail.get('errorType', response['FunctionError'])}: "
            f"{str(detail.get('errorMessage', ''))[:300]})"
        )
    return answer


def _query(target: Target, request: Mapping[str, Any]) -> dict[str, Any]:
    answer = _invoke(target, "token_query_function", request)
    if not isinstance(answer, dict) or "ok" not in answer:
        raise AwsUnavailableError("the token query function answered outside its contract")
    return answer


def _query_failure(answer: Mapping[str, Any]) -> OperatorError:
    error = answer.get("error") or {}
    code = str(error.get("code") or "unknown")
    message = f"token query: {code}: {error.get('message', '')}".rstrip(": ")
    failure = OperatorError(message)
    failure.exit_code = QUERY_EXIT.get(code, EXIT_AWS)
    return failure


# --- output ----------------------------------------------------------------------------------


def _console(stream: IO[str] | None = None) -> Console:
    stream = stream or sys.stdout
    # Piped output keeps every column (rich would squeeze tables to 80 characters).
    width = None if stream.isatty() or "COLUMNS" in os.environ else 160
    return Console(file=stream, width=width, markup=False, emoji=False, highlight=False)


def _json(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False, indent=2, default=str))


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat(timespec="seconds")


def _short(value: str | datetime | None) -> str:
    """A time as ``YYYY-MM-DD HH:MM`` (UTC), ``-`` when there is none."""
    if value is None or value == "":
        return "-"
    moment: datetime
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return value
    else:
        moment = value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def _text(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(item) for item in value) or "-"
    return str(value)


def _key_values(title: str, rows: Sequence[tuple[str, Any]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("field", style="bold", no_wrap=True)
    table.add_column("value", overflow="fold")
    for name, value in rows:
        table.add_row(name, _text(value))
    return table


def _emit(table: Table, console: Console | None = None) -> None:
    """A table, its title on a line before it and its caption after (rich would wrap both to
    the table's width)."""
    console = console or _console()
    title, caption = table.title, table.caption
    table.title = table.caption = None
    if title:
        console.print(title, style="bold")
    console.print(table)
    if caption:
        console.print(caption)


@contextmanager
def _progress(total: int, description: str, *, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr (stdout stays the command's output, JSON included)."""
    if not enabled:
        yield lambda _count: None
        return
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(file=sys.stderr),
    )
    with progress:
        task = progress.add_task(description, total=total)
        yield lambda count: progress.advance(task, count)


# --- list ------------------------------------------------------------------------------------


def _due_by(item: Mapping[str, Any], horizon: datetime) -> bool:
    value = item.get("next_refresh_at")
    if not value:
        return False
    moment = datetime.fromisoformat(str(value))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment <= horizon


def _listed(
    target: Target, status: str | None, horizon: datetime | None
) -> Iterator[dict[str, Any]]:
    """Every merchant app the token query lists (page by page, as read), filtered by ``horizon``."""
    cursor: str | None = None
    while True:
        request: dict[str, Any] = {"action": "list", "limit": LIST_PAGE}
        if status:
            request["status"] = status
        if cursor:
            request["cursor"] = cursor
        answer = _query(target, request)
        if not answer.get("ok"):
            raise _query_failure(answer)
        for item in answer.get("items", []):
            if horizon is None or _due_by(item, horizon):
                yield item
        cursor = answer.get("cursor")
        if not cursor:
            return


def _listed_due(target: Target, horizon: datetime) -> Iterator[dict[str, Any]]:
    """Granted merchants due by ``horizon``, from the table's sparse ``due`` index (the refresh
    run's own query: reads only what is due, never every merchant), in ``auth_app_id`` order
    as the token query lists them; each row read lazily and shown as the token query shows it."""
    store, _events = target.store()
    table = target.name("tokens_table")
    with _aws(f"querying the due index of {table}"):
        ids = sorted({auth_app_id for auth_app_id, _version in store.due(horizon)})
    for auth_app_id in ids:
        with _aws(f"reading merchant app {auth_app_id} in {table}"):
            stored = store.get(auth_app_id, consistent=False)
        # The index lags the table: the item may have been rotated or ended since.
        if (
            stored is None
            or stored.status != STATUS_GRANTED
            or stored.next_refresh_at is None
            or stored.next_refresh_at > horizon
        ):
            continue
        yield listed_row(stored)


def cmd_list(args: argparse.Namespace, target: Target) -> int:
    if args.due_within is not None and args.due_within < 0:
        raise UsageError("--due-within: must be 0 or more days")
    if args.limit is not None and args.limit < 1:
        raise UsageError("--limit: must be at least 1")
    # Only granted merchants are refreshed: "due within" means granted ones, unless told.
    status = args.status or (STATUS_GRANTED if args.due_within is not None else None)
    horizon = (
        target.clock() + timedelta(days=args.due_within) if args.due_within is not None else None
    )
    # Due within: the due index when the table is known (granted items only carry it), rather
    # than every merchant through the token query, filtered here.
    by_index = status == STATUS_GRANTED and bool(target.optional("tokens_table"))
    rows = (
        _listed_due(target, horizon)
        if horizon is not None and by_index
        else _listed(target, status, horizon)
    )
    items: list[dict[str, Any]] = []
    truncated = False
    for item in rows:
        if args.limit is not None and len(items) >= args.limit:
            truncated = True  # there is at least one more
            break
        items.append(item)
    if args.json:
        source = "due_index" if horizon is not None and by_index else "token_query"
        _json({"items": items, "count": len(items), "truncated": truncated, "source": source})
        return EXIT_OK
    what = f"status {status}" if status else "all statuses"
    if horizon is not None:
        what += f", next refresh by {_short(horizon)}"
        if by_index:
            what += ", from the due index"
    table = Table(title=f"Merchant apps ({what}) in {target.where()}", title_justify="left")
    for column in ("merchant app", "user", "status", "version", "next refresh (UTC)"):
        table.add_column(column, no_wrap=True)
    for column in ("token expires", "refresh token expires", "Alipay says", "reason"):
        table.add_column(column, overflow="fold")
    for item in items:
        table.add_row(
            _text(item.get("auth_app_id")),
            _text(item.get("user_id")),
            _text(item.get("status")),
            _text(item.get("version")),
            _short(item.get("next_refresh_at")),
            _short(item.get("expires_at")),
            _short(item.get("re_expires_at")),
            _text(item.get("alipay_status")),
            _text(item.get("status_reason")),
        )
    table.caption = f"{len(items)} merchant app(s)" + (
        " (more: raise --limit)" if truncated else ""
    )
    _emit(table, _console())
    return EXIT_OK


# --- show ------------------------------------------------------------------------------------


def _state(stored: StoredAuthorization) -> dict[str, Any]:
    """What the item holds, without the sealed pairs (not even their ciphertext)."""
    return {
        "auth_app_id": stored.auth_app_id,
        "user_id": stored.user_id,
        "merchant_ref": stored.merchant_ref,
        "status": stored.status,
        "status_reason": stored.status_reason,
        "version": stored.version,
        "has_sealed_pair": stored.sealed is not None,
        "token_issued_at": _iso(stored.token_issued_at),
        "expires_at": _iso(stored.expires_at),
        "re_expires_at": _iso(stored.re_expires_at),
        "next_refresh_at": _iso(stored.next_refresh_at),
        "granted_at": stored.granted_at,
        "updated_at": stored.updated_at,
        "refresh_failures": stored.refresh_failures,
        "reconcile_reason": stored.reconcile_reason,
        "lease_owner": stored.lease_owner,
        "lease_until": _iso(stored.lease_until),
        "alipay_status": stored.alipay_status,
        "auth_methods": list(stored.auth_methods) if stored.auth_methods is not None else None,
        "auth_start": stored.auth_start,
        "auth_end": stored.auth_end,
        "verified_at": _iso(stored.verified_at),
        "verify_at": _iso(stored.verify_at),
        "previous_issued_at": _iso(stored.previous_issued_at),
    }


def _lifecycle(stored: StoredAuthorization, now: datetime) -> dict[str, Any]:
    """Where the merchant stands in the lifecycle, in words."""
    notes: list[str] = []
    due = stored.next_refresh_at is not None and stored.next_refresh_at <= now
    leased = stored.leased_at(now)
    if stored.status == STATUS_GRANTED:
        summary = "granted: the token query hands out this merchant's token"
        if stored.next_refresh_at is not None:
            if due:
                notes.append("refresh due now: the next scheduled run rotates the pair")
            else:
                days = (stored.next_refresh_at - now).total_seconds() / 86400
                notes.append(
                    f"next refresh {_short(stored.next_refresh_at)} UTC (in {days:.1f} days)"
                )
        if leased:
            notes.append(
                f"a refresh run ({stored.lease_owner}) holds it until {_short(stored.lease_until)} UTC"
            )
        if stored.reconcile_reason:
            notes.append(
                f"awaiting reconciliation ({stored.reconcile_reason}): the next refresh run "
                "resends the refresh token and lets Alipay's answer decide"
            )
        if stored.refresh_failures:
            notes.append(
                f"{stored.refresh_failures} consecutive refresh failure(s): retried with backoff"
            )
        if stored.re_expires_at is not None and stored.re_expires_at <= now:
            notes.append("the refresh token has lapsed: the merchant must authorize again")
    elif stored.status == STATUS_NEEDS_REAUTH:
        summary = (
            "needs_reauth: Alipay confirmed the stored pair is dead; only the merchant can fix it, "
            "by authorizing again"
        )
    elif stored.status == STATUS_REVOKED:
        summary = (
            "revoked: the token is never handed out and never refreshed; only a new "
            "authorization grants it again"
        )
    else:
        summary = f"{stored.status}: a status this tool does not know"
    if stored.status_reason:
        notes.append(f"reason: {stored.status_reason}")
    return {
        "status": stored.status,
        "summary": summary,
        "notes": notes,
        "refresh_due": due,
        "leased": leased,
        "reconcile_pending": stored.reconcile_reason is not None,
    }


def _event(event: AuditEvent) -> dict[str, Any]:
    return {
        "at": event.at,
        "event": event.event,
        "actor": event.actor,
        "detail": dict(event.detail),
    }


def cmd_show(args: argparse.Namespace, target: Target) -> int:
    app = _app_id(args.auth_app_id)
    if args.events < 0:
        raise UsageError("--events: must be 0 (all) or more")
    store, _events = target.store()
    with _aws(f"reading merchant app {app}"):
        stored = store.get(app)
        if stored is None:
            raise NotFoundError(f"merchant app {app} is not in {target.name('tokens_table')}")
        history = store.events(app)
    lifecycle = _lifecycle(stored, target.clock())
    result: dict[str, Any] = {
        "authorization": _state(stored),
        "lifecycle": lifecycle,
        "events": [_event(event) for event in history],
    }
    failure: OperatorError | None = None
    token: str | None = None
    if args.reveal:
        print(REVEAL_WARNING, file=sys.stderr, flush=True)
        answer = _query(target, {"action": "get_token", "auth_app_id": app, "consistent": True})
        if answer.get("ok"):
            token = str(answer["app_auth_token"])
            result["app_auth_token"] = token
            result["token_version"] = answer.get("version")
        else:
            failure = _query_failure(answer)
            result["reveal_error"] = answer.get("error")
    if args.json:
        _json(result)
    else:
        console = _console()
        state = result["authorization"]
        _emit(_key_values(f"Merchant app {app} ({target.where()})", list(state.items())), console)
        console.print(f"Lifecycle: {lifecycle['summary']}")
        for note in lifecycle["notes"]:
            console.print(f"  - {note}")
        shown = history if args.events == 0 else history[-args.events :]
        table = Table(title="Audit history (oldest first)", title_justify="left")
        table.add_column("at (UTC)", no_wrap=True)
        table.add_column("event", no_wrap=True)
        table.add_column("actor", overflow="fold")
        table.add_column("detail", overflow="fold")
        for event in shown:
            detail = ", ".join(f"{k}={v}" for k, v in sorted(event.detail.items()) if v)
            table.add_row(_short(event.at), event.event, event.actor, detail or "-")
        if len(shown) < len(history):
            table.caption = f"the last {len(shown)} of {len(history)} events (--events 0: all)"
        _emit(table, console)
        if token is not None:
            console.print(f"app_auth_token (version {result.get('token_version')}): {token}")
    if failure is not None:
        raise OperatorError(f"token not revealed: {failure}") from None
    return EXIT_OK


# --- describe --------------------------------------------------------------------------------


DESCRIBE_FIELDS = (
    "auth_app_id",
    "user_id",
    "status",
    "version",
    "alipay_status",
    "auth_methods",
    "auth_start",
    "auth_end",
    "verified_at",
)


def cmd_describe(args: argparse.Namespace, target: Target) -> int:
    app = _app_id(args.auth_app_id)
    answer = _query(target, {"action": "describe", "auth_app_id": app})
    if args.json:
        _json(answer)
    else:
        rows = [(name, answer.get(name)) for name in DESCRIBE_FIELDS if name in answer]
        if answer.get("ok"):
            title = f"Merchant app {app}: what Alipay says now (alipay.open.auth.token.app.query)"
            _emit(_key_values(title, rows), _console())
        elif rows:
            _emit(_key_values(f"Merchant app {app}", rows), _console())
    if not answer.get("ok"):
        raise _query_failure(answer)
    return EXIT_OK


# --- refresh ---------------------------------------------------------------------------------


def _ids(args: argparse.Namespace) -> list[str]:
    ids = list(args.ids)
    if args.from_file:
        for line in _read_lines(args.from_file, "--from-file"):
            text = line.strip()
            if text and not text.startswith("#"):
                ids.append(text)
    bad = [value for value in ids if not is_app_id(value)]
    if bad:
        raise UsageError(
            f"not Alipay app ids (digits only): {', '.join(repr(b[:40]) for b in bad[:5])}"
            + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        )
    return list(dict.fromkeys(ids))


def _counts(answer: Mapping[str, Any]) -> dict[str, int]:
    return {
        name: value
        for name, value in answer.items()
        if isinstance(value, int) and not isinstance(value, bool)
    }


def _refresh_due(args: argparse.Namespace, target: Target) -> int:
    answer = _invoke(target, "refresh_function", {"due": True})
    if not isinstance(answer, dict) or "error" in answer:
        raise RefusedError(f"the refresh function refused the run: {_refusal(answer)}")
    if args.json:
        _json(answer)
    else:
        counts = " ".join(f"{name}={value}" for name, value in _counts(answer).items() if value)
        _console().print(
            f"scheduled run (due merchants, then the verification sweep): {counts or 'nothing due'}"
        )
    return EXIT_OK


def cmd_refresh(args: argparse.Namespace, target: Target) -> int:
    if args.due and (args.ids or args.from_file):
        raise UsageError("give merchant app ids (or --from-file) or --due, not both")
    if args.due:
        return _refresh_due(args, target)
    ids = _ids(args)
    if not ids:
        raise UsageError("give merchant app ids, --from-file FILE, or --due")
    chunks = [ids[start : start + REFRESH_CHUNK] for start in range(0, len(ids), REFRESH_CHUNK)]
    totals: Counter[str] = Counter()
    merchants: list[dict[str, str]] = []
    refusal: str | None = None
    with _progress(len(ids), "refreshing", enabled=len(chunks) > 1) as advance:
        for chunk in chunks:
            answer = _invoke(target, "refresh_function", {"auth_app_ids": chunk})
            if not isinstance(answer, dict) or "error" in answer:
                refusal = _refusal(answer)
                break
            totals.update(_counts(answer))
            merchants.extend(answer.get("merchants") or [])
            advance(len(chunk))
    outcomes = Counter(m.get("outcome", "?") for m in merchants)
    result = {
        "requested": len(ids),
        "invocations": len(chunks) if refusal is None else None,
        "counts": {name: value for name, value in totals.items() if value},
        "outcomes": dict(outcomes),
        "merchants": merchants,
        "refused": refusal,
    }
    if args.json:
        _json(result)
    else:
        table = Table(
            title=f"Refresh of {len(ids)} merchant app(s) in {target.where()}", title_justify="left"
        )
        table.add_column("merchant app", no_wrap=True)
        table.add_column("outcome", no_wrap=True)
        for merchant in merchants:
            table.add_row(merchant.get("auth_app_id", "?"), merchant.get("outcome", "?"))
        table.caption = " ".join(f"{name}={value}" for name, value in sorted(outcomes.items()))
        _emit(table, _console())
    if refusal is not None:
        raise RefusedError(f"the refresh function refused a batch: {refusal}")
    refused = [m["auth_app_id"] for m in merchants if m.get("outcome") in REFRESH_REFUSED]
    if refused:
        raise NotFoundError(
            f"{len(refused)} merchant app(s) not found or not granted: "
            + ", ".join(refused[:10])
            + (" …" if len(refused) > 10 else "")
        )
    return EXIT_OK


def _refusal(answer: Any) -> str:
    if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
        error = answer["error"]
        return f"{error.get('reason')}: {error.get('message')}"
    return "an answer outside the refresh function's contract"


# --- revoke ----------------------------------------------------------------------------------


def _actor() -> str:
    try:
        user = getpass.getuser()
    except (OSError, KeyError):
        user = "unknown"
    return f"operator:{user}"


def _confirm(question: str) -> bool:
    print(f"{question} [y/N] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline() if sys.stdin is not None else ""
    return answer.strip().lower() in ("y", "yes")


def cmd_revoke(args: argparse.Namespace, target: Target) -> int:
    app = _app_id(args.auth_app_id)
    actor = _actor()
    store, events = target.store(actor=actor)
    with _aws(f"reading merchant app {app}"):
        stored = store.get(app)
    if stored is None:
        raise NotFoundError(f"merchant app {app} is not in {target.name('tokens_table')}")
    if stored.status == STATUS_REVOKED:
        message = f"merchant app {app} is already revoked (version {stored.version}, reason {stored.status_reason}): nothing changed"
        if args.json:
            _json(
                {"auth_app_id": app, "revoked": True, "changed": False, "version": stored.version}
            )
        else:
            print(message)
        return EXIT_OK
    if not args.yes and not _confirm(
        f"Revoke merchant app {app} in {target.where()} (now {stored.status}, version "
        f"{stored.version})? The token query stops handing out its token and refreshes stop; "
        "Alipay keeps the authorization, and only a new authorization grants it here again."
    ):
        raise RefusedError(
            f"merchant app {app} not revoked: not confirmed (--yes skips the question)"
        )
    with _aws(f"revoking merchant app {app}"):
        changed = store.mark_revoked(app, cancelled_at=target.clock(), reason=REVOKE_REASON)
        after = store.get(app)
    if not changed or after is None:
        raise RefusedError(
            f"merchant app {app} not revoked: the item changed meanwhile (re-authorized?); "
            f"`appauth show {app}` says what it holds now"
        )
    published = events.failed == 0
    if args.json:
        _json(
            {
                "auth_app_id": app,
                "revoked": True,
                "changed": True,
                "version": after.version,
                "previous_status": stored.status,
                "audit_event": "authorization_revoked",
                "actor": actor,
                "reason": REVOKE_REASON,
                "event_published": published,
            }
        )
    else:
        print(
            f"revoked merchant app {app}: version {after.version}, audited as "
            f"authorization_revoked (reason {REVOKE_REASON}, actor {actor})"
        )
        print(
            "  token query containers may still serve a cached token for TokenCacheSeconds "
            "(30 s by default); the authorization at Alipay is unchanged"
        )
    if not published:
        print(
            f"appauth revoke: warning: the lifecycle event could not be published on "
            f"{target.optional('event_bus_name') or 'default'} (the revocation is stored)",
            file=sys.stderr,
        )
    return EXIT_OK


# --- secrets put -----------------------------------------------------------------------------


def _read_text(path: str, flag: str) -> str:
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise UsageError(f"{flag}: cannot read {path}: {error.strerror}") from None
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise UsageError(f"{flag}: {path} is not text ({len(data)} bytes)") from None


def _state_secret_bytes(value: str, where: str) -> bytes:
    """The state secret as the functions use it (``appauth.secrets.load_state_secret``)."""
    secret = value.strip().encode("utf-8")
    if len(secret) < MIN_STATE_SECRET_BYTES:
        raise UsageError(
            f"{where}: must be at least {MIN_STATE_SECRET_BYTES} random characters "
            "(e.g. `openssl rand -base64 48`)"
        )
    return secret


def _same_key(certificate: Any, private_key: Any) -> bool:
    public = certificate.public_key()
    numbers = getattr(public, "public_numbers", None)
    return numbers is not None and numbers() == private_key.public_key().public_numbers()


def _validated_secrets(args: argparse.Namespace, target: Target) -> dict[str, str]:
    """Every value read and parsed with the layer's own loaders before anything is written;
    a bad one is refused naming its option (never showing its content)."""
    values: dict[str, str] = {}
    private = _read_text(args.app_private_key, "--app-private-key")
    key = load_private_key(private, name="--app-private-key")
    values["app_private_key"] = private
    certificates = {
        "app_cert": args.app_cert,
        "alipay_cert": args.alipay_cert,
        "alipay_root_cert": args.alipay_root_cert,
    }
    given = [name for name, path in certificates.items() if path]
    if args.alipay_public_key and given:
        raise UsageError(
            "give --alipay-public-key (key mode) or the three certificates (cert mode), not both"
        )
    if given and len(given) != len(certificates):
        raise UsageError("cert mode needs --app-cert, --alipay-cert and --alipay-root-cert")
    if not args.alipay_public_key and not given:
        raise UsageError(
            "give --alipay-public-key FILE (key mode) or --app-cert, --alipay-cert and "
            "--alipay-root-cert (cert mode)"
        )
    mode = "cert" if given else "key"
    stack_mode = target.optional("signing_mode")
    if stack_mode and stack_mode != mode:
        raise UsageError(
            f"the stack's SigningMode is {stack_mode}, but these are {mode} mode secrets"
        )
    if mode == "key":
        public = _read_text(args.alipay_public_key, "--alipay-public-key")
        load_public_key(public, name="--alipay-public-key")
        values["alipay_public_key"] = public
    else:
        app_cert = _read_text(args.app_cert, "--app-cert")
        if not _same_key(load_certificate(app_cert, name="--app-cert"), key):
            raise UsageError("--app-cert: is not the certificate of the --app-private-key key")
        alipay_cert = _read_text(args.alipay_cert, "--alipay-cert")
        load_certificate(alipay_cert, name="--alipay-cert")
        load_public_key(alipay_cert, name="--alipay-cert")
        root = _read_text(args.alipay_root_cert, "--alipay-root-cert")
        root_certificate_sn(root, name="--alipay-root-cert")
        values.update(app_cert=app_cert, alipay_cert=alipay_cert, alipay_root_cert=root)
    if args.encrypt_key:
        encrypt_key = _read_text(args.encrypt_key, "--encrypt-key")
        load_encrypt_key(encrypt_key, name="--encrypt-key")
        values["encrypt_key"] = encrypt_key
    if args.state_secret and args.new_state_secret:
        raise UsageError("give --state-secret FILE or --new-state-secret, not both")
    if args.state_secret:
        secret = _read_text(args.state_secret, "--state-secret")
        _state_secret_bytes(secret, "--state-secret")
        values["state_secret"] = secret
    elif args.new_state_secret:
        values["state_secret"] = random_secrets.token_urlsafe(48)
    return values


def cmd_secrets_put(args: argparse.Namespace, target: Target) -> int:
    values = _validated_secrets(args, target)
    prefix = target.name("ssm_prefix").rstrip("/")
    if not SSM_PREFIX_PATTERN.fullmatch(prefix):
        raise UsageError(
            f"--prefix: {prefix[:80]!r} must start with '/' and hold letters, digits, '_', '.', '-'"
        )
    ssm = target.client("ssm")
    if "state_secret" not in values:
        name = f"{prefix}/{SECRET_NAMES['state_secret']}"
        try:
            ssm.get_parameter(Name=name, WithDecryption=False)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") != "ParameterNotFound":
                raise aws_error(error, f"checking {name}") from None
            raise UsageError(
                f"{name} does not exist yet: pass --new-state-secret (or --state-secret FILE)"
            ) from None
        except BotoCoreError as error:
            raise aws_error(error, f"checking {name}") from None
    written: list[dict[str, str]] = []
    for argument, value in values.items():
        name = f"{prefix}/{SECRET_NAMES[argument]}"
        tier = "Advanced" if len(value.encode()) > STANDARD_TIER_LIMIT else "Standard"
        request: dict[str, Any] = {
            "Name": name,
            "Value": value,
            "Type": "SecureString",
            "Overwrite": True,
            "Tier": tier,
        }
        if args.kms_key_id:
            request["KeyId"] = args.kms_key_id
        try:
            ssm.put_parameter(**request)
        except (BotoCoreError, ClientError) as error:
            done = ", ".join(entry["name"] for entry in written) or "none"
            raise aws_error(error, f"writing {name} (written before it: {done})") from None
        written.append({"name": name, "type": "SecureString", "tier": tier})
    if args.json:
        _json({"prefix": prefix, "written": written})
    else:
        table = Table(title=f"SSM parameters written under {prefix}", title_justify="left")
        table.add_column("parameter", no_wrap=True)
        table.add_column("type", no_wrap=True)
        table.add_column("tier", no_wrap=True)
        for entry in written:
            table.add_row(entry["name"], entry["type"], entry["tier"])
        table.caption = (
            "validated with the layer's key parsing; the functions read them within "
            "POWERTOOLS_PARAMETERS_MAX_AGE"
        )
        _emit(table, _console())
    return EXIT_OK


# --- parked ----------------------------------------------------------------------------------


def _dead_letter_url(target: Target, sqs: Any, queue_url: str) -> str | None:
    explicit = target.optional("dead_letter_queue_url")
    if explicit:
        return explicit
    with _aws("reading the parking queue's redrive policy"):
        attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["RedrivePolicy"])
    policy = attributes.get("Attributes", {}).get("RedrivePolicy")
    if not policy:
        return None
    arn = str(json.loads(policy).get("deadLetterTargetArn", ""))
    parts = arn.split(":")
    if len(parts) < 6:
        return None
    with _aws(f"finding the dead-letter queue {parts[5]}"):
        url: str = sqs.get_queue_url(QueueName=parts[5], QueueOwnerAWSAccountId=parts[4])[
            "QueueUrl"
        ]
    return url


def _queue_counts(sqs: Any, url: str) -> dict[str, Any]:
    with _aws(f"reading {url}"):
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=list(QUEUE_COUNTS))
    values = attributes.get("Attributes", {})
    return {
        "url": url,
        "visible": int(values.get("ApproximateNumberOfMessages", 0)),
        "in_flight": int(values.get("ApproximateNumberOfMessagesNotVisible", 0)),
        "delayed": int(values.get("ApproximateNumberOfMessagesDelayed", 0)),
    }


def _millis(value: Any) -> str | None:
    try:
        return _iso(datetime.fromtimestamp(int(value) / 1000, UTC))
    except (TypeError, ValueError):
        return None


def _metadata(message: Mapping[str, Any]) -> dict[str, Any]:
    """What a parked message is about, never what it carries: its body holds the pair (sealed,
    or plaintext when KMS refused too), so only named, harmless fields are taken from it."""
    attributes = message.get("Attributes") or {}
    entry: dict[str, Any] = {
        "message_id": message.get("MessageId"),
        "sent_at": _millis(attributes.get("SentTimestamp")),
        "receive_count": int(attributes.get("ApproximateReceiveCount", 0) or 0),
    }
    try:
        body = json.loads(message.get("Body") or "")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return {**entry, "readable": False}
    grant: dict[str, Any] = body["grant"] if isinstance(body.get("grant"), dict) else {}
    return {
        **entry,
        "readable": True,
        "kind": body.get("kind"),
        "auth_app_id": grant.get("auth_app_id"),
        "user_id": grant.get("user_id"),
        "merchant_ref": body.get("merchant_ref"),
        "source": body.get("source"),
        "reason": body.get("reason"),
        "received_at": grant.get("received_at"),
        "pair": "sealed" if "sealed" in grant else ("plaintext" if "tokens" in grant else "none"),
    }


def _receive(sqs: Any, url: str, visibility: int) -> list[dict[str, Any]]:
    response = sqs.receive_message(
        QueueUrl=url,
        MaxNumberOfMessages=10,
        WaitTimeSeconds=0,
        VisibilityTimeout=visibility,
        MessageSystemAttributeNames=["All"],
    )
    messages: list[dict[str, Any]] = response.get("Messages", [])
    return messages


def _peek(sqs: Any, url: str, limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` messages' metadata, each made visible again right after."""
    seen: dict[str, dict[str, Any]] = {}
    handles: list[str] = []
    with _aws(f"listing {url}"):
        try:
            while len(seen) < limit:
                messages = _receive(sqs, url, PEEK_VISIBILITY_SECONDS)
                fresh = [m for m in messages if m["MessageId"] not in seen]
                handles.extend(m["ReceiptHandle"] for m in messages)
                if not fresh:
                    break
                for message in fresh[: limit - len(seen)]:
                    seen[message["MessageId"]] = _metadata(message)
        finally:
            for start in range(0, len(handles), 10):
                batch = handles[start : start + 10]
                sqs.change_message_visibility_batch(
                    QueueUrl=url,
                    Entries=[
                        {"Id": str(index), "ReceiptHandle": handle, "VisibilityTimeout": 0}
                        for index, handle in enumerate(batch)
                    ],
                )
    return list(seen.values())


def _redrive(
    sqs: Any, source: str, destination: str, total: int
) -> tuple[list[dict[str, Any]], int]:
    """Move every message from ``source`` (the DLQ) to ``destination`` (the parking queue):
    sent first, deleted only once sent, so a failure leaves it where it was (a duplicate is
    harmless: the store's fences ignore a pair it already has)."""
    moved: list[dict[str, Any]] = []
    failed = 0
    with _progress(total, "redriving", enabled=total > 10) as advance, _aws("redriving"):
        while True:
            messages = _receive(sqs, source, REDRIVE_VISIBILITY_SECONDS)
            if not messages:
                break
            sent = sqs.send_message_batch(
                QueueUrl=destination,
                Entries=[
                    {"Id": str(index), "MessageBody": message["Body"]}
                    for index, message in enumerate(messages)
                ],
            )
            ok = {entry["Id"] for entry in sent.get("Successful", [])}
            failed += len(messages) - len(ok)
            done = [(index, m) for index, m in enumerate(messages) if str(index) in ok]
            if done:
                sqs.delete_message_batch(
                    QueueUrl=source,
                    Entries=[
                        {"Id": str(index), "ReceiptHandle": message["ReceiptHandle"]}
                        for index, message in done
                    ],
                )
            moved.extend(_metadata(message) for _, message in done)
            advance(len(done))
            if not done:
                break  # the parking queue refuses: stop rather than spin
    return moved, failed


def cmd_parked(args: argparse.Namespace, target: Target) -> int:
    if args.max < 0:
        raise UsageError("--max: must be 0 or more")
    sqs = target.client("sqs")
    parked_url = target.name("parked_queue_url")
    dead_url = _dead_letter_url(target, sqs, parked_url)
    if dead_url is None:
        raise UsageError(
            "the parking queue has no dead-letter queue (RedrivePolicy): pass --dead-letter-queue-url"
        )
    result: dict[str, Any] = {
        "parked": _queue_counts(sqs, parked_url),
        "dead_letter": _queue_counts(sqs, dead_url),
    }
    failed = 0
    if args.redrive:
        moved, failed = _redrive(sqs, dead_url, parked_url, result["dead_letter"]["visible"])
        result["redriven"] = len(moved)
        result["redrive_failed"] = failed
        result["messages"] = moved
        result["after"] = {
            "parked": _queue_counts(sqs, parked_url),
            "dead_letter": _queue_counts(sqs, dead_url),
        }
    else:
        result["messages"] = _peek(sqs, dead_url, args.max) if args.max else []
    if args.json:
        _json(result)
    else:
        _print_parked(result, target)
    if failed:
        raise AwsUnavailableError(
            f"{failed} message(s) could not be sent to the parking queue: they stay on the dead-letter queue"
        )
    return EXIT_OK


def _print_parked(result: Mapping[str, Any], target: Target) -> None:
    console = _console()
    counts = Table(title=f"Parking queues in {target.where()}", title_justify="left")
    for column in ("queue", "visible", "in flight", "delayed", "url"):
        counts.add_column(column, no_wrap=column != "url", overflow="fold")
    for label, key in (("parking queue", "parked"), ("dead-letter queue", "dead_letter")):
        entry = result[key]
        counts.add_row(
            label,
            str(entry["visible"]),
            str(entry["in_flight"]),
            str(entry["delayed"]),
            entry["url"],
        )
    if "after" in result:
        for label, key in (
            ("parking queue (after)", "parked"),
            ("dead-letter queue (after)", "dead_letter"),
        ):
            entry = result["after"][key]
            counts.add_row(
                label,
                str(entry["visible"]),
                str(entry["in_flight"]),
                str(entry["delayed"]),
                entry["url"],
            )
        counts.caption = (
            f"redriven {result['redriven']} message(s) to the parking queue; the refresh "
            "function's event source stores them"
        )
    else:
        counts.caption = (
            "the parking queue is drained by the refresh function's event source (its messages "
            "are not read here); --redrive moves the dead-letter queue back to it"
        )
    _emit(counts, console)
    messages = result.get("messages") or []
    if messages:
        title = "Redriven messages" if "after" in result else "Dead-letter messages (metadata only)"
        table = Table(title=title, title_justify="left")
        for column in (
            "merchant app",
            "source",
            "reason",
            "pair",
            "received (UTC)",
            "sent (UTC)",
            "receives",
            "message id",
        ):
            table.add_column(column, overflow="fold")
        for message in messages:
            table.add_row(
                _text(message.get("auth_app_id")),
                _text(message.get("source")),
                _text(message.get("reason")),
                _text(message.get("pair") if message.get("readable") else "unreadable body"),
                _short(message.get("received_at")),
                _short(message.get("sent_at")),
                _text(message.get("receive_count")),
                _text(message.get("message_id")),
            )
        _emit(table, console)


# --- recover ---------------------------------------------------------------------------------


def _read_lines(path: str, flag: str) -> list[str]:
    if path == "-":
        return sys.stdin.read().splitlines()
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as error:
        raise UsageError(f"{flag}: cannot read {path}: {error.strerror}") from None


def _rescue_record(line: str) -> Mapping[str, Any]:
    """The JSON object of a log line that holds the last-resort field: the line itself (the
    function's JSON log), or after a prefix (``aws logs tail``: time and stream first), or a
    ``message`` string inside it (an export that wraps each log event)."""
    decoder = json.JSONDecoder()
    start = line.find("{")
    while start != -1:
        try:
            value, _end = decoder.raw_decode(line, start)
        except ValueError:
            start = line.find("{", start + 1)
            continue
        if isinstance(value, dict):
            if RESCUE_FIELD in value:
                return value
            message = value.get("message")
            if isinstance(message, str) and RESCUE_FIELD in message:
                return _rescue_record(message)
        start = line.find("{", start + 1)
    raise ValueError(f"mentions {RESCUE_FIELD} but holds no JSON object with it")


def cmd_recover(args: argparse.Namespace, target: Target) -> int:
    lines = _read_lines(args.from_logs, "--from-logs")
    store, events = target.store(actor=_actor())
    results: list[dict[str, Any]] = []
    for number, line in enumerate(lines, start=1):
        if RESCUE_FIELD not in line:
            continue
        try:
            record = _rescue_record(line)
            with _aws(f"line {number}: re-importing"):
                saved = import_rescued(record, store)
        except (AppAuthError, ValueError) as error:
            results.append(
                {"line": number, "auth_app_id": None, "stored": False, "error": str(error)}
            )
            continue
        results.append(
            {
                "line": number,
                "auth_app_id": saved.auth_app_id,
                "stored": saved.stored,
                "version": saved.version,
                "error": None,
            }
        )
    if not results:
        raise NotFoundError(f"no line of {args.from_logs} holds the {RESCUE_FIELD} field")
    errors = [result for result in results if result["error"]]
    if args.json:
        _json(
            {
                "results": results,
                "stored": sum(1 for r in results if r["stored"]),
                "errors": len(errors),
            }
        )
    else:
        table = Table(title=f"Rescued pairs from {args.from_logs}", title_justify="left")
        table.add_column("line", no_wrap=True)
        table.add_column("merchant app", no_wrap=True)
        table.add_column("result", overflow="fold")
        for result in results:
            if result["error"]:
                outcome = f"error: {result['error']}"
            elif result["stored"]:
                outcome = f"stored as version {result['version']}"
            else:
                outcome = (
                    "not stored: a newer pair or a later cancellation is stored (nothing changed)"
                )
            table.add_row(str(result["line"]), _text(result["auth_app_id"]), outcome)
        _emit(table, _console())
    if events.failed:
        print(
            "appauth recover: warning: some lifecycle events could not be published",
            file=sys.stderr,
        )
    if errors:
        raise RefusedError(
            f"{len(errors)} of {len(results)} rescued line(s) could not be re-imported"
        )
    return EXIT_OK


# --- authorize-url ---------------------------------------------------------------------------

STATE_TTL_SECONDS = 1800  # the callback's own default (STATE_TTL_SECONDS, appauth.config)
MIN_STATE_TTL_SECONDS = 60
MAX_STATE_TTL_SECONDS = 7 * 86400
QR_ERROR_LEVEL = "m"  # as the start page draws it
QR_QUIET_ZONE = 4  # light modules around the code, as ISO/IEC 18004 asks
QR_FILE_SCALE = 8  # pixels (SVG units) per module
QR_FORMATS = ("svg", "png")
# Black on white whatever the terminal's theme (segno's own terminal output takes the theme's
# colours: the code comes out inverted on a light background).
QR_TERMINAL_COLOURS = "\x1b[30;107m"
QR_TERMINAL_RESET = "\x1b[0m"
QR_HALF_BLOCKS = {(0, 0): " ", (1, 0): "\u2580", (0, 1): "\u2584", (1, 1): "\u2588"}
# With --start-page the stack's start page mints the link: these would be ignored.
MINTING_FLAGS = (
    ("sandbox", "--sandbox"),
    ("environment", "--environment"),
    ("auth_url", "--auth-url"),
    ("app_id", "--app-id"),
    ("redirect_uri", "--redirect-uri"),
    ("state_secret", "--state-secret"),
    ("expires_in", "--expires-in"),
    ("ssm_prefix", "--prefix"),
)


def _http_url(value: str, what: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise UsageError(f"{what}: {value[:100]!r} is not an absolute http(s) URL")
    return value


def _qr_destination(value: str | None) -> tuple[str, str] | None:
    """(path, format) of ``--qr``, checked before anything is recorded; ``-`` is the terminal."""
    if value is None:
        return None
    if value == "-":
        return value, "terminal"
    kind = Path(value).suffix.lower().lstrip(".")
    if kind not in QR_FORMATS:
        raise UsageError(f"--qr: {value!r} must end in .svg or .png (or be '-' for the terminal)")
    if not Path(value).parent.is_dir():
        raise UsageError(f"--qr: {Path(value).parent} is not a directory")
    return value, kind


def _draw_qr(code: Any, out: IO[str]) -> None:
    """The code in half blocks (two module rows a line), dark modules black on white."""
    rows = [list(row) for row in code.matrix_iter(scale=1, border=QR_QUIET_ZONE)]
    if len(rows) % 2:
        rows.append([0] * len(rows[0]))
    for top, bottom in zip(rows[0::2], rows[1::2], strict=True):
        line = "".join(QR_HALF_BLOCKS[bool(t), bool(b)] for t, b in zip(top, bottom, strict=True))
        out.write(f"{QR_TERMINAL_COLOURS}{line}{QR_TERMINAL_RESET}\n")


def _write_qr(url: str, destination: tuple[str, str]) -> dict[str, str]:
    import segno  # noqa: PLC0415  (only this command draws QR codes)

    path, kind = destination
    code = segno.make(url, error=QR_ERROR_LEVEL, micro=False)
    if kind == "terminal":
        encoding = getattr(sys.stdout, "encoding", None) or "utf-8"
        try:
            "".join(QR_HALF_BLOCKS.values()).encode(encoding)
        except (UnicodeEncodeError, LookupError):
            raise UsageError(
                f"--qr -: this terminal ({encoding}) cannot show the block characters of a QR "
                "code: write --qr FILE.svg or FILE.png instead"
            ) from None
        _draw_qr(code, sys.stdout)
    else:
        try:
            code.save(path, kind=kind, scale=QR_FILE_SCALE, border=QR_QUIET_ZONE)
        except OSError as error:
            raise UsageError(f"--qr: cannot write {path}: {error.strerror}") from None
    return {"path": path, "format": kind, "version": str(code.version)}


def _auth_base_url(args: argparse.Namespace, target: Target) -> str:
    """Alipay's authorization host: a flag, ``APPAUTH_AUTH_URL``, the stack's ``AlipayAuthUrl``
    or its ``AlipayEnvironment``'s host; production (as ``appauth api``) when nothing says."""
    if args.sandbox:
        return SANDBOX.auth_base_url
    if args.environment:
        return ENVIRONMENTS[args.environment].auth_base_url
    explicit = target.names.get("auth_url")
    if explicit:
        return _http_url(explicit, "--auth-url (or APPAUTH_AUTH_URL)").rstrip("/")
    if target.stack is not None:
        configured = target.stack_parameter("AlipayAuthUrl")
        if configured:
            return configured.rstrip("/")
        environment = target.optional("alipay_environment")
        if environment not in ENVIRONMENTS:
            raise UsageError(
                f"stack {target.stack} has no AlipayEnvironment parameter (production or "
                "sandbox): pass --sandbox, --environment or --auth-url"
            )
        return ENVIRONMENTS[str(environment)].auth_base_url
    return ENVIRONMENTS["production"].auth_base_url


def _state_secret(args: argparse.Namespace, target: Target) -> bytes:
    """The secret the callback verifies states with: ``--state-secret FILE``, or SSM's."""
    if args.state_secret:
        return _state_secret_bytes(
            _read_text(args.state_secret, "--state-secret"), "--state-secret"
        )
    name = f"{target.name('ssm_prefix').rstrip('/')}/{SECRET_NAMES['state_secret']}"
    try:
        answer = target.client("ssm").get_parameter(Name=name, WithDecryption=True)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "ParameterNotFound":
            raise UsageError(
                f"{name} does not exist: the service has no state secret yet "
                "(`appauth secrets put ... --new-state-secret`)"
            ) from None
        raise aws_error(error, f"reading {name}") from None
    except BotoCoreError as error:
        raise aws_error(error, f"reading {name}") from None
    return _state_secret_bytes(str(answer["Parameter"]["Value"]), name)


def _minted_link(
    args: argparse.Namespace, target: Target, merchant_ref: str | None, types: tuple[str, ...]
) -> dict[str, Any]:
    """A direct Alipay link, minted as the start page mints it (the layer's
    ``start_authorization``): a state signed with the state secret whose one-time nonce is
    recorded in the tokens table; without that record the callback refuses the state."""
    app_id = target.name("app_id")
    if not is_app_id(app_id):
        raise UsageError(f"--app-id: {app_id[:40]!r} is not an Alipay app id (digits only)")
    # A CallbackUrl parameter (custom domain) is what the callback gives Alipay; else the output.
    redirect_uri = (
        target.names.get("redirect_uri")
        or target.stack_parameter("CallbackUrl")
        or target.name("redirect_uri")
    )
    auth_base_url = _auth_base_url(args, target)
    ttl = STATE_TTL_SECONDS if args.expires_in is None else args.expires_in
    if not MIN_STATE_TTL_SECONDS <= ttl <= MAX_STATE_TTL_SECONDS:
        raise UsageError(
            f"--expires-in: must be {MIN_STATE_TTL_SECONDS} to {MAX_STATE_TTL_SECONDS} seconds"
        )
    try:  # the layer's own checks, before a nonce is recorded for a link that cannot be built
        authorization_url(auth_base_url, app_id, redirect_uri, "", batch=args.batch)
    except InvalidRequestError as error:
        raise UsageError(f"--redirect-uri: {error} (got {redirect_uri[:100]!r})") from None
    store, _events = target.store()
    secret = _state_secret(args, target)
    request = StartRequest(
        redirect_uri=redirect_uri,
        merchant_ref=merchant_ref,
        batch=args.batch,
        application_types=types,
    )
    with _aws(f"recording the link's one-time state in {target.name('tokens_table')}"):
        result = start_authorization(
            request,
            app_id=app_id,
            auth_base_url=auth_base_url,
            store=store,
            state_secret=secret,
            state_ttl_seconds=ttl,
            now=int(target.clock().timestamp()),
        )
    return {
        "url": result.url,
        "kind": "authorization",
        "batch": result.batch,
        "application_types": list(types) if result.batch else None,
        "merchant_ref": result.merchant_ref,
        "app_id": app_id,
        "redirect_uri": redirect_uri,
        "auth_base_url": auth_base_url,
        "expires_at": _iso(datetime.fromtimestamp(result.expires_at, UTC)),
        "single_use": True,
    }


def _start_page_link(
    args: argparse.Namespace, target: Target, merchant_ref: str | None, types: tuple[str, ...]
) -> dict[str, Any]:
    """The stack's start page with the same choices: each visit mints a fresh link."""
    for attribute, flag in MINTING_FLAGS:
        if getattr(args, attribute) not in (None, False):
            raise UsageError(
                f"{flag}: the start page mints each link with the stack's own app id, hosts and "
                "state secret; drop it, or drop --start-page"
            )
    base = _http_url(target.name("start_page_url"), "--start-page-url")
    query: dict[str, str] = {}
    if merchant_ref:
        query["merchant_ref"] = merchant_ref
    if args.batch:
        query["batch"] = "1"
        query["application_type"] = ",".join(types)
    if args.redirect:
        query["redirect"] = "1"
    separator = "&" if urlsplit(base).query else "?"
    url = f"{base}{separator}{urlencode(query, safe=',')}" if query else base
    return {
        "url": url,
        "kind": "start_page",
        "batch": args.batch,
        "application_types": list(types) if args.batch else None,
        "merchant_ref": merchant_ref,
        "app_id": None,
        "redirect_uri": None,
        "auth_base_url": None,
        "expires_at": None,
        "single_use": False,
    }


def _link_choices(
    args: argparse.Namespace,
) -> tuple[str | None, tuple[str, ...], tuple[str, str] | None]:
    """merchant_ref, application types and QR destination, refused before anything is read."""
    qr = _qr_destination(args.qr)
    if qr is not None and qr[1] == "terminal" and args.json:
        raise UsageError(
            "--qr - draws in the terminal, not in JSON: write --qr FILE.svg or FILE.png"
        )
    if args.start_page_url and not args.start_page:
        raise UsageError("--start-page-url: is the start page's URL: add --start-page")
    if args.redirect and not args.start_page:
        raise UsageError(
            "--redirect: is a start page option (a 302 straight to Alipay): add --start-page"
        )
    if args.application_type and not args.batch:
        raise UsageError("--application-type: is for a batch authorization: add --batch")
    try:
        merchant_ref = validate_merchant_ref(args.merchant_ref)
    except InvalidRequestError as error:
        raise UsageError(f"--merchant-ref: {error}") from None
    try:
        types = parse_application_types(args.application_type)
    except InvalidRequestError as error:
        raise UsageError(f"--application-type: {error}") from None
    return merchant_ref, types, qr


def _describe_link(link: Mapping[str, Any]) -> str:
    kind = f"batch ({', '.join(link['application_types'])})" if link["batch"] else "single"
    if link["kind"] == "start_page":
        note = (
            f"the start page ({kind}): each visit mints a fresh one-time Alipay link, so this "
            "link does not expire"
        )
    else:
        note = (
            f"a one-time Alipay link ({kind}) for app {link['app_id']}: valid for one "
            f"authorization until {_short(link['expires_at'])} UTC; Alipay sends the merchant "
            f"back to {link['redirect_uri']}"
        )
    if link["merchant_ref"]:
        note += f"; merchant_ref {link['merchant_ref']}"
    return note


def cmd_authorize_url(args: argparse.Namespace, target: Target) -> int:
    merchant_ref, types, qr = _link_choices(args)
    if args.start_page:
        link = _start_page_link(args, target, merchant_ref, types)
    else:
        link = _minted_link(args, target, merchant_ref, types)
    if args.json:
        link["qr"] = _write_qr(link["url"], qr) if qr else None
        _json(link)
        return EXIT_OK
    drawn = _write_qr(link["url"], qr) if qr and qr[1] != "terminal" else None
    print(link["url"], flush=True)
    if qr and qr[1] == "terminal":
        drawn = _write_qr(link["url"], qr)  # under the link
    print(f"appauth authorize-url: {_describe_link(link)}", file=sys.stderr)
    if drawn is not None and drawn["format"] != "terminal":
        print(
            f"appauth authorize-url: QR code ({drawn['format'].upper()}, version "
            f"{drawn['version']}) written to {drawn['path']}",
            file=sys.stderr,
        )
    return EXIT_OK


# --- wiring ----------------------------------------------------------------------------------


Command = Callable[[argparse.Namespace, Target], int]


def _target_options() -> argparse.ArgumentParser:
    """The options every operator command takes: where it acts, and --json."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group(
        "target (flags win over APPAUTH_* variables, which win over --stack)"
    )
    group.add_argument(
        "--stack",
        metavar="NAME",
        help="read the names from this CloudFormation stack's outputs (or APPAUTH_STACK)",
    )
    group.add_argument("--region", help="AWS region (default: the AWS configuration's)")
    group.add_argument("--profile", help="AWS profile (default: the AWS configuration's)")
    for source in NAME_SOURCES:
        if source.flag and source.shared and source.key != "ssm_prefix":
            group.add_argument(
                source.flag,
                dest=source.key,
                metavar="NAME" if "url" not in source.key else "URL",
                help=f"{source.what} (or {source.env})",
            )
    parent.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return parent


def _handler(command: Command) -> Callable[[argparse.Namespace], int]:
    def handle(args: argparse.Namespace) -> int:
        return execute(command, args)

    return handle


def execute(command: Command, args: argparse.Namespace, target: Target | None = None) -> int:
    """Run one command; every failure is one line on stderr and its exit code."""
    name = " ".join(part for part in (args.command, getattr(args, "subcommand", None)) if part)
    try:
        return command(args, target.overridden(args) if target else aws_target(args))
    except OperatorError as error:
        print(f"appauth {name}: {error}", file=sys.stderr)
        return error.exit_code
    except ConfigError as error:  # the layer's key parsing names the option
        print(f"appauth {name}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (BotoCoreError, ClientError) as error:
        failure = aws_error(error, name)
        print(f"appauth {name}: {failure}", file=sys.stderr)
        return failure.exit_code
    except KeyboardInterrupt:
        print(f"\nappauth {name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the operator's commands to ``appauth``'s subcommands."""
    common = _target_options()

    def add(
        name: str, command: Command, help_text: str, description: str | None = None
    ) -> argparse.ArgumentParser:
        parser = subparsers.add_parser(
            name, parents=[common], help=help_text, description=description or help_text
        )
        parser.set_defaults(handler=_handler(command), operator_command=command)
        return parser

    listing = add("list", cmd_list, "list merchant apps (the token query's list; never a token)")
    listing.add_argument("--status", choices=LISTED_STATUSES, help="only this status")
    listing.add_argument(
        "--due-within",
        type=float,
        metavar="DAYS",
        help="only granted merchants whose next refresh is within DAYS days",
    )
    listing.add_argument("--limit", type=int, metavar="N", help="at most N rows (default: all)")

    show = add(
        "show",
        cmd_show,
        "a merchant app's state, lifecycle and audit history (never the token unless --reveal)",
    )
    show.add_argument("auth_app_id", metavar="ID")
    show.add_argument(
        "--events",
        type=int,
        default=20,
        metavar="N",
        help="the last N audit events (default 20; 0: all; --json: all)",
    )
    show.add_argument(
        "--reveal",
        action="store_true",
        help="also print the app_auth_token (from the token query), after a warning on stderr",
    )

    refresh = add(
        "refresh",
        cmd_refresh,
        "refresh merchant apps now (the refresh function's manual trigger), or run the schedule's job",
        'Invokes the refresh function with {"auth_app_ids": [...]} in batches of 100 (due or not), or {"due": true} with --due.',
    )
    refresh.add_argument("ids", nargs="*", metavar="ID", help="merchant app ids")
    refresh.add_argument("--from-file", metavar="FILE", help="more ids, one a line ('-': stdin)")
    refresh.add_argument(
        "--due",
        action="store_true",
        help="run the schedule's job: every due merchant, then the verification sweep",
    )

    revoke = add(
        "revoke", cmd_revoke, "mark a merchant app revoked here (reason operator, audited)"
    )
    revoke.add_argument("auth_app_id", metavar="ID")
    revoke.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    describe = add(
        "describe",
        cmd_describe,
        "what Alipay says about a merchant app now (the token query's describe)",
    )
    describe.add_argument("auth_app_id", metavar="ID")

    secrets_parser = subparsers.add_parser(
        "secrets", help="the service's secrets in SSM Parameter Store"
    )
    secrets_commands = secrets_parser.add_subparsers(dest="subcommand", required=True)
    put = secrets_commands.add_parser(
        "put",
        parents=[common],
        help="validate key/cert files, then write them as SecureString parameters",
        description="Validates every file with the layer's key parsing first (nothing is written if one is bad), then writes <prefix>/app-private-key, alipay-public-key or app-cert/alipay-cert/alipay-root-cert, encrypt-key, state-secret as SecureString. Never prints key material.",
    )
    put.set_defaults(handler=_handler(cmd_secrets_put), operator_command=cmd_secrets_put)
    put.add_argument(
        "--app-private-key",
        required=True,
        metavar="FILE",
        help="the app private key (PEM or the key tool's base64 line)",
    )
    put.add_argument("--alipay-public-key", metavar="FILE", help="Alipay public key (key mode)")
    put.add_argument("--app-cert", metavar="FILE", help="app public-key certificate (cert mode)")
    put.add_argument(
        "--alipay-cert", metavar="FILE", help="Alipay public-key certificate (cert mode)"
    )
    put.add_argument(
        "--alipay-root-cert", metavar="FILE", help="Alipay root certificate bundle (cert mode)"
    )
    put.add_argument("--encrypt-key", metavar="FILE", help="the AES key (base64) from the console")
    put.add_argument(
        "--state-secret", metavar="FILE", help="the state HMAC secret (at least 32 characters)"
    )
    put.add_argument(
        "--new-state-secret",
        action="store_true",
        help="generate a new state secret (open authorization links stop working)",
    )
    put.add_argument(
        "--prefix",
        dest="ssm_prefix",
        metavar="PREFIX",
        help="SSM path, e.g. /appauth/prod (or APPAUTH_SSM_PREFIX, or the stack's SsmPrefix)",
    )
    put.add_argument(
        "--kms-key-id", metavar="KEY", help="KMS key for the SecureStrings (default aws/ssm)"
    )

    parked = add(
        "parked",
        cmd_parked,
        "the parking queue and its dead-letter queue: counts, messages (never a token), redrive",
    )
    parked.add_argument(
        "--redrive",
        action="store_true",
        help="move every dead-letter message back to the parking queue",
    )
    parked.add_argument(
        "--max",
        type=int,
        default=20,
        metavar="N",
        help="list at most N dead-letter messages (default 20)",
    )

    _add_authorize_url(add)

    recover = add(
        "recover",
        cmd_recover,
        "re-import sealed pairs that the last-resort path logged (appauth_rescue)",
    )
    recover.add_argument(
        "--from-logs",
        required=True,
        metavar="FILE",
        help="log lines ('-': stdin); lines without appauth_rescue are skipped",
    )


def _add_authorize_url(add: Callable[..., argparse.ArgumentParser]) -> None:
    authorize = add(
        "authorize-url",
        cmd_authorize_url,
        "print a merchant authorization link (single, batch, sandbox), optionally as a QR code",
        "Mints a one-time Alipay authorization link the way the start page does: a state "
        "signed with the service's state secret (SSM <prefix>/state-secret, or --state-secret "
        "FILE), its nonce recorded in the tokens table, for the stack's AppId, CallbackUrl and "
        "Alipay host. It works once, for --expires-in seconds. --start-page prints the stack's "
        "start page instead, which mints a fresh link at each visit (for a link or QR code that "
        "stays up). The link goes to stdout; what it is, to stderr.",
    )
    authorize.add_argument(
        "--merchant-ref",
        metavar="REF",
        help="your id for the merchant (1-64 of A-Z a-z 0-9 _ . : @ -): stored with the grant",
    )
    authorize.add_argument(
        "--batch",
        action="store_true",
        help="a batch authorization: the merchant picks several of its apps",
    )
    authorize.add_argument(
        "--application-type",
        metavar="TYPES",
        help="with --batch: comma-separated TINYAPP, WEBAPP, MOBILEAPP, PUBLICAPP, ARAPP "
        "(default TINYAPP,WEBAPP)",
    )
    hosts = authorize.add_mutually_exclusive_group()
    hosts.add_argument(
        "--sandbox", action="store_true", help=f"Alipay's sandbox ({SANDBOX.auth_base_url})"
    )
    hosts.add_argument(
        "--environment",
        choices=sorted(ENVIRONMENTS),
        help="a real Alipay's authorization host",
    )
    hosts.add_argument(
        "--auth-url",
        dest="auth_url",
        metavar="URL",
        help="another authorization host, e.g. the simulator's (or APPAUTH_AUTH_URL). Default: "
        "the stack's AlipayAuthUrl or AlipayEnvironment, else production",
    )
    authorize.add_argument(
        "--app-id",
        dest="app_id",
        metavar="ID",
        help="the ISV's app id (or APPAUTH_APP_ID; default: the stack's AppId)",
    )
    authorize.add_argument(
        "--redirect-uri",
        dest="redirect_uri",
        metavar="URL",
        help="where Alipay sends the merchant back, exactly the app's 授权回调地址 (or "
        "APPAUTH_REDIRECT_URI; default: the stack's CallbackUrl)",
    )
    authorize.add_argument(
        "--state-secret",
        metavar="FILE",
        help="the state secret, if not read from SSM (it must be the one the callback uses)",
    )
    authorize.add_argument(
        "--prefix",
        dest="ssm_prefix",
        metavar="PREFIX",
        help="SSM path of the state secret (or APPAUTH_SSM_PREFIX, or the stack's SsmPrefix)",
    )
    authorize.add_argument(
        "--expires-in",
        type=int,
        metavar="SECONDS",
        help=f"how long the link works (default {STATE_TTL_SECONDS}, as the start page's; "
        f"{MIN_STATE_TTL_SECONDS} to {MAX_STATE_TTL_SECONDS})",
    )
    authorize.add_argument(
        "--start-page",
        action="store_true",
        help="print the stack's start page (its AuthorizeUrl output) instead of minting a link",
    )
    authorize.add_argument(
        "--start-page-url",
        dest="start_page_url",
        metavar="URL",
        help="with --start-page: the start page's URL (or APPAUTH_START_PAGE_URL)",
    )
    authorize.add_argument(
        "--redirect",
        action="store_true",
        help="with --start-page: the page answers a 302 straight to Alipay (redirect=1)",
    )
    authorize.add_argument(
        "--qr",
        metavar="FILE.svg|FILE.png|-",
        help="also a QR code of the link: an SVG or PNG file, or '-' to draw it in the terminal",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="appauth", description="Alipay app authorization: operator commands."
    )
    register(parser.add_subparsers(dest="command", required=True))
    return parser


def main(argv: Sequence[str] | None = None, *, target: Target | None = None) -> int:
    """The operator commands alone (``appauth`` wires them in with :func:`register`); tests pass
    a ``target`` (:func:`local_target`)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # argparse: --help (0) or a usage error (2)
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else EXIT_USAGE
    return execute(args.operator_command, args, target)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
