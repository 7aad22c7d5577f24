"""The operator commands (``appauth list/show/refresh/revoke/describe/secrets put/parked/recover``)
against the local stack: template.yaml on moto, the simulator as Alipay, the real handlers.

The commands run in-process through :func:`appauth_dev.operator.main` with a
:func:`~appauth_dev.operator.local_target` (the functions through a ``LocalLambdaClient``, boto3
pointed at moto); stdout and stderr are captured. Every effect is checked where it lands (the
table, the audit history, SSM, the queues, the token query), not only in what is printed. The
last tests resolve the target as the CLI does, from a CloudFormation stack's outputs on moto.
"""

from __future__ import annotations

import io
import json
import socket
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest

from appauth.alipay.models import TokenGrant
from appauth.envelope import TokenCipher, sealed_to_json
from appauth.parking import RESCUE_FIELD, park_grants, parked_message
from appauth_dev.keygen import generate_private_key, private_pkcs8_pem, public_pem
from appauth_dev.local_service import LocalService, local_service
from appauth_dev.operator import (
    EXIT_AWS,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_USAGE,
    REFRESH_CHUNK,
    Target,
    local_target,
    main,
)
from appauth_dev.simulator.control import SimulatorControl
from tests.e2e.cli_helpers import Ran

LISTED = "2021000000007001"  # list, show, describe
REFRESHED = "2021000000007002"
REVOKED = "2021000000007003"
RESCUED = "2021000000007004"  # never authorized: arrives only through `recover`
PARKED = "2021000000007005"
DEAD = "2021000000007006"
DEAD_PLAIN = "2021000000007007"
UNKNOWN = "2021000000007999"
RICH_TERMINAL_VARIABLES = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "NO_COLOR")


Run = Callable[..., Ran]


def _authorize(service: LocalService, auth_app_id: str) -> None:
    """A merchant authorizes through the start page, the simulator's consent and the callback."""
    status, page = service.http("GET", "/alipay/authorize", {"merchant_ref": f"op-{auth_app_id}"})
    assert status == 200, page
    query = service.approve(page["authorization_url"], auth_app_id=auth_app_id)
    status, result = service.http("GET", "/alipay/callback", query)
    assert status == 200, result
    assert result["status"] == "granted", result


@pytest.fixture(scope="module")
def service() -> Iterator[LocalService]:
    with local_service() as running:
        # The callback stores each pair; a grant notification would be a second version.
        SimulatorControl(running.simulator.url).notification_settings(grant_notifications=False)
        for auth_app_id in (LISTED, REFRESHED, REVOKED):
            _authorize(running, auth_app_id)
        yield running


@pytest.fixture(scope="module")
def target(service: LocalService) -> Target:
    return local_target(service)


@pytest.fixture
def run(target: Target, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Run:
    """``appauth ARGS`` against the local stack; ``stdin`` answers a question."""
    for name in RICH_TERMINAL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COLUMNS", "220")

    def run(*argv: str, stdin: str | None = None, against: Target | None = target) -> Ran:
        capsys.readouterr()
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin or ""))
        code = main(list(argv), target=against)
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    return run


def _token(service: LocalService, auth_app_id: str) -> str:
    record = SimulatorControl(service.simulator.url).merchant(auth_app_id)
    assert record is not None
    token: str = record["current"]["app_auth_token"]
    return token


def _row(out: str, auth_app_id: str) -> str:
    rows = [line for line in out.splitlines() if auth_app_id in line]
    assert len(rows) == 1, out
    return rows[0]


def _client(service_name: str) -> Any:
    return boto3.client(service_name)  # type: ignore[call-overload]  # local_service's environment: moto


def _grant(auth_app_id: str, token: str) -> TokenGrant:
    return TokenGrant(
        auth_app_id=auth_app_id,
        user_id="2088000000007000",
        app_auth_token=token,
        app_refresh_token=token.replace("tok", "ref"),
        expires_in=365 * 86400,
        re_expires_in=372 * 86400,
        received_at=datetime.now(UTC) - timedelta(minutes=1),
    )


