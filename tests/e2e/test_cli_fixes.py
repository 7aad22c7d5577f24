"""What a new user hit with the ``appauth`` command, pinned (issue 8, "Fix what a new user hit").

- ``api`` refuses a flag its protocol would ignore (``--gateway``, ``--biz-content`` or
  ``--encrypt`` with ``--v3``; ``--body`` or ``--endpoint`` without it) and never falls back to a
  production host while the user points at another one.
- A v2 Alipay error names the trace id the gateway sends in its ``trace_id`` header.
- A simulated timeout is reported as a timeout (exit 5, outcome unknown, for an exchange), not as
  "connection failed".
- ``appauth simulator`` names the option of a key file it cannot read, and its help shows
  ``--app-public-key`` as required.
- ``appauth keygen`` writes into ``./keys`` by default, which git ignores.

Most tests call ``appauth_dev.cli.main`` in-process; the headline cases also run as a process.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
import requests

from appauth.alipay.client import AlipayClient
from appauth_dev import cli
from appauth_dev.cli import (
    EXIT_ALIPAY_ERROR,
    EXIT_OK,
    EXIT_OUTCOME_UNKNOWN,
    EXIT_TRANSPORT,
    EXIT_USAGE,
    main,
)
from appauth_dev.keygen import DEFAULT_KEY_DIR
from appauth_dev.loopback import serve_loopback
from tests.e2e.cli_helpers import (
    ALIPAY_PRIVATE,
    ALIPAY_PUBLIC_BARE,
    APP_PRIVATE_PKCS1,
    APP_PUBLIC,
    COMMAND,
    ROOT,
    TIMEOUT,
    SimulatorProcess,
    command_env,
)
from tests.e2e.test_cli import (
    KEYGEN_FILES,
    TOKEN_APP,
    TOKEN_QUERY,
    V3_QUERY,
    V3_TOKEN,
    appauth,
    exchange_json,
    one_line,
    run_main,
    v2_args,
    v3_args,
)

KEY_ARGS = [
    "--app-private-key",
    str(APP_PRIVATE_PKCS1),
    "--alipay-public-key",
    str(ALIPAY_PUBLIC_BARE),
]
LOCAL_GATEWAY = "http://127.0.0.1:9/gateway.do"
LOCAL_ENDPOINT = "http://127.0.0.1:9"
TRACE = "0b8a3c5e17171717171717171717aa01"

# In-process runs must not pick up the developer's APPAUTH_* settings.
pytestmark = pytest.mark.usefixtures("no_appauth_environment")


@pytest.fixture
def environment(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, no_appauth_environment: None
) -> dict[str, str]:
    """The APPAUTH_* settings a case names (parametrized indirectly), set for its run."""
    settings: dict[str, str] = request.param
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    return settings


class CalledError(Exception):
    """Raised instead of sending: the test sees where the request would have gone."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.url = url


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any HTTP request raises CalledError(url) instead of leaving the machine."""

    def refuse(self: requests.Session, method: str, url: str, *args: Any, **kwargs: Any) -> None:
        raise CalledError(url)

    monkeypatch.setattr(requests.Session, "request", refuse)


# --- contradictory flags ----------------------------------------------------------------------


CONTRADICTIONS = {
    # name: (argv after "api", APPAUTH_* environment, the flag the message must name)
    "v3-with-gateway": (
        ["--v3", "GET", f"{V3_QUERY}?app_auth_token=x", "--gateway", LOCAL_GATEWAY],
        {},
        "--gateway",
    ),
    "v3-with-gateway-and-endpoint": (
        [
            "--v3",
            "GET",
            f"{V3_QUERY}?app_auth_token=x",
            "--gateway",
            LOCAL_GATEWAY,
            "--endpoint",
            LOCAL_ENDPOINT,
        ],
        {},
        "--gateway",
    ),
    "v3-with-biz-content": (
        ["--v3", "POST", V3_TOKEN, "--biz-content", "{}", "--endpoint", LOCAL_ENDPOINT],
        {},
        "--biz-content",
    ),
    "v3-with-encrypt": (
        ["--v3", "POST", V3_TOKEN, "--body", "{}", "--encrypt", "--endpoint", LOCAL_ENDPOINT],
        {},
        "--encrypt",
    ),
    "v2-with-body": (
        [TOKEN_APP, "--body", exchange_json("c"), "--gateway", LOCAL_GATEWAY],
        {},
        "--body",
    ),
    "v2-with-endpoint": (
        [TOKEN_APP, "--biz-content", "{}", "--endpoint", LOCAL_ENDPOINT],
        {},
        "--endpoint",
    ),
    "environment-with-gateway": (
        [TOKEN_APP, "--biz-content", "{}", "--environment", "sandbox", "--gateway", LOCAL_GATEWAY],
        {},
        "--gateway",
    ),
    "environment-with-endpoint": (
        ["--v3", "POST", V3_TOKEN, "--environment", "production", "--endpoint", LOCAL_ENDPOINT],
        {},
        "--endpoint",
    ),
    "v3-with-only-a-gateway-in-the-environment": (
        ["--v3", "GET", f"{V3_QUERY}?app_auth_token=x"],
        {"APPAUTH_GATEWAY": LOCAL_GATEWAY},
        "--endpoint",
    ),
    "v2-with-only-an-endpoint-in-the-environment": (
        [TOKEN_QUERY, "--biz-content", "{}"],
        {"APPAUTH_ENDPOINT": LOCAL_ENDPOINT},
        "--gateway",
    ),
}


@pytest.mark.usefixtures("no_network")
@pytest.mark.parametrize(
    ("argv", "environment", "flag"),
    CONTRADICTIONS.values(),
    ids=CONTRADICTIONS.keys(),
    indirect=["environment"],
)
def test_a_flag_the_call_would_ignore_is_refused_before_anything_is_sent(
    *,
    capsys: pytest.CaptureFixture[str],
    app_id: str,
    argv: list[str],
    environment: dict[str, str],
    flag: str,
) -> None:
    code, out, err = run_main(capsys, "api", *argv, "--app-id", app_id, *KEY_ARGS)

    assert (code, out) == (EXIT_USAGE, "")
    message = one_line(err)
    assert message.startswith(f"appauth: configuration error: {flag}: "), message
    assert "alipay.com" not in message


def test_v3_with_gateway_exits_2_as_a_process_instead_of_calling_production(app_id: str) -> None:
    result = appauth(
        "api",
        "--v3",
        "GET",
        f"{V3_QUERY}?app_auth_token=x",
        "--gateway",
        LOCAL_GATEWAY,
        "--app-id",
        app_id,
        *KEY_ARGS,
    )

    assert (result.returncode, result.stdout) == (EXIT_USAGE, "")
    message = one_line(result.stderr)
    assert "--gateway" in message
    assert "--endpoint" in message, "the message says what to pass instead"
    assert "openapi.alipay.com" not in message


@pytest.mark.usefixtures("no_network")
@pytest.mark.parametrize(
    ("argv", "environment", "host"),
    [
        # An explicit --environment wins over the APPAUTH_* URLs (flags beat the environment).
        (
            [TOKEN_QUERY, "--biz-content", "{}", "--environment", "sandbox"],
            {"APPAUTH_GATEWAY": LOCAL_GATEWAY},
            "openapi-sandbox.dl.alipaydev.com",
        ),
        # Both URLs in the environment: each protocol takes its own.
        (
            ["--v3", "GET", f"{V3_QUERY}?app_auth_token=x"],
            {"APPAUTH_GATEWAY": LOCAL_GATEWAY, "APPAUTH_ENDPOINT": "http://127.0.0.1:10"},
            "127.0.0.1:10",
        ),
        ([TOKEN_QUERY, "--biz-content", "{}"], {}, "openapi.alipay.com"),  # nothing: production
    ],
    ids=["environment-beats-APPAUTH_GATEWAY", "v3-takes-APPAUTH_ENDPOINT", "default-production"],
    indirect=["environment"],
)
def test_the_host_is_the_one_the_user_chose(
    *, app_id: str, argv: list[str], environment: dict[str, str], host: str
) -> None:
    with pytest.raises(CalledError) as called:
        main(["api", *argv, "--app-id", app_id, *KEY_ARGS])

    assert called.value.url.split("/")[2] == host


def test_v2_with_biz_content_and_v3_with_body_still_work(
    capsys: pytest.CaptureFixture[str], sim: SimulatorProcess, app_id: str
) -> None:
    v2 = [TOKEN_APP, "--biz-content", exchange_json(sim.mint()), *v2_args(sim.url, app_id)]
    v3 = ["POST", V3_TOKEN, "--body", exchange_json(sim.mint()), *v3_args(sim.url, app_id)]

    for argv in (v2, v3):
        code, out, err = run_main(capsys, "api", *argv)
        assert (code, err) == (EXIT_OK, "")
        assert json.loads(out)["app_auth_token"]


# --- a v2 error's trace id --------------------------------------------------------------------


@pytest.fixture
def traced_gateway(sim: SimulatorProcess) -> Iterator[str]:
    """The simulator's v2 gateway behind a proxy that adds a ``trace_id`` header, as Alipay's
    gateway does (Alipay's own Node SDK reads it from there for v2 calls)."""

    class Forward(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            answer = requests.post(
                f"{sim.url}{self.path}",
                data=body,
                headers={"Content-Type": self.headers.get("Content-Type", "")},
                timeout=TIMEOUT,
            )
            self.send_response(answer.status_code)
            self.send_header("Content-Type", answer.headers.get("Content-Type", ""))
            self.send_header("Content-Length", str(len(answer.content)))
            self.send_header("trace_id", TRACE)
            self.end_headers()
            self.wfile.write(answer.content)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with serve_loopback(Forward) as serving:
        yield serving.url


def test_a_v2_alipay_error_names_the_gateways_trace_id(
    capsys: pytest.CaptureFixture[str], traced_gateway: str, app_id: str
) -> None:
    code, out, err = run_main(
        capsys,
        "api",
        TOKEN_APP,
        "--biz-content",
        exchange_json("0123456789abcdef0123456789abcdef"),  # never minted: isv.code-invalid
        *v2_args(traced_gateway, app_id),
    )

    assert (code, out) == (EXIT_ALIPAY_ERROR, "")
    message = one_line(err)
    assert "isv.code-invalid" in message
    assert message.endswith(f"[trace {TRACE}]"), message


def test_a_v3_alipay_error_keeps_its_own_trace_id(
    capsys: pytest.CaptureFixture[str], sim: SimulatorProcess, app_id: str
) -> None:
    argv = ["POST", V3_TOKEN, "--body", exchange_json("x" * 32), *v3_args(sim.url, app_id)]

    code, out, err = run_main(capsys, "api", *argv)

    assert (code, out) == (EXIT_ALIPAY_ERROR, "")
    assert re.search(r"\[trace [0-9a-f]{32}\]$", one_line(err)), err


# --- a simulated timeout ----------------------------------------------------------------------


@dataclass
class Timeouts:
    """Timeout faults on the simulator process, and the CLI's AlipayClient options to meet them."""

    sim: SimulatorProcess
    monkeypatch: pytest.MonkeyPatch

    def inject(self, method: str, count: int, seconds: float = 0) -> None:
        """The next ``count`` calls of ``method`` time out (held ``seconds``, then unanswered)."""
        rule = {"method": method, "fault": "timeout", "timeout_seconds": seconds, "count": count}
        answer = requests.post(f"{self.sim.url}/simulator/faults/rules", json=rule, timeout=TIMEOUT)
        assert answer.status_code == 200

    def client_options(self, **options: Any) -> None:
        """The CLI builds its AlipayClient with these keyword arguments too."""
        self.monkeypatch.setattr(cli, "AlipayClient", functools.partial(AlipayClient, **options))


@pytest.fixture
def timeouts(sim: SimulatorProcess, monkeypatch: pytest.MonkeyPatch) -> Iterator[Timeouts]:
    """Every rule (and injected timeout) is gone afterwards."""
    yield Timeouts(sim, monkeypatch)
    requests.delete(f"{sim.url}/simulator/faults/rules", timeout=TIMEOUT)
    requests.post(f"{sim.url}/simulator/reset", json={}, timeout=TIMEOUT)


def test_a_timed_out_v2_exchange_is_outcome_unknown_not_connection_failed(
    sim: SimulatorProcess, app_id: str, timeouts: Timeouts
) -> None:
    timeouts.inject(TOKEN_APP, count=1)  # processed, then the connection closes unanswered

    result = appauth(
        "api", TOKEN_APP, "--biz-content", exchange_json(sim.mint()), *v2_args(sim.url, app_id)
    )

    assert (result.returncode, result.stdout) == (EXIT_OUTCOME_UNKNOWN, "")
    message = one_line(result.stderr)
    assert message.startswith(f"appauth: outcome unknown: {TOKEN_APP}: timed out: "), message
    assert "without answering" in message
    assert "not resent" in message
    assert "connection to" not in message
    assert "failed" not in message


def test_a_timed_out_v3_exchange_is_outcome_unknown(
    capsys: pytest.CaptureFixture[str], sim: SimulatorProcess, app_id: str, timeouts: Timeouts
) -> None:
    timeouts.inject(TOKEN_APP, count=1)

    code, out, err = run_main(
        capsys,
        "api",
        "POST",
        V3_TOKEN,
        "--body",
        exchange_json(sim.mint()),
        *v3_args(sim.url, app_id),
    )

    assert (code, out) == (EXIT_OUTCOME_UNKNOWN, "")
    assert one_line(err).startswith(f"appauth: outcome unknown: {V3_TOKEN}: timed out: ")


def test_a_query_that_keeps_timing_out_is_a_timeout_after_its_retries(
    capsys: pytest.CaptureFixture[str], sim: SimulatorProcess, app_id: str, timeouts: Timeouts
) -> None:
    timeouts.client_options(sleep=lambda seconds: None)  # no backoff between the tries
    timeouts.inject(TOKEN_QUERY, count=3)

    code, out, err = run_main(
        capsys,
        "api",
        TOKEN_QUERY,
        "--biz-content",
        json.dumps({"app_auth_token": "x" * 43}),
        *v2_args(sim.url, app_id),
    )

    assert (code, out) == (EXIT_TRANSPORT, "")
    message = one_line(err)
    assert message.startswith(f"appauth: transport error: {TOKEN_QUERY}: timed out: "), message
    assert message.endswith("(3 tries)")


def test_an_answer_slower_than_the_read_timeout_is_a_timeout(
    capsys: pytest.CaptureFixture[str], sim: SimulatorProcess, app_id: str, timeouts: Timeouts
) -> None:
    # The simulator holds the call for 60 s (ended by the fixture's reset); the client gives up
    # after 0.3 s, the shortest wait that still shows a read timeout.
    timeouts.client_options(read_timeout=0.3)
    timeouts.inject(TOKEN_APP, count=1, seconds=60)

    code, out, err = run_main(
        capsys,
        "api",
        TOKEN_APP,
        "--biz-content",
        exchange_json(sim.mint()),
        *v2_args(sim.url, app_id),
    )

    assert (code, out) == (EXIT_OUTCOME_UNKNOWN, "")
    message = one_line(err)
    assert message.startswith(f"appauth: outcome unknown: {TOKEN_APP}: timed out: no answer from ")
    assert "within 0.3s" in message


# --- appauth simulator ------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--app-public-key", "--alipay-private-key", "--alipay-cert"])
def test_the_simulator_names_the_option_of_a_missing_key_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, app_id: str, flag: str
) -> None:
    files: dict[str, Path] = {
        "--app-public-key": APP_PUBLIC,
        "--alipay-private-key": ALIPAY_PRIVATE,
    }
    if flag == "--alipay-cert":
        files["--app-cert"] = ROOT / "tests" / "vectors" / "certs" / "app_cert.crt"
    missing = tmp_path / "nowhere.pem"
    files[flag] = missing
    argv = [part for option, path in files.items() for part in (option, str(path))]

    code, out, err = run_main(capsys, "simulator", "--app-id", app_id, *argv)

    assert (code, out) == (EXIT_USAGE, "")
    assert one_line(err) == (
        f"appauth simulator: {flag}: cannot read {missing}: No such file or directory"
    )


def test_the_simulators_help_shows_the_app_public_key_as_required(
    capsys: pytest.CaptureFixture[str], app_id: str
) -> None:
    with pytest.raises(SystemExit) as shown:
        main(["simulator", "--help"])
    assert shown.value.code == EXIT_OK
    usage = " ".join(capsys.readouterr().out.split("options:")[0].split())
    assert "--app-public-key FILE" in usage
    assert "[--app-public-key" not in usage

    with pytest.raises(SystemExit) as refused:
        main(["simulator", "--app-id", app_id, "--alipay-private-key", str(ALIPAY_PRIVATE)])
    assert refused.value.code == EXIT_USAGE
    assert "required: --app-public-key" in capsys.readouterr().err


# --- keygen's default folder is git-ignored ----------------------------------------------------


def _git(cwd: Path, *args: str) -> str:
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    return subprocess.run(  # noqa: S603 - git, with fixed arguments
        [git, *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=TIMEOUT
    ).stdout


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A fresh git repository with this project's .gitignore, and nothing else."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    shutil.copy(ROOT / ".gitignore", repo / ".gitignore")
    return repo


def _keygen(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own interpreter and module
        [*COMMAND, "keygen", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=command_env(),
        timeout=TIMEOUT,
        check=False,
    )


def test_keygen_writes_into_a_default_folder_that_git_status_does_not_show(checkout: Path) -> None:
    result = _keygen(checkout)

    assert (result.returncode, result.stderr) == (EXIT_OK, "")
    assert sorted(p.name for p in (checkout / DEFAULT_KEY_DIR).iterdir()) == sorted(KEYGEN_FILES)
    assert _git(checkout, "status", "--porcelain", "--untracked-files=all") == "?? .gitignore\n"


def test_private_key_files_are_git_ignored_in_any_folder(checkout: Path) -> None:
    assert _keygen(checkout, "--out", "secrets/alipay").returncode == EXIT_OK

    status = _git(checkout, "status", "--porcelain", "--untracked-files=all").splitlines()

    assert sorted(status) == [
        "?? .gitignore",
        "?? secrets/alipay/app_public_key.pem",
        "?? secrets/alipay/app_public_key.txt",
    ]
