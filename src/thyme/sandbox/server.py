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
    GET    /docs, /openapi.json              the API described (no token needed: they hold no data)
Status codes: 400 malformed request (invalid JSON, or a body its pydantic model refuses), 401 missing or
wrong bearer token, 404 unknown session or endpoint, 405 wrong method, 409 the session is running another
call, 413 request above the size limit, 503 sandbox cannot serve, 500 a bug (logged with its traceback).

Why FastAPI and uvicorn (as vLLM and SGLang serve): request bodies are validated by pydantic models (an
invalid one is a 400 that names the field), `/docs` describes the API, and `close()` (SIGTERM from the
command line) is graceful: stop accepting, let the calls in flight finish with their results, then close the
sessions. The routes are plain `def`s, so a `run`, which spends its time waiting on a worker process,
waits in uvicorn's thread pool rather than in the event loop; benchmarks/service_bench.py measures the
throughput against the in-process pool. The logic behind the routes is `SessionService`, free of HTTP.
What the server does *not* do: TLS (put it behind a TLS proxy when it leaves the host) or per-tenant
isolation between token holders (one token, one tenant; sessions are named by unguessable ids).
"""

from __future__ import annotations

import logging
import pathlib
import re
import threading
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Literal

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from thyme.asgi import BodyLimit, UvicornServer, bearer_ok, serve_until_signal
from thyme.sandbox.core import Sandbox
from thyme.sandbox.service import API, Refused, ServerConfig, SessionService, json_bytes, parse_json

__all__ = ["API", "SandboxServer", "ServerConfig", "build_app", "read_token_file", "serve_until_signal"]

log = logging.getLogger(__name__)

_SESSION_ID = re.compile(r"[0-9a-f]{24}")
DRAIN_MARGIN_S = 5.0  # on close, a run in flight may use its whole time limit plus this to finish


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
    """Serves the sessions of one `Sandbox` over HTTP. The caller owns the sandbox; `close()` stops
    accepting, lets the calls in flight finish, then closes every session this server opened."""

    def __init__(self, sandbox: Sandbox, config: ServerConfig | None = None) -> None:
        self.config = config if config is not None else ServerConfig()
        self.service = SessionService(sandbox, self.config)
        self._stop = threading.Event()
        try:
            self._http = UvicornServer(
                build_app(self.service),
                self.config.host,
                self.config.port,
                keepalive_s=self.config.keepalive_s,
                drain_s=sandbox.config.timeout_s + DRAIN_MARGIN_S,
                name="thyme-sandbox-http",
            )
        except OSError:
            self.service.close()
            raise
        self._sweeper = threading.Thread(target=self._sweep_loop, name="thyme-serve-ttl", daemon=True)
        self._sweeper.start()

    @property
    def url(self) -> str:
        return self._http.url

    def start(self) -> SandboxServer:
        """Serve in a background thread; returns once the server accepts connections."""
        self._http.start()
        return self

    def close(self) -> None:
        """Stop accepting, let the calls in flight finish (up to the sandbox's time limit plus
        `DRAIN_MARGIN_S`), then close every session; idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        try:
            self._http.close()
        finally:
            self.service.close()
            if self._sweeper is not threading.current_thread():
                self._sweeper.join(timeout=5)

    def __enter__(self) -> SandboxServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _sweep_loop(self) -> None:
        interval = min(max(self.config.idle_ttl_s / 4, 0.05), 5.0)
        while not self._stop.wait(interval):
            try:
                self.service.sweep()
            except Exception:  # the sweeper must outlive one bad close
                log.exception("idle-session sweep failed")


# -- request bodies ------------------------------------------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class InputFile(_Body):
    name: str = Field("", description="the file name the code sees (unsafe characters replaced)")
    data: str = Field(description="the file's bytes, base64")


class CreateSession(_Body):
    inputs: list[InputFile] = Field(default_factory=list, description="`image_path` is the first")


class RunCode(_Body):
    code: str = Field(description="Python source to run in the session")
    images: Literal["base64", "url"] = Field("base64", description="how images come back")


class Fork(_Body):
    pass


class ErrorReply(BaseModel):
    error: str


# -- the app -------------------------------------------------------------------------------------------
def _json(status: int, payload: dict[str, Any]) -> Response:
    headers = {"WWW-Authenticate": 'Bearer realm="thyme-sandbox"'} if status == 401 else None
    return Response(json_bytes(payload), status, headers=headers, media_type="application/json")


class _Request(Request):
    """A request whose JSON body is parsed by `parse_json` (pydantic's parser: an upload's megabyte of
    base64 in 0.1 ms instead of 0.8 ms, in the event loop's thread)."""

    async def json(self) -> Any:
        if not hasattr(self, "_parsed"):
            self._parsed = parse_json(await self.body())
        return self._parsed


def _error(message: str) -> dict[str, str]:
    return {"error": message}


_NO_TOKEN = "missing or wrong bearer token; send 'Authorization: Bearer <token>'"


