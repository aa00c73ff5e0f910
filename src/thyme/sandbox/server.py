"""The sandbox as a service: an HTTP/1.1 JSON API over one `Sandbox`, so rollout workers on many nodes can
share sandbox hosts.

    thyme sandbox serve --port 8765 --token-file token.txt        # or, in Python:
    with Sandbox(SandboxConfig()) as sandbox, SandboxServer(sandbox, ServerConfig(port=0)) as server:
        server.start(); print(server.url)

Endpoints (JSON bodies; errors are `{"error": "one sentence"}` with the matching status code):
    GET    /v1/health                        status, `isolation` layers, limits (no token needed)
    POST   /v1/sessions                      {"inputs": [{"name": "a.jpg", "data": "<base64>"}]} -> {"id",
                                             "paths": where the code sees each input}
    POST   /v1/sessions/{id}/run             {"code": "...", "images": "base64" | "url"} -> every
                                             `ExecutionResult` field; images as base64 or as URLs below
    GET    /v1/sessions/{id}/images/{name}   the bytes of an image a `run` returned as a URL
    POST   /v1/sessions/{id}/fork            -> {"id"} of an independent copy of the state
    DELETE /v1/sessions/{id}                 close the session (waits for a call in flight)
Status codes: 400 malformed request, 401 missing or wrong bearer token, 404 unknown session or endpoint,
409 the session is running another call, 413 request above the size limit, 503 sandbox cannot serve.

Why the standard library: `ThreadingHTTPServer` with keep-alive gives one thread per connection, and a
`run` spends its time waiting on a worker process, not in Python, so threads suffice (see
benchmarks/service_bench.py for the measured throughput against the in-process pool).
What the server does *not* do: TLS (put it behind a TLS proxy when it leaves the host) or per-tenant
isolation between token holders (one token, one tenant; sessions are named by unguessable ids).
"""

from __future__ import annotations

import json
import logging
import pathlib
import re
import threading
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from thyme.httpd import BodyError, JSONHandler, TrackingHTTPServer, serve_until_signal
from thyme.sandbox.core import Sandbox
from thyme.sandbox.service import API, Refused, ServerConfig, SessionService

__all__ = ["API", "SandboxServer", "ServerConfig", "read_token_file", "serve_until_signal"]

log = logging.getLogger(__name__)

_SESSION_ID = r"[0-9a-f]{24}"


def read_token_file(path: pathlib.Path) -> str:
    """The bearer token stored in `path` (surrounding whitespace dropped); a clear error when unusable."""
    try:
        token = pathlib.Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the token file {path}: {exc}") from None
    if not token or any(ch.isspace() for ch in token):
        raise ValueError(f"the token file {path} must hold one token (non-empty, no inner whitespace)")
    return token


class SandboxServer:
    """Serves the sessions of one `Sandbox` over HTTP. The caller owns the sandbox; `close()` closes every
    session this server opened, stops listening and drops open connections."""

    def __init__(self, sandbox: Sandbox, config: ServerConfig | None = None) -> None:
        self.config = config if config is not None else ServerConfig()
        self.service = SessionService(sandbox, self.config)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        try:
            self._httpd = _HTTPServer((self.config.host, self.config.port), _Handler)
        except OSError:
            self.service.close()
            raise
        self._httpd.app = self
        self._spawn(self._sweep_loop, "thyme-serve-ttl")

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> SandboxServer:
        """Serve in a background thread and return at once (tests, benchmarks, embedding)."""
        self._spawn(self.serve_forever, "thyme-serve-http")
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until `close()` is called from another one."""
        self._httpd.serve_forever(poll_interval=0.2)

    def close(self) -> None:
        """Stop listening, drop open connections, close every session; idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._httpd.shutdown_listener()
        self.service.close()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=5)

    def __enter__(self) -> SandboxServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _sweep_loop(self) -> None:
        interval = min(max(self.config.idle_ttl_s / 4, 0.05), 5.0)
        while not self._stop.wait(interval):
            try:
                self.service.sweep()
            except Exception:  # the sweeper must outlive one bad close
                log.exception("idle-session sweep failed")


class _HTTPServer(TrackingHTTPServer):
    request_queue_size = 128
    app: SandboxServer


_ROUTES: list[tuple[str, re.Pattern[str], str]] = [
    ("GET", re.compile(rf"{API}/health"), "health"),
    ("POST", re.compile(rf"{API}/sessions"), "create"),
    ("POST", re.compile(rf"{API}/sessions/({_SESSION_ID})/run"), "run"),
    ("POST", re.compile(rf"{API}/sessions/({_SESSION_ID})/fork"), "fork"),
    ("DELETE", re.compile(rf"{API}/sessions/({_SESSION_ID})"), "close_session"),
    ("GET", re.compile(rf"{API}/sessions/({_SESSION_ID})/images/([^/]+)"), "image"),
]


class _Handler(JSONHandler):
    realm = "thyme-sandbox"
    """Parses, authenticates and routes one request; the `SandboxServer` methods do the work."""

    protocol_version = "HTTP/1.1"
    server_version = "thyme-sandbox/1"
    disable_nagle_algorithm = True
    wbufsize = 1 << 16  # headers and body leave in one write; handle_one_request flushes
    server: _HTTPServer

    def setup(self) -> None:
        self.timeout = self.server.app.config.keepalive_s
        super().setup()

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        app = self.server.app
        path = self.path.split("?", 1)[0]
        try:
            body = self.read_body(app.config.max_request_bytes)
            route = self._route(method, path)
            if route[0] != "health" and not self.bearer_ok(app.config.token):
                raise Refused(401, "missing or wrong bearer token; send 'Authorization: Bearer <token>'")
            name, args = route
            if name == "health":
                self.send_json(200, app.service.health())
            elif name == "image":
                data, ctype = app.service.image(*args)
                self.send_bytes(200, data, ctype)
            else:
                payload = _parse_json(body)
                status = 201 if name in ("create", "fork") else 200
                self.send_json(status, getattr(app.service, name)(*args, payload))
        except (Refused, BodyError) as exc:
            self.send_json(exc.status, {"error": exc.message})
        except Exception as exc:
            log.exception("request %s %s failed", method, path)
            self.send_json(
                500, {"error": f"internal server error ({type(exc).__name__}); see the server log"}
            )

    def _route(self, method: str, path: str) -> tuple[str, tuple[str, ...]]:
        allowed = False
        for verb, pattern, name in _ROUTES:
            match = pattern.fullmatch(path)
            if match:
                if verb == method:
                    return name, match.groups()
                allowed = True
        if allowed:
            raise Refused(405, f"{method} is not supported on {path}")
        raise Refused(404, f"no endpoint {path}; the API lives under {API}/ (see GET {API}/health)")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Errors found by `http.server` itself (bad request line, huge headers) as JSON too."""
        self.close_connection = True
        self.send_json(code, {"error": message or HTTPStatus(code).phrase})


def _parse_json(body: bytes) -> dict[str, Any]:
    if not body:
        return {}
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise Refused(400, f"the request body is not valid JSON ({exc})") from None
    if not isinstance(payload, dict):
        raise Refused(400, "the request body must be a JSON object")
    return payload
