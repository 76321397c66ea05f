"""`init_demo`: the embedded default workspace is complete, reproducible to the byte, and never half-made."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import pytest

from trainer_core.demo import init_demo
from trainer_core.errors import Cancelled, CheckpointError, WorkspaceError
from trainer_core.models.checkpoint_info import describe_checkpoint
from trainer_core.models.demo_base_files import demo_base_dir, read_manifest, write_trained_demo_checkpoints
from trainer_core.progress import CancelToken, Progress
from trainer_core.workspace import Workspace, load_workspace


def _digest_tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Workspace:
    started = time.monotonic()
    ws = init_demo(tmp_path_factory.mktemp("demo") / "ws", posts=80, seed=3)
    ws.seconds = time.monotonic() - started  # type: ignore[attr-defined]
    return ws


def test_workspace_records_where_everything_is(demo):
    ws = load_workspace(demo.root)
    assert ws.kind == "demo" and ws.demo == {"seed": 3, "posts": 80}
    assert ws.db_path.is_file() and ws.images_path.is_dir()
    assert set(ws.checkpoints) == {"original", "gamma", "beta"}
    assert all(ws.checkpoint_path(r).is_file() for r in ws.checkpoints)
    assert ws.datasets_path.is_dir() and ws.runs_path.is_dir()
    # Paths are stored relative, so a workspace folder can be moved or copied to another machine.
    assert not Path(ws.db).is_absolute() and not Path(ws.checkpoints["gamma"]).is_absolute()


def test_models_are_the_shipped_trained_demo_base(demo):
    manifest = read_manifest()
    for role, rel in demo.checkpoints.items():
        path = demo.root / rel
        # bit for bit what the training script wrote (gamma/beta are rebuilt from compact deltas)
        assert hashlib.sha256(path.read_bytes()).hexdigest() == manifest["roles"][role]["checkpoint_sha256"]
        assert describe_checkpoint(path).arch == "kxl-demo"
    assert demo.seconds <= 30  # type: ignore[attr-defined]


def test_shipped_demo_model_fits_its_budget():
    files = [p for p in demo_base_dir().iterdir() if p.is_file()]
    assert {p.name for p in files} >= {
        "manifest.json",
        *(r["file"] for r in read_manifest()["roles"].values()),
    }
    assert sum(p.stat().st_size for p in files) <= 25 * 1024 * 1024


def test_a_damaged_shipped_model_is_refused_and_nothing_is_written(tmp_path):
    source = tmp_path / "shipped"
    shutil.copytree(demo_base_dir(), source)
    delta = source / read_manifest(source)["roles"]["beta"]["file"]
    data = bytearray(delta.read_bytes())
    data[-1] ^= 0xFF
    delta.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="beta does not match the demo manifest"):
        write_trained_demo_checkpoints(tmp_path / "models", source=source)
    assert not (tmp_path / "models").exists()


def test_same_seed_same_bytes(demo, tmp_path):
    again = init_demo(tmp_path / "ws", posts=80, seed=3)
    assert _digest_tree(again.root) == _digest_tree(demo.root)


def test_recreate_needs_force_and_refuses_user_workspaces(demo, tmp_path):
    with pytest.raises(WorkspaceError, match="already holds a demo"):
        init_demo(demo.root, posts=80, seed=3)
    user = tmp_path / "mine"
    Workspace(root=user, name="mine", kind="user").save()
    with pytest.raises(WorkspaceError, match="user workspace"):
        init_demo(user, posts=10, force=True)


def test_cancel_leaves_no_workspace_file(tmp_path):
    token = CancelToken()
    stages: list[str] = []

    def on_event(ev):
        if ev.total is None:
            stages.append(ev.message)
            if ev.message.startswith("Rendering image shards"):
                token.cancel()

    with pytest.raises(Cancelled):
        init_demo(tmp_path / "ws", posts=50, seed=0, progress=Progress(callback=on_event, cancel_token=token))
    assert not (tmp_path / "ws" / "workspace.toml").exists()
    assert any(s.startswith("Generating metadata DB") for s in stages)


def test_db_only_demo_for_benchmarks(tmp_path):
    ws = init_demo(tmp_path / "ws", posts=30, seed=1, images=False, models=False)
    assert ws.images is None and ws.checkpoints == {}
    assert load_workspace(ws.root).db_path.is_file()
