"""Shared helpers of the unit tests: the vector file, cached test keys, and body builders."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from appauth.alipay import keys
from appauth.alipay.signing import rsa_sign

VECTORS_DIR = Path(__file__).resolve().parent.parent / "vectors"


def read_vector_file(relative: str) -> str:
    return (VECTORS_DIR / relative).read_text(encoding="utf-8")


@cache
def vector_data() -> dict[str, Any]:
    """vectors.json, loaded once at collection time (parametrize needs it before fixtures)."""
    data: dict[str, Any] = json.loads(read_vector_file("vectors.json"))
    return data


def vector_ids(section: str) -> list[str]:
    """Test ids: each vector's ``name``, else its file or its index."""
    return [
        str(item.get("name") or item.get("file") or f"{section}[{index}]")
        for index, item in enumerate(vector_data()[section])
    ]


def key_path(name: str) -> str:
    path: str = vector_data()["keys"][name]
    return path


@cache
def alipay_private_key() -> rsa.RSAPrivateKey:
    """The vectors' "Alipay" private key: lets tests forge exactly what the gateway would send."""
    return keys.load_private_key(
        read_vector_file(key_path("alipay_private")), name="alipay private"
    )


@cache
def alipay_public_key() -> rsa.RSAPublicKey:
    return keys.load_public_key(read_vector_file(key_path("alipay_public")))


@cache
def app_public_key() -> rsa.RSAPublicKey:
    return keys.load_public_key(read_vector_file(key_path("app_public")), name="app public key")


def alipay_sign(content: str) -> str:
    return rsa_sign(content, alipay_private_key())


def signed_body(
    node_name: str,
    node_text: str,
    *,
    signed_text: str | None = None,
    extra: str = "",
) -> str:
    """A v2 response body whose ``sign`` covers ``signed_text`` (default: ``node_text``)."""
    signature = alipay_sign(node_text if signed_text is None else signed_text)
    return f'{{{json.dumps(node_name)}:{node_text}{extra},"sign":{json.dumps(signature)}}}'
