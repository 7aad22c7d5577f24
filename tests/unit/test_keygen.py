"""``appauth keygen`` as functions: the key, its four files, their modes, and overwrite refusal."""

from __future__ import annotations

import base64
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from appauth.alipay.errors import ConfigError
from appauth.alipay.keys import load_private_key, load_public_key
from appauth.alipay.signing import rsa_sign, rsa_verify
from appauth_dev import keygen

PRIVATE_FILES = ("app_private_key.pem", "app_private_key.txt")
PUBLIC_FILES = ("app_public_key.pem", "app_public_key.txt")
ALL_FILES = PRIVATE_FILES + PUBLIC_FILES


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _contents(directory: Path) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in ALL_FILES}


def _public_numbers(key: rsa.RSAPrivateKey | rsa.RSAPublicKey) -> rsa.RSAPublicNumbers:
    public = key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
    return public.public_numbers()


@pytest.fixture
def umask() -> Iterator[None]:
    """A permissive umask, so a test proves the modes do not depend on the user's umask."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def test_generate_private_key_is_rsa_2048_with_f4() -> None:
    key = keygen.generate_private_key()
    assert key.key_size == keygen.KEY_BITS == 2048
    assert key.private_numbers().public_numbers.e == 65537


def test_private_pkcs8_pem_is_unencrypted_pkcs8_that_the_layer_loads() -> None:
    key = keygen.generate_private_key()
    pem = keygen.private_pkcs8_pem(key)
    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS#8, not "RSA PRIVATE KEY"
    assert pem.rstrip().endswith(b"-----END PRIVATE KEY-----")
    assert b"ENCRYPTED" not in pem
    assert _public_numbers(load_private_key(pem)) == _public_numbers(key)


def test_public_pem_is_spki_of_the_same_key() -> None:
    key = keygen.generate_private_key()
    pem = keygen.public_pem(key)
    assert pem.startswith(b"-----BEGIN PUBLIC KEY-----\n")
    assert _public_numbers(load_public_key(pem)) == _public_numbers(key)


def test_write_key_pair_writes_four_files_of_one_key(tmp_path: Path) -> None:
    out = tmp_path / "nested" / "keys"  # created, parents included
    written = keygen.write_key_pair(out)

    assert [path.name for path, _ in written] == list(ALL_FILES)
    assert all(path.parent == out and purpose for path, purpose in written)
    assert sorted(p.name for p in out.iterdir()) == sorted(ALL_FILES)

    private_pem = (out / "app_private_key.pem").read_bytes()
    private_txt = (out / "app_private_key.txt").read_bytes()
    public_pem = (out / "app_public_key.pem").read_bytes()
    public_txt = (out / "app_public_key.txt").read_bytes()

    # The .txt files are one line of strict base64 (DER), as the Alipay key tool and console use.
    for text in (private_txt, public_txt):
        assert text.endswith(b"\n")
        assert text.count(b"\n") == 1
        assert b"-----" not in text
        base64.b64decode(text.strip(), validate=True)
    assert serialization.load_der_private_key(base64.b64decode(private_txt), None)
    assert serialization.load_der_public_key(base64.b64decode(public_txt))

    key = load_private_key(private_pem)
    assert key.key_size == 2048
    assert _public_numbers(load_private_key(private_txt)) == _public_numbers(key)
    assert _public_numbers(load_public_key(public_pem)) == _public_numbers(key)
    assert _public_numbers(load_public_key(public_txt)) == _public_numbers(key)


def test_a_signature_from_the_private_file_verifies_with_the_public_line(tmp_path: Path) -> None:
    keygen.write_key_pair(tmp_path)
    content = "app_id=2021000100000001&method=alipay.open.auth.token.app&sign_type=RSA2"
    for private_name in PRIVATE_FILES:
        signature = rsa_sign(content, load_private_key((tmp_path / private_name).read_bytes()))
        for public_name in PUBLIC_FILES:
            public = load_public_key((tmp_path / public_name).read_bytes())
            assert rsa_verify(content, signature, public)
            assert not rsa_verify(content + "&x=1", signature, public)


@pytest.mark.usefixtures("umask")
def test_private_files_are_0600_and_public_files_0644_whatever_the_umask(tmp_path: Path) -> None:
    keygen.write_key_pair(tmp_path)
    assert {name: _mode(tmp_path / name) for name in ALL_FILES} == {
        "app_private_key.pem": 0o600,
        "app_private_key.txt": 0o600,
        "app_public_key.pem": 0o644,
        "app_public_key.txt": 0o644,
    }


def test_a_strict_umask_does_not_hide_the_public_key(tmp_path: Path) -> None:
    previous = os.umask(0o077)
    try:
        keygen.write_key_pair(tmp_path)
    finally:
        os.umask(previous)
    assert _mode(tmp_path / "app_public_key.txt") == 0o644
    assert _mode(tmp_path / "app_private_key.pem") == 0o600


def test_refuses_to_overwrite_without_force_and_changes_nothing(tmp_path: Path) -> None:
    keygen.write_key_pair(tmp_path)
    before = _contents(tmp_path)

    with pytest.raises(ConfigError, match="--force") as caught:
        keygen.write_key_pair(tmp_path)

    assert all(name in str(caught.value) for name in ALL_FILES)
    assert _contents(tmp_path) == before


def test_one_existing_file_is_enough_to_refuse_and_no_file_is_written(tmp_path: Path) -> None:
    (tmp_path / "app_public_key.txt").write_text("keep me\n", encoding="utf-8")

    with pytest.raises(ConfigError, match=r"app_public_key\.txt already exist"):
        keygen.write_key_pair(tmp_path)

    assert [p.name for p in tmp_path.iterdir()] == ["app_public_key.txt"]
    assert (tmp_path / "app_public_key.txt").read_text(encoding="utf-8") == "keep me\n"


def test_force_replaces_every_file_with_a_new_key_and_restores_modes(tmp_path: Path) -> None:
    keygen.write_key_pair(tmp_path)
    before = _contents(tmp_path)
    old_numbers = _public_numbers(load_private_key(before["app_private_key.pem"]))
    (tmp_path / "app_private_key.pem").chmod(0o644)  # e.g. loosened by hand since

    keygen.write_key_pair(tmp_path, force=True)

    after = _contents(tmp_path)
    assert all(after[name] != before[name] for name in ALL_FILES)
    new_key = load_private_key(after["app_private_key.pem"])
    assert _public_numbers(new_key) != old_numbers
    assert _public_numbers(load_public_key(after["app_public_key.txt"])) == _public_numbers(new_key)
    assert _mode(tmp_path / "app_private_key.pem") == 0o600


def test_force_into_an_empty_directory_just_writes(tmp_path: Path) -> None:
    written = keygen.write_key_pair(tmp_path, force=True)
    assert len(written) == 4


def test_the_default_folder_and_private_key_files_are_git_ignored(tmp_path: Path) -> None:
    """`appauth keygen` with no --out writes into keys/: the repository's .gitignore covers it,
    and the private key files by name wherever they are written (but not the test vectors)."""
    git = shutil.which("git")
    root = Path(__file__).resolve().parents[2]
    if git is None or not (root / ".git").exists():
        pytest.skip("needs git and a checkout")
    written = [path.name for path, _ in keygen.write_key_pair(tmp_path)]
    paths = [f"{keygen.DEFAULT_KEY_DIR}/{name}" for name in written]
    paths += [f"devtools/{name}" for name in PRIVATE_FILES]

    def ignored(path: str) -> bool:
        check = subprocess.run(  # noqa: S603 - git, fixed arguments
            [git, "check-ignore", "--no-index", "-q", path], cwd=root, check=False, timeout=30
        )
        assert check.returncode in (0, 1), check
        return check.returncode == 0

    assert [path for path in paths if not ignored(path)] == []
    assert not ignored("tests/vectors/keys/app_private_pkcs8.pem")
    assert not ignored(f"devtools/{PUBLIC_FILES[0]}")
