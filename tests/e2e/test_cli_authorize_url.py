"""``appauth authorize-url`` (and ``appauth --version``) against the local stack.

A link is checked where it matters: its query decodes to what Alipay expects, its state verifies
with the service's secret (read back from SSM), its nonce is in the tokens table, and the
simulator's consent page and the callback accept it, once. The QR codes (SVG, PNG, terminal) are
decoded back to the link by a small reader of ISO/IEC 18004 below (it borrows only segno's
copies of the standard's tables, never its encoder). ``list --due-within`` is here too: its
answers from the due index are compared with the token query's.
"""

from __future__ import annotations

import json
import re
import struct
import tomllib
import zlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit
from xml.etree import ElementTree

import boto3
import pytest
from segno import consts

from appauth.alipay.endpoints import PRODUCTION, SANDBOX
from appauth.authorization import StartRequest
from appauth.authorize_url import BATCH_PATH, SINGLE_PATH
from appauth.state import verify_state
from appauth.store import STATE_SK
from appauth_dev import cli
from appauth_dev.local_service import LOCAL_APP_ID, SSM_PREFIX, LocalService, local_service
from appauth_dev.operator import (
    EXIT_AWS,
    EXIT_OK,
    EXIT_USAGE,
    NAME_SOURCES,
    STATE_TTL_SECONDS,
    Target,
    local_target,
    main,
)
from appauth_dev.simulator.control import SimulatorControl
from tests.e2e.cli_helpers import ROOT, Ran

CALLBACK = "https://appauth.example.test/alipay/callback"  # the stack's CALLBACK_URL
SINGLE = "2021000000008001"
REPLAYED = "2021000000008002"
BATCH = "2021000000008003"
DUE = ("2021000000008011", "2021000000008012", "2021000000008013")


@pytest.fixture(scope="module")
def service() -> Iterator[LocalService]:
    with local_service(callback_url=CALLBACK) as running:
        # The callback stores each pair; a grant notification would only repeat it.
        SimulatorControl(running.simulator.url).notification_settings(grant_notifications=False)
        yield running


@pytest.fixture
def appauth(
    service: LocalService, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Ran]:
    """``appauth ARGS`` against the local stack (``against=None``: the target the CLI builds)."""
    for source in NAME_SOURCES:  # a developer's shell must not point the commands elsewhere
        if source.env:
            monkeypatch.delenv(source.env, raising=False)
    monkeypatch.delenv("APPAUTH_STACK", raising=False)
    default = local_target(service)

    def appauth(*argv: str, against: Target | None = default) -> Ran:
        capsys.readouterr()
        code = main(list(argv), target=against)
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    return appauth


def _client(name: str) -> Any:
    return boto3.client(name)  # type: ignore[call-overload]  # local_service's environment: moto


def _state_secret() -> bytes:
    parameter = _client("ssm").get_parameter(Name=f"{SSM_PREFIX}/state-secret", WithDecryption=True)
    return str(parameter["Parameter"]["Value"]).strip().encode()


def _states(service: LocalService) -> int:
    """How many authorization states the tokens table holds."""
    answer = _client("dynamodb").scan(
        TableName=service.stack.tokens_table,
        FilterExpression="begins_with(pk, :state)",
        ExpressionAttributeValues={":state": {"S": "STATE#"}},
        Select="COUNT",
    )
    return int(answer["Count"])


def _query(url: str) -> dict[str, str]:
    values = parse_qs(urlsplit(url).query, keep_blank_values=True, strict_parsing=True)
    assert all(len(value) == 1 for value in values.values()), url
    return {name: value[0] for name, value in values.items()}


def _complete(service: LocalService, url: str, auth_app_id: str) -> tuple[int, Any]:
    """The merchant approves ``url`` on the simulator's consent page; the callback's answer."""
    return service.http("GET", "/alipay/callback", service.approve(url, auth_app_id=auth_app_id))


# --- links -----------------------------------------------------------------------------------


