"""``make demo`` (``appauth demo``): the whole lifecycle through the real handlers, every step
printed and checked, a final table, and a failure (or Ctrl-C) reported without a traceback.

The successful run is in-process (``run_demo``: faster, and the environment, modules and clocks
it changes are put back); the failure and Ctrl-C run the real command in a subprocess.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from appauth_dev.demo import FAIL_AT_ENV, STEPS, run_demo
from tests.e2e.cli_helpers import ROOT, command_env, interrupted_on_exit

COMMAND = [sys.executable, "-m", "appauth_dev.cli", "demo"]
TIMEOUT = 60  # the demo's own work takes a few seconds; generous for a slow CI machine
MASKED_TOKEN = re.compile(r"\d{4}…[0-9A-Za-z]{3} \(43\)")
# Tokens are 43 characters, codes 32, states longer; the longest legitimate run is a 16-digit id.
SECRET_RUN = re.compile(r"[0-9A-Za-z]{32,}")

# What each step must show (beyond its numbered title).
STEP_LINES = {
    "start": [r"GET /alipay/authorize\?merchant_ref=shop-42 → 200", r"batch=1.* → 200 \(batch\)"],
    "consent": [r"302 to the front's /alipay/callback", r"batch page \(TINYAPP,WEBAPP\)"],
    "callback": [
        r"GET /alipay/callback → 200 granted auth_app_id=\d{16}",
        r"GET /alipay/callback \(batch\) → 200 granted \d{16}, \d{16}",
        r"same redirect again → 200 same result",
        r"state reused → 409 state_replayed; forged state → 400 invalid_state",
        r"raw DynamoDB item → no plaintext token",
    ],
    "token-query": [
        r"TokenClient\.get → granted version=1 app_auth_token=\d{4}…",
        r"TokenClient\.describe → Alipay says valid",
    ],
    "merchant-call": [r'MerchantClient\.call\("alipay\.open\.mini\.baseinfo\.query"\) → 10000'],
    "clock": [r"the simulator's clock and the service's \+91 days"],
    "rotation": [
        r'the schedule\'s event \{"due": true\} → due=3 rotated=3',
        r"each merchant now at version 2",
    ],
    "grace": [
        r"old app_auth_token still works",
        r"old app_auth_token → refused by Alipay \(20001",
        r"MerchantClient .*report_invalid → stale, retried once with version 2 → 10000",
    ],
    "lost-answer": [
        r"→ outcome_unknown: marked for reconciliation; the token query still serves version 2",
        r"the next scheduled run .* → due=1 reconciled=1 recovered=1",
        r"Alipay rotated once for the three calls \(rotated, replayed_same, replayed_same\)",
    ],
    "cancellation": [
        r"the simulator POSTs a signed alipay\.open\.auth\.appauth\.cancelled to /alipay/notify → 200 success",
        r"token query get_token → revoked",
        r"MerchantClient\.call → RevokedError",
    ],
    "table": [r"TokenClient\.list"],
}
TABLE_HEADER = re.compile(r"^ +merchant +status +version +next refresh \(UTC\) +last event$", re.M)
TABLE_ROW = re.compile(
    r"^ +(?P<app>\d{16}) +(?P<status>granted|revoked) +(?P<version>\d+) +"
    r"(?P<next>\d{4}-\d\d-\d\d \d\d:\d\d|-) +(?P<event>\w+)$",
    re.M,
)


def test_every_lifecycle_step_is_shown_checked_and_summed_up_in_a_table(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = run_demo()
    out, err = capsys.readouterr()

    assert (code, err) == (0, ""), err
    lines = out.splitlines()
    assert lines[-1] == "demo OK"
    for number, (key, title) in enumerate(STEPS.items(), start=1):
        step = re.search(rf"^{number:>2}\. {re.escape(title)} ", out, re.M)
        assert step, f"step {number} ({title}) is not printed"
        following = re.split(rf"^{number + 1:>2}\. ", out[step.start() :], flags=re.M)[0]
        for expected in STEP_LINES[key]:
            assert re.search(expected, following), f"step {title}: no {expected!r} in\n{following}"

    assert TABLE_HEADER.search(out), out
    rows = {m["app"]: m for m in TABLE_ROW.finditer(out)}
    assert len(rows) == 3, out
    assert sorted(m["status"] for m in rows.values()) == ["granted", "granted", "revoked"]
    revoked = next(m for m in rows.values() if m["status"] == "revoked")
    assert (revoked["next"], revoked["event"]) == ("-", "authorization_revoked")
    assert sorted(int(m["version"]) for m in rows.values() if m["status"] == "granted") == [2, 3]
    assert f"all {len(STEPS)} steps passed" in out
    assert MASKED_TOKEN.search(out)
    assert not SECRET_RUN.search(out), "a token, code or state was printed"


def test_a_failing_step_exits_non_zero_naming_the_step() -> None:
    """Every Alipay call fails from the merchant call on (the simulator's error fault)."""
    result = subprocess.run(  # noqa: S603 - our own interpreter and module
        COMMAND,
        capture_output=True,
        text=True,
        env=command_env(**{FAIL_AT_ENV: "merchant-call"}),
        timeout=TIMEOUT,
        check=False,
        cwd=ROOT,
    )

    assert result.returncode == 1
    assert "demo OK" not in result.stdout
    assert " 4. token query" in result.stdout  # the steps before it passed
    assert result.stderr.startswith("demo FAILED at step 5 (merchant call): AlipayError"), (
        result.stderr
    )
    assert "Traceback" not in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_a_failure_in_process_names_the_step_too(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_demo(fail_at="rotation") == 1
    out, err = capsys.readouterr()
    assert err.startswith("demo FAILED at step 7 (rotation): scheduled run: due=3 rotated=0"), err
    assert "demo OK" not in out


def test_an_unknown_step_to_fail_at_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_demo(fail_at="nope") == 2
    assert FAIL_AT_ENV in capsys.readouterr().err


def test_ctrl_c_stops_everything_without_a_traceback() -> None:
    with interrupted_on_exit(COMMAND, ready=r"^ 1\. start page", timeout=TIMEOUT) as run:
        pass  # Ctrl-C once the first step is under way

    assert run.code == 130, run.stderr
    assert "Traceback" not in run.stderr
    assert "demo interrupted: everything it started is stopped" in run.stderr
    assert "demo OK" not in run.stdout
