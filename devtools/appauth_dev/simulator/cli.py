"""``appauth simulator``: run the Alipay simulator in the foreground until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from appauth.alipay.errors import ConfigError

from .config import DEFAULT_GRACE_SECONDS, SimulatorConfig
from .server import start_simulator


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, default=0, help="port (default 0: any free port)")
    parser.add_argument("--app-id", required=True, help="the ISV app id the simulator accepts")
    parser.add_argument(
        "--app-public-key",
        type=Path,
        required=True,
        metavar="FILE",
        help="the app public key the simulator verifies callers with (PEM or bare base64; "
        "in cert mode the app cert will do)",
    )
    parser.add_argument(
        "--alipay-private-key",
        type=Path,
        required=True,
        metavar="FILE",
        help="the key the simulator signs with",
    )
    parser.add_argument(
        "--alipay-cert",
        type=Path,
        metavar="FILE",
        help="Alipay public-key cert (turns on cert mode)",
    )
    parser.add_argument(
        "--app-cert", type=Path, metavar="FILE", help="the app public-key cert (cert mode)"
    )
    parser.add_argument(
        "--alipay-root-cert",
        type=Path,
        metavar="FILE",
        help="Alipay root bundle; requests must name its SN (cert mode)",
    )
    parser.add_argument("--encrypt-key", help="base64 AES key for encrypt_type=AES")
    parser.add_argument("--redirect-uri", help="the only redirect_uri the consent page accepts")
    parser.add_argument(
        "--grace-seconds",
        type=int,
        default=DEFAULT_GRACE_SECONDS,
        help=f"how long a superseded token pair keeps working (default {DEFAULT_GRACE_SECONDS})",
    )
    parser.add_argument(
        "--seed", type=int, help="seed for ids, tokens and faults (deterministic runs)"
    )


def _read(path: Path, option: str) -> bytes:
    """The file's bytes (the layer's loaders judge the content, so a binary file is a
    ConfigError, not a crash); an unreadable file is a ConfigError naming the option."""
    try:
        return path.read_bytes()
    except OSError as error:
        raise ConfigError(
            f"cannot read {path}: {error.strerror or type(error).__name__}", parameter=option
        ) from None


def _read_optional(path: Path | None, option: str) -> bytes | None:
    return None if path is None else _read(path, option)


def build_config(args: argparse.Namespace) -> SimulatorConfig:
    if (args.alipay_cert is None) != (args.app_cert is None):
        raise ConfigError(
            "cert mode needs both --alipay-cert and --app-cert", parameter="alipay cert"
        )
    return SimulatorConfig.from_material(
        args.app_id,
        _read_optional(args.app_public_key, "--app-public-key"),
        _read(args.alipay_private_key, "--alipay-private-key"),
        alipay_cert=_read_optional(args.alipay_cert, "--alipay-cert"),
        app_cert=_read_optional(args.app_cert, "--app-cert"),
        alipay_root_cert=_read_optional(args.alipay_root_cert, "--alipay-root-cert"),
        encrypt_key=args.encrypt_key,
        redirect_uri=args.redirect_uri,
        grace_seconds=args.grace_seconds,
        seed=args.seed,
    )


def run(args: argparse.Namespace) -> int:
    try:
        config = build_config(args)
    except ConfigError as error:
        # Messages describe key material by shape only; an unreadable file names its option.
        print(f"appauth simulator: {error}", file=sys.stderr)
        return 2
    try:
        simulator = start_simulator(config, args.host, args.port)
    except OSError as error:
        print(
            f"appauth simulator: cannot listen on {args.host}:{args.port}: {error.strerror}",
            file=sys.stderr,
        )
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        print(f"Alipay simulator listening on {simulator.url}", flush=True)
        mode = "cert" if config.cert_mode else "key"
        print(
            f"  mode: {mode}; AES: {'on' if config.encrypt_key else 'off'}; gateway: {simulator.gateway_url}",
            flush=True,
        )
        stop.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        simulator.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (``python -m appauth_dev.simulator.cli``) until the ``appauth`` CLI wires it."""
    parser = argparse.ArgumentParser(prog="appauth simulator", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
