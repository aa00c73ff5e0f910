"""Worker uids: leased machine-wide in blocks, never shared by two live workers, reused as late as can be."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from thyme.sandbox import Sandbox, SandboxConfig, SandboxError
from thyme.sandbox.uids import UID_BASE, UID_COUNT, UidPool


@pytest.fixture
def lease_dir(tmp_path):
    return tmp_path / "leases"


def small_pool(lease_dir, count=8, block=4):
    return UidPool(lease_dir, base=5000, count=count, block=block)


def test_two_pools_on_one_machine_lease_disjoint_blocks(lease_dir):
    a, b = small_pool(lease_dir), small_pool(lease_dir)
    try:
        ua = {a.acquire() for _ in range(4)}
        ub = {b.acquire() for _ in range(4)}
        assert not ua & ub
        assert a.blocks != b.blocks
    finally:
        a.close()
        b.close()


def test_a_block_is_held_until_its_process_dies(lease_dir):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
                import pathlib, sys
                from thyme.sandbox.uids import UidPool
                pool = UidPool(pathlib.Path({str(lease_dir)!r}), base=5000, count=8, block=4)
                pool.acquire()
                print(pool.blocks[0], flush=True)
                sys.stdin.read()
            """),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        held = int(holder.stdout.readline())
        pool = small_pool(lease_dir)
        pool.acquire()
        assert held not in pool.blocks
        pool.close()
    finally:
        holder.kill()
        holder.wait()
    pool = small_pool(lease_dir)  # the kernel dropped the dead process's lock
    pool.acquire()
    assert pool.blocks == (held,)
    pool.close()


def test_a_released_uid_goes_to_the_end_of_the_line(lease_dir):
    pool = small_pool(lease_dir)
    first = pool.acquire()
    pool.release(first)
    others = [pool.acquire() for _ in range(3)]
    assert first not in others  # the other free uids of the block come first
    assert pool.acquire() == first
    pool.close()


def test_a_held_uid_is_never_handed_out_however_long_the_churn(lease_dir):
    pool = small_pool(lease_dir)
    kept = pool.acquire()
    for _ in range(100):
        uid = pool.acquire()
        assert uid != kept
        pool.release(uid)
    assert pool.in_use == 1
    pool.close()


def test_a_forked_uid_comes_back_with_its_last_process(lease_dir):
    pool = small_pool(lease_dir, count=4, block=4)
    uid = pool.acquire()
    pool.retain(uid)
    pool.release(uid)
    assert pool.in_use == 1  # the fork still runs as it
    pool.release(uid)
    pool.release(uid)  # a second release of the same process changes nothing
    assert pool.in_use == 0
    assert sorted(pool.acquire() for _ in range(4)) == [5000, 5001, 5002, 5003]
    with pytest.raises(ValueError, match="not handed out"):
        pool.retain(4999)
    pool.close()


def test_a_pool_grows_by_blocks_and_says_when_the_machine_has_none_left(lease_dir):
    a, b = small_pool(lease_dir), small_pool(lease_dir)
    try:
        for _ in range(6):
            a.acquire()
        assert len(a.blocks) == 2
        with pytest.raises(SandboxError, match=r"all 8 sandbox uids .* are in use on this machine"):
            b.acquire()
    finally:
        a.close()
        b.close()
    c = small_pool(lease_dir)
    assert c.acquire() == 5000  # closing gave the blocks back
    c.close()


@pytest.mark.parametrize("make", ["world_writable", "symlink", "file"])
def test_a_lease_dir_others_could_write_is_refused(tmp_path, make):
    target = tmp_path / "leases"
    if make == "world_writable":
        target.mkdir()
        target.chmod(0o777)
    elif make == "symlink":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        target.symlink_to(tmp_path / "elsewhere")
    else:
        target.write_text("")
    with pytest.raises(SandboxError, match="remove it and start again"):
        UidPool(target)


def worker_uid(session) -> int:
    result = session.run("import os\nprint(os.getuid(), os.geteuid())")
    uid, euid = map(int, result.stdout.split())
    assert uid == euid
    return uid


def test_live_workers_of_two_sandboxes_never_share_a_uid(scene_jpeg):
    config = SandboxConfig(pool_size=1)
    with Sandbox(config) as a, Sandbox(config) as b:
        sessions = [sb.session(inputs=[scene_jpeg]) for sb in (a, b) for _ in range(3)]
        try:
            uids = [worker_uid(s) for s in sessions]
        finally:
            for s in sessions:
                s.close()
        if os.geteuid() == 0:
            assert len(set(uids)) == len(uids)
            assert all(UID_BASE <= uid < UID_BASE + UID_COUNT for uid in uids)
            assert not set(a.uids.blocks) & set(b.uids.blocks)
        else:  # an ordinary user's workers run as that user, with no pool
            assert a.uids is None and set(uids) == {os.getuid()}


def test_a_fork_keeps_its_parents_uid_until_both_are_gone(scene_jpeg):
    with Sandbox(SandboxConfig(pool_size=1)) as sandbox:
        parent = sandbox.session(inputs=[scene_jpeg])
        uid = worker_uid(parent)
        fork = parent.fork()
        assert worker_uid(fork) == uid
        if sandbox.uids is None:
            assert uid == os.getuid()
            fork.close()
            parent.close()
            return
        held = sandbox.uids.in_use
        parent.close()
        assert sandbox.uids.in_use == held  # the fork still runs as it
        others = [sandbox.session(inputs=[scene_jpeg]) for _ in range(3)]
        assert uid not in [worker_uid(s) for s in others]
        held = sandbox.uids.in_use
        fork.close()
        assert sandbox.uids.in_use == held - 1
        for s in others:
            s.close()


def test_a_long_session_keeps_its_uid_to_itself_through_a_churn(scene_jpeg):
    """More sessions come and go than a block holds; none of them gets the uid of the one still open."""
    with Sandbox(SandboxConfig(pool_size=1)) as sandbox, sandbox.session(inputs=[scene_jpeg]) as kept:
        uid = worker_uid(kept)
        seen = set()
        for _ in range(300):
            with sandbox.session(inputs=[scene_jpeg]) as s:
                seen.add(worker_uid(s))
        if sandbox.uids is None:  # an ordinary user's workers all run as that user
            assert seen == {uid} == {os.getuid()}
        else:
            assert uid not in seen
            # One block served them all: its uids were handed out again and again, in turn.
            assert sandbox.uids.blocks == sandbox.uids.blocks[:1]
            assert 200 < len(seen) < 256
            assert worker_uid(kept) == uid
