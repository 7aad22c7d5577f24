"""Alipay's consent URLs, single and batch."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from appauth.authorize_url import (
    BATCH_PATH,
    SINGLE_PATH,
    authorization_url,
    parse_application_types,
)
from appauth.errors import InvalidRequestError

REDIRECT = "https://abc.execute-api.us-east-1.amazonaws.com/alipay/callback"


def test_single_authorization_url():
    url = authorization_url("https://openauth.alipay.com/", "2021000100000001", REDIRECT, "v1.x.y")
    parts = urlsplit(url)
    assert (
        f"{parts.scheme}://{parts.netloc}{parts.path}"
        == f"https://openauth.alipay.com{SINGLE_PATH}"
    )
    query = parse_qs(parts.query)
    assert query == {
        "app_id": ["2021000100000001"],
        "redirect_uri": [REDIRECT],
        "state": ["v1.x.y"],
    }


def test_batch_authorization_url_names_the_application_types():
    url = authorization_url(
        "https://openauth-sandbox.dl.alipaydev.com",
        "1",
        REDIRECT,
        "s",
        batch=True,
        application_types=("TINYAPP", "PUBLICAPP"),
    )
    parts = urlsplit(url)
    assert parts.path == BATCH_PATH
    assert parse_qs(parts.query)["application_type"] == ["TINYAPP,PUBLICAPP"]
    # The redirect_uri is URL-encoded once, so Alipay gives it back intact.
    assert "redirect_uri=https%3A%2F%2Fabc.execute-api" in parts.query


def test_application_types_are_validated_and_deduplicated():
    assert parse_application_types("tinyapp, WEBAPP,TINYAPP") == ("TINYAPP", "WEBAPP")
    assert parse_application_types(None) == ("TINYAPP", "WEBAPP")
    with pytest.raises(InvalidRequestError):
        parse_application_types("TINYAPP,EVIL")


@pytest.mark.parametrize("redirect", ["/relative", "javascript:alert(1)", "ftp://x/y", ""])
def test_redirect_must_be_absolute_http(redirect):
    with pytest.raises(InvalidRequestError):
        authorization_url("https://openauth.alipay.com", "1", redirect, "s")
