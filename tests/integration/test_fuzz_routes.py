"""Fuzzing the callback function's routes and the token query through their real handlers, AWS
played by the template's stack on moto and Alipay by the simulator.

Every generated request is one API Gateway (HTTP API v2) or direct-invoke event: random,
truncated, oversized, badly encoded, duplicated or missing parameters, wrong methods and content
types, base64 bodies, injection strings, forged notifications, replayed states. Whatever comes,
the answer is a 4xx (or a replay of what was already done) without a stack trace or a file path,
and nothing the service keeps changes: no item in any table of the template, no parked pair, no
lifecycle event, no call to Alipay.

Examples per property: see ``fuzz_helpers.fuzz_examples`` (APPAUTH_FUZZ_EXAMPLES for bigger runs).
"""

from __future__ import annotations

import base64
import functools
import importlib
import json
import string
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import HealthCheck, given, settings
from hypothesis import event as event_note
from hypothesis import strategies as st

import token_query_app
from appauth.alipay.keys import load_private_key
from appauth.alipay.signing import rsa_sign, sign_content
from appauth.lookup import LookupCache
from appauth.runtime import runtime
from appauth.state import issue_state
from appauth.store import STATUS_GRANTED
from appauth_dev.local_service import FakeContext
from appauth_dev.simulator import SimulatorControl
from tests.conftest import read_vector_file
from tests.integration.callback_helpers import (
    CallbackFunction,
    Handler,
    HttpResponse,
    approve,
    grant_notification,
    invoke,
    load_event,
    redirect_event,
    start,
    state_payload,
)
from tests.integration.conftest import ServiceStack
from tests.integration.fuzz_helpers import (
    AwsCalls,
    Persisted,
    Snapshots,
    assert_no_leak,
    fuzz_examples,
)

GRANTED = "callback_notify_granted.json"
CANCELLED = "callback_notify_cancelled.json"
OTHER_APP_ID = "2021000199999999"
INJECTIONS = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "' OR '1'='1",
    "1; DROP TABLE tokens; --",
    "${jndi:ldap://127.0.0.1:1389/a}",
    "{{7*7}}${7*7}",
    "../../../../etc/passwd",
    "..%2f..%2fetc%2fpasswd",
    "\x00",
    "%00",
    "\r\nSet-Cookie: session=1",
    "\u202egnp.exe",
    "\ufeff\u200b",
    "😀" * 8,
    "商户授权",
    "%",
    "%%",
    "%zz",
    "%E5%9",
    "%FF%FE",
    "\udcff",  # a lone surrogate: not UTF-8 at all
    "a" * 5000,
    "v1..",
    "v1.e30.e30",
    "=&=&",
]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
PATHS = [
    "/alipay/callback",
    "/alipay/authorize",
    "/alipay/notify",
    "/alipay/callback/",
    "/ALIPAY/CALLBACK",
    "/alipay/notify/..",
    "/alipay/%2e%2e/notify",
    "/",
    "",
    "/alipay",
    "/" + "a" * 3000,
]
CONTENT_TYPES = [
    None,
    "application/x-www-form-urlencoded; charset=utf-8",
    "application/x-www-form-urlencoded; charset=gbk",
    "application/json",
    "multipart/form-data; boundary=x",
    "text/plain",
    "text/html; charset=iso-8859-1",
    "application/octet-stream",
    "\x00",
]
pytestmark = pytest.mark.filterwarnings("ignore:No application metrics to publish")
# One fixture per property (its state carried across examples, checked after each).
# Deterministic, as the unit properties are: CI and laptops run the same examples.
FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# --- the stack, with one authorization done and both notification vectors processed ----------