def test_a_single_link_is_signed_recorded_and_authorizes_once(
    service: LocalService, appauth: Callable[..., Ran]
) -> None:
    before = _states(service)
    ran = appauth("authorize-url", "--merchant-ref", "shop-cli")
    assert ran.code == EXIT_OK, ran.err
    url = ran.out.strip()
    assert ran.out == f"{url}\n"  # stdout is the link alone, for scripts
    assert "one-time" in ran.err
    assert CALLBACK in ran.err

    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == service.simulator.url
    assert parts.path == SINGLE_PATH
    query = _query(url)
    assert sorted(query) == ["app_id", "redirect_uri", "state"]
    assert query["app_id"] == LOCAL_APP_ID
    assert query["redirect_uri"] == CALLBACK
    now = int(service.clock.now().timestamp())
    state = verify_state(query["state"], _state_secret(), now=now)
    assert state.merchant_ref == "shop-cli"
    assert not state.batch
    assert now < state.expires_at <= now + STATE_TTL_SECONDS
    # The nonce is recorded, as the start page records it: the callback consumes it once.
    item = _client("dynamodb").get_item(
        TableName=service.stack.tokens_table,
        Key={"pk": {"S": f"STATE#{state.nonce}"}, "sk": {"S": STATE_SK}},
    )
    assert "consumed_at" not in item["Item"]
    assert _states(service) == before + 1

    status, result = _complete(service, url, SINGLE)
    assert status == 200, result
    assert result["status"] == "granted"
    assert result["auth_app_ids"] == [SINGLE]
    assert result["merchant_ref"] == "shop-cli"
    status, replayed = _complete(service, url, REPLAYED)
    assert status == 409, replayed
    assert replayed["error"]["reason"] == "state_replayed"


def test_a_batch_link_names_its_application_types_and_grants_several_apps(
    service: LocalService, appauth: Callable[..., Ran]
) -> None:
    ran = appauth(
        "authorize-url", "--batch", "--application-type", "webapp,tinyapp,webapp", "--json"
    )
    assert ran.code == EXIT_OK, ran.err
    link = ran.json()
    assert link["kind"] == "authorization"
    assert link["batch"] is True
    assert link["application_types"] == ["WEBAPP", "TINYAPP"]
    assert link["single_use"] is True
    assert link["qr"] is None
    url = link["url"]
    assert urlsplit(url).path == BATCH_PATH
    query = _query(url)
    assert query["application_type"] == "WEBAPP,TINYAPP"
    now = int(service.clock.now().timestamp())
    state = verify_state(query["state"], _state_secret(), now=now)
    assert state.batch
    assert state.expires_at == int(datetime.fromisoformat(link["expires_at"]).timestamp())

    status, result = _complete(service, url, BATCH)
    assert status == 200, result
    assert result["batch"] is True
    assert len(result["auth_app_ids"]) == 2


def test_sandbox_and_production_hosts_and_the_expiry_are_chosen_by_flags(
    service: LocalService, appauth: Callable[..., Ran]
) -> None:
    sandbox = appauth("authorize-url", "--sandbox", "--json").json()
    assert sandbox["url"].startswith(f"{SANDBOX.auth_base_url}{SINGLE_PATH}?")
    assert sandbox["auth_base_url"] == SANDBOX.auth_base_url
    production = appauth("authorize-url", "--environment", "production", "--json").json()
    assert production["url"].startswith(f"{PRODUCTION.auth_base_url}{SINGLE_PATH}?")

    day = appauth("authorize-url", "--expires-in", "86400", "--json").json()
    state = verify_state(
        _query(day["url"])["state"], _state_secret(), now=int(service.clock.now().timestamp())
    )
    assert state.expires_at - int(service.clock.now().timestamp()) > 86400 - 60


