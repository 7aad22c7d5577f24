"""A loopback ISV notify endpoint for the simulator's notifications (the ``receiver`` fixture)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from appauth.alipay.signing import parse_form
from appauth_dev.loopback import serve_loopback


@dataclass
class NotifyReceiver:
    """Records every POST (lower-cased headers, body); answers the queued (status, body) pairs,
    then ``default``."""

    default: tuple[int, str] = (200, "success")
    queued: list[tuple[int, str]] = field(default_factory=list)
    received: list[tuple[dict[str, str], str]] = field(default_factory=list)
    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/alipay/notify"

    @property
    def bodies(self) -> list[str]:
        with self.lock:
            return [body for _headers, body in self.received]

    def params(self) -> list[dict[str, str]]:
        return [parse_form(body) for body in self.bodies]

    def record(self, headers: dict[str, str], body: str) -> tuple[int, str]:
        """Note one delivery; the answer it gets."""
        with self.lock:
            self.received.append((headers, body))
            return self.queued.pop(0) if self.queued else self.default


@contextmanager
def notify_receiver() -> Iterator[NotifyReceiver]:
    """A :class:`NotifyReceiver` listening on a free loopback port until the block ends."""
    caught = NotifyReceiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {name.lower(): value for name, value in self.headers.items()}
            status, text = caught.record(headers, body.decode("utf-8"))
            answer = text.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            return  # no access log in the test output

    with serve_loopback(Handler) as serving:
        caught.port = serving.port
        yield caught
