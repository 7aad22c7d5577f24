"""Client pieces that need no server: endpoints, retry policy, and which failures are resendable."""

from __future__ import annotations

import pytest
import requests
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError

from appauth.alipay.client import PRODUCTION, SANDBOX, Endpoints, RetryPolicy, _never_sent
from appauth.alipay.errors import ConfigError, OutcomeUnknownError, TransportError


def test_environments_choose_hosts_and_every_host_can_be_overridden():
    assert Endpoints.for_environment("production") == PRODUCTION
    sandbox = Endpoints.for_environment("sandbox", gateway_url="https://gw.example/gateway.do")
    assert sandbox.gateway_url == "https://gw.example/gateway.do"
    assert sandbox.v3_base_url == SANDBOX.v3_base_url
    assert "alipaydev.com" in sandbox.auth_base_url
    assert "alipaydev.com" not in PRODUCTION.gateway_url


def test_unknown_environment_is_a_config_error_naming_the_choices():
    with pytest.raises(ConfigError, match="production or sandbox"):
        Endpoints.for_environment("staging")


def test_local_endpoints_put_everything_on_one_host():
    local = Endpoints.local("http://127.0.0.1:8080/")
    assert local == Endpoints(
        "http://127.0.0.1:8080/gateway.do", "http://127.0.0.1:8080", "http://127.0.0.1:8080"
    )


@pytest.mark.parametrize("attempt", [1, 2, 3, 8])
def test_backoff_is_bounded_and_grows(attempt):
    policy = RetryPolicy(attempts=9, base_delay=0.1, max_delay=0.5)
    ceiling = min(0.5, 0.1 * 2 ** (attempt - 1))
    delays = [policy.delay(attempt) for _ in range(200)]
    assert all(0 <= d <= ceiling for d in delays)
    assert max(delays) > ceiling / 2  # full jitter actually spreads the retries


def _connection_error(reason: Exception) -> requests.ConnectionError:
    return requests.ConnectionError(MaxRetryError(None, "/gateway.do", reason))  # type: ignore[arg-type]


def test_refused_connection_was_never_sent():
    refused = NewConnectionError(None, "Connection refused")  # type: ignore[arg-type]
    assert _never_sent(_connection_error(refused))
    assert _never_sent(requests.ConnectTimeout())


def test_dropped_connection_may_have_been_sent():
    dropped = ProtocolError("Connection aborted.", ConnectionResetError())
    assert not _never_sent(_connection_error(dropped))
    assert not _never_sent(requests.ConnectionError("reset"))


def test_outcome_unknown_is_never_taken_for_retry_freely():
    assert TransportError("x").transient
    assert not OutcomeUnknownError("x").transient
