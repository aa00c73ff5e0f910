"""`SandboxClient` over several sandbox hosts: real `thyme sandbox serve` processes on 127.0.0.1, one of them
killed (SIGKILL, as a crashed machine) while sessions on it are open and a call is in flight.

What must hold: new sessions go to the host with the fewest of this client's sessions; a session and its
forks stay on their host; a killed host's sessions raise `SessionLost` (typed, promptly, never a silently
fresh session) while the other host's sessions keep their state; new sessions go to the live host; the dead
host is tried again later and used once it answers; a load over both hosts with one killed mid-run loses or
mixes up no episode (episodes hit by the kill are run again in new sessions).
"""

from __future__ import annotations

import collections
import json
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from thyme.sandbox.client import SandboxClient, ServiceError, ServiceUnavailable, SessionLost
from thyme.sandbox.hosts import HostPool, split_urls
from thyme.sandbox.loadtest import load_test

TOKEN = "hosts-token-5c1e"


class Host:
    """One `thyme sandbox serve` subprocess."""

    def __init__(self, token_file, port: int = 0) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "thyme", "sandbox", "serve", "--port", str(port),
             "--token-file", str(token_file)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        line = self.proc.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), self.proc.stderr.read()
        self.url = line.split()[-1]
        self.port = int(self.url.rsplit(":", 1)[1])

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)


