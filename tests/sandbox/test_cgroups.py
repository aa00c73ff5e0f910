"""Per-worker cgroups: a fork bomb stops at pids.max and every process of a session dies with it."""

from __future__ import annotations

import os
import time

import pytest
from sandbox_procs import pid_alive, wait_dead

from thyme.sandbox import Sandbox, SandboxConfig

FORK_BOMB = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"


@pytest.fixture
def bounded_sandbox():
    with Sandbox(SandboxConfig(timeout_s=2.0, pool_size=0, max_processes=32)) as sb:
        if "cgroup" not in sb.isolation:
            pytest.xfail(
                "fork bombs are contained only by the cgroup layer, which is missing on this machine"
            )
        yield sb


def test_fork_bomb_is_contained_and_cleaned_up(bounded_sandbox, scene_jpeg):
    with bounded_sandbox.session(inputs=[scene_jpeg]) as s:
        group = s._handle.cgroup
        result = s.run(FORK_BOMB)
        assert result.timed_out
        deadline = time.monotonic() + 3
        while group.pids() and time.monotonic() < deadline:  # SIGKILLed processes leave within moments
            time.sleep(0.02)
        assert group.pids() == set()  # the whole tree died with the worker
        assert s.run("print('recovered')").stdout == "recovered\n"
    with bounded_sandbox.session(inputs=[scene_jpeg]) as other:
        assert other.run("print(1 + 1)").stdout == "2\n"
    assert os.getpid() > 0


def test_processes_started_by_model_code_die_with_the_session(bounded_sandbox, scene_jpeg):
    s = bounded_sandbox.session(inputs=[scene_jpeg])
    code = "import os, time\npid = os.fork()\nif pid == 0:\n    time.sleep(600)\n    os._exit(0)\nprint(pid)"
    orphan = int(s.run(code).stdout)
    assert pid_alive(orphan)
    s.close()
    assert not wait_dead({orphan}, within=3)


def test_pids_limit_is_enforced(bounded_sandbox, scene_jpeg):
    with bounded_sandbox.session(inputs=[scene_jpeg]) as s:
        code = (
            "import os, time\nmade = 0\nfor _ in range(100):\n    try:\n        if os.fork() == 0:\n"
            "            time.sleep(30)\n            os._exit(0)\n        made += 1\n    except OSError:\n"
            "        break\nprint(made)"
        )
        made = int(s.run(code).stdout)
        assert made < 32
