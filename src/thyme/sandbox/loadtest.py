"""Load test of the sandbox service: many episodes from concurrent clients, every result checked.

Used by `benchmarks/service_bench.py` (1,000 sessions x 3 calls from 16 clients, on one host or on
several, one of them killed mid-run with `--kill-one`) and by the tests. Each episode computes values unique
to it and a crop whose size encodes it, so a result that was lost or handed to the wrong session is detected,
not just counted. With several hosts, an episode whose host dies under it (`SessionLost`) is run again in a
new session when `rerun_lost` is set, as a rollout worker would; `LoadReport.rerun` counts those.
"""

from __future__ import annotations

import pathlib
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from PIL import Image

from thyme.sandbox.client import SandboxClient, SessionLost


@dataclass
class LoadReport:
    sessions: int
    clients: int
    ok: int = 0
    wall_s: float = 0.0
    create_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    rerun: int = 0  # episodes run again after their host died under them
    per_host: dict[str, int] = field(default_factory=dict)  # completed episodes by the host that ran them

    @property
    def lost_or_mixed(self) -> int:
        return self.sessions - self.ok


def episode(client: SandboxClient, image: pathlib.Path, k: int) -> tuple[bool, float, str, str]:
    """One session of three stateful calls; returns (all results right, seconds to create, what came back,
    the host that ran it)."""
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
    return good, created, f"{r1.stdout!r} {r2.stdout!r} {r2.error!r} {r3.stdout!r}", s.url


def load_test(
    url: str | Sequence[str],
    image: pathlib.Path,
    sessions: int,
    clients: int,
    token: str | None = None,
    *,
    rerun_lost: bool = False,
    on_episode: Callable[[LoadReport], None] | None = None,
) -> LoadReport:
    """Run `sessions` episodes from `clients` threads, each with its own client (keep-alive connections)
    over the host(s) `url`. rerun_lost: run an episode again when its host dies under it (at most 3 times).
    on_episode(report): called after every finished episode, under the report's lock (a benchmark kills a
    host from there)."""
    report = LoadReport(sessions=sessions, clients=clients)
    lock = threading.Lock()
    todo = iter(range(sessions))

    def run_one(client: SandboxClient, k: int) -> tuple[bool, float, str, str]:
        for _ in range(3 if rerun_lost else 0):
            try:
                return episode(client, image, k)
            except SessionLost:
                with lock:
                    report.rerun += 1
        return episode(client, image, k)

    def client_loop() -> None:
        with SandboxClient(url, token=token) as client:
            while True:
                with lock:
                    k = next(todo, None)
                if k is None:
                    return
                try:
                    good, created, detail, host = run_one(client, k)
                except Exception as exc:
                    good, detail = False, ""
                    with lock:
                        report.errors.append(f"session {k}: {type(exc).__name__}: {exc}")
                else:
                    with lock:
                        report.ok += good
                        report.create_s.append(created)
                        report.per_host[host] = report.per_host.get(host, 0) + 1
                        if not good:
                            report.errors.append(f"session {k}: mismatch {detail}")
                if on_episode is not None:
                    with lock:
                        on_episode(report)

    start = time.perf_counter()
    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report.wall_s = time.perf_counter() - start
    return report
