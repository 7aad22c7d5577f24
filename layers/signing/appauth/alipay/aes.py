"""AES content encryption (``encrypt_type=AES``): AES-CBC, zero IV, PKCS#7, base64 ciphertext."""

from __future__ import annotations

import base64
import binascii

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from appauth.alipay.errors import ConfigError, SignatureError

_ZERO_IV = bytes(16)
_KEY_SIZES = (16, 24, 32)


def load_encrypt_key(material: str | bytes, *, name: str = "encrypt key") -> bytes:
    """Decode the console's base64 EncryptKey into raw AES key bytes."""
    text = material.decode("ascii", "replace") if isinstance(material, bytes) else material
    try:
        key = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(
            "is not base64; copy the AES key from the Alipay console", parameter=name
        ) from None
    if len(key) not in _KEY_SIZES:
        raise ConfigError(f"decodes to {len(key)} bytes; an AES key is 16 bytes", parameter=name)
    return key


def aes_encrypt(plaintext: str, key: bytes) -> str:
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext.encode("utf-8")) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(_ZERO_IV)).encryptor()
    return base64.b64encode(encryptor.update(padded) + encryptor.finalize()).decode("ascii")


def aes_decrypt(ciphertext: str, key: bytes) -> str:
    """Decrypt a base64 ciphertext; anything that does not decrypt cleanly is a SignatureError."""
    try:
        raw = base64.b64decode(ciphertext, validate=True)
        decryptor = Cipher(algorithms.AES(key), modes.CBC(_ZERO_IV)).decryptor()
        padded = decryptor.update(raw) + decryptor.finalize()
        unpadder = padding.PKCS7(128).unpadder()
        return (unpadder.update(padded) + unpadder.finalize()).decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise SignatureError(
            "encrypted content does not decrypt with the configured AES key"
        ) from None
