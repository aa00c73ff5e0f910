"""Without cgroups (a container's read-only cgroupfs, or an ordinary user), the sandbox still contains what
model code starts, per lineage (a session and its forks):
- a root parent: RLIMIT_NPROC on the lineage's own uid stops a fork bomb, and the reaper kills every process
  left running as that uid once the lineage ends, whatever session or process group it fled to;
- an ordinary user: a user and a PID namespace per lineage (`thyme.sandbox.lineage`); RLIMIT_NPROC, counted
  in that user namespace, stops a fork bomb, and the namespace's init, killed with the lineage's last
  worker, takes every process in it along.

Every attack runs inside an outer safety net of the test's own, so that a regression fails instead of
freezing the machine: the test process's RLIMIT_NPROC (which the zygote and everything below it inherit)
leaves room for OUTER_PROCESSES more processes of this user, and every process an attack starts ends by
itself within seconds (60 s for the sleepers).

Run as root and as an ordinary user (`make test-unprivileged`).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import resource
import signal
import time

import pytest
from sandbox_procs import LineageWatch, process_limit, uid_tasks_with_zombies

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
# Forks until the kernel refuses, for 5 s; every process of it ends by itself then, whatever the sandbox does.
FORK_BOMB = (
    "import os, time\nend = time.time() + 5\nwhile time.time() < end:\n    try:\n"
    "        os.fork()\n    except OSError:\n        pass\nos._exit(0)"
)
COUNT_FORKS = (
    "import os, time\nmade = 0\nfor _ in range(100):\n    try:\n        if os.fork() == 0:\n"
    "            time.sleep(60)\n            os._exit(0)\n        made += 1\n    except OSError:\n"
    "        break\nprint(made)"
)


@pytest.fixture
def outer_process_limit():
    with process_limit(OUTER_PROCESSES) as bound:
        yield bound


def no_cgroups(monkeypatch, tmp_path) -> None:
    """Make the sandbox find no cgroup hierarchy to create groups in, as in a container or for most users."""
    monkeypatch.setattr(sandbox_cgroups, "ROOT", tmp_path / "no-cgroupfs")


def contained(sb: Sandbox) -> None:
    assert "cgroup" not in sb.isolation
    if not {"reaper", "lineage"} & set(
        sb.isolation
    ):  # nothing would contain these attacks: do not start them
        pytest.xfail("neither the reaper (root parents) nor lineages (user and PID namespaces) are active")


@pytest.fixture
def sandbox(monkeypatch, tmp_path, outer_process_limit):
    """A real sandbox on a machine with no cgroup hierarchy to create groups in."""
    no_cgroups(monkeypatch, tmp_path)
    config = SandboxConfig(timeout_s=2.0, pool_size=0, max_processes=MAX_PROCESSES)
    with Sandbox(config) as sb:
        contained(sb)
        with open(f"/proc/{sb._zygote.proc.pid}/limits") as f:  # the net holds below the sandbox too
            limit = next(line for line in f if line.startswith("Max processes")).split()[2]
        assert int(limit) == outer_process_limit
        yield sb


def wait_gone(watch: LineageWatch, within: float = 5.0) -> set[int]:
    """Processes of the lineage still alive after `within` seconds. Gone means three empty scans in a row,
    0.1 s apart: a scan can miss a reforking chain's member while it hands over to its child."""
    if watch.uid is not None:
        assert UID_BASE <= watch.uid < UID_BASE + UID_COUNT, f"{watch.uid} is not a sandbox uid"
    deadline, empty = time.monotonic() + within, 0
    while empty < 3:
        left = watch.processes()
        empty = 0 if left else empty + 1
        if left and time.monotonic() > deadline:
            return left
        time.sleep(0.1)
    return set()


