"""The machine a run was measured on: CPU, cores, memory, Python, OS, load, versions, commit."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
# The distributions whose speed the figures depend on (absent ones are left out).
MEASURED_PACKAGES = (
    "cryptography",
    "boto3",
    "botocore",
    "aws-lambda-powertools",
    "moto",
    "requests",
    "alipay-sdk-python",
    "rsa",
)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _git(*arguments: str) -> str:
    return subprocess.run(  # noqa: S603 (our own arguments)
        ["git", *arguments],  # noqa: S607 (git from PATH, read-only commands)
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout.strip()


def _commit() -> str | None:
    """HEAD, marked when the tracked files have changes (the figures are of those)."""
    try:
        head = _git("rev-parse", "--short", "HEAD")
        dirty = _git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}{'+changes' if dirty else ''}"


def _versions() -> dict[str, str]:
    found = {}
    for name in MEASURED_PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def load_average() -> list[float]:
    """1, 5 and 15 minute load: other work on a shared machine moves every figure."""
    return [round(value, 2) for value in os.getloadavg()]


def describe_machine() -> dict[str, Any]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "memory_gib": _memory_gib(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": platform.platform(),
        "load_average_at_start": load_average(),
        "commit": _commit(),
        "versions": _versions(),
        "executable": sys.executable,
    }


def one_line(machine: dict[str, Any]) -> str:
    """The table header's summary of the machine."""
    load = ", ".join(f"{value:g}" for value in machine.get("load_average_at_start", []))
    return (
        f"{machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB; "
        f"{machine['python']}; {machine['os']}; load {load} at start; commit {machine['commit']}"
    )
