"""The session registry behind the sandbox service: the endpoints' logic, free of HTTP.

`SessionService` owns the sessions that remote callers opened on one `Sandbox`: it writes uploaded inputs
into a server-owned folder per session, runs code, forks, hands images back as base64 or as names to fetch,
closes sessions idle longer than a TTL, and refuses bad requests with a `Refused(status, sentence)` that the
HTTP layer (`thyme.sandbox.server`) turns into a JSON error. Each session has a lock taken without waiting,
so a second concurrent call on one session is refused (409) instead of queued behind the first.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import json
import logging
import pathlib
import re
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pydantic_core

import thyme
from thyme.errors import FieldError
from thyme.sandbox.core import Sandbox
from thyme.sandbox.process import SandboxError
from thyme.sandbox.result import ExecutionResult
from thyme.sandbox.session import Session, SessionBusy

log = logging.getLogger(__name__)

API = "/v1"
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]")
CONTENT_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".bmp": "image/bmp",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".tif": "image/tiff",
}
_GONE = "(closed, idle past the TTL, or the server restarted)"


@dataclass(frozen=True)
class ServerConfig:
    """How the service listens and what it accepts.

    host, port:        where to listen; port 0 picks a free port (see `SandboxServer.url`).
    token:             bearer token every request but health and the docs must carry; None: no auth.
    max_request_bytes: largest request body (uploads are base64, about 4/3 of the image bytes); larger -> 413.
    idle_ttl_s:        sessions without a call for this long are closed (their worker killed).
    max_sessions:      open sessions (forks included) the server holds at once; more -> 503.
    keepalive_s:       an idle keep-alive connection is closed after this many seconds (uvicorn rounds it to
                       whole seconds, at least 1).
    """

    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    max_request_bytes: int = 64 << 20
    idle_ttl_s: float = 600.0
    max_sessions: int = 1024
    keepalive_s: float = 75.0

    def __post_init__(self) -> None:
        # FieldErrors: `thyme sandbox serve` names its flags instead of the fields (SERVER_FLAGS in cli.py).
        if not 0 <= self.port <= 65535:
            raise FieldError(
                "ServerConfig.port", "port", f"must be in 0..65535 (0 picks a free port), got {self.port}"
            )
        if self.token is not None and (not self.token or self.token != self.token.strip()):
            raise ValueError("ServerConfig.token must be a non-empty string without surrounding whitespace")
        if self.max_request_bytes < 1024:
            problem = f"must be at least 1 KiB (1024 bytes), got {self.max_request_bytes} bytes"
            raise FieldError("ServerConfig.max_request_bytes", "max_request_bytes", problem)
        for name in ("idle_ttl_s", "keepalive_s"):
            if not getattr(self, name) > 0:
                problem = f"must be > 0 seconds, got {getattr(self, name)!r}"
                raise FieldError(f"ServerConfig.{name}", name, problem)
        if self.max_sessions < 1:
            raise FieldError(
                "ServerConfig.max_sessions", "max_sessions", f"must be >= 1, got {self.max_sessions}"
            )


class Refused(Exception):
    """A request the server refuses; `message` is the one sentence the client sees."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(eq=False)
class _Entry:
    """One session as the server holds it: the lock makes a second concurrent call a 409, not a queue."""

    session: Session
    inputs_dir: pathlib.Path
    lock: threading.Lock = field(default_factory=threading.Lock)
    last_used: float = field(default_factory=time.monotonic)
    images: dict[str, pathlib.Path] = field(default_factory=dict)
    parent: _Entry | None = None  # the session this one was forked from
    closed: bool = False


def json_bytes(payload: Any) -> bytes:
    """`payload` as compact UTF-8 JSON, as the server and the client send it: pydantic's encoder (5x faster
    than `json.dumps` on an upload's megabyte of base64), `json.dumps` for what it refuses (a lone
    surrogate in a string)."""
    try:
        return pydantic_core.to_json(payload)
    except ValueError:
        return json.dumps(payload, separators=(",", ":")).encode()


def parse_json(data: bytes) -> Any:
    """JSON bytes parsed: pydantic's parser (7x faster than `json.loads` on an upload), `json.loads` for
    what it refuses (an escaped lone surrogate); a `ValueError` (`json.JSONDecodeError`, or
    `UnicodeDecodeError`) when the bytes are not JSON."""
    try:
        return pydantic_core.from_json(data)
    except ValueError:
        return json.loads(data)


