"""``appauth``: the developer's command line (keys, one signed call, the simulator, the demo,
the local stack) and the operator's (:mod:`appauth_dev.operator`); ``appauth --version``.

Developer-only: this package never ships in the Lambda layer.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import requests
from urllib3.exceptions import ProtocolError

from appauth.alipay.client import AlipayClient
from appauth.alipay.credentials import AppCredentials
from appauth.alipay.endpoints import ENVIRONMENTS, Endpoints
from appauth.alipay.errors import (
    AlipayError,
    ConfigError,
    OutcomeUnknownError,
    SignatureError,
    TransportError,
    UnexpectedResponseError,
)
from appauth_dev import operator
from appauth_dev.demo import run_demo
from appauth_dev.keygen import DEFAULT_KEY_DIR, write_key_pair
from appauth_dev.local_cmd import add_arguments as add_local_arguments
from appauth_dev.local_cmd import run as run_local
from appauth_dev.simulator.cli import add_arguments as add_simulator_arguments
from appauth_dev.simulator.cli import run as run_simulator

# Exit codes, so scripts can tell failures apart.
EXIT_OK = 0
EXIT_ALIPAY_ERROR = 1
EXIT_USAGE = 2
EXIT_SIGNATURE = 3
EXIT_TRANSPORT = 4
EXIT_OUTCOME_UNKNOWN = 5
DISTRIBUTION = "alipay-appauth"  # pyproject.toml's project name


def _read(path: str, what: str) -> bytes:
    """Key material as bytes: the layer's loaders decide what it is (a binary file is just bad input)."""
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}", parameter=what) from None


def package_version() -> str:
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a checkout that was never installed
        return f"unknown ({DISTRIBUTION} is not installed: pip install -e .)"


def _env(name: str) -> str | None:
    return os.environ.get(f"APPAUTH_{name}") or None


# --- keygen --------------------------------------------------------------------------------


def _keygen(args: argparse.Namespace) -> int:
    written = write_key_pair(Path(args.out), force=args.force)
    for path, purpose in written:
        print(f"{path}  {purpose}")
    return EXIT_OK


# --- api -----------------------------------------------------------------------------------


def _credentials(args: argparse.Namespace) -> AppCredentials:
    app_id = args.app_id or _env("APP_ID")
    private_key = args.app_private_key or _env("APP_PRIVATE_KEY_FILE")
    if not app_id:
        raise ConfigError("pass --app-id or set APPAUTH_APP_ID", parameter="app_id")
    if not private_key:
        raise ConfigError("pass --app-private-key FILE", parameter="app private key")
    encrypt_key = args.encrypt_key or _env("ENCRYPT_KEY")
    certs = (args.app_cert, args.alipay_cert, args.alipay_root_cert)
    if any(certs):
        if not all(certs):
            raise ConfigError(
                "certificate mode needs --app-cert, --alipay-cert and --alipay-root-cert"
            )
        return AppCredentials.from_certificates(
            app_id,
            _read(private_key, "app private key"),
            _read(args.app_cert, "app cert"),
            _read(args.alipay_cert, "alipay cert"),
            _read(args.alipay_root_cert, "alipay root cert"),
            encrypt_key=encrypt_key,
        )
    public_key = args.alipay_public_key or _env("ALIPAY_PUBLIC_KEY_FILE")
    if not public_key:
        raise ConfigError(
            "pass --alipay-public-key FILE (key mode) or the three certificates (cert mode)",
            parameter="alipay public key",
        )
    return AppCredentials.from_keys(
        app_id,
        _read(private_key, "app private key"),
        _read(public_key, "alipay public key"),
        encrypt_key=encrypt_key,
    )


def _json_argument(text: str | None, flag: str) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"is not valid JSON ({error.msg} at column {error.colno})", parameter=flag
        ) from None
    if not isinstance(value, dict):
        raise ConfigError("must be a JSON object", parameter=flag)
    return value


# Flags that belong to one protocol only: given to the other, they would be silently ignored.
# (attribute, flag, what to do instead)
_V2_ONLY = (
    ("biz_content", "--biz-content", "v3 parameters go in --body or in the PATH's query"),
    ("gateway", "--gateway", "--v3 calls go to the v3 base URL: pass --endpoint URL instead"),
    ("encrypt", "--encrypt", "AES encryption (encrypt_type=AES) applies to v2 gateway calls only"),
)
_V3_ONLY = (
    ("body", "--body", "v2 business parameters go in --biz-content; add --v3 for a v3 call"),
    ("endpoint", "--endpoint", "v2 calls go to the gateway: pass --gateway URL, or add --v3"),
)


