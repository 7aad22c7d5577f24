"""An HTTP server serving in a background thread until it is stopped.

The local HTTP front, the simulator and the tests' small endpoints (notify receivers, proxies)
all serve this way: :func:`serve_loopback` for a handler on a free port of ``127.0.0.1``,
:class:`BackgroundServer` for a server built otherwise (the simulator's own server class).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# serve_forever notices shutdown() only between polls: a short poll makes stopping quick.
POLL_SECONDS = 0.05
JOIN_SECONDS = 5.0


class BackgroundServer:
    """``server`` serving in a daemon thread from construction until :meth:`stop`: shut down,
    its socket closed, its thread joined."""

    def __init__(self, server: ThreadingHTTPServer, *, name: str | None = None) -> None:
        self.server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(POLL_SECONDS,), name=name, daemon=True
        )
        self._thread.start()

    @property
    def host(self) -> str:
        return str(self.server.server_address[0])

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        """``http://host:port``, no trailing slash."""
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=JOIN_SECONDS)


@contextmanager
def serve_loopback(handler_class: type[BaseHTTPRequestHandler]) -> Iterator[BackgroundServer]:
    """``handler_class`` on a free port of ``127.0.0.1`` (a thread per request) until the block
    ends."""
    serving = BackgroundServer(ThreadingHTTPServer(("127.0.0.1", 0), handler_class))
    try:
        yield serving
    finally:
        serving.stop()
