"""Workspace questions every tab and command asks the same way (trainer_core/workspace_queries.py)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from trainer_core.workspace import load_workspace
from trainer_core.workspace_queries import (
    BaseHint,
    default_base,
    find_lokr_base,
    newest_dataset,
    scan_models,
)


def _touch_dataset(root: Path, name: str, mtime: float, kohya: bool = True) -> Path:
    folder = root / name
    if kohya:
        (folder / "1_demo").mkdir(parents=True)
    else:
        folder.mkdir(parents=True)
        (folder / "manifest.jsonl").write_text("{}\n")
    os.utime(folder, (mtime, mtime))
    return folder


def test_newest_dataset_counts_kohya_and_manifest_folders_and_skips_others(make_workspace):
    ws = load_workspace(make_workspace())
    assert newest_dataset(ws) is None
    _touch_dataset(ws.datasets_path, "old", 1_000_000)
    newest = _touch_dataset(ws.datasets_path, "new", 3_000_000, kohya=False)
    (ws.datasets_path / "not-a-dataset").mkdir()
    os.utime(ws.datasets_path / "not-a-dataset", (9_000_000, 9_000_000))
    assert newest_dataset(ws) == newest


def test_default_base_prefers_the_merged_base_then_original_then_gamma(make_workspace):
    ws = load_workspace(make_workspace())
    assert default_base(ws) == ws.checkpoint_path("gamma")  # no base, no original: gamma
    merged = ws.models_path / "kohaku-xl-delta-base.safetensors"
    merged.write_bytes((ws.checkpoint_path("gamma")).read_bytes())
    assert default_base(ws) == merged


def test_scan_models_tells_bases_from_lokrs_and_matches_a_lokr_to_its_base(make_workspace):
    ws = load_workspace(make_workspace())
    run_lokr = ws.runs_path / "run1" / "style, v2.safetensors"
    run_lokr.parent.mkdir(parents=True)
    base = ws.checkpoint_path("beta")
    save_file({"w": np.zeros(2, np.float32)}, str(run_lokr), metadata={"kxl.base_model": str(base)})
    known = scan_models(ws)
    assert set(known.bases) == {ws.checkpoint_path("gamma"), base}
    assert known.lokrs == {"style, v2": run_lokr}  # base checkpoints are never offered as LoKrs
    assert known.lokr_named("style v2") == run_lokr  # the name A1111 writes into <lora:...> (no `,` or `:`)
    hint, found, how = find_lokr_base(run_lokr, ws, known)
    assert hint == BaseHint(path=str(base)) and found == base and how == "path"