def test_the_start_page_link_carries_the_same_choices_and_records_nothing(
    service: LocalService, appauth: Callable[..., Ran]
) -> None:
    before = _states(service)
    page = "https://pay.example.test/alipay/authorize"
    ran = appauth(
        "authorize-url",
        "--start-page",
        "--start-page-url",
        page,
        "--merchant-ref",
        "shop-page",
        "--batch",
        "--redirect",
    )
    assert ran.code == EXIT_OK, ran.err
    url = ran.out.strip()
    assert url.startswith(f"{page}?")
    assert "does not expire" in ran.err
    query = _query(url)
    assert query == {
        "merchant_ref": "shop-page",
        "batch": "1",
        "application_type": "TINYAPP,WEBAPP",
        "redirect": "1",
    }
    # What the start page reads from that query is what was asked for.
    request = StartRequest.from_query(query, redirect_uri=CALLBACK)
    assert (request.merchant_ref, request.batch) == ("shop-page", True)
    assert request.application_types == ("TINYAPP", "WEBAPP")
    assert _states(service) == before

    plain = appauth("authorize-url", "--start-page", "--start-page-url", page, "--json").json()
    assert plain["url"] == page
    assert plain["single_use"] is False
    assert plain["expires_at"] is None

    missing = appauth("authorize-url", "--start-page")
    assert missing.code == EXIT_USAGE
    assert "APPAUTH_START_PAGE_URL" in missing.err
    assert "--stack NAME" in missing.err


def test_a_stacks_parameters_and_outputs_give_the_link(
    service: LocalService, appauth: Callable[..., Ran]
) -> None:
    api = "https://abc123.execute-api.us-east-1.amazonaws.com"

    def stack(name: str, callback_parameter: str) -> None:
        parameters = {
            "AppId": LOCAL_APP_ID,
            "AlipayEnvironment": "sandbox",
            "AlipayAuthUrl": "",
            "CallbackUrl": callback_parameter,
            "SsmPrefix": SSM_PREFIX,
        }
        template = {
            "Parameters": {
                key: {"Type": "String", "Default": value} for key, value in parameters.items()
            },
            "Resources": {"Placeholder": {"Type": "AWS::SQS::Queue"}},
            "Outputs": {
                "TokensTableName": {"Value": service.stack.tokens_table},
                "CallbackUrl": {"Value": f"{api}/alipay/callback"},
                "AuthorizeUrl": {"Value": f"{api}/alipay/authorize"},
            },
        }
        _client("cloudformation").create_stack(StackName=name, TemplateBody=json.dumps(template))

    stack("appauth-linktest", "")
    ran = appauth("authorize-url", "--stack", "appauth-linktest", "--json", against=None)
    assert ran.code == EXIT_OK, ran.err
    link = ran.json()
    assert link["auth_base_url"] == SANDBOX.auth_base_url  # AlipayEnvironment=sandbox
    assert link["app_id"] == LOCAL_APP_ID
    assert link["redirect_uri"] == f"{api}/alipay/callback"  # no CallbackUrl parameter: the API's
    assert verify_state(
        _query(link["url"])["state"], _state_secret(), now=int(datetime.now(UTC).timestamp())
    )
    page = appauth("authorize-url", "--stack", "appauth-linktest", "--start-page", against=None)
    assert page.out.strip() == f"{api}/alipay/authorize"

    # A custom domain: the CallbackUrl parameter is what the callback gives Alipay.
    custom = "https://pay.example.test/alipay/callback"
    stack("appauth-linktest-domain", custom)
    domain = appauth("authorize-url", "--stack", "appauth-linktest-domain", "--json", against=None)
    assert domain.json()["redirect_uri"] == custom
    # A flag wins over the stack.
    flagged = appauth(
        "authorize-url",
        "--stack",
        "appauth-linktest",
        "--app-id",
        "2021000000000077",
        "--auth-url",
        service.simulator.url,
        "--json",
        against=None,
    ).json()
    assert flagged["app_id"] == "2021000000000077"
    assert flagged["url"].startswith(f"{service.simulator.url}{SINGLE_PATH}?")


# --- QR codes --------------------------------------------------------------------------------