def wait_started(watch: LineageWatch, count: int) -> bool:
    deadline = time.monotonic() + 2.0
    while len(watch.processes()) < count:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def kill_all(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def test_the_layers_say_what_stands_in_for_the_cgroup(sandbox):
    layers = {layer.name: layer for layer in sandbox.layers}
    assert layers["reaper"].active != layers["lineage"].active  # one per kind of parent
    assert "RLIMIT_NPROC" in layers["rlimits"].detail


def test_a_fork_bomb_stops_at_the_process_limit_and_dies_with_its_worker(sandbox, scene_jpeg):
    with sandbox.session(inputs=[scene_jpeg]) as s:
        s.run("pass")
        watch = LineageWatch(s)
        try:
            made = int(s.run(COUNT_FORKS).stdout)
            assert 0 < made < MAX_PROCESSES
            bomb = s.run(FORK_BOMB)
            assert bomb.timed_out  # the worker was killed; every process of its lineage goes with it
            left = wait_gone(watch)
            kill_all(left)
            assert not left, f"the fork bomb outlived its worker: {len(left)} processes"
        finally:
            watch.close()
        start = time.monotonic()
        assert s.run("print('recovered')").stdout == "recovered\n"
        assert time.monotonic() - start < 1.0


@pytest.mark.parametrize("how", list(LEFTOVERS))
def test_processes_model_code_started_die_with_the_session(sandbox, scene_jpeg, how):
    """Survivors are killed by the test (they are the lineage's: its sandbox uid or its PID namespace)."""
    with sandbox.session(inputs=[scene_jpeg]) as s:
        s.run("pass")
        watch = LineageWatch(s)
        before = len(watch.processes())
        assert s.run(LEFTOVERS[how]).ok
        assert wait_started(watch, before + 1), "the attack did not start"
    try:
        left = wait_gone(watch)
        kill_all(left)
    finally:
        watch.close()
    assert not left, f"processes started by model code outlived their session: {left}"


def test_a_fork_keeps_the_processes_of_its_lineage_alive(sandbox, scene_jpeg):
    """The lineage ends with its last process: closing a parent spares its fork, and what the fork started."""
    parent = sandbox.session(inputs=[scene_jpeg])
    parent.run("pass")
    watch = LineageWatch(parent)
    try:
        fork = parent.fork()
        assert fork.run(LEFTOVERS["sleeping_child"]).ok
        parent.close()
        time.sleep(0.3)
        assert fork.run("print('alive')").stdout == "alive\n"
        assert len(watch.processes()) >= 2  # the fork and its child (and, in a namespace, its init)
        fork.close()
        left = wait_gone(watch)
        kill_all(left)
    finally:
        watch.close()
    assert not left


def test_a_lineage_shares_one_process_limit_and_a_full_one_refuses_forks(sandbox, scene_jpeg):
    """The forks of a session count against the same max_processes; fork() then fails cleanly, and the
    parent keeps its state."""
    with sandbox.session(inputs=[scene_jpeg]) as s:
        assert 0 < int(s.run("kept = 1\n" + COUNT_FORKS).stdout) < MAX_PROCESSES
        with pytest.raises(SandboxError, match="max_processes"):
            s.fork()
        assert s.run("print(kept)").stdout == "1\n"


def test_closed_forks_do_not_use_up_the_lineages_process_limit(sandbox, scene_jpeg):
    """A killed fork stays a zombie until its parent's worker reaps it, and zombies count against the limit:
    far more forks than max_processes, made and closed one after another, must all start."""
    with sandbox.session(inputs=[scene_jpeg]) as s:
        s.run("n = 0")
        uid = s._handle.uid
        if uid is not None:  # a root parent's uid may come from a Sandbox closed just before, whose killed
            deadline = time.monotonic() + 10  # processes, reparented to pid 1, wait there to be reaped
            while uid_tasks_with_zombies(uid) - {s._handle.pid} and time.monotonic() < deadline:
                time.sleep(0.05)
        for k in range(4 * MAX_PROCESSES):
            with s.fork() as fork:
                assert fork.run("print(n)").stdout == "0\n", k


OUT_OF_RANGE = [0, UID_BASE - 1, UID_BASE + UID_COUNT, os.getuid()]


@pytest.mark.parametrize("uid", OUT_OF_RANGE + ([] if os.geteuid() == 0 else [UID_BASE]))
def test_the_zygote_reaps_only_sandbox_uids_and_only_for_a_root_parent(uid):
    """kill(-1) as any other uid would hit far more than a lineage; an ordinary user's zygote reaps nothing.
    (No in-range uid is tried under root: another Sandbox of this test run may hold it.)"""
    with Sandbox(SandboxConfig(pool_size=0)) as sb, pytest.raises(SandboxError, match="refusing to reap"):
        sb._zygote.reap(uid)


# -- the pool survives anything one session does ----------------------------------------------------------
ORDINARY_USER = (
    "an ordinary user's case: a root parent's workers each have a uid of their own, and root is exempt"
)


def test_a_bomb_that_fills_the_users_process_limit_does_not_break_the_pool(monkeypatch, tmp_path, scene_jpeg):
    """The user's own limit is tighter than max_processes: while the bomb holds it nothing can fork, and once
    the bomb's worker is killed the next session (a fresh spawn: no pool) is served within a second."""
    if os.geteuid() == 0:
        pytest.skip(ORDINARY_USER)
    no_cgroups(monkeypatch, tmp_path)
    with process_limit(40), Sandbox(SandboxConfig(timeout_s=2.0, pool_size=0, max_processes=64)) as sb:
        contained(sb)
        with sb.session(inputs=[scene_jpeg]) as bomber:
            bomber.run("pass")
            watch = LineageWatch(bomber)
            try:
                assert bomber.run(FORK_BOMB).timed_out
                left = wait_gone(watch)
                kill_all(left)
            finally:
                watch.close()
            assert not left
        start = time.monotonic()
        with sb.session(inputs=[scene_jpeg]) as after:
            assert after.run("print('served')").stdout == "served\n"
        assert time.monotonic() - start < 1.0
        assert sb._zygote.alive


def zygote_group(sb: Sandbox) -> int:
    """Processes in the zygote's process group: the zygote, its mounter, and each worker with its init."""
    group = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                stat = pathlib.Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                group += int(stat[2]) == sb._zygote.proc.pid and stat[0] not in ("Z", "X")
    return group


def test_a_zygote_refused_a_fork_answers_and_serves_again_once_there_is_room(
    monkeypatch, tmp_path, scene_jpeg
):
    """The kernel refuses the zygote's forks (its process limit lowered to what its group holds now): a new
    session fails with an error naming a log that exists, the zygote lives on, and once a session closes
    (room again) the next one is served within a second, and the pool fills up again."""
    if os.geteuid() == 0:
        pytest.skip(ORDINARY_USER)
    no_cgroups(monkeypatch, tmp_path)
    with Sandbox(SandboxConfig(pool_size=1)) as sb:
        contained(sb)
        deadline = time.monotonic() + 10
        while len(sb._pool) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        zygote = sb._zygote
        hard = resource.prlimit(zygote.proc.pid, resource.RLIMIT_NPROC)[1]
        resource.prlimit(zygote.proc.pid, resource.RLIMIT_NPROC, (zygote_group(sb), hard))
        with sb.session(inputs=[scene_jpeg]) as s:  # the waiting worker
            assert s.run("print(1)").ok
            with pytest.raises(SandboxError, match="could not fork a worker") as refused:
                sb.session(inputs=[scene_jpeg])
        assert str(sb.zygote_log) in str(refused.value) and sb.zygote_log.is_file()
        start = time.monotonic()
        with sb.session(inputs=[scene_jpeg]) as u:
            assert u.run("print(3)").stdout == "3\n"
        assert time.monotonic() - start < 1.0
        assert sb._zygote is zygote and zygote.alive
        deadline = time.monotonic() + 5
        while len(sb._pool) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(sb._pool) == 1, "the pool thread gave up"
    assert sb.zygote_log.is_file(), "a log that an error named is gone"
    sb.zygote_log.unlink()


def test_a_dead_zygote_is_restarted_and_its_log_outlives_the_sandbox(scene_jpeg):
    with Sandbox(SandboxConfig(pool_size=0)) as sb:
        first = sb._zygote
        first.proc.kill()
        first.proc.wait()
        with sb.session(inputs=[scene_jpeg]) as s:
            assert s.run("print('again')").stdout == "again\n"
        assert sb._zygote is not first
        with pytest.raises(SandboxError, match="stopped answering") as failure:
            first.spawn({})
    log = sb.zygote_log
    assert str(log) in str(failure.value) and log.is_file(), "the error names a log that is gone"
    assert "stopped answering" in log.read_text()
    log.unlink()