@dataclass(repr=False)
class Routes(CallbackFunction):
    """The callback function after one real authorization (its state and code are spent) and
    both notification vectors (a genuine copy of either is a redelivery)."""

    used_redirect: dict[str, str]
    unused_codes: list[str]
    calls: AwsCalls
    snapshots: Snapshots
    baseline: Persisted
    pairs_at_alipay: int
    states_issued: int = 0  # by accepted start requests, the one write a request may make
    writes_seen: int = 0

    def __repr__(self) -> str:  # hypothesis prints it with a failing example: keep it short
        return f"Routes(used redirect {self.used_redirect})"

    def call(self, event: dict[str, Any]) -> HttpResponse:
        """The handler's answer to ``event``, checked: no 5xx, no trace, nothing published."""
        response = super().call(event)
        assert response.status < 500, (response.status, response.body[:300], _shown(event))
        assert_no_leak(response.body, context=_shown(event))
        assert "content-type" in response.headers
        for markup in ("<script>alert(1)</script>", "<img src=x onerror"):
            assert markup not in response.body, "input reflected into the page unescaped"
        assert not self.calls.named("PutEvents"), "a lifecycle event was published"
        # Nothing reached Alipay: no code was exchanged, no pair issued.
        assert self.service.simulator.state.pair_count() == self.pairs_at_alipay
        return response

    def new_writes(self) -> tuple[list[tuple[str, dict[str, Any]]], set[str]]:
        """The writes AWS carried out since the last look, and what they wrote to."""
        done, names = self.calls.since(self.writes_seen)
        self.writes_seen = self.calls.writes()
        return done, names

    def assert_nothing_changed(self, event: dict[str, Any]) -> None:
        """Every table and queue written to is as before (e.g. an idempotency record written
        and deleted again). A request AWS carried out no write for (refused by a condition, or
        none sent) cannot have changed anything; the fixture compares everything at the end."""
        done, names = self.new_writes()
        if done:
            assert self.snapshots.take(names) == self.baseline.only(names), _shown(event)

    def assert_only_states_were_added(self) -> None:
        now = self.snapshots.take()
        assert now.removed_since(self.baseline) == []
        added = now.added_since(self.baseline)
        assert len(added) == self.states_issued
        for item in added:
            assert item["pk"]["S"].startswith("STATE#")
            assert "consumed_at" not in item
        assert now.queues == self.baseline.queues


def _reason(response: HttpResponse) -> str:
    """The error reason of a JSON answer; the page title of an HTML one (for statistics)."""
    if response.headers.get("content-type", "").startswith("application/json"):
        return str(response.json().get("error", {}).get("reason"))
    start = response.body.find("<h1>")
    return response.body[start : start + 30] if start >= 0 else response.body[:20]


def _shown(event: dict[str, Any]) -> str:
    shown = {k: event.get(k) for k in ("rawPath", "rawQueryString", "queryStringParameters")}
    shown["method"] = event["requestContext"]["http"]["method"]
    shown["body"] = str(event.get("body"))[:200]
    return json.dumps(shown, ensure_ascii=True)[:600]


@pytest.fixture
def routes(service: ServiceStack, monkeypatch: pytest.MonkeyPatch) -> Iterator[Routes]:
    # Imported once the environment is the template's, as in a Lambda cold start; the
    # idempotent wrappers are built on first use, on this test's (watched) clients.
    module = importlib.import_module("callback_app")
    monkeypatch.setattr(module, "_idempotent_complete", None)
    monkeypatch.setattr(module, "_idempotent_process", None)
    handler: Handler = module.lambda_handler
    page = start(handler, merchant_ref="fuzz-1")
    redirect = approve(service.simulator.url, page["authorization_url"])
    assert invoke(handler, redirect_event(redirect)).status == 200
    for name in (GRANTED, CANCELLED):
        assert invoke(handler, load_event(name)).body == "success"
    control = SimulatorControl(service.simulator.url)
    unused = [control.codes()["app_auth_code"] for _ in range(3)]
    snapshots = Snapshots(service.aws.stack, service.aws.endpoint_url)
    routes = Routes(
        module=module,
        service=service,
        db=snapshots.dynamodb,
        used_redirect=redirect,
        unused_codes=unused,
        calls=AwsCalls(),
        snapshots=snapshots,
        baseline=snapshots.take(),
        pairs_at_alipay=service.simulator.state.pair_count(),
    )
    _assert_the_detector_sees_a_write(routes)
    yield routes
    # After every example: whatever the properties let through, only fresh states were added.
    routes.assert_only_states_were_added()