def _cipher(service: LocalService) -> TokenCipher:
    return TokenCipher(_client("kms"), service.stack.token_key_id)


def _visible(url: str) -> int:
    attributes = _client("sqs").get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
    )
    return int(attributes["Attributes"]["ApproximateNumberOfMessages"])


def _dead_letter_url(service: LocalService) -> str:
    return service.stack.resources["ParkedGrantsDeadLetterQueue"]


# --- list ----------------------------------------------------------------------------------


def test_list_prints_a_table_and_json_without_tokens(service: LocalService, run: Run) -> None:
    token = _token(service, LISTED)

    table = run("list")
    assert table.code == EXIT_OK, table.err
    row = _row(table.out, LISTED)
    assert "granted" in row
    assert REFRESHED in table.out
    assert "merchant app(s)" in table.out
    assert token not in table.out

    listed = run("list", "--json")
    assert listed.code == EXIT_OK, listed.err
    items = {item["auth_app_id"]: item for item in listed.json()["items"]}
    assert items[LISTED]["status"] == "granted"
    assert items[LISTED]["version"] == 1
    assert "app_auth_token" not in listed.out
    assert token not in listed.out

    revoked_only = run("list", "--status", "revoked", "--json").json()["items"]
    assert all(item["status"] == "revoked" for item in revoked_only)
    assert LISTED not in {item["auth_app_id"] for item in revoked_only}

    # A fresh pair's next refresh is about 90 days away.
    soon = run("list", "--due-within", "1", "--json").json()["items"]
    assert LISTED not in {item["auth_app_id"] for item in soon}
    later = run("list", "--due-within", "400", "--json").json()["items"]
    assert LISTED in {item["auth_app_id"] for item in later}

    first = run("list", "--limit", "1", "--json").json()
    assert first["count"] == 1
    assert first["truncated"] is True


# --- show ----------------------------------------------------------------------------------


def test_show_hides_the_token_unless_revealed_with_a_warning(
    service: LocalService, run: Run
) -> None:
    token = _token(service, LISTED)

    shown = run("show", LISTED)
    assert shown.code == EXIT_OK, shown.err
    assert "granted" in shown.out
    assert "Lifecycle: granted" in shown.out
    assert "token_pair_stored" in shown.out  # the audit history
    assert "next refresh" in shown.out
    assert token not in shown.out + shown.err
    assert "WARNING" not in shown.err

    data = run("show", LISTED, "--json").json()
    assert data["authorization"]["status"] == "granted"
    assert data["authorization"]["has_sealed_pair"] is True
    assert data["lifecycle"]["refresh_due"] is False
    assert [event["event"] for event in data["events"]] == ["token_pair_stored"]
    assert data["events"][0]["detail"]["source"] == "authorization"
    assert "app_auth_token" not in data
    assert token not in json.dumps(data)

    revealed = run("show", LISTED, "--reveal")
    assert revealed.code == EXIT_OK, revealed.err
    assert "WARNING: --reveal prints this merchant's app_auth_token" in revealed.err
    assert token in revealed.out
    assert token not in revealed.err

    revealed_json = run("show", LISTED, "--reveal", "--json")
    assert revealed_json.json()["app_auth_token"] == token
    assert "WARNING" in revealed_json.err

    missing = run("show", UNKNOWN)
    assert missing.code == EXIT_REFUSED
    assert UNKNOWN in missing.err
    assert missing.out == ""
    assert run("show", "not-an-id").code == EXIT_USAGE


# --- refresh -------------------------------------------------------------------------------


def test_refresh_rotates_the_pair_and_bumps_the_version(
    service: LocalService, target: Target, run: Run
) -> None:
    store, _ = target.store()
    before = store.get(REFRESHED)
    assert before is not None
    old_token = _token(service, REFRESHED)

    refreshed = run("refresh", REFRESHED)
    assert refreshed.code == EXIT_OK, refreshed.err
    assert "rotated" in _row(refreshed.out, REFRESHED)

    after = store.get(REFRESHED)
    assert after is not None
    assert after.version == before.version + 1
    assert _token(service, REFRESHED) != old_token  # Alipay issued a new pair
    assert store.events(REFRESHED)[-1].detail["transition"] == "refreshed"

    as_json = run("refresh", REFRESHED, "--json").json()
    assert as_json["outcomes"] == {"rotated": 1}
    assert as_json["merchants"] == [{"auth_app_id": REFRESHED, "outcome": "rotated"}]


