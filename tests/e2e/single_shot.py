"""The client the simulator's own e2e tests use: one attempt and no sleeping, so every call a
test makes reaches the simulator exactly once."""

from __future__ import annotations

from appauth.alipay.client import AlipayClient, Endpoints, Protocol, RetryPolicy
from appauth.alipay.credentials import AppCredentials
from appauth_dev.simulator import RunningSimulator


def make_client(
    sim: RunningSimulator, creds: AppCredentials, protocol: Protocol = "v2"
) -> AlipayClient:
    return AlipayClient(
        creds,
        Endpoints.local(sim.url),
        protocol=protocol,
        read_timeout=5.0,
        retry=RetryPolicy(attempts=1, base_delay=0, max_delay=0),
        sleep=lambda _seconds: None,
    )
