"""Attack suite: hostile model code against the sandbox, one test per property.

Every case plays the model: it runs attacking code in a session of a real sandbox, then checks, in order,
1. that the attack failed (the secret did not come back, the file was not written, the listener heard
   nobody, the process survived, the forged reply was not believed);
2. that the host, the input image (bytes and metadata) and a bystander session opened before the attack are
   unharmed (the bystander keeps its variables and its output file);
3. that the pool still serves: a fresh session prints.

The sandbox refuses to start without its required layers (Landlock, namespaces, the uid, seccomp), so every
case runs against all of them. The cgroup and disk_quota layers are optional: the cases only they can win
are strict xfails while they are missing from `sandbox.isolation`, and must pass where they are active;
processes that outlive their session, and the fork bomb, need one of cgroup, reaper (root parents) or
lineage (ordinary users). A case that fails here is a hole, not a flaky test. Nothing is unbounded: the
module's sandbox starts inside an outer process limit of the test's own (OUTER_PROCESSES more processes of
this user), the fork bomb stops by itself after a few seconds, no thread pool burns cores, no write goes
beyond a few tens of MB (the disk cases run with an 8 MB quota and a 32 MB file_mb); every process an attack
starts ends by itself within a few seconds, and the attacks that touch real host state write back the value
already there (the host name) or aim at a process the test started (signals, scheduling).

Run: .venv/bin/pytest -q tests/sandbox/test_attacks.py
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import os
import pathlib
import platform
import resource
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import textwrap
import time
import uuid
import zlib
from dataclasses import dataclass, field

import pytest
from filesystems import FILESYSTEMS
from PIL import Image
from sandbox_procs import LineageWatch, pid_alive, process_limit

from thyme.sandbox import ExecutionResult, Sandbox, SandboxConfig, Session
from thyme.sandbox.lineage import host_pid
from thyme.sandbox.soak import output_mounts

TIMEOUT = 3.0
FILE_MB = 8
CONFIG = SandboxConfig(timeout_s=TIMEOUT, pool_size=2, memory_mb=768, file_mb=FILE_MB, open_files=64)
SECRET = "thyme-attack-secret-" + uuid.uuid4().hex
HEARD_WAIT_S = 0.3


OUTER_PROCESSES = 512


@pytest.fixture(scope="module", params=FILESYSTEMS)  # every case, under Landlock and the filesystem view
def sandbox(request):
    with process_limit(OUTER_PROCESSES), Sandbox(dataclasses.replace(CONFIG, filesystem=request.param)) as sb:
        yield sb


def attempt(body: str) -> str:
    """Model code that prints ESCAPED when `body` runs to its end and BLOCKED when the kernel refuses it."""
    return (
        "try:\n"
        + textwrap.indent(textwrap.dedent(body).strip(), "    ")
        + "\n    print('ESCAPED')\nexcept OSError as exc:\n    print('BLOCKED', exc.errno)\n"
    )


def assert_blocked(result: ExecutionResult) -> None:
    assert result.ok, result.error
    assert result.stdout.startswith("BLOCKED"), result.stdout
    assert SECRET not in result.stdout + result.stderr


def needs_layer(request: pytest.FixtureRequest, sandbox: Sandbox, layer: str, reason: str) -> None:
    """Expect this case to fail while `layer` is not active; once it is, the case must pass."""
    if layer not in sandbox.isolation:
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"needs the {layer} layer: {reason}"))


def heard(sock: socket.socket) -> bool:
    """True when anything (a connection, a datagram) reached the test's socket."""
    return bool(select.select([sock], [], [], HEARD_WAIT_S)[0])


# -- the scene: the victim input, a bystander session, the checks after every attack ---------------------


def _meta(path: pathlib.Path) -> tuple:
    st = os.stat(path)
    return st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_size, sorted(os.listxattr(path))


@dataclass
class Victim:
    """The session input: its bytes and metadata must survive every attack."""

    path: pathlib.Path
    data: bytes
    meta: tuple

    def assert_unharmed(self) -> None:
        assert self.path.is_file() and self.path.read_bytes() == self.data
        assert _meta(self.path) == self.meta


@dataclass
class Bystander:
    """A session opened before the attack: it must keep its variables and its output."""

    session: Session
    kept: bytes

    @property
    def image(self) -> pathlib.Path:
        """Its output image, as workers name it."""
        return self.session.output_dir / "keep.png"

    def assert_unharmed(self) -> None:
        result = self.session.run("print(canary + 1)")
        assert result.ok and result.stdout == "42\n" and not result.restarted, result
        assert (self.session.output_view / "keep.png").read_bytes() == self.kept


@dataclass
class Scene:
    sandbox: Sandbox
    victim: Victim
    bystander: Bystander
    tmp: pathlib.Path  # the test's private directory, closed to other users like a home directory
    public: pathlib.Path  # world-readable, `anyone/` world-writable: only the sandbox stands in the way
    cleanups: list = field(default_factory=list)  # undo host state an attack case set up
    keep: list = field(default_factory=list)  # objects whose address a case handed to the worker

    def session(self) -> Session:
        return self.sandbox.session(inputs=[self.victim.path])

    def on_host(self, path: pathlib.Path) -> pathlib.Path:
        """`path` as a worker names it, where this process can look (outputs live in their own tmpfs)."""
        outputs = self.bystander.session
        if path.is_relative_to(outputs.output_dir):
            return outputs.output_view / path.relative_to(outputs.output_dir)
        return path

    def attack(self, code: str) -> ExecutionResult:
        with self.session() as s:
            return s.run(code)

    def assert_unharmed(self) -> None:
        self.victim.assert_unharmed()
        self.bystander.assert_unharmed()
        with self.session() as fresh:
            result = fresh.run("print('served')")
        assert result.ok and result.stdout == "served\n", result


@pytest.fixture
def victim(tmp_path):
    path = tmp_path / "inputs" / "photo.png"
    path.parent.mkdir()
    Image.new("RGB", (96, 64), (200, 30, 30)).save(path)
    return Victim(path, path.read_bytes(), _meta(path))


@pytest.fixture
def public_dir():
    path = pathlib.Path(tempfile.mkdtemp(prefix="thyme-attack-"))
    path.chmod(0o755)
    (path / "anyone").mkdir(mode=0o777)
    (path / "anyone").chmod(0o777)
    yield path
    shutil.rmtree(path)


@contextlib.contextmanager
def staged(sandbox: Sandbox, victim: Victim, tmp: pathlib.Path, public: pathlib.Path):
    """A scene on `sandbox`: the victim input, and a bystander session that saved an image."""
    with sandbox.session(inputs=[victim.path]) as s:
        result = s.run(
            "canary = 41\nfrom PIL import Image\n"
            "Image.open(image_path).crop((0, 0, 32, 32)).save(output_dir + '/keep.png')"
        )
        assert result.ok, result.error
        bystander = Bystander(s, (s.output_view / "keep.png").read_bytes())
        yield Scene(sandbox, victim, bystander, tmp, public)


