"""Settings from the environment the template sets: clear errors naming the variable."""

from __future__ import annotations

import pytest

from appauth.alipay.errors import ConfigError
from appauth.config import Settings

BASE = {
    "APP_ID": "2021000100000001",
    "ALIPAY_ENV": "sandbox",
    "SSM_PREFIX": "/appauth/dev/",
    "SIGNING_MODE": "key",
    "TOKENS_TABLE": "tokens",
    "IDEMPOTENCY_TABLE": "idem",
    "TOKEN_KEY_ID": "arn:aws:kms:us-east-1:123456789012:key/abc",
    "PARKED_QUEUE_URL": "https://sqs/parked",
}


def test_defaults_and_overrides():
    settings = Settings.from_env({**BASE, "ALIPAY_GATEWAY_URL": "http://127.0.0.1:9/gateway.do"})
    assert settings.ssm_prefix == "/appauth/dev"
    assert settings.protocol == "v2"
    assert settings.endpoints.gateway_url == "http://127.0.0.1:9/gateway.do"
    assert "alipaydev.com" in settings.endpoints.auth_base_url
    assert settings.refresh_ahead_days == 30
    assert settings.callback_url is None


@pytest.mark.parametrize(
    ("change", "variable"),
    [
        ({"APP_ID": ""}, "APP_ID"),
        ({"APP_ID": "20210001x"}, "APP_ID"),
        ({"SIGNING_MODE": "hsm"}, "SIGNING_MODE"),
        ({"SSM_PREFIX": "appauth"}, "SSM_PREFIX"),
        ({"ALIPAY_PROTOCOL": "v4"}, "ALIPAY_PROTOCOL"),
        ({"REFRESH_AHEAD_DAYS": "soon"}, "REFRESH_AHEAD_DAYS"),
        ({"STATE_TTL_SECONDS": "5"}, "STATE_TTL_SECONDS"),
        ({"TOKENS_TABLE": " "}, "TOKENS_TABLE"),
        ({"ALIPAY_ENV": "staging"}, "environment"),
    ],
)
def test_bad_settings_name_the_variable(change, variable):
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**BASE, **change})
    assert caught.value.parameter == variable