def test_refresh_of_many_goes_in_batches_of_100_and_names_the_unknown(
    target: Target, run: Run
) -> None:
    assert REFRESH_CHUNK == 100  # the refresh function's limit per invocation
    ids = [f"20219000000{number:05d}" for number in range(150)]
    calls = target.lambda_client.calls
    seen = len(calls)

    ran = run("refresh", *ids, "--json")
    assert ran.code == EXIT_REFUSED  # none of them exists
    invoked = [event for name, event in calls[seen:] if name == "appauth-local-refresh"]
    assert [len(event["auth_app_ids"]) for event in invoked] == [100, 50]
    assert [i for event in invoked for i in event["auth_app_ids"]] == ids
    assert ran.json()["outcomes"] == {"not_found": len(ids)}
    assert "not found" in ran.err


def test_refresh_refuses_bad_usage_before_invoking(target: Target, run: Run) -> None:
    calls = len(target.lambda_client.calls)
    assert run("refresh").code == EXIT_USAGE
    bad = run("refresh", LISTED, "20x1")
    assert bad.code == EXIT_USAGE
    assert "20x1" in bad.err
    assert run("refresh", LISTED, "--due").code == EXIT_USAGE
    assert len(target.lambda_client.calls) == calls

    due = run("refresh", "--due", "--json")
    assert due.code == EXIT_OK, due.err
    assert due.json()["due"] == 0  # nothing is due for months


# --- revoke --------------------------------------------------------------------------------


def test_revoke_asks_first_then_revokes_with_an_audit_event(target: Target, run: Run) -> None:
    store, _ = target.store()

    declined = run("revoke", REVOKED, stdin="n\n")
    assert declined.code == EXIT_REFUSED
    assert "Revoke merchant app" in declined.err
    assert "not confirmed" in declined.err
    unchanged = store.get(REVOKED)
    assert unchanged is not None
    assert unchanged.status == "granted"

    revoked = run("revoke", REVOKED, stdin="y\n")
    assert revoked.code == EXIT_OK, revoked.err
    stored = store.get(REVOKED)
    assert stored is not None
    assert (stored.status, stored.status_reason) == ("revoked", "operator")
    assert stored.version == unchanged.version + 1
    event = store.events(REVOKED)[-1]
    assert event.event == "authorization_revoked"
    assert event.detail == {"reason": "operator"}
    assert event.actor.startswith("operator:")

    # The token query no longer hands the token out.
    refused = run("show", REVOKED, "--reveal")
    assert refused.code == EXIT_REFUSED
    assert "revoked" in refused.err

    again = run("revoke", REVOKED, "--yes", "--json")
    assert again.code == EXIT_OK
    assert again.json()["changed"] is False
    latest = store.get(REVOKED)
    assert latest is not None
    assert latest.version == stored.version

    assert run("revoke", UNKNOWN, "--yes").code == EXIT_REFUSED
    assert store.get(UNKNOWN) is None  # nothing was created for it


# --- describe ------------------------------------------------------------------------------


def test_describe_asks_alipay_through_the_token_query(target: Target, run: Run) -> None:
    described = run("describe", LISTED)
    assert described.code == EXIT_OK, described.err
    assert "valid" in _row(described.out, "alipay_status")

    data = run("describe", LISTED, "--json").json()
    assert data["ok"] is True
    assert data["alipay_status"] == "valid"
    assert data["auth_methods"]
    store, _ = target.store()
    stored = store.get(LISTED)
    assert stored is not None
    assert stored.alipay_status == "valid"

    missing = run("describe", UNKNOWN, "--json")
    assert missing.code == EXIT_REFUSED
    assert missing.json()["error"]["code"] == "not_found"


# --- secrets put ---------------------------------------------------------------------------


