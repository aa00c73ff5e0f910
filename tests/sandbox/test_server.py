"""The sandbox as a service: a real HTTP server on loopback, driven through `SandboxClient`/`RemoteSession`.

Every behaviour is compared with, or checked against, what a local `Session` of the same sandbox does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request

import pytest
from PIL import Image
from sandbox_procs import wait_dead

from thyme.sandbox import ExecutionResult, Sandbox, SandboxConfig, SessionBusy
from thyme.sandbox.client import (
    AuthError,
    RequestTooLarge,
    SandboxClient,
    ServiceUnavailable,
    SessionNotFound,
)
from thyme.sandbox.loadtest import load_test
from thyme.sandbox.server import SandboxServer, ServerConfig

TOKEN = "test-token-7f3a"
TIMEOUT = 1.5


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(SandboxConfig(timeout_s=TIMEOUT, pool_size=4)) as sb:
        yield sb


@pytest.fixture(scope="module")
def server(sandbox):
    with SandboxServer(sandbox, ServerConfig(port=0, token=TOKEN)) as srv:
        yield srv.start()


@pytest.fixture(params=["base64", "url"])
def client(request, server):
    with SandboxClient(server.url, token=TOKEN, images=request.param) as c:
        yield c


def raw(server, method: str, path: str, body: bytes | None = None, token: str | None = TOKEN):
    """One plain HTTP exchange, to check status codes and JSON errors without the client's mapping."""
    url = urllib.parse.urlsplit(server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, json.loads(data), resp.headers  # header names case-insensitive
    finally:
        conn.close()


# -- the same behaviour as a local session ---------------------------------------------------------------
STEPS = [
    "x = 41\nprint('hello')",
    "print(x + 1)",
    "1 / 0",
    "print(undefined_name)",
    "def broken(:\n    pass",
    "import sys\nsys.stderr.write('careful\\n')\nprint('out')",
    # the released model's habits: a hallucinated path, a tiny crop box, the /mnt/data output prefix
    "from PIL import Image\nimage_path = '/path/to/the/image.jpg'\nimg = Image.open(image_path)\n"
    "crop = img.crop((10, 10, 20, 20))\nprocessed_path = '/mnt/data/temp_processed_images/zoom.png'\n"
    "crop.save(processed_path)\nprint(crop.size)",
    "import os\nfrom PIL import Image\nImage.open(image_path).crop((100, 50, 420, 290)).save("
    "os.path.join(output_dir, 'a.png'))\nImage.new('L', (64, 48), 7).save(os.path.join(output_dir, 'b.jpg'))",
    "from PIL import Image\nImage.new('L', (1000, 2), 0).save(output_dir + '/thin.png')",
    "print('y' * 70000)",
    "while True:\n    pass",
    "print('after the timeout', 'x' in globals())",
]


def comparable(result: ExecutionResult) -> dict:
    fields = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    fields.pop("duration_s")
    fields["images"] = [(p.name, p.read_bytes()) for p in result.images]
    return fields


def test_remote_session_matches_a_local_session(sandbox, client, scene_jpeg):
    wanted = []
    with sandbox.session(inputs=[scene_jpeg]) as local, client.session(inputs=[scene_jpeg]) as remote:
        for code in STEPS:
            want, got = local.run(code), remote.run(code)
            assert comparable(got) == comparable(want), code
            assert all(p.is_file() and p.is_relative_to(client.images_dir) for p in got.images)
            wanted.append(want)
    # the cases the steps are meant to cover really happened
    assert {"image_path", "crop_clamp", "output_prefix"} <= {r for w in wanted for r in w.repairs}
    assert sum(len(w.images) for w in wanted) == 3 and any(w.rejected for w in wanted)
    assert any(w.truncated for w in wanted) and any(w.timed_out for w in wanted)
    assert sum(w.error is not None for w in wanted) == 5 and any(w.stderr for w in wanted)
    assert wanted[-1].restarted and wanted[-1].stdout == "after the timeout False\n"


def test_results_carry_every_field_and_images_byte_identical(client, scene_jpeg):
    with client.session(inputs=[scene_jpeg]) as remote:
        result = remote.run(STEPS[6])
        assert result.ok and result.stdout == "(64, 64)\n"
        assert set(result.repairs) >= {"image_path", "crop_clamp", "output_prefix"}
        expected = Image.open(scene_jpeg).crop((0, 0, 64, 64))
        assert Image.open(result.images[0]).tobytes() == expected.tobytes()
        assert result.duration_s > 0
        timed = remote.run("import time\ntime.sleep(30)")
        assert timed.timed_out and not timed.ok and "TimeoutError" in timed.error


def test_state_persists_and_forks_are_independent(client, scene_jpeg):
    with client.session(inputs=[scene_jpeg]) as parent:
        parent.run("items = [1, 2]\nimport os")
        children = [parent.fork() for _ in range(3)]
        try:
            for k, child in enumerate(children):
                child.run(f"items.append({k})")
            parent.run("items.append(99)")
            outs = [c.run("print(items, os.getpid())").stdout.split() for c in children]
            assert [o[:-1] for o in outs] == [["[1,", "2,", f"{k}]"] for k in range(3)]
            assert parent.run("print(items)").stdout == "[1, 2, 99]\n"
            assert len({o[-1] for o in outs}) == 3  # each fork in its own process
            grandchild = children[0].fork()
            with grandchild:
                assert grandchild.run("print(items)").stdout == "[1, 2, 0]\n"
        finally:
            for c in children:
                c.close()


def test_arun_serves_many_sessions_at_once(client, scene_jpeg):
    sessions = [client.session(inputs=[scene_jpeg]) for _ in range(8)]

    async def episode(k: int, s):
        await s.arun(f"token = {k}\nimport time")
        return await s.arun("time.sleep(0.3)\nprint(token * 3)")

    async def main():
        return await asyncio.gather(*(episode(k, s) for k, s in enumerate(sessions)))

    start = time.monotonic()
    try:
        results = asyncio.run(main())
    finally:
        for s in sessions:
            s.close()
    assert [r.stdout for r in results] == [f"{k * 3}\n" for k in range(8)]
    assert time.monotonic() - start < 8 * 0.3  # the sleeps overlapped


def test_closed_remote_session_refuses_calls(client):
    session = client.session()
    session.close()
    session.close()  # idempotent, as for a local session
    with pytest.raises(RuntimeError, match="closed"):
        session.run("print(1)")


# -- errors and limits ---------------------------------------------------------------------------------
def test_auth_missing_or_wrong_token_is_401(server):
    for token in (None, "wrong-token"):
        status, body, headers = raw(server, "POST", "/v1/sessions", b"{}", token=token)
        assert status == 401 and "bearer token" in body["error"]
        assert headers["WWW-Authenticate"].startswith("Bearer")
        with SandboxClient(server.url, token=token) as c, pytest.raises(AuthError, match="HTTP 401"):
            c.session()
    status, body, _ = raw(server, "GET", "/v1/health", token=None)  # health is open, for load balancers
    assert status == 200 and "landlock" in body["isolation"]
    status, body, _ = raw(server, "POST", "/v1/sessions", b"{not json", token=None)
    assert status == 401  # the token is checked before the body is parsed


def test_docs_and_openapi_are_served_without_a_token(server):
    url = urllib.parse.urlsplit(server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.request("GET", "/docs")
        resp = conn.getresponse()
        assert resp.status == 200 and b"swagger" in resp.read().lower()
    finally:
        conn.close()
    status, spec, _ = raw(server, "GET", "/openapi.json", token=None)
    assert status == 200 and "/v1/sessions/{sid}/run" in spec["paths"]
    assert set(spec["components"]["schemas"]["RunCode"]["properties"]) == {"code", "images"}


def test_health_reports_isolation_and_limits(server, sandbox):
    with SandboxClient(server.url, token=TOKEN) as c:
        health = c.health()
    assert health["status"] == "ok" and health["isolation"] == list(sandbox.isolation)
    assert health["timeout_s"] == TIMEOUT and health["max_request_bytes"] == 64 << 20


def test_request_size_limit_is_413(sandbox, tmp_path, scene_jpeg):
    config = ServerConfig(port=0, max_request_bytes=100_000)
    with SandboxServer(sandbox, config) as srv, SandboxClient(srv.start().url) as c:
        big = tmp_path / "big.bin"
        big.write_bytes(os.urandom(400_000))
        with pytest.raises(RequestTooLarge, match="exceeds the server's limit of 100000 bytes"):
            c.session(inputs=[big])
        with c.session() as s:
            with pytest.raises(RequestTooLarge, match="HTTP 413"):
                s.run("x = 1\n" * 50_000)
            assert s.run("print('still serving')").stdout == "still serving\n"
        status, body, _ = raw(srv, "POST", "/v1/sessions", b"x" * 200_000)
        assert status == 413 and "100000" in body["error"]
        assert srv.service.health()["sessions"] == 0  # the refused upload left nothing behind


def test_unknown_session_and_endpoint_are_404(server, client):
    with pytest.raises(SessionNotFound, match="no session"):
        client._call("POST", "/sessions/" + "0" * 24 + "/run", {"code": "print(1)"})
    session = client.session()
    sid = session.id
    session.close()
    status, body, _ = raw(server, "POST", f"/v1/sessions/{sid}/run", b'{"code": "print(1)"}')
    assert status == 404 and sid in body["error"]
    status, body, _ = raw(server, "GET", "/v1/nothing-here")
    assert status == 404 and "/v1/" in body["error"]
    status, body, _ = raw(server, "POST", "/v1/sessions/not-a-session-id/run", b'{"code": "1"}')
    assert status == 404 and body["error"].startswith("no endpoint")
    status, body, _ = raw(server, "PUT", "/v1/sessions", b"{}")
    assert status == 405 and body == {"error": "PUT is not supported on /v1/sessions"}
    status, body, _ = raw(server, "GET", f"/v1/sessions/{sid}/images/..%2F..%2Fetc%2Fpasswd")
    assert status == 404


def test_malformed_requests_are_400(server, client):
    with client.session() as s:
        for body in (b"{not json", b"[1, 2]", b'{"code": 42}', b'{"code": "1", "unknown": 1}', b"\xff\xfe"):
            status, reply, _ = raw(server, "POST", f"/v1/sessions/{s.id}/run", body)
            assert status == 400 and set(reply) == {"error"} and reply["error"], body
        status, reply, _ = raw(
            server, "POST", "/v1/sessions", b'{"inputs": [{"name": "a.png", "data": "%%"}]}'
        )
        assert status == 400 and "base64" in reply["error"]
        assert s.run("print('fine')").stdout == "fine\n"


def test_invalid_bodies_are_400_with_a_sentence_naming_the_field(server):
    sid = "0" * 24  # the body is checked before the session is looked up
    cases = [
        (f"/v1/sessions/{sid}/run", {"code": 42}, ["code", "valid string", "got 42"]),
        (f"/v1/sessions/{sid}/run", {}, ["'code' is required"]),
        (f"/v1/sessions/{sid}/run", {"code": "1", "unknown": 1}, ["unknown field 'unknown'"]),
        (f"/v1/sessions/{sid}/run", {"code": "1", "images": "png"}, ["images", "'base64' or 'url'", "'png'"]),
        (f"/v1/sessions/{sid}/run", [1, 2], ["must be a JSON object"]),
        ("/v1/sessions", {"inputs": "a.png"}, ["inputs", "valid list"]),
        ("/v1/sessions", {"inputs": [{"name": "a.png"}]}, ["'inputs.0.data' is required"]),
        (f"/v1/sessions/{sid}/fork", {"deep": True}, ["unknown field 'deep'"]),
    ]
    for path, body, wanted in cases:
        status, reply, _ = raw(server, "POST", path, json.dumps(body).encode())
        assert status == 400 and set(reply) == {"error"}, (body, reply)
        assert reply["error"].startswith("invalid request body: ") and "/docs" in reply["error"]
        assert all(w in reply["error"] for w in wanted), (body, reply)
    status, reply, _ = raw(server, "POST", f"/v1/sessions/{sid}/run", b'{"code": ')
    assert status == 400 and "not valid JSON" in reply["error"]


def test_an_unexpected_server_error_is_a_json_500(server, monkeypatch):
    monkeypatch.setattr(server.service, "health", lambda: 1 / 0)
    status, reply, _ = raw(server, "GET", "/v1/health")
    assert status == 500
    assert reply == {"error": "internal server error (ZeroDivisionError); see the server log"}


def test_a_chunked_body_is_accepted_and_counted_against_the_limit(sandbox):
    def chunked(srv, body: bytes) -> tuple[int, dict]:
        url = urllib.parse.urlsplit(srv.url)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        try:
            chunks = (body[i : i + 4096] for i in range(0, len(body), 4096))
            conn.request("POST", "/v1/sessions", body=chunks, encode_chunked=True)
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read())
        finally:
            conn.close()

    with SandboxServer(sandbox, ServerConfig(port=0, max_request_bytes=100_000)) as srv:
        srv.start()
        status, reply = chunked(srv, b'{"inputs": []}')
        assert status == 201 and srv.service.health()["sessions"] == 1
        srv.service.close_session(reply["id"], {})
        # just above the limit, so the body is all sent before the server refuses it (and closes)
        payload = json.dumps({"inputs": [{"name": "a", "data": "A" * 100_100}]}).encode()
        status, reply = chunked(srv, payload)
        assert status == 413 and "100000 bytes" in reply["error"]
        assert srv.service.health()["sessions"] == 0


def test_a_connection_close_client_gets_its_answer(server):
    # urllib sends `Connection: close` and reads to the end of the connection
    request = urllib.request.Request(
        server.url + "/v1/sessions", data=b"{}", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert resp.status == 201 and resp.headers["Connection"] == "close"
        sid = json.loads(resp.read())["id"]
    request = urllib.request.Request(
        f"{server.url}/v1/sessions/{sid}", method="DELETE", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert json.loads(resp.read()) == {"id": sid, "closed": True}


def test_a_busy_session_is_409(client):
    with client.session() as s:
        s.run("import time")
        slow = threading.Thread(target=s.run, args=("time.sleep(1.0)",))
        slow.start()
        time.sleep(0.3)
        try:
            with pytest.raises(SessionBusy, match="running another call"):
                s.run("print('too soon')")
            with pytest.raises(SessionBusy):
                s.fork()
        finally:
            slow.join()
        assert s.run("print('free again')").stdout == "free again\n"


def worker_pid(server: SandboxServer, remote) -> int:
    """The pid of a remote session's worker as this process sees it (code in the session may see another
    number, in its lineage's PID namespace)."""
    handle = server.service._entries[remote.id].session._handle
    assert handle is not None
    return handle.pid


def test_idle_sessions_expire_after_the_ttl(sandbox):
    config = ServerConfig(port=0, idle_ttl_s=0.6)
    with SandboxServer(sandbox, config) as srv, SandboxClient(srv.start().url) as c:
        idle, busy = c.session(), c.session()
        assert idle.run("print('up')").ok
        pid = worker_pid(srv, idle)
        assert (
            busy.run("import time\ntime.sleep(1.3)\nprint('kept')").stdout == "kept\n"
        )  # not swept mid-call
        assert busy.run("print('still here')").ok
        with pytest.raises(SessionNotFound, match="idle past the TTL"):
            idle.run("print(1)")
        assert not wait_dead({pid})
        idle.close()  # closing an expired session is not an error


def test_shutdown_closes_every_session(sandbox):
    srv = SandboxServer(sandbox, ServerConfig(port=0)).start()
    before = set(sandbox._sessions)
    with SandboxClient(srv.url, retries=1, backoff_s=0.01) as c:
        sessions = [c.session() for _ in range(3)]
        sessions.append(sessions[0].fork())
        assert all(s.run("print('up')").ok for s in sessions)
        # The workers' pids as this process sees them (a fork's code may see another number for itself,
        # in its lineage's PID namespace).
        pids = {s._handle.pid for s in set(sandbox._sessions) - before if s._handle is not None}
        root = srv.service.root
        assert len(pids) == 4 and root.is_dir()
        srv.close()
        assert not wait_dead(pids)
        assert not root.exists()
        with pytest.raises(ServiceUnavailable, match="unreachable after 2 tries"):
            c.health()


def refused(url: str) -> bool:
    """Whether a new connection to the server at `url` is refused."""
    parts = urllib.parse.urlsplit(url)
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


SLOW_RUN = "import time\ntime.sleep(1.0)\nprint('finished')"


def test_close_lets_a_run_in_flight_finish_and_refuses_new_connections(sandbox):
    srv = SandboxServer(sandbox, ServerConfig(port=0)).start()
    with SandboxClient(srv.url, retries=0) as c:
        s = c.session()
        outcome: dict[str, ExecutionResult] = {}
        call = threading.Thread(target=lambda: outcome.setdefault("r", s.run(SLOW_RUN)))
        call.start()
        time.sleep(0.3)
        closing = threading.Thread(target=srv.close)
        closing.start()
        time.sleep(0.2)
        assert refused(srv.url)  # while the run drains
        assert closing.is_alive()  # close() waits for it
        call.join(timeout=10)
        closing.join(timeout=10)
        assert outcome["r"].ok and outcome["r"].stdout == "finished\n"
        assert refused(srv.url) and srv.service.health()["sessions"] == 0


def test_sigterm_lets_a_run_in_flight_finish():
    proc = subprocess.Popen(
        [sys.executable, "-m", "thyme", "sandbox", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), proc.stderr.read()
        url = line.split()[-1]
        with SandboxClient(url, retries=0) as c:
            s = c.session()
            outcome: dict[str, ExecutionResult] = {}
            call = threading.Thread(target=lambda: outcome.setdefault("r", s.run(SLOW_RUN)))
            call.start()
            time.sleep(0.3)
            proc.send_signal(signal.SIGTERM)
            call.join(timeout=20)
            assert proc.wait(timeout=30) == 0
            assert outcome["r"].ok and outcome["r"].stdout == "finished\n"
            assert refused(url)
            s.closed = True  # its server closed it
    finally:
        proc.kill()


def test_closed_sessions_leave_nothing_on_disk(scene_jpeg):
    save = "from PIL import Image\nImage.open(image_path).crop((0, 0, 90, 90)).save(output_dir + '/c.png')"
    with (
        Sandbox(SandboxConfig(pool_size=0)) as sb,
        SandboxServer(sb, ServerConfig(port=0)) as srv,
        SandboxClient(srv.start().url, images="url") as c,
    ):
        before = set(sb.root.iterdir())
        plain, parent_first, child_first = (c.session(inputs=[scene_jpeg]) for _ in range(3))
        forks = [parent_first.fork(), child_first.fork()]
        for s in (plain, parent_first, child_first, *forks):
            assert len(s.run(save).images) == 1
        for s in (plain, parent_first, forks[0], forks[1]):
            s.close()
        assert child_first.run("print('parent still works')").ok
        child_first.close()
        assert set(sb.root.iterdir()) == before
        assert list((srv.service.root / "inputs").iterdir()) == []


def test_a_stale_keepalive_connection_is_not_used(sandbox):
    config = ServerConfig(port=0, keepalive_s=1.0)  # uvicorn's shortest: whole seconds, at least 1
    with SandboxServer(sandbox, config) as srv, SandboxClient(srv.start().url) as c, c.session() as s:
        s.run("n = 1")
        time.sleep(1.5)  # the server has dropped the idle connection by now
        assert s.run("print(n)").stdout == "1\n"  # a run is never retried, so it needs a fresh connection


def test_client_maps_every_result_field():
    from thyme.sandbox.client import _FIELD_TYPES

    names = {f.name for f in dataclasses.fields(ExecutionResult)}
    assert set(_FIELD_TYPES) | {"images", "duration_s"} == names


# -- faults and load -----------------------------------------------------------------------------------
def test_killing_a_worker_mid_call_fails_only_that_call(server, client, scene_jpeg):
    with client.session(inputs=[scene_jpeg]) as victim, client.session(inputs=[scene_jpeg]) as bystander:
        assert victim.run("import os, time\nkept = 1").ok
        pid = worker_pid(server, victim)
        bystander.run("import time\ntotal = 0")
        outcome: dict[str, ExecutionResult] = {}
        call = threading.Thread(target=lambda: outcome.setdefault("r", victim.run("time.sleep(20)")))
        call.start()
        time.sleep(0.3)
        other = threading.Thread(
            target=lambda: outcome.setdefault("b", bystander.run("time.sleep(0.4)\ntotal += 5\nprint(total)"))
        )
        other.start()
        os.kill(pid, signal.SIGKILL)
        call.join(timeout=10)
        other.join(timeout=10)
        result = outcome["r"]
        assert not result.ok and not result.timed_out and "SandboxCrash" in result.error
        assert result.duration_s < 5
        assert outcome["b"].ok and outcome["b"].stdout == "5\n"
        assert client.health()["status"] == "ok"
        again = victim.run("print('kept' in globals())")
        assert again.ok and again.restarted and again.stdout == "False\n"


def test_a_client_vanishing_mid_call_leaves_the_session_usable(server, client):
    with client.session() as s:
        s.run("calls = 0")
        url = urllib.parse.urlsplit(server.url)
        body = b'{"code": "import time\\ntime.sleep(0.5)\\ncalls += 1"}'
        with socket.create_connection((url.hostname, url.port)) as sock:
            sock.sendall(
                f"POST /v1/sessions/{s.id}/run HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            time.sleep(0.1)  # the call is running; now the client disappears
        deadline = time.monotonic() + 5
        while True:
            try:
                result = s.run("print(calls)")
                break
            except SessionBusy:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert result.stdout == "1\n"  # the orphaned call completed, and its state is there
        assert client.health()["status"] == "ok"


@pytest.mark.slow
def test_load_1000_sessions_from_16_clients_nothing_lost_or_mixed(server, scene_jpeg):
    report = load_test(server.url, scene_jpeg, sessions=1000, clients=16, token=TOKEN)
    assert report.errors == [] and report.ok == 1000 and report.lost_or_mixed == 0
    assert server.service.health()["sessions"] == 0


def test_cli_serve_with_a_token_file(tmp_path, small_png):
    token_file = tmp_path / "token"
    token_file.write_text("cli-token-123\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "thyme", "sandbox", "serve", "--port", "0", "--token-file", str(token_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), proc.stderr.read()
        url = line.split()[-1]
        with SandboxClient(url, token="cli-token-123") as c, c.session(inputs=[small_png]) as s:
            r = s.run("from PIL import Image\nprint(Image.open(image_path).size)")
            assert r.stdout == "(320, 240)\n"
        with SandboxClient(url) as c, pytest.raises(AuthError):
            c.session()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0


def test_cli_serve_refuses_an_empty_token_file(tmp_path):
    (tmp_path / "token").write_text("  \n")
    result = subprocess.run(
        [sys.executable, "-m", "thyme", "sandbox", "serve", "--token-file", str(tmp_path / "token")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "must hold one token" in result.stderr
