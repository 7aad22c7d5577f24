"""Fixtures of the e2e tests (the simulators themselves come from tests/simulator_fixtures.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from appauth_dev.simulator import RunningSimulator, SimulatorControl
from tests.e2e.cli_helpers import ALIPAY_PRIVATE, APP_PUBLIC, SimulatorProcess, simulator_process
from tests.e2e.notify_receiver import NotifyReceiver, notify_receiver


@pytest.fixture
def ctl(simulator: RunningSimulator) -> SimulatorControl:
    """The freshly reset key-mode simulator's control API, over HTTP."""
    return SimulatorControl(simulator.url)


@pytest.fixture
def receiver() -> Iterator[NotifyReceiver]:
    """A loopback ISV notify endpoint (point the simulator's ``notify_url`` at its ``url``)."""
    with notify_receiver() as running:
        yield running


# --- the ``appauth`` command's tests ----------------------------------------------------------


@pytest.fixture
def no_appauth_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No APPAUTH_* setting of the developer's for an in-process run (subprocesses drop them)."""
    for name in [name for name in os.environ if name.startswith("APPAUTH_")]:
        monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def app_id(vectors: dict[str, Any]) -> str:
    value: str = vectors["app_id"]
    return value


@pytest.fixture(scope="module")
def sim(app_id: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorProcess]:
    """One ``appauth simulator`` process for the module, with the vectors' keys."""
    stderr_file = tmp_path_factory.mktemp("simulator") / "stderr.txt"
    with simulator_process(app_id, APP_PUBLIC, ALIPAY_PRIVATE, stderr_file) as running:
        yield running
