"""Soak: 10,000 sandbox sessions (calls, images, forks, crashes, timeouts), then count what leaked.

python benchmarks/soak.py [--sessions 10000]
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile

from PIL import Image
from rich.progress import Progress

from thyme.sandbox.soak import soak


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        image = pathlib.Path(tmp) / "input.png"
        Image.new("RGB", (640, 480), (90, 120, 200)).save(image)
        with Progress() as bar:
            task = bar.add_task("sessions", total=args.sessions)
            report = soak(image, args.sessions, progress=lambda i: bar.update(task, completed=i + 1))
    for key, value in vars(report).items():
        print(f"{key:<20} {value:.1f}" if isinstance(value, float) else f"{key:<20} {value}")
    print(f"{'clean':<20} {report.clean}")
    raise SystemExit(0 if report.clean else 1)


if __name__ == "__main__":
    main()
