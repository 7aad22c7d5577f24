"""The service's settings, read once per container from the environment the template sets."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from appauth.alipay.endpoints import Endpoints, Protocol
from appauth.alipay.errors import ConfigError
from appauth.alipay.ids import is_app_id

SIGNING_MODES = ("key", "cert")
PROTOCOLS: tuple[Protocol, ...] = ("v2", "v3")


@dataclass(frozen=True)
class Settings:
    app_id: str
    endpoints: Endpoints
    protocol: Protocol
    ssm_prefix: str
    signing_mode: str
    tokens_table: str
    idempotency_table: str
    token_key_id: str
    parked_queue_url: str
    callback_url: str | None
    refresh_ahead_days: int
    refresh_hygiene_days: int
    state_ttl_seconds: int
    event_bus_name: str = "default"
    refresh_concurrency: int = 8
    refresh_rate_per_second: int = 20
    verify_every_days: int = 7

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        source = os.environ if env is None else env

        def required(name: str) -> str:
            value = source.get(name, "").strip()
            if not value:
                raise ConfigError("environment variable is not set", parameter=name)
            return value

        def optional(name: str) -> str | None:
            return source.get(name, "").strip() or None

        def number(name: str, default: int, minimum: int) -> int:
            raw = optional(name)
            try:
                value = int(raw) if raw is not None else default
            except ValueError:
                raise ConfigError("must be a whole number", parameter=name) from None
            if value < minimum:
                raise ConfigError(f"must be at least {minimum}", parameter=name)
            return value

        signing_mode = required("SIGNING_MODE")
        if signing_mode not in SIGNING_MODES:
            raise ConfigError(
                f"must be one of {', '.join(SIGNING_MODES)}", parameter="SIGNING_MODE"
            )
        protocol = optional("ALIPAY_PROTOCOL") or "v2"
        if protocol not in PROTOCOLS:
            raise ConfigError("must be v2 or v3", parameter="ALIPAY_PROTOCOL")
        prefix = required("SSM_PREFIX").rstrip("/")
        if not prefix.startswith("/"):
            raise ConfigError("must start with '/'", parameter="SSM_PREFIX")
        app_id = required("APP_ID")
        if not is_app_id(app_id):
            raise ConfigError("must be the numeric Alipay app id", parameter="APP_ID")
        return cls(
            app_id=app_id,
            endpoints=Endpoints.for_environment(
                optional("ALIPAY_ENV") or "production",
                gateway_url=optional("ALIPAY_GATEWAY_URL"),
                v3_base_url=optional("ALIPAY_V3_URL"),
                auth_base_url=optional("ALIPAY_AUTH_URL"),
            ),
            protocol=protocol,
            ssm_prefix=prefix,
            signing_mode=signing_mode,
            tokens_table=required("TOKENS_TABLE"),
            idempotency_table=required("IDEMPOTENCY_TABLE"),
            token_key_id=required("TOKEN_KEY_ID"),
            parked_queue_url=required("PARKED_QUEUE_URL"),
            callback_url=optional("CALLBACK_URL"),
            refresh_ahead_days=number("REFRESH_AHEAD_DAYS", 30, 1),
            refresh_hygiene_days=number("REFRESH_HYGIENE_DAYS", 90, 1),
            state_ttl_seconds=number("STATE_TTL_SECONDS", 1800, 60),
            event_bus_name=optional("EVENT_BUS_NAME") or "default",
            refresh_concurrency=number("REFRESH_CONCURRENCY", 8, 1),
            refresh_rate_per_second=number("REFRESH_RATE_PER_SECOND", 20, 1),
            verify_every_days=number("VERIFY_EVERY_DAYS", 7, 1),
        )