def _key_files(folder: Path) -> tuple[Path, Path]:
    app, alipay = folder / "app_private_key.pem", folder / "alipay_public_key.pem"
    app.write_bytes(private_pkcs8_pem(generate_private_key()))
    alipay.write_bytes(public_pem(generate_private_key()))
    return app, alipay


def _secrets_put(run: Run, app_key: Path, alipay_key: Path, prefix: str, *options: str) -> Ran:
    """``appauth secrets put`` of these two key files under ``prefix``."""
    return run(
        "secrets", "put", "--app-private-key", str(app_key), "--alipay-public-key",
        str(alipay_key), "--prefix", prefix, *options,
    )  # fmt: skip


def _under(prefix: str) -> list[dict[str, Any]]:
    parameters: list[dict[str, Any]] = _client("ssm").get_parameters_by_path(
        Path=prefix, Recursive=True, WithDecryption=True
    )["Parameters"]
    return parameters


def test_secrets_put_writes_secure_strings_without_echoing_keys(tmp_path: Path, run: Run) -> None:
    app, alipay = _key_files(tmp_path)
    prefix = "/appauth/optest"

    written = _secrets_put(run, app, alipay, prefix, "--new-state-secret")
    assert written.code == EXIT_OK, written.err
    parameters = {p["Name"]: p for p in _under(prefix)}
    assert set(parameters) == {
        f"{prefix}/app-private-key",
        f"{prefix}/alipay-public-key",
        f"{prefix}/state-secret",
    }
    assert {p["Type"] for p in parameters.values()} == {"SecureString"}
    assert parameters[f"{prefix}/app-private-key"]["Value"] == app.read_text().strip()
    assert parameters[f"{prefix}/alipay-public-key"]["Value"] == alipay.read_text().strip()
    assert len(parameters[f"{prefix}/state-secret"]["Value"]) >= 32
    # Names only: no line of either key, nor the state secret.
    key_lines = [
        line for line in (app.read_text() + alipay.read_text()).splitlines() if "-----" not in line
    ]
    printed = written.out + written.err
    assert f"{prefix}/app-private-key" in written.out
    assert not any(line in printed for line in key_lines)
    assert parameters[f"{prefix}/state-secret"]["Value"] not in printed

    # Rotating the keys keeps the state secret (it exists now).
    rotated = tmp_path / "rotated"
    rotated.mkdir()
    rotated_app, rotated_alipay = _key_files(rotated)
    again = _secrets_put(run, rotated_app, rotated_alipay, prefix, "--json")
    assert again.code == EXIT_OK, again.err
    assert [entry["name"] for entry in again.json()["written"]] == [
        f"{prefix}/app-private-key",
        f"{prefix}/alipay-public-key",
    ]
    after = {p["Name"]: p["Value"] for p in _under(prefix)}
    assert after[f"{prefix}/state-secret"] == parameters[f"{prefix}/state-secret"]["Value"]
    assert after[f"{prefix}/app-private-key"] == rotated_app.read_text().strip()


def test_secrets_put_refuses_a_malformed_key_naming_the_option_and_writes_nothing(
    tmp_path: Path, run: Run
) -> None:
    app, alipay = _key_files(tmp_path)
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    prefix = "/appauth/opbad"

    refused = _secrets_put(run, bad, alipay, prefix, "--new-state-secret")
    assert refused.code == EXIT_USAGE
    assert "--app-private-key" in refused.err
    assert "bm90IGEga2V5" not in refused.err

    # A good private key with a bad public key: the private key is not written either.
    refused = _secrets_put(run, app, bad, prefix, "--new-state-secret")
    assert refused.code == EXIT_USAGE
    assert "--alipay-public-key" in refused.err

    # A first write without a state secret is refused too (the service needs one).
    refused = _secrets_put(run, app, alipay, prefix)
    assert refused.code == EXIT_USAGE
    assert "--new-state-secret" in refused.err
    assert _under(prefix) == []


# --- parked --------------------------------------------------------------------------------