@pytest.fixture
def scene(sandbox, victim, tmp_path, public_dir):
    with staged(sandbox, victim, tmp_path, public_dir) as staged_scene:
        yield staged_scene


@pytest.fixture
def bystander_process():
    """An unrelated process on the host (not ours to touch from the sandbox)."""
    proc = subprocess.Popen(["sleep", "30"])
    yield proc
    proc.kill()
    proc.wait()


# -- secrets ------------------------------------------------------------------------------------------


def _secret_file(scene: Scene, world_readable: bool) -> str:
    path = (scene.public if world_readable else scene.tmp) / "secret.txt"
    path.write_text(SECRET)
    path.chmod(0o644)
    return f"print(open({str(path)!r}).read())"


def _caller_memory(scene: Scene) -> str:
    """process_vm_readv of a bytes object in the caller's heap, at its true address."""
    secret = SECRET.encode()
    scene.keep.append(secret)
    address = id(secret) + bytes.__basicsize__ - 1
    return f"""
        import ctypes
        class Iov(ctypes.Structure):
            _fields_ = [('base', ctypes.c_void_p), ('len', ctypes.c_size_t)]
        libc = ctypes.CDLL(None, use_errno=True)
        libc.process_vm_readv.restype = ctypes.c_ssize_t
        buf = ctypes.create_string_buffer({len(secret)})
        local, remote = Iov(ctypes.addressof(buf), {len(secret)}), Iov({address}, {len(secret)})
        n = libc.process_vm_readv({os.getpid()}, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        if n < 0:
            raise OSError(ctypes.get_errno(), 'process_vm_readv')
        print(buf.raw)
    """


def _host_shared_memory(scene: Scene) -> str:
    """A SysV segment of the host's IPC namespace, found by its key."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.shmat.restype = ctypes.c_void_p
    key = int(uuid.uuid4().int & 0x7FFFFFFF)
    shmid = libc.shmget(key, 4096, 0o1600)  # IPC_CREAT | 0600
    assert shmid >= 0, os.strerror(ctypes.get_errno())
    addr = libc.shmat(shmid, None, 0)
    ctypes.memmove(addr, SECRET.encode(), len(SECRET))
    libc.shmdt(ctypes.c_void_p(addr))
    scene.cleanups.append(lambda: libc.shmctl(shmid, 0, None))  # IPC_RMID
    return f"""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.shmat.restype = ctypes.c_void_p
        shmid = libc.shmget({key}, 0, 0)
        if shmid < 0:
            raise OSError(ctypes.get_errno(), 'shmget')
        print(ctypes.string_at(libc.shmat(shmid, None, 0), {len(SECRET)}))
    """


KEYCTL_SYSCALLS = {"x86_64": (248, 250), "aarch64": (217, 219)}  # add_key, keyctl


def _kernel_keyring(scene: Scene) -> str:
    """A key in root's user keyring (shared by every process of the uid) holding the secret."""
    if platform.machine() not in KEYCTL_SYSCALLS:
        pytest.skip(f"keyring system call numbers not listed for {platform.machine()}")
    add_key, keyctl = KEYCTL_SYSCALLS[platform.machine()]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    desc = f"thyme-attack-{uuid.uuid4().hex}".encode()
    key = libc.syscall(add_key, b"user", desc, SECRET.encode(), len(SECRET), ctypes.c_long(-4))
    assert key > 0, os.strerror(ctypes.get_errno())
    scene.cleanups.append(lambda: libc.syscall(keyctl, 21, ctypes.c_long(key)))  # KEYCTL_INVALIDATE
    return f"""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        key = libc.syscall({keyctl}, 10, ctypes.c_long(-4), b'user', {desc!r}, 0)  # KEYCTL_SEARCH @u
        buf = ctypes.create_string_buffer(256)
        n = libc.syscall({keyctl}, 11, ctypes.c_long(key), buf, 256)  # KEYCTL_READ
        if key < 0 or n < 0:
            raise OSError(ctypes.get_errno(), 'keyctl')
        print(buf.raw[:n])
    """


SECRETS = {
    "etc_shadow": lambda scene: "print(open('/etc/shadow').read())",
    "private_file_of_the_caller": lambda scene: _secret_file(scene, world_readable=False),
    "world_readable_file": lambda scene: _secret_file(scene, world_readable=True),
    "caller_proc_environ": lambda scene: f"print(open('/proc/{os.getpid()}/environ', 'rb').read())",
    "caller_proc_mem": lambda scene: f"f = open('/proc/{os.getpid()}/mem', 'rb')\nprint(f.read(64))",
    "caller_memory_process_vm_readv": _caller_memory,
    "list_root": lambda scene: "import os\nprint(os.listdir('/'))",
    "list_root_home": lambda scene: "import os\nprint(os.listdir('/root'))",
    "other_session_output": lambda scene: f"print(open({str(scene.bystander.image)!r}, 'rb').read())",
    "host_sysv_shared_memory": _host_shared_memory,
    "kernel_keyring_of_the_uid": _kernel_keyring,
}


@pytest.mark.parametrize("name", list(SECRETS))
def test_secrets_outside_the_session_are_unreadable(scene, name):
    try:
        result = scene.attack(attempt(SECRETS[name](scene)))
    finally:
        for cleanup in scene.cleanups:
            cleanup()
    assert_blocked(result)
    assert "\\x89PNG" not in result.stdout  # no bytes of another session's image
    scene.assert_unharmed()


def test_caller_environment_is_not_inherited(monkeypatch, victim):
    monkeypatch.setenv("THYME_ATTACK_TOKEN", SECRET)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    with Sandbox(CONFIG) as sb, sb.session(inputs=[victim.path]) as s:
        result = s.run("import os\nprint(sorted(os.environ))\nprint(list(os.environ.values()))")
        assert result.ok and "THYME_ATTACK_TOKEN" not in result.stdout and SECRET not in result.stdout
        assert "AWS_SECRET_ACCESS_KEY" not in result.stdout
        assert s.run("print('served')").stdout == "served\n"
    victim.assert_unharmed()


# -- writes -------------------------------------------------------------------------------------------


def _outside_targets(scene: Scene, tag: str) -> dict[str, pathlib.Path]:
    return {
        "new_file_in_test_dir": scene.tmp / "planted.txt",
        "new_file_in_world_writable_dir": scene.public / "anyone" / "planted.txt",
        "new_file_in_tmp": pathlib.Path("/tmp") / f"thyme-attack-{tag}",
        "new_file_in_etc": pathlib.Path("/etc") / f"thyme-attack-{tag}",
        "new_dir_in_test_dir": scene.tmp / "planted_dir",
        "other_session_output": scene.bystander.session.output_dir / "planted.png",
        "traversal_from_output": scene.sandbox.root / f"planted-{tag}",
    }


def planted_paths(scene: Scene, targets: dict[str, pathlib.Path]) -> list[pathlib.Path]:
    return [path for path in map(scene.on_host, targets.values()) if path.exists()]


