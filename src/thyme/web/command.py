"""`thyme web`: check the flags, load the model, start the sandbox, serve the page until Ctrl-C or SIGTERM.

Kept out of `cli.py` so the CLI stays a list of flags. Every mistake a user can make in the flags (a bad
port or a port in use, an unknown backend, --base-url without the openai backend or the reverse, a device
torch cannot use, a bad --share, Gradio not installed) is one line on stderr and exit status 2, before the
model loads; so is a model that does not load, an endpoint that does not answer, or a sandbox layer missing.

Exit status: 0 stopped by Ctrl-C or SIGTERM, 2 bad flags or a model, endpoint or sandbox that cannot be used.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile

from rich.console import Console

from thyme.errors import cli_flags, first_line

SHARE_CHOICES = ("never", "gradio")


def web_command(
    *,
    console: Console,
    err_console: Console,
    model: str,
    backend: str | None,
    base_url: str | None,
    api_key: str | None,
    host: str,
    port: int,
    share: str,
    device: str,
    max_steps: int,
    allow_weak_isolation: bool,
) -> int:
    from thyme.agent import Agent, AgentConfig, BackendError
    from thyme.agent.backends.base import BACKENDS, backend_options
    from thyme.asgi import check_port
    from thyme.sandbox import SandboxConfig, SandboxError

    def fail(message: str) -> int:
        err_console.print(f"error: {message}", markup=False)
        return 2

    backend = backend or ("openai" if base_url else "transformers")
    try:
        check_port(port, "--port")
        if share not in SHARE_CHOICES:
            raise ValueError(f"--share {share!r}: use never, or gradio for a public *.gradio.live link")
        if backend not in BACKENDS:
            raise ValueError(f"--backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        if base_url and backend != "openai":
            raise ValueError(f"--base-url is for the openai backend, not {backend}; leave --backend out")
        options = backend_options(backend, base_url=base_url, api_key=api_key, device=device)
        config = AgentConfig(max_steps=max_steps)
        sandbox_config = SandboxConfig(allow_weak_isolation=allow_weak_isolation)
        _check_listen(host, port)
    except ValueError as exc:
        return fail(first_line(exc, cli_flags("max_steps")))
    except OSError as exc:
        return fail(f"cannot listen on {host}:{port} ({exc.strerror or exc}); pick another --port")
    # Gradio keeps uploads and copies of what it serves in a cache (/tmp/gradio by default) and keeps the
    # examples' copies there after it stops; this command gives it a folder of its own and removes it at exit.
    cache = None
    if "GRADIO_TEMP_DIR" not in os.environ:
        cache = tempfile.mkdtemp(prefix="thyme-web-cache-")
        os.environ["GRADIO_TEMP_DIR"] = cache
    agent = None
    try:
        try:
            from thyme.web.app import launch
        except ImportError as exc:
            if not (exc.name or "").startswith("gradio"):
                raise
            return fail("thyme web needs Gradio; install the web extra: pip install 'thyme-vl[web]'")
        with console.status(f"loading {model} ({backend})"):
            agent = Agent.from_pretrained(
                model, backend=backend, config=config, sandbox_config=sandbox_config, **options
            )
            if backend == "openai":
                agent.backend.check()  # an unreachable endpoint or unknown model: say so now
            _ = agent.sandbox  # start the pool now: a missing confinement layer fails here, not on a click

        def ready(server) -> None:
            err_console.print(f"serving {model} ({backend}) on a web page; Ctrl-C stops")
            if server.share_url:
                err_console.print(f"public link (anyone who has it can use the page): {server.share_url}")
            sys.stdout.write(f"listening on {server.url}\n")
            sys.stdout.flush()

        launch(agent, host, port, share=share == "gradio", model_name=model, on_ready=ready)
    except (BackendError, SandboxError, ValueError) as exc:
        return fail(first_line(exc))
    except OSError as exc:
        return fail(f"cannot listen on {host}:{port} ({exc.strerror or exc})")
    finally:
        if agent is not None:
            agent.close()
        if cache is not None:
            shutil.rmtree(cache, ignore_errors=True)
    return 0


def _check_listen(host: str, port: int) -> None:
    """Nothing unless a server could listen on `host:port` now (port 0: any free port): `ValueError` for a
    host that is not an address here, `OSError` for a port in use or not allowed."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror:
        raise ValueError(f"--host {host!r} is not an address of this machine; use 127.0.0.1") from None
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