def test_qr_codes_in_svg_png_and_the_terminal_decode_to_the_link(
    tmp_path: Path, appauth: Callable[..., Ran]
) -> None:
    svg, png = tmp_path / "link.svg", tmp_path / "link.png"
    ran = appauth("authorize-url", "--merchant-ref", "shop-qr", "--qr", str(svg))
    assert ran.code == EXIT_OK, ran.err
    url = ran.out.strip()
    assert f"written to {svg}" in ran.err
    root = ElementTree.fromstring(svg.read_bytes())  # noqa: S314 (a file this test wrote)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert qr_text(svg_modules(svg.read_text(encoding="utf-8"))) == url

    as_json = appauth("authorize-url", "--batch", "--qr", str(png), "--json")
    assert as_json.code == EXIT_OK, as_json.err
    link = as_json.json()
    assert link["qr"]["path"] == str(png)
    assert link["qr"]["format"] == "png"
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert qr_text(png_modules(data)) == link["url"]

    drawn = appauth("authorize-url", "--qr", "-")
    assert drawn.code == EXIT_OK, drawn.err
    first, _, picture = drawn.out.partition("\n")
    assert "state" in _query(first)  # the link, then its picture
    assert "\x1b[30;107m" in picture  # black on white, whatever the terminal's colours
    assert qr_text(terminal_modules(picture)) == first


# --- refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--qr", "link.gif"], "--qr: 'link.gif' must end in .svg or .png"),
        (["--qr", "-", "--json"], "--qr - draws in the terminal"),
        (["--qr", "no-such-folder/link.svg"], "--qr: no-such-folder is not a directory"),
        (["--application-type", "TINYAPP"], "--application-type: is for a batch"),
        (["--batch", "--application-type", "TINYAPP,NOPE"], "--application-type: application_type"),
        (["--merchant-ref", "shop one"], "--merchant-ref: merchant_ref must be"),
        (["--expires-in", "10"], "--expires-in: must be 60 to 604800"),
        (["--redirect-uri", "ftp://callback.test/"], "--redirect-uri: redirect_uri must be"),
        (["--app-id", "app-1"], "--app-id: 'app-1' is not an Alipay app id"),
        (["--auth-url", "openauth.alipay.com"], "APPAUTH_AUTH_URL): 'openauth.alipay.com' is not"),
        (["--sandbox", "--auth-url", "http://127.0.0.1:1"], "not allowed with argument"),
        (["--redirect"], "--redirect: is a start page option"),
        (["--start-page-url", "https://x.test/a"], "--start-page-url: is the start page's URL"),
        (["--start-page", "--sandbox"], "--sandbox: the start page mints each link"),
        (["--state-secret", "missing.txt"], "--state-secret: cannot read missing.txt"),
        (["--prefix", "/appauth/none"], "/appauth/none/state-secret does not exist"),
    ],
)
def test_bad_usage_is_refused_before_a_state_is_recorded(
    service: LocalService, appauth: Callable[..., Ran], argv: list[str], says: str
) -> None:
    before = _states(service)
    ran = appauth("authorize-url", *argv)
    assert ran.code == EXIT_USAGE, ran.err
    assert says in ran.err
    assert ran.out == ""
    assert _states(service) == before


def test_the_state_secret_from_a_file_must_be_the_callbacks(
    tmp_path: Path, service: LocalService, appauth: Callable[..., Ran]
) -> None:
    secret = tmp_path / "state-secret"
    secret.write_bytes(_state_secret() + b"\n")
    right = appauth("authorize-url", "--state-secret", str(secret))
    assert right.code == EXIT_OK, right.err
    assert _complete(service, right.out.strip(), "2021000000008021")[0] == 200

    # A valid secret that is not the service's: the link is minted, and the callback refuses it.
    other = "another-state-secret-of-enough-random-characters"
    secret.write_text(other, encoding="utf-8")
    wrong = appauth("authorize-url", "--state-secret", str(secret))
    assert wrong.code == EXIT_OK, wrong.err
    assert other not in wrong.out + wrong.err
    status, refused = _complete(service, wrong.out.strip(), "2021000000008022")
    assert status == 400, refused
    assert refused["error"]["reason"] == "invalid_state"

    secret.write_text("too-short", encoding="utf-8")
    short = appauth("authorize-url", "--state-secret", str(secret))
    assert short.code == EXIT_USAGE
    assert "--state-secret: must be at least 32" in short.err
    assert "too-short" not in short.err