class _Route(APIRoute):
    """Checks the bearer token before the body is parsed (as the API promises: 401 before 400), parses JSON
    bodies with `_Request`, and turns `Refused` and unexpected exceptions into JSON errors (FastAPI's seam
    for this: a custom `APIRoute` and `Request`)."""

    open = False  # served without a token

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            service: SessionService = request.app.state.service
            sid = request.path_params.get("sid")
            if sid is not None and not _SESSION_ID.fullmatch(sid):  # not a session id: no such endpoint
                return _json(404, _error(_no_endpoint(request.url.path)))
            if not self.open and not bearer_ok(request.headers.get("authorization"), service.config.token):
                return _json(401, _error(_NO_TOKEN))
            try:
                return await handler(_Request(request.scope, request.receive))
            except Refused as exc:
                return _json(exc.status, _error(exc.message))
            except (HTTPException, RequestValidationError):
                raise
            except Exception as exc:
                log.exception("request %s %s failed", request.method, request.url.path)
                return _json(500, _error(f"internal server error ({type(exc).__name__}); see the server log"))

        return route


class _OpenRoute(_Route):
    open = True


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorReply} for code in (400, 401, 404, 409, 413, 503)
}


def build_app(service: SessionService) -> Any:
    """The ASGI app: FastAPI routes over `service`, inside a `BodyLimit` of `max_request_bytes`."""
    app = FastAPI(
        title="thyme sandbox",
        description="Sandbox sessions over HTTP: create, run, fork, close (see `thyme.sandbox.server`).",
        version="1",
        strict_content_type=False,  # a JSON body without a Content-Type is still JSON
    )
    app.state.service = service
    app.add_exception_handler(RequestValidationError, _invalid_body)
    app.add_exception_handler(HTTPException, _http_error)
    open_routes = APIRouter(prefix=API, route_class=_OpenRoute)
    routes = APIRouter(prefix=API, route_class=_Route, responses=_ERRORS)

    @open_routes.get("/health")
    async def health() -> Response:  # quick and never blocks: answered in the event loop
        """Status, the sandbox's `isolation` layers, open sessions and limits (no token needed)."""
        return _json(200, service.health())

    @routes.post("/sessions", status_code=201)
    def create(body: CreateSession | None = None) -> Response:
        """Open a session with the uploaded inputs; -> `id`, `inputs`, and `paths` (as the code sees them)."""
        return _json(201, service.create((body or CreateSession()).model_dump()))

    @routes.post("/sessions/{sid}/run")
    def run(sid: str, body: RunCode) -> Response:
        """Run code in the session; -> every `ExecutionResult` field, images as base64 or as URLs."""
        return _json(200, service.run(sid, body.model_dump()))

    @routes.post("/sessions/{sid}/fork", status_code=201)
    def fork(sid: str, body: Fork | None = None) -> Response:
        """An independent copy of the session's state; -> its `id`."""
        return _json(201, service.fork(sid, {}))

    @routes.delete("/sessions/{sid}")
    def close(sid: str) -> Response:
        """Close the session (waits for a call in flight)."""
        return _json(200, service.close_session(sid, {}))

    @routes.get("/sessions/{sid}/images/{name}")
    def image(sid: str, name: str) -> Response:
        """The bytes of an image that a `run` with `"images": "url"` returned."""
        data, ctype = service.image(sid, name)
        return Response(data, 200, media_type=ctype)

    app.include_router(open_routes)
    app.include_router(routes)
    return BodyLimit(_JSONBodies(app), service.config.max_request_bytes, _error)


class _JSONBodies:
    """ASGI middleware: API bodies are JSON whatever their Content-Type says (`curl -d` and urllib send
    a form type), as before FastAPI; the header is dropped so FastAPI parses the body as JSON."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["path"].startswith(API + "/"):
            scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if k != b"content-type"]}
        await self.app(scope, receive, send)


async def _invalid_body(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return _json(400, _error(_sentence(exc.errors())))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    path = request.url.path
    if exc.status_code == 404:
        message = _no_endpoint(path)
    elif exc.status_code == 405:
        message = f"{request.method} is not supported on {path}"
    elif exc.status_code == 400:  # the body could not be decoded at all
        message = "the request body is not valid JSON (send a UTF-8 JSON object)"
    else:
        message = str(exc.detail)
    return _json(exc.status_code, _error(message))


def _no_endpoint(path: str) -> str:
    return f"no endpoint {path}; the API lives under {API}/ (see GET {API}/health)"


def _sentence(errors: Sequence[Any]) -> str:
    """pydantic's validation errors as one sentence that names the fields (the first three)."""
    parts = []
    for error in list(errors)[:3]:
        loc = [str(p) for p in error.get("loc", ()) if p != "body"]
        where = ".".join(loc)
        kind = error.get("type")
        if kind == "json_invalid":
            return f"the request body is not valid JSON ({error.get('ctx', {}).get('error', 'decode error')})"
        if kind == "extra_forbidden":
            parts.append(f"unknown field {where!r}")
        elif kind == "missing":
            parts.append(f"{where!r} is required")
        elif kind in ("model_type", "model_attributes_type", "dict_type") and len(loc) <= 2:
            parts.append(f"{where or 'the body'} must be a JSON object")
        else:
            got = error.get("input")
            shown = repr(got) if len(repr(got)) <= 40 else f"a {type(got).__name__}"
            parts.append(f"{where or 'the body'}: {error.get('msg', 'invalid')}, got {shown}")
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return f"invalid request body: {'; '.join(parts)}{more}; see /docs for the fields each endpoint takes"
