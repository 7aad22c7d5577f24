"""RSA-2048 app key pairs in the formats the Alipay console and this service ask for."""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from appauth.alipay.errors import ConfigError

KEY_BITS = 2048
# `appauth keygen`'s output folder unless --out says otherwise; .gitignore lists it (and the
# private key files by name), so a key generated in a checkout never shows in `git status`.
DEFAULT_KEY_DIR = "keys"


def generate_private_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)


def private_pkcs8_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _bare(der: bytes) -> bytes:
    return base64.b64encode(der) + b"\n"


def write_key_pair(out: Path, *, force: bool = False) -> list[tuple[Path, str]]:
    """Write a new pair into ``out``; private files are 0600. Refuses to overwrite without ``force``."""
    key = generate_private_key()
    files = [
        (
            "app_private_key.pem",
            private_pkcs8_pem(key),
            0o600,
            "private key, PKCS#8 PEM: put it in SSM (…/app-private-key); never share it",
        ),
        (
            "app_private_key.txt",
            _bare(
                key.private_bytes(
                    serialization.Encoding.DER,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            ),
            0o600,
            "private key, one-line base64 (the Alipay key tool's format)",
        ),
        ("app_public_key.pem", public_pem(key), 0o644, "public key, PEM"),
        (
            "app_public_key.txt",
            _bare(
                key.public_key().public_bytes(
                    serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
                )
            ),
            0o644,
            "public key, one line: paste it into the Alipay console (接口加签方式 → 公钥)",
        ),
    ]
    out.mkdir(parents=True, exist_ok=True)
    existing = [name for name, *_ in files if (out / name).exists()]
    if existing and not force:
        raise ConfigError(
            f"{', '.join(existing)} already exist in {out}; pass --force to replace them"
        )
    written: list[tuple[Path, str]] = []
    for name, content, mode, purpose in files:
        path = out / name
        # Create with the final mode so a private key is never world-readable, even briefly.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
        os.chmod(path, mode)
        written.append((path, purpose))
    return written
