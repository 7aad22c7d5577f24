"""The real AlipayClient (appauth.alipay.client) against the running simulator, over real HTTP.

Every test runs the client exactly as a Lambda would (its own requests session, real signing
and verification); the simulator's statistics and a counting session say how many requests
were really sent, and a recorder replaces ``sleep`` so retries cost no time. Every error a test
provokes is checked to carry no code or token in its message.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
import requests

from appauth.alipay.client import (
    V3_QUERY_PATH,
    AlipayClient,
    Endpoints,
    Protocol,
    RetryPolicy,
)
from appauth.alipay.credentials import AppCredentials
from appauth.alipay.errors import (
    AlipayError,
    OutcomeUnknownError,
    SignatureError,
    TransportError,
    UnexpectedResponseError,
)
from appauth.alipay.models import TokenGrant
from appauth_dev.simulator import RunningSimulator, SimulatorControl
from appauth_dev.simulator.state import EXPIRES_IN, RE_EXPIRES_IN

ATTEMPTS = 3
READ_TIMEOUT = 5.0
# The timeout tests: the simulator holds the request just longer than the client waits.
SHORT_READ_TIMEOUT = 0.3
HELD_SECONDS = 0.4
TOKEN_SHAPE = re.compile(r"^\d{6}BB[0-9a-f]{32}X\d{2}$")
BASEINFO = "alipay.open.mini.baseinfo.query"
SIGNATURE_FAULTS = ["tamper", "wrong_key", "drop_sign", "garbage", "truncate"]
E = TypeVar("E", bound=BaseException)


class CountingSession(requests.Session):
    """A real session that counts the requests it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        self.sent += 1
        return super().request(*args, **kwargs)