WRITES = [
    "new_file_in_test_dir",
    "new_file_in_world_writable_dir",
    "new_file_in_tmp",
    "new_file_in_etc",
    "new_dir_in_test_dir",
    "overwrite_file_in_test_dir",
    "other_session_output",
    "traversal_from_output",
]


@pytest.mark.parametrize("name", WRITES)
def test_writes_outside_the_output_dir_are_denied(scene, name):
    tag = uuid.uuid4().hex
    targets = _outside_targets(scene, tag)
    existing = scene.tmp / "existing.txt"
    existing.write_text("original")
    code = {
        "new_dir_in_test_dir": f"import os\nos.mkdir({str(targets['new_dir_in_test_dir'])!r})",
        "overwrite_file_in_test_dir": f"open({str(existing)!r}, 'w').write('overwritten')",
        "traversal_from_output": f"open(output_dir + '/../../planted-{tag}', 'w').write('x')",
        "other_session_output": (
            "from PIL import Image\n"
            f"Image.new('RGB', (40, 40), 'red').save({str(targets['other_session_output'])!r})"
        ),
    }.get(name, f"open({str(targets.get(name))!r}, 'w').write('x')")
    try:
        result = scene.attack(attempt(code))
        planted = planted_paths(scene, targets)
    finally:
        for path in planted_paths(scene, targets):
            if path.is_dir():
                path.rmdir()
            else:
                path.unlink()
    assert_blocked(result)
    assert planted == [] and existing.read_text() == "original"
    after = scene.bystander.session.run("x = 1")
    assert after.images == []  # nothing planted for the bystander's collector to pick up
    scene.assert_unharmed()


INPUT_ATTACKS = {
    "write_in_place": "open(image_path, 'r+b').write(b'XXXX')",
    "overwrite": "open(image_path, 'wb').write(b'XXXX')",
    "truncate": "import os\nos.truncate(image_path, 0)",
    "delete": "import os\nos.unlink(image_path)",
    "rename_into_output": "import os\nos.rename(image_path, output_dir + '/moved.png')",
    "replace_from_output": (
        "import os\nopen(output_dir + '/fake.bin', 'wb').write(b'XXXX')\n"
        "os.replace(output_dir + '/fake.bin', image_path)"
    ),
    "save_over_with_pil": "from PIL import Image\nImage.new('RGB', (8, 8)).save(image_path, format='PNG')",
    # Landlock has no right for inode metadata (mode, owner, times, xattrs): the uid must stop these,
    # that is, the worker must not own the file it sees.
    "chmod": "import os\nos.chmod(image_path, 0o4777)",
    "chown": "import os\nos.chown(image_path, 4242, 4242)",
    "utime": "import os\nos.utime(image_path, (0, 0))",
    "setxattr": "import os\nos.setxattr(image_path, 'user.thyme', b'planted')",
}
LOOK_AT_INPUT = (
    "import hashlib, os\nst = os.stat(image_path)\n"
    "print(hashlib.sha256(open(image_path, 'rb').read()).hexdigest(), oct(st.st_mode), st.st_uid, "
    "st.st_mtime_ns, os.listxattr(image_path))"
)


@pytest.mark.parametrize("name", list(INPUT_ATTACKS))
def test_the_input_image_cannot_be_changed(scene, name):
    with scene.session() as s:
        before = s.run(LOOK_AT_INPUT)
        result = s.run(attempt(INPUT_ATTACKS[name]))
        after = s.run(LOOK_AT_INPUT)  # the input as this session (and its forks) sees it
    scene.victim.assert_unharmed()
    assert before.ok and after.stdout == before.stdout
    assert before.stdout.startswith(hashlib.sha256(scene.victim.data).hexdigest())
    assert_blocked(result)
    scene.assert_unharmed()


LINKS = {
    "symlink_to_shadow": "import os\nos.symlink('/etc/shadow', 'leak.png')",
    "symlink_to_input": "import os\nos.symlink(image_path, 'leak.png')",
    "symlinked_directory": "import os\nos.symlink('/etc', 'leakdir')\nprint(open('leakdir/shadow').read())",
    "hardlink_to_input": "import os\nos.link(image_path, 'leak.png')",
    "hardlink_to_secret": "import os\nos.link(SECRET_FILE, 'leak.png')",
    "hardlink_to_other_session": "import os\nos.link(OTHER_IMAGE, 'leak.png')",
}


@pytest.mark.parametrize("name", list(LINKS))
def test_links_in_the_output_cannot_reach_outside(scene, name):
    secret_file = scene.tmp / "secret.txt"
    secret_file.write_text(SECRET)
    code = (
        f"SECRET_FILE, OTHER_IMAGE = {str(secret_file)!r}, {str(scene.bystander.image)!r}\n"
        + attempt(LINKS[name] + "\nprint(open('leak.png', 'rb').read())")
        + "processed_path = output_dir + '/leak.png'\n"
    )
    with scene.session() as s:
        result = s.run(code)
        links = [p.name for p in s.output_view.iterdir()]
    assert result.stdout.startswith("BLOCKED"), result.stdout
    assert SECRET not in result.stdout and links == []
    assert result.images == []
    scene.assert_unharmed()


@pytest.mark.parametrize("how", ["processed_path", "printed_path"])
def test_collector_does_not_follow_traversal_to_another_sessions_image(scene, how):
    target = str(scene.bystander.image)
    code = f"import os\npath = os.path.join(output_dir, os.path.relpath({target!r}, output_dir))\n" + (
        "processed_path = path" if how == "processed_path" else f"print(path)\nprint({target!r})"
    )
    result = scene.attack(code)
    assert result.images == []
    if how == "processed_path":
        assert any("not inside the output directory" in r for r in result.rejected)
    scene.assert_unharmed()


# -- network ------------------------------------------------------------------------------------------


def _listener(kind: str, public: pathlib.Path) -> tuple[socket.socket | None, object]:
    """The host-side end an attack aims at, and its address as the worker should name it."""
    if kind == "netlink_interfaces":
        return None, None  # nothing to listen on: the question is what the worker can see
    if kind in ("tcp_connect", "tcp_listen"):
        sock = socket.create_server(("127.0.0.1", 0))
    elif kind in ("udp_sendto", "raw_udp_packet"):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
    elif kind == "abstract_unix_socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind("\0thyme-test-" + uuid.uuid4().hex)
        sock.listen()
    elif kind == "abstract_unix_datagram_via_socketpair":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind("\0thyme-test-" + uuid.uuid4().hex)
    elif kind == "unix_socket_file":  # like /run/dbus/system_bus_socket: any local user may connect
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(public / "service.sock"))
        os.chmod(public / "service.sock", 0o666)
        sock.listen()
    else:  # like /dev/log or /run/systemd/journal/socket
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(public / "log.sock"))
        os.chmod(public / "log.sock", 0o666)
    return sock, sock.getsockname()


