"""Simulator fixtures shared by the e2e and integration tests (a pytest plugin, see tests/conftest.py).

Alipay simulators for end-to-end tests: real HTTP on loopback, real signatures, real state.

Each server starts once per session; the function-scoped fixtures reset its state, faults,
statistics and clock before every test, so tests are independent and deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from appauth.alipay.credentials import AppCredentials
from appauth_dev.simulator import RunningSimulator, SimulatorConfig, start_simulator

SEED = 20240601


def _config(vectors: dict[str, Any], read: Callable[[str], str], **extra: Any) -> SimulatorConfig:
    keys = vectors["keys"]
    return SimulatorConfig.from_material(
        vectors["app_id"],
        read(keys["app_public"]),
        read(keys["alipay_private"]),
        seed=SEED,
        **extra,
    )


@pytest.fixture(scope="session")
def aes_key(vectors: dict[str, Any]) -> str:
    key: str = vectors["aes"][0]["key"]
    return key


@pytest.fixture(scope="session")
def _key_simulator(
    vectors: dict[str, Any], vector_file: Callable[[str], str]
) -> Iterator[RunningSimulator]:
    with start_simulator(_config(vectors, vector_file)) as running:
        yield running


@pytest.fixture(scope="session")
def _cert_simulator(
    vectors: dict[str, Any], vector_file: Callable[[str], str]
) -> Iterator[RunningSimulator]:
    config = _config(
        vectors,
        vector_file,
        alipay_cert=vector_file("certs/alipay_cert.crt"),
        app_cert=vector_file("certs/app_cert.crt"),
        alipay_root_cert=vector_file("certs/alipay_root_cert.crt"),
    )
    with start_simulator(config) as running:
        yield running


@pytest.fixture(scope="session")
def _aes_simulator(
    vectors: dict[str, Any], vector_file: Callable[[str], str], aes_key: str
) -> Iterator[RunningSimulator]:
    with start_simulator(_config(vectors, vector_file, encrypt_key=aes_key)) as running:
        yield running


@pytest.fixture
def simulator(_key_simulator: RunningSimulator) -> RunningSimulator:
    """Key mode (公钥模式), freshly reset."""
    _key_simulator.reset()
    return _key_simulator


@pytest.fixture
def cert_simulator(_cert_simulator: RunningSimulator) -> RunningSimulator:
    """Certificate mode (公钥证书模式) with the test CA's certificates, freshly reset."""
    _cert_simulator.reset()
    return _cert_simulator


@pytest.fixture
def aes_simulator(_aes_simulator: RunningSimulator) -> RunningSimulator:
    """Key mode with AES content encryption (the vectors' key), freshly reset."""
    _aes_simulator.reset()
    return _aes_simulator


@pytest.fixture(scope="session")
def aes_credentials(
    vectors: dict[str, Any], vector_file: Callable[[str], str], aes_key: str
) -> AppCredentials:
    keys = vectors["keys"]
    return AppCredentials.from_keys(
        vectors["app_id"],
        vector_file(keys["app_private"]),
        vector_file(keys["alipay_public"]),
        encrypt_key=aes_key,
    )