def _endpoints(args: argparse.Namespace) -> Endpoints:
    """Where the call goes. Refuses, rather than ignores, a flag the protocol does not use, and
    never falls back to a preset (production) host while the user points at another one."""
    for attribute, flag, instead in _V2_ONLY if args.v3 else _V3_ONLY:
        if getattr(args, attribute):
            raise ConfigError(
                f"is for {'v2' if args.v3 else 'v3'} calls only; {instead}", parameter=flag
            )
    overrides = [flag for flag in ("--gateway", "--endpoint") if getattr(args, flag[2:])]
    if args.environment is not None and overrides:
        raise ConfigError(
            f"{overrides[0]} and --environment name two different hosts: give one of them",
            parameter=overrides[0],
        )
    if args.environment is not None:
        # An explicit --environment wins over APPAUTH_GATEWAY / APPAUTH_ENDPOINT.
        return Endpoints.for_environment(args.environment)
    gateway = args.gateway or _env("GATEWAY")
    endpoint = args.endpoint or _env("ENDPOINT")
    if args.v3 and endpoint is None and gateway is not None:
        raise ConfigError(
            f"APPAUTH_GATEWAY points at {gateway}, but --v3 calls go to the v3 base URL: pass "
            "--endpoint URL (or set APPAUTH_ENDPOINT), or --environment to call Alipay",
            parameter="--endpoint",
        )
    if not args.v3 and gateway is None and endpoint is not None:
        raise ConfigError(
            f"APPAUTH_ENDPOINT points at {endpoint}, but v2 calls go to the gateway: pass "
            "--gateway URL (or set APPAUTH_GATEWAY), --v3, or --environment to call Alipay",
            parameter="--gateway",
        )
    return Endpoints.for_environment("production", gateway_url=gateway, v3_base_url=endpoint)


class _WireSession(requests.Session):
    """Remembers how the last request ended, for the CLI's one-line messages: Alipay's trace id
    (v3 ``alipay-trace-id``; the v2 gateway's ``trace_id`` header, which the layer does not
    surface) or, when no answer came, why."""

    def __init__(self) -> None:
        super().__init__()
        self.attempts = 0
        self.trace_id: str | None = None
        self.no_answer: str | None = None

    def request(
        self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any
    ) -> requests.Response:
        self.attempts += 1
        self.trace_id = self.no_answer = None
        host = urlsplit(url if isinstance(url, str) else url.decode()).netloc
        try:
            response = super().request(method, url, *args, **kwargs)
        except requests.ReadTimeout:
            timeout = kwargs.get("timeout")
            read = timeout[1] if isinstance(timeout, tuple) else timeout
            self.no_answer = f"no answer from {host} within {read}s"
            raise
        except requests.ConnectionError as error:
            reason = error.args[0] if error.args else None
            if isinstance(reason, ProtocolError):
                # Sent, then the connection closed with no answer: what a timed-out request
                # looks like from the client (a proxy or Alipay giving up on it).
                self.no_answer = f"{host} closed the connection without answering"
            raise
        self.trace_id = response.headers.get("alipay-trace-id") or response.headers.get("trace_id")
        return response


def _explained(error: AlipayError | TransportError, wire: _WireSession, what: str) -> Exception:
    """The layer's error with what only the CLI's session saw: a v2 trace id, or a timeout."""
    if isinstance(error, AlipayError):
        if error.trace_id or not wire.trace_id:
            return error
        return AlipayError(
            error.code,
            error.msg,
            sub_code=error.sub_code,
            sub_msg=error.sub_msg,
            trace_id=wire.trace_id,
            http_status=error.http_status,
            signed=error.signed,
        )
    if wire.no_answer is None:
        return error
    message = f"{what}: timed out: {wire.no_answer}"
    if isinstance(error, OutcomeUnknownError):
        return OutcomeUnknownError(
            f"{message}; the request may have reached Alipay, so it was not resent",
            status=error.status,
        )
    tries = f" ({wire.attempts} tries)" if wire.attempts > 1 else ""
    return TransportError(message + tries, status=error.status)


def _api(args: argparse.Namespace) -> int:
    endpoints = _endpoints(args)
    credentials = _credentials(args)
    wire = _WireSession()
    client = AlipayClient(credentials, endpoints, encrypt=args.encrypt, session=wire)
    if args.v3:
        if len(args.target) != 2:
            raise ConfigError("usage: appauth api --v3 HTTP_METHOD PATH [--body JSON]")
        http_method, path = args.target
        query: dict[str, str] = {}
        if "?" in path:
            path, _, raw_query = path.partition("?")
            query = dict(parse_qsl(raw_query, keep_blank_values=True))
        body = _json_argument(args.body, "--body")
        try:
            response = client.request(
                http_method,
                path,
                query=query or None,
                body=body,
                app_auth_token=args.app_auth_token,
            )
        except (AlipayError, TransportError) as error:
            raise _explained(error, wire, path) from None
        result: dict[str, Any] = response.data
    else:
        if len(args.target) != 1:
            raise ConfigError("usage: appauth api METHOD [--biz-content JSON]")
        biz_content = _json_argument(args.biz_content, "--biz-content")
        try:
            result = client.call(args.target[0], biz_content, app_auth_token=args.app_auth_token)
        except (AlipayError, TransportError) as error:
            raise _explained(error, wire, args.target[0]) from None
    print(json.dumps(result, ensure_ascii=False, indent=2))
    return EXIT_OK


