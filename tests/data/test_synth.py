"""`thyme synth` as a function: progress, the samples-per-second line, exit statuses, one-line errors."""

from __future__ import annotations

import io
import json
import re

from rich.console import Console

from thyme.data.synth import synth_command


def console() -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=200, force_terminal=False), buffer


def test_synth_writes_samples_and_reports_samples_per_second(tmp_path):
    out, text = console()
    status = synth_command("compute", 6, 3, tmp_path / "toy", split="test", level="mul-text", console=out)
    assert status == 0
    lines = (tmp_path / "toy" / "samples.jsonl").read_text().splitlines()
    assert [json.loads(line)["seed"] for line in lines] == [10**9 + 3 + i for i in range(6)]
    assert json.loads((tmp_path / "toy" / "manifest.json").read_text())["verified"] is True
    report = text.getvalue()
    assert "wrote 6 compute samples (test, seeds 1000000003-1000000008; mul-text 6)" in report
    assert "samples/s (6 samples in" in report.splitlines()[-1]
    # The bar's rate is the summary's: both count the whole run (sandbox start included), not a moving window.
    bar_rate = re.search(r"6/6 ([0-9.]+) samples/s", report).group(1)
    assert report.splitlines()[-1].startswith(f"{bar_rate} samples/s"), report


def test_synth_refuses_a_non_empty_directory_before_starting(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    out, text = console()
    assert synth_command("zoom", 2, 0, tmp_path, console=out) == 2
    assert "not empty" in text.getvalue() and "--overwrite" in text.getvalue()
    assert "synth zoom" not in text.getvalue()  # no progress bar for a run that cannot start
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert synth_command("rotate", 2, 0, tmp_path, overwrite=True, verify=False, console=console()[0]) == 0
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_synth_rejects_unknown_tasks_and_levels(tmp_path):
    out, text = console()
    assert synth_command("count", 2, 0, tmp_path / "a", console=out) == 2
    assert synth_command("zoom", 2, 0, tmp_path / "b", level="huge", console=out) == 2
    assert "unknown toy-world task 'count'" in text.getvalue() and "has no level 'huge'" in text.getvalue()
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