NETWORK = {
    "tcp_connect": "import socket\nsocket.create_connection(ADDR, timeout=1).sendall(b'hello')",
    "udp_sendto": "import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'hello', ADDR)",
    "raw_udp_packet": (
        "import socket, struct\n"
        "raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)\n"
        "raw.sendto(struct.pack('!HHHH', 40000, ADDR[1], 13, 0) + b'hello', (ADDR[0], 0))"
    ),
    "netlink_interfaces": "import socket\nprint(socket.if_nameindex())",
    "tcp_listen": (
        "import socket\nsrv = socket.socket()\nsrv.bind(('127.0.0.1', PORT))\nsrv.listen()\nprint(PORT)"
    ),
    "abstract_unix_socket": "import socket\nsocket.socket(socket.AF_UNIX).connect(ADDR)",
    "abstract_unix_datagram_via_socketpair": (
        "import socket\na, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)\na.sendto(b'hello', ADDR)"
    ),
    "unix_socket_file": (
        "import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect(ADDR)\ns.sendall(b'hello')"
    ),
    "unix_datagram_file": (
        "import socket\nsocket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b'hello', ADDR)"
    ),
    "unix_datagram_file_via_socketpair": (  # socketpair() needs no socket(); a datagram end can sendto
        "import socket\na, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)\na.sendto(b'hello', ADDR)"
    ),
    "unix_datagram_file_via_socketpair_connect": (
        "import socket\na, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)\na.connect(ADDR)\n"
        "a.send(b'hello')"
    ),
}


@pytest.mark.parametrize("kind", list(NETWORK))
def test_network_and_host_services_are_unreachable(scene, kind):
    sock, addr = _listener(kind, scene.public)
    port = addr[1] if isinstance(addr, tuple) else 0
    if kind == "tcp_listen":
        sock.close()  # a free port: the worker tries to serve on it, the host tries to reach it
        sock = None
    host_interfaces = {name for _, name in socket.if_nameindex()} - {"lo"}
    try:
        with scene.session() as s:
            result = s.run(f"ADDR, PORT = {addr!r}, {port}\n" + attempt(NETWORK[kind]))
            if kind == "tcp_listen":
                with pytest.raises(OSError):
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
            elif sock is not None:
                assert not heard(sock), f"the sandbox reached the test's {kind} listener"
    finally:
        if sock is not None:
            sock.close()
    assert result.ok, result.error
    assert not any(name in result.stdout for name in host_interfaces)
    if kind == "netlink_interfaces":  # an empty namespace may answer, but with nothing of the host's
        assert result.stdout.startswith("BLOCKED") or "(1, 'lo')]" in result.stdout, result.stdout
    else:
        assert_blocked(result)
    scene.assert_unharmed()


# -- running programs ---------------------------------------------------------------------------------


def _tiny_static_elf(name: bytes = b"marker") -> bytes:
    """A 160-byte static x86-64 ELF that creates `name` in its cwd: exec without any library or loader."""
    code = (
        b"\xb8\x55\x00\x00\x00"  # mov eax, SYS_creat
        + b"\x48\x8d\x3d"
        + struct.pack("<i", 16)  # lea rdi, [rip + name]
        + b"\xbe\xa4\x01\x00\x00"  # mov esi, 0o644
        + b"\x0f\x05"  # syscall
        + b"\xb8\x3c\x00\x00\x00"  # mov eax, SYS_exit
        + b"\x31\xff"  # xor edi, edi
        + b"\x0f\x05"  # syscall
        + name
        + b"\0"
    )
    base, offset = 0x400000, 120  # code right after the 64-byte ELF header and one 56-byte program header
    size = offset + len(code)
    ident = b"\x7fELF\x02\x01\x01" + b"\0" * 9  # 64-bit, little-endian, version 1
    # type EXEC, machine x86-64, version, entry, phoff, shoff, flags, ehsize, phentsize, phnum, no sections
    header = struct.pack("<16sHHIQQQIHHHHHH", ident, 2, 62, 1, base + offset, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    program = struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x1000)  # PT_LOAD, R+X
    return header + program + code


PROGRAMS = {
    "subprocess_run": "import subprocess\nsubprocess.run(['/usr/bin/touch', 'marker'])",
    "os_system": (
        "import os\nif os.system('/usr/bin/touch marker') != 0:\n    raise OSError(1, 'system failed')"
    ),
    "os_execv": "import os\nos.execv('/usr/bin/touch', ['touch', 'marker'])",
    "posix_spawn": (
        "import os\npid = os.posix_spawn('/usr/bin/touch', ['touch', 'marker'], {})\nos.waitpid(pid, 0)"
    ),
    "ctypes_libc_system": (
        "import ctypes\nif ctypes.CDLL(None).system(b'/usr/bin/touch marker') != 0:\n"
        "    raise OSError(1, 'system failed')"
    ),
    "subclasses_route": (
        "import subprocess  # loads Popen; the route then reaches it without naming the module\n"
        "Popen = [c for c in ().__class__.__base__.__subclasses__() if c.__name__ == 'Popen'][0]\n"
        "Popen(['/usr/bin/touch', 'marker']).wait()"
    ),
    "multiprocessing_spawn": (
        "import multiprocessing, pathlib\n"
        "p = multiprocessing.get_context('spawn').Process(target=pathlib.Path('marker').touch)\n"
        "p.start()\np.join(5)\nif p.exitcode != 0:\n    raise OSError(1, f'child exit {p.exitcode}')"
    ),
    "static_elf_from_memfd": (
        "import os\nfd = os.memfd_create('x')\nos.write(fd, ELF)\npid = os.fork()\n"
        "if pid == 0:\n    try:\n        os.execve(fd, ['x'], {})\n    finally:\n        os._exit(3)\n"
        "if os.waitpid(pid, 0)[1] != 0:\n    raise OSError(1, 'exec failed')"
    ),
}


@pytest.mark.parametrize("name", list(PROGRAMS))
def test_programs_cannot_be_run(scene, name):
    prefix = ""
    if name == "static_elf_from_memfd":  # Landlock's EXECUTE right does not cover a memfd; seccomp does
        if platform.machine() != "x86_64":
            pytest.skip("the hand-made ELF is x86-64 code")
        prefix = f"ELF = {_tiny_static_elf()!r}\n"
    with scene.session() as s:
        result = s.run(prefix + attempt(PROGRAMS[name]))
        marker = (s.output_view / "marker").exists()
    assert not marker, "the program ran: it created its marker file"
    assert_blocked(result)
    scene.assert_unharmed()


# -- harness integrity --------------------------------------------------------------------------------


SIGNAL_TARGETS = [
    "caller_sigterm",
    "bystander_sigkill",
    "bystander_pidfd_sigkill",
    "zygote_sigkill",
    "zygote_mounter_sigkill",
]