def _assert_the_detector_sees_a_write(routes: Routes) -> None:
    """The properties take snapshots only after a write AWS carried out: a request that does
    write (a start page issuing a state) is seen, and its snapshot tells it apart."""
    routes.call(_event("GET", "/alipay/authorize", [("format", "json")]))
    [(operation, _)], names = routes.new_writes()
    assert operation == "PutItem"
    assert names == {routes.service.aws.stack.tokens_table}
    assert routes.snapshots.take() != routes.baseline
    routes.states_issued += 1


# --- building events as API Gateway hands them over --------------------------------------------


def _redirect_base() -> dict[str, Any]:
    return load_event("callback_redirect_ok.json")


def _encode(value: str, style: str) -> str:
    """One value as it could stand in a raw query string."""
    encoded = quote(value, safe="", errors="surrogateescape")
    if style == "raw":
        return value
    if style == "lower-hex":
        return encoded.lower()
    if style == "broken" and "%" in encoded:
        index = encoded.index("%")
        return encoded[: index + 2] + "G" + encoded[index + 3 :]
    return encoded


def _query_event(pairs: list[tuple[str, str]], style: str = "quote") -> dict[str, Any]:
    """``rawQueryString`` and ``queryStringParameters`` of ``pairs`` as HTTP API v2 gives them:
    a repeated parameter's values joined with commas."""
    joined: dict[str, str] = {}
    for name, value in pairs:
        joined[name] = f"{joined[name]},{value}" if name in joined else value
    raw = "&".join(f"{_encode(k, style)}={_encode(v, style)}" for k, v in pairs)
    event: dict[str, Any] = {"rawQueryString": raw}
    if joined:
        event["queryStringParameters"] = joined
    return event


def _event(
    method: str,
    path: str,
    pairs: list[tuple[str, str]],
    *,
    style: str = "quote",
    headers: dict[str, str] | None = None,
    body: str | None = None,
    base64_body: bool = False,
) -> dict[str, Any]:
    event = _redirect_base()
    event.pop("queryStringParameters", None)
    event.update(_query_event(pairs, style))
    event["rawPath"] = path
    event["routeKey"] = "$default"
    event["requestContext"]["http"]["method"] = method
    event["requestContext"]["http"]["path"] = path
    event["headers"].update(headers or {})
    if body is not None:
        event["body"] = body
        event["isBase64Encoded"] = base64_body
    return event


# --- strategies ----------------------------------------------------------------------------------


def _mutate(choice: tuple[str, str, int, str]) -> str:
    value, how, at, junk = choice
    index = at % (len(value) or 1)
    if how == "truncate":
        return value[:index]
    if how == "change":
        return value[:index] + junk[:1] + value[index + 1 :]
    if how == "splice":
        return value[:index] + junk + value[index:]
    return value * (2 + at % 40)  # repeated: oversized


