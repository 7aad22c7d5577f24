"""Each handler imports only what its own path needs (cold starts; README "Performance").

Checked in a fresh interpreter, the way Lambda imports a handler: what a module pulls in at
import time is paid by every cold start, whether or not the invocation uses it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PATHS = ["layers/signing", "functions/callback", "functions/refresh", "functions/token_query"]
HEAVY = ("aws_xray_sdk", "requests", "cryptography.x509", "appauth.alipay.client")


def _imported_after(statement: str, *, tracing: str | None = None) -> set[str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("POWERTOOLS_", "AWS_"))
    }
    env["PYTHONPATH"] = os.pathsep.join(str(ROOT / path) for path in PATHS)
    env["AWS_DEFAULT_REGION"] = "us-east-1"
    if tracing is not None:
        env["POWERTOOLS_TRACE_DISABLED"] = tracing
    script = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run(  # noqa: S603 (our own interpreter and script)
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def test_the_token_query_imports_neither_the_openapi_client_nor_xray_nor_x509() -> None:
    modules = _imported_after("import token_query_app")
    assert [name for name in HEAVY if name in modules] == []
    assert "appauth.alipay.credentials" not in modules


def test_the_refresh_schedule_path_does_not_import_powertools_batch_or_xray() -> None:
    modules = _imported_after("import refresh_app")
    assert "aws_lambda_powertools.utilities.batch" not in modules
    assert "aws_xray_sdk" not in modules
    # Key mode never parses a certificate.
    assert "cryptography.x509" not in modules


def test_the_callback_does_not_import_xray_or_x509() -> None:
    modules = _imported_after("import callback_app")
    assert "aws_xray_sdk" not in modules
    assert "cryptography.x509" not in modules


@pytest.mark.parametrize("handler", ["token_query_app", "callback_app", "refresh_app"])
def test_the_tracing_parameter_alone_decides_whether_the_xray_sdk_is_loaded(handler: str) -> None:
    # template.yaml sets POWERTOOLS_TRACE_DISABLED from the Tracing parameter.
    assert "aws_xray_sdk.core" in _imported_after(f"import {handler}", tracing="false")
    assert "aws_xray_sdk" not in _imported_after(f"import {handler}", tracing="true")