@pytest.mark.parametrize("target", SIGNAL_TARGETS)
def test_signals_cannot_reach_processes_outside_the_worker(request, scene, bystander_process, target):
    zygote = scene.sandbox._zygote
    zygote_pid = zygote.proc.pid
    if target == "zygote_mounter_sigkill":
        needs_layer(request, scene.sandbox, "disk_quota", "without it there is no mounter to attack")
        assert zygote.mounter_pid is not None
    code = {
        "caller_sigterm": f"import os, signal\nos.kill({os.getpid()}, signal.SIGTERM)",
        "bystander_sigkill": f"import os, signal\nos.kill({bystander_process.pid}, signal.SIGKILL)",
        "bystander_pidfd_sigkill": (
            f"import os, signal\nfd = os.pidfd_open({bystander_process.pid})\n"
            "signal.pidfd_send_signal(fd, signal.SIGKILL)"
        ),
        "zygote_sigkill": "import os, signal\nos.kill(os.getppid(), signal.SIGKILL)",
        "zygote_mounter_sigkill": f"import os, signal\nos.kill({zygote.mounter_pid}, signal.SIGKILL)",
    }[target]
    received: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        result = scene.attack(attempt(code))
        time.sleep(0.1)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert received == [], "the sandbox signalled the test process"
    assert bystander_process.poll() is None
    assert zygote.alive and scene.sandbox._zygote is zygote and zygote.proc.pid == zygote_pid
    assert zygote.mounter_pid is None or pid_alive(zygote.mounter_pid)
    assert_blocked(result)
    scene.assert_unharmed()


def test_killing_the_process_group_kills_only_the_worker(scene, bystander_process):
    zygote = scene.sandbox._zygote
    with scene.session() as s:
        waiting = [handle.pid for handle in scene.sandbox._pool]
        result = s.run("import os, signal\nos.killpg(0, signal.SIGKILL)\nprint('survived')")
        time.sleep(0.1)
        assert all(pid_alive(pid) for pid in waiting), "a waiting pool worker was killed"
        assert not result.ok and "SandboxCrash" in result.error  # the worker is in the group it killed
        assert s.run("print('again')").stdout == "again\n"
    assert zygote.alive and scene.sandbox._zygote is zygote
    assert bystander_process.poll() is None
    scene.assert_unharmed()


SCHEDULING = {
    "renice": ("os.setpriority(os.PRIO_PROCESS, PID, 19)", lambda pid: os.getpriority(os.PRIO_PROCESS, pid)),
    "cpu_affinity": ("os.sched_setaffinity(PID, {0})", os.sched_getaffinity),
    "prlimit": (
        "import resource\nresource.prlimit(PID, resource.RLIMIT_NOFILE, (3, 3))",
        lambda pid: resource.prlimit(pid, resource.RLIMIT_NOFILE),
    ),
}


@pytest.mark.parametrize("name", list(SCHEDULING))
def test_other_processes_scheduling_and_limits_cannot_be_changed(scene, bystander_process, name):
    code, observe = SCHEDULING[name]
    before = observe(bystander_process.pid)
    result = scene.attack(attempt(f"import os\nPID = {bystander_process.pid}\n{code}"))
    assert observe(bystander_process.pid) == before, f"the sandbox changed a host process ({name})"
    assert_blocked(result)
    scene.assert_unharmed()


def test_host_name_cannot_be_changed(scene):
    before = socket.gethostname()
    result = scene.attack(attempt("import socket\nsocket.sethostname(socket.gethostname())"))
    assert socket.gethostname() == before
    assert_blocked(result)  # it wrote back the same name; a model would write any other
    scene.assert_unharmed()


def test_stdin_is_empty(scene):
    result = scene.attack("import os, sys\nprint(repr(sys.stdin.read()), repr(os.read(0, 100)))")
    assert result.ok and result.stdout == "'' b''\n"
    scene.assert_unharmed()


def test_descriptor_writes_do_not_reach_the_caller(scene, capfd):
    marker = "thyme-attack-stdout-" + uuid.uuid4().hex
    code = (
        "import os, sys\n"
        f"M = {marker!r}\n"
        "os.write(1, M.encode())\nos.write(2, M.encode())\n"
        "sys.__stdout__.write(M)\nsys.__stdout__.flush()\nsys.__stderr__.write(M)\nsys.__stderr__.flush()\n"
        + attempt("open('/dev/tty', 'w').write(M)")
        + attempt(f"open('/proc/{os.getpid()}/fd/1', 'w').write(M)")
    )
    result = scene.attack(code)
    captured = capfd.readouterr()
    assert marker not in captured.out + captured.err
    assert marker not in result.stdout + result.stderr
    assert result.stdout.count("BLOCKED") == 2, result.stdout
    scene.assert_unharmed()


FRAMES = """
import json, os, socket, stat, struct
def channel():
    return next(fd for fd in range(3, 64) if _is_socket(fd))
def _is_socket(fd):
    try:
        return stat.S_ISSOCK(os.fstat(fd).st_mode)
    except OSError:
        return False
def frame(obj):
    body = json.dumps(obj).encode()
    return struct.pack('!I', len(body)) + body
FAKE = dict(stdout='FORGED\\n', stderr='', error=None, processed=[], repairs=[], truncated=False)
"""


def test_a_forged_reply_frame_is_not_believed(scene):
    with scene.session() as s:
        first = s.run(FRAMES + "os.write(channel(), frame(FAKE))\nprint('real')")
        second = s.run("print('second')")
    assert "FORGED" not in first.stdout, "the caller took the worker's forged frame for the result"
    assert first.stdout == "real\n" or first.error is not None
    assert second.stdout == "second\n", f"replies are out of step: call 2 got {second.stdout!r}"
    scene.assert_unharmed()


MALFORMED = {
    "oversized_header": "os.write(channel(), struct.pack('!I', 0xFFFFFFF0))",
    "not_json": "os.write(channel(), struct.pack('!I', 5) + b'nope!')",
    "json_array": "os.write(channel(), struct.pack('!I', 5) + b'[1,2]')",
    "fields_of_wrong_type": "os.write(channel(), frame(dict(FAKE, stdout=5, processed='x')))",
    "half_frame_then_exit": "os.write(channel(), struct.pack('!I', 100) + b'{\"std')\nos._exit(0)",
    "descriptor_flood": (
        "s = socket.socket(fileno=os.dup(channel()))\n"
        "for _ in range(8):\n    socket.send_fds(s, [b' '], [0, 1, 2, 0])"
    ),
}


def _settled_fds(sandbox: Sandbox) -> int:
    """The caller's open descriptors once the pool has refilled: each waiting worker holds two, each session
    directory made ahead one (its output tmpfs)."""
    deadline = time.monotonic() + 5
    while not sandbox._stocked(sandbox.config.pool_size) and time.monotonic() < deadline:
        time.sleep(0.01)
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_reply_frames_are_errors(scene, name):
    fds_before = _settled_fds(scene.sandbox)
    with scene.session() as s:
        result = s.run(FRAMES + MALFORMED[name] + "\nprint('real')")
        after = s.run("print('after')")
    assert result.error is not None and "FORGED" not in result.stdout, result
    assert "SandboxProtocolError" in result.error or "SandboxCrash" in result.error
    assert after.ok and after.restarted and after.stdout == "after\n"
    assert _settled_fds(scene.sandbox) <= fds_before, "descriptors sent by the worker leaked into the caller"
    scene.assert_unharmed()


