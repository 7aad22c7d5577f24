"""What the ISV app signs with and what it trusts: keys (公钥模式) or certificates (公钥证书模式)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import rsa

from appauth.alipay.aes import load_encrypt_key
from appauth.alipay.errors import ConfigError, SignatureError
from appauth.alipay.ids import is_app_id
from appauth.alipay.keys import (
    certificate_sn,
    load_certificate,
    load_private_key,
    load_public_key,
    root_certificate_sn,
)

# is_app_id moved to appauth.alipay.ids (no cryptography there); still importable from here.
__all__ = ["SIGN_TYPES", "AppCredentials", "is_app_id"]

SIGN_TYPES = ("RSA2", "RSA")


@dataclass(frozen=True)
class AppCredentials:
    """The ISV app's signing material. Build with :meth:`from_keys` or :meth:`from_certificates`.

    ``alipay_public_keys`` maps an Alipay certificate SN to its key; in key mode the only entry
    is under ``""`` and any SN a response names is ignored.
    """

    app_id: str
    private_key: rsa.RSAPrivateKey = field(repr=False)
    alipay_public_keys: Mapping[str, rsa.RSAPublicKey] = field(repr=False)
    app_cert_sn: str | None = None
    alipay_root_cert_sn: str | None = None
    encrypt_key: bytes | None = field(default=None, repr=False)
    sign_type: str = "RSA2"

    def __post_init__(self) -> None:
        if not is_app_id(self.app_id):
            raise ConfigError(
                "must be the numeric Alipay app id, e.g. 2021000100000001", parameter="app_id"
            )
        if self.sign_type not in SIGN_TYPES:
            raise ConfigError(f"must be one of {', '.join(SIGN_TYPES)}", parameter="sign_type")
        if not self.alipay_public_keys:
            raise ConfigError(
                "no Alipay public key or certificate configured", parameter="alipay public key"
            )

    @property
    def cert_mode(self) -> bool:
        return self.app_cert_sn is not None

    @classmethod
    def from_keys(
        cls,
        app_id: str,
        app_private_key: str | bytes,
        alipay_public_key: str | bytes,
        *,
        encrypt_key: str | bytes | None = None,
        sign_type: str = "RSA2",
    ) -> AppCredentials:
        return cls(
            app_id=app_id,
            private_key=load_private_key(app_private_key),
            alipay_public_keys={"": load_public_key(alipay_public_key)},
            encrypt_key=load_encrypt_key(encrypt_key) if encrypt_key else None,
            sign_type=sign_type,
        )

    @classmethod
    def from_certificates(
        cls,
        app_id: str,
        app_private_key: str | bytes,
        app_cert: str | bytes,
        alipay_cert: str | bytes,
        alipay_root_cert: str | bytes,
        *,
        encrypt_key: str | bytes | None = None,
    ) -> AppCredentials:
        alipay = load_certificate(alipay_cert, name="alipay cert")
        return cls(
            app_id=app_id,
            private_key=load_private_key(app_private_key),
            alipay_public_keys={
                certificate_sn(alipay): load_public_key(alipay_cert, name="alipay cert")
            },
            app_cert_sn=certificate_sn(load_certificate(app_cert, name="app cert")),
            alipay_root_cert_sn=root_certificate_sn(alipay_root_cert),
            encrypt_key=load_encrypt_key(encrypt_key) if encrypt_key else None,
        )

    def alipay_key(self, cert_sn: str | None) -> rsa.RSAPublicKey:
        """The Alipay key that must have signed a response naming ``cert_sn``."""
        if not self.cert_mode:
            return self.alipay_public_keys[""]
        if not cert_sn:
            if len(self.alipay_public_keys) == 1:
                return next(iter(self.alipay_public_keys.values()))
            raise SignatureError(
                "the response names no alipay_cert_sn and several certificates are configured"
            )
        try:
            return self.alipay_public_keys[cert_sn]
        except KeyError:
            raise SignatureError(
                f"the response is signed with Alipay certificate {cert_sn}, which is not configured; "
                "download the new Alipay public-key certificate from the console and add it"
            ) from None
