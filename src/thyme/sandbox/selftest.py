"""A functional self-test of the sandbox on this machine, used by `thyme sandbox check`.

It starts a real sandbox (with a small disk quota) and checks the behaviours every consumer relies on: the
confinement probes below (and the quota, a parent sealed off its fork, a process that fled its session
dying with it and a cap on processes, where those layers are active), code runs out of process, state
persists, an image is produced and collected, a runaway loop is killed on time, and a crash is an error
result rather than a hang. The confinement attack suite lives in the tests; this is the quick check.
"""

from __future__ import annotations

import os
import select
import tempfile
import time
from typing import Any

from PIL import Image

from thyme.sandbox.config import SandboxConfig
from thyme.sandbox.core import Sandbox
from thyme.sandbox.lineage import host_pid

_TRY = "try:\n    {action}\n    print('BREACHED')\nexcept OSError:\n    print('denied')"

# (name, an action that must raise OSError when the layer holds)
CONFINEMENT_PROBES = (
    ("cannot read /etc/shadow", _TRY.format(action="open('/etc/shadow').read()")),
    ("cannot write outside", _TRY.format(action="open(SECRET_DIR + '/x', 'w').write('x')")),
    ("cannot modify the input", _TRY.format(action="open(image_path, 'ab').write(b'x')")),
    (
        "cannot reach the network",
        "import socket\n" + _TRY.format(action="socket.create_connection(('127.0.0.1', 9), 1)"),
    ),
    ("cannot run programs", "import os\n" + _TRY.format(action="os.execv('/bin/true', ['true'])")),
)
# Run where the disk_quota layer is active: one file twice the selftest's quota; removed again after.
SELFTEST_OUTPUT_MB = 4
QUOTA_PROBE = (
    "import os\n"
    + _TRY.format(action=f"open('fill.bin', 'wb').write(bytes({2 * SELFTEST_OUTPUT_MB} << 20))")
    + "\nos.remove('fill.bin')"
)

# Run where the cgroup, reaper or lineage layer is active: a child that leaves the session's process group
# and would sleep on (it ends by itself after 30 s in any case). It prints its pid as it sees it.
LEFTOVER_PROBE = (
    "import os, time\npid = os.fork()\nif pid == 0:\n    os.setsid()\n    time.sleep(30)\n    os._exit(0)\n"
    "print(pid)"
)

# Run with the leftover probe: children that sleep for 3 s, forked until the process cap refuses one (or 64
# are made: no cap). The self-test's sandbox caps a session at SELFTEST_PROCESSES processes and threads.
SELFTEST_PROCESSES = 16
CAP_PROBE = (
    "import os, time\nmade = 0\nfor _ in range(64):\n    try:\n        if os.fork() == 0:\n"
    "            time.sleep(3)\n            os._exit(0)\n        made += 1\n    except OSError:\n"
    "        break\nprint(made)"
)


def _processes_capped(sandbox: Sandbox, image: str) -> tuple[bool, str]:
    with sandbox.session(inputs=[image]) as s:
        r = s.run(CAP_PROBE)
    try:
        made = int(r.stdout)
    except ValueError:
        return False, f"the probe did not run: {r.error}"
    return 0 < made < SELFTEST_PROCESSES, f"{made} processes started, cap {SELFTEST_PROCESSES}"


def _leftover_dies(sandbox: Sandbox, image: str) -> tuple[bool, str]:
    """Start LEFTOVER_PROBE, close its session, and watch the child through a pidfd (no pid reuse). In a
    lineage's PID namespace the printed pid is translated to ours through the worker's namespace."""
    with sandbox.session(inputs=[image]) as s:
        r = s.run(LEFTOVER_PROBE)
        worker = s._handle.pid if s._handle is not None else 0
        try:
            pid = host_pid(worker, int(r.stdout))
            if pid is None:
                raise ProcessLookupError(f"no process {int(r.stdout)} in the worker's PID namespace")
            pidfd = os.pidfd_open(pid)
        except (ValueError, OSError) as exc:
            return False, f"the probe did not start: {r.stdout.strip() or r.error} ({exc})"
    start = time.monotonic()
    try:
        gone = bool(select.select([pidfd], [], [], 3.0)[0])
    finally:
        os.close(pidfd)
    took = time.monotonic() - start
    return gone, f"gone {took * 1e3:.0f} ms after its session closed" if gone else "still running after 3 s"