OVERWRITE_FORK_IMAGES = (
    "import os\nfrom PIL import Image\nfor f in os.listdir(FORK_IMAGES):\n"
    "    Image.new('RGB', (40, 40), 'red').save(FORK_IMAGES + '/' + f, format='PNG')"
)
FORK_CHANNEL = {
    "inject_reply_into_parent": "os.write(kept, frame(FAKE))",
    "steal_parent_requests": (  # races the parent's worker for each request; one win is enough
        "import threading\nstolen = []\n"
        "def steal():\n    s = socket.socket(fileno=os.dup(kept))\n"
        "    while data := s.recv(65536):\n        stolen.append(data)\n"
        "for _ in range(4):\n    threading.Thread(target=steal, daemon=True).start()"
    ),
    "shut_down_parent_channel": "socket.socket(fileno=kept).shutdown(socket.SHUT_RDWR)",
}


@pytest.mark.parametrize("name", list(FORK_CHANNEL))
def test_a_fork_does_not_inherit_its_parents_channel(scene, name):
    with scene.session() as parent:
        parent.run(FRAMES + "kept = os.dup(channel())")  # a copy of the parent's channel, held by model code
        with parent.fork() as child:
            child.run(FORK_CHANNEL[name])
            for call in range(8):
                result = parent.run(f"print('parent call {call}')")
                if result.stdout != f"parent call {call}\n":
                    break
            spied = child.run("print(globals().get('stolen'))").stdout
    assert result.ok and result.stdout == f"parent call {call}\n", (
        f"the fork reached the parent's channel: {result}"
    )
    assert "parent call" not in spied, "the fork read the parent's requests"
    scene.assert_unharmed()


INTO_FORK = {
    "read_fork_output": "print(open(FORK + '/out/own.png', 'rb').read()[:8])",
    "read_fork_output_after_parent_restart": "print(open(FORK + '/out/own.png', 'rb').read()[:8])",
    "plant_in_fork_output": (
        "from PIL import Image\nImage.new('RGB', (40, 40), 'red').save(FORK + '/out/planted.png')"
    ),
    "overwrite_fork_collected_image": OVERWRITE_FORK_IMAGES,
    "overwrite_fork_collected_image_after_parent_restart": OVERWRITE_FORK_IMAGES,
    "delete_fork_images_dir": "import shutil\nshutil.rmtree(FORK_IMAGES)",
    "kill_fork_worker": "import os, signal\nos.kill(FORK_PID, signal.SIGKILL)",
    "renice_fork_worker": "import os\nos.setpriority(os.PRIO_PROCESS, FORK_PID, 19)",
}


# A fork keeps its parent's uid and Landlock domain, and Landlock layers only narrow, so the parent seals
# itself off with a layer of its own before its next call (`Session.fork`). That needs Landlock, and keeping
# the parent from signalling its forks needs Landlock's signal scoping (ABI >= 6). A parent restarted under a
# root parent has a fresh uid, which its fork's files are closed to, with or without Landlock.
INTO_FORK_NEEDS = {
    "read_fork_output": "landlock",
    "read_fork_output_after_parent_restart": "landlock",
    "plant_in_fork_output": "landlock",
    "kill_fork_worker": "signal scoping",
}


def _needs_for_fork_reach(request, sandbox: Sandbox, name: str) -> None:
    from thyme.sandbox.landlock import abi_version

    need = INTO_FORK_NEEDS.get(name)
    if need is None or (name.endswith("_after_parent_restart") and sandbox.drop_uid):
        return
    needs_layer(request, sandbox, "landlock", "the parent seals itself off its forks with a Landlock layer")
    if need == "signal scoping" and "landlock" in sandbox.isolation and abi_version() < 6:
        request.applymarker(
            pytest.mark.xfail(
                strict=True, reason="signal scoping needs Landlock ABI >= 6; the parent keeps its uid"
            )
        )


@pytest.mark.parametrize("name", list(INTO_FORK))
def test_a_parent_session_cannot_reach_into_its_forks(request, scene, name):
    """A fork is an independent session (one GRPO sample); the parent's later code must not touch it."""
    _needs_for_fork_reach(request, scene.sandbox, name)
    with scene.session() as parent, parent.fork() as fork:
        own = fork.run(
            "import os\nfrom PIL import Image\nprocessed_path = output_dir + '/own.png'\n"
            "Image.new('RGB', (24, 24), 'blue').save(processed_path)\nprint(os.getpid())"
        )
        assert own.ok and len(own.images) == 1, own
        collected = own.images[0].read_bytes()
        if name.endswith("_after_parent_restart"):
            crash = parent.run("import os\nos._exit(0)")  # the parent's next call gets a fresh worker
            assert "SandboxCrash" in crash.error
        code = (
            f"FORK, FORK_PID, FORK_IMAGES = {str(fork.home)!r}, {int(own.stdout)}, {str(fork.images_dir)!r}\n"
            + attempt(INTO_FORK[name])
        )
        result = parent.run(code)
        try:
            later = fork.run(
                "from PIL import Image\nImage.new('RGB', (16, 16)).save(output_dir + '/later.png')"
            )
        except OSError as exc:
            pytest.fail(f"the fork's next call raised in the caller: {exc!r}")
        assert own.images[0].read_bytes() == collected, (
            "the parent changed an image the fork already returned"
        )
        assert later.ok and not later.restarted, f"the fork no longer works: {later}"
        assert [Image.open(p).size for p in later.images] == [(16, 16)], "the parent planted an image"
    assert_blocked(result)
    scene.assert_unharmed()


POISON = {
    "builtins": "import builtins\nbuiltins.print = None\nbuiltins.open = None\nbuiltins.len = None",
    "pil_image_open": "from PIL import Image\nImage.open = None",
    "numpy_function": "import numpy\nnumpy.array = None",
    "sys_modules": "import sys\nsys.modules['json'] = None\nsys.modules['PIL.Image'] = None",
    "environment": (
        "import os\nos.environ['LD_PRELOAD'] = '/planted.so'\nos.environ['PYTHONPATH'] = '/planted'"
    ),
    "worker_internals": (
        "import thyme.sandbox.worker as w\n"
        "w.run_code = lambda *a: {'stdout': 'FORGED', 'stderr': '', 'error': None, 'processed': [], "
        "'repairs': []}"
    ),
    "umask_and_cwd": "import os\nos.umask(0o777)\nos.chdir('/')",
}
HEALTHY = (
    "import json, os, numpy\nfrom PIL import Image\n"
    "Image.open(image_path).crop((0, 0, 8, 8)).save('probe.png')\n"
    "print(len([1]), json.dumps(int(numpy.array([2]).sum())), Image.open('probe.png').size, "
    "os.environ.get('LD_PRELOAD'), oct(os.stat('probe.png').st_mode & 0o777))"
)


