"""Where Alipay lives: the gateway, v3 and authorization hosts, and the protocol in use.

Kept apart from the client so that settings can name them without importing ``requests``
(the token query's cold start).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from appauth.alipay.errors import ConfigError

Protocol = Literal["v2", "v3"]


@dataclass(frozen=True)
class Endpoints:
    """Where Alipay lives. Every host is configurable; production and sandbox are presets."""

    gateway_url: str
    v3_base_url: str
    auth_base_url: str

    @classmethod
    def for_environment(
        cls,
        environment: str,
        *,
        gateway_url: str | None = None,
        v3_base_url: str | None = None,
        auth_base_url: str | None = None,
    ) -> Endpoints:
        try:
            preset = ENVIRONMENTS[environment]
        except KeyError:
            raise ConfigError(
                f"unknown Alipay environment {environment!r}; use {' or '.join(ENVIRONMENTS)}",
                parameter="environment",
            ) from None
        return cls(
            gateway_url or preset.gateway_url,
            (v3_base_url or preset.v3_base_url).rstrip("/"),
            (auth_base_url or preset.auth_base_url).rstrip("/"),
        )

    @classmethod
    def local(cls, base_url: str) -> Endpoints:
        """All three on one host, as the Alipay simulator serves them."""
        base = base_url.rstrip("/")
        return cls(f"{base}/gateway.do", base, base)


PRODUCTION = Endpoints(
    "https://openapi.alipay.com/gateway.do",
    "https://openapi.alipay.com",
    "https://openauth.alipay.com",
)
SANDBOX = Endpoints(
    "https://openapi-sandbox.dl.alipaydev.com/gateway.do",
    "https://openapi-sandbox.dl.alipaydev.com",
    "https://openauth-sandbox.dl.alipaydev.com",
)
ENVIRONMENTS = {"production": PRODUCTION, "sandbox": SANDBOX}
