"""TokenClient and MerchantClient (appauth.callers) against a fake token query function that
answers per the contract, served in-process by appauth_dev.local_lambda.LocalLambdaClient."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from botocore.exceptions import (
    ClientError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from appauth.alipay.client import AlipayClient, V3Response
from appauth.alipay.errors import AlipayError
from appauth.callers import (
    BACKOFF_MAX_SECONDS,
    AppAuthorization,
    AuthorizationSummary,
    BadRequestError,
    MerchantClient,
    MerchantMustReauthorizeError,
    MerchantToken,
    MethodNotAuthorizedError,
    MisconfiguredError,
    NeedsReauthError,
    NotFoundError,
    RevokedError,
    TokenClient,
    TokenServiceError,
    UnavailableError,
)
from appauth_dev.local_lambda import LocalLambdaClient

FUNCTION = "appauth-token-query"
APP = "2021000100000001"
OTHER_APP = "2021000100000002"
USER = "2088000000000001"
TOKEN_1 = "202501BBsecretTOKENone0001"
TOKEN_2 = "202501BBsecretTOKENtwo0002"
ALL_TOKENS = ("secretTOKEN",)


# --- a fake token query function (the contract) --------------------------------------------


@dataclass
class App:
    auth_app_id: str
    token: str
    version: int = 1
    status: str = "granted"
    user_id: str = USER
    auth_methods: list[str] | None = None
    # What Alipay says about the current token when it is reported: dead -> this status.
    dead_status: str | None = None


@dataclass
class FakeTokenService:
    apps: dict[str, App] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    # Answers (or exceptions) served before the fake's own logic, one per invoke.
    script: list[Any] = field(default_factory=list)

    def add(self, auth_app_id: str = APP, token: str = TOKEN_1, **kw: Any) -> App:
        app = App(auth_app_id, token, **kw)
        self.apps[auth_app_id] = app
        return app

    def rotate(self, auth_app_id: str = APP, token: str = TOKEN_2) -> App:
        app = self.apps[auth_app_id]
        app.token, app.version = token, app.version + 1
        return app

    def actions(self) -> list[str]:
        return [event.get("action", "get_token") for event in self.events]

    def handler(self, event: dict[str, Any], context: Any) -> Any:
        self.events.append(event)
        if self.script:
            item = self.script.pop(0)
            if isinstance(item, BaseException):
                raise item
            return item
        action = event.get("action", "get_token")
        if action == "get_token" and "user_id" in event:
            apps = [a for a in self.apps.values() if a.user_id == event["user_id"]]
            if not apps:
                return _error("not_found", "no authorization for that user")
            return {
                "ok": True,
                "user_id": event["user_id"],
                "authorizations": [self._answer(a, event.get("required_methods")) for a in apps],
            }
        app = self.apps.get(event.get("auth_app_id", ""))
        if action == "list":
            items = [
                {k: v for k, v in self._answer(a).items() if k not in ("ok", "app_auth_token")}
                for a in self.apps.values()
                if event.get("status") in (None, a.status)
            ]
            return {"ok": True, "items": items, "cursor": None}
        if app is None:
            return _error("not_found", "no authorization for that merchant app")
        if action == "get_token":
            return self._answer(app, event.get("required_methods"))
        if action == "describe":
            answer = self._answer(app)
            answer.pop("app_auth_token", None)
            return {**answer, "alipay_status": "valid", "auth_start": "2025-01-01 00:00:00"}
        if action == "report_invalid":
            if event["version"] != app.version or app.status != "granted":
                return {**self._answer(app), "report": "stale"}
            if app.dead_status is None:
                return {**self._answer(app), "report": "valid"}
            app.status = app.dead_status
            return {**self._answer(app), "report": "confirmed"}
        return _error("bad_request", f"unknown action {action}")

    def _answer(self, app: App, required: list[str] | None = None) -> dict[str, Any]:
        if app.status != "granted":
            return _error(
                app.status,
                f"the merchant must authorize again ({app.status})",
                auth_app_id=app.auth_app_id,
                status=app.status,
                version=app.version,
            )
        if required and app.auth_methods is not None:
            missing = [m for m in required if m not in app.auth_methods]
            if missing:
                answer = _error(
                    "method_not_authorized",
                    "the merchant did not authorize every method",
                    auth_app_id=app.auth_app_id,
                    status=app.status,
                    version=app.version,
                )
                answer["error"]["missing_methods"] = missing
                return answer
        return {
            "ok": True,
            "auth_app_id": app.auth_app_id,
            "user_id": app.user_id,
            "version": app.version,
            "status": app.status,
            "app_auth_token": app.token,
            "expires_at": "2026-01-01T00:00:00Z",
            "re_expires_at": "2026-12-01T00:00:00+00:00",
            "auth_methods": app.auth_methods,
        }


def _error(code: str, message: str, retryable: bool = False, **known: Any) -> dict[str, Any]:
    return {
        "ok": False,
        "error": {"code": code, "message": message, "retryable": retryable},
        **known,
    }


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Harness:
    service: FakeTokenService
    lam: LocalLambdaClient
    clock: Clock
    sleeps: list[float]

    def client(self, **kw: Any) -> TokenClient:
        kw.setdefault("lambda_client", self.lam)
        kw.setdefault("monotonic", self.clock)
        kw.setdefault("sleep", self.sleeps.append)
        return TokenClient(FUNCTION, **kw)


@pytest.fixture
def h() -> Harness:
    service = FakeTokenService()
    lam = LocalLambdaClient({FUNCTION: service.handler})
    return Harness(service, lam, Clock(), [])


class RawInvoker:
    """A Lambda client whose invoke answers (or raises) the scripted items in turn."""

    def __init__(self, *items: Any) -> None:
        self.items = list(items)
        self.calls = 0

    def invoke(self, **kw: Any) -> Any:
        self.calls += 1
        item = self.items.pop(0) if len(self.items) > 1 else self.items[0]
        if isinstance(item, BaseException):
            raise item
        if isinstance(item.get("Payload"), io.BytesIO):  # a fresh stream per answer
            return {**item, "Payload": io.BytesIO(item["Payload"].getvalue())}
        return item


def _response(body: Any, **extra: Any) -> dict[str, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return {"StatusCode": 200, "Payload": io.BytesIO(data), **extra}


def _client_error(code: str, status: int) -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": "x"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "Invoke")


def _no_secret(*texts: str) -> None:
    for text in texts:
        for marker in ALL_TOKENS:
            assert marker not in text


# --- answers and typed errors ---------------------------------------------------------------


def test_get_returns_typed_token_and_sends_the_contract_request(h: Harness) -> None:
    h.service.add(auth_methods=["alipay.trade.query"])
    token = h.client().get(APP, ["alipay.trade.query"])
    assert token == MerchantToken(
        auth_app_id=APP,
        user_id=USER,
        version=1,
        app_auth_token=TOKEN_1,
        expires_at=token.expires_at,
        re_expires_at=token.re_expires_at,
        auth_methods=("alipay.trade.query",),
        status="granted",
    )
    assert token.expires_at is not None
    assert token.expires_at.utcoffset() is not None
    assert token.expires_at.year == 2026
    assert h.service.events == [
        {"action": "get_token", "auth_app_id": APP, "required_methods": ["alipay.trade.query"]}
    ]
    h.client().get(APP, consistent=True)
    assert h.service.events[-1] == {"action": "get_token", "auth_app_id": APP, "consistent": True}
    _no_secret(repr(token))


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("not_found", NotFoundError),
        ("revoked", RevokedError),
        ("needs_reauth", NeedsReauthError),
        ("method_not_authorized", MethodNotAuthorizedError),
        ("bad_request", BadRequestError),
        ("unavailable", UnavailableError),
        ("misconfigured", MisconfiguredError),
        ("something_new", TokenServiceError),
    ],
)
def test_every_error_code_maps_to_its_typed_error(
    h: Harness, code: str, cls: type[TokenServiceError]
) -> None:
    answer = _error(code, "what happened", auth_app_id=APP, status="needs_reauth", version=3)
    if code == "method_not_authorized":
        answer["error"]["missing_methods"] = ["alipay.trade.refund"]
    h.service.script.append(answer)
    with pytest.raises(cls) as caught:
        h.client(retries=0).get(APP)
    error = caught.value
    assert type(error) is cls
    assert (error.code, error.message, error.retryable) == (code, "what happened", False)
    assert (error.auth_app_id, error.status, error.version) == (APP, "needs_reauth", 3)
    assert APP in str(error)
    assert code in str(error)
    if cls is MethodNotAuthorizedError:
        assert cast(MethodNotAuthorizedError, error).missing_methods == ("alipay.trade.refund",)
    if code in ("revoked", "needs_reauth"):
        assert isinstance(error, MerchantMustReauthorizeError)


def test_error_without_known_fields_names_the_app_asked_for(h: Harness) -> None:
    h.service.script.append(_error("not_found", "none"))
    with pytest.raises(NotFoundError) as caught:
        h.client().get(APP)
    assert caught.value.auth_app_id == APP
    assert caught.value.status is None
    assert caught.value.version is None


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"auth_app_id": "2021000100000001", "found": true}',  # the old shape, no "ok"
        json.dumps({"ok": True, "auth_app_id": APP, "version": 1}).encode(),  # no token
        json.dumps(
            {"ok": True, "auth_app_id": APP, "version": "1", "app_auth_token": TOKEN_1}
        ).encode(),
        json.dumps(
            {
                "ok": True,
                "auth_app_id": APP,
                "version": 1,
                "app_auth_token": TOKEN_1,
                "expires_at": "soon",
            }
        ).encode(),
        json.dumps(
            {"ok": True, "auth_app_id": OTHER_APP, "version": 1, "app_auth_token": TOKEN_1}
        ).encode(),
        json.dumps({"ok": False, "error": "boom " + TOKEN_1}).encode(),
    ],
)
def test_an_answer_off_the_contract_is_misconfigured_and_never_echoed(body: bytes) -> None:
    invoker = RawInvoker(_response(body))
    with pytest.raises(MisconfiguredError) as caught:
        TokenClient(FUNCTION, lambda_client=invoker, sleep=lambda _: None).get(APP)
    assert invoker.calls == 1
    assert not caught.value.retryable
    assert FUNCTION in str(caught.value)
    _no_secret(str(caught.value), repr(caught.value))


def test_a_token_in_an_error_message_is_masked(h: Harness) -> None:
    answer = _error("unavailable", f"could not decrypt {TOKEN_1}")
    answer["app_auth_token"] = TOKEN_1
    h.service.script.append(answer)
    with pytest.raises(UnavailableError) as caught:
        h.client(retries=0).get(APP)
    _no_secret(str(caught.value), caught.value.message, repr(caught.value))


# --- retries --------------------------------------------------------------------------------


def test_unavailable_and_retryable_is_retried_with_bounded_jittered_backoff(h: Harness) -> None:
    h.service.add()
    h.service.script = [_error("unavailable", "throttled", retryable=True)] * 2
    token = h.client(retries=2).get(APP)
    assert token.version == 1
    assert len(h.service.events) == 3
    assert len(h.sleeps) == 2
    assert all(0 <= delay <= BACKOFF_MAX_SECONDS for delay in h.sleeps)


def test_retries_are_bounded_then_the_typed_error_is_raised(h: Harness) -> None:
    h.service.script = [_error("unavailable", "Alipay busy", retryable=True)] * 10
    with pytest.raises(UnavailableError) as caught:
        h.client(retries=2).get(APP)
    assert caught.value.retryable
    assert len(h.service.events) == 3
    assert len(h.sleeps) == 2


def test_retries_zero_means_one_attempt(h: Harness) -> None:
    h.service.script = [_error("unavailable", "busy", retryable=True)] * 3
    with pytest.raises(UnavailableError):
        h.client(retries=0).get(APP)
    assert len(h.service.events) == 1
    assert h.sleeps == []


@pytest.mark.parametrize(
    ("code", "retryable"),
    [
        ("unavailable", False),
        ("misconfigured", True),  # even if it said so: only unavailable is retried
        ("needs_reauth", True),
        ("revoked", False),
        ("not_found", True),
        ("bad_request", True),
        ("method_not_authorized", True),
    ],
)
def test_nothing_else_is_retried(h: Harness, code: str, retryable: bool) -> None:
    h.service.script = [_error(code, "no", retryable=retryable)] * 3
    with pytest.raises(TokenServiceError) as caught:
        h.client(retries=2).get(APP)
    assert caught.value.code == code
    assert len(h.service.events) == 1
    assert h.sleeps == []


# --- invoke-level failures ------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [
        _client_error("TooManyRequestsException", 429),
        _client_error("ServiceException", 500),
        _client_error("ResourceConflictException", 409),
        _client_error("SomethingNewAt5xx", 503),
        ReadTimeoutError(endpoint_url="https://lambda.example/invoke"),
        EndpointConnectionError(endpoint_url="https://lambda.example/invoke"),
    ],
)
def test_transient_invoke_errors_are_unavailable_and_retried(error: Exception) -> None:
    invoker = RawInvoker(error)
    sleeps: list[float] = []
    with pytest.raises(UnavailableError) as caught:
        TokenClient(FUNCTION, lambda_client=invoker, retries=2, sleep=sleeps.append).get(APP)
    assert caught.value.retryable
    assert caught.value.auth_app_id == APP
    assert invoker.calls == 3
    assert len(sleeps) == 2
    assert caught.value.__cause__ is None
    assert caught.value.__suppress_context__


@pytest.mark.parametrize(
    "error",
    [
        _client_error("AccessDeniedException", 403),
        _client_error("ResourceNotFoundException", 404),
        _client_error("KMSAccessDeniedException", 502),
        _client_error("SomethingNewAt4xx", 400),
        NoCredentialsError(),
    ],
)
def test_setup_invoke_errors_are_misconfigured_and_not_retried(error: Exception) -> None:
    invoker = RawInvoker(error)
    with pytest.raises(MisconfiguredError) as caught:
        TokenClient(FUNCTION, lambda_client=invoker, retries=2, sleep=lambda _: None).get(APP)
    assert not caught.value.retryable
    assert invoker.calls == 1
    assert FUNCTION in str(caught.value)


def test_an_unknown_function_is_misconfigured(h: Harness) -> None:
    client = TokenClient("no-such-function", lambda_client=h.lam, sleep=h.sleeps.append)
    with pytest.raises(MisconfiguredError, match="ResourceNotFoundException"):
        client.get(APP)


def test_a_transient_invoke_error_then_success(h: Harness) -> None:
    h.service.add()
    invoker = RawInvoker(
        _client_error("TooManyRequestsException", 429),
        _response(h.service._answer(h.service.apps[APP])),
    )
    sleeps: list[float] = []
    token = TokenClient(FUNCTION, lambda_client=invoker, sleep=sleeps.append).get(APP)
    assert token.version == 1
    assert invoker.calls == 2
    assert len(sleeps) == 1


def test_other_exceptions_of_the_client_are_not_hidden() -> None:
    invoker = RawInvoker(RuntimeError("a bug in the caller's client"))
    with pytest.raises(RuntimeError, match="a bug"):
        TokenClient(FUNCTION, lambda_client=invoker).get(APP)
    assert invoker.calls == 1


def test_an_unhandled_function_error_never_leaks_its_payload(h: Harness) -> None:
    h.service.script.append(ValueError(f"could not serialize {TOKEN_1}"))
    with pytest.raises(UnavailableError) as caught:
        h.client(retries=2).get(APP)
    error = caught.value
    assert not error.retryable  # a crash: retrying the same request crashes again
    assert len(h.service.events) == 1
    assert "ValueError" in str(error)
    assert "could not serialize" not in str(error)
    _no_secret(str(error), repr(error), error.message)
    assert error.__cause__ is None


def test_a_function_timeout_is_unavailable_and_retried() -> None:
    timed_out = _response(
        {"errorMessage": "2025-01-01T00:00:00Z abc Task timed out after 5.00 seconds"},
        FunctionError="Unhandled",
    )
    invoker = RawInvoker(timed_out)
    sleeps: list[float] = []
    with pytest.raises(UnavailableError) as caught:
        TokenClient(FUNCTION, lambda_client=invoker, retries=1, sleep=sleeps.append).get(APP)
    assert caught.value.retryable
    assert invoker.calls == 2


def test_a_timed_out_local_function_is_reported_as_lambda_does() -> None:
    clock = iter([0.0, 10.0])
    lam = LocalLambdaClient(
        {FUNCTION: lambda event, context: {"ok": True}},
        timeouts_ms={FUNCTION: 5000},
        enforce_timeouts=True,
        monotonic=lambda: next(clock),
    )
    response = lam.invoke(FunctionName=FUNCTION, Payload=b"{}")
    assert response["FunctionError"] == "Unhandled"
    assert json.loads(response["Payload"].read())["errorType"] == "Sandbox.Timedout"


def test_a_non_200_status_is_unavailable() -> None:
    invoker = RawInvoker({"StatusCode": 500, "Payload": io.BytesIO(b"")})
    with pytest.raises(UnavailableError):
        TokenClient(FUNCTION, lambda_client=invoker, retries=0).get(APP)


# --- the local Lambda client ------------------------------------------------------------------


def test_local_lambda_client_answers_like_boto3() -> None:
    seen: list[tuple[Any, Any]] = []

    def handler(event: Any, context: Any) -> Any:
        seen.append((event, context))
        return {"echo": event}

    lam = LocalLambdaClient({FUNCTION: handler}, timeouts_ms={FUNCTION: 5000})
    arn = f"arn:aws:lambda:us-east-1:123456789012:function:{FUNCTION}:live"
    response = lam.invoke(FunctionName=arn, Payload='{"a": 1}')
    assert response["StatusCode"] == 200
    assert "FunctionError" not in response
    assert json.loads(response["Payload"].read()) == {"echo": {"a": 1}}
    _event, context = seen[0]
    assert context.function_name == FUNCTION
    assert context.get_remaining_time_in_millis() == 5000
    assert lam.invoke(FunctionName=FUNCTION, InvocationType="Event")["StatusCode"] == 202
    assert lam.invoke(FunctionName=FUNCTION, InvocationType="DryRun")["StatusCode"] == 204
    assert len(seen) == 2
    with pytest.raises(ClientError) as caught:
        lam.invoke(FunctionName=FUNCTION, Payload=b"{not json")
    assert caught.value.response["Error"]["Code"] == "InvalidRequestContentException"
    unmarshalable = LocalLambdaClient({FUNCTION: lambda e, c: {1, 2}})
    failed = unmarshalable.invoke(FunctionName=FUNCTION, Payload=b"{}")
    assert failed["FunctionError"] == "Unhandled"
    assert json.loads(failed["Payload"].read())["errorType"] == "Runtime.MarshalError"


# --- the cache --------------------------------------------------------------------------------


def test_cache_hit_within_max_age_and_miss_after(h: Harness) -> None:
    h.service.add()
    client = h.client(max_age_seconds=30)
    assert client.get(APP).version == 1
    h.clock.now += 29
    assert client.get(APP).version == 1
    assert len(h.service.events) == 1
    h.clock.now += 1
    client.get(APP)
    assert len(h.service.events) == 2


def test_consistent_bypasses_the_cache_and_a_newer_version_replaces(h: Harness) -> None:
    h.service.add()
    client = h.client()
    client.get(APP)
    h.service.rotate()
    assert client.get(APP).version == 1  # cached
    fresh = client.get(APP, consistent=True)
    assert (fresh.version, fresh.app_auth_token) == (2, TOKEN_2)
    assert client.get(APP).version == 2  # the newer version replaced the cached one
    assert len(h.service.events) == 2


def test_an_older_answer_never_replaces_a_newer_cached_token(h: Harness) -> None:
    h.service.add()
    client = h.client(max_age_seconds=30)
    h.service.rotate()
    assert client.get(APP, consistent=True).version == 2
    # The function answers from its own cache: still version 1.
    stale = h.service._answer(h.service.apps[APP]) | {"version": 1, "app_auth_token": TOKEN_1}
    h.service.script.append(stale)
    assert client.get(APP, ["alipay.trade.query"]).version == 2  # unknown methods: asked
    assert len(h.service.events) == 2


@pytest.mark.parametrize("status", ["revoked", "needs_reauth"])
def test_a_non_granted_answer_evicts(h: Harness, status: str) -> None:
    app = h.service.add()
    client = h.client()
    client.get(APP)
    app.status = status
    with pytest.raises(MerchantMustReauthorizeError):
        client.get(APP, consistent=True)
    with pytest.raises(MerchantMustReauthorizeError):
        client.get(APP)  # not served from the cache any more
    assert len(h.service.events) == 3


def test_not_found_evicts(h: Harness) -> None:
    h.service.add()
    client = h.client()
    client.get(APP)
    del h.service.apps[APP]
    with pytest.raises(NotFoundError):
        client.get(APP, consistent=True)
    with pytest.raises(NotFoundError):
        client.get(APP)


def test_report_invalid_evicts_whatever_it_says(h: Harness) -> None:
    h.service.add()
    client = h.client()
    client.get(APP)
    assert client.report_invalid(APP, 1).report == "valid"
    client.get(APP)
    assert h.service.actions() == ["get_token", "report_invalid", "get_token"]


def test_cache_size_is_bounded_least_recently_used_goes(h: Harness) -> None:
    apps = [f"20210001000000{n:02d}" for n in range(3)]
    for n, app in enumerate(apps):
        h.service.add(app, token=f"secretTOKEN{n:04d}")
    client = h.client(max_items=2)
    client.get(apps[0])
    client.get(apps[1])
    client.get(apps[0])  # hit: apps[1] is now the least recently used
    client.get(apps[2])  # evicts apps[1]
    assert len(h.service.events) == 3
    client.get(apps[0])
    client.get(apps[2])
    assert len(h.service.events) == 3
    client.get(apps[1])
    assert len(h.service.events) == 4


def test_required_methods_use_the_cache_only_when_known_to_cover(h: Harness) -> None:
    app = h.service.add(auth_methods=["alipay.trade.query", "alipay.trade.create"])
    client = h.client()
    client.get(APP)
    client.get(APP, ["alipay.trade.query"])
    assert len(h.service.events) == 1
    with pytest.raises(MethodNotAuthorizedError) as caught:
        client.get(APP, ["alipay.trade.refund", "alipay.trade.query"])
    assert caught.value.missing_methods == ("alipay.trade.refund",)
    assert len(h.service.events) == 2
    app.auth_methods = None  # not known: always asks the function
    client.get(APP)
    client.get(APP, ["alipay.trade.refund"])
    assert len(h.service.events) == 4
    assert h.service.events[-1]["required_methods"] == ["alipay.trade.refund"]


def test_the_cache_is_thread_safe(h: Harness) -> None:
    apps = [f"20210002000000{n:02d}" for n in range(20)]
    for n, app in enumerate(apps):
        h.service.add(app, token=f"secretTOKEN{n:04d}")
    client = h.client(max_items=8)
    failures: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for i in range(200):
                app = apps[(i + offset) % len(apps)]
                assert client.get(app).auth_app_id == app
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(client._cache) <= 8


# --- the other actions --------------------------------------------------------------------


def test_get_for_user_types_each_app_and_caches_the_granted(h: Harness) -> None:
    h.service.add(APP)
    h.service.add(OTHER_APP, token=TOKEN_2, status="revoked")
    result = h.client().get_for_user(USER)
    assert h.service.events[-1] == {"action": "get_token", "user_id": USER}
    assert [entry.auth_app_id for entry in result] == [APP, OTHER_APP]
    granted, revoked = result
    assert isinstance(granted, AppAuthorization)
    assert granted.ok
    assert granted.token is not None
    assert granted.token.app_auth_token == TOKEN_1
    assert not revoked.ok
    assert isinstance(revoked.error, RevokedError)
    _no_secret(repr(result))
    client = h.client()
    client.get_for_user(USER)
    client.get(APP)
    assert h.service.actions()[-1] == "get_token"
    assert len(h.service.events) == 2


def test_get_for_user_unknown_raises(h: Harness) -> None:
    with pytest.raises(NotFoundError):
        h.client().get_for_user("2088999999999999")


def test_report_invalid_outcomes(h: Harness) -> None:
    app = h.service.add()
    client = h.client()
    valid = client.report_invalid(APP, 1)
    assert valid.report == "valid"
    assert valid.token is not None
    assert valid.token.version == 1
    h.service.rotate()
    stale = client.report_invalid(APP, 1)
    assert stale.report == "stale"
    assert stale.token is not None
    assert stale.token.version == 2
    app.dead_status = "revoked"
    confirmed = client.report_invalid(APP, 2)
    assert confirmed.report == "confirmed"
    assert confirmed.token is None
    assert isinstance(confirmed.error, RevokedError)
    assert h.service.events[-1] == {"action": "report_invalid", "auth_app_id": APP, "version": 2}
    _no_secret(repr(valid), repr(stale), repr(confirmed))
    with pytest.raises(NotFoundError):
        client.report_invalid(OTHER_APP, 1)


def test_a_stale_report_of_an_ended_authorization_carries_its_error(h: Harness) -> None:
    h.service.add(status="needs_reauth")
    result = h.client().report_invalid(APP, 1)
    assert result.report == "stale"
    assert result.token is None
    assert isinstance(result.error, NeedsReauthError)
    merchant = _merchant(h, FakeAlipay())
    h.service.script.append(h.service._answer(App(APP, TOKEN_1)))  # a token cached before
    with pytest.raises(NeedsReauthError):
        merchant.call("alipay.trade.query")


def test_describe_and_list(h: Harness) -> None:
    h.service.add(auth_methods=["alipay.trade.query"])
    h.service.add(OTHER_APP, token=TOKEN_2, status="needs_reauth")
    client = h.client()
    summary = client.describe(APP)
    assert isinstance(summary, AuthorizationSummary)
    assert (summary.auth_app_id, summary.status, summary.version) == (APP, "granted", 1)
    assert summary.details == {"alipay_status": "valid", "auth_start": "2025-01-01 00:00:00"}
    page = client.list(status="needs_reauth", limit=10)
    assert h.service.events[-1] == {"action": "list", "status": "needs_reauth", "limit": 10}
    assert [item.auth_app_id for item in page.items] == [OTHER_APP]
    assert page.cursor is None
    _no_secret(repr(summary), repr(page))


def test_importing_the_module_is_cheap_and_the_client_is_lazy() -> None:
    code = (
        "import sys\n"
        "from appauth.callers import TokenClient\n"
        "TokenClient('fn')\n"
        "heavy = [m for m in ('boto3', 'botocore', 'requests', 'cryptography') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    layer = Path(__file__).resolve().parents[2] / "layers" / "signing"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=layer, timeout=60)  # noqa: S603


def test_the_default_lambda_client_has_tight_timeouts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "absent"))
    client = TokenClient(FUNCTION).lambda_client
    config = client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (1.0, 22.0)
    assert config.retries["total_max_attempts"] == 1


# --- MerchantClient -------------------------------------------------------------------------


def _dead_token_error(v3: bool = False) -> AlipayError:
    if v3:
        return AlipayError(
            "invalid-app-auth-token", "无效的应用授权令牌", http_status=401, signed=True
        )
    return AlipayError(
        "20001",
        "Insufficient Token Permissions",
        sub_code="aop.invalid-app-auth-token",
        sub_msg="无效的应用授权令牌",
        signed=True,
    )


class FakeAlipay:
    """Alipay for one merchant: accepts the tokens in ``accepted``; records what was sent."""

    def __init__(
        self, *accepted: str, error: Callable[[], AlipayError] = _dead_token_error
    ) -> None:
        self.accepted = set(accepted)
        self.error = error
        self.sent: list[tuple[str, str | None]] = []
        self.business_error: AlipayError | None = None

    def call(
        self, method: str, biz_content: Any = None, *, app_auth_token: str | None = None, **kw: Any
    ) -> dict[str, Any]:
        self.sent.append((method, app_auth_token))
        if app_auth_token not in self.accepted:
            raise self.error()
        if self.business_error is not None:
            raise self.business_error
        return {"code": "10000", "msg": "Success", "biz": biz_content, "kw": kw}

    def request(
        self, http_method: str, path: str, *, app_auth_token: str | None = None, **kw: Any
    ) -> V3Response:
        self.sent.append((path, app_auth_token))
        if app_auth_token not in self.accepted:
            raise _dead_token_error(v3=True)
        return V3Response(200, {"trade_status": "TRADE_SUCCESS"}, "trace")


def _merchant(h: Harness, alipay: FakeAlipay, **kw: Any) -> MerchantClient:
    return MerchantClient(cast(AlipayClient, alipay), h.client(**kw), APP)


def test_merchant_client_carries_the_token(h: Harness) -> None:
    h.service.add()
    alipay = FakeAlipay(TOKEN_1)
    merchant = _merchant(h, alipay)
    answer = merchant.call("alipay.trade.query", {"out_trade_no": "T1"}, retry_safe=True)
    assert answer["biz"] == {"out_trade_no": "T1"}
    assert answer["kw"] == {"retry_safe": True}
    merchant.call("alipay.trade.query", {"out_trade_no": "T2"})
    assert alipay.sent == [("alipay.trade.query", TOKEN_1)] * 2
    assert h.service.actions() == ["get_token"]  # the second call used the cache
    assert merchant.request("GET", "/v3/alipay/trade/query").data["trade_status"] == "TRADE_SUCCESS"
    _no_secret(repr(merchant))
    with pytest.raises(TypeError):
        merchant.call("alipay.trade.query", app_auth_token=TOKEN_1)


@pytest.mark.parametrize("v3", [False, True])
def test_after_a_rotation_the_call_is_retried_once_with_the_new_token(h: Harness, v3: bool) -> None:
    h.service.add()
    alipay = FakeAlipay(TOKEN_1)
    merchant = _merchant(h, alipay)
    merchant.call("alipay.trade.query")
    h.service.rotate()  # the refresh function rotated; Alipay refuses the cached token
    alipay.accepted = {TOKEN_2}
    if v3:
        assert merchant.request("GET", "/v3/alipay/trade/query").status == 200
    else:
        assert merchant.call("alipay.trade.query")["code"] == "10000"
    assert [token for _, token in alipay.sent[1:]] == [TOKEN_1, TOKEN_2]
    # The stale report carried the current token: no further look-up.
    assert h.service.actions() == ["get_token", "report_invalid"]
    merchant.call("alipay.trade.query")
    assert alipay.sent[-1][1] == TOKEN_2
    assert h.service.actions() == ["get_token", "report_invalid"]


def test_when_the_report_is_not_stale_the_current_token_is_read_consistently(h: Harness) -> None:
    app = h.service.add()
    alipay = FakeAlipay(TOKEN_2)
    merchant = _merchant(h, alipay)
    # Alipay confirms version 1 dead, but the merchant re-authorized meanwhile: version 2.
    h.service.script.append(h.service._answer(app))
    h.service.script.append(
        _error("needs_reauth", "dead", auth_app_id=APP, status="needs_reauth", version=1)
        | {"report": "confirmed"}
    )
    h.service.rotate()
    assert merchant.call("alipay.trade.query")["code"] == "10000"
    assert h.service.actions() == ["get_token", "report_invalid", "get_token"]
    assert h.service.events[-1]["consistent"] is True
    assert [token for _, token in alipay.sent] == [TOKEN_1, TOKEN_2]


@pytest.mark.parametrize("status", ["revoked", "needs_reauth"])
def test_a_confirmed_dead_token_means_the_merchant_must_reauthorize(
    h: Harness, status: str
) -> None:
    h.service.add(dead_status=status)
    alipay = FakeAlipay()  # Alipay refuses every token of this merchant
    merchant = _merchant(h, alipay)
    with pytest.raises(MerchantMustReauthorizeError) as caught:
        merchant.call("alipay.trade.query")
    error = caught.value
    assert error.code == status
    assert type(error) is (RevokedError if status == "revoked" else NeedsReauthError)
    assert error.auth_app_id == APP
    assert APP in str(error)
    assert isinstance(error.__cause__, AlipayError)
    _no_secret(str(error), repr(error))
    assert len(alipay.sent) == 1  # never retried with the dead token
    assert h.service.actions() == ["get_token", "report_invalid", "get_token"]


def test_a_dead_token_with_no_newer_version_is_typed_even_if_the_service_still_says_granted(
    h: Harness,
) -> None:
    app = h.service.add()
    merchant = _merchant(h, FakeAlipay())
    h.service.script = [h.service._answer(app), {**h.service._answer(app), "report": "stale"}]
    with pytest.raises(MerchantMustReauthorizeError) as caught:
        merchant.call("alipay.trade.query")
    assert type(caught.value) is MerchantMustReauthorizeError
    assert APP in str(caught.value)
    _no_secret(str(caught.value))


def test_when_alipay_says_the_token_is_valid_the_original_error_is_raised(h: Harness) -> None:
    h.service.add()  # dead_status None: the service's check finds the token valid
    original = _dead_token_error()
    alipay = FakeAlipay(error=lambda: original)
    with pytest.raises(AlipayError) as caught:
        _merchant(h, alipay).call("alipay.trade.query")
    assert caught.value is original
    assert len(alipay.sent) == 1
    assert h.service.actions() == ["get_token", "report_invalid"]


def test_other_alipay_errors_pass_through_untouched(h: Harness) -> None:
    h.service.add()
    alipay = FakeAlipay(TOKEN_1)
    alipay.business_error = AlipayError(
        "40004",
        "Business Failed",
        sub_code="ACQ.TRADE_NOT_EXIST",
        sub_msg="交易不存在",
        signed=True,
    )
    with pytest.raises(AlipayError) as caught:
        _merchant(h, alipay).call("alipay.trade.query")
    assert caught.value is alipay.business_error
    assert h.service.actions() == ["get_token"]


def test_the_retry_happens_once_only(h: Harness) -> None:
    app = h.service.add()
    alipay = FakeAlipay()  # refuses the rotated token as well
    merchant = _merchant(h, alipay)
    merchant.tokens.get(APP)
    h.service.rotate()
    app.dead_status = "needs_reauth"
    with pytest.raises(NeedsReauthError):
        merchant.call("alipay.trade.query")
    assert [token for _, token in alipay.sent] == [TOKEN_1, TOKEN_2]
    assert h.service.actions() == ["get_token", "report_invalid", "report_invalid"]


def test_the_token_service_failing_during_the_report_is_typed(h: Harness) -> None:
    h.service.add()
    alipay = FakeAlipay()
    merchant = _merchant(h, alipay, retries=0)
    merchant.tokens.get(APP)
    h.service.script.append(_error("unavailable", "busy", retryable=True))
    with pytest.raises(UnavailableError) as caught:
        merchant.call("alipay.trade.query")
    assert isinstance(caught.value.__cause__, AlipayError)
