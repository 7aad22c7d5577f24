"""The ``appauth`` command as a developer runs it: keygen, the simulator, one signed call, the demo.

Most tests run the command in a subprocess (``python -m appauth_dev.cli``, the code behind the
``appauth`` console script) and check exit codes, stdout and stderr as a shell script would. The
simulator runs as a real ``appauth simulator`` process on a free loopback port; tests that only
vary inputs call ``appauth_dev.cli.main`` in-process, which is much faster.
"""

from __future__ import annotations

import base64
import json
import re
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from appauth.alipay.keys import load_private_key, load_public_key
from appauth.alipay.signing import rsa_sign, rsa_verify
from appauth_dev.cli import (
    EXIT_ALIPAY_ERROR,
    EXIT_OK,
    EXIT_SIGNATURE,
    EXIT_TRANSPORT,
    EXIT_USAGE,
    main,
)
from tests.e2e.cli_helpers import (
    ALIPAY_PRIVATE,
    ALIPAY_PUBLIC,
    ALIPAY_PUBLIC_BARE,
    APP_PRIVATE_BARE,
    APP_PRIVATE_PKCS1,
    APP_PRIVATE_PKCS8,
    APP_PUBLIC,
    COMMAND,
    TIMEOUT,
    SimulatorProcess,
    command_env,
    simulator_process,
)

# In-process runs must not pick up the developer's APPAUTH_* settings (subprocesses drop them).
pytestmark = pytest.mark.usefixtures("no_appauth_environment")

TOKEN_APP = "alipay.open.auth.token.app"
TOKEN_QUERY = "alipay.open.auth.token.app.query"
V3_TOKEN = "/v3/alipay/open/auth/token/app"
V3_QUERY = "/v3/alipay/open/auth/token/app/query"
# Tokens are 43 characters and codes 32; the longest legitimate run in any output is a 16-digit id.
SECRET_RUN = re.compile(r"[0-9A-Za-z]{32,}")
TRACE_ID = re.compile(r"\[trace [0-9a-f]+\]")
MASKED_TOKEN = re.compile(r"\d{4}…[0-9A-Za-z]{3} \(43\)")


# --- running the command ----------------------------------------------------------------------


def appauth(*args: str | Path, timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - our own interpreter and module
        [*COMMAND, *map(str, args)],
        capture_output=True,
        text=True,
        env=command_env(),
        timeout=timeout,
        check=False,
    )