@pytest.mark.parametrize("name", list(POISON))
def test_poisoned_state_does_not_reach_the_next_session(scene, name):
    with scene.session() as clean:
        expected = clean.run(HEALTHY)
    assert expected.ok, expected.error
    with scene.session() as poisoned:
        poisoning = poisoned.run(POISON[name])  # may break this worker itself (builtins): its own business
        assert "SyntaxError" not in (poisoning.error or "")
        with scene.session() as next_session:
            result = next_session.run(HEALTHY)
    assert result.ok, result.error
    assert result.stdout == expected.stdout
    scene.assert_unharmed()


def _members(pid: int, whole_session: bool, scans: int = 3) -> set[int]:
    """`pid` if it is alive, or every live process of the session it leads.

    One scan of /proc can miss a reforking chain (the pid listed has exited when its stat is read, the next
    one was born after the listing), so the session is scanned `scans` times, 10 ms apart, and the union
    returned: a live chain cannot hide from all of them.
    """
    if not whole_session:
        return {pid} if pid_alive(pid) else set()
    found: set[int] = set()
    for scan in range(scans):
        if scan:
            time.sleep(0.01)
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    fields = pathlib.Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                    if int(fields[3]) == pid and fields[0] not in ("Z", "X"):
                        found.add(int(entry))
    return found


LEFTOVERS = {
    "sleeping_child": "",
    "setsid_daemon": "    os.setsid()\n",
    "reforking_chain": (  # each generation forks the next and exits: always a fresh pid to chase
        "    os.setsid()\n    while time.time() < end:\n        if os.fork():\n            os._exit(0)\n"
        "        time.sleep(0.01)\n"
    ),
}


@pytest.mark.parametrize("how", list(LEFTOVERS))
def test_processes_started_by_model_code_die_with_the_session(request, scene, how):
    if not {"cgroup", "reaper", "lineage"} & set(scene.sandbox.isolation):
        request.applymarker(
            pytest.mark.xfail(
                strict=True,
                reason="needs the cgroup, reaper or lineage layer: a child reparents to the zygote and "
                "survives its worker's kill",
            )
        )
    code = (  # every process here ends by itself after 2 * TIMEOUT: bounded even if the sandbox fails
        f"import os, time\nend = time.time() + {2 * TIMEOUT}\npid = os.fork()\n"
        "if pid == 0:\n  try:\n"
        + textwrap.indent(LEFTOVERS[how] + "    time.sleep(max(0, end - time.time()))\n", "  ")
        + "  finally:\n    os._exit(0)\nprint(pid)"
    )
    with scene.session() as s:
        result = s.run(code)
        assert result.ok, result.error
        leader = host_pid(s._handle.pid, int(result.stdout))  # in a lineage's PID namespace: another number
        assert leader is not None, "the attack did not start"
        # A loaded machine may not have run the child's setsid yet: look again before deciding that the
        # attack did not start.
        started, members = time.monotonic() + 2.0, set()
        while not members and time.monotonic() < started:
            members = _members(leader, how != "sleeping_child")
        assert members, "the attack did not start"
    deadline = time.monotonic() + 1.0
    while _members(leader, how != "sleeping_child") and time.monotonic() < deadline:
        time.sleep(0.05)
    survivors = _members(leader, how != "sleeping_child")
    for pid in survivors:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    assert not survivors, f"processes started by model code outlived their session: {survivors}"
    scene.assert_unharmed()


# -- exhaustion (bounded) -----------------------------------------------------------------------------


def test_a_fork_bomb_stops_at_max_processes_and_dies_with_its_session(request, scene):
    if not {"cgroup", "reaper", "lineage"} & set(scene.sandbox.isolation):
        request.applymarker(
            pytest.mark.xfail(
                strict=True, reason="needs the cgroup, reaper or lineage layer to cap processes"
            )
        )
    bomb = (  # forks until refused, then every process of it sleeps until 3 s have passed and ends
        "import os, time\nend = time.time() + 3\nmade = 0\nwhile time.time() < end:\n    try:\n"
        "        if os.fork() == 0:\n            made = 0\n            continue\n        made += 1\n"
        "    except OSError:\n        break\nif os.getpid() != ROOT:\n"
        "    time.sleep(max(0, end - time.time()))\n    os._exit(0)\nprint(made)"
    )
    with scene.session() as s:
        s.run("import os\nROOT = os.getpid()")
        watch = LineageWatch(s)
        try:
            result = s.run(bomb)
            alive = watch.processes()
            assert result.ok, result.error
            assert 0 < len(alive) <= CONFIG.max_processes + 1, f"{len(alive)} processes: the cap did not hold"
        finally:
            s.close()
            deadline = time.monotonic() + 5
            while watch.processes() and time.monotonic() < deadline:
                time.sleep(0.05)
            left = watch.processes()
            watch.close()
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"{len(left)} processes of the bomb outlived their session"
    scene.assert_unharmed()


def test_memory_bomb_is_contained(scene):
    start = time.monotonic()
    result = scene.attack(  # touch every page, so the memory is really committed
        "chunks = []\nwhile True:\n    chunks.append(bytearray(64 << 20))\n"
        "    chunks[-1][::4096] = b'x' * (16 << 10)"
    )
    assert not result.ok and ("MemoryError" in result.error or "SandboxCrash" in result.error)
    assert time.monotonic() - start < TIMEOUT + 1
    scene.assert_unharmed()


@pytest.mark.parametrize("how", ["one_print", "many_writes"])
def test_huge_stdout_is_capped_and_cheap_for_the_caller(scene, how):
    code = (
        "print('x' * (20 << 20))"
        if how == "one_print"
        else "import sys\nfor _ in range(20000): sys.stdout.write('y' * 1000)"
    )
    result = scene.attack(code + "\nimport sys, time\nsys.stderr.write(str(time.monotonic()))")
    caller_side = time.monotonic() - float(result.stderr)  # the reply's way back and the collector
    assert result.ok and result.truncated
    assert len(result.stdout) <= scene.sandbox.config.max_stdout_chars
    assert caller_side < 1.0, f"a capped stdout cost the caller {caller_side:.1f} s"
    scene.assert_unharmed()


def test_one_huge_file_is_stopped_by_the_file_size_limit(scene):
    with scene.session() as s:
        result = s.run("f = open('huge.png', 'wb')\nfor _ in range(64):\n    f.write(b'x' * (1 << 20))")
        size = (s.output_view / "huge.png").stat().st_size
    assert not result.ok and "File too large" in result.error
    assert size <= FILE_MB << 20
    scene.assert_unharmed()


def test_many_small_files_do_not_stall_the_collector(scene):
    result = scene.attack(  # the worker prints when it is done (CLOCK_MONOTONIC is shared by all processes)
        "import os, time\ntry:\n    for d in range(10):\n        os.makedirs(f'd{d}/a/b', exist_ok=True)\n"
        "        for i in range(500):\n            open(f'd{d}/a/b/f{i}.png', 'wb').write(b'not a png')\n"
        "except OSError:\n    pass  # output_files is the limit where the disk quota holds\n"
        "print(time.monotonic())"
    )
    collecting = time.monotonic() - float(result.stdout)
    assert collecting < 2.0, f"the collector took {collecting:.1f} s over 5,000 files"
    assert result.images == [] and result.rejected
    scene.assert_unharmed()


