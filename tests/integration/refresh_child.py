"""A refresh run in its own process (the races test starts several): ``python -m
tests.integration.refresh_child <simulator url> <clock offset seconds> <owner>``. The
environment (moto endpoint, the stack's names) comes from the parent. Prints the run's counts."""

from __future__ import annotations

import json
import sys
from datetime import timedelta

from appauth_dev.simulator import SimulatorControl
from tests.integration.refresh_helpers import Clock, refresher


def main(argv: list[str]) -> int:
    url, offset, owner = argv
    clock = Clock(SimulatorControl(url), offset=timedelta(seconds=float(offset)))
    report = refresher(clock, owner).refresh_due(concurrency=3)
    print(json.dumps(report.as_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
