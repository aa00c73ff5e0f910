"""The filesystem view: Landlock's stand-in for root parents on kernels without it (thyme.sandbox.fsview).

The attack suite and the session, fork and output contracts run against it too (tests/sandbox/filesystems.py);
these are the view's own properties: what is in it, how it is chosen, and that it survives a zygote restart.
"""

from __future__ import annotations

import os
import signal
import uuid

import pytest

from thyme.sandbox import Sandbox, SandboxConfig, SandboxError
from thyme.sandbox import landlock as sandbox_landlock

NEEDS_ROOT = "the view needs a root parent: only a uid per session keeps sessions apart inside it"


def test_an_ordinary_user_is_refused_the_view_and_a_root_parent_gets_it():
    config = SandboxConfig(pool_size=0, filesystem="view")
    if os.geteuid() != 0:
        with pytest.raises(SandboxError, match=r"fs_view .*needs a root parent"):
            Sandbox(config)
        return
    with Sandbox(config) as sb:
        layers = {layer.name: layer for layer in sb.layers}
        assert layers["fs_view"].active and layers["fs_view"].required
        assert not layers["landlock"].active and not layers["landlock"].required


@pytest.fixture(scope="module")
def sandbox():
    if os.geteuid() != 0:
        pytest.xfail(NEEDS_ROOT)
    with Sandbox(SandboxConfig(pool_size=1, timeout_s=3.0, filesystem="view")) as sb:
        yield sb


def test_the_view_holds_the_runtime_and_the_sandbox_tree_only(sandbox, scene_jpeg, tmp_path):
    planted = tmp_path / f"host-{uuid.uuid4().hex}.txt"
    planted.write_text("host")
    code = (
        "import os, sys\n"
        "def seen(p):\n    return os.path.exists(p)\n"
        f"print(seen({str(planted)!r}), seen('/proc/self'), seen('/etc/passwd'), seen('/home'), "
        "seen('/var'), seen('/sys'))\n"
        "print(seen(sys.executable), seen(image_path), seen(output_dir), seen('/dev/null'))\n"
        "import numpy, PIL, cv2\nprint(numpy.zeros(3).sum(), open('/dev/urandom', 'rb').read(4) != b'')\n"
        "try:\n    os.listdir('/')\nexcept PermissionError:\n    print('unlisted')"
    )
    with sandbox.session(inputs=[scene_jpeg]) as s:
        result = s.run(code)
    assert result.ok, result.error
    assert result.stdout.splitlines() == [
        "False False False False False False",
        "True True True True",
        "0.0 True",
        "unlisted",
    ]


def test_the_view_is_read_only_where_it_is_not_the_sessions_own(sandbox, scene_jpeg):
    code = (
        "import os, sys\nresults = []\n"
        "for target in (os.path.dirname(sys.executable) + '/planted', '/planted', '/dev/planted'):\n"
        "    try:\n        open(target, 'w').write('x')\n        results.append('WROTE')\n"
        "    except OSError as exc:\n        results.append(exc.errno)\n"
        "print(results)"
    )
    with sandbox.session(inputs=[scene_jpeg]) as s:
        result = s.run(code)
    assert result.ok and "WROTE" not in result.stdout, result


def test_no_new_privs_is_set_in_the_view_as_under_landlock(sandbox, scene_jpeg):
    with sandbox.session(inputs=[scene_jpeg]) as s:
        result = s.run("import ctypes\nprint(ctypes.CDLL(None).prctl(39, 0, 0, 0, 0))")  # PR_GET_NO_NEW_PRIVS
    assert result.stdout == "1\n", result
    assert "no_new_privs" in sandbox.isolation


def test_the_view_comes_back_with_a_restarted_zygote(scene_jpeg):
    if os.geteuid() != 0:
        pytest.xfail(NEEDS_ROOT)
    look = "import os\nprint(os.path.exists('/etc/passwd'), os.path.exists(image_path))"
    with Sandbox(SandboxConfig(pool_size=0, filesystem="view")) as sb, sb.session(inputs=[scene_jpeg]) as old:
        first = sb._zygote
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait()
        with sb.session(inputs=[scene_jpeg]) as new:  # its worker comes from a restarted zygote
            assert sb._zygote is not first
            assert new.run(look).stdout == "False True\n"
        assert "SandboxCrash" in old.run("import os\nos._exit(1)").error
        again = old.run(look)  # the next worker of `old` is the new zygote's, in the new view
        assert again.restarted and again.stdout == "False True\n", again


def test_auto_picks_the_view_where_the_kernel_has_no_landlock(monkeypatch, scene_jpeg):
    if os.geteuid() != 0:
        pytest.xfail(NEEDS_ROOT)
    monkeypatch.setattr(sandbox_landlock, "abi_version", lambda: 0)  # a kernel without Landlock
    with Sandbox(SandboxConfig(pool_size=0)) as sb, sb.session(inputs=[scene_jpeg]) as s:
        assert "fs_view" in sb.isolation and "landlock" not in sb.isolation
        assert s.run("import os\nprint(os.path.exists('/etc/passwd'))").stdout == "False\n"


def test_without_landlock_an_ordinary_user_fails_closed_with_the_reason(monkeypatch):
    monkeypatch.setattr(sandbox_landlock, "abi_version", lambda: 0)
    if os.geteuid() == 0:  # a root parent gets the view instead (above); here the forced choice is refused
        with pytest.raises(SandboxError, match=r"landlock .*no Landlock"):
            Sandbox(SandboxConfig(pool_size=0, filesystem="landlock"))
        return
    with pytest.raises(SandboxError, match=r"landlock .*a root parent would use the filesystem view"):
        Sandbox(SandboxConfig(pool_size=0))