def test_missing_names_are_named_and_aws_failures_print_no_link(
    service: LocalService, appauth: Callable[..., Ran], monkeypatch: pytest.MonkeyPatch
) -> None:
    nameless = appauth("authorize-url", against=None)
    assert nameless.code == EXIT_USAGE
    assert "--app-id" in nameless.err
    assert "APPAUTH_APP_ID" in nameless.err

    monkeypatch.setenv("APPAUTH_APP_ID", LOCAL_APP_ID)
    monkeypatch.setenv("APPAUTH_REDIRECT_URI", CALLBACK)
    monkeypatch.setenv("APPAUTH_SSM_PREFIX", SSM_PREFIX)
    no_table = appauth("authorize-url", against=None)
    assert no_table.code == EXIT_USAGE
    assert "APPAUTH_TOKENS_TABLE" in no_table.err

    # The state cannot be recorded: no link (it would be refused at the callback).
    refused = appauth("authorize-url", "--tokens-table", "no-such-table", against=None)
    assert refused.code == EXIT_USAGE
    assert "ResourceNotFoundException" in refused.err
    assert refused.out == ""

    monkeypatch.setenv("APPAUTH_TOKENS_TABLE", service.stack.tokens_table)
    assert appauth("authorize-url", against=None).code == EXIT_OK

    # SSM throttles the state secret's read: AWS is busy (3), no link.
    def throttled(**_kw: Any) -> tuple[Any, dict[str, Any]]:
        error = {"Code": "ThrottlingException", "Message": "Rate exceeded"}
        answer = {"Error": error, "ResponseMetadata": {"HTTPStatusCode": 400}}
        return SimpleNamespace(status_code=400), answer

    def clients(name: str) -> Any:
        client = _client(name)
        if name == "ssm":  # answered before anything is sent
            client.meta.events.register("before-call.ssm.GetParameter", throttled)
        return client

    busy = appauth("authorize-url", against=replace(local_target(service), client_factory=clients))
    assert busy.code == EXIT_AWS, busy.err
    assert "ThrottlingException" in busy.err
    assert busy.out == ""


# --- list --due-within -----------------------------------------------------------------------


def test_list_due_within_reads_the_due_index_and_answers_as_the_token_query(
    service: LocalService, appauth: Callable[..., Ran]
) -> None:
    for auth_app_id in DUE:
        link = appauth("authorize-url", "--merchant-ref", f"due-{auth_app_id}").out.strip()
        assert _complete(service, link, auth_app_id)[0] == 200
    indexed = local_target(service)
    # Without the table's name the token query lists every merchant and the CLI filters.
    queried = replace(
        indexed, names={k: v for k, v in indexed.names.items() if k != "tokens_table"}
    )
    # With it, the token query is not needed at all.
    index_only = replace(indexed, names={**indexed.names, "token_query_function": "no-such"})
    for argv in (
        ["--due-within", "400"],
        ["--due-within", "0"],
        ["--due-within", "400", "--limit", "2"],
    ):
        fast = appauth("list", *argv, "--json", against=index_only)
        slow = appauth("list", *argv, "--json", against=queried)
        assert fast.code == slow.code == EXIT_OK, fast.err + slow.err
        assert fast.json()["source"] == "due_index"
        assert slow.json()["source"] == "token_query"
        assert {**fast.json(), "source": None} == {**slow.json(), "source": None}
    everything = appauth("list", "--due-within", "400", "--json", against=index_only).json()
    listed = [item["auth_app_id"] for item in everything["items"]]
    assert set(DUE) <= set(listed)
    assert listed == sorted(listed)
    assert appauth("list", "--due-within", "0", "--json").json()["items"] == []
    limited = appauth("list", "--due-within", "400", "--limit", "2", "--json").json()
    assert limited["count"] == 2
    assert limited["truncated"] is True


# --- --version -------------------------------------------------------------------------------


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert version("alipay-appauth") == declared["project"]["version"]
    assert capsys.readouterr().out == f"appauth {declared['project']['version']}\n"


# --- a QR code reader (ISO/IEC 18004, for clean images: no error correction needed) -----------

Modules = list[list[int]]  # 1 = dark