def test_parked_counts_lists_metadata_without_tokens_and_redrives(
    service: LocalService, run: Run
) -> None:
    sqs, cipher = _client("sqs"), _cipher(service)
    parked_url, dead_url = service.stack.parked_queue_url, _dead_letter_url(service)
    parked_before, dead_before = _visible(parked_url), _visible(dead_url)
    tokens = {app: f"202612tok{app}{'x' * 12}" for app in (PARKED, DEAD, DEAD_PLAIN)}
    park_grants(
        sqs,
        parked_url,
        [_grant(PARKED, tokens[PARKED])],
        cipher,
        source="authorization",
        reason="test",
    )
    dead = _grant(DEAD, tokens[DEAD])
    sealed_body = parked_message(
        dead, cipher.seal(DEAD, dead.secrets()), source="refresh", reason="ddb"
    )
    plain_body = parked_message(
        _grant(DEAD_PLAIN, tokens[DEAD_PLAIN]), None, source="notification", reason="kms"
    )
    for body in (sealed_body, plain_body):
        sqs.send_message(QueueUrl=dead_url, MessageBody=json.dumps(body))

    listed = run("parked", "--json")
    assert listed.code == EXIT_OK, listed.err
    data = listed.json()
    assert data["parked"]["visible"] == parked_before + 1
    assert data["dead_letter"]["visible"] == dead_before + 2
    messages = {m["auth_app_id"]: m for m in data["messages"]}
    assert messages[DEAD]["pair"] == "sealed"
    assert messages[DEAD]["source"] == "refresh"
    assert messages[DEAD_PLAIN]["pair"] == "plaintext"
    table = run("parked")
    assert table.code == EXIT_OK
    assert DEAD_PLAIN in table.out
    for token in tokens.values():
        assert token not in listed.out + table.out
        assert token.replace("tok", "ref") not in listed.out + table.out
    assert _visible(dead_url) == dead_before + 2  # listing hid nothing

    redriven = run("parked", "--redrive", "--json")
    assert redriven.code == EXIT_OK, redriven.err
    moved = redriven.json()
    assert moved["redriven"] == dead_before + 2
    assert moved["after"]["dead_letter"]["visible"] == 0
    assert _visible(dead_url) == 0
    assert _visible(parked_url) == parked_before + 1 + dead_before + 2


# --- recover -------------------------------------------------------------------------------


def _rescue_line(service: LocalService, auth_app_id: str, token: str) -> tuple[str, dict[str, Any]]:
    """The log line GrantSink writes when DynamoDB and the queue both refused a pair."""
    grant = _grant(auth_app_id, token)
    body = parked_message(
        grant,
        _cipher(service).seal(auth_app_id, grant.secrets()),
        source="refresh",
        reason="ddb_unavailable",
    )
    record = {
        "level": "CRITICAL",
        "message": "Token pair kept in this log line as a last resort: re-import it",
        "auth_app_id": auth_app_id,
        RESCUE_FIELD: body,
    }
    return json.dumps(record), body


def test_recover_reimports_a_rescued_pair_from_log_lines(
    service: LocalService, target: Target, run: Run, tmp_path: Path
) -> None:
    token = f"202612tok{RESCUED}recovered"
    line, _body = _rescue_line(service, RESCUED, token)
    logs = tmp_path / "refresh.log"
    logs.write_text(
        "START RequestId: 0f9c Version: $LATEST\n"
        + json.dumps({"level": "INFO", "message": "Refresh run"})
        + "\n2026-12-01T10:00:00.000000+00:00 2026/12/01/[$LATEST]abc "  # `aws logs tail` prefix
        + line
        + "\n"
    )
    store, _ = target.store()
    assert store.get(RESCUED) is None

    recovered = run("recover", "--from-logs", str(logs), "--json")
    assert recovered.code == EXIT_OK, recovered.err
    assert recovered.json()["results"] == [
        {"line": 3, "auth_app_id": RESCUED, "stored": True, "version": 1, "error": None}
    ]
    stored = store.get(RESCUED)
    assert stored is not None
    assert (stored.status, stored.version) == ("granted", 1)
    assert store.events(RESCUED)[-1].detail["source"] == "refresh+rescued+parked"
    assert token not in recovered.out + recovered.err
    # The pair itself came back: the token query hands it out.
    revealed = run("show", RESCUED, "--reveal", "--json")
    assert revealed.json()["app_auth_token"] == token

    again = run("recover", "--from-logs", str(logs))
    assert again.code == EXIT_OK, again.err
    assert "not stored" in _row(again.out, RESCUED)
    latest = store.get(RESCUED)
    assert latest is not None
    assert latest.version == 1


