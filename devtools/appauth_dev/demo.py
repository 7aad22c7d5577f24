"""``make demo``: everything the product can do so far, on embedded defaults, with no AWS and no Alipay.

It generates throw-away key pairs, starts the Alipay simulator on a free loopback port, and walks
the token lifecycle through the real client over HTTP, on the v2 gateway and on v3, printing each
verified result (tokens masked). Any unexpected outcome exits non-zero.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
import requests

from appauth.alipay.client import AlipayClient, Endpoints, Protocol
from appauth.alipay.credentials import AppCredentials
from appauth.alipay.errors import AlipayError
from appauth.alipay.models import TokenGrant
from appauth.alipay.redaction import mask
from appauth.store import AUTH_SK, app_pk
from appauth_dev.keygen import generate_private_key, private_pkcs8_pem, public_pem
from appauth_dev.local_service import LocalService, local_service
from appauth_dev.simulator.config import SimulatorConfig
from appauth_dev.simulator.control import SimulatorControl
from appauth_dev.simulator.server import RunningSimulator, start_simulator

DEMO_APP_ID = "2021000199990001"


class DemoFailedError(Exception):
    """The product did not behave as the demo promises."""


def _say(text: str = "") -> None:
    print(text, flush=True)


def _grant_line(grant: TokenGrant) -> str:
    re_expires = grant.re_expires_at.strftime("%Y-%m-%d") if grant.re_expires_at else "?"
    return (
        f"auth_app_id={grant.auth_app_id} user_id={grant.user_id} "
        f"app_auth_token={mask(grant.app_auth_token)} "
        f"app_refresh_token={mask(grant.app_refresh_token)} refresh-by={re_expires}"
    )


def _mint_code(simulator: RunningSimulator, **body: Any) -> str:
    response = requests.post(f"{simulator.url}/simulator/codes", json=body, timeout=5)
    response.raise_for_status()
    code: str = response.json()["app_auth_code"]
    return code


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise DemoFailedError(what)


def _lifecycle(simulator: RunningSimulator, client: AlipayClient, protocol: Protocol) -> None:
    _say(
        f"── {protocol}: {'POST /gateway.do' if protocol == 'v2' else 'POST /v3/alipay/open/auth/token/app'}"
    )
    code = _mint_code(simulator)
    _say(f"  merchant approved; Alipay redirected with app_auth_code={mask(code)}")

    grant = client.exchange_code(code).single()
    _say(f"  exchange  ✓ signature verified  {_grant_line(grant)}")

    try:
        client.exchange_code(code)
    except AlipayError as error:
        _check(
            error.code in ("40002", "invalid-auth-code") or error.http_status == 400, "replay code"
        )
        _say(
            f"  replay    ✓ the used code is refused: {error.code} {error.sub_code or ''}".rstrip()
        )
    else:
        raise DemoFailedError("a used app_auth_code was accepted twice")

    rotated = client.refresh(grant.app_refresh_token).single()
    _check(rotated.app_auth_token != grant.app_auth_token, "refresh must rotate the token")
    _check(rotated.auth_app_id == grant.auth_app_id, "refresh must keep the merchant app")
    _say(f"  refresh   ✓ pair rotated         {_grant_line(rotated)}")

    info = client.query_authorization(rotated.app_auth_token)
    _check(info.valid, "a fresh token must query as valid")
    _say(
        f"  query     ✓ status={info.status} auth_app_id={info.auth_app_id} "
        f"auth_end={info.auth_end} methods={len(info.auth_methods)}"
    )

    batch = client.exchange_code(_mint_code(simulator, batch_size=3))
    _check(len(batch.grants) == 3, "a batch authorization of 3 apps returns 3 pairs")
    _say(f"  batch     ✓ one code, {len(batch.grants)} merchant apps:")
    for item in batch.grants:
        _say(f"              {_grant_line(item)}")


@contextmanager
def _demo_simulator() -> Iterator[tuple[RunningSimulator, AppCredentials]]:
    app_key, alipay_key = generate_private_key(), generate_private_key()
    config = SimulatorConfig.from_material(
        DEMO_APP_ID, public_pem(app_key), private_pkcs8_pem(alipay_key)
    )
    credentials = AppCredentials.from_keys(
        DEMO_APP_ID, private_pkcs8_pem(app_key), public_pem(alipay_key)
    )
    simulator = start_simulator(config, host="127.0.0.1", port=0)
    try:
        yield simulator, credentials
    finally:
        simulator.shutdown()


def _service_walkthrough() -> None:
    """Part 2: the deployed shape (template stack on moto, the three functions, the simulator)."""
    with local_service() as service:
        _say(
            f"Local stack from template.yaml on moto: tables {service.stack.tokens_table}, "
            f"{service.stack.idempotency_table}; Alipay simulator at {service.simulator.url}"
        )
        status, start = service.http("GET", "/alipay/authorize", {"merchant_ref": "shop-42"})
        _check(status == 200 and "authorization_url" in start, f"start page answered {status}")
        _say(
            "  GET  /alipay/authorize?merchant_ref=shop-42   → 200, Alipay link + QR code, signed one-time state"
        )

        redirect = service.approve(start["authorization_url"])
        _say(
            f"  merchant approves on Alipay's consent page → redirect with app_auth_code={mask(redirect['app_auth_code'])}"
        )
        status, granted = service.http("GET", "/alipay/callback", redirect)
        _check(
            status == 200 and granted.get("status") == "granted",
            f"callback answered {status}: {granted}",
        )
        auth_app_id = granted["auth_app_ids"][0]
        _say(
            f"  GET  /alipay/callback                        → 200 granted auth_app_id={auth_app_id} merchant_ref={granted['merchant_ref']}"
        )

        status, again = service.http("GET", "/alipay/callback", redirect)
        _check(status == 200 and again == granted, "a repeated redirect must show the same result")
        _say(
            "  GET  /alipay/callback (same redirect again)  → 200 same result, no second exchange (idempotent)"
        )

        status, replay = service.http(
            "GET", "/alipay/callback", {**redirect, "app_auth_code": "a" * 32}
        )
        _check(status == 409, f"a replayed state must be refused, got {status}")
        _say(
            f"  GET  /alipay/callback (state reused)         → {status} {replay['error']['reason']}"
        )
        forged = {**redirect, "state": redirect["state"][:-4] + "AAAA"}
        status, refused = service.http("GET", "/alipay/callback", forged)
        _check(status == 400, f"a forged state must be refused, got {status}")
        _say(
            f"  GET  /alipay/callback (forged state)         → {status} {refused['error']['reason']}"
        )

        stored = service.invoke("token_query", {"action": "get_token", "auth_app_id": auth_app_id})
        _check(
            stored.get("status") == "granted" and bool(stored.get("app_auth_token")),
            f"token query: {stored}",
        )
        _say(
            f"  invoke token_query get_token                 → granted app_auth_token={mask(stored['app_auth_token'])} version={stored['version']}"
        )

        again_start = service.http("GET", "/alipay/authorize", {"merchant_ref": "shop-42"})[1]
        status, _ = service.http(
            "GET",
            "/alipay/callback",
            service.approve(again_start["authorization_url"], auth_app_id=auth_app_id),
        )
        renewed = service.invoke(
            "token_query", {"action": "get_token", "auth_app_id": auth_app_id, "consistent": True}
        )
        _check(
            status == 200 and renewed["version"] == 2,
            f"re-authorization: {status} {renewed.get('version')}",
        )
        _check(
            renewed["app_auth_token"] != stored["app_auth_token"],
            "re-authorization must store the new pair",
        )
        _say(
            f"  re-authorization (token_query consistent)    → version={renewed['version']} app_auth_token={mask(renewed['app_auth_token'])}"
        )

        raw = boto3.client("dynamodb").get_item(
            TableName=service.stack.tokens_table,
            Key={"pk": {"S": app_pk(auth_app_id)}, "sk": {"S": AUTH_SK}},
        )["Item"]
        _check(
            renewed["app_auth_token"] not in repr(raw),
            "the raw item must not hold the token in clear",
        )
        _say(
            f"  raw DynamoDB item                            → no plaintext token; sealed under KMS key {raw['tokens']['M']['key_id']['S'].rsplit('/', 1)[-1]}"
        )

        status, batch_start = service.http(
            "GET", "/alipay/authorize", {"batch": "1", "application_type": "TINYAPP,WEBAPP"}
        )
        status, batch = service.http(
            "GET", "/alipay/callback", service.approve(batch_start["authorization_url"])
        )
        _check(
            status == 200 and len(batch["auth_app_ids"]) == 2, f"batch callback: {status} {batch}"
        )
        _say(
            f"  batch authorization (TINYAPP,WEBAPP)         → 200 granted {len(batch['auth_app_ids'])} merchant apps"
        )

        report = service.invoke("refresh", {"due": True})
        _say(
            f"  invoke refresh (schedule)                    → due={report['due']} rotated={report['rotated']} (fresh pairs are not due)"
        )
        _rotation_walkthrough(service, auth_app_id, batch["auth_app_ids"])


def _rotation_walkthrough(service: LocalService, auth_app_id: str, others: list[str]) -> None:
    """The rotation protocol through the refresh function's manual trigger (due or not)."""
    control = SimulatorControl(service.simulator.url)

    def refresh(app: str) -> str:
        result = service.invoke("refresh", {"auth_app_ids": [app]})
        (entry,) = result["merchants"]
        return str(entry["outcome"])

    before = service.invoke(
        "token_query", {"action": "get_token", "auth_app_id": auth_app_id, "consistent": True}
    )
    outcome = refresh(auth_app_id)
    after = service.invoke(
        "token_query", {"action": "get_token", "auth_app_id": auth_app_id, "consistent": True}
    )
    _check(
        outcome == "rotated" and after["version"] == before["version"] + 1,
        f"refresh: {outcome} version {after.get('version')}",
    )
    _say(
        f"  invoke refresh {{auth_app_ids}}               → {outcome}: version={after['version']} app_auth_token={mask(after['app_auth_token'])}"
    )
    # Alipay rotates but the answer is lost; this Alipay replays a superseded refresh token.
    control.behaviour(superseded_refresh="same_pair")
    control.add_rule(
        method="alipay.open.auth.token.app",
        grant_type="refresh_token",
        fault="timeout",
        after_processing=True,
        count=1,
        timeout_seconds=0.1,
    )
    outcome = refresh(auth_app_id)
    current = control.merchant(auth_app_id)
    held = service.invoke(
        "token_query", {"action": "get_token", "auth_app_id": auth_app_id, "consistent": True}
    )
    _check(
        outcome == "recovered"
        and current is not None
        and held["app_auth_token"] == current["current"]["app_auth_token"],
        f"a lost answer must be reconciled: {outcome}",
    )
    _say(
        f"  refresh whose answer is lost (timeout)       → {outcome}: resent once, Alipay's pair stored (version={held['version']})"
    )
    # The merchant cancels at Alipay and no notification arrives.
    cancelled = others[0]
    control.revoke(cancelled, notify=False)
    outcome = refresh(cancelled)
    answer = service.invoke(
        "token_query", {"action": "get_token", "auth_app_id": cancelled, "consistent": True}
    )
    _check(
        outcome == "revoked"
        and answer.get("status") == "revoked"
        and not answer.get("app_auth_token"),
        f"a silent cancellation must revoke: {outcome} {answer.get('status')}",
    )
    _say(
        f"  silent cancellation, then refresh            → {outcome}: refused, the query said invalid; token_query status={answer['status']}, no token"
    )


def run_demo() -> int:
    _say("appauth demo: the token lifecycle against the local Alipay simulator (no AWS, no Alipay)")
    with _demo_simulator() as (simulator, credentials):
        _say(
            f"Alipay simulator listening on {simulator.url} (fresh RSA-2048 keys for app {DEMO_APP_ID})"
        )
        _say()
        endpoints = Endpoints.local(simulator.url)
        try:
            for protocol in ("v2", "v3"):
                _lifecycle(
                    simulator, AlipayClient(credentials, endpoints, protocol=protocol), protocol
                )
                _say()
        except (DemoFailedError, AlipayError) as error:
            print(f"demo FAILED: {error}", file=sys.stderr)
            return 1
        stats = requests.get(f"{simulator.url}/simulator/stats", timeout=5)
        if stats.ok:
            _say(f"simulator saw: {json.dumps(stats.json(), ensure_ascii=False, sort_keys=True)}")
    _say()
    _say(
        "── the service: template.yaml's stack on moto, the three functions invoked as Lambda would"
    )
    try:
        _service_walkthrough()
    except (DemoFailedError, AlipayError) as error:
        print(f"demo FAILED: {error}", file=sys.stderr)
        return 1
    _say()
    _say("demo OK")
    return 0