def _bounding_box(picture: Modules) -> Modules:
    """The symbol without its quiet zone: three finder patterns make its corners dark."""
    rows = [r for r, row in enumerate(picture) if any(row)]
    columns = [c for c in range(len(picture[0])) if any(row[c] for row in picture)]
    return [row[columns[0] : columns[-1] + 1] for row in picture[rows[0] : rows[-1] + 1]]


def svg_modules(svg: str) -> Modules:
    """segno's SVG: one stroked path of horizontal runs (``M x y``, ``m dx dy``, ``h n``)."""
    width = int(re.search(r'<svg[^>]* width="(\d+)"', svg)[1])  # type: ignore[index]
    scale = int(re.search(r'transform="scale\((\d+)\)"', svg)[1])  # type: ignore[index]
    path = re.search(r' d="([^"]+)"', svg)[1]  # type: ignore[index]
    size = width // scale
    picture = [[0] * size for _ in range(size)]
    x = y = 0.0
    for command, numbers in re.findall(r"([A-Za-z])([^A-Za-z]*)", path):
        values = [float(n) for n in re.findall(r"-?\d+(?:\.\d+)?", numbers)]
        if command == "M":
            x, y = values
        elif command == "m":
            x, y = x + values[0], y + values[1]
        elif command == "h":
            for column in range(int(x), int(x + values[0])):
                picture[int(y)][column] = 1
            x += values[0]
        else:
            raise AssertionError(f"unexpected SVG path command {command}")
    return _bounding_box(picture)


def _unfilter(kind: int, line: bytearray, previous: bytearray) -> bytearray:
    """PNG scanline filters for one byte per pixel group (bit depth 1, greyscale)."""
    out = bytearray(len(line))
    for i, value in enumerate(line):
        left = out[i - 1] if i else 0
        up = previous[i]
        upper_left = previous[i - 1] if i else 0
        if kind == 0:
            predictor = 0
        elif kind == 1:
            predictor = left
        elif kind == 2:
            predictor = up
        elif kind == 3:
            predictor = (left + up) // 2
        else:  # Paeth
            estimate = left + up - upper_left
            distances = (abs(estimate - left), abs(estimate - up), abs(estimate - upper_left))
            predictor = (left, up, upper_left)[distances.index(min(distances))]
        out[i] = (value + predictor) % 256
    return out


