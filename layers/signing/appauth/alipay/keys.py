"""Key and certificate loading, and the certificate serial numbers (SN) of 公钥证书模式.

Accepted key formats: PEM PKCS#8, PEM PKCS#1, and the one-line bare base64 (DER) that Alipay's
key tool and console hand out. Errors describe the input by its shape, never by its content.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from types import ModuleType
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from appauth.alipay.errors import ConfigError

if TYPE_CHECKING:
    from cryptography import x509

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\s*(.+?)\s*-----END \1-----", re.DOTALL)
_RSA_SIGNATURE_OID_PREFIX = "1.2.840.113549.1.1"
MIN_RSA_BITS = 2048


def _as_bytes(material: str | bytes) -> bytes:
    return material.encode("ascii", "replace") if isinstance(material, str) else material


def _shape(data: bytes) -> str:
    """Describe key material without revealing any of it."""
    return f"{len(data)} bytes"


def _bare_der(data: bytes, what: str, name: str) -> bytes:
    compact = b"".join(data.split())
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(
            f"not a PEM block nor one-line base64 {what} ({_shape(data)}); paste the key "
            "exactly as the Alipay key tool or console shows it",
            parameter=name,
        ) from None


def load_private_key(material: str | bytes, *, name: str = "app private key") -> rsa.RSAPrivateKey:
    """Load an RSA private key from PEM (PKCS#8 or PKCS#1) or bare base64 DER."""
    data = _as_bytes(material).strip()
    if not data:
        raise ConfigError("is empty", parameter=name)
    try:
        if data.startswith(b"-----BEGIN"):
            if b"ENCRYPTED" in data.split(b"\n", 1)[0] or b"Proc-Type: 4,ENCRYPTED" in data:
                raise ConfigError(
                    "is encrypted with a passphrase; store the unencrypted key in SSM "
                    "(SecureString encrypts it at rest)",
                    parameter=name,
                )
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_der_private_key(_bare_der(data, "private key", name), None)
    except ConfigError:
        raise
    except (ValueError, TypeError):
        raise ConfigError(
            f"could not be parsed as an RSA private key ({_shape(data)}); expected PKCS#8 or "
            "PKCS#1 PEM, or the bare base64 line from the Alipay key tool",
            parameter=name,
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError("is not an RSA key; Alipay RSA2 needs RSA", parameter=name)
    if key.key_size < MIN_RSA_BITS:
        raise ConfigError(
            f"is RSA-{key.key_size}; Alipay RSA2 needs at least {MIN_RSA_BITS} bits", parameter=name
        )
    return key


def _x509() -> ModuleType:
    """cryptography.x509, imported when a certificate is read: key mode never pays for it (a
    cold start's worth of milliseconds)."""
    from cryptography import x509  # noqa: PLC0415

    return x509


def load_public_key(material: str | bytes, *, name: str = "alipay public key") -> rsa.RSAPublicKey:
    """Load an RSA public key from PEM (SPKI or PKCS#1), a certificate, or bare base64 SPKI."""
    data = _as_bytes(material).strip()
    if not data:
        raise ConfigError("is empty", parameter=name)
    key: object
    try:
        if data.startswith(b"-----BEGIN CERTIFICATE"):
            key = _x509().load_pem_x509_certificate(data).public_key()
        elif data.startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(data)
        else:
            der = _bare_der(data, "public key", name)
            try:
                key = serialization.load_der_public_key(der)
            except ValueError:
                key = _x509().load_der_x509_certificate(der).public_key()
    except ConfigError:
        raise
    except (ValueError, TypeError):
        raise ConfigError(
            f"could not be parsed as an RSA public key or certificate ({_shape(data)}); "
            "expected the PEM or the bare base64 line the Alipay console shows",
            parameter=name,
        ) from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ConfigError("is not an RSA key", parameter=name)
    return key


def _der_item(der: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER item at ``offset``."""
    tag = der[offset]
    length = der[offset + 1]
    start = offset + 2
    if length & 0x80:
        count = length & 0x7F
        length = int.from_bytes(der[start : start + count], "big")
        start += count
    return tag, start, start + length


def _signature_oid(der: bytes) -> str:
    """The outer signatureAlgorithm OID of a DER certificate, read without a full parse.

    Alipay's root bundle holds an ECDSA certificate whose encoding OpenSSL 3 rejects; the
    official SDKs skip non-RSA roots, so only the algorithm must be readable.
    """
    _, cert_start, _ = _der_item(der, 0)
    _, _, tbs_end = _der_item(der, cert_start)
    _, alg_start, _ = _der_item(der, tbs_end)
    tag, oid_start, oid_end = _der_item(der, alg_start)
    if tag != 0x06:
        raise ValueError("no OID")
    raw = der[oid_start:oid_end]
    arcs = [raw[0] // 40, raw[0] % 40]
    value = 0
    for byte in raw[1:]:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    return ".".join(str(arc) for arc in arcs)


def load_certificates(
    material: str | bytes, *, name: str = "certificate", rsa_only: bool = False
) -> list[x509.Certificate]:
    """Every certificate in a PEM bundle, in order.

    With ``rsa_only``, certificates not signed with an RSA-family algorithm are skipped, even
    when they cannot be parsed (the root-bundle rule of the official SDKs).
    """
    load_der = _x509().load_der_x509_certificate
    data = _as_bytes(material)
    certs: list[x509.Certificate] = []
    for index, match in enumerate(_PEM_BLOCK.finditer(data), start=1):
        if match.group(1) != b"CERTIFICATE":
            continue
        try:
            der = base64.b64decode(b"".join(match.group(2).split()), validate=True)
            if rsa_only and not _signature_oid(der).startswith(_RSA_SIGNATURE_OID_PREFIX):
                continue
            certs.append(load_der(der))
        except (ValueError, IndexError, binascii.Error):
            raise ConfigError(
                f"certificate #{index} in the bundle is malformed", parameter=name
            ) from None
    if not certs:
        raise ConfigError("holds no usable PEM certificate", parameter=name)
    return certs


def load_certificate(material: str | bytes, *, name: str = "certificate") -> x509.Certificate:
    return load_certificates(material, name=name)[0]


def _issuer_dn(cert: x509.Certificate) -> str:
    # RFC 2253/4514 order (most specific first, e.g. CN=...,OU=...,O=...,C=CN), which is what
    # Java's X500Principal.getName() gives and what the gateway hashes.
    return cert.issuer.rfc4514_string()


def certificate_sn(cert: x509.Certificate) -> str:
    """Alipay's SN of one certificate: md5(issuer DN + decimal serial), lowercase hex."""
    digest_input = (_issuer_dn(cert) + str(cert.serial_number)).encode("utf-8")
    return hashlib.md5(digest_input, usedforsecurity=False).hexdigest()


def root_certificate_sn(material: str | bytes, *, name: str = "alipay root cert") -> str:
    """SN of the Alipay root bundle: SNs of its RSA-signed certificates joined with ``_``."""
    return "_".join(
        certificate_sn(cert) for cert in load_certificates(material, name=name, rsa_only=True)
    )
