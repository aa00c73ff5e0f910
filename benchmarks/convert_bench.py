"""`thyme data convert` throughput: rows per second on a generated parquet file in the Thyme-SFT layout.

    python benchmarks/convert_bench.py [--rows 2000] [--size 1024x768] [--json F]

Writes `--rows` rows to a temporary parquet file (outside the timing): half single-round rows (a JPEG
original of `--size` and one 256x256 PNG crop), three in ten 2-round rows (two crops), two in ten
computation rows (no image, text output); every original is distinct, as in the released data, and
images are base64 text as there. Then converts the file once into a fresh directory (every image decoded
in full, stored by content, samples and records written) and once more into the same directory (a resumed
run: every row skipped by id), and prints rows/s and input MB/s of each.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from thyme.data.convert import convert
from thyme.protocol import get_preset

CODE = (
    '<code>\n```python\nfrom PIL import Image\nimage_path = "{path}"\nimg = Image.open(image_path)\n'
    'processed_path = "/mnt/data/temp_processed_images/{name}"\n'
    "img.crop((0, 0, 256, 256)).save(processed_path)\nprint(processed_path)\n```\n</code>\n"
    "<sandbox_output><image></sandbox_output>\n"
)
COMPUTE = "<think><code>\n```python\nprint(6 * 7)\n```\n</code>\n<sandbox_output>42</sandbox_output></think>"


def b64_image(image: Image.Image, fmt: str) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return base64.b64encode(buffer.getvalue()).decode()


def write_rows(out: Path, n: int, size: tuple[int, int], group: int = 64) -> None:
    """`n` rows, generated and written one row group of `group` rows at a time (bounded memory)."""
    rng = np.random.default_rng(0)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 // w, y * 255 // h, (x + y) * 255 // (w + h)], axis=-1).astype(np.int16)
    preset = get_preset("released")
    rows: list[dict] = []
    writer = None
    for i in range(n):
        crops = 0 if i % 10 < 2 else (2 if i % 10 < 5 else 1)  # computation, 2-round, single-round
        if not crops:
            rows.append({"image": [], "question": f"What is 6 times 7? ({i})", "response": COMPUTE})
        else:
            original = Image.fromarray(
                (base + rng.integers(0, 24, size=(h, w, 3))).clip(0, 255).astype(np.uint8)
            )
            path = f"/data/images/{i:08d}.jpg"
            images = [b64_image(original, "JPEG")]
            images += [
                b64_image(original.crop((k * 256, 0, k * 256 + 256, 256)), "PNG") for k in range(crops)
            ]
            code = "".join(CODE.format(path=path, name=f"{i}_{k}.png") for k in range(crops))
            question = preset.user_text(f"What is in the corner? ({i})", image_path=path, image_size=size)
            response = f"<think>{code}</think>\n<answer>x</answer>"
            rows.append({"image": images, "question": question, "response": response})
        if len(rows) == group or i == n - 1:
            table = pa.Table.from_pylist(rows)
            writer = writer or pq.ParquetWriter(out, table.schema)
            writer.write_table(table)
            rows = []
    if writer is not None:
        writer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--size", default="1024x768", help="the originals' WxH")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    with tempfile.TemporaryDirectory(prefix="thyme-convert-bench-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        source = root / "2round-00000-of-00001.parquet"
        write_rows(source, args.rows, size)
        megabytes = source.stat().st_size / 1e6
        print(
            f"built {args.rows} rows ({megabytes:.0f} MB) in {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )
        runs = {}
        for name in ("fresh", "resumed"):
            summary = convert([source], root / "out")
            runs[name] = {
                "rows": summary.rows,
                "written": summary.written,
                "rejected": sum(summary.rejected.values()),
                "seconds": round(summary.elapsed_s, 2),
                "rows_per_s": round(summary.rows_per_s, 1),
                "mb_per_s": round(megabytes / summary.elapsed_s, 1),
            }
            print(
                f"{name}: {summary.rows} rows in {summary.elapsed_s:.1f} s: {summary.rows_per_s:.1f} rows/s, "
                f"{megabytes / summary.elapsed_s:.1f} MB/s ({summary.written} written)"
            )
    figures = {
        "cpus": os.cpu_count(),
        "rows": args.rows,
        "size": args.size,
        "parquet_mb": round(megabytes, 1),
    }
    figures["runs"] = runs
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