def png_modules(data: bytes) -> Modules:
    """A 1-bit greyscale PNG (black = dark), its modules sampled at their centres."""
    position, chunks = 8, dict[bytes, bytes]()
    idat = b""
    while position < len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        body = data[position + 8 : position + 8 + length]
        if kind == b"IDAT":
            idat += body
        chunks[kind] = body
        position += 12 + length
    width, height, depth, colour, _compression, _filter, interlace = struct.unpack(
        ">2I5B", chunks[b"IHDR"]
    )
    assert (depth, colour, interlace) == (1, 0, 0), "a 1-bit greyscale, non-interlaced PNG"
    stride = (width + 7) // 8
    raw = zlib.decompress(idat)
    previous = bytearray(stride)
    pixels: Modules = []
    for row in range(height):
        line = raw[row * (stride + 1) : (row + 1) * (stride + 1)]
        previous = _unfilter(line[0], bytearray(line[1:]), previous)
        pixels.append([1 - ((previous[x // 8] >> (7 - x % 8)) & 1) for x in range(width)])
    symbol = _bounding_box(pixels)
    scale = symbol[0].index(0) // 7  # the top-left finder pattern is 7 modules wide
    size = len(symbol) // scale
    return [
        [symbol[r * scale + scale // 2][c * scale + scale // 2] for c in range(size)]
        for r in range(size)
    ]


def terminal_modules(text: str) -> Modules:
    """Half blocks, two module rows a character (ANSI colours stripped)."""
    halves = {" ": (0, 0), "\u2580": (1, 0), "\u2584": (0, 1), "\u2588": (1, 1)}
    picture: Modules = []
    for line in re.sub(r"\x1b\[[0-9;]*m", "", text).splitlines():
        pairs = [halves[character] for character in line]
        picture.append([top for top, _ in pairs])
        picture.append([bottom for _, bottom in pairs])
    return _bounding_box(picture)


MASKS: tuple[Callable[[int, int], bool], ...] = (
    lambda r, c: (r + c) % 2 == 0,
    lambda r, c: r % 2 == 0,
    lambda r, c: c % 3 == 0,
    lambda r, c: (r + c) % 3 == 0,
    lambda r, c: (r // 2 + c // 3) % 2 == 0,
    lambda r, c: (r * c) % 2 + (r * c) % 3 == 0,
    lambda r, c: ((r * c) % 2 + (r * c) % 3) % 2 == 0,
    lambda r, c: ((r + c) % 2 + (r * c) % 3) % 2 == 0,
)


def _function_modules(size: int, version: int) -> list[list[bool]]:
    """Finder patterns with separators and format areas, timing, alignment, version areas."""
    reserved = [[False] * size for _ in range(size)]

    def reserve(top: int, left: int, height: int, width: int) -> None:
        for r in range(max(top, 0), min(top + height, size)):
            for c in range(max(left, 0), min(left + width, size)):
                reserved[r][c] = True

    reserve(0, 0, 9, 9)
    reserve(0, size - 8, 9, 8)
    reserve(size - 8, 0, 8, 9)
    reserve(6, 0, 1, size)
    reserve(0, 6, size, 1)
    if version >= 2:
        centres = consts.ALIGNMENT_POS[version - 2]
        last = len(centres) - 1
        for i, row in enumerate(centres):
            for j, column in enumerate(centres):
                if (i, j) not in ((0, 0), (0, last), (last, 0)):  # the finder corners
                    reserve(row - 2, column - 2, 5, 5)
    if version >= 7:
        reserve(0, size - 11, 6, 3)
        reserve(size - 11, 0, 3, 6)
    return reserved


def qr_text(matrix: Modules) -> str:
    """The byte-mode text of a QR code's module matrix (no quiet zone)."""
    size = len(matrix)
    version = (size - 17) // 4
    assert size == 17 + 4 * version, f"a {size}x{size} matrix is no QR code"
    # The format information beside the top-left finder pattern: error level and mask.
    places = [(i, 8) for i in range(6)] + [(7, 8), (8, 8), (8, 7)]
    places += [(8, 14 - i) for i in range(9, 15)]
    word = sum(matrix[r][c] << bit for bit, (r, c) in enumerate(places))
    level, mask = divmod(consts.FORMAT_INFO.index(word), 8)
    reserved = _function_modules(size, version)
    bits: list[int] = []
    right = size - 1
    while right >= 1:  # two-module columns, right to left, up then down; column 6 is timing
        if right == 6:
            right = 5
        upward = (right + 1) & 2 == 0
        for step in range(size):
            row = size - 1 - step if upward else step
            for column in (right, right - 1):
                if not reserved[row][column]:
                    bits.append(matrix[row][column] ^ MASKS[mask](row, column))
        right -= 2
    codewords = [int("".join(map(str, bits[i : i + 8])), 2) for i in range(0, len(bits) - 7, 8)]
    blocks: Any = consts.ECC[version][level]  # type: ignore[index]
    assert len(codewords) == sum(b.num_blocks * b.num_total for b in blocks)
    lengths = [b.num_data for b in blocks for _ in range(b.num_blocks)]
    data: list[list[int]] = [[] for _ in lengths]
    taken = 0
    for i in range(max(lengths)):  # data codewords are interleaved block by block
        for block, length in enumerate(lengths):
            if i < length:
                data[block].append(codewords[taken])
                taken += 1
    stream = "".join(f"{byte:08b}" for block in data for byte in block)
    text, position = bytearray(), 0

    def take(count: int) -> int:
        nonlocal position
        value = int(stream[position : position + count], 2)
        position += count
        return value

    while position + 4 <= len(stream):
        mode = take(4)
        if mode == 0b0000:  # terminator
            break
        if mode == 0b0111:  # an ECI designator (one byte below 128)
            take(8)
            continue
        assert mode == 0b0100, f"mode {mode:04b}: this reader knows byte mode only"
        text.extend(take(8) for _ in range(take(8 if version < 10 else 16)))
    return text.decode("iso-8859-1")  # byte mode's default character set
