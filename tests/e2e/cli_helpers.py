"""The ``appauth`` command as the e2e tests run it: in a subprocess (its environment, the
vectors' key files) or in-process (:class:`Ran`), the simulator as an ``appauth simulator``
process, and a long-running command stopped with Ctrl-C (the ``sim`` and ``app_id`` fixtures
are in conftest.py)."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
KEYS = ROOT / "tests" / "vectors" / "keys"
APP_PRIVATE_PKCS8 = KEYS / "app_private_pkcs8.pem"
APP_PRIVATE_PKCS1 = KEYS / "app_private_pkcs1.pem"
APP_PRIVATE_BARE = KEYS / "app_private_pkcs8.bare.txt"
APP_PUBLIC = KEYS / "app_public.pem"
ALIPAY_PRIVATE = KEYS / "alipay_private_pkcs8.pem"
ALIPAY_PUBLIC = KEYS / "alipay_public.pem"
ALIPAY_PUBLIC_BARE = KEYS / "alipay_public.bare.txt"

COMMAND = [sys.executable, "-m", "appauth_dev.cli"]
LISTENING = re.compile(r"Alipay simulator listening on (http://[^\s:/]+:\d+)")
STARTUP_SECONDS = 15
TIMEOUT = 15


def command_env(**extra: str) -> dict[str, str]:
    """The caller's environment without APPAUTH_* settings, with the repository's code importable."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("APPAUTH_")}
    paths = [str(ROOT / "layers" / "signing"), str(ROOT / "devtools")]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return {**env, **extra}


@dataclass
class Ran:
    """An in-process run of a command: its exit code, stdout and stderr."""

    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


# --- a long-running command, stopped with Ctrl-C ---------------------------------------------


@dataclass
class Interrupted:
    """A command's run: stdout up to its ready line (all of it once it ended), its exit code and
    stderr once it ended."""

    stdout: str = ""
    code: int | None = None
    stderr: str = ""


@contextmanager
def interrupted_on_exit(argv: list[str], *, ready: str, timeout: float) -> Iterator[Interrupted]:
    """Run ``argv`` from the repository's root until a stdout line matches ``ready`` (a regular
    expression, within ``timeout``); when the block ends, Ctrl-C (SIGINT) and wait for it to end.
    Killed if anything fails on the way."""
    process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
        argv,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=command_env(),
        cwd=ROOT,
    )
    seen: list[str] = []
    started = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            seen.append(line)
            if re.search(ready, line):
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    run = Interrupted()
    try:
        assert started.wait(timeout), "".join(seen)
        run.stdout = "".join(seen)
        yield run
        process.send_signal(signal.SIGINT)
        run.code = process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
    reader.join(timeout=10)
    assert process.stderr is not None
    run.stdout, run.stderr = "".join(seen), process.stderr.read()


# --- the simulator as a process ---------------------------------------------------------------


@dataclass
class SimulatorProcess:
    process: subprocess.Popen[str]
    url: str

    def mint(self, **body: Any) -> str:
        response = requests.post(f"{self.url}/simulator/codes", json=body, timeout=TIMEOUT)
        assert response.status_code == 200, response.text
        code: str = response.json()["app_auth_code"]
        return code

    def stop(self, signum: int = signal.SIGTERM) -> int:
        self.process.send_signal(signum)
        return self.process.wait(timeout=TIMEOUT)


def _wait_for_url(
    lines: queue.Queue[str | None], process: subprocess.Popen[str], stderr_file: Path
) -> str:
    """Read stdout lines until the listening line, within a deadline (no polling sleeps)."""
    deadline = time.monotonic() + STARTUP_SECONDS
    seen: list[str] = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"no listening line within {STARTUP_SECONDS}s; stdout: {seen!r}")
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        if line is None:
            stderr = stderr_file.read_text(encoding="utf-8")
            pytest.fail(f"the simulator exited ({process.wait()}) before listening: {stderr}")
        seen.append(line)
        match = LISTENING.fullmatch(line.rstrip("\n"))
        if match:
            return match.group(1)


@contextmanager
def simulator_process(
    app_id: str, app_public_key: Path, alipay_private_key: Path, stderr_file: Path
) -> Iterator[SimulatorProcess]:
    """``appauth simulator --port 0`` with these keys; killed on the way out if still running."""
    with stderr_file.open("w", encoding="utf-8") as stderr:
        process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [
                *COMMAND,
                "simulator",
                "--port",
                "0",
                "--app-id",
                app_id,
                "--app-public-key",
                str(app_public_key),
                "--alipay-private-key",
                str(alipay_private_key),
                "--seed",
                "20240601",
            ],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=command_env(),
        )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:  # keeps the pipe drained for the process's whole life
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        yield SimulatorProcess(process, _wait_for_url(lines, process, stderr_file))
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        reader.join(timeout=TIMEOUT)
        assert process.stdout is not None
        process.stdout.close()
