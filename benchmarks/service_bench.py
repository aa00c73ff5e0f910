"""Sandbox-service benchmark: the load test and HTTP vs in-process throughput, side by side in one run.

    python benchmarks/service_bench.py [--sessions 1000] [--clients 16] [--calls 300] [--json out.json]
    python benchmarks/service_bench.py --hosts 2 --kill-one --rounds 0    # failover

The server is the real `thyme sandbox serve`, started as a subprocess on loopback with a token file; the
clients are threads of this process, each with its own `SandboxClient` (keep-alive connections).
Figures:
- load test: `--sessions` episodes of 3 calls from `--clients` concurrent clients; each episode computes
  values unique to it (and a crop whose size encodes it), so a lost or mixed-up result is detected; reports
  lost/mixed, errors, wall time, episodes/s and calls/s; with `--hosts N` the clients spread sessions over N
  servers, and `--kill-one` SIGKILLs one of them once a third of the episodes are done (episodes it held are
  run again in new sessions: `load_rerun`; `load_per_host` says where the episodes ran);
- throughput of the stateful 256x256 crop-and-save call (the snippet of benchmarks/sandbox_bench.py) with
  the same number of concurrent sessions: in-process `Sandbox` vs HTTP (`RemoteSession`, images as
  base64), in alternating rounds, best round of each; the ratio HTTP / in-process (goal >= 0.70).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

from sandbox_bench import STATEFUL_SETUP, STATEFUL_SNIPPET, make_jpeg, pct, report

from thyme.sandbox import Sandbox, SandboxConfig
from thyme.sandbox.client import SandboxClient
from thyme.sandbox.loadtest import load_test

TOKEN = "bench-token"


def start_server(tmp: pathlib.Path) -> tuple[subprocess.Popen, str]:
    token_file = tmp / "token"
    token_file.write_text(TOKEN + "\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "thyme", "sandbox", "serve", "--port", "0", "--token-file", str(token_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("listening on "):
        proc.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    return proc, line.split()[-1]


def in_threads(n: int, work: Callable[[int], None]) -> float:
    """Run `work(i)` for i in range(n) in n threads; the wall time."""
    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def load_figures(
    urls: list[str], image: pathlib.Path, sessions: int, clients: int, kill: subprocess.Popen | None = None
) -> dict:
    killed_at: list[int] = []

    def kill_a_third_in(report) -> None:
        if kill is not None and not killed_at and report.ok >= sessions // 3:
            kill.kill()
            killed_at.append(report.ok)

    report = load_test(
        urls, image, sessions, clients, token=TOKEN, rerun_lost=kill is not None, on_episode=kill_a_third_in
    )
    for line in report.errors[:5]:
        print("  ", line, file=sys.stderr)
    creates = report.create_s
    return {
        "load_sessions": sessions,
        "load_clients": clients,
        "load_lost_or_mixed": report.lost_or_mixed,
        "load_errors": len(report.errors),
        "load_wall_s": report.wall_s,
        "load_sessions_per_s": sessions / report.wall_s,
        "load_calls_per_s": 3 * sessions / report.wall_s,
        "load_http_create_ms_p50": pct(creates, 50) * 1e3 if creates else float("nan"),
        "load_http_create_ms_p99": pct(creates, 99) * 1e3 if creates else float("nan"),
        "load_hosts": len(urls),
        "load_killed_after": killed_at[0] if killed_at else None,
        "load_rerun": report.rerun,
        "load_per_host": {url.rsplit(":", 1)[1]: n for url, n in sorted(report.per_host.items())},
    }


def crop_rate(open_session: Callable[[], object], concurrency: int, calls: int) -> float:
    """Stateful crop-and-save calls per second with `concurrency` sessions driven in parallel."""
    sessions = [open_session() for _ in range(concurrency)]
    for s in sessions:
        assert s.run(STATEFUL_SETUP).ok  # type: ignore[attr-defined]

    def drive(k: int) -> None:
        for i in range(calls):
            r = sessions[k].run(f"step = {k * 100000 + i}\n" + STATEFUL_SNIPPET)  # type: ignore[attr-defined]
            assert r.ok and len(r.images) == 1, r

    elapsed = in_threads(concurrency, drive)
    for s in sessions:
        s.close()  # type: ignore[attr-defined]
    return concurrency * calls / elapsed


def throughput(url: str, image: pathlib.Path, concurrency: int, calls: int, rounds: int) -> dict:
    local_rates, http_rates, url_rates = [], [], []
    with (
        Sandbox(SandboxConfig(pool_size=2)) as sandbox,
        SandboxClient(url, token=TOKEN) as client,
        SandboxClient(url, token=TOKEN, images="url") as url_client,
    ):
        for _ in range(rounds):  # alternate, so that drift in the machine's load hits both sides alike
            local_rates.append(crop_rate(lambda: sandbox.session(inputs=[image]), concurrency, calls))
            http_rates.append(crop_rate(lambda: client.session(inputs=[image]), concurrency, calls))
            url_rates.append(crop_rate(lambda: url_client.session(inputs=[image]), concurrency, calls))
    return {
        f"crop_in_process_calls_per_s_c{concurrency}": max(local_rates),
        f"crop_http_base64_calls_per_s_c{concurrency}": max(http_rates),
        f"crop_http_url_calls_per_s_c{concurrency}": max(url_rates),
        f"crop_http_over_in_process_c{concurrency}": max(http_rates) / max(local_rates),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--calls", type=int, default=150, help="crop calls per session per round")
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds (0: load test only)")
    parser.add_argument("--hosts", type=int, default=1, help="sandbox servers the load test spreads over")
    parser.add_argument(
        "--kill-one", action="store_true", help="SIGKILL the last server a third of the way into the load"
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[os.cpu_count() or 1, 16])
    parser.add_argument("--json", type=pathlib.Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = pathlib.Path(tmp_name)
        image = tmp / "input.jpg"
        make_jpeg(image)
        servers = [start_server(tmp) for _ in range(max(1, args.hosts))]
        url = servers[0][1]
        try:
            results: dict = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
            kill = servers[-1][0] if args.kill_one and len(servers) > 1 else None
            results.update(load_figures([u for _, u in servers], image, args.sessions, args.clients, kill))
            for c in args.concurrency if args.rounds else ():
                results.update(throughput(url, image, c, max(1, args.calls * 2 // c), args.rounds))
        finally:
            for proc, _ in servers:
                proc.terminate()
                proc.wait(timeout=30)
    report(results, args.json)
    if results["load_lost_or_mixed"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
