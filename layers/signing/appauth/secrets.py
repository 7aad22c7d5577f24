"""Secrets from SSM Parameter Store (SecureString), read with Powertools Parameters.

Parameter names under the prefix: ``app-private-key`` and ``alipay-public-key`` (key mode) or
``app-cert``, ``alipay-cert``, ``alipay-root-cert`` (cert mode), optional ``encrypt-key`` (AES),
and ``state-secret``. Values are cached by Powertools for ``POWERTOOLS_PARAMETERS_MAX_AGE``
seconds; parsed credentials are cached by the raw values, so a rotated key is picked up within
that age without re-parsing RSA keys on every invocation.
"""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING

from appauth.alipay.errors import ConfigError

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.parameters import SSMProvider

    from appauth.alipay.credentials import AppCredentials
    from appauth.config import Settings

KEY_MODE_PARAMETERS = ("app-private-key", "alipay-public-key")
CERT_MODE_PARAMETERS = ("app-private-key", "app-cert", "alipay-cert", "alipay-root-cert")
MIN_STATE_SECRET_BYTES = 32

_credentials_cache: dict[str, AppCredentials] = {}
# SSM errors that mean our setup is wrong, not that SSM is busy.
SETUP_ERRORS = ("AccessDenied", "InvalidKeyId", "KMSAccessDenied", "ValidationException")


class SecretsUnavailableError(ConfigError):
    """SSM (or the KMS key behind a SecureString) failed for a reason a retry may cure. Still a
    ConfigError for the functions that answer any secret trouble alike; the token query answers
    it as a retryable ``unavailable``."""


def _get(
    provider: SSMProvider, settings: Settings, name: str, *, required: bool = True
) -> str | None:
    from aws_lambda_powertools.utilities.parameters.exceptions import (  # noqa: PLC0415
        GetParameterError,
    )

    full_name = f"{settings.ssm_prefix}/{name}"
    # Powertools caches values, not "not found": an absent optional parameter (encrypt-key) is
    # remembered in the provider's own cache (cleared with it), or every invocation would ask
    # SSM again (about 40 GetParameter a second per account).
    absent_key = (f"{full_name}#absent", None)
    if not required and provider.has_not_expired_in_cache(absent_key):
        return None
    try:
        value = provider.get(full_name, decrypt=True)
    except GetParameterError as error:
        if "ParameterNotFound" in str(error) and not required:
            # As long as Powertools would keep a value (POWERTOOLS_PARAMETERS_MAX_AGE).
            max_age = int(os.environ.get("POWERTOOLS_PARAMETERS_MAX_AGE", "5"))
            provider.add_to_cache(key=absent_key, value=True, max_age=max_age)
            return None
        if "ParameterNotFound" in str(error):
            raise ConfigError(
                "is missing from SSM Parameter Store; create it as a SecureString (see README)",
                parameter=full_name,
            ) from None
        if any(code in str(error) for code in SETUP_ERRORS):
            raise ConfigError(
                f"cannot be read ({type(error).__name__}): check the role's permissions",
                parameter=full_name,
            ) from None
        # Throttled, unreachable, a failing KMS behind it: the parameter is fine, SSM is not.
        raise SecretsUnavailableError(
            f"cannot be read now ({type(error).__name__})", parameter=full_name
        ) from None
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if not isinstance(value, str) or not value.strip():
        if not required:
            return None
        raise ConfigError("is empty", parameter=full_name)
    return value


def load_credentials(settings: Settings, provider: SSMProvider) -> AppCredentials:
    """The app's signing material for the configured mode; ConfigError names a bad parameter."""
    # Deferred: the signing material (keys, cryptography) is never needed by a token look-up.
    from appauth.alipay.credentials import AppCredentials  # noqa: PLC0415

    names = CERT_MODE_PARAMETERS if settings.signing_mode == "cert" else KEY_MODE_PARAMETERS
    values = [_get(provider, settings, name) or "" for name in names]
    encrypt_key = _get(provider, settings, "encrypt-key", required=False)
    fingerprint = hashlib.sha256(
        "\0".join([settings.app_id, settings.signing_mode, *values, encrypt_key or ""]).encode()
    ).hexdigest()
    cached = _credentials_cache.get(fingerprint)
    if cached is not None:
        return cached
    try:
        if settings.signing_mode == "cert":
            credentials = AppCredentials.from_certificates(
                settings.app_id, *values, encrypt_key=encrypt_key
            )
        else:
            credentials = AppCredentials.from_keys(
                settings.app_id, *values, encrypt_key=encrypt_key
            )
    except ConfigError as error:
        # Name the SSM parameter that holds the bad value, not only the key's role.
        role = (error.parameter or "").replace(" ", "-")
        parameter = f"{settings.ssm_prefix}/{role}" if role else settings.ssm_prefix
        raise ConfigError(error.message, parameter=parameter) from None
    _credentials_cache.clear()  # only the current version is worth keeping
    _credentials_cache[fingerprint] = credentials
    return credentials


def load_state_secret(settings: Settings, provider: SSMProvider) -> bytes:
    value = _get(provider, settings, "state-secret") or ""
    secret = value.strip().encode("utf-8")
    if len(secret) < MIN_STATE_SECRET_BYTES:
        raise ConfigError(
            f"must be at least {MIN_STATE_SECRET_BYTES} random characters "
            "(e.g. `openssl rand -base64 48`)",
            parameter=f"{settings.ssm_prefix}/state-secret",
        )
    return secret
