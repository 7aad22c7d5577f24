"""Key and certificate loading: accepted formats, refused material, and errors that leak nothing."""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from functools import cache

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from appauth.alipay import keys
from appauth.alipay.credentials import AppCredentials
from appauth.alipay.errors import ConfigError
from tests.unit.helpers import key_path, read_vector_file, vector_data

_PEM_ARMOR = re.compile(r"-----(BEGIN|END) [A-Z0-9 ]+-----|Proc-Type:[^\n]*|DEK-Info:[^\n]*")


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, fmt: str = "pkcs8") -> str:
    formats = {
        "pkcs8": serialization.PrivateFormat.PKCS8,
        "pkcs1": serialization.PrivateFormat.TraditionalOpenSSL,
    }
    return key.private_bytes(
        serialization.Encoding.PEM, formats[fmt], serialization.NoEncryption()
    ).decode("ascii")


@cache
def _rsa_1024() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 (the refused size)


@cache
def _ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _app_private_pem() -> str:
    return read_vector_file(key_path("app_private"))


def _key_material(text: str) -> str:
    """The secret part of the input: everything but PEM armor and whitespace."""
    return "".join(_PEM_ARMOR.sub("", text).split())


def _assert_no_leak(error: BaseException, material: str) -> None:
    message = str(error)
    secret = _key_material(material)
    for start in range(max(len(secret) - 7, 0)):
        window = secret[start : start + 8]
        assert window not in message, f"{window!r} of the input is in the error: {message!r}"
    # not only the whole message: the args and the cause chain too
    for arg in error.args:
        assert secret[:16] not in str(arg) or len(secret) < 8
    assert error.__cause__ is None or secret[8:24] not in str(error.__cause__)


# --- accepted formats ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["app_private", "app_private_pkcs1", "app_private_bare"])
def test_private_key_formats_load(name):
    text = read_vector_file(key_path(name))
    reference = keys.load_private_key(_app_private_pem()).private_numbers()
    assert keys.load_private_key(text).private_numbers() == reference
    assert keys.load_private_key(text.encode("ascii")).private_numbers() == reference
    # pasted with surrounding whitespace (a console copy, an SSM value with a newline)
    assert keys.load_private_key(f"\n  {text}\n\n").private_numbers() == reference


def test_bare_private_key_split_over_lines_loads():
    bare = read_vector_file(key_path("app_private_bare")).strip()
    wrapped = "\n".join(bare[i : i + 64] for i in range(0, len(bare), 64))
    reference = keys.load_private_key(bare).private_numbers()
    assert keys.load_private_key(wrapped).private_numbers() == reference


@pytest.mark.parametrize(
    "source",
    ["alipay_public", "alipay_public_bare", "certs/alipay_cert.crt", "pkcs1_pem", "bare_cert"],
)
def test_public_key_formats_load(source):
    reference = keys.load_public_key(read_vector_file(key_path("alipay_public")))
    if source == "pkcs1_pem":
        text = reference.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.PKCS1
        ).decode()
    elif source == "bare_cert":
        cert = x509.load_pem_x509_certificate(
            read_vector_file("certs/alipay_cert.crt").encode("ascii")
        )
        text = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()
    elif source.startswith("certs/"):
        text = read_vector_file(source)
    else:
        text = read_vector_file(key_path(source))
    assert keys.load_public_key(text).public_numbers() == reference.public_numbers()


# --- refused material ----------------------------------------------------------------------


def _corrupted_pem() -> str:
    """The real app key with its DER broken but its base64 still valid."""
    pem = _app_private_pem()
    lines = pem.splitlines()
    lines[5] = lines[5][::-1]
    return "\n".join(lines)


def _encrypted(fmt: str) -> str:
    key = keys.load_private_key(_app_private_pem())
    formats = {
        "pkcs8": serialization.PrivateFormat.PKCS8,
        "pkcs1": serialization.PrivateFormat.TraditionalOpenSSL,
    }
    return key.private_bytes(
        serialization.Encoding.PEM,
        formats[fmt],
        serialization.BestAvailableEncryption(b"passphrase"),
    ).decode("ascii")


