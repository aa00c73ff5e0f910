"""`session.fork()`: an independent copy of the state, in its own process and output directory."""

from __future__ import annotations

import time

import pytest
from PIL import Image


def test_fork_copies_state_and_branches_independently(session):
    session.run("items = [1, 2]\ncount = 10")
    child = session.fork()
    try:
        child.run("items.append(3)\ncount += 1")
        session.run("items.append(99)")
        assert child.run("print(items, count)").stdout == "[1, 2, 3] 11\n"
        assert session.run("print(items, count)").stdout == "[1, 2, 99] 10\n"
    finally:
        child.close()


def test_fork_runs_in_another_process(session):
    parent_pid = session.run("import os\nprint(os.getpid())").stdout
    child = session.fork()
    with child:
        assert child.run("print(os.getpid())").stdout != parent_pid


def test_group_of_forks_like_a_grpo_group(session):
    session.run("base = 5")
    children = [session.fork() for _ in range(4)]
    try:
        for k, c in enumerate(children):
            c.run(f"base += {k}")
        assert [c.run("print(base)").stdout.strip() for c in children] == ["5", "6", "7", "8"]
        assert session.run("print(base)").stdout.strip() == "5"
    finally:
        for c in children:
            c.close()


def test_fork_of_a_fork(session):
    session.run("depth = 0")
    a = session.fork()
    a.run("depth += 1")
    b = a.fork()
    b.run("depth += 1")
    assert [s.run("print(depth)").stdout.strip() for s in (session, a, b)] == ["0", "1", "2"]
    b.close()
    a.close()


def test_forked_session_has_its_own_output_directory(session):
    session.run(
        "from PIL import Image\nimg = Image.open(image_path)\n"
        "processed_path = output_dir + '/first.png'\nimg.crop((0, 0, 100, 100)).save(processed_path)"
    )
    child = session.fork()
    with child:
        assert child.output_dir != session.output_dir
        result = child.run("print(output_dir)\nprint(processed_path)")
        out_line, processed_line = result.stdout.splitlines()
        assert out_line == str(child.output_dir)
        assert processed_line.startswith(str(child.output_dir))  # variables naming the old dir follow
        made = child.run("img.crop((0, 0, 80, 80)).save(output_dir + '/second.png')")
        assert len(made.images) == 1 and Image.open(made.images[0]).size == (80, 80)
        # The parent sees nothing of the child's new file.
        assert (
            session.run("import os\nprint(sorted(os.listdir(output_dir)))").stdout.strip() == "['first.png']"
        )
        # The earlier output was copied, so the branch can keep working on it.
        assert child.run("print(Image.open(processed_path).size)").stdout.strip() == "(100, 100)"


def test_fork_after_timeout_starts_from_fresh_state(sandbox, scene_jpeg):
    from thyme.sandbox import Sandbox, SandboxConfig

    with Sandbox(SandboxConfig(timeout_s=0.5, pool_size=0)) as sb, sb.session(inputs=[scene_jpeg]) as s:
        s.run("x = 1")
        assert s.run("while True: pass").timed_out
        child = s.fork()
        assert "NameError" in child.run("print(x)").error
        child.close()


def test_a_fork_tree_leaves_nothing_behind(sandbox, scene_jpeg):
    root = sandbox.session(inputs=[scene_jpeg])
    child = root.fork()
    grandchild = child.fork()
    root.close()
    assert root.forks_dir.exists()  # its forks still live inside it
    grandchild.close()
    assert child.output_dir.exists() and not grandchild.output_dir.exists()
    child.close()
    assert not root.forks_dir.exists() and not root.output_dir.exists()
    assert not root.home.exists()
    for s in (root, child, grandchild):
        s.discard_images()
        assert not s.images_dir.exists()


def _fork_reach_needs_landlock(sandbox) -> None:
    if "landlock" not in sandbox.isolation:
        pytest.xfail("sealing a parent off its forks is a Landlock layer, missing here")