def test_recover_refuses_files_without_rescued_pairs_and_damaged_lines(
    service: LocalService, run: Run, tmp_path: Path
) -> None:
    nothing = tmp_path / "nothing.log"
    nothing.write_text('{"level": "INFO", "message": "Refresh run"}\n')
    empty = run("recover", "--from-logs", str(nothing))
    assert empty.code == EXIT_REFUSED
    assert RESCUE_FIELD in empty.err

    _line, body = _rescue_line(service, "2021000000007008", "202612tokdamaged")
    sealed = body["grant"]["sealed"]
    body["grant"]["sealed"] = sealed_to_json(
        _cipher(service).seal("2021000000007009", {"app_auth_token": "a", "app_refresh_token": "b"})
    )  # another merchant's sealed pair: GCM's associated data refuses it
    assert body["grant"]["sealed"] != sealed
    damaged = tmp_path / "damaged.log"
    damaged.write_text(json.dumps({RESCUE_FIELD: body}) + "\n")
    ran = run("recover", "--from-logs", str(damaged), "--json")
    assert ran.code == EXIT_REFUSED
    assert ran.json()["results"][0]["error"]
    assert run("recover", "--from-logs", str(tmp_path / "missing.log")).code == EXIT_USAGE


# --- target resolution ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_stack_outputs_flags_and_env_resolve_the_target(
    service: LocalService, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("APPAUTH_STACK", "APPAUTH_TOKENS_TABLE", "APPAUTH_PARKED_QUEUE_URL"):
        monkeypatch.delenv(name, raising=False)
    stack = service.stack
    template = {
        "Parameters": {"SsmPrefix": {"Type": "String", "Default": "/appauth/opstack"}},
        "Resources": {"Placeholder": {"Type": "AWS::SQS::Queue"}},
        "Outputs": {
            "TokensTableName": {"Value": stack.tokens_table},
            "ParkedGrantsQueueUrl": {"Value": stack.parked_queue_url},
            "TokenQueryFunctionName": {"Value": "appauth-local-token_query"},
        },
    }
    _client("cloudformation").create_stack(
        StackName="appauth-optest", TemplateBody=json.dumps(template)
    )

    # boto3 as the CLI builds it (AWS_ENDPOINT_URL: moto), names from the stack's outputs.
    shown = run("show", LISTED, "--stack", "appauth-optest", "--json", against=None)
    assert shown.code == EXIT_OK, shown.err
    assert shown.json()["authorization"]["auth_app_id"] == LISTED
    parked = run("parked", "--stack", "appauth-optest", "--json", against=None)
    assert parked.code == EXIT_OK, parked.err
    assert parked.json()["dead_letter"]["url"] == _dead_letter_url(service)

    nothing = run("show", LISTED, against=None)
    assert nothing.code == EXIT_USAGE
    assert "--stack NAME" in nothing.err
    assert "APPAUTH_TOKENS_TABLE" in nothing.err
    no_stack = run("show", LISTED, "--stack", "appauth-missing", against=None)
    assert no_stack.code == EXIT_USAGE
    assert "appauth-missing" in no_stack.err
    no_output = run("refresh", LISTED, "--stack", "appauth-optest", against=None)
    assert no_output.code == EXIT_USAGE
    assert "RefreshFunctionName" in no_output.err

    monkeypatch.setenv("APPAUTH_TOKENS_TABLE", stack.tokens_table)
    assert run("show", LISTED, "--json", against=None).code == EXIT_OK
    flagged = run("show", LISTED, "--tokens-table", "no-such-table", against=None)
    assert flagged.code == EXIT_USAGE
    assert "ResourceNotFoundException" in flagged.err

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")
    unreachable = run("show", LISTED, against=None)
    assert unreachable.code == EXIT_AWS, unreachable.err