@pytest.fixture
def token_file(tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture
def two_hosts(token_file):
    hosts = [Host(token_file), Host(token_file)]
    yield hosts
    for host in hosts:
        host.stop()


def test_split_urls_accepts_lists_and_commas_and_refuses_nonsense():
    assert split_urls("http://a:1") == ("http://a:1",)
    assert split_urls("http://a:1, http://b:2/") == ("http://a:1", "http://b:2")
    assert split_urls(["http://a:1,http://b:2", "https://c:3"]) == ("http://a:1", "http://b:2", "https://c:3")
    for bad, message in [
        ("a:1", "must look like http://host:port"),
        ("http://a:1,,http://b:2", "must look like"),
        ("http://a:1,http://a:1/", "listed twice"),
        ([], "no sandbox URL"),
        ([8765], "must be a string"),
    ]:
        with pytest.raises(ValueError, match=message):
            split_urls(bad)


def test_host_pool_picks_the_least_loaded_live_host():
    pool = HostPool(["http://a:1", "http://b:1", "http://c:1"], retry_down_s=0.2)
    a, b, c = pool.hosts
    assert {pool.reserve(set()).url for _ in range(3)} == {a.url, b.url, c.url}  # one each
    pool.release(b)
    assert pool.reserve(set()) is b  # the only host with fewer sessions
    pool.release(c)
    pool.mark(c, reachable=False)
    assert c.down and pool.reserve(set()) in (a, b)  # c has fewest but is down
    assert pool.reserve({a.url, b.url}) is c  # no live host left: the down one is tried
    assert pool.reserve({a.url, b.url, c.url}) is None
    time.sleep(0.25)
    assert not c.down  # retried after retry_down_s
    pool.mark(c, reachable=True)
    assert [h["sessions"] for h in pool.snapshot()] == [a.sessions, b.sessions, c.sessions]


def test_a_killed_host_fails_its_sessions_and_new_sessions_go_to_the_live_host(
    two_hosts, token_file, small_png
):
    a, b = two_hosts
    client = SandboxClient([a.url, b.url], token=TOKEN, retries=1, backoff_s=0.05, retry_down_s=0.5)
    with client:
        # Spread by load: four sessions, two on each host, each remembering which it is.
        sessions = [client.session() for _ in range(4)]
        assert collections.Counter(s.url for s in sessions) == {a.url: 2, b.url: 2}
        for k, s in enumerate(sessions):
            assert s.run(f"mine = {k}").ok
        on_a = [s for s in sessions if s.url == a.url]
        on_b = [s for s in sessions if s.url == b.url]
        fork = on_b[0].fork()  # a fork lives where its parent's state is
        assert fork.url == b.url and fork.run("print(mine)").stdout == f"{sessions.index(on_b[0])}\n"
        assert client.health(a.url)["sessions"] == 2 and client.health(b.url)["sessions"] == 3
        assert {h["url"]: h["sessions"] for h in client.hosts()} == {a.url: 2, b.url: 3}

        # Kill host B while a call of one of its sessions is in flight.
        outcome: dict[str, BaseException] = {}

        def long_call() -> None:
            try:
                on_b[1].run("import time\ntime.sleep(20)")
            except BaseException as exc:
                outcome["error"] = exc

        call = threading.Thread(target=long_call)
        call.start()
        time.sleep(0.5)
        killed_at = time.monotonic()
        b.kill()
        call.join(timeout=10)
        assert isinstance(outcome.get("error"), SessionLost), outcome
        assert time.monotonic() - killed_at < 5
        assert on_b[1].id in str(outcome["error"]) and "open a new session" in str(outcome["error"])
        with pytest.raises(SessionLost, match="unreachable"):
            on_b[0].run("print(mine)")
        with pytest.raises(SessionLost):
            fork.fork()
        # The live host's sessions keep their state.
        for s in on_a:
            assert s.run("print(mine)").stdout == f"{sessions.index(s)}\n"

        # New sessions go to the live host, and work.
        fresh = [client.session() for _ in range(4)]
        assert {s.url for s in fresh} == {a.url}
        assert all(s.run("print(2 + 2)").stdout == "4\n" for s in fresh)
        assert {h["url"]: h["down"] for h in client.hosts()} == {a.url: False, b.url: True}

        # Closing sessions of the dead host does not raise; their count goes away.
        for s in (*on_b, fork):
            s.close()
        assert {h["url"]: h["sessions"] for h in client.hosts()} == {a.url: 6, b.url: 0}

        # The dead host is tried again later: once it is back (same port), new sessions use it again.
        b_again = Host(token_file, port=b.port)
        try:
            time.sleep(0.6)  # past retry_down_s
            back = client.session(inputs=[small_png])
            assert back.url == b.url and back.run("print('back')").stdout == "back\n"
            # a remote session's inputs are the paths its code sees, as a local session's are
            assert back.run("print(image_path)").stdout == back.inputs[0] + "\n"
            assert back.inputs[0] != str(small_png) and back.inputs[0].endswith("small.png")
            assert {h["url"]: h["down"] for h in client.hosts()} == {a.url: False, b.url: False}
            back.close()
        finally:
            b_again.stop()
        for s in (*on_a, *fresh):
            s.close()


class HangingUp:
    """A fake sandbox server on loopback: it opens sessions, leaves a fork unanswered for a second, and hangs
    up on every other request after reading it (the connection broke after the request was sent)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests: list[tuple[str, str]] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as stream:
            while request := self._read(stream):
                self.requests.append(request)
                if request[1].endswith("/fork"):
                    time.sleep(1.0)
                if request != ("POST", "/v1/sessions"):
                    break
                body = json.dumps({"id": "a" * 24, "paths": []}).encode()
                head = f"HTTP/1.1 201 Created\r\nContent-Length: {len(body)}\r\n\r\n"
                conn.sendall(head.encode() + body)

    @staticmethod
    def _read(stream) -> tuple[str, str] | None:
        line = stream.readline()
        if not line:
            return None
        method, path, _ = line.decode().split(" ", 2)
        length = 0
        while (header := stream.readline()) not in (b"\r\n", b""):
            name, _, value = header.decode().partition(":")
            length = int(value) if name.lower() == "content-length" else length
        stream.read(length)
        return method, path


def test_a_broken_connection_is_retried_only_for_idempotent_calls():
    server = HangingUp()
    with SandboxClient(server.url, retries=2, backoff_s=0.01, timeout_s=0.3) as client:
        session = client.session()
        run = ("POST", f"/v1/sessions/{session.id}/run")
        with pytest.raises(SessionLost, match="not retried because the call may have run"):
            session.run("print(1)")  # a run may have happened: never sent twice
        assert server.requests.count(run) == 1
        with pytest.raises(ServiceError, match="did not answer"):
            session.fork()  # no answer in time: not retried either
        assert server.requests.count(("POST", f"/v1/sessions/{session.id}/fork")) == 1
        with pytest.raises(ServiceUnavailable, match="unreachable after 3 tries"):
            client.health()  # idempotent: tried retries + 1 times
        assert server.requests.count(("GET", "/v1/health")) == 3
        session.close()
        assert server.requests.count(("DELETE", f"/v1/sessions/{session.id}")) == 3
    server.sock.close()


def test_every_host_down_is_a_clear_error(two_hosts):
    a, b = two_hosts
    a.kill()
    b.kill()
    with SandboxClient([a.url, b.url], token=TOKEN, retries=1, backoff_s=0.01) as client:
        with pytest.raises(ServiceUnavailable, match=r"no sandbox host could open a session \(2 host"):
            client.session()
        assert all(h["down"] for h in client.hosts())


def test_load_over_two_hosts_with_one_killed_mid_run_loses_nothing(two_hosts, small_png):
    a, b = two_hosts
    killed = threading.Event()

    def kill_b_a_third_in(report) -> None:
        if not killed.is_set() and report.ok >= 20:
            killed.set()
            b.kill()

    report = load_test(
        [a.url, b.url], small_png, sessions=60, clients=4, token=TOKEN, rerun_lost=True,
        on_episode=kill_b_a_third_in,
    )  # fmt: skip
    assert killed.is_set()
    assert report.errors == [] and report.ok == 60 and report.lost_or_mixed == 0
    assert report.per_host[b.url] >= 5 and report.per_host[a.url] >= 40  # both served; A after the kill
    assert sum(report.per_host.values()) == 60