PLANTER = (  # fork homes are named s000000, s000001... and may not be listable: try the names
    "import ctypes, os, signal, threading, time\n"
    "forks = os.path.join(os.path.dirname(output_dir), 'forks')\n"
    "planted = []\n"
    "def plant(*_):\n"
    "    for n in range(64):\n"
    "        try:\n"
    "            open(f'{forks}/s{n:06d}/out/planted.txt', 'w').close()\n"
    "            planted.append(n)\n"
    "        except OSError:\n"
    "            pass\n"
    "signal.signal(signal.SIGALRM, plant)\n"
    "pid = os.getpid()\n"
)
# Ways for code to keep running after its call returned; each would keep the parent's reach from before the
# seal. (pid changes: whether the worker was replaced by a single-threaded copy.)
LINGERING = {
    "thread": (
        "def loop():\n    while True:\n        plant()\n        time.sleep(0.005)\n"
        "threading.Thread(target=loop, daemon=True).start()",
        True,
    ),
    "interval_timer": ("signal.setitimer(signal.ITIMER_REAL, 0.005, 0.005)", False),
    "posix_timer": (  # timer_create(CLOCK_MONOTONIC, NULL: SIGALRM) + timer_settime, every 5 ms
        "rt = ctypes.CDLL('librt.so.1', use_errno=True)\ntimer = ctypes.c_void_p()\n"
        "assert rt.timer_create(1, None, ctypes.byref(timer)) == 0\n"
        "spec = (ctypes.c_long * 4)(0, 5_000_000, 0, 5_000_000)\n"
        "assert rt.timer_settime(timer, 0, spec, None) == 0",
        True,
    ),
}


@pytest.mark.parametrize("how", list(LINGERING))
def test_code_left_running_by_the_parent_cannot_reach_a_fork(sandbox, session, how):
    """A thread or a timer from an earlier call cannot act for the parent between the fork and its seal."""
    _fork_reach_needs_landlock(sandbox)
    code, replaced = LINGERING[how]
    started = session.run(PLANTER + code)
    assert started.ok, started.error
    with session.fork() as child:
        time.sleep(0.3)  # time enough for a surviving thread or timer to plant many times
        listing = child.run("import os\nprint(sorted(os.listdir(output_dir)))")
        assert listing.stdout.strip() == "[]", "code left running by the parent wrote into the fork"
        after = session.run("print(threading.active_count(), planted, os.getpid() != pid)")
    assert after.stdout.strip() == f"1 [] {replaced}", after  # the same state either way


def test_forks_in_a_row_share_one_seal(sandbox, scene_jpeg):
    """A GRPO group forks one session many times in a row; that costs it one Landlock layer, not one per
    fork, and siblings cannot reach each other."""
    from thyme.sandbox import Sandbox, SandboxConfig

    with Sandbox(SandboxConfig(pool_size=0)) as sb, sb.session(inputs=[scene_jpeg]) as s:
        s.run("seed = 7")
        children = [s.fork() for _ in range(20)]
        try:
            for k, c in enumerate(children):
                c.run(f"open(output_dir + '/mine.txt', 'w').write('{k}')")
            sibling = str(children[1].output_dir)
            probe = children[0].run(
                f"try:\n    open({sibling!r} + '/mine.txt').read()\nexcept OSError:\n    print('BLOCKED')"
            )
            assert probe.stdout.strip() == ("BLOCKED" if "landlock" in sb.isolation else ""), probe
            assert [c.run("print(seed)").stdout.strip() for c in children] == ["7"] * 20
            assert s.run("print(seed)").stdout.strip() == "7"
        finally:
            for c in children:
                c.close()


def test_a_deep_lineage_is_refused_clearly_under_landlock_and_fine_in_the_view(sandbox, scene_jpeg):
    from thyme.sandbox import Sandbox, SandboxConfig, SandboxError

    config = SandboxConfig(pool_size=0, filesystem=sandbox.config.filesystem)
    with Sandbox(config) as sb, sb.session(inputs=[scene_jpeg]) as s:
        s.run("n = 0")
        if "landlock" not in sb.isolation:  # the filesystem view stacks no layers: no cap to reach
            forks = []
            for _ in range(20):
                forks.append(s.fork())
                s.run("n += 1")
            assert forks[-1].run("print(n)").stdout.strip() == "19"
            for f in forks:
                f.close()
            return
        forks = []
        with pytest.raises(SandboxError, match=r"Landlock layers .* at most 16"):
            for _ in range(20):  # each fork-then-run costs the parent one layer
                forks.append(s.fork())
                s.run("n += 1")
        assert len(forks) == 15, "the bind layer plus 15 seals fill Landlock's 16"
        assert s.run("print(n)").stdout.strip() == "15", "a refused fork leaves the session working"
        assert forks[-1].run("print(n)").stdout.strip() == "14"
        for f in forks:
            f.close()


def test_files_the_parent_holds_open_survive_its_fork(session):
    """A parent with a thread is replaced by a single-threaded copy at a fork; what its code holds open
    stays open there."""
    session.run(
        "import os, threading\npid = os.getpid()\n"
        "threading.Thread(target=threading.Event().wait, daemon=True).start()\n"
        "log = open(output_dir + '/log.txt', 'w')\nlog.write('before ')\nlog.flush()"
    )
    with session.fork() as child:
        assert child.run("x = 1").ok
    after = session.run(
        "log.write('after')\nlog.close()\nprint(open(output_dir + '/log.txt').read(), os.getpid() != pid)"
    )
    assert after.ok and after.stdout.strip() == "before after True", after