_BAD_PRIVATE: dict[str, Callable[[], str]] = {
    "garbage": lambda: "this is certainly not an RSA key, just text",
    "binary garbage": lambda: "\x00\x01\x02 \u4e2d\u6587 MIIEvQIBADANBgkqhkiG9w0BAQEFAA",
    "bare base64 of nothing": lambda: base64.b64encode(b"\x30\x03\x02\x01\x00" * 20).decode(),
    "bare with a bad character": lambda: (
        read_vector_file(key_path("app_private_bare"))[:200]
        + "!"
        + read_vector_file(key_path("app_private_bare"))[200:]
    ),
    "empty": lambda: "",
    "blank": lambda: " \n\t ",
    "corrupted PEM": _corrupted_pem,
    "truncated PEM": lambda: _app_private_pem()[: len(_app_private_pem()) // 2],
    "public key given as private": lambda: read_vector_file(key_path("alipay_public")),
    "EC key": lambda: _pem(_ec_key()),
    "EC key bare": lambda: "".join(_pem(_ec_key()).splitlines()[1:-1]),
    "RSA-1024": lambda: _pem(_rsa_1024()),
    "RSA-1024 PKCS#1": lambda: _pem(_rsa_1024(), "pkcs1"),
    "encrypted PKCS#8": lambda: _encrypted("pkcs8"),
    "encrypted PKCS#1": lambda: _encrypted("pkcs1"),
}


@pytest.mark.parametrize("case", list(_BAD_PRIVATE))
def test_bad_private_key_is_a_config_error_naming_the_parameter_and_leaking_nothing(case):
    material = _BAD_PRIVATE[case]()
    with pytest.raises(ConfigError) as caught:
        keys.load_private_key(material, name="ALIPAY_APP_PRIVATE_KEY")
    assert caught.value.parameter == "ALIPAY_APP_PRIVATE_KEY"
    assert str(caught.value).startswith("ALIPAY_APP_PRIVATE_KEY: ")
    _assert_no_leak(caught.value, material)


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("EC key", "RSA"),
        ("RSA-1024", "1024"),
        ("encrypted PKCS#8", "encrypted"),
        ("encrypted PKCS#1", "encrypted"),
        ("empty", "empty"),
    ],
)
def test_bad_private_key_message_says_what_is_wrong(case, fragment):
    with pytest.raises(ConfigError, match=fragment):
        keys.load_private_key(_BAD_PRIVATE[case]())


_BAD_PUBLIC: dict[str, Callable[[], str]] = {
    "garbage": lambda: "definitely not a public key",
    "empty": lambda: "",
    "EC public key": lambda: (
        _ec_key()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    ),
    "truncated PEM": lambda: read_vector_file(key_path("alipay_public"))[:200],
    "bare, truncated": lambda: read_vector_file(key_path("alipay_public_bare")).strip()[:120],
}


@pytest.mark.parametrize("case", list(_BAD_PUBLIC))
def test_bad_public_key_is_a_config_error(case):
    material = _BAD_PUBLIC[case]()
    with pytest.raises(ConfigError) as caught:
        keys.load_public_key(material)
    assert caught.value.parameter == "alipay public key"
    _assert_no_leak(caught.value, material)


def test_credentials_name_the_bad_parameter(vectors):
    app_id = vectors["app_id"]
    alipay_public = read_vector_file(key_path("alipay_public"))
    secret = _corrupted_pem()
    with pytest.raises(ConfigError) as caught:
        AppCredentials.from_keys(app_id, secret, alipay_public)
    assert caught.value.parameter == "app private key"
    _assert_no_leak(caught.value, secret)
    with pytest.raises(ConfigError) as caught:
        AppCredentials.from_keys(app_id, _app_private_pem(), "garbage-garbage-garbage")
    assert caught.value.parameter == "alipay public key"
    with pytest.raises(ConfigError) as caught:
        AppCredentials.from_keys(app_id, _app_private_pem(), alipay_public, encrypt_key="bm9w")
    assert caught.value.parameter == "encrypt key"


# --- certificates --------------------------------------------------------------------------


def _vector_sn(file: str) -> str:
    (sn,) = (v["sn"] for v in vector_data()["cert_sn"] if v["file"] == file)
    return str(sn)


def test_real_root_bundle_skips_the_unparseable_ecdsa_cert():
    bundle = read_vector_file("certs/real/alipay_root_cert.crt")
    assert bundle.count("BEGIN CERTIFICATE") > 2
    # without the RSA filter, the bundle's ECDSA certificate does not even parse
    with pytest.raises(ConfigError, match="malformed"):
        keys.load_certificates(bundle, name="alipay root cert")
    rsa_certs = keys.load_certificates(bundle, rsa_only=True)
    assert len(rsa_certs) == len(_vector_sn("certs/real/alipay_root_cert.crt").split("_"))
    for cert in rsa_certs:
        assert cert.signature_algorithm_oid.dotted_string.startswith("1.2.840.113549.1.1")
    assert keys.root_certificate_sn(bundle) == "_".join(keys.certificate_sn(c) for c in rsa_certs)
    assert keys.root_certificate_sn(bundle) == _vector_sn("certs/real/alipay_root_cert.crt")


