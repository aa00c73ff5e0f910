"""Sandbox-service benchmark: the load test and HTTP vs in-process throughput, side by side in one run.

    python benchmarks/service_bench.py [--sessions 1000] [--clients 16] [--calls 300] [--json out.json]

The server is the real `thyme sandbox serve`, started as a subprocess on loopback with a token file; the
clients are threads of this process, each with its own `SandboxClient` (keep-alive connections).
Figures:
- load test: `--sessions` episodes of 3 calls from `--clients` concurrent clients; each episode computes
  values unique to it (and a crop whose size encodes it), so a lost or mixed-up result is detected; reports
  lost/mixed, errors, wall time, episodes/s and calls/s;
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


def load_figures(url: str, image: pathlib.Path, sessions: int, clients: int) -> dict:
    report = load_test(url, image, sessions, clients, token=TOKEN)
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
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[os.cpu_count() or 1, 16])
    parser.add_argument("--json", type=pathlib.Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = pathlib.Path(tmp_name)
        image = tmp / "input.jpg"
        make_jpeg(image)
        proc, url = start_server(tmp)
        try:
            results: dict = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
            results.update(load_figures(url, image, args.sessions, args.clients))
            for c in args.concurrency:
                results.update(throughput(url, image, c, max(1, args.calls * 2 // c), args.rounds))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    report(results, args.json)
    if results["load_lost_or_mixed"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
