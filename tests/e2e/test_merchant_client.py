"""An ISV Lambda calling Alipay for a merchant: MerchantClient + TokenClient through the real token
query handler (invoked in-process by LocalLambdaClient, as boto3 would invoke it), the template's
stack on moto, and the Alipay simulator playing Alipay. The simulator's merchant-scoped business
method is ``alipay.open.mini.baseinfo.query`` (it checks the ``app_auth_token`` like any
business API; other method names are refused with ``isv.invalid-method``), so it stands in for
``alipay.trade.query`` here.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from appauth.alipay.client import AlipayClient, Endpoints
from appauth.alipay.errors import AlipayError
from appauth.callers import (
    MerchantClient,
    MerchantMustReauthorizeError,
    RevokedError,
    TokenClient,
)
from appauth.runtime import runtime
from appauth_dev.local_lambda import LocalLambdaClient
from appauth_dev.local_service import LocalService, local_service
from appauth_dev.simulator.control import SimulatorControl

TOKEN_QUERY = "appauth-local-token-query"
REFRESH = "appauth-local-refresh"
BUSINESS_METHOD = "alipay.open.mini.baseinfo.query"


@pytest.fixture(scope="module")
def local() -> Iterator[LocalService]:
    with local_service() as service:
        yield service


@dataclass
class Isv:
    """What an ISV Lambda holds: its own Alipay client, a TokenClient, and the simulator."""

    service: LocalService
    lam: LocalLambdaClient
    tokens: TokenClient
    alipay: AlipayClient
    ctl: SimulatorControl

    def authorize(self) -> str:
        """A merchant authorizes the ISV's app (start page, consent, callback)."""
        auth_app_id = "2021" + "".join(secrets.choice("0123456789") for _ in range(12))
        status, start = self.service.http("GET", "/alipay/authorize", {"merchant_ref": "shop-1"})
        assert status == 200
        redirect = self.service.approve(start["authorization_url"], auth_app_id=auth_app_id)
        status, granted = self.service.http("GET", "/alipay/callback", redirect)
        assert status == 200, granted
        assert granted["status"] == "granted"
        assert granted["auth_app_ids"] == [auth_app_id]
        return auth_app_id

    def merchant(self, auth_app_id: str) -> MerchantClient:
        return MerchantClient(self.alipay, self.tokens, auth_app_id)

    def refresh(self, auth_app_id: str) -> str:
        response = self.lam.invoke(
            FunctionName=REFRESH, Payload=json.dumps({"auth_app_ids": [auth_app_id]})
        )
        assert "FunctionError" not in response
        (entry,) = json.loads(response["Payload"].read())["merchants"]
        return str(entry["outcome"])

    def query(self, **request: Any) -> dict[str, Any]:
        """The token query function's raw answer."""
        response = self.lam.invoke(FunctionName=TOKEN_QUERY, Payload=json.dumps(request))
        assert "FunctionError" not in response
        answer: dict[str, Any] = json.loads(response["Payload"].read())
        return answer

    def alipay_token(self, auth_app_id: str) -> str:
        record = self.ctl.merchant(auth_app_id)
        assert record is not None
        return str(record["current"]["app_auth_token"])

    def actions(self) -> list[str]:
        return [
            event.get("action", "get_token")
            for name, event in self.lam.calls
            if name == TOKEN_QUERY
        ]


@pytest.fixture
def isv(local: LocalService) -> Isv:
    ctl = SimulatorControl(local.simulator.url)
    ctl.reset()
    lam = LocalLambdaClient.for_service(
        local,
        {"token_query": TOKEN_QUERY, "refresh": REFRESH, "callback": "appauth-local-callback"},
    )
    tokens = TokenClient(TOKEN_QUERY, lambda_client=lam, sleep=lambda _: None)
    # The ISV Lambda signs its own calls with the ISV app's key (here: the service's own).
    alipay = AlipayClient(runtime().credentials(), Endpoints.local(local.simulator.url))
    return Isv(local, lam, tokens, alipay, ctl)


