"""`benchmarks/gpu_check.sh` (issue #14.10) cannot rot: its --dry mode runs the GPU check's code path on the CPU
with the tiny model and prints the table the GPU run prints; without a GPU it says so and fails."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _run(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHON": sys.executable, **env})  # fmt: skip


def _rows(out: str) -> dict[str, tuple[str, str]]:
    """row name -> (value, note), from the table under its `row  value  note` heading."""
    lines = out.splitlines()
    head = next(i for i, ln in enumerate(lines) if re.match(r"row\s+value\s+note", ln))
    value_at = lines[head].index("value")
    note_at = lines[head].index("note")
    return {
        ln[:value_at].strip(): (ln[value_at:note_at].strip(), ln[note_at:].strip())
        for ln in lines[head + 1 :]
    }


@pytest.fixture(scope="module")
def dry():
    proc = _run("--dry")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_dry_run_prints_every_row_of_the_gpu_table(dry):
    rows = _rows(dry)
    assert {"step time", "optimizer step", "images/s", "data-wait fraction", "TFLOP/s achieved",
            "max reserved memory (CPU: peak RSS)", "max allocated memory (CPU: peak RSS)", "skipped steps",
            "wall time"} <= set(rows)  # fmt: skip
    step = float(rows["step time"][0].removesuffix(" s"))
    optimizer = float(rows["optimizer step"][0].removesuffix(" s"))
    assert 0 < optimizer < step
    assert "batch 2" in rows["step time"][1]
    assert float(rows["images/s"][0]) == pytest.approx(2 / step, rel=0.01)
    assert 0.0 <= float(rows["data-wait fraction"][0]) < 1.0
    assert "real data loader" in rows["data-wait fraction"][1]
    assert float(rows["TFLOP/s achieved"][0]) > 0
    assert "kohaku-xl-delta" in rows["setup"][0] and "Lion8bit" in rows["setup"][0]
    assert rows["skipped steps"][0] == "0"


def test_dry_run_steps_through_the_bucket_mix(dry):
    rows = _rows(dry)
    reserved, note = rows["max reserved memory (CPU: peak RSS)"]
    assert float(reserved.removesuffix(" GiB")) > 0.1
    assert "over 3 buckets" in note
    per_bucket = rows["max allocated memory (CPU: peak RSS)"][1]
    assert {b for b in re.findall(r"(\d+x\d+) [\d.]+s", per_bucket)} == {"512x32", "128x128", "32x512"}


def test_without_a_gpu_it_says_so_and_fails():
    proc = _run(CUDA_VISIBLE_DEVICES="")
    assert proc.returncode == 3
    assert "no CUDA GPU" in proc.stderr and "--dry" in proc.stderr
    assert proc.stdout == ""


def test_a_missing_interpreter_is_named():
    proc = _run("--dry", PYTHON="/nonexistent/python3")
    assert proc.returncode == 2
    assert "/nonexistent/python3" in proc.stderr
