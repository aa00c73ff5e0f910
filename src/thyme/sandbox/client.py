"""A Python client for `thyme sandbox serve`: `RemoteSession` has the same interface as a local `Session`.

    from thyme.sandbox.client import SandboxClient

    with SandboxClient("http://sandbox-host:8765", token=token) as client:
        with client.session(inputs=["photo.jpg"]) as session:
            result = session.run("from PIL import Image\\nprint(Image.open(image_path).size)")
            branch = session.fork()                # an independent copy of the state, on the server
            result = await session.arun("...")     # asyncio: many sessions in flight at once

`run` returns a real `ExecutionResult`: images are written as files into a directory the client owns (one
folder per session, removed by `discard_images()` or `client.close()`), so a rollout worker cannot tell a
remote session from a local one. HTTP is httpx: one `httpx.Client` per host, whose pool keeps a keep-alive
connection per concurrent call (connections idle longer than `IDLE_CONNECTION_S`, or closed by the server,
are not reused); `asyncio` goes through a thread pool, because a call spends its time waiting on the server,
not in Python. Nothing is read from the environment (no proxy variables: `trust_env=False`).

Several hosts: `SandboxClient(["http://a:8765", "http://b:8765"])` (or one comma-separated string) spreads
new sessions over the hosts, each to the host with the fewest sessions this client has open there (ties at
random, so that many clients spread too; the choice lives in `thyme.sandbox.hosts`). A session stays on its
host: its state lives there, and so do its forks. A host that cannot be connected to is *down*: new sessions
go to the other hosts, and after `retry_down_s` it is tried again (when every host is down, all are tried);
`client.hosts()` shows what the client knows of each. A session whose host stops
answering raises `SessionLost` from its calls: its state is gone (or unreachable), so the caller opens a new
session, which lands on a live host, and re-runs its episode; nothing is re-created behind its back, because
a silently fresh session would run code against variables that no longer exist.

Retries: a connection that cannot be opened (`httpx.ConnectError`, `httpx.ConnectTimeout`) is retried with
exponential backoff for every call (nothing was sent); a connection that breaks after the request was sent
(`httpx.ReadError`, `WriteError`, `RemoteProtocolError`) is retried only for idempotent calls (health, image
downloads, close), because a `run` or `fork` may already have happened; no answer within `timeout_s`
(`httpx.ReadTimeout`, `WriteTimeout`) is a `ServiceError`, never retried. Opening a session tries the
next host at once when one cannot be reached, refuses with 503, or breaks after the request was sent (never
the same host twice for one broken request; a session it may have created there is reclaimed by that
server's idle TTL).
Errors: `AuthError` (401), `RequestTooLarge` (413), `SessionNotFound` (404: closed, expired, or the server
restarted), `SessionBusy` (409, as a local session raises it), `ServiceUnavailable` (no connection) and its
`SessionLost` (a session's host stopped answering), all `ServiceError`s except `SessionBusy`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import pathlib
import re
import shutil
import ssl
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal

import httpx

from thyme.sandbox.hosts import Host, HostPool
from thyme.sandbox.process import SandboxError
from thyme.sandbox.result import ExecutionResult
from thyme.sandbox.service import API, json_bytes, parse_json
from thyme.sandbox.session import SessionBusy

log = logging.getLogger(__name__)

IDLE_CONNECTION_S = 30.0  # a pooled connection idle longer than this is not reused (the server keeps 75 s)
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_SESSION_ID = re.compile(r"[0-9a-f]{24}")
_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "stdout": str,
    "error": (str, type(None)),
    "timed_out": bool,
    "repairs": list,
    "stderr": str,
    "truncated": bool,
    "restarted": bool,
    "rejected": list,
    "output_full": bool,
}


class ServiceError(SandboxError):
    """The sandbox server refused a request or could not be reached; `status` is the HTTP status or 0."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class AuthError(ServiceError):
    """401: the server wants a bearer token and got none or a wrong one."""


class RequestTooLarge(ServiceError):
    """413: the request body is above the server's `--max-request-mb`."""


class SessionNotFound(ServiceError):
    """404: the session was closed, expired after the server's idle TTL, or the server restarted."""


class ServiceUnavailable(ServiceError):
    """No usable connection to the server, even after retrying."""


class SessionLost(ServiceUnavailable):
    """A session's host stopped answering (down, or the connection broke mid-call): open a new session."""


