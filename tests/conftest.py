"""Fixtures shared by every test layer: the official test vectors and credentials built from them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from appauth.alipay.credentials import AppCredentials

VECTORS_DIR = Path(__file__).parent / "vectors"

# The Alipay simulator's fixtures (``simulator``, ``cert_simulator``, ``aes_simulator``, ...).
pytest_plugins = ["tests.simulator_fixtures"]


def read_vector_file(relative: str) -> str:
    return (VECTORS_DIR / relative).read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def vectors() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS_DIR / "vectors.json").read_text(encoding="utf-8"))
    return data


@pytest.fixture(scope="session")
def vector_file() -> Callable[[str], str]:
    return read_vector_file


@pytest.fixture(scope="session")
def app_credentials(vectors: dict[str, Any]) -> AppCredentials:
    """Key mode (公钥模式) credentials of the vectors' ISV app."""
    keys = vectors["keys"]
    return AppCredentials.from_keys(
        vectors["app_id"],
        read_vector_file(keys["app_private"]),
        read_vector_file(keys["alipay_public"]),
    )


@pytest.fixture(scope="session")
def cert_credentials(vectors: dict[str, Any]) -> AppCredentials:
    """Certificate mode (公钥证书模式) credentials built from the test CA's certificates."""
    return AppCredentials.from_certificates(
        vectors["app_id"],
        read_vector_file(vectors["keys"]["app_private"]),
        read_vector_file("certs/app_cert.crt"),
        read_vector_file("certs/alipay_cert.crt"),
        read_vector_file("certs/alipay_root_cert.crt"),
    )
