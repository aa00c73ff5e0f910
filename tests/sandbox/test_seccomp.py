"""The seccomp filter, exercised from inside real workers: each denied call fails, ordinary work goes on."""

from __future__ import annotations

import pytest

from thyme.sandbox import Sandbox, SandboxConfig
from thyme.sandbox.seccomp import _lib


def nr(name: str) -> int:
    """The system call number on this architecture, as libseccomp knows it."""
    return _lib().seccomp_syscall_resolve_name(name.encode())


SYSCALL = "import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"


def errno_of(session, call: str) -> str:
    result = session.run(SYSCALL + f"rc = {call}\nprint(rc, ctypes.get_errno())")
    assert result.ok, result.error
    return result.stdout.split()


@pytest.mark.parametrize(
    ("what", "call", "errno"),
    [
        ("ptrace attach to the caller", "libc.ptrace(16, os.getppid(), 0, 0)", "1"),
        ("unshare a user namespace", "libc.unshare(0x10000000)", "1"),
        ("mount", "libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)", "1"),
        ("bpf", f"libc.syscall({nr('bpf')}, 0, 0, 0)", "1"),
        ("io_uring_setup", f"libc.syscall({nr('io_uring_setup')}, 1, 0)", "1"),
        ("perf_event_open", f"libc.syscall({nr('perf_event_open')}, 0, 0, -1, -1, 0)", "1"),
        ("userfaultfd", f"libc.syscall({nr('userfaultfd')}, 0)", "1"),
        ("keyctl", f"libc.syscall({nr('keyctl')}, 0, 0, 0, 0, 0)", "1"),
        ("open_by_handle_at", f"libc.syscall({nr('open_by_handle_at')}, -100, 0, 0)", "1"),
        ("process_vm_readv", f"libc.syscall({nr('process_vm_readv')}, os.getppid(), 0, 0, 0, 0, 0)", "1"),
        ("TIOCSTI", "libc.ioctl(0, 0x5412, ctypes.c_char_p(b'x'))", "1"),
        ("an INET socket", "libc.socket(2, 1, 0)", "97"),
        ("a netlink socket", "libc.socket(16, 3, 0)", "97"),
        ("a raw packet socket", "libc.socket(17, 3, 0)", "97"),
    ],
)
def test_denied_system_calls(session, what, call, errno):
    rc, err = errno_of(session, call)
    assert rc == "-1" and err == errno, what
    assert session.run("print('still serving')").stdout == "still serving\n"


def test_rlimits_cannot_be_changed(session):
    result = session.run("import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))")
    assert result.error is not None
    assert session.run(
        "import resource\nprint(resource.getrlimit(resource.RLIMIT_NOFILE))"
    ).stdout.strip() != ("(-1, -1)")


def test_unix_sockets_and_threads_still_work(session):
    code = (
        "import socket, threading\na, b = socket.socketpair()\na.sendall(b'hi')\nprint(b.recv(2))\n"
        "out = []\nt = threading.Thread(target=lambda: out.append(1))\nt.start()\nt.join()\nprint(out)"
    )
    assert session.run(code).stdout == "b'hi'\n[1]\n"


def test_forkable_false_denies_process_creation(scene_jpeg):
    with Sandbox(SandboxConfig(forkable=False, pool_size=0)) as sb, sb.session(inputs=[scene_jpeg]) as s:
        result = s.run("import os\nos.fork()")
        assert "PermissionError" in result.error
        result = s.run("import multiprocessing\np = multiprocessing.Process(target=print)\np.start()")
        assert result.error is not None
        assert s.run("import threading\nt = threading.Thread(target=print)\nt.start()\nt.join()").ok
        with pytest.raises(RuntimeError, match="forkable=False"):
            s.fork()


def test_unix_socket_files_of_the_host_are_unreachable(session, tmp_path):
    """Landlock does not cover connect() to a socket file; seccomp denies creating the socket at all."""
    import os
    import socket

    public = tmp_path / "public"
    public.mkdir(mode=0o755)
    os.chmod(tmp_path, 0o755)
    path = public / "bus.sock"
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(path))
        os.chmod(path, 0o666)
        server.listen()
        server.settimeout(0.5)
        result = session.run(f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({str(path)!r})")
        assert "PermissionError" in result.error
        with pytest.raises(TimeoutError):
            server.accept()
