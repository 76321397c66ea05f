"""The `kxl` command line: real subprocesses, exit codes and messages a user sees."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def kxl(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "trainer_core.cli", *args], capture_output=True, text=True,
                          cwd=cwd or ROOT, env=env, timeout=600)  # fmt: skip


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cli") / "demo"
    proc = kxl("demo", "init", str(d), "--posts", "120", "--seed", "5")
    assert proc.returncode == 0, proc.stderr
    assert f"demo workspace: {d}" in proc.stdout
    return d


def test_demo_init_writes_a_complete_workspace(demo_dir):
    assert (demo_dir / "workspace.toml").is_file()
    assert (demo_dir / "danbooru" / "danbooru2023.db").is_file()
    assert list((demo_dir / "danbooru" / "images").glob("data-*.tar"))
    assert sorted(p.name for p in (demo_dir / "models").glob("*.safetensors")) == [
        "kxl-tiny-beta7.safetensors",
        "kxl-tiny-gamma-rev2.safetensors",
        "kxl-tiny-sdxl-base.safetensors",
    ]


def test_workspace_show_reports_counts_and_checkpoints(demo_dir):
    proc = kxl("workspace", "show", str(demo_dir))
    assert proc.returncode == 0, proc.stderr
    assert "posttagrelation" in proc.stdout
    assert "kxl-tiny-gamma-rev2.safetensors" in proc.stdout
    assert "120" in proc.stdout  # post rows


def test_model_info_describes_a_checkpoint(demo_dir):
    proc = kxl("model", "info", str(demo_dir / "models" / "kxl-tiny-beta7.safetensors"), "--hash")
    assert proc.returncode == 0, proc.stderr
    assert "sdxl-single-file" in proc.stdout and "kxl-demo" in proc.stdout and "fp16" in proc.stdout
    assert "tensors:  844" in proc.stdout  # the demo's trained SDXL-layout model (its own TE2 width)
    assert len(proc.stdout.split("hash:")[1].split()[0]) == 10


def test_demo_init_refuses_an_existing_demo_without_force(demo_dir):
    proc = kxl("demo", "init", str(demo_dir), "--posts", "120", "--seed", "5")
    assert proc.returncode == 2
    assert "already holds a demo workspace" in proc.stderr and "--force" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_user_errors_exit_2_with_one_clear_line(tmp_path):
    bad = tmp_path / "truncated.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    proc = kxl("model", "info", str(bad))
    assert proc.returncode == 2
    assert str(bad) in proc.stderr and "Traceback" not in proc.stderr

    proc = kxl("workspace", "show", str(tmp_path))
    assert proc.returncode == 2
    assert "no workspace.toml" in proc.stderr and "Traceback" not in proc.stderr

    proc = kxl("model", "info", str(tmp_path / "missing.safetensors"))
    assert proc.returncode == 2 and "file not found" in proc.stderr

    (tmp_path / "notempty.txt").write_text("x")
    proc = kxl("demo", "init", str(tmp_path))
    assert proc.returncode == 2 and "not empty" in proc.stderr


def test_convert_single_file_to_diffusers_and_back(demo_dir, tmp_path):
    src = demo_dir / "models" / "kxl-tiny-sdxl-base.safetensors"
    proc = kxl("model", "convert", str(src), str(tmp_path / "pipe"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "pipe" / "model_index.json").is_file()
    proc = kxl(
        "model", "convert", str(tmp_path / "pipe"), str(tmp_path / "back.safetensors"), "--dtype", "fp16"
    )
    assert proc.returncode == 0, proc.stderr
    info = kxl("model", "info", str(tmp_path / "back.safetensors"))
    assert "arch:     kxl-demo" in info.stdout  # the architecture survives the round trip
