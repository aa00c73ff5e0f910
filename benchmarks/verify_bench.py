"""`thyme data verify` throughput: samples per second on toy-world sets, with one worker and with the default.

    python benchmarks/verify_bench.py [--zoom 200] [--compute 200] [--workers 1,0] [--json F]

Builds `--zoom` zoom samples (every level: single and multi-crop) and `--compute` computation samples in a
temporary directory (`thyme.data.toyworld.generate`, outside the timing), then verifies the whole set once per
entry of `--workers` (0 means the default, two per core) into a fresh output directory, and prints samples/s
of each run: every code block re-run in the sandbox, images compared, accepted samples copied into the store,
records and report written. The sandbox starts before the clock does (`thyme data verify` pays it once).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from thyme.data.toyworld import generate
from thyme.data.verify import VerifyConfig, verify_samples
from thyme.sandbox import Sandbox


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoom", type=int, default=200, help="zoom samples (0: none)")
    parser.add_argument("--compute", type=int, default=200, help="compute samples (0: none)")
    parser.add_argument("--workers", default="1,0", help="comma-separated worker counts; 0 is the default")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    counts = {"zoom": args.zoom, "compute": args.compute}
    runs = []
    with tempfile.TemporaryDirectory(prefix="thyme-verify-bench-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        inputs = []
        for task, n in counts.items():
            if n > 0:
                generate(task, n, 0, root / task, verify=False)
                inputs.append(root / task)
        built = time.perf_counter() - started
        print(f"built {sum(counts.values())} samples in {built:.1f} s", file=sys.stderr)
        for workers in (int(w) for w in args.workers.split(",")):
            config = VerifyConfig(workers=workers or None)
            with Sandbox(config.sandbox_config()) as sandbox:
                summary = verify_samples(inputs, root / f"out-{workers}", config=config, sandbox=sandbox)
            runs.append(
                {
                    "workers": config.n_workers,
                    "samples": summary.verified,
                    "accepted": summary.accepted,
                    "seconds": round(summary.elapsed_s, 2),
                    "samples_per_s": round(summary.samples_per_s, 1),
                }
            )
    figures = {"cpus": os.cpu_count(), "samples": counts, "runs": runs}
    sizes = f"{counts['zoom']} zoom + {counts['compute']} compute samples"
    print(f"thyme data verify on {sizes}, {os.cpu_count()} CPUs")
    print(f"{'workers':>8} {'samples':>8} {'accepted':>9} {'seconds':>8} {'samples/s':>10}")
    for run in runs:
        print(
            f"{run['workers']:>8} {run['samples']:>8} {run['accepted']:>9} {run['seconds']:>8} "
            f"{run['samples_per_s']:>10}"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
