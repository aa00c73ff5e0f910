"""Load test of the sandbox service: many episodes from concurrent clients, every result checked.

Used by `benchmarks/service_bench.py` (1,000 sessions x 3 calls from 16 clients) and by the tests. Each
episode computes values unique to it and a crop whose size encodes it, so a result that was lost or handed to
the wrong session is detected, not just counted.
"""

from __future__ import annotations

import pathlib
import threading
import time
from dataclasses import dataclass, field

from PIL import Image

from thyme.sandbox.client import SandboxClient


@dataclass
class LoadReport:
    sessions: int
    clients: int
    ok: int = 0
    wall_s: float = 0.0
    create_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def lost_or_mixed(self) -> int:
        return self.sessions - self.ok


def episode(client: SandboxClient, image: pathlib.Path, k: int) -> tuple[bool, float, str]:
    """One session of three stateful calls; returns (all results right, seconds to create, what came back)."""
    start = time.perf_counter()
    with client.session(inputs=[image]) as s:
        created = time.perf_counter() - start
        r1 = s.run(f"secret = {k} * 7919 + 13\nprint(secret)")
        r2 = s.run(
            "from PIL import Image\nprocessed_path = output_dir + '/mine.png'\n"
            f"Image.open(image_path).crop((0, 0, {64 + k % 97}, {64 + k // 97})).save(processed_path)\n"
            "secret += 1\nprint(secret)"
        )
        r3 = s.run("print(secret * 2)")
    good = (
        r1.stdout == f"{k * 7919 + 13}\n"
        and r2.stdout == f"{k * 7919 + 14}\n"
        and [Image.open(p).size for p in r2.images] == [(64 + k % 97, 64 + k // 97)]
        and r3.stdout == f"{(k * 7919 + 14) * 2}\n"
    )
    return good, created, f"{r1.stdout!r} {r2.stdout!r} {r2.error!r} {r3.stdout!r}"


def load_test(
    url: str, image: pathlib.Path, sessions: int, clients: int, token: str | None = None
) -> LoadReport:
    """Run `sessions` episodes from `clients` threads, each with its own client (keep-alive connections)."""
    report = LoadReport(sessions=sessions, clients=clients)
    lock = threading.Lock()
    todo = iter(range(sessions))

    def client_loop() -> None:
        with SandboxClient(url, token=token) as client:
            while True:
                with lock:
                    k = next(todo, None)
                if k is None:
                    return
                try:
                    good, created, detail = episode(client, image, k)
                except Exception as exc:
                    with lock:
                        report.errors.append(f"session {k}: {type(exc).__name__}: {exc}")
                    continue
                with lock:
                    report.ok += good
                    report.create_s.append(created)
                    if not good:
                        report.errors.append(f"session {k}: mismatch {detail}")

    start = time.perf_counter()
    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report.wall_s = time.perf_counter() - start
    return report
