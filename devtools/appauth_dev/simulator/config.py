"""What the simulator is: whose app it serves, which keys it signs and verifies with."""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import rsa

from appauth.alipay.aes import load_encrypt_key
from appauth.alipay.errors import ConfigError
from appauth.alipay.keys import (
    certificate_sn,
    load_certificate,
    load_private_key,
    load_public_key,
    root_certificate_sn,
)

DEFAULT_GRACE_SECONDS = 3600


@dataclass(frozen=True)
class SimulatorConfig:
    """The one ISV app the simulator knows, and the "Alipay" side of its key material.

    Cert mode (公钥证书模式) is on when ``alipay_cert_sn`` is set: requests must then carry
    ``app_cert_sn`` (equal to ``app_cert_sn`` here) and ``alipay_root_cert_sn`` (equal to
    ``alipay_root_cert_sn`` when one is configured), and responses name ``alipay_cert_sn``.
    """

    app_id: str
    app_public_key: rsa.RSAPublicKey = field(repr=False)
    alipay_private_key: rsa.RSAPrivateKey = field(repr=False)
    alipay_cert_sn: str | None = None
    app_cert_sn: str | None = None
    alipay_root_cert_sn: str | None = None
    encrypt_key: bytes | None = field(default=None, repr=False)
    redirect_uri: str | None = None
    grace_seconds: int = DEFAULT_GRACE_SECONDS
    seed: int | None = None

    def __post_init__(self) -> None:
        if not self.app_id.isdigit():
            raise ConfigError("must be the numeric Alipay app id", parameter="app_id")
        if (self.alipay_cert_sn is None) != (self.app_cert_sn is None):
            raise ConfigError(
                "cert mode needs both the Alipay certificate and the app certificate",
                parameter="alipay_cert",
            )
        if self.grace_seconds < 0:
            raise ConfigError("must not be negative", parameter="grace_seconds")

    @property
    def cert_mode(self) -> bool:
        return self.alipay_cert_sn is not None

    @classmethod
    def from_material(
        cls,
        app_id: str,
        app_public_key: str | bytes | None,
        alipay_private_key: str | bytes,
        *,
        alipay_cert: str | bytes | None = None,
        app_cert: str | bytes | None = None,
        alipay_root_cert: str | bytes | None = None,
        encrypt_key: str | bytes | None = None,
        redirect_uri: str | None = None,
        grace_seconds: int = DEFAULT_GRACE_SECONDS,
        seed: int | None = None,
    ) -> SimulatorConfig:
        """Build from key/cert text in any format the layer's loaders accept.

        ``app_public_key`` may be omitted in cert mode: the app certificate's key is used.
        """
        if app_public_key is None:
            if app_cert is None:
                raise ConfigError(
                    "is required (or give the app certificate)", parameter="app public key"
                )
            app_public_key = app_cert
        return cls(
            app_id=app_id,
            app_public_key=load_public_key(app_public_key, name="app public key"),
            alipay_private_key=load_private_key(alipay_private_key, name="alipay private key"),
            alipay_cert_sn=certificate_sn(load_certificate(alipay_cert, name="alipay cert"))
            if alipay_cert is not None
            else None,
            app_cert_sn=certificate_sn(load_certificate(app_cert, name="app cert"))
            if app_cert is not None
            else None,
            alipay_root_cert_sn=root_certificate_sn(alipay_root_cert)
            if alipay_root_cert is not None
            else None,
            encrypt_key=load_encrypt_key(encrypt_key) if encrypt_key else None,
            redirect_uri=redirect_uri,
            grace_seconds=grace_seconds,
            seed=seed,
        )