# --- wiring --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="appauth", description="Alipay third-party app authorization: developer tools."
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log each Alipay call and retry"
    )
    parser.add_argument("--version", action="version", version=f"appauth {package_version()}")
    commands = parser.add_subparsers(dest="command", required=True)

    keygen = commands.add_parser(
        "keygen", help="generate an RSA-2048 app key pair for the Alipay console"
    )
    keygen.add_argument(
        "--out",
        default=DEFAULT_KEY_DIR,
        help=f"directory to write the key files into (default ./{DEFAULT_KEY_DIR}, git-ignored)",
    )
    keygen.add_argument("--force", action="store_true", help="overwrite existing key files")
    keygen.set_defaults(handler=_keygen)

    api = commands.add_parser(
        "api",
        help="make one signed call and print the verified response",
        description="v2: appauth api METHOD [--biz-content JSON]; v3: appauth api --v3 HTTP_METHOD PATH [--body JSON]",
    )
    api.add_argument("target", nargs="+", help="METHOD (v2) or HTTP_METHOD PATH (v3)")
    api.add_argument("--v3", action="store_true", help="use the v3 API instead of the v2 gateway")
    api.add_argument("--biz-content", help="v2 business parameters, a JSON object (not with --v3)")
    api.add_argument("--body", help="v3 request body, a JSON object (only with --v3)")
    api.add_argument("--app-auth-token", help="call on behalf of a merchant")
    api.add_argument("--app-id", help="the ISV app id (or APPAUTH_APP_ID)")
    api.add_argument(
        "--app-private-key", metavar="FILE", help="app private key: PEM or bare base64"
    )
    api.add_argument("--alipay-public-key", metavar="FILE", help="Alipay public key (key mode)")
    api.add_argument("--app-cert", metavar="FILE", help="app public-key certificate (cert mode)")
    api.add_argument(
        "--alipay-cert", metavar="FILE", help="Alipay public-key certificate (cert mode)"
    )
    api.add_argument(
        "--alipay-root-cert", metavar="FILE", help="Alipay root certificate (cert mode)"
    )
    api.add_argument("--encrypt-key", help="AES key (base64) from the console, for --encrypt")
    api.add_argument(
        "--encrypt", action="store_true", help="AES-encrypt biz_content (v2, encrypt_type=AES)"
    )
    api.add_argument(
        "--environment",
        choices=sorted(ENVIRONMENTS),
        help="a real Alipay (default production); not with --gateway/--endpoint",
    )
    api.add_argument(
        "--gateway", metavar="URL", help="v2 gateway URL, e.g. http://127.0.0.1:8700/gateway.do"
    )
    api.add_argument(
        "--endpoint", metavar="URL", help="v3 base URL (with --v3), e.g. http://127.0.0.1:8700"
    )
    api.set_defaults(handler=_api)

    simulator = commands.add_parser(
        "simulator", help="run the Alipay simulator (HTTP, real signatures)"
    )
    add_simulator_arguments(simulator)
    simulator.set_defaults(handler=run_simulator)

    demo = commands.add_parser("demo", help="run everything the product can do, locally")
    demo.set_defaults(handler=_demo)

    local = commands.add_parser("local", help="keep the whole service running, for a browser")
    add_local_arguments(local)
    local.set_defaults(handler=run_local)
    # list, show, refresh, revoke, describe, secrets, parked, authorize-url, recover
    operator.register(commands)
    return parser


def _demo(args: argparse.Namespace) -> int:
    return run_demo()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Errors are reported once, below; the layer's retry chatter only with --verbose.
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.ERROR,
        format="appauth: %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        code: int = args.handler(args)
    except ConfigError as error:
        print(f"appauth: configuration error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except AlipayError as error:
        print(f"appauth: {error}", file=sys.stderr)
        return EXIT_ALIPAY_ERROR
    except (SignatureError, UnexpectedResponseError) as error:
        print(f"appauth: rejected the response: {error}", file=sys.stderr)
        return EXIT_SIGNATURE
    except OutcomeUnknownError as error:
        print(f"appauth: outcome unknown: {error}", file=sys.stderr)
        return EXIT_OUTCOME_UNKNOWN
    except TransportError as error:
        print(f"appauth: transport error: {error}", file=sys.stderr)
        return EXIT_TRANSPORT
    except KeyboardInterrupt:  # Ctrl-C before a command's own handling took over
        print("appauth: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
