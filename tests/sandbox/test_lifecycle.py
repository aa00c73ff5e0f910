"""Timeouts, crashes and recovery: a runaway or dying worker is an error result, never a hang."""

from __future__ import annotations

import time

import pytest
from sandbox_procs import wait_dead

from thyme.sandbox import Sandbox, SandboxConfig

TIMEOUT = 1.0


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(SandboxConfig(timeout_s=TIMEOUT, pool_size=1)) as sb:
        yield sb


RUNAWAYS = {
    "python loop": "while True:\n    pass",
    "sleep": "import time\ntime.sleep(60)",
    "ignores signals": (
        "import signal\nfor s in (signal.SIGALRM, signal.SIGINT, signal.SIGTERM):\n"
        "    signal.signal(s, signal.SIG_IGN)\nwhile True:\n    pass"
    ),
    "regex backtracking in C": "import re\nre.match(r'(a*)*b', 'a' * 64)",
    "numpy busy loop in C": "import numpy as np\nx = np.ones((4000, 4000))\nwhile True:\n    x = x @ x",
}


@pytest.mark.parametrize("name", sorted(RUNAWAYS))
def test_runaway_code_is_killed_on_time(sandbox, scene_jpeg, name):
    with sandbox.session(inputs=[scene_jpeg]) as s:
        s.run("kept = 1")
        start = time.monotonic()
        result = s.run(RUNAWAYS[name])
        elapsed = time.monotonic() - start
        assert result.timed_out and not result.ok
        assert "TimeoutError" in result.error
        assert elapsed < TIMEOUT + 1.0
        after = s.run("print('kept' in globals())")
        assert after.restarted and after.stdout == "False\n"


CRASHES = {
    "segfault": "import ctypes\nctypes.string_at(0)",
    "os._exit": "import os\nos._exit(0)",
    "self kill": "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
    "abort": "import os\nos.abort()",
}


@pytest.mark.parametrize("name", sorted(CRASHES))
def test_crash_is_an_error_result(sandbox, scene_jpeg, name):
    with sandbox.session(inputs=[scene_jpeg]) as s:
        start = time.monotonic()
        result = s.run(CRASHES[name])
        assert time.monotonic() - start < TIMEOUT
        assert not result.timed_out and "SandboxCrash" in result.error
        again = s.run("print('fresh')")
        assert again.ok and again.restarted and again.stdout == "fresh\n"


def test_pool_keeps_serving_after_many_deaths(sandbox, scene_jpeg):
    for _ in range(10):
        with sandbox.session(inputs=[scene_jpeg]) as s:
            s.run("import os\nos._exit(1)")
    with sandbox.session(inputs=[scene_jpeg]) as s:
        assert s.run("print(6 * 7)").stdout == "42\n"


def test_closing_the_sandbox_kills_its_workers(scene_jpeg):

    sb = Sandbox(SandboxConfig(timeout_s=5, pool_size=1))
    s = sb.session(inputs=[scene_jpeg])
    forked = s.fork()
    assert s.run("print('up')").ok and forked.run("print('forked')").ok
    pid, child_pid = s._handle.pid, forked._handle.pid  # code may see other numbers, in a PID namespace
    sb.close()
    assert not wait_dead({pid, child_pid})
    assert not sb.root.exists()
    with pytest.raises(RuntimeError, match="closed"):
        sb.session()


def test_memory_limit_turns_a_memory_bomb_into_an_error(scene_jpeg):
    with Sandbox(SandboxConfig(memory_mb=768, pool_size=0)) as sb, sb.session(inputs=[scene_jpeg]) as s:
        result = s.run("blob = bytearray(2 << 30)")
        assert "MemoryError" in result.error
        assert s.run("print('alive')").stdout == "alive\n"


def test_dead_pooled_worker_is_replaced(scene_jpeg):
    import os
    import signal

    with Sandbox(SandboxConfig(pool_size=1)) as sb:
        deadline = time.monotonic() + 10
        while not sb._pool and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(sb._pool[0].pid, signal.SIGKILL)
        time.sleep(0.1)
        with sb.session(inputs=[scene_jpeg]) as s:
            assert s.run("print('served')").stdout == "served\n"


def test_sessions_keep_a_disk_quota_across_a_zygote_restart(request, scene_jpeg):
    """A new zygote has a new mount namespace: sessions get their output tmpfs mounted again in it."""
    import os
    import signal

    fill = "open('fill.bin', 'wb').write(bytes(8 << 20))"  # twice the quota; file_mb would allow it
    with Sandbox(SandboxConfig(timeout_s=5, pool_size=0, output_mb=4)) as sb:
        if "disk_quota" not in sb.isolation:
            request.applymarker(pytest.mark.xfail(strict=True, reason="the disk_quota layer is missing here"))
        with sb.session(inputs=[scene_jpeg]) as old:
            first = sb._zygote
            os.kill(first.proc.pid, signal.SIGKILL)
            first.proc.wait()
            with sb.session(inputs=[scene_jpeg]) as new:  # its worker comes from a restarted zygote
                assert sb._zygote is not first
                crash = old.run("import os\nos._exit(1)")  # the next worker of `old` is the new zygote's
                results = [s.run(fill) for s in (new, old)]
    assert "SandboxCrash" in crash.error and results[1].restarted
    for result in results:
        assert "No space left on device" in result.error and result.output_full