def run_main(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(stderr: str) -> str:
    """The single line of a failure message (and nothing else on stderr)."""
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert stderr.endswith("\n")
    return lines[0]


def assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text
    # A v3 error names Alipay's trace id (32 hex characters): useful, and not a secret.
    assert not SECRET_RUN.search(TRACE_ID.sub("[trace]", text)), text


def assert_no_key_material(text: str, key_file: Path) -> None:
    """No 12-character piece of the file's body (armor and whitespace removed) appears in ``text``."""
    body = "".join(
        line.strip()
        for line in key_file.read_text(encoding="utf-8").splitlines()
        if not line.startswith("-----")
    )
    assert len(body) >= 12
    for start in range(len(body) - 11):
        assert body[start : start + 12] not in text, f"key material at offset {start}"


def _credential_args(
    app_id: str, *, private_key: Path = APP_PRIVATE_PKCS1, public_key: Path = ALIPAY_PUBLIC_BARE
) -> list[str | Path]:
    return ["--app-id", app_id, "--app-private-key", private_key, "--alipay-public-key", public_key]


def v2_args(url: str, app_id: str, **keys: Path) -> list[str | Path]:
    """A v2 call to the simulator at ``url``; ``keys``: ``private_key``, ``public_key``."""
    return [*_credential_args(app_id, **keys), "--gateway", f"{url}/gateway.do"]


def v3_args(url: str, app_id: str, **keys: Path) -> list[str | Path]:
    """A v3 call to the simulator at ``url``; ``keys``: ``private_key``, ``public_key``."""
    return ["--v3", *_credential_args(app_id, **keys), "--endpoint", url]


def exchange_json(code: str) -> str:
    return json.dumps({"grant_type": "authorization_code", "code": code})


# --- a port nobody listens on ----------------------------------------------------------------


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound, never listening, held for the test."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]


# --- keygen -----------------------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


KEYGEN_FILES = (
    "app_private_key.pem",
    "app_private_key.txt",
    "app_public_key.pem",
    "app_public_key.txt",
)


def test_keygen_writes_a_usable_pair_and_only_replaces_it_with_force(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    result = appauth("keygen", "--out", out)

    assert (result.returncode, result.stderr) == (EXIT_OK, "")
    listed = result.stdout.splitlines()
    assert [line.split("  ", 1)[0] for line in listed] == [str(out / n) for n in KEYGEN_FILES]
    files = {name: (out / name).read_text(encoding="utf-8") for name in KEYGEN_FILES}
    assert files["app_private_key.pem"].startswith("-----BEGIN PRIVATE KEY-----\n")  # PKCS#8
    assert files["app_public_key.pem"].startswith("-----BEGIN PUBLIC KEY-----\n")
    for name in ("app_private_key.txt", "app_public_key.txt"):
        assert files[name].count("\n") == 1
        assert files[name].endswith("\n")
        base64.b64decode(files[name].strip(), validate=True)
    assert [_mode(out / n) for n in KEYGEN_FILES] == [0o600, 0o600, 0o644, 0o644]
    assert not SECRET_RUN.search(result.stdout), "keygen must not print key material"

    private = load_private_key(files["app_private_key.pem"])
    numbers = private.public_key().public_numbers()
    assert load_private_key(files["app_private_key.txt"]).public_key().public_numbers() == numbers
    assert load_public_key(files["app_public_key.pem"]).public_numbers() == numbers
    public_line = load_public_key(files["app_public_key.txt"])
    assert public_line.public_numbers() == numbers
    content = "app_id=2021000100000001&biz_content={}&sign_type=RSA2"
    assert rsa_verify(content, rsa_sign(content, private), public_line)

    refused = appauth("keygen", "--out", out)
    assert refused.returncode == EXIT_USAGE
    assert refused.stdout == ""
    message = one_line(refused.stderr)
    assert "--force" in message
    assert "already exist" in message
    assert {name: (out / name).read_text(encoding="utf-8") for name in KEYGEN_FILES} == files

    forced = appauth("keygen", "--out", out, "--force")
    assert (forced.returncode, forced.stderr) == (EXIT_OK, "")
    replaced = {name: (out / name).read_text(encoding="utf-8") for name in KEYGEN_FILES}
    assert all(replaced[name] != files[name] for name in KEYGEN_FILES)
    new_private = load_private_key(replaced["app_private_key.pem"])
    assert new_private.public_key().public_numbers() != numbers
    assert (
        load_public_key(replaced["app_public_key.txt"]).public_numbers()
        == new_private.public_key().public_numbers()
    )
    assert [_mode(out / n) for n in KEYGEN_FILES] == [0o600, 0o600, 0o644, 0o644]


def test_the_console_script_is_installed_and_lists_the_commands() -> None:
    script = Path(sys.executable).with_name("appauth")
    if not script.exists():
        pytest.skip("the appauth console script is not installed next to this interpreter")
    result = subprocess.run(  # noqa: S603 - the project's own console script
        [str(script), "--help"], capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert result.returncode == EXIT_OK, result.stderr
    for command in ("keygen", "api", "simulator", "demo"):
        assert command in result.stdout


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main([])
    assert exited.value.code == EXIT_USAGE
    assert "appauth" in capsys.readouterr().err


# --- api against the simulator process: success -----------------------------------------------


def test_v2_exchange_then_query_print_the_verified_json(sim: SimulatorProcess, app_id: str) -> None:
    code = sim.mint()
    result = appauth(
        "api", TOKEN_APP, "--biz-content", exchange_json(code), *v2_args(sim.url, app_id)
    )

    assert (result.returncode, result.stderr) == (EXIT_OK, ""), result.stderr
    grant = json.loads(result.stdout)
    assert grant["code"] == "10000"
    assert grant["app_auth_token"]
    assert grant["app_refresh_token"]
    assert grant["tokens"][0]["app_auth_token"] == grant["app_auth_token"]

    query = json.dumps({"app_auth_token": grant["app_auth_token"]})
    result = appauth(
        "api",
        TOKEN_QUERY,
        "--biz-content",
        query,
        *v2_args(sim.url, app_id, private_key=APP_PRIVATE_BARE, public_key=ALIPAY_PUBLIC),
    )
    assert (result.returncode, result.stderr) == (EXIT_OK, ""), result.stderr
    info = json.loads(result.stdout)
    assert info["status"] == "valid"
    assert info["auth_app_id"] == grant["auth_app_id"]


def test_v3_exchange_then_query_print_the_verified_json(sim: SimulatorProcess, app_id: str) -> None:
    code = sim.mint()
    result = appauth(
        "api", "POST", V3_TOKEN, "--body", exchange_json(code), *v3_args(sim.url, app_id)
    )

    assert (result.returncode, result.stderr) == (EXIT_OK, ""), result.stderr
    grant = json.loads(result.stdout)
    token = grant["app_auth_token"]
    assert token
    assert grant["app_refresh_token"]

    result = appauth(
        "api",
        "GET",
        f"{V3_QUERY}?app_auth_token={token}",
        *v3_args(sim.url, app_id, private_key=APP_PRIVATE_PKCS8, public_key=ALIPAY_PUBLIC),
    )
    assert (result.returncode, result.stderr) == (EXIT_OK, ""), result.stderr
    info = json.loads(result.stdout)
    assert info["status"] == "valid"
    assert info["auth_app_id"] == grant["auth_app_id"]


@pytest.mark.parametrize("protocol", ["v2", "v3"])
@pytest.mark.parametrize(
    "private_key", [APP_PRIVATE_PKCS8, APP_PRIVATE_PKCS1, APP_PRIVATE_BARE], ids=lambda p: p.name
)
@pytest.mark.parametrize("public_key", [ALIPAY_PUBLIC, ALIPAY_PUBLIC_BARE], ids=lambda p: p.name)
def test_api_accepts_every_key_format(
    *,
    sim: SimulatorProcess,
    app_id: str,
    capsys: pytest.CaptureFixture[str],
    protocol: str,
    private_key: Path,
    public_key: Path,
) -> None:
    code = sim.mint()
    keys = {"private_key": private_key, "public_key": public_key}
    if protocol == "v2":
        argv = [TOKEN_APP, "--biz-content", exchange_json(code), *v2_args(sim.url, app_id, **keys)]
    else:
        argv = ["POST", V3_TOKEN, "--body", exchange_json(code), *v3_args(sim.url, app_id, **keys)]

    exit_code, out, err = run_main(capsys, "api", *argv)

    assert (exit_code, err) == (EXIT_OK, "")
    assert json.loads(out)["app_auth_token"]


def test_api_reads_its_settings_from_appauth_environment_variables(
    sim: SimulatorProcess,
    app_id: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("APPAUTH_APP_ID", app_id)
    monkeypatch.setenv("APPAUTH_APP_PRIVATE_KEY_FILE", str(APP_PRIVATE_PKCS1))
    monkeypatch.setenv("APPAUTH_ALIPAY_PUBLIC_KEY_FILE", str(ALIPAY_PUBLIC_BARE))
    monkeypatch.setenv("APPAUTH_GATEWAY", f"{sim.url}/gateway.do")

    exit_code, out, err = run_main(
        capsys, "api", TOKEN_APP, "--biz-content", exchange_json(sim.mint())
    )

    assert (exit_code, err) == (EXIT_OK, "")
    assert json.loads(out)["app_auth_token"]


# --- the simulator process: key formats and signals -------------------------------------------


def _write_key_variants(tmp_path: Path) -> dict[str, Path]:
    """The vectors' simulator-side keys in every accepted format."""
    alipay = load_private_key(ALIPAY_PRIVATE.read_bytes(), name="alipay private key")
    app_public = load_public_key(APP_PUBLIC.read_bytes(), name="app public key")
    none = serialization.NoEncryption()
    pem, der = serialization.Encoding.PEM, serialization.Encoding.DER
    contents = {
        "alipay_private_pkcs1.pem": alipay.private_bytes(
            pem, serialization.PrivateFormat.TraditionalOpenSSL, none
        ),
        "alipay_private.bare.txt": base64.b64encode(
            alipay.private_bytes(der, serialization.PrivateFormat.PKCS8, none)
        )
        + b"\n",
        "app_public_pkcs1.pem": app_public.public_bytes(pem, serialization.PublicFormat.PKCS1),
        "app_public.bare.txt": base64.b64encode(
            app_public.public_bytes(der, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        + b"\n",
    }
    paths = {"alipay_private_pkcs8.pem": ALIPAY_PRIVATE, "app_public.pem": APP_PUBLIC}
    for name, content in contents.items():
        (tmp_path / name).write_bytes(content)
        paths[name] = tmp_path / name
    return paths


@pytest.mark.parametrize(
    ("alipay_private", "app_public", "signum"),
    [
        ("alipay_private_pkcs8.pem", "app_public.pem", signal.SIGTERM),
        ("alipay_private_pkcs1.pem", "app_public.bare.txt", signal.SIGTERM),
        ("alipay_private.bare.txt", "app_public_pkcs1.pem", signal.SIGINT),
    ],
    ids=["pkcs8-pem", "pkcs1-bare", "bare-pkcs1-sigint"],
)
def test_simulator_process_accepts_every_key_format_and_stops_cleanly_on_a_signal(
    *,
    tmp_path: Path,
    app_id: str,
    capsys: pytest.CaptureFixture[str],
    alipay_private: str,
    app_public: str,
    signum: int,
) -> None:
    keys = _write_key_variants(tmp_path)
    stderr_file = tmp_path / "simulator-stderr.txt"
    with simulator_process(app_id, keys[app_public], keys[alipay_private], stderr_file) as running:
        code = running.mint()
        exit_code, out, err = run_main(
            capsys,
            "api",
            TOKEN_APP,
            "--biz-content",
            exchange_json(code),
            *v2_args(running.url, app_id),
        )
        assert (exit_code, err) == (EXIT_OK, "")
        assert json.loads(out)["app_auth_token"]

        assert running.stop(signum) == EXIT_OK
    assert "Traceback" not in stderr_file.read_text(encoding="utf-8")


def _simulator_with(app_id: str, *, alipay_private_key: Path) -> subprocess.CompletedProcess[str]:
    """``appauth simulator`` with the vectors' app public key and this Alipay private key."""
    return appauth(
        "simulator",
        "--app-id",
        app_id,
        "--app-public-key",
        APP_PUBLIC,
        "--alipay-private-key",
        alipay_private_key,
    )


def test_simulator_refuses_a_garbage_key_in_one_line_without_echoing_it(
    tmp_path: Path, app_id: str
) -> None:
    garbage = tmp_path / "alipay_private.pem"
    garbage.write_text(
        "-----BEGIN PRIVATE KEY-----\nTm90QUtleUJ1dFNlY3JldExvb2tpbmdCYXNlNjRDb250ZW50\n"
        "-----END PRIVATE KEY-----\n",
        encoding="utf-8",
    )
    result = _simulator_with(app_id, alipay_private_key=garbage)

    assert result.returncode == EXIT_USAGE
    assert result.stdout == ""
    assert "alipay private key" in one_line(result.stderr)
    assert_no_key_material(result.stderr, garbage)


def test_simulator_refuses_a_missing_key_file_in_one_line(tmp_path: Path, app_id: str) -> None:
    missing = tmp_path / "nowhere" / "alipay_private.pem"
    result = _simulator_with(app_id, alipay_private_key=missing)

    assert result.returncode == EXIT_USAGE
    assert result.stdout == ""
    assert str(missing) in one_line(result.stderr)


# --- api failures: exit codes and one-line messages -------------------------------------------


def test_a_replayed_code_exits_1_with_the_alipay_code(sim: SimulatorProcess, app_id: str) -> None:
    code = sim.mint()
    argv = [TOKEN_APP, "--biz-content", exchange_json(code), *v2_args(sim.url, app_id)]
    assert appauth("api", *argv).returncode == EXIT_OK

    replay = appauth("api", *argv)

    assert replay.returncode == EXIT_ALIPAY_ERROR
    assert replay.stdout == ""
    message = one_line(replay.stderr)
    assert message.startswith("appauth: ")
    assert "40002" in message
    assert "isv.code-invalid" in message
    assert_no_secret(replay.stderr, code)


def test_a_replayed_code_on_v3_exits_1_with_the_alipay_code(
    sim: SimulatorProcess, app_id: str
) -> None:
    code = sim.mint()
    argv = ["POST", V3_TOKEN, "--body", exchange_json(code), *v3_args(sim.url, app_id)]
    assert appauth("api", *argv).returncode == EXIT_OK

    replay = appauth("api", *argv)

    assert replay.returncode == EXIT_ALIPAY_ERROR
    assert replay.stdout == ""
    assert "invalid-auth-code" in one_line(replay.stderr)
    assert_no_secret(replay.stderr, code)


def test_a_response_signed_by_another_key_exits_3(sim: SimulatorProcess, app_id: str) -> None:
    code = sim.mint()
    # The app's own public key posing as Alipay's: the (genuine) response cannot verify with it.
    result = appauth(
        "api",
        TOKEN_APP,
        "--biz-content",
        exchange_json(code),
        *v2_args(sim.url, app_id, public_key=APP_PUBLIC),
    )

    assert result.returncode == EXIT_SIGNATURE
    assert result.stdout == "", "nothing of an unverified response may be printed"
    message = one_line(result.stderr)
    assert message.startswith("appauth: rejected the response: ")
    assert "signature" in message
    assert_no_secret(result.stderr, code)


def test_a_v3_response_signed_by_another_key_exits_3(sim: SimulatorProcess, app_id: str) -> None:
    code = sim.mint()
    result = appauth(
        "api",
        "POST",
        V3_TOKEN,
        "--body",
        exchange_json(code),
        *v3_args(sim.url, app_id, public_key=APP_PUBLIC),
    )

    assert result.returncode == EXIT_SIGNATURE
    assert result.stdout == ""
    assert "signature" in one_line(result.stderr)
    assert_no_secret(result.stderr, code)


def _call_closed_port(port: int, app_id: str) -> subprocess.CompletedProcess[str]:
    code = "0123456789abcdef0123456789abcdef"
    return appauth(
        "api",
        TOKEN_APP,
        "--biz-content",
        exchange_json(code),
        *v2_args(f"http://127.0.0.1:{port}", app_id),
    )


def test_an_unreachable_gateway_exits_4(closed_port: int, app_id: str) -> None:
    result = _call_closed_port(closed_port, app_id)

    assert result.returncode == EXIT_TRANSPORT
    assert result.stdout == ""
    messages = [line for line in result.stderr.splitlines() if line.startswith("appauth")]
    assert len(messages) == 1, result.stderr
    assert messages[0].startswith("appauth: transport error: ")
    assert f"127.0.0.1:{closed_port}" in messages[0]
    assert result.stderr.splitlines()[-1] == messages[0]
    assert_no_secret(result.stderr, "0123456789abcdef0123456789abcdef")


def test_an_unreachable_gateway_prints_exactly_one_line(closed_port: int, app_id: str) -> None:
    result = _call_closed_port(closed_port, app_id)
    assert result.returncode == EXIT_TRANSPORT
    one_line(result.stderr)


@pytest.mark.parametrize(
    ("flag", "parameter"),
    [("--app-private-key", "app private key"), ("--alipay-public-key", "alipay public key")],
)
def test_a_missing_key_file_exits_2_naming_the_parameter(
    tmp_path: Path, app_id: str, closed_port: int, flag: str, parameter: str
) -> None:
    argv = v2_args(f"http://127.0.0.1:{closed_port}", app_id)
    argv[argv.index(flag) + 1] = tmp_path / "missing.pem"

    result = appauth("api", TOKEN_APP, "--biz-content", "{}", *argv)

    assert result.returncode == EXIT_USAGE
    assert result.stdout == ""
    message = one_line(result.stderr)
    assert message.startswith(f"appauth: configuration error: {parameter}: ")
    assert "missing.pem" in message


GARBAGE_PEM = (
    "-----BEGIN PRIVATE KEY-----\n"
    "U2VjcmV0R2FyYmFnZVRoYXRMb29rc0xpa2VBS2V5QnV0SXNOb3RPbmVBdEFsbA==\n"
    "-----END PRIVATE KEY-----\n"
)


@pytest.mark.parametrize(
    ("flag", "parameter", "content"),
    [
        ("--app-private-key", "app private key", GARBAGE_PEM),
        ("--app-private-key", "app private key", "c2VjcmV0IGJ1dCBub3QgYSBrZXkgYXQgYWxsIQ==\n"),
        ("--app-private-key", "app private key", "this is no key, not even base64!\n"),
        ("--alipay-public-key", "alipay public key", GARBAGE_PEM),
        # A real private key where the public one belongs: must be refused without echoing it.
        ("--alipay-public-key", "alipay public key", APP_PRIVATE_PKCS1.read_text(encoding="utf-8")),
        ("--app-private-key", "app private key", APP_PUBLIC.read_text(encoding="utf-8")),
    ],
    ids=[
        "private-garbage-pem",
        "private-garbage-base64",
        "private-not-base64",
        "public-garbage-pem",
        "public-given-a-private-key",
        "private-given-a-public-key",
    ],
)
def test_a_garbage_key_file_exits_2_naming_the_parameter_and_not_the_key(
    *, tmp_path: Path, app_id: str, closed_port: int, flag: str, parameter: str, content: str
) -> None:
    key_file = tmp_path / "key.pem"
    key_file.write_text(content, encoding="utf-8")
    argv = v2_args(f"http://127.0.0.1:{closed_port}", app_id)
    argv[argv.index(flag) + 1] = key_file

    result = appauth("api", TOKEN_APP, "--biz-content", "{}", *argv)

    assert result.returncode == EXIT_USAGE
    assert result.stdout == ""
    assert one_line(result.stderr).startswith(f"appauth: configuration error: {parameter}: ")
    assert_no_key_material(result.stderr, key_file)


@pytest.mark.parametrize("command", ["api", "simulator"])
def test_a_binary_key_file_exits_2_in_one_line(
    tmp_path: Path, app_id: str, closed_port: int, command: str
) -> None:
    key_file = tmp_path / "key.der"
    key_file.write_bytes(b"\x30\x82\x04\xa4\x90\xff\xfe" + bytes(range(256)))
    if command == "api":
        argv = v2_args(f"http://127.0.0.1:{closed_port}", app_id, private_key=key_file)
        result = appauth("api", TOKEN_APP, "--biz-content", "{}", *argv)
    else:
        result = _simulator_with(app_id, alipay_private_key=key_file)

    assert result.returncode == EXIT_USAGE
    assert "private key" in one_line(result.stderr)


@pytest.mark.parametrize(
    ("protocol", "flag", "text"),
    [
        ("v2", "--biz-content", '{"grant_type": "authorization_code", "code": '),
        ("v2", "--biz-content", "{'single': 'quotes'}"),
        ("v2", "--biz-content", '["not", "an", "object"]'),
        ("v2", "--biz-content", '"a string"'),
        ("v3", "--body", "{bad json"),
        ("v3", "--body", "[]"),
    ],
)
def test_an_invalid_json_argument_exits_2(
    *,
    capsys: pytest.CaptureFixture[str],
    app_id: str,
    closed_port: int,
    protocol: str,
    flag: str,
    text: str,
) -> None:
    url = f"http://127.0.0.1:{closed_port}"
    if protocol == "v2":
        argv = [TOKEN_APP, flag, text, *v2_args(url, app_id)]
    else:
        argv = ["POST", V3_TOKEN, flag, text, *v3_args(url, app_id)]

    exit_code, out, err = run_main(capsys, "api", *argv)

    assert exit_code == EXIT_USAGE
    assert out == ""
    assert one_line(err).startswith(f"appauth: configuration error: {flag}: ")


def test_an_invalid_json_argument_exits_2_as_a_process(app_id: str, closed_port: int) -> None:
    argv = v2_args(f"http://127.0.0.1:{closed_port}", app_id)
    result = appauth("api", TOKEN_APP, "--biz-content", "{not json", *argv)

    assert result.returncode == EXIT_USAGE
    assert result.stdout == ""
    assert "--biz-content" in one_line(result.stderr)


def test_a_missing_app_id_exits_2(capsys: pytest.CaptureFixture[str], closed_port: int) -> None:
    argv = v2_args(f"http://127.0.0.1:{closed_port}", "x")[2:]  # without --app-id

    exit_code, out, err = run_main(capsys, "api", TOKEN_APP, *argv)

    assert exit_code == EXIT_USAGE
    assert out == ""
    assert "app_id" in one_line(err)


# --- demo -------------------------------------------------------------------------------------


def test_demo_runs_the_lifecycle_and_prints_only_masked_secrets() -> None:
    # The whole lifecycle takes about 6 s alone; a bound, not a timing, on a busy 2-core machine.
    result = appauth("demo", timeout=120)

    assert result.returncode == EXIT_OK, result.stderr
    assert result.stderr == ""
    assert result.stdout.splitlines()[-1] == "demo OK"
    assert MASKED_TOKEN.search(result.stdout), "the demo shows masked tokens"
    assert_no_secret(result.stdout)