def test_test_root_bundle_keeps_rsa_certs_in_order():
    bundle = read_vector_file("certs/alipay_root_cert.crt")
    every = keys.load_certificates(bundle)
    rsa_certs = keys.load_certificates(bundle, rsa_only=True)
    assert len(every) == bundle.count("BEGIN CERTIFICATE")
    assert len(rsa_certs) < len(every)
    assert rsa_certs == [
        c for c in every if c.signature_algorithm_oid.dotted_string.startswith("1.2.840.113549.1.1")
    ]


def test_bundle_skips_non_certificate_blocks_and_keeps_order():
    app = read_vector_file("certs/app_cert.crt")
    alipay = read_vector_file("certs/alipay_cert.crt")
    bundle = "intro text\n" + read_vector_file(key_path("alipay_public")) + alipay + "\n" + app
    certs = keys.load_certificates(bundle)
    assert [keys.certificate_sn(c) for c in certs] == [
        _vector_sn("certs/alipay_cert.crt"),
        _vector_sn("certs/app_cert.crt"),
    ]
    assert keys.certificate_sn(keys.load_certificate(bundle)) == _vector_sn("certs/alipay_cert.crt")


@pytest.mark.parametrize(
    "bundle",
    [
        "",
        "no pem here",
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    ],
)
def test_bundle_without_certificates_is_a_config_error(bundle):
    with pytest.raises(ConfigError, match="no usable") as caught:
        keys.load_certificates(bundle, name="alipay cert")
    assert caught.value.parameter == "alipay cert"


def test_malformed_certificate_in_bundle_is_named_by_position():
    good = read_vector_file("certs/app_cert.crt")
    bad = "-----BEGIN CERTIFICATE-----\nMIIBbad!base64\n-----END CERTIFICATE-----\n"
    with pytest.raises(ConfigError, match="#2") as caught:
        keys.load_certificates(good + bad, name="app cert")
    assert caught.value.parameter == "app cert"
    not_der = "-----BEGIN CERTIFICATE-----\nAAAAAAAA\n-----END CERTIFICATE-----\n"
    with pytest.raises(ConfigError, match="#1"):
        keys.root_certificate_sn(not_der + good)


def test_cert_credentials_refuse_a_key_as_certificate(vectors):
    with pytest.raises(ConfigError) as caught:
        AppCredentials.from_certificates(
            vectors["app_id"],
            _app_private_pem(),
            read_vector_file(key_path("app_public")),
            read_vector_file("certs/alipay_cert.crt"),
            read_vector_file("certs/alipay_root_cert.crt"),
        )
    assert caught.value.parameter == "app cert"


# --- AppCredentials ------------------------------------------------------------------------


@pytest.mark.parametrize("app_id", ["", "abc", "2021 0001", "-1", "2021000100000001x", "2021.0001"])
def test_app_id_must_be_numeric(app_id):
    with pytest.raises(ConfigError) as caught:
        AppCredentials.from_keys(
            app_id, _app_private_pem(), read_vector_file(key_path("alipay_public"))
        )
    assert caught.value.parameter == "app_id"


@pytest.mark.parametrize("sign_type", ["RSA3", "rsa2", "", "SM2", "HMAC"])
def test_unknown_sign_type(sign_type, vectors):
    with pytest.raises(ConfigError) as caught:
        AppCredentials.from_keys(
            vectors["app_id"],
            _app_private_pem(),
            read_vector_file(key_path("alipay_public")),
            sign_type=sign_type,
        )
    assert caught.value.parameter == "sign_type"


def test_no_alipay_key_is_refused(app_credentials):
    with pytest.raises(ConfigError):
        AppCredentials(
            app_id=app_credentials.app_id,
            private_key=app_credentials.private_key,
            alipay_public_keys={},
        )


def _secret_strings(credentials: AppCredentials, encrypt_key: str | None) -> list[str]:
    private = credentials.private_key.private_numbers()
    secrets = [str(n) for n in (private.d, private.p, private.q, private.dmp1, private.iqmp)]
    secrets += [f"{n:x}" for n in (private.d, private.p, private.q)]
    secrets.append(_key_material(_app_private_pem())[40:80])
    if encrypt_key:
        raw = base64.b64decode(encrypt_key)
        secrets += [encrypt_key, repr(raw), raw.hex()]
    return secrets


def test_repr_shows_no_key_material(vectors, cert_credentials):
    encrypt_key = vectors["aes"][0]["key"]
    credentials = AppCredentials.from_keys(
        vectors["app_id"],
        _app_private_pem(),
        read_vector_file(key_path("alipay_public")),
        encrypt_key=encrypt_key,
    )
    for creds, aes in ((credentials, encrypt_key), (cert_credentials, None)):
        text = repr(creds) + str(creds)
        assert creds.app_id in text
        for secret in _secret_strings(creds, aes):
            assert secret[:16] not in text
        assert "RSAPrivateKey" not in text
        assert "encrypt_key" not in text
