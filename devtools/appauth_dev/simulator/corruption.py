"""Answers damaged on their way to the client, to test its rejection paths over real HTTP.

Each fault takes the answer the simulator computed (already signed) and returns what the client
receives instead:

- ``tamper``: one character inside a string of the signed content changes (v2: inside the
  method node; v3: inside the body), after signing. The body stays valid JSON, so only the
  signature check can catch it.
- ``wrong_key``: the same content, signed with a freshly generated RSA key that is not Alipay's.
- ``drop_sign``: no signature (v2: the ``sign`` member is removed; v3: the ``alipay-signature``
  header is removed, ``alipay-timestamp`` and ``alipay-nonce`` stay).
- ``garbage``: HTTP 200 with bytes that are not JSON (nor UTF-8), headers otherwise unchanged.
- ``truncate``: the first half of the body, with a Content-Length that matches the cut body.
- ``oversized``: HTTP 200, the valid body followed by whitespace to more than 1 MiB (still
  valid JSON for v2: only a size limit rejects it).
- ``html_502``: HTTP 502 with an HTML page from a "proxy", no Alipay headers.

:func:`proxy_503` is the ``http_503`` fault: a load balancer's bare 503 before the call reaches
Alipay.
"""

from __future__ import annotations

import json
import threading

from cryptography.hazmat.primitives.asymmetric import rsa

from appauth.alipay.signing import rsa_sign, scan_members
from appauth.alipay.signing_v3 import response_sign_content

from .reply import Reply

OVERSIZED_BYTES = 1024 * 1024 + 4096
GARBAGE = b"\x1f\x8b\x08\x00\xff\xfe<<not json>>\x00\x9c garbage \xc3\x28"
PROXY_PAGE = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
PROXY_503_PAGE = (
    b"<html>\r\n<head><title>503 Service Temporarily Unavailable</title></head>\r\n<body>\r\n"
    b"<center><h1>503 Service Temporarily Unavailable</h1></center>\r\n"
    b"<hr><center>Tengine</center>\r\n</body>\r\n</html>\r\n"
)
_ALIPAY_HEADERS = ("alipay-trace-id", "alipay-timestamp", "alipay-nonce", "alipay-signature")

_key_lock = threading.Lock()
_wrong_key: rsa.RSAPrivateKey | None = None


def wrong_key() -> rsa.RSAPrivateKey:
    """An RSA key generated on first use (not Alipay's), kept for the process."""
    global _wrong_key  # noqa: PLW0603 - generated once, lazily: key generation is slow
    with _key_lock:
        if _wrong_key is None:
            _wrong_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return _wrong_key


def corrupt(reply: Reply, fault: str, *, v3: bool) -> Reply:
    """``reply`` as the client receives it after ``fault``; outcome ``corrupted``."""
    body, headers, status = reply.body, dict(reply.headers), reply.status
    if fault == "tamper":
        body = _tamper_v3(body) if v3 else _tamper_v2(body)
    elif fault == "wrong_key":
        if v3:
            headers = _resign_v3(body, headers)
        else:
            body = _resign_v2(body)
    elif fault == "drop_sign":
        if v3:
            headers = {k: v for k, v in headers.items() if k.lower() != "alipay-signature"}
        else:
            body = _drop_sign_v2(body)
    elif fault == "garbage":
        status, body = 200, GARBAGE
    elif fault == "truncate":
        body = body[: len(body) // 2]
    elif fault == "oversized":
        status, body = 200, body + b" " * (OVERSIZED_BYTES - len(body))
    elif fault == "html_502":
        status, body = 502, PROXY_PAGE
        headers = {
            k: v for k, v in headers.items() if k.lower() not in (*_ALIPAY_HEADERS, "alipay-sn")
        }
        headers["Content-Type"] = "text/html"
        headers["Server"] = "nginx"
    else:
        raise ValueError(f"unknown response fault {fault!r}")
    return Reply(status, body, headers, outcome="corrupted")


def proxy_503() -> Reply:
    """A bare HTTP 503 from a proxy: HTML, no Alipay signature or trace headers."""
    return Reply(
        503, PROXY_503_PAGE, {"Content-Type": "text/html", "Server": "Tengine"}, outcome="http_503"
    )


def _flip(char: str) -> str:
    """Another character of the same class, so the JSON stays valid."""
    if char.isdigit():
        return str((int(char) + 1) % 10)
    base = ord("a") if char.islower() else ord("A")
    return chr(base + (ord(char) - base + 1) % 26)


def _tamper_text(text: str, start: int, end: int) -> str:
    """Flip the middle ASCII letter or digit of the string values in text[start:end].

    Keys are left alone unless there is no value to change, so the JSON stays valid and parses
    to the same shape with one value altered (e.g. a token swapped in transit).
    """
    values: list[int] = []
    keys: list[int] = []
    index = start
    while index < end:
        if text[index] != '"':
            index += 1
            continue
        chars: list[int] = []
        index += 1
        while text[index] != '"':
            if text[index] == "\\":
                index += 6 if text[index + 1] == "u" else 2
                continue
            if text[index].isascii() and text[index].isalnum():
                chars.append(index)
            index += 1
        index += 1
        after = index
        while after < end and text[after] in " \t\r\n":
            after += 1
        (keys if after < end and text[after] == ":" else values).extend(chars)
    candidates = values or keys
    if not candidates:
        raise ValueError("nothing to tamper with")
    at = candidates[len(candidates) // 2]
    return text[:at] + _flip(text[at]) + text[at + 1 :]


def _node_span(text: str) -> tuple[int, int]:
    """Where the signed node (the first member: the method node or error_response) sits."""
    first = next(iter(scan_members(text).values()))[0]
    start = text.index(first.raw)
    return start, start + len(first.raw)


def _tamper_v2(body: bytes) -> bytes:
    text = body.decode("utf-8")
    start, end = _node_span(text)
    return _tamper_text(text, start, end).encode("utf-8")


def _tamper_v3(body: bytes) -> bytes:
    text = body.decode("utf-8")
    return _tamper_text(text, 0, len(text)).encode("utf-8")


def _sign_member(text: str) -> tuple[int, int]:
    """The span of ``,"sign":<value>`` (always the last member of a simulator answer)."""
    members = scan_members(text)
    raw = members["sign"][0].raw
    start = text.rindex(',"sign":' + raw)
    return start, start + len(',"sign":') + len(raw)


def _resign_v2(body: bytes) -> bytes:
    text = body.decode("utf-8")
    start, end = _node_span(text)
    node = text[start:end]
    escaped = "\\/" in text
    signature = json.dumps(rsa_sign(node.replace("\\/", "/"), wrong_key()))
    if escaped:
        signature = signature.replace("/", "\\/")
    sign_start, sign_end = _sign_member(text)
    return (text[:sign_start] + ',"sign":' + signature + text[sign_end:]).encode("utf-8")


def _drop_sign_v2(body: bytes) -> bytes:
    text = body.decode("utf-8")
    start, end = _sign_member(text)
    return (text[:start] + text[end:]).encode("utf-8")


def _resign_v3(body: bytes, headers: dict[str, str]) -> dict[str, str]:
    signature = rsa_sign(
        response_sign_content(
            headers["alipay-timestamp"], headers["alipay-nonce"], body.decode("utf-8")
        ),
        wrong_key(),
    )
    return {**headers, "alipay-signature": signature}
