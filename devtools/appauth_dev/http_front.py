"""A loopback HTTP front for the callback function: what API Gateway's HTTP API does, locally.

Each request becomes an HTTP API (payload 2.0) event for the handler, and the handler's answer
becomes the HTTP response. Bodies are handed over base64-encoded (``isBase64Encoded``), as API
Gateway does for form posts, so the handler's decoding is the one it runs in AWS. Invocations
are serialized: one Lambda container handles one request at a time.
"""

from __future__ import annotations

import base64
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from appauth_dev.local_service import FakeContext
from appauth_dev.loopback import serve_loopback

Handler = Callable[[dict[str, Any], Any], dict[str, Any]]
MAX_BODY_BYTES = 10 * 1024 * 1024  # API Gateway's payload limit


def api_gateway_event(
    method: str, target: str, headers: dict[str, str], body: bytes | None, host: str
) -> dict[str, Any]:
    """The HTTP API v2 event for one request (the fields the handlers and Powertools read)."""
    parts = urlsplit(target)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": f"{method} {parts.path}",
        "rawPath": parts.path,
        "rawQueryString": parts.query,
        "headers": {name.lower(): value for name, value in headers.items()},
        "queryStringParameters": query or None,
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "local",
            "domainName": host,
            "domainPrefix": host.split(".", maxsplit=1)[0],
            "http": {
                "method": method,
                "path": parts.path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": headers.get("User-Agent", ""),
            },
            "requestId": str(uuid.uuid4()),
            "routeKey": f"{method} {parts.path}",
            "stage": "$default",
            "time": "01/Dec/2026:00:00:00 +0000",
            "timeEpoch": 0,
        },
        "isBase64Encoded": False,
    }
    if body:
        event["body"] = base64.b64encode(body).decode("ascii")
        event["isBase64Encoded"] = True
    return event


@dataclass
class RunningFront:
    url: str
    server: ThreadingHTTPServer
    requests: list[dict[str, Any]]  # method, path, status of each request (never a body)


@contextmanager
def http_front(
    handler: Handler, *, function_name: str = "appauth-local-callback"
) -> Iterator[RunningFront]:
    """Serve ``handler`` on a free loopback port until the block ends."""
    lock = threading.Lock()
    requests: list[dict[str, Any]] = []

    class Front(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self.send_error(413)
                return
            body = self.rfile.read(length) if length else None
            host = self.headers.get("Host") or "127.0.0.1"
            event = api_gateway_event(
                self.command, self.path, dict(self.headers.items()), body, host
            )
            with lock:
                answer = handler(event, FakeContext(function_name=function_name))
            status = int(answer.get("statusCode", 200))
            raw = answer.get("body") or ""
            data = base64.b64decode(raw) if answer.get("isBase64Encoded") else raw.encode()
            requests.append({"method": self.command, "path": event["rawPath"], "status": status})
            self.send_response(status)
            for name, value in (answer.get("headers") or {}).items():
                self.send_header(name, str(value))
            for cookie in answer.get("cookies") or []:
                self.send_header("Set-Cookie", cookie)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _serve  # noqa: N815 (http.server's method names)

        def log_message(self, format: str, *args: Any) -> None:
            return  # no access log: query strings hold codes and states

    with serve_loopback(Front) as serving:
        yield RunningFront(serving.url, serving.server, requests)
