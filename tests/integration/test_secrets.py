"""Secrets from SSM Parameter Store (moto) through a Powertools SSMProvider, as the functions read them.

Key and certificate mode, missing and malformed parameters (a configuration error naming the full
parameter path, never echoing key material), the state secret's minimum length, and the cache of
parsed credentials (same object while the values are unchanged, new credentials after a change).
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from aws_lambda_powertools.utilities.parameters import SSMProvider
from cryptography.hazmat.primitives import serialization

from appauth.alipay.credentials import AppCredentials
from appauth.alipay.errors import ConfigError
from appauth.config import Settings
from appauth.secrets import load_credentials, load_state_secret
from appauth_dev.stack import put_secrets
from tests.conftest import read_vector_file
from tests.integration.conftest import REGION, SSM_PREFIX, LocalStackEnv

if TYPE_CHECKING:
    from mypy_boto3_ssm import SSMClient

SECRET_MARKER = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDTOPSECRET"


@pytest.fixture
def ssm(local_stack: LocalStackEnv) -> SSMClient:
    client: SSMClient = boto3.client(
        "ssm", region_name=REGION, endpoint_url=local_stack.endpoint_url
    )
    return client


@pytest.fixture
def provider(ssm: SSMClient) -> SSMProvider:
    return SSMProvider(boto3_client=ssm)


@pytest.fixture
def settings(local_stack: LocalStackEnv) -> Settings:
    settings = Settings.from_env()
    assert settings.ssm_prefix == SSM_PREFIX
    assert settings.signing_mode == "key"
    return settings


def _public_numbers(key: Any) -> Any:
    return (
        key.public_key().public_numbers()
        if hasattr(key, "private_numbers")
        else key.public_numbers()
    )


def _put(ssm: SSMClient, name: str, value: str) -> None:
    ssm.put_parameter(Name=f"{SSM_PREFIX}/{name}", Value=value, Type="SecureString", Overwrite=True)


def _assert_no_key_material(error: ConfigError, *materials: str) -> None:
    text = str(error)
    for material in materials:
        for line in material.strip().splitlines():
            if "-----" not in line and len(line) > 8:
                assert line not in text
    assert SECRET_MARKER not in text


def test_key_mode_credentials_match_the_vectors(
    settings, provider, app_credentials: AppCredentials
):
    credentials = load_credentials(settings, provider)
    assert credentials.app_id == settings.app_id
    assert not credentials.cert_mode
    assert _public_numbers(credentials.private_key) == _public_numbers(app_credentials.private_key)
    assert _public_numbers(credentials.alipay_public_keys[""]) == _public_numbers(
        app_credentials.alipay_public_keys[""]
    )
    assert credentials.encrypt_key is None


def test_cert_mode_credentials_from_ssm(
    settings, provider, ssm, vectors: dict[str, Any], cert_credentials: AppCredentials
):
    names = put_secrets(
        ssm,
        SSM_PREFIX,
        app_private_key=read_vector_file(vectors["keys"]["app_private"]),
        app_cert=read_vector_file("certs/app_cert.crt"),
        alipay_cert=read_vector_file("certs/alipay_cert.crt"),
        alipay_root_cert=read_vector_file("certs/alipay_root_cert.crt"),
        state_secret="x" * 48,
    )
    assert f"{SSM_PREFIX}/alipay-root-cert" in names
    described = ssm.describe_parameters(
        ParameterFilters=[{"Key": "Name", "Values": [f"{SSM_PREFIX}/alipay-root-cert"]}]
    )["Parameters"][0]
    assert described["Type"] == "SecureString"
    credentials = load_credentials(replace(settings, signing_mode="cert"), provider)
    assert credentials.cert_mode
    assert credentials.app_cert_sn == cert_credentials.app_cert_sn
    assert credentials.alipay_root_cert_sn == cert_credentials.alipay_root_cert_sn
    assert set(credentials.alipay_public_keys) == set(cert_credentials.alipay_public_keys)


def test_a_root_bundle_over_4kb_goes_to_the_advanced_tier_and_still_loads(
    settings, provider, ssm, vectors: dict[str, Any], cert_credentials: AppCredentials
):
    root = read_vector_file("certs/alipay_root_cert.crt")
    bundle = root + "\n" + read_vector_file("certs/issuing_ca.crt")
    assert len(root.encode()) <= 4096 < len(bundle.encode())
    put_secrets(
        ssm,
        SSM_PREFIX,
        app_private_key=read_vector_file(vectors["keys"]["app_private"]),
        app_cert=read_vector_file("certs/app_cert.crt"),
        alipay_cert=read_vector_file("certs/alipay_cert.crt"),
        alipay_root_cert=bundle,
        state_secret="x" * 48,
    )
    tiers = {
        p["Name"]: p["Tier"]
        for p in ssm.describe_parameters(
            ParameterFilters=[{"Key": "Path", "Option": "OneLevel", "Values": [SSM_PREFIX]}]
        )["Parameters"]
    }
    assert tiers[f"{SSM_PREFIX}/alipay-root-cert"] == "Advanced"
    assert tiers[f"{SSM_PREFIX}/app-cert"] == "Standard"
    credentials = load_credentials(replace(settings, signing_mode="cert"), provider)
    assert cert_credentials.alipay_root_cert_sn is not None
    assert cert_credentials.alipay_root_cert_sn in str(credentials.alipay_root_cert_sn)


def test_the_optional_encrypt_key_is_loaded_when_present(
    settings, provider, ssm, aes_credentials: AppCredentials, aes_key: str
):
    assert load_credentials(settings, provider).encrypt_key is None
    _put(ssm, "encrypt-key", aes_key)
    provider.clear_cache()
    assert load_credentials(settings, provider).encrypt_key == aes_credentials.encrypt_key


def test_a_missing_parameter_is_a_config_error_naming_its_full_path(settings, provider, ssm):
    # Cert mode: the certificates were never put, the first one missing is named.
    cases = [("cert", f"{SSM_PREFIX}/app-cert")]
    cases += [("key", f"{SSM_PREFIX}/{name}") for name in ("alipay-public-key", "app-private-key")]
    for mode, expected in cases:
        if mode == "key":
            ssm.delete_parameter(Name=expected)
            provider.clear_cache()
        with pytest.raises(ConfigError) as caught:
            load_credentials(replace(settings, signing_mode=mode), provider)
        assert caught.value.parameter == expected
        assert str(caught.value).startswith(f"{expected}: is missing from SSM Parameter Store")
        assert caught.value.__cause__ is None  # `from None`: no boto3 stack trace attached


def test_a_missing_state_secret_is_named_too(settings, provider, ssm):
    ssm.delete_parameter(Name=f"{SSM_PREFIX}/state-secret")
    with pytest.raises(ConfigError) as caught:
        load_state_secret(settings, provider)
    assert caught.value.parameter == f"{SSM_PREFIX}/state-secret"


MALFORMED_KEYS = [
    (
        "app-private-key",
        f"-----BEGIN PRIVATE KEY-----\n{SECRET_MARKER}\n-----END PRIVATE KEY-----\n",
    ),
    ("app-private-key", SECRET_MARKER + "!!"),  # neither PEM nor base64
    ("app-private-key", "   "),
    ("alipay-public-key", f"-----BEGIN PUBLIC KEY-----\n{SECRET_MARKER}\n-----END PUBLIC KEY-----"),
]


def test_a_malformed_key_names_the_parameter_without_echoing_the_material(
    settings, provider, ssm, local_stack: LocalStackEnv, vectors
):
    good = {
        "app-private-key": read_vector_file(vectors["keys"]["app_private"]),
        "alipay-public-key": read_vector_file(vectors["keys"]["alipay_public"]),
    }
    for name, value in MALFORMED_KEYS:
        _put(ssm, name, value)
        provider.clear_cache()
        with pytest.raises(ConfigError) as caught:
            load_credentials(settings, provider)
        assert caught.value.parameter == f"{SSM_PREFIX}/{name}", value
        assert str(caught.value).startswith(f"{SSM_PREFIX}/{name}: ")
        _assert_no_key_material(caught.value, value)
        _put(ssm, name, good[name])
    provider.clear_cache()
    assert load_credentials(settings, provider).app_id == local_stack.app_id


def test_a_malformed_certificate_names_its_parameter(settings, provider, ssm, vectors):
    put_secrets(
        ssm,
        SSM_PREFIX,
        app_private_key=read_vector_file(vectors["keys"]["app_private"]),
        app_cert=read_vector_file("certs/app_cert.crt"),
        alipay_cert="-----BEGIN CERTIFICATE-----\n" + SECRET_MARKER + "\n-----END CERTIFICATE-----",
        alipay_root_cert=read_vector_file("certs/alipay_root_cert.crt"),
        state_secret="x" * 48,
    )
    with pytest.raises(ConfigError) as caught:
        load_credentials(replace(settings, signing_mode="cert"), provider)
    assert caught.value.parameter == f"{SSM_PREFIX}/alipay-cert"
    assert SECRET_MARKER not in str(caught.value)


def test_a_private_key_in_the_public_key_slot_is_refused_without_leaking_it(
    settings, provider, ssm, vectors
):
    private_pem = read_vector_file(vectors["keys"]["app_private"])
    _put(ssm, "alipay-public-key", private_pem)
    with pytest.raises(ConfigError) as caught:
        load_credentials(settings, provider)
    assert caught.value.parameter == f"{SSM_PREFIX}/alipay-public-key"
    _assert_no_key_material(caught.value, private_pem)


def test_the_state_secret_is_read_and_a_short_one_is_rejected(
    settings, provider, ssm, local_stack: LocalStackEnv
):
    assert load_state_secret(settings, provider) == local_stack.state_secret.encode()
    _put(ssm, "state-secret", "  " + "s" * 31 + "  ")  # 31 characters once trimmed
    provider.clear_cache()
    with pytest.raises(ConfigError) as caught:
        load_state_secret(settings, provider)
    assert caught.value.parameter == f"{SSM_PREFIX}/state-secret"
    assert "at least 32" in str(caught.value)
    assert "s" * 31 not in str(caught.value)
    _put(ssm, "state-secret", "s" * 32)
    provider.clear_cache()
    assert load_state_secret(settings, provider) == b"s" * 32


def test_parsed_credentials_are_cached_until_a_value_changes(
    settings, provider, ssm, local_stack: LocalStackEnv
):
    first = load_credentials(settings, provider)
    assert load_credentials(settings, provider) is first
    # Another provider (a cold cache of raw values, e.g. after max age) with the same values:
    # the RSA keys are not parsed again.
    assert load_credentials(settings, SSMProvider(boto3_client=ssm)) is first

    # Rotate the app key: while Powertools still holds the old value, the old credentials stay;
    # once the value is fetched again, new credentials come back.
    from cryptography.hazmat.primitives.asymmetric import rsa  # noqa: PLC0415

    new_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    new_pem = new_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    _put(ssm, "app-private-key", new_pem)
    assert load_credentials(settings, provider) is first
    provider.clear_cache()
    rotated = load_credentials(settings, provider)
    assert rotated is not first
    assert _public_numbers(rotated.private_key) == new_key.public_key().public_numbers()
    assert load_credentials(settings, provider) is rotated
    # force_fetch on the raw value gives the same (new) value: the credentials stay cached.
    assert provider.get(f"{SSM_PREFIX}/app-private-key", decrypt=True, force_fetch=True) == new_pem
    assert load_credentials(settings, provider) is rotated


def test_an_absent_encrypt_key_is_asked_for_once_per_cache_age(settings, provider, ssm):
    asked: list[str] = []

    def count(params: dict[str, Any], **_: Any) -> None:
        asked.append(params["Name"])

    ssm.meta.events.register("provide-client-params.ssm.GetParameter", count)
    for _ in range(20):
        assert load_credentials(settings, provider).encrypt_key is None
    assert asked.count(f"{SSM_PREFIX}/encrypt-key") == 1
    provider.clear_cache()  # the provider's max age passed: SSM is asked again
    load_credentials(settings, provider)
    assert asked.count(f"{SSM_PREFIX}/encrypt-key") == 2