class SandboxClient:
    """Talks to one sandbox server or spreads sessions over several. Thread-safe; use as a context manager
    or call `close()`.

    base_url:   one URL (http://host:8765), a comma-separated string of them, or a list (see the module
                docstring for how sessions are spread and what happens when a host goes down).
    token:      the servers' bearer token (pass it explicitly; nothing is read from the environment).
    images:     "base64" (images travel inside the run reply) or "url" (fetched with a GET afterwards).
    images_dir: where result images are written; a private temporary directory when None.
    timeout_s:  socket timeout of one HTTP exchange; keep it above the server's `--timeout`.
    connect_timeout_s: how long opening a connection may take before the host counts as unreachable.
    retries, backoff_s: connection retries (see the module docstring) and the first backoff delay.
    retry_down_s: how long a host that could not be reached is left out of new sessions.
    max_connections: idle keep-alive connections kept per host (concurrent calls beyond it open more); also
                the threads `arun` uses.
    """

    def __init__(
        self,
        base_url: str | Sequence[str],
        token: str | None = None,
        *,
        images: Literal["base64", "url"] = "base64",
        images_dir: str | os.PathLike | None = None,
        timeout_s: float = 600.0,
        connect_timeout_s: float = 10.0,
        retries: int = 3,
        backoff_s: float = 0.1,
        retry_down_s: float = 10.0,
        max_connections: int = 64,
    ) -> None:
        self._hosts = HostPool(base_url, retry_down_s)
        if images not in ("base64", "url"):
            raise ValueError(f'images must be "base64" or "url", got {images!r}')
        self.images = images
        self.timeout_s, self.connect_timeout_s = timeout_s, min(connect_timeout_s, timeout_s)
        self.retries, self.backoff_s = retries, backoff_s
        self._owns_dir = images_dir is None
        self.images_dir = pathlib.Path(images_dir or tempfile.mkdtemp(prefix="thyme-client-"))
        self.images_dir.mkdir(parents=True, exist_ok=True)
        self._lock = self._hosts.lock
        self._max_connections = max_connections
        self._executor: ThreadPoolExecutor | None = None
        self.closed = False
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        timeout = httpx.Timeout(self.timeout_s, connect=self.connect_timeout_s, pool=None)
        limits = httpx.Limits(  # no cap on connections: a thread never waits for one
            max_connections=None,
            max_keepalive_connections=max_connections,
            keepalive_expiry=IDLE_CONNECTION_S,
        )
        # httpx would load the CA certificates for each client (~15 ms); one TLS context serves every host,
        # the system's trust store as before, and plain http hosts get an empty one they never use
        https = any(h.url.startswith("https:") for h in self._hosts.hosts)
        tls = ssl.create_default_context() if https else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self._http = {
            h.url: httpx.Client(
                base_url=h.url + API,
                headers=headers,
                timeout=timeout,
                limits=limits,
                verify=tls,
                trust_env=False,
            )
            for h in self._hosts.hosts
        }

    # -- the public API ------------------------------------------------------------------------------
    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(h.url for h in self._hosts.hosts)

    def hosts(self) -> list[dict[str, Any]]:
        """What the client knows of each host: `url`, `sessions` it has open there, `down` (left out of new
        sessions until it is retried)."""
        return self._hosts.snapshot()

    def health(self, url: str | None = None) -> dict[str, Any]:
        """A server's status (`isolation` layers, open sessions, limits): the host `url`, else the first."""
        return self._call("GET", "/health", idempotent=True, host=self._hosts.get(url))

    def session(self, inputs: list[str | os.PathLike] | tuple = ()) -> RemoteSession:
        """Open an episode on the least loaded live host; `inputs` are uploaded now, `image_path` is the
        first."""
        uploads, paths = [], []
        for p in inputs:
            path = pathlib.Path(p).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"sandbox input {str(p)!r} is not a readable file; pass image paths")
            uploads.append({"name": path.name, "data": base64.b64encode(path.read_bytes()).decode()})
            paths.append(str(path.resolve()))
        host, reply = self._create({"inputs": uploads})
        seen = reply.get("paths")  # where the code sees the inputs (servers before it: the local paths)
        if isinstance(seen, list) and len(seen) == len(paths) and all(isinstance(p, str) for p in seen):
            paths = seen
        try:
            return RemoteSession(self, host, _checked_id(reply), tuple(paths))
        except ServiceError:
            self._hosts.release(host)
            raise

    def close(self) -> None:
        """Drop the pooled connections and delete the images directory when the client created it."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        for http in self._http.values():
            http.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False)
        if self._owns_dir:
            shutil.rmtree(self.images_dir, ignore_errors=True)

    def __enter__(self) -> SandboxClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- spreading sessions --------------------------------------------------------------------------
    def _create(self, payload: dict[str, Any]) -> tuple[Host, dict[str, Any]]:
        """POST /sessions to the least loaded live host, moving on to the next one that answers."""
        delay, last = self.backoff_s, ServiceUnavailable("nothing tried")
        spent: set[str] = set()  # hosts not to ask again: the request broke after it was sent, or a 503
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(delay)
                delay *= 2
            tried = set(spent)
            while (host := self._hosts.reserve(tried)) is not None:
                tried.add(host.url)
                try:
                    return host, self._call("POST", "/sessions", payload, host=host, tries=1)
                except ServiceError as exc:
                    self._hosts.release(host)
                    if not isinstance(exc, ServiceUnavailable) and exc.status != 503:
                        raise
                    if isinstance(exc, _Broken) or exc.status == 503:
                        spent.add(host.url)
                    last = exc
                except BaseException:
                    self._hosts.release(host)
                    raise
            if len(spent) == len(self._hosts.hosts):
                break
        raise ServiceUnavailable(
            f"no sandbox host could open a session ({len(self._hosts.hosts)} host(s), "
            f"{self.retries + 1} rounds); last: {last}",
            last.status,
        )

    # -- HTTP ----------------------------------------------------------------------------------------
    def _call(
        self,
        method: str,
        path: str,
        payload: dict[str, Any] | None = None,
        *,
        idempotent: bool = False,
        host: Host | None = None,
        tries: int | None = None,
    ) -> dict[str, Any]:
        host = host or self._hosts.get()
        status, data = self._request(host, method, path, payload, idempotent=idempotent, tries=tries)
        try:
            reply = parse_json(data) if data else {}
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            raise ServiceError(
                f"the sandbox server sent a reply that is not a JSON object (HTTP {status})", status
            )
        if 200 <= status < 300:
            return reply
        message = str(reply.get("error") or f"HTTP {status}")
        if status == 409:
            raise SessionBusy(message)
        kind = {401: AuthError, 413: RequestTooLarge, 404: SessionNotFound}.get(status, ServiceError)
        raise kind(f"sandbox server: {message} (HTTP {status})", status)

    def _request(
        self,
        host: Host,
        method: str,
        path: str,
        payload: dict[str, Any] | None,
        *,
        idempotent: bool,
        tries: int | None = None,
    ) -> tuple[int, bytes]:
        """One exchange with `host`, retried as the module docstring says; (status, body)."""
        if self.closed:
            raise RuntimeError("this SandboxClient is closed")
        body = json_bytes(payload) if payload is not None else None
        headers = {"Content-Type": "application/json"} if body is not None else None
        http = self._http[host.url]
        tries = self.retries + 1 if tries is None else tries
        delay, last = self.backoff_s, ""
        for attempt in range(tries):
            if attempt:
                time.sleep(delay)
                delay *= 2
            try:
                resp = http.request(method, path, content=body, headers=headers)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # nothing was sent: safe to retry
                last = f"cannot connect ({exc})"
                self._hosts.mark(host, reachable=False)
                continue
            except httpx.TimeoutException:  # sent, and no answer in time
                raise ServiceError(
                    f"the sandbox server {host.url} did not answer {method} {path} "
                    f"within {self.timeout_s:g} s"
                ) from None
            except httpx.TransportError as exc:  # broke after sending: the call may have run
                last = f"the connection broke during {method} {path} ({type(exc).__name__}: {exc})"
                if idempotent:
                    continue
                raise _Broken(
                    f"{host.url}: {last}; not retried because the call may have run (a very large request "
                    "also ends this way when it exceeds the server's size limit)"
                ) from None
            self._hosts.mark(host, reachable=True)
            return resp.status_code, resp.content
        raise ServiceUnavailable(f"sandbox server {host.url} unreachable after {tries} tries: {last}")

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self._max_connections, thread_name_prefix="thyme-client")
            return self._executor

    def _save_images(self, host: Host, sid: str, items: object) -> list[pathlib.Path]:
        if not isinstance(items, list):
            raise ServiceError("the sandbox server sent images in an unexpected shape")
        folder = self.images_dir / sid
        paths = []
        for item in items:
            name = item.get("name") if isinstance(item, dict) else None
            if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
                raise ServiceError(f"the sandbox server sent an unsafe image name {name!r}")
            if isinstance(item.get("data"), str):
                data = base64.b64decode(item["data"], validate=True)
            else:
                status, data = self._request(
                    host, "GET", f"/sessions/{sid}/images/{name}", None, idempotent=True
                )
                if status != 200:
                    raise ServiceError(
                        f"downloading image {name} of session {sid} failed (HTTP {status})", status
                    )
            folder.mkdir(exist_ok=True)
            path = folder / name
            path.write_bytes(data)
            paths.append(path)
        return paths


class _Broken(ServiceUnavailable):
    """The connection broke after a non-idempotent request was sent: it may have run."""


class RemoteSession:
    """A sandbox episode on a server, with the interface of `thyme.sandbox.Session`.

    url:    the host it lives on (every call, fork and image of the session goes there).
    inputs: the input paths as the code sees them on the server (`image_path` is the first).
    """

    def __init__(self, client: SandboxClient, host: Host, session_id: str, inputs: tuple[str, ...]) -> None:
        self._client = client
        self._host = host
        self.url = host.url
        self.id = session_id
        self.inputs = inputs
        self.closed = False

    def run(self, code: str) -> ExecutionResult:
        """Run one code block in this session on the server and collect what it produced."""
        if not isinstance(code, str):
            raise TypeError(f"session.run expects the code as str, got {type(code).__name__}")
        self._check_open()
        start = time.monotonic()
        reply = self._call("POST", f"/sessions/{self.id}/run", {"code": code, "images": self._client.images})
        images = self._client._save_images(self._host, self.id, reply.get("images"))
        return _result_from_json(reply, images, time.monotonic() - start)

    async def arun(self, code: str) -> ExecutionResult:
        """`run` for asyncio: the HTTP exchange waits in the client's thread pool, not in the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self._client._pool(), self.run, code)

    def fork(self) -> RemoteSession:
        """An independent copy of this session's state (copy-on-write, in a new process on the same host)."""
        self._check_open()
        hosts = self._client._hosts
        hosts.add(self._host)
        try:
            reply = self._call("POST", f"/sessions/{self.id}/fork", {})
            return RemoteSession(self._client, self._host, _checked_id(reply), self.inputs)
        except BaseException:
            hosts.release(self._host)
            raise

    def discard_images(self) -> None:
        """Delete the images this session's results wrote on the client side (as a local session does)."""
        shutil.rmtree(self._client.images_dir / self.id, ignore_errors=True)

    def close(self) -> None:
        """Close the session on the server; never raises (an unreachable server reclaims it by its TTL)."""
        if self.closed:
            return
        self.closed = True
        client = self._client
        client._hosts.release(self._host)
        down = self._host.down
        try:  # a host known to be down gets one try: its sessions are gone or reclaimed by its TTL
            path = f"/sessions/{self.id}"
            client._call("DELETE", path, idempotent=True, host=self._host, tries=1 if down else None)
        except SessionNotFound:
            pass
        except (ServiceError, RuntimeError) as exc:
            (log.debug if down else log.warning)("could not close sandbox session %s: %s", self.id, exc)

    def __enter__(self) -> RemoteSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            return self._client._call(method, path, payload, host=self._host)
        except ServiceUnavailable as exc:
            raise SessionLost(
                f"sandbox session {self.id} is lost: {exc}. Its state lived only on that host; open a new "
                "session (it goes to a host that answers) and run the episode again"
            ) from None

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("this sandbox session is closed; open a new one with client.session(...)")


def _checked_id(reply: dict[str, Any]) -> str:
    sid = reply.get("id")
    if not isinstance(sid, str) or not _SESSION_ID.fullmatch(sid):
        raise ServiceError(f"the sandbox server sent a malformed session id {sid!r}")
    return sid


def _result_from_json(
    reply: dict[str, Any], images: list[pathlib.Path], duration_s: float
) -> ExecutionResult:
    """Rebuild the typed result; `duration_s` becomes the wall time the caller saw, HTTP included."""
    values: dict[str, Any] = {}
    for name, kind in _FIELD_TYPES.items():
        if name in reply:
            value = reply[name]
            if not isinstance(value, kind) or (
                isinstance(value, list) and not all(isinstance(v, str) for v in value)
            ):
                raise ServiceError(f"the sandbox server sent a run result whose {name!r} has the wrong type")
            values[name] = value
    return ExecutionResult(images=images, duration_s=duration_s, **values)