def run_selftest(
    timeout_s: float = 1.0, allow_weak_isolation: bool = False, filesystem: str = "auto"
) -> dict[str, Any]:
    checks: list[dict[str, Any]] = []

    def check(name: str, passed: bool, detail: str) -> None:
        checks.append({"name": name, "passed": bool(passed), "detail": detail})

    with tempfile.TemporaryDirectory(prefix="thyme-selftest-") as tmp:
        image = os.path.join(tmp, "input.png")
        Image.new("RGB", (640, 480), (200, 30, 30)).save(image)
        config = SandboxConfig(
            timeout_s=timeout_s,
            pool_size=1,
            output_mb=SELFTEST_OUTPUT_MB,
            max_processes=SELFTEST_PROCESSES,
            allow_weak_isolation=True,
            filesystem=filesystem,
        )
        with Sandbox(config) as sandbox:
            layers = [
                {"name": x.name, "active": x.active, "required": x.required, "detail": x.detail}
                for x in sandbox.layers
            ]
            missing = [x["name"] for x in layers if x["required"] and not x["active"]]
            check(
                "required layers present",
                not missing or allow_weak_isolation,
                f"missing: {', '.join(missing)}" if missing else "all layers this build enforces are active",
            )
            with sandbox.session(inputs=[image]) as s:
                s.run(f"SECRET_DIR = {tmp!r}")
                for name, probe in CONFINEMENT_PROBES:
                    r = s.run(probe)
                    check(name, r.stdout.strip() == "denied", r.stdout.strip() or str(r.error))
                if "disk_quota" in sandbox.isolation:
                    r = s.run(QUOTA_PROBE)
                    check(
                        "cannot fill the disk", r.stdout.strip() == "denied", r.stdout.strip() or str(r.error)
                    )
                r = s.run("import os\npid = os.getpid()\nprint(pid)")
                check(
                    "out-of-process",
                    r.ok and r.stdout.strip() != str(os.getpid()),
                    f"worker pid {r.stdout.strip()}",
                )
                r = s.run("print(pid == os.getpid())")
                check("state persists", r.stdout.strip() == "True", r.stdout.strip() or str(r.error))
                if "landlock" in sandbox.isolation:
                    with s.fork() as branch:
                        branch.run("open('mine.txt', 'w').write('x')")
                        mine = os.path.join(str(branch.output_dir), "mine.txt")
                        r = s.run(_TRY.format(action=f"open({mine!r}).read()"))
                    check(
                        "cannot reach its forks",
                        r.stdout.strip() == "denied",
                        r.stdout.strip() or str(r.error),
                    )
                r = s.run(
                    "from PIL import Image\nim = Image.open(image_path).crop((0, 0, 100, 100))\n"
                    "processed_path = '/mnt/data/temp_processed_images/crop.png'\nim.save(processed_path)\n"
                    "print(processed_path)"
                )
                check(
                    "image collected",
                    r.ok and len(r.images) == 1,
                    f"{len(r.images)} image(s), error={r.error}",
                )
                start = time.monotonic()
                r = s.run("while True:\n    pass")
                took = time.monotonic() - start
                check("timeout kills", r.timed_out and took < timeout_s + 1, f"stopped after {took:.2f} s")
                r = s.run("import os\nos._exit(7)")
                check("crash is an error", r.error is not None and not r.timed_out, (r.error or "")[:60])
                r = s.run("print('alive')")
                check("recovers after crash", r.stdout.strip() == "alive" and r.restarted, r.stdout.strip())
            if {"cgroup", "reaper", "lineage"} & set(sandbox.isolation):
                check("what it started dies with it", *_leftover_dies(sandbox, image))
                check("processes are capped", *_processes_capped(sandbox, image))
    return {"layers": layers, "checks": checks}
