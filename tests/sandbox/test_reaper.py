"""Without cgroups (a container's read-only cgroupfs), a root parent still contains what model code starts:
RLIMIT_NPROC on the lineage's own uid stops a fork bomb, and the reaper kills every process left running as
that uid once the lineage ends, whatever session or process group it fled to."""

from __future__ import annotations

import os
import resource
import time

import pytest
from sandbox_procs import uid_processes
from test_uids import worker_uid

from thyme.sandbox import Sandbox, SandboxConfig, SandboxError
from thyme.sandbox import cgroups as sandbox_cgroups
from thyme.sandbox.uids import UID_BASE, UID_COUNT

MAX_PROCESSES = 16
OUTER_PROCESSES = 256
# Every process here ends by itself within a minute, so a regression cannot leave the machine busy for long.
LEFTOVERS = {
    "sleeping_child": "import os, time\nif os.fork() == 0:\n    time.sleep(60)\n    os._exit(0)\n",
    "setsid_daemon": (
        "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n    os._exit(0)\n"
    ),
    "reforking_chain": (  # each generation forks the next and exits: always a fresh pid to chase
        "import os, time\nend = time.time() + 60\nif os.fork() == 0:\n    os.setsid()\n"
        "    while time.time() < end:\n        if os.fork():\n            os._exit(0)\n"
        "        time.sleep(0.2)\n    os._exit(0)\n"
    ),
}


@pytest.fixture
def outer_process_limit():
    """An outer bound for a regression: the zygote inherits this RLIMIT_NPROC, and workers (which are not
    root) are held to it even if the sandbox forgot its own. Root itself is not counted."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
    bound = OUTER_PROCESSES if hard == resource.RLIM_INFINITY else min(OUTER_PROCESSES, hard)
    resource.setrlimit(resource.RLIMIT_NPROC, (bound, hard))  # the soft limit: seccomp keeps it from rising
    yield
    resource.setrlimit(resource.RLIMIT_NPROC, (soft, hard))


@pytest.fixture
def sandbox(monkeypatch, tmp_path, outer_process_limit):
    """A real sandbox on a machine with no cgroup hierarchy to create groups in."""
    monkeypatch.setattr(sandbox_cgroups, "ROOT", tmp_path / "no-cgroupfs")
    config = SandboxConfig(timeout_s=2.0, pool_size=0, max_processes=MAX_PROCESSES)
    with Sandbox(config) as sb:
        assert "cgroup" not in sb.isolation
        if "reaper" not in sb.isolation:  # nothing would contain these attacks: do not start them
            pytest.xfail("the reaper needs a root parent (a uid per lineage)")
        yield sb


def wait_gone(uid: int, within: float = 5.0) -> set[int]:
    """Processes of `uid` still alive after `within` seconds. Gone means three empty scans in a row, 0.1 s
    apart: a scan can miss a reforking chain's member while it hands over to its child."""
    assert UID_BASE <= uid < UID_BASE + UID_COUNT, f"{uid} is not a sandbox uid: its processes are not ours"
    deadline, empty = time.monotonic() + within, 0
    while empty < 3:
        left = uid_processes(uid)
        empty = 0 if left else empty + 1
        if left and time.monotonic() > deadline:
            return left
        time.sleep(0.1)
    return set()


def wait_started(uid: int, count: int) -> bool:
    deadline = time.monotonic() + 2.0
    while len(uid_processes(uid)) < count:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_the_layers_say_what_stands_in_for_the_cgroup(sandbox):
    layers = {layer.name: layer for layer in sandbox.layers}
    assert layers["reaper"].active
    assert "RLIMIT_NPROC" in layers["rlimits"].detail


def test_a_fork_bomb_stops_at_the_process_limit_and_dies_with_its_worker(sandbox, scene_jpeg):
    with sandbox.session(inputs=[scene_jpeg]) as s:
        uid = worker_uid(s)
        code = (
            "import os, time\nmade = 0\nfor _ in range(100):\n    try:\n        if os.fork() == 0:\n"
            "            time.sleep(60)\n            os._exit(0)\n        made += 1\n    except OSError:\n"
            "        break\nprint(made)"
        )
        made = int(s.run(code).stdout)
        assert 0 < made < MAX_PROCESSES
        bomb = s.run(  # every process of it ends by itself after 5 s, whatever the sandbox does
            "import os, time\nend = time.time() + 5\nwhile time.time() < end:\n    try:\n"
            "        os.fork()\n    except OSError:\n        pass\nos._exit(0)"
        )
        assert bomb.timed_out  # the worker was killed; every process of its uid goes with it
        assert not wait_gone(uid)
        assert s.run("print('recovered')").stdout == "recovered\n"


@pytest.mark.parametrize("how", list(LEFTOVERS))
def test_processes_model_code_started_die_with_the_session(sandbox, scene_jpeg, how):
    """Survivors are killed by the test (they run as a sandbox uid, checked by `wait_gone`)."""
    with sandbox.session(inputs=[scene_jpeg]) as s:
        uid = worker_uid(s)
        assert s.run(LEFTOVERS[how]).ok
        assert wait_started(uid, 2), "the attack did not start"
    left = wait_gone(uid)
    for pid in left:
        os.kill(pid, 9)
    assert not left, f"processes started by model code outlived their session: {left}"


def test_a_fork_keeps_the_processes_of_its_lineage_alive(sandbox, scene_jpeg):
    """The reaper waits for the lineage's last process: closing a parent spares its fork."""
    parent = sandbox.session(inputs=[scene_jpeg])
    uid = worker_uid(parent)
    fork = parent.fork()
    parent.close()
    time.sleep(0.3)
    assert fork.run("print('alive')").stdout == "alive\n"
    fork.close()
    assert not wait_gone(uid)


OUT_OF_RANGE = [0, UID_BASE - 1, UID_BASE + UID_COUNT, os.getuid()]


@pytest.mark.parametrize("uid", OUT_OF_RANGE + ([] if os.geteuid() == 0 else [UID_BASE]))
def test_the_zygote_reaps_only_sandbox_uids_and_only_for_a_root_parent(uid):
    """kill(-1) as any other uid would hit far more than a lineage; an ordinary user's zygote reaps nothing.
    (No in-range uid is tried under root: another Sandbox of this test run may hold it.)"""
    with Sandbox(SandboxConfig(pool_size=0)) as sb, pytest.raises(SandboxError, match="refusing to reap"):
        sb._zygote.reap(uid)
