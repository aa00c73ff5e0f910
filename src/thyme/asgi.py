"""HTTP serving shared by thyme's servers (`thyme serve`, `thyme serve --raw`, `thyme sandbox serve`).

Each server is a FastAPI app (routes, pydantic request models, `/docs`) that uvicorn serves, as vLLM and
SGLang do. This module holds what all three need once:

- `UvicornServer` runs an app in a background thread on a socket bound at construction (so port 0 works
  and a taken port fails at once), and closes it gracefully: stop accepting, close idle keep-alive
  connections, let requests in flight finish (up to `drain_s`), then cut what is left.
- `serve_until_signal` drives a server from the command line: SIGINT or SIGTERM starts that graceful close.
- `BodyLimit`, an ASGI middleware, refuses request bodies above a byte limit with a 413 (reading and dropping
  a moderately oversized body first, so a client still sending gets the reply instead of a reset).
- `bearer_ok` compares bearer tokens in constant time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import logging
import signal
import socket
import threading
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)

DEFAULT_DRAIN_S = 30.0  # requests in flight may finish for this long after SIGTERM (Kubernetes' grace period)
DRAIN_CAP_BYTES = 256 << 20  # an oversized body up to this size is read and dropped so the 413 arrives
BACKLOG = 1024
THREADS = 256  # blocking route handlers (a sandbox run, a whole agent loop) run in this many threads


def check_port(port: int, name: str = "port") -> None:
    """A one-line ValueError unless `port` is a TCP port (1-65535) or 0 (the system picks a free one);
    servers call it before loading a model, so a typo fails at once."""
    if not 0 <= port <= 65535:
        raise ValueError(f"{name} {port} is not a TCP port; use 1-65535, or 0 to pick a free one")


def bearer_ok(authorization: str | None, token: str | None) -> bool:
    """No token configured, or the header is exactly `Bearer <token>` (compared in constant time)."""
    if token is None:
        return True
    scheme, _, value = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token.encode())


def _listen_socket(host: str, port: int) -> socket.socket:
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    except ValueError:  # a host name
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on connections whose socket says TCP, and without it
    # a reply written as headers then body waits ~40 ms for the client's delayed ACK (Nagle)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


class UvicornServer:
    """An ASGI app served by uvicorn in a background thread.

    keepalive_s: idle keep-alive connections are closed after this long.
    drain_s:     on `close()`, how long requests in flight may take to finish before they are cut.
    """

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        keepalive_s: float = 75.0,
        drain_s: float = DEFAULT_DRAIN_S,
        name: str = "thyme-http",
    ) -> None:
        import uvicorn

        self._sock = _listen_socket(host, port)
        self._address = self._sock.getsockname()[:2]  # kept: `url` still answers after close()
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_keep_alive=max(1, round(keepalive_s)),
            timeout_graceful_shutdown=max(1, round(drain_s)),
            backlog=BACKLOG,
            server_header=False,
        )
        self._server = uvicorn.Server(config)
        self._name = name
        self._thread: threading.Thread | None = None
        self._failed: BaseException | None = None
        self._closed = False

    @property
    def url(self) -> str:
        host, port = self._address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def start(self) -> UvicornServer:
        """Serve in a background thread; returns once the server accepts connections."""
        self._thread = threading.Thread(target=self._serve, name=self._name, daemon=True)
        self._thread.start()
        while not self._server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"the HTTP server did not start: {self._failed!r}")
            self._thread.join(0.01)
        return self

    def _serve(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported by start(); a crash after start is logged
            self._failed = exc
            log.exception("the HTTP server stopped")

    async def _run(self) -> None:
        from anyio import to_thread

        to_thread.current_default_thread_limiter().total_tokens = THREADS
        await self._server.serve(sockets=[self._sock])

    def close(self, drain: bool = True) -> None:
        """Stop accepting and close idle connections; with `drain`, wait for requests in flight (up to
        `drain_s`), otherwise cut them at once. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if not drain:
            self._server.force_exit = True
        self._server.should_exit = True
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        with contextlib.suppress(OSError):
            self._sock.close()

    def __enter__(self) -> UvicornServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
    """Start `server`, call `on_ready(url)`, wait for SIGINT or SIGTERM, then close it gracefully
    (requests in flight finish) and call `also_close` (e.g. the model it served).

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
        log.info("stopping: finishing the requests in flight")
    finally:
        server.close()
        if also_close is not None:
            also_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


class BodyLimit:
    """ASGI middleware: a request body above `limit` bytes gets `status` 413 with `error(message)` as JSON.

    A declared Content-Length above the limit is refused before the app runs (the body, up to
    `DRAIN_CAP_BYTES`, is read and dropped first); a chunked body is read first, and refused as soon as it
    passes the limit.
    """

    def __init__(self, app: ASGIApp, limit: int, error: Callable[[str], dict[str, Any]]) -> None:
        self.app, self.limit, self.error = app, limit, error

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                await self._refuse(send, 400, "Content-Length is not a number")
                return
            if declared > self.limit:
                if declared <= DRAIN_CAP_BYTES:
                    await self._drain(receive)
                await self._refuse(send, 413, self._too_large(f"({declared} bytes) "))
                return
            await self.app(scope, receive, send)
            return
        chunks, seen = [], 0  # a chunked body: buffered up to the limit, then handed to the app
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away
            chunks.append(message.get("body", b""))
            seen += len(chunks[-1])
            if seen > self.limit:
                await self._refuse(send, 413, self._too_large(""))
                return
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def _too_large(self, size: str) -> str:
        return f"the request body {size}exceeds the server's limit of {self.limit} bytes"

    @staticmethod
    async def _drain(receive: Callable) -> None:
        while True:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body"):
                return

    async def _refuse(self, send: Callable, status: int, message: str) -> None:
        body = json.dumps(self.error(message), separators=(",", ":")).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