def test_a_merchant_call_carries_the_merchants_token(isv: Isv) -> None:
    auth_app_id = isv.authorize()
    merchant = isv.merchant(auth_app_id)
    answer = merchant.call(BUSINESS_METHOD, {"out_trade_no": "T-1"})
    assert answer["code"] == "10000"
    merchant.call(BUSINESS_METHOD, {"out_trade_no": "T-2"})
    assert isv.actions() == ["get_token"]  # the second call used the container's cache
    token = isv.tokens.get(auth_app_id)
    assert token.app_auth_token == isv.alipay_token(auth_app_id)
    assert token.status == "granted"
    assert token.user_id
    assert token.app_auth_token not in repr(token)


def test_after_a_rotation_a_stale_cached_token_is_reported_and_the_call_retried_once(
    isv: Isv,
) -> None:
    isv.ctl.behaviour(token_grace_seconds=0)  # this Alipay refuses a superseded token at once
    auth_app_id = isv.authorize()
    merchant = isv.merchant(auth_app_id)
    merchant.call(BUSINESS_METHOD, {"out_trade_no": "T-1"})
    cached = isv.tokens.get(auth_app_id)

    assert isv.refresh(auth_app_id) == "rotated"
    assert isv.tokens.get(auth_app_id) == cached  # still cached in the ISV's container
    with pytest.raises(AlipayError) as refused:
        isv.alipay.call(BUSINESS_METHOD, {}, app_auth_token=cached.app_auth_token)
    assert refused.value.app_auth_token_dead

    isv.lam.calls.clear()
    answer = merchant.call(BUSINESS_METHOD, {"out_trade_no": "T-1"})
    assert answer["code"] == "10000"
    # The stale report carries the current token: no further look-up before the retry.
    assert isv.actions() == ["report_invalid"]
    current = isv.tokens.get(auth_app_id)
    assert current.version == cached.version + 1
    assert current.app_auth_token == isv.alipay_token(auth_app_id)
    stats = isv.ctl.stats()["requests"][BUSINESS_METHOD]
    assert sum(stats.values()) == 4  # T-1, the direct refused call, the refused try, the retry


def test_after_a_revocation_the_merchant_must_reauthorize(isv: Isv) -> None:
    auth_app_id = isv.authorize()
    merchant = isv.merchant(auth_app_id)
    merchant.call(BUSINESS_METHOD, {"out_trade_no": "T-1"})
    token = isv.tokens.get(auth_app_id)

    isv.ctl.revoke(auth_app_id)  # cancelled at Alipay, no notification
    isv.lam.calls.clear()
    with pytest.raises(MerchantMustReauthorizeError) as caught:
        merchant.call(BUSINESS_METHOD, {"out_trade_no": "T-2"})
    error = caught.value
    assert isinstance(error, RevokedError)
    assert error.code == "revoked"
    assert error.auth_app_id == auth_app_id
    assert auth_app_id in str(error)
    assert token.app_auth_token not in str(error)
    assert token.app_auth_token not in repr(error)
    # Reported (the service asked Alipay: invalid, so revoked), then read consistently.
    assert isv.actions() == ["report_invalid", "get_token"]
    assert isv.lam.calls[-1][1]["consistent"] is True

    with pytest.raises(RevokedError):
        isv.tokens.get(auth_app_id)  # evicted: asks the function, which says revoked
    answer = isv.query(action="get_token", auth_app_id=auth_app_id, consistent=True)
    assert answer["ok"] is False
    assert answer["error"]["code"] == "revoked"
    assert answer.get("status", "revoked") == "revoked"
    assert "app_auth_token" not in answer
    assert token.app_auth_token not in json.dumps(answer)


def test_describe_list_and_user_lookups_through_the_real_handler(isv: Isv) -> None:
    auth_app_id = isv.authorize()
    token = isv.tokens.get(auth_app_id, consistent=True)
    summary = isv.tokens.describe(auth_app_id)
    assert summary.auth_app_id == auth_app_id
    assert summary.status == "granted"
    assert token.app_auth_token not in repr(summary)
    page = isv.tokens.list(status="granted", limit=100)
    assert auth_app_id in {item.auth_app_id for item in page.items}
    assert token.app_auth_token not in repr(page)
    assert token.user_id is not None
    mine = [a for a in isv.tokens.get_for_user(token.user_id) if a.auth_app_id == auth_app_id]
    assert len(mine) == 1
    assert mine[0].token is not None
    assert mine[0].token.app_auth_token == token.app_auth_token