def result_to_json(result: ExecutionResult, images: list[dict[str, str]]) -> dict[str, Any]:
    """Every `ExecutionResult` field, with `images` replaced by their base64 bytes or URLs."""
    payload = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    payload["images"] = images
    return payload


class SessionService:
    """The sessions remote callers hold on one `Sandbox` (which the caller owns). Thread-safe."""

    def __init__(self, sandbox: Sandbox, config: ServerConfig) -> None:
        self.sandbox = sandbox
        self.config = config
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="thyme-serve-"))
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}
        self._input_refs: dict[pathlib.Path, int] = {}
        self._closed = False

    def close(self) -> None:
        """Close every session (waiting for calls in flight) and delete the uploaded inputs."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            entries, self._entries = list(self._entries.values()), {}
        for entry in entries:
            self._close_entry(entry)
        shutil.rmtree(self.root, ignore_errors=True)

    # -- endpoints -----------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        with self._lock:
            count = len(self._entries)
        return {
            "status": "ok",
            "version": thyme.__version__,
            "isolation": list(self.sandbox.isolation),
            "sessions": count,
            "timeout_s": self.sandbox.config.timeout_s,
            "max_request_bytes": self.config.max_request_bytes,
            "idle_ttl_s": self.config.idle_ttl_s,
        }

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        _only_keys(body, {"inputs"})
        inputs = body.get("inputs", [])
        if not isinstance(inputs, list) or not all(
            isinstance(i, dict) and isinstance(i.get("data"), str) and isinstance(i.get("name", ""), str)
            for i in inputs
        ):
            raise Refused(400, 'inputs must be a list of {"name": str, "data": base64 str} objects')
        sid = secrets.token_hex(12)
        inputs_dir = self.root / "inputs" / sid
        paths = []
        try:
            for index, item in enumerate(inputs):
                _only_keys(item, {"name", "data"}, where="an input")
                try:
                    data = base64.b64decode(item["data"], validate=True)
                except (binascii.Error, ValueError):
                    raise Refused(400, f"input {index} is not valid base64") from None
                name = _UNSAFE_CHARS.sub("_", pathlib.PurePosixPath(item.get("name", "")).name).lstrip(".")
                path = inputs_dir / str(index) / (name[:100] or f"input{index}")
                path.parent.mkdir(parents=True)  # a folder per input keeps each client's file name
                path.write_bytes(data)
                paths.append(path)
            self._reserve()
            try:
                session = self.sandbox.session(inputs=paths)
            except (SandboxError, RuntimeError) as exc:
                raise Refused(503, f"the sandbox could not start a session: {exc}") from None
        except BaseException:
            shutil.rmtree(inputs_dir, ignore_errors=True)
            raise
        self._register(sid, _Entry(session, inputs_dir))
        return {"id": sid, "inputs": [p.name for p in paths], "paths": list(session.inputs)}

    def run(self, sid: str, body: dict[str, Any]) -> dict[str, Any]:
        _only_keys(body, {"code", "images"})
        code, mode = body.get("code"), body.get("images", "base64")
        if not isinstance(code, str):
            raise Refused(400, 'run needs "code" as a string')
        if mode not in ("base64", "url"):
            raise Refused(400, f'"images" must be "base64" or "url", got {mode!r}')
        with self._exclusive(sid) as entry:
            result = entry.session.run(code)
            images = []
            for path in result.images:
                if mode == "base64":
                    images.append({"name": path.name, "data": base64.b64encode(path.read_bytes()).decode()})
                    path.unlink(missing_ok=True)  # the bytes travel in the reply; keep the disk clean
                else:
                    entry.images[path.name] = path
                    images.append({"name": path.name, "url": f"{API}/sessions/{sid}/images/{path.name}"})
        return result_to_json(result, images)

    def fork(self, sid: str, body: dict[str, Any]) -> dict[str, Any]:
        _only_keys(body, set())
        with self._exclusive(sid) as entry:
            self._reserve()
            try:
                child = entry.session.fork()
            except (SandboxError, RuntimeError) as exc:
                raise Refused(503, f"the sandbox could not fork session {sid}: {exc}") from None
            new_id = secrets.token_hex(12)
            self._register(new_id, _Entry(child, entry.inputs_dir, parent=entry))
        return {"id": new_id}

    def close_session(self, sid: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            entry = self._entries.pop(sid, None)
        if entry is None:
            raise Refused(404, f"no session {sid} on this server {_GONE}")
        self._close_entry(entry)
        return {"id": sid, "closed": True}

    def image(self, sid: str, name: str) -> tuple[bytes, str]:
        entry = self._get(sid)
        path = entry.images.get(name)
        if path is None:
            raise Refused(404, f"session {sid} has no image {name!r}; run returns the names it has")
        try:
            return path.read_bytes(), CONTENT_TYPES.get(path.suffix, "application/octet-stream")
        except OSError:
            raise Refused(404, f"image {name!r} of session {sid} is gone") from None

    # -- the session registry ------------------------------------------------------------------------
    def _get(self, sid: str) -> _Entry:
        with self._lock:
            entry = self._entries.get(sid)
        if entry is None:
            raise Refused(404, f"no session {sid} on this server {_GONE}")
        return entry

    @contextlib.contextmanager
    def _exclusive(self, sid: str):
        entry = self._get(sid)
        if not entry.lock.acquire(blocking=False):
            raise Refused(409, f"session {sid} is running another call; use one session per trajectory")
        try:
            if entry.closed:
                raise Refused(404, f"session {sid} was closed")
            entry.last_used = time.monotonic()
            try:
                yield entry
            except SessionBusy as exc:
                raise Refused(409, str(exc)) from None
            except (SandboxError, RuntimeError) as exc:  # the sandbox itself failed or is closing
                raise Refused(503, f"the sandbox could not serve session {sid}: {exc}") from None
        finally:
            entry.last_used = time.monotonic()
            entry.lock.release()

    def _reserve(self) -> None:
        with self._lock:
            if self._closed:
                raise Refused(503, "the server is shutting down")
            if len(self._entries) >= self.config.max_sessions:
                raise Refused(
                    503, f"the server holds {self.config.max_sessions} sessions, its limit; close some first"
                )

    def _register(self, sid: str, entry: _Entry) -> None:
        with self._lock:
            closed = self._closed
            if not closed:
                self._entries[sid] = entry
                self._input_refs[entry.inputs_dir] = self._input_refs.get(entry.inputs_dir, 0) + 1
        if closed:
            entry.session.close()
            raise Refused(503, "the server is shutting down")

    def _close_entry(self, entry: _Entry) -> None:
        """Close a session already removed from the registry; waits for a call in flight to finish."""
        with entry.lock:
            if entry.closed:
                return
            entry.closed = True
            entry.session.close()
            shutil.rmtree(entry.session.images_dir, ignore_errors=True)
        with self._lock:
            refs = self._input_refs.get(entry.inputs_dir, 1) - 1
            if refs <= 0:
                self._input_refs.pop(entry.inputs_dir, None)
            else:
                self._input_refs[entry.inputs_dir] = refs
            # `Session.close` keeps its directory (the caller may still read its images; its forks live
            # below it). A server caller already has the images, so the directory goes with the last
            # session of its fork tree: the highest closed ancestor with no open session below it.
            live = [e.session.home for e in self._entries.values()]
            top: _Entry | None = None
            node: _Entry | None = entry
            while (
                node is not None
                and node.closed
                and not any(h.is_relative_to(node.session.home) for h in live)
            ):
                top, node = node, node.parent
        if top is not None:
            shutil.rmtree(top.session.home, ignore_errors=True)
        if refs <= 0:  # forks share their parent's inputs: the last one out removes them
            shutil.rmtree(entry.inputs_dir, ignore_errors=True)

    def sweep(self) -> int:
        """Close sessions idle longer than `idle_ttl_s` (never one in a call); returns how many."""
        cutoff = time.monotonic() - self.config.idle_ttl_s
        with self._lock:
            idle = [
                (sid, e) for sid, e in self._entries.items() if e.last_used < cutoff and not e.lock.locked()
            ]
            for sid, _ in idle:
                del self._entries[sid]
        for sid, entry in idle:
            log.info("closing session %s after %.0f s idle", sid, self.config.idle_ttl_s)
            self._close_entry(entry)
        return len(idle)


def _only_keys(body: dict[str, Any], allowed: set[str], where: str = "the request") -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise Refused(400, f"{where} has unknown field(s) {unknown}; allowed: {sorted(allowed)}")
