"""Fixtures of the e2e tests (the simulators themselves come from tests/simulator_fixtures.py)."""

from __future__ import annotations

import pytest

from appauth_dev.simulator import RunningSimulator, SimulatorControl


@pytest.fixture
def ctl(simulator: RunningSimulator) -> SimulatorControl:
    """The freshly reset key-mode simulator's control API, over HTTP."""
    return SimulatorControl(simulator.url)