@dataclass
class Harness:
    """One test's simulator, client factory and everything secret it has seen."""

    sim: RunningSimulator
    credentials: AppCredentials
    protocol: Protocol
    sleeps: list[float] = field(default_factory=list)
    secrets: set[str] = field(default_factory=set)
    sessions: list[CountingSession] = field(default_factory=list)

    def client(
        self,
        *,
        read_timeout: float = READ_TIMEOUT,
        endpoints: Endpoints | None = None,
        encrypt: bool = False,
    ) -> AlipayClient:
        session = CountingSession()
        self.sessions.append(session)
        return AlipayClient(
            self.credentials,
            endpoints or Endpoints.local(self.sim.url),
            protocol=self.protocol,
            encrypt=encrypt,
            session=session,
            read_timeout=read_timeout,
            retry=RetryPolicy(attempts=ATTEMPTS, base_delay=0, max_delay=0),
            sleep=self.sleeps.append,
        )

    @property
    def sent(self) -> int:
        return sum(session.sent for session in self.sessions)

    # --- the simulator's control API, over HTTP ------------------------------------------

    def control(self, name: str, body: dict[str, Any] | None = None) -> Any:
        response = requests.post(f"{self.sim.url}/simulator/{name}", json=body or {}, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()

    def faults(self, **changes: Any) -> None:
        self.control("faults", changes)

    def advance(self, seconds: float) -> None:
        self.control("clock", {"advance_seconds": seconds})

    def mint(self, **body: Any) -> dict[str, Any]:
        minted: dict[str, Any] = self.control("codes", body)
        self.secrets.add(minted["app_auth_code"])
        return minted

    def stats(self, what: str) -> dict[str, int]:
        """Outcome counts of ``token`` (exchange/refresh) or ``query`` for this protocol."""
        method = {
            "token": "alipay.open.auth.token.app",
            "query": "alipay.open.auth.token.app.query",
        }
        label = method[what] if self.protocol == "v2" else f"v3 {method[what]}"
        response = requests.get(f"{self.sim.url}/simulator/stats", timeout=10)
        counts: dict[str, int] = response.json()["requests"].get(label, {})
        return counts

    # --- client calls that record what they return ---------------------------------------

    def remember(self, grants: tuple[TokenGrant, ...]) -> tuple[TokenGrant, ...]:
        for grant in grants:
            self.secrets |= {grant.app_auth_token, grant.app_refresh_token}
        return grants

    def exchange(self, client: AlipayClient, code: str) -> tuple[TokenGrant, ...]:
        return self.remember(client.exchange_code(code).grants)

    def grant(self, client: AlipayClient | None = None, **mint: Any) -> TokenGrant:
        """A fresh authorization (mint + exchange), with no fault in the way."""
        (grant,) = self.exchange(client or self.client(), self.mint(**mint)["app_auth_code"])
        return grant

    def refresh(self, client: AlipayClient, refresh_token: str) -> TokenGrant:
        (grant,) = self.remember(client.refresh(refresh_token).grants)
        return grant

    def raises(self, kind: type[E], call: Callable[..., Any], *args: Any, **kwargs: Any) -> E:
        """``call`` raises exactly ``kind``, whose message names no code or token."""
        with pytest.raises(kind) as info:
            call(*args, **kwargs)
        error = info.value
        assert type(error) is kind, f"{type(error).__name__}: {error}"
        self.assert_no_secret(error)
        return error

    def assert_no_secret(self, error: BaseException) -> None:
        secrets = set(self.secrets)
        for auth_app_id in self.sim.state.merchant_ids():
            pair = self.sim.state.current_pair(auth_app_id)
            if pair is not None:  # also the pairs the client never saw (lost answers)
                secrets |= {pair.app_auth_token, pair.app_refresh_token}
        text = f"{error}\n{error!r}"
        leaked = [secret for secret in secrets if secret in text]
        assert not leaked, f"{type(error).__name__} leaks a secret: {text}"


def make_harness(sim: RunningSimulator, credentials: AppCredentials, protocol: Protocol) -> Harness:
    return Harness(sim, credentials, protocol)


@pytest.fixture(params=["v2", "v3"])
def h(request: pytest.FixtureRequest, simulator: RunningSimulator, app_credentials) -> Harness:
    protocol: Protocol = request.param
    return make_harness(simulator, app_credentials, protocol)


def assert_token_error(h: Harness, error: AlipayError, *, v2: tuple[str, str], v3: str) -> None:
    """A signed, permanent refusal of a code or refresh token: v2 (code, sub_code), v3 400 code."""
    assert error.signed
    assert error.permanent
    if h.protocol == "v2":
        assert (error.code, error.sub_code) == v2
    else:
        assert (error.http_status, error.code) == (400, v3)
        assert error.trace_id


# --- exchange, refresh, query ---------------------------------------------------------------------


def test_exchange_single_authorization(h: Harness) -> None:
    client = h.client()
    minted = h.mint()
    before = datetime.now(UTC)
    response = client.exchange_code(minted["app_auth_code"])
    after = datetime.now(UTC)
    grant = response.single()
    h.remember(response.grants)
    assert grant.auth_app_id == minted["auth_app_ids"][0]
    assert grant.user_id == minted["user_id"]
    assert TOKEN_SHAPE.match(grant.app_auth_token)
    assert TOKEN_SHAPE.match(grant.app_refresh_token)
    assert grant.app_auth_token != grant.app_refresh_token
    assert (grant.expires_in, grant.re_expires_in) == (EXPIRES_IN, RE_EXPIRES_IN)
    assert grant.received_at.tzinfo is not None
    assert before <= grant.received_at <= after
    assert grant.re_expires_at == grant.received_at + timedelta(seconds=RE_EXPIRES_IN)
    assert grant.expires_at == grant.received_at + timedelta(seconds=EXPIRES_IN)
    # What the simulator issued is what the client returned, and repr never shows it.
    pair = h.sim.state.current_pair(grant.auth_app_id)
    assert pair is not None
    assert (pair.app_auth_token, pair.app_refresh_token) == (
        grant.app_auth_token,
        grant.app_refresh_token,
    )
    assert grant.app_auth_token not in repr(response)
    assert grant.app_refresh_token not in repr(response)
    assert (h.sent, h.sleeps) == (1, [])


def test_exchange_batch_authorization(h: Harness) -> None:
    client = h.client()
    minted = h.mint(batch_size=3)
    response = client.exchange_code(minted["app_auth_code"])
    grants = h.remember(response.grants)
    assert [g.auth_app_id for g in grants] == minted["auth_app_ids"]
    assert len({g.auth_app_id for g in grants}) == 3
    assert len({g.app_auth_token for g in grants}) == 3
    assert {g.user_id for g in grants} == {minted["user_id"]}
    assert len({g.received_at for g in grants}) == 1
    h.raises(UnexpectedResponseError, response.single)
    for grant in grants:
        assert client.query_authorization(grant.app_auth_token).auth_app_id == grant.auth_app_id


def test_query_a_valid_token(h: Harness) -> None:
    client = h.client()
    grant = h.grant(client)
    info = client.query_authorization(grant.app_auth_token)
    assert info.valid
    assert (info.status, info.auth_app_id, info.user_id) == (
        "valid",
        grant.auth_app_id,
        grant.user_id,
    )
    assert BASEINFO in info.auth_methods
    assert info.expires_in is not None
    assert 0 < info.expires_in <= EXPIRES_IN
    for moment in (info.auth_start, info.auth_end):
        assert moment is not None
        datetime.strptime(moment, "%Y-%m-%d %H:%M:%S")


def test_refresh_rotates_and_the_old_refresh_token_is_refused(h: Harness) -> None:
    client = h.client()
    old = h.grant(client)
    new = h.refresh(client, old.app_refresh_token)
    assert new.auth_app_id == old.auth_app_id
    assert new.user_id == old.user_id
    assert new.app_auth_token not in (old.app_auth_token, old.app_refresh_token)
    assert new.app_refresh_token not in (old.app_auth_token, old.app_refresh_token)
    assert client.query_authorization(new.app_auth_token).valid
    error = h.raises(AlipayError, client.refresh, old.app_refresh_token)
    assert_token_error(
        h, error, v2=("40002", "isv.refresh-token-invalid"), v3="invalid-refresh-token"
    )
    # The current pair still refreshes: the refusal changed nothing.
    assert h.refresh(client, new.app_refresh_token).auth_app_id == old.auth_app_id
    assert h.sleeps == []


def test_reauthorizing_an_app_issues_a_new_pair(h: Harness) -> None:
    client = h.client()
    first = h.grant(client)
    second = h.grant(client, auth_app_id=first.auth_app_id)
    assert (second.auth_app_id, second.user_id) == (first.auth_app_id, first.user_id)
    assert second.app_auth_token != first.app_auth_token
    assert second.app_refresh_token != first.app_refresh_token
    pair = h.sim.state.current_pair(first.auth_app_id)
    assert pair is not None
    assert pair.app_auth_token == second.app_auth_token
    assert client.query_authorization(second.app_auth_token).valid
    # The superseded refresh token no longer refreshes.
    error = h.raises(AlipayError, client.refresh, first.app_refresh_token)
    assert_token_error(
        h, error, v2=("40002", "isv.refresh-token-invalid"), v3="invalid-refresh-token"
    )


# --- codes -------------------------------------------------------------------------------------------


def test_a_code_is_single_use(h: Harness) -> None:
    client = h.client()
    code = h.mint()["app_auth_code"]
    h.exchange(client, code)
    error = h.raises(AlipayError, client.exchange_code, code)
    assert_token_error(h, error, v2=("40002", "isv.code-invalid"), v3="invalid-auth-code")
    assert h.stats("token") == {"success": 1, "business_error": 1}
    assert h.sleeps == []


@pytest.mark.parametrize(("batch", "lifetime"), [(False, 24 * 3600), (True, 600)])
def test_an_expired_code_is_refused(h: Harness, batch: bool, lifetime: int) -> None:
    client = h.client()
    code = h.mint(**({"batch_size": 2} if batch else {}))["app_auth_code"]
    h.advance(lifetime + 1)
    error = h.raises(AlipayError, client.exchange_code, code)
    assert_token_error(h, error, v2=("40002", "isv.code-invalid"), v3="invalid-auth-code")
    assert h.sim.state.merchant_ids() == []


# --- rotation grace and revocation ----------------------------------------------------------------


def test_the_old_token_works_only_within_the_grace(h: Harness) -> None:
    client = h.client()
    old = h.grant(client)
    new = h.refresh(client, old.app_refresh_token)
    grace = h.sim.state.grace_seconds
    h.advance(grace - 5)
    assert client.query_authorization(old.app_auth_token).valid
    h.advance(10)
    error = h.raises(AlipayError, client.query_authorization, old.app_auth_token)
    assert error.signed
    assert error.permanent
    if h.protocol == "v2":
        assert (error.code, error.sub_code) == ("20001", "aop.invalid-app-auth-token")
    else:
        assert (error.http_status, error.code) == (401, "invalid-app-auth-token")
    assert client.query_authorization(new.app_auth_token).valid
    # A permanent error is not retried, even for a query.
    assert h.sleeps == []


def test_a_revoked_authorization_queries_invalid(h: Harness) -> None:
    client = h.client()
    grant = h.grant(client)
    h.control("revoke", {"auth_app_id": grant.auth_app_id})
    info = client.query_authorization(grant.app_auth_token)
    assert (info.status, info.valid, info.expires_in) == ("invalid", False, 0)
    error = h.raises(AlipayError, client.refresh, grant.app_refresh_token)
    assert_token_error(
        h, error, v2=("40002", "isv.refresh-token-invalid"), v3="invalid-refresh-token"
    )


# --- corrupted answers --------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", SIGNATURE_FAULTS)
def test_a_corrupted_answer_is_a_signature_error_and_never_resent(h: Harness, fault: str) -> None:
    client = h.client()
    grant = h.grant(client)
    code = h.mint()["app_auth_code"]
    h.faults(response_fault=fault)
    h.raises(SignatureError, client.exchange_code, code)
    h.raises(SignatureError, client.refresh, grant.app_refresh_token)
    h.raises(SignatureError, client.query_authorization, grant.app_auth_token)
    # One request each: a signature failure is not transient, not even for a query.
    assert h.stats("token") == {"success": 1, "corrupted": 2}
    assert h.stats("query") == {"corrupted": 1}
    assert (h.sent, h.sleeps) == (4, [])
    # Alipay processed both token calls: the code is spent and the pair rotated, although the
    # client got no usable answer. It must reconcile, never resend.
    h.faults(response_fault=None)
    error = h.raises(AlipayError, client.exchange_code, code)
    assert_token_error(h, error, v2=("40002", "isv.code-invalid"), v3="invalid-auth-code")
    error = h.raises(AlipayError, client.refresh, grant.app_refresh_token)
    assert_token_error(
        h, error, v2=("40002", "isv.refresh-token-invalid"), v3="invalid-refresh-token"
    )
    assert len(h.sim.state.merchant_ids()) == 2
    assert client.query_authorization(grant.app_auth_token).valid  # within the grace


def test_a_corrupted_answer_without_processing_leaves_the_code_usable(h: Harness) -> None:
    client = h.client()
    code = h.mint()["app_auth_code"]
    h.faults(response_fault="wrong_key", response_fault_after_processing=False)
    h.raises(SignatureError, client.exchange_code, code)
    h.faults(response_fault=None)
    assert len(h.exchange(client, code)) == 1


@pytest.mark.parametrize("fault", ["oversized", "html_502"])
def test_an_oversized_or_proxy_answer_is_outcome_unknown_or_retried(h: Harness, fault: str) -> None:
    client = h.client()
    grant = h.grant(client)
    code = h.mint()["app_auth_code"]
    h.faults(response_fault=fault)
    h.raises(OutcomeUnknownError, client.exchange_code, code)
    h.raises(OutcomeUnknownError, client.refresh, grant.app_refresh_token)
    assert h.stats("token") == {"success": 1, "corrupted": 2}
    assert h.sleeps == []
    h.raises(TransportError, client.query_authorization, grant.app_auth_token)
    assert h.stats("query") == {"corrupted": ATTEMPTS}
    assert h.sleeps == [0] * (ATTEMPTS - 1)
    assert h.sent == 1 + 2 + ATTEMPTS


def test_a_query_is_retried_past_a_corrupted_answer(h: Harness) -> None:
    client = h.client()
    grant = h.grant(client)
    # Seed 4 at rate 0.5: the first two answers are corrupted, the third is not.
    h.faults(response_fault="html_502", response_fault_rate=0.5, seed=4)
    assert client.query_authorization(grant.app_auth_token).valid
    assert h.stats("query") == {"corrupted": 2, "success": 1}
    assert h.sleeps == [0, 0]
    # The same first draw for an exchange: outcome unknown, sent once.
    code = h.mint()["app_auth_code"]
    h.faults(seed=4)
    h.raises(OutcomeUnknownError, client.exchange_code, code)
    assert h.stats("token") == {"success": 1, "corrupted": 1}
    assert h.sleeps == [0, 0]


# --- Alipay busy, rate limits, timeouts, refused connections ---------------------------------------


def test_service_unavailable_is_resent_only_for_a_query(h: Harness) -> None:
    client = h.client()
    grant = h.grant(client)
    code = h.mint()["app_auth_code"]
    h.faults(error_rate=1)
    for call, secret in ((client.exchange_code, code), (client.refresh, grant.app_refresh_token)):
        error = h.raises(AlipayError, call, secret)
        assert (error.transient, error.signed) == (True, False)
        if h.protocol == "v2":
            assert (error.code, error.sub_code) == ("20000", "isp.unknow-error")
        else:
            assert (error.http_status, error.code) == (503, "service-unavailable")
    assert h.stats("token") == {"success": 1, "fault_error": 2}
    assert h.sleeps == []
    error = h.raises(AlipayError, client.query_authorization, grant.app_auth_token)
    assert (error.transient, error.signed) == (True, False)
    assert h.stats("query") == {"fault_error": ATTEMPTS}
    assert h.sleeps == [0] * (ATTEMPTS - 1)
    # Nothing was processed: the code still works.
    h.faults(error_rate=0)
    assert len(h.exchange(client, code)) == 1


def test_rate_limited_calls_are_transient_and_queries_retried(h: Harness) -> None:
    client = h.client()
    grant = h.grant(client)
    code = h.mint()["app_auth_code"]
    h.faults(rate_limit_per_second=1)
    assert client.query_authorization(grant.app_auth_token).valid  # the one admitted call
    error = h.raises(AlipayError, client.exchange_code, code)
    assert (error.transient, error.signed) == (True, True)
    if h.protocol == "v2":
        assert (error.code, error.sub_code) == ("40004", "isv.app-call-limited")
    else:
        assert (error.http_status, error.code) == (429, "app-call-limited")
    assert h.stats("token") == {"success": 1, "rate_limited": 1}
    assert h.sleeps == []
    error = h.raises(AlipayError, client.query_authorization, grant.app_auth_token)
    assert error.transient
    assert h.stats("query") == {"success": 1, "rate_limited": ATTEMPTS}
    assert h.sleeps == [0] * (ATTEMPTS - 1)


def test_a_timeout_is_outcome_unknown_and_the_code_is_spent(h: Harness) -> None:
    client = h.client()
    impatient = h.client(read_timeout=SHORT_READ_TIMEOUT)
    grant = h.grant(client)
    code = h.mint()["app_auth_code"]
    h.faults(timeout_rate=1, timeout_seconds=HELD_SECONDS, timeout_after_processing=True)
    h.raises(OutcomeUnknownError, impatient.exchange_code, code)
    h.raises(OutcomeUnknownError, impatient.refresh, grant.app_refresh_token)
    assert h.stats("token") == {"success": 1, "timeout": 2}
    assert h.sleeps == []
    h.raises(TransportError, impatient.query_authorization, grant.app_auth_token)
    assert h.stats("query") == {"timeout": ATTEMPTS}
    assert h.sleeps == [0] * (ATTEMPTS - 1)
    assert h.sent == 1 + 2 + ATTEMPTS
    # The lesson of "outcome unknown": Alipay did process both calls.
    h.faults(timeout_rate=0)
    error = h.raises(AlipayError, client.exchange_code, code)
    assert_token_error(h, error, v2=("40002", "isv.code-invalid"), v3="invalid-auth-code")
    error = h.raises(AlipayError, client.refresh, grant.app_refresh_token)
    assert_token_error(
        h, error, v2=("40002", "isv.refresh-token-invalid"), v3="invalid-refresh-token"
    )
    # Reconcile: the old token still answers within the grace, for the same merchant app.
    assert client.query_authorization(grant.app_auth_token).auth_app_id == grant.auth_app_id
    assert len(h.sim.state.merchant_ids()) == 2


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_a_refused_connection_is_always_resent(h: Harness) -> None:
    client = h.client(endpoints=Endpoints.local(f"http://127.0.0.1:{closed_port()}"))
    code, refresh_token, token = "a" * 29 + "F01", "202401BB" + "0" * 32 + "X01", "x" * 40
    h.secrets |= {code, refresh_token, token}
    for number, (call, secret) in enumerate(
        (
            (client.exchange_code, code),
            (client.refresh, refresh_token),
            (client.query_authorization, token),
        ),
        start=1,
    ):
        # Never OutcomeUnknownError: a request that never left cannot have been processed.
        h.raises(TransportError, call, secret)
        assert h.sent == ATTEMPTS * number
        assert h.sleeps == [0] * ((ATTEMPTS - 1) * number)


# --- certificate mode and AES -------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["v2", "v3"])
def test_cert_mode(cert_simulator: RunningSimulator, cert_credentials, protocol: Protocol) -> None:
    h = make_harness(cert_simulator, cert_credentials, protocol)
    client = h.client()
    grant = h.grant(client)
    new = h.refresh(client, grant.app_refresh_token)
    info = client.query_authorization(new.app_auth_token)
    assert (info.valid, info.auth_app_id) == (True, grant.auth_app_id)
    h.faults(response_fault="wrong_key")
    h.raises(SignatureError, client.query_authorization, new.app_auth_token)


def test_cert_mode_refuses_a_key_mode_client(
    cert_simulator: RunningSimulator, app_credentials
) -> None:
    h = make_harness(cert_simulator, app_credentials, "v2")
    code = h.mint()["app_auth_code"]
    error = h.raises(AlipayError, h.client().exchange_code, code)
    assert (error.code, error.sub_code, error.signed) == ("40001", "isv.missing-app-cert-sn", True)


def test_aes_encrypted_calls(aes_simulator: RunningSimulator, aes_credentials) -> None:
    h = make_harness(aes_simulator, aes_credentials, "v2")
    client = h.client(encrypt=True)
    grant = h.grant(client)
    new = h.refresh(client, grant.app_refresh_token)
    assert client.query_authorization(new.app_auth_token).valid
    assert client.call(BASEINFO, {}, app_auth_token=new.app_auth_token)["code"] == "10000"
    # The encrypted node is signed as a string: tampering with it is caught before decryption.
    h.faults(response_fault="tamper")
    h.raises(SignatureError, client.query_authorization, new.app_auth_token)
    # A business error under the method node comes back encrypted and signed.
    h.faults(response_fault=None)
    error = h.raises(AlipayError, client.refresh, grant.app_refresh_token)
    assert (error.code, error.sub_code, error.signed) == (
        "40002",
        "isv.refresh-token-invalid",
        True,
    )


# --- generic calls on behalf of a merchant ------------------------------------------------------------


def test_generic_v2_call_on_behalf_of_a_merchant(
    simulator: RunningSimulator, app_credentials
) -> None:
    h = make_harness(simulator, app_credentials, "v2")
    client = h.client()
    grant = h.grant(client)
    data = client.call(BASEINFO, {}, app_auth_token=grant.app_auth_token)
    assert data["code"] == "10000"
    assert data["app_name"].endswith(grant.auth_app_id[-4:])
    assert grant.auth_app_id in data["app_logo"]
    h.control("revoke", {"auth_app_id": grant.auth_app_id})
    error = h.raises(AlipayError, client.call, BASEINFO, {}, app_auth_token=grant.app_auth_token)
    assert (error.code, error.sub_code, error.signed) == (
        "20001",
        "aop.invalid-app-auth-token",
        True,
    )
    # A *.query method is retried when Alipay is busy.
    h.faults(error_rate=1)
    error = h.raises(AlipayError, client.call, BASEINFO, {}, app_auth_token=grant.app_auth_token)
    assert error.transient
    assert h.sleeps == [0] * (ATTEMPTS - 1)


def test_generic_v3_request(simulator: RunningSimulator, app_credentials) -> None:
    h = make_harness(simulator, app_credentials, "v3")
    client = h.client()
    grant = h.grant(client)
    response = client.request("GET", V3_QUERY_PATH, query={"app_auth_token": grant.app_auth_token})
    assert response.status == 200
    assert (response.data["status"], response.data["auth_app_id"]) == ("valid", grant.auth_app_id)
    assert response.trace_id
    assert re.fullmatch(r"[0-9a-f]{32}", response.trace_id)
    # On behalf of the merchant: the token is signed and sent as alipay-app-auth-token.
    scoped = client.request(
        "GET",
        V3_QUERY_PATH,
        query={"app_auth_token": grant.app_auth_token},
        app_auth_token=grant.app_auth_token,
    )
    assert scoped.data["auth_app_id"] == grant.auth_app_id
    h.control("revoke", {"auth_app_id": grant.auth_app_id})
    error = h.raises(
        AlipayError,
        client.request,
        "GET",
        V3_QUERY_PATH,
        query={"app_auth_token": grant.app_auth_token},
        app_auth_token=grant.app_auth_token,
    )
    assert (error.http_status, error.code, error.signed) == (401, "invalid-app-auth-token", True)
    error = h.raises(AlipayError, client.request, "GET", "/v3/alipay/nowhere")
    assert (error.http_status, error.code, error.signed) == (404, "not-found", True)


def test_a_bare_503_before_processing_is_transient_even_for_a_refresh(h: Harness) -> None:
    """A proxy's 503/429 means nothing was processed: resent, never 'outcome unknown' (a 502
    after processing is, see the test above)."""
    client = h.client()
    grant = h.grant(client)
    control = SimulatorControl(h.sim.url)
    control.add_rule(
        method="alipay.open.auth.token.app", grant_type="refresh_token", fault="http_503", count=1
    )
    rotated = h.refresh(client, grant.app_refresh_token)  # resent after the 503, and rotated
    assert rotated.app_auth_token != grant.app_auth_token
    assert h.sleeps == [0]
    control.add_rule(
        method="alipay.open.auth.token.app", grant_type="refresh_token", fault="http_503", count=9
    )
    error = h.raises(TransportError, client.refresh, rotated.app_refresh_token)
    assert error.transient
    assert error.status == 503
    record = control.merchant(grant.auth_app_id)
    assert record is not None
    assert record["rotations"] == 1  # none of the 503s was processed
