"""Stdlib HTTP plumbing shared by thyme's servers (`thyme sandbox serve`, the generation server).

Both servers are `http.server.ThreadingHTTPServer`s that must close cleanly (drop idle keep-alive
connections on shutdown, treat a client that hung up as routine, stop on SIGINT/SIGTERM from the command
line) and handle requests the same careful way (bearer tokens compared in constant time, bodies read only
up to a limit, JSON replies with the right headers). This module holds that once.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

log = logging.getLogger(__name__)


class TrackingHTTPServer(ThreadingHTTPServer):
    """Threads per connection; tracks open connections so `shutdown_listener()` drops idle keep-alives."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        self._serving = False
        super().__init__(*args, **kwargs)

    def serve_forever(self, poll_interval: float = 0.5) -> None:
        self._serving = True
        super().serve_forever(poll_interval)

    def finish_request(self, request: Any, client_address: Any) -> None:
        with self._conn_lock:
            self.connections.add(request)
        try:
            super().finish_request(request, client_address)
        finally:
            with self._conn_lock:
                self.connections.discard(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-reply is routine; anything else is logged with its traceback."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            log.debug("connection from %s dropped", client_address)
        else:
            log.exception("unexpected error serving %s", client_address)

    def shutdown_listener(self) -> None:
        """Stop accepting, close the listening socket, and cut every open connection."""
        if self._serving:
            self.shutdown()
        self.server_close()
        with self._conn_lock:
            conns = list(self.connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)


def check_port(port: int, name: str = "port") -> None:
    """A one-line ValueError unless `port` is a TCP port (1-65535) or 0 (the system picks a free one);
    servers call it before loading a model, so a typo fails at once."""
    if not 0 <= port <= 65535:
        raise ValueError(f"{name} {port} is not a TCP port; use 1-65535, or 0 to pick a free one")


class Serving(Protocol):
    """A server `serve_until_signal` can drive: `start()` in the background, `url`, `close()`."""

    url: str

    def start(self) -> object: ...

    def close(self) -> None: ...


def serve_until_signal(
    server: Serving,
    on_ready: Callable[[str], None] | None = None,
    *,
    also_close: Callable[[], None] | None = None,
) -> None:
    """Start `server`, call `on_ready(url)`, wait for SIGINT or SIGTERM, then close it (and `also_close`,
    e.g. the model it served).

    Must run in the main thread (signal handlers); the previous handlers are restored afterwards.
    """
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
        if on_ready is not None:
            on_ready(server.url)
        while not stop.wait(1.0):
            pass
    finally:
        server.close()
        if also_close is not None:
            also_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


DRAIN_CAP_BYTES = 256 << 20  # an oversized body up to this size is read and dropped so the 413 arrives


class BodyError(Exception):
    """The request body cannot be read (status, and a sentence saying what to send instead)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class JSONHandler(BaseHTTPRequestHandler):
    """Request-handler helpers both servers use: bearer check, bounded body reading, JSON replies.

    realm: named in `WWW-Authenticate` on 401 replies.
    """

    realm = "thyme"

    def bearer_ok(self, token: str | None) -> bool:
        """No token configured, or the request carries exactly `Authorization: Bearer <token>`."""
        if token is None:
            return True
        scheme, _, value = self.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())

    def read_body(self, limit: int) -> bytes:
        """The body, at most `limit` bytes; else `BodyError` (400/411/413) and the connection closes."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise BodyError(411, "chunked request bodies are not supported; send a Content-Length")
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            self.close_connection = True
            raise BodyError(400, "Content-Length is not a number") from None
        if length < 0:
            self.close_connection = True
            raise BodyError(400, "Content-Length is negative")
        if length > limit:
            self.close_connection = True
            self._drain(length)
            raise BodyError(
                413, f"the request body ({length} bytes) exceeds the server's limit of {limit} bytes"
            )
        return self.rfile.read(length) if length else b""

    def _drain(self, length: int) -> None:
        """Read and drop an oversized body so the client, still sending, gets the 413 instead of a reset."""
        if length > DRAIN_CAP_BYTES:
            return
        with contextlib.suppress(OSError):
            while length > 0:
                chunk = self.rfile.read(min(length, 1 << 20))
                if not chunk:
                    return
                length -= len(chunk)

    def send_json(self, status: int, payload: dict[str, Any]) -> None:
        self.send_bytes(status, json.dumps(payload, separators=(",", ":")).encode(), "application/json")

    def send_bytes(self, status: int, data: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", f'Bearer realm="{self.realm}"')
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)
