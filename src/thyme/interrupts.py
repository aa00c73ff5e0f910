"""SIGTERM stops a command the way Ctrl-C does, so its `with` blocks close and its temporary folders go.

A scheduler, `timeout` or `kill` sends SIGTERM; Python's default action ends the process at once, leaving
the agent's artifacts, the sandbox's root and staging folders behind. `thyme.cli.main` runs every command
inside `sigterm_interrupts()`; library entry points that own temporary folders (`eval_command`) use it too,
for callers that are not the CLI. Servers wait for SIGINT/SIGTERM themselves (`thyme.asgi`) and restore
this handler when they stop.

    with sigterm_interrupts():
        run_the_command()          # SIGTERM -> KeyboardInterrupt in the main thread
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """While inside, SIGTERM raises KeyboardInterrupt in the main thread, as Ctrl-C does (a no-op elsewhere:
    only the main thread may set signal handlers); the previous handler is restored on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