def _mutations(values: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A value truncated, with one character changed, with junk spliced in, or repeated."""
    return st.tuples(
        values,
        st.sampled_from(["truncate", "change", "splice", "repeat"]),
        st.integers(0, 2**16),
        st.sampled_from(INJECTIONS) | st.characters().map(str),
    ).map(_mutate)


def _forged_states(used: str) -> st.SearchStrategy[str]:
    version, body, mac = used.split(".")
    payload = state_payload(used)

    def signed_by_another(secret: bytes) -> str:
        token, _ = issue_state(secret, now=payload["e"] - 1800, ttl_seconds=1800)
        return token

    def reencoded(extra: dict[str, Any]) -> str:
        # The payload changed (a longer life, another nonce), the MAC of the original kept.
        changed = base64.urlsafe_b64encode(
            json.dumps({**payload, **extra}, separators=(",", ":")).encode()
        )
        return f"{version}.{changed.decode().rstrip('=')}.{mac}"

    return st.one_of(
        st.just(used),  # replayed
        st.builds(signed_by_another, st.binary(min_size=32, max_size=32)),
        st.fixed_dictionaries({"e": st.integers(0, 2**40)}).map(reencoded),
        st.fixed_dictionaries({"n": st.text(max_size=30)}).map(reencoded),
        st.just(f"v2.{body}.{mac}"),
        st.just(f"{version}.{body}.{mac[::-1]}"),
        st.just(f"{version}.{body}.{mac}="),
        st.just(f"{version}.{body}="[:-1] + f".{mac}"),
        _mutations(st.just(used)),
    )


def _values(real: list[str]) -> st.SearchStrategy[str]:
    known = st.sampled_from(real)
    return st.one_of(
        known,
        _mutations(known),
        st.sampled_from(INJECTIONS),
        st.text(max_size=80),
        st.text(string.ascii_letters + string.digits, min_size=8, max_size=64),
        st.integers(0, 10**34).map(str),
    )


@st.composite
def _pairs(draw: st.DrawFn, fields: dict[str, st.SearchStrategy[str]]) -> list[tuple[str, str]]:
    """Each field missing, once or twice (sometimes its name spelled otherwise), plus junk."""
    pairs: list[tuple[str, str]] = []
    for name, values in fields.items():
        count = draw(st.sampled_from([0, 1, 1, 1, 1, 2]))
        spelled = draw(st.sampled_from([name, name, name, name.upper(), f" {name}", f"{name}[]"]))
        pairs.extend((spelled, draw(values)) for _ in range(count))
    pairs.extend(draw(st.lists(st.tuples(st.text(max_size=12), st.text(max_size=40)), max_size=2)))
    return list(draw(st.permutations(pairs)))


_styles = st.sampled_from(["quote", "quote", "quote", "raw", "lower-hex", "broken"])
_accept = st.sampled_from(["text/html", "application/json", "*/*", "", "application/json;q=0"])


# --- the redirect --------------------------------------------------------------------------------


@functools.cache
def _redirect_requests(
    redirect: tuple[tuple[str, str], ...], unused_codes: tuple[str, ...]
) -> st.SearchStrategy[dict[str, Any]]:
    used = dict(redirect)
    codes = st.sampled_from([used["app_auth_code"], *unused_codes])
    states = st.just(used["state"]) | _forged_states(used["state"])  # replays: a good share
    # Well-formed but for the state (so the state's checks and its one-time use are reached)...
    shaped = st.tuples(codes, states, st.sampled_from([[], [("format", "json")]])).map(
        lambda parts: (
            [("app_id", used["app_id"]), ("app_auth_code", parts[0]), ("state", parts[1])]
            + parts[2]
        )
    )
    # ...or anything: each parameter missing, repeated, misspelt or damaged, and junk.
    chaotic = _pairs(
        {
            "app_id": st.sampled_from([used["app_id"], OTHER_APP_ID]) | _values([used["app_id"]]),
            "app_auth_code": codes | _values([used["app_auth_code"]]),
            "state": states | _values([used["state"]]),
            "format": st.sampled_from(["json", "html", "JSON", ""]),
        }
    )
    return st.builds(
        lambda pairs, style, accept: _event(
            "GET", "/alipay/callback", pairs, style=style, headers={"accept": accept}
        ),
        st.one_of(shaped, chaotic),
        _styles,
        _accept,
    )


@settings(FUZZ, max_examples=fuzz_examples(800))
@given(data=st.data())
def test_no_redirect_fails_open_leaks_or_writes(routes: Routes, data: st.DataObject):
    event = data.draw(
        _redirect_requests(tuple(routes.used_redirect.items()), tuple(routes.unused_codes))
    )
    response = routes.call(event)
    event_note(f"{response.status} {_reason(response)}")
    query = event.get("queryStringParameters") or {}
    used = routes.used_redirect
    if response.status == 200:
        # Only the redirect already completed is answered, from its record (not exchanged again).
        assert {k: query.get(k) for k in used} == used, _shown(event)
    else:
        assert response.status in (400, 404, 409), (response.status, response.body[:300])
    if (query.get("app_id"), query.get("state")) == (used["app_id"], used["state"]) and (
        query.get("app_auth_code") in routes.unused_codes
    ):
        assert response.status == 409, "a spent state was accepted with another code"
    routes.assert_nothing_changed(event)


# --- the start page ----------------------------------------------------------------------------


def _start_requests() -> st.SearchStrategy[dict[str, Any]]:
    fields = {
        "merchant_ref": _values(["shop-42", "m:1@x.y", "a" * 64]),
        "batch": st.sampled_from(["1", "0", "true", "false", "yes", "", "2", "１"]),
        "application_type": _values(["TINYAPP,WEBAPP", "MOBILEAPP", "tinyapp, arapp", "FOO"]),
        "redirect": st.sampled_from(["1", "0", "", "true"]),
        "format": st.sampled_from(["json", ""]),
    }
    return st.builds(
        lambda pairs, style, accept: _event(
            "GET", "/alipay/authorize", pairs, style=style, headers={"accept": accept}
        ),
        _pairs(fields),
        _styles,
        _accept,
    )


@settings(FUZZ, max_examples=fuzz_examples(250))
@given(event=_start_requests())
def test_a_start_request_issues_one_state_or_nothing(routes: Routes, event: dict[str, Any]):
    response = routes.call(event)
    written, _ = routes.new_writes()
    if response.status not in (200, 302):
        assert response.status == 400, (response.status, response.body[:300])
        assert written == [], _shown(event)
        return
    # Accepted: exactly one write, a new state (never over an existing item).
    [(operation, request)] = written
    assert operation == "PutItem"
    assert request["TableName"] == routes.service.aws.stack.tokens_table
    assert request["Item"]["pk"]["S"].startswith("STATE#")
    assert "attribute_not_exists" in request["ConditionExpression"]
    routes.states_issued += 1


# --- notifications -------------------------------------------------------------------------------


def _vector_body(name: str) -> bytes:
    body: str = load_event(name)["body"]
    return body.encode("ascii")


@functools.cache
def _private_key(key_file: str) -> rsa.RSAPrivateKey:
    return load_private_key(read_vector_file(key_file))  # checking a key costs ~50 ms: once


def _signed(params: dict[str, str], key_file: str) -> dict[str, str]:
    """``params`` signed as Alipay signs a notification, with ``key_file`` (sign_type left out)."""
    content = sign_content(params, exclude=("sign", "sign_type"))
    return {**params, "sign": rsa_sign(content, _private_key(key_file))}


def _form(fields: dict[str, str]) -> bytes:
    return "&".join(f"{quote(k)}={quote(v)}" for k, v in fields.items()).encode("ascii")


def _granted_params(app_id: str, auth_app_id: str, notify_id: str, token: str) -> dict[str, str]:
    fields = grant_notification(
        app_id, auth_app_id, tokens=(token, token[::-1]), trigger_context={}
    )
    return {"notify_id": notify_id, **fields}


def _tampered(choice: tuple[dict[str, str], str, str]) -> bytes:
    """Signed with Alipay's key, then one field changed."""
    params, name, value = choice
    fields = _signed(params, "keys/alipay_private_pkcs8.pem")
    fields[name] = value if fields.get(name) != value else value + "x"
    return _form(fields)


def _forged_notifications(app_id: str) -> st.SearchStrategy[bytes]:
    """Validly shaped notifications Alipay did not sign, signed for another app, or changed
    after Alipay signed them."""
    params = st.builds(
        _granted_params,
        st.just(app_id),
        st.integers(2 * 10**15, 3 * 10**15 - 1).map(str),
        st.integers(10**21, 10**22 - 1).map(str),
        st.text(string.ascii_letters + string.digits, min_size=20, max_size=40),
    )
    wrong_key = params.map(lambda p: _form(_signed(p, "keys/app_private_pkcs8.pem")))
    other_app = params.map(
        lambda p: _form(_signed({**p, "app_id": OTHER_APP_ID}, "keys/alipay_private_pkcs8.pem"))
    )
    after_signing = st.tuples(
        params,
        st.sampled_from(["biz_content", "notify_id", "notify_time", "status", "charset"]),
        st.sampled_from(["", "x", "2026-11-21 10:00:01", "gbk", "{}", *INJECTIONS[:6]]),
    ).map(_tampered)
    return st.one_of(wrong_key, other_app, after_signing)


def _damage(choice: tuple[bytes, str, int, bytes]) -> bytes:
    """A genuine notification truncated, with a byte changed, a field repeated, dropped or
    replaced, junk (broken escapes, invalid UTF-8) spliced in, or grown past the size limit."""
    body, how, at, junk = choice
    fields = body.split(b"&")
    index, field_index = at % len(body), at % len(fields)
    if how == "truncate":
        return body[:index]
    if how == "byte":
        return body[:index] + bytes([at % 251]) + body[index + 1 :]
    if how == "repeat-field":
        return body + b"&" + fields[field_index]
    if how == "drop-field":
        return b"&".join(fields[:field_index] + fields[field_index + 1 :])
    if how == "replace-value":
        name = fields[field_index].split(b"=", 1)[0]
        return b"&".join([*fields[:field_index], name + b"=" + junk, *fields[field_index + 1 :]])
    if how == "splice":
        return body[:index] + junk + body[index:]
    return body + b"&pad=" + b"a" * (60 * 1024 + at % (80 * 1024))  # past the 64 KiB limit


_JUNK = [
    b"%",
    b"%G1",
    b"%FF",
    b"\xff\xfe",
    b"%E5%9",
    b"\x00",
    b"+",
    b"&",
    b"=",
    *(quote(text, errors="surrogateescape").encode("ascii") for text in INJECTIONS[:12]),
]
_DAMAGE = ["truncate", "byte", "repeat-field", "drop-field", "replace-value", "splice", "grow"]


def _deliver(choice: tuple[bytes, str]) -> tuple[str, bool]:
    """The body as API Gateway hands it over: text, or base64 (sometimes damaged base64)."""
    raw, how = choice
    encoded = base64.b64encode(raw).decode("ascii")
    if how == "text":
        return raw.decode("utf-8", "surrogateescape"), False
    if how == "base64-unpadded":
        return encoded.rstrip("="), True
    if how == "base64-junk":
        return "!" + encoded, True
    return encoded, True


@functools.cache
def _notify_requests(app_id: str) -> st.SearchStrategy[dict[str, Any]]:
    genuine = st.sampled_from([_vector_body(GRANTED), _vector_body(CANCELLED)])
    damaged = st.tuples(
        genuine, st.sampled_from(_DAMAGE), st.integers(0, 2**20), st.sampled_from(_JUNK)
    ).map(_damage)
    bodies = st.one_of(
        genuine,  # redelivered: answered from the record
        damaged,
        damaged,
        _forged_notifications(app_id),
        st.binary(max_size=600),
        st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogateescape")),
    )
    delivery = st.sampled_from(
        ["text", "text", "base64", "base64", "base64-unpadded", "base64-junk"]
    )
    return st.builds(
        lambda delivered, content_type: _event(
            "POST",
            "/alipay/notify",
            [],
            headers={"content-type": content_type} if content_type else {},
            body=delivered[0],
            base64_body=delivered[1],
        ),
        st.tuples(bodies, delivery).map(_deliver),
        st.sampled_from(CONTENT_TYPES),
    )


def _genuine_redelivery(event: dict[str, Any]) -> bool:
    """Whether the body carries exactly what Alipay signed in one of the vectors: the content
    signed (PROTOCOL.md §6, either sign_type rule) and the signature bytes. Independent of the
    layer's form decoder, so the layer is not its own oracle."""
    raw = base64.b64decode(event["body"]) if event["isBase64Encoded"] else event["body"].encode()
    pairs = parse_qsl(raw.decode("utf-8", "strict"), keep_blank_values=True)
    params = dict(pairs)
    if len(params) != len(pairs) or not params.get("sign"):
        return False
    for vector in json.loads(read_vector_file("vectors.json"))["notifications"]:
        if vector["expect"] != "accept":
            continue
        for dropped in (("sign",), ("sign", "sign_type")):
            content = "&".join(
                f"{k}={params[k]}" for k in sorted(params) if k not in dropped and params[k]
            )
            if content == vector["sign_content"] and base64.b64decode(
                params["sign"]
            ) == base64.b64decode(vector["params"]["sign"]):
                return True
    return False


@settings(FUZZ, max_examples=fuzz_examples(800))
@given(data=st.data())
def test_no_notification_is_taken_unless_alipay_signed_it(routes: Routes, data: st.DataObject):
    event = data.draw(_notify_requests(routes.service.aws.app_id))
    response = routes.call(event)
    assert response.headers["content-type"].startswith("text/plain")
    event_note(f"{response.status} {response.body}")
    if response.body == "success":
        # A redelivery of a vector already processed: answered from its record.
        assert response.status == 200
        assert _genuine_redelivery(event), _shown(event)
    else:
        assert (response.status, response.body) == (400, "fail"), _shown(event)
    routes.assert_nothing_changed(event)


# --- any method, path, query, headers and body ---------------------------------------------


def _any_requests() -> st.SearchStrategy[dict[str, Any]]:
    fields = {
        "app_id": _values(["2021000100000001"]),
        "app_auth_code": _values(["P9a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5"]),
        "state": st.sampled_from(INJECTIONS),
        "notify_id": st.text(max_size=20),
    }
    bodies = st.one_of(
        st.none(),
        st.text(max_size=200),
        st.binary(max_size=200).map(lambda b: base64.b64encode(b).decode("ascii")),
    )
    return st.builds(
        lambda method, path, pairs, style, content_type, body, flagged: _event(
            method,
            path,
            pairs,
            style=style,
            headers={"content-type": content_type} if content_type else {},
            body=body,
            base64_body=flagged,
        ),
        st.sampled_from(METHODS),
        st.sampled_from(PATHS) | st.text(max_size=40).map(lambda p: "/" + p),
        _pairs(fields),
        _styles,
        st.sampled_from(CONTENT_TYPES),
        bodies,
        st.booleans(),
    )


@settings(FUZZ, max_examples=fuzz_examples(500))
@given(event=_any_requests())
def test_any_method_path_or_body_is_refused_cleanly(routes: Routes, event: dict[str, Any]):
    method = event["requestContext"]["http"]["method"]
    path = event["rawPath"]
    starts = method == "GET" and path == "/alipay/authorize"
    response = routes.call(event)
    if starts and response.status in (200, 302):
        routes.new_writes()  # one state issued: the start-page property checks that write
        routes.states_issued += 1
        return
    assert 400 <= response.status < 500, (response.status, _shown(event))
    routes.assert_nothing_changed(event)


# --- token query: payloads against stored merchants -------------------------------------------


@dataclass(repr=False)
class Query:
    merchants: dict[str, dict[str, Any]]  # auth_app_id -> {"status", "version", "token", "user"}
    calls: AwsCalls
    snapshots: Snapshots
    baseline: Persisted

    def __repr__(self) -> str:  # hypothesis prints it with a failing example: keep it short
        return f"Query(merchants {sorted(self.merchants)})"


@pytest.fixture
def query(service: ServiceStack, monkeypatch: pytest.MonkeyPatch) -> Query:
    importlib.reload(token_query_app)  # a cold start in the service's environment
    monkeypatch.setattr(token_query_app, "cache", LookupCache(max_age_seconds=30.0))
    control = SimulatorControl(service.simulator.url)
    store = runtime().store
    grants = list(
        runtime().client().exchange_code(control.codes(batch_size=3)["app_auth_code"]).grants
    )
    for grant in grants:
        assert store.save_grant(grant, source="authorization").stored
    revoked = grants[2]
    assert store.mark_revoked(
        revoked.auth_app_id, cancelled_at=revoked.answered_at or revoked.received_at, reason="x"
    )
    control.revoke(revoked.auth_app_id)
    # Asked once, so a get_token with required_methods is answered from the item.
    for grant in grants[:2]:
        assert _invoke({"action": "describe", "auth_app_id": grant.auth_app_id})["ok"] is True
    merchants = {}
    for grant in grants:
        stored = store.get(grant.auth_app_id)
        assert stored is not None
        merchants[grant.auth_app_id] = {
            "status": stored.status,
            "version": stored.version,
            "token": grant.app_auth_token,
            "user": grant.user_id,
        }
    snapshots = Snapshots(service.aws.stack, service.aws.endpoint_url)
    return Query(merchants, AwsCalls(), snapshots, snapshots.take())


def _invoke(event: Any) -> dict[str, Any]:
    answer: dict[str, Any] = token_query_app.lambda_handler(
        event, FakeContext(function_name="appauth-token-query")
    )
    return answer


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def _nested(depth: int) -> Any:
    value: Any = "2021000100000001"
    for _ in range(depth):
        value = [value]
    return value


@functools.cache
def _query_payloads(ids: tuple[str, ...], users: tuple[str, ...]) -> st.SearchStrategy[Any]:
    real = st.sampled_from(ids)
    field_values: dict[str, st.SearchStrategy[Any]] = {
        "action": st.sampled_from(["get_token", "describe", "list", "report_invalid"])
        | _values(["get_token"]),
        "auth_app_id": real | _mutations(real) | _json,
        "user_id": st.sampled_from(users) | _mutations(st.sampled_from(users)) | _json,
        "version": st.integers(-2, 5) | st.sampled_from([1.0, "1", True, 2**70]) | _json,
        "required_methods": st.lists(
            st.sampled_from(["alipay.trade.pay", "alipay.trade.refund", "x.y", "DROP", ""])
            | st.sampled_from(INJECTIONS),
            max_size=22,
        )
        | _json,
        "consistent": st.booleans() | _json,
        "status": st.sampled_from(["granted", "revoked", "needs_reauth", "", "GRANTED"]) | _json,
        "cursor": st.text(max_size=700) | st.sampled_from(INJECTIONS),
        "limit": st.integers(-5, 120) | _json,
    }
    # A real request with each field kept, dropped or replaced; sometimes a stray field.
    near_valid = st.fixed_dictionaries(
        {"action": field_values["action"]},
        optional={name: values for name, values in field_values.items() if name != "action"},
    )
    return st.one_of(
        near_valid,
        near_valid.map(lambda d: {**d, "extra": "x"}),
        near_valid.map(lambda d: {**d, "pad": "p" * 5000}),
        st.integers(0, 400).map(_nested),
        st.builds(dict, auth_app_id=real, consistent=st.booleans()),  # the issue-4 shape
    )


_ERROR_CODES = {"not_found", "revoked", "needs_reauth", "method_not_authorized", "bad_request"}


@settings(FUZZ, max_examples=fuzz_examples(650))
@given(data=st.data())
def test_every_token_query_payload_gets_an_answer_and_a_refusal_writes_nothing(
    query: Query, data: st.DataObject
):
    """Complements test_token_query's payload fuzz (no merchant stored there): here the payloads
    name merchants that exist, granted or revoked, and the tables are watched."""
    users = tuple(sorted({m["user"] for m in query.merchants.values()}))
    event = data.draw(_query_payloads(tuple(query.merchants), users))
    writes = query.calls.writes()
    answer = _invoke(event)
    assert json.loads(json.dumps(answer)) == answer
    assert isinstance(answer.get("ok"), bool), answer
    text = json.dumps(answer, ensure_ascii=False)
    assert_no_leak(text, context=event)
    if answer["ok"] is False:
        error = answer["error"]
        assert set(error) >= {"code", "message", "retryable"}
        assert error["code"] in _ERROR_CODES, (event, answer)
        assert len(error["message"]) < 300
        for merchant in query.merchants.values():
            assert merchant["token"] not in text  # a refusal never carries a token
        if query.calls.writes() != writes:
            assert query.snapshots.take() == query.baseline, event
        return
    # A valid answer: any token in it is the current one of a granted merchant.
    for entry in [answer, *answer.get("authorizations", []), *answer.get("items", [])]:
        if "app_auth_token" in entry:
            merchant = query.merchants[entry["auth_app_id"]]
            assert merchant["status"] == STATUS_GRANTED
            assert entry["app_auth_token"] == merchant["token"]
    for item in answer.get("items", []):
        assert "app_auth_token" not in item
    if query.calls.writes() != writes:
        # Only asking Alipay (describe, report_invalid) writes: to a stored merchant's item.
        now = query.snapshots.take()
        changed = now.added_since(query.baseline) + now.removed_since(query.baseline)
        stored = {f"APP#{auth_app_id}" for auth_app_id in query.merchants}
        assert {item["pk"]["S"] for item in changed} <= stored, event
        query.baseline = now