def test_descriptor_exhaustion_hits_the_open_files_limit(scene):
    with scene.session() as s:
        result = s.run(attempt("import os\nfds = [os.open('/dev/null', os.O_RDONLY) for _ in range(100000)]"))
        assert result.ok and result.stdout.startswith("BLOCKED 24")  # EMFILE
        assert s.run("fds = None\nprint('served')").stdout == "served\n"
    scene.assert_unharmed()


def _png_header_only(width: int, height: int) -> bytes:
    """A valid PNG header announcing width x height pixels, with almost no pixel data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def test_decompression_bomb_output_is_refused_unread(scene):
    bomb = _png_header_only(200_000, 200_000)
    result = scene.attack(
        f"processed_path = output_dir + '/bomb.png'\nopen(processed_path, 'wb').write({bomb!r})\n"
        "import time\nprint(time.monotonic())"
    )
    assert time.monotonic() - float(result.stdout) < 1.0  # refused from its header, never decoded
    assert result.images == [] and any("pixel cap" in r for r in result.rejected)
    scene.assert_unharmed()


# -- the disk quota (bounded: without it, file_mb and the loops below still cap what an attack writes) ----

QUOTA_MB, QUOTA_FILES = 8, 64
QUOTA_CONFIG = dataclasses.replace(
    CONFIG, pool_size=1, output_mb=QUOTA_MB, output_files=QUOTA_FILES, file_mb=4 * QUOTA_MB
)
SMALL_IMAGE = (
    "from PIL import Image\nprocessed_path = output_dir + '/small.png'\n"
    "Image.new('RGB', (16, 16), 'green').save(processed_path)"
)


def fill(name: str, mb: int) -> str:
    """Model code writing `mb` MiB into `name`: prints 'written', or 'stopped' and the errno."""
    return (
        f"try:\n    with open({name!r}, 'wb') as f:\n        for _ in range({mb}):\n"
        "            f.write(bytes(1 << 20))\n    print('written')\n"
        "except OSError as exc:\n    print('stopped', exc.errno)\n"
    )


def host_bytes(sandbox: Sandbox) -> int:
    """What the sandbox's tree holds on the host's disk (the outputs' tmpfs are not there)."""
    return sum(p.stat().st_size for p in sandbox.root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def quota_sandbox():
    with Sandbox(QUOTA_CONFIG) as sb:
        yield sb


@pytest.fixture
def quota_scene(request, quota_sandbox, victim, tmp_path, public_dir):
    needs_layer(
        request, quota_sandbox, "disk_quota", "an output directory is a plain directory of the host's disk"
    )
    with staged(quota_sandbox, victim, tmp_path, public_dir) as staged_scene:
        yield staged_scene


def test_one_huge_file_stops_at_the_disk_quota(quota_scene):
    before = host_bytes(quota_scene.sandbox)
    with quota_scene.session() as s:
        result = s.run(fill("huge.bin", 3 * QUOTA_MB))
        size = (s.output_view / "huge.bin").stat().st_size
        on_host = list(s.output_dir.iterdir())  # the mount point, as the host's disk has it
        after = s.run("import os\nos.remove('huge.bin')\n" + SMALL_IMAGE)
    assert result.ok and result.stdout == "stopped 28\n" and result.output_full  # ENOSPC, and said so
    assert size <= QUOTA_MB << 20 and on_host == []
    assert host_bytes(quota_scene.sandbox) - before < 1 << 20
    assert after.ok and not after.restarted and not after.output_full
    assert [Image.open(p).size for p in after.images] == [(16, 16)]
    quota_scene.assert_unharmed()


def test_many_small_files_stop_at_the_file_limit(quota_scene):
    with quota_scene.session() as s:
        made = s.run(
            "made = 0\n"
            + attempt(
                f"for i in range({16 * QUOTA_FILES}):\n    open(f'f{{i}}.txt', 'wb').close()\n    made += 1"
            )
            + "print(made)"
        )
        subdir = s.run(attempt("import os\nos.mkdir('more')"))  # directories take an entry too
        # At the limit the session still works: a file renamed and overwritten needs no new entry.
        after = s.run("import os\nos.rename('f0.txt', 'small.png')\n" + SMALL_IMAGE)
        on_host = list(s.output_dir.iterdir())
    assert made.stdout == f"BLOCKED 28\n{QUOTA_FILES}\n" and made.output_full
    assert subdir.stdout == "BLOCKED 28\n"
    assert after.ok and not after.restarted and after.output_full
    assert [Image.open(p).size for p in after.images] == [(16, 16)]
    assert on_host == []
    quota_scene.assert_unharmed()


def test_a_fork_has_a_disk_quota_of_its_own(quota_scene):
    size = "import os\nprint(os.path.getsize('big.bin'))"
    with quota_scene.session() as parent:
        assert parent.run(fill("big.bin", 2 * QUOTA_MB)).stdout == "stopped 28\n"
        with parent.fork() as fork:
            assert fork.run(size).stdout == parent.run(size).stdout  # a full parent's copy fits its own
            freed = fork.run("import os\nos.remove('big.bin')\n" + fill("own.bin", QUOTA_MB // 2))
            parent_more = parent.run(fill("more.bin", 1))
            fork_more = fork.run(fill("more.bin", QUOTA_MB))
            assert list(fork.output_dir.iterdir()) == []
    assert freed.stdout == "written\n" and not freed.output_full
    assert parent_more.stdout == "stopped 28\n" and parent_more.output_full  # the fork's room is not its
    assert fork_more.stdout == "stopped 28\n" and fork_more.output_full  # and the fork's quota holds
    quota_scene.assert_unharmed()


def test_no_output_mount_outlives_its_session(request, victim):
    with Sandbox(dataclasses.replace(QUOTA_CONFIG, pool_size=0)) as sb:  # no session directory made ahead
        needs_layer(request, sb, "disk_quota", "no output directory is mounted")
        host = pathlib.Path("/proc/self/mountinfo").read_text()
        session = sb.session(inputs=[victim.path])
        fork = session.fork()
        grandchild = fork.fork()
        crash = session.run("import os\nos._exit(1)")
        again = session.run(fill("after_restart.bin", 2 * QUOTA_MB))  # a fresh worker, the same quota
        opened = output_mounts(sb)
        for s in (session, grandchild, fork):
            s.close()
        deadline = time.monotonic() + 5  # the mounter detaches them in the background
        while (output_mounts(sb) or any(sb._trash.iterdir())) and time.monotonic() < deadline:
            time.sleep(0.01)
        closed, trashed = output_mounts(sb), list(sb._trash.iterdir())
        assert pathlib.Path("/proc/self/mountinfo").read_text() == host  # the caller never saw any of them
    assert "SandboxCrash" in crash.error and again.restarted and again.stdout == "stopped 28\n"
    assert (opened, closed, trashed) == (3, 0, [])
